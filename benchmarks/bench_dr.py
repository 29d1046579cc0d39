"""Disaster recovery of a lost app host on the lab: bare -> healthy with `aiadmin-ops dr-rebuild`
(issue target: <= 3 min in the lab), with the breakdown by phase from the run's record.

Each round: lab-new serves alone (provisioned and deployed first when it does not), its configuration
is backed up (playbooks/backup_config.yml), lab-new is removed (`podman rm -f`) and `aiadmin-ops
lab up` creates it again bare from the image at the same addresses (not timed: the machine coming
up); then `aiadmin-ops dr-rebuild --yes` is timed from the CLI's start to its exit, and the phases
are read from the report (each phase's end time in the record; RTO = run start -> smoke passed).
The lab must be up (`make lab-up`); lab-new's state is lost, and the app runs on lab-new after.

  .venv/bin/python benchmarks/bench_dr.py [--rounds 3] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = ROOT / ".venv/bin"
STATE = Path(os.environ.get("AIADMIN_BENCH_STATE_DIR", "/var/tmp/aiadmin-ops-bench-dr"))  # noqa: S108
ENV = dict(os.environ, CONTAINERS_CONF=str(ROOT / "containers.conf"), ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"),
           AIADMIN_STATE_DIR=str(STATE), PATH=f"{BIN}:{os.environ.get('PATH', '')}")
PLAY = [str(BIN / "ansible-playbook"), "-i", "inventories/lab/hosts.yml", "--vault-id",
        f"lab@{ROOT / 'inventories/lab/vault-password.LAB-ONLY.txt'}"]
PHASES = ("plan", "provision", "deploy", "verify", "start", "smoke", "verdict")
TARGET_S = 180.0


def run(cmd: list[str], what: str) -> tuple[float, str]:
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, check=False)
    secs = time.monotonic() - t0
    if proc.returncode != 0:
        sys.exit(f"bench_dr: {what} failed (rc {proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}")
    return secs, proc.stdout


def serving() -> bool:
    proc = subprocess.run(["curl", "-fsS", "--max-time", "3", "http://10.213.10.30:3000/health"],
                          capture_output=True, text=True, check=False)
    return proc.returncode == 0 and '"status":"healthy"' in proc.stdout


def breakdown(report: dict) -> dict[str, float]:
    """Seconds each phase took, from the record's end times (the first from the run's start)."""
    dr = report["custom_stats"]["dr"]
    ends = dr["phases"]
    prev = datetime.fromisoformat(dr["started"].replace("Z", "+00:00"))
    out: dict[str, float] = {}
    for phase in PHASES:
        if phase in ends:
            end = datetime.fromisoformat(ends[phase].replace("Z", "+00:00"))
            out[phase] = round((end - prev).total_seconds(), 1)
            prev = end
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="lost-and-rebuilt rounds (default 3)")
    parser.add_argument("--json", type=Path, help="write every figure to this file")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    STATE.mkdir(parents=True, exist_ok=True, mode=0o700)
    rounds = []
    for rnd in range(1, args.rounds + 1):
        if not serving():
            run([*PLAY, "lab/story-reset.yml", "-e", "lab_reset_start_old=false"], "story reset")
            run([*PLAY, "playbooks/provision.yml"], "provision lab-new")
            run([*PLAY, "playbooks/deploy.yml", "-e", "deploy_hosts=new"], "deploy on lab-new")
        run([*PLAY, "playbooks/backup_config.yml"], "configuration backup")
        subprocess.run(["podman", "rm", "-f", "-t", "0", "lab-new"], env=ENV, capture_output=True, check=False)
        up, _ = run([str(BIN / "aiadmin-ops"), "lab", "up"], "lab up")
        secs, out = run([str(BIN / "aiadmin-ops"), "dr-rebuild", "--yes"], "dr-rebuild")
        report_path = next(line.split()[1] for line in out.splitlines() if line.startswith("report: "))
        report = json.loads(Path(report_path).read_text())
        dr = report["custom_stats"]["dr"]
        phases = breakdown(report)
        rounds.append({"wall_s": round(secs, 1), "rto_s": float(dr["rto_s"]), "phases_s": phases,
                       "lab_up_s": round(up, 1)})
        print(f"round {rnd}/{args.rounds}: dr-rebuild {secs:.1f} s, RTO {dr['rto_s']} s, phases {phases}"
              f" (lab up, not timed: {up:.1f} s)", flush=True)

    walls = [r["wall_s"] for r in rounds]
    result = {
        "rounds": rounds,
        "wall_median_s": round(statistics.median(walls), 1),
        "phase_median_s": {p: round(statistics.median(r["phases_s"].get(p, 0.0) for r in rounds), 1)
                           for p in PHASES},
        "target_s": TARGET_S,
        "met": statistics.median(walls) <= TARGET_S,
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    return 0 if result["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
