"""Disaster recovery of a lost database on the lab, through the operator CLI (aiadmin-ops dr-restore-db).

The story: lab-new serves alone on lab-db. A few webhook writes are acknowledged, then the
operator's backup takes a verified dump (`aiadmin-ops backup`), then more writes are acknowledged:
those the dump lacks. `aiadmin-ops lab db-replacement` makes the new "managed instance"
(lab-db-new: its own address and TLS CA, an empty database); the inventory is pointed at it (the
`-e` pairs the lab command prints, as an operator edits the inventory). Then:

- while lab-db still answers, the restore is refused with nothing changed (it is not lost);
- lab-db is destroyed (`podman rm -f`);
- `dr-restore-db --check` prints the plan (the dump, its age and checksum, the lost database not
  answering, the new instance empty) and changes nothing; a corrupt dump is refused, naming it;
- `dr-restore-db --yes` restores: row counts equal to the manifest, the app healthy on the new
  instance with the session lock held from lab-new, the acknowledged writes the dump lacks counted
  exactly (those acknowledged before the dump are found present), the RPO and RTO reported;
- a second run changes nothing.

lab-db stays destroyed: `make test` runs this file last; `aiadmin-ops lab up` recreates lab-db and
`scripts/demo --prepare` puts the story back.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import ROOT, podman
from tests.lab import test_dr_lab as dr
from tests.lab.test_maintenance_lab import ensure_serving_on_lab_db
from tests.writes import WebhookWriter

pytestmark = [pytest.mark.lab, pytest.mark.dr_db]

STATE = Path(os.environ.get("AIADMIN_DR_DB_TEST_STATE_DIR", "/var/tmp/aiadmin-ops-dr-db-tests"))
STORE = STATE / "backups/ai_admin"
REPLACEMENT = ROOT / "lab/state/replacement"
ENV = dict(dr.ENV, AIADMIN_STATE_DIR=str(STATE))


def cli(*args: str) -> tuple[object, dict]:
    """aiadmin-ops with this story's state directory."""
    return dr.cli(*args, env=ENV)


def pointed() -> list[str]:
    """The -e pairs that point the inventory at the new instance (written by `lab db-replacement`)."""
    values = json.loads((REPLACEMENT / "inventory.json").read_text())
    return [arg for key, value in sorted(values.items()) for arg in ("-e", f"{key}={value}")]


def new_instance(vault: dict):
    return dr.connect(vault, "10.213.10.11", REPLACEMENT / "ca.crt")


def write(n: int) -> list[str]:
    """n writes the app acknowledged (each after its COMMIT)."""
    with WebhookWriter([dr.NEW_URL], interval=0.2) as writer:
        deadline = time.time() + 60
        while len(writer.acked()) < n and time.time() < deadline:
            time.sleep(0.2)
    acked = writer.acked()
    assert len(acked) >= n, writer.outcomes()
    return acked


@pytest.fixture(scope="module")
def story(lab, vault):
    shutil.rmtree(STATE, ignore_errors=True)
    STATE.mkdir(parents=True, mode=0o700)
    # lab-new serving alone on lab-db with the lab's CA (provisioned, reset and deployed when not: a
    # run that failed after installing the new CA leaves that CA there).
    ensure_serving_on_lab_db()
    before = write(3)
    proc, _ = cli("backup")
    assert proc.returncode == 0, proc.stdout[-3000:]
    # The newest set (the host keeps earlier ones of its own; the off-host copy takes them too).
    manifest = json.loads(sorted(STORE.glob("*.manifest.json"))[-1].read_text())
    after = write(5)
    proc = subprocess.run([str(dr.BIN / "aiadmin-ops"), "lab", "db-replacement"], capture_output=True, text=True,
                             env=ENV, cwd=ROOT, timeout=900, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {"manifest": manifest, "before": before, "after": after, "env": dr.on_host("sha256sum", dr.ENV_FILE).stdout}


def test_refused_while_the_database_answers(story):
    proc, _ = cli("dr-restore-db", "--yes", *pointed())
    out = proc.stdout
    assert proc.returncode == 1, out[-3000:]
    assert "REFUSED, nothing changed" in out and "10.213.20.10, answers" in out
    assert dr.health()["status"] == "healthy"
    assert dr.on_host("sha256sum", dr.ENV_FILE).stdout == story["env"]


@pytest.fixture(scope="module")
def lost(story):
    podman("rm", "-f", "-t", "0", "lab-db", timeout=300)
    return story


def test_plan_prints_what_and_changes_nothing(lost, vault):
    proc, _ = cli("dr-restore-db", "--check", *pointed())
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:]
    manifest = lost["manifest"]
    assert manifest["sha256"] in out and STORE.name in out
    assert "10.213.20.10 does not answer" in out
    assert "state_before" not in out and "New instance holds: empty" in out
    assert dr.on_host("sha256sum", dr.ENV_FILE).stdout == lost["env"]
    with new_instance(vault) as conn:
        assert conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()[0] == 0


def test_corrupt_dump_refused_naming_it(lost):
    manifest = lost["manifest"]
    archive = STORE / manifest["file"]
    original = archive.read_bytes()
    flipped = bytearray(original)
    flipped[len(flipped) // 2] ^= 0x01
    archive.write_bytes(bytes(flipped))
    try:
        proc, _ = cli("dr-restore-db", "--yes", *pointed())
    finally:
        archive.write_bytes(original)
    out = proc.stdout
    assert proc.returncode == 1, out[-3000:]
    assert "REFUSED, nothing changed" in out and archive.name.split(".")[0] in out
    assert dr.on_host("sha256sum", dr.ENV_FILE).stdout == lost["env"]


def test_restore_serves_from_the_new_instance_and_counts_the_lost_writes(lost, vault):
    proc, report = cli("dr-restore-db", "--yes", *pointed())
    assert proc.returncode == 0, proc.stdout[-5000:]
    stats = report["custom_stats"]["dr"]
    manifest = lost["manifest"]
    assert stats["status"] == "succeeded" and stats["new_db"] == "10.213.20.11" and stats["lost_db"] == "10.213.20.10"
    assert {k.split(".")[-1]: v for k, v in stats["row_counts"].items()} == {
        k.split(".")[-1]: v for k, v in manifest["row_counts"].items()}
    rpo = stats["rpo"]
    # Exactly the writes acknowledged after the dump are lost; those before it were restored.
    assert int(rpo["acked_writes_lost"]) == len(lost["after"]), rpo
    assert int(rpo["acked_since_dump"]) >= len(lost["after"]) + len(lost["before"]), rpo
    assert float(rpo["lost_window_s"]) > 0 and int(rpo["dump_age_s"]) >= 0
    assert {"plan", "stop", "ca", "restore", "rpo", "repoint", "start", "smoke", "verdict"} <= set(stats["phases"])
    assert 0 < float(stats["rto_s"]) < 900
    assert dr.health()["status"] == "healthy"
    env = dr.on_host("grep", "^POSTGRES_HOST=", dr.ENV_FILE).stdout
    assert "10.213.20.11" in env
    with new_instance(vault) as conn:
        ids = [r[0] for r in conn.execute("SELECT body FROM messages WHERE body = ANY(%s)",
                                          (lost["before"] + lost["after"],)).fetchall()]
        holders = sorted(r[0] for r in conn.execute(dr.HOLDERS_SQL, (dr.LOCK_CLASS,)).fetchall())
    assert sorted(ids) == sorted(lost["before"]), "the dump holds the earlier writes and none of the later ones"
    assert holders == [dr.NEW]


def test_second_run_changes_nothing(lost):
    proc, _ = cli("dr-restore-db", "--yes", *pointed())
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:]
    assert "NOTHING TO DO" in out
