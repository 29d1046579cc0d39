#!/usr/bin/python
"""Ansible module: the health, checksums and retention of a store of pg_backup backups.
The work is done by module_utils/backup_catalog.py (retention rules: module_utils/backup_retention.py)."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: backup_catalog
short_description: Report on, verify and prune a directory of pg_backup backups
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
  - Check mode is supported by every state; in check mode verify writes nothing and prune removes nothing and
    returns its plan.
  - Fails only for bad parameters and a store that is missing or cannot be read.
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
    description: C(status) reports, C(verify) checks the checksums, C(prune) applies the retention policy.
    type: str
    default: status
    choices: [status, verify, prune]
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
"""

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
    )


def main():
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)
    try:
        result = run(module.params, module.check_mode)
    except CatalogError as exc:
        module.fail_json(msg="backup_catalog: %s" % exc, **exc.result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
