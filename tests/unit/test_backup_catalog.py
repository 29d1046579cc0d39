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


def test_documentation_matches_the_argument_spec(catalog, store):
    from tests.gates.test_gates_unit import _compare_options, _load_module

    module = _load_module("backup_catalog")
    doc = yaml.safe_load(module.DOCUMENTATION)
    yaml.safe_load(module.EXAMPLES)
    returned = yaml.safe_load(module.RETURN)
    _compare_options(doc["options"], module.argument_spec())
    keys = set()
    for state in ("status", "verify", "prune"):
        keys |= set(catalog.run({"path": str(store), "state": state, "now": NOW_ISO}))
    assert keys - {"changed"} == set(returned)
