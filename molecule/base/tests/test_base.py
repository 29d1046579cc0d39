"""base, pg_ca_cert and redis, checked from the outside."""

import datetime
import hashlib
import json
import os
import pathlib
import subprocess
import time

import pytest
import testinfra
from conftest import PROJECT, podman_exec_env
from cryptography import x509

INSTANCES = ['mol-base-d12', 'mol-base-d13']
PROBE_FROM = 'lab-old'  # another lab container, public network only
DB_PRIVATE = '10.213.20.10'
# lab-db's Molecule cluster (inventories/lab/group_vars/molecule.yml), not the lab's main one
DB_PORT = 5433
LAB_STATE = pathlib.Path(os.environ.get('AIADMIN_LAB_STATE', PROJECT / 'lab/state'))


@pytest.fixture(params=INSTANCES)
def name(request):
    return request.param


@pytest.fixture
def host(name):
    return testinfra.get_host(f'podman://{name}')


def public_ip(name):
    info = json.loads(subprocess.run(['podman', 'inspect', name], capture_output=True, text=True, check=True).stdout)
    return info[0]['NetworkSettings']['Networks']['aiadmin-lab-public']['IPAddress']


def reachable_from_lab(ip, port):
    probe = subprocess.run(['podman', 'exec', PROBE_FROM, 'nc', '-z', '-w', '2', ip, str(port)], capture_output=True)
    return probe.returncode == 0


# --- base -----------------------------------------------------------------------------

def test_app_user_and_dir(host):
    user = host.user('aiadmin')
    assert user.exists and user.home == '/home/aiadmin'
    assert host.file('/home/aiadmin').is_directory
    app_dir = host.file('/opt/ai-admin')
    assert app_dir.is_directory and app_dir.user == 'aiadmin' and app_dir.group == 'aiadmin'


def test_apt_retries_downloads(host):
    # The role's file, and the setting apt itself reads (the lab image's own 10aiadmin-lab-retries
    # is read first: the role's 80aiadmin-retries decides).
    assert host.file('/etc/apt/apt.conf.d/80aiadmin-retries').contains('^Acquire::Retries "10";$')
    assert 'Acquire::Retries "10";' in host.check_output('apt-config dump Acquire::Retries')


def test_timezone(host):
    assert host.file('/etc/localtime').linked_to == '/usr/share/zoneinfo/Europe/Moscow'
    assert host.check_output('date +%Z') == 'MSK'


def test_sshd_hardened(host):
    assert host.service('ssh').is_running
    effective = dict(line.split(' ', 1) for line in host.check_output('sshd -T').splitlines() if ' ' in line)
    assert effective['passwordauthentication'] == 'no'
    assert effective['permitrootlogin'] in ('prohibit-password', 'without-password')
    assert effective['kbdinteractiveauthentication'] == 'no'
    assert effective['x11forwarding'] == 'no'
    assert effective['maxauthtries'] == '3'


def test_postgresql_client_and_psycopg(host):
    version = host.check_output('psql --version')  # psql (PostgreSQL) 15.x ...
    assert int(version.split()[2].split('.')[0]) >= 15
    host.check_output("python3 -c 'import psycopg2'")


def test_firewall_ruleset_active(host):
    assert host.service('nftables').is_enabled
    table = host.check_output('nft list table inet aiadmin')
    assert 'policy drop' in table
    assert 'tcp dport 22 accept' in table and 'tcp dport 3000 accept' in table


def test_firewall_only_ssh_and_listed_ports_reachable(host, name):
    ip = public_ip(name)
    # Two throwaway listeners on all addresses: 3000 is allowed by the inventory, 8099 is not.
    for port in (3000, 8099):
        host.run(f'setsid -f timeout 30 python3 -m http.server {port} --bind 0.0.0.0 >/dev/null 2>&1')
    for _ in range(20):
        if host.socket('tcp://0.0.0.0:8099').is_listening and host.socket('tcp://0.0.0.0:3000').is_listening:
            break
        time.sleep(0.25)
    assert reachable_from_lab(ip, 22)
    assert reachable_from_lab(ip, 3000)
    assert not reachable_from_lab(ip, 8099)
    # The listener really was up: from inside (loopback) it answers.
    assert host.run('nc -z -w 2 127.0.0.1 8099').rc == 0


# --- pg_ca_cert -------------------------------------------------------------------------

def test_ca_installed_with_pinned_checksum(host):
    ca = host.file('/root/.cloud-certs/root.crt')
    assert ca.exists and ca.mode == 0o644 and ca.user == 'root'
    assert host.file('/root/.cloud-certs').mode == 0o700
    expected = (LAB_STATE / 'ca.sha256').read_text().split()[0]
    assert ca.sha256sum == expected
    assert hashlib.sha256((LAB_STATE / 'ca.crt').read_bytes()).hexdigest() == expected
    assert not host.file('/root/.cloud-certs/.root.crt.download').exists


def test_verify_full_connection_with_installed_ca(name, vault):
    conninfo = (f'host={DB_PRIVATE} port={DB_PORT} dbname=ai_admin user=ai_admin '
                'sslmode=verify-full sslrootcert=/root/.cloud-certs/root.crt connect_timeout=5')
    res = podman_exec_env(name, ['psql', conninfo, '-Atc', 'SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()'],
                          {'PGPASSWORD': vault['vault_aiadmin_db_password']})
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == 't'


def test_ca_report_matches_the_certificate(host, name):
    ephemeral = pathlib.Path(os.environ['MOLECULE_EPHEMERAL_DIRECTORY'])
    report = json.loads((ephemeral / f'ca-report-{name}.json').read_text())
    cert = x509.load_pem_x509_certificate(host.file('/root/.cloud-certs/root.crt').content)
    days_left = (cert.not_valid_after_utc - datetime.datetime.now(datetime.timezone.utc)).days
    assert report['path'] == '/root/.cloud-certs/root.crt'
    assert abs(int(report['days_left']) - days_left) <= 1
    assert report['verify_full'] is True
    assert report['tls_version'] in ('TLSv1.2', 'TLSv1.3')


# --- redis ----------------------------------------------------------------------------

def test_redis_listens_on_loopback_only(host, name):
    assert host.service('redis-server').is_running
    listeners = host.check_output("ss -Htln '( sport = :6379 )'")
    local = sorted(line.split()[3] for line in listeners.splitlines())
    assert local == ['127.0.0.1:6379', '[::1]:6379']
    assert not reachable_from_lab(public_ip(name), 6379)


def test_redis_requires_password(host, name, vault):
    unauth = host.run('redis-cli -h 127.0.0.1 ping')
    assert 'NOAUTH' in unauth.stdout + unauth.stderr
    auth = podman_exec_env(name, ['redis-cli', '--no-auth-warning', '-h', '127.0.0.1', 'ping'],
                           {'REDISCLI_AUTH': vault['vault_aiadmin_redis_password']})
    assert auth.stdout.strip() == 'PONG'


@pytest.mark.parametrize('command', ['FLUSHALL', 'FLUSHDB', 'CONFIG GET maxmemory', 'DEBUG SLEEP 0', 'KEYS *'])
def test_redis_dangerous_commands_refused(name, vault, command):
    res = podman_exec_env(name, ['redis-cli', '--no-auth-warning', '-h', '127.0.0.1', *command.split()],
                          {'REDISCLI_AUTH': vault['vault_aiadmin_redis_password']})
    assert 'unknown command' in res.stdout + res.stderr


def test_redis_persistence_and_config(host, name, vault):
    info = podman_exec_env(name, ['redis-cli', '--no-auth-warning', '-h', '127.0.0.1', 'INFO', 'persistence'],
                           {'REDISCLI_AUTH': vault['vault_aiadmin_redis_password']}).stdout
    assert 'aof_enabled:1' in info
    conf = host.file('/etc/redis/redis.conf')
    assert conf.user == 'root' and conf.group == 'redis' and conf.mode == 0o640
    content = conf.content_string
    assert 'appendonly yes' in content and '\nsave 3600 1' in content
    assert 'supervised systemd' in content and 'protected-mode yes' in content


def test_redis_password_not_in_process_list(host, vault):
    leaked = vault['vault_aiadmin_redis_password'] in host.check_output('ps -eo args')
    assert not leaked


def test_overcommit_sysctl_file(host):
    sysctl = host.file('/etc/sysctl.d/60-redis.conf')
    assert sysctl.mode == 0o644
    assert 'vm.overcommit_memory=1' in sysctl.content_string
