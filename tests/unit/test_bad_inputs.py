"""Every bad input refused before the first change, with a message that names it.

Inventory values and role inputs (as -e over the lab inventory): provision.yml and deploy.yml
check every role they will run (its argument spec, playbooks/tasks/validate.yml) and what specs
cannot express, on the controller, before any task reaches a host. The runs here point every
host at a container that does not exist (`ansible_host`): a task that tried to reach one would
be unreachable, so "unreachable=0 changed=0" proves that nothing on any host was touched. The
bad inputs of a group are given together (one run each: every problem is reported at once).
CLI arguments are refused by aiadmin-ops before it asks or runs anything.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from aiadmin_ops import cli as cli_mod
from tests.helpers import ROOT

VAULT = f"lab@{ROOT / 'inventories/lab/vault-password.LAB-ONLY.txt'}"
NOWHERE = {"ansible_host": "aiadmin-no-such-container"}
SSH = {"ansible_connection": "ssh", "ansible_port": 22, "ansible_user": "deploy"}

# group -> (playbook, extra vars); each case: (group, expected message)
GROUPS = {
    "provision-a": ("playbooks/provision.yml", {
        "redis_bind": "0.0.0.0",  # noqa: S104 - the bad input under test
        "aiadmin_pm2_processes": ["ai-admin-api", "ai-admin-api", "../escape"],
        "aiadmin_db_host": "10.9.9.9",
        "aiadmin_api_port": 70000,
        "base_sshd_extra_settings": {"PubkeyAuthentication": "no"},
        "nodejs_install_method": "bogus",
        "redis_port": "abc",
        "aiadmin_egress_probe_url": "ftp://10.213.10.40/probe",
        # Plaintext VLESS: refused everywhere, the lab included (the lab's own CA is still set).
        "aiadmin_xray_stream_settings": {"network": "tcp", "security": "none"},
        "pm2_logrotate_frequency": "hourly",
        "redis_appendfsync": "sometimes",
        "xray_log_level": "loud",
        "xray_install_method": "curl",
        "base_postgresql_pgdg": "maybe",
        "base_postgresql_pgdg_key_fingerprint": "ACCC4CF8",  # a key id, not a fingerprint
        "aiadmin_db_port": 0,
        "backup_interval_minutes": "hourly",
        "pm2_logrotate_hold_max": "long",
        "xray_socks_port": "socks",
        "base_apt_retries": "few",
        "pg_ca_cert_min_days": "soon",
    }),
    "provision-b": ("playbooks/provision.yml", {
        **SSH,
        "aiadmin_pm2_processes": "ai-admin-api",
        "aiadmin_egress_probe_url": "http://user:secret@10.213.10.40/probe",
        "aiadmin_db_ca_url": "file:///etc/ssl/certs/ca.pem",
        "aiadmin_api_port": 22,
        "base_sshd_extra_settings": {"Port": 2222, "AllowUsers": "alice"},
        "base_firewall_ssh_port": 2200,
        "redis_bind": "127.0.0.1 10.213.20.5",
        "aiadmin_xray_server_port": "https",
        "aiadmin_xray_stream_settings": {"network": "tcp", "security": "none"},
        "private_network_db_sslmode": "sometimes",
        "redis_renamed_commands": "FLUSHALL",
        "xray_stream_settings": "tls",
    }),
    "provision-c": ("playbooks/provision.yml", {
        **SSH, "ansible_user": "root",
        "base_sshd_extra_settings": {"PermitRootLogin": "no"},
        "aiadmin_pm2_processes": [],
        "aiadmin_db_network_cidr": "10.213.20.0/33",
        "nodejs_major": "twenty",
        "pm2_npm_environment": "npm_config_registry",
        "aiadmin_xray_stream_settings": {
            "network": "tcp", "security": "tls",
            "tlsSettings": {"serverName": "egress.public.lab.test", "allowInsecure": True},
        },
        "aiadmin_xray_tls_ca": "not a certificate",
    }),
    "deploy": ("playbooks/deploy.yml", {
        "aiadmin_app_env": {"JWT_SECRET": "", "COMPANY_ID": "1001"},
        "aiadmin_app_keep_releases": "many",
        "aiadmin_db_pool_size": "x",
        "aiadmin_pm2_processes": ["ai-admin-api", "ai admin"],
        "aiadmin_db_sslmode": "sometimes",
        "app_start": "perhaps",
        "app_demo_crash_after_ms": "soon",
    }),
}

CASES = [
    ("provision-a", "redis_bind 0.0.0.0 is not loopback"),
    ("provision-a", "aiadmin_pm2_processes names ai-admin-api twice"),
    ("provision-a", 'aiadmin_pm2_processes: "../escape" is not a safe process name'),
    ("provision-a", "aiadmin_db_host 10.9.9.9 is not in the private network 10.213.20.0/24"),
    ("provision-a", "aiadmin_api_port must be a port number"),
    ("provision-a", "sshd PubkeyAuthentication no"),
    ("provision-a", "nodejs: value of nodejs_install_method must be one of: nodesource, distro, tarball, got: bogus"),
    ("provision-a", "redis: argument 'redis_port' is of type str and we were unable to convert to int"),
    ("provision-a", "aiadmin_egress_probe_url must be an http(s) URL"),
    ("provision-a", "xray_stream_settings.security none: the outbound must use tls or reality (plaintext is refused, "
                    "the lab included)"),
    ("provision-a", "aiadmin_xray_tls_ca is set but xray_stream_settings.security is not tls"),
    ("provision-a", "pm2: value of pm2_logrotate_frequency must be one of: daily, weekly, monthly, got: hourly"),
    ("provision-a", "redis: value of redis_appendfsync must be one of"),
    ("provision-a", "xray: value of xray_log_level must be one of"),
    ("provision-a", "xray: value of xray_install_method must be one of: release, pypi, got: curl"),
    ("provision-a", "base: value of base_postgresql_pgdg must be one of: auto, always, never, got: maybe"),
    ("provision-a", 'base_postgresql_pgdg_key_fingerprint "ACCC4CF8" is not an OpenPGP fingerprint (40 or 64 '
                    "hexadecimal digits)"),
    ("provision-a", "aiadmin_db_port must be a port number"),
    ("provision-a", "backup: argument 'backup_interval_minutes' is of type str and we were unable to convert to int"),
    ("provision-a", "pm2: argument 'pm2_logrotate_hold_max' is of type str"),
    ("provision-a", "xray: argument 'xray_socks_port' is of type str"),
    ("provision-a", "base: argument 'base_apt_retries' is of type str"),
    ("provision-a", "pg_ca_cert: argument 'pg_ca_cert_min_days' is of type str"),
    ("provision-b", "aiadmin_pm2_processes must be a non-empty list"),
    ("provision-b", "aiadmin_egress_probe_url must be an http(s) URL without credentials"),
    ("provision-b", "aiadmin_db_ca_url must be an http(s) URL"),
    ("provision-b", "aiadmin_api_port is the SSH port"),
    ("provision-b", "sshd Port 2222 is not the port Ansible uses (22)"),
    ("provision-b", "sshd AllowUsers leaves out the user Ansible logs in as"),
    ("provision-b", "base_firewall_ssh_port 2200 is not the port Ansible uses (22)"),
    ("provision-b", "redis_bind 10.213.20.5 is not loopback"),
    ("provision-b", "aiadmin_xray_server_port must be a port number"),
    ("provision-b", "xray: argument 'xray_server_port' is of type str"),
    ("provision-b", "private_network: value of private_network_db_sslmode must be one of"),
    ("provision-b", "xray: argument 'xray_stream_settings' is of type str"),
    ("provision-b", "redis: argument 'redis_renamed_commands' is of type str and we were unable to convert to dict"),
    ("provision-c", "sshd PermitRootLogin no while Ansible logs in as root"),
    ("provision-c", "aiadmin_pm2_processes must be a non-empty list"),
    ("provision-c", "aiadmin_db_network_cidr 10.213.20.0/33 is not a network"),
    ("provision-c", "nodejs: argument 'nodejs_major' is of type str"),
    ("provision-c", "pm2: argument 'pm2_npm_environment' is of type str and we were unable to convert to dict"),
    ("provision-c", "xray_stream_settings.tlsSettings.allowInsecure: the server certificate must be verified"),
    ("provision-c", "aiadmin_xray_tls_ca is not a PEM certificate"),
    ("deploy", "aiadmin_app_env.JWT_SECRET is empty or missing"),
    ("deploy", "aiadmin_app_env.MASTER_KEY is empty or missing"),
    ("deploy", "app: argument 'app_keep_releases' is of type str"),
    ("deploy", "app: argument 'app_db_pool_size' is of type str"),
    ("deploy", 'aiadmin_pm2_processes: "ai admin" is not a safe process name'),
    ("deploy", "app: value of app_db_sslmode must be one of"),
    ("deploy", "app: argument 'app_start' is of type str"),
    ("deploy", "app: argument 'app_demo_crash_after_ms' is of type str"),
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, subprocess.CompletedProcess]:
    """One run per group (each reports every problem of its group at once)."""
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_FORCE_COLOR="0", CONTAINERS_CONF=str(ROOT / "containers.conf"))
    out = {}
    for name, (playbook, extra) in GROUPS.items():
        path: Path = tmp_path_factory.mktemp("bad") / f"{name}.json"
        path.write_text(json.dumps({**extra, **NOWHERE}))
        out[name] = subprocess.run(
            [str(ROOT / ".venv/bin/ansible-playbook"), "-i", "inventories/lab/hosts.yml", "--vault-id", VAULT,
             playbook, "-l", "lab-new", "-e", f"@{path}"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    return out


def flat(text: str) -> str:
    """Ansible's YAML output folds long messages over lines; one line, single quotes unescaped."""
    return " ".join(text.split()).replace("''", "'")


@pytest.mark.parametrize(("group", "message"), CASES, ids=[f"{g}-{i}" for i, (g, _) in enumerate(CASES)])
def test_bad_input_refused_before_any_change(runs, group, message):
    proc = runs[group]
    out = flat(proc.stdout + proc.stderr)
    assert proc.returncode == 2, out[-3000:]
    assert "Bad inputs for lab-new (nothing was changed)" in out, out[-3000:]
    assert message in out, out[-3000:]
    assert "unreachable=0" in out and "changed=0" in out, "a host was reached or changed"
    assert "TASK [private_network" not in out and "TASK [app" not in out, "a role ran before the refusal"


def test_no_secret_value_in_the_refusals(runs, vault):
    text = "".join(p.stdout + p.stderr for p in runs.values())
    for name, value in vault.items():
        if isinstance(value, str) and len(value) >= 6:
            assert value not in text, f"{name}'s value is in a refusal"


CLI_CASES = [
    (["maintain", "--job", "vacuum"], "invalid choice: 'vacuum'"),
    (["maintain", "--job", "weekly", "--watch-seconds", "0"], "0 must be at least 1"),
    (["maintain", "--job", "weekly", "--watch-seconds", "soon"], "'soon' is not a whole number"),
    (["health", "--samples", "0"], "0 must be at least 1"),
    (["health", "--watch", "-5"], "-5 must be at least 1"),
    (["migrate", "--timeout", "forever"], "invalid int value: 'forever'"),
    (["lab", "explode"], "invalid choice: 'explode'"),
    (["teleport"], "invalid choice: 'teleport'"),
]


@pytest.mark.parametrize(("argv", "message"), CLI_CASES, ids=[f"{a[0]}-{i}" for i, (a, _) in enumerate(CLI_CASES)])
def test_bad_cli_argument_refused(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        cli_mod.build_parser().parse_args(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "message"), [
    (["maintain", "--job", "weekly", "--job", "keys"], "--job weekly runs alone"),
    (["maintain", "--version", "v1.2.0"], "--version and --watch-seconds are for --job weekly"),
])
def test_bad_cli_combination_refused(argv, message):
    with pytest.raises(SystemExit, match=message):
        cli_mod.playbook_of(cli_mod.build_parser().parse_args(argv))
