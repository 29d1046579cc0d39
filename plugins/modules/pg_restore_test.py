#!/usr/bin/python
"""Ansible module: restore a pg_backup backup set into a scratch PostgreSQL cluster and compare
the row counts with its manifest. The work is done by module_utils/pg_restore_job.py."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: pg_restore_test
short_description: Prove a pg_backup backup restores - decrypt it, restore it into a scratch cluster, count the rows
description:
  - Runs where the age private key is (the operator's controller), never on the app host and never
    against a real database - the restore goes into a throw-away cluster of its own.
  - "Steps, each timed: C(checksum) - the sha256 of the C(.dump.age) equals the manifest's, before
    anything is decrypted; C(decrypt) - C(age --decrypt) with the identity; C(server) - the lowest
    installed PostgreSQL major that is not older than the dump's server (manifest
    C(server_version_num)); C(cluster) - C(initdb), C(pg_ctl -w start), C(CREATE DATABASE);
    C(restore) - C(pg_restore --exit-on-error --single-transaction --no-owner --no-privileges);
    C(counts) - the rows of every table of I(required_tables) equal the manifest's C(row_counts)
    (every mismatch is listed)."
  - The scratch cluster is initialised with C(-A trust); that is safe only because it listens on no
    TCP address (C(listen_addresses = '')) and its only unix socket is in the private 0700 work
    directory (C(unix_socket_directories)), which no other user can enter.
  - As root, C(initdb), C(pg_ctl), C(pg_restore) and C(psql) run as the C(postgres) system user
    (C(runuser -u postgres)), and the work directory is given to that user after the decryption;
    I(work_dir) must then be traversable by C(postgres).
  - I(identity) is written only to a 0600 file in the private work directory, while it is still
    root's, and removed right after the decryption; it is never on a command line.
  - Always, also on failure and at the timeout, the cluster is stopped (C(pg_ctl -m immediate stop)),
    any process left naming the work directory is killed, and the work directory is removed.
  - With I(mark), the manifest is rewritten atomically with the outcome - C(verification) C(restored)
    and C(restore_test), or C(verification) C(failed), C(failure) (time, stage, msg) and C(restore_test).
    A failed restore test fails the task, after the manifest is marked.
  - Check mode checks only the checksum; it decrypts nothing, starts no cluster, writes nothing.
version_added: "1.0.0"
options:
  manifest:
    description: The backup's C(.manifest.json); the dump is its C(file), in the same directory.
    type: path
    required: true
  identity:
    description:
      - The age secret key text (C(AGE-SECRET-KEY-1...)); never logged. Exactly one of I(identity)
        and I(identity_file).
    type: str
  identity_file:
    description: An age identity file (exactly one of I(identity) and I(identity_file)).
    type: path
  pg_bin_dirs:
    description:
      - Directories of PostgreSQL server programs to choose from (one qualifies when it holds
        C(initdb), C(pg_ctl), C(pg_restore) and C(psql); its major comes from C(postgres --version),
        C(pg_config --version) or the path C(/usr/lib/postgresql/<N>/bin)).
      - Default all of C(/usr/lib/postgresql/*/bin).
    type: list
    elements: path
  work_dir:
    description: Parent of the private work directory (default the system temporary directory).
    type: path
  required_tables:
    description: Tables (C(schema.table), default schema C(public)) to count (default the manifest's C(row_counts)).
    type: list
    elements: str
  timeout:
    description: Seconds the whole test may take; a step still running then is killed and the cluster stopped.
    type: int
    default: 3600
  age:
    description: The age executable.
    type: path
    default: age
  mark:
    description: Write the outcome into the manifest.
    type: bool
    default: true
requirements: [age, PostgreSQL server programs of the dump's major or newer (postgresql-<N>)]
author:
  - aiadmin-ops
"""

EXAMPLES = r"""
- name: Restore-test the latest backup on the controller
  pg_restore_test:
    manifest: "{{ backup_dir }}/ai_admin-20250101T030000Z.manifest.json"
    identity: "{{ vault_aiadmin_backup_age_identity }}"
  delegate_to: localhost
  become: true
  no_log: true
  register: restore_test
"""

RETURN = r"""
ok: {description: Whether the backup restored with the manifest's row counts., returned: always, type: bool}
msg: {description: What happened (on failure, which step failed and why)., returned: always, type: str}
stage:
  description: The step that failed (params, manifest, checksum, decrypt, server, cluster, restore, counts, mark).
  returned: failure
  type: str
server_version: {description: The C(postgres --version) of the server used., returned: always, type: str}
duration_s: {description: Seconds the test took., returned: always, type: float}
row_counts: {description: Rows per table in the restored database., returned: always, type: dict}
timings_s: {description: Seconds per step., returned: always, type: dict}
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.pg_backup_job import finish_module
from ansible.module_utils.pg_restore_job import execute, validate


def argument_spec():
    return dict(
        manifest=dict(type="path", required=True),
        identity=dict(type="str", no_log=True),
        identity_file=dict(type="path"),
        pg_bin_dirs=dict(type="list", elements="path"),
        work_dir=dict(type="path"),
        required_tables=dict(type="list", elements="str"),
        timeout=dict(type="int", default=3600),
        age=dict(type="path", default="age"),
        mark=dict(type="bool", default=True),
    )


def main():
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True,
                           mutually_exclusive=[("identity", "identity_file")],
                           required_one_of=[("identity", "identity_file")])
    finish_module(module, "pg_restore_test", validate, execute, ok=False)


if __name__ == "__main__":
    main()
