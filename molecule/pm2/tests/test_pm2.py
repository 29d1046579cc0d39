"""pm2 role: unit, version, logrotate, a process that survives re-runs and a container restart."""

import json
import os
import subprocess
import time

import pytest
import testinfra

INSTANCES = ["mol-pm2-d12", "mol-pm2-d13"]
PM2 = "runuser -u aiadmin -- env PM2_HOME=/home/aiadmin/.pm2 /usr/local/bin/pm2"
PROJECT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))


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


def test_pm2_is_5x(host):
    assert host.check_output(f"{PM2} --version").splitlines()[-1].startswith("5.")


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
