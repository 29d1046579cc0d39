"""The migration window on the lab, through the real operator CLI (aiadmin-ops).

Every test drives lab-old / lab-new / lab-db / lab-egress. A monitor samples, every 0.2 s from
the controller, which client addresses hold the app's database sessions and the WhatsApp
session lock (pg advisory lock): the single-writer evidence ("at most one host at every
moment"). A webhook writer (tests/writes.py) POSTs a steady stream of messages to whichever
host answers; afterwards every acknowledged write must be in the database exactly once, and a
stopped host must have acknowledged nothing after its stop was proven. Each test asserts where
the app runs afterwards, the exit code and the verdict.

Preparation (once per module): scripts/demo --prepare (old provisioned and serving on the
public DB endpoint, new provisioned, the lab git remote published); each test then resets
the story (lab/story-reset.yml: new stopped and proven, old serving). The CLI's state
directory is a test one (AIADMIN_STATE_DIR), outside the checkout.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from aiadmin_ops.downtime import AnyProbe
from tests.helpers import LAB_VAULT_PASSWORD, ROOT, podman
from tests.writes import WebhookWriter

# `make test` runs `scripts/demo --prepare` as its own stage, then these with AIADMIN_SKIP_PREPARE=1.
pytestmark = [pytest.mark.lab, pytest.mark.window]

OLD, NEW = "10.213.10.20", "10.213.20.30"  # the hosts' addresses as the database sees them
OLD_URL, NEW_URL = "http://10.213.10.20:3000", "http://10.213.10.30:3000"  # their public API
LOCK_CLASS = 0x41494144
BIN = ROOT / ".venv/bin"
STATE = Path(os.environ.get("AIADMIN_TEST_STATE_DIR", "/var/tmp/aiadmin-ops-window-tests"))
NEW_VERSION = "v1.1.0"
LOCK = "/run/aiadmin-ops/run.lock"
# The operator's shell holds secrets of its own (canaries): none may reach a run's record, argv,
# the hosts or any file the CLI writes (test_no_secret_in_any_record_log_or_argv, last).
CANARY = "CANARY-7d41e0-operator-secret-not-real"
OPERATOR_SECRETS = {"AWS_SECRET_ACCESS_KEY": CANARY, "GITHUB_TOKEN": f"{CANARY}-gh",
                    "DATABASE_URL": f"postgres://app:{CANARY}-url@db.invalid/x"}
ENV = dict(os.environ, CONTAINERS_CONF=str(ROOT / "containers.conf"), ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"),
           PATH=f"{BIN}:{os.environ.get('PATH', '')}", AIADMIN_STATE_DIR=str(STATE), **OPERATOR_SECRETS)
# The tests' own ansible-playbook runs (story resets, the demo's preparation) are not the CLI's:
# they get the operator's environment without its secrets, so that the sampler's hits are the CLI's.
HARNESS_ENV = {k: v for k, v in ENV.items() if k not in OPERATOR_SECRETS}
APP_NAMES = ("ai-admin-api", "ai-admin-worker-v2", "ai-admin-batch-processor", "whatsapp-backup-service",
             "ai-admin-booking-monitor", "ai-admin-telegram-bot", "baileys-whatsapp-service",
             "whatsapp-safe-monitor")
SESSIONS_SQL = """
SELECT coalesce(host(a.client_addr), 'local') AS addr,
       count(DISTINCT a.pid) FILTER (WHERE a.application_name = ANY(%s)) AS app,
       count(DISTINCT l.pid) AS locks
FROM pg_stat_activity a
LEFT JOIN pg_locks l ON l.pid = a.pid AND l.locktype = 'advisory' AND l.granted
                     AND l.classid = %s::oid AND l.objsubid = 2
WHERE a.backend_type = 'client backend' AND a.pid <> pg_backend_pid()
GROUP BY 1
"""
# Tables only the seed writes: their row counts never change during a window.
STATIC_TABLES = ("companies", "clients", "services", "staff", "staff_schedules", "bookings", "whatsapp_auth")


def connect(vault: dict):
    import psycopg

    return psycopg.connect(host="10.213.10.10", port=5432, dbname="ai_admin", user="ai_admin",
                           password=vault["vault_aiadmin_db_password"], sslmode="verify-full",
                           sslrootcert=str(ROOT / "lab/state/ca.crt"), connect_timeout=5,
                           application_name="aiadmin-ops-test-monitor", autocommit=True)


def sessions(conn) -> dict[str, dict[str, int]]:
    rows = conn.execute(SESSIONS_SQL, (list(APP_NAMES), LOCK_CLASS)).fetchall()
    return {addr: {"app": app, "locks": locks} for addr, app, locks in rows}


def row_counts(conn) -> dict[str, int]:
    return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in STATIC_TABLES}  # noqa: S608


class Monitor:
    """Samples the session/lock holders per address while a window runs."""

    def __init__(self, vault: dict, interval: float = 0.2):
        self.conn = connect(vault)
        self.interval = interval
        self.samples: list[tuple[float, dict]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            # A missed sample (e.g. while lab-db restarts) is not evidence either way.
            with contextlib.suppress(Exception):
                self.samples.append((time.time(), sessions(self.conn)))
            if self.conn.closed or self.conn.broken:
                with contextlib.suppress(Exception):
                    self.conn = connect_again(self.conn)
            self._stop.wait(self.interval)

    def __enter__(self) -> Monitor:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)
        self.conn.close()

    def assert_single_writer(self) -> None:
        assert len(self.samples) > 10, "the monitor took too few samples"
        for ts, snap in self.samples:
            running = [a for a in (OLD, NEW) if snap.get(a, {}).get("app", 0) > 0]
            holders = [a for a, s in snap.items() if s["locks"] > 0]
            assert len(running) <= 1, f"app sessions from both hosts at {ts}: {snap}"
            assert len(holders) <= 1, f"two session lock holders at {ts}: {snap}"


def connect_again(conn):
    import psycopg

    info = conn.info
    return psycopg.connect(host=info.host, port=info.port, dbname=info.dbname, user=info.user,
                           password=info.password, sslmode="verify-full", sslrootcert=str(ROOT / "lab/state/ca.crt"),
                           connect_timeout=5, application_name="aiadmin-ops-test-monitor", autocommit=True)


def pm2_pids(container: str) -> str:
    proc = podman("exec", container, "pgrep", "-u", "aiadmin", "-f", "main\\.js", check=False)
    return " ".join(sorted(proc.stdout.split()))


def where_app_runs(conn) -> dict[str, object]:
    snap = sessions(conn)
    return {
        "holder": [a for a, s in snap.items() if s["locks"] > 0],
        "old_procs": bool(pm2_pids("lab-old")),
        "new_procs": bool(pm2_pids("lab-new")),
    }


def wait_single_holder(conn, addr: str, timeout: float = 30) -> dict:
    deadline = time.time() + timeout
    state = where_app_runs(conn)
    while time.time() < deadline and state["holder"] != [addr]:
        time.sleep(0.5)
        state = where_app_runs(conn)
    return state


def ledger() -> dict:
    files = sorted((STATE / "ledger").glob("migrate-lab*.json"))
    if not files:
        return {}
    try:
        return json.loads(files[-1].read_text())
    except json.JSONDecodeError:
        return {}


def output_report(stdout: str) -> dict:
    for line in stdout.splitlines():
        if line.startswith("report: "):
            return json.loads(Path(line.split()[1]).read_text())
    return {}


def cli(*args: str, timeout: float = 1200) -> tuple[subprocess.CompletedProcess, dict]:
    proc = subprocess.run([str(BIN / "aiadmin-ops"), *args], capture_output=True, text=True, env=ENV,
                          cwd=ROOT, timeout=timeout, check=False)
    sys.stdout.write(proc.stdout[-6000:])
    return proc, output_report(proc.stdout)


def cli_background(*args: str) -> subprocess.Popen:
    return subprocess.Popen([str(BIN / "aiadmin-ops"), *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=ENV, cwd=ROOT, start_new_session=True)


def descendants(root: int) -> list[int]:
    """The pids of every process below root (read from /proc, before anything is killed)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def kill_run(proc: subprocess.Popen) -> str:
    """SIGKILL the CLI and its ansible-playbook (the controller dies; the hosts keep their state).

    Only the CLI's own process tree: ansible-runner starts ansible-playbook in a session of its
    own, so its process group is killed too, but never a group this test runs in (Molecule's
    ansible-playbook beside these tests shares CI's group: killing it by name killed CI)."""
    groups = {proc.pid}
    for pid in descendants(proc.pid):
        with contextlib.suppress(ProcessLookupError):
            groups.add(os.getpgid(pid))
    groups.discard(os.getpgrp())
    for group in groups:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)
    out, _ = proc.communicate(timeout=60)
    return out


def play(playbook: str, *extra: str, timeout: float = 1800) -> None:
    proc = subprocess.run([str(BIN / "ansible-playbook"), "-i", "inventories/lab/hosts.yml", "--vault-id",
                           f"lab@{LAB_VAULT_PASSWORD}", playbook, *extra], capture_output=True, text=True,
                          env=HARNESS_ENV, cwd=ROOT, timeout=timeout, check=False)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


def wait_for(predicate, timeout: float = 900, what: str = "condition") -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@contextlib.contextmanager
def hold(phase: str):
    """Make a window started with migration_test_hold_before=<phase> stop before that phase."""
    STATE.mkdir(parents=True, exist_ok=True, mode=0o700)
    flag, holding = STATE / f"hold-{phase}", STATE / f"holding-{phase}"
    holding.unlink(missing_ok=True)
    flag.write_text("held by the test\n")
    try:
        yield holding
    finally:
        flag.unlink(missing_ok=True)


def release(phase: str) -> None:
    (STATE / f"hold-{phase}").unlink(missing_ok=True)


def story_is_reset(conn) -> bool:
    """Old serves (its API healthy with the release it pins, the session lock held from its
    address), new runs no app process."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"{OLD_URL}/health", timeout=3) as resp:  # noqa: S310 (lab URL)
            health = json.loads(resp.read())
    except (OSError, ValueError):
        return False
    state = where_app_runs(conn)
    return (health.get("status") == "healthy" and health.get("release") == "v1.0.0"
            and state["holder"] == [OLD] and state["old_procs"] and not state["new_procs"])


@pytest.fixture(scope="module")
def prepared(lab, vault):
    if os.environ.get("AIADMIN_SKIP_PREPARE") != "1":
        proc = subprocess.run([str(ROOT / "scripts/demo"), "--prepare"], capture_output=True, text=True,
                              env=HARNESS_ENV, cwd=ROOT, timeout=3600, check=False)
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return vault


@pytest.fixture
def story(prepared):
    """Before each test: new stopped (proven), old serving, no ledger, no run lock left over."""
    for container in ("lab-old", "lab-new"):
        podman("exec", container, "rm", "-f", LOCK, check=False)
    conn = connect(prepared)
    # Live state decides here too: the reset play (about 20 s) runs only when the story is not
    # already as it should be (after a preflight fault or a --check it is).
    if not story_is_reset(conn):
        play("lab/story-reset.yml")
    shutil.rmtree(STATE / "ledger", ignore_errors=True)
    before = row_counts(conn)
    assert wait_single_holder(conn, OLD)["holder"] == [OLD]
    yield conn
    import psycopg

    try:
        after = row_counts(conn)
    except psycopg.OperationalError:  # lab-db was restarted by the test
        conn = connect(prepared)
        after = row_counts(conn)
    assert after == before, "rows of the seeded tables changed"
    conn.close()


def window(*extra: str) -> list[str]:
    return ["migrate", "--yes", *extra]


def assert_writes(writer: WebhookWriter, conn, stopped_url: str | None = None, stopped_at: float | None = None):
    result = writer.verify(conn)
    assert result["acked"] > 0, result
    assert result["missing"] == [] and result["duplicates"] == [], result
    if stopped_url is not None:
        assert stopped_at, "the ledger did not record when the stop was proven"
        late = writer.acked_by_after(stopped_url, float(stopped_at))
        assert late == [], f"{stopped_url} acknowledged writes after its stop was proven: {late}"
    return result


# ----------------------------------------------------------------------------------- read only
def test_check_changes_nothing(story, prepared):
    old_pids = pm2_pids("lab-old")
    current = podman("exec", "lab-new", "readlink", "/opt/ai-admin/current", check=False).stdout
    with Monitor(prepared) as mon:
        proc, report = cli("migrate", "--check")
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert report["verdict"] == "succeeded"
    assert [p["name"] for p in report["phases"]][:2] == ["confirm", "preflight"]
    assert "every gate is GO" in proc.stdout and report["custom_stats"]["migrate_status"] == "checked"
    assert not ledger(), "--check must not write the ledger"
    assert pm2_pids("lab-old") == old_pids, "old host touched"
    assert podman("exec", "lab-new", "readlink", "/opt/ai-admin/current", check=False).stdout == current
    assert where_app_runs(story)["holder"] == [OLD]
    for container in ("lab-old", "lab-new"):
        assert podman("exec", container, "test", "-e", LOCK, check=False).returncode == 1, "--check left a lock"
    mon.assert_single_writer()


# ----------------------------------------------------------------------------------- preflight
def _systemctl(action: str, unit: str):
    return lambda: podman("exec", "lab-new", "systemctl", action, unit)


PREFLIGHT_FAULTS = {
    "private-network": (lambda: podman("network", "disconnect", "aiadmin-lab-private", "lab-new"),
                        lambda: podman("network", "connect", "--ip", NEW, "aiadmin-lab-private", "lab-new"),
                        "NO-GO at step"),
    "redis-down": (_systemctl("stop", "redis-server"), _systemctl("start", "redis-server"), "NO-GO Redis"),
    "xray-egress-down": (_systemctl("stop", "xray"), _systemctl("start", "xray"), "NO-GO egress"),
    "pm2-daemon-dead": (_systemctl("stop", "pm2-aiadmin"), _systemctl("start", "pm2-aiadmin"),
                        "PM2 daemon of lab-new is not running"),
}


def assert_stopped_before_any_change(story, report, old_pids, writer, mon) -> None:
    """No outage, the old host untouched and still the one writer, nothing deployed."""
    assert report["downtime"]["gaps"] == [], report["downtime"]
    assert pm2_pids("lab-old") == old_pids, "old host touched"
    state = where_app_runs(story)
    assert state["holder"] == [OLD] and not state["new_procs"]
    assert "deploy" not in ledger()["done"]
    assert_writes(writer, story)
    assert writer.acked_by(NEW_URL) == []
    mon.assert_single_writer()


@pytest.mark.parametrize("fault", list(PREFLIGHT_FAULTS))
def test_preflight_fault_stops_with_no_downtime(story, prepared, fault):
    inject, undo, expected = PREFLIGHT_FAULTS[fault]
    old_pids = pm2_pids("lab-old")
    inject()
    try:
        with Monitor(prepared) as mon, WebhookWriter([OLD_URL, NEW_URL]) as writer:
            proc, report = cli(*window())
    finally:
        undo()
    assert proc.returncode != 0
    assert report["verdict"].startswith("failed")
    assert report["custom_stats"].get("migrate_failed_phase") == "preflight", report["custom_stats"]
    assert expected in proc.stdout, proc.stdout[-3000:]
    assert "kept the service" in proc.stdout
    assert_stopped_before_any_change(story, report, old_pids, writer, mon)


def test_dump_that_does_not_restore_stops_before_any_change(story, prepared, tmp_path):
    """The window's fresh dump is restore-tested before the deploy: encrypted to a throwaway
    public key made here (the operator's identity in the vault cannot open it), the restore test
    fails and the window stops in its backups phase; nothing changed, no outage. (A public key
    on the command line is no secret; the CLI refuses an identity there.)"""
    key = tmp_path / "other.key"
    made = subprocess.run(["age-keygen", "-o", str(key)], check=True, capture_output=True, text=True)
    other = made.stderr.split("Public key: ", 1)[1].split()[0]
    old_pids = pm2_pids("lab-old")
    with Monitor(prepared) as mon, WebhookWriter([OLD_URL, NEW_URL]) as writer:
        proc, report = cli(*window("-e", f'migration_backup_age_recipients=["{other}"]'))
    assert proc.returncode != 0
    assert report["custom_stats"].get("migrate_failed_phase") == "backups", report["custom_stats"]
    assert "does not restore" in proc.stdout and "decrypt" in proc.stdout, proc.stdout[-3000:]
    assert_stopped_before_any_change(story, report, old_pids, writer, mon)


def test_pool_too_small_stops_at_preflight(story, prepared):
    old_pids = pm2_pids("lab-old")
    with Monitor(prepared) as mon:
        proc, report = cli(*window("-e", "migration_pool_warn_pct=40", "-e", "migration_pool_critical_pct=50"))
    assert proc.returncode != 0
    assert report["custom_stats"].get("migrate_failed_phase") == "preflight"
    # The budget itself says no (21 for lab-new is more than half the usable slots), not a parameter error.
    assert "reaches critical_pct 50" in proc.stdout and "invalid parameters" not in proc.stdout, proc.stdout[-3000:]
    assert pm2_pids("lab-old") == old_pids
    assert where_app_runs(story)["holder"] == [OLD]
    mon.assert_single_writer()


def test_gates_go_on_the_serving_host(story, prepared):
    """The read-only gates on a serving system: the host's own sessions are inside its demand."""
    proc, _ = cli("gates", "-e", "gates_from=old")
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "GO pool" in proc.stdout and "NO-GO" not in proc.stdout


# ----------------------------------------------------------------------------------- windows
def test_window_with_writes_nothing_to_do_then_rollback(story, prepared):
    with Monitor(prepared) as mon, WebhookWriter([OLD_URL, NEW_URL]) as writer:
        proc, report = cli(*window())
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert report["verdict"] == "succeeded"
    assert [p["name"] for p in report["phases"]] == [
        "confirm", "preflight", "backups", "deploy", "cutover", "smoke", "verdict"]
    down = report["downtime"]
    print(f"\nMEASURED cutover downtime: {down['longest_gap_ms']:.0f} ms; window {report['duration_s']:.1f} s")
    assert down["samples"] > 0
    state = where_app_runs(story)
    assert state["holder"] == [NEW] and not state["old_procs"] and state["new_procs"]
    book = ledger()
    assert book["status"] == "succeeded" and book["app_running_on"] == "new"
    backups = Path(book["backups"])
    assert STATE in backups.parents and ROOT not in backups.parents
    sums = (backups / "SHA256SUMS").read_text()
    assert ".dump.age" in sums and ".env.age" in sums and "config.json.age" in sums
    # Nothing in plain on the controller: every copy is age-encrypted (the manifest and sidecars
    # hold checksums and counts only).
    plain = [p.name for p in backups.iterdir() if not p.name.endswith((".age", ".manifest.json", ".sha256"))
             and p.name != "SHA256SUMS"]
    assert plain == [] and all(p.read_bytes().startswith(b"age-encryption.org/v1")
                               for p in backups.glob("*.age")), plain
    assert book["dump_verification"] == "restored" and book["dump_row_counts"]["public.clients"] == 1300
    assert oct(backups.stat().st_mode & 0o777) == "0o700"
    written = assert_writes(writer, story, OLD_URL, book["old_stopped_at"])
    assert writer.acked_by(OLD_URL) and writer.acked_by(NEW_URL), "the writes did not go through the cutover"
    print(f"writes: {written}")
    mon.assert_single_writer()

    # The same window again: the app already runs on the new host.
    new_pids = pm2_pids("lab-new")
    proc, report = cli(*window())
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "NOTHING TO DO" in proc.stdout
    assert pm2_pids("lab-new") == new_pids and not pm2_pids("lab-old")

    # The explicit rollback.
    with Monitor(prepared) as mon, WebhookWriter([NEW_URL, OLD_URL]) as writer:
        proc, rb = cli("rollback", "--yes")
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert rb["verdict"] == "succeeded"
    state = where_app_runs(story)
    assert state["holder"] == [OLD] and not state["new_procs"]
    assert_writes(writer, story)
    mon.assert_single_writer()

    # And again: nothing to do.
    proc, _ = cli("rollback", "--yes")
    assert proc.returncode == 0 and "NOTHING TO DO" in proc.stdout, proc.stdout[-3000:]


def test_crash_at_start_rolls_back_automatically(story, prepared):
    # Every process of the release throws at start: the launch's wait for the API fails inside
    # the cutover (the other processes are never started) and the rescue puts the old host back.
    with Monitor(prepared) as mon, WebhookWriter([OLD_URL, NEW_URL]) as writer:
        proc, report = cli(*window("-e", "migration_app_version=v1.2.0", "-e", "migration_demo_crash_on_start=true"))
    assert proc.returncode != 0
    assert report["verdict"].startswith("failed")
    assert report["custom_stats"]["migrate_failed_phase"] == "cutover", report["custom_stats"]
    assert "API answers" in report["custom_stats"]["migrate_failed_task"], report["custom_stats"]
    assert "rollback" in [p["name"] for p in report["phases"]]
    assert "Rolled back" in proc.stdout
    print(f"\nMEASURED automatic rollback (rollback start -> old serving): {report['rollback_to_serving_s']} s; "
          f"outage {report['downtime']['longest_gap_ms']:.0f} ms; window {report['duration_s']:.1f} s")
    assert report["rollback_to_serving_s"] is not None and report["rollback_to_serving_s"] > 0
    state = where_app_runs(story)
    assert state["holder"] == [OLD] and not state["new_procs"]
    assert ledger()["status"] == "rolled_back"
    assert "deploy" in report["remaining"] and "cutover" in report["remaining"]
    assert_writes(writer, story)
    mon.assert_single_writer()


def test_watch_sees_restarts_past_the_limit_and_rolls_back(story, prepared):
    # The release passes the smoke tests, then every process of it exits 25 s after it started
    # (PM2 restarts them): the watch after the smoke tests counts more restarts than the
    # runbook's criterion allows and the rescue puts the service back on the old host.
    with Monitor(prepared) as mon, WebhookWriter([OLD_URL, NEW_URL]) as writer:
        proc, report = cli(*window("-e", "migration_app_version=v1.2.0", "-e", "migration_demo_crash_after_ms=25000",
                                   "-e", "migration_watch_seconds=90", "-e", "migration_watch_interval=2"))
    assert proc.returncode != 0, proc.stdout[-3000:]
    stats = report["custom_stats"]
    assert stats["migrate_failed_phase"] == "watch", stats
    assert "ROLLBACK TRIGGER on lab-new: restarts" in proc.stdout and "Rolled back" in proc.stdout, proc.stdout[-3000:]
    assert {"smoke", "watch", "rollback"} <= {p["name"] for p in report["phases"]}, report["phases"]
    state = where_app_runs(story)
    assert state["holder"] == [OLD] and not state["new_procs"]
    assert ledger()["status"] == "rolled_back"
    assert_writes(writer, story)
    mon.assert_single_writer()


def test_database_restart_during_smoke_rolls_back(story, prepared):
    with hold("smoke") as holding:
        run = cli_background(*window("-e", "migration_test_hold_before=smoke"))
        wait_for(holding.exists, what="the window to reach the smoke tests")
        # The new host serves (its session lock is held) when the database goes away under it.
        assert wait_single_holder(story, NEW)["holder"] == [NEW]
        podman("exec", "lab-db", "systemctl", "restart", "postgresql@15-main")  # the main cluster only
        release("smoke")
        out, _ = run.communicate(timeout=900)
    sys.stdout.write(out[-4000:])
    report = output_report(out)
    assert run.returncode != 0
    assert report["custom_stats"]["migrate_failed_phase"] == "smoke", report["custom_stats"]
    assert "Rolled back" in out
    with contextlib.closing(connect(prepared)) as conn:  # the story's connection died with the restart
        state = wait_single_holder(conn, OLD)
    assert state["holder"] == [OLD] and not state["new_procs"]


# ----------------------------------------------------------------------------------- unreachable
def _away(container: str) -> None:
    """The host stops answering Ansible while it keeps running (its management path is gone)."""
    podman("rename", container, f"{container}-away")
    podman("exec", f"{container}-away", "pkill", "-f", "mitogen:", check=False)


def test_new_unreachable_after_deploy_old_keeps_serving(story, prepared):
    old_pids = pm2_pids("lab-old")
    try:
        with Monitor(prepared) as mon, WebhookWriter([OLD_URL, NEW_URL]) as writer, hold("cutover") as holding:
            run = cli_background(*window("-e", "migration_test_hold_before=cutover"))
            wait_for(holding.exists, what="the window to reach the cutover")
            _away("lab-new")
            release("cutover")
            out, _ = run.communicate(timeout=900)
    finally:
        podman("rename", "lab-new-away", "lab-new", check=False)
    sys.stdout.write(out[-4000:])
    assert run.returncode != 0
    assert "UNREACHABLE: lab-new" in out and "kept the service" in out and "ROLLBACK FAILED" not in out, out[-3000:]
    assert pm2_pids("lab-old") == old_pids, "the old host was touched"
    assert where_app_runs(story)["holder"] == [OLD]
    assert_writes(writer, story)
    mon.assert_single_writer()


def test_new_unreachable_after_cutover_old_gets_the_service_back(story, prepared):
    try:
        with Monitor(prepared) as mon, WebhookWriter([OLD_URL, NEW_URL]) as writer, hold("smoke") as holding:
            run = cli_background(*window("-e", "migration_test_hold_before=smoke"))
            wait_for(holding.exists, what="the window to reach the smoke tests")
            podman("stop", "-t", "20", "lab-new", timeout=60)  # the new host goes down
            release("smoke")
            out, _ = run.communicate(timeout=900)
        sys.stdout.write(out[-4000:])
        assert run.returncode != 0
        assert "UNREACHABLE: lab-new" in out and "Rolled back" in out, out[-3000:]
        state = wait_single_holder(story, OLD)
        assert state["holder"] == [OLD] and state["old_procs"]
        assert_writes(writer, story)
        mon.assert_single_writer()
    finally:
        podman("start", "lab-new", check=False, timeout=120)
        # At boot PM2 resurrects the list saved when the window started it: stop it again.
        play("lab/story-reset.yml")


# ----------------------------------------------------------------------------------- one at a time
def test_second_run_refused_then_stale_lock_cleared_and_resumed(story, prepared):
    with hold("cutover") as holding:
        first = cli_background(*window("-e", "migration_test_hold_before=cutover"))
        wait_for(holding.exists, what="the first window to reach the cutover")
        run_id = holding.read_text().strip()
        proc, _ = cli(*window())
        assert proc.returncode != 0
        assert "REFUSED, nothing changed" in proc.stdout and run_id in proc.stdout, proc.stdout[-3000:]
        assert "migrate run" in proc.stdout and "Wait for it to finish" in proc.stdout
        proc, _ = cli("rollback", "--yes")
        assert proc.returncode != 0 and run_id in proc.stdout, proc.stdout[-3000:]
        # The controller dies while it holds the lock.
        kill_run(first)
    assert where_app_runs(story)["holder"] == [OLD]
    proc, _ = cli("unlock", "--check")
    assert proc.returncode == 0 and "STALE" in proc.stdout and run_id in proc.stdout, proc.stdout[-3000:]
    proc, _ = cli("unlock", "--yes")
    assert proc.returncode == 0, proc.stdout[-3000:]
    for container in ("lab-old", "lab-new"):
        assert podman("exec", container, "test", "-e", LOCK, check=False).returncode == 1
    with Monitor(prepared) as mon:
        proc, _ = cli(*window())
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert ledger()["resumed"] is True
    assert where_app_runs(story)["holder"] == [NEW]
    mon.assert_single_writer()


KILL_POINTS = {
    "backups": (lambda b: "preflight" in b.get("done", []) and b.get("status") == "running", ()),
    "deploy": (lambda b: "backups" in b.get("done", []), ()),
    "smoke": (lambda b: b.get("app_running_on") == "new", ()),
    "rescue": (lambda b: b.get("status") == "compensating",
               ("-e", "migration_app_version=v1.2.0", "-e", "migration_demo_crash_on_start=true")),
}


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_controller_killed_then_rerun_converges(story, prepared, point):
    when, extra = KILL_POINTS[point]
    with Monitor(prepared) as mon:
        first = cli_background(*window(*extra))
        wait_for(lambda: when(ledger()) or first.poll() is not None, what=f"the window to reach {point}")
        assert first.poll() is None, "the window ended before the kill point"
        out = kill_run(first)
        assert first.returncode != 0, out[-2000:]
        proc, _ = cli(*window(*extra))
        state = where_app_runs(story)
    serving = [h for h, on in (("old", state["old_procs"]), ("new", state["new_procs"])) if on]
    assert len(serving) == 1, f"after the re-run the app runs on {serving or 'no host'}: {proc.stdout[-3000:]}"
    assert len(state["holder"]) == 1
    if point == "rescue":
        assert state["holder"] == [OLD] and proc.returncode != 0
    else:
        assert proc.returncode == 0 and state["holder"] == [NEW], proc.stdout[-3000:]
    mon.assert_single_writer()


# ----------------------------------------------------------------------------------- webhook
def test_webhook_receives_start_rollback_end(story, prepared):
    """The notification webhook, against a local receiver, on a window that fails at preflight."""
    import http.server

    received: list[dict] = []

    class Receiver(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            received.append(json.loads(body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        proc, _ = cli(*window("-e", "migration_pool_critical_pct=50", "-e", "migration_pool_warn_pct=40",
                              "--webhook", f"http://127.0.0.1:{server.server_port}/hook"))
    finally:
        server.shutdown()
    assert proc.returncode != 0
    assert [r["event"] for r in received] == ["start", "rollback", "end"]
    assert received[1]["failed_phase"] == "preflight"
    assert all(r["window_id"] for r in received)
    assert "password" not in json.dumps(received).lower()


# ----------------------------------------------------------------------------------- decommission
def test_decommission_refuses_while_the_old_host_serves(story, prepared):
    old_pids = pm2_pids("lab-old")
    proc, report = cli("decommission", "--yes")
    assert proc.returncode != 0
    assert report["verdict"].startswith("failed") and "REFUSED, nothing changed" in proc.stdout
    assert pm2_pids("lab-old") == old_pids, "old host touched"
    assert podman("exec", "lab-old", "test", "-f", "/opt/ai-admin/shared/.env", check=False).returncode == 0
    assert where_app_runs(story)["holder"] == [OLD]


def test_window_decommission_then_rollback_refused_without_outage(story, prepared):
    podman("exec", "lab-old", "rm", "-rf", "/root/aiadmin-decommission", check=False)
    proc, report = cli(*window())
    assert proc.returncode == 0, proc.stdout[-3000:]
    try:
        with Monitor(prepared) as mon:
            proc, report = cli("decommission", "--yes")
        assert proc.returncode == 0, proc.stdout[-3000:]
        assert report["verdict"] == "succeeded"
        old = "lab-old"
        assert not pm2_pids(old)
        assert podman("exec", old, "systemctl", "is-enabled", "pm2-aiadmin.service", check=False).stdout.strip() \
            == "disabled"
        assert podman("exec", old, "test", "-e", "/opt/ai-admin/shared/.env", check=False).returncode == 1
        assert podman("exec", old, "test", "-f", "/etc/aiadmin-ops/decommissioned", check=False).returncode == 0
        listing = podman("exec", old, "sh", "-c", "stat -c '%a %U %n' /root/aiadmin-decommission/env-*.env.age").stdout
        mode, owner, archive = listing.split()
        assert (mode, owner) == ("600", "root")
        remote_sum = podman("exec", old, "sha256sum", archive).stdout.split()[0]
        local = STATE / "backups/decommission-lab-old" / Path(archive).name
        assert oct(local.stat().st_mode & 0o777) == "0o600"
        assert hashlib.sha256(local.read_bytes()).hexdigest() == remote_sum
        # Encrypted, and the operator's identity (vault) opens it: the old host's .env.
        assert local.read_bytes().startswith(b"age-encryption.org/v1")
        identity = STATE / "decommission-test.key"
        identity.write_text(prepared["vault_aiadmin_backup_age_identity"] + "\n")
        identity.chmod(0o600)
        try:
            env_text = subprocess.run(["age", "--decrypt", "-i", str(identity), str(local)], capture_output=True,
                                      text=True, check=True).stdout
        finally:
            identity.unlink()
        assert "POSTGRES_PASSWORD=" in env_text and prepared["vault_aiadmin_db_password"] in env_text
        assert where_app_runs(story)["holder"] == [NEW], "the new host must keep serving"
        mon.assert_single_writer()

        # Decommissioning again: nothing to do.
        proc, _ = cli("decommission", "--yes")
        assert proc.returncode == 0 and "NOTHING TO DO" in proc.stdout, proc.stdout[-3000:]

        # A rollback to a decommissioned host cannot succeed: refused before any change, no outage.
        new_pids = pm2_pids("lab-new")
        probe = AnyProbe([f"{NEW_URL}/health"], interval=0.1)
        threading.Thread(target=probe.run, daemon=True).start()
        proc, report = cli("rollback", "--yes")
        probe.stop()
        assert proc.returncode != 0
        assert "REFUSED, nothing changed" in proc.stdout and "decommissioned" in proc.stdout, proc.stdout[-3000:]
        assert probe.summary()["gaps"] == [], probe.summary()
        assert pm2_pids("lab-new") == new_pids
        assert where_app_runs(story)["holder"] == [NEW]
    finally:
        # Put the old host back for the next tests: marker and archive gone, unit enabled, .env
        # re-rendered (processes stopped).
        podman("exec", "lab-old", "rm", "-rf", "/root/aiadmin-decommission", "/etc/aiadmin-ops/decommissioned",
               check=False)
        podman("exec", "lab-old", "systemctl", "enable", "--now", "pm2-aiadmin.service", check=False)
        play("playbooks/deploy.yml", "-e", "deploy_hosts=old", "-e", "app_start=false")


class ArgvSampler:
    """Every 0.2 s, the command line of every process on this machine (the lab containers'
    processes included: they are this machine's processes) and the environment of each
    ansible-playbook / ansible-runner process the CLI started."""

    def __init__(self) -> None:
        self.samples = 0
        self.hits: list[str] = []
        self.needles: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.samples += 1
            for proc in Path("/proc").glob("[0-9]*"):
                with contextlib.suppress(OSError):
                    argv = (proc / "cmdline").read_bytes()
                    texts = [("argv", argv)]
                    if b"ansible-playbook" in argv or b"ansible-runner" in argv:
                        texts.append(("environment", (proc / "environ").read_bytes()))
                    for what, text in texts:
                        for needle in self.needles:
                            if needle in text:
                                self.hits.append(f"{what} of pid {proc.name}: {needle.decode()[:10]}...")

    def start(self, needles: list[str]) -> ArgvSampler:
        self.needles = [n.encode() for n in needles]
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def secret_needles(vault: dict) -> list[str]:
    """The lab vault's fake secrets (unique strings, each a canary) and the operator's."""
    # The phone is the WhatsApp account's number: an identifier, not a credential.
    kept = (v for k, v in vault.items() if isinstance(v, str) and len(v) >= 8 and k != "vault_aiadmin_whatsapp_phone")
    return [*OPERATOR_SECRETS.values(), *kept]


@pytest.fixture(scope="module", autouse=True)
def argv_samples(lab, vault):
    sampler = ArgvSampler().start(secret_needles(vault))
    yield sampler
    sampler.stop()


HOST_LOGS = (
    "journalctl -q -o cat --no-pager; "
    "find /var/log /opt/ai-admin/shared/logs -type f ! -path '/var/log/journal/*' -exec cat {} + 2>/dev/null; "
    "find / -xdev -type d -path '*/.pm2/logs' 2>/dev/null | while read -r d; do cat \"$d\"/* 2>/dev/null; done"
)


def test_no_secret_in_any_record_log_or_argv(prepared, argv_samples):
    """Runs last: after windows, rollbacks and failed windows (crash, watch, database restart,
    unreachable hosts, killed controller, decommission), not one canary or vault secret in any
    file of the state directory (ansible-runner's records, reports, ledgers, backups' manifests),
    in the hosts' journals and logs (the app's and PM2's), on any argv sampled during the runs,
    or in the environment of any ansible-playbook the CLI started."""
    needles = secret_needles(prepared)
    found = []
    files = [p for p in STATE.rglob("*") if p.is_file()]
    assert (STATE / "artifacts" / "migrate").is_dir() and (STATE / "reports").is_dir(), "no run recorded"
    for path in files:
        data = path.read_bytes()
        found += [f"{path}: {n[:10]}..." for n in needles if n.encode() in data]
    for container in ("lab-old", "lab-new", "lab-db"):
        logs = subprocess.run(["podman", "exec", container, "sh", "-c", HOST_LOGS], capture_output=True,
                              timeout=300, check=False).stdout  # bytes: logs hold binary too
        assert len(logs) > 1000, f"no logs read from {container}"
        found += [f"{container} logs: {n[:10]}..." for n in needles if n.encode() in logs]
    argv_samples.stop()
    print(f"\nsecret scan: {len(needles)} secrets, {len(files)} state files, 3 hosts' logs, "
          f"{argv_samples.samples} process-list samples")
    assert not found and not argv_samples.hits, sorted(set(found + argv_samples.hits))[:40]
    assert argv_samples.samples > 100, "too few process-list samples: run the window tests before this one"
