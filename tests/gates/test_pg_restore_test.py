"""pg_restore_test on real backups: pg_backup dumps a database of the loopback TLS PostgreSQL 15
(tests/gates/conftest.py), real age keys encrypt it, and the module restores it into a real
scratch cluster. Every fault asserts its stage, the manifest's mark, and that nothing is left:
no work directory, no process naming it."""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import shutil
import stat
import subprocess
import tempfile
import threading
import time

import pytest

from tests.gates.gates_pg import IS_ROOT, PG_BIN, USER

SOURCE_DB = "rt_src"
COUNTS = {"public.items": 1200, "public.events": 2500, "public.empty_t": 0}

pytestmark = pytest.mark.skipif(shutil.which("age") is None or shutil.which("age-keygen") is None,
                                reason="needs age (scripts/install-deps installs it)")


@pytest.fixture(scope="module")
def source_db(pg_tls):
    with pg_tls.admin() as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {SOURCE_DB}")
        conn.execute(f"CREATE DATABASE {SOURCE_DB} OWNER {USER}")
    with pg_tls.connect(dbname=SOURCE_DB) as conn:
        conn.execute("CREATE TABLE items (id bigserial PRIMARY KEY, name text NOT NULL UNIQUE, attrs jsonb)")
        conn.execute("CREATE TABLE events (id int PRIMARY KEY, item_id bigint REFERENCES items, at timestamptz)")
        conn.execute("CREATE TABLE empty_t (v text CHECK (v <> ''))")
        conn.execute("CREATE VIEW busy AS SELECT item_id, count(*) FROM events GROUP BY item_id")
        conn.execute("INSERT INTO items (name, attrs) SELECT 'item' || g, jsonb_build_object('g', g) "
                     "FROM generate_series(1, 1200) g")
        conn.execute("INSERT INTO events SELECT g, 1 + g % 1200, now() FROM generate_series(1, 2500) g")
    return pg_tls


def make_key(path: pathlib.Path) -> tuple[pathlib.Path, str, str]:
    subprocess.run(["age-keygen", "-o", str(path)], check=True, capture_output=True)
    lines = path.read_text().splitlines()
    recipient = next(line.split(": ", 1)[1] for line in lines if "public key" in line).strip()
    secret = next(line for line in lines if line.startswith("AGE-SECRET-KEY-1"))
    return path, recipient, secret


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    base = tmp_path_factory.mktemp("age")
    return make_key(base / "good.key"), make_key(base / "other.key")


@pytest.fixture
def manifest(run_module, source_db, keys, tmp_path) -> pathlib.Path:
    """A fresh, good backup set; returns its manifest."""
    run = run_module("pg_backup", source_db.module_args(
        database=SOURCE_DB, dest_dir=str(tmp_path / "b"), name_prefix="rt",
        required_tables=list(COUNTS), age_recipients=[keys[0][1]], min_size=512))
    assert not run.failed, run.result
    assert run.result["manifest"]["row_counts"] == COUNTS
    return pathlib.Path(run.result["manifest_path"])


def public_dir() -> pathlib.Path:
    """A short directory under /tmp the postgres user may traverse (pytest's tmp_path is root's 0700)."""
    path = pathlib.Path(tempfile.mkdtemp(prefix="rt-", dir="/tmp"))
    path.chmod(0o755)
    return path


@pytest.fixture
def work():
    path = public_dir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


def processes_naming(text: str) -> list[str]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if text.encode() in cmdline:
            found.append(cmdline.replace(b"\0", b" ").decode(errors="replace"))
    return found


def restore(run_module, manifest, work, key, check_mode=False, **overrides):
    args = {"manifest": str(manifest), "identity_file": str(key[0]), "work_dir": str(work)}
    args.update(overrides)
    args = {k: v for k, v in args.items() if v is not None}  # identity_file=None: not given
    run = run_module("pg_restore_test", args, check_mode=check_mode, timeout=300)
    assert list(work.iterdir()) == [], "the work directory was left behind"
    assert processes_naming(str(work)) == [], "a process of the scratch cluster is still running"
    return run


def read(manifest: pathlib.Path) -> dict:
    return json.loads(manifest.read_text())


def edit(manifest: pathlib.Path, **changes) -> None:
    manifest.write_text(json.dumps(dict(read(manifest), **changes)))


def dump_of(manifest: pathlib.Path) -> pathlib.Path:
    return manifest.parent / read(manifest)["file"]


def flip_a_byte(path: pathlib.Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def assert_marked_failed(manifest, run, stage, *needles):
    assert run.failed and run.result["ok"] is False, run.result
    assert run.result["stage"] == stage, run.result
    for needle in needles:
        assert needle in run.result["msg"], run.result["msg"]
    m = read(manifest)
    assert m["verification"] == "failed"
    assert m["failure"]["stage"] == stage and m["failure"]["msg"] == run.result["msg"]
    assert m["restore_test"]["ok"] is False and m["restore_test"]["stage"] == stage
    assert run.result["changed"] is True


def test_a_good_backup_restores_with_the_manifests_counts(run_module, source_db, keys, manifest, work):
    before = read(manifest)
    run = restore(run_module, manifest, work, keys[0])
    assert not run.failed, run.result
    res = run.result
    assert res["ok"] is True and res["changed"] is True and "stage" not in res
    assert res["row_counts"] == COUNTS == before["row_counts"]
    with source_db.connect(dbname=SOURCE_DB) as conn:
        assert conn.execute("SELECT count(*) FROM items").fetchone()[0] == COUNTS["public.items"]
    assert "PostgreSQL) 15." in res["server_version"]
    assert set(res["timings_s"]) >= {"checksum", "decrypt", "server", "cluster", "restore", "counts", "cleanup"}
    assert res["duration_s"] >= sum(v for k, v in res["timings_s"].items() if k != "cleanup")
    m = read(manifest)
    assert m["verification"] == "restored" and "failure" not in m
    rt = m["restore_test"]
    assert rt["ok"] is True and rt["server_major"] == 15 and rt["row_counts"] == COUNTS
    assert rt["duration_s"] == res["duration_s"] and rt["time"].endswith("+00:00")
    assert {k: v for k, v in m.items() if k not in ("verification", "restore_test")} == \
           {k: v for k, v in before.items() if k != "verification"}
    assert stat.S_IMODE(manifest.stat().st_mode) == 0o600
    assert not list(manifest.parent.glob("*.tmp-*"))
    print("restore timings_s", res["timings_s"], "duration_s", res["duration_s"])


def test_a_flipped_bit_fails_the_checksum_before_decrypting(run_module, keys, manifest, work):
    flip_a_byte(dump_of(manifest))
    run = restore(run_module, manifest, work, keys[0])
    assert_marked_failed(manifest, run, "checksum", "the manifest says", "corrupted")
    assert "decrypt" not in run.result["timings_s"]


def test_a_flipped_bit_behind_a_matching_checksum_fails_to_decrypt(run_module, keys, manifest, work):
    dump = dump_of(manifest)
    flip_a_byte(dump)
    edit(manifest, sha256=hashlib.sha256(dump.read_bytes()).hexdigest())
    run = restore(run_module, manifest, work, keys[0])
    assert_marked_failed(manifest, run, "decrypt", "age failed")
    assert "cluster" not in run.result["timings_s"]


def test_a_wrong_identity_fails_to_decrypt(run_module, keys, manifest, work):
    run = restore(run_module, manifest, work, keys[0], identity_file=None, identity=keys[1][2])
    assert_marked_failed(manifest, run, "decrypt", "no identity matched")
    assert keys[1][2] not in run.stdout


def test_a_differing_row_count_fails_naming_the_table(run_module, keys, manifest, work):
    edit(manifest, row_counts=dict(COUNTS, **{"public.events": 2499}))
    run = restore(run_module, manifest, work, keys[0])
    assert_marked_failed(manifest, run, "counts", "public.events: 2500 restored, the manifest says 2499")
    assert "public.items" not in run.result["msg"]
    assert read(manifest)["restore_test"]["row_counts"] == COUNTS


def test_a_required_table_missing_from_the_restore_fails(run_module, keys, manifest, work):
    run = restore(run_module, manifest, work, keys[0], required_tables=["items", "public.nope"])
    assert_marked_failed(manifest, run, "counts", "no table public.nope")


def test_a_dump_newer_than_every_installed_server_fails(run_module, keys, manifest, work, tmp_path):
    edit(manifest, server_version_num=990000)
    run = restore(run_module, manifest, work, keys[0])
    assert_marked_failed(manifest, run, "server", "PostgreSQL 99", "major 99 or newer", f"15 ({PG_BIN})")
    # No server at all in the directories given.
    empty = tmp_path / "nothing"
    empty.mkdir()
    run = restore(run_module, manifest, work, keys[0], pg_bin_dirs=[str(empty)])
    assert_marked_failed(manifest, run, "server", f"installed: none (in {empty})")


def test_check_mode_checks_the_checksum_and_writes_nothing(run_module, keys, manifest, work):
    before = manifest.read_bytes()
    run = restore(run_module, manifest, work, keys[0], check_mode=True)
    assert not run.failed and run.result["ok"] is True, run.result
    assert set(run.result["timings_s"]) == {"manifest", "checksum", "cleanup"}
    flip_a_byte(dump_of(manifest))
    run = restore(run_module, manifest, work, keys[0], check_mode=True)
    assert run.failed and run.result["stage"] == "checksum" and run.result["changed"] is False
    assert manifest.read_bytes() == before


def test_mark_false_leaves_the_manifest_alone(run_module, keys, manifest, work):
    before = manifest.read_bytes()
    run = restore(run_module, manifest, work, keys[0], mark=False)
    assert not run.failed and run.result["changed"] is False, run.result
    assert manifest.read_bytes() == before


@pytest.mark.skipif(not IS_ROOT, reason="the cluster runs as the postgres user only under root")
def test_the_identity_is_never_on_a_command_line_nor_left_in_a_file(run_module, keys, manifest, work, tmp_path):
    secret = keys[0][2].encode()
    slow_age = tmp_path / "age"  # the real age, a moment later, so that it is seen running
    slow_age.write_text(f"#!/bin/sh\nsleep 0.5\nexec {shutil.which('age')} \"$@\"\n")
    slow_age.chmod(0o755)
    seen = {"argv": [], "leaks": [], "identity": []}
    done = threading.Event()

    def spy():
        while not done.is_set():
            for pid in filter(str.isdigit, os.listdir("/proc")):
                try:
                    argv = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes()
                    environ = pathlib.Path(f"/proc/{pid}/environ").read_bytes()
                except OSError:
                    continue
                if secret in argv or secret in environ:
                    seen["leaks"].append(argv)
                if b"--decrypt" in argv:
                    seen["argv"].append(argv)
            for path in work.glob("*/identity"):
                try:
                    st, parent = path.stat(), path.parent.stat()
                except OSError:
                    continue
                seen["identity"].append((stat.S_IMODE(st.st_mode), st.st_uid, stat.S_IMODE(parent.st_mode),
                                         parent.st_uid))
            time.sleep(0.01)

    thread = threading.Thread(target=spy)
    thread.start()
    try:
        run = restore(run_module, manifest, work, keys[0], identity_file=None, identity=keys[0][2],
                      age=str(slow_age))
    finally:
        done.set()
        thread.join()
    assert not run.failed, run.result
    assert seen["argv"], "age was never seen running"
    assert seen["leaks"] == []
    assert seen["identity"] and set(seen["identity"]) == {(0o600, 0, 0o700, 0)}
    assert secret not in run.stdout.encode()
    for path in manifest.parent.rglob("*"):
        assert secret not in path.read_bytes(), path


@pytest.mark.skipif(not IS_ROOT, reason="the cluster runs as the postgres user only under root")
def test_a_restore_killed_at_the_timeout_stops_the_cluster_and_cleans_up(run_module, keys, manifest, work):
    """pg_restore hangs (a stand-in that sleeps): at the timeout it is killed, the cluster stopped,
    the work directory removed, and no process naming it survives (runuser leaves its child)."""
    bin_dir = public_dir()
    try:
        for tool in ("initdb", "pg_ctl", "psql", "postgres", "pg_config"):
            (bin_dir / tool).symlink_to(PG_BIN / tool)
        hang = bin_dir / "pg_restore"
        hang.write_text("#!/bin/sh\nexec python3 -c 'import time; time.sleep(120)' \"$@\"\n")
        hang.chmod(0o755)
        run = restore(run_module, manifest, work, keys[0], pg_bin_dirs=[str(bin_dir)], timeout=20)
    finally:
        shutil.rmtree(bin_dir)
    assert_marked_failed(manifest, run, "restore", "did not finish within")
    assert run.seconds < 45 and "cluster" in run.result["timings_s"]
