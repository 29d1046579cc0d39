"""No task or play passes a secret through Ansible's `environment:` keyword.

Ansible applies a task's environment as a prefix of the command that starts the module
(`/bin/sh -c 'REDISCLI_AUTH=... /usr/bin/python3'`): on the controller's `podman exec` or `ssh`
argv and on the host's `sh`, readable by every user in `ps`. CI's argv sampler caught the
redis role's REDISCLI_AUTH ping this way in a Molecule run (no mitogen there). A secret goes in a
module's arguments (AnsiballZ's payload, on stdin with pipelining) or a 0600 file instead."""

from __future__ import annotations

import re

import pytest
import yaml

from aiadmin_ops.secrets import looks_secret
from tests.helpers import ROOT

TREES = ("roles", "playbooks", "lab", "molecule", "inventories")
_NAMES = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def environments(node, where=""):
    """(where, name, value) of every entry of every `environment:` mapping in a YAML document."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "environment" and isinstance(value, dict):
                yield from ((where, name, str(text)) for name, text in value.items())
            else:
                yield from environments(value, where)
    elif isinstance(node, list):
        for item in node:
            yield from environments(item, where)


def secret_entries(text: str, where: str = "") -> list[str]:
    found = []
    for document in yaml.safe_load_all(text):
        for place, name, value in environments(document, where):
            expressions = " ".join(re.findall(r"{{(.*?)}}", value, re.S))
            names = [n for n in _NAMES.findall(expressions) if n.startswith("vault_") or looks_secret(n)]
            if looks_secret(name) or names:
                found.append(f"{place}: {name} ({', '.join(names) or 'its name'})")
    return found


def yaml_files():
    for tree in TREES:
        for path in sorted((ROOT / tree).rglob("*.y*ml")):
            if "vault" not in path.name and path.suffix in (".yml", ".yaml"):
                yield path


def test_no_secret_in_any_environment_keyword():
    found = []
    for path in yaml_files():
        text = path.read_text()
        if "environment:" in text:
            found += secret_entries(text, str(path.relative_to(ROOT)))
    assert not found, found


@pytest.mark.parametrize("snippet", [
    "- ansible.builtin.command: redis-cli ping\n  environment:\n    REDISCLI_AUTH: '{{ redis_password }}'\n",
    "- ansible.builtin.command: psql\n  environment:\n    PGCONNECT: 'x {{ vault_aiadmin_db_password }}'\n",
    "- hosts: all\n  environment:\n    API_TOKEN: plain\n  tasks: []\n",
])
def test_the_check_sees_a_secret_environment(snippet):
    """The check's positive controls: the redis role's old ping among them."""
    assert secret_entries(snippet)


def test_the_check_lets_places_and_plain_values_through():
    assert not secret_entries("- ansible.builtin.command: x\n  environment:\n"
                              "    PM2_HOME: '{{ app_pm2_home }}'\n    PGSSLROOTCERT: '{{ app_ca_file }}'\n")
