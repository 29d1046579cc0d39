"""Pure logic of plugins/module_utils/pg_gate.py (no server needed)."""

from __future__ import annotations

import datetime
import importlib.util
import ssl

import pytest

from tests.gates.gates_pg import ROOT


@pytest.fixture(scope='module')
def pg_gate():
    spec = importlib.util.spec_from_file_location('pg_gate_under_test', ROOT / 'plugins/module_utils/pg_gate.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize('values,pct,expected', [
    ([], 50, None),
    ([3.0], 95, 3.0),
    ([1, 2, 3, 4], 50, 2.5),
    ([1, 2, 3, 4, 5], 50, 3),
    ([5, 1, 4, 2, 3], 0, 1),
    ([5, 1, 4, 2, 3], 100, 5),
    (list(range(1, 21)), 95, 19.05),
])
def test_percentile(pg_gate, values, pct, expected):
    result = pg_gate.percentile(values, pct)
    assert result == pytest.approx(expected) if expected is not None else result is None


def test_latency_summary(pg_gate):
    assert pg_gate.latency_summary([]) == {'count': 0, 'min': None, 'p50': None, 'p95': None, 'p99': None,
                                               'max': None}
    summary = pg_gate.latency_summary([0.5, 0.1, 0.3])
    assert summary == {'count': 3, 'min': 0.1, 'p50': 0.3, 'p95': 0.48, 'p99': 0.496, 'max': 0.5}


def _der_cert(not_after: datetime.datetime) -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, 'unit')])
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc))
        .not_valid_after(not_after)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.DER)


@pytest.mark.parametrize('when', [
    datetime.datetime(2031, 5, 6, 7, 8, 9, tzinfo=datetime.timezone.utc),   # UTCTime
    datetime.datetime(2061, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc),   # GeneralizedTime (>= 2050)
])
def test_cert_not_after(pg_gate, when):
    assert pg_gate.cert_not_after(_der_cert(when)) == when


@pytest.mark.parametrize('message,stage', [
    ('connection to server at "10.0.0.1", port 5432 failed: FATAL:  password authentication failed for user "a"',
     'auth'),
    ('FATAL: no pg_hba.conf entry for host "10.0.0.2", user "a", database "b", SSL encryption', 'auth'),
    ('FATAL: database "nope" does not exist', 'auth'),
    ('FATAL: too many connections for role "ai_admin"', 'auth'),
    ('FATAL: remaining connection slots are reserved for non-replication superuser connections', 'auth'),
    ('SSL error: certificate verify failed', 'tls'),
    ('server certificate for "localhost" does not match host name "db.example"', 'tls'),
    ('server does not support SSL, but SSL was required', 'tls'),
    ('connection to server at "10.0.0.1", port 5432 failed: timeout expired', 'tcp'),
    ('connection to server at "127.0.0.1", port 1 failed: Connection refused', 'tcp'),
    ('could not translate host name "db.invalid" to address: Name or service not known', 'dns'),
    ('something nobody expected', 'auth'),
])
def test_classify_connect_error(pg_gate, message, stage):
    assert pg_gate.classify_connect_error(message) == stage


def test_one_line(pg_gate):
    assert pg_gate.one_line('a\n  b\tc ') == 'a b c'
    assert len(pg_gate.one_line('x' * 1000)) == pg_gate.MAX_ERROR_CHARS
    assert pg_gate.one_line('') == 'unknown error'


def _params(**overrides):
    params = dict(host='db.example', hostaddr=None, port=5432, database='d', user='u', password='p',
                  sslmode='verify-full', ssl_rootcert=__file__, connect_timeout=10)
    params.update(overrides)
    return params


@pytest.mark.parametrize('overrides,needle', [
    ({}, None),
    ({'host': ''}, 'host must not be empty'),
    ({'host': 'a b'}, 'single host name'),
    ({'hostaddr': '10.0.0.300'}, 'hostaddr must be a numeric'),
    ({'hostaddr': '::1'}, None),
    ({'port': 0}, 'port must be between'),
    ({'connect_timeout': 0}, 'connect_timeout must be between'),
    ({'sslmode': 'verify-ca', 'ssl_rootcert': None}, 'needs ssl_rootcert'),
    ({'sslmode': 'require', 'ssl_rootcert': None}, None),
    ({'sslmode': 'require', 'ssl_rootcert': '/nonexistent'}, 'does not exist'),
    ({'sslmode': 'bogus'}, 'sslmode must be one of'),
    ({'user': ''}, 'user must not be empty'),
])
def test_validate_common(pg_gate, overrides, needle):
    errors = pg_gate.validate_common(_params(**overrides))
    if needle is None:
        assert errors == []
    else:
        assert any(needle in e for e in errors), errors


def test_check_range(pg_gate):
    errors = []
    pg_gate.check_range(errors, {'a': 5, 'b': None, 'c': None}, 'a', 1, 4)
    pg_gate.check_range(errors, {'b': None}, 'b', 1, 4)
    pg_gate.check_range(errors, {'c': None}, 'c', 1, 4, allow_none=False)
    assert errors == ['a must be between 1 and 4, got 5', 'c is required']


def test_tls_context_mirrors_libpq(pg_gate, pki):
    full, verified = pg_gate.tls_context('verify-full', str(pki.ca))
    assert verified and full.check_hostname and full.verify_mode == ssl.CERT_REQUIRED
    assert not full.verify_flags & ssl.VerifyFlags.VERIFY_X509_STRICT
    ca_only, verified = pg_gate.tls_context('verify-ca', str(pki.ca))
    assert verified and not ca_only.check_hostname
    require_with_ca, verified = pg_gate.tls_context('require', str(pki.ca))
    assert verified and require_with_ca.verify_mode == ssl.CERT_REQUIRED  # libpq: acts like verify-ca
    prefer, verified = pg_gate.tls_context('prefer', None)
    assert not verified and prefer.verify_mode == ssl.CERT_NONE


def test_connect_kwargs_never_builds_a_dsn(pg_gate):
    kwargs = pg_gate.connect_kwargs(dict(_params(password="p}|<?%'\\ x"), application_name='g'), '10.0.0.1')
    assert kwargs['password'] == "p}|<?%'\\ x"
    assert kwargs['hostaddr'] == '10.0.0.1' and kwargs['host'] == 'db.example'
    assert kwargs['sslrootcert'] == __file__ and kwargs['connect_timeout'] == 10
    assert 'password' not in pg_gate.connect_kwargs(dict(_params(password=None), application_name='g'))


def test_gate_stage_bookkeeping(pg_gate):
    gate = pg_gate.Gate(('a', 'b', 'c'))
    with gate.stage('a'):
        pass
    with pytest.raises(pg_gate.GateError), gate.stage('b'):
        raise OSError('boom')
    assert gate.stages['a']['ok'] is True and gate.stages['a']['skipped'] is False
    assert gate.stages['b'] == {'ok': False, 'ms': gate.stages['b']['ms'], 'error': 'boom', 'skipped': False}
    assert gate.stages['c'] == {'ok': False, 'ms': None, 'error': None, 'skipped': True}
    assert gate.error_stage == 'b' and gate.reasons == ['b: boom'] and not gate.go
    # A GateError may blame another stage (a TLS error seen while authenticating).
    other = pg_gate.Gate(('tls', 'auth'))
    with pytest.raises(pg_gate.GateError), other.stage('auth'):
        raise pg_gate.GateError('certificate verify failed', 'tls')
    assert other.error_stage == 'tls' and other.stages['auth']['error'] == 'certificate verify failed'


def test_load_driver_reports_what_to_install(pg_gate, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_drivers(name, *args, **kwargs):
        if name in ('psycopg', 'psycopg2'):
            raise ImportError(f'no module named {name}')
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, '__import__', no_drivers)
    driver, error = pg_gate.try_load_driver('auto')
    assert driver is None and 'python3-psycopg2' in str(error) and 'psycopg:' in str(error)


def _load_module(name):
    from tests.gates.gates_modrun import alias_module_utils

    alias_module_utils()
    spec = importlib.util.spec_from_file_location(f'gate_module_{name}', ROOT / 'plugins/modules' / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _compare_options(doc_options, spec, path=''):
    assert set(doc_options) == set(spec), f'{path}: documented {sorted(doc_options)} vs spec {sorted(spec)}'
    for name, opt in spec.items():
        doc = doc_options[name]
        where = f'{path}{name}'
        assert doc.get('description'), f'{where}: no description'
        assert doc.get('type', 'str') == opt.get('type', 'str'), where
        assert bool(doc.get('required', False)) == bool(opt.get('required', False)), where
        assert doc.get('default') == opt.get('default'), f'{where}: {doc.get("default")!r} vs {opt.get("default")!r}'
        assert doc.get('choices') == opt.get('choices'), where
        assert sorted(doc.get('aliases', [])) == sorted(opt.get('aliases', [])), where
        assert doc.get('elements') == opt.get('elements'), where
        if 'options' in opt:
            _compare_options(doc['suboptions'], opt['options'], where + '.')


@pytest.mark.parametrize('name', ['pg_reachability', 'pg_pool_health'])
def test_documentation_matches_argument_spec(name):
    import yaml

    module = _load_module(name)
    doc = yaml.safe_load(module.DOCUMENTATION)
    assert doc['module'] == name
    spec = module.argument_spec()
    _compare_options(doc['options'], spec)
    assert spec['password']['no_log'] is True
    yaml.safe_load(module.EXAMPLES)
    returned = yaml.safe_load(module.RETURN)
    for key in ('go', 'reasons', 'gate_warnings', 'error_stage', 'stages', 'summary'):
        assert returned[key]['returned'] == 'always', key
    # Every key of the result skeleton is documented.
    assert set(module.skeleton()) <= set(returned), set(module.skeleton()) - set(returned)


def _documented_options(doc):
    """The module's options with those of its doc fragments (plugins/doc_fragments/)."""
    import yaml

    options = {}
    for fragment in doc.get('extends_documentation_fragment', []):
        spec = importlib.util.spec_from_file_location(f'fragment_{fragment}', ROOT / 'plugins/doc_fragments' /
                                                      f'{fragment}.py')
        loaded = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(loaded)
        options.update(yaml.safe_load(loaded.ModuleDocFragment.DOCUMENTATION)['options'])
    return {**options, **doc['options']}


@pytest.mark.parametrize(('name', 'secret', 'returns'), [
    ('pg_backup', 'password', {'path', 'manifest', 'stage', 'timings_s'}),
    ('pg_restore_test', 'identity', {'ok', 'msg', 'stage', 'server_version', 'duration_s', 'row_counts', 'timings_s'}),
    ('session_keys', 'password', {'level', 'expired', 'buckets', 'companies', 'deleted', 'would_delete', 'msg'}),
])
def test_db_module_documentation_matches_argument_spec(name, secret, returns):
    import yaml

    module = _load_module(name)
    doc = yaml.safe_load(module.DOCUMENTATION)
    assert doc['module'] == name
    spec = module.argument_spec()
    _compare_options(_documented_options(doc), spec)
    assert spec[secret]['no_log'] is True
    yaml.safe_load(module.EXAMPLES)
    assert returns <= set(yaml.safe_load(module.RETURN))
