"""Xray egress on the wire (stdlib only), from inside a container's network namespace.

Each probe runs this machine's Python under ``nsenter -n`` in the container's network namespace
(``pid``: the container's main PID, ``podman inspect -f {{.State.Pid}}``), so its packets leave
from the container's own addresses while the container stays untouched (no file, no package).

``first_payloads``   capture (AF_PACKET) the first bytes of every TCP connection between the
                     container and the Xray server while ``trigger`` runs: a TLS client opens
                     with a handshake record (``16 03``, then ClientHello ``01``), the server
                     answers with one (ServerHello ``02``); a plaintext VLESS client would send
                     version 0 and the user id in clear.
``tls_handshake``    a TLS handshake with the server, verified against a CA file for a name.
``vless_request``    one VLESS TCP request (version 0, the user id, no addons, ``connect``
                     target) carrying an HTTP GET, sent in plaintext or inside verified TLS;
                     returns what came back (a VLESS response header ``00 00`` and the target's
                     answer, or nothing when the server drops the connection).
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid as uuid_mod
from collections.abc import Callable

_SNIFFER = r'''
import json, select, socket, struct, sys, time
a = json.loads(sys.argv[1])
server, port, uid = socket.inet_aton(a["host"]), a["port"], bytes.fromhex(a["uuid_hex"])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
s.setblocking(False)
conns, uuid_seen = {}, False
def take(pkt):
    global uuid_seen
    if len(pkt) < 34 or pkt[12:14] != b"\x08\x00" or pkt[23] != 6:
        return
    ihl = (pkt[14] & 0x0F) * 4
    total = struct.unpack("!H", pkt[16:18])[0]
    src, dst = pkt[26:30], pkt[30:34]
    off = 14 + ihl
    sport, dport = struct.unpack("!HH", pkt[off:off + 4])
    data = pkt[off + (pkt[off + 12] >> 4) * 4:14 + total]
    if dst == server and dport == port:
        key, side = sport, "client"
    elif src == server and sport == port:
        key, side = dport, "server"
    else:
        return
    if not data:
        return
    uuid_seen = uuid_seen or uid in data
    c = conns.setdefault(key, {})
    c.setdefault(side, data[:16].hex())
    c[side + "_bytes"] = c.get(side + "_bytes", 0) + len(data)
def drain():
    while True:
        try:
            take(s.recv(65535))
        except BlockingIOError:
            return
print("ready", flush=True)
deadline = time.monotonic() + a["seconds"]
while time.monotonic() < deadline:
    ready, _, _ = select.select([s, sys.stdin], [], [], 0.2)
    if s in ready:
        drain()
    if sys.stdin in ready:
        sys.stdin.readline()
        break
time.sleep(0.3)
drain()
print(json.dumps({"connections": list(conns.values()), "uuid_seen": uuid_seen}), flush=True)
'''

_TLS = r'''
import json, socket, ssl, sys
a = json.loads(sys.argv[1])
ctx = ssl.create_default_context(cafile=a["cafile"])
try:
    with socket.create_connection((a["host"], a["port"]), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname=a["server_name"]) as tls:
            cert = tls.getpeercert()
            print(json.dumps({"ok": True, "version": tls.version(),
                              "subject": dict(x[0] for x in cert["subject"]),
                              "issuer": dict(x[0] for x in cert["issuer"])}))
except (OSError, ssl.SSLError) as exc:
    print(json.dumps({"ok": False, "error": f"{type(exc).__name__}: {exc}"}))
'''

_VLESS = r'''
import json, socket, ssl, struct, sys
a = json.loads(sys.argv[1])
target_ip, target_port = a["target"]
request = (b"\x00" + bytes.fromhex(a["uuid_hex"]) + b"\x00" + b"\x01" + struct.pack("!H", target_port)
           + b"\x01" + socket.inet_aton(target_ip)
           + b"GET / HTTP/1.0\r\nHost: " + target_ip.encode() + b"\r\n\r\n")
got = b""
error = ""
try:
    conn = socket.create_connection((a["host"], a["port"]), timeout=5)
    if a["tls"]:
        conn = ssl.create_default_context(cafile=a["cafile"]).wrap_socket(conn, server_hostname=a["server_name"])
    with conn:
        conn.sendall(request)
        while len(got) < 65536:
            chunk = conn.recv(4096)
            if not chunk:
                break
            got += chunk
except (OSError, ssl.SSLError) as exc:
    error = f"{type(exc).__name__}: {exc}"
print(json.dumps({"reply": got.decode("latin-1"), "error": error}))
'''


def _argv(pid: str | None, code: str, args: dict) -> list[str]:
    prefix = ["nsenter", "-t", pid, "-n"] if pid else []
    return [*prefix, sys.executable, "-c", code, json.dumps(args)]


def _run(pid: str | None, code: str, args: dict, timeout: float = 30) -> dict:
    proc = subprocess.run(_argv(pid, code, args), capture_output=True, text=True, timeout=timeout, check=True)
    return json.loads(proc.stdout)


def first_payloads(pid: str | None, host: str, port: int, user_id: str, trigger: Callable[[], object],
                   seconds: float = 30) -> tuple[dict, object]:
    """The first 16 bytes each side sent on every TCP connection to host:port while trigger ran.

    Returns ({"connections": [{"client": hex, "server": hex, ...}], "uuid_seen": bool}, trigger's result).
    """
    args = {"host": host, "port": port, "uuid_hex": uuid_mod.UUID(user_id).hex, "seconds": seconds}
    sniffer = subprocess.Popen(_argv(pid, _SNIFFER, args), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        ready = sniffer.stdout.readline().strip()
        if ready != "ready":
            raise RuntimeError(f"the capture did not start: {ready!r} {sniffer.stderr.read()}")
        result = trigger()
        out, err = sniffer.communicate("stop\n", timeout=seconds + 10)
    finally:
        if sniffer.poll() is None:
            sniffer.kill()
            sniffer.wait()
    if sniffer.returncode != 0:
        raise RuntimeError(f"the capture failed: {err}")
    return json.loads(out), result


def is_tls_handshake(first: str | None, handshake_type: int) -> bool:
    """A TLS record header (22 = handshake, version 3.x) carrying the given handshake type first."""
    data = bytes.fromhex(first or "")
    return len(data) >= 6 and data[0] == 0x16 and data[1] == 0x03 and data[5] == handshake_type


def tls_handshake(pid: str | None, host: str, port: int, server_name: str, cafile: str) -> dict:
    return _run(pid, _TLS, {"host": host, "port": port, "server_name": server_name, "cafile": cafile})


def vless_request(pid: str | None, host: str, port: int, user_id: str, target: tuple[str, int], *,
                  tls: bool, server_name: str = "", cafile: str = "") -> dict:
    return _run(pid, _VLESS, {"host": host, "port": port, "uuid_hex": uuid_mod.UUID(user_id).hex,
                              "target": list(target), "tls": tls, "server_name": server_name, "cafile": cafile})
