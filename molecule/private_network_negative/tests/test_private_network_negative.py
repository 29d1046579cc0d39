"""After a NO-GO, provision.yml stopped for every host before anything else ran."""

import os
import pathlib
import re

import pytest
import testinfra

INSTANCES = ['mol-private_network_negative-d12', 'mol-private_network_negative-d13']
OUTPUT = pathlib.Path(os.environ['MOLECULE_EPHEMERAL_DIRECTORY']) / 'provision-output.txt'


def test_one_clear_message_naming_the_step():
    text = OUTPUT.read_text()
    assert re.search(r'^rc: [1-9]', text, re.M)
    messages = re.findall(r"private_network NO-GO at step '(\w+)'", text)
    assert messages and set(messages) == {'interface'}
    assert 'no interface has an address in 10.213.20.0/24' in text
    # The host that failed is the one off the private network.
    assert re.search(r'fatal: \[mol-private_network_negative-d12\]', text)


def test_no_later_play_started():
    text = OUTPUT.read_text()
    assert 'PLAY [Provision the host' not in text
    assert 'TASK [base' not in text


@pytest.mark.parametrize('name', INSTANCES)
def test_nothing_was_provisioned(name):
    host = testinfra.get_host(f'podman://{name}')
    # base never ran on either host (any_errors_fatal), even on the one that passed its own checks.
    assert not host.user('aiadmin').exists
    assert not host.package('nftables').is_installed
    assert not host.package('redis-server').is_installed
    assert not host.file('/root/.cloud-certs').exists
