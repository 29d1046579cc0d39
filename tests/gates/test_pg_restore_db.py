"""pg_restore_db (plugins/modules/pg_restore_db.py) against the harness's real TLS PostgreSQL: a pg_dump -Fc of a
source database restored into a new, empty one over verify-full, the row counts compared; a re-run does nothing;
a target holding other data and a broken archive are refused with nothing written."""

from __future__ import annotations

import subprocess

import pytest
from psycopg import sql

from tests.gates.gates_pg import DATABASE, PG_BIN, USER

TABLES = ["whatsapp_auth", "messages"]
TARGET = "restore_target"


@pytest.fixture(scope="module")
def source(pg_tls, tmp_path_factory):
    """The source tables in DATABASE, and their pg_dump -Fc archive (plaintext, as the controller decrypts it)."""
    with pg_tls.admin(DATABASE) as conn:
        conn.execute("DROP TABLE IF EXISTS whatsapp_auth, messages")
        conn.execute("CREATE TABLE whatsapp_auth (company_id text PRIMARY KEY, creds text)")
        conn.execute("CREATE TABLE messages (id bigserial PRIMARY KEY, body text)")
        conn.execute("INSERT INTO whatsapp_auth VALUES ('1001', 'fake-creds')")
        conn.execute("INSERT INTO messages (body) SELECT md5(g::text) FROM generate_series(1, 700) g")
        for table in TABLES:
            conn.execute(sql.SQL("ALTER TABLE {} OWNER TO {}").format(sql.Identifier(table), sql.Identifier(USER)))
    dump = tmp_path_factory.mktemp("dump") / "ai_admin.dump"
    subprocess.run([str(PG_BIN / "pg_dump"), "-Fc", "-h", str(pg_tls.sockdir), "-p", str(pg_tls.port), "-U", "postgres",
                    "-d", DATABASE, "-f", str(dump)], check=True, capture_output=True)
    return dump


@pytest.fixture
def target(pg_tls):
    with pg_tls.admin() as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(TARGET)))
        conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(TARGET), sql.Identifier(USER)))
    yield TARGET
    with pg_tls.admin() as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(TARGET)))


def args(pg_tls, dump, **extra):
    return pg_tls.module_args(**dict({"database": TARGET, "dump": str(dump), "required_tables": TABLES,
                                      "expected_counts": {"whatsapp_auth": 1, "messages": 700},
                                      "max_id_tables": ["messages"]}, **extra))


def tables(pg_tls):
    with pg_tls.admin(TARGET) as conn:
        return sorted(r[0] for r in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall())


def test_restores_into_an_empty_database_and_a_rerun_does_nothing(run_module, pg_tls, source, target):
    check = run_module("pg_restore_db", args(pg_tls, source), check_mode=True)
    assert not check.failed and check.result["state_before"] == "empty" and tables(pg_tls) == []

    run = run_module("pg_restore_db", args(pg_tls, source))
    assert not run.failed, run.result
    result = run.result
    assert result["changed"] and result["state_before"] == "empty"
    assert result["row_counts"] == {"public.whatsapp_auth": 1, "public.messages": 700}
    assert result["max_ids"] == {"public.messages": 700}
    assert {"check", "restore", "analyze", "counts"} <= set(result["timings_s"])
    with pg_tls.connect(dbname=TARGET) as conn:
        assert conn.execute("SELECT creds FROM whatsapp_auth").fetchone() == ("fake-creds",)
        owner = conn.execute("SELECT tableowner FROM pg_tables WHERE tablename = 'messages'").fetchone()[0]
    assert owner == USER, "--no-owner: the tables belong to the restoring role"
    assert "P}a|s" not in run.stdout

    again = run_module("pg_restore_db", args(pg_tls, source))
    assert not again.failed and again.result["changed"] is False and again.result["state_before"] == "restored"


def test_a_database_holding_other_data_is_refused_untouched(run_module, pg_tls, source, target):
    with pg_tls.connect(dbname=TARGET) as conn:
        conn.execute("CREATE TABLE messages (id bigserial PRIMARY KEY, body text)")
        conn.execute("INSERT INTO messages (body) VALUES ('someone else''s row')")
        conn.commit()
    run = run_module("pg_restore_db", args(pg_tls, source))
    assert run.failed and run.result["stage"] == "check"
    assert "already holds data" in run.result["msg"] and "messages 1 rows" in run.result["msg"]
    assert tables(pg_tls) == ["messages"]


def test_a_broken_archive_leaves_the_database_empty(run_module, pg_tls, source, target, tmp_path):
    broken = tmp_path / "broken.dump"
    data = source.read_bytes()
    broken.write_bytes(data[: len(data) * 2 // 3])
    run = run_module("pg_restore_db", args(pg_tls, broken))
    assert run.failed and run.result["stage"] == "restore", run.result
    assert tables(pg_tls) == [], "one transaction: nothing of a failed restore stays"


def test_counts_that_differ_from_the_manifest_fail(run_module, pg_tls, source, target):
    run = run_module("pg_restore_db", args(pg_tls, source, expected_counts={"whatsapp_auth": 1, "messages": 701}))
    assert run.failed and run.result["stage"] == "counts"
    assert "messages: 700 restored, the manifest says 701" in run.result["msg"]
