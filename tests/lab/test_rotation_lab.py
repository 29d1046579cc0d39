"""Credential rotation on the lab through the CLI (aiadmin-ops maintain --job rotate-db / rotate-redis), the app
serving on lab-new.

The next password comes from the vault: a vault-encrypted vars file (LAB-ONLY fake secrets, the
lab's vault password) named with -e maintenance_secrets_file. lab-db logs DDL (log_statement = ddl
for the app's role): no plaintext password may reach its log.

- a failure injected right after the change: the current password is back on the database, in
  .env and for the app, which serves; the output says not to promote;
- the rotation: the next password logs in, the current one is refused, the app serves with the
  new .env, the backup job's pgpass follows; a second run has nothing to change;
- back again (the next file names the new one as current): the lab ends as it began;
- Redis: a failure injected after the switch puts the current password back (server, redis.conf,
  .env); the rotation leaves only the next one valid, persisted (Redis restarted, the app
  reconnects with it); and back.
"""

from __future__ import annotations

import secrets
import subprocess
import time
from pathlib import Path

import psycopg
import pytest
import yaml

from tests.helpers import LAB_VAULT_PASSWORD, ROOT
from tests.lab import test_dr_lab as dr
from tests.lab import test_maintenance_lab as maint
from tests.lab.test_maintenance_lab import serving  # noqa: F401 - the fixture: lab-new serving on lab-db

pytestmark = [pytest.mark.lab, pytest.mark.maintenance]



def vaulted(path: Path, values: dict) -> Path:
    path.write_text(yaml.safe_dump(values))
    path.chmod(0o600)
    subprocess.run([str(ROOT / ".venv/bin/ansible-vault"), "encrypt", "--vault-id", f"lab@{LAB_VAULT_PASSWORD}",
                    str(path)], check=True, capture_output=True)
    return path


def logs_in(password: str) -> bool:
    try:
        with psycopg.connect(host="10.213.10.10", dbname="ai_admin", user="ai_admin", password=password,
                             sslmode="verify-full", sslrootcert=str(ROOT / "lab/state/ca.crt"), connect_timeout=5):
            return True
    except psycopg.OperationalError:
        return False


def rotate(secrets_file: Path, *extra: str):
    proc, _ = maint.cli("maintain", "--job", "rotate-db", "-e", f"maintenance_secrets_file={secrets_file}", *extra)
    return proc


def rotation_files(tmp: Path, vault: dict, secret: str) -> dict:
    """The two vaulted files of a rotation of vault_aiadmin_<secret>: forward (a new LAB-ONLY fake as
    the next one) and back (that one as current, the lab's own as next)."""
    tmp.chmod(0o700)
    current = vault[f"vault_aiadmin_{secret}"]
    new = f"LAB-FAKE-{secret}-{secrets.token_urlsafe(12)}"
    forward = vaulted(tmp / "forward.yml", {f"vault_aiadmin_{secret}_next": new})
    back = vaulted(tmp / "back.yml", {f"vault_aiadmin_{secret}": new, f"vault_aiadmin_{secret}_next": current})
    return {"current": current, "new": new, "forward": forward, "back": back}


@pytest.fixture(scope="module")
def files(serving, vault, tmp_path_factory):  # noqa: F811 - the imported fixture
    made = rotation_files(tmp_path_factory.mktemp("rotation"), vault, "db_password")
    yield made
    if not logs_in(made["current"]):  # a failed test: leave the lab on its own password
        rotate(made["back"])


def test_a_failure_after_the_change_puts_the_current_password_back(files):
    env_before = dr.on_host("sha256sum", dr.ENV_FILE).stdout
    proc = rotate(files["forward"], "-e", "maintenance_rotate_test_fail=true")
    out = proc.stdout
    assert proc.returncode == 1, out[-3000:]
    assert "ROTATION FAILED" in out and "Do NOT promote" in out
    assert logs_in(files["current"]) and not logs_in(files["new"])
    assert dr.on_host("sha256sum", dr.ENV_FILE).stdout == env_before
    assert dr.health()["status"] == "healthy"
    assert files["new"] not in out and files["current"] not in out


def test_rotation_and_back(files):
    env_before = dr.on_host("sha256sum", dr.ENV_FILE).stdout
    proc = rotate(files["forward"])
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "ROTATED" in proc.stdout and "promote" in proc.stdout
    assert logs_in(files["new"]) and not logs_in(files["current"])
    assert dr.health()["status"] == "healthy"
    assert dr.on_host("sha256sum", dr.ENV_FILE).stdout != env_before
    assert dr.on_host("stat", "-c", "%a", dr.ENV_FILE).stdout.strip() == "600"
    # The backup job logs in with the new password (its pgpass followed).
    assert dr.on_host("systemctl", "start", "aiadmin-backup.service", check=False).returncode == 0

    again = rotate(files["forward"])
    assert again.returncode == 0 and "already rotated" in again.stdout, again.stdout[-3000:]

    back = rotate(files["back"])
    assert back.returncode == 0, back.stdout[-3000:]
    assert logs_in(files["current"]) and not logs_in(files["new"])
    assert dr.health()["status"] == "healthy"
    assert dr.on_host("sha256sum", dr.ENV_FILE).stdout == env_before
    for text in (proc.stdout, again.stdout, back.stdout):
        assert files["new"] not in text and files["current"] not in text
    # lab-db logged the DDL (log_statement = ddl), never a plaintext password.
    log = subprocess.run(["podman", "exec", "lab-db", "sh", "-c", "cat /var/log/postgresql/*.log"],
                         capture_output=True, text=True, env=dr.ENV, check=False).stdout
    assert "ALTER ROLE" in log
    assert files["new"] not in log and files["current"] not in log


def redis_logs_in(vault: dict, password: str) -> bool:
    return maint.redis(vault, "PING", password=password)[-1:] == ["PONG"]


@pytest.fixture(scope="module")
def redis_files(serving, vault, tmp_path_factory):  # noqa: F811 - the imported fixture
    made = rotation_files(tmp_path_factory.mktemp("redis-rotation"), vault, "redis_password")
    yield made
    if not redis_logs_in(vault, made["current"]):
        maint.cli("maintain", "--job", "rotate-redis", "-e", f"maintenance_secrets_file={made['back']}")


def test_redis_rotation_failure_then_both_ways(redis_files, vault):
    def run(name: str, *extra: str):
        proc, _ = maint.cli("maintain", "--job", "rotate-redis", "-e",
                            f"maintenance_secrets_file={redis_files[name]}", *extra)
        return proc

    env_before = dr.on_host("sha256sum", dr.ENV_FILE).stdout
    conf_before = dr.on_host("sha256sum", "/etc/redis/redis.conf").stdout
    failed = run("forward", "-e", "maintenance_rotate_test_fail=true")
    assert failed.returncode == 1 and "ROTATION FAILED" in failed.stdout, failed.stdout[-3000:]
    assert redis_logs_in(vault, redis_files["current"]) and not redis_logs_in(vault, redis_files["new"])
    assert dr.on_host("sha256sum", dr.ENV_FILE).stdout == env_before
    assert dr.on_host("sha256sum", "/etc/redis/redis.conf").stdout == conf_before
    assert dr.health()["status"] == "healthy"

    forward = run("forward")
    assert forward.returncode == 0 and "ROTATED" in forward.stdout, forward.stdout[-3000:]
    assert redis_logs_in(vault, redis_files["new"]) and not redis_logs_in(vault, redis_files["current"])
    assert dr.health()["status"] == "healthy"
    # Persisted: Redis restarted reads the next password from redis.conf; the app reconnects with it.
    dr.on_host("systemctl", "restart", "redis-server")
    assert redis_logs_in(vault, redis_files["new"]) and not redis_logs_in(vault, redis_files["current"])
    deadline = time.time() + 30
    while time.time() < deadline and dr.health().get("services", {}).get("redis") != "connected":
        time.sleep(1)
    assert dr.health()["status"] == "healthy"

    back = run("back")
    assert back.returncode == 0, back.stdout[-3000:]
    assert redis_logs_in(vault, redis_files["current"]) and not redis_logs_in(vault, redis_files["new"])
    assert dr.on_host("sha256sum", dr.ENV_FILE).stdout == env_before
    assert dr.health()["status"] == "healthy"
    for proc in (failed, forward, back):
        assert redis_files["new"] not in proc.stdout and redis_files["current"] not in proc.stdout
