"""Fixtures of the unit tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from aiadmin_ops import state


@pytest.fixture
def state_root(tmp_path, monkeypatch) -> Path:
    """The CLI's state directory (artifacts, reports, ledgers) in a tmp dir, never in /var/lib."""
    root = tmp_path / "aiadmin-state"
    monkeypatch.setenv(state.STATE_ENV, str(root))
    return root
