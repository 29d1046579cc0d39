#!/usr/bin/python
"""Ansible module: change a PostgreSQL role's password to a SCRAM-SHA-256 verifier computed on the
client (the plaintext never reaches the server or its logs), and prove which password logs in.
The verifier is module_utils/pg_scram.py."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: pg_role_password
short_description: Rotate a PostgreSQL role's password, pre-hashed as SCRAM-SHA-256 on the client
description:
  - Logs in twice first, with I(password) (the current one) and with I(new_password), and returns
    which works - the live state a rotation decides on.
  - I(state=set) - when the new password already logs in and the current one does not, there is
    nothing to do. Otherwise, logged in with the current password, it runs
    C(ALTER ROLE <role> PASSWORD '<verifier>') with a SCRAM-SHA-256 verifier it computes itself
    (SASLprep, a random 16-byte salt, 4096 iterations, as PostgreSQL does), so that the server, and
    a C(log_statement = ddl) log, only ever see the verifier. Then it proves the new password logs
    in and the old one is refused.
  - A role may change its own password; another role's needs C(CREATEROLE).
  - I(state=check) and check mode only log in and report.
  - Neither password nor the verifier is ever returned or logged.
version_added: "1.0.0"
extends_documentation_fragment: [pg_connection]
options:
  application_name: {description: application_name of the module's sessions., type: str,
                     default: aiadmin-ops-role-password}
  new_password: {description: The new password (vault)., type: str, required: true}
  role: {description: The role whose password changes (default I(user))., type: str}
  state:
    description: C(set) changes the password when needed; C(check) only reports which password logs in.
    type: str
    choices: [set, check]
    default: set
requirements: [psycopg (3) or psycopg2]
author: [aiadmin-ops contributors]
"""

EXAMPLES = r"""
- name: Rotate the app's database password
  pg_role_password:
    host: "{{ aiadmin_db_host }}"
    database: ai_admin
    user: ai_admin
    password: "{{ vault_aiadmin_db_password }}"
    new_password: "{{ vault_aiadmin_db_password_next }}"
    ssl_rootcert: /root/.cloud-certs/root.crt
  no_log: true
"""

RETURN = r"""
current_works: {description: The current password (I(password)) logged in, before any change., type: bool,
                returned: success}
new_works: {description: The new password logged in, before any change., type: bool, returned: success}
current_refused_after:
  description: After the change, the current password is refused (the proof that it changed).
  type: bool
  returned: state=set and changed
new_works_after: {description: After the change, the new password logs in., type: bool, returned: state=set and changed}
role: {description: The role., type: str, returned: always}
msg: {description: One line for the operator (no secret in it)., type: str, returned: always}
summary: {description: The same line, safe to repeat from a C(no_log) task's result., type: str, returned: always}
duration_ms: {description: Wall time of the module's work., type: float, returned: always}
"""

import time

from ansible.module_utils.module_start import start_module
from ansible.module_utils.pg_gate import (
    GateError,
    close_quietly,
    common_argument_spec,
    driver_connect,
    load_driver,
    validate_common,
)
from ansible.module_utils.pg_scram import verifier


def argument_spec():
    spec = common_argument_spec()
    spec["application_name"]["default"] = "aiadmin-ops-role-password"
    spec.update(
        new_password=dict(type="str", required=True, no_log=True),
        role=dict(type="str"),
        state=dict(type="str", choices=["set", "check"], default="set"),
    )
    return spec


def validate(params):
    errors = validate_common(params)
    if not params["new_password"]:
        errors.append("new_password must not be empty")
    elif params["new_password"] == params["password"]:
        errors.append("new_password is the current password: nothing would rotate")
    if params["role"] is not None and not params["role"].strip():
        errors.append("role must not be empty")
    return errors


def logs_in(driver, params, password):
    """(True, '') when the password logs in; (False, the driver's one-line error) otherwise."""
    try:
        conn = driver_connect(driver, dict(params, password=password))
    except GateError as exc:
        return False, str(exc)
    close_quietly(conn)
    return True, ""


def quote_ident(name):
    return '"%s"' % name.replace('"', '""')


def main():
    module, started = start_module(argument_spec(), validate)
    params = module.params
    role = params["role"] or params["user"]
    where = "%s:%s/%s" % (params["host"], params["port"], params["database"])

    def finish(failed=False, **result):
        result.update(role=role, summary=result["msg"], duration_ms=round((time.monotonic() - started) * 1000, 1))
        (module.fail_json if failed else module.exit_json)(**result)

    try:
        driver = load_driver(params["driver"])
    except GateError as exc:
        finish(failed=True, msg="pg_role_password: %s" % exc)
    current, current_err = logs_in(driver, params, params["password"])
    new, new_err = logs_in(driver, params, params["new_password"])
    seen = dict(current_works=current, new_works=new, changed=False)
    if params["state"] == "check" or (new and not current):
        state = ("the new password logs in and the current one does not: already rotated" if new and not current
                 else "current password %s, new password %s" % ("logs in" if current else "refused",
                                                              "logs in" if new else "refused"))
        finish(msg="%s as %s on %s: %s" % (role, params["user"], where, state), **seen)
    if not current:
        finish(failed=True, msg="cannot log in to %s as %s with the current password (%s), nor with the new one "
               "(%s): nothing changed" % (where, params["user"], current_err, new_err), **seen)
    if module.check_mode:
        finish(msg="check mode: would set the password of %s on %s (SCRAM-SHA-256, hashed here)" % (role, where),
               **dict(seen, changed=True))
    conn = None
    try:
        conn = driver_connect(driver, params)
        cur = conn.cursor()
        # The verifier is a literal: ALTER ROLE takes no parameters. It is base64 and '$:' only.
        cur.execute("ALTER ROLE %s PASSWORD '%s'" % (quote_ident(role), verifier(params["new_password"])))
        conn.commit()
    except GateError as exc:
        finish(failed=True, msg="cannot reach %s: %s" % (where, exc), **seen)
    except Exception as exc:  # the driver's error: permission, a read-only server
        finish(failed=True, msg="ALTER ROLE %s on %s failed: %s" % (role, where, " ".join(str(exc).split())[:300]),
               **seen)
    finally:
        close_quietly(conn)
    new_after, new_err = logs_in(driver, params, params["new_password"])
    old_after, _ = logs_in(driver, params, params["password"])
    seen.update(changed=True, new_works_after=new_after, current_refused_after=not old_after)
    if not new_after or old_after:
        finish(failed=True, msg="the password of %s on %s was changed, but the new one %s and the old one %s" % (
            role, where, "logs in" if new_after else "is refused (%s)" % new_err,
            "still logs in" if old_after else "is refused"), **seen)
    finish(msg="the password of %s on %s is the new one (SCRAM-SHA-256 verifier computed here); the old one is "
           "refused" % (role, where), **seen)


if __name__ == "__main__":
    main()
