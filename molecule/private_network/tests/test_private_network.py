"""The go/no-go report matches what the instance really has (seen from outside)."""

import ipaddress
import json
import os
import pathlib
import re

import pytest
import testinfra

INSTANCES = ['mol-private_network-d12', 'mol-private_network-d13']
PRIVATE_CIDR = ipaddress.ip_network('10.213.20.0/24')
DB_PRIVATE = '10.213.20.10'
EPHEMERAL = pathlib.Path(os.environ['MOLECULE_EPHEMERAL_DIRECTORY'])


@pytest.fixture(params=INSTANCES)
def instance(request):
    return request.param, testinfra.get_host(f'podman://{request.param}')


def test_report_names_the_private_interface_address_route_and_rtt(instance):
    name, host = instance
    report = json.loads((EPHEMERAL / f'report-{name}.json').read_text())
    route = json.loads(host.check_output(f'ip -j route get {DB_PRIVATE}'))[0]
    assert report['interface'] == route['dev']
    assert report['address'] == route['prefsrc']
    assert ipaddress.ip_address(report['address']) in PRIVATE_CIDR
    addrs = json.loads(host.check_output(f"ip -j addr show dev {route['dev']}"))[0]['addr_info']
    assert report['address'] in [a['local'] for a in addrs]
    assert f"dev {route['dev']}" in report['route']
    assert re.match(r'^[0-9.]+/[0-9.]+/[0-9.]+ ms', report['rtt_ms']), report['rtt_ms']
    assert 0 < float(report['tcp_ms']) < 5000, report['tcp_ms']  # measured connect time, not the timeout
    assert report['query'].startswith('now()=')


def test_role_changed_nothing_but_the_driver(instance):
    _, host = instance
    assert host.package('python3-psycopg2').is_installed
    assert not host.user('aiadmin').exists
