"""The gate modules and playbooks/gates.yml run by Ansible itself (ansible-playbook, local)."""

from __future__ import annotations

import pathlib

import pytest

from tests.gates.gates_lib import (
    HERE,
    ansible_env,
    flat,
    json_document,
    local_inventory,
    playbook,
    task_results,
    write_private,
)
from tests.gates.gates_pg import DATABASE, ROOT, USER, USER_PASSWORD

# Never a real password: the tests grep every output for it (canary).
WRONG_PASSWORD = 'canary-Wr0ng-p4ss|}<?%'


@pytest.fixture
def module_vars(pg_tls, tmp_path):
    return write_private(tmp_path / 'vars.json', {
        'gate_host': '127.0.0.1', 'gate_port': pg_tls.port, 'gate_database': DATABASE,
        'gate_user': USER, 'gate_password': USER_PASSWORD, 'gate_wrong_password': WRONG_PASSWORD,
        'gate_ca': str(pg_tls.pki.ca),
    })


@pytest.mark.parametrize('check', [False, True], ids=['run', 'check'])
def test_modules_through_ansible(pg_tls, tmp_path, module_vars, check):
    pg_tls.wait_quiet(0)
    inventory = local_inventory(tmp_path, {})
    args = ['-i', str(inventory), str(HERE / 'playbooks' / 'modules.yml'), '-e', f'@{module_vars}']
    if check:
        args.append('--check')
    proc = playbook(args, ansible_env(tmp_path, json_output=True))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr  # failures were ignore_errors
    results = task_results(proc.stdout)

    ok = results['Reachability, expected go']
    assert ok.get('failed') is not True and ok['go'] is True and ok['changed'] is False
    assert ok['ssl_in_use'] is True and ok['latency_ms']['count'] == 3
    assert ok['invocation']['module_args']['password'] == 'VALUE_SPECIFIED_IN_NO_LOG_PARAMETER'

    pool = results['Pool, expected go']
    assert pool['go'] is True and pool['used'] == 0 and pool['planned_demand'] == 4

    nogo = results['Reachability, expected no-go (wrong password) fails the task']
    assert nogo['failed'] is True and nogo['go'] is False and nogo['error_stage'] == 'auth'
    assert 'password authentication failed' in nogo['msg']

    pool_nogo = results['Pool, expected no-go (demand above free slots) fails the task']
    assert pool_nogo['failed'] is True and pool_nogo['error_stage'] == 'thresholds'
    assert pool_nogo['level'] == 'critical' and pool_nogo['planned_demand'] == 60

    report = results['Reachability, no-go with report_only returns ok']
    assert report.get('failed') is not True and report['go'] is False and report['error_stage'] == 'auth'

    stats = json_document(proc.stdout)['stats']['gate-local']
    assert stats['failures'] == 0 and stats['ignored'] == 2 and stats['changed'] == 0
    for secret in (USER_PASSWORD, WRONG_PASSWORD):
        assert secret not in proc.stdout and secret not in proc.stderr


def gates_inventory(pg_tls, tmp_path, **overrides) -> pathlib.Path:
    host_vars = {
        'aiadmin_db_host': '127.0.0.1',
        'aiadmin_db_client_address': '127.0.0.1',
        'aiadmin_db_port': pg_tls.port,
        'aiadmin_db_name': DATABASE,
        'aiadmin_db_user': USER,
        'aiadmin_db_password': USER_PASSWORD,
        'aiadmin_db_sslmode': 'verify-full',
        'aiadmin_db_ca_path': str(pg_tls.pki.ca),
        'aiadmin_pm2_processes': ['api', 'worker'],
        'aiadmin_db_pool_size': 3,
    }
    host_vars.update(overrides)
    return local_inventory(tmp_path, host_vars)


GATES = str(ROOT / 'playbooks' / 'gates.yml')


@pytest.mark.parametrize('check', [False, True], ids=['run', 'check'])
def test_gates_playbook_go(pg_tls, tmp_path, check):
    pg_tls.wait_quiet(0)
    args = ['-i', str(gates_inventory(pg_tls, tmp_path)), GATES] + (['--check'] if check else [])
    proc = playbook(args, ansible_env(tmp_path))
    out = flat(proc)
    assert proc.returncode == 0, out[-4000:]
    assert f'gate-local -> GO reachability 127.0.0.1:{pg_tls.port} | dns ' in out
    assert 'gate-local -> GO pool level ok | usable 17, used 0, free 17 | planned 6 -> projected 6 of 17' in out
    assert 'TLSv1.3' in out and 'pg_stat_ssl on' in out and 'over 20 samples' in out
    assert 'failed=0' in out
    assert USER_PASSWORD not in out


def test_gates_playbook_no_go_wrong_password(pg_tls, tmp_path):
    inventory = gates_inventory(pg_tls, tmp_path, aiadmin_db_password=WRONG_PASSWORD)
    proc = playbook(['-i', str(inventory), GATES], ansible_env(tmp_path))
    out = flat(proc)
    assert proc.returncode != 0, out[-4000:]
    assert 'NO-GO reachability (error_stage auth)' in out and 'NO-GO pool (error_stage auth)' in out
    assert 'auth FAILED' in out and 'password authentication failed' in out
    assert 'NO-GO from gate-local to 127.0.0.1' in out
    assert WRONG_PASSWORD not in out


def test_gates_playbook_no_go_pool_over_budget(pg_tls, tmp_path):
    pg_tls.wait_quiet(0)
    inventory = gates_inventory(pg_tls, tmp_path, aiadmin_pm2_processes=[f'p{i}' for i in range(8)])  # 8 x 3 = 24 > 17
    proc = playbook(['-i', str(inventory), GATES, '--check'], ansible_env(tmp_path))
    out = flat(proc)
    assert proc.returncode != 0, out[-4000:]
    assert 'GO reachability' in out and 'NO-GO pool (error_stage thresholds) level critical' in out
    assert 'planned demand 24 exceeds the 17 free slots' in out


def test_gates_playbook_missing_ca_on_the_host(pg_tls, tmp_path):
    inventory = gates_inventory(pg_tls, tmp_path, aiadmin_db_ca_path='/nonexistent/.cloud-certs/root.crt')
    proc = playbook(['-i', str(inventory), GATES], ansible_env(tmp_path))
    out = flat(proc)
    assert proc.returncode != 0, out[-4000:]
    assert 'error_stage params' in out and 'ssl_rootcert /nonexistent/.cloud-certs/root.crt does not exist' in out
    assert USER_PASSWORD not in out
