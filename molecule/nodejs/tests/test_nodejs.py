"""nodejs role, asserted from outside (testinfra, podman backend)."""

import testinfra

d12 = testinfra.get_host("podman://mol-nodejs-d12")
d13 = testinfra.get_host("podman://mol-nodejs-d13")


def test_node_20_on_both():
    for host in (d12, d13):
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
