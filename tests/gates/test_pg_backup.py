"""pg_backup against a real PostgreSQL 15 with TLS on loopback (tests/gates/conftest.py), real
pg_dump/pg_restore and real age. Each fault asserts a clear message, nothing kept from the
failed run, and the earlier backups byte-identical."""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import shutil
import stat
import subprocess
import sys
import threading
import time

import pytest

from tests.gates.gates_pg import DATABASE, IS_ROOT, USER

MARKER = "marker-7f3c9a-not-in-any-kept-file"
TABLES = ["whatsapp_keys", "messages"]

pytestmark = pytest.mark.skipif(shutil.which("age") is None or shutil.which("age-keygen") is None,
                                reason="needs age (scripts/install-deps installs it)")


@pytest.fixture(scope="module")
def backup_db(pg_tls):
    with pg_tls.admin(DATABASE) as conn:
        conn.execute("DROP TABLE IF EXISTS whatsapp_keys, messages")
        conn.execute("CREATE TABLE whatsapp_keys (company_id text, key_id text PRIMARY KEY, value text)")
        conn.execute("CREATE TABLE messages (id bigserial PRIMARY KEY, body text)")
        conn.execute("INSERT INTO whatsapp_keys SELECT '1001', 'k' || g, md5(g::text) FROM generate_series(1, 300) g")
        conn.execute("INSERT INTO messages (body) SELECT md5(g::text) FROM generate_series(1, 500) g")
        conn.execute("INSERT INTO messages (body) VALUES (%s)", (MARKER,))
        conn.execute(f"ALTER TABLE whatsapp_keys OWNER TO {USER}")
        conn.execute(f"ALTER TABLE messages OWNER TO {USER}")
    return pg_tls


@pytest.fixture(scope="module")
def age_key(tmp_path_factory):
    path = tmp_path_factory.mktemp("age") / "lab.key"
    subprocess.run(["age-keygen", "-o", str(path)], check=True, capture_output=True)
    recipient = next(line.split(": ", 1)[1] for line in path.read_text().splitlines() if "public key" in line)
    return path, recipient.strip()


def args(server, dest, recipient, **overrides):
    base = server.module_args(dest_dir=str(dest), name_prefix="ai_admin", required_tables=TABLES,
                              age_recipients=[recipient], min_size=512)
    base.update(overrides)
    return base


def digests(dest: pathlib.Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(dest.iterdir()) if p.is_file()}


def kept(dest: pathlib.Path) -> list[str]:
    return sorted(p.name for p in dest.glob("*.dump.age"))


@pytest.fixture
def earlier(run_module, backup_db, age_key, tmp_path):
    """A backup directory holding one good backup already."""
    dest = tmp_path / "backups"
    run = run_module("pg_backup", args(backup_db, dest, age_key[1]))
    assert not run.failed, run.result
    time.sleep(1.1)  # names carry the second
    return dest


def assert_refused(run, dest, before, stage, *needles):
    assert run.failed, run.result
    assert run.result["stage"] == stage, run.result
    for needle in needles:
        assert needle in run.result["msg"], run.result["msg"]
    after = {k: v for k, v in digests(dest).items() if k != "last-failure.json"}
    assert after == before, "an earlier backup changed or a new file was kept"
    assert not list(dest.glob(".partial-*")), "the failed run left its work directory"
    failure = json.loads((dest / "last-failure.json").read_text())
    assert failure["stage"] == stage and failure["msg"] == run.result["msg"]


def test_backup_is_encrypted_verified_and_counted_in_its_snapshot(run_module, backup_db, age_key, tmp_path):
    dest = tmp_path / "backups"
    run = run_module("pg_backup", args(backup_db, dest, age_key[1]))
    assert not run.failed, run.result
    res = run.result
    final = pathlib.Path(res["path"])
    m = res["manifest"]
    assert json.loads(pathlib.Path(res["manifest_path"]).read_text()) == m
    with backup_db.connect() as conn:
        real = {f"public.{t}": conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]  # noqa: S608 (constants)
                for t in TABLES}
    assert m["row_counts"] == real and real["public.messages"] == 501
    assert m["verification"] == "toc" and m["toc_entries"] > 4 and m["server_version_num"] >= 150000
    # Kept privately, with a matching sidecar, and holding no plaintext.
    assert stat.S_IMODE(dest.stat().st_mode) == 0o700
    assert stat.S_IMODE(final.stat().st_mode) == 0o600
    data = final.read_bytes()
    assert hashlib.sha256(data).hexdigest() == m["sha256"]
    assert (dest / (final.name + ".sha256")).read_text() == f"{m['sha256']}  {final.name}\n"
    assert MARKER.encode() not in data and b"PGDMP" not in data
    assert not list(dest.glob(".partial-*")) and not list(dest.rglob("pgpass"))
    # The operator's private key opens it, and the archive restores the rows counted.
    plain = tmp_path / "plain.dump"
    subprocess.run(["age", "--decrypt", "-i", str(age_key[0]), "-o", str(plain), str(final)], check=True)
    assert hashlib.sha256(plain.read_bytes()).hexdigest() == m["plaintext_sha256"]
    sql = subprocess.run(["pg_restore", "--data-only", "--table=messages", "-f", "-", str(plain)],
                         check=True, capture_output=True, text=True).stdout
    copied = sql.split("FROM stdin;\n", 1)[1].split("\n\\.\n", 1)[0].splitlines()
    assert len(copied) == m["row_counts"]["public.messages"] and any(MARKER in row for row in copied)


def test_counts_match_the_archive_while_rows_are_written(run_module, backup_db, age_key, tmp_path):
    """Inserts run during the dump; the manifest's count is the archive's, not the table's later."""
    stop = threading.Event()

    def writer():
        with backup_db.connect() as conn:
            conn.autocommit = True
            while not stop.is_set():
                conn.execute("INSERT INTO messages (body) VALUES ('during')")

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        run = run_module("pg_backup", args(backup_db, tmp_path / "b", age_key[1]))
    finally:
        stop.set()
        thread.join()
    assert not run.failed, run.result
    plain = tmp_path / "plain.dump"
    subprocess.run(["age", "--decrypt", "-i", str(age_key[0]), "-o", str(plain), run.result["path"]], check=True)
    sql = subprocess.run(["pg_restore", "--data-only", "--table=messages", "-f", "-", str(plain)],
                         check=True, capture_output=True, text=True).stdout
    rows = sql.split("FROM stdin;\n", 1)[1].split("\n\\.\n", 1)[0].splitlines()
    assert len(rows) == run.result["manifest"]["row_counts"]["public.messages"]
    with backup_db.connect() as conn:
        assert conn.execute("SELECT count(*) FROM messages").fetchone()[0] > len(rows)
        conn.execute("DELETE FROM messages WHERE body = 'during'")
        conn.commit()


def test_wrong_ca_fails_before_anything_is_written(run_module, backup_db, age_key, earlier):
    before = digests(earlier)
    run = run_module("pg_backup", args(backup_db, earlier, age_key[1], ssl_rootcert=str(backup_db.pki.wrong_ca)))
    assert_refused(run, earlier, before, "connect", "cannot connect", "certificate")


def test_wrong_password_fails_before_anything_is_written(run_module, backup_db, age_key, earlier):
    before = digests(earlier)
    run = run_module("pg_backup", args(backup_db, earlier, age_key[1], password="not-the-password"))
    assert_refused(run, earlier, before, "connect", "password authentication failed")
    assert "not-the-password" not in run.stdout


def test_missing_required_table_is_refused(run_module, backup_db, age_key, earlier):
    before = digests(earlier)
    run = run_module("pg_backup", args(backup_db, earlier, age_key[1], required_tables=[*TABLES, "dialog_contexts"]))
    assert_refused(run, earlier, before, "tables", "public.dialog_contexts does not exist")


def test_an_archive_below_the_size_floor_is_not_kept(run_module, backup_db, age_key, earlier):
    before = digests(earlier)
    run = run_module("pg_backup", args(backup_db, earlier, age_key[1], min_size=50_000_000))
    assert_refused(run, earlier, before, "size", "below the floor of 50000000")


def test_a_client_older_than_the_server_is_refused(run_module, backup_db, age_key, earlier, tmp_path):
    # Local stand-in: a pg_dump that reports major 14 (this machine has no older client).
    fake = tmp_path / "pg_dump14"
    fake.write_text("#!/bin/sh\necho 'pg_dump (PostgreSQL) 14.11'\n")
    fake.chmod(0o755)
    before = digests(earlier)
    run = run_module("pg_backup", args(backup_db, earlier, age_key[1], pg_dump=str(fake)))
    assert_refused(run, earlier, before, "versions", "pg_dump 14 cannot dump a PostgreSQL 15 server")


def test_pg_dump_killed_midway_leaves_no_partial_file(run_module, backup_db, age_key, earlier):
    """A session holds an exclusive lock on messages: pg_dump blocks on it and is killed at the timeout."""
    before = digests(earlier)
    with backup_db.connect() as conn:
        conn.execute("LOCK TABLE messages IN ACCESS EXCLUSIVE MODE")
        run = run_module("pg_backup", args(backup_db, earlier, age_key[1], count_tables=[], dump_timeout=2))
        conn.rollback()
    assert_refused(run, earlier, before, "dump", "did not finish within 2 s")
    assert kept(earlier) == [n for n in before if n.endswith(".dump.age")]


@pytest.mark.skipif(not IS_ROOT, reason="mounting a tmpfs needs root")
def test_a_full_disk_keeps_the_earlier_backups(run_module, backup_db, age_key, earlier, tmp_path):
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", str(small)], check=True)
    try:
        shutil.copytree(earlier, small / "b", dirs_exist_ok=True)
        dest = small / "b"
        before = digests(dest)
        run = run_module("pg_backup", args(backup_db, dest, age_key[1]))
        assert run.failed and run.result["stage"] in ("dump", "encrypt", "keep"), run.result
        assert "no space left on device" in run.result["msg"].lower(), run.result
        # The failure record could not be written on the full disk either; nothing half-written stays.
        assert {k: v for k, v in digests(dest).items() if k != "last-failure.json"} == before
        assert not list(dest.glob(".partial-*")) and not list(dest.glob("*.tmp-*"))
    finally:
        subprocess.run(["umount", str(small)], check=True)


def test_check_mode_writes_nothing(run_module, backup_db, age_key, tmp_path):
    run = run_module("pg_backup", args(backup_db, tmp_path / "none", age_key[1]), check_mode=True)
    assert not run.failed and run.result["changed"] is True, run.result
    assert not (tmp_path / "none").exists()


def test_a_private_key_or_plain_text_is_refused_as_recipient(run_module, backup_db, age_key, tmp_path):
    secret = next(line for line in age_key[0].read_text().splitlines() if line.startswith("AGE-SECRET-KEY-"))
    run = run_module("pg_backup", args(backup_db, tmp_path / "b", secret))
    assert run.failed and run.result["stage"] == "params" and "age public keys" in run.result["msg"], run.result
    assert not (tmp_path / "b").exists()


def test_the_password_is_never_on_pg_dumps_command_line(run_module, backup_db, age_key, tmp_path):
    """While pg_dump runs (blocked on a lock), its argv and environment hold no password."""
    seen = {}

    def spy():
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not seen:
            for pid in filter(str.isdigit, os.listdir("/proc")):
                try:
                    argv = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                    if argv and argv[0].endswith(b"pg_dump") and any(a.startswith(b"--snapshot") for a in argv):
                        seen["argv"] = b" ".join(argv)
                        seen["env"] = pathlib.Path(f"/proc/{pid}/environ").read_bytes()
                except OSError:
                    continue
            time.sleep(0.02)

    thread = threading.Thread(target=spy)
    with backup_db.connect() as conn:
        conn.execute("LOCK TABLE messages IN ACCESS EXCLUSIVE MODE")
        thread.start()
        run = run_module("pg_backup", args(backup_db, tmp_path / "b", age_key[1], count_tables=[], dump_timeout=3))
        conn.rollback()
    thread.join()
    assert run.failed and run.result["stage"] == "dump"
    assert seen, "pg_dump was never seen running"
    password = backup_db.module_args()["password"].encode()
    assert password not in seen["argv"] and password not in seen["env"]
    assert b"PGPASSFILE=" in seen["env"] and b"PGPASSWORD" not in seen["env"]



def test_the_timers_script_run_keeps_a_backup_with_a_pgpass_file(backup_db, age_key, tmp_path):
    """The host's timer runs module_utils/pg_backup_job.py as a script: a JSON configuration
    without the password, and a 0600 pgpass file."""
    from tests.gates.gates_pg import ROOT, USER_PASSWORD

    def esc(value):
        return str(value).replace("\\", "\\\\").replace(":", "\\:")

    pgpass = tmp_path / "pgpass"
    pgpass.write_text(":".join(esc(v) for v in ("127.0.0.1", backup_db.port, DATABASE, USER, USER_PASSWORD)) + "\n")
    pgpass.chmod(0o600)
    config = {k: v for k, v in args(backup_db, tmp_path / "b", age_key[1]).items() if k != "password"}
    config["passfile"] = str(pgpass)
    cfg = tmp_path / "backup.json"
    cfg.write_text(json.dumps(config))
    proc = subprocess.run([sys.executable, str(ROOT / "plugins/module_utils/pg_backup_job.py"), str(cfg)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    res = json.loads(proc.stdout)
    assert res["failed"] is False and pathlib.Path(res["manifest_path"]).is_file()
    assert res["manifest"]["row_counts"]["public.messages"] >= 501
    # A wrong pgpass: exit 1, the failure recorded, the kept backup untouched.
    before = digests(tmp_path / "b")
    pgpass.write_text("*:*:*:*:wrong\n")
    proc = subprocess.run([sys.executable, str(ROOT / "plugins/module_utils/pg_backup_job.py"), str(cfg)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 1 and json.loads(proc.stdout)["stage"] == "connect", proc.stdout
    assert json.loads((tmp_path / "b" / "last-failure.json").read_text())["stage"] == "connect"
    assert {k: v for k, v in digests(tmp_path / "b").items() if k != "last-failure.json"} == before


def test_partitioned_table_is_required_through_its_partitions(run_module, backup_db, age_key, tmp_path):
    """The TOC lists TABLE DATA for a partitioned table's leaf partitions only (like the app's
    messages table): requiring the parent checks every leaf, and the count covers all of them."""
    with backup_db.admin(DATABASE) as conn:
        conn.execute("DROP TABLE IF EXISTS events")
        conn.execute("CREATE TABLE events (id int, at date) PARTITION BY RANGE (at)")
        conn.execute("CREATE TABLE events_2026 PARTITION OF events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01')")
        conn.execute("CREATE TABLE events_default PARTITION OF events DEFAULT")
        conn.execute("INSERT INTO events SELECT g, DATE '2026-06-01' + g FROM generate_series(1, 400) g")
        conn.execute(f"ALTER TABLE events OWNER TO {USER}")
        conn.execute(f"ALTER TABLE events_2026 OWNER TO {USER}")
        conn.execute(f"ALTER TABLE events_default OWNER TO {USER}")
    try:
        dest = tmp_path / "backups"
        run = run_module("pg_backup", args(backup_db, dest, age_key[1], required_tables=[*TABLES, "events"]))
        assert not run.failed, run.result
        assert run.result["manifest"]["row_counts"]["public.events"] == 400
        listing = subprocess.run(["age", "--decrypt", "-i", str(age_key[0]), run.result["path"]], check=True,
                                 capture_output=True).stdout
        toc = subprocess.run(["pg_restore", "--list"], input=listing, check=True, capture_output=True).stdout.decode()
        assert "TABLE DATA public events_2026" in toc and "TABLE DATA public events " not in toc
    finally:
        with backup_db.admin(DATABASE) as conn:
            conn.execute("DROP TABLE IF EXISTS events")


def test_keep_local_keeps_the_newest_sets_only_after_a_kept_backup(run_module, backup_db, age_key, earlier):
    for _ in range(2):
        run = run_module("pg_backup", args(backup_db, earlier, age_key[1], keep_local=2))
        assert not run.failed, run.result
        time.sleep(1.1)
    newest = pathlib.Path(run.result["path"]).name
    assert len(kept(earlier)) == 2 and newest in kept(earlier)
    assert len(list(earlier.glob("*.manifest.json"))) == 2 and len(list(earlier.glob("*.sha256"))) == 2
    # A failed run prunes nothing, whatever keep_local says.
    before = digests(earlier)
    run = run_module("pg_backup", args(backup_db, earlier, age_key[1], keep_local=1, required_tables=["nosuch"]))
    assert run.failed
    assert {k: v for k, v in digests(earlier).items() if k != "last-failure.json"} == before


def test_script_checks_its_configuration_and_records_a_service_failure(tmp_path, age_key):
    """`--check-config` is the role's template validate; `--record-service-failure` is the
    OnFailure unit: it records a killed run, but never hides the job's own record of the run."""
    from tests.gates.gates_pg import ROOT

    job = [sys.executable, str(ROOT / "plugins/module_utils/pg_backup_job.py")]
    dest = tmp_path / "b"
    dest.mkdir(mode=0o700)
    (tmp_path / "ca.crt").write_text("not read by --check-config\n")
    cfg = tmp_path / "backup.json"
    cfg.write_text(json.dumps({"_managed": "comment", "host": "db.example.invalid", "dest_dir": str(dest),
                               "ssl_rootcert": str(tmp_path / "ca.crt"),
                               "age_recipients": [age_key[1]], "keep_local": 3}))
    check = subprocess.run([*job, "--check-config", str(cfg)], capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    for bad, needle in (({"age_recipients": ["AGE-SECRET-KEY-1X"]}, "age public keys"),
                        ({"keep_lcoal": 3}, "unknown keys keep_lcoal"), ({"keep_local": 0}, "keep_local")):
        wrong = tmp_path / "wrong.json"
        wrong.write_text(json.dumps(dict(json.loads(cfg.read_text()), **bad)))
        proc = subprocess.run([*job, "--check-config", str(wrong)], capture_output=True, text=True, check=False)
        assert proc.returncode == 2 and needle in proc.stdout, proc.stdout
    env = dict(os.environ, MONITOR_INVOCATION_ID="abc", MONITOR_SERVICE_RESULT="timeout", MONITOR_UNIT="x.service")
    subprocess.run([*job, "--record-service-failure", str(cfg)], env=env, check=True)
    record = json.loads((dest / "last-failure.json").read_text())
    assert record["stage"] == "service" and "result timeout" in record["msg"] and record["invocation"] == "abc"
    # The job recorded this invocation's failure itself: the failure unit keeps that record.
    (dest / "last-failure.json").write_text(json.dumps({"stage": "dump", "msg": "own", "invocation": "def"}))
    subprocess.run([*job, "--record-service-failure", str(cfg)], env=dict(env, MONITOR_INVOCATION_ID="def"),
                   check=True)
    assert json.loads((dest / "last-failure.json").read_text())["msg"] == "own"
