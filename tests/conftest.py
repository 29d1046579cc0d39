"""Shared fixtures."""

from __future__ import annotations

import pytest

from tests.helpers import lab_running, lab_vault


@pytest.fixture(scope="session")
def vault() -> dict:
    return lab_vault()


@pytest.fixture(scope="session")
def lab() -> None:
    if not lab_running():
        pytest.skip("the lab is not up (run `make lab-up` as root)")
