"""The operator CLI's runner: live progress, verdicts, reports, and no secret in artifacts."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from aiadmin_ops import report
from aiadmin_ops.downtime import AnyProbe
from aiadmin_ops.runner import run_playbook, split_phase
from tests.helpers import ROOT

PLAYBOOK = "tests/fixtures/playbooks/phases.yml"
INVENTORY = "tests/fixtures/inventory.yml"
CANARY = "CANARY-3f9b2c-not-a-real-secret"


@pytest.fixture(scope="module")
def vaulted_vars(tmp_path_factory) -> tuple[Path, Path]:
    """An encrypted vars file with a canary secret and its (test-only) password file."""
    tmp = tmp_path_factory.mktemp("vault")
    pw = tmp / "pw.txt"
    pw.write_text("test-only-password\n")
    pw.chmod(0o600)
    plain = tmp / "canary.yml"
    plain.write_text(f"vault_fixture_canary: {CANARY}\n")
    subprocess.run([str(ROOT / ".venv/bin/ansible-vault"), "encrypt", "--vault-id", f"t@{pw}", str(plain)],
                   check=True, capture_output=True)
    return plain, pw


def run(extravars: dict, vaulted=None) -> tuple[object, str]:
    out = io.StringIO()
    vault_ids = None
    if vaulted:
        extravars = {**extravars, "fixture_vars_file": str(vaulted[0])}
        vault_ids = [f"t@{vaulted[1]}"]
    result = run_playbook(PLAYBOOK, INVENTORY, extravars=extravars, vault_ids=vault_ids, out=out, timeout=120)
    return result, out.getvalue()


def test_split_phase():
    assert split_phase("cutover | Stop the old host") == ("cutover", "Stop the old host")
    assert split_phase("app : deploy | Switch current") == ("deploy", "Switch current")
    assert split_phase("Gathering Facts") == ("main", "Gathering Facts")
    assert split_phase("Cutover | Stop the old host") == ("cutover", "Stop the old host")


def test_success_shows_phases_and_retries():
    result, out = run({})
    assert result.verdict == "succeeded" and result.rc == 0
    assert [p.name for p in result.phases] == ["alpha", "beta", "gamma"]
    assert "== phase beta" in out
    assert "waiting 1/6" in out and "waiting 2/6" in out  # attempt n of (retries + 1)


def test_rescued_run_is_a_failure_even_with_exit_zero():
    result, _ = run({"fixture_fail": True, "fixture_rescue": True})
    assert result.rc == 0
    assert result.rescued == 1
    assert result.verdict == "failed (rolled back)"
    assert not result.ok


def test_failed_after_rescue_reports_phase_and_task():
    result, out = run({"fixture_fail": True})
    assert result.rc != 0
    assert result.verdict == "failed (rolled back)"
    assert {"phase": "gamma", "task": "Fail after compensating"}.items() <= result.failures[-1].items()
    assert "rolled back" in out


def test_no_secret_in_artifacts_or_report(vaulted_vars, tmp_path):
    result, out = run({}, vaulted=vaulted_vars)
    assert result.ok
    assert "gamma" in [p.name for p in result.phases]
    data = report.build(result, "fixture")
    json_path, html_path = report.write(data, tmp_path)
    haystacks = [out, json_path.read_text(), html_path.read_text()]
    artifacts = [p for p in Path(result.artifact_dir).rglob("*") if p.is_file()]
    assert artifacts, "runner artifacts expected"
    haystacks += [p.read_text(errors="replace") for p in artifacts]
    assert not any(CANARY in h for h in haystacks)


def test_report_html_and_json(tmp_path):
    result, _ = run({})
    probe = AnyProbe(["http://127.0.0.1:9/"], interval=0.01, timeout=0.05)
    probe.poll_once()
    probe.stop()
    data = report.build(result, "fixture", downtime=probe.summary(), remaining=["smoke", "verdict"])
    json_path, html_path = report.write(data, tmp_path)
    loaded = json.loads(json_path.read_text())
    assert loaded["verdict"] == "succeeded"
    assert [p["name"] for p in loaded["phases"]] == ["alpha", "beta", "gamma"]
    assert loaded["downtime"]["failures"] == 1
    page = html_path.read_text()
    assert "Phase timeline" in page and "<li>smoke</li>" in page


def cli(*args: str, stdin=subprocess.DEVNULL) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    return subprocess.run([sys.executable, "-m", "aiadmin_ops.cli", *args], capture_output=True, text=True,
                          env=env, stdin=stdin, timeout=60, check=False)


def test_window_needs_confirmation_without_a_terminal():
    proc = cli("migrate")
    assert proc.returncode != 0
    assert "confirm with --yes" in proc.stderr


def test_secrets_are_refused_on_the_command_line():
    proc = cli("gates", "-e", "vault_aiadmin_db_password=x")
    assert proc.returncode != 0
    assert "never from the command line" in proc.stderr


def test_production_needs_a_vault_password_file():
    env_less = cli("gates", "-i", "production")
    assert env_less.returncode != 0
    assert "AIADMIN_VAULT_PASSWORD_FILE" in env_less.stderr
