# Copyright: aiadmin-ops contributors
# SPDX-License-Identifier: MIT
"""One verified, encrypted pg_dump, kept atomically with a manifest: the logic of the pg_backup
module (plugins/modules/pg_backup.py documents it), also run as a script by the host's backup
timer, with a JSON configuration and a pgpass file instead of a password:

    python3 pg_backup_job.py /etc/aiadmin-ops/backup.json

It prints the result as JSON and exits 0 when the backup was kept, 1 when it failed (the
failure is recorded in failure_file as well). Standard library only besides psycopg.
"""

from __future__ import annotations

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

try:
    from ansible.module_utils.pg_gate import GateError, connect_kwargs, load_driver, one_line, validate_common
except ImportError:  # run as a script on the host (the timer): pg_gate.py sits beside this file
    from pg_gate import GateError, connect_kwargs, load_driver, one_line, validate_common

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


def resolve_client(tool):
    """The binary to run for a PostgreSQL client tool. Debian's C(pg_dump) and C(pg_restore) on
    PATH are its Perl pg_wrapper, which for a remote server runs the newest installed major's
    binary: resolve that once here (the same binary), so that no run pays the wrapper's ~50 ms
    start four times. An explicit path, or anything that is not the wrapper, is kept as given."""
    if os.sep in tool:
        return tool
    found = shutil.which(tool)
    if not found or os.path.basename(os.path.realpath(found)) != "pg_wrapper":
        return tool
    majors = []
    with contextlib.suppress(OSError):
        majors = [int(d) for d in os.listdir("/usr/lib/postgresql") if d.isdigit()
                  and os.access("/usr/lib/postgresql/%s/bin/%s" % (d, tool), os.X_OK)]
    return "/usr/lib/postgresql/%d/bin/%s" % (max(majors), tool) if majors else tool


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


def timed_call(timings, stage, fn, *args):
    """fn(*args), its wall time in seconds recorded as timings[stage] (also when it raises)."""
    started = time.monotonic()
    try:
        return fn(*args)
    finally:
        timings[stage] = round(time.monotonic() - started, 3)


class Backup:
    def __init__(self, params, check_mode=False):
        self.p = dict(params, pg_dump=resolve_client(params["pg_dump"]),
                      pg_restore=resolve_client(params["pg_restore"]))
        self.check_mode = check_mode
        self.timings = {}
        self.work = None
        self.conn = None

    def timed(self, stage, fn, *args):
        return timed_call(self.timings, stage, fn, *args)

    def connect(self):
        driver = load_driver(self.p["driver"])
        try:
            kwargs = connect_kwargs(self.p)
            if self.p.get("passfile") and "password" not in kwargs:
                kwargs["passfile"] = self.p["passfile"]
            self.conn = driver.connect(kwargs)
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

    def checked(self, tables):
        return list(dict.fromkeys([*self.p["required_tables"], *tables]))

    def check_tables(self, cur, tables):
        """Every table exists; a partitioned table's data is in its leaf partitions (the TOC
        lists TABLE DATA for those only), so self.holders maps each table to where its data is."""
        self.holders = {}
        for name in tables:
            schema, table = qualified(name)
            cur.execute("SELECT to_regclass(%s)::oid", ("%s.%s" % (sql_quote(schema), sql_quote(table)),))
            oid = cur.fetchone()[0]
            if oid is None:
                raise BackupError("tables", "table %s.%s does not exist in %s" % (schema, table, self.p["database"]))
            cur.execute("SELECT n.nspname, c.relname FROM pg_partition_tree(%s::regclass) t"
                        " JOIN pg_class c ON c.oid = t.relid JOIN pg_namespace n ON n.oid = c.relnamespace"
                        " WHERE t.isleaf ORDER BY 1, 2", (oid,))
            leaves = ["%s.%s" % row for row in cur.fetchall()]
            self.holders["%s.%s" % (schema, table)] = leaves or ["%s.%s" % (schema, table)]

    def snapshot_counts(self, tables):
        cur = self.conn.cursor()
        cur.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        cur.execute("SELECT pg_export_snapshot()")
        snapshot = cur.fetchone()[0]
        self.check_tables(cur, self.checked(tables))
        sql = __import__(self.driver.name + ".sql", fromlist=["sql"])
        counts = {}
        for name in tables:
            schema, table = qualified(name)
            cur.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, table)))
            counts["%s.%s" % (schema, table)] = cur.fetchone()[0]
        return snapshot, counts

    def dump(self, snapshot, plain):
        pgpass = self.p.get("passfile")
        if self.p.get("password") is not None:
            pgpass = os.path.join(self.work, "pgpass")
            fd = os.open(pgpass, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(pgpass_line(self.p))
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(PGSSLMODE=self.p["sslmode"], PGCONNECT_TIMEOUT=str(self.p["connect_timeout"]),
                   PGAPPNAME=self.p["application_name"])
        if pgpass:
            env["PGPASSFILE"] = pgpass
        if self.p["ssl_rootcert"]:
            env["PGSSLROOTCERT"] = self.p["ssl_rootcert"]
        argv = [self.p["pg_dump"], "--no-password", "--format=custom", "--snapshot=" + snapshot, "--file=" + plain,
                "--host=" + self.p["host"], "--port=%d" % self.p["port"], "--username=" + self.p["user"],
                "--dbname=" + self.p["database"]]
        try:
            run_tool(argv, "dump", self.p["dump_timeout"], env)
        finally:
            if pgpass != self.p.get("passfile"):
                os.unlink(pgpass)
        fsync_path(plain)

    def toc(self, plain):
        listing = run_tool([self.p["pg_restore"], "--list", plain], "toc", 300)
        entries = [line for line in listing.splitlines() if line and not line.startswith(";")]
        data = {m.group(1) + "." + m.group(2) for m in map(_TOC_DATA.match, entries) if m}
        holders = getattr(self, "holders", {})
        missing = sorted(name for name in ("%s.%s" % qualified(t) for t in self.p["required_tables"])
                         if not all(h in data for h in holders.get(name, [name])))
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
        if self.check_mode:
            self.check_tables(self.conn.cursor(), self.checked(tables))
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


def record_failure(path, stage, message, **extra):
    record = {"time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "stage": stage, "msg": message}
    if os.environ.get("INVOCATION_ID"):  # a systemd run: its failure unit knows it was recorded
        record["invocation"] = os.environ["INVOCATION_ID"]
    record.update(extra)
    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        write_atomic(path, json.dumps(record, indent=2, sort_keys=True) + "\n")
    except OSError:
        pass  # the module's own failure result still says what happened


def record_service_failure(params, environ):
    """The OnFailure unit's job: record a failed service run unless the job recorded it itself
    (a kill or a timeout leaves no record of its own). True when a record was written."""
    path = failure_file_of(params)
    invocation = environ.get("MONITOR_INVOCATION_ID", "")
    with contextlib.suppress(OSError, ValueError), open(path, encoding="utf-8") as fh:
        if invocation and json.load(fh).get("invocation") == invocation:
            return False
    unit = environ.get("MONITOR_UNIT", "aiadmin-backup.service")
    result = environ.get("MONITOR_SERVICE_RESULT", "unknown")
    if environ.get("MONITOR_EXIT_STATUS"):
        result += ", status " + environ["MONITOR_EXIT_STATUS"]
    record_failure(path, "service", "pg_backup: %s failed (result %s) before the job recorded why; see journalctl -u %s"
                   % (unit, result, unit), invocation=invocation)
    return True


def failure_file_of(params):
    return params.get("failure_file") or os.path.join(params["dest_dir"], "last-failure.json")


# Every option and its default (the module's argument spec adds the types); a script run fills
# what its configuration leaves out from here.
DEFAULTS = {
    "hostaddr": None, "port": 5432, "database": "postgres", "user": "postgres", "password": None,
    "passfile": None, "sslmode": "verify-full", "ssl_rootcert": None, "connect_timeout": 10,
    "application_name": "aiadmin-ops-backup", "driver": "auto", "name_prefix": "backup", "required_tables": [],
    "count_tables": None, "min_size": 2048, "pg_dump": "pg_dump", "pg_restore": "pg_restore", "age": "age",
    "dump_timeout": 3600, "failure_file": None, "keep_local": None,
}
REQUIRED = ("host", "dest_dir", "age_recipients")


def validate(params):
    errors = validate_common(params)
    if not params.get("dest_dir"):
        errors.append("dest_dir is required")
    recipients = params.get("age_recipients") or []
    if not recipients or any(not str(r).startswith("age1") for r in recipients):
        errors.append("age_recipients must list age public keys (age1...); the private key never goes to this host")
    if not re.match(r"^[A-Za-z0-9_.-]+$", params.get("name_prefix") or ""):
        errors.append("name_prefix may hold only letters, digits, '_', '.' and '-'")
    if params.get("password") is not None and params.get("passfile"):
        errors.append("give password or passfile, not both")
    if params.get("keep_local") is not None and params["keep_local"] < 1:
        errors.append("keep_local must be at least 1 (the newest backup is always kept)")
    if params.get("passfile") and not os.path.isfile(params["passfile"]):
        errors.append("passfile %s does not exist" % params["passfile"])
    return errors


def execute(params, check_mode=False):
    """(ok, result): run one backup; on failure record it and clean up. Never raises for a
    failed stage."""
    failure_file = failure_file_of(params)
    os.umask(0o077)
    job = Backup(params, check_mode)
    try:
        result = job.run()
    except (BackupError, GateError, OSError) as exc:
        stage = getattr(exc, "stage", None) or ("keep" if isinstance(exc, OSError) else "connect")
        msg = "pg_backup: %s failed: %s" % (stage, exc)
        if not check_mode:
            record_failure(failure_file, stage, msg)
        job.cleanup()
        return False, {"msg": msg, "stage": stage, "timings_s": job.timings}
    job.cleanup()
    result["timings_s"] = job.timings
    if params.get("keep_local") and not check_mode:
        result["pruned"] = prune_local(params)
    return True, result


def prune_local(params):
    """After a kept backup: the host keeps its keep_local newest sets (backup_catalog's prune, the
    retention with every bucket at 0). A failed prune is reported, never a failed backup."""
    try:
        from ansible.module_utils import backup_catalog
    except ImportError:  # the host's timer: backup_catalog.py sits beside this file
        import backup_catalog
    try:
        out = backup_catalog.run({"path": params["dest_dir"], "name_prefix": params["name_prefix"], "state": "prune",
                                  "policy": {"hourly": 0, "daily": 0, "weekly": 0, "monthly": 0,
                                             "keep_min": params["keep_local"]}})
    except backup_catalog.CatalogError as exc:
        return {"failed": True, "msg": str(exc)}
    return {"removed": out["removed"], "msg": out["msg"]}


def finish_module(module, name, validate_fn, execute_fn, **failed_extra):
    """The body of a module built on a job (pg_backup, pg_restore_test): refuse bad parameters at
    stage 'params', else run the job and exit with its result."""
    errors = validate_fn(module.params)
    if errors:
        module.fail_json(msg="%s: %s" % (name, "; ".join(errors)), stage="params", timings_s={}, **failed_extra)
    ok, result = execute_fn(module.params, module.check_mode)
    if not ok:
        module.fail_json(**result)
    module.exit_json(**result)


def load_config(path):
    """A script run's parameters: the JSON file over DEFAULTS; keys starting with '_' are comments."""
    with open(path, encoding="utf-8") as fh:
        config = json.load(fh)
    if not isinstance(config, dict):
        raise ValueError("%s: the configuration must be a JSON object" % path)
    params = {k: v for k, v in config.items() if not k.startswith("_")}
    unknown = sorted(set(params) - set(DEFAULTS) - set(REQUIRED))
    if unknown:
        raise ValueError("%s: unknown keys %s" % (path, ", ".join(unknown)))
    return dict(DEFAULTS, **params)


def main(argv=None):
    import sys

    argv = sys.argv[1:] if argv is None else argv
    mode = argv[0] if len(argv) == 2 and argv[0] in ("--check-config", "--record-service-failure") else None
    if len(argv) != (2 if mode else 1):
        print("usage: pg_backup_job.py [--check-config | --record-service-failure] CONFIG.json", file=sys.stderr)
        return 2
    try:
        params = load_config(argv[-1])
        errors = validate(params)
    except (OSError, ValueError) as exc:
        params, errors = None, [str(exc)]
    if errors:
        print(json.dumps({"failed": True, "stage": "params", "msg": "pg_backup: " + "; ".join(errors)}))
        return 2
    if mode == "--check-config":
        return 0
    if mode == "--record-service-failure":
        record_service_failure(params, os.environ)
        return 0
    ok, result = execute(params)
    print(json.dumps(dict(result, failed=not ok), sort_keys=True))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
