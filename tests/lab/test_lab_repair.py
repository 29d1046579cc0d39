"""The lab repairs itself: a lab half-created by an interrupted run is completed by `up`.

Runs before the tests that provision lab hosts (it recreates lab-old).
"""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.helpers import ROOT, podman

pytestmark = pytest.mark.lab


def cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    return subprocess.run([str(ROOT / ".venv/bin/python"), "-m", "aiadmin_ops.cli", *args],
                          capture_output=True, text=True, env=env, timeout=600, check=False)


def test_up_repairs_a_half_created_lab(lab):
    """Stop one container and remove another: the next `up` puts both back, recreating nothing else."""
    before = podman("inspect", "-f", "{{.Id}}", "lab-db").stdout.strip()
    podman("stop", "-t", "2", "lab-egress")
    podman("rm", "-f", "-t", "2", "lab-old")
    proc = cli("lab", "up")
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "created lab-old" in proc.stdout
    assert "started lab-egress" in proc.stdout
    assert podman("inspect", "-f", "{{.Id}}", "lab-db").stdout.strip() == before
    assert "changed=0" in proc.stdout.split("PLAY RECAP")[-1]
    for name in ("lab-old", "lab-egress"):
        assert podman("exec", name, "systemctl", "is-system-running", check=False).stdout.strip() == "running"
