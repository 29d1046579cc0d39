"""tests/writes.py WebhookWriter against the real demo API (lab schema database, real PostgreSQL)."""

from __future__ import annotations

import re
import socket
import time

import psycopg
import pytest

from tests.app.apptools import LAB_COMPANY, LAB_DB, SKIP, free_port
from tests.writes import WebhookWriter

pytestmark = [SKIP, pytest.mark.usefixtures("node_modules")]


def lab_env(app_env: dict, **extra: str) -> dict:
    return {**app_env, "POSTGRES_DATABASE": LAB_DB, "COMPANY_ID": LAB_COMPANY, **extra}


def wait_for(check, timeout: float = 20, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
    return value


def api_url(api) -> str:
    return f"http://127.0.0.1:{api.port}"


def test_twenty_writes_acknowledged_and_stored_once(app_env, start_app, lab_db):
    api = start_app("ai-admin-api", lab_env(app_env))
    api.wait_http()
    url = api_url(api)
    with WebhookWriter([url + "/"], interval=0.02) as writer:
        wait_for(lambda: len(writer.acked()) >= 20, what="20 acknowledged writes")
    writes = writer.writes()
    assert len(writes) >= 20 and writer.unacked() == []
    assert [w.id for w in writes] == [f"probe-{writer.run}-{n}" for n in range(1, len(writes) + 1)]
    assert re.fullmatch(r"[0-9a-f]{8}", writer.run)
    assert writer.acked_by(url) == writer.acked() and writer.acked_by(url + "/") == writer.acked()
    for w in writes:
        assert w.acked_by == url and w.started <= w.ack_time and isinstance(w.message_row, int)
        assert [(a.url, a.outcome, a.status) for a in w.attempts] == [(url, "acked", 201)]
    assert writer.outcomes() == {url: {"acked": len(writes)}}
    assert writer.acked_by_after(url, writes[9].ack_time) == [w.id for w in writes[10:]]
    with psycopg.connect(lab_db) as conn:
        report = writer.verify(conn)
        rows = conn.execute("SELECT id FROM messages WHERE body = ANY(%s) ORDER BY id",
                            ([w.id for w in writes],)).fetchall()
    assert report == {"acked": len(writes), "unacked": 0, "missing": [], "duplicates": [], "stored_unacked": 0,
                      "ok": True}
    assert [r[0] for r in rows] == [w.message_row for w in writes]


def test_app_stopped_mid_stream(app_env, start_app, lab_db):
    api = start_app("ai-admin-api", lab_env(app_env))
    api.wait_http()
    url = api_url(api)
    with WebhookWriter([url], interval=0.02) as writer:
        wait_for(lambda: len(writer.acked()) >= 10, what="10 acknowledged writes")
        assert api.stop() == 0  # SIGTERM, graceful
        stopped = time.time()
        wait_for(lambda: sum(w.started > stopped for w in writer.writes()) >= 5, what="5 writes after the stop")
    after = [w for w in writer.writes() if w.started > stopped]
    assert after and all(not w.acked for w in after)
    assert all(a.outcome == "refused" for w in after for a in w.attempts)
    assert writer.acked_by_after(url, stopped) == []
    assert len(writer.acked()) >= 10
    with psycopg.connect(lab_db, autocommit=True) as conn:
        report = writer.verify(conn)
    assert report["missing"] == [] and report["duplicates"] == [] and report["ok"]
    assert report["acked"] == len(writer.acked()) and report["unacked"] == len(writer.unacked()) >= 5
    # A graceful stop answers every request it accepted: nothing stored without its ack.
    assert report["stored_unacked"] == 0


def test_fails_over_to_the_next_url(app_env, start_app, lab_db):
    old = start_app("ai-admin-api", lab_env(app_env))
    new = start_app("ai-admin-api", lab_env(app_env, AIADMIN_API_PORT=str(free_port())))
    old.wait_http()
    new.wait_http()
    old_url, new_url = api_url(old), api_url(new)
    with WebhookWriter([old_url, new_url], interval=0.02) as writer:
        wait_for(lambda: len(writer.acked_by(old_url)) >= 10, what="10 writes on the old URL")
        assert writer.acked_by(new_url) == []  # the first URL that acknowledges wins
        assert old.stop() == 0
        stopped = time.time()
        wait_for(lambda: len(writer.acked_by_after(new_url, stopped)) >= 5, what="5 writes on the new URL")
    assert writer.acked_by_after(old_url, stopped) == []
    assert writer.unacked() == []  # every write found a URL
    for w in writer.writes():
        if w.acked_by == new_url:
            assert [a.url for a in w.attempts] == [old_url, new_url]
            assert w.attempts[0].outcome in {"refused", "error"}
    with psycopg.connect(lab_db) as conn:
        report = writer.verify(conn)
    assert report == {"acked": len(writer.writes()), "unacked": 0, "missing": [], "duplicates": [],
                      "stored_unacked": 0, "ok": True}


def test_rejections_are_attempts_and_the_next_url_is_tried(app_env, start_app, lab_db):
    """A 503 (the database refuses the write) is no ack: the next URL gets the same id."""
    failing = start_app("ai-admin-api", lab_env(app_env, COMPANY_ID="not-a-number"))
    good = start_app("ai-admin-api", lab_env(app_env, AIADMIN_API_PORT=str(free_port())))
    failing.wait_http()
    good.wait_http()
    bad_url, good_url = api_url(failing), api_url(good)
    writer = WebhookWriter([bad_url, good_url])
    write = writer.write_once()  # synchronously, no thread
    assert write.acked and write.acked_by == good_url
    first, second = write.attempts
    assert (first.url, first.outcome, first.status) == (bad_url, "rejected", 503)
    assert "invalid input syntax" in first.detail
    assert (second.url, second.outcome, second.status) == (good_url, "acked", 201)
    assert [i for i, _ in writer.attempts(bad_url)] == [write.id]
    with psycopg.connect(lab_db) as conn:
        assert writer.verify(conn)["ok"]


def test_nothing_answers(lab_db):
    """Refused and silent URLs: every write unacknowledged, ids never reused, nothing stored."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # accepts connections (backlog), never answers
    refused_url = f"http://127.0.0.1:{free_port()}"
    silent_url = f"http://127.0.0.1:{silent.getsockname()[1]}"
    try:
        writer = WebhookWriter([refused_url, silent_url], timeout=0.3)
        writes = [writer.write_once() for _ in range(3)]
    finally:
        silent.close()
    assert len({w.id for w in writes}) == 3 and writer.acked() == []
    for w in writes:
        assert [(a.url, a.outcome) for a in w.attempts] == [(refused_url, "refused"), (silent_url, "timeout")]
        assert w.attempts[1].finished - w.attempts[1].started >= 0.3
    assert writer.outcomes() == {refused_url: {"refused": 3}, silent_url: {"timeout": 3}}
    with psycopg.connect(lab_db) as conn:
        assert writer.verify(conn) == {"acked": 0, "unacked": 3, "missing": [], "duplicates": [],
                                       "stored_unacked": 0, "ok": True}


def test_verify_counts_missing_duplicates_and_stored_unacked(lab_db):
    """verify() itself, on rows planted by hand."""
    url = f"http://127.0.0.1:{free_port()}"
    writer = WebhookWriter([url])
    writes = [writer.write_once() for _ in range(4)]  # refused: all unacknowledged
    for w in writes[:2]:  # pretend these two were acknowledged (write_once returns the record itself)
        w.acked, w.acked_by, w.ack_time = True, url, time.time()
    a1, a2, u1, u2 = (w.id for w in writes)
    with psycopg.connect(lab_db, autocommit=True) as conn:
        for body in (a1, a1, u1, u2, u2):  # a1 twice, a2 missing, u1 and u2 stored without an ack
            conn.execute("INSERT INTO messages (company_id, phone, body) VALUES (1001, 'x', %s)", (body,))
        report = writer.verify(conn)
    assert report == {"acked": 2, "unacked": 2, "missing": [a2], "duplicates": [a1, u2], "stored_unacked": 2,
                      "ok": False}
