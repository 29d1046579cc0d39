#!/usr/bin/python
"""Ansible module: a verified, encrypted pg_dump of one database, kept atomically with a manifest.
The work is done by module_utils/pg_backup_job.py, which the host's backup timer also runs."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: pg_backup
short_description: Dump a PostgreSQL database (pg_dump -Fc), verify the archive, encrypt it with age, keep it atomically
description:
  - Made for a managed PostgreSQL (no superuser, no file access, logical dumps only) reached
    over C(sslmode=verify-full). Runs on the host that reaches the database.
  - Refuses before writing anything when the client's C(pg_dump) major version is older than
    the server's, when the connection fails (wrong CA, wrong password), or when a table of
    I(count_tables) does not exist.
  - Row counts in the dump's own snapshot - a C(REPEATABLE READ READ ONLY) transaction exports
    its snapshot (C(pg_export_snapshot())), counts the rows of I(count_tables) in it, and stays
    open while C(pg_dump --snapshot) dumps exactly that snapshot; the manifest's counts are
    therefore the archive's counts, whatever was written meanwhile.
  - The password reaches C(pg_dump) through a 0600 pgpass file in a private 0700 work
    directory (C(PGPASSFILE)), never on its command line or in a lasting environment.
  - Writes with umask 077 into the work directory under I(dest_dir), checks the size floor
    (I(min_size)) and the archive's table of contents (C(pg_restore --list) lists the data of
    every table of I(required_tables)), encrypts to the age public key(s) of I(age_recipients)
    (the host never holds a private key), removes the plaintext, fsyncs, and renames the
    encrypted file into place; then writes a C(.sha256) sidecar and a JSON manifest the same
    way. The verification level reached is C(toc); a restore test raises it to C(restored).
  - Any failure removes the work directory and leaves every earlier backup untouched, and
    records the failure (time, stage, message) in I(failure_file) for the health check.
  - Check mode connects and checks the versions and tables, writes nothing.
version_added: "1.0.0"
extends_documentation_fragment: [pg_connection]
options:
  application_name: {description: application_name of the module's sessions., type: str, default: aiadmin-ops-backup}
  dest_dir:
    description: Directory the backups are kept in (created 0700 when missing).
    type: path
    required: true
  name_prefix:
    description: File names are C(<name_prefix>-<UTC time>.dump.age), C(.dump.age.sha256) and C(.manifest.json).
    type: str
    default: backup
  required_tables:
    description: Tables (C(schema.table), default schema C(public)) whose data the archive must hold.
    type: list
    elements: str
    default: []
  count_tables:
    description: Tables whose rows are counted in the dump's snapshot (default I(required_tables)).
    type: list
    elements: str
  min_size:
    description: Smallest plausible archive, in bytes (a few hundred bytes is an empty dump).
    type: int
    default: 2048
  age_recipients:
    description: age public keys (C(age1...)) the archive is encrypted to.
    type: list
    elements: str
    required: true
  pg_dump: {description: The pg_dump executable., type: path, default: pg_dump}
  pg_restore: {description: The pg_restore executable (same major as pg_dump)., type: path, default: pg_restore}
  age: {description: The age executable., type: path, default: age}
  dump_timeout: {description: Seconds pg_dump may take., type: int, default: 3600}
  failure_file:
    description: Where the last failure is recorded (default C(<dest_dir>/last-failure.json)).
    type: path
  keep_local:
    description:
      - After a kept backup, remove the oldest complete sets beyond the I(keep_local) newest in
        I(dest_dir) (module_utils/backup_catalog.py; never the new one, never after a failure).
        Unset keeps everything.
    type: int
  passfile:
    description:
      - A 0600 pgpass file to use instead of I(password) (the host's timer runs the same job with one);
        mutually exclusive with I(password).
    type: path
requirements: [psycopg (3) or psycopg2, pg_dump and pg_restore, age]
author:
  - aiadmin-ops
"""

EXAMPLES = r"""
- name: Back up the app database
  pg_backup:
    host: 10.0.0.5
    database: ai_admin
    user: ai_admin
    password: "{{ vault_aiadmin_db_password }}"
    ssl_rootcert: /root/.cloud-certs/root.crt
    dest_dir: /var/backups/aiadmin
    name_prefix: ai_admin
    required_tables: [whatsapp_auth, whatsapp_keys, messages, dialog_contexts]
    age_recipients: ["{{ aiadmin_backup_age_recipient }}"]
  no_log: true
  register: backup
"""

RETURN = r"""
path: {description: The kept (encrypted) archive., returned: success, type: str}
manifest_path: {description: Its manifest., returned: success, type: str}
manifest:
  description: The manifest - time, versions, sizes, sha256 of the kept file and of the plaintext archive,
    TOC entry count, row counts in the dump's snapshot, the verification level (toc).
  returned: success
  type: dict
stage:
  description: The stage that failed (params, connect, versions, tables, dump, size, toc, encrypt, keep).
  returned: failure
  type: str
timings_s: {description: Seconds per stage., returned: always, type: dict}
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.pg_backup_job import execute, finish_module, validate
from ansible.module_utils.pg_gate import common_argument_spec


def argument_spec():
    spec = common_argument_spec()
    spec["application_name"]["default"] = "aiadmin-ops-backup"
    spec.update(
        dest_dir=dict(type="path", required=True),
        name_prefix=dict(type="str", default="backup"),
        required_tables=dict(type="list", elements="str", default=[]),
        count_tables=dict(type="list", elements="str"),
        min_size=dict(type="int", default=2048),
        age_recipients=dict(type="list", elements="str", required=True),
        pg_dump=dict(type="path", default="pg_dump"),
        pg_restore=dict(type="path", default="pg_restore"),
        age=dict(type="path", default="age"),
        dump_timeout=dict(type="int", default=3600),
        failure_file=dict(type="path"),
        passfile=dict(type="path"),
        keep_local=dict(type="int"),
    )
    return spec


def main():
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True,
                           mutually_exclusive=[("password", "passfile")])
    finish_module(module, "pg_backup", validate, execute)


if __name__ == "__main__":
    main()
