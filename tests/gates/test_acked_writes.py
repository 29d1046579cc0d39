"""acked_writes (plugins/modules/acked_writes.py) against the harness's real TLS PostgreSQL: the API's
acknowledgement lines (app/src/main.js webhook()) in a current, a rotated and a gzip-rotated log, the rows of a
`messages` table some of which are gone, and the exact counts of acknowledged writes lost since a time."""

from __future__ import annotations

import gzip
import json
from datetime import datetime, timedelta, timezone

import pytest
import yaml
from psycopg import sql

from tests.gates.gates_pg import USER, USER_PASSWORD, free_port

DB = "acked_db"
SINCE = datetime(2026, 12, 3, 9, 30, tzinfo=timezone.utc)
ROLE = "ai-admin-api"


def ack(when: datetime, row: int, msg_id: str | None = None, pm2: bool = True) -> str:
    """The app's line (`${new Date().toISOString()} [${role}] ${msg}`), behind PM2's `time: true` prefix."""
    iso = when.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    line = f"{iso} [{ROLE}] webhook: acknowledged message {row} ({msg_id or f'wamid.{row}'})"
    return (f"{when.astimezone(timezone.utc):%Y-%m-%dT%H:%M:%S}: " if pm2 else "") + line + "\n"


def at(minutes: float) -> datetime:
    return SINCE + timedelta(minutes=minutes)


def iso(when: datetime) -> str:
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@pytest.fixture
def db(pg_tls):
    """DB with messages(id bigserial) holding rows 1..30."""
    with pg_tls.admin() as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(DB)))
        conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(DB), sql.Identifier(USER)))
    with pg_tls.connect(dbname=DB) as conn:
        conn.execute("CREATE TABLE messages (id bigserial PRIMARY KEY, body text)")
        conn.execute("INSERT INTO messages (body) SELECT 'wamid.' || g FROM generate_series(1, 30) g")
        conn.execute('CREATE SCHEMA app')
        conn.execute('CREATE TABLE app."Acked ""Rows""" (id integer PRIMARY KEY)')
        conn.execute('INSERT INTO app."Acked ""Rows""" SELECT g FROM generate_series(1, 30) g')
        conn.commit()
    yield DB
    with pg_tls.admin() as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(DB)))


def delete(pg_tls, rows: list[int]) -> None:
    with pg_tls.connect(dbname=DB) as conn:
        conn.execute("DELETE FROM messages WHERE id = ANY(%s)", (rows,))
        conn.execute('DELETE FROM app."Acked ""Rows""" WHERE id = ANY(%s)', (rows,))
        conn.commit()


@pytest.fixture
def logs(tmp_path):
    """The API's out log as PM2 and logrotate (delaycompress) leave it: .log, .log.1, .log.2.gz."""
    d = tmp_path / "logs"
    d.mkdir()
    # .2.gz, the oldest: acknowledgements before `since` (not counted, lost or not), and row 6 at `since` exactly.
    with gzip.open(d / "ai-admin-api.out.log.2.gz", "wt", encoding="utf-8") as fh:
        fh.write(f"{at(-40):%Y-%m-%dT%H:%M:%S}: 2026-12-03T08:50:00.000Z [{ROLE}] API listening on 0.0.0.0:3000\n")
        for row in range(1, 6):
            fh.write(ack(at(-30 + row), row))
        fh.write(ack(SINCE, 6))
    # .1: rows 7..16, one of them (7) acknowledged twice, and lines that are not acknowledgements.
    with (d / "ai-admin-api.out.log.1").open("w", encoding="utf-8") as fh:
        for row in range(7, 17):
            fh.write(ack(at(row), row))
        fh.write(ack(at(7.5), 7))
        fh.write(f"{at(17):%Y-%m-%dT%H:%M:%S}: 2026-12-03T09:47:00.000Z [{ROLE}] webhook: ok again\n")
        fh.write(f"{at(17):%Y-%m-%dT%H:%M:%S}: not-a-time [{ROLE}] webhook: acknowledged message 99 (x)\n")
        fh.write(f"{at(17):%Y-%m-%dT%H:%M:%S}: 2026-12-03T09:47:00.000Z [{ROLE}] webhook: acknowledged message 98\n")
    # .log, the current one: rows 17..20 without PM2's prefix (a run without `time: true`), a message id with
    # parentheses, a CRLF line.
    with (d / "ai-admin-api.out.log").open("w", encoding="utf-8", newline="") as fh:
        fh.write(ack(at(17), 17, pm2=False))
        fh.write(ack(at(18), 18, "id (with) parens)", pm2=False))
        fh.write(ack(at(19), 19, pm2=False).replace("\n", "\r\n"))
        fh.write(ack(at(20.25), 20, pm2=False))
    (d / "ai-admin-api.err.log").write_text(ack(at(21), 21))  # another glob's file: not read
    return d


def args(pg_tls, logs, **extra):
    return pg_tls.module_args(**dict({"database": DB, "log_paths": [str(logs / "ai-admin-api.out.log*")],
                                      "since": iso(SINCE)}, **extra))


def test_counts_the_acknowledged_writes_a_database_lacks(run_module, pg_tls, db, logs):
    delete(pg_tls, [3, 9, 10, 16, 20])  # 3 before `since`: not counted
    run = run_module("acked_writes", args(pg_tls, logs))
    assert not run.failed, run.result
    res = run.result
    assert res["changed"] is False
    assert (res["acked"], res["present"], res["lost"]) == (15, 11, 4), res  # rows 6..20
    assert res["lost_rows"] == [9, 10, 16, 20]
    assert res["first_lost_at"] == iso(at(9)) and res["last_lost_at"] == iso(at(20.25))
    assert res["last_acked_at"] == "2026-12-03T09:50:15.000Z"
    assert res["files_read"] == [str(logs / n) for n in ("ai-admin-api.out.log", "ai-admin-api.out.log.1",
                                                          "ai-admin-api.out.log.2.gz")]
    assert res["msg"] == res["summary"] == (
        "4 acknowledged writes lost of 15 since 2026-12-03T09:30:00.000Z (rows 9, 10, 16, 20, acknowledged "
        "2026-12-03T09:39:00.000Z to 2026-12-03T09:50:15.000Z): 11 in public.messages on 127.0.0.1/acked_db; "
        "3 log files read")
    assert USER_PASSWORD not in run.stdout and USER_PASSWORD not in run.stderr
    assert res["complete"] is True and res["logs_begin_at"] == "2026-12-03T08:50:00.000Z"

    # Logs that begin after the time the count must be complete from: a lower bound, said so.
    late = run_module("acked_writes", args(pg_tls, logs, complete_from="2026-12-03T08:00:00Z")).result
    assert late["complete"] is False and late["lost"] == 4, late
    assert late["msg"].startswith("at least 4 acknowledged writes lost") and "the logs begin at" in late["msg"]

    # Check mode reads the same and says the same.
    check = run_module("acked_writes", args(pg_tls, logs), check_mode=True)
    assert not check.failed and {k: v for k, v in check.result.items() if k != "duration_s"} == {
        k: v for k, v in res.items() if k != "duration_s"}

    # `since` in another offset is the same instant; a later one counts fewer; a quoted, schema-qualified table.
    same = run_module("acked_writes", args(pg_tls, logs, since="2026-12-03T11:30:00+02:00")).result
    assert (same["acked"], same["lost"]) == (15, 4), same
    later = run_module("acked_writes", args(pg_tls, logs, since=iso(at(10)))).result
    assert (later["acked"], later["lost"], later["lost_rows"]) == (11, 3, [10, 16, 20]), later
    odd = run_module("acked_writes", args(pg_tls, logs, table='app.Acked "Rows"')).result
    assert (odd["acked"], odd["present"], odd["lost_rows"]) == (15, 11, [9, 10, 16, 20]), odd
    assert 'in app.Acked "Rows" on' in odd["msg"]
    # psycopg2 (python3-psycopg2 of Ubuntu 22.04 hosts) adapts the id list its own way: the same counts.
    two = run_module("acked_writes", args(pg_tls, logs, driver="psycopg2")).result
    assert (two["acked"], two["present"], two["lost_rows"]) == (15, 11, [9, 10, 16, 20]), two


def test_nothing_lost_and_at_most_50_lost_rows_listed(run_module, pg_tls, db, tmp_path):
    log = tmp_path / "api.out.log"
    log.write_text("".join(ack(at(i / 10), row) for i, row in enumerate(range(1, 81))))
    res = run_module("acked_writes", args(pg_tls, tmp_path, log_paths=[str(log)])).result
    assert (res["acked"], res["present"], res["lost"], res["lost_rows"]) == (80, 30, 50, list(range(31, 81))), res
    assert res["first_lost_at"] == iso(at(3)) and res["last_lost_at"] == iso(at(7.9))
    delete(pg_tls, list(range(1, 31)))
    res = run_module("acked_writes", args(pg_tls, tmp_path, log_paths=[str(log)])).result
    assert (res["acked"], res["lost"], len(res["lost_rows"]), res["lost_rows"][-1]) == (80, 80, 50, 50), res
    assert ", ...," in res["msg"]

    empty = tmp_path / "quiet.log"
    empty.write_text(f"2026-12-03T09:00:00: 2026-12-03T09:00:00.000Z [{ROLE}] ready\n")
    for driver in ("psycopg", "psycopg2"):  # an empty id list still makes one valid query
        res = run_module("acked_writes", args(pg_tls, tmp_path, log_paths=[str(empty)], driver=driver)).result
        assert not res.get("failed") and (res["acked"], res["present"], res["lost"], res["lost_rows"]) == (
            0, 0, 0, []), res
        assert res["first_lost_at"] is None and res["last_lost_at"] is None and res["last_acked_at"] is None


def test_no_log_file_unreachable_or_unreadable_database_fail_clearly(run_module, pg_tls, db, logs, tmp_path):
    globs = [str(tmp_path / "nowhere" / "*.log*"), str(logs / "other.out.log*")]
    (logs / "dir.out.log").mkdir()  # a directory is not a log file
    for patterns in (globs, [str(logs / "dir.out.log*")]):
        run = run_module("acked_writes", args(pg_tls, logs, log_paths=patterns))
        assert run.failed and run.result["msg"] == "acked_writes: no log file matches " + ", ".join(patterns)
        assert run.result["summary"] == run.result["msg"]

    # A host rebuilt after its loss has no log: with missing_logs=unknown, not counted (never zero).
    run = run_module("acked_writes", args(pg_tls, logs, log_paths=globs, missing_logs="unknown"))
    assert not run.failed and run.result["counted"] is False and run.result["lost"] is None, run.result
    assert "cannot be counted: no log file matches" in run.result["msg"]
    counted = run_module("acked_writes", args(pg_tls, logs, missing_logs="unknown")).result
    assert counted["counted"] is True and counted["lost"] is not None

    run = run_module("acked_writes", args(pg_tls, logs, port=free_port()))
    assert run.failed and run.result["msg"].startswith("acked_writes: cannot reach 127.0.0.1:"), run.result
    assert "\n" not in run.result["msg"] and len(run.result["files_read"]) == 3

    run = run_module("acked_writes", args(pg_tls, logs, password="wrong"))
    assert run.failed and "cannot reach" in run.result["msg"] and "password authentication failed" in \
        run.result["msg"], run.result

    run = run_module("acked_writes", args(pg_tls, logs, table="missing"))
    assert run.failed and run.result["msg"].startswith(
        f"acked_writes: cannot read public.missing on 127.0.0.1:{pg_tls.port}/{DB}: "), run.result
    assert 'relation "public.missing" does not exist' in run.result["msg"]

    broken = logs / "ai-admin-api.out.log.3.gz"
    broken.write_bytes(gzip.compress(ack(at(1), 1).encode() * 200)[:-20])
    run = run_module("acked_writes", args(pg_tls, logs))
    assert run.failed and run.result["msg"].startswith(f"acked_writes: cannot read {broken}: "), run.result

    run = run_module("acked_writes", args(pg_tls, logs, since="2026-12-03T09:30:00"))
    assert run.failed and "since must be an ISO 8601 time with a UTC offset" in run.result["msg"], run.result


def test_documentation_matches_the_argument_spec(run_module, pg_tls, db, logs):
    from tests.gates.test_gates_unit import _compare_options, _documented_options, _load_module

    module = _load_module("acked_writes")
    doc = yaml.safe_load(module.DOCUMENTATION)
    assert doc["module"] == "acked_writes"
    spec = module.argument_spec()
    _compare_options(_documented_options(doc), spec)
    assert spec["password"]["no_log"] is True
    yaml.safe_load(module.EXAMPLES)
    returned = set(yaml.safe_load(module.RETURN))
    run = run_module("acked_writes", args(pg_tls, logs))
    assert set(run.result) - {"changed", "invocation"} == returned, json.dumps(run.result)
