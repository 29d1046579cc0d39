#!/usr/bin/python
# Copyright: aiadmin-ops contributors
# SPDX-License-Identifier: MIT
"""Go/no-go gate: does the PostgreSQL connection budget hold the planned clients."""


from __future__ import annotations

DOCUMENTATION = r"""
---
module: pg_pool_health
short_description: Go/no-go gate for the PostgreSQL connection budget (slots, sessions, locks, limits)
version_added: "0.1.0"
description:
  - Reads, in one round trip, C(pg_settings), C(pg_stat_activity), C(pg_roles),
    C(pg_database) and C(pg_locks), and checks that the clients about to connect fit.
  - Usable slots are C(max_connections - superuser_reserved_connections -
    reserved_connections) (C(reserved_connections) exists from PostgreSQL 16 on, 0 before).
    Used slots are the client backends, not counting the gate's own session. Free slots
    are usable minus used.
  - Each client's demand is C(processes * pool_size). Its contribution (delta) to the
    projection depends on how it is described. Without O(clients[].address) the demand is
    added on top of used (a new host), or nothing is added with
    O(clients[].already_connected=true) (a host whose sessions are in used already, listed
    to document the overlap). With O(clients[].address) the module counts the sessions that
    address holds now (in used) and the demand REPLACES them - delta is demand minus those
    current sessions, so a host that already serves is not counted twice. With
    O(clients[].after=disconnected) (needs O(clients[].address)) the host's sessions are gone
    before the new demand arrives - demand 0, delta minus its current sessions (the old host
    of a migration window, stopped before the new one starts).
  - Projected use is used plus the sum of the deltas; utilization is projected over usable.
    Planned demand is the sum of the demands of the counted clients (for the report).
  - No-go when the projection exceeds the usable slots, when utilization reaches
    O(critical_pct), when more sessions than allowed are idle in transaction for longer
    than O(idle_in_transaction_limit_s), run an active query for longer than
    O(long_running_s) or wait for a lock, or when the role's or the database's connection
    limit would be exceeded. Utilization at or above O(warn_pct) only adds a warning.
  - The gate fails closed. A no-go fails the task with every reason listed, unless
    O(report_only=true). Bad parameters fail the task before any connection attempt.
  - Without C(pg_read_all_stats) (or C(pg_monitor)) PostgreSQL hides the type, state and
    timings of other roles' sessions. Hidden sessions that belong to a database and a role
    are counted as client backends (erring towards no-go; a database-connected background
    worker of another role would be over-counted), and a warning says how many were hidden
    and that their idle/long-running/lock state is unknown.
  - Only reads; check mode runs the same query.
author:
  - aiadmin-ops contributors
options:
  host:
    description: Host name or IP address of the server (or a unix socket directory).
    type: str
    required: true
  hostaddr:
    description:
      - Numeric IP address to connect to instead of resolving O(host); O(host) is still
        used for certificate host name verification.
    type: str
  port:
    description: TCP port of the server.
    type: int
    default: 5432
  database:
    description: Database to connect to; its C(datconnlimit) is checked.
    type: str
    default: postgres
    aliases: [dbname, login_db]
  user:
    description: Role to authenticate as.
    type: str
    default: postgres
    aliases: [login_user]
  password:
    description: Password of O(user).
    type: str
    aliases: [login_password]
  sslmode:
    description: libpq C(sslmode). C(verify-ca) and C(verify-full) need O(ssl_rootcert).
    type: str
    default: verify-full
    choices: [disable, allow, prefer, require, verify-ca, verify-full]
  ssl_rootcert:
    description: CA certificate file (PEM) on the host the task runs on. Must exist when given.
    type: path
    aliases: [ca_cert]
  connect_timeout:
    description:
      - libpq C(connect_timeout) in seconds (values below 2 are rounded up to 2 by libpq),
        per address the host name resolves to.
    type: int
    default: 10
  application_name:
    description: C(application_name) of the gate's session.
    type: str
    default: aiadmin-ops-gate
  report_only:
    description:
      - Return the report with C(go=false) instead of failing the task on a no-go.
        Parameter errors fail the task regardless.
    type: bool
    default: false
  driver:
    description: PostgreSQL driver. C(auto) tries psycopg 3 first, then psycopg2.
    type: str
    default: auto
    choices: [auto, psycopg, psycopg2]
  role:
    description:
      - Role the clients will connect as, whose C(rolconnlimit) is checked. Defaults to
        O(user). Superusers are not subject to connection limits.
    type: str
  clients:
    description: Hosts that will connect, with their pools.
    type: list
    elements: dict
    default: []
    suboptions:
      host:
        description: Name of the client host (for the report).
        type: str
        required: true
      processes:
        description: Number of processes that each open a pool.
        type: int
        required: true
      pool_size:
        description: Maximum connections of each process's pool.
        type: int
        required: true
      address:
        description:
          - The client's IP address as the database sees it (C(pg_stat_activity.client_addr),
            see RV(by_client_addr); behind NAT or a pooler that is not the host's own address).
          - When given, the sessions from this address now (client backends, the gate's own
            session excluded) are read in the same query and the planned demand replaces them -
            delta is C(demand - current_sessions). A wrong address finds no sessions and
            subtracts nothing (errs towards no-go).
          - Each address may appear in one entry only (its sessions are replaced once).
        type: str
      after:
        description:
          - C(connected) (default) - the client's demand is in place after the change.
          - C(disconnected) - the client's sessions are gone before the new demand arrives
            (an old host stopped before the new host starts) - its demand is 0 and its current
            sessions are subtracted. Needs O(clients[].address); O(clients[].processes) and
            O(clients[].pool_size) are then only reported.
        type: str
        default: connected
        choices: [connected, disconnected]
      already_connected:
        description:
          - For a client without O(clients[].address) - true when this host's connections
            already exist (they are in used); its demand is then reported but not added
            again (delta 0).
          - Not allowed together with O(clients[].address), which already counts the
            current sessions (and replaces them with the demand).
        type: bool
        default: false
  warn_pct:
    description: Projected utilization (percent of usable slots) that adds a warning.
    type: float
    default: 80
  critical_pct:
    description: Projected utilization (percent of usable slots) that makes the gate no-go.
    type: float
    default: 95
  idle_in_transaction_limit_s:
    description: Sessions idle in transaction for longer than this many seconds are counted as stuck.
    type: int
    default: 60
  max_idle_in_transaction:
    description: No-go when more than this many sessions are stuck idle in transaction.
    type: int
    default: 0
  long_running_s:
    description: Active queries running for longer than this many seconds count as long-running.
    type: int
    default: 300
  max_long_running:
    description: No-go when more than this many queries are long-running.
    type: int
    default: 0
  max_lock_waiters:
    description:
      - No-go when more than this many sessions wait for a lock (C(wait_event_type=Lock)
        or a non-empty pg_blocking_pids() result).
    type: int
    default: 0
notes:
  - One connection and one query; the gate's own session is excluded from every count.
  - The role and database connection limits are checked against their current sessions
    plus the sum of the deltas. This is an approximation when addresses are given - the
    sessions from a client address are assumed to be the checked role's and database's.
    Sessions of other roles or databases from that address make the limit projections too
    low.
  - Without C(pg_read_all_stats) the client address of other roles' sessions is hidden -
    they are listed under C((not visible)) in RV(by_client_addr) and are not part of any
    client's current sessions (less is subtracted, erring towards no-go).
requirements:
  - python >= 3.10
  - psycopg >= 3.1 or psycopg2 >= 2.8
seealso:
  - module: pg_reachability
"""

EXAMPLES = r"""
- name: The window - old disconnects, new connects (does it fit after the cutover?)
  pg_pool_health:
    host: 10.213.20.10
    database: ai_admin
    user: ai_admin
    password: "{{ vault_aiadmin_db_password }}"
    ssl_rootcert: /root/.cloud-certs/root.crt
    clients:
      - host: lab-old
        address: 10.213.20.20      # its sessions now are subtracted
        processes: 7
        pool_size: 3
        after: disconnected
      - host: lab-new
        address: 10.213.20.30      # no sessions yet: delta is the full demand
        processes: 7
        pool_size: 3
  no_log: true

- name: A serving system - the host's own sessions counted inside its demand
  pg_pool_health:
    host: 10.213.20.10
    database: ai_admin
    user: ai_admin
    password: "{{ vault_aiadmin_db_password }}"
    ssl_rootcert: /root/.cloud-certs/root.crt
    clients:
      - host: lab-new
        address: 10.213.20.30      # e.g. 22 sessions now -> 21 planned: delta -1
        processes: 7
        pool_size: 3
  no_log: true

- name: Will 7 PM2 processes x pool 3 on the new host fit, while the old host still runs?
  pg_pool_health:
    host: 10.213.20.10
    database: ai_admin
    user: ai_admin
    password: "{{ vault_aiadmin_db_password }}"
    ssl_rootcert: /root/.cloud-certs/root.crt
    clients:
      - host: old
        processes: 7
        pool_size: 3
        already_connected: true
      - host: new
        processes: 7
        pool_size: 3
    warn_pct: 80
    critical_pct: 95
  no_log: true

- name: Report only
  pg_pool_health:
    host: db.example.internal
    user: ai_admin
    password: "{{ vault_aiadmin_db_password }}"
    ssl_rootcert: /root/.cloud-certs/root.crt
    report_only: true
  register: pool
  no_log: true
"""

RETURN = r"""
go:
  description: True when the planned clients fit and no session threshold is exceeded.
  returned: always
  type: bool
  sample: true
reasons:
  description: One line per no-go reason, each prefixed with its stage.
  returned: always
  type: list
  elements: str
  sample: ["thresholds: projected 26 exceeds the 17 usable slots: planned demand 21 exceeds the 12 free
            slots (used 5; new: 21 planned)"]
gate_warnings:
  description: Observations that do not make the gate no-go (for example utilization at warn level).
  returned: always
  type: list
  elements: str
  sample: []
error_stage:
  description:
    - Stage of the first reason (C(params), C(tcp), C(tls), C(auth), C(query) or
      C(thresholds)); null when go.
  returned: always
  type: str
  sample: thresholds
stages:
  description: C(auth) and C(query) with C(ok), C(ms), C(error), C(skipped).
  returned: always
  type: dict
summary:
  description: One line with the verdict and the key numbers, for reports and playbook output.
  returned: always
  type: str
  sample: "GO pool level ok | usable 27, used 22, free 5 | planned 21 (net -1) -> projected 21 of 27 (77.8 %) | ..."
level:
  description: C(ok), C(warn) or C(critical) for the projected utilization; null when not measured.
  returned: always
  type: str
  sample: ok
max_connections:
  description: C(max_connections).
  returned: always
  type: int
  sample: 30
superuser_reserved_connections:
  description: C(superuser_reserved_connections).
  returned: always
  type: int
  sample: 3
reserved_connections:
  description: C(reserved_connections) (PostgreSQL 16+), 0 before.
  returned: always
  type: int
  sample: 0
usable:
  description: Slots ordinary roles can use.
  returned: always
  type: int
  sample: 27
used:
  description: Client backends connected now, excluding the gate's own session.
  returned: always
  type: int
  sample: 4
free:
  description: Usable minus used.
  returned: always
  type: int
  sample: 23
planned_demand:
  description:
    - Sum of the demands (processes x pool_size) of the counted clients (not already
      connected; 0 for C(after=disconnected)).
  returned: always
  type: int
  sample: 21
projected:
  description:
    - Used plus the sum of the clients' deltas (each C(demand - current_sessions) with an
      address, the demand without one, 0 when already connected).
  returned: always
  type: int
  sample: 25
headroom:
  description: Usable minus projected (negative when it does not fit).
  returned: always
  type: int
  sample: 2
utilization_pct:
  description: Projected over usable, in percent (100 when nothing is usable).
  returned: always
  type: float
  sample: 92.6
clients:
  description:
    - The clients as planned - C(host), C(processes), C(pool_size), C(already_connected),
      C(address) (null without), C(after), C(current_sessions) (sessions from the address
      now; null without address), C(demand) (processes x pool_size, 0 when disconnected),
      C(delta) (what the client adds to the projection; negative when it frees slots) and
      C(counted) (false when already connected - nothing is added).
  returned: always
  type: list
  elements: dict
  sample: [{host: lab-old, processes: 7, pool_size: 3, already_connected: false, address: 10.213.20.20,
            after: disconnected, current_sessions: 21, demand: 0, delta: -21, counted: true},
           {host: lab-new, processes: 7, pool_size: 3, already_connected: false, address: 10.213.20.30,
            after: connected, current_sessions: 0, demand: 21, delta: 21, counted: true}]
by_client_addr:
  description:
    - Client backends per client address (C(pg_stat_activity.client_addr)); Unix socket
      sessions under C(local), sessions whose address this role may not see under
      C((not visible)).
  returned: always
  type: dict
  sample: {10.213.20.20: 21, local: 1}
by_application:
  description: Client backends per C(application_name) ("(none)" when empty).
  returned: always
  type: dict
  sample: {ai-admin-worker-v2: 3}
by_user:
  description: Client backends per role.
  returned: always
  type: dict
  sample: {ai_admin: 4}
by_state:
  description: Client backends per state ("(not visible)" when hidden by privileges).
  returned: always
  type: dict
  sample: {idle: 3, active: 1}
idle_in_transaction:
  description: Sessions idle in transaction (including aborted).
  returned: always
  type: int
  sample: 0
idle_in_transaction_over_limit:
  description: Sessions idle in transaction for longer than O(idle_in_transaction_limit_s).
  returned: always
  type: int
  sample: 0
oldest_idle_in_transaction_s:
  description: Age in seconds of the oldest idle-in-transaction state (0 when none).
  returned: always
  type: float
  sample: 0.0
long_running:
  description: Active queries running longer than O(long_running_s).
  returned: always
  type: int
  sample: 0
longest_active_s:
  description: Runtime in seconds of the longest active query (0 when none).
  returned: always
  type: float
  sample: 0.2
lock_waiters:
  description: Sessions waiting for a lock.
  returned: always
  type: int
  sample: 0
locks_not_granted:
  description: Ungranted entries in C(pg_locks).
  returned: always
  type: int
  sample: 0
hidden_sessions:
  description: Sessions of other roles whose details this role may not see (counted in used).
  returned: always
  type: int
  sample: 0
role_limit:
  description:
    - The role's connection limit (C(limit) -1 = unlimited), its current sessions, the
      planned change (C(planned), the sum of the clients' deltas) and the projection;
      C(enforced) is false for superusers and unlimited roles.
  returned: always
  type: dict
  sample: {role: ai_admin, exists: true, superuser: false, limit: -1, current: 4, planned: 21, projected: 25,
           enforced: false, ok: true}
database_limit:
  description: The same for the database's C(datconnlimit).
  returned: always
  type: dict
  sample: {database: ai_admin, exists: true, limit: -1, current: 4, planned: 21, projected: 25,
           enforced: false, ok: true}
server_version:
  description: Server version string; null when not reached.
  returned: always
  type: str
  sample: "15.10"
query_ms:
  description: Duration of the single query in milliseconds; null when not reached.
  returned: always
  type: float
  sample: 1.4
thresholds:
  description: Thresholds the verdict used.
  returned: always
  type: dict
driver:
  description: Driver used and its version; null when none could be loaded.
  returned: always
  type: dict
  sample: {name: psycopg, version: 3.1.7}
"""

import ipaddress

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.pg_gate import (
    Gate,
    GateError,
    check_range,
    close_quietly,
    common_argument_spec,
    driver_connect,
    fail_params,
    finish,
    fmt_num,
    is_ip_address,
    try_load_driver,
    validate_common,
    verdict_prefix,
)

STAGES = ('auth', 'query')
IDLE_TX_STATES = "('idle in transaction', 'idle in transaction (aborted)')"

# One round trip. Parameters are bound by the driver (server side with psycopg 3), with
# explicit casts so both drivers get the same types.
QUERY = """
WITH cfg AS (
    SELECT
        max(setting::int) FILTER (WHERE name = 'max_connections') AS max_connections,
        max(setting::int) FILTER (WHERE name = 'superuser_reserved_connections') AS superuser_reserved,
        coalesce(max(setting::int) FILTER (WHERE name = 'reserved_connections'), 0) AS reserved
    FROM pg_catalog.pg_settings
    WHERE name IN ('max_connections', 'superuser_reserved_connections', 'reserved_connections')
),
act AS (
    SELECT
        a.pid,
        coalesce(a.usename::text, '(unknown)') AS usename,
        a.datname::text AS datname,
        coalesce(nullif(a.application_name, ''), '(none)') AS app,
        coalesce(a.state, '(not visible)') AS state,
        a.client_addr AS client_inet,
        CASE WHEN a.client_addr IS NOT NULL THEN host(a.client_addr)
             WHEN a.client_port = -1 THEN 'local'  -- Unix socket
             ELSE '(not visible)'                  -- hidden by privileges
        END AS client_addr,
        a.wait_event_type,
        extract(epoch FROM now() - a.state_change)::float8 AS state_s,
        extract(epoch FROM now() - a.query_start)::float8 AS query_s,
        cardinality(pg_catalog.pg_blocking_pids(a.pid)) AS blockers
    FROM pg_catalog.pg_stat_activity AS a
    WHERE a.pid <> pg_catalog.pg_backend_pid()
      AND (a.backend_type = 'client backend'
           -- Without pg_read_all_stats, other roles' rows show no backend_type. Rows with a
           -- database and a role are client backends (or, rarely, database-connected
           -- background workers): count them, erring towards no-go. Autovacuum, launchers
           -- and auxiliary processes have no role or no database and stay out.
           OR (a.backend_type IS NULL AND a.datid IS NOT NULL AND a.usesysid IS NOT NULL))
),
agg AS (
    SELECT
        count(*)::int AS used,
        count(*) FILTER (WHERE state IN %(idle_states)s)::int AS idle_tx,
        count(*) FILTER (WHERE state IN %(idle_states)s AND state_s > %(idle_limit)s::float8)::int AS idle_tx_over,
        coalesce(max(state_s) FILTER (WHERE state IN %(idle_states)s), 0)::float8 AS idle_tx_oldest_s,
        count(*) FILTER (WHERE state = 'active' AND query_s > %(long_s)s::float8)::int AS long_running,
        coalesce(max(query_s) FILTER (WHERE state = 'active'), 0)::float8 AS longest_active_s,
        count(*) FILTER (WHERE wait_event_type = 'Lock' OR blockers > 0)::int AS lock_waiters,
        count(*) FILTER (WHERE state = '(not visible)')::int AS hidden_sessions,
        count(*) FILTER (WHERE usename = %(role)s::text)::int AS role_current,
        count(*) FILTER (WHERE datname = %(database)s::text)::int AS database_current
    FROM act
)
SELECT
    cfg.max_connections, cfg.superuser_reserved, cfg.reserved,
    agg.used, agg.idle_tx, agg.idle_tx_over, agg.idle_tx_oldest_s, agg.long_running,
    agg.longest_active_s, agg.lock_waiters, agg.hidden_sessions, agg.role_current, agg.database_current,
    (SELECT coalesce(json_object_agg(app, n), '{}'::json)
       FROM (SELECT app, count(*) AS n FROM act GROUP BY app) AS t) AS by_application,
    (SELECT coalesce(json_object_agg(usename, n), '{}'::json)
       FROM (SELECT usename, count(*) AS n FROM act GROUP BY usename) AS t) AS by_user,
    (SELECT coalesce(json_object_agg(state, n), '{}'::json)
       FROM (SELECT state, count(*) AS n FROM act GROUP BY state) AS t) AS by_state,
    (SELECT coalesce(json_object_agg(client_addr, n), '{}'::json)
       FROM (SELECT client_addr, count(*) AS n FROM act GROUP BY client_addr) AS t) AS by_client_addr,
    -- Current sessions from each clients[].address, keyed by the address text as given.
    (SELECT coalesce(json_object_agg(t.address, t.n), '{}'::json)
       FROM (SELECT x.address, count(act.pid)::int AS n
               FROM unnest(%(addresses)s::text[]) AS x(address)
               LEFT JOIN act ON act.client_inet = x.address::inet
              GROUP BY x.address) AS t) AS address_sessions,
    (SELECT json_build_object('limit', r.rolconnlimit, 'superuser', r.rolsuper)
       FROM pg_catalog.pg_roles AS r WHERE r.rolname = %(role)s::text) AS role_info,
    (SELECT json_build_object('limit', d.datconnlimit, 'allow_connections', d.datallowconn)
       FROM pg_catalog.pg_database AS d WHERE d.datname = %(database)s::text) AS database_info,
    (SELECT count(*)::int FROM pg_catalog.pg_locks WHERE NOT granted) AS locks_not_granted,
    current_setting('server_version') AS server_version
FROM cfg, agg
""".replace('%(idle_states)s', IDLE_TX_STATES)

NUMBER_KEYS = (
    'max_connections', 'superuser_reserved_connections', 'reserved_connections', 'usable', 'used',
    'free', 'planned_demand', 'projected', 'headroom', 'utilization_pct', 'idle_in_transaction',
    'idle_in_transaction_over_limit', 'oldest_idle_in_transaction_s', 'long_running',
    'longest_active_s', 'lock_waiters', 'locks_not_granted', 'hidden_sessions', 'query_ms',
)


def skeleton():
    out = dict.fromkeys(NUMBER_KEYS)
    out.update(
        level=None, clients=[], by_application={}, by_user={}, by_state={}, by_client_addr={},
        role_limit=None, database_limit=None, server_version=None, thresholds={}, driver=None,
    )
    return out


def _limit_text(kind, report):
    if not report or not report['exists']:
        return None
    if not report['enforced']:
        return '%s %s unlimited' % (kind, report[kind])
    return '%s %s %d/%d' % (kind, report[kind], report['projected'], report['limit'])


def summarize(res):
    """One line with the key numbers, for playbook summaries and logs."""
    head = verdict_prefix(res, 'pool')
    if res['usable'] is None:
        return ' | '.join([head, '; '.join(res['reasons'])])
    net = res['projected'] - res['used']
    parts = [
        head + ' level %s' % res['level'],
        'usable %d, used %d, free %d' % (res['usable'], res['used'], res['free']),
        'planned %d%s -> projected %d of %d (%s)' % (
            res['planned_demand'], ' (net %+d)' % net if net != res['planned_demand'] else '', res['projected'],
            res['usable'], fmt_num(res['utilization_pct'], ' %')),
        'idle in tx %d (%d over %ss), long-running %d, lock waiters %d' % (
            res['idle_in_transaction'], res['idle_in_transaction_over_limit'],
            res['thresholds']['idle_in_transaction_limit_s'], res['long_running'], res['lock_waiters']),
    ]
    limits = [t for t in (_limit_text('role', res['role_limit']), _limit_text('database', res['database_limit'])) if t]
    if limits:
        parts.append('limits: ' + ', '.join(limits))
    if res['reasons']:
        parts.append('; '.join(res['reasons']))
    if res['gate_warnings']:
        parts.append('warnings: ' + '; '.join(res['gate_warnings']))
    return ' | '.join(parts)


def validate(params):
    errors = validate_common(params, allow_unix_socket=True)
    check_range(errors, params, 'warn_pct', 0.1, 100, allow_none=False)
    check_range(errors, params, 'critical_pct', 0.1, 100, allow_none=False)
    if not errors and params['warn_pct'] > params['critical_pct']:
        errors.append('warn_pct (%s) must not be above critical_pct (%s)'
                      % (params['warn_pct'], params['critical_pct']))
    for name in ('idle_in_transaction_limit_s', 'long_running_s'):
        check_range(errors, params, name, 0, 864000, allow_none=False)
    for name in ('max_idle_in_transaction', 'max_long_running', 'max_lock_waiters'):
        check_range(errors, params, name, 0, 100000, allow_none=False)
    seen = {}
    for index, client in enumerate(params['clients'] or []):
        label = 'clients[%d] (%s)' % (index, client.get('host'))
        if not client.get('host'):
            errors.append('clients[%d].host must not be empty' % index)
        for key in ('processes', 'pool_size'):
            value = client.get(key)
            if value is None or not 0 <= value <= 100000:
                errors.append('%s.%s must be between 0 and 100000, got %r' % (label, key, value))
        address = client.get('address')
        if address is None:
            if client.get('after') == 'disconnected':
                errors.append('%s: after=disconnected needs address (the IP the database sees, '
                              'pg_stat_activity.client_addr): without it there are no current sessions to '
                              'subtract; a host still connected belongs in already_connected=true instead' % label)
            continue
        if not is_ip_address(address):
            errors.append('%s.address must be a numeric IPv4/IPv6 address as pg_stat_activity.client_addr '
                          'shows it, got %r' % (label, address))
            continue
        if client.get('already_connected'):
            errors.append('%s: already_connected=true and address are ambiguous together: with address the '
                          'current sessions from %s are already counted (in used) and the demand replaces '
                          'them; drop already_connected' % (label, address))
        key = ipaddress.ip_address(address)
        if key in seen:
            errors.append('%s.address %s is also the address of %s: the sessions from one address can be '
                          'replaced only once, merge the entries' % (label, address, seen[key]))
        else:
            seen[key] = label
    return errors


def addresses_of(clients):
    """The clients' addresses as given (bound as a text[] and cast to inet by the server)."""
    return [c['address'] for c in clients or [] if c.get('address') is not None]


def plan(clients, address_sessions):
    """Per client: demand, current sessions (with address) and delta to the projection.

    Returns (clients report, planned demand, sum of deltas). validate() has refused
    after=disconnected without address and already_connected together with address.
    """
    out, demand, net = [], 0, 0
    for client in clients or []:
        address = client.get('address')
        after = client.get('after') or 'connected'
        current = None if address is None else int(address_sessions.get(address, 0))
        need = 0 if after == 'disconnected' else client['processes'] * client['pool_size']
        counted = not client['already_connected']
        delta = (need - (current or 0)) if counted else 0
        if counted:
            demand += need
            net += delta
        out.append({
            'host': client['host'], 'processes': client['processes'], 'pool_size': client['pool_size'],
            'already_connected': client['already_connected'], 'address': address, 'after': after,
            'current_sessions': current, 'demand': need, 'delta': delta, 'counted': counted,
        })
    return out, demand, net


def client_text(client):
    """'lab-new 10.213.20.30: 22 now -> 21 planned' for the no-go message."""
    name = client['host'] if client['address'] is None else '%s %s' % (client['host'], client['address'])
    if not client['counted']:
        return '%s: already connected, %d not added' % (name, client['demand'])
    if client['after'] == 'disconnected':
        return '%s: %d now -> disconnected' % (name, client['current_sessions'])
    if client['address'] is None:
        return '%s: %d planned' % (name, client['demand'])
    return '%s: %d now -> %d planned' % (name, client['current_sessions'], client['demand'])


def change_text(current, planned):
    """'4 current + 3 planned = 7' (planned may be negative: sessions replaced or gone)."""
    return '%d current %s %d planned = %d' % (current, '-' if planned < 0 else '+', abs(planned), current + planned)


def limit_report(kind, name, info, current, planned):
    """Role or database connection limit vs current sessions + planned demand."""
    report = {kind: name, 'exists': info is not None, 'limit': None, 'current': current,
              'planned': planned, 'projected': current + planned, 'enforced': False, 'ok': True}
    if info is None:
        return report
    report['limit'] = info['limit']
    if kind == 'role':
        report['superuser'] = bool(info.get('superuser'))
    else:
        report['allow_connections'] = bool(info.get('allow_connections'))
    report['enforced'] = info['limit'] >= 0 and not report.get('superuser', False)
    report['ok'] = not report['enforced'] or report['projected'] <= info['limit']
    return report


def evaluate(gate, params, row, out):
    usable = row['max_connections'] - row['superuser_reserved'] - row['reserved']
    used = row['used']
    free = usable - used
    clients, planned, net = plan(params['clients'], row['address_sessions'] or {})
    projected = used + net
    utilization = round(projected * 100.0 / usable, 1) if usable > 0 else 100.0
    out.update(
        max_connections=row['max_connections'],
        superuser_reserved_connections=row['superuser_reserved'],
        reserved_connections=row['reserved'],
        usable=usable, used=used, free=free, planned_demand=planned, projected=projected,
        headroom=usable - projected, utilization_pct=utilization, clients=clients,
        by_application=row['by_application'] or {}, by_user=row['by_user'] or {},
        by_state=row['by_state'] or {}, by_client_addr=row['by_client_addr'] or {},
        idle_in_transaction=row['idle_tx'], idle_in_transaction_over_limit=row['idle_tx_over'],
        oldest_idle_in_transaction_s=round(row['idle_tx_oldest_s'] or 0.0, 3),
        long_running=row['long_running'], longest_active_s=round(row['longest_active_s'] or 0.0, 3),
        lock_waiters=row['lock_waiters'], locks_not_granted=row['locks_not_granted'],
        hidden_sessions=row['hidden_sessions'], server_version=row['server_version'],
    )

    stage = 'thresholds'
    warn, critical = params['warn_pct'], params['critical_pct']
    level = 'ok'
    if projected > usable:
        level = 'critical'
        replaced = planned - net
        if replaced:
            what = 'net demand %d (planned %d minus the %d current sessions from the client addresses)' % (
                net, planned, replaced)
        else:
            what = 'planned demand %d' % planned
        gate.fail(stage, 'projected %d exceeds the %d usable slots: %s exceeds the %d free slots (used %d; %s)'
                  % (projected, usable, what, free, used, ', '.join(client_text(c) for c in clients)))
    if utilization >= critical:
        level = 'critical'
        gate.fail(stage, 'projected utilization %.1f%% (%d of %d usable slots) reaches critical_pct %s%%'
                  % (utilization, projected, usable, critical))
    elif utilization >= warn:
        if level == 'ok':
            level = 'warn'
        gate.warn('projected utilization %.1f%% (%d of %d usable slots) reaches warn_pct %s%%'
                  % (utilization, projected, usable, warn))
    out['level'] = level

    if row['idle_tx_over'] > params['max_idle_in_transaction']:
        gate.fail(stage, '%d sessions idle in transaction for more than %ss (oldest %.1fs), max_idle_in_transaction %d'
                  % (row['idle_tx_over'], params['idle_in_transaction_limit_s'],
                     out['oldest_idle_in_transaction_s'], params['max_idle_in_transaction']))
    if row['long_running'] > params['max_long_running']:
        gate.fail(stage, '%d active queries running for more than %ss (longest %.1fs), max_long_running %d'
                  % (row['long_running'], params['long_running_s'], out['longest_active_s'],
                     params['max_long_running']))
    if row['lock_waiters'] > params['max_lock_waiters']:
        gate.fail(stage, '%d sessions waiting for a lock, max_lock_waiters %d'
                  % (row['lock_waiters'], params['max_lock_waiters']))

    role = params['role'] or params['user']
    # Approximation (see notes): the sessions from a client address are taken to be the
    # role's and the database's, so their deltas apply to both limits as they are.
    note = ' (planned is net of the sessions from the client addresses)' if planned != net else ''
    role_limit = limit_report('role', role, row['role_info'], row['role_current'], net)
    out['role_limit'] = role_limit
    if not role_limit['exists']:
        gate.fail(stage, 'role %s does not exist' % role)
    elif not role_limit['ok']:
        gate.fail(stage, 'role %s connection limit %d would be exceeded: %s%s'
                  % (role, role_limit['limit'], change_text(role_limit['current'], net), note))
    database = params['database']
    db_limit = limit_report('database', database, row['database_info'], row['database_current'], net)
    out['database_limit'] = db_limit
    if db_limit['exists'] and not db_limit['ok']:
        gate.fail(stage, 'database %s connection limit %d would be exceeded: %s%s'
                  % (database, db_limit['limit'], change_text(db_limit['current'], net), note))
    if db_limit['exists'] and not db_limit.get('allow_connections', True):
        gate.fail(stage, 'database %s does not allow connections (datallowconn false)' % database)
    if row['hidden_sessions']:
        gate.warn('%d sessions of other roles are not visible in detail to %s (no pg_read_all_stats or '
                  'pg_monitor): counted as client backends, their state, lock waits and query age are '
                  'unknown' % (row['hidden_sessions'], params['user']))
    for client in clients:
        if client['after'] == 'disconnected' and not client['current_sessions']:
            gate.warn('%s (after=disconnected) has no client sessions from %s now: nothing subtracted; is '
                      'that the address the database sees (by_client_addr)?' % (client['host'], client['address']))


def argument_spec():
    spec = common_argument_spec()
    spec.update(
        role=dict(type='str'),
        clients=dict(
            type='list', elements='dict', default=[],
            options=dict(
                host=dict(type='str', required=True),
                processes=dict(type='int', required=True),
                pool_size=dict(type='int', required=True),
                address=dict(type='str'),
                after=dict(type='str', default='connected', choices=['connected', 'disconnected']),
                already_connected=dict(type='bool', default=False),
            ),
        ),
        warn_pct=dict(type='float', default=80.0),
        critical_pct=dict(type='float', default=95.0),
        idle_in_transaction_limit_s=dict(type='int', default=60),
        max_idle_in_transaction=dict(type='int', default=0),
        long_running_s=dict(type='int', default=300),
        max_long_running=dict(type='int', default=0),
        max_lock_waiters=dict(type='int', default=0),
    )
    return spec


def main():
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)
    params = module.params

    out = skeleton()
    errors = validate(params)
    if errors:
        fail_params(module, errors, gate_name='pool', stages={}, **out)
    out['thresholds'] = {
        key: params[key] for key in (
            'warn_pct', 'critical_pct', 'idle_in_transaction_limit_s', 'max_idle_in_transaction',
            'long_running_s', 'max_long_running', 'max_lock_waiters')
    }

    driver, driver_error = try_load_driver(params['driver'])
    if driver is not None:
        out['driver'] = {'name': driver.name, 'version': driver.version}

    gate = Gate(STAGES)
    conn = None
    try:
        with gate.stage('auth'):
            if driver is None:
                raise driver_error
            conn = driver_connect(driver, params)
        with gate.stage('query') as entry:
            cur = conn.cursor()
            cur.execute(QUERY, {
                'idle_limit': float(params['idle_in_transaction_limit_s']),
                'long_s': float(params['long_running_s']),
                'role': params['role'] or params['user'],
                'database': params['database'],
                'addresses': addresses_of(params['clients']),
            })
            names = [col[0] for col in cur.description]
            row = dict(zip(names, cur.fetchone(), strict=True))
            cur.close()
        out['query_ms'] = entry['ms']
        evaluate(gate, params, row, out)
    except GateError:
        pass  # recorded by the failing stage
    finally:
        close_quietly(conn)
    finish(module, gate, summarize=summarize, **out)


if __name__ == '__main__':
    main()
