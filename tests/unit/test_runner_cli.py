"""The operator CLI's runner: live progress, verdicts, reports, and no secret in artifacts."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from aiadmin_ops import cli as cli_mod
from aiadmin_ops import report, secrets, state
from aiadmin_ops.downtime import AnyProbe
from aiadmin_ops.runner import InventoryError, inventory_probe_urls, run_playbook, split_phase
from tests.helpers import ROOT, file_mode

PLAYBOOK = "tests/fixtures/playbooks/phases.yml"
INVENTORY = "tests/fixtures/inventory.yml"
CANARY = "CANARY-3f9b2c-not-a-real-secret"


@pytest.fixture(autouse=True)
def _state(state_root) -> Path:
    """Every test keeps its state in a tmp dir (tests/unit/conftest.py)."""
    return state_root


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


def test_success_shows_phases_and_retries(state_root):
    result, out = run({})
    assert result.verdict == "succeeded" and result.rc == 0
    # Runner artifacts in the state dir (0700), one directory per playbook, never in the checkout.
    assert Path(result.artifact_dir).parent == state_root / "artifacts" / "phases"
    assert file_mode(state_root / "artifacts") == 0o700 and file_mode(state_root / "artifacts" / "phases") == 0o700
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


def test_a_playbook_refused_before_its_first_task_says_why(tmp_path):
    """An error before any task (here a role that does not exist) is a failure with ansible-playbook's words."""
    bad = ROOT / "tests/fixtures/playbooks" / f"broken-{tmp_path.name}.yml"
    bad.write_text("---\n- name: Broken\n  hosts: all\n  roles: [no_such_role_here]\n")
    try:
        result = run_playbook(str(bad.relative_to(ROOT)), INVENTORY, out=io.StringIO(), timeout=120)
    finally:
        bad.unlink()
    assert not result.ok and result.failures[0]["phase"] == "start"
    assert "no_such_role_here" in result.failures[0]["msg"] and "ERROR" in result.failures[0]["msg"]


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


def test_the_operators_environment_is_neither_passed_nor_recorded(monkeypatch, tmp_path):
    """Cloud keys and tokens in the operator's shell never reach the run or its record; what the
    run needs is recorded masked (AWX-style); the operator's environment is back afterwards."""
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", CANARY)
    monkeypatch.setenv("GITHUB_TOKEN", CANARY)
    monkeypatch.setenv("DATABASE_URL", f"postgres://app:{CANARY}@db.invalid/x")
    monkeypatch.setenv("ANSIBLE_FIXTURE_TOKEN", CANARY)  # an allowed prefix, a secret name
    monkeypatch.setenv("HTTPS_PROXY", f"http://proxyuser:{CANARY}@127.0.0.1:9")
    result, out = run({})
    assert result.ok, out
    record = json.loads((Path(result.artifact_dir) / "command").read_text())
    env = record["env"]
    assert "AWS_SECRET_ACCESS_KEY" not in env and "GITHUB_TOKEN" not in env and "DATABASE_URL" not in env
    assert env["ANSIBLE_FIXTURE_TOKEN"] == secrets.MASK
    assert env["HTTPS_PROXY"] == f"http://proxyuser:{secrets.MASK}@127.0.0.1:9"
    assert env["PATH"] and env["ANSIBLE_CONFIG"]
    data = report.build(result, "fixture")
    json_path, html_path = report.write(data, tmp_path)
    files = [p for p in Path(result.artifact_dir).rglob("*") if p.is_file()] + [json_path, html_path]
    assert not [str(p) for p in files if CANARY in p.read_text(errors="replace")]
    assert file_mode(Path(result.artifact_dir) / "command") == 0o600
    assert os.environ["AWS_SECRET_ACCESS_KEY"] == CANARY  # the CLI's own environment is restored


def test_extra_variables_never_appear_on_an_argv(monkeypatch):
    """Extra variables reach the playbook through a 0600 file, not as JSON on ansible-playbook's
    command line: /proc is sampled while the run goes on."""
    marker = "MARKER-extravar-8d1e"
    seen, stop = [], threading.Event()

    def sample():
        while not stop.is_set():
            for pid in filter(str.isdigit, os.listdir("/proc")):
                with contextlib.suppress(OSError):
                    argv = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
                    if b"phases.yml" in argv:
                        seen.append(argv)
            time.sleep(0.01)

    from aiadmin_ops import runner

    made: list[str] = []
    real_mkdtemp = tempfile.mkdtemp

    def mkdtemp(*args, **kwargs):
        made.append(real_mkdtemp(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(runner.tempfile, "mkdtemp", mkdtemp)
    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        result, out = run({"fixture_marker": marker})
    finally:
        stop.set()
        sampler.join()
    assert result.ok and f"one {marker}" in out, out[-2000:]
    assert seen, "the ansible-playbook process was never seen"
    assert not [a for a in seen if marker.encode() in a], seen[:3]
    assert all(b"-e @" in a for a in seen if b"ansible-playbook" in a)
    assert made and not [d for d in made if Path(d).exists()], made  # this run's private directory is gone


@pytest.mark.parametrize("key", ["db_password", "api_token", "client_secret", "aws_secret_access_key", "sentry_dsn",
                                 "private_key", "ssh_key", "migration_backup_age_identity", "session_id",
                                 "gemini_api_key", "x_auth"])
def test_secret_looking_extra_variables_are_refused(key):
    proc = cli("gates", "-e", f"{key}=x")
    assert proc.returncode != 0 and f"-e {key}: looks like a secret" in proc.stderr, proc.stderr


@pytest.mark.parametrize("key", ["backup_controller_vault_password_file", "aiadmin_db_key_tables", "app_version",
                                 "ssh_key_path", "keys_dir"])
def test_places_and_plain_names_are_not_secrets(key):
    assert not secrets.looks_secret(key)
    assert cli_mod.parse_extra([f"{key}=x"]) == {key: "x"}


def test_urls_with_a_password_are_refused_in_extra_variables_and_the_webhook():
    proc = cli("gates", "-e", f"notify_url=https://bot:{CANARY}@hooks.invalid/x")
    assert proc.returncode != 0 and "a URL with a password (https://bot@...)" in proc.stderr
    assert CANARY not in proc.stderr + proc.stdout
    proc = cli("migrate", "--check", "--webhook", f"https://bot:{CANARY}@hooks.invalid/x")
    assert proc.returncode != 0 and "--webhook carries a password" in proc.stderr
    assert CANARY not in proc.stderr + proc.stdout
    proc = cli("migrate", "--check", "--webhook", "ftp://hooks.invalid/x")
    assert proc.returncode != 0 and "http:// or https://" in proc.stderr


def test_a_no_log_failure_is_not_repeated_by_the_rescue(vaulted_vars, tmp_path):
    """A no_log task that fails with a secret in its message: the rescue's report of it
    (failure_message) says it is hidden; no output, report or artifact holds the secret."""
    result, out = run({"fixture_secret_fail": True, "fixture_secret_in_msg": "{{ vault_fixture_canary }}"},
                      vaulted=vaulted_vars)
    assert not result.ok
    assert "the failed task is no_log: its message is not repeated" in out, out[-2000:]
    json_path, html_path = report.write(report.build(result, "fixture"), tmp_path)
    files = [p for p in Path(result.artifact_dir).rglob("*") if p.is_file()] + [json_path, html_path]
    assert CANARY not in out and not [str(p) for p in files if CANARY in p.read_text(errors="replace")]


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
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))  # AIADMIN_STATE_DIR: the test's tmp dir
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


def test_report_defaults_to_the_state_dir_0600(state_root):
    result, _ = run({})
    json_path, html_path = report.write(report.build(result, "fixture"))
    assert json_path.parent == html_path.parent == state_root / "reports"
    assert file_mode(json_path) == 0o600 and file_mode(html_path) == 0o600
    assert file_mode(state_root / "reports") == 0o700


def test_unlock_needs_confirmation_without_a_terminal():
    proc = cli("unlock")
    assert proc.returncode != 0
    assert "confirm with --yes" in proc.stderr


def test_unlock_has_force_and_check():
    args = cli_mod.build_parser().parse_args(["unlock", "--check", "--force", "--yes"])
    assert (args.command, args.check, args.force, args.yes) == ("unlock", True, True, True)
    assert cli_mod.PLAYBOOKS["unlock"][0] == "playbooks/unlock.yml" and cli_mod.PLAYBOOKS["unlock"][2] is True
    assert "--force" in cli("unlock", "--help").stdout


# ----------------------------------------------------------------------------- extravars


def extravars_for(*argv: str) -> dict:
    return cli_mod.build_extravars(cli_mod.build_parser().parse_args(list(argv)))


def test_every_run_gets_aiadmin_run_and_the_state_dir(state_root):
    ev = extravars_for("gates")
    run = ev["aiadmin_run"]
    assert set(run) == {"run_id", "command", "controller", "pid", "started", "inventory"}
    assert re.fullmatch(r"[0-9a-f]{12}", run["run_id"])
    assert run["command"] == "gates"
    assert run["controller"] == socket.gethostname()
    assert run["pid"] == os.getpid()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", run["started"])
    assert run["inventory"] == state.identity("lab")
    assert ev["aiadmin_state_dir"] == str(state_root)
    assert ev["gates_ledger_path"] == str(state_root / "ledger" / f"gates-{state.identity('lab')}.json")
    assert "gates_confirmed" not in ev and "migrate_ledger_path" not in ev
    assert extravars_for("gates")["aiadmin_run"]["run_id"] != run["run_id"]  # one id per run
    json.dumps(ev)  # extravars go to ansible-runner as JSON


def test_the_ledger_follows_the_inventory_not_its_spelling(state_root, monkeypatch):
    monkeypatch.chdir(ROOT)
    paths = {extravars_for("migrate", "--yes", "-i", inv)["migrate_ledger_path"]
             for inv in ("lab", "./inventories/lab/", "inventories/lab/hosts.yml")}
    assert paths == {str(state_root / "ledger" / f"migrate-{state.identity('lab')}.json")}


@pytest.mark.parametrize("command", ["rollback", "decommission"])
def test_rollback_and_decommission_get_the_migrate_ledger(state_root, command):
    ev = extravars_for(command, "--yes", "-i", "production")
    ident = state.identity("production")
    assert ev[f"{command}_ledger_path"] == str(state_root / "ledger" / f"{command}-{ident}.json")
    assert ev["migrate_ledger_path"] == str(state_root / "ledger" / f"migrate-{ident}.json")
    assert ev[f"{command}_confirmed"] is True
    assert ev["aiadmin_run"]["command"] == command and ev["aiadmin_run"]["inventory"] == ident


def test_migrate_extravars(state_root):
    ev = extravars_for("migrate", "--yes", "--webhook", "http://127.0.0.1:9/hook", "-e", "migrate_app_version=v2")
    assert ev["migrate_confirmed"] is True and ev["migrate_app_version"] == "v2"
    assert ev["migrate_webhook_url"] == "http://127.0.0.1:9/hook"
    assert ev["migrate_ledger_path"].startswith(str(state_root / "ledger" / "migrate-lab-"))
    assert "migrate_confirmed" not in extravars_for("migrate", "--check")


def test_unlock_extravars(state_root):
    ev = extravars_for("unlock", "--yes", "--force")
    assert ev["unlock_confirmed"] is True and ev["unlock_force"] is True
    assert ev["aiadmin_run"]["command"] == "unlock"
    check = extravars_for("unlock", "--check")
    assert "unlock_confirmed" not in check and check["unlock_force"] is False


def test_dr_rebuild_extravars(state_root):
    ev = extravars_for("dr-rebuild", "--yes", "--host", "lab-old")
    assert ev["dr_rebuild_confirmed"] is True and ev["dr_host"] == "lab-old"
    assert ev["dr_rebuild_ledger_path"] == str(state_root / "ledger" / f"dr-rebuild-{state.identity('lab')}.json")
    plan = extravars_for("dr-rebuild", "--check")
    assert "dr_rebuild_confirmed" not in plan and "dr_host" not in plan
    assert cli_mod.PLAYBOOKS["dr-rebuild"][0] == "playbooks/dr_rebuild.yml" and cli_mod.PLAYBOOKS["dr-rebuild"][2]
    with pytest.raises(SystemExit):  # --host belongs to the disaster-recovery commands only
        extravars_for("migrate", "--yes", "--host", "lab-old")


def test_maintain_extravars(state_root):
    ev = extravars_for("maintain", "--job", "logs", "--job", "keys", "--dry-run")
    assert ev["maintenance_jobs"] == ["keys", "logs"] and ev["maintenance_dry_run"] is True
    every = extravars_for("maintain")
    assert every["maintenance_jobs"] == ["keys", "redis", "logs"] and every["maintenance_dry_run"] is False
    assert "maintain_confirmed" not in every and cli_mod.PLAYBOOKS["maintain"][0] == "playbooks/maintenance.yml"
    assert extravars_for("maintain", "--job", "rotate-db")["maintenance_jobs"] == ["rotate_db"]
    with pytest.raises(SystemExit):
        extravars_for("maintain", "--job", "vacuum")


def test_maintain_weekly_runs_its_own_playbook_alone(state_root):
    args = cli_mod.build_parser().parse_args(["maintain", "--job", "weekly", "--version", "v1.2.0",
                                             "--watch-seconds", "30"])
    assert cli_mod.playbook_of(args) == "playbooks/weekly.yml"
    ev = extravars_for("maintain", "--job", "weekly", "--version", "v1.2.0", "--watch-seconds", "30")
    assert ev["aiadmin_app_version"] == "v1.2.0" and ev["maintenance_weekly_watch_seconds"] == 30
    assert cli_mod.playbook_of(cli_mod.build_parser().parse_args(["maintain"])) == "playbooks/maintenance.yml"
    for argv, message in ((["--job", "weekly", "--job", "keys"], "runs alone"),
                          (["--job", "keys", "--version", "v1.2.0"], "for --job weekly")):
        with pytest.raises(SystemExit, match=message):
            cli_mod.playbook_of(cli_mod.build_parser().parse_args(["maintain", *argv]))
    with pytest.raises(SystemExit):  # argparse: a watch of 0 s is no watch
        cli_mod.build_parser().parse_args(["maintain", "--job", "weekly", "--watch-seconds", "0"])


@pytest.mark.parametrize("key", ["aiadmin_run", "aiadmin_state_dir"])
def test_the_cli_own_extravars_cannot_be_overridden(key):
    with pytest.raises(SystemExit, match="set by aiadmin-ops itself"):
        extravars_for("gates", "-e", f"{key}=x")


def test_a_run_end_to_end_keeps_its_state_outside_the_checkout(state_root, tmp_path, monkeypatch, capsys):
    """gates through the real CLI code on a local fixture: the extravars reach the playbook, the
    ledger it leaves open is tightened to 0600, the report lands in the state dir."""
    playbook = tmp_path / "echo.yml"
    playbook.write_text("""---
- name: Echo what the CLI passes
  hosts: localhost
  connection: local
  gather_facts: false
  tasks:
    - name: check | The run record and the state dir
      ansible.builtin.assert:
        that:
          - aiadmin_run.run_id | length == 12
          - aiadmin_run.command == 'gates'
          - aiadmin_run.pid | int > 0
          - aiadmin_state_dir is directory
          - gates_ledger_path.startswith(aiadmin_state_dir ~ '/ledger/gates-inventory-')
    - name: record | A ledger written loosely
      ansible.builtin.copy:
        dest: "{{ gates_ledger_path }}"
        content: "{{ {'run': aiadmin_run} | to_json }}"
        mode: "0644"
""")
    pw = tmp_path / "pw.txt"
    pw.write_text("unused\n")
    monkeypatch.setenv("AIADMIN_VAULT_PASSWORD_FILE", str(pw))
    monkeypatch.setitem(cli_mod.PLAYBOOKS, "gates", (str(playbook), "fixture", False))
    rc = cli_mod.main(["gates", "-i", str(ROOT / INVENTORY), "--timeout", "120"])
    out = capsys.readouterr().out
    assert rc == 0, out
    ledger = state.ledger_path("gates", str(ROOT / INVENTORY))
    assert json.loads(ledger.read_text())["run"]["command"] == "gates"
    assert file_mode(ledger) == 0o600
    reports = sorted((state_root / "reports").glob("gates-*.json"))
    assert len(reports) == 1 and file_mode(reports[0]) == 0o600
    data = json.loads(reports[0].read_text())
    assert data["run"]["inventory"] == state.identity(str(ROOT / INVENTORY))
    assert data["run"]["run_id"] in out
    assert Path(data["artifact_dir"]).is_relative_to(state_root / "artifacts" / "echo")


# ----------------------------------------------------------------------------- probe URLs


@pytest.fixture
def probe_inventory(tmp_path, vaulted_vars) -> tuple[Path, list[str]]:
    """old (a child group), new (its port in a vaulted group_vars file, with a canary secret), egress."""
    inv = tmp_path / "inv"
    (inv / "group_vars" / "new").mkdir(parents=True)
    (inv / "hosts.yml").write_text("""---
all:
  children:
    old:
      children:
        old_moscow:
          hosts:
            app-old:
              aiadmin_public_address: 192.0.2.20
    new:
      hosts:
        app-new:
          aiadmin_public_address: 192.0.2.30
        app-new6:
          aiadmin_public_address: "2001:db8::30"
          aiadmin_api_port: "3200"
    egress:
      hosts:
        app-egress:
          aiadmin_public_address: 192.0.2.40
""")
    _, pw = vaulted_vars
    secret = inv / "group_vars" / "new" / "vault.yml"
    secret.write_text(f"aiadmin_api_port: 3100\nvault_probe_canary: {CANARY}\n")
    subprocess.run([str(ROOT / ".venv/bin/ansible-vault"), "encrypt", "--vault-id", f"t@{pw}", str(secret)],
                   check=True, capture_output=True)
    return inv, [f"t@{pw}"]


def test_probe_urls_come_from_the_inventory(probe_inventory, capsys):
    inv, vault_ids = probe_inventory
    urls = inventory_probe_urls(str(inv / "hosts.yml"), vault_ids)
    # Group and host vars as Ansible merges them (the vaulted group port, the host's own over it);
    # the old group's hosts through its child group; egress is not probed.
    assert urls == ["http://192.0.2.20:3000/health", "http://192.0.2.30:3100/health",
                    "http://[2001:db8::30]:3200/health"]
    captured = capsys.readouterr()
    assert CANARY not in captured.out + captured.err


def test_a_host_without_an_address_is_named(probe_inventory):
    inv, vault_ids = probe_inventory
    (inv / "hosts.yml").write_text(
        (inv / "hosts.yml").read_text().replace("aiadmin_public_address: 192.0.2.20", "ansible_host: 192.0.2.20"))
    with pytest.raises(InventoryError, match="host app-old has no aiadmin_public_address") as exc:
        inventory_probe_urls(str(inv), vault_ids)
    assert CANARY not in str(exc.value)


def test_probe_urls_need_old_or_new_hosts(tmp_path):
    with pytest.raises(InventoryError, match="no host in the groups old, new"):
        inventory_probe_urls(str(ROOT / INVENTORY), [])


def test_a_wrong_vault_password_fails_without_printing_the_inventory(probe_inventory, tmp_path):
    inv, _ = probe_inventory
    bad = tmp_path / "bad.txt"
    bad.write_text("wrong\n")
    with pytest.raises(InventoryError, match=r"ansible-inventory on .* failed") as exc:
        inventory_probe_urls(str(inv), [f"t@{bad}"])
    assert CANARY not in str(exc.value)


def test_migrate_refuses_an_inventory_without_probe_addresses(tmp_path, monkeypatch, capsys):
    inv = tmp_path / "hosts.yml"
    inv.write_text("all:\n  children:\n    old:\n      hosts:\n        app-old:\n          ansible_host: 192.0.2.1\n")
    pw = tmp_path / "pw.txt"
    pw.write_text("unused\n")
    monkeypatch.setenv("AIADMIN_VAULT_PASSWORD_FILE", str(pw))
    monkeypatch.setitem(cli_mod.PLAYBOOKS, "migrate", ("/nonexistent/never-run.yml", "fixture", True))
    assert cli_mod.main(["migrate", "--yes", "-i", str(inv)]) == 2
    assert "host app-old has no aiadmin_public_address" in capsys.readouterr().err
