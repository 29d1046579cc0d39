#!/usr/bin/python3
"""Print, as JSON, every interface address inside the CIDR given as the only argument."""

import ipaddress
import json
import subprocess
import sys

network = ipaddress.ip_network(sys.argv[1], strict=False)
links = json.loads(subprocess.run(['ip', '-j', 'addr', 'show'], capture_output=True, text=True, check=True).stdout)
found = []
seen = []
for link in links:
    for info in link.get('addr_info', []):
        address = ipaddress.ip_address(info['local'])
        seen.append(f"{link['ifname']}={info['local']}/{info.get('prefixlen')}")
        if address.version == network.version and address in network:
            found.append({'interface': link['ifname'], 'address': info['local'], 'prefixlen': info.get('prefixlen')})
print(json.dumps({'found': found, 'seen': seen}))
