#!/usr/bin/python
"""Ansible module: prove that an app is stopped on this host (no process, no listener)."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: app_stopped
short_description: Wait until no process of a user matches a pattern and nothing listens on a port
description:
  - The host's half of a stop proof - no process of I(user) whose command line matches
    I(pattern) is left, and no socket listens on TCP I(port) (IPv4 or IPv6, any address).
  - Reads C(/proc) directly (process owners, command lines, C(/proc/net/tcp) and C(tcp6)), so it
    needs neither C(psutil) nor C(pgrep) and C(ss); polls every I(interval) seconds until both
    hold or I(timeout) seconds have passed, then fails naming what is still there.
  - Zombie processes (exited, not yet reaped) do not count - they run nothing and hold no socket.
  - Read-only; supports check mode. Linux only.
version_added: "1.0.0"
options:
  user:
    description: The user whose processes count; a user the host does not have runs nothing.
    type: str
    required: true
  pattern:
    description: Regular expression searched in each process's command line (arguments joined by spaces).
    type: str
    required: true
  port:
    description: TCP port that must have no listener; C(0) skips the port check.
    type: int
    default: 0
  timeout:
    description: Seconds to wait for the processes and the listener to go away.
    type: float
    default: 20
  interval:
    description: Seconds between two looks.
    type: float
    default: 0.1
author:
  - aiadmin-ops
"""

EXAMPLES = r"""
- name: Prove the app is stopped (its processes gone, the API port closed)
  app_stopped:
    user: aiadmin
    pattern: /opt/ai-admin/.*main\.js
    port: 3000
"""

RETURN = r"""
pids:
  description: Matching processes at the last look (empty when the proof holds).
  returned: always
  type: list
  elements: int
listening:
  description: Whether something listened on I(port) at the last look.
  returned: always
  type: bool
waited_s:
  description: Seconds until the proof held (or until the timeout).
  returned: always
  type: float
"""

import os
import pwd
import re
import time

from ansible.module_utils.basic import AnsibleModule

_LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp{,6}


def matching_pids(uid: int, regex: re.Pattern) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status", encoding="utf-8", errors="replace") as fh:
                status = dict(line.split(":", 1) for line in fh if ":" in line)
            if int(status["Uid"].split()[0]) != uid or status.get("State", "").strip().startswith("Z"):
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                cmdline = fh.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
        except (OSError, KeyError, ValueError):
            continue  # gone meanwhile, or a kernel thread
        if regex.search(cmdline):
            pids.append(int(entry))
    return sorted(pids)


def listening(port: int) -> bool:
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table, encoding="ascii") as fh:
                next(fh)
                for line in fh:
                    fields = line.split()
                    if fields[3] == _LISTEN and int(fields[1].rsplit(":", 1)[1], 16) == port:
                        return True
        except FileNotFoundError:
            continue
    return False


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "user": {"type": "str", "required": True},
            "pattern": {"type": "str", "required": True},
            "port": {"type": "int", "default": 0},
            "timeout": {"type": "float", "default": 20},
            "interval": {"type": "float", "default": 0.1},
        },
        supports_check_mode=True,
    )
    p = module.params
    try:
        uid = pwd.getpwnam(p["user"]).pw_uid
    except KeyError:
        uid = None
    try:
        regex = re.compile(p["pattern"])
    except re.error as exc:
        module.fail_json(msg=f"app_stopped: pattern {p['pattern']!r} is not a regular expression: {exc}")
    if not 0 <= p["port"] <= 65535:
        module.fail_json(msg=f"app_stopped: port {p['port']} is out of range")

    started = time.monotonic()
    while True:
        pids = matching_pids(uid, regex) if uid is not None else []
        busy = bool(p["port"]) and listening(p["port"])
        waited = round(time.monotonic() - started, 3)
        if not pids and not busy:
            module.exit_json(changed=False, pids=[], listening=False, waited_s=waited)
        if waited >= p["timeout"]:
            left = [f"process(es) {pids} of {p['user']} matching {p['pattern']!r}"] if pids else []
            left += [f"a listener on port {p['port']}"] if busy else []
            module.fail_json(msg=f"app_stopped: still there after {p['timeout']} s: {' and '.join(left)}",
                             pids=pids, listening=busy, waited_s=waited)
        time.sleep(p["interval"])


if __name__ == "__main__":
    main()
