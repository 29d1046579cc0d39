#!/usr/bin/python
"""Ansible module: the health, checksums, retention and extraction of a store of pg_backup backups.
The work is done by module_utils/backup_catalog.py (retention rules: module_utils/backup_retention.py)."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: backup_catalog
short_description: Report on, verify, prune and extract from a directory of pg_backup backups
description:
  - Reads a store written by M(pg_backup) - C(<name_prefix>-<UTC time>.dump.age), its C(.sha256) sidecar and its
    C(.manifest.json) - and the store's C(last-failure.json).
  - A manifest that does not parse, or whose dump is missing, is listed in RV(problems) and counted as failed,
    never as verified. A dump without a manifest (an orphan) is listed in RV(problems) and never removed.
  - A backup counts as verified when its manifest's C(verification) is C(toc) or C(restored), as failed when it is
    C(failed); any other backup is kept and never counted.
  - I(state=status) reports the counts, the newest (verified) backup, the last failure and a health verdict
    C(critical) (no verified backup, or the newest verified one started more than 2 x I(interval_minutes) ago),
    C(warning) (more than 1 x I(interval_minutes) ago, or a failure is newer than it) or C(ok). It never fails for
    a bad verdict; the caller decides.
  - I(state=verify) recomputes the sha256 of every dump and compares it with the manifest and the sidecar. A
    mismatch or a missing sidecar sets the manifest's C(verification) to C(failed) with a C(failure) record
    (stage C(checksum)), rewritten atomically.
  - I(state=prune) applies the retention I(policy) (grandfather-father-son buckets in UTC plus I(policy.keep_min);
    the newest verified backup is always kept, and nothing is removed while no verified backup exists), removes
    each dropped backup's dump, sidecar and manifest (the manifest last), and the C(.partial-*) work directories
    older than a day.
  - I(state=extract) decrypts one backup for a restore - I(backup_id), or the newest verified backup - to I(dest).
    It refuses, naming the backup, when no backup is verified, when the given one is unknown, unusable or not
    verified, when it started more than I(max_age_hours) before I(now), and when the archive's sha256 differs from
    the manifest's or the sidecar's (the checks of I(state=verify)). The identity goes to C(age --decrypt) in a
    0600 file of a private directory (never on argv or in the environment); the plaintext is written 0600 to a
    temporary name beside I(dest) and renamed over it once its sha256 equals the manifest's C(plaintext_sha256),
    else it is removed and the module fails. The plaintext is a secret (the caller removes it after the restore).
  - Check mode is supported by every state; in check mode verify writes nothing, prune removes nothing and
    returns its plan, and extract checks the backup and its checksums and decrypts nothing.
  - Fails for bad parameters, a store that is missing or cannot be read, and a refused or failed extract.
version_added: "1.0.0"
options:
  path:
    description: The store (the I(dest_dir) of M(pg_backup)).
    type: path
    required: true
  name_prefix:
    description: The I(name_prefix) of the backups (other files of the store are ignored).
    type: str
    default: backup
  state:
    description: >-
      C(status) reports, C(verify) checks the checksums, C(prune) applies the retention policy, C(extract)
      decrypts one verified backup to I(dest).
    type: str
    default: status
    choices: [status, verify, prune, extract]
  policy:
    description: The retention policy of I(state=prune) (counts of UTC buckets to keep, newest first).
    type: dict
    default: {}
    suboptions:
      hourly: {description: Hourly buckets to keep., type: int, default: 24}
      daily: {description: Daily buckets to keep., type: int, default: 30}
      weekly: {description: ISO-week buckets to keep., type: int, default: 8}
      monthly: {description: Monthly buckets to keep., type: int, default: 12}
      keep_min: {description: The newest verified backups kept whatever the buckets., type: int, default: 3}
  interval_minutes:
    description: Minutes between two scheduled backups (the staleness limits of I(state=status)).
    type: int
    default: 60
  now:
    description: The time to judge by, ISO 8601 with a UTC offset (default the current time; for reports and tests).
    type: str
  backup_id:
    description: >-
      I(state=extract) - the backup to extract (C(<name_prefix>-<YYYYmmddTHHMMSSZ>)); it must be verified.
      Default the newest verified backup.
    type: str
  max_age_hours:
    description: >-
      I(state=extract) - refuse a backup that started more than this many hours before I(now) (by its manifest's
      C(started)); C(0) is no limit.
    type: int
    default: 0
  identity:
    description: >-
      I(state=extract) - the age private key (C(AGE-SECRET-KEY-1...)) the backups are encrypted to; never logged.
      Required outside check mode.
    type: str
  dest:
    description: >-
      I(state=extract) - the plaintext C(pg_dump -Fc) archive to write (mode 0600, replaced atomically); its
      directory must exist and should be private. Required with I(state=extract), check mode included.
    type: path
  age:
    description: I(state=extract) - the age binary.
    type: path
    default: age
author:
  - aiadmin-ops
"""

EXAMPLES = r"""
- name: How are the backups?
  backup_catalog:
    path: /var/backups/aiadmin
    name_prefix: ai_admin
  register: backups

- name: No verified backup within two intervals is a stop
  ansible.builtin.assert:
    that: backups.health != 'critical'
    fail_msg: "{{ backups.msg }}"

- name: Check every archive against its checksums
  backup_catalog:
    path: /var/backups/aiadmin
    name_prefix: ai_admin
    state: verify

- name: Apply the retention policy (run with --check for the plan only)
  backup_catalog:
    path: /var/backups/aiadmin
    name_prefix: ai_admin
    state: prune
    policy: {hourly: 24, daily: 30, weekly: 8, monthly: 12, keep_min: 3}
  register: pruned

- name: Decrypt the newest verified backup, at most 26 hours old, for the restore
  backup_catalog:
    path: /var/backups/aiadmin
    name_prefix: ai_admin
    state: extract
    max_age_hours: 26
    identity: "{{ vault_backup_age_identity }}"
    dest: "{{ restore_dir.path }}/ai_admin.dump"
  no_log: true
  register: extracted
"""

RETURN = r"""
msg: {description: One human line about the outcome., returned: always, type: str}
problems:
  description: Unusable manifests, missing dumps and orphan dumps, each as C(file) and C(problem).
  returned: success
  type: list
  elements: dict
count: {description: Backups (manifests) of the prefix., returned: state=status, type: int}
verified_count: {description: Verified backups (toc or restored)., returned: state=status, type: int}
failed_count: {description: Failed backups, unusable ones included., returned: state=status, type: int}
bytes: {description: Total size of the dumps on disk., returned: state=status, type: int}
newest:
  description: The newest backup (C(id), C(started), C(verification)), or null.
  returned: state=status
  type: dict
newest_verified:
  description: The newest verified backup (C(id), C(started), C(verification), C(age_s)), or null.
  returned: state=status
  type: dict
last_failure:
  description: The newest failure (C(time), C(stage), C(msg), C(source) - last-failure.json or a manifest), or null.
  returned: state=status
  type: dict
health: {description: "C(ok), C(warning) or C(critical).", returned: state=status, type: str}
results:
  description: Per backup - C(id), C(ok), C(verification) (after the check), C(changed), C(msg).
  returned: state=verify
  type: list
  elements: dict
bad: {description: Ids of the backups whose check failed., returned: state=verify, type: list, elements: str}
kept: {description: Ids of the kept backups, newest first., returned: state=prune, type: list, elements: str}
removed:
  description: Ids of the removed backups (in check mode, those that would be), newest first.
  returned: state=prune
  type: list
  elements: str
partials_removed:
  description: The C(.partial-*) directories removed (or that would be).
  returned: state=prune
  type: list
  elements: str
plan: {description: The retention decision, one line per backup with its reasons., returned: state=prune, type: str}
backup:
  description: >-
    The backup extracted (or, in check mode, that would be) - C(id), C(started), C(age_s), C(verification),
    C(sha256) (of the archive, checked), C(plaintext_sha256), C(size) (archive bytes), C(row_counts),
    C(server_version_num) and C(database) from its manifest (null when absent).
  returned: state=extract
  type: dict
extracted: {description: The plaintext archive written (I(dest)); null in check mode., returned: state=extract,
            type: str}
"""

from ansible.module_utils import config_backup  # noqa: F401 (shipped with the module: extract decrypts with it)
from ansible.module_utils.backup_catalog import POLICY_DEFAULTS, STATES, CatalogError, run
from ansible.module_utils.basic import AnsibleModule


def argument_spec():
    policy = {name: dict(type="int", default=default) for name, default in POLICY_DEFAULTS.items()}
    return dict(
        path=dict(type="path", required=True),
        name_prefix=dict(type="str", default="backup"),
        state=dict(type="str", default="status", choices=list(STATES)),
        policy=dict(type="dict", default={}, options=policy, apply_defaults=True),
        interval_minutes=dict(type="int", default=60),
        now=dict(type="str"),
        backup_id=dict(type="str"),
        max_age_hours=dict(type="int", default=0),
        identity=dict(type="str", no_log=True),
        dest=dict(type="path"),
        age=dict(type="path", default="age"),
    )


def main():
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True,
                           required_if=[("state", "extract", ("dest",))])
    try:
        result = run(module.params, module.check_mode)
    except CatalogError as exc:
        module.fail_json(msg="backup_catalog: %s" % exc, **exc.result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
