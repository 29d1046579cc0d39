"""Disaster recovery on the lab, with the breakdown by phase from each run's record.

--lost host (the default): a lost app host, bare -> healthy with `aiadmin-ops dr-rebuild` (issue
target: <= 3 min in the lab). Each round: lab-new serves alone (provisioned and deployed first when
it does not), its configuration is backed up (playbooks/backup_config.yml), lab-new is removed
(`podman rm -f`) and `aiadmin-ops lab up` creates it again bare from the image at the same
addresses (not timed: the machine coming up); then `aiadmin-ops dr-rebuild --yes` is timed from
the CLI's start to its exit, and the phases are read from the report (each phase's end time in the
record; RTO = run start -> smoke passed).
The lab must be up (`make lab-up`); lab-new's state is lost, and the app runs on lab-new after.

--lost db: a lost database, restored with `aiadmin-ops dr-restore-db` into a new instance, for each
of --sizes (ascending; "seed" is the lab's own rows). Each size: lab-db exists (`lab up` creates it
again after the previous size destroyed it), lab-new is provisioned for it and serves alone; lab-db
is grown over TLS from the controller to about the size (whatsapp_keys and messages rows, the
generator of bench_backup.py) and vacuumed; `aiadmin-ops backup` takes the verified dump (timed
apart, with its size); `lab db-replacement` makes lab-db-new (own CA, empty); lab-db is removed
(`podman rm -f`); then `aiadmin-ops dr-restore-db --yes` is timed, and its report gives the RTO,
each phase and the RPO. lab-db stays destroyed after it: `aiadmin-ops lab up` recreates it and
`scripts/demo --prepare` puts the story back.

  .venv/bin/python benchmarks/bench_dr.py [--rounds 3] [--json FILE]
  .venv/bin/python benchmarks/bench_dr.py --lost db [--sizes seed,1G] [--json FILE]
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
sys.path.insert(0, str(ROOT))

import bench_backup  # noqa: E402 - the database generator (benchmarks/ is on sys.path when run as a script)

from tests.helpers import lab_vault  # noqa: E402

BIN = ROOT / ".venv/bin"
STATE = Path(os.environ.get("AIADMIN_BENCH_STATE_DIR", "/var/tmp/aiadmin-ops-bench-dr"))  # noqa: S108
ENV = dict(os.environ, CONTAINERS_CONF=str(ROOT / "containers.conf"), ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"),
           AIADMIN_STATE_DIR=str(STATE), PATH=f"{BIN}:{os.environ.get('PATH', '')}")
PLAY = [str(BIN / "ansible-playbook"), "-i", "inventories/lab/hosts.yml", "--vault-id",
        f"lab@{ROOT / 'inventories/lab/vault-password.LAB-ONLY.txt'}"]
PHASES = ("plan", "provision", "deploy", "verify", "start", "smoke", "verdict")
DB_PHASES = ("plan", "stop", "ca", "restore", "rpo", "repoint", "start", "smoke", "verdict")
TARGET_S = 180.0
REPLACEMENT = ROOT / "lab/state/replacement/inventory.json"


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


def breakdown(report: dict, phases: tuple[str, ...] = PHASES) -> dict[str, float]:
    """Seconds each phase took, from the record's end times (the first from the run's start)."""
    dr = report["custom_stats"]["dr"]
    ends = dr["phases"]
    prev = datetime.fromisoformat(dr["started"].replace("Z", "+00:00"))
    out: dict[str, float] = {}
    for phase in phases:
        if phase in ends:
            end = datetime.fromisoformat(ends[phase].replace("Z", "+00:00"))
            out[phase] = round((end - prev).total_seconds(), 1)
            prev = end
    return out


def lab_db(vault: dict):
    import psycopg

    return psycopg.connect(host="10.213.10.10", dbname="ai_admin", user="ai_admin", autocommit=True,
                           password=vault["vault_aiadmin_db_password"], sslmode="verify-full",
                           sslrootcert=str(ROOT / "lab/state/ca.crt"), application_name="aiadmin-ops-bench-dr")


def grow(vault: dict, target: int) -> dict:
    """lab-db grown to about target bytes (bench_backup's generator), vacuumed and checkpointed."""
    with lab_db(vault) as conn:
        size = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
        conn.execute(bench_backup.HELPERS)
        per_unit, next_key = 2000.0, 1 + conn.execute("SELECT count(*) FROM whatsapp_keys").fetchone()[0]
        while size < target:
            units = int(min(50_000, max(1000, (target - size) / per_unit)))
            conn.execute(bench_backup.GROW_KEYS, {"lo": next_key, "hi": next_key + units})
            conn.execute(bench_backup.GROW_MESSAGES, {"n": 2 * units})
            next_key += units
            grown = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
            per_unit, size = max(100.0, (grown - size) / units), grown
            print(f"  lab-db grown to {bench_backup.mib(size)} MiB", file=sys.stderr, flush=True)
        conn.execute("VACUUM (ANALYZE, PARALLEL 0) whatsapp_keys, messages")  # lab-db: a 64 MB /dev/shm
        return {"db_size_mib": bench_backup.mib(size),
                "messages_rows": conn.execute("SELECT count(*) FROM messages").fetchone()[0],
                "whatsapp_keys_rows": conn.execute("SELECT count(*) FROM whatsapp_keys").fetchone()[0]}


def db_round(label: str, target: int, vault: dict) -> dict:
    run([str(BIN / "aiadmin-ops"), "lab", "up"], "lab up")
    run([*PLAY, "playbooks/provision.yml", "-l", "lab-new"], "provision lab-new for lab-db")
    run([*PLAY, "lab/story-reset.yml", "-e", "lab_reset_start_old=false"], "story reset")
    run([*PLAY, "playbooks/deploy.yml", "-e", "deploy_hosts=new"], "deploy on lab-new")
    t0 = time.monotonic()
    facts = grow(vault, target)
    facts["grow_s"] = round(time.monotonic() - t0, 1)
    facts["backup_s"], _ = run([str(BIN / "aiadmin-ops"), "backup"], "backup")
    manifest = json.loads(sorted((STATE / "backups/ai_admin").glob("*.manifest.json"))[-1].read_text())
    facts["dump_mib"], facts["dump_timings_s"] = bench_backup.mib(manifest["size"]), manifest["timings_s"]
    run([str(BIN / "aiadmin-ops"), "lab", "db-replacement"], "lab db-replacement")
    pointed = [arg for key, value in sorted(json.loads(REPLACEMENT.read_text()).items())
               for arg in ("-e", f"{key}={value}")]
    subprocess.run(["podman", "rm", "-f", "-t", "0", "lab-db"], env=ENV, capture_output=True, check=False)
    secs, out = run([str(BIN / "aiadmin-ops"), "dr-restore-db", "--yes", *pointed], "dr-restore-db")
    report_path = next(line.split()[1] for line in out.splitlines() if line.startswith("report: "))
    dr = json.loads(Path(report_path).read_text())["custom_stats"]["dr"]
    result = {"size": label, **facts, "backup_s": round(facts["backup_s"], 1), "wall_s": round(secs, 1),
              "rto_s": float(dr["rto_s"]), "phases_s": breakdown({"custom_stats": {"dr": dr}}, DB_PHASES),
              "rpo": dr["rpo"], "row_counts": dr["row_counts"]}
    print(f"{label}: {facts['db_size_mib']} MiB, dump {facts['dump_mib']} MiB: dr-restore-db {secs:.1f} s,"
          f" RTO {dr['rto_s']} s, phases {result['phases_s']}", flush=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lost", choices=("host", "db"), default="host", help="what is lost (default host)")
    parser.add_argument("--rounds", type=int, default=3, help="host: lost-and-rebuilt rounds (default 3)")
    parser.add_argument("--sizes", default="seed,1G", help="db: database sizes, ascending (default seed,1G)")
    parser.add_argument("--json", type=Path, help="write every figure to this file")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    try:
        sizes = [(text, bench_backup.parse_size(text)) for text in args.sizes.split(",")]
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    STATE.mkdir(parents=True, exist_ok=True, mode=0o700)
    if args.lost == "db":
        result = {"sizes": [db_round(label, size, lab_vault()) for label, size in sizes]}
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result))
        return 0
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
