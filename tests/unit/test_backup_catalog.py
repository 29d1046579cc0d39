"""backup_catalog (plugins/modules/backup_catalog.py, plugins/module_utils/backup_catalog.py) on real stores in
tmp_path, laid out the way pg_backup_job.py writes them; the module runs as Ansible would run it
(tests/gates/gates_modrun.py), the functions are also called directly."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml

from tests.gates.gates_lib import MODRUN
from tests.helpers import ROOT

PREFIX = "ai_admin"
NOW = datetime(2026, 12, 2, 12, 0, tzinfo=timezone.utc)
NOW_ISO = NOW.isoformat()


@pytest.fixture(scope="module")
def catalog():
    from tests.gates.gates_modrun import alias_module_utils

    alias_module_utils()
    return sys.modules["ansible.module_utils.backup_catalog"]


@pytest.fixture
def run_module(tmp_path):
    """run_module(args, check_mode=False) -> result: the module in a subprocess, as in tests/gates/conftest.py."""
    counter = iter(range(1000))

    def run(args: dict, check_mode: bool = False) -> dict:
        payload = dict(args, _ansible_check_mode=True) if check_mode else dict(args)
        args_file = tmp_path / f"args-{next(counter)}.json"
        args_file.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": payload}))
        proc = subprocess.run([sys.executable, str(MODRUN), str(ROOT / "plugins/modules/backup_catalog.py"),
                               str(args_file)], capture_output=True, text=True, timeout=60, cwd=ROOT, check=False)
        try:
            result = json.loads(proc.stdout)
        except json.JSONDecodeError:
            pytest.fail(f"no JSON (rc {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        assert (proc.returncode != 0) == bool(result.get("failed")), (proc.returncode, result)
        return result

    return run


@pytest.fixture
def store(tmp_path) -> Path:
    path = tmp_path / "store"
    path.mkdir()
    return path


def add(store: Path, started: datetime, verification: str = "toc", failure: dict | None = None) -> str:
    """One backup as pg_backup_job.py keeps it (dump, sidecar, manifest); returns its id."""
    backup_id = f"{PREFIX}-{started:%Y%m%dT%H%M%SZ}"
    dump = store / f"{backup_id}.dump.age"
    dump.write_bytes(b"age-encryption.org/v1\n" + hashlib.sha512(backup_id.encode()).digest() * 64)
    digest = hashlib.sha256(dump.read_bytes()).hexdigest()
    (store / f"{dump.name}.sha256").write_text(f"{digest}  {dump.name}\n")
    manifest = {"file": dump.name, "database": "ai_admin", "started": started.isoformat(timespec="seconds"),
                "finished": (started + timedelta(seconds=40)).isoformat(timespec="seconds"),
                "size": dump.stat().st_size, "sha256": digest, "row_counts": {"public.messages": 501},
                "verification": verification}
    if failure:
        manifest["failure"] = failure
    (store / f"{backup_id}.manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return backup_id


def manifest(store: Path, backup_id: str) -> dict:
    return json.loads((store / f"{backup_id}.manifest.json").read_text())


def snapshot(store: Path) -> dict:
    """Every path under the store -> its sha256 (None for a directory)."""
    return {str(p.relative_to(store)): None if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(store.rglob("*"))}


def ago(**delta: float) -> datetime:
    return NOW - timedelta(**delta)


# --- status -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("age_s", "health"), [(0, "ok"), (3600, "ok"), (3601, "warning"), (7200, "warning"),
                                               (7201, "critical")])
def test_status_health_at_one_and_two_intervals(run_module, store, age_s, health):
    add(store, ago(seconds=age_s + 3600), "restored")
    newest = add(store, ago(seconds=age_s))
    res = run_module({"path": str(store), "name_prefix": PREFIX, "now": NOW_ISO})
    assert not res.get("failed") and res["changed"] is False, res
    assert res["health"] == health, res
    assert res["newest_verified"] == {"id": newest, "started": ago(seconds=age_s).isoformat(),
                                      "verification": "toc", "age_s": age_s}
    assert res["msg"] == (f"backups {health}: newest verified {newest} {age_s // 60} min old (interval 60 min); "
                          "2 kept, 0 failed")
    assert (res["count"], res["verified_count"], res["failed_count"], res["problems"]) == (2, 2, 0, [])
    assert res["bytes"] == sum(p.stat().st_size for p in store.glob("*.dump.age"))


def test_status_interval_scales_the_limits(catalog, store):
    add(store, ago(minutes=100))

    def health(minutes: int) -> str:
        return catalog.run({"path": str(store), "name_prefix": PREFIX, "interval_minutes": minutes,
                            "now": NOW_ISO})["health"]

    assert (health(100), health(99), health(50), health(49)) == ("ok", "warning", "warning", "critical")


def test_status_of_an_empty_store_is_critical_but_does_not_fail(run_module, store):
    (store / "unrelated.txt").write_text("x")
    add(store, ago(minutes=5))  # a backup of another prefix: not counted
    res = run_module({"path": str(store), "name_prefix": "other", "now": NOW_ISO})
    assert not res.get("failed"), res
    assert res["health"] == "critical" and res["count"] == 0 and res["bytes"] == 0, res
    assert res["newest"] is None and res["newest_verified"] is None and res["last_failure"] is None
    assert res["msg"] == "backups critical: no verified backup (interval 60 min); 0 kept, 0 failed"


def test_status_only_failed_backups_is_critical(catalog, store):
    failure = {"time": ago(minutes=4).isoformat(), "stage": "checksum", "msg": "sha256 differs"}
    failed = add(store, ago(minutes=5), "failed", failure)
    res = catalog.run({"path": str(store), "name_prefix": PREFIX, "now": NOW_ISO})
    assert res["health"] == "critical" and res["failed_count"] == 1 and res["verified_count"] == 0
    assert res["newest"] == {"id": failed, "started": ago(minutes=5).isoformat(), "verification": "failed"}
    assert res["last_failure"] == dict(failure, source=f"{failed}.manifest.json")


def test_a_failure_newer_than_the_newest_verified_backup_is_a_warning(run_module, store):
    add(store, ago(minutes=10))
    failure = {"time": ago(minutes=5).isoformat(), "stage": "dump", "msg": "pg_backup: dump failed: boom"}
    (store / "last-failure.json").write_text(json.dumps(failure))
    res = run_module({"path": str(store), "name_prefix": PREFIX, "now": NOW_ISO})
    assert res["health"] == "warning", res
    assert res["last_failure"] == dict(failure, source="last-failure.json")
    assert "then a failure at 2026-12-02T11:55:00+00:00 (dump: pg_backup: dump failed: boom)" in res["msg"]

    # A failed manifest newer than last-failure.json is the last failure; both are older than a new backup: ok.
    newer = {"time": ago(minutes=3).isoformat(), "stage": "checksum", "msg": "sidecar missing"}
    failed = add(store, ago(minutes=4), "failed", newer)
    res = run_module({"path": str(store), "name_prefix": PREFIX, "now": NOW_ISO})
    assert res["health"] == "warning" and res["last_failure"] == dict(newer, source=f"{failed}.manifest.json")
    add(store, ago(minutes=1))
    res = run_module({"path": str(store), "name_prefix": PREFIX, "now": NOW_ISO})
    assert res["health"] == "ok" and res["last_failure"]["source"] == f"{failed}.manifest.json", res
    assert (res["count"], res["verified_count"], res["failed_count"]) == (3, 2, 1)


def test_unusable_manifests_are_problems_and_count_as_failed(catalog, store):
    good = add(store, ago(minutes=30))
    broken = add(store, ago(minutes=20))
    (store / f"{broken}.manifest.json").write_text('{"file": ')
    gone = add(store, ago(minutes=10), "restored")
    (store / f"{gone}.dump.age").unlink()
    orphan = f"{PREFIX}-20261201T000000Z.dump.age"
    (store / orphan).write_bytes(b"x" * 100)
    res = catalog.run({"path": str(store), "name_prefix": PREFIX, "now": NOW_ISO})
    assert (res["count"], res["verified_count"], res["failed_count"]) == (3, 1, 2)
    assert res["newest_verified"]["id"] == good and res["health"] == "ok"
    assert res["newest"] == {"id": gone, "started": ago(minutes=10).isoformat(), "verification": "failed"}
    problems = {p["file"]: p["problem"] for p in res["problems"]}
    assert set(problems) == {f"{broken}.manifest.json", f"{gone}.manifest.json", orphan}
    assert "unusable" in problems[f"{broken}.manifest.json"]
    assert problems[f"{broken}.manifest.json"].endswith("counted as failed")
    assert "missing" in problems[f"{gone}.manifest.json"]
    assert "never removed" in problems[orphan]


def test_a_missing_store_or_bad_parameters_fail_clearly(run_module, store, tmp_path):
    res = run_module({"path": str(tmp_path / "nowhere")})
    assert res["failed"] and "store" in res["msg"] and "does not exist" in res["msg"], res
    (tmp_path / "afile").write_text("")
    res = run_module({"path": str(tmp_path / "afile")})
    assert res["failed"] and "not a directory" in res["msg"], res
    res = run_module({"path": str(store), "now": "2026-12-02T12:00:00"})
    assert res["failed"] and "UTC offset" in res["msg"], res
    res = run_module({"path": str(store), "state": "prune", "policy": {"daily": -1}})
    assert res["failed"] and "Policy.daily must be >= 0" in res["msg"], res
    res = run_module({"path": str(store), "name_prefix": "../x"})
    assert res["failed"] and "name_prefix" in res["msg"], res


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any directory")
def test_an_unreadable_store_fails(run_module, store):
    store.chmod(0o000)
    try:
        res = run_module({"path": str(store)})
    finally:
        store.chmod(0o700)
    assert res["failed"] and "cannot read the store" in res["msg"], res


# --- verify -------------------------------------------------------------------------------------------------------


def test_verify_finds_a_single_flipped_bit(run_module, store):
    older = add(store, ago(minutes=120))
    middle = add(store, ago(minutes=60), "restored")
    newest = add(store, ago(minutes=5))
    dump = store / f"{newest}.dump.age"
    data = bytearray(dump.read_bytes())
    data[len(data) // 2] ^= 0x01
    dump.write_bytes(bytes(data))
    before, original = snapshot(store), manifest(store, newest)

    res = run_module({"path": str(store), "name_prefix": PREFIX, "state": "verify", "now": NOW_ISO},
                         check_mode=True)
    assert res["changed"] is True and res["bad"] == [newest], res
    assert snapshot(store) == before  # check mode writes nothing
    assert manifest(store, newest)["verification"] == "toc"

    res = run_module({"path": str(store), "name_prefix": PREFIX, "state": "verify", "now": NOW_ISO})
    assert res["changed"] is True and res["bad"] == [newest], res
    rows = {r["id"]: r for r in res["results"]}
    assert [r["id"] for r in res["results"]] == [newest, middle, older]
    assert rows[newest]["ok"] is False and rows[newest]["verification"] == "failed" and rows[newest]["changed"]
    assert "the manifest says" in rows[newest]["msg"] and "the sidecar says otherwise" in rows[newest]["msg"]
    assert rows[middle] == {"id": middle, "ok": True, "verification": "restored", "changed": False,
                            "msg": "checksum ok"}
    written = manifest(store, newest)
    assert written["verification"] == "failed"
    assert written["failure"] == {"time": NOW_ISO, "stage": "checksum", "msg": rows[newest]["msg"]}
    assert dict(written, verification="toc", failure=None) == dict(original, failure=None)  # nothing else changed
    changed = {k for k in before if before[k] != snapshot(store).get(k)}
    assert changed == {f"{newest}.manifest.json"} and not list(store.glob("*.tmp-*"))

    again = run_module({"path": str(store), "name_prefix": PREFIX, "state": "verify", "now": NOW_ISO})
    assert again["changed"] is False and again["bad"] == [newest], again  # already marked: idempotent

    res = run_module({"path": str(store), "name_prefix": PREFIX, "now": NOW_ISO})
    assert res["newest_verified"]["id"] == middle and res["failed_count"] == 1
    assert res["health"] == "warning" and res["last_failure"]["stage"] == "checksum", res


def test_verify_marks_a_missing_sidecar_failed(catalog, store):
    backup_id = add(store, ago(minutes=5))
    (store / f"{backup_id}.dump.age.sha256").unlink()
    res = catalog.run({"path": str(store), "name_prefix": PREFIX, "state": "verify", "now": NOW_ISO})
    assert res["changed"] and res["bad"] == [backup_id]
    assert res["results"][0]["msg"] == f"sidecar {backup_id}.dump.age.sha256 is missing"
    assert manifest(store, backup_id)["failure"]["msg"] == res["results"][0]["msg"]


def test_verify_of_sound_backups_changes_nothing(catalog, store):
    for minutes in (5, 65, 125):
        add(store, ago(minutes=minutes))
    before = snapshot(store)
    res = catalog.run({"path": str(store), "name_prefix": PREFIX, "state": "verify", "now": NOW_ISO})
    assert res["changed"] is False and res["bad"] == [] and len(res["results"]) == 3
    assert res["msg"] == "verify: 3 backups, 3 checksums ok, 0 failed"
    assert snapshot(store) == before


# --- prune --------------------------------------------------------------------------------------------------------


def test_prune_keeps_the_newest_verified_backup_under_a_run_of_failures(run_module, store):
    old = [add(store, ago(days=d)) for d in (12, 11, 10)]
    failed = [add(store, ago(hours=h), "failed") for h in range(1, 49)]
    none = {"hourly": 0, "daily": 0, "weekly": 0, "monthly": 0, "keep_min": 0}
    res = run_module({"path": str(store), "name_prefix": PREFIX, "state": "prune", "policy": none,
                          "now": NOW_ISO})
    assert res["changed"] is True, res
    assert res["kept"] == [old[-1]]
    assert res["removed"] == [*failed, *old[1::-1]]
    assert sorted(p.name for p in store.iterdir()) == sorted(f"{old[-1]}{s}" for s in (
        ".dump.age", ".dump.age.sha256", ".manifest.json"))
    assert f"keep {old[-1]} " in res["plan"] and "newest verified" in res["plan"]


def test_prune_removes_nothing_when_every_backup_failed(catalog, store):
    for h in range(1, 6):
        add(store, ago(hours=h), "failed")
    before = snapshot(store)
    res = catalog.run({"path": str(store), "name_prefix": PREFIX, "state": "prune", "now": NOW_ISO})
    assert res["changed"] is False and res["removed"] == [] and len(res["kept"]) == 5
    assert snapshot(store) == before


def test_prune_default_policy_keeps_30_days(catalog, store):
    backups = [add(store, ago(hours=6 * i)) for i in range(4 * 45)]  # 45 days, 4 a day
    res = catalog.run({"path": str(store), "name_prefix": PREFIX, "state": "prune", "now": NOW_ISO})
    kept = set(res["kept"])
    assert set(backups[:24]) <= kept  # hourly 24: the 24 newest (one per hour bucket)
    assert len({b[len(PREFIX) + 1:len(PREFIX) + 9] for b in kept}) >= 30  # at least 30 distinct days
    assert set(res["removed"]) == set(backups) - kept and res["removed"]
    assert len(list(store.glob("*.manifest.json"))) == len(kept)


def test_prune_in_check_mode_removes_nothing_and_lists_what_would_go(run_module, store):
    verified = [add(store, ago(days=d)) for d in (3, 2, 1)]
    failed = add(store, ago(hours=1), "failed")
    partial = store / ".partial-20261130T000000Z-abc123"
    partial.mkdir()
    (partial / "archive.dump").write_bytes(b"plain")
    os.utime(partial, (ago(days=2).timestamp(),) * 2)
    before = snapshot(store)
    args = {"path": str(store), "name_prefix": PREFIX, "state": "prune", "now": NOW_ISO,
            "policy": {"daily": 1, "hourly": 0, "weekly": 0, "monthly": 0, "keep_min": 2}}
    res = run_module(args, check_mode=True)
    assert res["changed"] is True, res
    assert snapshot(store) == before
    assert res["removed"] == [failed, verified[0]] and res["kept"] == verified[:0:-1]
    assert res["partials_removed"] == [partial.name]
    assert f"remove {failed} 2026-12-02T11:00:00Z: failed\n" in res["plan"]
    assert f"remove {verified[0]} " in res["plan"] and res["plan"].endswith("2 to keep, 2 to remove\n")
    assert res["msg"] == "prune (check mode): 2 kept, 2 to be removed, 1 partial dirs to be removed"

    res = run_module(args)
    assert res["changed"] is True and res["removed"] == [failed, verified[0]]
    assert not partial.exists()
    assert sorted(p.name for p in store.glob("*.manifest.json")) == sorted(f"{b}.manifest.json" for b in verified[1:])
    res = run_module(args)
    assert res["changed"] is False and res["removed"] == [] and res["partials_removed"] == [], res


def test_prune_leaves_orphans_young_partials_and_other_files(catalog, store):
    newest = add(store, ago(hours=1))
    old = add(store, ago(days=400))
    orphan = store / f"{PREFIX}-20200101T000000Z.dump.age"
    orphan.write_bytes(b"no manifest")
    young = store / ".partial-20261202T110000Z-zz"
    young.mkdir()
    os.utime(young, (ago(hours=23).timestamp(),) * 2)
    not_a_dir = store / ".partial-file"
    not_a_dir.write_text("")
    os.utime(not_a_dir, (ago(days=5).timestamp(),) * 2)
    failure = store / "last-failure.json"
    failure.write_text("{}")
    none = {"hourly": 0, "daily": 0, "weekly": 0, "monthly": 0, "keep_min": 0}
    res = catalog.run({"path": str(store), "name_prefix": PREFIX, "state": "prune", "now": NOW_ISO, "policy": none})
    assert res["kept"] == [newest] and res["removed"] == [old] and res["partials_removed"] == []
    assert orphan.exists() and young.exists() and not_a_dir.exists() and failure.exists()
    assert res["problems"] == [{"file": orphan.name, "problem": "orphan: no manifest, never removed by prune"}]
    assert res["msg"].endswith(", 1 orphan dumps left in place")


def test_prune_removes_a_failed_unparsable_manifest_and_reports_it(catalog, store):
    newest = add(store, ago(hours=1))
    broken = add(store, ago(hours=2))
    (store / f"{broken}.manifest.json").write_text("not json")
    res = catalog.run({"path": str(store), "name_prefix": PREFIX, "state": "prune", "now": NOW_ISO})
    assert res["problems"][0]["file"] == f"{broken}.manifest.json"
    assert res["kept"] == [newest] and res["removed"] == [broken]
    assert not list(store.glob(f"{broken}*"))


def test_prune_never_follows_a_manifest_outside_its_own_files(catalog, store, tmp_path):
    add(store, ago(hours=1))
    rogue = add(store, ago(hours=2))
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    data = manifest(store, rogue)
    data["file"] = "../victim"
    (store / f"{rogue}.manifest.json").write_text(json.dumps(data))
    res = catalog.run({"path": str(store), "name_prefix": PREFIX, "state": "prune", "now": NOW_ISO})
    assert res["removed"] == [rogue] and "unusable" in res["problems"][0]["problem"]
    assert victim.read_text() == "keep me"


def test_it_runs_from_a_plain_directory_as_the_backup_role_installs_it(store, tmp_path):
    lib = tmp_path / "lib"
    lib.mkdir()
    for name in ("pg_gate.py", "pg_backup_job.py", "backup_retention.py", "backup_catalog.py"):
        (lib / name).write_bytes((ROOT / "plugins/module_utils" / name).read_bytes())
    newest = add(store, ago(minutes=5))
    code = ("import json, sys; sys.path.insert(0, sys.argv[1]); import backup_catalog; "
            "print(json.dumps(backup_catalog.run(json.loads(sys.argv[2]))))")
    params = {"path": str(store), "name_prefix": PREFIX, "now": NOW_ISO}
    proc = subprocess.run([sys.executable, "-I", "-c", code, str(lib), json.dumps(params)], capture_output=True,
                          text=True, timeout=60, check=True)
    res = json.loads(proc.stdout)
    assert res["health"] == "ok" and res["newest_verified"]["id"] == newest, res


# --- documentation ------------------------------------------------------------------------------------------------


def test_documentation_matches_the_argument_spec(catalog, store, age_key, tmp_path):
    from tests.gates.test_gates_unit import _compare_options, _load_module

    module = _load_module("backup_catalog")
    doc = yaml.safe_load(module.DOCUMENTATION)
    yaml.safe_load(module.EXAMPLES)
    returned = yaml.safe_load(module.RETURN)
    _compare_options(doc["options"], module.argument_spec())
    assert module.argument_spec()["identity"]["no_log"] is True
    keys = set()
    for state in ("status", "verify", "prune"):
        keys |= set(catalog.run({"path": str(store), "state": state, "now": NOW_ISO}))
    add_sealed(store, ago(hours=1), PLAIN, age_key)
    keys |= set(catalog.run(extract_args(store, tmp_path / "out.dump", age_key)))
    assert keys - {"changed"} == set(returned)


# --- extract ------------------------------------------------------------------------------------------------------

PLAIN = b"PGDMP" + bytes(range(256)) * 40  # stands in for a pg_dump -Fc archive: any bytes


@pytest.fixture(scope="module")
def age_key(tmp_path_factory) -> dict:
    """A real age key pair: {"identity": the private key text, "recipient": age1...}."""
    path = tmp_path_factory.mktemp("age") / "key.txt"
    subprocess.run(["age-keygen", "-o", str(path)], check=True, capture_output=True, timeout=30)
    recipient = subprocess.run(["age-keygen", "-y", str(path)], check=True, capture_output=True, text=True,
                               timeout=30).stdout.strip()
    return {"identity": path.read_text(), "recipient": recipient}


def add_sealed(store: Path, started: datetime, plain: bytes, key: dict, verification: str = "toc",
               **manifest_extra) -> str:
    """One backup as pg_backup_job.py keeps it, its dump really encrypted with age to key's recipient."""
    backup_id = f"{PREFIX}-{started:%Y%m%dT%H%M%SZ}"
    dump = store / f"{backup_id}.dump.age"
    subprocess.run(["age", "--recipient", key["recipient"], "--output", str(dump)], input=plain, check=True,
                   capture_output=True, timeout=30)
    digest = hashlib.sha256(dump.read_bytes()).hexdigest()
    (store / f"{dump.name}.sha256").write_text(f"{digest}  {dump.name}\n")
    manifest = {"file": dump.name, "database": "ai_admin", "host": "10.0.0.11",
                "started": started.isoformat(timespec="seconds"),
                "finished": (started + timedelta(seconds=40)).isoformat(timespec="seconds"),
                "server_version_num": 150008, "format": "custom", "encryption": "age",
                "age_recipients": [key["recipient"]], "size": dump.stat().st_size, "sha256": digest,
                "plaintext_size": len(plain), "plaintext_sha256": hashlib.sha256(plain).hexdigest(),
                "row_counts": {"public.messages": 501, "public.whatsapp_auth": 1}, "verification": verification}
    manifest.update(manifest_extra)
    (store / f"{backup_id}.manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return backup_id


def extract_args(store: Path, dest: Path, key: dict | None = None, **extra) -> dict:
    args = {"path": str(store), "name_prefix": PREFIX, "state": "extract", "now": NOW_ISO, "dest": str(dest)}
    if key:
        args["identity"] = key["identity"]
    return dict(args, **extra)


def facts(store: Path, backup_id: str, started: datetime, plain: bytes, verification: str = "toc") -> dict:
    dump = store / f"{backup_id}.dump.age"
    return {"id": backup_id, "started": started.isoformat(), "age_s": int((NOW - started).total_seconds()),
            "verification": verification, "sha256": hashlib.sha256(dump.read_bytes()).hexdigest(),
            "plaintext_sha256": hashlib.sha256(plain).hexdigest(), "size": dump.stat().st_size,
            "row_counts": {"public.messages": 501, "public.whatsapp_auth": 1}, "server_version_num": 150008,
            "database": "ai_admin"}


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if ".tmp-" in p.name)


def test_extract_decrypts_the_newest_verified_backup_to_a_0600_file(run_module, store, age_key, tmp_path):
    older = add_sealed(store, ago(hours=3), b"older " + PLAIN, age_key, "restored")
    newest_verified = add_sealed(store, ago(hours=2), PLAIN, age_key)
    add_sealed(store, ago(hours=1), b"failed " + PLAIN, age_key, "failed")
    add_sealed(store, ago(minutes=30), b"unverified " + PLAIN, age_key, "none")
    out = tmp_path / "restore"
    out.mkdir(mode=0o700)
    dest = out / "ai_admin.dump"
    dest.write_bytes(b"an earlier extract, replaced")

    res = run_module(extract_args(store, dest, age_key))
    assert not res.get("failed") and res["changed"] is True, res
    assert res["backup"] == facts(store, newest_verified, ago(hours=2), PLAIN), res["backup"]
    assert res["extracted"] == str(dest) and res["problems"] == []
    assert dest.read_bytes() == PLAIN
    assert dest.stat().st_mode & 0o777 == 0o600
    assert leftovers(out) == [] and sorted(p.name for p in out.iterdir()) == ["ai_admin.dump"]
    assert res["msg"] == (f"extract: {newest_verified} (2.0 h old, checksum ok, rows public.messages 501, "
                          f"public.whatsapp_auth 1) decrypted to {dest}, plaintext sha256 ok")
    assert "AGE-SECRET-KEY" not in json.dumps(res)
    assert older != newest_verified


def test_extract_of_an_explicit_backup(run_module, store, age_key, tmp_path):
    older = add_sealed(store, ago(hours=30), b"older " + PLAIN, age_key, "restored")
    add_sealed(store, ago(hours=2), PLAIN, age_key)
    dest = tmp_path / "older.dump"
    res = run_module(extract_args(store, dest, age_key, backup_id=older))
    assert not res.get("failed"), res
    assert res["backup"] == facts(store, older, ago(hours=30), b"older " + PLAIN, "restored")
    assert dest.read_bytes() == b"older " + PLAIN and dest.stat().st_mode & 0o777 == 0o600

    # An explicit backup is refused when unknown, not verified or unusable, by its id.
    unverified = add_sealed(store, ago(hours=1), PLAIN, age_key, "none")
    broken = add_sealed(store, ago(minutes=50), PLAIN, age_key)
    (store / f"{broken}.dump.age").unlink()
    for backup_id, text in ((f"{PREFIX}-20200101T000000Z", "is not in the store"),
                            (unverified, "is not verified (its verification is none, not toc or restored)"),
                            (broken, f"is unusable: dump {broken}.dump.age is missing: counted as failed")):
        res = run_module(extract_args(store, tmp_path / "x.dump", age_key, backup_id=backup_id))
        assert res["failed"] and res["msg"] == f"backup_catalog: backup {backup_id} {text}", res
    assert not (tmp_path / "x.dump").exists()


def test_extract_refuses_a_backup_older_than_max_age_hours(run_module, store, age_key, tmp_path):
    stale = add_sealed(store, ago(hours=25), PLAIN, age_key)
    dest = tmp_path / "out.dump"
    res = run_module(extract_args(store, dest, age_key, max_age_hours=24))
    assert res["failed"] and res["msg"] == f"backup_catalog: backup {stale} is 25.0 h old, the limit is 24 h", res
    assert not dest.exists()
    res = run_module(extract_args(store, dest, age_key, max_age_hours=26))
    assert not res.get("failed") and dest.read_bytes() == PLAIN, res


@pytest.mark.parametrize("corrupt", ["archive", "sidecar"])
def test_extract_refuses_an_archive_that_fails_its_checksums(catalog, store, age_key, tmp_path, corrupt):
    older = add_sealed(store, ago(hours=5), PLAIN, age_key)
    newest = add_sealed(store, ago(hours=1), PLAIN, age_key)
    dump = store / f"{newest}.dump.age"
    if corrupt == "archive":  # one flipped bit: neither the manifest nor the sidecar agree
        data = bytearray(dump.read_bytes())
        data[len(data) // 2] ^= 0x01
        dump.write_bytes(bytes(data))
    else:  # the archive matches its manifest, not its sidecar
        (store / f"{dump.name}.sha256").write_text(f"{'0' * 64}  {dump.name}\n")
    before, dest = snapshot(store), tmp_path / "out.dump"
    with pytest.raises(catalog.CatalogError) as err:
        catalog.run(extract_args(store, dest, age_key))
    text = str(err.value)
    assert text.startswith(f"backup {newest} fails its checksum: sha256 of {newest}.dump.age is "), text
    assert ("the manifest says" in text) == (corrupt == "archive")
    assert text.endswith("the sidecar says otherwise")
    assert not dest.exists() and leftovers(tmp_path) == [] and snapshot(store) == before
    # The caller may name the older, sound backup instead.
    res = catalog.run(extract_args(store, dest, age_key, backup_id=older))
    assert res["backup"]["id"] == older and dest.read_bytes() == PLAIN


def test_extract_without_a_verified_backup_is_refused(run_module, store, age_key, tmp_path):
    add_sealed(store, ago(hours=2), PLAIN, age_key, "failed")
    add_sealed(store, ago(hours=1), PLAIN, age_key, "none")
    res = run_module(extract_args(store, tmp_path / "out.dump", age_key))
    assert res["failed"] and res["msg"] == ("backup_catalog: no verified backup to extract (2 in the store, none "
                                            "with verification toc or restored)"), res
    res = run_module(extract_args(store.parent / "empty", tmp_path / "out.dump", age_key))
    assert res["failed"] and "does not exist" in res["msg"], res
    assert not (tmp_path / "out.dump").exists()


def test_extract_in_check_mode_checks_and_writes_nothing(run_module, store, age_key, tmp_path):
    backup_id = add_sealed(store, ago(hours=2), PLAIN, age_key)
    out = tmp_path / "restore"
    out.mkdir()
    before = snapshot(store)
    res = run_module(extract_args(store, out / "ai_admin.dump"), check_mode=True)  # no identity needed
    assert not res.get("failed") and res["changed"] is True, res
    assert res["backup"] == facts(store, backup_id, ago(hours=2), PLAIN)
    assert res["extracted"] is None
    assert res["msg"].startswith(f"extract (check mode): {backup_id} (2.0 h old, checksum ok, rows ")
    assert list(out.iterdir()) == [] and snapshot(store) == before
    # The checks still run: a corrupt archive fails in check mode too, a missing identity only outside it.
    res = run_module(extract_args(store, out / "ai_admin.dump"))
    assert res["failed"] and "needs identity" in res["msg"], res
    res = run_module(extract_args(store, tmp_path / "nowhere" / "x.dump"), check_mode=True)
    assert res["failed"] and "the directory of dest" in res["msg"], res
    (store / f"{backup_id}.dump.age").write_bytes(b"truncated")
    res = run_module(extract_args(store, out / "ai_admin.dump"), check_mode=True)
    assert res["failed"] and f"backup {backup_id} fails its checksum" in res["msg"], res
    assert list(out.iterdir()) == []


def test_extract_removes_a_plaintext_that_differs_from_the_manifest(run_module, store, age_key, tmp_path):
    backup_id = add_sealed(store, ago(hours=1), PLAIN, age_key, plaintext_sha256=hashlib.sha256(b"x").hexdigest())
    dest = tmp_path / "out.dump"
    res = run_module(extract_args(store, dest, age_key))
    assert res["failed"], res
    assert res["msg"].startswith(f"backup_catalog: backup {backup_id}: the decrypted archive's sha256 is "
                                 f"{hashlib.sha256(PLAIN).hexdigest()}, the manifest's plaintext_sha256 is "), res
    assert not dest.exists() and leftovers(tmp_path) == [], sorted(p.name for p in tmp_path.iterdir())


def test_extract_with_the_wrong_identity_fails_and_writes_nothing(run_module, store, age_key, tmp_path):
    backup_id = add_sealed(store, ago(hours=1), PLAIN, age_key)
    other = tmp_path / "other.txt"
    subprocess.run(["age-keygen", "-o", str(other)], check=True, capture_output=True, timeout=30)
    dest = tmp_path / "out.dump"
    res = run_module(extract_args(store, dest, {"identity": other.read_text()}))
    assert res["failed"] and res["msg"].startswith(f"backup_catalog: backup {backup_id}: decrypt failed: age failed"), \
        res
    assert "AGE-SECRET-KEY" not in json.dumps(res)
    assert not dest.exists() and leftovers(tmp_path) == []
