"""Lab smoke test: real systemd, a real private network and real TLS to PostgreSQL.

psql runs from this machine inside a container's network namespace (nsenter -n), so the
connection leaves from that container's addresses while the container itself stays pristine.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.helpers import ROOT, podman

pytestmark = pytest.mark.lab

CONTAINERS = ("lab-aptcache", "lab-db", "lab-old", "lab-new", "lab-egress")
DB_PRIVATE = "10.213.20.10"
DB_PUBLIC = "10.213.10.10"
LAB_CA = ROOT / "lab/state/ca.crt"


def netns_pid(container: str) -> str:
    return podman("inspect", "-f", "{{.State.Pid}}", container).stdout.strip()


def psql_from(container: str, vault: dict, conninfo: str, sql: str = "SELECT 1") -> subprocess.CompletedProcess:
    env = dict(os.environ, PGPASSWORD=vault["vault_aiadmin_db_password"], PGCONNECT_TIMEOUT="4")
    base = "port=5432 dbname=ai_admin user=ai_admin sslmode=verify-full"
    return subprocess.run(
        ["nsenter", "-t", netns_pid(container), "-n", "psql", "-XAt", "-c", sql, f"{base} {conninfo}"],
        capture_output=True, text=True, env=env, timeout=20, check=False,
    )


def tcp_from(container: str, host: str, port: int, timeout: float = 3.0) -> str:
    code = (
        "import socket,sys\n"
        f"s=socket.socket(); s.settimeout({timeout})\n"
        f"try:\n s.connect(({host!r},{port})); print('open')\n"
        "except socket.timeout: print('timeout')\n"
        "except OSError as e: print(type(e).__name__)\n"
    )
    proc = subprocess.run(["nsenter", "-t", netns_pid(container), "-n", "python3", "-c", code],
                          capture_output=True, text=True, timeout=timeout + 10, check=True)
    return proc.stdout.strip()


@pytest.mark.parametrize("name", CONTAINERS)
def test_systemd_is_running(lab, name):
    proc = podman("exec", name, "systemctl", "is-system-running", check=False)
    assert proc.stdout.strip() == "running", podman("exec", name, "systemctl", "--failed", check=False).stdout
    assert podman("exec", name, "readlink", "/proc/1/exe").stdout.strip().endswith("systemd")


def test_lab_hosts_fetch_the_debian_mirror_through_the_lab_cache(lab):
    """lab-db's PostgreSQL packages (installed by lab/configure.yml after lab-aptcache) came
    through the cache: they are in its store and its log names lab-db's address."""
    from aiadmin_ops.lab import APTCACHE_ADDRESS, APTCACHE_PORT, debian_mirror

    mirror = debian_mirror()
    for name in ("lab-old", "lab-new", "lab-db"):
        said = podman("exec", name, "/usr/local/sbin/aiadmin-lab-apt-proxy", f"{mirror}/dists/bookworm/InRelease")
        assert said.stdout.strip() == f"http://{APTCACHE_ADDRESS}:{APTCACHE_PORT}", name
        # Anything else (the lab's stand-in repositories) goes direct.
        said = podman("exec", name, "/usr/local/sbin/aiadmin-lab-apt-proxy", "http://10.213.10.40:8098/")
        assert said.stdout.strip() == "DIRECT", name
    stored = podman("exec", "lab-aptcache", "find", "/var/cache/apt-cacher-ng", "-name", "postgresql-1*_*.deb")
    assert stored.stdout.strip(), "lab-db's PostgreSQL packages are not in the cache"
    # apt-cacher.log: time|I (from the mirror) or O (to a client)|bytes|client|path.
    log = podman("exec", "lab-aptcache", "cat", "/var/log/apt-cacher-ng/apt-cacher.log").stdout
    served = [line for line in log.splitlines() if line.split("|")[1:2] == ["O"] and "|10.213.10.10|" in line]
    assert any("/postgresql" in line for line in served), log[-2000:]


def test_new_reaches_db_over_private_network_with_verify_full(lab, vault):
    proc = psql_from("lab-new", vault, f"host={DB_PRIVATE} sslrootcert={LAB_CA}",
                     "SELECT ssl, version, inet_client_addr() FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
    assert proc.returncode == 0, proc.stderr
    ssl, version, client = proc.stdout.strip().split("|")
    assert ssl == "t"
    assert version.startswith("TLSv1.")
    assert client == "10.213.20.30"  # it really came over the private network


def test_new_reaches_db_by_private_name(lab, vault):
    proc = psql_from("lab-new", vault,
                     f"host=db.private.lab.test hostaddr={DB_PRIVATE} sslrootcert={LAB_CA}")
    assert proc.returncode == 0, proc.stderr


def test_old_cannot_reach_private_address(lab, vault):
    result = tcp_from("lab-old", DB_PRIVATE, 5432)
    assert result != "open", "lab-old must not reach the private network"
    proc = psql_from("lab-old", vault, f"host={DB_PRIVATE} sslrootcert={LAB_CA}")
    assert proc.returncode != 0


def test_old_reaches_public_address(lab, vault):
    assert tcp_from("lab-old", DB_PUBLIC, 5432) == "open"
    proc = psql_from("lab-old", vault, f"host={DB_PUBLIC} sslrootcert={LAB_CA}",
                     "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "t"


def test_wrong_ca_is_refused(lab, vault, tmp_path: Path):
    key, crt = tmp_path / "other.key", tmp_path / "other.crt"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-keyout", str(key), "-out", str(crt), "-days", "1", "-subj", "/CN=not the lab CA"],
                   check=True, capture_output=True)
    proc = psql_from("lab-new", vault, f"host={DB_PRIVATE} sslrootcert={crt}")
    assert proc.returncode != 0
    assert "certificate verify failed" in proc.stderr


def test_wrong_host_name_is_refused(lab, vault):
    proc = psql_from("lab-new", vault, f"host=wrong-name.lab.test hostaddr={DB_PRIVATE} sslrootcert={LAB_CA}")
    assert proc.returncode != 0
    assert "does not match host name" in proc.stderr


def test_plaintext_is_refused(lab, vault):
    proc = psql_from("lab-new", vault, f"host={DB_PRIVATE} sslmode=disable")
    assert proc.returncode != 0
    assert "no encryption" in proc.stderr


def test_seeded_schema(lab, vault):
    sql = ("SELECT (SELECT count(*) FROM clients), (SELECT count(*) FROM services), "
           "(SELECT count(*) FROM staff), (SELECT count(*) FROM whatsapp_keys "
           "WHERE expires_at < now() OR updated_at < now() - interval '30 days')")
    proc = psql_from("lab-new", vault, f"host={DB_PRIVATE} sslrootcert={LAB_CA}", sql)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "1300|63|12|60"


def test_max_connections_is_low(lab, vault):
    proc = psql_from("lab-new", vault, f"host={DB_PRIVATE} sslrootcert={LAB_CA}", "SHOW max_connections")
    assert int(proc.stdout.strip()) <= 30


def test_private_network_is_internal(lab):
    out = podman("network", "inspect", "-f", "{{.Internal}} {{range .Subnets}}{{.Subnet}}{{end}}",
                 "aiadmin-lab-private").stdout.strip()
    assert out == "true 10.213.20.0/24"
