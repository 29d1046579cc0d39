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
    assert fetch_from_lab_new().returncode == 0  # lab-new now holds a neighbour entry for lab-egress
    macs = egress_macs()
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
    # The restarted host keeps its MAC addresses: lab-new's first connection to it is answered at
    # once (with a new MAC it waited about 8 s for the stale neighbour entry to fail).
    assert egress_macs() == macs
    fetched = fetch_from_lab_new()
    assert fetched.returncode == 0, fetched.stderr


def egress_macs() -> str:
    return podman("inspect", "-f", "{{range $k, $v := .NetworkSettings.Networks}}{{$k}}={{$v.MacAddress}} {{end}}",
                  "lab-egress").stdout.strip()


def fetch_from_lab_new() -> subprocess.CompletedProcess:
    """lab-new downloads from lab-egress's stand-in server, allowed 2 s to connect."""
    return podman("exec", "lab-new", "curl", "-sS", "-o", "/dev/null", "--connect-timeout", "2", "--max-time", "5",
                  "http://10.213.10.40:8098/node/", check=False)
