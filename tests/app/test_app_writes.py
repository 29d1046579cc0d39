"""The demo app's writes against the real PostgreSQL/Redis: WhatsApp keys under the session lock,
POST /webhook into `messages`, the worker's `dialog_contexts`, and a graceful API stop.

Webhook and worker tests use ``lab_db``: a database built by lab/files/seed.sql itself (integer
company ids, partitioned ``messages``); the keys tests also run on the default test database,
whose whatsapp tables have a text company_id.
"""

from __future__ import annotations

import http.client
import json
import re
import secrets
import signal
import socket
import threading
import time

import psycopg
import pytest

from tests.app.apptools import LAB_COMPANY, LAB_DB, LOCK_CLASS, SKIP, db_dsn, free_port, lock_key

pytestmark = [SKIP, pytest.mark.usefixtures("node_modules")]

KEY_TYPE = "app-state-sync-key"


def query(dsn: str, sql: str, params: tuple = ()) -> list[tuple]:
    """Run one statement; its rows ([] for a statement that returns none)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description else []


def wait_for(check, timeout: float = 10, step: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(step)


def app_keys(dsn: str, company: str) -> list[tuple]:
    return query(dsn, "SELECT key_id, created_at, updated_at, expires_at - updated_at, value FROM whatsapp_keys "
                      "WHERE company_id::text = %s AND key_type = %s ORDER BY key_id", (company, KEY_TYPE))


def auth_updated(dsn: str, company: str):
    rows = query(dsn, "SELECT updated_at FROM whatsapp_auth WHERE company_id::text = %s", (company,))
    return rows[0][0] if rows else None


def app_sessions(postgres: dict, role: str) -> int:
    return query(db_dsn(postgres), "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (role,))[0][0]


def lab_env(app_env: dict, **extra: str) -> dict:
    return {**app_env, "POSTGRES_DATABASE": LAB_DB, "COMPANY_ID": LAB_COMPANY, **extra}


@pytest.fixture
def auth_row(postgres, app_env):
    """A whatsapp_auth row for the test's (text) company, last touched a day ago; removed afterwards."""
    dsn, company = db_dsn(postgres), app_env["COMPANY_ID"]
    query(dsn, "INSERT INTO whatsapp_auth (company_id, creds, updated_at) VALUES (%s, '{}', now() - interval '1 day')",
          (company,))
    yield company
    query(dsn, "DELETE FROM whatsapp_keys WHERE company_id = %s", (company,))
    query(dsn, "DELETE FROM whatsapp_auth WHERE company_id = %s", (company,))


# -- 1. WhatsApp keys ----------------------------------------------------------------------------


def test_keys_upserted_while_lock_held(app_env, start_app, postgres, auth_row):
    dsn, company = db_dsn(postgres), auth_row
    day_old = auth_updated(dsn, company)
    wa = start_app("baileys-whatsapp-service", dict(app_env, AIADMIN_KEYS_INTERVAL_MS="300"))
    wa.wait_log("ready")  # the first upsert runs right after the lock, before "ready"
    first = app_keys(dsn, company)
    assert len(first) == 4
    assert all(ttl.total_seconds() == 7 * 86400 for _, _, _, ttl, _ in first)
    assert auth_updated(dsn, company) > day_old
    newest = max(r[2] for r in first)
    later = wait_for(lambda: (rows := app_keys(dsn, company)) and min(r[2] for r in rows) > newest and rows,
                     what="the keys' updated_at to advance")
    assert len(later) == 4 and [r[0] for r in later] == [r[0] for r in first]  # upsert, not insert
    assert [r[1] for r in later] == [r[1] for r in first]  # created_at kept
    assert all(a[4]["keyData"] != b[4]["keyData"] for a, b in zip(first, later, strict=True))  # values rotate
    assert wa.proc.poll() is None
    assert wa.stop() == 0


def test_keys_integer_company_on_the_lab_schema(app_env, start_app, lab_db):
    """COMPANY_ID=1001 into integer company_id columns: PostgreSQL types the parameter."""
    before = auth_updated(lab_db, LAB_COMPANY)
    wa = start_app("baileys-whatsapp-service", lab_env(app_env, AIADMIN_KEYS_INTERVAL_MS="200"))
    out = wa.wait_log("ready")
    assert "whatsapp keys:" not in out
    rows = app_keys(lab_db, LAB_COMPANY)
    assert len(rows) == 4
    assert auth_updated(lab_db, LAB_COMPANY) > before
    assert query(lab_db, "SELECT pg_typeof(company_id)::text FROM whatsapp_keys LIMIT 1") == [("integer",)]
    assert wa.stop() == 0


def lock_holder(dsn: str, company: str) -> list[tuple]:
    return query(dsn, "SELECT application_name FROM pg_locks JOIN pg_stat_activity USING (pid) "
                      "WHERE locktype = 'advisory' AND granted AND classid = %s AND objid = %s AND objsubid = 2",
                 (LOCK_CLASS, lock_key(company)))


def test_keys_write_error_logged_once_and_not_fatal(app_env, start_app, lab_db):
    """A company id the integer column refuses: every write fails, the error is logged once, the
    process keeps running and keeps the lock."""
    wa = start_app("baileys-whatsapp-service", lab_env(app_env, COMPANY_ID="not-a-number",
                                                       AIADMIN_KEYS_INTERVAL_MS="100"))
    wait_for(lambda: lock_holder(lab_db, "not-a-number"), what="the session lock")
    time.sleep(1.5)  # ~15 failed writes
    assert wa.proc.poll() is None
    assert lock_holder(lab_db, "not-a-number") == [("baileys-whatsapp-service",)]
    assert wa.stop() == 0
    out = wa.output()
    assert "] ready" in out
    assert out.count("whatsapp keys: invalid input syntax for type integer") == 1, out


def test_no_keys_while_another_session_holds_the_lock(app_env, start_app, postgres, auth_row):
    dsn, company = db_dsn(postgres), auth_row
    day_old = auth_updated(dsn, company)
    with psycopg.connect(dsn, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s, %s)", (LOCK_CLASS, lock_key(company)))
        wa = start_app("baileys-whatsapp-service", dict(app_env, AIADMIN_KEYS_INTERVAL_MS="100"))
        assert wa.proc.wait(timeout=30) == 3
        assert "another host holds the WhatsApp session lock" in wa.output()
        assert app_keys(dsn, company) == []
        assert auth_updated(dsn, company) == day_old
    # The same process, once the lock is free, does write: the check above could have failed.
    wa = start_app("baileys-whatsapp-service", dict(app_env, AIADMIN_KEYS_INTERVAL_MS="100"))
    wa.wait_log("ready")
    assert len(app_keys(dsn, company)) == 4


# -- 2. POST /webhook ----------------------------------------------------------------------------


def stored(dsn: str, body: str) -> list[tuple]:
    return query(dsn, "SELECT id, company_id, phone, tableoid::regclass::text FROM messages WHERE body = %s", (body,))


def test_webhook_stores_one_row_then_201(app_env, start_app, lab_db):
    api = start_app("ai-admin-api", lab_env(app_env))
    api.wait_http()
    msg_id = f"wamid.{secrets.token_hex(6)}"
    code, body = api.post_json("/webhook", {"id": msg_id, "phone": "+00012345678", "body": "Привет ✓"})
    assert code == 201
    assert body == {"stored": True, "id": msg_id, "message_row": body["message_row"]}
    assert isinstance(body["message_row"], int)
    assert stored(lab_db, msg_id) == [(body["message_row"], 1001, "+00012345678", "messages_default")]
    # A second message is a second row; the first stays single.
    code, again = api.post_json("/webhook", {"id": msg_id + "-2", "phone": "+00012345678", "body": ""})
    assert code == 201 and again["message_row"] > body["message_row"]
    assert len(stored(lab_db, msg_id)) == 1


def test_webhook_rejects_bad_requests(app_env, start_app, lab_db):
    api = start_app("ai-admin-api", lab_env(app_env))
    api.wait_http()
    tag = secrets.token_hex(4)
    ok = {"id": f"bad-{tag}", "phone": "+000", "body": "x"}
    bad_docs = [
        [1, 2],
        "just a string",
        None,
        {"phone": "+000", "body": "x"},
        {"id": f"bad-{tag}", "body": "x"},
        {"id": f"bad-{tag}", "phone": "+000"},
        dict(ok, id=""),
        dict(ok, phone=""),
        dict(ok, id="x" * 129),
        dict(ok, phone="1" * 33),
        dict(ok, body="b" * 32769),
        dict(ok, phone=1234),
        dict(ok, id=["a"]),
        dict(ok, id=f"bad-{tag}\u0000"),
    ]
    for doc in bad_docs:
        code, body = api.post_json("/webhook", doc)
        assert code == 400, (doc, body)
        assert body["stored"] is False and body["error"]
    for raw in (b"{not json", b"", b'{"id": "x"', b"\xff\xfe"):
        code, body, _ = api.request("POST", "/webhook", raw, {"content-type": "application/json"})
        assert code == 400, (raw, body)
    # The size limit: 64 kB of request body. Whitespace keeps a document valid at any size.
    doc = json.dumps(dict(ok, id=f"edge-{tag}")).encode()
    exact = doc[:-1] + b" " * (65536 - len(doc)) + b"}"
    code, body, _ = api.request("POST", "/webhook", exact, {"content-type": "application/json"})
    assert len(exact) == 65536 and code == 201, body
    code, body, headers = api.request("POST", "/webhook", exact[:-1] + b" }", {"content-type": "application/json"})
    assert code == 413 and body["stored"] is False and headers["connection"] == "close"
    # Chunked, so the server only learns the size while reading.
    conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=10)
    conn.request("POST", "/webhook", body=iter([b" " * 8192] * 9), encode_chunked=True,
                 headers={"content-type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 413 and json.loads(resp.read())["stored"] is False
    conn.close()
    # Methods and paths.
    assert api.request("GET", "/webhook")[0] == 405
    code, _, headers = api.request("PUT", "/webhook", b"{}")
    assert code == 405 and headers["allow"] == "POST"
    assert api.request("POST", "/health", b"{}")[0] == 405
    assert api.request("POST", "/webhooks", b"{}")[0] == 405
    assert api.request("GET", "/nope")[0] == 404
    assert api.get("/health")[0] == 200
    assert query(lab_db, "SELECT body FROM messages WHERE body LIKE %s", (f"bad-{tag}%",)) == []
    assert len(stored(lab_db, f"edge-{tag}")) == 1


def test_webhook_503_when_the_database_is_unreachable(app_env, start_app):
    api = start_app("ai-admin-api",
                    lab_env(app_env, POSTGRES_PORT=str(free_port()), POSTGRES_CONNECTION_TIMEOUT="1000"))
    api.wait_http()
    for n in range(3):
        code, body = api.post_json("/webhook", {"id": f"down-{n}", "phone": "+000", "body": "x"})
        assert code == 503 and body["stored"] is False and body["id"] == f"down-{n}"
        assert body["error"].startswith("database: ")
    assert api.stop() == 0
    out = api.output()
    # One line per failed message (a watch counts them), the error itself once per distinct error.
    assert [f"down-{n}" for n in range(3)] == re.findall(r"\] webhook: failed message \((\S+)\): database: ", out)
    assert len(re.findall(r"\] webhook: (?!failed message )", out)) == 1


def test_webhook_503_on_a_database_error(app_env, start_app, postgres, lab_db):
    """The INSERT itself fails (a company id the integer column refuses): 503, nothing stored."""
    api = start_app("ai-admin-api", lab_env(app_env, COMPANY_ID="not-a-number"))
    api.wait_http()
    msg_id = f"err-{secrets.token_hex(4)}"
    for _ in range(5):
        code, body = api.post_json("/webhook", {"id": msg_id, "phone": "+000", "body": "x"})
        assert code == 503 and body["stored"] is False and "invalid input syntax" in body["error"]
    assert stored(lab_db, msg_id) == []
    assert app_sessions(postgres, "ai-admin-api") == 3  # SQL errors do not cost pool connections


# -- 3. the worker -------------------------------------------------------------------------------


def contexts(dsn: str, phone: str):
    rows = query(dsn, "SELECT context, updated_at > now() - interval '1 minute' FROM dialog_contexts "
                      "WHERE company_id = 1001 AND phone = %s", (phone,))
    return rows[0] if rows else None


def test_worker_folds_new_messages_into_dialog_contexts(app_env, start_app, lab_db):
    tag = secrets.token_hex(4)
    old_phone, p1, p2 = f"+old-{tag}", f"+p1-{tag}", f"+p2-{tag}"
    query(lab_db, "INSERT INTO messages (company_id, phone, body) VALUES (1001, %s, 'before the worker')", (old_phone,))
    worker = start_app("ai-admin-worker-v2", lab_env(app_env, AIADMIN_WORKER_INTERVAL_MS="200"))
    worker.wait_log("ready")
    api = start_app("ai-admin-api", lab_env(app_env))
    api.wait_http()
    for msg_id, phone in ((f"m1-{tag}", p1), (f"m2-{tag}", p2), (f"m3-{tag}", p1)):
        assert api.post_json("/webhook", {"id": msg_id, "phone": phone, "body": "hello"})[0] == 201
    # Another company's message is not this worker's.
    query(lab_db, "INSERT INTO messages (company_id, phone, body) VALUES (1002, %s, 'other company')", (p1,))
    ctx, fresh = wait_for(lambda: (c := contexts(lab_db, p1)) and c[0].get("messages") == 2 and c,
                          what="dialog_contexts for p1")
    assert ctx == {"last_message": f"m3-{tag}", "messages": 2} and fresh
    assert contexts(lab_db, p2)[0] == {"last_message": f"m2-{tag}", "messages": 1}
    assert contexts(lab_db, old_phone) is None  # older than the worker's start
    # Later batches increment the count.
    assert api.post_json("/webhook", {"id": f"m4-{tag}", "phone": p1, "body": "again"})[0] == 201
    wait_for(lambda: contexts(lab_db, p1)[0] == {"last_message": f"m4-{tag}", "messages": 3},
             what="the count to reach 3")
    time.sleep(0.6)  # a few more ticks: nothing processed twice
    assert contexts(lab_db, p1)[0]["messages"] == 3
    assert worker.proc.poll() is None
    assert worker.stop() == 0


def test_worker_database_errors_are_not_fatal(app_env, start_app, postgres):
    """The default test database has no `messages` table: logged once, the worker keeps running."""
    worker = start_app("ai-admin-worker-v2", dict(app_env, AIADMIN_WORKER_INTERVAL_MS="100"))
    wait_for(lambda: query(db_dsn(postgres), "SELECT 1 FROM pg_stat_activity WHERE application_name = "
                                              "'ai-admin-worker-v2'"), what="the worker's pool")
    time.sleep(1.5)
    assert worker.proc.poll() is None
    assert app_sessions(postgres, "ai-admin-worker-v2") == 3  # SQL errors do not cost pool connections
    assert worker.stop() == 0
    out = worker.output()
    assert "] ready" in out
    assert out.count('worker: relation "messages" does not exist') == 1, out


# -- 2b. stopping the API ------------------------------------------------------------------------


def test_api_stop_finishes_in_flight_refuses_new_and_drops_keepalive(app_env, start_app, postgres, lab_db):
    api = start_app("ai-admin-api", lab_env(app_env))
    api.wait_http()
    idle = http.client.HTTPConnection("127.0.0.1", api.port, timeout=10)  # a keep-alive client, left idle
    idle.request("GET", "/health")
    resp = idle.getresponse()
    resp.read()
    assert resp.status == 200 and (resp.getheader("connection") or "keep-alive").lower() == "keep-alive"
    msg_id = f"inflight-{secrets.token_hex(4)}"
    result: dict = {}

    def post() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=30)
        conn.request("POST", "/webhook", json.dumps({"id": msg_id, "phone": "+000", "body": "x"}),
                     {"content-type": "application/json"})
        r = conn.getresponse()
        result.update(status=r.status, body=json.loads(r.read()), connection=r.getheader("connection"),
                      at=time.time())
        conn.close()

    with psycopg.connect(lab_db) as blocker:  # holds the INSERT: an in-flight request
        blocker.execute("LOCK TABLE messages IN EXCLUSIVE MODE")
        thread = threading.Thread(target=post)
        thread.start()
        wait_for(lambda: query(db_dsn(postgres), "SELECT 1 FROM pg_stat_activity WHERE application_name = "
                                                  "'ai-admin-api' AND wait_event_type = 'Lock'"),
                 what="the webhook INSERT to wait for the table lock")
        api.proc.send_signal(signal.SIGTERM)

        def refused() -> bool:
            try:
                socket.create_connection(("127.0.0.1", api.port), timeout=1).close()
            except ConnectionRefusedError:
                return True
            return False

        wait_for(refused, what="new connections to be refused")
        idle.sock.settimeout(5)
        assert idle.sock.recv(1) == b""  # the idle keep-alive socket was closed by the server
        assert api.proc.poll() is None and not result  # still finishing the in-flight request
        released = time.time()
        blocker.commit()
    thread.join(timeout=20)
    assert result["status"] == 201 and result["body"]["stored"] is True and result["at"] >= released
    assert result["connection"] == "close"
    assert api.proc.wait(timeout=20) == 0
    assert len(stored(lab_db, msg_id)) == 1
