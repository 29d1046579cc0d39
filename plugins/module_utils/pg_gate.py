# Copyright: aiadmin-ops contributors
# SPDX-License-Identifier: MIT
"""Shared code of the go/no-go gate modules (pg_reachability, pg_pool_health).

Everything here is standard library only; the PostgreSQL driver (psycopg 3 or psycopg2)
is imported lazily, when a stage first needs it, so that the network stages still run
and report on a host where no driver is installed.

Vocabulary:
- a *stage* is one timed step (dns, tcp, tls, auth, query, latency, ...); every stage the
  module knows about is always present in the result, with ``ok``, ``ms``, ``error`` and
  ``skipped``;
- a *reason* is one line "<stage>: <what is wrong>" that makes the gate no-go;
- ``error_stage`` is the stage of the first reason (None when the gate is go);
- ``gate_warnings`` are observations that do not make the gate no-go (also emitted as
  Ansible warnings; the result key ``warnings`` is reserved by Ansible);
- fail closed: a no-go fails the task unless the caller set ``report_only``.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import socket
import ssl
import struct
import threading
import time

SSLMODES = ('disable', 'allow', 'prefer', 'require', 'verify-ca', 'verify-full')
# sslmodes under which a session without TLS is a no-go.
SSL_REQUIRED_MODES = ('require', 'verify-ca', 'verify-full')
DRIVERS = ('auto', 'psycopg', 'psycopg2')

PARAMS_STAGE = 'params'
MAX_ERROR_CHARS = 500

# PostgreSQL SSLRequest: int32 length 8, int32 code 80877103 (1234 << 16 | 5679).
SSL_REQUEST = struct.pack('!ii', 8, 80877103)

_DRIVER_HINT = 'install python3-psycopg2 (Ubuntu 22.04) or python3-psycopg'


def common_argument_spec():
    """Argument spec shared by every gate module (documented in each module)."""
    return dict(
        host=dict(type='str', required=True),
        hostaddr=dict(type='str'),
        port=dict(type='int', default=5432),
        database=dict(type='str', default='postgres', aliases=['dbname', 'login_db']),
        user=dict(type='str', default='postgres', aliases=['login_user']),
        password=dict(type='str', no_log=True, aliases=['login_password']),
        sslmode=dict(type='str', default='verify-full', choices=list(SSLMODES)),
        ssl_rootcert=dict(type='path', aliases=['ca_cert']),
        connect_timeout=dict(type='int', default=10),
        application_name=dict(type='str', default='aiadmin-ops-gate'),
        report_only=dict(type='bool', default=False),
        driver=dict(type='str', default='auto', choices=list(DRIVERS)),
    )


class GateError(Exception):
    """A failure attributed to one stage; ``str(exc)`` is the human message."""

    def __init__(self, message, stage=None):
        super().__init__(message)
        self.stage = stage


# --------------------------------------------------------------------------- validation


def is_ip_address(value):
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, value)
        except (OSError, ValueError):
            continue
        return True
    return False


def validate_common(params, allow_unix_socket=False):
    """Return a list of human-readable problems with the common parameters (empty = fine).

    Runs before any connection attempt, so that a typo never turns into a network probe.
    """
    errors = []
    host = (params.get('host') or '').strip()
    if not host:
        errors.append('host must not be empty')
    elif host.startswith('/') and not allow_unix_socket:
        errors.append('host must be a host name or an IP address; unix sockets are not supported by this gate')
    elif any(ch.isspace() for ch in host) or ',' in host:
        errors.append('host must be a single host name or IP address, got %r' % host)
    hostaddr = params.get('hostaddr')
    if hostaddr is not None and not is_ip_address(hostaddr):
        errors.append('hostaddr must be a numeric IPv4/IPv6 address, got %r' % hostaddr)
    port = params.get('port')
    if port is None or not 1 <= port <= 65535:
        errors.append('port must be between 1 and 65535, got %r' % port)
    timeout = params.get('connect_timeout')
    if timeout is None or not 1 <= timeout <= 3600:
        errors.append('connect_timeout must be between 1 and 3600 seconds, got %r' % timeout)
    sslmode = params.get('sslmode')
    if sslmode not in SSLMODES:
        errors.append('sslmode must be one of %s, got %r' % (', '.join(SSLMODES), sslmode))
    rootcert = params.get('ssl_rootcert')
    if sslmode in ('verify-ca', 'verify-full') and not rootcert:
        errors.append('sslmode %s needs ssl_rootcert (the CA certificate file)' % sslmode)
    if rootcert:
        if not os.path.isfile(rootcert):
            errors.append('ssl_rootcert %s does not exist or is not a file' % rootcert)
        elif not os.access(rootcert, os.R_OK):
            errors.append('ssl_rootcert %s is not readable' % rootcert)
    for name in ('database', 'user'):
        if not params.get(name):
            errors.append('%s must not be empty' % name)
    return errors


def check_range(errors, params, name, low=None, high=None, allow_none=True):
    """Append an error when params[name] is outside [low, high]."""
    value = params.get(name)
    if value is None:
        if not allow_none:
            errors.append('%s is required' % name)
        return
    if (low is not None and value < low) or (high is not None and value > high):
        if high is None:
            errors.append('%s must be >= %s, got %r' % (name, low, value))
        elif low is None:
            errors.append('%s must be <= %s, got %r' % (name, high, value))
        else:
            errors.append('%s must be between %s and %s, got %r' % (name, low, high, value))


# --------------------------------------------------------------------------- results


def _ms(seconds):
    return round(seconds * 1000.0, 3)


def one_line(message, limit=MAX_ERROR_CHARS):
    """Collapse a (libpq, multi-line) message into one line of bounded length."""
    text = ' '.join(str(message).split())
    if len(text) > limit:
        text = text[: limit - 3] + '...'
    return text or 'unknown error'


class Gate:
    """Collects stages, reasons and warnings; turns them into the module result."""

    def __init__(self, stage_names):
        self.stage_names = tuple(stage_names)
        self.stages = {
            name: {'ok': False, 'ms': None, 'error': None, 'skipped': True} for name in stage_names
        }
        self.reasons = []
        self.warnings = []
        self.error_stage = None

    def fail(self, stage, message):
        """Record a no-go reason without aborting (e.g. a threshold breach)."""
        self.reasons.append('%s: %s' % (stage, one_line(message)))
        if self.error_stage is None:
            self.error_stage = stage

    def warn(self, message):
        self.warnings.append(one_line(message))

    def skip(self, name, note=None):
        """Mark a stage as deliberately not needed (counts as ok)."""
        self.stages[name].update(ok=True, ms=0.0, skipped=True, error=None)
        if note:
            self.stages[name]['note'] = note

    def stage(self, name):
        return _StageTimer(self, name)

    @property
    def go(self):
        return not self.reasons

    def result(self, **extra):
        out = {
            'go': self.go,
            'reasons': list(self.reasons),
            # Not "warnings": that key is reserved for Ansible's own warnings.
            'gate_warnings': list(self.warnings),
            'error_stage': self.error_stage,
            'stages': self.stages,
        }
        out.update(extra)
        return out


class _StageTimer:
    """``with gate.stage('tcp'):`` times the block; an exception fails the stage.

    Any exception is recorded as the stage's error and re-raised as GateError so the caller
    stops at the first failed stage (the later stages stay ``skipped``). A GateError may
    name another stage as the culprit (e.g. a TLS error surfacing during authentication):
    the reason and ``error_stage`` then use that stage, the error stays on this one.
    """

    def __init__(self, gate, name):
        self.gate = gate
        self.name = name
        self.start = None

    def __enter__(self):
        self.start = time.perf_counter()
        entry = self.gate.stages[self.name]
        entry['skipped'] = False
        return entry

    def __exit__(self, exc_type, exc, tb):
        entry = self.gate.stages[self.name]
        entry['ms'] = _ms(time.perf_counter() - self.start)
        if exc is None:
            entry['ok'] = True
            return False
        if exc_type is KeyboardInterrupt or exc_type is SystemExit:
            return False
        message = one_line(exc if str(exc) else exc_type.__name__)
        entry['ok'] = False
        entry['error'] = message
        stage = getattr(exc, 'stage', None) or self.name
        self.gate.fail(stage, message)
        if isinstance(exc, GateError):
            return False
        raise GateError(message, stage) from exc


def finish(module, gate, summarize=None, **extra):
    """Exit the module: fail closed on no-go unless report_only.

    ``summarize(result)`` returns the one-line human ``summary`` (numbers + verdict).
    """
    result = gate.result(**extra)
    result['changed'] = False
    result['summary'] = summarize(result) if summarize else verdict_prefix(result, 'gate')
    for warning in result['gate_warnings']:
        module.warn(warning)
    if result['go'] or module.params.get('report_only'):
        module.exit_json(**result)
    module.fail_json(msg='NO-GO: ' + '; '.join(result['reasons']), **result)


def fail_params(module, errors, gate_name='gate', **skeleton):
    """Bad input: a clear error before any connection attempt, whatever report_only says."""
    reasons = ['%s: %s' % (PARAMS_STAGE, e) for e in errors]
    module.fail_json(
        msg='invalid parameters: ' + '; '.join(errors),
        summary='NO-GO %s (error_stage %s) | %s' % (gate_name, PARAMS_STAGE, '; '.join(reasons)),
        go=False,
        reasons=reasons,
        gate_warnings=[],
        error_stage=PARAMS_STAGE,
        changed=False,
        **skeleton,
    )


# --------------------------------------------------------------------------- statistics


def percentile(values, pct):
    """Percentile with linear interpolation between closest ranks (None for no data)."""
    if not values:
        return None
    data = sorted(values)
    if len(data) == 1:
        return data[0]
    rank = (len(data) - 1) * (pct / 100.0)
    low = int(rank)
    high = min(low + 1, len(data) - 1)
    return data[low] + (data[high] - data[low]) * (rank - low)


def latency_summary(samples_ms):
    """{count, min, p50, p95, p99, max} in ms (values None when there are no samples)."""
    def r(v):
        return None if v is None else round(v, 3)

    return {
        'count': len(samples_ms),
        'min': r(min(samples_ms)) if samples_ms else None,
        'p50': r(percentile(samples_ms, 50)),
        'p95': r(percentile(samples_ms, 95)),
        'p99': r(percentile(samples_ms, 99)),
        'max': r(max(samples_ms)) if samples_ms else None,
    }


# --------------------------------------------------------------------------- network stages


def resolve(host, port, timeout):
    """getaddrinfo with a deadline (the resolver has none of its own).

    Returns a list of (family, sockaddr) in resolver order, duplicates removed.
    """
    box = {}

    def work():
        try:
            box['infos'] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except Exception as exc:  # reported through box; the thread must not die noisily
            box['error'] = exc

    worker = threading.Thread(target=work, name='pg-gate-dns', daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise GateError('resolving %s timed out after %ss' % (host, timeout))
    if 'error' in box:
        exc = box['error']
        detail = exc.strerror if isinstance(exc, socket.gaierror) and exc.strerror else exc
        raise GateError('cannot resolve %s: %s' % (host, detail))
    seen, out = set(), []
    for family, _type, _proto, _canon, sockaddr in box['infos']:
        if family not in (socket.AF_INET, socket.AF_INET6) or sockaddr[0] in seen:
            continue
        seen.add(sockaddr[0])
        out.append((family, sockaddr))
    if not out:
        raise GateError('%s resolved to no IPv4/IPv6 address' % host)
    return out


def numeric_address(address, port):
    """[(family, sockaddr)] for a numeric IP address, without any resolver traffic."""
    family = socket.AF_INET6 if ':' in address else socket.AF_INET
    return [(family, (address, port))]


def tcp_connect(addresses, timeout):
    """Connect to the first address that answers; the whole stage is bounded by ``timeout``.

    Returns (socket, address string, list of per-address failures).
    """
    deadline = time.monotonic() + timeout
    failures = []
    for family, sockaddr in addresses:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            failures.append('%s: not tried, connect_timeout used up' % sockaddr[0])
            continue
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(remaining)
        try:
            sock.connect(sockaddr)
        except TimeoutError:
            sock.close()
            failures.append('%s port %s: timed out after %.1fs (no answer: filtered or black-holed)'
                            % (sockaddr[0], sockaddr[1], remaining))
            continue
        except OSError as exc:
            sock.close()
            failures.append('%s port %s: %s' % (sockaddr[0], sockaddr[1], exc.strerror or exc))
            continue
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock, sockaddr[0], failures
    raise GateError('TCP connect failed: ' + '; '.join(failures))


def _recv_exact(sock, count):
    data = b''
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise GateError('server closed the connection during the SSLRequest exchange')
        data += chunk
    return data


def tls_context(sslmode, rootcert):
    """An ssl context with libpq's semantics for the sslmode.

    - verify-full: chain verified against ``rootcert`` and host name checked;
    - verify-ca: chain verified, no host name check;
    - require: like verify-ca when a root certificate is given (libpq does the same),
      otherwise no verification; prefer/allow: no verification.
    The stricter defaults of recent Pythons (VERIFY_X509_STRICT, partial chains) are
    turned off so the probe accepts exactly what libpq (OpenSSL defaults) accepts.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    verify = sslmode in ('verify-ca', 'verify-full') or (sslmode == 'require' and bool(rootcert))
    if verify:
        ctx.load_verify_locations(cafile=rootcert)
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.check_hostname = sslmode == 'verify-full'
        for flag in ('VERIFY_X509_STRICT', 'VERIFY_X509_PARTIAL_CHAIN'):
            value = getattr(ssl.VerifyFlags, flag, None)
            if value is not None:
                ctx.verify_flags &= ~value
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    # PostgreSQL 17+ checks ALPN when a client offers it; older servers ignore it.
    with contextlib.suppress(NotImplementedError):  # OpenSSL without ALPN
        ctx.set_alpn_protocols(['postgresql'])
    return ctx, verify


def tls_probe(sock, host, sslmode, rootcert, timeout):
    """SSLRequest over ``sock`` then a TLS handshake; returns a dict, or None for 'N'.

    The socket is consumed (closed) in every case except when the server answers 'N'.
    """
    sock.settimeout(timeout)
    sock.sendall(SSL_REQUEST)
    answer = _recv_exact(sock, 1)
    if answer == b'N':
        return None
    if answer != b'S':
        raise GateError('unexpected answer %r to SSLRequest (not a PostgreSQL server?)' % answer)
    ctx, verified = tls_context(sslmode, rootcert)
    try:
        tls_sock = ctx.wrap_socket(sock, server_hostname=host)
    except ssl.SSLCertVerificationError as exc:
        detail = exc.verify_message or str(exc)
        low = detail.lower()
        if 'mismatch' in low or 'hostname' in low:
            raise GateError('certificate does not match host name %s: %s' % (host, detail)) from exc
        raise GateError('certificate verification failed against %s: %s' % (rootcert, detail)) from exc
    except ssl.SSLError as exc:
        raise GateError('TLS handshake failed: %s' % (exc.reason or exc)) from exc
    except TimeoutError as exc:
        raise GateError('TLS handshake timed out after %ss' % timeout) from exc
    try:
        der = tls_sock.getpeercert(binary_form=True)
        cipher = tls_sock.cipher() or (None, None, None)
        info = {
            'version': tls_sock.version(),
            'cipher': cipher[0],
            'bits': cipher[2],
            'alpn': tls_sock.selected_alpn_protocol(),
            'verified': verified,
            'hostname_verified': verified and sslmode == 'verify-full',
            'not_after': None,
            'days_to_expiry': None,
        }
        if der:
            not_after = cert_not_after(der)
            info['not_after'] = not_after.strftime('%Y-%m-%dT%H:%M:%SZ')
            left = not_after - datetime.datetime.now(datetime.timezone.utc)
            info['days_to_expiry'] = round(left.total_seconds() / 86400.0, 2)
        return info
    finally:
        tls_sock.close()


def _der_header(data, pos):
    """(tag, content start, content end) of the DER element at ``pos``."""
    tag = data[pos]
    length = data[pos + 1]
    pos += 2
    if length & 0x80:
        count = length & 0x7F
        length = int.from_bytes(data[pos:pos + count], 'big')
        pos += count
    return tag, pos, pos + length


def cert_not_after(der):
    """notAfter of a DER X.509 certificate as an aware UTC datetime (tiny DER walk)."""
    _tag, cert_start, _end = _der_header(der, 0)               # Certificate SEQUENCE
    _tag, pos, _end = _der_header(der, cert_start)             # tbsCertificate SEQUENCE
    tag, _start, end = _der_header(der, pos)
    if tag == 0xA0:                                            # [0] EXPLICIT version
        pos = end
    for _field in ('serialNumber', 'signature', 'issuer'):
        _tag, _start, pos = _der_header(der, pos)
    _tag, validity, _end = _der_header(der, pos)               # Validity SEQUENCE
    _tag, _start, after = _der_header(der, validity)           # notBefore
    tag, start, end = _der_header(der, after)                  # notAfter
    text = der[start:end].decode('ascii')
    if tag == 0x17:                                            # UTCTime YYMMDDHHMMSSZ
        year = int(text[0:2])
        text = ('19' if year >= 50 else '20') + text
    elif tag != 0x18:                                          # GeneralizedTime
        raise ValueError('unexpected time tag 0x%02x in certificate' % tag)
    return datetime.datetime.strptime(text[:14], '%Y%m%d%H%M%S').replace(tzinfo=datetime.timezone.utc)


# --------------------------------------------------------------------------- drivers


class Driver:
    """Thin wrapper over psycopg 3 or psycopg2: connect, cursor, server version."""

    def __init__(self, name, module):
        self.name = name
        self.module = module
        self.version = getattr(module, '__version__', 'unknown').split()[0]

    def connect(self, kwargs):
        if self.name == 'psycopg':
            return self.module.connect(autocommit=True, **kwargs)
        conn = self.module.connect(**kwargs)
        conn.autocommit = True
        return conn

    def server_version_num(self, conn):
        if self.name == 'psycopg':
            return conn.info.server_version
        return conn.server_version


def load_driver(preference='auto'):
    """Import psycopg 3 (preferred) or psycopg2; raise GateError naming what to install."""
    names = ('psycopg', 'psycopg2') if preference == 'auto' else (preference,)
    problems = []
    for name in names:
        try:
            module = __import__(name)
        except ImportError as exc:  # also raised when psycopg 3 finds no libpq
            problems.append('%s: %s' % (name, exc))
            continue
        return Driver(name, module)
    raise GateError('no usable PostgreSQL driver (%s); %s' % ('; '.join(problems), _DRIVER_HINT))


def try_load_driver(preference='auto'):
    """(driver, None) or (None, GateError): imported up front so that stage timings do not
    include the import (psycopg 3 takes ~0.2 s), reported by the stage that needs it."""
    try:
        return load_driver(preference), None
    except GateError as exc:
        return None, exc


def connect_kwargs(params, hostaddr=None):
    """libpq keywords for the driver; passed as keywords, never as a hand-built DSN/URL,
    so passwords with } | < ? % ' \\ need no quoting by us."""
    kwargs = {
        'host': params['host'],
        'port': params['port'],
        'dbname': params['database'],
        'user': params['user'],
        'sslmode': params['sslmode'],
        # libpq rounds values below 2 up to 2 seconds.
        'connect_timeout': params['connect_timeout'],
        'application_name': params['application_name'],
    }
    addr = params.get('hostaddr') or hostaddr
    if addr:
        kwargs['hostaddr'] = addr
    if params.get('password') is not None:
        kwargs['password'] = params['password']
    if params.get('ssl_rootcert'):
        kwargs['sslrootcert'] = params['ssl_rootcert']
    return kwargs


_AUTH_PATTERNS = (
    'password authentication failed', 'authentication failed', 'pg_hba.conf',
    'does not exist', 'too many connections', 'remaining connection slots',
    'connection limit', 'not permitted to log in', 'no password supplied',
    'password is required', 'is not currently accepting connections',
)
_TLS_PATTERNS = ('ssl', 'certificate', 'tls', 'does not match host name', 'alpn')
_TCP_PATTERNS = (
    'timeout expired', 'timed out', 'connection refused', 'could not connect',
    'no route to host', 'network is unreachable', 'server closed the connection',
    'connection reset',
)
_DNS_PATTERNS = ('could not translate host name', 'name or service not known', 'nodename nor servname')


def classify_connect_error(message):
    """Attribute a driver connect error to a stage: auth, tls, tcp or dns."""
    low = message.lower()
    for stage, patterns in (('auth', _AUTH_PATTERNS), ('tls', _TLS_PATTERNS),
                            ('dns', _DNS_PATTERNS), ('tcp', _TCP_PATTERNS)):
        if any(p in low for p in patterns):
            return stage
    return 'auth'


def driver_connect(driver, params, hostaddr=None):
    """Connect with the driver; errors become GateError attributed to the right stage."""
    try:
        return driver.connect(connect_kwargs(params, hostaddr))
    except Exception as exc:
        message = one_line(exc)
        if message.startswith('connection failed: '):  # psycopg 3 prefix, says nothing new
            message = message[len('connection failed: '):]
        raise GateError(message, classify_connect_error(message)) from exc


def fmt_num(value, unit='', digits=1):
    """Number for a summary line; 'n/a' when not measured."""
    if value is None:
        return 'n/a'
    if isinstance(value, float):
        value = ('%.' + str(digits) + 'f') % value
    return '%s%s' % (value, unit)


def verdict_prefix(result, gate_name):
    if result['go']:
        return 'GO %s' % gate_name
    return 'NO-GO %s (error_stage %s)' % (gate_name, result['error_stage'])


def close_quietly(conn):
    if conn is None:
        return
    # Closing a broken connection must not hide the result.
    with contextlib.suppress(Exception):
        conn.close()
