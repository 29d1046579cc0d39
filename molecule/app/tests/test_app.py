"""Verify the deployed app from the outside: PM2, /health over the network, .env, sockets,
the WhatsApp session lock in lab-db, a second host refused, and a no-op re-deploy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import psycopg
import pytest
import testinfra

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))
from tests.helpers import dotenv_text, lab_vault  # noqa: E402

INSTANCE = "mol-app-d12"
APP_DIR = "/opt/ai-admin"
PM2 = "runuser -u aiadmin -- env PM2_HOME=/home/aiadmin/.pm2 HOME=/home/aiadmin pm2"
PROCESSES = ["ai-admin-api", "ai-admin-worker-v2", "ai-admin-batch-processor", "whatsapp-backup-service",
             "ai-admin-booking-monitor", "ai-admin-telegram-bot", "baileys-whatsapp-service"]
COMPANY = "molecule-app"
LOCK_CLASS = 0x41494144
LAB_DB = "10.213.10.10"
# lab-db's Molecule cluster (inventories/lab/group_vars/molecule.yml), not the lab's main one
DB_PORT = 5433


def lock_key(company: str) -> int:
    """Same 31-bit FNV-1a as app/src/main.js."""
    h = 0x811C9DC5
    for byte in f"whatsapp:{company}".encode():
        h ^= byte
        h = (h * 0x01000193) & 0xFFFFFFFF
    return h & 0x7FFFFFFF


@pytest.fixture(scope="module")
def host():
    return testinfra.get_host(f"podman://{INSTANCE}")


@pytest.fixture(scope="module")
def public_ip() -> str:
    out = subprocess.run(["podman", "inspect", "-f", "{{json .NetworkSettings.Networks}}", INSTANCE],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)["aiadmin-lab-public"]["IPAddress"]


def pm2_list(host) -> dict:
    out = host.check_output(f"{PM2} jlist")
    data = json.loads(out[out.index("["):])
    return {p["name"]: {"status": p["pm2_env"]["status"], "pid": p["pid"], "restarts": p["pm2_env"]["restart_time"]}
            for p in data}


def lab_db():
    return psycopg.connect(host=LAB_DB, port=DB_PORT, dbname="ai_admin", user="ai_admin",
                           password=lab_vault()["vault_aiadmin_db_password"], sslmode="verify-full",
                           sslrootcert=str(ROOT / "lab/state/ca.crt"), connect_timeout=10)


def test_all_processes_online(host):
    procs = pm2_list(host)
    assert sorted(procs) == sorted(PROCESSES)
    assert all(p["status"] == "online" for p in procs.values()), procs
    assert host.service("pm2-aiadmin").is_running


def test_health_from_outside(public_ip):
    with urllib.request.urlopen(f"http://{public_ip}:3000/health", timeout=5) as resp:
        body = json.loads(resp.read())
        assert resp.status == 200
    assert body["database"] == "connected"
    assert body["services"]["database"] == "connected" and body["services"]["redis"] == "connected"
    assert body["services"]["whatsapp"] == "connected" and body["status"] == "healthy"
    assert body["release"] == "v1.1.0"  # the side effect's rollback target
    with urllib.request.urlopen(f"http://{public_ip}:3000/health/database", timeout=5) as resp:
        db = json.loads(resp.read())
    assert db["ssl"] is True and db["pool"]["total"] == 3 and db["pool"]["waiting"] == 0
    with urllib.request.urlopen(f"http://{public_ip}:3000/health/whatsapp", timeout=5) as resp:
        wa = json.loads(resp.read())
    assert {"auth_records", "total_keys", "expired_keys", "thresholds", "last_check"} <= set(wa)


def test_releases_layout(host):
    current = host.file(f"{APP_DIR}/current")
    assert current.is_symlink and current.linked_to == f"{APP_DIR}/releases/v1.1.0"
    for version in ("v1.0.0", "v1.1.0", "v1.2.0"):
        assert host.file(f"{APP_DIR}/releases/{version}/node_modules/pg").is_directory
    ca = host.file(f"{APP_DIR}/shared/certs/root.crt")
    assert ca.user == "root" and ca.mode == 0o644
    assert ca.content == host.file("/root/.cloud-certs/root.crt").content


def test_env_file(host):
    env = host.file(f"{APP_DIR}/shared/.env")
    assert env.user == "aiadmin" and env.group == "aiadmin" and env.mode == 0o600
    # Read back on the host by the release's own dotenv, from the release directory, as the app does.
    out = host.run("cd %s/current && node -e %s", APP_DIR,
                   "process.stdout.write(JSON.stringify(require('dotenv').parse(require('fs').readFileSync('.env'))))")
    assert out.rc == 0, out.stderr
    values = json.loads(out.stdout)
    assert values["POSTGRES_PASSWORD"] == lab_vault()["vault_aiadmin_db_password"]
    assert values["REDIS_PASSWORD"] == lab_vault()["vault_aiadmin_redis_password"]
    assert values["PGSSLROOTCERT"] == f"{APP_DIR}/shared/certs/root.crt"
    assert values["POSTGRES_HOST"] == "10.213.20.10"
    assert values["POSTGRES_MAX_CONNECTIONS"] == "3"
    assert host.file(f"{APP_DIR}/current/.env").linked_to == f"{APP_DIR}/shared/.env"


def test_only_ssh_and_api_listen_outside_loopback(host):
    out = host.check_output("ss -Htuln")
    exposed = set()
    for line in out.splitlines():
        local = line.split()[4]
        addr, _, port = local.rpartition(":")
        addr = addr.strip("[]").split("%")[0]
        if addr in ("127.0.0.1", "::1") or addr.startswith("127."):
            continue
        exposed.add(port)
    assert exposed <= {"22", "3000"}, out
    assert "3000" in exposed


def test_session_lock_held_by_exactly_one_process(host):
    private_ip = host.check_output("ip -4 -o addr show | awk '/10\\.213\\.20\\./ {print $4}' | cut -d/ -f1")
    with lab_db() as conn:
        rows = conn.execute(
            "SELECT a.application_name, host(a.client_addr) FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
            "WHERE l.locktype = 'advisory' AND l.granted AND l.classid = %s AND l.objid = %s AND l.objsubid = 2",
            (LOCK_CLASS, lock_key(COMPANY))).fetchall()
        pools = dict(conn.execute(
            "SELECT application_name, count(*) FROM pg_stat_activity WHERE host(client_addr) = %s "
            "GROUP BY 1", (private_ip,)).fetchall())
    assert rows == [("baileys-whatsapp-service", private_ip)]
    # Every process holds its pool of 3 over the private network (+1: the session lock connection).
    for name in PROCESSES:
        assert pools.get(name, 0) == (4 if name == "baileys-whatsapp-service" else 3), pools


def test_second_host_cannot_start_whatsapp(tmp_path):
    """The demo app's baileys process on this machine (another 'host', via lab-db's public address)."""
    if not (ROOT / "app/node_modules/pg").is_dir():
        subprocess.run(["npm", "ci", "--omit=dev"], cwd=ROOT / "app", check=True)
    vault = lab_vault()
    env_file = tmp_path / ".env"  # read by dotenv from the working directory, as PM2 runs the app
    values = {"POSTGRES_HOST": LAB_DB, "POSTGRES_PORT": str(DB_PORT), "POSTGRES_DATABASE": "ai_admin",
              "POSTGRES_USER": "ai_admin", "POSTGRES_PASSWORD": vault["vault_aiadmin_db_password"],
              "POSTGRES_MAX_CONNECTIONS": "1", "PGSSLROOTCERT": str(ROOT / "lab/state/ca.crt"),
              "REDIS_PORT": "9", "COMPANY_ID": COMPANY, "AIADMIN_LOCK_WAIT_SECONDS": "3"}
    env_file.write_text(dotenv_text(values))
    env_file.chmod(0o600)
    proc = subprocess.run(["node", str(ROOT / "app/src/main.js"), "--role", "baileys-whatsapp-service"],
                          env={"PATH": os.environ["PATH"]}, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "another host holds the WhatsApp session lock" in proc.stderr + proc.stdout


def test_redeploy_same_version_changes_and_restarts_nothing(host):
    before = pm2_list(host)
    eph = os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), "-i", f"{eph}/inventory",
         str(ROOT / "playbooks/deploy.yml"), "-e", "deploy_hosts=all", "-e", "aiadmin_app_version=v1.1.0"],
        capture_output=True, text=True, timeout=900, cwd=ROOT,
        # Molecule forces colour on; the recap line is parsed below.
        env={**os.environ, "ANSIBLE_FORCE_COLOR": "0", "ANSIBLE_NOCOLOR": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:]
    recap = [line for line in proc.stdout.splitlines() if line.startswith(INSTANCE) and "ok=" in line]
    assert recap and "changed=0" in recap[-1], recap
    after = pm2_list(host)
    assert {n: (p["pid"], p["restarts"]) for n, p in after.items()} == \
        {n: (p["pid"], p["restarts"]) for n, p in before.items()}
