#!/usr/bin/python
"""Ansible module: a verified, encrypted pg_dump of one database, kept atomically with a manifest."""

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
options:
  host:
    description: Database host name or address (verified against the certificate with verify-full).
    type: str
    required: true
  hostaddr: {description: Numeric address to connect to, skipping name resolution., type: str}
  port: {description: Database port., type: int, default: 5432}
  database: {description: The database to dump., type: str, default: postgres, aliases: [dbname, login_db]}
  user: {description: Database user., type: str, default: postgres, aliases: [login_user]}
  password: {description: Its password (never logged)., type: str, aliases: [login_password]}
  sslmode: {description: libpq sslmode., type: str, default: verify-full,
            choices: [disable, allow, prefer, require, verify-ca, verify-full]}
  ssl_rootcert: {description: The provider's CA certificate., type: path, aliases: [ca_cert]}
  connect_timeout: {description: Seconds to wait for a connection., type: int, default: 10}
  application_name: {description: application_name of the module's sessions., type: str, default: aiadmin-ops-backup}
  report_only: {description: Unused (accepted for the shared gate options)., type: bool, default: false}
  driver: {description: PostgreSQL driver for the module's own session., type: str, default: auto,
           choices: [auto, psycopg, psycopg2]}
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

import contextlib
import datetime
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.pg_gate import (
    GateError,
    common_argument_spec,
    connect_kwargs,
    load_driver,
    one_line,
    validate_common,
)

_TOC_DATA = re.compile(r"^\d+; \d+ \d+ TABLE DATA (\S+) (\S+) ")


class BackupError(Exception):
    def __init__(self, stage, message):
        super().__init__(message)
        self.stage = stage


def qualified(name):
    schema, _, table = name.rpartition(".")
    return (schema or "public", table)


def major_of(version_text):
    match = re.search(r"\)\s+(\d+)(?:\.(\d+))?", version_text) or re.search(r"(\d+)\.\d+", version_text)
    if not match:
        raise BackupError("versions", "cannot read a version from %r" % version_text.strip())
    return int(match.group(1))


def fsync_path(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_atomic(path, text):
    tmp = "%s.tmp-%d" % (path, os.getpid())
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.rename(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def pgpass_line(params):
    def esc(value):
        return str(value).replace("\\", "\\\\").replace(":", "\\:")

    return ":".join(esc(v) for v in (params["host"], params["port"], params["database"], params["user"],
                                     params["password"] or "")) + "\n"


def run_tool(argv, stage, timeout, env=None):
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env, check=False)
    except FileNotFoundError:
        raise BackupError(stage, "%s not found (install it on this host)" % argv[0]) from None
    except subprocess.TimeoutExpired:
        raise BackupError(stage, "%s did not finish within %s s (killed)" % (
            os.path.basename(argv[0]), timeout)) from None
    if proc.returncode != 0:
        raise BackupError(stage, "%s failed (exit %d): %s" % (os.path.basename(argv[0]), proc.returncode,
                                                             one_line(proc.stderr or proc.stdout, 600)))
    return proc.stdout


class Backup:
    def __init__(self, module):
        self.module = module
        self.p = module.params
        self.timings = {}
        self.work = None
        self.conn = None

    def timed(self, stage, fn, *args):
        started = time.monotonic()
        try:
            return fn(*args)
        finally:
            self.timings[stage] = round(time.monotonic() - started, 3)

    def connect(self):
        driver = load_driver(self.p["driver"])
        try:
            self.conn = driver.connect(connect_kwargs(self.p))
        except Exception as exc:  # the driver's own errors: wrong CA, password, host
            raise BackupError("connect", "cannot connect to %s:%s/%s as %s: %s" % (
                self.p["host"], self.p["port"], self.p["database"], self.p["user"], one_line(str(exc), 400))) from exc
        self.driver = driver
        return driver.server_version_num(self.conn)

    def versions(self, server_num):
        client_text = run_tool([self.p["pg_dump"], "--version"], "versions", 30)
        restore_text = run_tool([self.p["pg_restore"], "--version"], "versions", 30)
        client, restore, server = major_of(client_text), major_of(restore_text), server_num // 10000
        if client < server:
            raise BackupError("versions", "pg_dump %d cannot dump a PostgreSQL %d server: install the client of "
                                          "major %d or newer (postgresql-client-%d)" % (client, server, server, server))
        if restore != client:
            raise BackupError("versions", "pg_restore %d does not match pg_dump %d" % (restore, client))
        return {"server": server_num, "server_major": server, "pg_dump": client_text.strip(), "client_major": client}

    def check_tables(self, cur, tables):
        for name in tables:
            schema, table = qualified(name)
            cur.execute("SELECT to_regclass(%s) IS NOT NULL", ("%s.%s" % (sql_quote(schema), sql_quote(table)),))
            if not cur.fetchone()[0]:
                raise BackupError("tables", "table %s.%s does not exist in %s" % (schema, table, self.p["database"]))

    def snapshot_counts(self, tables):
        cur = self.conn.cursor()
        cur.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        cur.execute("SELECT pg_export_snapshot()")
        snapshot = cur.fetchone()[0]
        self.check_tables(cur, tables)
        sql = __import__(self.driver.name + ".sql", fromlist=["sql"])
        counts = {}
        for name in tables:
            schema, table = qualified(name)
            cur.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, table)))
            counts["%s.%s" % (schema, table)] = cur.fetchone()[0]
        return snapshot, counts

    def dump(self, snapshot, plain):
        pgpass = os.path.join(self.work, "pgpass")
        fd = os.open(pgpass, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(pgpass_line(self.p))
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(PGPASSFILE=pgpass, PGSSLMODE=self.p["sslmode"], PGCONNECT_TIMEOUT=str(self.p["connect_timeout"]),
                   PGAPPNAME=self.p["application_name"])
        if self.p["ssl_rootcert"]:
            env["PGSSLROOTCERT"] = self.p["ssl_rootcert"]
        argv = [self.p["pg_dump"], "--no-password", "--format=custom", "--snapshot=" + snapshot, "--file=" + plain,
                "--host=" + self.p["host"], "--port=%d" % self.p["port"], "--username=" + self.p["user"],
                "--dbname=" + self.p["database"]]
        try:
            run_tool(argv, "dump", self.p["dump_timeout"], env)
        finally:
            os.unlink(pgpass)
        fsync_path(plain)

    def toc(self, plain):
        listing = run_tool([self.p["pg_restore"], "--list", plain], "toc", 300)
        entries = [line for line in listing.splitlines() if line and not line.startswith(";")]
        data = {m.group(1) + "." + m.group(2) for m in map(_TOC_DATA.match, entries) if m}
        missing = sorted("%s.%s" % qualified(t) for t in self.p["required_tables"]
                         if "%s.%s" % qualified(t) not in data)
        if missing:
            raise BackupError("toc", "the archive holds no data for %s" % ", ".join(missing))
        return len(entries)

    def encrypt(self, plain, sealed):
        argv = [self.p["age"]]
        for recipient in self.p["age_recipients"]:
            argv += ["--recipient", recipient]
        run_tool([*argv, "--output", sealed, plain], "encrypt", 3600)
        fsync_path(sealed)
        if os.path.getsize(sealed) <= os.path.getsize(plain):
            raise BackupError("encrypt", "age wrote %d bytes for a %d-byte archive" % (
                os.path.getsize(sealed), os.path.getsize(plain)))

    def run(self):
        started_at = datetime.datetime.now(datetime.timezone.utc)
        stamp = started_at.strftime("%Y%m%dT%H%M%SZ")
        dest = self.p["dest_dir"]
        server_num = self.timed("connect", self.connect)
        versions = self.timed("versions", self.versions, server_num)
        tables = self.p["count_tables"] if self.p["count_tables"] is not None else self.p["required_tables"]
        if self.module.check_mode:
            self.check_tables(self.conn.cursor(), tables)
            return {"changed": True, "versions": versions, "msg": "check mode: would dump %s" % self.p["database"]}
        if not os.path.isdir(dest):
            os.makedirs(dest, mode=0o700)
        self.work = tempfile.mkdtemp(prefix=".partial-%s-" % stamp, dir=dest)
        plain = os.path.join(self.work, "archive.dump")
        sealed = os.path.join(self.work, "archive.dump.age")
        snapshot, counts = self.timed("counts", self.snapshot_counts, tables)
        self.timed("dump", self.dump, snapshot, plain)
        self.conn.cursor().execute("COMMIT")
        size = os.path.getsize(plain)
        if size < self.p["min_size"]:
            raise BackupError("size", "the archive is %d bytes, below the floor of %d" % (size, self.p["min_size"]))
        entries = self.timed("toc", self.toc, plain)
        plain_sha = self.timed("sha256", sha256_of, plain)
        self.timed("encrypt", self.encrypt, plain, sealed)
        os.unlink(plain)
        sealed_sha = sha256_of(sealed)

        base = "%s-%s" % (self.p["name_prefix"], stamp)
        final = os.path.join(dest, base + ".dump.age")
        manifest_path = os.path.join(dest, base + ".manifest.json")
        if os.path.exists(final) or os.path.exists(manifest_path):
            raise BackupError("keep", "%s exists already (two backups in the same second?)" % final)
        manifest = {
            "file": os.path.basename(final), "database": self.p["database"], "host": self.p["host"],
            "started": started_at.isoformat(timespec="seconds"),
            "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "server_version_num": versions["server"], "pg_dump": versions["pg_dump"],
            "format": "custom", "encryption": "age", "age_recipients": self.p["age_recipients"],
            "size": os.path.getsize(sealed), "sha256": sealed_sha,
            "plaintext_size": size, "plaintext_sha256": plain_sha, "toc_entries": entries,
            "row_counts": counts,
            "row_counts_method": "counted in a REPEATABLE READ transaction whose exported snapshot pg_dump used",
            "verification": "toc", "timings_s": self.timings,
        }
        kept = [final, final + ".sha256", manifest_path]
        try:
            os.rename(sealed, final)
            write_atomic(final + ".sha256", "%s  %s\n" % (sealed_sha, os.path.basename(final)))
            write_atomic(manifest_path, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
            fsync_path(dest)
        except OSError as exc:
            for path in kept:  # a file without its manifest is not a backup
                if os.path.exists(path):
                    os.unlink(path)
            raise BackupError("keep", "cannot keep %s: %s" % (final, exc)) from exc
        return {"changed": True, "path": final, "manifest_path": manifest_path, "manifest": manifest}

    def cleanup(self):
        if self.conn is not None:
            with contextlib.suppress(Exception):  # closing a broken session must not hide the real error
                self.conn.close()
        if self.work:
            shutil.rmtree(self.work, ignore_errors=True)


def sql_quote(ident):
    return '"%s"' % ident.replace('"', '""')


def record_failure(path, stage, message):
    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        write_atomic(path, json.dumps({"time": datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds"), "stage": stage, "msg": message}, indent=2) + "\n")
    except OSError:
        pass  # the module's own failure result still says what happened


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
    )
    return spec


def main():
    spec = argument_spec()
    module = AnsibleModule(argument_spec=spec, supports_check_mode=True)
    p = module.params
    errors = validate_common(p)
    if not p["age_recipients"] or any(not r.startswith("age1") for r in p["age_recipients"]):
        errors.append("age_recipients must list age public keys (age1...); the private key never goes to this host")
    if not re.match(r"^[A-Za-z0-9_.-]+$", p["name_prefix"]):
        errors.append("name_prefix may hold only letters, digits, '_', '.' and '-'")
    if errors:
        module.fail_json(msg="pg_backup: " + "; ".join(errors), stage="params", timings_s={})
    failure_file = p["failure_file"] or os.path.join(p["dest_dir"], "last-failure.json")

    os.umask(0o077)
    job = Backup(module)
    try:
        result = job.run()
    except (BackupError, GateError) as exc:
        stage = getattr(exc, "stage", None) or "connect"
        msg = "pg_backup: %s failed: %s" % (stage, exc)
        if not module.check_mode:
            record_failure(failure_file, stage, msg)
        job.cleanup()
        module.fail_json(msg=msg, stage=stage, timings_s=job.timings)
    except OSError as exc:
        msg = "pg_backup: keep failed: %s" % exc
        if not module.check_mode:
            record_failure(failure_file, "keep", msg)
        job.cleanup()
        module.fail_json(msg=msg, stage="keep", timings_s=job.timings)
    job.cleanup()
    module.exit_json(timings_s=job.timings, **result)


if __name__ == "__main__":
    main()
