# Copyright: aiadmin-ops contributors
# SPDX-License-Identifier: MIT
"""The backups of one store, as pg_backup_job.py keeps them: status (health), verify (checksums), prune
(retention by backup_retention.py) and extract (one verified backup decrypted, for a restore). The logic of the
backup_catalog module (plugins/modules/backup_catalog.py documents it).

A backup is `<prefix>-<YYYYmmddTHHMMSSZ>.manifest.json` with its `.dump.age` and `.dump.age.sha256`. A manifest that
does not parse, or whose dump is missing, is a problem and counts as failed. A dump without a manifest (an orphan) is
a problem too, and prune never removes it: without a manifest nobody knows what it is.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
import shutil
import stat
import tempfile

try:
    from ansible.module_utils.backup_retention import Backup, Policy, decide_retention, plan_text
    from ansible.module_utils.pg_backup_job import BackupError, fsync_path, run_tool, sha256_of, write_atomic
except ImportError:  # on the host, beside the backup job (roles/backup installs these files side by side)
    from backup_retention import Backup, Policy, decide_retention, plan_text
    from pg_backup_job import BackupError, fsync_path, run_tool, sha256_of, write_atomic

STATES = ("status", "verify", "prune", "extract")
VERIFIED = ("toc", "restored")
FAILURE_FILE = "last-failure.json"
PARTIAL_MAX_AGE = datetime.timedelta(days=1)
POLICY_DEFAULTS = {"hourly": 24, "daily": 30, "weekly": 8, "monthly": 12, "keep_min": 3}
UTC = datetime.timezone.utc
DECRYPT_TIMEOUT_S = 3600


class CatalogError(Exception):
    def __init__(self, message, **result):
        super().__init__(message)
        self.result = result


def parse_time(text):
    """An aware datetime from ISO 8601 text with an offset ("Z" included); ValueError otherwise."""
    if not isinstance(text, str):
        raise ValueError("not a time: %r" % (text,))
    value = datetime.datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
    if value.tzinfo is None or value.tzinfo.utcoffset(value) is None:
        raise ValueError("%s has no UTC offset" % text)
    return value


def iso(value):
    return value.astimezone(UTC).isoformat(timespec="seconds")


class Entry:
    """One backup of the store: its files, its manifest (None when unreadable) and its problem (None when sound)."""

    def __init__(self, store, backup_id, stamp):
        self.id = backup_id
        self.dump = os.path.join(store, backup_id + ".dump.age")
        self.sidecar = self.dump + ".sha256"
        self.manifest_path = os.path.join(store, backup_id + ".manifest.json")
        self.started = datetime.datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        self.manifest = None
        self.problem = None
        try:
            with open(self.manifest_path, encoding="utf-8") as fh:
                manifest = json.load(fh)
            if not isinstance(manifest, dict):
                raise ValueError("not a JSON object")
            self.manifest = manifest
            self.started = parse_time(manifest.get("started"))
            if manifest.get("file") != os.path.basename(self.dump):
                raise ValueError("its file is %r, not %s" % (manifest.get("file"), os.path.basename(self.dump)))
        except (OSError, ValueError) as exc:  # json.JSONDecodeError is a ValueError
            self.problem = "manifest %s is unusable (%s): counted as failed" % (
                os.path.basename(self.manifest_path), exc)
            return
        if not os.path.isfile(self.dump):
            self.problem = "dump %s is missing: counted as failed" % os.path.basename(self.dump)

    @property
    def verification(self):
        return "failed" if self.problem else self.manifest.get("verification")

    def summary(self):
        return {"id": self.id, "started": iso(self.started), "verification": self.verification}


def scan(store, prefix):
    """(entries newest first, problems): the backups of `prefix` in `store`."""
    if not os.path.isdir(store):
        raise CatalogError("the store %s does not exist or is not a directory" % store)
    try:
        names = set(os.listdir(store))
    except OSError as exc:
        raise CatalogError("cannot read the store %s: %s" % (store, exc)) from exc
    pattern = re.compile(r"^%s-(\d{8}T\d{6}Z)\.manifest\.json$" % re.escape(prefix))
    entries = [Entry(store, name[: -len(".manifest.json")], m.group(1))
               for name, m in ((n, pattern.match(n)) for n in sorted(names)) if m]
    entries.sort(key=lambda e: (e.started.astimezone(UTC), e.id), reverse=True)
    problems = [{"file": os.path.basename(e.manifest_path), "problem": e.problem} for e in entries if e.problem]
    orphan = re.compile(r"^%s-\d{8}T\d{6}Z\.dump\.age$" % re.escape(prefix))
    for name in sorted(names):
        if orphan.match(name) and name[: -len(".dump.age")] + ".manifest.json" not in names:
            problems.append({"file": name, "problem": "orphan: no manifest, never removed by prune"})
    return entries, problems


def read_sidecar(entry):
    """The checksum the sidecar holds for the dump; ValueError when missing or malformed."""
    try:
        with open(entry.sidecar, encoding="utf-8") as fh:
            fields = fh.read().split()
    except FileNotFoundError:
        raise ValueError("sidecar %s is missing" % os.path.basename(entry.sidecar)) from None
    except OSError as exc:
        raise ValueError("cannot read sidecar %s: %s" % (os.path.basename(entry.sidecar), exc)) from exc
    if len(fields) != 2 or fields[1].lstrip("*") != os.path.basename(entry.dump):
        raise ValueError("sidecar %s is not '<sha256>  %s'" % (os.path.basename(entry.sidecar),
                                                               os.path.basename(entry.dump)))
    return fields[0].lower()


def checksum_errors(entry):
    """(sha256 of the dump, problems): the dump against its manifest's sha256 and its sidecar, no problem when
    both match; OSError when the dump cannot be read. What verify and extract both judge a dump by."""
    actual = sha256_of(entry.dump)
    errors = []
    if actual != entry.manifest.get("sha256"):
        errors.append("sha256 of %s is %s, the manifest says %s" % (
            os.path.basename(entry.dump), actual, entry.manifest.get("sha256")))
    try:
        if read_sidecar(entry) != actual:
            errors.append("sha256 of %s is %s, the sidecar says otherwise" % (os.path.basename(entry.dump), actual))
    except ValueError as exc:
        errors.append(str(exc))
    return actual, errors


def last_failure(store, entries):
    """The newest failure record: last-failure.json or a failed manifest's "failure", with its source."""
    records = []
    path = os.path.join(store, FAILURE_FILE)
    with contextlib.suppress(OSError, ValueError), open(path, encoding="utf-8") as fh:  # none, or unreadable
        records.append((json.load(fh), FAILURE_FILE))
    records += [(e.manifest.get("failure"), os.path.basename(e.manifest_path))
                for e in entries if e.verification == "failed" and e.manifest]
    newest = None
    for record, source in records:
        try:
            when = parse_time(record.get("time"))
        except (AttributeError, ValueError):
            continue  # no usable time: cannot be ordered
        if newest is None or when > newest[0]:
            newest = (when, dict(time=iso(when), stage=record.get("stage"), msg=record.get("msg"), source=source))
    return newest


def status(store, prefix, interval_minutes, now):
    entries, problems = scan(store, prefix)
    verified = [e for e in entries if e.verification in VERIFIED]
    failed = [e for e in entries if e.verification == "failed"]
    interval = datetime.timedelta(minutes=interval_minutes)
    failure = last_failure(store, entries)
    result = {
        "changed": False, "count": len(entries), "verified_count": len(verified), "failed_count": len(failed),
        "bytes": sum(os.path.getsize(e.dump) for e in entries if os.path.isfile(e.dump)),
        "newest": entries[0].summary() if entries else None, "newest_verified": None,
        "last_failure": failure[1] if failure else None, "problems": problems,
    }
    tail = "(interval %d min); %d kept, %d failed" % (interval_minutes, len(entries), len(failed))
    if not verified:
        health, text = "critical", "no verified backup"
    else:
        newest = verified[0]
        age = now - newest.started
        result["newest_verified"] = dict(newest.summary(), age_s=int(age.total_seconds()))
        text = "newest verified %s %d min old" % (newest.id, age.total_seconds() // 60)
        failed_since = failure is not None and failure[0] > newest.started
        health = "critical" if age > 2 * interval else "warning" if age > interval or failed_since else "ok"
        if failed_since:
            text += ", then a failure at %(time)s (%(stage)s: %(msg)s)" % failure[1]
    result.update(health=health, msg="backups %s: %s %s" % (health, text, tail))
    return result


def verify(store, prefix, now, check_mode):
    entries, problems = scan(store, prefix)
    results, changed = [], False
    for e in entries:
        if e.problem:
            results.append({"id": e.id, "ok": False, "verification": "failed", "changed": False, "msg": e.problem})
            continue
        try:
            _actual, errors = checksum_errors(e)
        except OSError as exc:
            results.append({"id": e.id, "ok": False, "verification": e.verification, "changed": False,
                            "msg": "cannot read %s: %s" % (os.path.basename(e.dump), exc)})
            continue
        row = {"id": e.id, "ok": not errors, "verification": e.verification, "changed": False,
               "msg": "; ".join(errors) or "checksum ok"}
        old = e.manifest.get("failure") or {}
        if errors and (e.verification != "failed" or old.get("stage") != "checksum" or old.get("msg") != row["msg"]):
            manifest = dict(e.manifest, verification="failed",
                            failure={"time": iso(now), "stage": "checksum", "msg": row["msg"]})
            if not check_mode:
                write_atomic(e.manifest_path, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
            row.update(verification="failed", changed=True)
            changed = True
        results.append(row)
    bad = [r["id"] for r in results if not r["ok"]]
    msg = "verify: %d backups, %d checksums ok, %d failed%s" % (
        len(results), len(results) - len(bad), len(bad), (": " + ", ".join(bad)) if bad else "")
    return {"changed": changed, "results": results, "bad": bad, "problems": problems, "msg": msg}


def old_partials(store, now):
    """The `.partial-*` work directories left by runs that died, older than a day."""
    found = []
    for name in sorted(n for n in os.listdir(store) if n.startswith(".partial-")):
        path = os.path.join(store, name)
        info = os.lstat(path)
        if stat.S_ISDIR(info.st_mode) and now - datetime.datetime.fromtimestamp(info.st_mtime, UTC) > PARTIAL_MAX_AGE:
            found.append(path)
    return found


def prune(store, prefix, policy, now, check_mode):
    entries, problems = scan(store, prefix)
    by_id = {e.id: e for e in entries}
    backups = [Backup(e.id, e.started, verified=e.verification in VERIFIED, failed=e.verification == "failed")
               for e in entries]
    decision = decide_retention(backups, policy, now)
    removed, partials = [], old_partials(store, now)
    try:
        for b in decision.remove:
            if not check_mode:
                for path in (by_id[b.id].dump, by_id[b.id].sidecar, by_id[b.id].manifest_path):  # manifest last
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)
            removed.append(b.id)
        if not check_mode:
            for path in partials:
                shutil.rmtree(path)
            if removed or partials:
                fsync_path(store)
    except OSError as exc:
        raise CatalogError("prune stopped: %s" % exc, removed=removed) from exc
    orphans = sum(1 for p in problems if p["problem"].startswith("orphan"))
    msg = "prune%s: %d kept, %d %sremoved, %d partial dirs %sremoved%s" % (
        " (check mode)" if check_mode else "", len(decision.keep), len(removed), "to be " if check_mode else "",
        len(partials), "to be " if check_mode else "", ", %d orphan dumps left in place" % orphans if orphans else "")
    return {"changed": bool(removed or partials), "kept": [b.id for b in decision.keep], "removed": removed,
            "partials_removed": [os.path.basename(p) for p in partials], "plan": plan_text(decision),
            "problems": problems, "msg": msg}


def choose(entries, backup_id):
    """The backup to extract: `backup_id`, which must be sound and verified, or the newest verified one."""
    if not backup_id:
        verified = [e for e in entries if e.verification in VERIFIED]
        if not verified:
            raise CatalogError("no verified backup to extract (%d in the store, none with verification %s)" % (
                len(entries), " or ".join(VERIFIED)))
        return verified[0]
    entry = next((e for e in entries if e.id == backup_id), None)
    if entry is None:
        raise CatalogError("backup %s is not in the store" % backup_id)
    if entry.problem:
        raise CatalogError("backup %s is unusable: %s" % (backup_id, entry.problem))
    if entry.verification not in VERIFIED:
        raise CatalogError("backup %s is not verified (its verification is %s, not %s)" % (
            backup_id, entry.verification, " or ".join(VERIFIED)))
    return entry


def decrypt_to(entry, params, dest):
    """The dump decrypted by age to `dest` (0600, written to a temp name beside it and renamed), its sha256
    checked against the manifest's plaintext_sha256; nothing is left at the temp name or `dest` on failure."""
    try:  # only here: the host's copy of this file (beside the backup job) never extracts
        from ansible.module_utils.config_backup import Identity
    except ImportError:
        from config_backup import Identity
    fd, tmp = tempfile.mkstemp(prefix=".%s.tmp-" % os.path.basename(dest), dir=os.path.dirname(dest))  # 0600
    os.close(fd)
    try:
        with Identity(params["identity"]) as identity:  # a 0600 file of a private dir: never on argv or in env
            run_tool([params.get("age") or "age", "--decrypt", "-i", identity, "-o", tmp, entry.dump], "decrypt",
                     DECRYPT_TIMEOUT_S)
        os.chmod(tmp, 0o600)
        actual, expected = sha256_of(tmp), entry.manifest.get("plaintext_sha256")
        if actual != expected:
            raise CatalogError("backup %s: the decrypted archive's sha256 is %s, the manifest's plaintext_sha256 is "
                               "%s; nothing written" % (entry.id, actual, expected))
        fsync_path(tmp)
        os.rename(tmp, dest)
        fsync_path(os.path.dirname(dest))
    except BackupError as exc:
        raise CatalogError("backup %s: %s failed: %s; nothing written" % (entry.id, exc.stage, exc)) from exc
    except OSError as exc:
        raise CatalogError("backup %s: cannot write %s: %s" % (entry.id, dest, exc)) from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def extract(store, prefix, params, now, check_mode):
    entries, problems = scan(store, prefix)
    entry = choose(entries, params.get("backup_id"))
    age = now - entry.started
    limit = params.get("max_age_hours") or 0
    if limit and age > datetime.timedelta(hours=limit):
        raise CatalogError("backup %s is %.1f h old, the limit is %d h" % (entry.id, age.total_seconds() / 3600,
                                                                          limit))
    try:
        actual, errors = checksum_errors(entry)
    except OSError as exc:
        raise CatalogError("backup %s: cannot read %s: %s" % (entry.id, os.path.basename(entry.dump), exc)) from exc
    if errors:
        raise CatalogError("backup %s fails its checksum: %s" % (entry.id, "; ".join(errors)))
    m = entry.manifest
    facts = dict(entry.summary(), age_s=int(age.total_seconds()), sha256=actual,
                 plaintext_sha256=m.get("plaintext_sha256"), size=os.path.getsize(entry.dump),
                 row_counts=m.get("row_counts"), server_version_num=m.get("server_version_num"),
                 database=m.get("database"))
    dest = params.get("dest")
    if not dest:
        raise CatalogError("state=extract needs dest (the plaintext archive to write)")
    if not os.path.isdir(os.path.dirname(dest) or "."):
        raise CatalogError("the directory of dest %s does not exist" % dest)
    if os.path.isdir(dest):
        raise CatalogError("dest %s is a directory" % dest)
    rows = ", ".join("%s %s" % kv for kv in sorted((m.get("row_counts") or {}).items())) or "no row counts"
    line = "%s (%.1f h old, checksum ok, rows %s)" % (entry.id, age.total_seconds() / 3600, rows)
    result = {"changed": True, "backup": facts, "problems": problems}
    if check_mode:
        return dict(result, extracted=None, msg="extract (check mode): %s would be decrypted to %s" % (line, dest))
    if not params.get("identity"):
        raise CatalogError("state=extract needs identity (the age private key) outside check mode")
    decrypt_to(entry, params, os.path.abspath(dest))
    return dict(result, extracted=dest, msg="extract: %s decrypted to %s, plaintext sha256 ok" % (line, dest))


def run(params, check_mode=False):
    """The module's work: a result dict, or CatalogError for bad parameters and unreadable stores."""
    prefix = params.get("name_prefix", "backup") or ""
    if not re.match(r"^[A-Za-z0-9_.-]+$", prefix):
        raise CatalogError("name_prefix may hold only letters, digits, '_', '.' and '-'")
    if params.get("state", "status") not in STATES:
        raise CatalogError("state must be one of %s" % ", ".join(STATES))
    if params.get("interval_minutes", 60) <= 0:
        raise CatalogError("interval_minutes must be > 0")
    if (params.get("max_age_hours") or 0) < 0:
        raise CatalogError("max_age_hours must be >= 0 (0: no limit)")
    try:
        now = parse_time(params["now"]) if params.get("now") else datetime.datetime.now(UTC)
    except ValueError as exc:
        raise CatalogError("now must be an ISO 8601 time with a UTC offset: %s" % exc) from exc
    try:
        policy = Policy(**dict(POLICY_DEFAULTS, **{k: v for k, v in (params.get("policy") or {}).items()
                                                   if v is not None}))
    except (TypeError, ValueError) as exc:
        raise CatalogError("policy: %s" % exc) from exc
    store, state = params["path"], params.get("state", "status")
    if state == "status":
        return status(store, prefix, params.get("interval_minutes", 60), now)
    if state == "verify":
        return verify(store, prefix, now, check_mode)
    if state == "extract":
        return extract(store, prefix, params, now, check_mode)
    return prune(store, prefix, policy, now, check_mode)
