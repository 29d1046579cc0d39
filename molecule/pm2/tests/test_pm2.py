"""pm2 role: the lockfile install (and the move from a global npm install), unit, version,
logrotate, a process that survives re-runs and a container restart."""

import json
import os
import re
import subprocess
import time
from pathlib import Path
from shlex import quote

import pytest
import testinfra
import yaml

INSTANCES = ["mol-pm2-d12", "mol-pm2-d13"]
PM2 = "runuser -u aiadmin -- env PM2_HOME=/home/aiadmin/.pm2 /usr/local/bin/pm2"
PROJECT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
LOCK_SRC = Path(PROJECT) / "roles/pm2/files/pm2-lock"
LOCK_ROOT = "/usr/local/lib/pm2-lock"
PM2_VERSION = yaml.safe_load((Path(PROJECT) / "roles/pm2/defaults/main.yml").read_text())["pm2_version"]
COMMANDS = ["pm2", "pm2-dev", "pm2-docker", "pm2-runtime"]
# On the instance: every package of the lockfile installed at the version it pins (the optional
# ones for another OS or CPU, such as fsevents, absent), and no package the lockfile does not hold.
CHECK_TREE = r"""
import json, os, sys
root = sys.argv[1]
lock = json.load(open(os.path.join(root, "package-lock.json")))["packages"]
bad = []
for path, meta in lock.items():
    manifest = os.path.join(root, path, "package.json")
    if not path:
        continue
    if not os.path.exists(manifest):
        if not (meta.get("optional") and ("os" in meta or "cpu" in meta)):
            bad.append(path + ": missing")
    elif json.load(open(manifest))["version"] != meta["version"]:
        bad.append(path + ": not " + meta["version"])
def packages(modules):  # the package directories npm laid out under a node_modules directory
    for entry in sorted(os.listdir(os.path.join(root, modules))):
        path = modules + "/" + entry
        if entry.startswith("."):
            continue
        if entry.startswith("@"):
            yield from packages(path)
            continue
        yield path
        if os.path.isdir(os.path.join(root, path, "node_modules")):
            yield from packages(path + "/node_modules")
for path in packages("node_modules"):
    if path not in lock:
        bad.append(path + ": not in the lockfile")
print(json.dumps(bad))
"""


@pytest.fixture(params=INSTANCES)
def name(request):
    return request.param


@pytest.fixture
def host(name):
    return testinfra.get_host(f"podman://{name}")


def jlist(h):
    out = h.check_output(f"{PM2} jlist")
    return {p["name"]: p for p in json.loads(out[out.index("["):])}


def test_unit_enabled_and_active(host):
    svc = host.service("pm2-aiadmin")
    assert svc.is_enabled and svc.is_running
    unit = host.file("/etc/systemd/system/pm2-aiadmin.service").content_string
    assert "ExecStart=/usr/local/bin/pm2 resurrect" in unit and "User=aiadmin" in unit


def test_pm2_is_the_lockfile_version(host):
    assert PM2_VERSION.startswith("5.")
    assert host.check_output(f"{PM2} --version").splitlines()[-1] == PM2_VERSION


def test_installed_from_the_role_lockfile(host):
    lock, manifest = (LOCK_SRC / "package-lock.json").read_bytes(), (LOCK_SRC / "package.json").read_bytes()
    # The install of this lockfile, named by PM2's version and a digest of the two files.
    current = host.file(f"{LOCK_ROOT}/current")
    assert current.is_symlink
    install = current.linked_to
    assert re.fullmatch(rf"{LOCK_ROOT}/{re.escape(PM2_VERSION)}-[0-9a-f]{{16}}", install), install
    assert host.file(f"{LOCK_ROOT}/current/package-lock.json").content == lock
    assert host.file(f"{LOCK_ROOT}/current/package.json").content == manifest
    pkg = json.loads(host.file(f"{LOCK_ROOT}/current/node_modules/pm2/package.json").content_string)
    assert pkg["version"] == PM2_VERSION
    out = host.check_output(f"python3 -c {quote(CHECK_TREE)} {LOCK_ROOT}/current")
    assert json.loads(out) == []
    # Only this install is left: no staging directory, no install of an earlier lockfile.
    assert host.check_output(f"ls -A {LOCK_ROOT}").split() == sorted(["current", install.rsplit("/", 1)[1]])
    for command in COMMANDS:
        link = host.file(f"/usr/local/bin/{command}")
        assert link.is_symlink
        assert host.check_output(f"readlink /usr/local/bin/{command}") == \
            f"{LOCK_ROOT}/current/node_modules/pm2/bin/{command}"
    # No global npm install of pm2 (mol-pm2-d12 had one: removed after the move).
    assert not host.file("/usr/local/lib/node_modules/pm2").exists


def test_global_install_replaced_and_daemon_restarted_by_its_unit():
    host = testinfra.get_host("podman://mol-pm2-d12")
    before = json.loads((Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "pm2-global-install.json").read_text())
    pid = int(host.file("/home/aiadmin/.pm2/pm2.pid").content_string.strip())
    # A new daemon (the new code), and it is the unit's main process, not one started beside it.
    assert pid != before["pid"]
    assert host.check_output("systemctl show -p MainPID --value pm2-aiadmin") == str(pid)
    cgroups = host.check_output(f"cat /proc/{pid}/cgroup").splitlines()
    assert any(line.endswith("/pm2-aiadmin.service") for line in cgroups), cgroups
    # The process started under the old install is back (the saved list), never deleted.
    proc = jlist(host)["hello-http"]
    assert proc["pm2_env"]["status"] == "online" and proc["pm2_env"]["restart_time"] == 0


def test_logrotate_configured(host):
    conf = host.file("/etc/logrotate.d/pm2-aiadmin").content_string
    assert "copytruncate" in conf and "/home/aiadmin/.pm2/logs/*.log" in conf
    assert host.run("logrotate --debug /etc/logrotate.d/pm2-aiadmin").rc == 0


def test_process_never_deleted_by_reruns(host):
    proc = jlist(host)["hello-http"]
    assert proc["pm2_env"]["status"] == "online"
    # Converge ran twice: a delete/start would have changed the id or counted restarts.
    assert proc["pm_id"] == 0
    assert proc["pm2_env"]["restart_time"] == 0
    assert host.check_output("curl -s http://127.0.0.1:3999/") == "hello from pm2"


def test_back_online_after_container_restart(name):
    env = dict(os.environ, CONTAINERS_CONF=os.path.join(PROJECT, "containers.conf"))
    subprocess.run(["podman", "restart", name], check=True, env=env, capture_output=True)
    deadline = time.time() + 90
    while True:
        h = testinfra.get_host(f"podman://{name}")
        # Only ask pm2 once the unit is up: `pm2 jlist` would spawn a daemon of its own.
        active = h.run("systemctl is-active pm2-aiadmin").stdout.strip() == "active"
        if active and jlist(h)["hello-http"]["pm2_env"]["status"] == "online":
            break
        assert time.time() < deadline, "hello-http not online 90 s after podman restart"
        time.sleep(3)
    assert h.service("pm2-aiadmin").is_running
    assert h.check_output("curl -s --retry 5 --retry-connrefused http://127.0.0.1:3999/") == "hello from pm2"


def test_pm2_info_module_through_ansible(host, name):
    env = dict(os.environ, CONTAINERS_CONF=os.path.join(PROJECT, "containers.conf"),
               ANSIBLE_CONFIG=os.path.join(PROJECT, "ansible.cfg"))
    base = ["ansible", "all", "-i", f"{name},", "-c", "containers.podman.podman",
            "-M", os.path.join(PROJECT, "plugins", "modules"), "-m", "pm2_info", "-o"]
    ok = subprocess.run([*base, "-a", "pm2_home=/home/aiadmin/.pm2 expected=hello-http"],
                        env=env, capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert '"go": true' in ok.stdout
    nogo = subprocess.run([*base, "-a", "pm2_home=/home/aiadmin/.pm2 expected=hello-http,absent-proc"],
                          env=env, capture_output=True, text=True, check=False)
    assert nogo.returncode != 0 and "missing: absent-proc" in nogo.stdout
    # A PM2_HOME without a daemon: reported, and no daemon is spawned there.
    down = subprocess.run([*base, "-a", "pm2_home=/root/.pm2-none report_only=true"],
                          env=env, capture_output=True, text=True, check=False)
    assert '"daemon_running": false' in down.stdout
    assert not host.file("/root/.pm2-none/pm2.pid").exists
