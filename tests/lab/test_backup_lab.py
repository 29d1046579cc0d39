"""Backups on the lab, through the operator CLI: `aiadmin-ops backup` on the backup host (lab-new,
over the private network with verify-full to lab-db), the off-host copy in the controller's state
directory, the host's systemd timer and its service, `aiadmin-ops restore-test` into a scratch
cluster on the controller, and the faults the issue names: a bit-flipped copy, a wrong password,
a wrong CA. Every fault asserts a clear message and that the earlier verified backups are intact.

The lab is quiet while these run (`make test` runs lab/story-reset.yml -e lab_reset_start_old=false
first): the table counts the manifest records are the database's own.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import LAB_VAULT_PASSWORD, ROOT, podman

pytestmark = pytest.mark.lab

HOST = "lab-new"
HOST_DIR = "/var/backups/ai-admin"
BIN = ROOT / ".venv/bin"
STATE = Path(os.environ.get("AIADMIN_BACKUP_TEST_STATE_DIR", "/var/tmp/aiadmin-ops-backup-tests"))
OFFHOST = STATE / "backups/ai_admin"
ENV = dict(os.environ, CONTAINERS_CONF=str(ROOT / "containers.conf"), ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"),
           PATH=f"{BIN}:{os.environ.get('PATH', '')}", AIADMIN_STATE_DIR=str(STATE))
KNOWN_ROW = b"LAB FAKE salon"  # companies.title in lab/files/seed.sql
TABLES = ("whatsapp_auth", "whatsapp_keys", "companies", "clients", "services", "staff", "bookings", "messages")


def cli(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(BIN / "aiadmin-ops"), *args], capture_output=True, text=True, env=ENV, cwd=ROOT,
                          timeout=timeout, check=False)
    print(proc.stdout[-4000:], proc.stderr[-2000:])
    return proc


def play(playbook: str, *extra: str, timeout: float = 900) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(BIN / "ansible-playbook"), "-i", "inventories/lab/hosts.yml", "--vault-id",
                           f"lab@{LAB_VAULT_PASSWORD}", playbook, *extra], capture_output=True, text=True,
                          env=ENV, cwd=ROOT, timeout=timeout, check=False)
    print(proc.stdout[-4000:], proc.stderr[-2000:])
    return proc


def on_host(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return podman("exec", HOST, *argv, check=check)


def host_sets() -> dict[str, str]:
    """name -> sha256 of every file in the host's backup directory."""
    out = on_host("sh", "-c", f"cd {HOST_DIR} && sha256sum -- * 2>/dev/null", check=False).stdout
    return {line.split()[1]: line.split()[0] for line in out.splitlines()}


def offhost_manifests() -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(OFFHOST.glob("ai_admin-*.manifest.json"))]


def digests(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.glob("ai_admin-*"))}


def live_counts(vault: dict) -> dict[str, int]:
    import psycopg

    with psycopg.connect(host="10.213.10.10", dbname="ai_admin", user="ai_admin",
                         password=vault["vault_aiadmin_db_password"], sslmode="verify-full",
                         sslrootcert=str(ROOT / "lab/state/ca.crt"), connect_timeout=5) as conn:
        return {f"public.{t}": conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES}  # noqa: S608


def catalog_status() -> dict:
    """The off-host store's status, computed by backup_catalog's own code (what the role runs)."""
    sys.path.insert(0, str(ROOT / "plugins/module_utils"))
    try:
        import backup_catalog
    finally:
        sys.path.pop(0)
    return backup_catalog.run({"path": str(OFFHOST), "name_prefix": "ai_admin", "interval_minutes": 60})


@pytest.fixture(scope="module")
def backed_up(lab, vault):
    """The backup host prepared (base, CA), no earlier test state, one `aiadmin-ops backup`."""
    shutil.rmtree(STATE, ignore_errors=True)
    on_host("sh", "-c", f"systemctl disable --now aiadmin-backup.timer 2>/dev/null; rm -rf {HOST_DIR}", check=False)
    prep = play("tests/lab/backup_prep.yml", timeout=1800)
    assert prep.returncode == 0
    # The timer stays off (the lab's inventory): one firing at the hour would add sets while
    # these tests count them, and sessions the window tests' pool gates did not plan for. The
    # Molecule backup scenario checks it enabled and active.
    proc = cli("backup")
    assert proc.returncode == 0
    yield proc
    on_host("systemctl", "disable", "--now", "aiadmin-backup.timer", check=False)


def test_backup_is_kept_encrypted_on_the_host_and_verified_off_host(backed_up, vault):
    assert "verdict: succeeded" in backed_up.stdout
    manifests = offhost_manifests()
    assert len(manifests) == 1
    m = manifests[0]
    dump = OFFHOST / m["file"]
    # The host keeps the same set, private to the backup user; the copy matches byte for byte.
    sets = host_sets()
    assert sets[m["file"]] == m["sha256"] == hashlib.sha256(dump.read_bytes()).hexdigest()
    perms = on_host("stat", "-c", "%U %a", HOST_DIR, f"{HOST_DIR}/{m['file']}").stdout.split("\n")
    assert perms[:2] == ["aiadmin-backup 700", "aiadmin-backup 600"]
    assert oct(OFFHOST.stat().st_mode & 0o777) == "0o700" and oct(dump.stat().st_mode & 0o777) == "0o600"
    assert ROOT not in OFFHOST.parents
    # The manifest's counts are the database's (the lab is quiet), every table in the archive.
    assert m["row_counts"] == live_counts(vault)
    assert m["verification"] == "toc" and m["server_version_num"] // 10000 == 15
    # No plaintext kept anywhere: a known row value is in no file, on the host or off it.
    assert KNOWN_ROW not in dump.read_bytes()
    assert on_host("grep", "-rlF", KNOWN_ROW.decode(), HOST_DIR, check=False).stdout == ""
    # The operator's identity (vault) opens it and the archive holds the row.
    identity = STATE / "identity.tmp"
    identity.write_text(vault["vault_aiadmin_backup_age_identity"] + "\n")
    identity.chmod(0o600)
    try:
        plain = subprocess.run(["age", "--decrypt", "-i", str(identity), str(dump)], capture_output=True,
                               check=True).stdout
    finally:
        identity.unlink()
    sql = subprocess.run(["pg_restore", "--data-only", "--table=companies", "-f", "-"], input=plain,
                         capture_output=True, check=True).stdout
    assert KNOWN_ROW in sql
    # The host holds the public key only: no age identity anywhere it keeps files.
    found = on_host("grep", "-rlF", "AGE-SECRET-KEY-", "/etc", "/var/backups", "/usr/local", "/root", "/home",
                    check=False)
    assert found.stdout == "", found.stdout


def test_the_timer_runs_the_same_job(backed_up):
    show = on_host("systemctl", "show", "aiadmin-backup.timer", "--property=Persistent,RandomizedDelayUSec,"
                   "TimersCalendar,UnitFileState").stdout
    assert "UnitFileState=disabled" in show, show  # the lab's inventory turns it off
    assert "Persistent=yes" in show and "RandomizedDelayUSec=5min" in show, show
    assert "OnCalendar=*-*-* *:00:00" in show, show
    before = set(host_sets())
    # What the timer starts: the service, as its user, in its sandbox.
    on_host("systemctl", "start", "aiadmin-backup.service", check=True)
    new = sorted(set(host_sets()) - before)
    assert len(new) == 3 and any(n.endswith(".manifest.json") for n in new), new
    manifest = json.loads(on_host("cat", f"{HOST_DIR}/{next(n for n in new if n.endswith('.json'))}").stdout)
    assert manifest["verification"] == "toc" and manifest["size"] > 2048
    assert on_host("systemctl", "is-failed", "aiadmin-backup.service", check=False).stdout.strip() != "failed"


def test_restore_test_marks_the_newest_copy_restored(backed_up):
    proc = cli("restore-test")
    assert proc.returncode == 0
    assert "restore test of" in proc.stdout and "OK" in proc.stdout
    newest = offhost_manifests()[-1]
    assert newest["verification"] == "restored", newest
    assert newest["restore_test"]["ok"] is True
    assert newest["restore_test"]["row_counts"] == newest["row_counts"]
    status = catalog_status()
    assert status["health"] == "ok", status


def test_a_bit_flipped_copy_fails_the_restore_test_and_raises_the_alert(backed_up):
    # A second backup (through the CLI: copied off-host, checksum verified) to corrupt.
    assert cli("backup").returncode == 0
    verified = [m for m in offhost_manifests() if m["verification"] == "restored"]
    newest = offhost_manifests()[-1]
    dump = OFFHOST / newest["file"]
    data = bytearray(dump.read_bytes())
    data[len(data) // 2] ^= 0x01
    dump.write_bytes(bytes(data))
    others = {k: v for k, v in digests(OFFHOST).items() if not k.startswith(newest["file"].split(".")[0])}
    proc = cli("restore-test")
    assert proc.returncode != 0
    assert "checksum" in proc.stdout, proc.stdout[-3000:]
    marked = json.loads((OFFHOST / (newest["file"].split(".")[0] + ".manifest.json")).read_text())
    assert marked["verification"] == "failed" and marked["failure"]["stage"] == "checksum"
    status = catalog_status()
    assert status["health"] != "ok" and status["last_failure"], status
    assert status["newest_verified"]["id"] != marked["file"].split(".")[0]
    # The earlier verified backups are untouched and still count.
    assert {k: v for k, v in digests(OFFHOST).items() if k in others} == others
    assert verified and status["verified_count"] >= 1


@pytest.mark.parametrize(("override", "needle"), [
    ({"backup_db_password": "LAB-ONLY-wrong-password"}, "password authentication failed"),
    ({"backup_db_ca_source": "/etc/ssl/certs/ca-certificates.crt"}, "certificate verify failed"),
])
def test_wrong_credentials_fail_before_anything_is_written(backed_up, tmp_path, override, needle):
    host_before, off_before = host_sets(), digests(OFFHOST)
    extra = tmp_path / "extra.json"
    extra.write_text(json.dumps(override))
    extra.chmod(0o600)
    try:
        proc = play("playbooks/backup.yml", "-e", f"@{extra}")
        assert proc.returncode != 0
        assert "nothing new was kept" in proc.stdout and needle in proc.stdout, proc.stdout[-3000:]
        after = host_sets()
        failure = json.loads(on_host("cat", f"{HOST_DIR}/last-failure.json").stdout)
        assert failure["stage"] == "connect" and needle in failure["msg"]
        assert {k: v for k, v in after.items() if k != "last-failure.json"} == \
               {k: v for k, v in host_before.items() if k != "last-failure.json"}
        assert on_host("sh", "-c", f"ls -a {HOST_DIR} | grep -c partial", check=False).stdout.strip() == "0"
        assert digests(OFFHOST) == off_before
    finally:
        # The right configuration back (the next test and the timer use it).
        assert play("playbooks/backup.yml", "-e", "backup_offhost_enabled=false").returncode == 0
    time.sleep(1)


def test_prune_dry_run_lists_and_keeps(backed_up):
    """A policy that keeps only the newest verified backup, as a dry run: listed, nothing removed."""
    before = digests(OFFHOST)
    policy = {"hourly": 0, "daily": 0, "weekly": 0, "monthly": 0, "keep_min": 1}
    proc = cli("backup", "-e", "backup_prune_dry_run=true", "-e", "backup_retention=" + json.dumps(policy))
    assert proc.returncode == 0
    assert set(before) <= set(digests(OFFHOST)), "a dry run removed a backup"
    # The plan names the sets it would remove (every verified one but the newest is outside it).
    assert re.search(r"^\s*remove ai_admin-\d{8}T\d{6}Z ", proc.stdout, re.M), proc.stdout[-3000:]
    assert not re.search(r"\b0 to remove\b", proc.stdout), proc.stdout[-3000:]


def test_pruned_copies_are_not_copied_again(backed_up):
    """The host keeps more recent sets than a tight retention does off-host: what the retention
    removed stays removed on the next run (only sets newer than the newest copy are copied)."""
    policy = {"hourly": 0, "daily": 0, "weekly": 0, "monthly": 0, "keep_min": 1}
    assert cli("backup", "-e", "backup_retention=" + json.dumps(policy)).returncode == 0
    kept = [m["file"] for m in offhost_manifests() if m["verification"] != "failed"]
    assert len(kept) == 1 and len(host_sets()) > 3, (kept, host_sets())
    assert cli("backup", "-e", "backup_retention=" + json.dumps(policy)).returncode == 0
    again = [m["file"] for m in offhost_manifests() if m["verification"] != "failed"]
    assert len(again) == 1 and again != kept, again


def unit_command(unit: Path) -> tuple[list[str], dict[str, str]]:
    """A service's ExecStart argv and Environment, as written in the unit."""
    text = unit.read_text()
    env = dict(line.split("=", 2)[1:] for line in text.splitlines() if line.startswith("Environment="))
    argv = next(line.split("=", 1)[1] for line in text.splitlines() if line.startswith("ExecStart=")).split()
    return argv, env


def run_unit_command(unit: Path) -> subprocess.CompletedProcess:
    argv, env = unit_command(unit)
    assert env == {"AIADMIN_STATE_DIR": str(STATE)}, env
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=900, check=False,
                          env=dict(os.environ, CONTAINERS_CONF=ENV["CONTAINERS_CONF"], **env))
    assert proc.returncode == 0, proc.stdout[-3000:]
    return proc


def test_controller_timers_fetch_the_hosts_sets_and_restore_test_them(backed_up, tmp_path):
    """`aiadmin-ops backup-timers` writes the controller's units (here into a scratch directory:
    this controller runs no systemd). A set the host's own timer service keeps is only on the
    host until the fetch service's command, run as written, copies it off-host byte for byte;
    the restore-test service's command then marks it restored. Real systemd on a lab host loads
    the timers: the fetch 10 min after each hourly slot, the restore test on Sunday."""
    units = tmp_path / "units"
    units.mkdir()
    proc = cli("backup-timers", "-e", f"backup_controller_unit_dir={units}", "-e", "backup_controller_inventory=lab")
    assert proc.returncode == 0 and "verified" in proc.stdout, proc.stdout[-3000:]
    names = sorted(p.name for p in units.iterdir())
    assert names == ["aiadmin-backup-fetch.service", "aiadmin-backup-fetch.timer",
                     "aiadmin-health.service", "aiadmin-health.timer",
                     "aiadmin-maintain-keys.service", "aiadmin-maintain-keys.timer",
                     "aiadmin-maintain-weekly.service", "aiadmin-maintain-weekly.timer",
                     "aiadmin-restore-test.service", "aiadmin-restore-test.timer"], names
    health_unit = (units / "aiadmin-health.service").read_text()
    assert "aiadmin-ops health --alert -i lab" in health_unit and "SuccessExitStatus=1 2" in health_unit
    assert "maintain --job keys --job redis -i lab" in (units / "aiadmin-maintain-keys.service").read_text()
    assert "maintain --job weekly -i lab" in (units / "aiadmin-maintain-weekly.service").read_text()
    # A backup by the host's timer service: on the host, not yet off-host.
    before = {m["file"] for m in offhost_manifests()}
    on_host_before = set(host_sets())
    on_host("systemctl", "start", "aiadmin-backup.service")
    made = sorted(n for n in host_sets() if n.endswith(".dump.age") and n not in on_host_before)
    assert len(made) == 1 and made[0] not in before, made
    # The fetch service's own command copies it, checksum verified, and nothing else changes.
    run_unit_command(units / "aiadmin-backup-fetch.service")
    copied = {m["file"]: m for m in offhost_manifests()}
    assert made[0] in copied and set(copied) - before == {made[0]}, sorted(copied)
    assert hashlib.sha256((OFFHOST / made[0]).read_bytes()).hexdigest() == host_sets()[made[0]] \
        == copied[made[0]]["sha256"]
    # Nothing new on the host: the fetch again copies nothing and changes no archive.
    snapshot = digests(OFFHOST)
    run_unit_command(units / "aiadmin-backup-fetch.service")
    after = digests(OFFHOST)
    assert set(after) <= set(snapshot), sorted(set(after) - set(snapshot))
    assert all(snapshot[k] == v for k, v in after.items() if not k.endswith(".manifest.json"))
    # The restore-test service's own command marks that newest copy restored.
    run_unit_command(units / "aiadmin-restore-test.service")
    marked = next(m for m in offhost_manifests() if m["file"] == made[0])
    assert marked["verification"] == "restored" and marked["restore_test"]["ok"] is True, marked
    # Real systemd loads the units and schedules the timers (lab-new; only the timers are
    # started there; the units are removed afterwards).
    for unit in names:
        podman("cp", str(units / unit), f"{HOST}:/etc/systemd/system/")
    try:
        on_host("systemctl", "daemon-reload")
        for timer, calendar, day in (("aiadmin-backup-fetch.timer", "*-*-* *:10:00", ""),
                                     ("aiadmin-restore-test.timer", "Sun *-*-* 03:00:00", "Sun "),
                                     ("aiadmin-maintain-keys.timer", "*-*-* 04:30:00", ""),
                                     ("aiadmin-maintain-weekly.timer", "Sun *-*-* 02:00:00 Europe/Moscow", "Sun ")):
            on_host("systemctl", "start", timer)
            show = on_host("systemctl", "show", timer, "--property=TimersCalendar,Persistent").stdout
            assert "Persistent=yes" in show and calendar in show, show
            nxt = on_host("systemctl", "list-timers", timer, "--no-pager").stdout
            assert timer in nxt and day in nxt, nxt
    finally:
        # A timer that came due meanwhile (the fetch at minute 10) started its service, which
        # fails here (no checkout in the container): forget that too, or systemd stays degraded.
        on_host("sh", "-c", "for u in " + " ".join(n for n in names if n.endswith(".timer")) + "; do"
                " systemctl stop $u; done; cd /etc/systemd/system && rm -f " + " ".join(names) + ";"
                " systemctl daemon-reload; systemctl reset-failed " + " ".join(names), check=False)
