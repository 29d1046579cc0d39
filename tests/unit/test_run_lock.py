"""run_lock, the real module run as a subprocess (tests/gates/gates_modrun.py, like the gate tests) on a tmp path."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from itertools import count
from pathlib import Path

import pytest

from tests.gates.gates_lib import MODRUN, ModuleRun
from tests.helpers import ROOT

MODULE = ROOT / "plugins/modules/run_lock.py"
_seq = count()


def owner(run_id: str, command: str = "migrate") -> dict:
    return {"run_id": run_id, "command": command, "controller": "ctl1", "pid": 4242,
            "started": "2026-12-01T21:00:03Z", "inventory": "lab-0123456789"}


def spawn(tmp: Path, args: dict, check: bool = False) -> subprocess.Popen:
    """Start the module like Ansible would (its arguments in a file), without waiting for it."""
    payload = dict(args, **({"_ansible_check_mode": True} if check else {}))
    args_file = tmp / f"args-{next(_seq)}.json"
    args_file.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": payload}))
    return subprocess.Popen([sys.executable, str(MODRUN), str(MODULE), str(args_file)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> ModuleRun:
    out, err = proc.communicate(timeout=60)
    try:
        result = json.loads(out)
    except json.JSONDecodeError:
        pytest.fail(f"run_lock printed no JSON (rc {proc.returncode}):\n{out}\n{err}")
    return ModuleRun(proc.returncode, result, 0.0, out, err)


def run_lock(tmp: Path, check: bool = False, **args) -> ModuleRun:
    return finish(spawn(tmp, args, check))


@pytest.fixture
def lock(tmp_path) -> Path:
    return tmp_path / "run" / "aiadmin-ops" / "run.lock"


def warnings(result: dict) -> list[str]:
    """The warnings' texts (ansible-core 2.19 returns them as WarningSummary objects)."""
    return [w if isinstance(w, str) else (w.get("event") or {}).get("msg", "") for w in result.get("warnings", [])]


def holder_on_disk(path: Path) -> dict:
    return json.loads(path.read_text())


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


HELD_BY_A = "run lock held by migrate run aaaaaaaaaaaa (controller ctl1 pid 4242, since 2026-12-01T21:00:03Z)"


def test_acquire_writes_the_owner_0600_in_a_0700_directory(tmp_path, lock):
    old_umask = os.umask(0)
    try:
        res = run_lock(tmp_path, path=str(lock), state="present", owner=owner("aaaaaaaaaaaa"))
    finally:
        os.umask(old_umask)
    assert not res.failed and res.result["changed"] is True, res.result
    assert res.result["held"] is True and res.result["path"] == str(lock)
    on_disk = holder_on_disk(lock)
    assert {k: on_disk[k] for k in owner("x")} == owner("aaaaaaaaaaaa")
    assert on_disk["host"] and on_disk["acquired"]
    assert res.result["holder"] == on_disk
    assert mode(lock) == 0o600
    assert mode(lock.parent) == 0o700
    assert sorted(p.name for p in lock.parent.iterdir()) == ["run.lock"]  # no temporary file left


def test_acquire_is_re_entrant_for_the_same_run(tmp_path, lock):
    first = run_lock(tmp_path, path=str(lock), owner=owner("aaaaaaaaaaaa"))
    before = lock.read_text()
    again = run_lock(tmp_path, path=str(lock), owner=owner("aaaaaaaaaaaa", command="rollback"))
    assert first.result["changed"] is True
    assert not again.failed and again.result["changed"] is False, again.result
    assert again.result["held"] is True and again.result["holder"]["run_id"] == "aaaaaaaaaaaa"
    assert lock.read_text() == before


def test_another_run_is_refused_with_the_holder_named(tmp_path, lock):
    run_lock(tmp_path, path=str(lock), owner=owner("aaaaaaaaaaaa"))
    before = lock.read_text()
    res = run_lock(tmp_path, path=str(lock), owner=owner("bbbbbbbbbbbb", command="deploy"))
    assert res.failed, res.result
    assert res.result["msg"] == HELD_BY_A
    assert res.result["held"] is True
    assert res.result["holder"]["run_id"] == "aaaaaaaaaaaa" and res.result["holder"]["pid"] == 4242
    assert lock.read_text() == before


def test_takeover_only_with_the_holders_run_id(tmp_path, lock):
    run_lock(tmp_path, path=str(lock), owner=owner("aaaaaaaaaaaa"))
    wrong = run_lock(tmp_path, path=str(lock), owner=owner("cccccccccccc"), takeover="bbbbbbbbbbbb")
    assert wrong.failed
    assert wrong.result["msg"].startswith(HELD_BY_A)
    assert "takeover names run bbbbbbbbbbbb" in wrong.result["msg"]
    assert holder_on_disk(lock)["run_id"] == "aaaaaaaaaaaa"

    right = run_lock(tmp_path, path=str(lock), owner=owner("cccccccccccc", command="rollback"),
                     takeover="aaaaaaaaaaaa")
    assert not right.failed and right.result["changed"] is True, right.result
    assert right.result["took_over"]["run_id"] == "aaaaaaaaaaaa"
    assert right.result["holder"]["run_id"] == "cccccccccccc"
    assert holder_on_disk(lock)["run_id"] == "cccccccccccc" and holder_on_disk(lock)["command"] == "rollback"
    assert mode(lock) == 0o600
    assert sorted(p.name for p in lock.parent.iterdir()) == ["run.lock"]

    # Taking over a lock that is free is just acquiring it.
    free = tmp_path / "free" / "run.lock"
    res = run_lock(tmp_path, path=str(free), owner=owner("dddddddddddd"), takeover="aaaaaaaaaaaa")
    assert not res.failed and res.result["changed"] is True and res.result["took_over"] is None


def test_release_only_by_its_owner(tmp_path, lock):
    run_lock(tmp_path, path=str(lock), owner=owner("aaaaaaaaaaaa"))
    other = run_lock(tmp_path, path=str(lock), state="absent", owner=owner("bbbbbbbbbbbb"))
    assert not other.failed and other.result["changed"] is False, other.result
    assert other.result["held"] is True and other.result["holder"]["run_id"] == "aaaaaaaaaaaa"
    assert any(HELD_BY_A in w and "not removed" in w for w in warnings(other.result)), other.result
    assert lock.exists()

    mine = run_lock(tmp_path, path=str(lock), state="absent", owner=owner("aaaaaaaaaaaa"))
    assert not mine.failed and mine.result["changed"] is True, mine.result
    assert mine.result["held"] is False and mine.result["holder"] is None
    assert mine.result["removed"]["run_id"] == "aaaaaaaaaaaa"
    assert not lock.exists()

    again = run_lock(tmp_path, path=str(lock), state="absent", owner=owner("aaaaaaaaaaaa"))
    assert not again.failed and again.result["changed"] is False and again.result["held"] is False
    nowhere = run_lock(tmp_path, path=str(tmp_path / "no" / "such" / "run.lock"), state="absent",
                       owner=owner("aaaaaaaaaaaa"))
    assert not nowhere.failed and nowhere.result["changed"] is False
    assert not (tmp_path / "no").exists()


def test_force_removes_whoever_holds_it(tmp_path, lock):
    run_lock(tmp_path, path=str(lock), owner=owner("aaaaaaaaaaaa"))
    res = run_lock(tmp_path, path=str(lock), state="absent", force=True)
    assert not res.failed and res.result["changed"] is True, res.result
    assert res.result["removed"]["run_id"] == "aaaaaaaaaaaa" and res.result["held"] is False
    assert not lock.exists()


def test_query_reports_the_holder(tmp_path, lock):
    free = run_lock(tmp_path, path=str(lock), state="query")
    assert not free.failed and free.result == {**free.result, "held": False, "holder": None, "changed": False}
    run_lock(tmp_path, path=str(lock), owner=owner("aaaaaaaaaaaa"))
    held = run_lock(tmp_path, path=str(lock), state="query")
    assert held.result["held"] is True and held.result["holder"]["run_id"] == "aaaaaaaaaaaa"
    assert held.result["changed"] is False


@pytest.mark.parametrize(
    ("content", "error"),
    [(b"{not json", "not JSON"), (b"", "empty"), (b"[1, 2]", "not a JSON object"),
     (b'{"command": "migrate"}', "no run_id"), (b"\xff\xfe", "not JSON")],
)
def test_a_corrupt_lock_fails_closed(tmp_path, lock, content, error):
    lock.parent.mkdir(parents=True)
    lock.write_bytes(content)
    os.utime(lock, (1_700_000_000, 1_700_000_000))
    res = run_lock(tmp_path, path=str(lock), owner=owner("aaaaaaaaaaaa"))
    assert res.failed, res.result
    assert res.result["msg"].startswith(
        "run lock held by unknown run unknown (controller unknown pid unknown, since 2023-11-14T22:13:20Z)")
    holder = res.result["holder"]
    assert holder["run_id"] == "unknown" and holder["corrupt"] is True and holder["error"] == error
    assert holder["mtime"] == "2023-11-14T22:13:20Z"
    # Never taken over, never released by a run: only the operator's forced clear removes it.
    assert run_lock(tmp_path, path=str(lock), owner=owner("aaaaaaaaaaaa"), takeover="unknown").failed
    kept = run_lock(tmp_path, path=str(lock), state="absent", owner=owner("aaaaaaaaaaaa"))
    assert kept.result["changed"] is False and lock.read_bytes() == content
    assert run_lock(tmp_path, path=str(lock), state="query").result["holder"]["run_id"] == "unknown"
    cleared = run_lock(tmp_path, path=str(lock), state="absent", force=True)
    assert cleared.result["changed"] is True and not lock.exists()


def test_a_symlink_is_not_followed(tmp_path, lock):
    lock.parent.mkdir(parents=True)
    target = tmp_path / "elsewhere.json"
    target.write_text(json.dumps(owner("aaaaaaaaaaaa")))
    lock.symlink_to(target)
    res = run_lock(tmp_path, path=str(lock), owner=owner("aaaaaaaaaaaa"))
    assert res.failed and res.result["holder"]["run_id"] == "unknown", res.result
    assert res.result["holder"]["error"] == "a symbolic link"


def test_check_mode_changes_nothing(tmp_path, lock):
    would = run_lock(tmp_path, check=True, path=str(lock), owner=owner("aaaaaaaaaaaa"))
    assert not would.failed and would.result["changed"] is True, would.result
    assert would.result["held"] is False and not lock.parent.exists()

    run_lock(tmp_path, path=str(lock), owner=owner("aaaaaaaaaaaa"))
    before = lock.read_text()
    refused = run_lock(tmp_path, check=True, path=str(lock), owner=owner("bbbbbbbbbbbb"))
    assert refused.failed and refused.result["msg"] == HELD_BY_A
    take = run_lock(tmp_path, check=True, path=str(lock), owner=owner("bbbbbbbbbbbb"), takeover="aaaaaaaaaaaa")
    assert not take.failed and take.result["changed"] is True and take.result["took_over"]["run_id"] == "aaaaaaaaaaaa"
    release = run_lock(tmp_path, check=True, path=str(lock), state="absent", owner=owner("aaaaaaaaaaaa"))
    assert release.result["changed"] is True and release.result["held"] is True
    force = run_lock(tmp_path, check=True, path=str(lock), state="absent", force=True)
    assert force.result["changed"] is True
    assert lock.read_text() == before
    assert sorted(p.name for p in lock.parent.iterdir()) == ["run.lock"]


def test_bad_arguments_are_refused(tmp_path, lock):
    assert "owner.run_id is required" in run_lock(tmp_path, path=str(lock), state="present").result["msg"]
    assert "owner.run_id is required" in run_lock(tmp_path, path=str(lock), state="absent").result["msg"]
    assert "force applies to state=absent" in run_lock(tmp_path, path=str(lock), owner=owner("a"),
                                                       force=True).result["msg"]
    assert "takeover applies to state=present" in run_lock(tmp_path, path=str(lock), state="absent",
                                                           owner=owner("a"), takeover="b").result["msg"]
    assert "reserved" in run_lock(tmp_path, path=str(lock), owner=owner("unknown")).result["msg"]
    assert not lock.exists()


ROUNDS, RACERS = 5, 6


def test_concurrent_acquirers_exactly_one_wins(tmp_path):
    for round_no in range(ROUNDS):
        lock = tmp_path / f"round-{round_no}" / "run.lock"
        ids = [f"r{round_no}p{i}".ljust(12, "0") for i in range(RACERS)]
        procs = [spawn(tmp_path, {"path": str(lock), "owner": owner(run_id)}) for run_id in ids]
        results = [finish(p) for p in procs]
        winners = [run_id for run_id, r in zip(ids, results, strict=True) if not r.failed]
        assert len(winners) == 1, [r.result for r in results]
        assert holder_on_disk(lock)["run_id"] == winners[0]
        for r in results:
            if r.failed:
                assert r.result["msg"].startswith(f"run lock held by migrate run {winners[0]} "), r.result
        assert sorted(p.name for p in lock.parent.iterdir()) == ["run.lock"]


def test_concurrent_takeovers_are_a_compare_and_swap(tmp_path):
    for round_no in range(ROUNDS):
        lock = tmp_path / f"round-{round_no}" / "run.lock"
        assert not run_lock(tmp_path, path=str(lock), owner=owner("deaddeaddead")).failed
        ids = [f"t{round_no}p{i}".ljust(12, "0") for i in range(RACERS)]
        procs = [spawn(tmp_path, {"path": str(lock), "owner": owner(run_id), "takeover": "deaddeaddead"})
                 for run_id in ids]
        results = [finish(p) for p in procs]
        winners = [run_id for run_id, r in zip(ids, results, strict=True) if not r.failed]
        assert len(winners) == 1, [r.result for r in results]
        assert holder_on_disk(lock)["run_id"] == winners[0]
