"""apt_signing_key (plugins/modules/apt_signing_key.py, plugins/module_utils/openpgp.py), run by Ansible on
this machine against keys made by real gpg and served by an HTTP server on 127.0.0.1 that counts its requests.

gpg is the reference: every fingerprint the module reports for a version 4 key is the one
`gpg --with-colons` reads from the same bytes. gpg 2.2 can neither make nor read version 5 and 6 keys:
those cases use published sample keys and the fingerprints their authors state (RFC 9580 appendix A.3
for v6; a gpg 2.3 sample key for v5).
"""

from __future__ import annotations

import base64
import collections
import os
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from tests.helpers import ROOT, file_mode
from tests.helpers import adhoc_module as module

pytestmark = pytest.mark.skipif(shutil.which("gpg") is None, reason="needs gpg")

# RFC 9580, appendix A.3 "Sample Version 6 Certificate (Transferable Public Key)": an Ed25519 primary key
# and an X25519 subkey (no CRC line: version 6 armor omits it), with the fingerprints the RFC states.
RFC9580_V6_CERT = b"""-----BEGIN PGP PUBLIC KEY BLOCK-----

xioGY4d/4xsAAAAg+U2nu0jWCmHlZ3BqZYfQMxmZu52JGggkLq2EVD34laPCsQYf
GwoAAABCBYJjh3/jAwsJBwUVCg4IDAIWAAKbAwIeCSIhBssYbE8GCaaX5NUt+mxy
KwwfHifBilZwj2Ul7Ce62azJBScJAgcCAAAAAK0oIBA+LX0ifsDm185Ecds2v8lw
gyU2kCcUmKfvBXbAf6rhRYWzuQOwEn7E/aLwIwRaLsdry0+VcallHhSu4RN6HWaE
QsiPlR4zxP/TP7mhfVEe7XWPxtnMUMtf15OyA51YBM4qBmOHf+MZAAAAIIaTJINn
+eUBXbki+PSAld2nhJh/LVmFsS+60WyvXkQ1wpsGGBsKAAAALAWCY4d/4wKbDCIh
BssYbE8GCaaX5NUt+mxyKwwfHifBilZwj2Ul7Ce62azJAAAAAAQBIKbpGG2dWTX8
j+VjFM21J0hqWlEg+bdiojWnKfA5AQpWUWtnNwDEM0g12vYxoWM8Y81W+bHBw805
I8kWVkXU6vFOi+HWvv/ira7ofJu16NnoUkhclkUrk0mXubZvyl4GBg==
-----END PGP PUBLIC KEY BLOCK-----
"""
RFC9580_V6_PRIMARY = "CB186C4F0609A697E4D52DFA6C722B0C1F1E27C18A56708F6525EC27BAD9ACC9"
RFC9580_V6_SUBKEY = "12C83F1E706F6308FE151A417743A1F033790E93E9978488D1DB378DA9930885"
# A version 5 (LibrePGP) key: the public part of the sample key Werner Koch posted to the IETF openpgp
# list when gpg 2.3 gained v5 keys (2019-03), Ed25519 with a Curve25519 subkey, and the fingerprints gpg
# listed for it (legacy-format packets and a CRC line here).
V5_CERT = b"""-----BEGIN PGP PUBLIC KEY BLOCK-----

mDcFXJH05BYAAAAtCSsGAQQB2kcPAQEHQFhZlVcVVtwf+21xNQPX+ecMJJBL0MPd
fj75iux+my8QtBhlbW1hLmdvbGRtYW5AZXhhbXBsZS5uZXSIlgUTFggASCIhBRk0
e8mHJGQCX5nfPsLgAA7ZiEiS4fez6kyUAJFZVptUBQJckfTkAhsDBQsJCAcCAyIC
AQYVCgkICwIEFgIDAQIeBwIXgAAA9cAA/jiR3yMsZMeEQ40u6uzEoXa6UXeV/S3w
wJAXRJy9M8s0AP9vuL/7AyTfFXwwzSjDnYmzS0qAhbLDQ643N+MXGBJ2Bbg8BVyR
9OQSAAAAMgorBgEEAZdVAQUBAQdA+nysrzml2UCweAqtpDuncSPlvrcBWKU0yfU0
YvYWWAoDAQgHiHoFGBYIACwiIQUZNHvJhyRkAl+Z3z7C4AAO2YhIkuH3s+pMlACR
WVabVAUCXJH05AIbDAAAOSQBAP4BOOIR/sGLNMOfeb5fPs/02QMieoiSjIBnijho
b2U5AQC+RtOHCHx7TcIYl5/Uyoi+FOvPLcNw4hOv2nwUzSSVAw==
=WYfO
-----END PGP PUBLIC KEY BLOCK-----
"""
V5_PRIMARY = "19347BC9872464025F99DF3EC2E0000ED9884892E1F7B3EA4C94009159569B54"
V5_SUBKEY = "E4557C2B02FFBF4B04F87401EC336AF7133D0F85BE7FD09BAEFD9CAEB8C93965"
V6_BINARY = base64.b64decode(b"".join(RFC9580_V6_CERT.splitlines()[2:-1]))
PGDG_KEY = Path("/usr/share/postgresql-common/pgdg/apt.postgresql.org.asc")  # Debian's copy of PGDG's key
HTML = b"<!DOCTYPE html>\n<html><head><title>Moved</title></head><body>The key moved.</body></html>\n"


class Keys:
    """Throwaway keys in a temporary GNUPGHOME (no passphrase): `ed25519` and `rsa3072`."""

    def __init__(self):
        # A short path: gpg-agent's socket lives in it (sun_path is 108 bytes).
        self.home = tempfile.mkdtemp(prefix="aiadmin-gpg-")
        self.env = dict(os.environ, GNUPGHOME=self.home)
        self.fpr = {}
        for algo in ("ed25519", "rsa3072"):
            self.gpg("--passphrase", "", "--quick-gen-key", f"aiadmin-ops test {algo} <{algo}@example.invalid>",
                     algo, "sign", "never")
            listing = self.gpg("--with-colons", "--list-keys", f"{algo}@example.invalid").decode()
            self.fpr[algo] = fingerprints_in(listing)[0]

    def gpg(self, *args: str, data: bytes | None = None) -> bytes:
        return subprocess.run(["gpg", "--batch", "--quiet", *args], env=self.env, input=data, capture_output=True,
                              check=True, timeout=300).stdout

    def export(self, algo: str, armor: bool) -> bytes:
        return self.gpg("--export", *(["--armor"] if armor else []), self.fpr[algo])

    def read(self, data: bytes) -> list[str]:
        """The primary keys' fingerprints gpg reads from data (nothing imported)."""
        return fingerprints_in(self.gpg("--with-colons", "--import-options", "show-only", "--import", data=data)
                               .decode())

    def close(self):
        subprocess.run(["gpgconf", "--kill", "gpg-agent"], env=self.env, check=False, timeout=30)
        shutil.rmtree(self.home, ignore_errors=True)


def fingerprints_in(colons: str) -> list[str]:
    """The fpr record that follows each pub record of gpg's --with-colons output."""
    out, after_pub = [], False
    for record in colons.splitlines():
        fields = record.split(":")
        if fields[0] == "fpr" and after_pub:
            out.append(fields[9])
        after_pub = fields[0] == "pub"
    return out


@pytest.fixture(scope="module")
def keys():
    k = Keys()
    yield k
    k.close()


class KeyServer:
    """HTTP on 127.0.0.1: path -> (status, body); every request counted per path."""

    def __init__(self):
        self.routes: dict[str, tuple[int, bytes]] = {}
        self.hits: collections.Counter[str] = collections.Counter()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                outer.hits[self.path] += 1
                status, body = outer.routes.get(self.path, (404, b"not found\n"))
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def serve(self, path: str, body: bytes, status: int = 200) -> str:
        self.routes[path] = (status, body)
        return f"http://127.0.0.1:{self.server.server_port}{path}"


@pytest.fixture
def server():
    s = KeyServer()
    yield s
    s.server.shutdown()
    s.server.server_close()


def run(url: str, dest: Path, fingerprint: str, check: bool = False, **extra) -> dict:
    return module("apt_signing_key", {"url": url, "dest": str(dest), "fingerprint": fingerprint, **extra},
                  check=check)


@pytest.mark.parametrize("armor", [True, False], ids=["armored", "binary"])
@pytest.mark.parametrize("algo", ["ed25519", "rsa3072"])
def test_pinned_key_written_verbatim_then_not_downloaded_again(keys, server, tmp_path, algo, armor):
    data = keys.export(algo, armor)
    assert keys.read(data) == [keys.fpr[algo]]  # gpg reads back the key it made
    url = server.serve("/key", data)
    dest = tmp_path / ("key.asc" if armor else "key.gpg")

    res = run(url, dest, keys.fpr[algo])
    assert not res.get("failed") and res["changed"] is True and res["downloaded"] is True, res
    assert res["fingerprints"] == [keys.fpr[algo]] == keys.read(dest.read_bytes()), res
    assert dest.read_bytes() == data and file_mode(dest) == 0o644
    assert server.hits["/key"] == 1

    again = run(url, dest, keys.fpr[algo])
    assert not again.get("failed") and again["changed"] is False and again["downloaded"] is False, again
    assert again["fingerprints"] == [keys.fpr[algo]], again
    assert server.hits["/key"] == 1, "a re-run downloaded the key it already holds"
    assert dest.read_bytes() == data


def test_wrong_fingerprint_refused_and_dest_untouched(keys, server, tmp_path):
    url = server.serve("/key.asc", keys.export("rsa3072", armor=True))
    dest = tmp_path / "key.asc"
    res = run(url, dest, keys.fpr["ed25519"])
    assert res.get("failed") and not res["changed"], res
    assert keys.fpr["rsa3072"] in res["msg"] and keys.fpr["ed25519"] in res["msg"], res["msg"]
    assert "nothing written" in res["msg"], res["msg"]
    assert not dest.exists() and list(tmp_path.iterdir()) == []  # no temporary file left either

    dest.write_bytes(RFC9580_V6_CERT)  # dest holds another key: kept, mode and all
    os.chmod(dest, 0o640)
    res = run(url, dest, keys.fpr["ed25519"].lower())
    assert res.get("failed") and keys.fpr["rsa3072"] in res["msg"] and keys.fpr["ed25519"] in res["msg"], res
    assert dest.read_bytes() == RFC9580_V6_CERT and file_mode(dest) == 0o640


def test_force_downloads_and_keeps_the_pinned_key_on_a_wrong_one(keys, server, tmp_path):
    data = keys.export("ed25519", armor=True)
    dest = tmp_path / "key.asc"
    dest.write_bytes(data)
    url = server.serve("/key.asc", data)
    res = run(url, dest, keys.fpr["ed25519"], force=True)
    assert not res.get("failed") and res["changed"] is False and res["downloaded"] is True, res
    assert server.hits["/key.asc"] == 1

    server.serve("/key.asc", keys.export("rsa3072", armor=True))  # the key at the address replaced
    res = run(url, dest, keys.fpr["ed25519"], force=True)
    assert res.get("failed") and keys.fpr["rsa3072"] in res["msg"], res
    assert dest.read_bytes() == data


def test_dest_with_another_key_replaced_only_by_the_pinned_one(keys, server, tmp_path):
    dest = tmp_path / "key.gpg"
    other = keys.export("rsa3072", armor=False)
    dest.write_bytes(other)
    url = server.serve("/wrong.gpg", keys.export("rsa3072", armor=False))
    res = run(url, dest, keys.fpr["ed25519"])
    assert res.get("failed") and dest.read_bytes() == other, res

    wanted = keys.export("ed25519", armor=False)
    url = server.serve("/key.gpg", wanted)
    res = run(url, dest, keys.fpr["ed25519"])
    assert not res.get("failed") and res["changed"] is True and res["downloaded"] is True, res
    assert dest.read_bytes() == wanted and server.hits["/key.gpg"] == 1


def test_check_mode_writes_nothing_and_reports_the_change(keys, server, tmp_path):
    url = server.serve("/key.asc", keys.export("ed25519", armor=True))
    dest = tmp_path / "key.asc"
    res = run(url, dest, keys.fpr["ed25519"], check=True)
    assert not res.get("failed") and res["changed"] is True and res["downloaded"] is True, res
    assert not dest.exists() and list(tmp_path.iterdir()) == []
    assert server.hits["/key.asc"] == 1  # it verifies what it would write

    other = keys.export("rsa3072", armor=True)
    dest.write_bytes(other)
    res = run(url, dest, keys.fpr["ed25519"], check=True)
    assert not res.get("failed") and res["changed"] is True, res
    assert dest.read_bytes() == other


def test_mode_corrected_without_a_download(keys, server, tmp_path):
    data = keys.export("ed25519", armor=True)
    url = server.serve("/key.asc", data)
    dest = tmp_path / "key.asc"
    dest.write_bytes(data)
    os.chmod(dest, 0o600)  # apt (user _apt) could not read it
    assert run(url, dest, keys.fpr["ed25519"], check=True)["changed"] is True
    assert file_mode(dest) == 0o600
    res = run(url, dest, keys.fpr["ed25519"])
    assert res["changed"] is True and res["downloaded"] is False, res
    assert file_mode(dest) == 0o644 and server.hits["/key.asc"] == 0


def test_fingerprint_spaces_and_case_do_not_matter(keys, server, tmp_path):
    fpr = keys.fpr["ed25519"]
    spaced = " ".join(fpr[i:i + 4] for i in range(0, 40, 4)).lower()  # as `gpg --fingerprint` prints it
    url = server.serve("/key.asc", keys.export("ed25519", armor=True))
    res = run(url, tmp_path / "key.asc", f"  {spaced}\n")
    assert not res.get("failed") and res["changed"] is True and res["fingerprint"] == fpr, res


@pytest.mark.parametrize("bad", [
    "ACCC4CF8",                                   # a key id, not a fingerprint
    "B97B0AFCAA1A47F044F244A07FCC7D46ACCC4CF",    # 39 digits
    "G97B0AFCAA1A47F044F244A07FCC7D46ACCC4CF8",   # not hexadecimal
    "",
])
def test_invalid_fingerprint_refused_before_any_download(server, tmp_path, bad):
    url = server.serve("/key.asc", b"unused")
    res = run(url, tmp_path / "key.asc", bad)
    assert res.get("failed"), res
    assert res["msg"] == (f"invalid parameters: fingerprint {bad!r} is not 40 (version 4 key) or 64 "
                          "(version 5 or 6 key) hexadecimal digits"), res["msg"]
    assert server.hits["/key.asc"] == 0 and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("body", "reason"), [
    (HTML, "it is neither an armored public key block nor binary OpenPGP data (it begins b'<!DOCTYPE html>"),
    (b"", "it is empty"),
    (b"<html><pre>\n" + RFC9580_V6_CERT + b"</pre></html>\n", "it holds data outside its armored public key blocks"),
    (RFC9580_V6_CERT.replace(b"j+VjFM21", b"j+Vj!M21"), "the armor is not valid base64"),
    (RFC9580_V6_CERT.split(b"-----END")[0], "an armored block has no END line"),
    (V6_BINARY[:-8], "a truncated packet (tag 2)"),  # the subkey's binding signature cut short
])
def test_not_a_key_refused_clearly(server, tmp_path, body, reason):
    url = server.serve("/key.asc", body)
    dest = tmp_path / "key.asc"
    res = run(url, dest, RFC9580_V6_PRIMARY)
    assert res.get("failed"), res
    assert res["msg"].startswith(f"{url} is not an OpenPGP public key: {reason}"), res["msg"]
    assert not dest.exists()


def test_secret_key_material_refused(keys, server, tmp_path):
    secret = keys.gpg("--pinentry-mode", "loopback", "--passphrase", "", "--export-secret-keys", keys.fpr["ed25519"])
    url = server.serve("/key.gpg", secret)
    res = run(url, tmp_path / "key.gpg", keys.fpr["ed25519"])
    assert res.get("failed") and "it holds secret key material" in res["msg"], res
    assert not (tmp_path / "key.gpg").exists()


@pytest.mark.parametrize("armor", [True, False], ids=["armored", "binary"])
def test_pinned_key_with_another_key_beside_it_refused(keys, server, tmp_path, armor):
    both = keys.export("ed25519", armor) + keys.export("rsa3072", armor)
    assert keys.read(both) == [keys.fpr["ed25519"], keys.fpr["rsa3072"]]  # gpg (and apt) would read both
    url = server.serve("/key", both)
    res = run(url, tmp_path / "key", keys.fpr["ed25519"])
    assert res.get("failed") and res["fingerprints"] == [keys.fpr["ed25519"], keys.fpr["rsa3072"]], res
    assert f"another primary key ({keys.fpr['rsa3072']}), which apt would trust too" in res["msg"], res["msg"]
    assert not (tmp_path / "key").exists()


@pytest.mark.parametrize("status", [404, 500])
def test_server_error_refused_clearly(server, tmp_path, status):
    url = server.serve("/key.asc", HTML, status=status)
    dest = tmp_path / "key.asc"
    dest.write_bytes(b"kept")
    res = run(url, dest, RFC9580_V6_PRIMARY)
    assert res.get("failed") and res.get("status") == status, res
    assert res["msg"].startswith(f"could not download the key from {url}: HTTP Error {status}"), res["msg"]
    assert res["msg"].endswith("nothing written"), res["msg"]
    assert dest.read_bytes() == b"kept" and server.hits["/key.asc"] == 1


def test_unreachable_server_refused_clearly(tmp_path):
    with ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler) as closed:
        port = closed.server_port  # bound, then closed: nothing listens there
    res = run(f"http://127.0.0.1:{port}/key.asc", tmp_path / "key.asc", RFC9580_V6_PRIMARY, timeout=5)
    assert res.get("failed") and res["msg"].startswith(f"could not download the key from http://127.0.0.1:{port}"), res
    assert "Connection refused" in res["msg"], res["msg"]


@pytest.mark.parametrize(("cert", "primary", "subkey"), [
    (V5_CERT, V5_PRIMARY, V5_SUBKEY),
    (RFC9580_V6_CERT, RFC9580_V6_PRIMARY, RFC9580_V6_SUBKEY),
], ids=["v5", "v6-rfc9580"])
def test_version5_and_6_keys_by_their_sha256_fingerprint(server, tmp_path, cert, primary, subkey):
    url = server.serve("/key.asc", cert)
    dest = tmp_path / "key.asc"
    # The subkey's fingerprint is not a primary key's: refused, naming the primary one.
    res = run(url, dest, subkey)
    assert res.get("failed") and primary in res["msg"] and subkey in res["msg"], res
    assert not dest.exists()

    res = run(url, dest, primary.lower())
    assert not res.get("failed") and res["changed"] is True and res["fingerprints"] == [primary], res
    assert dest.read_bytes() == cert
    assert run(url, dest, primary)["downloaded"] is False and server.hits["/key.asc"] == 2


@pytest.mark.skipif(not PGDG_KEY.exists(), reason="needs postgresql-common's copy of the PGDG signing key")
def test_base_role_pins_the_real_pgdg_key(keys, server, tmp_path):
    pinned = yaml.safe_load((ROOT / "roles/base/defaults/main.yml").read_text())["base_postgresql_pgdg_key_fingerprint"]
    spec = yaml.safe_load((ROOT / "roles/base/meta/argument_specs.yml").read_text())
    assert spec["argument_specs"]["main"]["options"]["base_postgresql_pgdg_key_fingerprint"]["default"] == pinned
    data = PGDG_KEY.read_bytes()
    assert keys.read(data) == [pinned]
    url = server.serve("/media/keys/ACCC4CF8.asc", data)
    dest = tmp_path / "apt.postgresql.org.asc"
    res = run(url, dest, pinned)
    assert not res.get("failed") and res["changed"] is True and res["fingerprints"] == [pinned], res
    assert dest.read_bytes() == data


def test_a_reset_connection_is_tried_again(keys, tmp_path):
    """The first connection is reset (RST, SO_LINGER 0), the second answers: the key is installed."""
    data = keys.export("ed25519", armor=True)
    listener = socket.create_server(("127.0.0.1", 0))
    served = []

    def serve():
        first, _ = listener.accept()
        first.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        first.close()
        second, _ = listener.accept()
        with second:
            second.recv(65536)
            second.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % len(data) + data)
            served.append(True)

    threading.Thread(target=serve, daemon=True).start()
    try:
        res = run(f"http://127.0.0.1:{listener.getsockname()[1]}/key.asc", tmp_path / "key.asc",
                  keys.fpr["ed25519"])
    finally:
        listener.close()
    assert not res.get("failed") and res["changed"] is True, res
    assert served and (tmp_path / "key.asc").read_bytes() == data
