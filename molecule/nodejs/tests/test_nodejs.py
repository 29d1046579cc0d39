"""nodejs role, asserted from outside (testinfra, podman backend)."""

import json
import os
import re
from pathlib import Path

import testinfra

d12 = testinfra.get_host("podman://mol-nodejs-d12")
ns = testinfra.get_host("podman://mol-nodejs-ns-d12")
d13 = testinfra.get_host("podman://mol-nodejs-d13")

PROJECT = Path(os.environ.get("MOLECULE_PROJECT_DIRECTORY") or Path(__file__).resolve().parents[3])
NS_STANDIN = PROJECT / "lab/build/nodesource-standin"
NS_REPO = "http://127.0.0.1:8097/node_20.x"


def ns_standin_version():
    return (NS_STANDIN / "version").read_text().strip()


def apt_policy(host, package):
    """`apt-cache policy` parsed: installed, candidate and {version: (priority, [sources])}."""
    out = host.check_output(f"apt-cache policy {package}")
    installed = re.search(r"^\s*Installed:\s*(\S+)", out, re.M).group(1)
    candidate = re.search(r"^\s*Candidate:\s*(\S+)", out, re.M).group(1)
    table, current = {}, None
    for line in out.split("Version table:", 1)[1].splitlines():
        version_line = re.match(r"^ (?:\*\*\*| {3}) (\S+) (-?\d+)$", line)
        source_line = re.match(r"^ {8}(-?\d+) (.+)$", line)
        if version_line:
            current = version_line.group(1)
            table[current] = (int(version_line.group(2)), [])
        elif source_line and current:
            table[current][1].append(source_line.group(2))
    return installed, candidate, table


def test_node_20_on_all():
    for host in (d12, ns, d13):
        assert host.check_output("node --version").startswith("v20.")
        assert host.run("npm --version").rc == 0
        assert host.check_output("node -e 'console.log(1+1)'") == "2"


def test_tarball_layout_and_symlinks():
    version = d12.check_output("readlink /opt/nodejs/current").rsplit("/", 1)[-1]
    assert d12.check_output("node --version") == f"v{version}"
    for tool in ("node", "npm", "npx"):
        link = d12.file(f"/usr/local/bin/{tool}")
        assert link.is_symlink
        assert d12.check_output(f"readlink /usr/local/bin/{tool}") == f"/opt/nodejs/current/bin/{tool}"
        assert link.linked_to.startswith(f"/opt/nodejs/{version}/")
    assert d12.file(f"/opt/nodejs/{version}/lib/node_modules/npm/package.json").exists
    assert d12.run("npx --version").rc == 0
    assert not d12.file("/opt/nodejs/20.99.0").exists  # side_effect's bad checksum


def test_distro_package():
    assert d13.package("nodejs").is_installed
    assert d13.package("npm").is_installed
    assert d13.package("nodejs").version.startswith("20.")


def test_nodesource_package_is_the_standin():
    version = ns_standin_version()
    assert version.startswith("20.")
    assert ns.check_output("node --version") == f"v{version}"
    assert ns.check_output("command -v node") == "/usr/bin/node"
    # side_effect.yml published <ver>-2nodesource1 and upgraded to it with nodejs_upgrade.
    assert ns.check_output("dpkg-query -W -f='${Version}' nodejs") == f"{version}-2nodesource1"
    assert ns.check_output("dpkg-query -S /usr/bin/node") == "nodejs: /usr/bin/node"
    for tool in ("npm", "npx"):
        assert ns.check_output(f"readlink /usr/bin/{tool}") == f"../lib/node_modules/npm/bin/{tool}-cli.js"
        assert ns.run(f"{tool} --version").rc == 0
    assert ns.check_output("npm --version") == ns.check_output(
        "node -p \"require('/usr/lib/node_modules/npm/package.json').version\""
    )
    # Neither the tarball method nor Debian's npm package was used.
    assert not ns.file("/usr/local/bin/node").exists
    assert not ns.package("npm").is_installed


def test_nodesource_apt_policy_prefers_the_standin_over_debian():
    installed, candidate, table = apt_policy(ns, "nodejs")
    wanted = f"{ns_standin_version()}-2nodesource1"
    assert installed == candidate == wanted
    for version in (wanted, f"{ns_standin_version()}-1nodesource1"):
        priority, sources = table[version]
        assert priority == 600  # the role's pin (Pin: version 20.*, Pin-Priority: 600)
        assert f"{NS_REPO} nodistro/main amd64 Packages" in sources, sources
    # Debian 12's own nodejs (18.x) is in the table, not pinned, and not the one installed.
    debian = {v: p for v, (p, srcs) in table.items() if v.startswith("18.") and any("bookworm" in s for s in srcs)}
    assert debian, f"Debian's nodejs 18.x not in the version table: {table}"
    assert all(p < 600 for p in debian.values())
    assert not installed.startswith("18.")


def test_nodesource_upgrade_only_with_the_switch():
    seen = json.loads((Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "nodesource-upgrade.json").read_text())
    version = ns_standin_version()
    # A newer package in the repository: kept with the exact pin (apt pinned to that release),
    # taken with the "" opt-out and nodejs_upgrade (apt pinned to the major line).
    assert seen == {"kept": f"{version}-1nodesource1", "kept_pin": f"Pin: version {version}-*",
                    "upgraded": f"{version}-2nodesource1", "upgraded_pin": "Pin: version 20.*"}


def test_nodesource_key_with_another_fingerprint_refused_before_the_repository():
    seen = json.loads((Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "nodesource-wrong-key.json").read_text())
    standin = (NS_STANDIN / "key-fingerprint").read_text().strip()
    assert re.fullmatch(r"[0-9A-F]{40}", standin)
    assert seen["failed"] is True
    assert seen["task"].endswith("Install the repository signing key, pinned by its fingerprint")
    assert f"has fingerprint {standin}, not the pinned 6F71F525282841EEDAF851B42F59B5F99B1BE0B4" in seen["msg"]
    assert seen["written"] == []  # no keyring, no source, no pin


def test_nodesource_apt_configuration():
    keyring = ns.file("/etc/apt/keyrings/nodesource.asc")
    assert keyring.is_file
    assert keyring.mode == 0o644
    assert keyring.content_string.strip() == (NS_STANDIN / "srv/gpgkey/nodesource-repo.gpg.key").read_text().strip()
    sources = ns.file("/etc/apt/sources.list.d/nodesource.sources").content_string
    assert re.search(r"^Signed-By: /etc/apt/keyrings/nodesource\.asc$", sources, re.M)
    assert re.search(rf"^URIs: {re.escape(NS_REPO)}$", sources, re.M)
    assert re.search(r"^Suites: nodistro$", sources, re.M)
    assert re.search(r"^Components: main$", sources, re.M)
    pref = ns.file("/etc/apt/preferences.d/nodejs").content_string
    assert re.search(r"^Package: nodejs$", pref, re.M)
    assert re.search(r"^Pin: version 20\.\*$", pref, re.M)
    assert re.search(r"^Pin-Priority: 600$", pref, re.M)
    # apt keeps a repository's InRelease in its lists only after the signature verified.
    lists = ns.check_output("ls /var/lib/apt/lists").split()
    assert any(re.fullmatch(r"127\.0\.0\.1:8097_node%5f20\.x_dists_nodistro_InRelease", f) for f in lists), lists
