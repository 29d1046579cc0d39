#!/usr/bin/python
# Copyright: aiadmin-ops contributors
# SPDX-License-Identifier: MIT
"""Ansible module: install an apt repository's signing key only if it is the key pinned by fingerprint.
The key is read by module_utils/openpgp.py."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: apt_signing_key
short_description: Install an apt signing key pinned by its OpenPGP fingerprint
description:
  - Downloads the OpenPGP public key at I(url) and writes it, byte for byte, to I(dest) (the
    keyring an apt source's C(Signed-By) names) only when its one primary key has the fingerprint
    I(fingerprint).
  - Refused, with I(dest) left as it was - a key with another fingerprint (a replaced key at the
    download address, or a man in the middle); a download holding another primary key beside the
    pinned one (apt would trust that one too); secret key material; data outside the armored
    blocks; anything that is not a key (an error page); a failed download.
  - The fingerprint is computed from the key packets themselves (version 4 keys SHA-1, version 5
    and 6 keys SHA-256; RFC 9580), armored or binary; no C(gpg) is needed on the host. Signatures
    are not verified (apt does that with the key); the pin is what makes the key trusted.
  - When I(dest) already holds the pinned key (and no other), nothing is downloaded, so a re-run
    works offline; a key updated upstream (new signatures, a later expiry) is then not fetched
    again. I(force=true) downloads and compares anyway.
  - A connection that fails or is reset is tried again, up to three times in all, a second apart;
    an HTTP error answer is final.
  - Supports check mode (downloads and verifies, writes nothing).
version_added: "1.0.0"
options:
  url:
    description: Where the key is published (C(https://); C(http://) and C(file://) for stand-ins).
    type: str
    required: true
  dest:
    description: The keyring file to write (C(.asc) for an armored key, C(.gpg) for a binary one).
    type: path
    required: true
  fingerprint:
    description:
      - The pinned fingerprint of the key's primary key, 40 (version 4 key) or 64 (version 5 or 6
        key) hexadecimal digits; spaces and case do not matter.
    type: str
    required: true
  force:
    description: Download and verify even when I(dest) already holds the pinned key.
    type: bool
    default: false
  mode:
    description: File mode of I(dest).
    type: raw
    default: "0644"
  owner:
    description: Owner of I(dest) (default the user the module runs as).
    type: str
  group:
    description: Group of I(dest) (default that user's group).
    type: str
  timeout:
    description: Seconds to wait for the download.
    type: int
    default: 30
  validate_certs:
    description: Verify the server's TLS certificate.
    type: bool
    default: true
author:
  - aiadmin-ops
"""

EXAMPLES = r"""
- name: Install the PGDG signing key, pinned
  apt_signing_key:
    url: https://www.postgresql.org/media/keys/ACCC4CF8.asc
    dest: /usr/share/keyrings/apt.postgresql.org.asc
    fingerprint: B97B 0AFC AA1A 47F0 44F2 44A0 7FCC 7D46 ACCC 4CF8
    owner: root
    group: root
"""

RETURN = r"""
fingerprint:
  description: The pinned fingerprint, normalised (no spaces, upper case).
  returned: success
  type: str
  sample: B97B0AFCAA1A47F044F244A07FCC7D46ACCC4CF8
fingerprints:
  description: The fingerprints of the primary keys found (in I(dest), or in the download).
  returned: success, and when the download is refused for its keys
  type: list
  elements: str
  sample: [B97B0AFCAA1A47F044F244A07FCC7D46ACCC4CF8]
downloaded:
  description: Whether the key was downloaded in this run.
  returned: success
  type: bool
msg:
  description: One line for the operator.
  returned: always
  type: str
"""

import os
import tempfile
import time

from ansible.module_utils.module_start import start_module
from ansible.module_utils.openpgp import FINGERPRINT, KeyFormatError, normalise, primary_fingerprints
from ansible.module_utils.urls import fetch_url

MAX_BYTES = 1 << 20  # a signing key is a few kB; more is not one


def argument_spec():
    return dict(
        url=dict(type="str", required=True),
        dest=dict(type="path", required=True),
        fingerprint=dict(type="str", required=True),
        force=dict(type="bool", default=False),
        mode=dict(type="raw", default="0644"),
        owner=dict(type="str"),
        group=dict(type="str"),
        timeout=dict(type="int", default=30),
        validate_certs=dict(type="bool", default=True),
    )


def validate(params):
    errors = []
    if not FINGERPRINT.fullmatch(normalise(params["fingerprint"])):
        errors.append(f"fingerprint {params['fingerprint']!r} is not 40 (version 4 key) or 64 (version 5 or 6 key) "
                      "hexadecimal digits")
    if not params["url"].strip():
        errors.append("url is empty")
    if params["timeout"] <= 0:
        errors.append("timeout must be positive")
    return errors


def read(path):
    """The bytes of path, or None when it cannot be read (absent)."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


def held_fingerprints(data):
    """The primary keys' fingerprints of what dest holds ([] when absent or not a key)."""
    try:
        return primary_fingerprints(data) if data is not None else []
    except KeyFormatError:
        return []


def download(module, url, timeout):
    # A connection that fails or is reset (status -1) is tried again, up to three times in all,
    # a second apart; an HTTP error answer is final.
    for attempt in range(3):
        response, info = fetch_url(module, url, timeout=timeout)
        if info.get("status") != -1:
            break
        if attempt < 2:
            time.sleep(1)
    # file:// answers without a status
    if response is None or info.get("status") not in (200, None):
        module.fail_json(msg=f"could not download the key from {url}: {info.get('msg', 'no response')}; "
                             "nothing written", status=info.get("status"))
    try:
        data = response.read(MAX_BYTES + 1)
    except OSError as exc:  # the connection dropped or timed out mid-body
        module.fail_json(msg=f"could not download the key from {url}: {exc}; nothing written")
    if len(data) > MAX_BYTES:
        module.fail_json(msg=f"{url} sent more than {MAX_BYTES} bytes: not a signing key; nothing written")
    return data


def write(module, dest, data):
    """Replace dest with data atomically (a temporary file beside it, then a rename)."""
    try:
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(dest) or ".", prefix=".apt_signing_key.")
    except OSError as exc:
        module.fail_json(msg=f"cannot write {dest}: {exc}")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        module.atomic_move(tmp, dest)  # fails the module itself when it cannot
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def main():
    module, _ = start_module(argument_spec(), validate)
    p = module.params
    url, dest, pinned = p["url"], p["dest"], normalise(p["fingerprint"])
    file_args = module.load_file_common_arguments(dict(path=dest, mode=p["mode"], owner=p["owner"], group=p["group"]))

    current = read(dest)
    held = held_fingerprints(current)
    if set(held) == {pinned} and not p["force"]:
        changed = module.set_fs_attributes_if_different(file_args, False)
        module.exit_json(changed=changed, fingerprint=pinned, fingerprints=held, downloaded=False,
                         msg=f"{dest} holds the pinned key {pinned}: nothing downloaded")

    data = download(module, url, p["timeout"])
    try:
        found = primary_fingerprints(data)
    except KeyFormatError as exc:
        module.fail_json(msg=f"{url} is not an OpenPGP public key: {exc}; nothing written")
    if pinned not in found:
        module.fail_json(msg=f"the key at {url} has fingerprint {', '.join(found)}, not the pinned {pinned}: "
                             "refused, nothing written", fingerprints=found)
    if set(found) != {pinned}:
        others = ", ".join(fp for fp in found if fp != pinned)
        module.fail_json(msg=f"the download at {url} holds the pinned key {pinned} and another primary key "
                             f"({others}), which apt would trust too: refused, nothing written", fingerprints=found)

    changed = current != data
    if changed and not module.check_mode:
        write(module, dest, data)
    # In check mode this only reports (an absent dest counts as changed).
    changed = module.set_fs_attributes_if_different(file_args, changed)
    module.exit_json(changed=changed, fingerprint=pinned, fingerprints=found, downloaded=True,
                     msg=f"{dest} {'written with' if changed else 'already holds'} the pinned key {pinned}")


if __name__ == "__main__":
    main()
