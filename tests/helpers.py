"""Helpers shared by the tests: paths, the lab vault, podman."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAB_VAULT_PASSWORD = ROOT / "inventories/lab/vault-password.LAB-ONLY.txt"
os.environ.setdefault("CONTAINERS_CONF", str(ROOT / "containers.conf"))
os.environ.setdefault("ANSIBLE_CONFIG", str(ROOT / "ansible.cfg"))


def lab_vault() -> dict:
    """The decrypted LAB-ONLY vault (fake secrets)."""
    import yaml
    from ansible.constants import DEFAULT_VAULT_ID_MATCH
    from ansible.parsing.vault import VaultLib, VaultSecret

    secret = VaultSecret(LAB_VAULT_PASSWORD.read_bytes().strip())
    vault = VaultLib([(DEFAULT_VAULT_ID_MATCH, secret)])
    data = (ROOT / "inventories/lab/group_vars/all/vault.yml").read_bytes()
    return yaml.safe_load(vault.decrypt(data))


def podman(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["podman", *args], capture_output=True, text=True, check=check, timeout=timeout)


def lab_running() -> bool:
    if shutil.which("podman") is None or os.geteuid() != 0:
        return False
    proc = podman("container", "inspect", "-f", "{{.State.Running}}", "lab-db", check=False)
    return proc.returncode == 0 and proc.stdout.strip() == "true"


def file_mode(path: Path) -> int:
    """The permission bits of a file or directory."""
    return stat.S_IMODE(os.stat(path).st_mode)


def dotenv_text(values: dict) -> str:
    """A .env written the way roles/app renders it (its dotenv_quote filter), for dotenv to read."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("app_dotenv_filter", ROOT / "roles/app/filter_plugins/dotenv.py")
    filters = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(filters)
    return "".join(f"{key}={filters.dotenv_quote(value, key)}\n" for key, value in values.items())


@contextlib.contextmanager
def redis_process(workdir: Path, port: int, password: str, extra_conf: str = ""):
    """A throwaway redis-server on 127.0.0.1:port (no persistence) with requirepass, until exit."""
    import socket
    import time

    quoted = password.replace("\\", "\\\\").replace('"', '\\"')
    conf = workdir / "redis.conf"
    conf.write_text(f'port {port}\nbind 127.0.0.1\nsave ""\nappendonly no\nrequirepass "{quoted}"\n'
                    f"dir {workdir}\n{extra_conf}")
    proc = subprocess.Popen(["redis-server", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=10)


TOKEN = "123456:LAB-FAKE-telegram-token"  # a fake, in the URL path like a Telegram bot token


class Receiver:
    """An alert webhook on the controller's loopback: every POSTed JSON body, in order."""

    def __init__(self, status: int = 200):
        self.messages: list[dict] = []
        self.status = status
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["content-length"]))
                outer.messages.append({"path": self.path, **json.loads(body)})
                self.send_response(outer.status)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/bot{TOKEN}/sendMessage"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def texts(self) -> list[str]:
        return [m["text"] for m in self.messages]


ADHOC = [str(ROOT / ".venv/bin/ansible"), "localhost", "-i", "localhost,", "-c", "local",
         "-e", "ansible_python_interpreter=/usr/bin/python3",
         "-M", f"{ROOT / 'plugins/modules'}:{ROOT / 'roles/private_network/library'}"]


def adhoc_module(name: str, args: dict, *, check: bool = False, netns: str | None = None) -> dict:
    """Run one of the project's modules on this machine through Ansible; its result for localhost."""
    cmd = [*ADHOC, "-m", name, "-a", json.dumps(args), *(["--check"] if check else [])]
    if netns:
        cmd = ["ip", "netns", "exec", netns, *cmd]
    env = dict(os.environ, ANSIBLE_LOAD_CALLBACK_PLUGINS="1", ANSIBLE_STDOUT_CALLBACK="json")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False, timeout=120)
    assert "{" in proc.stdout, proc.stdout + proc.stderr
    out, _ = json.JSONDecoder().raw_decode(proc.stdout[proc.stdout.index("{"):])
    return out["plays"][0]["tasks"][0]["hosts"]["localhost"]
