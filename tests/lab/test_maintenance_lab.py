"""Maintenance on the lab, through the operator CLI (aiadmin-ops maintain), with the app serving on lab-new.

- keys: expired WhatsApp keys seeded in lab-db in the runbook's age buckets for two companies,
  beside fresh keys, expired keys of a protected type and the app's own keys (which
  baileys-whatsapp-service keeps rewriting all along). A dry run deletes nothing and counts what
  a cleanup would delete per bucket; the cleanup deletes exactly that, batch by batch, while the
  app keeps writing, and leaves the protected, fresh and credential rows; a second run has
  nothing to do. A lock another session holds on an expired key stops the cleanup with a clean
  timeout and that company's batch rolled back whole.
- redis: context:* keys beside other keys in lab-new's Redis; a dry run removes nothing; the flush
  removes exactly the context keys; a second run has nothing to do.
- logs: the app acknowledges webhook writes (one log line each) while the logs are rotated three
  times; every acknowledged write's line is found exactly once across the current and rotated
  files (the compressed ones included).

Runs after the disaster-recovery tests in `make test` (lab-new serves there); prepares lab-new
itself when it does not serve.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from tests.lab import test_dr_lab as dr
from tests.writes import WebhookWriter

pytestmark = [pytest.mark.lab, pytest.mark.maintenance]

STATE = Path(os.environ.get("AIADMIN_MAINT_TEST_STATE_DIR", "/var/tmp/aiadmin-ops-maintenance-tests"))
ENV = dict(dr.ENV, AIADMIN_STATE_DIR=str(STATE))
OTHER = 1099  # a second fake company for the per-company figures
BUCKETS = {"0-1d": "6 hours", "1-7d": "3 days", "7-14d": "10 days", "14-30d": "20 days"}
# company -> bucket -> how many expired pre-keys (">30d": sender keys not updated for 45 days)
SEEDED = {1001: {"0-1d": 7, "1-7d": 11, "7-14d": 5, "14-30d": 9, ">30d": 13}, OTHER: {"1-7d": 21}}
PROTECTED, FRESH = 6, 8  # company 1001: expired app-state-sync-keys; session keys valid for 7 days
LOG_DIR = "/opt/ai-admin/shared/logs"
OLD_URL = "http://10.213.10.20:3000"


def cli(*args: str) -> tuple[subprocess.CompletedProcess, dict]:
    return dr.cli(*args, env=ENV)


def stats(report: dict) -> dict:
    return report["custom_stats"]["maintenance"]


def ensure_serving_on_lab_db() -> None:
    """lab-new serving alone on lab-db with the lab's CA; provisioned, reset and deployed only when not.

    (After the database-loss tests lab-new serves on lab-db-new, with its CA; after a window lab-old
    may serve.)"""
    def serves(url: str) -> bool:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=3) as resp:  # noqa: S310 (lab URL)
                return json.loads(resp.read()).get("status") == "healthy"
        except (OSError, ValueError):
            return False

    env = dr.on_host("cat", dr.ENV_FILE, check=False).stdout
    ca = dr.on_host("cat", "/root/.cloud-certs/root.crt", check=False).stdout
    on_lab_db = re.search(r"(?m)^POSTGRES_HOST=['\"]?10\.213\.20\.10['\"]?$", env)
    if not (serves(dr.NEW_URL) and on_lab_db and ca == (dr.ROOT / "lab/state/ca.crt").read_text()
            and not serves(OLD_URL)):
        dr.play("playbooks/provision.yml", "-l", "lab-new")
        dr.play("lab/story-reset.yml", "-e", "lab_reset_start_old=false")
        dr.play("playbooks/deploy.yml", "-e", "deploy_hosts=new")
    assert dr.health()["status"] == "healthy"


@pytest.fixture(scope="module")
def serving(lab):
    shutil.rmtree(STATE, ignore_errors=True)
    STATE.mkdir(parents=True, mode=0o700)
    ensure_serving_on_lab_db()


def seed_keys(conn) -> None:
    conn.execute("DELETE FROM whatsapp_keys WHERE key_id LIKE 'maint-%'")
    conn.execute("INSERT INTO companies (id, title) VALUES (%s, 'LAB FAKE second salon') ON CONFLICT DO NOTHING",
                 (OTHER,))
    for company, buckets in SEEDED.items():
        for bucket, count in buckets.items():
            if bucket == ">30d":
                conn.execute("INSERT INTO whatsapp_keys (company_id, key_type, key_id, value, updated_at, expires_at)"
                             " SELECT %s, 'sender-key', 'maint-stale-' || g, '{}', now() - interval '45 days', NULL"
                             " FROM generate_series(1, %s) g", (company, count))
            else:
                conn.execute("INSERT INTO whatsapp_keys (company_id, key_type, key_id, value, updated_at, expires_at)"
                             " SELECT %s, 'pre-key', 'maint-' || %s || '-' || g, '{}', now() - %s::interval,"
                             " now() - %s::interval FROM generate_series(1, %s) g",
                             (company, bucket, BUCKETS[bucket], BUCKETS[bucket], count))
    conn.execute("INSERT INTO whatsapp_keys (company_id, key_type, key_id, value, updated_at, expires_at)"
                 " SELECT 1001, 'app-state-sync-key', 'maint-sync-' || g, '{}', now() - interval '4 days',"
                 " now() - interval '3 days' FROM generate_series(1, %s) g", (PROTECTED,))
    conn.execute("INSERT INTO whatsapp_keys (company_id, key_type, key_id, value, updated_at, expires_at)"
                 " SELECT 1001, 'session', 'maint-fresh-' || g, '{}', now(), now() + interval '7 days'"
                 " FROM generate_series(1, %s) g", (FRESH,))


def maint_keys(conn) -> dict[str, int]:
    rows = conn.execute("SELECT key_type, count(*) FROM whatsapp_keys WHERE key_id LIKE 'maint-%' "
                        "GROUP BY key_type").fetchall()
    return dict(rows)


def app_key_writes(conn) -> str:
    return conn.execute("SELECT max(updated_at)::text FROM whatsapp_keys WHERE company_id = 1001 "
                        "AND key_type = 'app-state-sync-key' AND key_id NOT LIKE 'maint-%'").fetchone()[0]


@pytest.fixture
def keys(serving, vault):
    with dr.connect(vault) as conn:
        # Expired keys left by the lab's own seed or earlier runs would blur the exact figures.
        cli("maintain", "--job", "keys")
        seed_keys(conn)
        yield conn
        conn.execute("DELETE FROM whatsapp_keys WHERE key_id LIKE 'maint-%%' OR company_id = %s", (OTHER,))
        conn.execute("DELETE FROM whatsapp_auth WHERE company_id = %s", (OTHER,))
        conn.execute("DELETE FROM companies WHERE id = %s", (OTHER,))


def test_keys_dry_run_then_cleanup_while_the_app_writes(keys):
    conn = keys
    deletable = sum(sum(b.values()) for b in SEEDED.values())
    proc, report = cli("maintain", "--job", "keys", "--dry-run")
    assert proc.returncode == 0, proc.stdout[-3000:]
    figures = stats(report)["keys"]
    assert int(figures["deletable"]) == deletable and int(figures["deleted"]["total"]) == 0
    assert int(figures["expired"]) == deletable + PROTECTED
    assert figures["would_delete"] == {"0-1d": 7, "1-7d": 32, "7-14d": 5, "14-30d": 9, ">30d": 13}
    assert maint_keys(conn) == {"pre-key": 53, "sender-key": 13, "app-state-sync-key": PROTECTED, "session": FRESH}

    before = app_key_writes(conn)
    # 8 batches of 10 and 6 pauses of 1.5 s: the cleanup lasts 9 s, longer than the app's 5 s
    # key-write interval, so baileys-whatsapp-service writes while it runs (at the default pause
    # the run took about 2.5 s and sometimes fell between two of the app's writes).
    proc, report = cli("maintain", "--job", "keys", "-e", "maintenance_keys_batch_size=10",
                       "-e", "maintenance_keys_pause_ms=1500")
    assert proc.returncode == 0, proc.stdout[-3000:]
    deleted = stats(report)["keys"]["deleted"]
    assert int(deleted["total"]) == deletable
    assert deleted["buckets"] == {"0-1d": 7, "1-7d": 32, "7-14d": 5, "14-30d": 9, ">30d": 13}
    assert {int(c): int(v["total"]) for c, v in deleted["companies"].items()} == {1001: 45, OTHER: 21}
    assert maint_keys(conn) == {"app-state-sync-key": PROTECTED, "session": FRESH}
    assert conn.execute("SELECT count(*) FROM whatsapp_auth WHERE company_id = 1001").fetchone()[0] == 1
    # baileys-whatsapp-service rewrote its keys during the run, and the app still serves.
    assert app_key_writes(conn) > before
    assert dr.health()["status"] == "healthy"

    proc, _ = cli("maintain", "--job", "keys")
    assert proc.returncode == 0 and "nothing to do" in proc.stdout, proc.stdout[-3000:]


def test_keys_lock_held_by_another_session_times_out_cleanly(keys, vault):
    with dr.connect(vault) as holder:
        holder.autocommit = False
        holder.execute("SELECT 1 FROM whatsapp_keys WHERE company_id = %s AND key_id LIKE 'maint-%%' LIMIT 1 "
                       "FOR UPDATE", (OTHER,))
        proc, _ = cli("maintain", "--job", "keys", "-e", "maintenance_keys_lock_timeout_ms=500")
        holder.rollback()
    out = proc.stdout
    assert proc.returncode == 1, out[-3000:]
    assert "lock" in out.lower() and "timeout" in out.lower(), out[-3000:]
    left = dict(keys.execute("SELECT company_id, count(*) FROM whatsapp_keys WHERE key_id LIKE 'maint-%' "
                             "AND key_type = 'pre-key' GROUP BY company_id").fetchall())
    assert left.get(OTHER) == 21, "the locked company's batch is rolled back whole"


REDIS_COUNT = """
local cursor, n = '0', 0
repeat
  local r = redis.call('SCAN', cursor, 'MATCH', ARGV[1], 'COUNT', 1000)
  cursor, n = r[1], n + #r[2]
until cursor == '0'
return n
"""


def redis(vault: dict, *commands: str, password: str | None = None) -> list[str]:
    """redis-cli on lab-new, the password sent as the first command on stdin (never on argv)."""
    secret = vault["vault_aiadmin_redis_password"] if password is None else password
    quoted = "".join(f"\\x{b:02x}" for b in secret.encode())  # redis-cli's quoting
    lines = [f'AUTH "{quoted}"', *commands]
    proc = subprocess.run(["podman", "exec", "-i", dr.HOST, "redis-cli", "--no-raw"], input="\n".join(lines) + "\n",
                          capture_output=True, text=True, env=ENV, timeout=120, check=True)
    return proc.stdout.splitlines()[1:]


def count(vault: dict, pattern: str) -> int:
    script = REDIS_COUNT.replace("\n", " ").replace('"', '\\"')
    out = redis(vault, f'EVAL "{script}" 0 {pattern}')
    return int(re.sub(r"\D", "", out[-1]))


def test_redis_context_flush_leaves_other_keys(serving, vault):
    redis(vault, *(f"SET context:1001:+000{n:08d} ctx{n}" for n in range(1500)),
          *(f"SET session:maint:{n} s{n}" for n in range(40)), "SET bull:maint:queue 1")
    others = count(vault, "session:maint:*")
    proc, report = cli("maintain", "--job", "redis", "--dry-run")
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert int(stats(report)["redis"]["matched"]) >= 1500 and int(stats(report)["redis"]["removed"]) == 0
    assert count(vault, "context:*") >= 1500

    proc, report = cli("maintain", "--job", "redis")
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert int(stats(report)["redis"]["removed"]) >= 1500
    assert count(vault, "context:*") == 0
    assert count(vault, "session:maint:*") == others == 40 and count(vault, "bull:maint:*") == 1

    proc, _ = cli("maintain", "--job", "redis")
    assert proc.returncode == 0 and "nothing to do" in proc.stdout, proc.stdout[-3000:]
    redis(vault, *(f"DEL session:maint:{n}" for n in range(40)), "DEL bull:maint:queue")


def test_log_rotation_loses_no_line(serving):
    rotations = []

    def rotate() -> None:
        for _ in range(3):
            proc, report = cli("maintain", "--job", "logs")
            rotations.append((proc.returncode, bool(stats(report)["logs"]["rotated"]) if report else False))
            time.sleep(1)

    with WebhookWriter([dr.NEW_URL], interval=0.02) as writer:
        time.sleep(2)
        thread = threading.Thread(target=rotate)
        thread.start()
        thread.join(timeout=600)
        time.sleep(2)
    acked = writer.acked()
    assert rotations == [(0, True)] * 3, rotations
    assert len(acked) > 100, writer.outcomes()
    files = dr.on_host("sh", "-c", f"ls {LOG_DIR}/ai-admin-api.out*").stdout.split()
    assert any(f.endswith(".1") for f in files) and any(f.endswith(".gz") for f in files), files
    text = dr.on_host("sh", "-c", f"zcat -f {LOG_DIR}/ai-admin-api.out*").stdout
    logged = re.findall(r"webhook: acknowledged message \d+ \((\S+)\)", text)
    mine = [i for i in logged if i.startswith(f"probe-{writer.run}-")]
    missing = sorted(set(acked) - set(mine))
    assert not missing, f"{len(missing)} acknowledged writes have no log line: {missing[:10]}"
    assert len(mine) == len(set(mine)), "a line was logged twice"


HOLD = "/usr/local/sbin/pm2-log-hold"
PM2_HOME = "/home/aiadmin/.pm2"


def daemon_threads() -> set[str]:
    """The states of every thread of lab-new's PM2 daemon (T: stopped)."""
    script = f'p=$(cat {PM2_HOME}/pm2.pid); for s in /proc/$p/task/*/stat; do sed "s/.*) //" $s | cut -c1; done'
    return set(dr.on_host("sh", "-c", script).stdout.split())


def test_the_rotation_holds_the_pm2_daemon_and_always_releases_it(serving):
    """What makes copytruncate lossless: every thread of the daemon stopped, then running again,
    by the postrotate or by the guard when logrotate never gets there; a stale pid is left alone."""
    dr.on_host(HOLD, "hold", PM2_HOME, "30")
    try:
        assert daemon_threads() == {"T"}
        dr.on_host(HOLD, "release", PM2_HOME)
        assert "T" not in daemon_threads()
        guard = f"test ! -e {PM2_HOME}/log-hold.pid && pgrep -fc '[s]leep 30; kill -CONT'"
        guard = dr.on_host("sh", "-c", guard, check=False)
        assert guard.stdout.strip() == "0", "the guard outlived the release"

        dr.on_host(HOLD, "hold", PM2_HOME, "2")  # logrotate dies before its postrotate
        assert daemon_threads() == {"T"}
        time.sleep(3)
        assert "T" not in daemon_threads(), "the guard did not release the daemon"

        stale = f"d=$(mktemp -d) && echo 1 > $d/pm2.pid && {HOLD} hold $d 2 && ls $d"
        stale = dr.on_host("sh", "-c", stale, check=False)
        assert stale.returncode == 0 and stale.stdout.split() == ["pm2.pid"], stale
    finally:
        dr.on_host(HOLD, "release", PM2_HOME, check=False)


RELEASES = ("v1.0.0", "v1.1.0", "v1.2.0")  # lab/publish-app-repo.yml's tags


def serving_release() -> str:
    return dr.health()["release"]


def another_release() -> str:
    return next(r for r in RELEASES if r != serving_release())


def unmigrate(vault) -> None:
    """The demo app's migration pending again (its table and its record gone)."""
    with dr.connect(vault) as conn:
        conn.execute("DROP TABLE IF EXISTS booking_reminders, schema_migrations")


def migrated(vault) -> tuple[bool, list[tuple[str, str]]]:
    """(booking_reminders exists, (name, release) rows of schema_migrations)."""
    with dr.connect(vault) as conn:
        table = conn.execute("SELECT to_regclass('booking_reminders') IS NOT NULL").fetchone()[0]
        if conn.execute("SELECT to_regclass('schema_migrations') IS NULL").fetchone()[0]:
            return table, []
        return table, conn.execute("SELECT name, release FROM schema_migrations ORDER BY 1").fetchall()


def weekly(*args: str) -> tuple[subprocess.CompletedProcess, dict]:
    return cli("maintain", "--job", "weekly", "-e", "maintenance_weekly_watch_interval=2", *args)


def test_weekly_backs_up_deploys_migrates_and_watches(serving, vault):
    unmigrate(vault)
    before, target = serving_release(), another_release()
    backups = set((STATE / "backups/ai_admin").glob("*.manifest.json"))
    proc, report = weekly("--version", target, "--watch-seconds", "12")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert set((STATE / "backups/ai_admin").glob("*.manifest.json")) - backups, "no new verified backup off-host"
    assert f"{before} -> {target}" in out and "migrate: applied 001_booking_reminders.sql" in out
    assert migrated(vault) == (True, [("001_booking_reminders.sql", target)])
    assert dr.health()["release"] == target and dr.health()["status"] == "healthy"
    week = stats(report)["weekly"]
    assert week["from"] == before and week["to"] == target and week["verdict"] == "succeeded"
    assert week["watch"]["verdict"] == "ok" and week["watch"]["samples"] >= 3, week


def test_weekly_dry_run_and_bad_release_change_nothing(serving, vault):
    before, pids = serving_release(), dr.pm2_pids(dr.HOST)
    proc, report = weekly("--version", another_release(), "--dry-run")
    assert proc.returncode == 0 and "dry run: stopping here" in proc.stdout, proc.stdout[-3000:]
    assert stats(report)["weekly"]["dry_run"] is True
    proc, _ = weekly("--version", "v9.9.9")
    assert proc.returncode == 1 and 'REFUSED: release "v9.9.9" is neither a tag nor a branch' in proc.stdout
    assert "phase run" not in proc.stdout, "a refused window took a backup"
    assert serving_release() == before and dr.pm2_pids(dr.HOST) == pids


def test_weekly_failing_migration_leaves_the_old_release_serving(serving, vault):
    unmigrate(vault)
    before, pids = serving_release(), dr.pm2_pids(dr.HOST)
    proc, _ = weekly("--version", another_release(), "-e", "app_demo_migration_fail=true")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-3000:]
    assert "MIGRATION FAILED" in out and f"current still points to {before}" in out, out[-3000:]
    assert migrated(vault) == (False, []), "the failed migration left its table or its record"
    assert serving_release() == before and dr.pm2_pids(dr.HOST) == pids, "the serving release was touched"
    assert dr.health()["status"] == "healthy"


def test_weekly_watch_trigger_rolls_the_release_back(serving, vault):
    """The new release passes the deploy's health check, then its processes crash every ~13 s:
    the watch sees more restarts than allowed and the window goes back to the release before."""
    before, target = serving_release(), another_release()
    proc, report = weekly("--version", target, "--watch-seconds", "60", "-e", "app_demo_crash_after_ms=12000")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-3000:]
    assert "ROLLBACK TRIGGER on lab-new: restarts" in out and "WEEKLY WINDOW FAILED, ROLLED BACK" in out, out[-3000:]
    week = stats(report)["weekly"]
    assert week["verdict"] == "rolled back" and week["watch"]["trigger"]["name"] == "restarts", week
    assert week["watch"]["elapsed_s"] < 60, "the watch did not stop at the trigger"
    assert serving_release() == before
    pids = dr.pm2_pids(dr.HOST)
    time.sleep(14)  # longer than the crashing release lived: the release back in place stays up
    assert dr.pm2_pids(dr.HOST) == pids and dr.health()["status"] == "healthy"


FAIL_RUN = "watchfail"  # the failing writer's ids: probe-watchfail-<n>


def test_weekly_watch_sees_messages_failing_and_rolls_back(serving, vault):
    """The new release is healthy (/health, the database connected, no restart), but most of the
    messages it is sent fail at the database (a trigger on `messages` refuses the ids of one writer,
    as a broken schema or permission would): the watch counts the app's per-message log lines, sees
    more than 50 % failing and the window goes back to the release before."""
    before, target = serving_release(), another_release()
    with dr.connect(vault) as conn:
        conn.execute(f"""CREATE OR REPLACE FUNCTION aiadmin_test_refuse_message() RETURNS trigger
                         LANGUAGE plpgsql AS $$ BEGIN
                           IF NEW.body LIKE 'probe-{FAIL_RUN}-%' THEN
                             RAISE EXCEPTION 'test fixture: message refused';
                           END IF;
                           RETURN NEW;
                         END $$""")
        conn.execute("CREATE OR REPLACE TRIGGER aiadmin_test_refuse_message BEFORE INSERT ON messages "
                     "FOR EACH ROW EXECUTE FUNCTION aiadmin_test_refuse_message()")
        try:
            with WebhookWriter(dr.NEW_URL, interval=0.3, run=FAIL_RUN) as failing, \
                    WebhookWriter(dr.NEW_URL, interval=1.0) as passing:
                proc, report = weekly("--version", target, "--watch-seconds", "120")
        finally:
            conn.execute("DROP TRIGGER IF EXISTS aiadmin_test_refuse_message ON messages")
            conn.execute("DROP FUNCTION IF EXISTS aiadmin_test_refuse_message()")
        assert conn.execute("SELECT count(*) FROM messages WHERE body LIKE %s",
                            (f"probe-{FAIL_RUN}-%",)).fetchone()[0] == 0
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-3000:]
    assert "ROLLBACK TRIGGER on lab-new: messages" in out and "WEEKLY WINDOW FAILED, ROLLED BACK" in out, out[-3000:]
    week = stats(report)["weekly"]
    watch = week["watch"]
    assert week["verdict"] == "rolled back" and watch["trigger"]["name"] == "messages", week
    assert watch["elapsed_s"] < 120, "the watch did not stop at the trigger"
    figures = watch["figures"]
    handled = figures["messages_ok"] + figures["messages_failed"]
    assert handled >= 10 and figures["messages_ok"] >= 1, figures  # the passing writer's messages counted too
    assert 100 * figures["messages_failed"] / handled > 50, figures
    assert not figures["restarts"] and figures["failed_samples_max"] < 3, "another trigger's condition, not messages"
    assert passing.acked() and not failing.acked(), "the fixture refused the wrong messages"
    assert serving_release() == before and dr.health()["status"] == "healthy"
