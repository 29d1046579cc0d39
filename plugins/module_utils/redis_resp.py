# Copyright: aiadmin-ops contributors
# SPDX-License-Identifier: MIT
"""A minimal Redis client (RESP2 over TCP), standard library only, for modules that run on hosts
without a Python Redis package. The password travels only inside the connection (AUTH), never
on a command line or in an environment."""

from __future__ import annotations

import socket


class RedisError(Exception):
    """A connection failure or an error reply (``-ERR ...``); ``str()`` is the message."""


class Redis:
    def __init__(self, host="127.0.0.1", port=6379, timeout=5.0):
        try:
            self.sock = socket.create_connection((host, port), timeout=timeout)
        except OSError as exc:
            raise RedisError("cannot connect to %s:%s: %s" % (host, port, exc)) from exc
        self.buf = b""

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def auth(self, password, username=None):
        """AUTH [username] password (an ACL user when username is given)."""
        try:
            return self.command("AUTH", *([username] if username else []), password)
        except RedisError as exc:  # the reply names no secret; keep it short
            raise RedisError("authentication failed: %s" % exc) from None

    def command(self, *args):
        parts = [b"*%d\r\n" % len(args)]
        for arg in args:
            data = arg if isinstance(arg, bytes) else str(arg).encode()
            parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
        try:
            self.sock.sendall(b"".join(parts))
            return self._reply()
        except OSError as exc:
            raise RedisError("connection lost: %s" % exc) from exc

    def _line(self):
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise RedisError("connection closed by the server")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _exact(self, size):
        while len(self.buf) < size + 2:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise RedisError("connection closed by the server")
            self.buf += chunk
        data, self.buf = self.buf[:size], self.buf[size + 2:]
        return data

    def _reply(self):
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RedisError(rest.decode(errors="replace"))
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            return None if size < 0 else self._exact(size)
        if kind == b"*":
            size = int(rest)
            return None if size < 0 else [self._reply() for _ in range(size)]
        raise RedisError("unexpected reply %r" % line[:40])
