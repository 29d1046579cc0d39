#!/usr/bin/python
"""Ansible module: read PM2's process list without side effects, gate on an expected set."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: pm2_info
short_description: Report PM2 processes (status, restarts, uptime, memory) and gate on an expected set
description:
  - Reads C(pm2 jlist) as the PM2 user and returns one entry per process.
  - Never starts a PM2 daemon as a side effect - when the daemon of I(pm2_home) is not running
    (no C(rpc.sock) / no live pid in C(pm2.pid)), it reports C(daemon_running=false) without calling pm2.
  - Parses the output safely - pm2 can print warnings or banners before the JSON array; the module
    looks for the JSON array itself.
  - With I(expected), computes C(missing) and C(not_online) and C(go); fails closed (the task fails with
    the reasons) unless I(report_only=true).
  - Read-only; supports check mode.
version_added: "1.0.0"
options:
  pm2_home:
    description: The PM2_HOME of the daemon to query (e.g. /home/aiadmin/.pm2).
    type: path
    required: true
  pm2_user:
    description:
      - User the daemon runs as; when the module runs as root it calls pm2 as this user.
      - Defaults to the owner of I(pm2_home).
    type: str
  pm2_bin:
    description: The pm2 executable.
    type: path
    default: pm2
  expected:
    description: Process names that must exist and be C(online).
    type: list
    elements: str
    default: []
  report_only:
    description: Do not fail when the expected set is not met (or the daemon is down); only report.
    type: bool
    default: false
  timeout:
    description: Seconds to wait for C(pm2 jlist).
    type: int
    default: 30
author:
  - aiadmin-ops
"""

EXAMPLES = r"""
- name: Gate - every app process online
  pm2_info:
    pm2_home: /home/aiadmin/.pm2
    expected: "{{ aiadmin_pm2_processes }}"

- name: Report only (never fails on a missing process)
  pm2_info:
    pm2_home: /home/aiadmin/.pm2
    report_only: true
  register: pm2_state
"""

RETURN = r"""
daemon_running:
  description: Whether the PM2 daemon of pm2_home runs (checked without calling pm2).
  returned: always
  type: bool
processes:
  description: One entry per PM2 process.
  returned: always
  type: list
  elements: dict
  contains:
    name: {description: Process name, type: str}
    pm_id: {description: PM2 id, type: int}
    status: {description: PM2 status (online, stopped, errored, ...), type: str}
    restarts: {description: Restart count (reloads included), type: int}
    unstable_restarts: {description: Restarts of a process that died before PM2's min_uptime (a crash loop), type: int}
    uptime_s: {description: Seconds since the process started (0 unless online), type: int}
    memory_bytes: {description: Resident memory in bytes, type: int}
    cpu_percent: {description: CPU percent, type: float}
    pid: {description: OS pid (0 when not running), type: int}
  sample: [{name: ai-admin-api, pm_id: 0, status: online, restarts: 0, uptime_s: 3600,
            memory_bytes: 73400320, cpu_percent: 0.3, pid: 1234}]
online:
  description: Names of the online processes.
  returned: always
  type: list
  elements: str
missing:
  description: Expected names that PM2 does not know.
  returned: always
  type: list
  elements: str
not_online:
  description: Expected names that exist but are not online.
  returned: always
  type: list
  elements: str
go:
  description: True when the daemon runs and every expected process is online.
  returned: always
  type: bool
reasons:
  description: Why go is false.
  returned: always
  type: list
  elements: str
counts:
  description: Numbers for reports (total, online, restarts).
  returned: always
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.pm2 import daemon_running, jlist


def main():
    module = AnsibleModule(
        argument_spec={
            "pm2_home": {"type": "path", "required": True},
            "pm2_user": {"type": "str"},
            "pm2_bin": {"type": "path", "default": "pm2"},
            "expected": {"type": "list", "elements": "str", "default": []},
            "report_only": {"type": "bool", "default": False},
            "timeout": {"type": "int", "default": 30},
        },
        supports_check_mode=True,
    )
    pm2_home = module.params["pm2_home"]
    expected = module.params["expected"]
    result = {"changed": False, "daemon_running": False, "processes": [], "online": [],
              "missing": list(expected), "not_online": [], "go": False, "reasons": [],
              "counts": {"total": 0, "online": 0, "restarts": 0}}

    if not daemon_running(pm2_home):
        result["reasons"].append(f"the PM2 daemon of {pm2_home} is not running")
        if module.params["report_only"]:
            module.exit_json(**result)
        module.fail_json(msg="; ".join(result["reasons"]), **result)

    try:
        procs = jlist(module, pm2_home, module.params["pm2_user"], module.params["pm2_bin"],
                      module.params["timeout"])
    except (RuntimeError, ValueError) as exc:
        module.fail_json(msg=str(exc), **result)

    names = {p["name"]: p for p in procs}
    result["daemon_running"] = True
    result["processes"] = procs
    result["online"] = sorted(p["name"] for p in procs if p["status"] == "online")
    result["missing"] = [name for name in expected if name not in names]
    result["not_online"] = [name for name in expected if name in names and names[name]["status"] != "online"]
    result["counts"] = {"total": len(procs), "online": len(result["online"]),
                        "restarts": sum(p["restarts"] for p in procs)}
    if result["missing"]:
        result["reasons"].append("missing: " + ", ".join(result["missing"]))
    if result["not_online"]:
        result["reasons"].append("not online: " + ", ".join(
            f"{n} ({names[n]['status']})" for n in result["not_online"]))
    result["go"] = not result["reasons"]
    if not result["go"] and not module.params["report_only"]:
        module.fail_json(msg="; ".join(result["reasons"]), **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
