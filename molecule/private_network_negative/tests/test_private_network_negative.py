"""After a NO-GO, provision.yml stopped for every host before anything else ran."""

import os
import pathlib
import re

import pytest
import testinfra

INSTANCES = ['mol-private_network_negative-d12', 'mol-private_network_negative-d13']
EPHEMERAL = pathlib.Path(os.environ['MOLECULE_EPHEMERAL_DIRECTORY'])
# side_effect.yml's faults: the step each must stop at, and what its message must say.
FAULTS = {
    'route': ('route', r'no route to 10\.213\.20\.10 via eth\d+ \(route goes via eth\d+\)'),
    'ping': ('ping', r'no ping reply from 10\.213\.20\.10 via eth\d+ \(3 packets transmitted, 0 received'),
    # A refused port is told apart from one that does not answer.
    'tcp-refused': ('tcp', r'no TCP connection to 10\.213\.20\.10:5439 \(\S+ port 5439: Connection refused\)'),
    'tcp-timeout': ('tcp', r'no TCP connection to 10\.213\.20\.10:5433 \(\S+ port 5433: timed out after 3\.0s'),
    'query': ('query', r"failed at stage 'auth'.*lab_no_such_role"),
}


def no_later_play(text):
    return 'PLAY [Provision the host' not in text and 'TASK [base' not in text


def test_one_clear_message_naming_the_step():
    text = (EPHEMERAL / 'fault-interface.txt').read_text()
    assert re.search(r'^rc: [1-9]', text, re.M)
    messages = re.findall(r"private_network NO-GO at step '(\w+)'", text)
    assert messages and set(messages) == {'interface'}
    assert 'no interface has an address in 10.213.20.0/24' in text
    # The host that failed is the one off the private network.
    assert re.search(r'fatal: \[mol-private_network_negative-d12\]', text)
    assert no_later_play(text)


@pytest.mark.parametrize('fault', FAULTS)
def test_each_fault_stops_at_its_step(fault):
    step, detail = FAULTS[fault]
    text = (EPHEMERAL / f'fault-{fault}.txt').read_text()
    assert re.search(r'^rc: [1-9]', text, re.M)
    # One NO-GO (printed in the play log and again on stderr), at the faulted step: the steps
    # before it passed.
    assert set(re.findall(r"private_network NO-GO at step '(\w+)'", text)) == {step}
    assert re.search(detail, text, re.S), text[-2000:]
    assert no_later_play(text)


@pytest.mark.parametrize('name', INSTANCES)
def test_nothing_was_provisioned(name):
    host = testinfra.get_host(f'podman://{name}')
    # base never ran on either host (any_errors_fatal), even on the one that passed its own checks.
    assert not host.user('aiadmin').exists
    assert not host.package('nftables').is_installed
    assert not host.package('redis-server').is_installed
    assert not host.file('/root/.cloud-certs').exists


@pytest.mark.parametrize('name', INSTANCES)
def test_faults_were_undone(name):
    host = testinfra.get_host(f'podman://{name}')
    assert '10.213.20.10' not in host.check_output('ip route show')
