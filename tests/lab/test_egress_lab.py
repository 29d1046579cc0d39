"""lab-egress's Xray server serves VLESS over TLS only, and the app hosts' clients speak TLS to it.

Every probe runs this machine's Python in an app host's network namespace (``nsenter -n``,
tests/xray_wire.py): real packets from that host's address to lab-egress's inbound, with nothing
installed in the container. The server side needs only `lab up` (lab/egress.yml); the clients'
side needs the host provisioned (`playbooks/provision.yml`, the xray role): marker `prepared`.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests import xray_wire
from tests.helpers import ROOT, podman

pytestmark = pytest.mark.lab

EGRESS = ("10.213.10.40", 10443)
SERVER_NAME = "egress.public.lab.test"  # inventories/lab: aiadmin_xray_stream_settings.tlsSettings.serverName
ABROAD = ("10.213.30.40", 8080)  # the "abroad" endpoint, reachable only through the proxy
ABROAD_BODY = "abroad-endpoint lab-egress"
LAB_CA = ROOT / "lab/state/ca.crt"
CLIENT_CA = "/usr/local/etc/xray/tls-ca.crt"


def netns_pid(container: str) -> str:
    return podman("inspect", "-f", "{{.State.Pid}}", container).stdout.strip()


def test_inbound_serves_tls_with_the_lab_ca_certificate(lab):
    result = xray_wire.tls_handshake(netns_pid("lab-new"), *EGRESS, SERVER_NAME, str(LAB_CA))
    assert result["ok"], result
    assert result["version"] == "TLSv1.3"
    assert result["subject"]["commonName"] == "lab-egress"
    assert result["issuer"]["commonName"] == "aiadmin LAB-ONLY CA"


def test_certificate_is_refused_for_another_name(lab):
    result = xray_wire.tls_handshake(netns_pid("lab-new"), *EGRESS, "wrong-name.lab.test", str(LAB_CA))
    assert not result["ok"]
    assert "Hostname mismatch" in result["error"], result


def test_certificate_is_refused_without_the_lab_ca(lab, tmp_path: Path):
    key, crt = tmp_path / "other.key", tmp_path / "other.crt"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-keyout", str(key), "-out", str(crt), "-days", "1", "-subj", "/CN=not the lab CA"],
                   check=True, capture_output=True)
    result = xray_wire.tls_handshake(netns_pid("lab-new"), *EGRESS, SERVER_NAME, str(crt))
    assert not result["ok"]
    assert "certificate verify failed" in result["error"], result


def test_plaintext_vless_client_is_refused(lab, vault):
    """A well-formed VLESS request in plaintext gets nothing back; the same request inside TLS is proxied."""
    uuid = vault["vault_aiadmin_xray_uuid"]
    pid = netns_pid("lab-new")
    plain = xray_wire.vless_request(pid, *EGRESS, uuid, ABROAD, tls=False)
    assert plain["reply"] == "", plain  # no VLESS response header, no answer from the target
    over_tls = xray_wire.vless_request(pid, *EGRESS, uuid, ABROAD, tls=True, server_name=SERVER_NAME,
                                       cafile=str(LAB_CA))
    assert over_tls["reply"].startswith("\x00\x00HTTP/1."), over_tls  # VLESS version 0, no addons, then HTTP
    assert ABROAD_BODY in over_tls["reply"], over_tls


@pytest.mark.prepared
@pytest.mark.parametrize("host", ["lab-new", "lab-old"])
def test_app_host_client_speaks_tls_on_the_wire(lab, vault, host):
    """A request through the host's own Xray: TLS records both ways, the VLESS user id never in clear."""
    assert podman("exec", host, "systemctl", "is-active", "xray.service", check=False).stdout.strip() == "active"
    ca = podman("exec", host, "cat", CLIENT_CA, check=False)
    assert ca.returncode == 0, f"{host}: the xray role did not deliver {CLIENT_CA}"
    assert ca.stdout.strip() == LAB_CA.read_text().strip()

    def through_proxy() -> subprocess.CompletedProcess:
        return podman("exec", host, "curl", "-sS", "--fail", "--max-time", "10", "--socks5-hostname",
                      "127.0.0.1:1080", f"http://{ABROAD[0]}:{ABROAD[1]}/", check=False)

    capture, out = xray_wire.first_payloads(netns_pid(host), *EGRESS, vault["vault_aiadmin_xray_uuid"], through_proxy)
    assert out.returncode == 0 and ABROAD_BODY in out.stdout, out.stderr
    assert capture["connections"], "no connection to lab-egress was seen"
    for conn in capture["connections"]:
        assert xray_wire.is_tls_handshake(conn.get("client"), 1), conn  # ClientHello
        assert xray_wire.is_tls_handshake(conn.get("server"), 2), conn  # ServerHello
    assert not capture["uuid_seen"], "the VLESS user id crossed the wire in clear"
