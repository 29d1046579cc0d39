"""Fixtures for the gate module tests: real PostgreSQL 15 servers on loopback.

- ``pg_tls``: TLS on (test CA, server certificate for DNS:localhost and IP:127.0.0.1 only),
  pg_hba ``hostssl ... scram-sha-256`` only, max_connections 20, listening on 127.0.0.1
  and 127.0.0.2 (the second address is NOT in the certificate).
- ``pg_plain``: a second server without TLS (``ssl = off``), for the "no TLS" cases.
- ``run_module``: runs a module file like Ansible would (``tests/gates/gates_modrun.py``), as a
  subprocess, optionally inside a network namespace; returns (rc, result, seconds).
- ``blackhole_netns``: a network namespace whose 198.18.0.2 silently drops every packet.

Every packet the tests send goes to loopback or into a namespace the tests create.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from tests.gates.gates_lib import BLACKHOLE_ADDR, MODRUN, DelayProxy, ModuleRun
from tests.gates.gates_pg import IS_ROOT, PG_BIN, ROOT, PgServer, free_port, make_pki, setup_roles


@pytest.fixture(scope='session')
def gates_tmp():
    if not (PG_BIN / 'initdb').exists():
        pytest.skip(f'PostgreSQL server binaries not found in {PG_BIN} (set PG_GATES_BIN)')
    base = pathlib.Path(tempfile.mkdtemp(prefix='pg-gates-', dir='/tmp'))
    base.chmod(0o755)  # the postgres user must traverse it
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope='session')
def pki(gates_tmp):
    base = gates_tmp / 'pki'
    base.mkdir(mode=0o755)
    return make_pki(base)


@pytest.fixture(scope='session')
def pg_tls(gates_tmp, pki):
    server = PgServer('pg-tls', gates_tmp / 'tls', free_port(), tls=True, pki=pki)
    try:
        server.start()
        setup_roles(server)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope='session')
def pg_plain(gates_tmp):
    server = PgServer('pg-plain', gates_tmp / 'plain', free_port(), tls=False)
    try:
        server.start()
        setup_roles(server)
        yield server
    finally:
        server.stop()


# ----------------------------------------------------------------------------- module runner


@pytest.fixture
def run_module(tmp_path):
    """run_module('pg_reachability', args, check_mode=False, netns=None) -> ModuleRun."""
    counter = iter(range(1000))

    def run(name: str, args: dict, check_mode: bool = False, netns: str | None = None,
            timeout: float = 60, env: dict | None = None) -> ModuleRun:
        payload = dict(args)
        if check_mode:
            payload['_ansible_check_mode'] = True
        args_file = tmp_path / f'args-{next(counter)}.json'
        args_file.write_text(json.dumps({'ANSIBLE_MODULE_ARGS': payload}))
        args_file.chmod(0o600)
        cmd = [sys.executable, str(MODRUN), str(ROOT / 'plugins' / 'modules' / f'{name}.py'), str(args_file)]
        if netns:
            cmd = ['ip', 'netns', 'exec', netns, *cmd]
        start = time.monotonic()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                              env=dict(os.environ, **(env or {})))
        seconds = time.monotonic() - start
        try:
            result = json.loads(proc.stdout)
        except json.JSONDecodeError:
            pytest.fail(f'{name} printed no JSON (rc {proc.returncode}):\n{proc.stdout}\n{proc.stderr}')
        return ModuleRun(proc.returncode, result, seconds, proc.stdout, proc.stderr)

    return run


# ----------------------------------------------------------------------------- namespaces


def _require_root(what: str) -> None:
    if not IS_ROOT:
        pytest.skip(f'{what} needs root (network namespaces)')
    if not shutil.which('ip'):
        pytest.skip(f'{what} needs iproute2 (ip)')


@pytest.fixture(scope='session')
def blackhole_netns():
    """Namespace with lo, a veth pair and a DROP rule: SYNs to BLACKHOLE_ADDR vanish.

    Its resolv.conf (/etc/netns/NAME/resolv.conf) points at the namespace's own loopback,
    where nothing listens, so name lookups fail fast without leaving the namespace.
    """
    _require_root('the black-hole test')
    name = f'pggate-{os.getpid()}'
    etc = pathlib.Path('/etc/netns') / name

    def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(['ip', 'netns', 'exec', name, *cmd], capture_output=True, text=True,
                              check=check)

    created = subprocess.run(['ip', 'netns', 'add', name], capture_output=True, text=True)
    if created.returncode != 0:
        pytest.skip(f'cannot create a network namespace: {created.stderr.strip()}')
    try:
        etc.mkdir(parents=True, exist_ok=True)
        (etc / 'resolv.conf').write_text('nameserver 127.0.0.1\noptions timeout:1 attempts:1\n')
        sh('ip', 'link', 'set', 'lo', 'up')
        sh('ip', 'link', 'add', 'bh0', 'type', 'veth', 'peer', 'name', 'bh1')
        sh('ip', 'addr', 'add', '198.18.0.1/24', 'dev', 'bh0')
        sh('ip', 'link', 'set', 'bh0', 'up')
        sh('ip', 'link', 'set', 'bh1', 'up')
        # A permanent neighbour entry: no ARP, the SYN is emitted towards bh1 and dropped.
        sh('ip', 'neigh', 'add', BLACKHOLE_ADDR, 'lladdr', '02:00:00:00:00:02', 'dev', 'bh0',
           'nud', 'permanent')
        sh('iptables', '-A', 'OUTPUT', '-d', BLACKHOLE_ADDR, '-j', 'DROP', check=False)
        yield name
    finally:
        subprocess.run(['ip', 'netns', 'del', name], capture_output=True, check=False)
        shutil.rmtree(etc, ignore_errors=True)
        with contextlib.suppress(OSError):
            etc.parent.rmdir()  # only when empty


# ----------------------------------------------------------------------------- latency proxy


@pytest.fixture
def delay_proxy():
    proxies: list[DelayProxy] = []

    def make(target_port: int, delay: float) -> DelayProxy:
        proxy = DelayProxy(target_port, delay)
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        proxy.close()




@pytest.fixture
def silent_server():
    """A loopback port that accepts TCP connections and never says a word (a hung server)."""
    listener = socket.create_server(('127.0.0.1', 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _addr = listener.accept()
            except OSError:
                return
            held.append(conn)

    threading.Thread(target=accept, daemon=True).start()
    yield listener.getsockname()[1]
    stop.set()
    listener.close()
    for conn in held:
        with contextlib.suppress(OSError):
            conn.close()
