"""Real servers for the demo app tests: PostgreSQL 15 with TLS (a test CA) and Redis, on loopback."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.helpers import dotenv_text, redis_process

ROOT = Path(__file__).resolve().parents[2]
APP = ROOT / "app"
PG_BIN = Path("/usr/lib/postgresql/15/bin")
NODE = shutil.which("node") or "/usr/bin/node"
DB_PASSWORD = "p w}|<?%$'\"#\\ end"  # same character classes as the lab password
REDIS_PASSWORD = "r$ed is#'\"\\pw"

SKIP = pytest.mark.skipif(
    not (PG_BIN / "postgres").exists() or not shutil.which("redis-server") or not Path(NODE).exists(),
    reason="needs PostgreSQL 15 binaries, redis-server and node",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(*cmd: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


def _as_postgres(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@pytest.fixture(scope="session")
def workdir():
    # Not under pytest's tmp root: that is 0700 and the postgres user must traverse it.
    path = Path(tempfile.mkdtemp(prefix="aiadmin-app-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def tls(workdir: Path) -> dict:
    """A test CA and a server certificate for 127.0.0.1 / localhost."""
    d = workdir / "tls"
    d.mkdir()
    _run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
         "-keyout", str(d / "ca.key"), "-out", str(d / "ca.crt"))
    _run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
         "-keyout", str(d / "server.key"), "-out", str(d / "server.csr"))
    (d / "ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    _run("openssl", "x509", "-req", "-in", str(d / "server.csr"), "-CA", str(d / "ca.crt"),
         "-CAkey", str(d / "ca.key"), "-CAcreateserial", "-days", "2", "-extfile", str(d / "ext"),
         "-out", str(d / "server.crt"))
    # A second CA that did not sign the server: verify-full must refuse it.
    _run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=other-ca",
         "-keyout", str(d / "other.key"), "-out", str(d / "other.crt"))
    return {"ca": d / "ca.crt", "other_ca": d / "other.crt", "cert": d / "server.crt", "key": d / "server.key"}


@pytest.fixture(scope="session")
def postgres(workdir: Path, tls: dict):
    """PostgreSQL 15: hostssl + scram only, the app's tables, a password full of shell metacharacters."""
    data = workdir / "pg"
    data.mkdir()
    for name in ("cert", "key"):
        shutil.copy(tls[name], data.parent / f"pg-{name}")
    pwfile = workdir / "pw"
    pwfile.write_text("postgres-super\n")
    if os.geteuid() == 0:
        shutil.chown(data, "postgres")
        for f in (pwfile, data.parent / "pg-cert", data.parent / "pg-key"):
            shutil.chown(f, "postgres")
    (data.parent / "pg-key").chmod(0o600)
    _run(*_as_postgres([str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "--pwfile", str(pwfile),
                        "--auth=scram-sha-256"]))
    port = free_port()
    with open(data / "postgresql.conf", "a") as conf:
        conf.write(f"port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{data}'\n"
                   f"ssl = on\nssl_cert_file = '{data.parent / 'pg-cert'}'\nssl_key_file = '{data.parent / 'pg-key'}'\n"
                   "max_connections = 40\n")
    (data / "pg_hba.conf").write_text("local all postgres scram-sha-256\nhostssl all all 127.0.0.1/32 scram-sha-256\n")
    proc = subprocess.Popen(_as_postgres([str(PG_BIN / "postgres"), "-D", str(data)]),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import psycopg

    admin = f"host=127.0.0.1 port={port} user=postgres password=postgres-super dbname=postgres sslmode=require"
    for _ in range(100):
        try:
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute("SELECT 1")
            break
        except psycopg.OperationalError:
            time.sleep(0.1)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute("CREATE ROLE ai_admin LOGIN")
        conn.execute(f"ALTER ROLE ai_admin PASSWORD '{DB_PASSWORD.replace(chr(39), chr(39) * 2)}'")
        conn.execute("CREATE DATABASE ai_admin OWNER ai_admin")
        conn.execute("GRANT pg_monitor TO ai_admin")
    with psycopg.connect(admin.replace("dbname=postgres", "dbname=ai_admin"), autocommit=True) as conn:
        conn.execute("CREATE TABLE whatsapp_auth (company_id text PRIMARY KEY, creds jsonb, "
                     "created_at timestamptz DEFAULT now(), updated_at timestamptz DEFAULT now())")
        conn.execute("CREATE TABLE whatsapp_keys (company_id text, key_type text, key_id text, value jsonb, "
                     "created_at timestamptz DEFAULT now(), updated_at timestamptz DEFAULT now(), "
                     "expires_at timestamptz, PRIMARY KEY (company_id, key_type, key_id))")
        conn.execute("ALTER TABLE whatsapp_auth OWNER TO ai_admin")
        conn.execute("ALTER TABLE whatsapp_keys OWNER TO ai_admin")
    yield {"port": port, "admin": admin, "proc": proc}
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="session")
def redis_server(workdir: Path):
    port = free_port()
    with redis_process(workdir, port, REDIS_PASSWORD) as proc:
        yield {"port": port, "proc": proc}


LAB_DB = "ai_admin_lab"
LAB_COMPANY = "1001"  # the seed's company; its company_id columns are integers
LOCK_CLASS = 0x41494144  # app/src/main.js: first key of the WhatsApp session advisory lock


def lock_key(company_id: str) -> int:
    """app/src/main.js lockKey: 31-bit FNV-1a of ``whatsapp:<company id>``."""
    h = 0x811C9DC5
    for byte in f"whatsapp:{company_id}".encode():
        h = ((h ^ byte) * 0x01000193) & 0xFFFFFFFF
    return h & 0x7FFFFFFF


def db_dsn(postgres: dict, dbname: str = "ai_admin") -> str:
    """Superuser DSN for one of the test databases."""
    return postgres["admin"].replace("dbname=postgres", f"dbname={dbname}")


@pytest.fixture(scope="session")
def lab_db(postgres) -> str:
    """A second database, ``ai_admin_lab``, built by lab/files/seed.sql itself (run as the app's role,
    which owns it): integer company ids, ``messages`` partitioned by range with a DEFAULT partition,
    ``dialog_contexts``, company 1001 with its whatsapp_auth row. Returns its superuser DSN."""
    import psycopg

    with psycopg.connect(postgres["admin"], autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {LAB_DB} OWNER ai_admin")
    seed = (ROOT / "lab/files/seed.sql").read_text()
    with psycopg.connect(host="127.0.0.1", port=postgres["port"], user="ai_admin", password=DB_PASSWORD,
                         dbname=LAB_DB, sslmode="require", autocommit=True) as conn:
        conn.execute(seed)  # no parameters: several statements in one go
    return db_dsn(postgres, LAB_DB)



@pytest.fixture
def app_env(workdir: Path, postgres, redis_server, tls, request) -> dict:
    values = {
        "NODE_ENV": "production",
        "POSTGRES_HOST": "127.0.0.1",
        "POSTGRES_PORT": str(postgres["port"]),
        "POSTGRES_DATABASE": "ai_admin",
        "POSTGRES_USER": "ai_admin",
        "POSTGRES_PASSWORD": DB_PASSWORD,
        "POSTGRES_MAX_CONNECTIONS": "3",
        "PGSSLROOTCERT": str(tls["ca"]),
        "REDIS_PORT": str(redis_server["port"]),
        "REDIS_PASSWORD": REDIS_PASSWORD,
        "AIADMIN_API_HOST": "127.0.0.1",
        "AIADMIN_API_PORT": str(free_port()),
        "AIADMIN_LOCK_WAIT_SECONDS": "2",
        "COMPANY_ID": f"test-{request.node.name}",
    }
    return values


class AppProcess:
    def __init__(self, role: str, values: dict, workdir: Path, extra_env: dict | None = None):
        # The app reads .env from its working directory with dotenv, as PM2 runs it in its release.
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / ".env").write_text("# test\n" + dotenv_text(values))
        env = {"PATH": os.environ["PATH"], **(extra_env or {})}
        self.role = role
        self.port = int(values["AIADMIN_API_PORT"])
        self.proc = subprocess.Popen([NODE, str(APP / "src/main.js"), "--role", role], cwd=workdir, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def get(self, path: str) -> tuple[int, dict]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
                timeout: float = 10) -> tuple[int, dict, dict]:
        """One request on a fresh connection: (status, JSON body or {}, lower-cased headers)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            raw = resp.read()
            try:
                doc = json.loads(raw) if raw else {}
            except ValueError:
                doc = {"raw": raw.decode(errors="replace")}
            return resp.status, doc, {k.lower(): v for k, v in resp.getheaders()}
        finally:
            conn.close()

    def post_json(self, path: str, doc, timeout: float = 10) -> tuple[int, dict]:
        status, body, _ = self.request("POST", path, json.dumps(doc).encode(),
                                       {"content-type": "application/json"}, timeout)
        return status, body

    def wait_http(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.role} exited {self.proc.returncode}: {self.output()}")
            try:
                self.get("/health")
                return
            except OSError:
                time.sleep(0.1)
        raise AssertionError(f"{self.role} not listening")

    def wait_log(self, text: str, timeout: float = 20) -> str:
        seen = []
        deadline = time.monotonic() + timeout
        os.set_blocking(self.proc.stdout.fileno(), False)
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if line:
                seen.append(line)
                if text in line:
                    return "".join(seen)
            else:
                time.sleep(0.05)
        raise AssertionError(f"{text!r} not logged by {self.role}: {''.join(seen)}")

    def output(self) -> str:
        try:
            os.set_blocking(self.proc.stdout.fileno(), True)
            return self.proc.stdout.read() if self.proc.poll() is not None else ""
        except ValueError:
            return ""

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@pytest.fixture
def start_app(workdir: Path, request):
    started: list[AppProcess] = []

    def _start(role: str, values: dict, extra_env: dict | None = None) -> AppProcess:
        app = AppProcess(role, values, workdir / f"{request.node.name}-{len(started)}", extra_env)
        started.append(app)
        return app

    yield _start
    for app in started:
        app.stop()


@pytest.fixture(scope="session")
def node_modules() -> None:
    """The app's dependencies from its lockfile (npm ci), once."""
    installed = APP / "node_modules/.package-lock.json"
    wanted = {k for k in json.loads((APP / "package-lock.json").read_text())["packages"] if k}
    if not installed.exists() or set(json.loads(installed.read_text())["packages"]) != wanted:
        subprocess.run(["npm", "ci", "--omit=dev", "--no-audit", "--no-fund"], cwd=APP, check=True)
