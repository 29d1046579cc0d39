"""config_backup (plugins/modules/config_backup.py): encrypted, verified sets of a host's .env and Xray
config, with the real age binary, run as Ansible runs the module; what disaster recovery refuses (missing,
stale, corrupt) is checked on real stores."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from datetime import datetime, timedelta, timezone

import pytest

pytestmark = pytest.mark.skipif(shutil.which("age") is None or shutil.which("age-keygen") is None,
                                reason="age is not installed (scripts/install-deps installs it)")

ENV = 'POSTGRES_PASSWORD="fake \\"quoted\\" pässwörd $HOME #x"\nREDIS_PASSWORD="LAB-ONLY"\n'
XRAY = '{"outbounds": [{"protocol": "vless"}]}\n'


def keypair(path):
    subprocess.run(["age-keygen", "-o", str(path)], check=True, capture_output=True)
    text = path.read_text()
    public = next(line.split(": ", 1)[1] for line in text.splitlines() if line.startswith("# public key: "))
    secret = next(line for line in text.splitlines() if line.startswith("AGE-SECRET-KEY-1"))
    return public, secret


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    base = tmp_path_factory.mktemp("keys")
    return keypair(base / "one.txt"), keypair(base / "two.txt")


@pytest.fixture
def store(tmp_path):
    return tmp_path / "config" / "lab-new"


def save(run_module, store, keys, env=ENV, release="v1.1.0", check_mode=False, identity=None):
    (public, secret), _ = keys
    return run_module("config_backup", {
        "path": str(store), "state": "save", "host": "lab-new", "release": release, "serving": True,
        "files": [{"name": "env", "path": "/opt/ai-admin/shared/.env", "content": env},
                  {"name": "xray", "path": "/usr/local/etc/xray/config.json", "content": XRAY}],
        "recipients": [public], "identity": identity or secret}, check_mode=check_mode)


def latest(run_module, store, keys, **extra):
    (_, secret), _ = keys
    return run_module("config_backup", dict({"path": str(store), "decrypt": True, "identity": secret}, **extra))


def manifests(store):
    return sorted(store.glob("*.manifest.json"))


def test_save_keeps_an_encrypted_verified_set_that_decrypts_byte_for_byte(run_module, store, keys):
    run = save(run_module, store, keys)
    assert not run.failed, run.result
    assert run.result["changed"] and run.result["created"]
    assert stat.S_IMODE(store.stat().st_mode) == 0o700
    [path] = manifests(store)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    manifest = json.loads(path.read_text())
    assert manifest["verification"] == "verified" and manifest["release"] == "v1.1.0" and manifest["serving"]
    for item in manifest["files"]:
        archive = store / item["archive"]
        assert stat.S_IMODE(archive.stat().st_mode) == 0o600
        assert b"POSTGRES_PASSWORD" not in archive.read_bytes() and b"vless" not in archive.read_bytes()
    assert "pässwörd" not in run.stdout  # the module's own output never carries the content

    found = latest(run_module, store, keys)
    assert found.result["ok"], found.result
    assert found.result["contents"] == {"env": ENV, "xray": XRAY}
    assert found.result["set"]["release"] == "v1.1.0"
    assert {f["name"]: f["path"] for f in found.result["set"]["files"]} == {
        "env": "/opt/ai-admin/shared/.env", "xray": "/usr/local/etc/xray/config.json"}


def test_unchanged_files_confirm_the_newest_set_and_a_change_makes_a_new_one(run_module, store, keys):
    first = save(run_module, store, keys).result
    before = json.loads(manifests(store)[0].read_text())
    again = save(run_module, store, keys).result
    assert again["changed"] is False and again["created"] is False and again["id"] == first["id"]
    assert len(manifests(store)) == 1
    assert json.loads(manifests(store)[0].read_text())["confirmed"] >= before["confirmed"]

    changed = save(run_module, store, keys, env=ENV + 'NEW_KEY="1"\n').result
    assert changed["created"] and changed["id"] != first["id"]
    assert len(manifests(store)) == 2
    assert latest(run_module, store, keys).result["contents"]["env"].endswith('NEW_KEY="1"\n')
    released = save(run_module, store, keys, env=ENV + 'NEW_KEY="1"\n', release="v1.2.0").result
    assert released["created"], "another release is another set"


def test_check_mode_writes_nothing(run_module, store, keys):
    run = save(run_module, store, keys, check_mode=True)
    assert run.result["changed"] and not store.exists()


def test_an_identity_that_cannot_decrypt_leaves_no_set(run_module, store, keys):
    _, (_, other_secret) = keys
    run = save(run_module, store, keys, identity=other_secret)
    assert run.failed and "age" in run.result["msg"]
    assert list(store.iterdir()) == []


@pytest.mark.parametrize("damage", ["missing_store", "empty_store", "stale", "flipped_byte", "archive_gone",
                                    "unverified"])
def test_latest_refuses_a_missing_stale_or_corrupt_backup_naming_it(run_module, store, keys, damage):
    if damage != "missing_store":
        save(run_module, store, keys)
    [path] = manifests(store) or [None]
    manifest = json.loads(path.read_text()) if path else {}
    if damage == "empty_store":
        shutil.rmtree(store)
        store.mkdir()
    elif damage == "stale":
        manifest["confirmed"] = (datetime.now(timezone.utc) - timedelta(hours=49)).strftime("%Y-%m-%dT%H:%M:%SZ")
        path.write_text(json.dumps(manifest))
    elif damage == "flipped_byte":
        archive = store / manifest["files"][0]["archive"]
        data = bytearray(archive.read_bytes())
        data[-1] ^= 0x01
        archive.write_bytes(bytes(data))
    elif damage == "archive_gone":
        os.unlink(store / manifest["files"][1]["archive"])
    elif damage == "unverified":
        manifest["verification"] = "unverified"
        path.write_text(json.dumps(manifest))
    run = latest(run_module, store, keys, max_age_hours=48)
    assert not run.failed, "a refusal is a result the caller words, not a module failure"
    result = run.result
    assert result["ok"] is False and result["contents"] == {}
    expected = {"missing_store": "missing", "empty_store": "missing", "unverified": "missing", "stale": "stale",
                "flipped_byte": "corrupt", "archive_gone": "corrupt"}[damage]
    assert result["reason"] == expected
    if expected == "missing":
        assert str(store) in result["msg"]
    else:
        assert path.name in result["msg"], result["msg"]
    assert result["summary"] == result["msg"]


def test_bad_parameters_are_refused_before_anything_is_written(run_module, store, keys):
    (public, _), _ = keys
    run = run_module("config_backup", {"path": str(store), "state": "save", "host": "x", "release": "v1",
                                       "files": [{"name": "Bad Name", "path": "/x", "content": "not-shown"}],
                                       "recipients": [], "identity": public})
    assert run.failed
    for needle in ("recipients", "file names", "age secret key"):
        assert needle in run.result["msg"]
    assert not store.exists()
