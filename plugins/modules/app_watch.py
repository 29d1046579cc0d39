#!/usr/bin/python
"""Ansible module: watch the app for a period after a change and fire the runbooks' rollback triggers."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: app_watch
short_description: Watch the app after a deploy or a cutover; report which rollback trigger fired
description:
  - Samples the app every I(interval) seconds for I(duration) seconds, read-only, on its host -
    C(GET) I(health_url), PM2's process list (C(pm2 jlist), never starting a daemon) and the
    lines appended to I(error_logs) and I(message_logs) since the watch began.
  - "The triggers (the runbooks' rollback triggers and success criteria): more than I(max_restarts)
    restarts of I(processes) during the watch (PM2's restart count, crash loops included); a
    process that PM2 does not know or that is not online for I(max_failed_samples) samples in a
    row; the health endpoint failing or reporting the database not connected for
    I(max_failed_samples) samples in a row (database connections failing); WhatsApp not connected
    I(whatsapp_within) seconds after the start; the processes' resident memory above
    I(max_memory_pct) of the host's; more than I(max_message_failure_pct) of the messages handled
    during the watch failing (at least I(min_messages) of them); error-log lines above
    I(max_error_lines_per_min) per minute."
  - Stops at the first trigger and fails with it (the caller rolls back), unless I(report_only).
  - Read-only; supports check mode.
version_added: "1.0.0"
options:
  health_url:
    description: The app's health endpoint (200 with C(database) = C(connected) when healthy).
    type: str
    required: true
  health_timeout:
    description: Seconds for one health request.
    type: float
    default: 5
  duration:
    description: Seconds to watch.
    type: int
    required: true
  interval:
    description: Seconds between samples.
    type: float
    default: 5
  pm2_home:
    description: The PM2_HOME of the app's daemon.
    type: path
    required: true
  pm2_user:
    description: User the daemon runs as (default the owner of I(pm2_home)).
    type: str
  pm2_bin:
    description: The pm2 executable.
    type: path
    default: pm2
  processes:
    description: The app's PM2 processes.
    type: list
    elements: str
    required: true
  max_restarts:
    description: Restarts of the processes (all together) allowed during the watch.
    type: int
    default: 2
  max_failed_samples:
    description: Samples in a row with the health failing or a process not online before it is a trigger.
    type: int
    default: 3
  whatsapp_within:
    description: Seconds after the start by which the health must report WhatsApp C(connected) (0 - not required).
    type: int
    default: 0
  max_memory_pct:
    description: The processes' resident memory together, in percent of the host's memory.
    type: float
    default: 75
  error_logs:
    description:
      - Error log files (glob patterns, expanded at every sample; PM2 names them
        C(<name>.err-<id>.log)); lines appended during the watch count against
        I(max_error_lines_per_min). A file that shrank was rotated and is counted from its start.
    type: list
    elements: path
    default: []
  max_error_lines_per_min:
    description: Error-log lines per minute allowed (averaged over the elapsed time, at least one minute).
    type: float
    default: 60
  message_logs:
    description:
      - Log files (glob patterns, read like I(error_logs)) where the app writes one line per message
        it handled - I(message_ok_pattern) for one handled, I(message_failed_pattern) for one that failed.
    type: list
    elements: path
    default: []
  message_ok_pattern:
    description:
      - "A regular expression (Python syntax, searched in each line) matching the line of a message
        handled (the demo app - C(webhook: acknowledged message )). Empty with
        I(message_failed_pattern) empty - the messages trigger is off."
    type: str
    default: ""
  message_failed_pattern:
    description:
      - "A regular expression matching the line of a message that failed (the demo app - C(webhook: failed message ))."
    type: str
    default: ""
  max_message_failure_pct:
    description: Messages failing, in percent of those handled during the watch, allowed (the runbook - 50).
    type: float
    default: 50
  min_messages:
    description: Messages handled during the watch before their failure rate is judged (a few failures are not a rate).
    type: int
    default: 10
  report_only:
    description: Report a fired trigger without failing.
    type: bool
    default: false
author:
  - aiadmin-ops
"""

EXAMPLES = r"""
- name: Watch the new release for 10 minutes
  app_watch:
    health_url: http://127.0.0.1:3000/health
    duration: 600
    interval: 10
    pm2_home: /home/aiadmin/.pm2
    processes: "{{ aiadmin_pm2_processes }}"
    error_logs: [/opt/ai-admin/shared/logs/*.err*.log]
    whatsapp_within: 1800
"""

RETURN = r"""
verdict:
  description: C(ok) when no trigger fired during the whole watch, else C(triggered).
  returned: always
  type: str
trigger:
  description: >-
    The trigger that fired (C(restarts), C(process), C(health), C(whatsapp), C(memory), C(messages),
    C(errors)) and why.
  returned: when one fired
  type: dict
  sample: {name: restarts, detail: "5 restarts during the watch (limit 2): ai-admin-api 5"}
samples:
  description: Samples taken.
  returned: always
  type: int
elapsed_s:
  description: Seconds watched.
  returned: always
  type: float
figures:
  description: >-
    restarts (during the watch, per process), memory_pct_max, failed_samples_max (health),
    whatsapp_connected_after_s (null if never), error_lines, messages_ok and messages_failed (null
    when the messages trigger is off).
  returned: always
  type: dict
"""

import glob
import json
import os
import re
import time
import urllib.error
import urllib.request

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.pm2 import daemon_running, jlist


def health(url, timeout):
    """(ok, whatsapp connected, why not ok)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - http(s) only, checked in main()
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as err:
        status, raw = err.code, err.read()
    except (OSError, ValueError) as exc:
        return False, False, f"no answer ({exc})"
    try:
        doc = json.loads(raw)
    except ValueError:
        doc = {}
    services = doc.get("services") or {}
    whatsapp = services.get("whatsapp") == "connected"
    if status != 200 or doc.get("database") != "connected":
        return False, whatsapp, f"HTTP {status}, database {doc.get('database', '?')}"
    return True, whatsapp, ""


def mem_total_bytes():
    with open("/proc/meminfo", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no MemTotal in /proc/meminfo")


class LogLines:
    """Complete lines appended to the files of some glob patterns since the start (a file that
    shrank was rotated, a file that appeared is new: both counted from their start; a last line
    without its newline waits for it), and how many of them match each of some regexes."""

    def __init__(self, patterns, regexes=()):
        self.patterns = patterns
        self.regexes = [re.compile(rx.encode()) for rx in regexes]
        self.offsets = {p: self._size(p) for p in self._files()}
        self.lines = 0
        self.matches = [0] * len(self.regexes)

    def _files(self):
        return sorted({path for pattern in self.patterns for path in glob.glob(pattern)})

    @staticmethod
    def _size(path):
        try:
            return os.path.getsize(path)
        except OSError:
            return 0

    def read(self):
        for path in self._files():
            offset = self.offsets.get(path, 0)
            size = self._size(path)
            if size < offset:
                offset = 0
            if size > offset:
                with open(path, "rb") as handle:
                    handle.seek(offset)
                    chunk = handle.read(size - offset)
                chunk = chunk[:chunk.rfind(b"\n") + 1]
                offset += len(chunk)
                self.lines += chunk.count(b"\n")
                for i, rx in enumerate(self.regexes):
                    self.matches[i] += sum(1 for line in chunk.split(b"\n")[:-1] if rx.search(line))
            self.offsets[path] = offset
        return self.lines


def main():
    module = AnsibleModule(
        argument_spec={
            "health_url": {"type": "str", "required": True},
            "health_timeout": {"type": "float", "default": 5},
            "duration": {"type": "int", "required": True},
            "interval": {"type": "float", "default": 5},
            "pm2_home": {"type": "path", "required": True},
            "pm2_user": {"type": "str"},
            "pm2_bin": {"type": "path", "default": "pm2"},
            "processes": {"type": "list", "elements": "str", "required": True},
            "max_restarts": {"type": "int", "default": 2},
            "max_failed_samples": {"type": "int", "default": 3},
            "whatsapp_within": {"type": "int", "default": 0},
            "max_memory_pct": {"type": "float", "default": 75},
            "error_logs": {"type": "list", "elements": "path", "default": []},
            "max_error_lines_per_min": {"type": "float", "default": 60},
            "message_logs": {"type": "list", "elements": "path", "default": []},
            "message_ok_pattern": {"type": "str", "default": ""},
            "message_failed_pattern": {"type": "str", "default": ""},
            "max_message_failure_pct": {"type": "float", "default": 50},
            "min_messages": {"type": "int", "default": 10},
            "report_only": {"type": "bool", "default": False},
        },
        supports_check_mode=True,
    )
    p = module.params
    if p["duration"] < 0 or p["interval"] <= 0 or not p["processes"]:
        module.fail_json(msg="duration must be >= 0, interval > 0 and processes not empty")
    if not p["health_url"].startswith(("http://", "https://")):
        module.fail_json(msg=f"health_url must be an http(s) URL, not {p['health_url']!r}")
    message_patterns = [p["message_ok_pattern"], p["message_failed_pattern"]]
    if bool(message_patterns[0]) != bool(message_patterns[1]):
        module.fail_json(msg="message_ok_pattern and message_failed_pattern go together "
                             "(both empty: no messages trigger)")
    for name in ("message_ok_pattern", "message_failed_pattern"):
        try:
            re.compile(p[name])
        except re.error as exc:
            module.fail_json(msg=f"{name} is not a regular expression: {exc}")
    watch_messages = bool(message_patterns[0]) and bool(p["message_logs"])
    home = p["pm2_home"]

    def processes():
        if not daemon_running(home):
            raise RuntimeError(f"the PM2 daemon of {home} is not running")
        return {proc["name"]: proc for proc in jlist(module, home, p["pm2_user"], p["pm2_bin"])}

    try:
        baseline = processes()
        total_mem = mem_total_bytes()
    except (OSError, RuntimeError, ValueError) as exc:
        module.fail_json(msg=f"cannot start the watch: {exc}")
    logs = LogLines(p["error_logs"])
    messages = LogLines(p["message_logs"], message_patterns) if watch_messages else None
    start = time.monotonic()
    figures = {"restarts": {}, "memory_pct_max": 0.0, "failed_samples_max": 0,
               "whatsapp_connected_after_s": None, "error_lines": 0,
               "messages_ok": None, "messages_failed": None}
    samples, failed_health, failed_procs, trigger = 0, 0, 0, None

    while trigger is None:
        elapsed = time.monotonic() - start
        samples += 1
        ok, whatsapp, why = health(p["health_url"], p["health_timeout"])
        failed_health = 0 if ok else failed_health + 1
        figures["failed_samples_max"] = max(figures["failed_samples_max"], failed_health)
        if whatsapp and figures["whatsapp_connected_after_s"] is None:
            figures["whatsapp_connected_after_s"] = round(elapsed, 1)
        try:
            now = processes()
            problems = [name for name in p["processes"] if now.get(name, {}).get("status") != "online"]
        except (RuntimeError, ValueError) as exc:
            now, problems = {}, [str(exc)]
        failed_procs = failed_procs + 1 if problems else 0
        if now:
            restarts = {name: now[name]["restarts"] - baseline.get(name, {}).get("restarts", 0)
                        for name in p["processes"] if name in now}
            figures["restarts"] = {n: r for n, r in restarts.items() if r > 0}
            rss = sum(now[name]["memory_bytes"] for name in p["processes"] if name in now)
            figures["memory_pct_max"] = max(figures["memory_pct_max"], round(100.0 * rss / total_mem, 2))
        figures["error_lines"] = logs.read()
        if messages:
            messages.read()
            figures["messages_ok"], figures["messages_failed"] = messages.matches
        handled = (figures["messages_ok"] or 0) + (figures["messages_failed"] or 0)
        failed_pct = 100.0 * (figures["messages_failed"] or 0) / handled if handled else 0.0
        restarted = sum(figures["restarts"].values())
        error_limit = p["max_error_lines_per_min"] * max(elapsed / 60.0, 1.0)

        if restarted > p["max_restarts"]:
            detail = ", ".join(f"{n} {r}" for n, r in sorted(figures["restarts"].items()))
            trigger = {"name": "restarts",
                       "detail": f"{restarted} restarts during the watch (limit {p['max_restarts']}): {detail}"}
        elif failed_procs >= p["max_failed_samples"]:
            trigger = {"name": "process",
                       "detail": f"not online for {failed_procs} samples: {', '.join(problems)}"}
        elif failed_health >= p["max_failed_samples"]:
            trigger = {"name": "health", "detail": f"{p['health_url']} failing for {failed_health} samples: {why}"}
        elif (p["whatsapp_within"] and figures["whatsapp_connected_after_s"] is None
              and elapsed >= p["whatsapp_within"]):
            trigger = {"name": "whatsapp", "detail": f"WhatsApp not connected {p['whatsapp_within']} s after the start"}
        elif figures["memory_pct_max"] > p["max_memory_pct"]:
            trigger = {"name": "memory", "detail": f"the processes use {figures['memory_pct_max']} % of the "
                                                   f"host's memory (limit {p['max_memory_pct']} %)"}
        elif handled >= max(p["min_messages"], 1) and failed_pct > p["max_message_failure_pct"]:
            trigger = {"name": "messages", "detail": f"{figures['messages_failed']} of {handled} messages failed "
                                                     f"during the watch ({failed_pct:.0f} %, limit "
                                                     f"{p['max_message_failure_pct']} %)"}
        elif p["error_logs"] and figures["error_lines"] > error_limit:
            trigger = {"name": "errors", "detail": f"{figures['error_lines']} error-log lines in {elapsed:.0f} s "
                                                   f"(limit {p['max_error_lines_per_min']}/min)"}
        if trigger is not None or elapsed >= p["duration"]:
            break
        time.sleep(min(p["interval"], max(0.0, p["duration"] - elapsed)))

    result = {"changed": False, "verdict": "triggered" if trigger else "ok", "samples": samples,
              "elapsed_s": round(time.monotonic() - start, 1), "figures": figures}
    if trigger:
        result["trigger"] = trigger
        if not p["report_only"]:
            module.fail_json(msg=f"ROLLBACK TRIGGER {trigger['name']}: {trigger['detail']}", **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
