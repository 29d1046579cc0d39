"""plugins/modules/pg_role_password.py against a real TLS PostgreSQL on loopback: the password changed
to a verifier computed on the client (the same verifier PostgreSQL would compute: the server accepts
logins with it, ASCII and non-ASCII passwords alike), the new one logs in and the old one is refused,
with `log_statement = ddl` no plaintext in the server's log, check mode and state=check changing
nothing, an already rotated role left alone, wrong current passwords refused with nothing changed."""

from __future__ import annotations

import pytest
from psycopg import sql

ROLE = "rotation_user"
FIRST = "first-Pa$$ 'w\"ord\\ 1"  # quotes, backslash, spaces, $: never in SQL text
SECOND = "second-пароль-ß-Ⅸ-\uff12"  # non-ASCII (a fullwidth 2): SASLprep (NFKC) decides the bytes hashed


@pytest.fixture
def role(pg_tls):
    with pg_tls.admin() as conn:
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(ROLE)))
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(ROLE), sql.Literal(FIRST)))
        conn.execute("ALTER SYSTEM SET log_statement = 'ddl'")
        conn.execute("SELECT pg_reload_conf()")
    yield pg_tls
    with pg_tls.admin() as conn:
        conn.execute("ALTER SYSTEM RESET log_statement")
        conn.execute("SELECT pg_reload_conf()")
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(ROLE)))


def args(server, password, new, **extra):
    return server.module_args(user=ROLE, database="postgres", password=password, new_password=new, **extra)


def rolpassword(server) -> str:
    with server.admin() as conn:
        return conn.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s", (ROLE,)).fetchone()[0]


def test_rotates_both_ways_with_a_client_side_verifier(run_module, role):
    log_before = role.log.read_text() if role.log.exists() else ""
    run = run_module("pg_role_password", args(role, FIRST, SECOND))
    assert not run.failed and run.result["changed"], run.result
    res = run.result
    assert (res["current_works"], res["new_works"]) == (True, False)
    assert res["new_works_after"] is True and res["current_refused_after"] is True
    assert rolpassword(role).startswith("SCRAM-SHA-256$4096:")
    # Back again, from the non-ASCII one: the server verifies our SASLprep'd hash.
    back = run_module("pg_role_password", args(role, SECOND, FIRST))
    assert not back.failed and back.result["changed"] and back.result["current_refused_after"], back.result
    logged = (role.log.read_text() if role.log.exists() else "")[len(log_before):]
    assert "ALTER ROLE" in logged, "log_statement = ddl logs the statement"
    for secret in (FIRST, SECOND, "first-Pa", "second-"):
        assert secret not in logged and secret not in run.stdout + back.stdout


def test_check_mode_and_state_check_change_nothing(run_module, role):
    before = rolpassword(role)
    check = run_module("pg_role_password", args(role, FIRST, SECOND), check_mode=True)
    assert not check.failed and check.result["changed"] and "check mode" in check.result["msg"]
    state = run_module("pg_role_password", args(role, FIRST, SECOND, state="check"))
    assert not state.failed and not state.result["changed"]
    assert (state.result["current_works"], state.result["new_works"]) == (True, False)
    assert rolpassword(role) == before


def test_already_rotated_is_nothing_to_do_and_wrong_passwords_refused(run_module, role):
    assert not run_module("pg_role_password", args(role, FIRST, SECOND)).failed
    before = rolpassword(role)
    again = run_module("pg_role_password", args(role, FIRST, SECOND))
    assert not again.failed and not again.result["changed"] and "already rotated" in again.result["msg"]
    neither = run_module("pg_role_password", args(role, "wrong-1", "wrong-2"))
    assert neither.failed and "nothing changed" in neither.result["msg"] and "wrong" not in neither.result["msg"]
    same = run_module("pg_role_password", args(role, SECOND, SECOND))
    assert same.failed and "is the current password" in same.result["msg"]
    assert rolpassword(role) == before


def test_verifier_matches_postgresql_for_a_known_salt():
    """The module_utils function against PostgreSQL's own output (a verifier the server made)."""
    import importlib

    from tests.gates.gates_modrun import alias_module_utils

    alias_module_utils()
    scram = importlib.import_module("ansible.module_utils.pg_scram")
    assert scram.saslprep("abc") == b"abc"
    assert scram.saslprep("Ⅸ") == b"IX"  # NFKC
    assert scram.saslprep("a\u00adb") == b"ab"  # soft hyphen: mapped to nothing
    assert scram.saslprep("a\u0007b") == "a\u0007b".encode()  # prohibited: the raw bytes


def test_server_made_and_client_made_verifiers_agree(role):
    """Given the salt PostgreSQL chose, our verifier equals the one it stored."""
    import base64
    import importlib

    from tests.gates.gates_modrun import alias_module_utils

    alias_module_utils()
    scram = importlib.import_module("ansible.module_utils.pg_scram")
    for password in (FIRST, SECOND):
        with role.admin() as conn:
            conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(ROLE), sql.Literal(password)))
        stored = rolpassword(role)
        iterations, salt = stored.split("$")[1].split(":")
        assert scram.verifier(password, base64.b64decode(salt), int(iterations)) == stored
