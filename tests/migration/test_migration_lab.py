"""The migration window on the lab, through the real operator CLI (aiadmin-ops migrate).

Every test drives lab-old / lab-new / lab-db / lab-egress. A monitor samples, every 0.2 s from
the controller, which client addresses hold the app's database sessions and the WhatsApp
session lock (pg advisory lock): the single-writer evidence ("at most one host at every
moment"). Each test asserts where the app runs afterwards, that row counts did not change,
the exit code and the report's verdict.

Preparation (once per module): scripts/demo --prepare (old provisioned and serving on the
public DB endpoint, new provisioned, the lab git remote published); each test then resets
the story (new stopped, old serving, no ledger).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.helpers import LAB_VAULT_PASSWORD, ROOT, podman

# `make test` runs `scripts/demo --prepare` as its own stage, then these with AIADMIN_SKIP_PREPARE=1.
pytestmark = [pytest.mark.lab, pytest.mark.window]

OLD, NEW = "10.213.10.20", "10.213.20.30"  # the hosts' addresses as the database sees them
LOCK_CLASS = 0x41494144
LEDGER = ROOT / ".artifacts/ledger/migrate-lab.json"
BIN = ROOT / ".venv/bin"
APP_EXTRA = ["-e", "aiadmin_app_repo=file:///srv/git/ai-admin.git"]
NEW_VERSION = "v1.1.0"
ENV = dict(os.environ, CONTAINERS_CONF=str(ROOT / "containers.conf"), ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"),
           PATH=f"{BIN}:{os.environ.get('PATH', '')}")
SESSIONS_SQL = """
SELECT coalesce(host(a.client_addr), 'local') AS addr,
       count(DISTINCT a.pid) FILTER (WHERE a.application_name IN (
           'ai-admin-api', 'ai-admin-worker-v2', 'ai-admin-batch-processor', 'whatsapp-backup-service',
           'ai-admin-booking-monitor', 'ai-admin-telegram-bot', 'baileys-whatsapp-service',
           'whatsapp-safe-monitor')) AS app,
       count(DISTINCT l.pid) AS locks
FROM pg_stat_activity a
LEFT JOIN pg_locks l ON l.pid = a.pid AND l.locktype = 'advisory' AND l.granted
                     AND l.classid = %s::oid AND l.objsubid = 2
WHERE a.backend_type = 'client backend' AND a.pid <> pg_backend_pid()
GROUP BY 1
"""


def connect(vault: dict):
    import psycopg

    return psycopg.connect(host="10.213.10.10", port=5432, dbname="ai_admin", user="ai_admin",
                           password=vault["vault_aiadmin_db_password"], sslmode="verify-full",
                           sslrootcert=str(ROOT / "lab/state/ca.crt"), connect_timeout=5,
                           application_name="aiadmin-ops-test-monitor", autocommit=True)


def sessions(conn) -> dict[str, dict[str, int]]:
    rows = conn.execute(SESSIONS_SQL, (LOCK_CLASS,)).fetchall()
    return {addr: {"app": app, "locks": locks} for addr, app, locks in rows}


def row_counts(conn) -> dict[str, int]:
    tables = [r[0] for r in conn.execute(
        "SELECT c.oid::regclass::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') ORDER BY 1").fetchall()]
    return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables}  # noqa: S608


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
            # A missed sample is not evidence either way.
            with contextlib.suppress(Exception):
                self.samples.append((time.time(), sessions(self.conn)))
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


def cli(*args: str, timeout: float = 1200) -> tuple[subprocess.CompletedProcess, dict]:
    proc = subprocess.run([str(BIN / "aiadmin-ops"), *args], capture_output=True, text=True, env=ENV,
                          cwd=ROOT, timeout=timeout, check=False)
    sys.stdout.write(proc.stdout[-6000:])
    report = {}
    for line in proc.stdout.splitlines():
        if line.startswith("report: "):
            report = json.loads(Path(line.split()[1]).read_text())
    return proc, report


def play(playbook: str, *extra: str, timeout: float = 1800) -> None:
    proc = subprocess.run([str(BIN / "ansible-playbook"), "-i", "inventories/lab/hosts.yml", "--vault-id",
                           f"lab@{LAB_VAULT_PASSWORD}", playbook, *extra], capture_output=True, text=True,
                          env=ENV, cwd=ROOT, timeout=timeout, check=False)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


def wait_serving(url: str, timeout: float = 60) -> bool:
    import urllib.request

    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 - lab address
                if resp.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.5)
    return False


@pytest.fixture(scope="module")
def prepared(lab, vault):
    if not (ROOT / "roles/pm2").is_dir() or not (ROOT / "roles/nodejs").is_dir():
        pytest.skip("roles nodejs and pm2 are needed")
    if os.environ.get("AIADMIN_SKIP_PREPARE") != "1":
        proc = subprocess.run([str(ROOT / "scripts/demo"), "--prepare"], capture_output=True, text=True,
                              env=ENV, cwd=ROOT, timeout=3600, check=False)
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return vault


@pytest.fixture
def story(prepared):
    """Before each test: new stopped (proven), old serving, no ledger."""
    play("tests/migration/lab_reset.yml")
    conn = connect(prepared)
    before = row_counts(conn)
    assert where_app_runs(conn)["holder"] == [OLD]
    yield conn
    assert row_counts(conn) == before, "database row counts changed"
    conn.close()


# Pool thresholds that the lab's budget cannot meet for one host's 21 connections (27 usable).
TIGHT_POOL = ("-e", "migrate_pool_warn_pct=40", "-e", "migrate_pool_critical_pct=50")


def window(*extra: str) -> list[str]:
    # The lab shares 2 cores with everything else: a 25 ms p95 latency gate instead of 5 ms.
    return ["migrate", "--yes", *APP_EXTRA, "-e", f"aiadmin_app_version={NEW_VERSION}",
            "-e", "migrate_max_latency_ms=25", *extra]


def test_check_changes_nothing(story, prepared):
    old_pids = pm2_pids("lab-old")
    current = podman("exec", "lab-new", "readlink", "/opt/ai-admin/current", check=False).stdout
    with Monitor(prepared) as mon:
        proc, report = cli("migrate", "--check", *APP_EXTRA, "-e", f"aiadmin_app_version={NEW_VERSION}",
                           "-e", "migrate_max_latency_ms=25")
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert report["verdict"] == "succeeded"
    assert [p["name"] for p in report["phases"]][:2] == ["confirm", "preflight"]
    assert not LEDGER.exists(), "--check must not write the ledger"
    assert pm2_pids("lab-old") == old_pids, "old host touched"
    assert podman("exec", "lab-new", "readlink", "/opt/ai-admin/current", check=False).stdout == current
    assert where_app_runs(story)["holder"] == [OLD]
    mon.assert_single_writer()


def test_private_network_down_stops_at_preflight(story, prepared):
    old_pids = pm2_pids("lab-old")
    podman("network", "disconnect", "aiadmin-lab-private", "lab-new")
    try:
        with Monitor(prepared) as mon:
            proc, report = cli(*window())
    finally:
        podman("network", "connect", "--ip", "10.213.20.30", "aiadmin-lab-private", "lab-new")
    assert proc.returncode != 0
    assert report["verdict"].startswith("failed")
    assert report["failures"][0]["phase"] == "preflight", report["failures"]
    assert report["custom_stats"].get("migrate_failed_phase") == "preflight"
    assert pm2_pids("lab-old") == old_pids, "old host touched"
    state = where_app_runs(story)
    assert state["holder"] == [OLD] and not state["new_procs"]
    ledger = json.loads(LEDGER.read_text())
    assert ledger["app_running_on"] == "old" and "deploy" not in ledger["done"]
    mon.assert_single_writer()


def test_pool_too_small_stops_at_preflight(story, prepared):
    old_pids = pm2_pids("lab-old")
    with Monitor(prepared) as mon:
        proc, report = cli(*window(*TIGHT_POOL))
    assert proc.returncode != 0
    assert report["failures"][0]["phase"] == "preflight"
    msg = report["failures"][0]["msg"]
    # The budget itself must say no (21 for lab-new is over half of the usable slots), not a
    # parameter error.
    assert "NO-GO pool" in msg and "critical at 50" in msg and "invalid parameters" not in msg, msg
    assert pm2_pids("lab-old") == old_pids
    assert where_app_runs(story)["holder"] == [OLD]
    mon.assert_single_writer()


def test_happy_path_then_explicit_rollback(story, prepared):
    with Monitor(prepared) as mon:
        proc, report = cli(*window())
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert report["verdict"] == "succeeded"
    assert [p["name"] for p in report["phases"]] == [
        "confirm", "preflight", "backups", "deploy", "cutover", "smoke", "verdict"]
    down = report["downtime"]
    print(f"\nMEASURED cutover downtime: {down['longest_gap_ms']:.0f} ms; window {report['duration_s']:.1f} s")
    # Measured and reported (target <= 30 s: see the report and the session notes), not timed here.
    assert down["samples"] > 0 and down["longest_gap_ms"] > 0
    state = where_app_runs(story)
    assert state["holder"] == [NEW] and not state["old_procs"] and state["new_procs"]
    ledger = json.loads(LEDGER.read_text())
    assert ledger["status"] == "succeeded" and ledger["app_running_on"] == "new"
    backups = Path(ledger["backups"])
    sums = (backups / "SHA256SUMS").read_text()
    assert "ai_admin.dump" in sums and ".env" in sums and "config.json" in sums
    assert oct(backups.stat().st_mode & 0o777) == "0o700"
    mon.assert_single_writer()

    # The explicit rollback within the retention period.
    with Monitor(prepared) as mon:
        proc, rb = cli("rollback", "--yes")
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert rb["verdict"] == "succeeded"
    state = where_app_runs(story)
    assert state["holder"] == [OLD] and not state["new_procs"]
    mon.assert_single_writer()


def test_crash_in_smoke_rolls_back_automatically(story, prepared):
    with Monitor(prepared) as mon:
        proc, report = cli(*window("-e", "migrate_app_version=v1.2.0", "-e", "migrate_app_demo_crash_on_start=true"))
    assert proc.returncode != 0
    assert report["verdict"].startswith("failed")
    assert report["custom_stats"]["migrate_failed_phase"] == "smoke", report["custom_stats"]
    assert "rollback" in [p["name"] for p in report["phases"]]
    print(f"\nMEASURED automatic rollback (rollback start -> old serving): {report['rollback_to_serving_s']} s; "
          f"outage {report['downtime']['longest_gap_ms']:.0f} ms; window {report['duration_s']:.1f} s")
    # Measured and reported (target <= 30 s), not a timed assertion.
    assert report["rollback_to_serving_s"] is not None and report["rollback_to_serving_s"] > 0
    state = where_app_runs(story)
    assert state["holder"] == [OLD] and not state["new_procs"]
    assert json.loads(LEDGER.read_text())["status"] == "rolled_back"
    assert "deploy" in report["remaining"] and "cutover" in report["remaining"]
    mon.assert_single_writer()


def test_controller_killed_after_old_stopped_resumes(story, prepared):
    with Monitor(prepared) as mon:
        first = subprocess.Popen([str(BIN / "aiadmin-ops"), *window()], stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True, env=ENV, cwd=ROOT)
        killed = False
        deadline = time.time() + 900
        while time.time() < deadline and first.poll() is None:
            try:
                ledger = json.loads(LEDGER.read_text())
            except (FileNotFoundError, json.JSONDecodeError):
                ledger = {}
            if ledger.get("app_running_on") == "none":
                pids = subprocess.run(["pgrep", "-f", "ansible-playbook.*migrate.yml"], capture_output=True,
                                      text=True, check=False).stdout.split()
                for pid in pids:
                    try:
                        os.killpg(os.getpgid(int(pid)), signal.SIGKILL)
                        killed = True
                    except ProcessLookupError:
                        pass
                break
            time.sleep(0.05)
        out, _ = first.communicate(timeout=300)
        assert killed, out[-3000:]
        assert first.returncode != 0
        ledger = json.loads(LEDGER.read_text())
        assert ledger["cutover_started"] and ledger["app_running_on"] == "none"
        assert not pm2_pids("lab-old"), "old must have been stopped before the kill"
        assert "cutover" in out and "remaining steps" in out

        proc, report = cli(*window())
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert report["verdict"] == "succeeded"
    # Resumed: the same window (its backups and deploy were not redone).
    window_id = ledger["window_id"]
    ledger = json.loads(LEDGER.read_text())
    assert ledger["resumed"] and ledger["status"] == "succeeded" and ledger["window_id"] == window_id
    state = where_app_runs(story)
    assert state["holder"] == [NEW] and not state["old_procs"]
    mon.assert_single_writer()


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
        proc, _ = cli(*window(*TIGHT_POOL, "--webhook",
                              f"http://127.0.0.1:{server.server_port}/hook"))
    finally:
        server.shutdown()
    assert proc.returncode != 0
    assert [r["event"] for r in received] == ["start", "rollback", "end"]
    assert received[1]["failed_phase"] == "preflight"
    assert all(r["window_id"] for r in received)
    assert "password" not in json.dumps(received).lower()


def test_decommission_refuses_while_the_old_host_serves(story, prepared):
    old_pids = pm2_pids("lab-old")
    proc, report = cli("decommission", "--yes")
    assert proc.returncode != 0
    assert report["verdict"].startswith("failed")
    assert pm2_pids("lab-old") == old_pids, "old host touched"
    assert podman("exec", "lab-old", "test", "-f", "/opt/ai-admin/shared/.env", check=False).returncode == 0
    assert where_app_runs(story)["holder"] == [OLD]


def test_window_then_decommission_the_old_host(story, prepared):
    # Exactly one archive afterwards: none left by an earlier, interrupted run.
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
        listing = podman("exec", old, "sh", "-c", "stat -c '%a %U %n' /root/aiadmin-decommission/env-*.tar.gz").stdout
        mode, owner, archive = listing.split()
        assert (mode, owner) == ("600", "root")
        remote_sum = podman("exec", old, "sha256sum", archive).stdout.split()[0]
        local = ROOT / "backups/decommission-lab-old" / Path(archive).name
        assert oct(local.stat().st_mode & 0o777) == "0o600"
        assert hashlib.sha256(local.read_bytes()).hexdigest() == remote_sum
        assert where_app_runs(story)["holder"] == [NEW], "the new host must keep serving"
        mon.assert_single_writer()
    finally:
        # Put the old host back for the next run: unit enabled, .env re-rendered (processes stopped).
        podman("exec", "lab-old", "rm", "-rf", "/root/aiadmin-decommission", check=False)
        podman("exec", "lab-old", "systemctl", "enable", "--now", "pm2-aiadmin.service", check=False)
        play("playbooks/deploy.yml", "-e", "deploy_hosts=lab-old", "-e", "aiadmin_app_db_host=10.213.10.10",
             "-e", "aiadmin_app_version=v1.0.0", "-e", "aiadmin_app_start=false", *APP_EXTRA)
