# Copyright: aiadmin-ops contributors
# SPDX-License-Identifier: MIT
"""Filters for the up-front input checks (playbooks/tasks/validate.yml):
`'10.0.0.5' | ip_in_network('10.0.0.0/24')`, `'db.example' | is_ip`, `'10.0.0.0/33' | is_network`."""

from __future__ import annotations

import ipaddress


def is_ip(value):
    try:
        ipaddress.ip_address(str(value))
    except ValueError:
        return False
    return True


def ip_in_network(value, cidr):
    """True when the address is in the network; False for anything that is not an address or a network."""
    try:
        return ipaddress.ip_address(str(value)) in ipaddress.ip_network(str(cidr), strict=False)
    except ValueError:
        return False


def is_network(value):
    try:
        ipaddress.ip_network(str(value), strict=False)
    except ValueError:
        return False
    return True


class FilterModule:
    def filters(self):
        return {"is_ip": is_ip, "is_network": is_network, "ip_in_network": ip_in_network}
