# Copyright: aiadmin-ops contributors
# SPDX-License-Identifier: MIT
"""Encrypted sets of an app host's configuration files (.env, the Xray config) on the controller:
the logic of the config_backup module (plugins/modules/config_backup.py documents it).

A set is <id>.manifest.json with one <id>.<name>.age per file (age-encrypted to the backup
recipients). The manifest, written last and atomically, records per file the host path, the
sha256 of the plaintext and of the archive, and for the set the host, the release it ran, whether
it was serving, when it was taken (created) and when the host was last seen with exactly these
files (confirmed). Standard library and the age binary only.
"""

from __future__ import annotations

import contextlib
import datetime
import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile

from ansible.module_utils.pg_backup_job import BackupError, sha256_of, write_atomic

UTC = datetime.timezone.utc
NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
STATES = ("save", "latest")


def now_utc():
    return datetime.datetime.now(UTC)


def stamp(moment):
    return moment.strftime("%Y%m%dT%H%M%S%fZ")


def iso(moment):
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso(text):
    return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def sha256_text(data):
    return hashlib.sha256(data).hexdigest()


def manifests(store):
    """Every readable manifest of the store, newest first (ids sort by time)."""
    out = []
    for path in sorted(glob.glob(os.path.join(store, "*.manifest.json")), reverse=True):
        try:
            with open(path, encoding="utf-8") as fh:
                data = json.load(fh)
            if isinstance(data, dict) and isinstance(data.get("files"), list):
                out.append((path, data))
        except (OSError, ValueError):
            continue
    return out


def age_run(age, argv, data, timeout=60):
    try:
        proc = subprocess.run([age, *argv], input=data, capture_output=True, timeout=timeout, check=False)
    except FileNotFoundError:
        raise BackupError("age", "%s not found (install age on the controller)" % age) from None
    except subprocess.TimeoutExpired:
        raise BackupError("age", "age did not finish within %d s" % timeout) from None
    if proc.returncode != 0:
        raise BackupError("age", "age failed (exit %d): %s" % (
            proc.returncode, proc.stderr.decode("utf-8", "replace").strip()[:300]))
    return proc.stdout


class Identity:
    """The operator's age identity in a 0600 file of a private (0700) directory, removed on exit."""

    def __init__(self, text):
        self.text = text
        self.dir = None

    def __enter__(self):
        self.dir = tempfile.mkdtemp(prefix="aiadmin-config-")
        path = os.path.join(self.dir, "identity")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(self.text.strip() + "\n")
        return path

    def __exit__(self, *exc):
        shutil.rmtree(self.dir, ignore_errors=True)


def decrypt(params, path):
    with Identity(params["identity"]) as identity, open(path, "rb") as fh:
        return age_run(params["age"], ["--decrypt", "-i", identity], fh.read())


def same_files(manifest, files):
    return sorted((f["name"], f["path"], f["sha256"]) for f in manifest["files"]) == sorted(
        (f["name"], f["path"], f["sha256"]) for f in files)


def save(params, check_mode):
    """A new set when the host's files (or its release or serving flag) differ from the newest
    set's; otherwise the newest set is confirmed (its confirmed time moved to now)."""
    store, moment = params["path"], now_utc()
    files = []
    for item in params["files"]:
        content = item["content"].encode("utf-8") if isinstance(item["content"], str) else item["content"]
        files.append({"name": item["name"], "path": item["path"], "sha256": sha256_text(content),
                      "size": len(content), "_content": content})
    newest = next(iter(manifests(store)), None)
    if newest and newest[1].get("verification") == "verified" and same_files(newest[1], files) \
            and newest[1].get("release") == params["release"] and newest[1].get("serving") == params["serving"]:
        path, manifest = newest
        if not check_mode:
            manifest["confirmed"] = iso(moment)
            write_atomic(path, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        return {"changed": False, "id": manifest["id"], "created": False, "manifest_path": path,
                "msg": "%s: the files equal set %s (confirmed)" % (params["host"], manifest["id"])}
    set_id = stamp(moment)
    if check_mode:
        return {"changed": True, "id": set_id, "created": True, "manifest_path": None,
                "msg": "%s: a new set would be written" % params["host"]}
    os.makedirs(store, mode=0o700, exist_ok=True)
    os.chmod(store, 0o700)
    recipients = ["--recipient=%s" % r for r in params["recipients"]]
    written = []
    try:
        for item in files:
            archive = os.path.join(store, "%s.%s.age" % (set_id, item["name"]))
            data = age_run(params["age"], recipients, item["_content"])
            fd = os.open(archive, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            written.append(archive)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            item.update(archive=os.path.basename(archive), archive_sha256=sha256_of(archive))
        verification = "unverified"
        if params.get("identity"):  # what was written decrypts to what the host holds
            for item in files:
                plain = decrypt(params, os.path.join(store, item["archive"]))
                if sha256_text(plain) != item["sha256"]:
                    raise BackupError("verify", "%s does not decrypt to the host's file" % item["archive"])
            verification = "verified"
        manifest = {"id": set_id, "host": params["host"], "created": iso(moment), "confirmed": iso(moment),
                    "release": params["release"], "serving": params["serving"], "verification": verification,
                    "files": [{k: v for k, v in f.items() if not k.startswith("_")} for f in files]}
        path = os.path.join(store, set_id + ".manifest.json")
        write_atomic(path, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        os.chmod(path, 0o600)
    except BaseException:
        for archive in written:
            with contextlib.suppress(OSError):
                os.unlink(archive)
        raise
    removed = prune(store, params["keep"])
    return {"changed": True, "id": set_id, "created": True, "manifest_path": path, "removed": removed,
            "msg": "%s: new set %s (%s, release %s)" % (params["host"], set_id, verification, params["release"])}


def prune(store, keep):
    removed = []
    for path, manifest in manifests(store)[keep:]:
        for item in manifest["files"]:
            with contextlib.suppress(OSError, KeyError):
                os.unlink(os.path.join(store, item["archive"]))
        os.unlink(path)
        removed.append(manifest.get("id"))
    return removed


def latest(params):
    """The newest verified set, its archives checked against the manifest; refused (ok false, reason
    naming the set) when there is none, it is stale or an archive does not match."""
    store, moment = params["path"], now_utc()
    found = [(p, m) for p, m in manifests(store) if m.get("verification") == "verified"]
    result = {"changed": False, "ok": False, "store": store, "contents": {}}
    if not found:
        reason = "missing: no verified configuration backup in %s" % store
        return dict(result, reason="missing", msg=reason, summary=reason)
    path, manifest = found[0]
    confirmed = parse_iso(manifest["confirmed"])
    age_h = round((moment - confirmed).total_seconds() / 3600, 2)
    info = {k: manifest.get(k) for k in ("id", "host", "created", "confirmed", "release", "serving")}
    info.update(manifest=path, confirmed_age_h=age_h,
                files=[{k: f.get(k) for k in ("name", "path", "sha256", "archive", "archive_sha256")}
                       for f in manifest["files"]])
    result.update(set=info)
    name = os.path.basename(path)
    if params["max_age_hours"] and age_h > params["max_age_hours"]:
        reason = ("stale: configuration backup %s was last confirmed %.1f h ago (limit %d h); take a fresh one "
                  "(aiadmin-ops backup-fetch) or raise the limit" % (name, age_h, params["max_age_hours"]))
        return dict(result, reason="stale", msg=reason, summary=reason)
    for item in manifest["files"]:
        archive = os.path.join(store, item.get("archive", ""))
        actual = sha256_of(archive) if os.path.isfile(archive) else None
        if actual != item.get("archive_sha256"):
            reason = ("corrupt: %s of configuration backup %s %s" % (
                item.get("archive"), name, "is missing" if actual is None else
                "does not match its checksum (sha256 %s, the manifest says %s)" % (actual, item.get("archive_sha256"))))
            return dict(result, reason="corrupt", msg=reason, summary=reason)
    if params.get("decrypt"):
        for item in manifest["files"]:
            plain = decrypt(params, os.path.join(store, item["archive"]))
            if sha256_text(plain) != item["sha256"]:
                reason = "corrupt: %s of %s decrypts to other content than was backed up" % (item["archive"], name)
                return dict(result, reason="corrupt", msg=reason, summary=reason, contents={})
            result["contents"][item["name"]] = plain.decode("utf-8")
    msg = "configuration backup %s of %s: release %s, taken %s, confirmed %.1f h ago, checksums ok%s" % (
        manifest["id"], manifest.get("host"), manifest.get("release"), manifest.get("created"), age_h,
        ", decrypted" if params.get("decrypt") else "")
    return dict(result, ok=True, reason="", msg=msg, summary=msg)


def validate(params):
    errors = []
    if params["state"] not in STATES:
        errors.append("state must be one of %s" % ", ".join(STATES))
    if params["state"] == "save":
        if not params.get("files"):
            errors.append("save needs files")
        if not params.get("recipients"):
            errors.append("save needs recipients (age public keys)")
        if not all(NAME.match(item.get("name") or "") for item in params.get("files") or []):
            errors.append("file names: lower-case letters, digits and '_' only (env, xray)")
        if params.get("release") is None:
            errors.append("save needs release")
    if params.get("decrypt") and not params.get("identity"):
        errors.append("decrypt needs identity (the operator's age secret key)")
    if params.get("identity") and not params["identity"].strip().startswith("AGE-SECRET-KEY-1"):
        errors.append("identity must be an age secret key (AGE-SECRET-KEY-1...)")
    if params.get("keep", 1) < 1:
        errors.append("keep must be >= 1")
    return errors


def run(params, check_mode=False):
    if params["state"] == "save":
        return save(params, check_mode)
    if not os.path.isdir(params["path"]):
        reason = "missing: no configuration backup store %s" % params["path"]
        return {"changed": False, "ok": False, "reason": "missing", "msg": reason, "summary": reason,
                "store": params["path"], "contents": {}}
    return latest(params)
