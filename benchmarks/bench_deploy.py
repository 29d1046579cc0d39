"""Deploy timings on the lab: a fresh deploy, a re-deploy of a new version, and the API's
unavailability during that re-deploy, measured by a probe polling /health every 100 ms.

Needs the prepared lab story (`scripts/demo --prepare`, or after `make demo`). Steps:
  1. benchmarks/deploy_stage.yml: both hosts stopped (proven), lab-new's releases wiped;
  2. fresh deploy of v1.0.0 to lab-new (git clone, npm ci, PM2 start, health);
  3. re-deploy of v1.1.0 while v1.0.0 serves, the probe polling http://<lab-new>:3000/health;
  4. lab/story-reset.yml puts the story back (new stopped, old serving).

  .venv/bin/python benchmarks/bench_deploy.py [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
from aiadmin_ops.downtime import AnyProbe  # noqa: E402

ENV = dict(os.environ, CONTAINERS_CONF=str(ROOT / "containers.conf"), ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"))
PLAY = [str(ROOT / ".venv/bin/ansible-playbook"), "-i", str(ROOT / "inventories/lab/hosts.yml"),
        "--vault-id", f"lab@{ROOT / 'inventories/lab/vault-password.LAB-ONLY.txt'}"]
APP = ["-e", "deploy_hosts=lab-new"]
HEALTH = "http://10.213.10.30:3000/health"


def play(*args: str) -> float:
    t0 = time.monotonic()
    proc = subprocess.run([*PLAY, *args], cwd=ROOT, env=ENV, capture_output=True, text=True, check=False)
    secs = time.monotonic() - t0
    if proc.returncode != 0:
        sys.exit(f"bench_deploy: {' '.join(args[:1])} failed (rc {proc.returncode}):\n{proc.stdout[-3000:]}")
    return secs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    args = parser.parse_args()

    print("stage: both hosts stopped, lab-new wiped", flush=True)
    play("benchmarks/deploy_stage.yml")
    print("fresh deploy v1.0.0 ...", flush=True)
    fresh = play("playbooks/deploy.yml", *APP, "-e", "aiadmin_app_version=v1.0.0")
    print(f"  {fresh:.1f} s", flush=True)

    probe = AnyProbe([HEALTH], interval=0.1, timeout=1.0)
    thread = threading.Thread(target=probe.run, daemon=True)
    thread.start()
    time.sleep(2)
    print("re-deploy v1.1.0 with the probe running ...", flush=True)
    redeploy = play("playbooks/deploy.yml", *APP, "-e", "aiadmin_app_version=v1.1.0")
    time.sleep(2)
    probe.stop()
    thread.join()
    gap = probe.summary()
    print(f"  {redeploy:.1f} s; API unavailable: longest gap {gap['longest_gap_ms']} ms, "
          f"{gap['failures']} of {gap['samples']} probes failed", flush=True)

    print("restore the story (new stopped, old serving)", flush=True)
    play("lab/story-reset.yml")
    result = {"fresh_deploy_s": round(fresh, 1), "redeploy_s": round(redeploy, 1), "redeploy_probe": gap,
              "target_gap_ms": 5000, "met": gap["longest_gap_ms"] < 5000}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "redeploy_probe"}))
    return 0 if result["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
