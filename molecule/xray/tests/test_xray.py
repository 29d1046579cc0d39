"""Xray client role, asserted from outside the instances (testinfra, podman backend)."""

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import testinfra

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))
from tests import xray_wire  # noqa: E402
from tests.helpers import lab_vault  # noqa: E402

HOSTS = ["mol-xray-d12", "mol-xray-d13", "mol-xray-rel-d12"]
PROBE_URL = "http://10.213.30.40:8080/"
PROBE_BODY = "abroad-endpoint lab-egress"
EGRESS = ("10.213.10.40", 10443)  # lab-egress's VLESS-over-TLS inbound
SERVER_NAME = "egress.public.lab.test"  # the name its certificate is issued for (the lab inventory)
CA_FILE = "/usr/local/etc/xray/tls-ca.crt"
LAB_CA = ROOT / "lab/state/ca.crt"

# The instance's own configuration, but trusting another CA and on SOCKS port 1081 (run for a
# few seconds only): lab-egress's certificate must then be refused.
OTHER_CA_RUN = r"""
set -eu
d=$(mktemp -d)
pid=
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$d"' EXIT
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$d/k" -out "$d/ca.crt" \
  -days 1 -subj /CN=not-the-lab-ca 2>/dev/null
python3 -c '
import json, sys
d = sys.argv[1]
cfg = json.load(open("/usr/local/etc/xray/config.json"))
cfg["inbounds"][0]["port"] = 1081
cfg["log"] = {"loglevel": "info", "access": "none"}
for cert in cfg["outbounds"][0]["streamSettings"]["tlsSettings"]["certificates"]:
    if cert.get("usage") == "verify":
        cert["certificateFile"] = d + "/ca.crt"
json.dump(cfg, open(d + "/config.json", "w"))
' "$d"
timeout 30 /usr/local/bin/xray run -c "$d/config.json" >"$d/log" 2>&1 &
pid=$!
for _ in $(seq 50); do ss -Hltn | grep -q '127.0.0.1:1081 ' && break; sleep 0.2; done
if curl -sS --fail --max-time 8 --socks5-hostname 127.0.0.1:1081 http://10.213.30.40:8080/; then echo PROXIED; fi
sleep 1
cat "$d/log"
"""


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
    tcp -= {"0.0.0.0:22", "[::]:22"}  # the lab image's sshd (the lab reaches its hosts over SSH too)
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


def test_outbound_is_tls_verified_against_the_lab_ca(host):
    stream = json.loads(host.file("/usr/local/etc/xray/config.json").content_string)["outbounds"][0]["streamSettings"]
    assert stream["security"] == "tls"
    tls = stream["tlsSettings"]
    assert tls["serverName"] == SERVER_NAME
    assert {"usage": "verify", "certificateFile": CA_FILE} in tls["certificates"]
    assert tls["disableSystemRoot"] is True
    assert "allowInsecure" not in tls


def test_ca_file_is_the_lab_ca(host):
    ca = host.file(CA_FILE)
    assert (ca.user, ca.group, ca.mode) == ("root", "xray", 0o640)
    assert ca.content_string.strip() == LAB_CA.read_text().strip()


def _netns_pid(name):
    return subprocess.run(["podman", "inspect", "-f", "{{.State.Pid}}", name], capture_output=True, text=True,
                          check=True, timeout=30).stdout.strip()


def test_egress_is_tls_on_the_wire(host):
    """The packets to lab-egress while a request goes through the proxy: TLS both ways, the id never in clear."""
    uuid = lab_vault()["vault_aiadmin_xray_uuid"]
    curl = f"curl -sS --fail --max-time 10 --socks5-hostname 127.0.0.1:1080 {PROBE_URL}"
    capture, out = xray_wire.first_payloads(_netns_pid(host.backend.get_hostname()), *EGRESS, uuid,
                                            lambda: host.run(curl))
    assert out.rc == 0 and PROBE_BODY in out.stdout, out.stderr
    conns = capture["connections"]
    assert conns, "no connection to lab-egress was seen"
    for conn in conns:
        assert xray_wire.is_tls_handshake(conn.get("client"), 1), conn  # ClientHello
        assert xray_wire.is_tls_handshake(conn.get("server"), 2), conn  # ServerHello
    assert not capture["uuid_seen"], "the VLESS user id crossed the wire in clear"


def test_outbound_refuses_a_server_its_ca_did_not_sign(host):
    out = host.run(f"bash -c {shlex.quote(OTHER_CA_RUN)}")
    assert "PROXIED" not in out.stdout, out.stdout
    assert "certificate signed by unknown authority" in out.stdout, out.stdout + out.stderr


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
