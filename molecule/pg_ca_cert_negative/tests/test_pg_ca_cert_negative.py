"""A wrong checksum failed the download; the installed CA is byte-identical to the good one."""

import json
import os
import pathlib

import pytest
import testinfra

INSTANCES = ['mol-pg_ca_cert_negative-d12', 'mol-pg_ca_cert_negative-d13']
PROJECT = pathlib.Path(os.environ.get('MOLECULE_PROJECT_DIRECTORY', pathlib.Path(__file__).resolve().parents[3]))
LAB_STATE = pathlib.Path(os.environ.get('AIADMIN_LAB_STATE', PROJECT / 'lab/state'))
EPHEMERAL = pathlib.Path(os.environ['MOLECULE_EPHEMERAL_DIRECTORY'])


@pytest.fixture(params=INSTANCES)
def name(request):
    return request.param


def test_bad_run_failed_at_the_download(name):
    record = json.loads((EPHEMERAL / f'negative-{name}.json').read_text())
    assert 'Download the CA' in record['failed_task']
    assert 'checksum' in record['msg'].lower()
    assert record['marker'] is False


def test_installed_ca_is_the_good_one_and_unchanged(name):
    host = testinfra.get_host(f'podman://{name}')
    record = json.loads((EPHEMERAL / f'negative-{name}.json').read_text())
    ca = host.file('/root/.cloud-certs/root.crt')
    good = (LAB_STATE / 'ca.sha256').read_text().split()[0]
    assert ca.sha256sum == good == record['before'] == record['after']
    assert record['mtime_before'] == record['mtime_after']
    assert ca.mode == 0o644
    assert host.file('/root/.cloud-certs').mode == 0o700
    assert not host.file('/root/.cloud-certs/.root.crt.download').exists
