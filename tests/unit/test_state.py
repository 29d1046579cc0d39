"""The CLI's state directory outside the checkout, and the inventory identity that keys the ledgers."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import pytest

from aiadmin_ops import state
from tests.helpers import ROOT, file_mode


def test_default_is_outside_the_checkout(monkeypatch):
    assert state.DEFAULT_STATE_DIR == "/var/lib/aiadmin-ops"
    seen = []
    monkeypatch.delenv(state.STATE_ENV, raising=False)
    monkeypatch.setattr(state, "private_dir", lambda p: seen.append(p) or p)  # never touch /var/lib here
    assert state.state_dir() == Path("/var/lib/aiadmin-ops")
    assert seen == [Path("/var/lib/aiadmin-ops")] + [Path("/var/lib/aiadmin-ops") / d for d in state.SUBDIRS]


def test_created_0700_with_its_subdirectories(state_root):
    old_umask = os.umask(0)  # even with a permissive umask
    try:
        assert state.state_dir() == state_root
    finally:
        os.umask(old_umask)
    assert file_mode(state_root) == 0o700
    for name in ("ledger", "reports", "artifacts", "backups"):
        assert (state_root / name).is_dir()
        assert file_mode(state_root / name) == 0o700, name
    assert state.ledger_dir() == state_root / "ledger"
    assert state.reports_dir() == state_root / "reports"
    assert state.artifacts_dir() == state_root / "artifacts"
    assert state.backups_dir() == state_root / "backups"
    assert not str(state.state_dir()).startswith(str(ROOT))


def test_a_looser_directory_is_tightened(state_root):
    state_root.mkdir(mode=0o755)
    state_root.chmod(0o755)
    (state_root / "ledger").mkdir()
    (state_root / "ledger").chmod(0o777)
    (state_root / "reports").mkdir()
    (state_root / "reports").chmod(0o750)
    state.state_dir()
    assert file_mode(state_root) == 0o700
    assert file_mode(state_root / "ledger") == 0o700
    assert file_mode(state_root / "reports") == 0o700


def test_a_file_in_the_way_is_refused(state_root):
    state_root.mkdir()
    (state_root / "ledger").write_text("not a directory\n")
    with pytest.raises(state.StateError, match="is not a directory"):
        state.state_dir()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to hand a directory to another user")
def test_a_directory_of_another_user_is_refused(state_root):
    state_root.mkdir(mode=0o700)
    os.chown(state_root, 65534, 65534)
    with pytest.raises(state.StateError, match="belongs to uid 65534"):
        state.state_dir()


def test_write_private_is_0600_even_over_a_looser_file(tmp_path):
    target = tmp_path / "r.json"
    target.write_text("old\n")
    target.chmod(0o644)
    state.write_private(target, "{}\n")
    assert target.read_text() == "{}\n"
    assert file_mode(target) == 0o600
    fresh = state.write_private(tmp_path / "n.json", "x")
    assert file_mode(fresh) == 0o600


def test_tighten_a_ledger_the_playbook_left_open(tmp_path):
    ledger = tmp_path / "migrate-x.json"
    ledger.write_text("{}")
    ledger.chmod(0o644)
    state.tighten(ledger)
    assert file_mode(ledger) == 0o600
    state.tighten(tmp_path / "missing.json")  # nothing to do, no error


def test_identity_is_the_inventory_not_its_spelling(monkeypatch, tmp_path):
    lab = os.path.realpath(ROOT / "inventories/lab")
    expected = f"lab-{hashlib.sha256(lab.encode()).hexdigest()[:10]}"
    monkeypatch.chdir(ROOT)
    spellings = ["lab", "./inventories/lab/", "inventories/lab", "inventories/lab/hosts.yml",
                 "./inventories/lab/hosts.yml", str(ROOT / "inventories/lab/hosts.yml"), str(ROOT / "inventories/lab")]
    assert {state.identity(s) for s in spellings} == {expected}
    # From another directory, a relative path is still found in the checkout; a symlink is its target.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my-lab").symlink_to(ROOT / "inventories/lab")
    assert state.identity("inventories/lab/hosts.yml") == expected
    assert state.identity("my-lab") == expected
    assert state.identity(str(tmp_path / "my-lab/hosts.yml")) == expected


def test_identities_of_different_inventories_differ(tmp_path):
    prod = state.identity("production")
    assert re.fullmatch(r"production-[0-9a-f]{10}", prod)
    assert prod != state.identity("lab")
    one, two = tmp_path / "one", tmp_path / "two"
    for d in (one, two):
        d.mkdir()
        (d / "inventory.yml").write_text("all: {}\n")
    ids = {state.identity(str(one / "inventory.yml")), state.identity(str(two / "inventory.yml")),
           state.identity(str(one))}
    assert len(ids) == 3  # a file that is not the directory's hosts.* is its own inventory
    assert state.identity(str(one / "inventory.yml")).startswith("inventory-")
    assert state.identity(str(one)).startswith("one-")


def test_ledger_path_is_keyed_by_identity(state_root, monkeypatch):
    monkeypatch.chdir(ROOT)
    path = state.ledger_path("migrate", "./inventories/lab/")
    assert path == state_root / "ledger" / f"migrate-{state.identity('lab')}.json"
    assert state.ledger_path("migrate", "lab") == path
    assert state.ledger_path("rollback", "lab").name.startswith("rollback-lab-")
