"""Helpers for the gate tests (and the benchmark): module runs, delay proxy, Ansible runs."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pathlib
import socket
import subprocess
import sys
import threading
import time

from tests.gates.gates_pg import ROOT

HERE = pathlib.Path(__file__).resolve().parent
MODRUN = HERE / 'gates_modrun.py'
VENV_BIN = pathlib.Path(sys.executable).parent
BLACKHOLE_ADDR = '198.18.0.2'  # RFC 2544 benchmark range, only ever inside our namespace
# A module process's wall time beyond its connect_timeout: Python and Ansible start-up, which on
# a loaded 2-core machine (make test runs the lab beside pytest) reached 1.5 s. Without the
# timeout a silent or black-holed server keeps a connect going for minutes.
PROCESS_SLACK_S = 3


@dataclasses.dataclass
class ModuleRun:
    rc: int
    result: dict
    seconds: float
    stdout: str
    stderr: str

    @property
    def failed(self) -> bool:
        return bool(self.result.get('failed')) or self.rc != 0


class DelayProxy:
    """Userspace TCP proxy on loopback that delays every chunk by ``delay`` seconds.

    The kernel here has no sch_netem (``tc qdisc ... netem`` fails with "Specified qdisc
    kind is unknown"), so added latency is simulated in userspace: each chunk read from
    one side is held ``delay`` seconds before it is written to the other, i.e. a request/
    response round trip gains 2 x delay. TLS passes through untouched (it is opaque bytes).
    """

    def __init__(self, target_port: int, delay: float, target_host: str = '127.0.0.1'):
        self.target = (target_host, target_port)
        self.delay = delay
        self.listener = socket.create_server(('127.0.0.1', 0))
        self.port = self.listener.getsockname()[1]
        self.closing = False
        self.sockets: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.closing:
            try:
                client, _addr = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                chunk = src.recv(65536)
                if not chunk:
                    break
                time.sleep(self.delay)
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.closing = True
        self.listener.close()
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.close()


def assert_no_go(run: ModuleRun, stage: str, *needles: str) -> None:
    """The gate said no-go, failed the task (fail closed) and blamed ``stage``."""
    res = run.result
    assert run.rc != 0 and res.get('failed') is True, res
    assert res['go'] is False, res
    assert res['error_stage'] == stage, res
    assert res['reasons'], res
    assert res['reasons'][0].startswith(stage + ':'), res['reasons']
    text = ' '.join(res['reasons']).lower()
    for needle in needles:
        assert needle.lower() in text, (needle, res['reasons'])
    assert res['msg'].startswith('NO-GO') or stage == 'params', res['msg']


# ----------------------------------------------------------------------------- ansible-playbook


def ansible_env(tmp_path: pathlib.Path, json_output: bool = False) -> dict:
    env = dict(os.environ)
    env.update(
        ANSIBLE_CONFIG=str(ROOT / 'ansible.cfg'),
        ANSIBLE_LOCAL_TEMP=str(tmp_path / 'ansible-local'),
        ANSIBLE_REMOTE_TEMP=str(tmp_path / 'ansible-remote'),
        ANSIBLE_NOCOLOR='1',
        ANSIBLE_FORCE_COLOR='0',
        ANSIBLE_RETRY_FILES_ENABLED='0',
        PATH=f'{VENV_BIN}{os.pathsep}{env.get("PATH", "")}',
    )
    if json_output:
        # The json stdout callback; ansible.cfg's profile_tasks may print after the document.
        env.update(ANSIBLE_STDOUT_CALLBACK='ansible.builtin.json')
    return env


def write_private(path: pathlib.Path, data: dict) -> pathlib.Path:
    path.write_text(json.dumps(data, indent=2))
    path.chmod(0o600)
    return path


def local_inventory(tmp_path: pathlib.Path, host_vars: dict) -> pathlib.Path:
    """localhost as `gate-local`, in the groups the playbooks target (new, gate_targets)."""
    host = dict(ansible_connection='local', ansible_python_interpreter=sys.executable, **host_vars)
    inventory = {'all': {'hosts': {'gate-local': host},
                         'children': {'new': {'hosts': {'gate-local': {}}},
                                      'gate_targets': {'hosts': {'gate-local': {}}}}}}
    return write_private(tmp_path / 'inventory.json', inventory)


def playbook(args: list[str], env: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(VENV_BIN / 'ansible-playbook'), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def flat(proc: subprocess.CompletedProcess) -> str:
    """stdout + stderr with whitespace collapsed (the yaml result format wraps long lines)."""
    return ' '.join((proc.stdout + proc.stderr).split())


def json_document(stdout: str) -> dict:
    data, _end = json.JSONDecoder().raw_decode(stdout[stdout.index('{'):])
    return data


def task_results(stdout: str) -> dict:
    data = json_document(stdout)
    out = {}
    for play in data['plays']:
        for task in play['tasks']:
            out[task['task']['name']] = task['hosts']['gate-local']
    return out
