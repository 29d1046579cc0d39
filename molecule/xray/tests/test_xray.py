"""Xray client role, asserted from outside the instances (testinfra, podman backend)."""

import json

import pytest
import testinfra

HOSTS = ["mol-xray-d12", "mol-xray-d13", "mol-xray-rel-d12"]
PROBE_URL = "http://10.213.30.40:8080/"
PROBE_BODY = "abroad-endpoint lab-egress"


@pytest.fixture(params=HOSTS, scope="module")
def host(request):
    return testinfra.get_host(f"podman://{request.param}")


def test_service_active_and_enabled(host):
    svc = host.service("xray")
    assert svc.is_running
    assert svc.is_enabled


def test_runs_as_dedicated_user(host):
    user = host.user("xray")
    assert user.shell == "/usr/sbin/nologin"
    pids = host.check_output("systemctl show -p MainPID --value xray")
    assert host.check_output(f"ps -o user= -p {pids}").strip() == "xray"


def test_listens_only_on_loopback_1080(host):
    # Nothing else listens in these minimal instances: every TCP listener must be Xray's SOCKS5.
    tcp = {line.split()[3] for line in host.check_output("ss -Hltn").splitlines()}
    tcp.discard("127.0.0.1:8099")  # the release stand-in artifact server (prepare.yml)
    assert tcp == {"127.0.0.1:1080"}, tcp
    assert ":1080" not in host.check_output("ss -Hlun")


def test_config_owner_mode_and_content(host):
    cfg = host.file("/usr/local/etc/xray/config.json")
    assert cfg.user == "root"
    assert cfg.group == "xray"
    assert cfg.mode == 0o640
    data = json.loads(cfg.content_string)
    assert data["inbounds"][0]["listen"] == "127.0.0.1"
    assert data["inbounds"][0]["protocol"] == "socks"
    assert data["outbounds"][0]["protocol"] == "vless"
    assert "error" not in data["log"] or data["log"]["error"] == ""


def test_launcher_validates(host):
    ok = host.run("/usr/local/bin/xray run -test -c /usr/local/etc/xray/config.json")
    assert ok.rc == 0 and "Configuration OK." in ok.stdout


def test_journald_has_core_logs(host):
    log = host.check_output("journalctl -u xray --no-pager -o cat")
    assert "core: Xray" in log and "started" in log
    assert not host.file("/var/log/xray").exists


def test_egress_through_proxy(host):
    out = host.run(f"curl -sS --fail --max-time 10 --socks5-hostname 127.0.0.1:1080 {PROBE_URL}")
    assert out.rc == 0, out.stderr
    assert PROBE_BODY in out.stdout


def test_direct_access_fails(host):
    assert host.run(f"curl -sS --fail --max-time 4 -o /dev/null {PROBE_URL}").rc != 0


def test_release_layout_and_rejected_download():
    rel = testinfra.get_host("podman://mol-xray-rel-d12")
    assert rel.file("/usr/local/share/xray/geoip.dat").exists
    assert rel.file("/usr/local/share/xray/geosite.dat").exists
    # side_effect tried a wrong digest: the bad zip must not be kept or unpacked.
    assert not rel.file("/var/cache/xray/Xray-linux-64-0.0.1-wrong-digest.zip").exists
