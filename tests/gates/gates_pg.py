"""Real PostgreSQL servers for the gate tests and benchmarks (no pytest in here).

``make_pki`` writes a test CA, a second "wrong" CA and a server certificate valid for
DNS:localhost and IP:127.0.0.1 only; ``PgServer`` runs initdb/pg_ctl from the PostgreSQL
server binaries (as the ``postgres`` user when we are root) with TLS on or off, listening
on 127.0.0.1 and 127.0.0.2; ``setup_roles`` creates the roles and databases the tests use.
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import os
import pathlib
import shutil
import socket
import subprocess
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]
PG_BIN = pathlib.Path(os.environ.get('PG_GATES_BIN', '/usr/lib/postgresql/15/bin'))
IS_ROOT = os.geteuid() == 0

# Characters that break naive shell quoting and URL/DSN building (BRIEF.md).
USER_PASSWORD = "P}a|s<s?w%o'r\"d\\ x"
LIMITED_PASSWORD = 'limited-%|}<?'
USER = 'gate_user'
DATABASE = 'gate_db'
LIMITED_ROLE = 'gate_limited'
LIMITED_ROLE_LIMIT = 5
LIMITED_DATABASE = 'gate_limited_db'
LIMITED_DATABASE_LIMIT = 4
MAX_CONNECTIONS = 20
SUPERUSER_RESERVED = 3


def free_port(host: str = '127.0.0.1') -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


# ----------------------------------------------------------------------------- PKI


@dataclasses.dataclass
class Pki:
    base: pathlib.Path
    ca: pathlib.Path
    wrong_ca: pathlib.Path
    server_cert: pathlib.Path
    server_key: pathlib.Path
    not_after: datetime.datetime


def make_pki(base: pathlib.Path) -> Pki:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def make_ca(cn: str):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name(cn))
            .issuer_name(name(cn))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=True,
                    crl_sign=True, encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        return key, cert

    ca_key, ca_cert = make_ca('gate-test CA')
    _wrong_key, wrong_cert = make_ca('gate-test WRONG CA')

    server_key = ec.generate_private_key(ec.SECP256R1())
    not_after = (now + datetime.timedelta(days=30)).replace(microsecond=0)
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(name('localhost'))
        .issuer_name(ca_cert.subject)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(not_after)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName('localhost'), x509.IPAddress(ipaddress.ip_address('127.0.0.1'))]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )

    pem = serialization.Encoding.PEM
    paths = {
        'ca': base / 'ca.crt',
        'wrong_ca': base / 'wrong-ca.crt',
        'server_cert': base / 'server.crt',
        'server_key': base / 'server.key',
    }
    paths['ca'].write_bytes(ca_cert.public_bytes(pem))
    paths['wrong_ca'].write_bytes(wrong_cert.public_bytes(pem))
    paths['server_cert'].write_bytes(server_cert.public_bytes(pem))
    paths['server_key'].write_bytes(
        server_key.private_bytes(
            pem, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
        )
    )
    for path in paths.values():
        path.chmod(0o644)
    paths['server_key'].chmod(0o600)
    return Pki(base=base, not_after=not_after, **paths)


# ----------------------------------------------------------------------------- servers


def _as_postgres(cmd: list[str]) -> list[str]:
    return ['runuser', '-u', 'postgres', '--', *cmd] if IS_ROOT else cmd


def _chown_postgres(path: pathlib.Path) -> None:
    if IS_ROOT:
        shutil.chown(path, 'postgres', 'postgres')


@dataclasses.dataclass
class PgServer:
    name: str
    base: pathlib.Path
    port: int
    tls: bool
    pki: Pki | None = None

    @property
    def data(self) -> pathlib.Path:
        return self.base / 'data'

    @property
    def sockdir(self) -> pathlib.Path:
        return self.base / 'sock'

    @property
    def log(self) -> pathlib.Path:
        return self.base / 'server.log'

    def start(self) -> None:
        self.base.mkdir(mode=0o755)
        self.sockdir.mkdir(mode=0o755)
        _chown_postgres(self.base)
        _chown_postgres(self.sockdir)
        subprocess.run(
            _as_postgres([
                str(PG_BIN / 'initdb'), '-D', str(self.data), '-U', 'postgres', '-E', 'UTF8',
                '--locale=C', '--auth-local=trust', '--auth-host=reject', '--no-sync',
            ]),
            check=True, capture_output=True, timeout=120,
        )
        conf = [
            "listen_addresses = '127.0.0.1,127.0.0.2'",
            f'port = {self.port}',
            f"unix_socket_directories = '{self.sockdir}'",
            f'max_connections = {MAX_CONNECTIONS}',
            f'superuser_reserved_connections = {SUPERUSER_RESERVED}',
            "password_encryption = 'scram-sha-256'",
            'shared_buffers = 16MB',
            'fsync = off',
            'synchronous_commit = off',
            'full_page_writes = off',
            "log_min_messages = 'warning'",
        ]
        if self.tls:
            key = self.base / 'server.key'
            shutil.copy(self.pki.server_key, key)
            key.chmod(0o600)
            _chown_postgres(key)
            conf += [
                'ssl = on',
                f"ssl_cert_file = '{self.pki.server_cert}'",
                f"ssl_key_file = '{key}'",
                f"ssl_ca_file = '{self.pki.ca}'",
            ]
            hba = ['local all all trust',
                   'hostssl all all 127.0.0.1/32 scram-sha-256',
                   'hostssl all all 127.0.0.2/32 scram-sha-256']
        else:
            conf.append('ssl = off')
            hba = ['local all all trust',
                   'host all all 127.0.0.1/32 scram-sha-256']
        with (self.data / 'postgresql.conf').open('a') as fh:
            fh.write('\n# gate tests\n' + '\n'.join(conf) + '\n')
        (self.data / 'pg_hba.conf').write_text('\n'.join(hba) + '\n')
        result = subprocess.run(
            _as_postgres([str(PG_BIN / 'pg_ctl'), '-D', str(self.data), '-l', str(self.log),
                          '-w', '-t', '60', 'start']),
            capture_output=True, text=True, timeout=90,
        )
        if result.returncode != 0:
            log = self.log.read_text() if self.log.exists() else ''
            raise RuntimeError(f'{self.name} did not start: {result.stdout}{result.stderr}\n{log}')

    def stop(self) -> None:
        subprocess.run(
            _as_postgres([str(PG_BIN / 'pg_ctl'), '-D', str(self.data), '-m', 'immediate', '-w', 'stop']),
            capture_output=True, timeout=60, check=False,
        )

    def admin(self, dbname: str = 'postgres'):
        """Superuser connection over the unix socket (psycopg 3, autocommit)."""
        import psycopg

        return psycopg.connect(host=str(self.sockdir), port=self.port, user='postgres',
                               dbname=dbname, autocommit=True)

    def connect(self, user: str = USER, password: str = USER_PASSWORD, dbname: str = DATABASE,
                **kwargs):
        """A client connection over TCP (TLS when the server has it), psycopg 3."""
        import psycopg

        params = dict(host='127.0.0.1', port=self.port, user=user, password=password, dbname=dbname,
                      sslmode='verify-full' if self.tls else 'disable', connect_timeout=5)
        if self.tls:
            params['sslrootcert'] = str(self.pki.ca)
        params.update(kwargs)
        return psycopg.connect(**params)

    def client_backends(self) -> int:
        with self.admin() as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' "
                'AND pid <> pg_backend_pid()'
            ).fetchone()
        return row[0]

    def wait_quiet(self, expected: int = 0, timeout: float = 10.0) -> None:
        """Wait until only ``expected`` client backends remain (closed ones exit asynchronously)."""
        deadline = time.monotonic() + timeout
        while True:
            count = self.client_backends()
            if count == expected or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        if count != expected:
            raise AssertionError(f'{count} client backends still connected, expected {expected}')

    def module_args(self, **overrides) -> dict:
        args = {
            'host': '127.0.0.1', 'port': self.port, 'database': DATABASE, 'user': USER,
            'password': USER_PASSWORD, 'connect_timeout': 5,
        }
        if self.tls:
            args.update(sslmode='verify-full', ssl_rootcert=str(self.pki.ca))
        else:
            args.update(sslmode='disable')
        args.update(overrides)
        return args


def setup_roles(server: PgServer) -> None:
    from psycopg import sql

    with server.admin() as conn:
        conn.execute(sql.SQL('CREATE ROLE {} LOGIN PASSWORD {}').format(
            sql.Identifier(USER), sql.Literal(USER_PASSWORD)))
        conn.execute(sql.SQL('CREATE DATABASE {} OWNER {}').format(
            sql.Identifier(DATABASE), sql.Identifier(USER)))
        conn.execute(sql.SQL('CREATE ROLE {} LOGIN PASSWORD {} CONNECTION LIMIT {}').format(
            sql.Identifier(LIMITED_ROLE), sql.Literal(LIMITED_PASSWORD), sql.Literal(LIMITED_ROLE_LIMIT)))
        conn.execute(sql.SQL('CREATE DATABASE {} OWNER {} CONNECTION LIMIT {}').format(
            sql.Identifier(LIMITED_DATABASE), sql.Identifier(USER), sql.Literal(LIMITED_DATABASE_LIMIT)))
    with server.admin(DATABASE) as conn:
        conn.execute(sql.SQL('CREATE TABLE lockme (id int)'))
        conn.execute(sql.SQL('ALTER TABLE lockme OWNER TO {}').format(sql.Identifier(USER)))


