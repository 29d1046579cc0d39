"""The pins of issue #15 part 5 that no Molecule scenario can exercise with their real values (the
stand-ins carry their own): the nodejs role's default release and NodeSource key fingerprint, and
the pm2 role's lockfile against pm2_version."""

from __future__ import annotations

import json
import re

import yaml

from tests.helpers import ROOT

NODEJS, PM2 = ROOT / "roles/nodejs", ROOT / "roles/pm2"
LOCK = PM2 / "files/pm2-lock"


def defaults(role):
    return yaml.safe_load((role / "defaults/main.yml").read_text())


def spec(role):
    return yaml.safe_load((role / "meta/argument_specs.yml").read_text())["argument_specs"]["main"]["options"]


def test_nodejs_default_is_an_exact_release_and_the_spec_says_so():
    version = defaults(NODEJS)["nodejs_version"]
    assert re.fullmatch(r"20\.\d+\.\d+", version), version
    assert spec(NODEJS)["nodejs_version"]["default"] == version
    assert defaults(NODEJS)["nodejs_install_method"] == "nodesource"
    # "" stays the documented opt-out.
    assert any('empty string' in line for line in spec(NODEJS)["nodejs_version"]["description"])


def test_nodesource_key_fingerprint_default_is_nodesources():
    fingerprint = "6F71F525282841EEDAF851B42F59B5F99B1BE0B4"
    assert defaults(NODEJS)["nodejs_nodesource_key_fingerprint"] == fingerprint
    assert spec(NODEJS)["nodejs_nodesource_key_fingerprint"]["default"] == fingerprint


def test_the_nodesource_key_is_installed_by_the_pinning_module():
    tasks = yaml.safe_load((NODEJS / "tasks/install_nodesource.yml").read_text())
    key = [t for t in tasks if "apt_signing_key" in t]
    assert len(key) == 1 and key[0]["apt_signing_key"]["fingerprint"] == "{{ nodejs_nodesource_key_fingerprint }}"
    assert not [t for t in tasks if "ansible.builtin.get_url" in t or "get_url" in t]
    # ... before the repository is configured.
    names = [t["name"] for t in tasks]
    templates = [t.get("ansible.builtin.template", {}).get("src") for t in tasks]
    source = templates.index("nodesource.sources.j2")
    assert names.index(key[0]["name"]) < source


def test_pm2_lockfile_pins_pm2_version_and_every_package_by_sha512():
    version = defaults(PM2)["pm2_version"]
    assert re.fullmatch(r"5\.\d+\.\d+", version)
    assert spec(PM2)["pm2_version"]["default"] == version
    manifest = json.loads((LOCK / "package.json").read_text())
    lock = json.loads((LOCK / "package-lock.json").read_text())
    assert manifest["dependencies"] == {"pm2": version}
    assert lock["lockfileVersion"] == 3
    packages = lock["packages"]
    assert packages[""]["dependencies"] == {"pm2": version}
    assert packages["node_modules/pm2"]["version"] == version
    assert len(packages) > 100  # PM2's whole tree, not only PM2
    for path, meta in packages.items():
        if not path:
            continue
        assert re.fullmatch(r"sha512-[A-Za-z0-9+/]{86}==", meta.get("integrity", "")), path
        assert "resolved" not in meta, path  # fetched from whichever registry npm is configured with
        assert not meta.get("hasInstallScript"), path  # the role runs npm ci --ignore-scripts
        assert not meta.get("dev"), path
