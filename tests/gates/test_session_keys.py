"""plugins/modules/session_keys.py against a real TLS PostgreSQL on loopback (the lab's table shapes):
health counts per bucket and company, thresholds, check mode and dry run deleting nothing, the
batched cleanup keeping protected types, fresh keys and the credentials, a key refreshed while a
batch waits for its row lock kept, and a lock held by another session stopping the cleanup with
the failed batch rolled back whole."""

from __future__ import annotations

import threading
import time

import pytest

from tests.gates.gates_pg import DATABASE, USER

# company -> bucket -> (key type, how many): expired keys by the runbook's rule.
EXPIRED = {
    1001: {"0-1d": ("pre-key", 10), "1-7d": ("pre-key", 15), "7-14d": ("pre-key", 10), "14-30d": ("pre-key", 10),
           ">30d": ("sender-key", 15)},
    1002: {"0-1d": ("pre-key", 120)},
}
PROTECTED_EXPIRED = 5     # company 1001, app-state-sync-key expired 3 days ago (never deleted)
FRESH = 40                # company 1001, session keys expiring in 7 days
AGES = {"0-1d": "6 hours", "1-7d": "3 days", "7-14d": "10 days", "14-30d": "20 days"}


def seed(conn) -> None:
    conn.execute("DROP TABLE IF EXISTS whatsapp_keys, whatsapp_auth, companies")
    conn.execute("CREATE TABLE companies (id integer PRIMARY KEY)")
    conn.execute("INSERT INTO companies VALUES (1001), (1002)")
    conn.execute("CREATE TABLE whatsapp_auth (company_id integer PRIMARY KEY REFERENCES companies (id), "
                 "creds jsonb NOT NULL, created_at timestamptz NOT NULL DEFAULT now(), "
                 "updated_at timestamptz NOT NULL DEFAULT now() - interval '90 days')")
    conn.execute("CREATE TABLE whatsapp_keys (company_id integer NOT NULL REFERENCES companies (id), "
                 "key_type text NOT NULL, key_id text NOT NULL, value jsonb NOT NULL, "
                 "created_at timestamptz NOT NULL DEFAULT now(), updated_at timestamptz NOT NULL DEFAULT now(), "
                 "expires_at timestamptz, PRIMARY KEY (company_id, key_type, key_id))")
    conn.execute("INSERT INTO whatsapp_auth (company_id, creds) VALUES (1001, '{\"me\": 1}'), (1002, '{\"me\": 2}')")
    for company, buckets in EXPIRED.items():
        for bucket, (key_type, count) in buckets.items():
            if bucket == ">30d":  # not updated for 45 days, no expiry
                conn.execute("INSERT INTO whatsapp_keys (company_id, key_type, key_id, value, updated_at, expires_at) "
                             "SELECT %s, %s, 'stale-' || g, '{}', now() - interval '45 days', NULL "
                             "FROM generate_series(1, %s) g", (company, key_type, count))
            else:
                conn.execute("INSERT INTO whatsapp_keys (company_id, key_type, key_id, value, updated_at, expires_at) "
                             "SELECT %s, %s, %s || '-' || g, '{}', now() - %s::interval, now() - %s::interval "
                             "FROM generate_series(1, %s) g",
                             (company, key_type, bucket, AGES[bucket], AGES[bucket], count))
    conn.execute("INSERT INTO whatsapp_keys (company_id, key_type, key_id, value, updated_at, expires_at) "
                 "SELECT 1001, 'app-state-sync-key', 'sync-' || g, '{}', now() - interval '4 days', "
                 "now() - interval '3 days' FROM generate_series(1, %s) g", (PROTECTED_EXPIRED,))
    conn.execute("INSERT INTO whatsapp_keys (company_id, key_type, key_id, value, updated_at, expires_at) "
                 "SELECT 1001, 'session', 'fresh-' || g, '{}', now() - interval '1 hour', now() + interval '7 days' "
                 "FROM generate_series(1, %s) g", (FRESH,))
    for table in ("companies", "whatsapp_auth", "whatsapp_keys"):
        conn.execute(f"ALTER TABLE {table} OWNER TO {USER}")


@pytest.fixture
def keys_db(pg_tls):
    with pg_tls.admin(DATABASE) as conn:
        seed(conn)
    return pg_tls


def snapshot(server) -> list[tuple]:
    with server.admin(DATABASE) as conn:
        keys = conn.execute("SELECT company_id, key_type, key_id, updated_at, expires_at FROM whatsapp_keys "
                            "ORDER BY 1, 2, 3").fetchall()
        auth = conn.execute("SELECT company_id, creds, updated_at FROM whatsapp_auth ORDER BY 1").fetchall()
    return keys + auth


def count(server, where: str = "true") -> int:
    with server.admin(DATABASE) as conn:
        return conn.execute(f"SELECT count(*) FROM whatsapp_keys WHERE {where}").fetchone()[0]  # noqa: S608


def expected_buckets() -> dict[str, int]:
    out = dict.fromkeys(("0-1d", "1-7d", "7-14d", "14-30d", ">30d"), 0)
    for buckets in EXPIRED.values():
        for bucket, (_, n) in buckets.items():
            out[bucket] += n
    return out


def test_health_counts_the_runbooks_buckets_per_company(run_module, keys_db):
    run = run_module("session_keys", keys_db.module_args())
    assert not run.failed and run.result["changed"] is False, run.result
    res = run.result
    deletable = expected_buckets()
    expired = dict(deletable, **{"1-7d": deletable["1-7d"] + PROTECTED_EXPIRED})
    assert res["buckets"] == expired and res["deletable_buckets"] == deletable
    assert res["expired"] == sum(expired.values()) == 185 and res["deletable"] == 180
    assert res["total_keys"] == 185 + FRESH and res["auth_records"] == 2
    assert res["level"] == "warning"  # more than 100, not more than 250
    assert res["companies"]["1001"]["expired"] == 65 and res["companies"]["1001"]["level"] == "ok"
    assert res["companies"]["1002"]["buckets"]["0-1d"] == 120 and res["companies"]["1002"]["level"] == "warning"
    assert res["msg"].startswith("WARNING: 185 expired of 225 keys")


def test_thresholds_are_configurable_and_one_company_can_be_chosen(run_module, keys_db):
    run = run_module("session_keys", keys_db.module_args(warn_count=50, critical_count=150))
    assert run.result["level"] == "critical"
    run = run_module("session_keys", keys_db.module_args(companies=["1001"]))
    assert run.result["expired"] == 65 and run.result["level"] == "ok" and list(run.result["companies"]) == ["1001"]
    assert run.result["total_keys"] == 65 + FRESH and run.result["auth_records"] == 1


@pytest.mark.parametrize("how", ["check_mode", "dry_run"])
def test_check_mode_and_dry_run_delete_nothing(run_module, keys_db, how):
    before = snapshot(keys_db)
    args = keys_db.module_args(state="cleanup", dry_run=how == "dry_run")
    run = run_module("session_keys", args, check_mode=how == "check_mode")
    assert not run.failed and run.result["changed"] is False, run.result
    assert run.result["would_delete"] == expected_buckets() and run.result["deleted"]["total"] == 0
    assert "would delete 180 of 185" in run.result["msg"]
    assert snapshot(keys_db) == before


def test_cleanup_in_batches_keeps_protected_fresh_and_credentials(run_module, keys_db):
    auth_before = snapshot(keys_db)[-2:]
    run = run_module("session_keys", keys_db.module_args(state="cleanup", batch_size=7, pause_ms=10))
    assert not run.failed and run.result["changed"] is True, run.result
    res = run.result
    assert res["deleted"]["total"] == 180 and res["deleted"]["buckets"] == expected_buckets()
    assert res["deleted"]["companies"]["1002"]["total"] == 120
    # 60 keys in batches of 7 (9 batches, the last short) and 120 (18 batches, the last short).
    assert res["batches"] == 9 + 18
    assert res["remaining"] == PROTECTED_EXPIRED
    assert count(keys_db, "key_type = 'app-state-sync-key'") == PROTECTED_EXPIRED
    assert count(keys_db, "key_type = 'session'") == FRESH
    assert snapshot(keys_db)[-2:] == auth_before
    again = run_module("session_keys", keys_db.module_args(state="cleanup"))
    assert not again.failed and again.result["changed"] is False and again.result["deleted"]["total"] == 0


def test_a_key_refreshed_while_its_batch_waits_is_kept(run_module, keys_db):
    """The app refreshes expired keys of company 1002 (UPDATE, its transaction held 50 ms) while
    the cleanup runs: every refresh that committed must leave its key in place."""
    refreshed: list[str] = []
    stop = threading.Event()

    def app():
        with keys_db.connect() as conn:
            for n in range(1, 121):
                if stop.is_set():
                    break
                with conn.transaction():
                    cur = conn.execute("UPDATE whatsapp_keys SET updated_at = now(), expires_at = now() + interval "
                                       "'7 days' WHERE company_id = 1002 AND key_type = 'pre-key' AND key_id = %s",
                                       (f"0-1d-{n}",))
                    time.sleep(0.05)
                if cur.rowcount == 1:
                    refreshed.append(f"0-1d-{n}")

    writer = threading.Thread(target=app)
    writer.start()
    time.sleep(0.2)
    run = run_module("session_keys", keys_db.module_args(state="cleanup", companies=["1002"], batch_size=3,
                                                         pause_ms=20))
    stop.set()
    writer.join()
    assert not run.failed, run.result
    assert refreshed, "the writer refreshed nothing before the cleanup ended"
    with keys_db.admin(DATABASE) as conn:
        present = {r[0] for r in conn.execute("SELECT key_id FROM whatsapp_keys WHERE company_id = 1002").fetchall()}
    lost = [k for k in refreshed if k not in present]
    assert lost == [], f"refreshed keys deleted: {lost}"
    assert run.result["deleted"]["total"] == 120 - len(present)


def test_a_lock_held_by_another_session_stops_the_cleanup_cleanly(run_module, keys_db):
    """Another session holds row locks on keys of company 1002: the batch that meets them waits
    lock_timeout, is rolled back whole, and the module fails naming it; earlier batches stay."""
    with keys_db.connect() as holder:
        holder.execute("BEGIN")
        holder.execute("SELECT 1 FROM whatsapp_keys WHERE company_id = 1002 FOR UPDATE")
        run = run_module("session_keys", keys_db.module_args(state="cleanup", batch_size=10, lock_timeout_ms=300,
                                                             pause_ms=0))
        holder.execute("ROLLBACK")
    assert run.failed, run.result
    assert "lock timeout" in run.result["msg"] and "company 1002" in run.result["msg"], run.result["msg"]
    assert "rolled back, nothing of it deleted" in run.result["msg"]
    # Company 1001's batches were committed; nothing of 1002's was deleted.
    assert run.result["deleted"]["companies"]["1001"]["total"] == 60 and run.result["deleted"]["total"] == 60
    assert count(keys_db, "company_id = 1002") == 120
    assert count(keys_db, "company_id = 1001") == PROTECTED_EXPIRED + FRESH


@pytest.mark.parametrize(("overrides", "needle"), [
    ({"warn_count": 300, "critical_count": 250}, "critical_count (250) must not be below warn_count (300)"),
    ({"batch_size": 0}, "batch_size must be between 1 and 100000"),
    ({"lock_timeout_ms": 0}, "lock_timeout_ms must be between 1 and 600000"),
    ({"companies": [" "]}, "companies must not hold an empty id"),
    ({"max_age_days": 0}, "max_age_days must be between 1 and 3650"),
])
def test_bad_parameters_are_refused_before_connecting(run_module, keys_db, overrides, needle):
    before = keys_db.client_backends()
    run = run_module("session_keys", keys_db.module_args(state="cleanup", **overrides))
    assert run.failed and needle in run.result["msg"], run.result
    assert keys_db.client_backends() == before


def test_wrong_password_is_a_clear_error(run_module, keys_db):
    run = run_module("session_keys", keys_db.module_args(password="not-the-password"))
    assert run.failed and "password authentication failed" in run.result["msg"], run.result
    assert "not-the-password" not in run.stdout
