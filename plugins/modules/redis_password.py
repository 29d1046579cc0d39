#!/usr/bin/python
"""Ansible module: rotate a Redis ACL user's password in two steps, so that both passwords are valid
while the clients switch. The client is module_utils/redis_resp.py."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: redis_password
short_description: Add or remove a password of a Redis ACL user (both valid during a rotation)
description:
  - Logs in first with I(password) and with I(new_password) and returns which works.
  - I(state=add) - C(ACL SETUSER <user> on >new_password), logged in with whichever password works;
    the user keeps its other passwords, so clients on the current one keep working while they
    switch. Nothing to do when the new one already logs in.
  - I(state=remove) - C(ACL SETUSER <user> <password), logged in with I(new_password); the current
    one stops working. Nothing to do when it is already refused. Refused (nothing changed) unless
    the new one logs in, so the user is never left without a password that works.
  - I(state=check) and check mode only log in and report.
  - The live server changes; persisting the password in C(redis.conf) is the redis role's job, after.
    The passwords travel only inside the connection and are never returned.
version_added: "1.0.0"
options:
  host: {description: Redis host (loopback)., type: str, default: 127.0.0.1}
  port: {description: Redis port., type: int, default: 6379}
  username: {description: The ACL user (C(default) is the one C(requirepass) sets)., type: str, default: default}
  password: {description: The current password., type: str, required: true}
  new_password: {description: The next password., type: str, required: true}
  state:
    description: C(add) the new password, C(remove) the current one, or C(check).
    type: str
    choices: [add, remove, check]
    default: check
  timeout: {description: Seconds for the connection and each reply., type: float, default: 5}
requirements: []
author: [aiadmin-ops contributors]
"""

EXAMPLES = r"""
- name: Both passwords valid, the clients switched, then the old one removed
  redis_password:
    password: "{{ vault_aiadmin_redis_password }}"
    new_password: "{{ vault_aiadmin_redis_password_next }}"
    state: "{{ item }}"
  loop: [add, remove]
  no_log: true
"""

RETURN = r"""
current_works: {description: The current password logged in, before any change., type: bool, returned: success}
new_works: {description: The new password logged in, before any change., type: bool, returned: success}
current_works_after: {description: The same after the change., type: bool, returned: success}
new_works_after: {description: The same after the change., type: bool, returned: success}
msg: {description: One line for the operator (no secret in it)., type: str, returned: always}
summary: {description: The same line, safe to repeat from a C(no_log) task's result., type: str, returned: always}
"""

from ansible.module_utils.module_start import start_module
from ansible.module_utils.redis_resp import Redis, RedisError


def argument_spec():
    return dict(
        host=dict(type="str", default="127.0.0.1"),
        port=dict(type="int", default=6379),
        username=dict(type="str", default="default"),
        password=dict(type="str", required=True, no_log=True),
        new_password=dict(type="str", required=True, no_log=True),
        state=dict(type="str", choices=["add", "remove", "check"], default="check"),
        timeout=dict(type="float", default=5.0),
    )


def validate(params):
    errors = []
    if not params["new_password"] or not params["password"]:
        errors.append("password and new_password must not be empty")
    elif params["new_password"] == params["password"]:
        errors.append("new_password is the current password: nothing would rotate")
    if not params["username"]:
        errors.append("username must not be empty")
    return errors


def logs_in(params, password):
    try:
        with Redis(params["host"], params["port"], params["timeout"]) as client:
            client.auth(password, params["username"])
            return True
    except RedisError as exc:
        if "authentication failed" in str(exc):
            return False
        raise


def main():
    module, _ = start_module(argument_spec(), validate)
    p = module.params
    where = "%s:%s user %s" % (p["host"], p["port"], p["username"])

    def finish(failed=False, **result):
        result["summary"] = result["msg"]
        (module.fail_json if failed else module.exit_json)(**result)

    try:
        current, new = logs_in(p, p["password"]), logs_in(p, p["new_password"])
        seen = dict(current_works=current, new_works=new, current_works_after=current, new_works_after=new,
                    changed=False)
        words = "current password %s, new password %s" % ("logs in" if current else "refused",
                                                            "logs in" if new else "refused")
        if not (current or new):
            finish(failed=True, msg="%s: neither password logs in: nothing changed" % where, **seen)
        todo = {"add": not new, "remove": current}.get(p["state"], False)
        if p["state"] == "remove" and not new:
            finish(failed=True, msg="%s: %s; the current one is kept until the new one works" % (where, words), **seen)
        if not todo or module.check_mode:
            finish(msg="%s: %s%s" % (where, words, "; check mode: would %s" % p["state"] if todo else ""),
                   **dict(seen, changed=todo))
        with Redis(p["host"], p["port"], p["timeout"]) as client:
            client.auth(p["new_password"] if new else p["password"], p["username"])
            client.command("ACL", "SETUSER", p["username"], "on", (">" if p["state"] == "add" else "<")
                           + (p["new_password"] if p["state"] == "add" else p["password"]))
        seen.update(changed=True, current_works_after=logs_in(p, p["password"]),
                    new_works_after=logs_in(p, p["new_password"]))
    except RedisError as exc:
        finish(failed=True, msg="redis_password on %s: %s" % (where, exc))
    finish(msg="%s: %s the %s password (now: current %s, new %s)" % (
        where, "added" if p["state"] == "add" else "removed", "new" if p["state"] == "add" else "current",
        "logs in" if seen["current_works_after"] else "refused", "logs in" if seen["new_works_after"] else "refused"),
        **seen)


if __name__ == "__main__":
    main()
