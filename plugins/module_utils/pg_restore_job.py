# Copyright: aiadmin-ops contributors
# SPDX-License-Identifier: MIT
"""Restore test of one pg_backup backup set in a scratch PostgreSQL cluster: the logic of the
pg_restore_test module (plugins/modules/pg_restore_test.py documents it). Runs where the age
private key is (the operator's controller), never on the app host or against a real database.
Standard library only; PostgreSQL's own programs do the work.
"""

from __future__ import annotations

import contextlib
import datetime
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time

from ansible.module_utils.pg_backup_job import (
    BackupError,
    fsync_path,
    major_of,
    qualified,
    run_tool,
    sha256_of,
    sql_quote,
    write_atomic,
)

TOOLS = ("initdb", "pg_ctl", "pg_restore", "psql")
SCRATCH_DB = "restore_test"
PORT = 5432  # only names the unix socket: the cluster listens on no TCP address
SOCKET_PATH_MAX = 107  # sun_path


def now_iso():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def sql_literal(text):
    return "'%s'" % text.replace("'", "''")


def server_major(bin_dir):
    """The major version of the server in bin_dir: postgres --version, pg_config --version, the path."""
    for tool in ("postgres", "pg_config"):
        path = os.path.join(bin_dir, tool)
        if os.access(path, os.X_OK):
            with contextlib.suppress(BackupError):
                text = run_tool([path, "--version"], "server", 30)
                return major_of(text), " ".join(text.split())
    match = re.search(r"/postgresql/(\d+)/bin/?$", bin_dir)
    return (int(match.group(1)), "PostgreSQL %s" % match.group(1)) if match else (None, None)


def installed_servers(bin_dirs):
    """[(major, version text, bin dir)] of the dirs holding a usable server, sorted by major."""
    found = []
    for bin_dir in bin_dirs:
        if all(os.access(os.path.join(bin_dir, t), os.X_OK) for t in TOOLS):
            major, text = server_major(bin_dir)
            if major is not None:
                found.append((major, text, bin_dir))
    return sorted(found)


def kill_leftovers(marker):
    """SIGKILL every process whose command line names marker (our private work dir): a tool
    killed at a timeout under runuser leaves its child behind."""
    needle = marker.encode()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        if int(pid) == os.getpid():
            continue
        try:
            with open("/proc/%s/cmdline" % pid, "rb") as fh:
                if needle in fh.read():
                    os.kill(int(pid), signal.SIGKILL)
        except OSError:
            continue


class RestoreTest:
    def __init__(self, params, check_mode=False):
        self.p = params
        self.check_mode = check_mode
        self.timings = {}
        self.deadline = time.monotonic() + params["timeout"]
        self.as_postgres = os.geteuid() == 0
        self.work = self.data = None
        self.started = False
        self.server = None  # (major, version text, bin dir)
        self.manifest = None
        self.stage = "manifest"
        self.row_counts = {}

    def timed(self, stage, fn, *args):
        self.stage = stage
        started = time.monotonic()
        try:
            return fn(*args)
        finally:
            self.timings[stage] = round(time.monotonic() - started, 3)

    def left(self, stage):
        seconds = int(self.deadline - time.monotonic())
        if seconds < 1:
            raise BackupError(stage, "the timeout of %d s was reached" % self.p["timeout"])
        return seconds

    def pg(self, tool, *args, stage):
        argv = [os.path.join(self.server[2], tool), *args]
        if self.as_postgres:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        return run_tool(argv, stage, self.left(stage), env)

    def psql(self, sql, stage, dbname=SCRATCH_DB):
        return self.pg("psql", "-X", "-q", "-A", "-t", "-w", "-v", "ON_ERROR_STOP=1", "-h", self.work,
                       "-p", str(PORT), "-U", "postgres", "-d", dbname, "-c", sql, stage=stage)

    # ------------------------------------------------------------------ steps

    def load_manifest(self):
        try:
            with open(self.p["manifest"], encoding="utf-8") as fh:
                manifest = json.load(fh)
        except (OSError, ValueError) as exc:
            raise BackupError("manifest", "cannot read the manifest %s: %s" % (self.p["manifest"], exc)) from exc
        if not isinstance(manifest, dict):
            raise BackupError("manifest", "%s is not a backup manifest" % self.p["manifest"])
        self.manifest = manifest
        name = manifest.get("file")
        if not isinstance(name, str) or not name or os.path.basename(name) != name:
            raise BackupError("manifest", "the manifest names no dump file in its own directory")
        for key, kind in (("sha256", str), ("server_version_num", int), ("row_counts", dict)):
            if not isinstance(manifest.get(key), kind):
                raise BackupError("manifest", "the manifest has no valid %r" % key)
        return os.path.join(os.path.dirname(os.path.abspath(self.p["manifest"])), name)

    def checksum(self, dump):
        if not os.path.isfile(dump):
            raise BackupError("checksum", "the dump %s does not exist" % dump)
        actual = sha256_of(dump)
        if actual != self.manifest["sha256"]:
            raise BackupError("checksum", "sha256 of %s is %s, the manifest says %s (corrupted or replaced)"
                              % (os.path.basename(dump), actual, self.manifest["sha256"]))

    def decrypt(self, dump, plain):
        identity = self.p.get("identity_file")
        if identity is None:  # the key text: a 0600 file in the private (0700, root's) work dir, for age only
            identity = os.path.join(self.work, "identity")
            fd = os.open(identity, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(self.p["identity"].strip() + "\n")
        try:
            run_tool([self.p["age"], "--decrypt", "-i", identity, "-o", plain, dump], "decrypt", self.left("decrypt"))
        finally:
            if identity != self.p.get("identity_file"):
                os.unlink(identity)
        expected = self.manifest.get("plaintext_sha256")
        if expected and sha256_of(plain) != expected:
            raise BackupError("decrypt", "the decrypted archive does not match the manifest's plaintext_sha256")

    def pick_server(self):
        need = self.manifest["server_version_num"] // 10000
        dirs = self.p.get("pg_bin_dirs")
        if dirs is None:
            dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
        found = installed_servers(dirs)
        usable = [s for s in found if s[0] >= need]
        if not usable:
            have = ", ".join("%d (%s)" % (s[0], s[2]) for s in found) or "none (in %s)" % (", ".join(dirs) or "-")
            raise BackupError("server", "the dump is from PostgreSQL %d (server_version_num %d) and needs a server of "
                                        "major %d or newer; installed: %s; install postgresql-%d"
                              % (need, self.manifest["server_version_num"], need, have, need))
        self.server = usable[0]

    def start_cluster(self):
        if len(os.path.join(self.work, ".s.PGSQL.%d" % PORT)) > SOCKET_PATH_MAX:
            raise BackupError("cluster", "the work dir %s is too long for a unix socket path (choose a shorter "
                                         "work_dir)" % self.work)
        if self.as_postgres:  # the identity is gone already; postgres gets the dir and the archive
            for root, dirs, files in os.walk(self.work):
                for name in [root, *(os.path.join(root, n) for n in dirs + files)]:
                    shutil.chown(name, "postgres", "postgres")
        self.data = os.path.join(self.work, "data")
        self.pg("initdb", "-D", self.data, "-U", "postgres", "-E", "UTF8", "--locale=C", "-A", "trust",
                "--no-sync", stage="cluster")
        with open(os.path.join(self.data, "postgresql.conf"), "a", encoding="utf-8") as fh:
            fh.write("\n# restore test: unix socket in the private work dir only, no TCP\n"
                     "listen_addresses = ''\nport = %d\nunix_socket_directories = %s\n"
                     "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                     % (PORT, sql_literal(self.work)))
        log = os.path.join(self.work, "server.log")
        self.started = True
        try:
            self.pg("pg_ctl", "-D", self.data, "-l", log, "-w", "-t", str(self.left("cluster")), "-s", "start",
                    stage="cluster")
        except BackupError as exc:
            tail = ""
            with contextlib.suppress(OSError), open(log, encoding="utf-8", errors="replace") as fh:
                tail = " ".join(fh.read()[-600:].split())
            raise BackupError("cluster", "%s; server log: %s" % (exc, tail or "-")) from exc
        self.psql("CREATE DATABASE %s" % SCRATCH_DB, "cluster", dbname="postgres")

    def restore(self, plain):
        self.pg("pg_restore", "--exit-on-error", "--single-transaction", "--no-owner", "--no-privileges", "-w",
                "-h", self.work, "-p", str(PORT), "-U", "postgres", "-d", SCRATCH_DB, plain, stage="restore")

    def counts(self):
        tables = self.p.get("required_tables")
        names = ["%s.%s" % qualified(t) for t in (self.manifest["row_counts"] if tables is None else tables)]
        if not names:
            return {}
        idents = ["%s.%s" % tuple(map(sql_quote, qualified(n))) for n in names]
        present = self.psql("SELECT " + ", ".join("to_regclass(%s) IS NOT NULL" % sql_literal(i) for i in idents),
                            "counts").strip().split("|")
        missing = [n for n, p in zip(names, present, strict=True) if p != "t"]
        if missing:
            raise BackupError("counts", "the restored database has no table %s" % ", ".join(missing))
        sql = "SELECT " + ", ".join("(SELECT count(*) FROM %s)" % i for i in idents)  # noqa: S608 (quoted)
        counts = dict(zip(names, map(int, self.psql(sql, "counts").strip().split("|")), strict=True))
        self.row_counts = counts
        expected = {"%s.%s" % qualified(k): v for k, v in self.manifest["row_counts"].items()}
        wrong = ["%s: %d restored, the manifest says %d" % (n, counts[n], expected[n])
                 for n in names if n in expected and counts[n] != expected[n]]
        if wrong:
            raise BackupError("counts", "row counts differ: " + "; ".join(wrong))
        return counts

    def run(self):
        dump = self.timed("manifest", self.load_manifest)
        self.timed("checksum", self.checksum, dump)
        if self.check_mode:
            return {"changed": bool(self.p["mark"]),
                    "msg": "check mode: the checksum of %s matches; would restore it" % os.path.basename(dump)}
        self.stage = "decrypt"
        self.work = tempfile.mkdtemp(prefix="pg-restore-test-", dir=self.p.get("work_dir") or tempfile.gettempdir())
        plain = os.path.join(self.work, "archive.dump")
        self.timed("decrypt", self.decrypt, dump, plain)
        self.timed("server", self.pick_server)
        self.timed("cluster", self.start_cluster)
        self.timed("restore", self.restore, plain)
        counts = self.timed("counts", self.counts)
        return {"msg": "%s restored into PostgreSQL %d, %d table(s) counted, all as in the manifest"
                % (self.manifest["file"], self.server[0], len(counts))}

    def cleanup(self):
        if self.work is None:
            return
        if self.started:
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                argv = [os.path.join(self.server[2], "pg_ctl"), "-D", self.data, "-m", "immediate", "-w", "stop"]
                subprocess.run(["runuser", "-u", "postgres", "--", *argv] if self.as_postgres else argv,
                               capture_output=True, timeout=60, check=False)
        kill_leftovers(self.work)
        shutil.rmtree(self.work, ignore_errors=True)


def mark(path, manifest, record):
    manifest = dict(manifest, restore_test=record)
    if record["ok"]:
        manifest["verification"] = "restored"
        manifest.pop("failure", None)
    else:
        manifest["verification"] = "failed"
        manifest["failure"] = {k: record[k] for k in ("time", "stage", "msg")}
    write_atomic(path, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    fsync_path(os.path.dirname(os.path.abspath(path)))


def validate(params):
    errors = []
    if (params.get("identity") is None) == (params.get("identity_file") is None):
        errors.append("give exactly one of identity and identity_file")
    if params.get("identity") is not None and not re.search(r"^(AGE-SECRET-KEY-1|AGE-PLUGIN-)", params["identity"],
                                                            re.M):
        errors.append("identity must be an age secret key (AGE-SECRET-KEY-1...), not a public key or other text")
    if params.get("identity_file") and not os.path.isfile(params["identity_file"]):
        errors.append("identity_file %s does not exist" % params["identity_file"])
    if not 1 <= (params.get("timeout") or 0) <= 86400:
        errors.append("timeout must be between 1 and 86400 seconds")
    if params.get("work_dir") and not os.path.isdir(params["work_dir"]):
        errors.append("work_dir %s is not a directory" % params["work_dir"])
    return errors


def execute(params, check_mode=False):
    """(ok, result): run one restore test, always clean up, mark the manifest unless told not to."""
    os.umask(0o077)
    job = RestoreTest(params, check_mode)
    started = time.monotonic()
    stage = msg = None
    result = {}
    try:
        result = job.run()
    except (BackupError, OSError, ValueError) as exc:
        stage = getattr(exc, "stage", None) or job.stage
        msg = "pg_restore_test: %s failed: %s" % (stage, exc)
    finally:
        job.timed("cleanup", job.cleanup)
    duration = round(time.monotonic() - started, 3)
    server = job.server
    result.update(ok=stage is None, duration_s=duration, timings_s=job.timings, changed=result.get("changed", False),
                  row_counts=job.row_counts,
                  server_version=server[1] if server else None)
    if stage:
        result.update(msg=msg, stage=stage)
    if params["mark"] and not check_mode and job.manifest is not None:
        record = {"time": now_iso(), "ok": stage is None, "server_major": server[0] if server else None,
                  "duration_s": duration, "row_counts": result["row_counts"]}
        if stage:
            record.update(stage=stage, msg=msg)
        try:
            mark(params["manifest"], job.manifest, record)
            result["changed"] = True
        except OSError as exc:
            result.update(ok=False, stage=stage or "mark",
                          msg="%s; and the manifest could not be marked: %s" % (msg or "restore test passed", exc))
    return result["ok"], result
