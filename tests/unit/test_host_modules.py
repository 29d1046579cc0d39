"""deb_missing, app_stopped and private_network's addresses_in_cidr and tcp_probe, run by Ansible against this machine's
real dpkg database and real interfaces (a network namespace the test creates)."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import uuid

import pytest

from tests.helpers import adhoc_module as module

needs_dpkg = pytest.mark.skipif(shutil.which("dpkg-query") is None, reason="needs a Debian host")


@needs_dpkg
@pytest.mark.parametrize("check", [False, True])
def test_deb_missing_reports_what_dpkg_does_not_have(check):
    absent = f"aiadmin-absent-{uuid.uuid4().hex[:8]}"
    res = module("deb_missing", {"name": ["bash", absent, "dpkg", "bash=5*", "coreutils:amd64"]}, check=check)
    assert not res.get("failed") and res["changed"] is False, res
    # A version, a wildcard or a release is left to apt: reported missing.
    assert res["missing"] == [absent, "bash=5*"], res
    assert res["installed"] == ["bash", "dpkg", "coreutils:amd64"], res


@needs_dpkg
def test_deb_missing_refuses_an_empty_list():
    res = module("deb_missing", {"name": [" "]})
    assert res.get("failed") and "name is empty" in res["msg"], res


@pytest.fixture
def dummy_netns():
    """A namespace with a veth interface holding 10.213.99.5/24 (and loopback)."""
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")
    name = f"aiadmin-addr-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        for cmd in (["ip", "link", "set", "lo", "up"],
                    ["ip", "link", "add", "priv0", "type", "veth", "peer", "name", "priv1"],
                    ["ip", "addr", "add", "10.213.99.5/24", "dev", "priv0"],
                    ["ip", "link", "set", "priv0", "up"]):
            subprocess.run(["ip", "netns", "exec", name, *cmd], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.mark.netns
def test_addresses_in_cidr_finds_the_interface(dummy_netns):
    res = module("addresses_in_cidr", {"cidr": "10.213.99.0/24"}, netns=dummy_netns)
    assert res["found"] == [{"interface": "priv0", "address": "10.213.99.5", "prefixlen": 24}], res
    assert res["changed"] is False


@pytest.mark.netns
def test_addresses_in_cidr_reports_what_it_saw_when_nothing_matches(dummy_netns):
    res = module("addresses_in_cidr", {"cidr": "10.213.20.0/24"}, netns=dummy_netns)
    assert res["found"] == [], res
    assert "priv0=10.213.99.5/24" in res["seen"] and "lo=127.0.0.1/8" in res["seen"], res


def test_addresses_in_cidr_rejects_a_bad_cidr():
    res = module("addresses_in_cidr", {"cidr": "10.213.300.0/24"})
    assert res.get("failed") and res["msg"].startswith("cidr:"), res


def test_tcp_probe_connects_to_a_listener():
    with socket.create_server(("127.0.0.1", 0)) as server:
        res = module("tcp_probe", {"address": "127.0.0.1", "port": server.getsockname()[1]})
    assert res["connected"] is True and res["error"] == "" and res["changed"] is False, res
    assert 0 < res["ms"] < 5000, res


def test_tcp_probe_tells_a_refused_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: the kernel answers with a reset
        res = module("tcp_probe", {"address": "127.0.0.1", "port": port, "timeout": 5})
    assert res["connected"] is False and not res.get("failed"), res
    assert res["error"] == f"127.0.0.1 port {port}: Connection refused", res
    assert res["ms"] < 5000, res


@pytest.mark.netns
def test_tcp_probe_tells_a_timeout(dummy_netns):
    # 10.213.99.7 is on priv0's network in the namespace, and nobody is there to answer.
    res = module("tcp_probe", {"address": "10.213.99.7", "port": 5432, "timeout": 1}, netns=dummy_netns)
    assert res["connected"] is False, res
    assert res["error"].startswith("10.213.99.7 port 5432: timed out after 1.0s"), res
    assert res["ms"] >= 1000, res


def test_tcp_probe_refuses_a_name():
    res = module("tcp_probe", {"address": "db.example.invalid", "port": 5432})
    assert res.get("failed") and "not a numeric IP address" in res["msg"], res


ME = pwd.getpwuid(os.getuid()).pw_name


@pytest.fixture
def app_like_process(tmp_path):
    """A real process whose command line names a unique script, listening on a free port."""
    script = tmp_path / f"app-{uuid.uuid4().hex[:8]}" / "main.js"
    script.parent.mkdir()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = ("import socket,sys,time; s=socket.socket(socket.AF_INET6); "
            "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); "
            f"s.bind(('::', {port})); s.listen(); print('ready', flush=True); time.sleep(120)")
    proc = subprocess.Popen(["python3", "-c", code, str(script)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    yield proc, str(script.parent), port
    proc.kill()
    proc.wait()


def test_app_stopped_names_the_process_and_the_listener_it_still_sees(app_like_process):
    proc, base, port = app_like_process
    res = module("app_stopped", {"user": ME,
                                 "pattern": f"{base}/.*main\\.js", "port": port, "timeout": 0.5})
    assert res.get("failed"), res
    assert res["pids"] == [proc.pid] and res["listening"] is True
    assert str(proc.pid) in res["msg"] and f"port {port}" in res["msg"]


def test_app_stopped_holds_once_the_process_is_gone(app_like_process):
    proc, base, port = app_like_process
    proc.kill()
    proc.wait()
    res = module("app_stopped", {"user": ME,
                                 "pattern": f"{base}/.*main\\.js", "port": port, "timeout": 2}, check=True)
    assert not res.get("failed"), res
    assert res["pids"] == [] and res["listening"] is False and res["changed"] is False


def test_app_stopped_sees_a_listener_without_a_matching_process(app_like_process):
    _, _, port = app_like_process
    res = module("app_stopped", {"user": ME,
                                 "pattern": "no-such-app/main\\.js", "port": port, "timeout": 0.3})
    assert res.get("failed") and res["pids"] == [] and res["listening"] is True, res


def test_app_stopped_counts_no_process_for_a_user_the_host_lacks():
    res = module("app_stopped", {"user": f"nouser{uuid.uuid4().hex[:6]}", "pattern": "main\\.js", "timeout": 0.2})
    assert not res.get("failed") and res["pids"] == [], res


def test_app_stopped_rejects_a_bad_pattern():
    res = module("app_stopped", {"user": "root", "pattern": "(", "timeout": 0.2})
    assert res.get("failed") and "not a regular expression" in res["msg"], res
