#!/usr/bin/python
"""Ansible module: encrypted sets of an app host's configuration files on the controller.
The work is done by module_utils/config_backup.py."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: config_backup
short_description: Keep and find encrypted, verified sets of an app host's .env and Xray config
description:
  - Runs on the controller, on a store directory of one host (C(<state>/backups/config/<host>)).
  - A set is C(<id>.manifest.json) with one C(<id>.<name>.age) per file, encrypted with age to I(recipients). The
    manifest, written last and atomically (0600), records per file the host path, the sha256 of the plaintext and
    of the archive, and for the set the host, the release it ran, whether it was serving, when it was taken
    (C(created)) and when the host was last seen holding exactly these files (C(confirmed)).
  - I(state=save) compares the host's files (given in I(files)) with the newest set. Equal files, release and
    serving flag confirm that set (its C(confirmed) time is moved to now; RV(changed) is false); anything else
    writes a new set, decrypted again with I(identity) when given so that it is C(verified), then keeps the
    I(keep) newest sets.
  - I(state=latest) finds the newest C(verified) set and refuses it (RV(ok) false, RV(reason) C(missing),
    C(stale) or C(corrupt), RV(msg) naming the set) when there is none, when it was last confirmed more than
    I(max_age_hours) ago, or when an archive is missing or does not match its checksum. With I(decrypt) the
    plaintexts are returned in RV(contents) after their sha256 was compared with the manifest; a caller of
    I(decrypt) sets C(no_log).
  - The identity is written for age to a 0600 file in a private directory and removed right after.
  - Check mode is supported; I(state=save) writes nothing in check mode.
version_added: "1.0.0"
options:
  path:
    description: The host's store directory (created 0700 by I(state=save)).
    type: path
    required: true
  state:
    description: C(save) a set of the host's files, or find the C(latest) verified one.
    type: str
    default: latest
    choices: [save, latest]
  host:
    description: The inventory name of the host the files come from (recorded in the manifest).
    type: str
    default: ""
  files:
    description: I(state=save) - the host's files, each with C(name) (C(env), C(xray)), C(path) and C(content).
    type: list
    elements: dict
    default: []
  release:
    description: I(state=save) - the release the host runs (its C(current) link).
    type: str
  serving:
    description: I(state=save) - whether the host was serving (every app process online).
    type: bool
    default: false
  recipients:
    description: I(state=save) - the age public keys the files are encrypted to.
    type: list
    elements: str
    default: []
  identity:
    description: The operator's age secret key (vault) - verifies a new set, decrypts with I(decrypt).
    type: str
  decrypt:
    description: I(state=latest) - return the plaintexts in RV(contents).
    type: bool
    default: false
  max_age_hours:
    description: I(state=latest) - refuse a set last confirmed longer ago than this (0 - no limit).
    type: int
    default: 48
  keep:
    description: I(state=save) - the sets kept (newest first).
    type: int
    default: 30
  age:
    description: The age binary.
    type: path
    default: age
author:
  - aiadmin-ops
"""

EXAMPLES = r"""
- name: Keep the serving host's .env and Xray config (encrypted)
  config_backup:
    path: /var/lib/aiadmin-ops/backups/config/aiadmin-new
    state: save
    host: aiadmin-new
    files:
      - {name: env, path: /opt/ai-admin/shared/.env, content: "{{ env_slurp.content | b64decode }}"}
    release: v1.1.0
    serving: true
    recipients: ["age1..."]
    identity: "{{ vault_aiadmin_backup_age_identity }}"
  no_log: true

- name: The newest verified set, decrypted (refused when missing, stale or corrupt)
  config_backup:
    path: /var/lib/aiadmin-ops/backups/config/aiadmin-new
    decrypt: true
    identity: "{{ vault_aiadmin_backup_age_identity }}"
  register: config_set
  no_log: true
"""

RETURN = r"""
msg: {description: One human line about the outcome (names no secret)., returned: always, type: str}
summary: {description: The same line (repeated by failure_message when the task is no_log)., returned: always,
          type: str}
changed: {description: A new set was written., returned: always, type: bool}
id: {description: The set written or confirmed., returned: state=save, type: str}
created: {description: A new set was written (not only confirmed)., returned: state=save, type: bool}
ok: {description: A usable set was found., returned: state=latest, type: bool}
reason: {description: "C(missing), C(stale), C(corrupt), or empty.", returned: state=latest, type: str}
set:
  description: The set found - C(id), C(host), C(created), C(confirmed), C(confirmed_age_h), C(release),
    C(serving), C(manifest), C(files) (C(name), C(path), C(sha256), C(archive), C(archive_sha256)).
  returned: state=latest and a set was found
  type: dict
contents: {description: "Per file name, its plaintext (I(decrypt) only).", returned: state=latest, type: dict}
"""

from ansible.module_utils.config_backup import STATES, run, validate
from ansible.module_utils.module_start import start_module
from ansible.module_utils.pg_backup_job import BackupError


def main():
    module, _ = start_module(dict(
        path=dict(type="path", required=True),
        state=dict(type="str", default="latest", choices=list(STATES)),
        host=dict(type="str", default=""),
        files=dict(type="list", elements="dict", default=[], no_log=True),
        release=dict(type="str"),
        serving=dict(type="bool", default=False),
        recipients=dict(type="list", elements="str", default=[]),
        identity=dict(type="str", no_log=True),
        decrypt=dict(type="bool", default=False),
        max_age_hours=dict(type="int", default=48),
        keep=dict(type="int", default=30),
        age=dict(type="path", default="age"),
    ), validate)
    try:
        result = run(module.params, module.check_mode)
    except (BackupError, OSError) as exc:
        msg = "config_backup: %s" % exc
        module.fail_json(msg=msg, summary=msg)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
