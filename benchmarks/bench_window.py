"""Migration-window timings on the lab, through the real CLI (aiadmin-ops migrate).

For each round: lab/story-reset.yml (new stopped and proven, old serving), then a window; the
CLI's probe polls both hosts' /health every 100 ms and reports the longest gap (the
downtime). Then one window whose release crashes at start measures the automatic rollback
(from the failing smoke check to the old host serving). For every window it prints where the
outage's seconds went: the tasks that ran inside the probe's gap, from the run's job events.

Needs the prepared lab story (`scripts/demo --prepare`, or after `make demo`).

  .venv/bin/python benchmarks/bench_window.py [--rounds 5] [--json FILE]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STATE = Path(tempfile.mkdtemp(prefix="aiadmin-bench-window-"))
ENV = dict(os.environ, CONTAINERS_CONF=str(ROOT / "containers.conf"), ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"),
           AIADMIN_STATE_DIR=str(STATE))
PLAY = [str(ROOT / ".venv/bin/ansible-playbook"), "-i", str(ROOT / "inventories/lab/hosts.yml"),
        "--vault-id", f"lab@{ROOT / 'inventories/lab/vault-password.LAB-ONLY.txt'}"]
CLI = str(ROOT / ".venv/bin/aiadmin-ops")


def run(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=ROOT, env=ENV, capture_output=True, text=True, check=False)


def reset() -> None:
    proc = run([*PLAY, "lab/story-reset.yml"])
    if proc.returncode != 0:
        sys.exit(f"bench_window: the story reset failed:\n{proc.stdout[-3000:]}")


def window(*extra: str) -> dict:
    proc = run([CLI, "migrate", "--yes", *extra])
    report = next((json.loads(Path(line.split()[1]).read_text()) for line in proc.stdout.splitlines()
                   if line.startswith("report: ")), None)
    if report is None:
        sys.exit(f"bench_window: no report:\n{proc.stdout[-3000:]}")
    return report


def tasks_in_gap(report: dict) -> list[tuple[float, str]]:
    """(seconds, task) for every task that started inside the probe's longest gap."""
    gaps = (report.get("downtime") or {}).get("gaps") or []
    if not gaps:
        return []
    gap = max(gaps, key=lambda g: g["ms"])
    events = []
    for path in Path(report["artifact_dir"]).glob("job_events/*.json"):
        event = json.loads(path.read_text())
        if event.get("event") == "playbook_on_task_start":
            events.append((event["counter"], datetime.fromisoformat(event["created"]).timestamp(),
                           event["event_data"].get("task", "")))
    events.sort()
    out = []
    for (_, start, name), (_, nxt, _) in itertools.pairwise(events):
        if nxt > gap["start"] and start < gap["end"]:
            out.append((min(nxt, gap["end"]) - max(start, gap["start"]), name))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    windows = []
    for i in range(args.rounds):
        reset()
        rep = window()
        if rep["verdict"] != "succeeded":
            sys.exit(f"bench_window: window {i + 1} failed: {rep['failures']}")
        down = rep["downtime"]["longest_gap_ms"] / 1000
        windows.append({"downtime_s": down, "wall_s": rep["duration_s"], "gap_tasks": tasks_in_gap(rep)})
        print(f"window {i + 1}: downtime {down:.2f} s, wall {rep['duration_s']:.1f} s", flush=True)
        for secs, name in windows[-1]["gap_tasks"]:
            print(f"    {secs:5.2f} s  {name}")
    reset()
    crash = window("-e", "migration_app_version=v1.2.0", "-e", "migration_demo_crash_on_start=true")
    rollback = crash["rollback_to_serving_s"]
    print(f"crash window: automatic rollback to the old host serving {rollback} s, "
          f"outage {crash['downtime']['longest_gap_ms'] / 1000:.2f} s, wall {crash['duration_s']:.1f} s")
    reset()

    result = {
        "rounds": args.rounds,
        "downtime_s": [w["downtime_s"] for w in windows],
        "downtime_median_s": statistics.median(w["downtime_s"] for w in windows),
        "wall_median_s": statistics.median(w["wall_s"] for w in windows),
        "rollback_to_serving_s": rollback,
        "crash_outage_s": crash["downtime"]["longest_gap_ms"] / 1000,
        "windows": windows,
    }
    print(f"median downtime {result['downtime_median_s']:.2f} s (target <= 3 s), median wall "
          f"{result['wall_median_s']:.1f} s, rollback {rollback} s (target <= 10 s)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
