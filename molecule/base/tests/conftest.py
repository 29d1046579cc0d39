"""Shared helpers: lab secrets read from the vault, commands run with secrets in the environment only."""

import os
import pathlib
import subprocess

import pytest
import yaml

PROJECT = pathlib.Path(os.environ.get('MOLECULE_PROJECT_DIRECTORY', pathlib.Path(__file__).resolve().parents[3]))


@pytest.fixture(scope='session')
def vault():
    out = subprocess.run(
        [str(PROJECT / '.venv/bin/ansible-vault'), 'view',
         '--vault-id', f'lab@{PROJECT}/inventories/lab/vault-password.LAB-ONLY.txt',
         str(PROJECT / 'inventories/lab/group_vars/all/vault.yml')],
        capture_output=True, text=True, check=True).stdout
    return yaml.safe_load(out)


def podman_exec_env(container, argv, env, timeout=30):
    """Run argv in the container with env passed by NAME (podman --env NAME): values never on a command line."""
    cmd = ['podman', 'exec']
    for name in env:
        cmd += ['--env', name]
    return subprocess.run([*cmd, container, *argv], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=timeout)
