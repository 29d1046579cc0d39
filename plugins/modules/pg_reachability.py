#!/usr/bin/python
# Copyright: aiadmin-ops contributors
# SPDX-License-Identifier: MIT
"""Go/no-go gate: can this host reach PostgreSQL over verified TLS, and how fast."""


from __future__ import annotations

DOCUMENTATION = r"""
---
module: pg_reachability
short_description: Go/no-go gate for reaching PostgreSQL over verified TLS (DNS, TCP, TLS, auth, latency)
version_added: "0.1.0"
description:
  - Checks, from the host the task runs on, every step an application needs to use a
    PostgreSQL server, and reports each step separately with its duration.
  - C(dns) resolves O(host) (skipped when O(hostaddr) is given); C(tcp) opens a raw TCP
    connection bounded by O(connect_timeout); C(tls) sends the PostgreSQL SSLRequest on that
    socket and, when the server answers C(S), performs a TLS handshake with libpq's
    O(sslmode) semantics (chain verified against O(ssl_rootcert), host name checked for
    C(verify-full)) and reads the TLS version, cipher and certificate expiry.
  - C(auth) connects with the PostgreSQL driver with the same parameters; C(query) runs
    SELECT now() and reads C(pg_stat_ssl) for its own backend to prove the session really
    is encrypted; C(latency) times O(samples) round trips of C(SELECT 1) on that connection.
  - The gate fails closed. Any failed stage, a session that is not encrypted while
    O(sslmode) requires TLS, a server certificate expiring in fewer than O(min_cert_days)
    days, or a p95 latency above O(max_latency_ms) makes it C(no-go), and a no-go fails the
    task with every reason listed, unless O(report_only=true).
  - Bad parameters (unknown sslmode, missing CA file, out-of-range numbers) fail the task
    before any connection attempt, whatever O(report_only) says.
  - Only reads; check mode runs the same probe.
  - Works with psycopg 3 or psycopg2 (Ubuntu 22.04 packages only psycopg2); the driver is
    needed only from the C(auth) stage on, so C(dns), C(tcp) and C(tls) are reported even on
    a host without a driver.
author:
  - aiadmin-ops contributors
options:
  host:
    description:
      - Host name (or IP address) of the server. With O(sslmode=verify-full) the server
        certificate must be valid for this name.
    type: str
    required: true
  hostaddr:
    description:
      - Numeric IP address to connect to instead of resolving O(host). O(host) is still
        used for certificate host name verification (libpq semantics).
    type: str
  port:
    description: TCP port of the server.
    type: int
    default: 5432
  database:
    description: Database to connect to.
    type: str
    default: postgres
    aliases: [dbname, login_db]
  user:
    description: Role to authenticate as.
    type: str
    default: postgres
    aliases: [login_user]
  password:
    description:
      - Password of O(user). Passed to the driver as a keyword, never on a command line or
        in a hand-built connection string.
    type: str
    aliases: [login_password]
  sslmode:
    description:
      - libpq C(sslmode). With C(require), C(verify-ca) and C(verify-full) a session that
        is not encrypted is a no-go. C(verify-ca) and C(verify-full) need O(ssl_rootcert).
    type: str
    default: verify-full
    choices: [disable, allow, prefer, require, verify-ca, verify-full]
  ssl_rootcert:
    description:
      - CA certificate file (PEM) the server certificate must chain to, on the host the
        task runs on (for example C(/root/.cloud-certs/root.crt)). Must exist when given.
    type: path
    aliases: [ca_cert]
  connect_timeout:
    description:
      - Seconds allowed for name resolution, for the TCP connect (all addresses together),
        for the TLS handshake and for the driver connection (libpq C(connect_timeout), which
        rounds values below 2 up to 2). A black-holed address fails the C(tcp) stage after
        this many seconds.
    type: int
    default: 10
  application_name:
    description: C(application_name) of the gate's session (visible in C(pg_stat_activity)).
    type: str
    default: aiadmin-ops-gate
  report_only:
    description:
      - Return the report with C(go=false) instead of failing the task on a no-go.
        Parameter errors fail the task regardless.
    type: bool
    default: false
  driver:
    description:
      - PostgreSQL driver. C(auto) tries psycopg 3 first, then psycopg2.
    type: str
    default: auto
    choices: [auto, psycopg, psycopg2]
  samples:
    description: Number of C(SELECT 1) round trips timed on the open connection.
    type: int
    default: 5
  max_latency_ms:
    description:
      - No-go when the p95 of the round-trip samples exceeds this many milliseconds.
        Not checked when omitted.
    type: float
  min_cert_days:
    description:
      - No-go when the server certificate expires in fewer than this many days.
        C(0) disables the check (an expired certificate still fails verification).
    type: int
    default: 14
notes:
  - Sends one PostgreSQL SSLRequest and a TLS handshake on a raw socket, then closes it
    before the startup packet; the server does not log an error for that.
  - The server's own C(pg_stat_ssl) row is the proof that the session uses TLS.
requirements:
  - python >= 3.10
  - psycopg >= 3.1 or psycopg2 >= 2.8 (from the C(auth) stage on)
seealso:
  - module: pg_pool_health
  - name: libpq connection parameters
    description: Meaning of sslmode, hostaddr and connect_timeout.
    link: https://www.postgresql.org/docs/current/libpq-connect.html#LIBPQ-PARAMKEYWORDS
"""

EXAMPLES = r"""
- name: Check the database over the private network from the new host
  pg_reachability:
    host: 10.213.20.10
    port: 5432
    database: ai_admin
    user: ai_admin
    password: "{{ vault_aiadmin_db_password }}"
    sslmode: verify-full
    ssl_rootcert: /root/.cloud-certs/root.crt
    connect_timeout: 10
    samples: 20
    max_latency_ms: 5
    min_cert_days: 14
  no_log: true

- name: Report only (never fails on no-go), verify against a name resolved elsewhere
  pg_reachability:
    host: db.example.internal
    hostaddr: 10.213.20.10
    user: ai_admin
    password: "{{ vault_aiadmin_db_password }}"
    ssl_rootcert: /root/.cloud-certs/root.crt
    report_only: true
  register: reach
  no_log: true

- name: Show the verdict
  ansible.builtin.debug:
    msg: "{{ 'GO' if reach.go else 'NO-GO: ' ~ (reach.reasons | join('; ')) }}"
"""

RETURN = r"""
go:
  description: True when every stage passed and every threshold holds.
  returned: always
  type: bool
  sample: true
reasons:
  description: One line per no-go reason, each prefixed with its stage.
  returned: always
  type: list
  elements: str
  sample:
    - "tcp: TCP connect failed: 10.213.20.10 port 5432: timed out after 10.0s (no answer: filtered or black-holed)"
gate_warnings:
  description: Observations that do not make the gate no-go.
  returned: always
  type: list
  elements: str
  sample: []
error_stage:
  description:
    - Stage of the first reason (C(params), C(dns), C(tcp), C(tls), C(auth), C(query) or
      C(latency)); null when go.
  returned: always
  type: str
  sample: tls
stages:
  description:
    - Every stage with C(ok), C(ms) (duration, null when not run), C(error) and C(skipped)
      (true when not run, either not needed or after an earlier failure).
  returned: always
  type: dict
  sample:
    dns: {ok: true, ms: 0.41, error: null, skipped: false}
    tcp: {ok: true, ms: 0.22, error: null, skipped: false}
    tls: {ok: true, ms: 3.1, error: null, skipped: false}
    auth: {ok: true, ms: 14.8, error: null, skipped: false}
    query: {ok: true, ms: 0.6, error: null, skipped: false}
    latency: {ok: true, ms: 1.9, error: null, skipped: false}
summary:
  description: One line with the verdict and the key numbers, for reports and playbook output.
  returned: always
  type: str
  sample: "GO reachability 10.213.20.10:5432 | dns 0.1 ms, tcp 0.3 ms, tls 4.2 ms, auth 12.0 ms, query 0.9 ms,
    latency 3.1 ms | TLSv1.3 TLS_AES_256_GCM_SHA384, cert expires in 364.5 d | latency min/p50/p95/max
    0.120/0.140/0.210/0.250 ms over 20 samples | pg_stat_ssl on | PostgreSQL 15.10"
target:
  description: O(host) and O(port) as checked.
  returned: always
  type: str
  sample: 10.213.20.10:5432
addresses:
  description: Addresses O(host) resolved to (or O(hostaddr)).
  returned: always
  type: list
  elements: str
  sample: [10.213.20.10]
connected_address:
  description: Address the TCP stage connected to; the driver then connects to the same one.
  returned: always
  type: str
  sample: 10.213.20.10
tls:
  description:
    - TLS facts from the probe handshake; null when TLS was not used or not reached.
      C(days_to_expiry) is fractional days until the server certificate's C(notAfter).
  returned: always
  type: dict
  sample:
    version: TLSv1.3
    cipher: TLS_AES_256_GCM_SHA384
    bits: 256
    alpn: null
    verified: true
    hostname_verified: true
    not_after: "2027-01-01T00:00:00Z"
    days_to_expiry: 364.5
ssl_in_use:
  description: C(pg_stat_ssl.ssl) of the gate's own session; null when not reached.
  returned: always
  type: bool
  sample: true
ssl_session:
  description: C(pg_stat_ssl) version and cipher of the gate's own session.
  returned: always
  type: dict
  sample: {version: TLSv1.3, cipher: TLS_AES_256_GCM_SHA384}
server_version:
  description: Server version string (C(server_version) setting); null when not reached.
  returned: always
  type: str
  sample: "15.10 (Debian 15.10-0+deb12u1)"
server_version_num:
  description: Server version as an integer (for example 150010); null when not reached.
  returned: always
  type: int
  sample: 150010
server_time:
  description: Result of SELECT now() in ISO 8601; null when not reached.
  returned: always
  type: str
  sample: "2025-01-01T02:00:00.123456+00:00"
latency_ms:
  description:
    - Round-trip times of C(SELECT 1) in milliseconds; values null when not measured.
  returned: always
  type: dict
  sample: {count: 5, min: 0.08, p50: 0.09, p95: 0.12, p99: 0.13, max: 0.13}
latency_samples_ms:
  description: Every round-trip sample in milliseconds, in order.
  returned: always
  type: list
  elements: float
  sample: [0.13, 0.09, 0.08, 0.09, 0.09]
thresholds:
  description: Thresholds the verdict used.
  returned: always
  type: dict
  sample: {max_latency_ms: 5.0, min_cert_days: 14, ssl_required: true}
driver:
  description: Driver used (C(psycopg) or C(psycopg2)) and its version; null before the auth stage.
  returned: always
  type: dict
  sample: {name: psycopg2, version: 2.9.2}
total_ms:
  description: Wall time of all stages in milliseconds.
  returned: always
  type: float
  sample: 21.3
"""

import contextlib
import time

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.pg_gate import (
    SSL_REQUIRED_MODES,
    Gate,
    GateError,
    check_range,
    close_quietly,
    common_argument_spec,
    driver_connect,
    fail_params,
    finish,
    fmt_num,
    latency_summary,
    numeric_address,
    resolve,
    tcp_connect,
    tls_probe,
    try_load_driver,
    validate_common,
    verdict_prefix,
)

STAGES = ('dns', 'tcp', 'tls', 'auth', 'query', 'latency')

QUERY = (
    "SELECT now(), current_setting('server_version'), s.ssl, s.version, s.cipher "
    "FROM (SELECT 1) AS one "
    "LEFT JOIN pg_catalog.pg_stat_ssl AS s ON s.pid = pg_catalog.pg_backend_pid()"
)


def skeleton():
    """Every key of the result, so a failed run still has the same shape."""
    return {
        'target': None,
        'addresses': [],
        'connected_address': None,
        'tls': None,
        'ssl_in_use': None,
        'ssl_session': None,
        'server_version': None,
        'server_version_num': None,
        'server_time': None,
        'latency_ms': latency_summary([]),
        'latency_samples_ms': [],
        'thresholds': {},
        'driver': None,
        'total_ms': 0.0,
    }


def summarize(res):
    """One line with the key numbers, for playbook summaries and logs."""
    target = res['target']
    if res['connected_address'] and res['connected_address'] != target.rsplit(':', 1)[0]:
        target += ' (%s)' % res['connected_address']
    parts = [verdict_prefix(res, 'reachability') + ' ' + target]
    stages = []
    for name in STAGES:
        stage = res['stages'][name]
        if stage['skipped'] and stage['ok']:
            continue
        if stage['skipped']:
            stages.append('%s -' % name)
        elif stage['ok']:
            stages.append('%s %s' % (name, fmt_num(stage['ms'], ' ms')))
        else:
            stages.append('%s FAILED' % name)
    parts.append(', '.join(stages))
    tls = res['tls']
    if tls:
        expiry = fmt_num(tls['days_to_expiry'], ' d')
        parts.append('%s %s, cert expires in %s' % (tls['version'], tls['cipher'], expiry))
    lat = res['latency_ms']
    if lat['count']:
        parts.append('latency min/p50/p95/max %s/%s/%s/%s ms over %d samples' % (
            fmt_num(lat['min'], digits=3), fmt_num(lat['p50'], digits=3), fmt_num(lat['p95'], digits=3),
            fmt_num(lat['max'], digits=3), lat['count']))
    if res['ssl_in_use'] is not None:
        parts.append('pg_stat_ssl %s' % ('on' if res['ssl_in_use'] else 'OFF'))
    if res['server_version']:
        parts.append('PostgreSQL %s' % res['server_version'].split()[0])
    if res['reasons']:
        parts.append('; '.join(res['reasons']))
    return ' | '.join(parts)


def validate(params):
    errors = validate_common(params)
    check_range(errors, params, 'samples', 1, 10000, allow_none=False)
    check_range(errors, params, 'max_latency_ms', 0.001, 3600000)
    check_range(errors, params, 'min_cert_days', 0, 36500, allow_none=False)
    return errors


def probe(module, gate, out, driver, driver_error):
    params = module.params
    timeout = params['connect_timeout']
    host = params['host']
    sslmode = params['sslmode']

    if params['hostaddr']:
        gate.skip('dns', 'hostaddr given')
        addresses = numeric_address(params['hostaddr'], params['port'])
    else:
        with gate.stage('dns'):
            addresses = resolve(host, params['port'], timeout)
    out['addresses'] = [sockaddr[0] for _family, sockaddr in addresses]

    with gate.stage('tcp'):
        sock, address, failures = tcp_connect(addresses, timeout)
    out['connected_address'] = address
    for failure in failures:
        gate.warn('tcp: ' + failure)

    if sslmode == 'disable':
        sock.close()
        gate.skip('tls', 'sslmode disable')
    else:
        try:
            with gate.stage('tls') as entry:
                tls = tls_probe(sock, host, sslmode, params['ssl_rootcert'], timeout)
                if tls is None:
                    if sslmode in SSL_REQUIRED_MODES:
                        raise GateError('server does not support TLS (answered N to SSLRequest)')
                    entry['note'] = 'server does not support TLS'
                    sock.close()
        except GateError:
            sock.close()
            raise
        out['tls'] = tls
        if tls is not None and tls['days_to_expiry'] is not None:
            min_days = params['min_cert_days']
            if min_days and tls['days_to_expiry'] < min_days:
                gate.fail('tls', 'server certificate expires in %.1f days (not after %s), fewer than '
                          'min_cert_days %d' % (tls['days_to_expiry'], tls['not_after'], min_days))

    conn = None
    try:
        with gate.stage('auth'):
            if driver is None:
                raise driver_error
            conn = driver_connect(driver, params, hostaddr=address)
        with gate.stage('query'):
            cur = conn.cursor()
            cur.execute(QUERY)
            now, version, ssl_on, ssl_version, ssl_cipher = cur.fetchone()
            out['server_time'] = now.isoformat() if hasattr(now, 'isoformat') else str(now)
            out['server_version'] = version
            out['server_version_num'] = driver.server_version_num(conn)
            out['ssl_in_use'] = bool(ssl_on)
            out['ssl_session'] = {'version': ssl_version, 'cipher': ssl_cipher}
        if sslmode in SSL_REQUIRED_MODES and not ssl_on:
            gate.fail('tls', 'pg_stat_ssl says the session is not encrypted although sslmode is %s' % sslmode)
        with gate.stage('latency'):
            samples = []
            clock = time.perf_counter
            for _ in range(params['samples']):
                start = clock()
                cur.execute('SELECT 1')
                cur.fetchone()
                samples.append((clock() - start) * 1000.0)
            cur.close()
        out['latency_samples_ms'] = [round(s, 3) for s in samples]
        out['latency_ms'] = latency_summary(samples)
        limit = params['max_latency_ms']
        p95 = out['latency_ms']['p95']
        if limit is not None and p95 is not None and p95 > limit:
            gate.fail('latency', 'p95 round trip %.3f ms over %d samples exceeds max_latency_ms %s'
                      % (p95, len(samples), limit))
    finally:
        close_quietly(conn)


def argument_spec():
    spec = common_argument_spec()
    spec.update(
        samples=dict(type='int', default=5),
        max_latency_ms=dict(type='float'),
        min_cert_days=dict(type='int', default=14),
    )
    return spec


def main():
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)
    params = module.params

    out = skeleton()
    out['target'] = '%s:%s' % (params['host'], params['port'])
    errors = validate(params)
    if errors:
        fail_params(module, errors, gate_name='reachability', stages={}, **out)
    out['thresholds'] = {
        'max_latency_ms': params['max_latency_ms'],
        'min_cert_days': params['min_cert_days'],
        'ssl_required': params['sslmode'] in SSL_REQUIRED_MODES,
    }

    driver, driver_error = try_load_driver(params['driver'])
    if driver is not None:
        out['driver'] = {'name': driver.name, 'version': driver.version}

    gate = Gate(STAGES)
    started = time.perf_counter()
    with contextlib.suppress(GateError):  # already recorded as a reason by the failing stage
        probe(module, gate, out, driver, driver_error)
    out['total_ms'] = round((time.perf_counter() - started) * 1000.0, 3)
    finish(module, gate, summarize=summarize, **out)


if __name__ == '__main__':
    main()
