"""The backup job (roles/backup) after two backups, a failed run and the role's re-run, checked
from the outside: the host's sets, its configuration and units, the off-host copies on this
controller, the failure record, and that neither the age identity nor plaintext data is on the host."""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import testinfra
import yaml

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))
from tests.helpers import lab_vault  # noqa: E402

INSTANCES = ["mol-backup-d12", "mol-backup-d13"]
USER = "aiadmin-backup"
BACKUP_DIR = "/var/backups/ai-admin"
CONFIG_DIR = "/etc/aiadmin-backup"
CONFIG = f"{CONFIG_DIR}/backup.json"
PGPASS = f"{CONFIG_DIR}/pgpass"
CA = f"{CONFIG_DIR}/root.crt"
JOB = "/usr/local/lib/aiadmin-backup/pg_backup_job.py"
SERVICE = "aiadmin-backup.service"
FAILURE_SERVICE = "aiadmin-backup-failure.service"
TIMER = "aiadmin-backup.timer"
PREFIX = "ai_admin"
SET_SUFFIXES = (".dump.age", ".dump.age.sha256", ".manifest.json")
DB_PRIVATE = "10.213.20.10"
# lab-db's Molecule cluster (inventories/lab/group_vars/molecule.yml), not the lab's main one
DB_PORT = 5433
SEED = "LAB FAKE salon"  # lab/files/seed.sql: a value every dump of the lab database holds
# An age identity (bech32, upper case). The prefix alone is in the age binary itself.
IDENTITY_RE = "AGE-SECRET-KEY-1[0-9A-Z]{58}"
EPHEMERAL = Path(os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY", "/nonexistent"))
GROUP_VARS = yaml.safe_load((ROOT / "inventories/lab/group_vars/all/main.yml").read_text())
REQUIRED_TABLES = [f"public.{t}" for t in GROUP_VARS["aiadmin_db_key_tables"]]


@pytest.fixture(scope="module", params=INSTANCES)
def name(request):
    return request.param


@pytest.fixture(scope="module")
def host(name):
    host = testinfra.get_host(f"podman://{name}")
    # The timer may start a run at any time: let it finish before looking at the directory.
    for _ in range(300):
        if host.run(f"systemctl is-active {SERVICE}").stdout.strip() not in ("activating", "deactivating"):
            break
        time.sleep(1)
    else:
        pytest.fail(f"{SERVICE} still running on {name} after 300 s")
    return host


class LabSecrets(dict):
    """The LAB-ONLY vault, kept out of pytest's tracebacks (fixture values are printed there)."""

    def __repr__(self):
        return "<LAB-ONLY vault, values hidden>"


@pytest.fixture(scope="module")
def vault():
    return LabSecrets(lab_vault())


def podman_exec_env(container, argv, env, timeout=120):
    """Run argv in the container with env passed by NAME (podman --env NAME): values never on a command line."""
    cmd = ["podman", "exec"]
    for key in env:
        cmd += ["--env", key]
    return subprocess.run([*cmd, container, *argv], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=timeout)


def set_ids(host, directory=BACKUP_DIR):
    out = host.check_output(f"find {directory} -maxdepth 1 -type f -name '{PREFIX}-*.manifest.json' -printf '%f\\n'")
    return sorted(line.removesuffix(".manifest.json") for line in out.splitlines())


def offhost_dir(name) -> Path:
    return EPHEMERAL / "offhost" / name


def show(host, unit, *props):
    out = host.check_output(f"systemctl show {unit} " + " ".join(f"--property={p}" for p in props))
    return dict(line.split("=", 1) for line in out.splitlines())


# --- the user, the directories, the configuration ---------------------------------------------

def test_backup_user_is_a_system_user_without_login(host):
    user = host.user(USER)
    assert user.exists
    assert user.shell == "/usr/sbin/nologin"
    assert user.uid < 1000
    assert user.home == "/nonexistent" and not host.file("/nonexistent").exists
    assert host.run(f"su -c true {USER}").rc != 0  # nologin refuses a shell


def test_backup_dir_is_private_to_the_backup_user(host):
    d = host.file(BACKUP_DIR)
    assert d.is_directory
    assert d.mode == 0o700
    assert d.user == USER and d.group == USER


def test_config_has_no_password(host, vault):
    config_dir = host.file(CONFIG_DIR)
    assert config_dir.mode == 0o750 and config_dir.user == "root" and config_dir.group == USER
    f = host.file(CONFIG)
    assert f.mode == 0o640 and f.user == "root" and f.group == USER
    text = f.content_string
    assert vault["vault_aiadmin_db_password"] not in text
    config = json.loads(text)
    assert "password" not in config
    assert config["host"] == DB_PRIVATE and config["sslmode"] == "verify-full"
    assert config["passfile"] == PGPASS and config["ssl_rootcert"] == CA
    assert config["dest_dir"] == BACKUP_DIR
    assert config["age_recipients"] == GROUP_VARS["aiadmin_backup_age_recipients"]
    assert host.run(f"python3 {JOB} --check-config {CONFIG}").rc == 0


def test_pgpass_is_private_and_restored(host, name, vault):
    f = host.file(PGPASS)
    assert f.mode == 0o600 and f.user == USER and f.group == USER
    assert "molecule-wrong-password" not in f.content_string  # side_effect's fault, undone by the role
    # The job's own credentials work again: as its user, with its pgpass and CA, verify-full.
    conninfo = (f"host={DB_PRIVATE} port={DB_PORT} dbname=ai_admin user=ai_admin sslmode=verify-full "
                f"sslrootcert={CA} passfile={PGPASS} connect_timeout=5")
    query = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
    res = host.run(f"runuser -u {USER} -- psql '{conninfo}' -w -Atc '{query}'")
    assert res.rc == 0, res.stderr
    assert res.stdout.strip() == "t"


# --- the units --------------------------------------------------------------------------------

def test_timer_enabled_active_persistent_hourly(host):
    timer = host.service(TIMER)
    assert timer.is_enabled and timer.is_running
    props = show(host, TIMER, "Persistent", "TimersCalendar", "RandomizedDelayUSec", "Unit", "NextElapseUSecRealtime")
    assert props["Persistent"] == "yes"
    assert "OnCalendar=*-*-* *:00:00 ;" in props["TimersCalendar"]  # backup_interval_minutes 60
    assert props["RandomizedDelayUSec"] == "5min"
    assert props["Unit"] == SERVICE
    assert props["NextElapseUSecRealtime"]


def test_units_verify_clean(host):
    res = host.run(f"systemd-analyze verify /etc/systemd/system/{SERVICE} "
                   f"/etc/systemd/system/{FAILURE_SERVICE} /etc/systemd/system/{TIMER}")
    assert res.rc == 0 and res.stderr == "", res.stderr


def test_service_runs_sandboxed_as_the_backup_user(host):
    props = show(host, SERVICE, "User", "Type", "OnFailure", "ProtectSystem", "ReadWritePaths", "NoNewPrivileges")
    assert props["User"] == USER and props["Type"] == "oneshot"
    assert props["OnFailure"] == FAILURE_SERVICE
    assert props["ProtectSystem"] == "strict" and props["ReadWritePaths"] == BACKUP_DIR
    assert props["NoNewPrivileges"] == "yes"


# --- the kept sets ----------------------------------------------------------------------------

def test_kept_sets_are_complete_private_and_verified(host):
    ids = set_ids(host)
    assert len(ids) >= 2  # side_effect's two backups
    for set_id in ids:
        for suffix in SET_SUFFIXES:
            f = host.file(f"{BACKUP_DIR}/{set_id}{suffix}")
            assert f.is_file, f"{set_id}{suffix} missing"
            assert f.mode == 0o600 and f.user == USER, f"{set_id}{suffix}: {oct(f.mode)} {f.user}"
        archive = host.file(f"{BACKUP_DIR}/{set_id}.dump.age")
        manifest = json.loads(host.file(f"{BACKUP_DIR}/{set_id}.manifest.json").content_string)
        sha = archive.sha256sum
        assert manifest["verification"] == "toc"
        assert manifest["file"] == f"{set_id}.dump.age"
        assert manifest["sha256"] == sha
        assert manifest["size"] == archive.size
        assert host.file(f"{BACKUP_DIR}/{set_id}.dump.age.sha256").content_string == f"{sha}  {set_id}.dump.age\n"
        assert manifest["encryption"] == "age"
        assert manifest["age_recipients"] == GROUP_VARS["aiadmin_backup_age_recipients"]
        assert host.check_output(f"head -n 1 {BACKUP_DIR}/{set_id}.dump.age") == "age-encryption.org/v1"
        assert manifest["database"] == "ai_admin" and manifest["host"] == DB_PRIVATE
        assert manifest["toc_entries"] > 0
        assert set(REQUIRED_TABLES) <= set(manifest["row_counts"])
        assert manifest["row_counts"]["public.companies"] >= 1


def test_backup_dir_holds_only_sets_and_the_failure_record(host):
    """No work directory (.partial-*) or plaintext archive was left, by the failed run or any other."""
    entries = host.check_output(f"find {BACKUP_DIR} -mindepth 1 -maxdepth 1 -printf '%f\\n'").splitlines()
    ids = set_ids(host)
    expected = {f"{i}{s}" for i in ids for s in SET_SUFFIXES} | {"last-failure.json"}
    assert set(entries) == expected


def test_failed_run_recorded_at_connect(host):
    record = json.loads(host.file(f"{BACKUP_DIR}/last-failure.json").content_string)
    assert record["stage"] == "connect"
    assert record["msg"].startswith("pg_backup: connect failed: cannot connect to ")
    assert f"{DB_PRIVATE}:{DB_PORT}/ai_admin as ai_admin" in record["msg"]
    assert "password authentication failed" in record["msg"]
    assert record.get("invocation")  # recorded by the job itself, under systemd


def test_earlier_sets_untouched_by_the_failure(host, name):
    recorded = json.loads((EPHEMERAL / f"sets-{name}.json").read_text())
    assert len(recorded) >= 6
    for file_name, sha in recorded.items():
        assert host.file(f"{BACKUP_DIR}/{file_name}").sha256sum == sha, file_name


# --- the off-host copies on this controller ---------------------------------------------------

def test_offhost_copies_match_the_host_byte_for_byte(host, name):
    store = offhost_dir(name)
    assert stat.S_IMODE(store.stat().st_mode) == 0o700
    copied = sorted(p.name.removesuffix(".manifest.json") for p in store.glob(f"{PREFIX}-*.manifest.json"))
    assert len(copied) >= 2
    assert set(copied) <= set(set_ids(host))
    for set_id in copied:
        for suffix in SET_SUFFIXES:
            local = store / f"{set_id}{suffix}"
            remote = host.file(f"{BACKUP_DIR}/{set_id}{suffix}")
            assert stat.S_IMODE(local.stat().st_mode) == 0o600
            assert hashlib.sha256(local.read_bytes()).hexdigest() == remote.sha256sum, local.name
        manifest = json.loads((store / f"{set_id}.manifest.json").read_text())
        assert manifest["verification"] == "toc"  # not marked failed by the off-host check


def test_offhost_copy_decrypts_to_a_dump_holding_the_seed(name, vault):
    """The positive control of the check below: the encrypted dump does hold the seed value."""
    store = offhost_dir(name)
    newest = sorted(store.glob(f"{PREFIX}-*.manifest.json"))[-1]
    manifest = json.loads(newest.read_text())
    plain = subprocess.run(["age", "--decrypt", "-i", "-", str(store / manifest["file"])],
                           input=vault["vault_aiadmin_backup_age_identity"].encode() + b"\n",
                           capture_output=True, check=True, timeout=60).stdout  # identity on stdin only
    assert hashlib.sha256(plain).hexdigest() == manifest["plaintext_sha256"]
    assert len(plain) == manifest["plaintext_size"]
    # The instance's own pg_restore reads its pg_dump's format (a Debian 13 pg_dump 17 archive is
    # newer than this controller's pg_restore 15), run in the instance's mount namespace through
    # a pipe: the plaintext never reaches a disk (and `podman exec -i` 4.3 sometimes loses stdout).
    pid = subprocess.run(["podman", "inspect", "--format", "{{.State.Pid}}", name],
                         capture_output=True, text=True, check=True).stdout.strip()
    data = subprocess.run(["nsenter", "-t", pid, "-m", "--", "pg_restore", "--data-only", "--table=companies",
                           "--file=-"], input=plain, capture_output=True, timeout=60)
    assert data.returncode == 0, data.stderr.decode()
    assert SEED.encode() in data.stdout


# --- nothing secret or plaintext on the host --------------------------------------------------

def test_seed_value_not_in_any_kept_file(host):
    res = host.run(f"grep -rlF '{SEED}' {BACKUP_DIR}")
    assert res.rc == 1, res.stdout + res.stderr  # 1: no match (2 would be an error)


def test_no_age_identity_on_the_instance(host, name, vault):
    identity = vault["vault_aiadmin_backup_age_identity"].strip()
    assert re.fullmatch(IDENTITY_RE, identity)  # the second search would find it
    roots = "$(ls -d /* | grep -vxE '/(proc|sys|dev)')"  # all but the kernel's; devices and FIFOs skipped
    # The lab's identity itself, in any file, binary ones too: passed by name, and to grep as a pattern
    # file that bash's builtin printf writes into a pipe (`-e "$AGE_IDENTITY"` would put it on grep's argv).
    exact = podman_exec_env(name, ["bash", "-c", f'grep -rlsF -D skip -f <(printf "%s\\n" "$AGE_IDENTITY") {roots}'],
                            {"AGE_IDENTITY": identity})
    assert exact.returncode == 1, exact.stdout + exact.stderr  # 1: no match
    # Any age identity in a text file (the age-keygen binary holds a test vector).
    res = host.run(f"grep -rlsIE -D skip -e '{IDENTITY_RE}' {roots}")
    assert res.rc == 1, res.stdout + res.stderr
