"""plugins/modules/redis_password.py against a real redis-server on loopback (requirepass, KEYS and
CONFIG disabled as the redis role does): both passwords valid between add and remove, a client on
the current one kept while they are, the removal refused until the new one works, re-runs with
nothing to do, check mode changing nothing, and no password in any output."""

from __future__ import annotations

import shutil

import pytest

from tests.gates.gates_pg import free_port
from tests.helpers import redis_process

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")

CURRENT = 'cur} | < ? % "pass'
NEXT = "next-LAB-FAKE pass 2"


@pytest.fixture
def redis(tmp_path):
    port = free_port()
    with redis_process(tmp_path, port, CURRENT, 'rename-command KEYS ""\nrename-command CONFIG ""\n'):
        yield port


def args(port, password=CURRENT, new=NEXT, **extra):
    return {"port": port, "password": password, "new_password": new, **extra}


def test_add_then_remove_with_both_valid_in_between(run_module, redis):
    check = run_module("redis_password", args(redis)).result
    assert (check["current_works"], check["new_works"], check["changed"]) == (True, False, False), check
    early = run_module("redis_password", args(redis, state="remove"))
    assert early.failed and "kept until the new one works" in early.result["msg"]

    added = run_module("redis_password", args(redis, state="add"))
    assert not added.failed and added.result["changed"], added.result
    assert (added.result["current_works_after"], added.result["new_works_after"]) == (True, True)
    again = run_module("redis_password", args(redis, state="add")).result
    assert again["changed"] is False

    removed = run_module("redis_password", args(redis, state="remove"))
    assert not removed.failed and removed.result["changed"], removed.result
    assert (removed.result["current_works_after"], removed.result["new_works_after"]) == (False, True)
    assert run_module("redis_password", args(redis, state="remove")).result["changed"] is False
    for run in (added, removed):
        assert CURRENT not in run.stdout + run.stderr and NEXT not in run.stdout + run.stderr

    # Back: the roles swap (what was next is current now).
    back = [run_module("redis_password", args(redis, NEXT, CURRENT, state=s)).result for s in ("add", "remove")]
    assert [b["changed"] for b in back] == [True, True]
    assert (back[1]["current_works_after"], back[1]["new_works_after"]) == (False, True)


def test_check_mode_neither_password_and_bad_input(run_module, redis):
    assert run_module("redis_password", args(redis, state="add"), check_mode=True).result["changed"] is True
    assert run_module("redis_password", args(redis)).result["new_works"] is False  # nothing was added
    neither = run_module("redis_password", args(redis, "wrong-1", "wrong-2", state="add"))
    assert neither.failed and "neither password logs in: nothing changed" in neither.result["msg"]
    same = run_module("redis_password", args(redis, CURRENT, CURRENT))
    assert same.failed and "is the current password" in same.result["msg"]
    down = run_module("redis_password", args(free_port()))
    assert down.failed and "cannot connect" in down.result["msg"]
