"""Run a playbook through ansible-runner with live progress and a verdict.

Runner hygiene: a private temporary data directory per run (removed afterwards),
``suppress_env_files`` so no extra variable or password lands on disk, explicit timeouts,
artifact rotation, and no stdout capture of tasks marked ``no_log`` (Ansible censors them
before they reach the event stream).

Task names follow ``<phase> | <what>``; the phase is what the progress line and the report
timeline show.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / ".artifacts"
DEFAULT_TIMEOUT_S = 3 * 3600
KEEP_ARTIFACTS = 10


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
            msg = str(res.get("msg") or res.get("reason") or res.get("stderr") or "failed")[:400]
            self.failures.append({"phase": phase, "task": what, "host": data.get("host", ""), "msg": msg})
            if self.phases:
                self.phases[-1].failed = True
            self._say(f"     FAILED on {data.get('host', '?')}: {msg}")
        elif kind in ("runner_on_ok", "runner_on_changed") and self.phases:
            self.phases[-1].ended = now
        elif kind == "playbook_on_stats":
            if self.phases:
                self.phases[-1].ended = now
            for key in ("ok", "changed", "failures", "dark", "skipped", "rescued", "ignored"):
                for host, count in (data.get(key) or {}).items():
                    self.stats.setdefault(host, {})[key] = count
            self.custom_stats = (data.get("artifact_data") or {}) | (data.get("custom") or {}).get("_run", {})
        return True


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

    cmdline = []
    for vid in vault_ids or []:
        cmdline += ["--vault-id", vid]
    if check:
        cmdline.append("--check")
    ARTIFACTS.mkdir(exist_ok=True)
    artifact_root = ARTIFACTS / Path(playbook).stem
    private = Path(tempfile.mkdtemp(prefix="aiadmin-runner-"))
    env = {
        "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
        "ANSIBLE_FORCE_COLOR": "0",
        "CONTAINERS_CONF": str(ROOT / "containers.conf"),
        "ANSIBLE_STDOUT_CALLBACK": "ansible.builtin.default",
        **(envvars or {}),
    }
    # The venv's ansible-playbook first, even when the venv is not activated.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    started = time.time()
    try:
        result = ansible_runner.run(
            private_data_dir=str(private),
            project_dir=str(ROOT),
            artifact_dir=str(artifact_root),
            rotate_artifacts=KEEP_ARTIFACTS,
            playbook=str(ROOT / playbook),
            inventory=str(ROOT / inventory),
            extravars=extravars or {},
            cmdline=" ".join(cmdline) or None,
            limit=limit,
            envvars=env,
            suppress_env_files=True,
            quiet=True,
            timeout=timeout,
            event_handler=handler,
        )
    finally:
        shutil.rmtree(private, ignore_errors=True)
    ended = time.time()
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
