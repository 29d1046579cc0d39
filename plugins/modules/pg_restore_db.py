#!/usr/bin/python
"""Ansible module: restore a verified pg_backup dump into a new, empty database (disaster recovery)."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: pg_restore_db
short_description: Restore a pg_dump -Fc archive into a new, empty PostgreSQL database and check its row counts
description:
  - Disaster recovery of a lost database. Runs on the app host that will use the new database (its network path,
    its PostgreSQL client); the archive is the decrypted dump of a verified M(pg_backup) set, in a private
    directory the caller removes afterwards.
  - Reads the target first. None of I(required_tables) exists - the database is new, the dump is restored. All of
    them exist with exactly I(expected_counts) - an earlier run restored it, nothing is done (RV(changed) false).
    Anything else - the database holds other data - fails before anything is written.
  - C(pg_restore --exit-on-error --single-transaction --no-owner --no-privileges) over the given sslmode and CA,
    the password in a 0600 pgpass file of a private work directory (never on argv or in the environment), then
    C(ANALYZE), then the rows of every required table counted and compared with I(expected_counts).
  - A failed restore leaves nothing (one transaction). Check mode reads the target and restores nothing.
extends_documentation_fragment: [pg_connection]
version_added: "1.0.0"
options:
  dump:
    description: The plaintext C(pg_dump -Fc) archive on this host.
    type: path
    required: true
  required_tables:
    description: The tables the dump holds (schema-qualified or in C(public)); they decide whether the target is new.
    type: list
    elements: str
    required: true
  expected_counts:
    description: The manifest's row counts (table - rows) the restored tables must have.
    type: dict
    required: true
  max_id_tables:
    description: Tables whose C(max(id)) is returned after the restore (RV(max_ids)).
    type: list
    elements: str
    default: []
  pg_restore: {description: The pg_restore binary (Debian's wrapper is resolved to the newest installed)., type: path,
               default: pg_restore}
  timeout: {description: Seconds the restore may take., type: int, default: 3600}
  application_name: {description: application_name of the module's sessions., type: str,
                     default: aiadmin-ops-restore}
author:
  - aiadmin-ops
"""

EXAMPLES = r"""
- name: Restore the newest verified dump into the new instance
  pg_restore_db:
    host: 10.0.0.11
    database: ai_admin
    user: ai_admin
    password: "{{ vault_aiadmin_db_password }}"
    ssl_rootcert: /root/.cloud-certs/root.crt
    dump: /tmp/aiadmin-restore-x/ai_admin.dump
    required_tables: [whatsapp_auth, messages]
    expected_counts: "{{ manifest.row_counts }}"
  no_log: true
"""

RETURN = r"""
msg: {description: One human line about the outcome (names no secret)., returned: always, type: str}
summary: {description: The same line (repeated by failure_message when the task is no_log)., returned: always,
          type: str}
state_before: {description: "C(empty), C(restored) (an earlier run) or C(other) (refused).", returned: always,
               type: str}
row_counts: {description: Rows per required table after the restore., returned: success, type: dict}
max_ids: {description: "max(id) per I(max_id_tables) table after the restore.", returned: success, type: dict}
timings_s: {description: Seconds per stage (check, restore, analyze, counts)., returned: always, type: dict}
"""

import os
import shutil
import tempfile
import time

from ansible.module_utils.module_start import start_module
from ansible.module_utils.pg_backup_job import (
    BackupError,
    pgpass_line,
    qualified,
    resolve_client,
    run_tool,
    sql_quote,
    timed_call,
)
from ansible.module_utils.pg_gate import common_argument_spec, connect_kwargs, load_driver, one_line, validate_common


def ident(name):
    return "%s.%s" % tuple(map(sql_quote, qualified(name)))


def key(name):
    return "%s.%s" % qualified(name)


class Restore:
    def __init__(self, params):
        self.p = params
        self.timings = {}
        self.driver = load_driver(params["driver"])

    def query(self, sql, args=()):
        conn = self.driver.connect(connect_kwargs(self.p))
        try:
            cur = conn.cursor()
            cur.execute(sql, args)
            return cur.fetchall() if cur.description else []
        finally:
            conn.close()

    def timed(self, stage, fn, *args):
        return timed_call(self.timings, stage, fn, *args)

    def present(self):
        names = [key(t) for t in self.p["required_tables"]]
        rows = self.query("SELECT " + ", ".join("to_regclass(%s) IS NOT NULL" for _ in names),
                          [ident(n) for n in names])
        return {n: bool(v) for n, v in zip(names, rows[0], strict=True)}

    def counts(self, names):
        sql = "SELECT " + ", ".join("(SELECT count(*) FROM %s)" % ident(n) for n in names)  # noqa: S608 (quoted)
        return dict(zip(names, map(int, self.query(sql)[0]), strict=True))

    def restore(self):
        work = tempfile.mkdtemp(prefix="aiadmin-pgrestore-")
        try:
            passfile = os.path.join(work, "pgpass")
            fd = os.open(passfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(pgpass_line(self.p))
            env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PGPASSFILE": passfile,
                   "PGSSLMODE": self.p["sslmode"], "PGAPPNAME": self.p["application_name"],
                   "PGCONNECT_TIMEOUT": str(self.p["connect_timeout"])}
            if self.p.get("ssl_rootcert"):
                env["PGSSLROOTCERT"] = self.p["ssl_rootcert"]
            run_tool([resolve_client(self.p["pg_restore"]), "--exit-on-error", "--single-transaction", "--no-owner",
                      "--no-privileges", "-h", self.p["host"], "-p", str(self.p["port"]), "-U", self.p["user"],
                      "-d", self.p["database"], self.p["dump"]], "restore", self.p["timeout"], env)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def run(self, check_mode):
        expected = {key(k): int(v) for k, v in self.p["expected_counts"].items()}
        names = [key(t) for t in self.p["required_tables"]]
        present = self.timed("check", self.present)
        state = "empty"
        if any(present.values()):
            have = self.counts([n for n in names if present[n]])
            if all(present.values()) and all(have[n] == expected.get(n, have[n]) for n in names):
                state = "restored"
            else:
                raise BackupError("check", "the target database %s on %s already holds data (%s): not a new "
                                  "instance; the restore goes only into an empty database" % (
                                      self.p["database"], self.p["host"],
                                      ", ".join("%s %s" % (n, "%d rows" % have[n] if n in have else "missing")
                                                for n in names)))
        result = {"state_before": state, "changed": state == "empty", "timings_s": self.timings}
        if check_mode:
            msg = ("check mode: %s on %s is empty; would restore %s" % (self.p["database"], self.p["host"],
                                                                     os.path.basename(self.p["dump"]))
                   if state == "empty" else "check mode: %s already holds the dump's rows" % self.p["database"])
            return dict(result, msg=msg, row_counts={}, max_ids={})
        if state == "empty":
            if not os.path.isfile(self.p["dump"]):
                raise BackupError("restore", "the archive %s does not exist" % self.p["dump"])
            self.timed("restore", self.restore)
            self.timed("analyze", self.query, "ANALYZE " + ", ".join(ident(n) for n in names))
        counts = self.timed("counts", self.counts, names)
        wrong = ["%s: %d restored, the manifest says %d" % (n, counts[n], expected[n])
                 for n in names if n in expected and counts[n] != expected[n]]
        if wrong:
            raise BackupError("counts", "row counts differ: " + "; ".join(wrong))
        max_ids = {}
        for table in self.p["max_id_tables"]:
            max_ids[key(table)] = self.query("SELECT coalesce(max(id), 0) FROM %s" % ident(table))[0][0]  # noqa: S608
        msg = "%s %s into %s on %s: %s" % (
            "restored" if state == "empty" else "already restored (an earlier run):", os.path.basename(self.p["dump"]),
            self.p["database"], self.p["host"], ", ".join("%s %d" % (n.split(".", 1)[1], counts[n]) for n in names))
        return dict(result, msg=msg, row_counts=counts, max_ids=max_ids)


def validate(params):
    errors = validate_common(params)
    if not params["required_tables"]:
        errors.append("required_tables must name at least one table")
    if params["timeout"] <= 0:
        errors.append("timeout must be > 0")
    return errors


def main():
    spec = common_argument_spec()
    spec["application_name"]["default"] = "aiadmin-ops-restore"
    spec.update(
        dump=dict(type="path", required=True),
        required_tables=dict(type="list", elements="str", required=True),
        expected_counts=dict(type="dict", required=True),
        max_id_tables=dict(type="list", elements="str", default=[]),
        pg_restore=dict(type="path", default="pg_restore"),
        timeout=dict(type="int", default=3600),
    )
    module, started = start_module(spec, validate)
    job = None
    try:
        job = Restore(module.params)
        result = job.run(module.check_mode)
    except Exception as exc:  # BackupError, the driver's errors, a missing driver
        stage = getattr(exc, "stage", "connect")
        msg = "pg_restore_db: %s failed: %s" % (stage, one_line(str(exc), 600))
        module.fail_json(msg=msg, summary=msg, stage=stage, timings_s=job.timings if job else {},
                         duration_s=round(time.monotonic() - started, 3))
    result.update(summary=result["msg"], duration_s=round(time.monotonic() - started, 3))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
