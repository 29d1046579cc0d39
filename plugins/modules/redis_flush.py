#!/usr/bin/python
"""Ansible module: remove the Redis keys that match a pattern (the app's context cache), with SCAN
and UNLINK in batches, never KEYS. The client is module_utils/redis_resp.py."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: redis_flush
short_description: Remove the Redis keys matching a pattern (default C(context:*)) with SCAN + UNLINK in batches
description:
  - Walks the keyspace with C(SCAN MATCH pattern COUNT batch_size) and removes each batch of
    matches with one C(UNLINK) (the memory is freed in the background). C(KEYS) is never sent,
    so a large keyspace never blocks the server, and the command may be disabled (the redis
    role disables it).
  - Keys that do not match the pattern are never touched. SCAN may return a key twice; the
    count removed is what C(UNLINK) reports.
  - The password (and an ACL user name) travel only inside the connection (C(AUTH)), never on
    a command line or in an environment.
  - Check mode and I(dry_run=true) count the matching keys and remove nothing.
version_added: "1.0.0"
options:
  host: {description: Redis host (the app's Redis listens on loopback)., type: str, default: 127.0.0.1}
  port: {description: Redis port., type: int, default: 6379}
  username: {description: ACL user name (default the C(default) user)., type: str}
  password: {description: Its password (never logged)., type: str}
  db: {description: The database number., type: int, default: 0}
  pattern: {description: SCAN MATCH pattern of the keys to remove., type: str, default: "context:*"}
  batch_size: {description: SCAN COUNT hint and the most keys per UNLINK., type: int, default: 500}
  pause_ms: {description: Pause after each UNLINK, in milliseconds., type: int, default: 0}
  timeout: {description: Seconds for the connection and each reply., type: float, default: 5}
  dry_run: {description: Count the matching keys and remove nothing., type: bool, default: false}
requirements: []
author: [aiadmin-ops contributors]
"""

EXAMPLES = r"""
- name: Count the context cache keys (dry run)
  redis_flush:
    password: "{{ vault_aiadmin_redis_password }}"
    dry_run: true
  no_log: true

- name: Flush the context cache
  redis_flush:
    password: "{{ vault_aiadmin_redis_password }}"
    pattern: "context:*"
  no_log: true
"""

RETURN = r"""
matched: {description: Distinct keys that matched the pattern., type: int, returned: success}
removed: {description: Keys UNLINK removed (0 in check mode and dry run)., type: int, returned: success}
batches: {description: UNLINK calls made., type: int, returned: success}
scans: {description: SCAN calls made (one full walk of the keyspace)., type: int, returned: success}
keys_before: {description: DBSIZE before., type: int, returned: success}
keys_after: {description: DBSIZE after., type: int, returned: success}
duration_ms: {description: Wall time of the module's work., type: float, returned: always}
msg: {description: One line for the operator., type: str, returned: always}
summary:
  description: The same line on failure, safe to show from a C(no_log) task's result (no secret in it).
  type: str
  returned: failure
"""

import time

from ansible.module_utils.module_start import start_module
from ansible.module_utils.redis_resp import Redis, RedisError


def argument_spec():
    return dict(
        host=dict(type="str", default="127.0.0.1"),
        port=dict(type="int", default=6379),
        username=dict(type="str"),
        password=dict(type="str", no_log=True),
        db=dict(type="int", default=0),
        pattern=dict(type="str", default="context:*"),
        batch_size=dict(type="int", default=500),
        pause_ms=dict(type="int", default=0),
        timeout=dict(type="float", default=5.0),
        dry_run=dict(type="bool", default=False),
    )


def validate(params):
    errors = []
    if not params["pattern"] or params["pattern"].strip("*") == "":
        errors.append("pattern %r would match every key: name a prefix (e.g. context:*)" % params["pattern"])
    if not 1 <= params["port"] <= 65535:
        errors.append("port must be between 1 and 65535, got %r" % params["port"])
    if not 1 <= params["batch_size"] <= 100000:
        errors.append("batch_size must be between 1 and 100000, got %r" % params["batch_size"])
    if params["pause_ms"] < 0 or params["db"] < 0 or params["timeout"] <= 0:
        errors.append("pause_ms and db must not be negative, timeout must be positive")
    if params["username"] and not params["password"]:
        errors.append("username needs password")
    return errors


def flush(client, params, remove):
    """One SCAN walk; each batch of matches UNLINKed (when remove). (matched, removed, batches, scans)."""
    seen, removed, batches, scans, cursor = set(), 0, 0, 0, b"0"
    pause = params["pause_ms"] / 1000.0
    while True:
        cursor, keys = client.command("SCAN", cursor, "MATCH", params["pattern"], "COUNT", params["batch_size"])
        scans += 1
        fresh = [k for k in keys if k not in seen]
        seen.update(fresh)
        for start in range(0, len(fresh), params["batch_size"]) if remove else ():
            removed += client.command("UNLINK", *fresh[start:start + params["batch_size"]])
            batches += 1
            if pause:
                time.sleep(pause)
        if cursor == b"0":
            return len(seen), removed, batches, scans


def main():
    module, started = start_module(argument_spec(), validate)
    params = module.params
    remove = not (module.check_mode or params["dry_run"])
    where = "%s:%s db %d" % (params["host"], params["port"], params["db"])
    try:
        with Redis(params["host"], params["port"], params["timeout"]) as client:
            if params["password"]:
                client.auth(params["password"], params["username"])
            if params["db"]:
                client.command("SELECT", params["db"])
            before = client.command("DBSIZE")
            matched, removed, batches, scans = flush(client, params, remove)
            after = client.command("DBSIZE")
    except RedisError as exc:
        msg = "redis_flush on %s: %s" % (where, exc)
        module.fail_json(msg=msg, summary=msg, duration_ms=round((time.monotonic() - started) * 1000, 1))
    msg = ("removed %d keys matching %s on %s in %d UNLINK batches (%d keys before, %d after)"
           % (removed, params["pattern"], where, batches, before, after) if remove else
           "dry run: %d keys match %s on %s; nothing removed" % (matched, params["pattern"], where))
    module.exit_json(changed=removed > 0, matched=matched, removed=removed, batches=batches, scans=scans,
                     keys_before=before, keys_after=after, msg=msg,
                     duration_ms=round((time.monotonic() - started) * 1000, 1))


if __name__ == "__main__":
    main()
