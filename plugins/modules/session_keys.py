#!/usr/bin/python
"""Ansible module: expired WhatsApp session keys, counted (health) or removed in batches (cleanup).
The SQL and the batching live in module_utils/session_keys.py."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: session_keys
short_description: Count the expired WhatsApp session keys per company and age bucket, or delete them in batches
description:
  - The runbook's rule - a key of C(whatsapp_keys) is expired when C(expires_at < now()) or when it
    was not updated for I(max_age_days) days. Expired keys are counted in the age buckets
    C(0-1d), C(1-7d), C(7-14d), C(14-30d) (time since C(expires_at)) and C(>30d) (not updated for
    I(max_age_days), or expired longer ago than that), per company and in total.
  - I(state=health) reads, in one read-only transaction, the total keys, the auth records
    (C(whatsapp_auth)), the expired keys, and how many of them a cleanup may delete; C(level) is
    C(warning) above I(warn_count) expired keys and C(critical) above I(critical_count).
  - I(state=cleanup) deletes the deletable expired keys company by company in batches of
    I(batch_size), each batch its own transaction with C(lock_timeout) and C(statement_timeout)
    set locally, I(pause_ms) between batches. The expiry condition is part of the C(DELETE), so a
    key the app refreshes while a batch waits is kept. A batch that times out (a lock held by
    another session) is rolled back whole and the module fails naming it; the batches before it
    stay committed and are reported in C(deleted).
  - Never deleted - the credentials (C(whatsapp_auth) is only counted) and any key of a type in
    I(protected_key_types) (keys a live session still needs; deleting them breaks message
    decryption).
  - Check mode and I(dry_run=true) count what a cleanup would delete inside a read-only
    transaction and delete nothing.
version_added: "1.0.0"
extends_documentation_fragment: [pg_connection]
options:
  application_name: {description: application_name of the module's session., type: str,
                     default: aiadmin-ops-session-keys}
  state:
    description: C(health) counts; C(cleanup) deletes the deletable expired keys.
    type: str
    choices: [health, cleanup]
    default: health
  companies:
    description: Company ids to look at (default every company).
    type: list
    elements: str
    default: []
  max_age_days: {description: A key not updated for this many days is expired., type: int, default: 30}
  warn_count: {description: More expired keys than this is a warning., type: int, default: 100}
  critical_count: {description: More expired keys than this is critical., type: int, default: 250}
  protected_key_types:
    description: Key types never deleted, whatever their age.
    type: list
    elements: str
    default: [app-state-sync-key, app-state-sync-version, creds]
  batch_size: {description: Keys deleted per transaction., type: int, default: 1000}
  pause_ms: {description: Pause between two batches, in milliseconds., type: int, default: 100}
  lock_timeout_ms: {description: C(lock_timeout) of each batch, in milliseconds., type: int, default: 2000}
  statement_timeout_ms: {description: C(statement_timeout) of each batch, in milliseconds., type: int, default: 30000}
  dry_run:
    description: With I(state=cleanup), count what would be deleted and delete nothing.
    type: bool
    default: false
requirements: [psycopg (3) or psycopg2]
author: [aiadmin-ops contributors]
"""

EXAMPLES = r"""
- name: Expired session keys, a dry run, then the cleanup of one company
  module_defaults:
    session_keys:
      host: "{{ aiadmin_db_host }}"
      database: "{{ aiadmin_db_name }}"
      user: "{{ aiadmin_db_user }}"
      password: "{{ aiadmin_db_password }}"
      ssl_rootcert: "{{ aiadmin_db_ca_path }}"
  block:
    - name: Health (counts per company and bucket, the level)
      session_keys:
      register: keys
      no_log: true

    - name: Dry run, then the cleanup
      session_keys:
        state: cleanup
        companies: ["1001"]
        dry_run: "{{ item }}"
      loop: [true, false]
      no_log: true
"""

RETURN = r"""
level:
  description: C(ok), C(warning) or C(critical) (the expired keys against the thresholds).
  type: str
  returned: success
total_keys: {description: Keys in C(whatsapp_keys) (of I(companies))., type: int, returned: success}
auth_records: {description: Rows of C(whatsapp_auth) (of I(companies))., type: int, returned: success}
expired: {description: Expired keys (before a cleanup)., type: int, returned: success}
deletable: {description: Expired keys a cleanup may delete (not a protected type)., type: int, returned: success}
buckets:
  description: Expired keys per age bucket.
  type: dict
  returned: success
  sample: {"0-1d": 10, "1-7d": 15, "7-14d": 10, "14-30d": 10, ">30d": 15}
deletable_buckets: {description: Deletable expired keys per age bucket., type: dict, returned: success}
companies:
  description: Per company id - expired, deletable, buckets, deletable_buckets, level.
  type: dict
  returned: success
deleted:
  description: >-
    What the cleanup deleted - total, buckets, and per company (total, buckets); zero in check
    mode and dry run.
  type: dict
  returned: state=cleanup
would_delete:
  description: In check mode or dry run, the deletable keys per bucket.
  type: dict
  returned: state=cleanup
batches: {description: Committed batches., type: int, returned: state=cleanup}
remaining:
  description: Expired keys after the cleanup (a new count; protected types and keys that expired meanwhile).
  type: int
  returned: state=cleanup and not dry run
duration_ms: {description: Wall time of the module's work., type: float, returned: always}
msg: {description: One line for the operator., type: str, returned: always}
summary:
  description: The same line on failure, safe to show from a C(no_log) task's result (no secret in it).
  type: str
  returned: failure
"""

import time

from ansible.module_utils.module_start import start_module
from ansible.module_utils.pg_gate import (
    GateError,
    check_range,
    close_quietly,
    common_argument_spec,
    driver_connect,
    load_driver,
    validate_common,
)
from ansible.module_utils.session_keys import DEFAULT_PROTECTED, cleanup, health


def argument_spec():
    spec = common_argument_spec()
    spec["application_name"]["default"] = "aiadmin-ops-session-keys"
    spec.update(
        state=dict(type="str", choices=["health", "cleanup"], default="health"),
        companies=dict(type="list", elements="str", default=[]),
        max_age_days=dict(type="int", default=30),
        warn_count=dict(type="int", default=100),
        critical_count=dict(type="int", default=250),
        protected_key_types=dict(type="list", elements="str", default=list(DEFAULT_PROTECTED)),
        batch_size=dict(type="int", default=1000),
        pause_ms=dict(type="int", default=100),
        lock_timeout_ms=dict(type="int", default=2000),
        statement_timeout_ms=dict(type="int", default=30000),
        dry_run=dict(type="bool", default=False),
    )
    return spec


def validate(params):
    errors = validate_common(params)
    check_range(errors, params, "max_age_days", 1, 3650)
    check_range(errors, params, "warn_count", 0)
    check_range(errors, params, "critical_count", 0)
    check_range(errors, params, "batch_size", 1, 100000)
    check_range(errors, params, "pause_ms", 0, 600000)
    check_range(errors, params, "lock_timeout_ms", 1, 600000)
    check_range(errors, params, "statement_timeout_ms", 1, 3600000)
    if params["critical_count"] is not None and params["warn_count"] is not None \
            and params["critical_count"] < params["warn_count"]:
        errors.append("critical_count (%d) must not be below warn_count (%d)" % (
            params["critical_count"], params["warn_count"]))
    if any(not c.strip() for c in params["companies"]):
        errors.append("companies must not hold an empty id")
    return errors


def summary(counts):
    return "%s: %d expired of %d keys (%s), %d deletable; %d auth records" % (
        counts["level"].upper(), counts["expired"], counts["total_keys"],
        ", ".join("%s %d" % kv for kv in counts["buckets"].items()), counts["deletable"], counts["auth_records"])


def main():
    module, started = start_module(argument_spec(), validate)
    params = module.params
    conn = None
    try:
        conn = driver_connect(load_driver(params["driver"]), params)
        counts = health(conn, params)
        result = dict(counts, changed=False)
        if params["state"] == "health":
            result["msg"] = summary(counts)
        elif module.check_mode or params["dry_run"]:
            result.update(deleted={"total": 0}, batches=0, would_delete=counts["deletable_buckets"],
                          msg="dry run: would delete %d of %d expired keys (%s); nothing deleted" % (
                              counts["deletable"], counts["expired"],
                              ", ".join("%s %d" % kv for kv in counts["deletable_buckets"].items())))
        else:
            todo = sorted(c for c, entry in counts["companies"].items() if entry["deletable"])
            deleted, batches, error = cleanup(conn, params, todo)
            result.update(deleted=deleted, batches=batches, changed=deleted["total"] > 0)
            if error:
                result["duration_ms"] = round((time.monotonic() - started) * 1000, 1)
                msg = "cleanup stopped after deleting %d keys in %d batches: %s" % (deleted["total"], batches, error)
                module.fail_json(msg=msg, summary=msg, **result)
            result["remaining"] = health(conn, params)["expired"]
            result["msg"] = "deleted %d expired keys in %d batches (%s); %d expired keys remain (protected types)" % (
                deleted["total"], batches, ", ".join("%s %d" % kv for kv in deleted["buckets"].items()),
                result["remaining"])
    except GateError as exc:
        msg = "cannot reach %s:%s/%s: %s" % (params["host"], params["port"], params["database"], exc)
        module.fail_json(msg=msg, summary=msg, duration_ms=round((time.monotonic() - started) * 1000, 1))
    except Exception as exc:  # the driver's error during a read: name it, never a traceback
        msg = "session_keys failed: %s" % " ".join(str(exc).split())[:500]
        module.fail_json(msg=msg, summary=msg, duration_ms=round((time.monotonic() - started) * 1000, 1))
    finally:
        close_quietly(conn)
    result["duration_ms"] = round((time.monotonic() - started) * 1000, 1)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
