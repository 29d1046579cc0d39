#!/usr/bin/env python3
"""Benchmark: the expired session keys cleanup (`session_keys` module) at about 1 M keys, and its
effect on the app's queries while it runs.

A loopback PostgreSQL 15 with TLS (tests/gates/gates_pg.py: verify-full against a test CA,
scram-sha-256), set back to durable commits (fsync, synchronous_commit, full_page_writes on) and
128 MB of shared buffers, gets the lab's schema (lab/files/seed.sql) and --keys generated
`whatsapp_keys` rows over --companies companies (jsonb of ~250-400 bytes of base64 key material):
40 % fresh (expiring in 1-7 days), 5 % expired of a protected type (app-state-sync-key, never
deleted) and 55 % deletable, spread evenly over the runbook's five age buckets.

A probe, on its own TLS connection like one of the app's pooled clients, does what
baileys-whatsapp-service does with its keys every --probe-ms: one key read by primary key, then
one upsert of an app-state-sync-key (app/src/writes.js), and records each one's latency. It runs
--baseline-s before the cleanup (the baseline), during it, and --baseline-s after.

The module runs as Ansible runs it (the module file, its module_utils served as AnsiballZ
bundles them, its arguments in a 0600 file): `state=health` (the count every `aiadmin-ops health`
run makes), then `state=cleanup` with the module's defaults (batches of 1000, 100 ms pause,
lock_timeout 2 s) unless told otherwise. Reported: deleted keys, batches, wall time, keys/s, the
probe's p50/p95/p99/max per phase and its errors; then the counts are checked (every deletable
expired key gone; the fresh and protected keys and the credentials untouched: exit 1 otherwise).

    .venv/bin/python benchmarks/bench_keys.py [--keys 1000000] [--companies 10] [--batch-size 1000]
        [--pause-ms 100] [--json out.json]

Needs root or the postgres user's rights and the PostgreSQL 15 server binaries (PG_GATES_BIN).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

from psycopg import sql

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.gates.gates_lib import MODRUN  # noqa: E402 - needs ROOT on sys.path
from tests.gates.gates_pg import PG_BIN, USER_PASSWORD, PgServer, _as_postgres, free_port, make_pki  # noqa: E402

DATABASE = USER = "ai_admin"
FIRST_COMPANY = 3001
BUCKET_AGES = {"0-1d": "6 hours", "1-7d": "3 days", "7-14d": "10 days", "14-30d": "20 days"}
DURABLE = {"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on", "shared_buffers": "128MB"}

NOISE = r"""
CREATE FUNCTION pg_temp.noise(n int) RETURNS text LANGUAGE sql VOLATILE AS $$
  SELECT left(translate(encode(decode(string_agg(md5(random()::text), ''), 'hex'), 'base64'), E'\n', ''), n)
  FROM generate_series(1, n * 3 / 64 + 1) $$;
"""
# %(what)s: a key_id prefix; %(type)s, %(updated)s, %(expires)s: SQL expressions; %(n)s rows per company.
GROW = """
INSERT INTO whatsapp_keys (company_id, key_type, key_id, value, created_at, updated_at, expires_at)
SELECT c, {type}, {what} || '-' || g,
       jsonb_build_object('keyPair', jsonb_build_object('private', pg_temp.noise(44), 'public', pg_temp.noise(44)),
                          'signature', pg_temp.noise(88), 'keyId', g, 'data', pg_temp.noise((random() * 150)::int)),
       {updated} - interval '1 day', {updated}, {expires}
FROM generate_series(%(first)s::int, %(last)s::int) AS c, generate_series(1, %(n)s::int) AS g
"""
READ_KEY = "SELECT value FROM whatsapp_keys WHERE company_id = %s AND key_type = 'session' AND key_id = %s"
UPSERT_KEY = ("INSERT INTO whatsapp_keys (company_id, key_type, key_id, value, updated_at, expires_at) "
              "VALUES (%s, 'app-state-sync-key', %s, %s::jsonb, now(), now() + interval '7 days') "
              "ON CONFLICT (company_id, key_type, key_id) DO UPDATE "
              "SET value = EXCLUDED.value, updated_at = EXCLUDED.updated_at, expires_at = EXCLUDED.expires_at")


def percentiles(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    ordered = sorted(values)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)

    return {"n": len(ordered), "p50": at(0.50), "p95": at(0.95), "p99": at(0.99), "max": round(ordered[-1], 2)}


class Probe(threading.Thread):
    """The app's key traffic on its own connection; latencies (ms) tagged with the phase."""

    def __init__(self, server: PgServer, companies: int, fresh_per_company: int, every_ms: float):
        super().__init__(daemon=True)
        self.server, self.companies, self.fresh, self.every = server, companies, fresh_per_company, every_ms / 1000
        self.phase = "baseline"
        self.samples: dict[str, dict[str, list[float]]] = {}
        self.errors: dict[str, int] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        conn = self.server.connect(user=USER, password=USER_PASSWORD, dbname=DATABASE, autocommit=True)
        tick = 0
        while not self.stop.wait(self.every):
            tick += 1
            company = FIRST_COMPANY + tick % self.companies
            phase = self.samples.setdefault(self.phase, {"read": [], "upsert": []})
            for op, query, args in (
                    ("read", READ_KEY, (company, f"fresh-{random.randint(1, self.fresh)}")),
                    ("upsert", UPSERT_KEY, (company, f"probe-{tick % 4}", json.dumps({"tick": tick})))):
                started = time.perf_counter()
                try:
                    conn.execute(query, args)
                except Exception:  # counted: a failed app query is a figure here
                    self.errors[self.phase] = self.errors.get(self.phase, 0) + 1
                    conn = self.server.connect(user=USER, password=USER_PASSWORD, dbname=DATABASE, autocommit=True)
                    continue
                phase[op].append((time.perf_counter() - started) * 1000)
        conn.close()


class Bench:
    def __init__(self, base: pathlib.Path, args: argparse.Namespace):
        self.base, self.args = base, args
        self.server = PgServer("bench-keys", base / "pg", free_port(), tls=True, pki=make_pki(base / "pki"))
        self.per_company = args.keys // args.companies
        self.fresh = int(self.per_company * 0.40)
        self.protected = int(self.per_company * 0.05)
        self.per_bucket = (self.per_company - self.fresh - self.protected) // 5

    def start(self) -> None:
        self.server.start()
        with self.server.admin() as conn:
            for name, value in DURABLE.items():
                conn.execute(sql.SQL("ALTER SYSTEM SET {} = {}").format(sql.Identifier(name), sql.Literal(value)))
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(USER),
                                                                            sql.Literal(USER_PASSWORD)))
            conn.execute(f"CREATE DATABASE {DATABASE} OWNER {USER}")
        subprocess.run(_as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(self.server.data), "-l", str(self.server.log),
                                     "-w", "-t", "60", "restart"]), check=True, capture_output=True, timeout=120)
        with self.connect() as conn:  # the app's owner creates its tables, as on the real host
            conn.execute((ROOT / "lab/files/seed.sql").read_text())

    def connect(self):
        return self.server.connect(user=USER, password=USER_PASSWORD, dbname=DATABASE, autocommit=True)

    def grow(self) -> dict:
        last = FIRST_COMPANY + self.args.companies - 1
        span = {"first": FIRST_COMPANY, "last": last}
        kinds = [("'fresh'", "'session'", "now() - random() * interval '1 day'",
                  "now() + interval '1 day' + random() * interval '6 days'", self.fresh),
                 ("'sync'", "'app-state-sync-key'", "now() - interval '4 days'", "now() - interval '3 days'",
                  self.protected),
                 ("'stale'", "'sender-key'", "now() - interval '45 days'", "NULL", self.per_bucket)]
        kinds += [(f"'{bucket}'", "'pre-key'", f"now() - interval '{age}'", f"now() - interval '{age}'",
                   self.per_bucket) for bucket, age in BUCKET_AGES.items()]
        with self.connect() as conn:
            conn.execute(NOISE)
            conn.execute("INSERT INTO companies (id, title) SELECT c, 'BENCH FAKE ' || c "
                         "FROM generate_series(%(first)s::int, %(last)s::int) c ON CONFLICT DO NOTHING", span)
            conn.execute("INSERT INTO whatsapp_auth (company_id, creds) SELECT c, '{\"me\": \"bench\"}' "
                         "FROM generate_series(%(first)s::int, %(last)s::int) c ON CONFLICT DO NOTHING", span)
            for what, key_type, updated, expires, n in kinds:
                print(f"  generating {n * self.args.companies} {what.strip(chr(39))} keys", file=sys.stderr, flush=True)
                conn.execute(GROW.format(what=what, type=key_type, updated=updated, expires=expires),
                             dict(span, n=n))
            conn.execute("VACUUM ANALYZE whatsapp_keys")
        return self.counts()

    def counts(self) -> dict:
        with self.connect() as conn:
            row = conn.execute(
                "SELECT count(*), count(*) FILTER (WHERE key_type = 'session' AND expires_at > now()), "
                "count(*) FILTER (WHERE key_type = 'app-state-sync-key'), "
                "count(*) FILTER (WHERE key_type NOT IN ('app-state-sync-key') AND (expires_at < now() "
                "OR updated_at < now() - interval '30 days')), (SELECT count(*) FROM whatsapp_auth), "
                "pg_total_relation_size('whatsapp_keys') FROM whatsapp_keys").fetchone()
        return dict(zip(("keys", "fresh", "protected", "deletable", "auth", "table_bytes"), row, strict=True))

    def module(self, **overrides) -> tuple[dict, float]:
        args = self.server.module_args(database=DATABASE, user=USER, password=USER_PASSWORD, **overrides)
        path = self.base / "args.json"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump({"ANSIBLE_MODULE_ARGS": args}, fh)
        started = time.monotonic()
        proc = subprocess.run([sys.executable, str(MODRUN), str(ROOT / "plugins/modules/session_keys.py"), str(path)],
                              capture_output=True, text=True, cwd=ROOT, timeout=3600, check=False)
        seconds = time.monotonic() - started
        path.unlink()
        try:
            result = json.loads(proc.stdout)
        except json.JSONDecodeError:
            sys.exit(f"bench_keys: session_keys printed no JSON (rc {proc.returncode}): {proc.stderr[-2000:]}")
        if result.get("failed"):
            sys.exit(f"bench_keys: session_keys failed: {result.get('msg')}")
        return result, seconds


def measure(bench: Bench, args: argparse.Namespace) -> dict:
    before = bench.grow()
    print(f"generated: {before}", file=sys.stderr, flush=True)
    health, health_s = bench.module(state="health")
    probe = Probe(bench.server, args.companies, bench.fresh, args.probe_ms)
    probe.start()
    time.sleep(args.baseline_s)
    probe.phase = "cleanup"
    print("cleanup running", file=sys.stderr, flush=True)
    result, cleanup_s = bench.module(state="cleanup", batch_size=args.batch_size, pause_ms=args.pause_ms)
    probe.phase = "after"
    time.sleep(args.baseline_s)
    probe.stop.set()
    probe.join(timeout=30)
    after = bench.counts()
    health_after, health_after_s = bench.module(state="health")
    deleted = result["deleted"]["total"]
    return {
        "before": before, "after": after,
        "health": {"wall_s": round(health_s, 2), "module_ms": health["duration_ms"], "expired": health["expired"],
                   "deletable": health["deletable"], "level": health["level"],
                   "after_wall_s": round(health_after_s, 2), "after_module_ms": health_after["duration_ms"]},
        "cleanup": {"deleted": deleted, "batches": result["batches"], "wall_s": round(cleanup_s, 2),
                    "module_ms": result["duration_ms"], "keys_per_s": round(deleted / (result["duration_ms"] / 1000)),
                    "buckets": result["deleted"]["buckets"], "remaining_expired": result["remaining"],
                    "batch_size": args.batch_size, "pause_ms": args.pause_ms},
        "probe": {phase: {op: percentiles(v) for op, v in ops.items()} for phase, ops in probe.samples.items()},
        "probe_errors": probe.errors,
        "checks": {
            "every deletable key deleted": after["deletable"] == 0 and deleted == before["deletable"],
            "fresh keys kept": after["fresh"] == before["fresh"],
            "protected keys kept": after["protected"] >= before["protected"],
            "credentials kept": after["auth"] == before["auth"],
            "no probe error": not probe.errors,
        },
    }


def report(res: dict) -> None:
    c, h = res["cleanup"], res["health"]
    print(f"\nkeys {res['before']['keys']} ({res['before']['table_bytes'] / (1 << 20):.0f} MiB with indexes), "
          f"{res['before']['deletable']} deletable, {res['before']['fresh']} fresh, "
          f"{res['before']['protected']} protected")
    print(f"health (state=health): {h['module_ms'] / 1000:.2f} s in the module ({h['wall_s']} s with the "
          f"interpreter's start) before, {h['after_module_ms'] / 1000:.2f} s after; level {h['level']}")
    print(f"cleanup: {c['deleted']} keys in {c['batches']} batches of {c['batch_size']} (pause {c['pause_ms']} ms), "
          f"{c['module_ms'] / 1000:.1f} s: {c['keys_per_s']} keys/s; buckets {c['buckets']}")
    print("the app's key queries (ms):")
    for phase, ops in res["probe"].items():
        print(f"  {phase:>8}: " + "; ".join(f"{op} n {p['n']} p50 {p.get('p50')} p95 {p.get('p95')} "
                                          f"p99 {p.get('p99')} max {p.get('max')}" for op, p in ops.items()))
    print(f"probe errors: {res['probe_errors'] or 'none'}")
    for name, ok in res["checks"].items():
        print(f"  {'ok ' if ok else 'FAIL'} {name}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=1_000_000, help="keys to generate (default 1000000)")
    parser.add_argument("--companies", type=int, default=10, help="companies they belong to (default 10)")
    parser.add_argument("--batch-size", type=int, default=1000, help="the module's batch_size (its default 1000)")
    parser.add_argument("--pause-ms", type=int, default=100, help="the module's pause_ms (its default 100)")
    parser.add_argument("--probe-ms", type=float, default=20, help="the app probe's interval (default 20 ms)")
    parser.add_argument("--baseline-s", type=float, default=15, help="probe time before and after (default 15)")
    parser.add_argument("--json", type=pathlib.Path, help="also write every figure to this file")
    args = parser.parse_args()
    if args.keys < 1000 or args.companies < 1 or args.keys // args.companies < 100:
        parser.error("--keys must be >= 1000, with at least 100 keys per company")

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # SystemExit: the cleanup below runs
    started = datetime.datetime.now(datetime.timezone.utc)
    load_before = os.getloadavg()
    base = pathlib.Path(tempfile.mkdtemp(prefix="bench-keys-", dir=tempfile.gettempdir()))
    base.chmod(0o755)  # the postgres user traverses it
    (base / "pki").mkdir(mode=0o755)
    bench = Bench(base, args)
    try:
        bench.start()
        res = measure(bench, args)
    finally:
        bench.server.stop()
        shutil.rmtree(base, ignore_errors=True)
    report(res)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "started": started.isoformat(timespec="seconds"),
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "loadavg_before": load_before,
                        "loadavg_after": os.getloadavg()},
            "args": {k: str(v) for k, v in vars(args).items()}, **res}, indent=2) + "\n")
    return 0 if all(res["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
