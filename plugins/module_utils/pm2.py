# Copyright: aiadmin-ops contributors
# SPDX-License-Identifier: MIT
"""Reading PM2's process list without side effects (pm2_info, app_watch).

The daemon is judged alive from its files only (``rpc.sock`` and a live pid in ``pm2.pid``), so
that asking never starts a daemon; ``pm2 jlist`` then only talks to it over ``rpc.sock``, as the
daemon's user when the caller is root. pm2 may print warnings or banners around the JSON array.
"""

from __future__ import annotations

import json
import os
import pwd
import time


def daemon_running(pm2_home):
    """True if the daemon of pm2_home is alive, judged from its files only."""
    if not os.path.exists(os.path.join(pm2_home, "rpc.sock")):
        return False
    try:
        with open(os.path.join(pm2_home, "pm2.pid"), encoding="ascii") as handle:
            pid = int(handle.read().strip())
    except (OSError, ValueError):
        return False
    return os.path.exists(f"/proc/{pid}")


def extract_json_array(text):
    """Find the JSON array in pm2's output (warnings/banners may precede or follow it)."""
    decoder = json.JSONDecoder()
    start = text.find("[")
    while start != -1:
        try:
            value, _end = decoder.raw_decode(text, start)
        except ValueError:
            start = text.find("[", start + 1)
            continue
        if isinstance(value, list) and all(isinstance(item, dict) for item in value):
            return value
        start = text.find("[", start + 1)
    raise ValueError("no JSON array of processes in the pm2 output")


def summarise(raw, now_ms):
    env = raw.get("pm2_env") or {}
    monit = raw.get("monit") or {}
    status = str(env.get("status", "unknown"))
    started = env.get("pm_uptime") or 0
    uptime = int(max(0, now_ms - started) / 1000) if status == "online" and started else 0
    return {
        "name": str(raw.get("name", "")),
        "pm_id": int(raw.get("pm_id", -1)),
        "status": status,
        "restarts": int(env.get("restart_time", 0) or 0),
        "unstable_restarts": int(env.get("unstable_restarts", 0) or 0),
        "uptime_s": uptime,
        "memory_bytes": int(monit.get("memory", 0) or 0),
        "cpu_percent": float(monit.get("cpu", 0) or 0),
        "pid": int(raw.get("pid", 0) or 0),
    }


def jlist(module, pm2_home, pm2_user=None, pm2_bin="pm2", timeout=30):
    """The processes of a running daemon (summarise()d). Raises RuntimeError with the reason."""
    user = pm2_user or pwd.getpwuid(os.stat(pm2_home).st_uid).pw_name
    argv = [pm2_bin, "jlist"]
    if os.geteuid() == 0 and user != "root":
        argv = ["runuser", "-u", user, "--", *argv]
    env = {"PM2_HOME": pm2_home, "HOME": pwd.getpwnam(user).pw_dir}
    rc, out, err = module.run_command(["timeout", str(timeout), *argv], environ_update=env, check_rc=False)
    if rc != 0:
        raise RuntimeError(f"pm2 jlist failed (rc={rc}): {err.strip() or out.strip()}")
    now_ms = time.time() * 1000
    return [summarise(item, now_ms) for item in extract_json_array(out)]
