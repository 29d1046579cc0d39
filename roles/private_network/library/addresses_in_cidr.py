#!/usr/bin/python
"""Ansible module: the host's interface addresses inside a CIDR (read-only)."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: addresses_in_cidr
short_description: Find the interface addresses that lie inside a network
description:
  - Reads C(ip -j addr show) and returns every address inside I(cidr) with its interface,
    plus every address seen (for the message when none is found).
  - Read-only; supports check mode.
options:
  cidr:
    description: The network, e.g. C(10.213.20.0/24).
    type: str
    required: true
author:
  - aiadmin-ops
"""

EXAMPLES = r"""
- name: Find an address on the private network
  addresses_in_cidr:
    cidr: 10.213.20.0/24
  register: _probe
"""

RETURN = r"""
found:
  description: The addresses inside I(cidr).
  returned: always
  type: list
  elements: dict
  sample: [{interface: eth1, address: 10.213.20.30, prefixlen: 24}]
seen:
  description: Every address of every interface, as C(interface=address/prefixlen).
  returned: always
  type: list
  elements: str
"""

import ipaddress
import json

from ansible.module_utils.basic import AnsibleModule


def main():
    module = AnsibleModule(argument_spec={"cidr": {"type": "str", "required": True}}, supports_check_mode=True)
    try:
        network = ipaddress.ip_network(module.params["cidr"], strict=False)
    except ValueError as exc:
        module.fail_json(msg=f"cidr: {exc}")
    rc, out, err = module.run_command(["ip", "-j", "addr", "show"])
    if rc != 0:
        module.fail_json(msg=f"ip -j addr show failed (rc {rc}): {err.strip()}")
    found, seen = [], []
    for link in json.loads(out):
        for info in link.get("addr_info", []):
            address = ipaddress.ip_address(info["local"])
            seen.append(f"{link['ifname']}={info['local']}/{info.get('prefixlen')}")
            if address.version == network.version and address in network:
                found.append({"interface": link["ifname"], "address": info["local"],
                              "prefixlen": info.get("prefixlen")})
    module.exit_json(changed=False, found=found, seen=seen)


if __name__ == "__main__":
    main()
