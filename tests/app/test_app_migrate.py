"""The demo app's migration command (npm run migrate) on a real PostgreSQL with TLS: applied once,
a second run has nothing to do, a failing migration leaves nothing behind, two runs at once
apply it once."""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

import psycopg
import pytest

from tests.app.apptools import APP, LAB_DB, NODE, SKIP
from tests.helpers import dotenv_text

pytestmark = [SKIP, pytest.mark.usefixtures("node_modules")]


def run(values: dict, workdir: Path, fail: bool = False) -> subprocess.CompletedProcess:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / ".env").write_text("# test\n" + dotenv_text(values))
    env = {"PATH": "/usr/bin:/bin", **({"AIADMIN_DEMO_MIGRATION_FAIL": "1"} if fail else {})}
    return subprocess.run([NODE, str(APP / "src/migrate.js")], cwd=workdir, env=env, capture_output=True,
                          text=True, timeout=60)


def schema(dsn: str) -> tuple[bool, list[str]]:
    """(booking_reminders exists, names in schema_migrations)."""
    with psycopg.connect(dsn) as conn:
        table = conn.execute("SELECT to_regclass('booking_reminders') IS NOT NULL").fetchone()[0]
        tracked = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()[0]
        names = [r[0] for r in conn.execute("SELECT name FROM schema_migrations ORDER BY name")] if tracked else []
        return table, names


@pytest.fixture
def fresh(lab_db, app_env, workdir) -> tuple[str, dict]:
    with psycopg.connect(lab_db, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS booking_reminders, schema_migrations")
    return lab_db, dict(app_env, POSTGRES_DATABASE=LAB_DB)


def test_applied_once_then_nothing_to_do(fresh, workdir):
    dsn, values = fresh
    first = run(values, workdir / "m1")
    assert first.returncode == 0, first.stderr
    assert "applied 001_booking_reminders.sql" in first.stdout
    assert schema(dsn) == (True, ["001_booking_reminders.sql"])
    second = run(values, workdir / "m1")
    assert second.returncode == 0, second.stderr
    assert "up to date, 0 applied, 1 already applied" in second.stdout
    assert schema(dsn) == (True, ["001_booking_reminders.sql"])


def test_a_failing_migration_leaves_nothing(fresh, workdir):
    dsn, values = fresh
    proc = run(values, workdir / "m2", fail=True)
    assert proc.returncode == 1
    assert "001_booking_reminders.sql" in proc.stderr and "rolled back" in proc.stderr
    table, names = schema(dsn)
    assert not table and names == [], "the migration's table or its record survived the rollback"


def test_two_runs_at_once_apply_it_once(fresh, workdir):
    dsn, values = fresh
    results = []
    threads = [threading.Thread(target=lambda i=i: results.append(run(values, workdir / f"c{i}"))) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.returncode for r in results] == [0, 0], [r.stderr for r in results]
    assert sum("applied 001_" in r.stdout for r in results) == 1
    assert schema(dsn) == (True, ["001_booking_reminders.sql"])


def test_a_bad_password_fails_without_a_change(fresh, workdir):
    dsn, values = fresh
    proc = run(dict(values, POSTGRES_PASSWORD="LAB-FAKE wrong"), workdir / "m4")
    assert proc.returncode == 1 and "password authentication failed" in proc.stderr
    assert schema(dsn) == (False, [])
