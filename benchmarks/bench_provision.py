"""Cold and no-op times of playbooks/provision.yml on lab-new (issue target: no-op <= 25 % of cold).

Each round: lab-new is removed and `aiadmin-ops lab up` creates it again from the lab image
(a bare Debian with systemd and Python, like a fresh VPS); provision.yml converges it (cold),
then runs again --noop times on the converged host. A no-op run must report changed=0, or the
benchmark fails. The lab must be up (`make lab-up`); lab-new's state is lost.

  .venv/bin/python benchmarks/bench_provision.py [--rounds 3] [--noop 2] [--json FILE]
  .venv/bin/python benchmarks/bench_provision.py --linear   # without mitogen (podman_pipelined)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, CONTAINERS_CONF=str(ROOT / "containers.conf"), ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"))
PLAY = [str(ROOT / ".venv/bin/ansible-playbook"), "--vault-id",
        f"lab@{ROOT / 'inventories/lab/vault-password.LAB-ONLY.txt'}",
        str(ROOT / "playbooks/provision.yml"), "-e", "provision_hosts=lab-new"]
TARGET = 0.25


def run(cmd: list[str], env: dict[str, str], what: str) -> tuple[float, str]:
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    secs = time.monotonic() - t0
    if proc.returncode != 0:
        sys.exit(f"bench_provision: {what} failed (rc {proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}")
    return secs, proc.stdout


def recap(out: str) -> dict[str, int]:
    match = re.search(r"^lab-new\s*:\s*(.*)$", out.split("PLAY RECAP", 1)[-1], re.MULTILINE)
    if not match:
        sys.exit("bench_provision: no PLAY RECAP line for lab-new")
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", match.group(1))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="fresh lab-new containers to converge (default 3)")
    parser.add_argument("--noop", type=int, default=2, help="no-op runs after each cold run (default 2)")
    parser.add_argument("--linear", action="store_true",
                        help="plain Ansible: linear strategy, plugins/connection/podman_pipelined.py")
    parser.add_argument("--json", type=Path, help="write every figure to this file")
    args = parser.parse_args()
    if args.rounds < 1 or args.noop < 1:
        parser.error("--rounds and --noop must be at least 1")

    env = dict(ENV)
    play = list(PLAY)
    if args.linear:
        env["ANSIBLE_STRATEGY"] = "linear"
        play += ["-e", "ansible_connection=podman_pipelined"]
    cold: list[float] = []
    noop: list[float] = []
    for rnd in range(1, args.rounds + 1):
        print(f"round {rnd}/{args.rounds}: fresh lab-new", flush=True)
        subprocess.run(["podman", "rm", "-f", "lab-new"], env=env, capture_output=True, check=False)
        secs, _ = run([str(ROOT / ".venv/bin/aiadmin-ops"), "lab", "up"], env, "lab up")
        print(f"  lab up {secs:.1f} s", flush=True)
        secs, out = run(play, env, "cold provision")
        counts = recap(out)
        cold.append(secs)
        print(f"  cold {secs:.1f} s (ok={counts.get('ok')} changed={counts.get('changed')})", flush=True)
        for i in range(1, args.noop + 1):
            secs, out = run(play, env, "no-op provision")
            counts = recap(out)
            if counts.get("changed") != 0:
                sys.exit(f"bench_provision: no-op run {i} of round {rnd} changed {counts.get('changed')} tasks")
            noop.append(secs)
            print(f"  no-op {secs:.1f} s (ok={counts.get('ok')} changed=0)", flush=True)

    ratio = statistics.median(noop) / statistics.median(cold)
    result = {
        "strategy": "linear + podman_pipelined" if args.linear else "mitogen_linear + podman",
        "cold_s": [round(s, 1) for s in cold], "noop_s": [round(s, 1) for s in noop],
        "cold_median_s": round(statistics.median(cold), 1), "noop_median_s": round(statistics.median(noop), 1),
        "ratio": round(ratio, 3), "target": TARGET, "met": ratio <= TARGET,
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    return 0 if result["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
