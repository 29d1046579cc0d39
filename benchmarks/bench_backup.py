#!/usr/bin/env python3
"""Benchmark: the pg_backup job (dump + verify) against a bare `pg_dump -Fc`, and the restore test, by size.

A loopback PostgreSQL 15 with TLS (tests/gates/gates_pg.py, verify-full against a test CA,
scram-sha-256) is started in a temporary directory and loaded with the lab's schema and rows
(lab/files/seed.sql). For each size, ascending, the database is grown to about that size with
generated whatsapp_keys rows (jsonb of ~250-400 bytes of base64 key material) and messages
rows (bodies of 100-300 characters of md5 "words"), one key to two messages; then each round
times, one after the other over the same TLS connection parameters (password in a 0600 pgpass):

  bare  pg_dump -Fc to a file;
  job   pg_backup_job.execute(): connect, version check, row counts in the dump's snapshot,
        pg_dump -Fc --snapshot, pg_restore --list TOC check, sha256, age encryption, keep.

The ratio job / bare (medians) must stay <= --max-ratio (exit 1 otherwise). The last backup of
each size then goes through pg_restore_job.execute() (decrypt, scratch cluster, pg_restore,
row counts), timed apart: the restore test is not part of the ratio.

    .venv/bin/python benchmarks/bench_backup.py [--sizes seed,100M,1G] [--rounds 3] [--json out.json]

Needs root or the postgres user's rights, the PostgreSQL 15 server binaries (PG_GATES_BIN),
pg_dump/pg_restore 15 and age.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import pathlib
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from psycopg import sql

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.gates.gates_modrun import alias_module_utils  # noqa: E402 - needs ROOT on sys.path
from tests.gates.gates_pg import PG_BIN, USER_PASSWORD, PgServer, free_port, make_pki  # noqa: E402

alias_module_utils()
backup_job = importlib.import_module("ansible.module_utils.pg_backup_job")
restore_job = importlib.import_module("ansible.module_utils.pg_restore_job")

DATABASE = USER = "ai_admin"
# The backup role's default backup_required_tables: checked in the TOC and counted.
TABLES = ["whatsapp_auth", "whatsapp_keys", "companies", "clients", "services", "staff", "bookings", "messages"]
UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}

# Session-local helpers (pg_temp: never part of the dump). noise(n): n characters of base64 of
# random bytes, like the key material in whatsapp_keys; words(n): n characters of md5 "words".
HELPERS = r"""
CREATE FUNCTION pg_temp.noise(n int) RETURNS text LANGUAGE sql VOLATILE AS $$
  SELECT left(translate(encode(decode(string_agg(md5(random()::text), ''), 'hex'), 'base64'), E'\n', ''), n)
  FROM generate_series(1, n * 3 / 64 + 1) $$;
CREATE FUNCTION pg_temp.words(n int) RETURNS text LANGUAGE sql VOLATILE AS $$
  SELECT left(string_agg(md5(random()::text), ' '), n) FROM generate_series(1, n / 33 + 1) $$;
"""
GROW_KEYS = """
INSERT INTO whatsapp_keys (company_id, key_type, key_id, value, created_at, updated_at, expires_at)
SELECT 1001, (ARRAY['pre-key', 'session', 'sender-key', 'app-state-sync-key'])[1 + g %% 4], 'bench-' || g,
       jsonb_build_object('keyPair', jsonb_build_object('private', pg_temp.noise(44), 'public', pg_temp.noise(44)),
                          'signature', pg_temp.noise(88), 'keyId', g, 'registrationId', (random() * 16380)::int,
                          'data', pg_temp.noise((random() * 150)::int)),
       t - interval '1 day', t, t + interval '30 days'
FROM (SELECT g, now() - random() * interval '60 days' FROM generate_series(%(lo)s::bigint, %(hi)s::bigint - 1) AS g)
     AS s (g, t)
"""
GROW_MESSAGES = """
INSERT INTO messages (company_id, phone, body, created_at)
SELECT 1001, '+000' || lpad((1 + g %% 1300)::text, 8, '0'), pg_temp.words(100 + (random() * 200)::int),
       now() - random() * interval '180 days'
FROM generate_series(1, %(n)s::bigint) AS g
"""


def parse_size(text: str) -> int:
    if text == "seed":
        return 0
    match = re.fullmatch(r"(\d+)([KMG]?)B?", text.upper())
    if not match:
        raise argparse.ArgumentTypeError(f"size {text!r}: use 'seed' or a number with K, M or G (MiB, GiB)")
    return int(match.group(1)) * UNITS[match.group(2)]


def mib(size: int) -> float:
    return round(size / (1 << 20), 2)


class Bench:
    def __init__(self, base: pathlib.Path):
        self.base = base
        self.server = PgServer("bench-backup", base / "pg", free_port(), tls=True, pki=make_pki(base / "pki"))
        self.next_key = 1
        self.bytes_per_unit = 2000.0  # first guess: one key + two messages, with their indexes

    def start(self) -> None:
        self.server.start()
        with self.server.admin() as conn:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(USER),
                                                                            sql.Literal(USER_PASSWORD)))
            conn.execute(f"CREATE DATABASE {DATABASE} OWNER {USER}")
        with self.connect() as conn:  # the app's owner creates its tables, as on the real host
            conn.execute((ROOT / "lab/files/seed.sql").read_text())
        self.params = dict(backup_job.DEFAULTS, **self.server.module_args(
            database=DATABASE, user=USER, password=USER_PASSWORD, name_prefix=DATABASE,
            required_tables=TABLES, age_recipients=[self.age_key()]))
        errors = backup_job.validate(dict(self.params, dest_dir=str(self.base)))
        if errors:
            sys.exit("bench_backup: " + "; ".join(errors))
        self.pgpass = self.base / "pgpass"
        fd = os.open(self.pgpass, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(backup_job.pgpass_line(self.params))

    def connect(self):
        return self.server.connect(user=USER, password=USER_PASSWORD, dbname=DATABASE, autocommit=True)

    def age_key(self) -> str:
        self.identity = self.base / "age.key"
        subprocess.run(["age-keygen", "-o", str(self.identity)], check=True, capture_output=True)
        return next(line.split(": ", 1)[1].strip() for line in self.identity.read_text().splitlines()
                    if "public key" in line)

    def db_size(self) -> int:
        with self.connect() as conn:
            return conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]

    def grow(self, target: int) -> None:
        """Add keys and messages until pg_database_size reaches target, then VACUUM and CHECKPOINT."""
        size = self.db_size()
        if size >= target:
            return
        with self.connect() as conn:
            conn.execute(HELPERS)
            while size < target:
                units = int(min(50_000, max(1000, (target - size) / self.bytes_per_unit)))
                conn.execute(GROW_KEYS, {"lo": self.next_key, "hi": self.next_key + units})
                conn.execute(GROW_MESSAGES, {"n": 2 * units})
                self.next_key += units
                grown = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
                self.bytes_per_unit = max(100.0, (grown - size) / units)
                size = grown
                print(f"  grown to {mib(size)} MiB", file=sys.stderr, flush=True)
        with self.server.admin(DATABASE) as conn:  # hint bits set and dirty pages written before any timing
            conn.execute("VACUUM (ANALYZE) whatsapp_keys, messages")
            conn.execute("CHECKPOINT")

    def facts(self) -> dict:
        with self.connect() as conn:
            size, keys, messages = conn.execute(
                "SELECT pg_database_size(current_database()), (SELECT count(*) FROM whatsapp_keys),"
                " (SELECT count(*) FROM messages)").fetchone()
        return {"db_size": size, "db_size_mib": mib(size), "whatsapp_keys_rows": keys, "messages_rows": messages}

    def bare_dump(self) -> tuple[float, int]:
        out = self.base / "bare.dump"
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(PGSSLMODE="verify-full", PGSSLROOTCERT=str(self.server.pki.ca), PGPASSFILE=str(self.pgpass))
        argv = [self.params["pg_dump"], "--no-password", "--format=custom", f"--file={out}", "--host=127.0.0.1",
                f"--port={self.server.port}", f"--username={USER}", f"--dbname={DATABASE}"]
        started = time.monotonic()
        subprocess.run(argv, env=env, check=True, capture_output=True, timeout=7200)
        seconds = time.monotonic() - started
        size = out.stat().st_size
        out.unlink()
        return seconds, size

    def job(self, dest: pathlib.Path) -> tuple[float, dict]:
        started = time.monotonic()
        ok, result = backup_job.execute(dict(self.params, dest_dir=str(dest)))
        seconds = time.monotonic() - started
        if not ok:
            sys.exit(f"bench_backup: the backup job failed: {result['msg']}")
        return seconds, result

    def restore_test(self, manifest: str) -> dict:
        params = {"manifest": manifest, "identity": None, "identity_file": str(self.identity),
                  "pg_bin_dirs": [str(PG_BIN)], "work_dir": str(self.base), "required_tables": None,
                  "timeout": 7200, "age": "age", "mark": False}
        errors = restore_job.validate(params)
        ok, result = (False, {"msg": "; ".join(errors)}) if errors else restore_job.execute(params)
        if not ok or not result.get("ok"):
            sys.exit(f"bench_backup: the restore test failed: {result['msg']}")
        return result


def measure(bench: Bench, label: str, rounds: int) -> dict:
    bare, job, stages, kept = [], [], [], None
    for r in range(rounds):
        if kept:
            shutil.rmtree(pathlib.Path(kept["manifest_path"]).parent)
        for which in ("bare", "job") if r % 2 == 0 else ("job", "bare"):  # alternate who goes first
            if which == "bare":
                seconds, bare_size = bench.bare_dump()
                bare.append(round(seconds, 3))
                continue
            seconds, kept = bench.job(bench.base / f"kept-{label}-{r}")
            job.append(round(seconds, 3))
            timings = dict(kept["timings_s"])
            timings["keep_and_rest"] = round(seconds - sum(timings.values()), 3)  # keep: sha256 of the .age, renames
            stages.append(timings)
        print(f"  {label} round {r + 1}/{rounds}: bare {bare[-1]:.2f} s, job {job[-1]:.2f} s", file=sys.stderr,
              flush=True)
    restore = bench.restore_test(kept["manifest_path"])
    shutil.rmtree(pathlib.Path(kept["manifest_path"]).parent)
    manifest = kept["manifest"]
    median_bare, median_job = statistics.median(bare), statistics.median(job)
    return {
        **bench.facts(), "rounds": rounds, "bare_s": bare, "job_s": job,
        "bare_median_s": median_bare, "job_median_s": median_job, "ratio": round(median_job / median_bare, 3),
        "job_stages_median_s": {k: statistics.median(t[k] for t in stages) for k in stages[0]},
        # What the job adds around its pg_dump (less noisy than the ratio: the dumps vary most).
        "job_extra_median_s": statistics.median(j - t["dump"] for j, t in zip(job, stages, strict=True)),
        "job_stages_s": stages,
        "bare_archive_size": bare_size, "job_archive_size": manifest["plaintext_size"],
        "encrypted_size": manifest["size"], "row_counts": manifest["row_counts"],
        "restore_s": restore["duration_s"], "restore_stages_s": restore["timings_s"],
    }


def report(results: dict, max_ratio: float) -> None:
    print(f"\n{'size':>6} {'database':>11} {'bare pg_dump':>13} {'job':>9} {'ratio':>6} {'archive':>10} "
          f"{'restore test':>13}")
    for label, res in results.items():
        print(f"{label:>6} {res['db_size_mib']:>7.1f} MiB {res['bare_median_s']:>11.2f} s "
              f"{res['job_median_s']:>7.2f} s {res['ratio']:>6.2f} {mib(res['job_archive_size']):>6.2f} MiB "
              f"{res['restore_s']:>11.2f} s")
    print("\njob stages (median s), and the job's time outside its pg_dump:")
    for label, res in results.items():
        print(f"  {label:>6}: " + ", ".join(f"{k} {v:.2f}" for k, v in res["job_stages_median_s"].items())
              + f"; outside the dump {res['job_extra_median_s']:.2f} s")
    print("restore test stages (s):")
    for label, res in results.items():
        print(f"  {label:>6}: " + ", ".join(f"{k} {v:.2f}" for k, v in res["restore_stages_s"].items()))
    worst = max(res["ratio"] for res in results.values())
    print(f"\nworst ratio job / bare pg_dump {worst:.2f} (target <= {max_ratio}): "
          f"{'met' if worst <= max_ratio else 'NOT met'}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="seed,100M,1G",
                        help="comma-separated: seed (the lab seed only) or a database size, e.g. 100M, 1G")
    parser.add_argument("--rounds", type=int, default=3, help="bare + job rounds per size (default 3)")
    parser.add_argument("--max-ratio", type=float, default=1.3, help="exit 1 above this job / bare ratio")
    parser.add_argument("--json", type=pathlib.Path, help="also write every figure to this file")
    args = parser.parse_args()
    try:
        sizes = sorted({label: parse_size(label) for label in args.sizes.split(",")}.items(), key=lambda s: s[1])
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    for tool in ("age", "age-keygen", "pg_dump", "pg_restore"):
        if shutil.which(tool) is None:
            parser.error(f"{tool} not found")

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # SystemExit: the cleanup below runs
    started = datetime.datetime.now(datetime.timezone.utc)
    load_before = os.getloadavg()
    base = pathlib.Path(tempfile.mkdtemp(prefix="bench-backup-", dir=tempfile.gettempdir()))
    base.chmod(0o755)  # the postgres user traverses it (its cluster, the restore test's work dir)
    (base / "pki").mkdir(mode=0o755)
    bench = Bench(base)
    results = {}
    try:
        bench.start()
        for label, target in sizes:
            grow_started = time.monotonic()
            bench.grow(target)
            grow_s = round(time.monotonic() - grow_started, 1)
            print(f"{label}: {mib(bench.db_size())} MiB (generated in {grow_s} s)", file=sys.stderr, flush=True)
            results[label] = dict(measure(bench, label, args.rounds), generate_s=grow_s)
    finally:
        bench.server.stop()
        shutil.rmtree(base, ignore_errors=True)

    report(results, args.max_ratio)
    worst = max(res["ratio"] for res in results.values())
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "started": started.isoformat(timespec="seconds"), "machine": {
                "cpus": os.cpu_count(), "platform": platform.platform(),
                "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
                "pg_dump": subprocess.run(["pg_dump", "--version"], capture_output=True, text=True).stdout.strip()},
            "max_ratio": args.max_ratio, "worst_ratio": worst, "sizes": results}, indent=2) + "\n")
    return 1 if worst > args.max_ratio else 0


if __name__ == "__main__":
    sys.exit(main())
