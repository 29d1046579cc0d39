#!/usr/bin/python
"""Ansible module: the app's acknowledged writes a (restored) database lacks - the recovery point in writes."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: acked_writes
short_description: Count the acknowledged webhook writes that a restored database lacks
description:
  - >-
    Disaster recovery's measure of lost data. The API logs one line per acknowledged write, after its commit
    - C(<ISO time> [<role>] webhook: acknowledged message <row>), then the message id in parentheses
    (app/src/main.js). This module reads those lines from the app's logs and asks the database, in one query,
    which of the acknowledged rows it holds. An acknowledged row it lacks is a lost write.
  - Only acknowledgements logged (by the app's own time) at or after I(since) count - the time the backup that
    was restored started, say. The same row acknowledged twice (a log read twice) counts once.
  - >-
    Lines may carry the timestamp prefix PM2 writes with C(time: true) (C(YYYY-MM-DDTHH:mm:ss: ), local time);
    the app's own time after it is the one judged. Other lines are ignored.
  - I(log_paths) are globs; every regular file they match is read, C(.gz) ones (rotated by logrotate) with
    gzip. No matching file at all is a failure (an empty measure would read as no loss), unless
    I(missing_logs=unknown) - a host rebuilt after a loss has no log of the writes it acknowledged, and the
    count is then reported as not known (RV(counted) false), never as zero.
  - Row ids are compared only; run it before the app writes into the restored database, whose sequence may
    hand out the lost ids again.
  - Read-only, and so the same in check mode; RV(changed) is always false. Fails when no log file matches,
    a log cannot be read, or the database cannot be reached or read (one line of the driver's error).
extends_documentation_fragment: [pg_connection]
version_added: "1.0.0"
options:
  log_paths:
    description: Globs of the API's PM2 out logs, rotated ones included.
    type: list
    elements: path
    required: true
  since:
    description: ISO 8601 time with a UTC offset (C(Z) included); earlier acknowledgements are not counted.
    type: str
    required: true
  complete_from:
    description:
      - The time from which the count must be complete (default I(since)) - the dump's start, say. Logs that
        begin later (a host rebuilt after the loss) give RV(complete) false, and the count is a lower bound.
    type: str
  missing_logs:
    description: No log file matching I(log_paths) - C(fail), or C(unknown) (RV(counted) false, RV(lost) null).
    type: str
    choices: [fail, unknown]
    default: fail
  table:
    description: The table of the acknowledged rows (schema-qualified or in C(public)); its C(id) column is read.
    type: str
    default: messages
  application_name: {description: application_name of the module's session., type: str,
                     default: aiadmin-ops-acked-writes}
requirements: [psycopg (3) or psycopg2]
author:
  - aiadmin-ops
"""

EXAMPLES = r"""
- name: How many acknowledged writes did the restore lose?
  acked_writes:
    host: 10.0.0.11
    database: ai_admin
    user: ai_admin
    password: "{{ vault_aiadmin_db_password }}"
    ssl_rootcert: /root/.cloud-certs/root.crt
    log_paths: [/opt/ai-admin/shared/logs/ai-admin-api.out.log*]
    since: "{{ extracted.backup.started }}"
  no_log: true
  register: rpo

- name: Report the recovery point in writes
  ansible.builtin.debug:
    msg: "{{ rpo.summary }}"
"""

RETURN = r"""
msg: {description: One human line about the outcome (names no secret)., returned: always, type: str}
summary: {description: The same line (repeated by failure_message when the task is no_log)., returned: always,
          type: str}
complete: {description: Whether the logs begin at or before I(complete_from) (the count is exact).,
           returned: success, type: bool}
logs_begin_at: {description: The earliest time of any app line in the logs (UTC)., returned: success, type: str}
counted: {description: Whether a log was read (false only with I(missing_logs=unknown))., returned: success, type: bool}
acked: {description: Distinct rows acknowledged at or after I(since) (null when not counted)., returned: success,
        type: int}
present: {description: Those of them the database holds., returned: success, type: int}
lost: {description: Those of them the database lacks (acknowledged writes lost)., returned: success, type: int}
lost_rows:
  description: The first 50 lost row ids, ascending.
  returned: success
  type: list
  elements: int
first_lost_at: {description: "When the earliest lost write was acknowledged (ISO 8601, UTC), or null.",
                returned: success, type: str}
last_lost_at: {description: "When the latest lost write was acknowledged (ISO 8601, UTC), or null.",
               returned: success, type: str}
last_acked_at: {description: "The latest acknowledgement at or after I(since) (ISO 8601, UTC), or null.",
                returned: success, type: str}
files_read:
  description: The log files read, in the order read.
  returned: success, and a failure after the logs were found
  type: list
  elements: str
duration_s: {description: Wall time of the module's work., returned: always, type: float}
"""

import datetime
import glob
import gzip
import os
import re
import time

from ansible.module_utils.backup_catalog import parse_time
from ansible.module_utils.module_start import start_module
from ansible.module_utils.pg_backup_job import qualified, sql_quote
from ansible.module_utils.pg_gate import (
    GateError,
    close_quietly,
    common_argument_spec,
    driver_connect,
    load_driver,
    one_line,
    validate_common,
)

# The app's line (app/src/main.js, webhook()), after the optional prefix of PM2's `time: true`.
ACK_LINE = re.compile(r"^(?:\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}: )?"
                      r"(?P<time>\S+) \[[^\]]+\] webhook: acknowledged message (?P<row>\d+) \((?P<id>.*)\)$")
# Any line of the app (its ISO time and [role]), for where the logs begin.
APP_LINE = re.compile(r"^(?:\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}: )?(?P<time>\d{4}-\d{2}-\d{2}T\S+) \[")
LOST_ROWS_MAX = 50
STATEMENT_TIMEOUT_MS = 60000
UTC = datetime.timezone.utc


class AckedError(Exception):
    def __init__(self, message, **result):
        super().__init__(message)
        self.result = result


def stamp(value):
    return None if value is None else value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def log_files(patterns):
    """Every regular file the globs match, each once, in glob order (sorted per glob)."""
    found = []
    for pattern in patterns:
        for path in sorted(glob.glob(pattern)):
            if os.path.isfile(path) and path not in found:
                found.append(path)
    if not found:
        raise AckedError("no log file matches %s" % ", ".join(patterns))
    return found


def acknowledgements(files, since):
    """({row: earliest acknowledgement time at or after since}, the earliest time of any app line)."""
    acked, begins = {}, None
    for path in files:
        opener = gzip.open if path.endswith(".gz") else open
        try:
            with opener(path, "rt", encoding="utf-8", errors="replace") as fh:
                for line in fh:
                    line = line.rstrip("\r\n")
                    first = APP_LINE.match(line)
                    if first:
                        try:
                            stamp_at = parse_time(first.group("time"))
                            begins = stamp_at if begins is None or stamp_at < begins else begins
                        except ValueError:
                            pass
                    match = ACK_LINE.match(line)
                    if not match:
                        continue
                    try:
                        when = parse_time(match.group("time"))
                    except ValueError:
                        continue  # not the app's ISO time: not one of its lines
                    row = int(match.group("row"))
                    if when >= since and (row not in acked or when < acked[row]):
                        acked[row] = when
        except (OSError, EOFError) as exc:  # EOFError: a truncated .gz
            raise AckedError("cannot read %s: %s" % (path, one_line(str(exc), 300)), files_read=files) from exc
    return acked, begins


def present_rows(params, rows, files):
    """The rows of `rows` the table holds: one query."""
    where = "%s:%s/%s" % (params["host"], params["port"], params["database"])
    try:
        conn = driver_connect(load_driver(params["driver"]), params)
    except GateError as exc:  # no driver, or the driver's connect error (one line)
        raise AckedError("cannot reach %s: %s" % (where, exc), files_read=files) from exc
    try:
        cur = conn.cursor()
        cur.execute("SET statement_timeout = %d" % STATEMENT_TIMEOUT_MS)
        cur.execute("SELECT id FROM %s.%s WHERE id = ANY(%%s::bigint[])"  # noqa: S608 (quoted identifiers)
                    % tuple(map(sql_quote, qualified(params["table"]))), (sorted(rows),))
        return {int(r[0]) for r in cur.fetchall()}
    except Exception as exc:  # the driver's errors: a missing table, a timeout, a lost connection
        raise AckedError("cannot read %s.%s on %s: %s" % (*qualified(params["table"]), where,
                                                           one_line(str(exc), 400)), files_read=files) from exc
    finally:
        close_quietly(conn)


def measure(params):
    since = parse_time(params["since"])
    name = "%s.%s" % qualified(params["table"])
    try:
        files = log_files(params["log_paths"])
    except AckedError:
        if params["missing_logs"] != "unknown":
            raise
        return {"changed": False, "counted": False, "acked": None, "present": None, "lost": None, "lost_rows": [],
                "first_lost_at": None, "last_lost_at": None, "last_acked_at": None, "files_read": [],
                "logs_begin_at": None, "complete": False,
                "msg": "the acknowledged writes since %s cannot be counted: no log file matches %s (lost with the "
                       "host?)" % (stamp(since), ", ".join(params["log_paths"]))}
    acked, begins = acknowledgements(files, since)
    complete_from = parse_time(params["complete_from"]) if params["complete_from"] else since
    complete = begins is not None and begins <= complete_from
    present = present_rows(params, acked, files)
    lost = sorted(set(acked) - present)
    lost_times = [acked[r] for r in lost]
    result = {
        "changed": False, "counted": True, "acked": len(acked), "present": len(acked) - len(lost), "lost": len(lost),
        "lost_rows": lost[:LOST_ROWS_MAX], "first_lost_at": stamp(min(lost_times, default=None)),
        "last_lost_at": stamp(max(lost_times, default=None)),
        "last_acked_at": stamp(max(acked.values(), default=None)), "files_read": files,
        "logs_begin_at": stamp(begins), "complete": complete,
    }
    detail = ""
    if lost:
        detail = " (rows %s%s, acknowledged %s to %s)" % (
            ", ".join(map(str, lost[:5])), ", ..." if len(lost) > 5 else "", result["first_lost_at"],
            result["last_lost_at"])
    result["msg"] = "%s%d acknowledged writes lost of %d since %s%s: %d in %s on %s/%s; %d log files read" % (
        "" if complete else "at least ", len(lost), len(acked), stamp(since), detail, result["present"], name,
        params["host"], params["database"], len(files))
    if not complete:
        result["msg"] += "; the logs begin at %s, after %s: earlier acknowledgements are not in them" % (
            stamp(begins), stamp(complete_from))
    return result


def argument_spec():
    spec = common_argument_spec()
    spec["application_name"]["default"] = "aiadmin-ops-acked-writes"
    spec.update(
        log_paths=dict(type="list", elements="path", required=True),
        since=dict(type="str", required=True),
        table=dict(type="str", default="messages"),
        missing_logs=dict(type="str", default="fail", choices=["fail", "unknown"]),
        complete_from=dict(type="str"),
    )
    return spec


def validate(params):
    errors = validate_common(params)
    if not params["log_paths"] or any(not p for p in params["log_paths"]):
        errors.append("log_paths must list at least one glob, none empty")
    for key in ("since", "complete_from"):
        try:
            if key == "since" or params[key]:
                parse_time(params[key])
        except ValueError as exc:
            errors.append("%s must be an ISO 8601 time with a UTC offset: %s" % (key, exc))
    if not (params["table"] or "").strip(".") or not qualified(params["table"])[1]:
        errors.append("table must name a table")
    return errors


def main():
    module, started = start_module(argument_spec(), validate)
    try:
        result = measure(module.params)
    except AckedError as exc:
        msg = "acked_writes: %s" % exc
        module.fail_json(msg=msg, summary=msg, duration_s=round(time.monotonic() - started, 3), **exc.result)
    result.update(summary=result["msg"], duration_s=round(time.monotonic() - started, 3))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
