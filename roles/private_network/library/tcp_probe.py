#!/usr/bin/python
"""Ansible module: one timed TCP connect to an IP address and port (read-only)."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: tcp_probe
short_description: Connect once to an address and port and say how it went
description:
  - Opens one TCP connection to I(address) I(port) and closes it. Returns the connect time
    in milliseconds, or why it failed, telling a refused port (the host answered) from a
    timeout (no answer: filtered or black-holed).
  - Never fails the task itself; the caller decides (the private_network role stops the play).
  - Read-only; supports check mode. Uses the project's C(pg_gate) module_utils.
options:
  address:
    description: A numeric IPv4 or IPv6 address (no name resolution).
    type: str
    required: true
  port:
    description: The TCP port.
    type: int
    required: true
  timeout:
    description: Seconds to wait for the connection.
    type: float
    default: 5
author:
  - aiadmin-ops
"""

EXAMPLES = r"""
- name: Connect to the database's private address
  tcp_probe:
    address: 10.213.20.10
    port: 5432
    timeout: 5
  register: _tcp
"""

RETURN = r"""
connected:
  description: Whether the connection was established.
  returned: always
  type: bool
ms:
  description: Connect time in milliseconds (also on failure, the time until it failed).
  returned: always
  type: float
  sample: 0.4
error:
  description: Why the connection failed, e.g. C(10.213.20.10 port 5439 - Connection refused); empty on success.
  returned: always
  type: str
"""

import time

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.pg_gate import GateError, is_ip_address, numeric_address, tcp_connect


def main():
    module = AnsibleModule(
        argument_spec={
            "address": {"type": "str", "required": True},
            "port": {"type": "int", "required": True},
            "timeout": {"type": "float", "default": 5},
        },
        supports_check_mode=True,
    )
    address, port, timeout = module.params["address"], module.params["port"], module.params["timeout"]
    if not is_ip_address(address):
        module.fail_json(msg=f"address: {address!r} is not a numeric IP address")
    if not 1 <= port <= 65535 or timeout <= 0:
        module.fail_json(msg="port must be 1-65535 and timeout greater than 0")
    started = time.monotonic()
    try:
        sock, _, _ = tcp_connect(numeric_address(address, port), timeout)
    except GateError as exc:
        error = str(exc).removeprefix("TCP connect failed: ")
        module.exit_json(changed=False, connected=False, error=error,
                         ms=round((time.monotonic() - started) * 1000, 1))
    sock.close()
    module.exit_json(changed=False, connected=True, error="", ms=round((time.monotonic() - started) * 1000, 1))


if __name__ == "__main__":
    main()
