"""Over SSH, as production reaches its hosts: a non-root deploy user with sudo, keys made at
`lab up` (lab/ssh.yml, LAB-ONLY), the hosts' own keys pinned, inventories/lab/ssh.yml.

Markers `ssh` and `prepared`: `make test` runs these after the window story is prepared (lab-new provisioned
over podman exec), so provisioning the same host again over SSH must change nothing.
"""

from __future__ import annotations

import os
import re
import subprocess
import time

import pytest

from tests.helpers import LAB_VAULT_PASSWORD, ROOT, podman

pytestmark = [pytest.mark.lab, pytest.mark.ssh, pytest.mark.prepared]

BIN = ROOT / ".venv/bin"
SSH_DIR = ROOT / "lab/state/ssh"
NEW_PUBLIC = "10.213.10.30"
ENV = dict(os.environ, CONTAINERS_CONF=str(ROOT / "containers.conf"), ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"),
           PATH=f"{BIN}:{os.environ.get('PATH', '')}")


def ssh(*command: str, user: str = "deploy", known_hosts: str = "", options: tuple = ()) -> subprocess.CompletedProcess:
    argv = ["ssh", "-i", str(SSH_DIR / "id_ed25519"), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
            "-o", f"UserKnownHostsFile={known_hosts or SSH_DIR / 'known_hosts'}", "-o", "StrictHostKeyChecking=yes",
            "-o", "ConnectTimeout=5", *options, f"{user}@{NEW_PUBLIC}", *command]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)


def play_over_ssh(playbook: str, *extra: str, host: str = "lab-new") -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", "inventories/lab/hosts.yml", "-i", "inventories/lab/ssh.yml",
         "--vault-id", f"lab@{LAB_VAULT_PASSWORD}", playbook, "--limit", host, *extra],
        capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=900, check=False,
    )


def recap(stdout: str, host: str) -> dict[str, int]:
    match = re.search(rf"^{re.escape(host)}\s*:\s*(.*)$", stdout, re.M)
    assert match, stdout[-3000:]
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", match.group(1))}


def changed_tasks(stdout: str) -> str:
    """Each task that reported a change, with its result line."""
    tasks = re.findall(r"^(TASK \[.*?\]).*\n(?:(?!TASK \[).*\n)*?(changed: .*)$", stdout, re.M)
    return "\n".join(f"{task} {line}" for task, line in tasks)[-3000:]


def sshd_logins_since(since: str) -> str:
    return podman("exec", "lab-new", "journalctl", "-q", "-o", "cat", "-u", "ssh.service", "--since", since,
                  check=False).stdout


@pytest.fixture(scope="module")
def since(lab) -> str:
    return podman("exec", "lab-new", "date", "+%Y-%m-%d %H:%M:%S").stdout.strip()


def test_deploy_user_is_not_root_and_becomes_root_with_sudo(since):
    who = ssh("id", "-u", "&&", "sudo", "-n", "id", "-u")
    assert who.returncode == 0, who.stderr
    assert who.stdout.split() == [who.stdout.split()[0], "0"] and who.stdout.split()[0] != "0"


def test_provision_over_ssh_changes_nothing(since):
    t0 = time.monotonic()
    proc = play_over_ssh("playbooks/provision.yml")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    counts = recap(proc.stdout, "lab-new")
    assert counts["changed"] == 0 and counts["failed"] == 0 and counts["unreachable"] == 0, changed_tasks(proc.stdout)
    print(f"provision.yml over SSH, no-op: {time.monotonic() - t0:.1f}s, ok={counts['ok']}")
    # The run really went over SSH as the deploy user, not over podman exec.
    assert "Accepted publickey for deploy from" in sshd_logins_since(since)


def test_gates_over_ssh(since):
    # From the serving host (lab-old): GO. From lab-new, while lab-old's pools hold the sessions,
    # the pool gate says NO-GO (both hosts' pools do not fit the database): the gate itself.
    proc = play_over_ssh("playbooks/gates.yml", "-e", "gates_from=old", host="lab-old")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert "lab-old -> GO reachability" in proc.stdout and "lab-old -> GO pool" in proc.stdout, proc.stdout[-3000:]
    proc = play_over_ssh("playbooks/gates.yml")
    assert proc.returncode != 0 and "NO-GO from lab-new" in proc.stdout, proc.stdout[-3000:]
    assert "exceeds the" in proc.stdout and "usable slots" in proc.stdout


def test_password_login_is_refused(since):
    # The server offers public keys only: a client allowed nothing else gets no way in.
    proc = ssh("true", options=("-o", "PubkeyAuthentication=no",
                                "-o", "PreferredAuthentications=password,keyboard-interactive"))
    assert proc.returncode == 255
    assert "Permission denied (publickey)" in proc.stderr, proc.stderr


def test_root_has_no_key_login(since):
    proc = ssh("true", user="root")
    assert proc.returncode == 255 and "Permission denied" in proc.stderr, proc.stderr


def test_an_unpinned_host_key_is_refused(tmp_path, since):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    proc = ssh("true", known_hosts=str(empty))
    assert proc.returncode == 255 and "Host key verification failed" in proc.stderr, proc.stderr
