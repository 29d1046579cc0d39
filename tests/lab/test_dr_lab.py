"""Disaster recovery of a lost app host on the lab, through the operator CLI (aiadmin-ops dr-rebuild).

The story: lab-new serves alone (every process online, the WhatsApp session lock held from its
address), its configuration is backed up (playbooks/backup_config.yml, the .env and the Xray
config, encrypted with age on the controller, verified: `aiadmin-ops backup`, then
`backup-fetch` confirming the same set). Then lab-new is lost: `podman rm -f`,
which leaves its database sessions and session lock dangling on lab-db (no TCP keepalive), and
`aiadmin-ops lab up` recreates it bare from the image at the same addresses. On that bare host:

- `dr-rebuild --check` prints the plan (the backup set, its files' checksums, the release) and
  changes nothing;
- a missing, a stale and a corrupt backup are each refused before any change, naming it;
- a session lock held from lab-old's address refuses the rebuild, with nothing changed;
- `dr-rebuild --yes` rebuilds it: every process online, /health healthy with the release that
  served, the WhatsApp auth rows intact, the session lock held from lab-new's address only, the
  restored .env byte for byte the backed-up one, the RTO and the phases in the report;
- a second run changes nothing, and neither does one while lab-old does not answer.

The tests run in file order and share the story (one destroyed host). `make test` runs them after
the window tests (they need the provisioned lab-old and lab-new the window story leaves) and
before Molecule.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.helpers import LAB_VAULT_PASSWORD, ROOT, podman

pytestmark = [pytest.mark.lab, pytest.mark.dr]

HOST, OLD_HOST = "lab-new", "lab-old"
NEW, OLD = "10.213.20.30", "10.213.10.20"  # the hosts' addresses as the database sees them
NEW_URL = "http://10.213.10.30:3000"
LOCK_CLASS = 0x41494144
BIN = ROOT / ".venv/bin"
STATE = Path(os.environ.get("AIADMIN_DR_TEST_STATE_DIR", "/var/tmp/aiadmin-ops-dr-tests"))
STORE = STATE / "backups/config" / HOST
ENV = dict(os.environ, CONTAINERS_CONF=str(ROOT / "containers.conf"), ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"),
           PATH=f"{BIN}:{os.environ.get('PATH', '')}", AIADMIN_STATE_DIR=str(STATE))
ENV_FILE = "/opt/ai-admin/shared/.env"
XRAY_FILE = "/usr/local/etc/xray/config.json"
# The inventory's process list (the lab runs 7 of the BRIEF's processes).
APPS = yaml.safe_load((ROOT / "inventories/lab/group_vars/all/main.yml").read_text())["aiadmin_pm2_processes"]
HOLDERS_SQL = """
SELECT DISTINCT host(a.client_addr) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.classid = %s::oid AND l.objsubid = 2
"""


def cli(*args: str, timeout: float = 1800, env: dict | None = None) -> tuple[subprocess.CompletedProcess, dict]:
    proc = subprocess.run([str(BIN / "aiadmin-ops"), *args], capture_output=True, text=True, env=env or ENV, cwd=ROOT,
                          timeout=timeout, check=False)
    sys.stdout.write(proc.stdout[-6000:] + proc.stderr[-2000:])
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


def connect(vault: dict, host: str = "10.213.10.10", ca: Path = ROOT / "lab/state/ca.crt"):
    import psycopg

    return psycopg.connect(host=host, dbname="ai_admin", user="ai_admin",
                           password=vault["vault_aiadmin_db_password"], sslmode="verify-full",
                           sslrootcert=str(ca), connect_timeout=5,
                           application_name="aiadmin-ops-test-dr", autocommit=True)


def holders(vault: dict) -> list[str]:
    with connect(vault) as conn:
        return sorted(r[0] for r in conn.execute(HOLDERS_SQL, (LOCK_CLASS,)).fetchall())


def auth_rows(vault: dict) -> tuple[str, object]:
    """A digest of the WhatsApp auth rows (the session the rebuilt host must keep using: company,
    credentials, creation) and the newest updated_at (the session's writer touches it)."""
    with connect(vault) as conn:
        rows = conn.execute("SELECT company_id, creds, created_at FROM whatsapp_auth ORDER BY 1").fetchall()
        touched = conn.execute("SELECT max(updated_at) FROM whatsapp_auth").fetchone()[0]
    assert rows, "the lab seeds whatsapp_auth"
    return hashlib.sha256(repr(rows).encode()).hexdigest(), touched


def on_host(*argv: str, host: str = HOST, check: bool = True) -> subprocess.CompletedProcess:
    return podman("exec", host, *argv, check=check)


def is_bare() -> bool:
    """Nothing of the app, Node.js or Xray on the host (what a failed or refused rebuild must leave)."""
    proc = on_host("sh", "-c", f"test -e /opt/ai-admin || test -e {XRAY_FILE} || command -v node", check=False)
    return proc.returncode != 0


def pm2_pids(host: str) -> str:
    return " ".join(sorted(on_host("pgrep", "-u", "aiadmin", "-f", "main\\.js", host=host, check=False)
                           .stdout.split()))


def health() -> dict:
    import urllib.request

    with urllib.request.urlopen(f"{NEW_URL}/health", timeout=5) as resp:  # noqa: S310 (lab URL)
        return json.loads(resp.read())


def newest_manifest() -> dict:
    manifests = sorted(STORE.glob("*.manifest.json"))
    assert manifests, f"no configuration backup in {STORE}"
    return json.loads(manifests[-1].read_text())


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        with contextlib.suppress(Exception):
            if predicate():
                return
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def lost(lab, vault):
    """lab-new served alone and was backed up, then was destroyed and recreated bare."""
    shutil.rmtree(STATE, ignore_errors=True)
    STATE.mkdir(parents=True, mode=0o700)
    # lab-new serves alone: old stopped (proven), new provisioned, deployed and started (the lab's release).
    play("lab/story-reset.yml", "-e", "lab_reset_start_old=false")
    play("playbooks/provision.yml")  # a no-op on the window story's lab-new; a bare one left by a failed run
    play("playbooks/deploy.yml", "-e", "deploy_hosts=new")
    assert health()["status"] == "healthy"
    wait_for(lambda: holders(vault) == [NEW], 60, "the session lock held from lab-new")
    # The operator's backup (the database set, then the serving host's configuration), then the
    # controller's timer job, which finds the configuration unchanged and confirms the same set.
    proc, _ = cli("backup")
    assert proc.returncode == 0, proc.stdout[-3000:]
    manifest = newest_manifest()
    proc, _ = cli("backup-fetch")
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert newest_manifest()["id"] == manifest["id"] and newest_manifest()["confirmed"] >= manifest["confirmed"]
    assert len(list(STORE.glob("*.manifest.json"))) == 1
    env_before = on_host("sha256sum", ENV_FILE).stdout.split()[0]
    before = {"auth": auth_rows(vault), "release": health()["release"], "manifest": manifest, "env": env_before}
    assert manifest["release"] == before["release"] and manifest["serving"] is True
    assert {f["name"] for f in manifest["files"]} == {"env", "xray"}

    podman("rm", "-f", "-t", "0", HOST, timeout=300)
    proc = subprocess.run([str(BIN / "aiadmin-ops"), "lab", "up"], capture_output=True, text=True, env=ENV,
                          cwd=ROOT, timeout=1800, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert is_bare(), "lab up recreated lab-new with the app already on it"
    # The dead machine's connection still holds the session lock from its address.
    return before


def test_plan_prints_what_and_changes_nothing(lost):
    proc, report = cli("dr-rebuild", "--check")
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:]
    assert report["verdict"] == "succeeded"
    manifest = lost["manifest"]
    assert manifest["id"] in out
    for f in manifest["files"]:
        assert f["sha256"] in out and f["path"] in out
    assert f"recorded as serving): {lost['release']}" in out
    assert "lab-old answers" in out
    assert is_bare()


@pytest.mark.parametrize("fault", ["missing", "stale", "corrupt"])
def test_bad_backup_refused_before_any_change(lost, fault, tmp_path):
    aside = tmp_path / "store"
    manifest = newest_manifest()
    manifest_path = sorted(STORE.glob("*.manifest.json"))[-1]
    manifest_text = manifest_path.read_text()
    archive = STORE / manifest["files"][0]["archive"]
    original = archive.read_bytes()
    if fault == "missing":
        shutil.move(STORE, aside)
    elif fault == "stale":
        # Not confirmed for 3 days (the controller's backup-fetch stopped confirming it; limit 48 h).
        old = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 72 * 3600))
        manifest_path.write_text(json.dumps(manifest | {"created": old, "confirmed": old}))
    else:
        flipped = bytearray(original)
        flipped[len(flipped) // 2] ^= 0x01
        archive.write_bytes(bytes(flipped))
    try:
        proc, report = cli("dr-rebuild", "--yes")
    finally:
        if fault == "missing":
            shutil.move(aside, STORE)
        archive.write_bytes(original)
        manifest_path.write_text(manifest_text)
    out = proc.stdout
    assert proc.returncode == 1, out[-3000:]
    assert report["verdict"] == "failed"
    assert "REFUSED, nothing changed" in out
    assert {"missing": str(STORE), "stale": "stale", "corrupt": archive.name}[fault] in out
    assert is_bare()


def test_refused_while_another_host_holds_the_session_lock(lost, vault):
    """A psql session on lab-old holds the WhatsApp session lock (the "lost" host may be alive)."""
    holder = subprocess.Popen(
        ["podman", "exec", "--env", "PGPASSWORD", OLD_HOST, "psql",  # the value by name: never on argv
         "host=db.public.lab.test dbname=ai_admin user=ai_admin sslmode=verify-full "
         "sslrootcert=/root/.cloud-certs/root.crt application_name=baileys-whatsapp-service",
         "-c", f"SELECT pg_advisory_lock({LOCK_CLASS}, 7)", "-c", "SELECT pg_sleep(900)"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        env={**ENV, "PGPASSWORD": vault["vault_aiadmin_db_password"]})
    try:
        wait_for(lambda: OLD in holders(vault), 30, "the lock held from lab-old")
        proc, _ = cli("dr-rebuild", "--yes")
    finally:
        holder.kill()
        # The server backend sleeps on without its client: end it from here.
        with connect(vault) as conn:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE host(client_addr) = %s"
                         " AND query LIKE %s", (OLD, "%pg_sleep%"))
    out = proc.stdout
    assert proc.returncode == 1, out[-3000:]
    assert "REFUSED, nothing changed" in out and f"session lock held from {OLD} (lab-old)" in out
    assert is_bare()
    wait_for(lambda: OLD not in holders(vault), 30, "lab-old's lock released")


def test_rebuild_serves_alone_with_the_backed_up_configuration(lost, vault):
    proc, report = cli("dr-rebuild", "--yes")
    assert proc.returncode == 0, proc.stdout[-5000:]
    assert report["verdict"] == "succeeded"
    dr = report["custom_stats"]["dr"]
    assert dr["status"] == "succeeded" and dr["target"] == HOST and dr["release"] == lost["release"]
    assert dr["config_set"]["id"] == lost["manifest"]["id"]
    assert {"plan", "provision", "deploy", "verify", "start", "smoke", "verdict"} <= set(dr["phases"])
    assert 0 < float(dr["rto_s"]) < 1800
    h = health()
    assert h["status"] == "healthy" and h["release"] == lost["release"], h
    pm2 = json.loads(on_host("runuser", "-u", "aiadmin", "--", "env", "PM2_HOME=/home/aiadmin/.pm2",
                             "HOME=/home/aiadmin", "pm2", "jlist").stdout)
    assert sorted(p["name"] for p in pm2) == sorted(APPS)
    assert {p["pm2_env"]["status"] for p in pm2} == {"online"}
    assert holders(vault) == [NEW]
    # The same session (rows intact), written again by the rebuilt host's session holder.
    wait_for(lambda: auth_rows(vault)[1] > lost["auth"][1], 30, "the rebuilt host's session writes")
    assert auth_rows(vault)[0] == lost["auth"][0]
    assert on_host("sha256sum", ENV_FILE).stdout.split()[0] == lost["env"]
    xray = next(f for f in lost["manifest"]["files"] if f["name"] == "xray")
    assert on_host("sha256sum", XRAY_FILE).stdout.split()[0] == xray["sha256"]
    assert on_host("stat", "-c", "%a", ENV_FILE).stdout.strip() == "600"


def test_second_run_changes_nothing(lost, vault):
    pids = pm2_pids(HOST)
    mtime = on_host("stat", "-c", "%Y", ENV_FILE).stdout
    proc, report = cli("dr-rebuild", "--yes")
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "NOTHING TO DO" in proc.stdout
    assert pm2_pids(HOST) == pids and on_host("stat", "-c", "%Y", ENV_FILE).stdout == mtime
    assert holders(vault) == [NEW]
    assert all(s.get("changed", 0) == 0 for h, s in report["stats"].items() if h == HOST), report["stats"]


def test_the_other_host_not_answering_is_the_normal_case(lost, vault):
    """lab-old paused (it does not answer): the run reads what it can and goes on (here: nothing to do)."""
    podman("pause", OLD_HOST)
    try:
        proc, report = cli("dr-rebuild", "--yes")
    finally:
        podman("unpause", OLD_HOST)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "lab-old does not answer (the normal case for a lost host)" in proc.stdout
    assert "NOTHING TO DO" in proc.stdout and report["verdict"] == "succeeded"
    assert holders(vault) == [NEW]
