#!/usr/bin/python
"""Ansible module: which of some Debian packages are not installed yet (read-only)."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: deb_missing
short_description: List the Debian packages of a set that are not installed
description:
  - Asks C(dpkg-query) which of I(name) are installed and returns the others in C(missing).
  - Lets a role skip C(ansible.builtin.apt) when every package is present. A no-op C(apt) task
    opens the whole apt cache (about a second per task on a small VPS); this query reads only the
    dpkg status of the named packages.
  - A name with a version (C(pkg=1.2*)), a wildcard or a release (C(pkg/bookworm)) is always
    reported missing, so that C(apt) decides about it.
  - Read-only; supports check mode.
version_added: "1.0.0"
options:
  name:
    description: Package names, as given to C(ansible.builtin.apt) (C(pkg) or C(pkg:arch)).
    type: list
    elements: str
    required: true
author:
  - aiadmin-ops
"""

EXAMPLES = r"""
- name: Find the packages still to install
  deb_missing:
    name: [redis-server, logrotate]
  register: _missing

- name: Install them
  ansible.builtin.apt:
    name: "{{ _missing.missing }}"
    state: present
  when: _missing.missing | length > 0
"""

RETURN = r"""
missing:
  description: The names of I(name) that are not installed, in the given order.
  returned: always
  type: list
  elements: str
  sample: [redis-server]
installed:
  description: The names of I(name) that are installed.
  returned: always
  type: list
  elements: str
  sample: [logrotate]
"""

import re

from ansible.module_utils.basic import AnsibleModule

# Anything apt resolves beyond a plain (arch-qualified) package name.
_NOT_PLAIN = re.compile(r"[=*?\[/]")


def installed_names(module, names):
    """The subset of names whose dpkg status is `installed` (a removed package keeps a status)."""
    plain = [n for n in names if not _NOT_PLAIN.search(n)]
    if not plain:
        return set()
    # Missing packages go to stderr with rc 1; the others are still listed on stdout.
    rc, out, err = module.run_command(
        ["dpkg-query", "-W", "-f", "${Package}\t${Architecture}\t${db:Status-Status}\n", "--", *plain],
        environ_update={"LC_ALL": "C"},
    )
    if rc not in (0, 1):
        module.fail_json(msg=f"dpkg-query failed (rc {rc}): {err.strip()}")
    found = set()
    for line in out.splitlines():
        fields = line.split("\t")
        if len(fields) == 3 and fields[2] == "installed":
            found.update((fields[0], f"{fields[0]}:{fields[1]}"))
    return found


def main():
    module = AnsibleModule(
        argument_spec={"name": {"type": "list", "elements": "str", "required": True}},
        supports_check_mode=True,
    )
    names = [n.strip() for n in module.params["name"] if n and n.strip()]
    if not names:
        module.fail_json(msg="deb_missing: name is empty")
    found = installed_names(module, names)
    module.exit_json(
        changed=False,
        missing=[n for n in names if n not in found],
        installed=[n for n in names if n in found],
    )


if __name__ == "__main__":
    main()
