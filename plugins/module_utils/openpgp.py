# Copyright: aiadmin-ops contributors
# SPDX-License-Identifier: MIT
"""OpenPGP public keys read without gpg (RFC 9580): the packets of an armored or binary key and the
fingerprints of its primary keys, standard library only. Nothing here verifies a signature: a
fingerprint only names a key, so pinning one is what makes a downloaded key trustworthy."""

from __future__ import annotations

import base64
import binascii
import hashlib
import re

ARMOR_BEGIN = b"-----BEGIN PGP PUBLIC KEY BLOCK-----"
ARMOR_END = b"-----END PGP PUBLIC KEY BLOCK-----"
SECRET_KEY, PUBLIC_KEY, SECRET_SUBKEY = 5, 6, 7  # packet tags (RFC 9580 section 5)
FINGERPRINT = re.compile(r"[0-9A-F]{40}|[0-9A-F]{64}")  # v4: SHA-1; v5 and v6: SHA-256
_CRC_LINE = re.compile(r"=[A-Za-z0-9+/]{4}")


class KeyFormatError(ValueError):
    """The data is not an OpenPGP public key this code can read; ``str()`` says why."""


def normalise(fingerprint):
    """A fingerprint as gpg prints it with --with-colons: no spaces, upper case."""
    return re.sub(r"\s+", "", fingerprint).upper()


def _decode_armor_block(block):
    """The binary data of one armored block (the text between its BEGIN and END lines)."""
    body = []
    for line in block.decode("ascii", "replace").splitlines()[1:]:  # [0]: the rest of the BEGIN line
        line = line.strip()
        if not line or (not body and ":" in line):  # armor headers ("Comment: ...") and blank lines
            continue
        body.append(line)
    # RFC 9580 section 6.1: the CRC-24 line is optional and must not be relied on (nor checked).
    if body and _CRC_LINE.fullmatch(body[-1]):
        body.pop()
    if not body:
        raise KeyFormatError("an armored block is empty")
    try:
        return base64.b64decode("".join(body), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise KeyFormatError(f"the armor is not valid base64 ({exc})") from exc


def dearmor(data):
    """The binary packets of data: every armored public key block decoded and joined, or binary data as is."""
    if ARMOR_BEGIN not in data:
        if not data:
            raise KeyFormatError("it is empty")
        if not data[0] & 0x80:
            raise KeyFormatError(f"it is neither an armored public key block nor binary OpenPGP data "
                                 f"(it begins {data[:32]!r})")
        return data
    out, pos = b"", 0
    while True:
        start = data.find(ARMOR_BEGIN, pos)
        # Whatever the file holds is what apt reads: nothing may hide outside the blocks read here.
        if data[pos:start if start >= 0 else len(data)].strip():
            raise KeyFormatError("it holds data outside its armored public key blocks")
        if start < 0:
            return out
        end = data.find(ARMOR_END, start)
        if end < 0:
            raise KeyFormatError("an armored block has no END line")
        out += _decode_armor_block(data[start + len(ARMOR_BEGIN):end])
        pos = end + len(ARMOR_END)


def _header(data, i):
    """(tag, header length, body length) of the packet at data[i] (RFC 9580 section 4.2)."""
    first = data[i]
    if not first & 0x80:
        raise KeyFormatError(f"octet {i} does not start an OpenPGP packet")
    if first & 0x40:  # OpenPGP format
        tag, octets = first & 0x3F, data[i + 1:i + 6]
        if octets and octets[0] < 192:
            return tag, 2, octets[0]
        if len(octets) >= 2 and octets[0] < 224:
            return tag, 3, ((octets[0] - 192) << 8) + octets[1] + 192
        if len(octets) == 5 and octets[0] == 255:
            return tag, 6, int.from_bytes(octets[1:5], "big")
        if octets and 224 <= octets[0] < 255:
            raise KeyFormatError("a partial body length, which no key packet has")
        raise KeyFormatError("a truncated packet header")
    tag, kind = (first >> 2) & 0x0F, first & 0x03  # legacy format
    if kind == 3:  # indeterminate length: to the end of the data
        return tag, 1, len(data) - i - 1
    size = 1 << kind
    octets = data[i + 1:i + 1 + size]
    if len(octets) < size:
        raise KeyFormatError("a truncated packet header")
    return tag, 1 + size, int.from_bytes(octets, "big")


def packets(data):
    """(tag, body) of each packet of binary OpenPGP data."""
    i = 0
    while i < len(data):
        tag, header, length = _header(data, i)
        body = data[i + header:i + header + length]
        if len(body) != length:
            raise KeyFormatError(f"a truncated packet (tag {tag})")
        yield tag, body
        i += header + length


def fingerprint(body):
    """The fingerprint of a public key packet's body (RFC 9580 section 5.5.4), upper-case hex."""
    version = body[0] if body else None
    if version == 4:
        if len(body) > 0xFFFF:
            raise KeyFormatError("a version 4 key packet longer than 65535 octets")
        return hashlib.sha1(b"\x99" + len(body).to_bytes(2, "big") + body).hexdigest().upper()  # noqa: S324
    if version in (5, 6):
        prefix = b"\x9a" if version == 5 else b"\x9b"
        return hashlib.sha256(prefix + len(body).to_bytes(4, "big") + body).hexdigest().upper()
    raise KeyFormatError(f"a version {version} public key (only versions 4, 5 and 6 are read)")


def primary_fingerprints(data):
    """The fingerprints of the primary keys of an armored or binary public key (or keyring), in order.

    Subkeys are not primary keys (their packets are only bound to one). Secret key material is
    refused: a public keyring never holds any.
    """
    found = []
    for tag, body in packets(dearmor(data)):
        if tag in (SECRET_KEY, SECRET_SUBKEY):
            raise KeyFormatError("it holds secret key material")
        if tag == PUBLIC_KEY:
            found.append(fingerprint(body))
    if not found:
        raise KeyFormatError("it holds no public key packet")
    return found
