"""Run a playbook through ansible-runner with live progress and a verdict.

Runner hygiene: a private temporary data directory per run (removed afterwards), the extra
variables in a 0600 file in it (``-e @file``, never on an argv ``ps`` shows), the environment
only what the run needs (``secrets.run_environment``) and recorded masked,
``suppress_env_files`` so no password lands on disk, explicit timeouts,
artifact rotation, and no stdout capture of tasks marked ``no_log`` (Ansible censors them
before they reach the event stream).

Task names follow ``<phase> | <what>``; the phase is what the progress line and the report
timeline show.

Artifacts go to ``<state dir>/artifacts/<playbook stem>`` (see ``aiadmin_ops.state``), never
into the checkout.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from aiadmin_ops import secrets, state

ROOT = state.ROOT
DEFAULT_TIMEOUT_S = 3 * 3600
KEEP_ARTIFACTS = 10
PROBE_GROUPS = ("old", "new")
DEFAULT_API_PORT = 3000


class InventoryError(RuntimeError):
    """The inventory cannot be read, or lacks what the CLI needs from it."""


def ansible_env(envvars: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of every Ansible command the CLI runs (playbooks and ansible-inventory)."""
    env = {
        "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
        "ANSIBLE_FORCE_COLOR": "0",
        "CONTAINERS_CONF": str(ROOT / "containers.conf"),
        "ANSIBLE_STDOUT_CALLBACK": "ansible.builtin.default",
        **(envvars or {}),
    }
    # The venv's ansible-* first, even when the venv is not activated.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return env


@contextlib.contextmanager
def run_environ(env: dict[str, str]):
    """os.environ is exactly env while the block runs (the CLI runs one playbook at a time)."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield env
    finally:
        os.environ.clear()
        os.environ.update(saved)


def mask_recorded_command(artifact_dir: Path) -> None:
    """ansible-runner's record of the run (``command``: argv, cwd, environment), masked."""
    path = artifact_dir / "command"
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    if isinstance(record.get("env"), dict):
        record["env"] = secrets.masked(record["env"])
        state.write_private(path, json.dumps(record))


def _venv_tool(name: str) -> str:
    tool = Path(sys.executable).parent / name
    return str(tool) if tool.exists() else (shutil.which(name) or name)


def _group_hosts(groups: dict, name: str, seen: set[str] | None = None) -> list[str]:
    """The hosts of an ``ansible-inventory --list`` group, its children's included, in order."""
    seen = set() if seen is None else seen
    if name in seen:
        return []
    seen.add(name)
    group = groups.get(name) or {}
    hosts = list(group.get("hosts") or [])
    for child in group.get("children") or []:
        hosts += _group_hosts(groups, child, seen)
    return hosts


def _host_part(host: str, address: Any) -> str:
    if not isinstance(address, str) or not address.strip():
        raise InventoryError(f"host {host} has no aiadmin_public_address in the inventory "
                             "(the downtime probe polls http://<aiadmin_public_address>:<aiadmin_api_port>/health; "
                             "set it, or give --probe-url)")
    address = address.strip()
    if "{{" in address or "{%" in address:
        raise InventoryError(f"host {host}: aiadmin_public_address {address!r} is a template; the downtime probe "
                             "needs a literal address (or give --probe-url)")
    if any(c in address for c in " /?#@"):
        raise InventoryError(f"host {host}: aiadmin_public_address {address!r} is not an address or a host name")
    try:
        if ipaddress.ip_address(address).version == 6:
            return f"[{address}]"
    except ValueError:
        pass
    return address


def _port(host: str, value: Any) -> int:
    if value is None or value == "":
        return DEFAULT_API_PORT
    try:
        port = int(str(value).strip())
    except ValueError:
        port = 0
    if not 0 < port < 65536:
        raise InventoryError(f"host {host}: aiadmin_api_port {value!r} is not a port number")
    return port


def probe_urls_from_inventory_data(data: dict, groups: Iterable[str] = PROBE_GROUPS) -> list[str]:
    """``http://<aiadmin_public_address>:<aiadmin_api_port or 3000>/health`` of every host of ``groups``."""
    hostvars = (data.get("_meta") or {}).get("hostvars") or {}
    hosts: list[str] = []
    for group in groups:
        hosts += [h for h in _group_hosts(data, group) if h not in hosts]
    if not hosts:
        raise InventoryError(f"the inventory has no host in the groups {', '.join(groups)} "
                             "(the downtime probe polls their health URLs; give --probe-url)")
    urls = []
    for host in hosts:
        hv = hostvars.get(host) or {}
        urls.append(f"http://{_host_part(host, hv.get('aiadmin_public_address'))}:"
                    f"{_port(host, hv.get('aiadmin_api_port'))}/health")
    return urls


def inventory_probe_urls(inventory: str, vault_ids: list[str] | None = None, *,
                         groups: Iterable[str] = PROBE_GROUPS, timeout: int = 120) -> list[str]:
    """The health URLs of the inventory's ``old`` and ``new`` hosts, from ``ansible-inventory --list``."""
    return probe_urls_from_inventory_data(inventory_data(inventory, vault_ids, timeout=timeout), groups)


def inventory_data(inventory: str, vault_ids: list[str] | None = None, *, timeout: int = 120) -> dict:
    """``ansible-inventory --list`` of the inventory. That JSON holds the decrypted vault: it is
    parsed here and never printed or written."""
    cmd = [_venv_tool("ansible-inventory"), "-i", str(ROOT / inventory), "--list"]
    for vid in vault_ids or []:
        cmd += ["--vault-id", vid]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=timeout, check=False,
                              env={**os.environ, **ansible_env()})
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise InventoryError(f"ansible-inventory on {inventory} failed: {exc}") from None
    if proc.returncode != 0:
        raise InventoryError(f"ansible-inventory on {inventory} failed (rc {proc.returncode}): "
                             f"{proc.stderr.strip()[-800:]}")
    try:
        return json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise InventoryError(f"ansible-inventory on {inventory} printed no JSON") from None


PLACEHOLDER = re.compile(r"^<[A-Z0-9_ .-]+>$")  # the production example's <LIKE_THIS>


def mentions(inventory: str, name: str) -> bool:
    """Whether any file of the inventory's directory names the variable (read without the vault)."""
    base = ROOT / inventory
    base = base if base.is_dir() else base.parent
    for path in base.rglob("*"):
        try:
            if path.is_file() and path.stat().st_size < 1_000_000 and name in path.read_text(errors="ignore"):
                return True
        except OSError:
            continue
    return False


def inventory_var(data: dict, *names: str) -> str:
    """The first of the variables set (non-empty, not a placeholder) on any host of ``inventory_data``'s result."""
    hostvars = (data.get("_meta") or {}).get("hostvars") or {}
    for name in names:
        for host in sorted(hostvars):
            value = hostvars[host].get(name)
            if isinstance(value, str) and value.strip() and "{{" not in value and not PLACEHOLDER.match(value.strip()):
                return value.strip()
    return ""


def split_phase(task_name: str) -> tuple[str, str]:
    """'Cutover | Stop old' -> ('cutover', 'Stop old'); names without a phase go to 'main'."""
    # Role tasks arrive as 'role : phase | task'; keep the part after the role prefix.
    name = task_name.split(" : ", 1)[-1]
    if " | " in name:
        phase, what = name.split(" | ", 1)
        # Phases are lower case ("Cutover | ..." is "cutover", as ansible-lint wants capitals).
        return phase.strip().lower(), what.strip()
    return "main", name.strip()


@dataclass
class PhaseSpan:
    name: str
    started: float
    ended: float
    failed: bool = False
    tasks: int = 0


@dataclass
class RunResult:
    playbook: str
    status: str  # ansible-runner's: successful / failed / timeout / canceled
    rc: int
    started: float
    ended: float
    stats: dict[str, dict[str, int]] = field(default_factory=dict)
    custom_stats: dict[str, Any] = field(default_factory=dict)
    phases: list[PhaseSpan] = field(default_factory=list)
    failures: list[dict[str, str]] = field(default_factory=list)
    artifact_dir: str = ""

    @property
    def rescued(self) -> int:
        return sum(h.get("rescued", 0) for h in self.stats.values())

    @property
    def verdict(self) -> str:
        """A rescued run is a failed run, even if ansible-playbook exited 0."""
        if self.status == "timeout":
            return "failed (timeout)"
        if self.rc != 0 or self.status != "successful":
            return "failed (rolled back)" if self.rescued else "failed"
        if self.rescued:
            return "failed (rolled back)"
        return "succeeded"

    @property
    def ok(self) -> bool:
        return self.verdict == "succeeded"


DEBUG_ACTIONS = ("debug", "ansible.builtin.debug")


class Progress:
    """Turns runner events into one readable line per phase/task, retries and failures."""

    def __init__(self, out: TextIO = sys.stdout):
        self.out = out
        self.phases: list[PhaseSpan] = []
        self.failures: list[dict[str, str]] = []
        self.stats: dict[str, dict[str, int]] = {}
        self.custom_stats: dict[str, Any] = {}

    def _say(self, line: str) -> None:
        print(line, file=self.out, flush=True)

    def _phase(self, name: str, now: float) -> PhaseSpan:
        if not self.phases or self.phases[-1].name != name:
            if self.phases:
                self.phases[-1].ended = now
            self.phases.append(PhaseSpan(name, now, now))
            self._say(f"== phase {name}")
        return self.phases[-1]

    def __call__(self, event: dict) -> bool:
        kind = event.get("event", "")
        data = event.get("event_data") or {}
        now = time.time()
        if kind == "playbook_on_task_start":
            phase, what = split_phase(data.get("task", ""))
            # A task without a phase prefix (e.g. a role included by a phase) stays in the
            # current phase rather than opening a "main" span in the middle of the timeline.
            if phase == "main" and self.phases:
                phase = self.phases[-1].name
            span = self._phase(phase, now)
            span.tasks += 1
            self._say(f"   [{phase}] {what}")
        elif kind == "runner_retry":
            res = data.get("res") or {}
            attempts, retries = res.get("attempts", "?"), res.get("retries", "?")
            self._say(f"     waiting {attempts}/{retries} ({data.get('host', '?')})")
        elif kind in ("runner_on_failed", "runner_on_unreachable") and not data.get("ignore_errors"):
            phase, what = split_phase(data.get("task", ""))
            if phase == "main" and self.phases:
                phase = self.phases[-1].name
            res = data.get("res") or {}
            msg = str(res.get("msg") or res.get("reason") or res.get("stderr") or "failed")[:1500]
            self.failures.append({"phase": phase, "task": what, "host": data.get("host", ""), "msg": msg})
            if self.phases:
                self.phases[-1].failed = True
            self._say(f"     FAILED on {data.get('host', '?')}: {msg}")
        elif kind in ("runner_on_ok", "runner_on_changed", "runner_item_on_ok") and self.phases:
            self.phases[-1].ended = now
            # What a debug task says (live state, gate summaries, the verdict) is for the operator.
            if data.get("task_action") in DEBUG_ACTIONS:
                msg = (data.get("res") or {}).get("msg")
                for line in ([msg] if isinstance(msg, str) else msg if isinstance(msg, list) else []):
                    self._say(f"     {str(line).strip()[:600]}")
        elif kind == "playbook_on_stats":
            if self.phases:
                self.phases[-1].ended = now
            for key in ("ok", "changed", "failures", "dark", "skipped", "rescued", "ignored"):
                for host, count in (data.get(key) or {}).items():
                    self.stats.setdefault(host, {})[key] = count
            self.custom_stats = (data.get("artifact_data") or {}) | (data.get("custom") or {}).get("_run", {})
        return True


def startup_error(artifact_dir: Path) -> str:
    """The end of a run's stdout from its first ERROR line (plain text, at most 1500 characters)."""
    try:
        text = re.sub(r"\x1b\[[0-9;]*m", "", (artifact_dir / "stdout").read_text(errors="replace"))
    except OSError:
        return f"ansible-playbook failed before its first task (no stdout in {artifact_dir})"
    match = re.search(r"\[?ERROR", text)
    return (text[match.start():] if match else text).strip()[-1500:] or "ansible-playbook failed before its first task"


def run_playbook(
    playbook: str,
    inventory: str,
    *,
    extravars: dict[str, Any] | None = None,
    check: bool = False,
    limit: str | None = None,
    vault_ids: list[str] | None = None,
    timeout: int = DEFAULT_TIMEOUT_S,
    out: TextIO = sys.stdout,
    envvars: dict[str, str] | None = None,
    on_event: Callable[[dict], None] | None = None,
) -> RunResult:
    import ansible_runner  # imported here: the lab commands must work without it

    progress = Progress(out)

    def handler(event: dict) -> bool:
        progress(event)
        if on_event:
            on_event(event)
        return True

    artifact_root = state.private_dir(state.artifacts_dir() / Path(playbook).stem)
    private = Path(tempfile.mkdtemp(prefix="aiadmin-runner-"))  # 0700, removed after the run
    # Extra variables through a 0600 file (-e @file), never as JSON on ansible-playbook's argv.
    extravars_file = private / "extravars.json"
    state.write_private(extravars_file, json.dumps(extravars or {}))
    cmdline = ["-e", f"@{extravars_file}"]
    for vid in vault_ids or []:
        cmdline += ["--vault-id", vid]
    if check:
        cmdline.append("--check")
    started = time.time()
    result = None
    try:
        # ansible-runner starts from os.environ: for the run it is only what the run needs.
        with run_environ(secrets.run_environment(ansible_env(envvars))) as env:
            result = ansible_runner.run(
                private_data_dir=str(private),
                project_dir=str(ROOT),
                artifact_dir=str(artifact_root),
                rotate_artifacts=KEEP_ARTIFACTS,
                playbook=str(ROOT / playbook),
                inventory=str(ROOT / inventory),
                cmdline=shlex.join(cmdline),
                limit=limit,
                envvars=env,
                suppress_env_files=True,
                quiet=True,
                timeout=timeout,
                event_handler=handler,
            )
    finally:
        shutil.rmtree(private, ignore_errors=True)
        if result is not None:
            mask_recorded_command(Path(result.config.artifact_dir))
    ended = time.time()
    if result.rc != 0 and not progress.failures:
        # Refused before any task (YAML, arguments, inventory): ansible-playbook's own error.
        progress.failures.append({"phase": "start", "task": "ansible-playbook", "host": "",
                                  "msg": startup_error(Path(result.config.artifact_dir))})
    return RunResult(
        playbook=playbook,
        status=result.status,
        rc=result.rc if result.rc is not None else 1,
        started=started,
        ended=ended,
        stats=progress.stats,
        custom_stats=progress.custom_stats,
        phases=progress.phases,
        failures=progress.failures,
        artifact_dir=str(Path(result.config.artifact_dir)),
    )
