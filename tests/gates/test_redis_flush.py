"""plugins/modules/redis_flush.py against a real redis-server on loopback, configured like the redis
role configures the app's (a password, KEYS disabled) plus an ACL user: the context cache removed
with SCAN + UNLINK (MONITOR shows the commands, never KEYS), every other key intact, dry run and
check mode removing nothing, bad input and a wrong password refused clearly."""

from __future__ import annotations

import shutil
import threading
import time

import pytest

from tests.gates.gates_pg import free_port
from tests.helpers import ROOT, redis_process

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")

PASSWORD = 'r3dis} | < ? % "pass'
ACL_USER, ACL_PASSWORD = "maintenance", "acl-pass-7"
OTHERS = {"session:1001": "s", "bull:queue:1": "q", "contextual": "c", "ctx:1": "x", "cache:context:1": "y"}


@pytest.fixture(scope="module")
def redis(tmp_path_factory):
    port = free_port()
    acl = (f"rename-command KEYS \"\"\nuser {ACL_USER} on >{ACL_PASSWORD} ~context:* +scan +unlink +dbsize "
           "+select +auth +ping\n")
    with redis_process(tmp_path_factory.mktemp("redis"), port, PASSWORD, acl):
        yield port


def client(port):
    import sys

    sys.path.insert(0, str(ROOT / "plugins/module_utils"))
    try:
        from redis_resp import Redis
    finally:
        sys.path.pop(0)
    conn = Redis("127.0.0.1", port)
    conn.auth(PASSWORD)
    return conn


@pytest.fixture
def keyspace(redis):
    with client(redis) as conn:
        conn.command("FLUSHDB")  # the test server only (the role disables it on the hosts)
        for start in range(0, 2500, 500):
            args = []
            for n in range(start, start + 500):
                args += [f"context:1001:{n}", "{}"]
            conn.command("MSET", *args)
        for key, value in OTHERS.items():
            conn.command("SET", key, value)
    return redis


def all_keys(port) -> dict:
    out, cursor = {}, b"0"
    with client(port) as conn:
        while True:
            cursor, keys = conn.command("SCAN", cursor, "COUNT", 1000)
            for key in keys:
                out[key.decode()] = conn.command("GET", key)
            if cursor == b"0":
                return out


def args(port, **overrides):
    return {"port": port, "password": PASSWORD, "batch_size": 200, **overrides}


def test_context_keys_removed_with_scan_and_unlink_others_intact(run_module, keyspace):
    seen: list[list[bytes]] = []

    def monitor():
        with client(keyspace) as conn:
            conn.sock.settimeout(10)
            conn.command("MONITOR")
            while True:
                try:
                    line = conn._line()
                except Exception:
                    return
                seen.append(line.split(b'"')[1::2])
                if b'"DBSIZE"' in line and len([s for s in seen if s[:1] == [b"DBSIZE"]]) >= 2:
                    return

    watcher = threading.Thread(target=monitor, daemon=True)
    watcher.start()
    time.sleep(0.2)
    run = run_module("redis_flush", args(keyspace))
    watcher.join(10)
    assert not run.failed and run.result["changed"] is True, run.result
    res = run.result
    assert res["matched"] == res["removed"] == 2500 and res["batches"] >= 13
    assert res["keys_before"] == 2500 + len(OTHERS) and res["keys_after"] == len(OTHERS)
    left = all_keys(keyspace)
    assert {k: v.decode() for k, v in left.items()} == OTHERS
    commands = {c[0].upper() for c in seen if c}
    assert {b"SCAN", b"UNLINK"} <= commands and b"KEYS" not in commands and b"DEL" not in commands, commands
    assert PASSWORD not in run.stdout and PASSWORD not in run.stderr
    again = run_module("redis_flush", args(keyspace))
    assert not again.failed and again.result["changed"] is False and again.result["removed"] == 0


@pytest.mark.parametrize("how", ["dry_run", "check_mode"])
def test_dry_run_and_check_mode_count_and_remove_nothing(run_module, keyspace, how):
    before = all_keys(keyspace)
    run = run_module("redis_flush", args(keyspace, dry_run=how == "dry_run"), check_mode=how == "check_mode")
    assert not run.failed and run.result["changed"] is False, run.result
    assert run.result["matched"] == 2500 and run.result["removed"] == 0
    assert "dry run: 2500 keys match context:*" in run.result["msg"]
    assert all_keys(keyspace) == before


def test_an_acl_user_limited_to_the_pattern_can_flush(run_module, keyspace):
    run = run_module("redis_flush", args(keyspace, username=ACL_USER, password=ACL_PASSWORD))
    assert not run.failed and run.result["removed"] == 2500, run.result
    assert {k: v.decode() for k, v in all_keys(keyspace).items()} == OTHERS


@pytest.mark.parametrize(("overrides", "needle"), [
    ({"pattern": "*"}, "would match every key"),
    ({"pattern": ""}, "would match every key"),
    ({"batch_size": 0}, "batch_size must be between 1 and 100000"),
    ({"username": "x", "password": None}, "username needs password"),
])
def test_bad_input_is_refused_before_connecting(run_module, keyspace, overrides, needle):
    before = all_keys(keyspace)
    run = run_module("redis_flush", args(keyspace, **overrides))
    assert run.failed and needle in run.result["msg"], run.result
    assert all_keys(keyspace) == before


def test_wrong_password_and_closed_port_are_clear_errors(run_module, keyspace):
    run = run_module("redis_flush", args(keyspace, password="wrong-password"))
    assert run.failed and "authentication failed" in run.result["msg"], run.result
    assert "wrong-password" not in run.stdout
    run = run_module("redis_flush", args(free_port()))
    assert run.failed and "cannot connect" in run.result["msg"] and "refused" in run.result["msg"], run.result
