"""pg_reachability against real PostgreSQL 15 servers (see conftest.py)."""

from __future__ import annotations

import pytest

from tests.gates.gates_lib import BLACKHOLE_ADDR, PROCESS_SLACK_S, assert_no_go
from tests.gates.gates_pg import USER_PASSWORD, free_port

MODULE = 'pg_reachability'
STAGES = ('dns', 'tcp', 'tls', 'auth', 'query', 'latency')


@pytest.mark.parametrize('driver', ['psycopg', 'psycopg2'])
def test_success_all_stages(pg_tls, run_module, driver):
    run = run_module(MODULE, pg_tls.module_args(driver=driver, samples=7, max_latency_ms=500))
    res = run.result
    assert run.rc == 0, res
    assert res['go'] is True and res['error_stage'] is None and res['reasons'] == []
    assert res['gate_warnings'] == [] and 'deprecations' not in res
    assert res['changed'] is False
    for stage in STAGES:
        assert res['stages'][stage]['ok'] is True, (stage, res['stages'])
        assert isinstance(res['stages'][stage]['ms'], float)
        assert res['stages'][stage]['error'] is None
    assert res['driver']['name'] == driver
    assert res['connected_address'] == '127.0.0.1'
    lat = res['latency_ms']
    assert lat['count'] == 7 and len(res['latency_samples_ms']) == 7
    assert 0 < lat['min'] <= lat['p50'] <= lat['p95'] <= lat['max']
    tls = res['tls']
    assert tls['version'] in ('TLSv1.2', 'TLSv1.3')
    assert tls['cipher'] and tls['verified'] is True and tls['hostname_verified'] is True
    assert 29 < tls['days_to_expiry'] <= 30
    assert tls['not_after'].endswith('Z')
    assert res['ssl_in_use'] is True
    assert res['ssl_session']['version'] == tls['version']
    assert res['server_version'].startswith('15')
    assert 150000 <= res['server_version_num'] < 160000
    assert res['server_time']
    # The password (with its awkward characters) never comes back.
    assert USER_PASSWORD not in run.stdout


def test_success_by_host_name_localhost(pg_tls, run_module):
    run = run_module(MODULE, pg_tls.module_args(host='localhost'))
    assert run.rc == 0, run.result
    assert run.result['stages']['dns']['skipped'] is False
    assert '127.0.0.1' in run.result['addresses']


def test_wrong_ca(pg_tls, pki, run_module):
    run = run_module(MODULE, pg_tls.module_args(ssl_rootcert=str(pki.wrong_ca)))
    assert_no_go(run, 'tls', 'certificate verification failed')
    stages = run.result['stages']
    assert stages['tcp']['ok'] is True and stages['tls']['ok'] is False
    assert stages['auth']['skipped'] is True and stages['auth']['ms'] is None


@pytest.mark.parametrize('host,hostaddr', [
    ('db.not-in-the-certificate.test', '127.0.0.1'),  # a name mapped to the server by hostaddr
    ('127.0.0.2', None),                              # an address the server listens on, not in the SANs
])
def test_host_name_not_in_certificate(pg_tls, run_module, host, hostaddr):
    args = pg_tls.module_args(host=host)
    if hostaddr:
        args['hostaddr'] = hostaddr
    run = run_module(MODULE, args)
    assert_no_go(run, 'tls', 'does not match host name', host)
    if hostaddr:
        assert run.result['stages']['dns']['skipped'] is True
        assert run.result['addresses'] == [hostaddr]


def test_verify_ca_accepts_name_not_in_certificate(pg_tls, run_module):
    """verify-ca checks the chain only (libpq semantics); the gate must agree with libpq."""
    run = run_module(MODULE, pg_tls.module_args(host='127.0.0.2', sslmode='verify-ca'))
    assert run.rc == 0, run.result
    assert run.result['tls']['verified'] is True and run.result['tls']['hostname_verified'] is False


def test_server_without_tls_under_verify_full(pg_plain, pki, run_module):
    args = pg_plain.module_args(sslmode='verify-full', ssl_rootcert=str(pki.ca))
    run = run_module(MODULE, args)
    assert_no_go(run, 'tls', 'server does not support TLS')
    assert run.result['stages']['tcp']['ok'] is True
    assert run.result['ssl_in_use'] is None


def test_server_without_tls_sslmode_prefer_is_reported_not_failed(pg_plain, run_module):
    run = run_module(MODULE, pg_plain.module_args(sslmode='prefer'))
    assert run.rc == 0, run.result
    assert run.result['go'] is True
    assert run.result['tls'] is None and run.result['ssl_in_use'] is False
    assert run.result['stages']['tls']['note'] == 'server does not support TLS'


@pytest.mark.parametrize('driver', ['psycopg', 'psycopg2'])
def test_wrong_password(pg_tls, run_module, driver):
    run = run_module(MODULE, pg_tls.module_args(password='not-the-password', driver=driver))
    assert_no_go(run, 'auth', 'password authentication failed')
    stages = run.result['stages']
    assert stages['tls']['ok'] is True and stages['auth']['ok'] is False
    assert stages['query']['skipped'] is True
    assert run.result['latency_ms']['p95'] is None and run.result['latency_ms']['count'] == 0


def test_refused_port(pg_tls, run_module):
    port = free_port()
    run = run_module(MODULE, pg_tls.module_args(port=port))
    assert_no_go(run, 'tcp', 'refused')
    assert run.seconds < 5


@pytest.mark.netns
def test_blackholed_address_fails_within_connect_timeout(blackhole_netns, pki, run_module):
    args = {'host': BLACKHOLE_ADDR, 'port': 5432, 'user': 'x', 'password': 'y',
            'ssl_rootcert': str(pki.ca), 'connect_timeout': 2}
    run = run_module(MODULE, args, netns=blackhole_netns)
    assert_no_go(run, 'tcp', 'timed out', 'black-holed')
    # The stage itself is bounded by connect_timeout; the process adds Python start-up.
    assert run.result['stages']['tcp']['ms'] < 2000 + 300
    assert run.seconds < 2 + PROCESS_SLACK_S, run.seconds


@pytest.mark.netns
def test_dns_failure(blackhole_netns, pki, run_module):
    args = {'host': 'db.gate-test.invalid', 'user': 'x', 'password': 'y',
            'ssl_rootcert': str(pki.ca), 'connect_timeout': 3}
    run = run_module(MODULE, args, netns=blackhole_netns)
    assert_no_go(run, 'dns', 'cannot resolve db.gate-test.invalid')
    assert run.result['stages']['tcp']['skipped'] is True


def test_added_latency_breaches_max_latency(pg_tls, run_module, delay_proxy):
    # 15 ms each way through the userspace delay proxy (no netem here): >= 30 ms per round trip.
    proxy = delay_proxy(pg_tls.port, 0.015)
    run = run_module(MODULE, pg_tls.module_args(port=proxy.port, samples=5, max_latency_ms=20))
    assert_no_go(run, 'latency', 'exceeds max_latency_ms 20')
    res = run.result
    assert res['latency_ms']['min'] >= 29.0, res['latency_ms']
    for stage in ('dns', 'tcp', 'tls', 'auth', 'query', 'latency'):
        assert res['stages'][stage]['ok'] is True, stage
    assert res['ssl_in_use'] is True


def test_added_latency_under_threshold_is_go(pg_tls, run_module, delay_proxy):
    proxy = delay_proxy(pg_tls.port, 0.005)
    run = run_module(MODULE, pg_tls.module_args(port=proxy.port, samples=3, max_latency_ms=500))
    assert run.rc == 0, run.result
    assert run.result['latency_ms']['min'] >= 9.0


def test_certificate_expiring_sooner_than_min_cert_days(pg_tls, run_module):
    run = run_module(MODULE, pg_tls.module_args(min_cert_days=60))
    assert_no_go(run, 'tls', 'fewer than min_cert_days 60')
    # Threshold breaches do not stop the probe: the numbers are all there.
    assert run.result['stages']['latency']['ok'] is True
    assert run.result['latency_ms']['p95'] is not None


def test_report_only_returns_ok_with_go_false(pg_tls, run_module):
    run = run_module(MODULE, pg_tls.module_args(password='wrong', report_only=True))
    assert run.rc == 0, run.result
    res = run.result
    assert res.get('failed') is not True
    assert res['go'] is False and res['error_stage'] == 'auth'
    assert any('password authentication failed' in r for r in res['reasons'])


def test_check_mode(pg_tls, run_module):
    run = run_module(MODULE, pg_tls.module_args(), check_mode=True)
    assert run.rc == 0, run.result
    assert run.result['go'] is True and run.result['changed'] is False
    assert run.result['stages']['latency']['ok'] is True


def test_missing_driver_still_reports_network_stages(pg_tls, run_module, tmp_path):
    """On a host without psycopg the network stages still run; auth names what to install."""
    shadow = tmp_path / 'shadow'
    shadow.mkdir()
    # Shadow psycopg2 with a module whose import fails, like a host without the package.
    (shadow / 'psycopg2.py').write_text("raise ImportError('simulated: no psycopg2 here')\n")
    run = run_module(MODULE, pg_tls.module_args(driver='psycopg2'), env={'PYTHONPATH': str(shadow)})
    assert_no_go(run, 'auth', 'no usable PostgreSQL driver', 'python3-psycopg2')
    assert run.result['stages']['tls']['ok'] is True and run.result['tls']['version']
    assert run.result['driver'] is None


# ----------------------------------------------------------------------------- bad input


def test_missing_ca_file_fails_before_connecting(pg_tls, run_module, tmp_path):
    run = run_module(MODULE, pg_tls.module_args(ssl_rootcert=str(tmp_path / 'nope.crt'), port=free_port()))
    assert_no_go(run, 'params', 'ssl_rootcert', 'does not exist')
    assert run.result['stages'] == {}  # nothing was attempted


def test_verify_full_without_ca_fails_before_connecting(pg_tls, run_module):
    args = pg_tls.module_args()
    del args['ssl_rootcert']
    run = run_module(MODULE, args)
    assert_no_go(run, 'params', 'needs ssl_rootcert')


def test_missing_ca_file_fails_even_with_report_only(pg_tls, run_module, tmp_path):
    run = run_module(MODULE, pg_tls.module_args(ssl_rootcert=str(tmp_path / 'nope.crt'), report_only=True))
    assert_no_go(run, 'params', 'does not exist')


def test_invalid_sslmode(pg_tls, run_module):
    run = run_module(MODULE, pg_tls.module_args(sslmode='verify-everything'))
    assert run.rc != 0 and run.result['failed'] is True
    assert 'sslmode' in run.result['msg'] and 'verify-full' in run.result['msg']


@pytest.mark.parametrize('override,needle', [
    ({'samples': 0}, 'samples must be between 1'),
    ({'max_latency_ms': -1}, 'max_latency_ms must be between'),
    ({'min_cert_days': -3}, 'min_cert_days must be between 0'),
    ({'connect_timeout': 0}, 'connect_timeout must be between 1'),
    ({'port': 70000}, 'port must be between 1 and 65535'),
    ({'hostaddr': 'not-an-ip'}, 'hostaddr must be a numeric'),
    ({'host': '/var/run/postgresql'}, 'unix sockets are not supported'),
    ({'host': 'a,b'}, 'single host name'),
])
def test_bad_parameters_fail_before_connecting(pg_tls, run_module, override, needle):
    run = run_module(MODULE, pg_tls.module_args(**override))
    assert_no_go(run, 'params', needle)
    assert run.result['stages'] == {}


def test_hung_server_fails_tls_stage_within_connect_timeout(pki, run_module, silent_server):
    args = {'host': '127.0.0.1', 'port': silent_server, 'user': 'x', 'password': 'y',
            'ssl_rootcert': str(pki.ca), 'connect_timeout': 2}
    run = run_module(MODULE, args)
    assert_no_go(run, 'tls', 'timed out')
    assert run.result['stages']['tcp']['ok'] is True
    assert run.seconds < 2 + PROCESS_SLACK_S, run.seconds
