"""playbooks/gates.yml against the podman lab (skipped unless the lab is up).

lab-new is on the private network: go. lab-old is on the public network only: the private
address must be a no-go at the tcp stage.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.gates.gates_lib import VENV_BIN, flat
from tests.gates.gates_pg import ROOT

pytestmark = pytest.mark.lab

INVENTORY = ['-i', 'inventories/lab/hosts.yml',
             '--vault-id', 'lab@inventories/lab/vault-password.LAB-ONLY.txt']
LAB_CONTAINERS = ('lab-db', 'lab-new', 'lab-old')


def lab_env() -> dict:
    env = dict(os.environ)
    env.setdefault('CONTAINERS_CONF', str(ROOT / 'containers.conf'))
    env.update(ANSIBLE_CONFIG=str(ROOT / 'ansible.cfg'), ANSIBLE_NOCOLOR='1', ANSIBLE_FORCE_COLOR='0',
               PATH=f'{VENV_BIN}{os.pathsep}{env.get("PATH", "")}')
    return env


def run(tool: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([str(VENV_BIN / tool), *INVENTORY, *args], cwd=ROOT, env=lab_env(),
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope='module')
def gates_lab():
    if os.geteuid() != 0 or not shutil.which('podman'):
        pytest.skip('the lab needs root and podman')
    for name in LAB_CONTAINERS:
        exists = subprocess.run(['podman', 'container', 'exists', name], env=lab_env(), capture_output=True)
        if exists.returncode != 0:
            pytest.skip(f'lab is not up ({name} missing): run `make lab-up` first')
    if not (ROOT / 'lab' / 'state' / 'ca.crt').exists():
        pytest.skip('lab CA lab/state/ca.crt missing: run `make lab-up` first')
    prep = run('ansible-playbook', 'tests/gates/lab_prep.yml')
    assert prep.returncode == 0, prep.stdout[-4000:] + prep.stderr[-2000:]


def test_gates_go_from_lab_new(gates_lab):
    proc = run('ansible-playbook', 'playbooks/gates.yml', '-e', 'gates_from=lab-new')
    out = flat(proc)
    assert proc.returncode == 0, out[-4000:]
    assert 'lab-new -> GO reachability 10.213.20.10:5432' in out
    assert 'lab-new -> GO pool level' in out
    assert 'pg_stat_ssl on' in out and 'failed=0' in out


def test_gates_no_go_from_lab_old_for_the_private_address(gates_lab):
    # lab-old uses the public endpoint; the private address is not on its path.
    proc = run('ansible-playbook', 'playbooks/gates.yml', '-e', 'gates_from=lab-old',
               '-e', 'gates_db_host=10.213.20.10', '-e', 'gates_connect_timeout=5')
    out = flat(proc)
    assert proc.returncode != 0, out[-4000:]
    assert 'lab-old -> NO-GO reachability (error_stage tcp) 10.213.20.10:5432' in out, out[-4000:]
    assert 'TCP connect failed' in out
    assert 'NO-GO from lab-old to 10.213.20.10' in out
