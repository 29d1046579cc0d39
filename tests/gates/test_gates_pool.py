"""pg_pool_health against a real PostgreSQL 15 (max_connections 20, 3 reserved: 17 usable)."""

from __future__ import annotations

import contextlib
import threading
import time

import pytest

from tests.gates.gates_lib import BLACKHOLE_ADDR, PROCESS_SLACK_S, assert_no_go
from tests.gates.gates_pg import (
    DATABASE,
    LIMITED_DATABASE,
    LIMITED_DATABASE_LIMIT,
    LIMITED_PASSWORD,
    LIMITED_ROLE,
    LIMITED_ROLE_LIMIT,
    MAX_CONNECTIONS,
    SUPERUSER_RESERVED,
    USER,
    USER_PASSWORD,
    free_port,
)

MODULE = 'pg_pool_health'
USABLE = MAX_CONNECTIONS - SUPERUSER_RESERVED
THIS_HOST = '127.0.0.1'  # every TCP session of the tests comes from here
NO_SESSIONS_HOST = '192.0.2.1'  # TEST-NET-1: never connected to, so no session from it


@pytest.fixture
def server(pg_tls):
    """The TLS server with no client session left over from earlier tests."""
    pg_tls.wait_quiet(0)
    return pg_tls


@pytest.fixture
def hold(server):
    """hold(n, **connect kwargs) opens n idle client sessions, closed after the test."""
    held = []

    def open_sessions(count: int, **kwargs):
        kwargs.setdefault('application_name', 'holder')
        kwargs.setdefault('autocommit', True)
        conns = [server.connect(**kwargs) for _ in range(count)]
        held.extend(conns)
        return conns

    yield open_sessions
    for conn in held:
        with contextlib.suppress(Exception):
            conn.close()


def wait_for(server, sql: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with server.admin() as conn:
            if conn.execute(sql).fetchone()[0]:
                return
        time.sleep(0.05)
    raise AssertionError(f'timed out waiting for: {sql}')


def clients(*specs):
    return [dict(host=h, processes=p, pool_size=s, already_connected=a) for h, p, s, a in specs]


@pytest.mark.parametrize('driver', ['psycopg', 'psycopg2'])
def test_counts_held_connections(server, hold, run_module, driver):
    hold(4)
    run = run_module(MODULE, server.module_args(driver=driver))
    res = run.result
    assert run.rc == 0, res
    assert res['go'] is True and res['error_stage'] is None and res['level'] == 'ok'
    assert res['driver']['name'] == driver
    assert res['max_connections'] == MAX_CONNECTIONS
    assert res['superuser_reserved_connections'] == SUPERUSER_RESERVED
    assert res['reserved_connections'] == 0  # PostgreSQL 15 has no reserved_connections
    assert res['usable'] == USABLE
    assert res['used'] == 4  # the gate's own session is not counted
    assert res['free'] == USABLE - 4
    assert res['planned_demand'] == 0 and res['projected'] == 4
    assert res['utilization_pct'] == round(4 * 100 / USABLE, 1)
    assert res['by_application'] == {'holder': 4}
    assert res['by_user'] == {USER: 4}
    assert res['by_state'] == {'idle': 4}
    assert res['idle_in_transaction'] == 0 and res['long_running'] == 0 and res['lock_waiters'] == 0
    assert isinstance(res['query_ms'], float) and res['stages']['query']['ok'] is True
    assert res['role_limit'] == {
        'role': USER, 'exists': True, 'limit': -1, 'current': 4, 'planned': 0, 'projected': 4,
        'enforced': False, 'ok': True, 'superuser': False,
    }
    assert res['database_limit']['database'] == DATABASE and res['database_limit']['current'] == 4
    assert USER_PASSWORD not in run.stdout


def test_empty_server_counts_zero(server, run_module):
    res = run_module(MODULE, server.module_args()).result
    assert res['go'] is True and res['used'] == 0 and res['free'] == USABLE


def test_planned_demand_warn_level_is_go_with_warning(server, hold, run_module):
    hold(4)
    # 4 used + 5 x 2 planned = 14 of 17 = 82.4 %: warn (80) but not critical (95).
    run = run_module(MODULE, server.module_args(clients=clients(('new', 5, 2, False))))
    res = run.result
    assert run.rc == 0, res
    assert res['go'] is True and res['level'] == 'warn'
    assert res['planned_demand'] == 10 and res['projected'] == 14 and res['utilization_pct'] == 82.4
    assert res['headroom'] == 3
    assert any('warn_pct 80' in w for w in res['gate_warnings']), res['gate_warnings']


def test_planned_demand_above_free_slots(server, hold, run_module):
    hold(4)
    run = run_module(MODULE, server.module_args(clients=clients(('new', 7, 2, False))))
    assert_no_go(run, 'thresholds', f'projected 18 exceeds the {USABLE} usable slots',
                 'planned demand 14 exceeds the 13 free slots (used 4; new: 14 planned)')
    res = run.result
    assert res['level'] == 'critical' and res['headroom'] == -1
    assert res['utilization_pct'] == round(18 * 100 / USABLE, 1)


def test_utilization_past_critical_without_exceeding_free(server, hold, run_module):
    hold(4)
    # 4 + 13 = 17 of 17 usable: fits exactly, but 100 % >= critical 95 %.
    run = run_module(MODULE, server.module_args(clients=clients(('new', 13, 1, False))))
    assert_no_go(run, 'thresholds', 'reaches critical_pct 95')
    assert run.result['level'] == 'critical'
    assert not any('exceeds' in r for r in run.result['reasons'])


def test_held_connections_alone_past_threshold(server, hold, run_module):
    hold(15)  # 15 of 17 = 88 %: a lower critical threshold makes it no-go
    run = run_module(MODULE, server.module_args(critical_pct=85, warn_pct=70))
    assert_no_go(run, 'thresholds', 'reaches critical_pct 85')
    assert run.result['used'] == 15 and run.result['free'] == 2


def test_already_connected_clients_are_not_counted_twice(server, hold, run_module):
    hold(6, application_name='old-host-app')  # the old host's pools, already connected
    spec = clients(('old', 3, 2, True), ('new', 3, 2, False))
    res = run_module(MODULE, server.module_args(clients=spec)).result
    assert res['go'] is True
    assert res['used'] == 6 and res['planned_demand'] == 6 and res['projected'] == 12
    assert [c['counted'] for c in res['clients']] == [False, True]
    assert [c['demand'] for c in res['clients']] == [6, 6]


def test_idle_in_transaction_beyond_limit(server, hold, run_module):
    (conn,) = hold(1, autocommit=False)
    conn.execute('SELECT 1')  # opens a transaction and leaves it idle
    time.sleep(1.3)
    run = run_module(MODULE, server.module_args(idle_in_transaction_limit_s=1))
    assert_no_go(run, 'thresholds', '1 sessions idle in transaction for more than 1s')
    res = run.result
    assert res['idle_in_transaction'] == 1 and res['idle_in_transaction_over_limit'] == 1
    assert res['oldest_idle_in_transaction_s'] >= 1.0
    assert res['by_state'] == {'idle in transaction': 1}
    # Under the limit it is only counted; a higher allowance also makes it go.
    assert run_module(MODULE, server.module_args(idle_in_transaction_limit_s=60)).result['go'] is True
    allowed = run_module(MODULE, server.module_args(idle_in_transaction_limit_s=1, max_idle_in_transaction=1))
    assert allowed.result['go'] is True and allowed.result['idle_in_transaction_over_limit'] == 1


def test_lock_waiter(server, hold, run_module):
    holder, waiter = hold(2, autocommit=False)
    holder.execute('LOCK TABLE lockme IN ACCESS EXCLUSIVE MODE')
    blocked = threading.Thread(target=lambda: waiter.execute('LOCK TABLE lockme IN ACCESS EXCLUSIVE MODE'),
                               daemon=True)
    blocked.start()
    try:
        wait_for(server, "SELECT count(*) > 0 FROM pg_stat_activity WHERE wait_event_type = 'Lock'")
        run = run_module(MODULE, server.module_args())
        assert_no_go(run, 'thresholds', '1 sessions waiting for a lock')
        assert run.result['lock_waiters'] == 1 and run.result['locks_not_granted'] >= 1
        tolerant = run_module(MODULE, server.module_args(max_lock_waiters=1))
        assert tolerant.result['go'] is True and tolerant.result['lock_waiters'] == 1
    finally:
        holder.rollback()
        blocked.join(10)
        waiter.rollback()


def test_long_running_query(server, hold, run_module):
    (conn,) = hold(1)
    sleeper = threading.Thread(target=lambda: conn.execute('SELECT pg_sleep(2.5)'), daemon=True)
    sleeper.start()
    try:
        time.sleep(1.2)
        run = run_module(MODULE, server.module_args(long_running_s=1))
        assert_no_go(run, 'thresholds', '1 active queries running for more than 1s')
        assert run.result['long_running'] == 1 and run.result['longest_active_s'] >= 1.0
        default = run_module(MODULE, server.module_args()).result  # 300 s default
        assert default['go'] is True and default['long_running'] == 0
    finally:
        sleeper.join(10)


def test_role_connection_limit_below_planned_demand(server, hold, run_module):
    hold(2, user=LIMITED_ROLE, password=LIMITED_PASSWORD)
    args = server.module_args(user=LIMITED_ROLE, password=LIMITED_PASSWORD)
    fits = run_module(MODULE, dict(args, clients=clients(('new', 1, 3, False)))).result
    assert fits['go'] is True, fits
    assert fits['role_limit']['limit'] == LIMITED_ROLE_LIMIT and fits['role_limit']['enforced'] is True
    assert fits['role_limit']['current'] == 2 and fits['role_limit']['projected'] == 5
    run = run_module(MODULE, dict(args, clients=clients(('new', 2, 2, False))))
    assert_no_go(run, 'thresholds', f'role {LIMITED_ROLE} connection limit 5 would be exceeded: 2 current + 4 planned')
    assert run.result['role_limit']['ok'] is False
    assert len(run.result['reasons']) == 1  # the server itself has room


def test_role_limit_of_another_role(server, run_module):
    spec = clients(('new', 2, 3, False))
    run = run_module(MODULE, server.module_args(role=LIMITED_ROLE, clients=spec))
    assert_no_go(run, 'thresholds', 'connection limit 5 would be exceeded: 0 current + 6 planned')


def test_unknown_role(server, run_module):
    run = run_module(MODULE, server.module_args(role='no_such_role'))
    assert_no_go(run, 'thresholds', 'role no_such_role does not exist')


def test_database_connection_limit(server, run_module):
    run = run_module(MODULE, server.module_args(database=LIMITED_DATABASE, clients=clients(('new', 1, 5, False))))
    assert_no_go(run, 'thresholds', f'database {LIMITED_DATABASE} connection limit {LIMITED_DATABASE_LIMIT}')
    assert run.result['database_limit']['enforced'] is True


def test_sessions_of_other_roles_without_stats_privilege(server, run_module):
    with server.admin():  # a superuser session: gate_user may not see its state
        res = run_module(MODULE, server.module_args()).result
    # PostgreSQL hides backend_type too; the session must still count as used.
    assert res['go'] is True and res['used'] == 1 and res['hidden_sessions'] == 1
    assert res['by_state'] == {'(not visible)': 1}
    assert any('pg_read_all_stats' in w for w in res['gate_warnings'])


def test_report_only(server, hold, run_module):
    hold(4)
    run = run_module(MODULE, server.module_args(report_only=True, clients=clients(('new', 7, 3, False))))
    assert run.rc == 0 and run.result.get('failed') is not True
    assert run.result['go'] is False and run.result['error_stage'] == 'thresholds'
    assert run.result['level'] == 'critical' and run.result['planned_demand'] == 21


def test_check_mode(server, hold, run_module):
    hold(2)
    run = run_module(MODULE, server.module_args(), check_mode=True)
    assert run.rc == 0 and run.result['go'] is True and run.result['used'] == 2
    assert run.result['changed'] is False


@pytest.mark.parametrize('driver', ['psycopg', 'psycopg2'])
def test_wrong_password(server, run_module, driver):
    run = run_module(MODULE, server.module_args(password='wrong', driver=driver))
    assert_no_go(run, 'auth', 'password authentication failed')
    res = run.result
    assert res['used'] is None and res['query_ms'] is None and res['stages']['query']['skipped'] is True


def test_refused(server, run_module):
    assert_no_go(run_module(MODULE, server.module_args(port=free_port())), 'tcp', 'refused')


def test_server_without_tls_under_verify_full(pg_plain, pki, run_module):
    run = run_module(MODULE, pg_plain.module_args(sslmode='verify-full', ssl_rootcert=str(pki.ca)))
    assert_no_go(run, 'tls', 'ssl')


def test_wrong_ca(server, pki, run_module):
    assert_no_go(run_module(MODULE, server.module_args(ssl_rootcert=str(pki.wrong_ca))), 'tls', 'certificate')


@pytest.mark.parametrize('override,needle', [
    ({'warn_pct': 90, 'critical_pct': 80}, 'warn_pct (90.0) must not be above critical_pct (80.0)'),
    ({'critical_pct': 150}, 'critical_pct must be between'),
    ({'warn_pct': 0}, 'warn_pct must be between'),
    ({'max_lock_waiters': -1}, 'max_lock_waiters must be between 0'),
    ({'long_running_s': -5}, 'long_running_s must be between 0'),
    ({'clients': [{'host': 'new', 'processes': -1, 'pool_size': 3}]}, 'clients[0] (new).processes'),
    ({'sslmode': 'verify-ca', 'ssl_rootcert': '/nonexistent/root.crt'}, 'does not exist'),
])
def test_bad_parameters_fail_before_connecting(server, run_module, override, needle):
    run = run_module(MODULE, server.module_args(port=free_port(), **override))
    assert_no_go(run, 'params', needle)
    assert run.result['stages'] == {} and run.result['used'] is None


def test_client_without_host_is_rejected(server, run_module):
    run = run_module(MODULE, server.module_args(clients=[{'processes': 1, 'pool_size': 1}]))
    assert run.rc != 0 and 'host' in run.result['msg']


@pytest.mark.parametrize('driver', ['psycopg', 'psycopg2'])
def test_driver_connect_honours_connect_timeout(pki, run_module, silent_server, driver):
    """No raw-socket stage here: libpq's connect_timeout must end the attempt."""
    args = {'host': '127.0.0.1', 'port': silent_server, 'user': 'x', 'password': 'y',
            'ssl_rootcert': str(pki.ca), 'connect_timeout': 2, 'driver': driver}
    run = run_module(MODULE, args)
    assert_no_go(run, 'tcp', 'timeout expired')
    assert run.seconds < 2 + PROCESS_SLACK_S, run.seconds


@pytest.mark.netns
@pytest.mark.parametrize('driver', ['psycopg', 'psycopg2'])
def test_blackholed_address(blackhole_netns, pki, run_module, driver):
    args = {'host': BLACKHOLE_ADDR, 'user': 'x', 'password': 'y', 'ssl_rootcert': str(pki.ca),
            'connect_timeout': 2, 'driver': driver}
    run = run_module(MODULE, args, netns=blackhole_netns)
    assert_no_go(run, 'tcp', 'timeout expired')
    assert run.seconds < 2 + PROCESS_SLACK_S, run.seconds


# ----------------------------------------------------------------------------- client addresses


def addressed(host, address, processes, pool_size, after='connected'):
    return dict(host=host, address=address, processes=processes, pool_size=pool_size, after=after)


@pytest.mark.parametrize('driver', ['psycopg', 'psycopg2'])
def test_serving_host_sessions_are_replaced_by_its_demand(server, hold, run_module, driver):
    hold(10)  # the app on this host serves with 10 sessions
    serving = [addressed('serving', THIS_HOST, 5, 2)]
    run = run_module(MODULE, server.module_args(driver=driver, clients=serving))
    res = run.result
    assert run.rc == 0 and res['go'] is True, res
    assert res['used'] == 10 and res['planned_demand'] == 10 and res['projected'] == 10
    assert res['headroom'] == USABLE - 10 and res['level'] == 'ok'
    assert res['clients'] == [{
        'host': 'serving', 'processes': 5, 'pool_size': 2, 'already_connected': False,
        'address': THIS_HOST, 'after': 'connected', 'current_sessions': 10, 'demand': 10, 'delta': 0,
        'counted': True,
    }]
    assert 'planned 10 (net +0) -> projected 10 of 17' in res['summary']
    # The old way (no address) counts the same sessions twice: 10 used + 10 demand > 17.
    legacy = run_module(MODULE, server.module_args(driver=driver, clients=clients(('serving', 5, 2, False))))
    assert_no_go(legacy, 'thresholds', f'projected 20 exceeds the {USABLE} usable slots',
                 'planned demand 10 exceeds the 7 free slots (used 10; serving: 10 planned)')
    assert legacy.result['clients'][0]['address'] is None
    assert legacy.result['clients'][0]['current_sessions'] is None
    assert legacy.result['clients'][0]['delta'] == 10


def test_serving_host_growing_past_the_budget(server, hold, run_module):
    hold(10)
    run = run_module(MODULE, server.module_args(clients=[addressed('serving', THIS_HOST, 9, 2)]))
    assert_no_go(run, 'thresholds', f'projected 18 exceeds the {USABLE} usable slots',
                 'net demand 8 (planned 18 minus the 10 current sessions from the client addresses) '
                 'exceeds the 7 free slots',
                 f'serving {THIS_HOST}: 10 now -> 18 planned')
    assert run.result['clients'][0]['delta'] == 8 and run.result['projected'] == 18


def test_window_old_disconnects_new_connects(server, hold, run_module):
    hold(10, application_name='old-host-app')  # the old host, from this address
    window = [addressed('old', THIS_HOST, 5, 2, after='disconnected'),
              addressed('new', NO_SESSIONS_HOST, 6, 2)]
    run = run_module(MODULE, server.module_args(clients=window))
    res = run.result
    assert run.rc == 0 and res['go'] is True, res
    # 10 used - 10 (old gone) + 12 (new) = 12 of 17: fits only because old's sessions go.
    assert res['used'] == 10 and res['free'] == 7
    assert res['planned_demand'] == 12 and res['projected'] == 12 and res['headroom'] == 5
    old, new = res['clients']
    assert old == {'host': 'old', 'processes': 5, 'pool_size': 2, 'already_connected': False,
                   'address': THIS_HOST, 'after': 'disconnected', 'current_sessions': 10, 'demand': 0,
                   'delta': -10, 'counted': True}
    assert new['current_sessions'] == 0 and new['demand'] == 12 and new['delta'] == 12
    assert new['after'] == 'connected' and new['address'] == NO_SESSIONS_HOST
    assert res['by_client_addr'] == {THIS_HOST: 10}
    assert res['gate_warnings'] == []

    # The same demand without the old entry: the old sessions stay, 10 + 12 > 17.
    alone = run_module(MODULE, server.module_args(clients=window[1:]))
    assert_no_go(alone, 'thresholds', f'projected 22 exceeds the {USABLE} usable slots',
                 'planned demand 12 exceeds the 7 free slots',
                 f'new {NO_SESSIONS_HOST}: 0 now -> 12 planned')
    # Listing old as already connected (the overlap) is the same no-go.
    overlap = clients(('old', 5, 2, True)) + window[1:]
    run = run_module(MODULE, server.module_args(clients=overlap))
    assert_no_go(run, 'thresholds', 'projected 22 exceeds', 'old: already connected, 10 not added')


def test_window_no_go_lists_each_client(server, hold, run_module):
    hold(4)
    window = [addressed('old', THIS_HOST, 2, 2, after='disconnected'),
              addressed('new', NO_SESSIONS_HOST, 9, 2)]
    run = run_module(MODULE, server.module_args(clients=window))
    # 4 - 4 + 18 = 18 > 17
    assert_no_go(run, 'thresholds',
                 f'projected 18 exceeds the {USABLE} usable slots: net demand 14 (planned 18 minus the 4 '
                 f'current sessions from the client addresses) exceeds the 13 free slots (used 4; '
                 f'old {THIS_HOST}: 4 now -> disconnected, new {NO_SESSIONS_HOST}: 0 now -> 18 planned)')


def test_disconnected_address_without_sessions_warns(server, run_module):
    spec = [addressed('old', NO_SESSIONS_HOST, 2, 2, after='disconnected')]
    res = run_module(MODULE, server.module_args(clients=spec)).result
    assert res['go'] is True and res['projected'] == 0 and res['clients'][0]['delta'] == 0
    assert any(f'no client sessions from {NO_SESSIONS_HOST}' in w for w in res['gate_warnings']), res


def test_by_client_addr(server, hold, run_module):
    hold(3)
    hold(1, host=str(server.sockdir), sslmode='disable', application_name='socket')  # Unix socket
    with server.admin():  # a superuser session: its address is hidden from gate_user
        res = run_module(MODULE, server.module_args()).result
    assert res['go'] is True and res['used'] == 5
    assert res['by_client_addr'] == {THIS_HOST: 3, 'local': 1, '(not visible)': 1}


@pytest.mark.parametrize('driver', ['psycopg', 'psycopg2'])
def test_ipv6_and_unused_addresses_bind_on_both_drivers(server, hold, run_module, driver):
    hold(2)
    spec = [addressed('v6', '::1', 1, 1), addressed('v4', NO_SESSIONS_HOST, 1, 1),
            addressed('here', THIS_HOST, 1, 2)]
    res = run_module(MODULE, server.module_args(driver=driver, clients=spec)).result
    assert res['go'] is True, res
    assert [c['current_sessions'] for c in res['clients']] == [0, 0, 2]
    assert [c['delta'] for c in res['clients']] == [1, 1, 0]
    assert res['projected'] == 4 and res['by_client_addr'] == {THIS_HOST: 2}


def test_role_limit_uses_the_deltas(server, hold, run_module):
    hold(3, user=LIMITED_ROLE, password=LIMITED_PASSWORD)
    args = server.module_args(user=LIMITED_ROLE, password=LIMITED_PASSWORD)
    # 3 current + (4 - 3) = 4 of limit 5.
    fits = run_module(MODULE, dict(args, clients=[addressed('serving', THIS_HOST, 2, 2)])).result
    assert fits['go'] is True, fits
    assert fits['role_limit']['current'] == 3 and fits['role_limit']['planned'] == 1
    assert fits['role_limit']['projected'] == 4 and fits['role_limit']['ok'] is True
    # Without address the same demand comes on top: 3 + 4 = 7 > 5.
    legacy = run_module(MODULE, dict(args, clients=clients(('serving', 2, 2, False))))
    assert_no_go(legacy, 'thresholds', f'role {LIMITED_ROLE} connection limit 5 would be exceeded: '
                                       '3 current + 4 planned = 7')
    # With address, a bigger demand: 3 + (6 - 3) = 6 > 5.
    grows = run_module(MODULE, dict(args, clients=[addressed('serving', THIS_HOST, 2, 3)]))
    assert_no_go(grows, 'thresholds', f'role {LIMITED_ROLE} connection limit 5 would be exceeded: '
                                      '3 current + 3 planned = 6 (planned is net of the sessions from the '
                                      'client addresses)')
    assert grows.result['role_limit']['planned'] == 3 and len(grows.result['reasons']) == 1
    # The window: old (3 now) disconnects, new brings 5: 3 - 3 + 5 = 5 of 5.
    window = [addressed('old', THIS_HOST, 1, 3, after='disconnected'), addressed('new', NO_SESSIONS_HOST, 1, 5)]
    res = run_module(MODULE, dict(args, clients=window)).result
    assert res['go'] is True, res
    assert res['role_limit']['planned'] == 2 and res['role_limit']['projected'] == 5


def test_database_limit_uses_the_deltas(server, hold, run_module):
    hold(3, dbname=LIMITED_DATABASE)
    args = server.module_args(database=LIMITED_DATABASE)  # the gate's own session: 4 of 4 connected
    fits = run_module(MODULE, dict(args, clients=[addressed('serving', THIS_HOST, 1, 4)])).result
    assert fits['go'] is True, fits
    assert fits['database_limit']['current'] == 3 and fits['database_limit']['projected'] == 4
    run = run_module(MODULE, dict(args, clients=[addressed('serving', THIS_HOST, 1, 5)]))
    assert_no_go(run, 'thresholds', f'database {LIMITED_DATABASE} connection limit {LIMITED_DATABASE_LIMIT} '
                                    'would be exceeded: 3 current + 2 planned = 5')


@pytest.mark.parametrize('spec,needle', [
    ([{'host': 'old', 'processes': 7, 'pool_size': 3, 'after': 'disconnected'}],
     'clients[0] (old): after=disconnected needs address (the IP the database sees, '
     'pg_stat_activity.client_addr): without it there are no current sessions to subtract'),
    ([{'host': 'old', 'processes': 7, 'pool_size': 3, 'address': THIS_HOST, 'already_connected': True}],
     'clients[0] (old): already_connected=true and address are ambiguous together: with address the current '
     f'sessions from {THIS_HOST} are already counted (in used) and the demand replaces them; drop '
     'already_connected'),
    ([{'host': 'new', 'processes': 1, 'pool_size': 1, 'address': 'lab-new'}],
     "clients[0] (new).address must be a numeric IPv4/IPv6 address as pg_stat_activity.client_addr shows it, "
     "got 'lab-new'"),
    ([{'host': 'new', 'processes': 1, 'pool_size': 1, 'address': '10.0.0.1/24'}], "got '10.0.0.1/24'"),
    ([{'host': 'a', 'processes': 1, 'pool_size': 1, 'address': '2001:db8::1'},
      {'host': 'b', 'processes': 1, 'pool_size': 1, 'address': '2001:DB8:0::1', 'after': 'disconnected'}],
     'clients[1] (b).address 2001:DB8:0::1 is also the address of clients[0] (a): the sessions from one '
     'address can be replaced only once'),
])
@pytest.mark.parametrize('report_only', [False, True])
def test_bad_client_addresses_fail_before_connecting(server, run_module, spec, needle, report_only):
    """Refused before any connection, and also with report_only (fail closed)."""
    run = run_module(MODULE, server.module_args(port=free_port(), clients=spec, report_only=report_only))
    assert_no_go(run, 'params', needle)
    assert run.result['stages'] == {} and run.result['used'] is None
    assert run.result['by_client_addr'] == {} and run.result['clients'] == []


def test_unknown_after_value_is_rejected(server, run_module):
    spec = [{'host': 'old', 'processes': 1, 'pool_size': 1, 'address': THIS_HOST, 'after': 'gone'}]
    run = run_module(MODULE, server.module_args(port=free_port(), clients=spec))
    assert run.rc != 0 and run.result.get('failed') is True
    assert 'after' in run.result['msg'] and 'connected, disconnected' in run.result['msg'], run.result['msg']
