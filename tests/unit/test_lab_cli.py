"""The lab command's clear errors, run for real (another user, another PATH, a real mount)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers import ROOT

CLI = [str(ROOT / ".venv/bin/python"), "-m", "aiadmin_ops.cli"]
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


def cli(*args: str, env: dict | None = None, user: str | None = None) -> subprocess.CompletedProcess:
    cmd = [*CLI, *args]
    if user:  # the venv's interpreter lives under /root; another user runs the system one
        cmd = ["runuser", "-u", user, "--", "/usr/bin/python3", "-m", "aiadmin_ops.cli", *args]
    full_env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), **(env or {}))
    return subprocess.run(cmd, capture_output=True, text=True, env=full_env, cwd="/", timeout=120, check=False)


@needs_root
def test_up_refuses_non_root():
    proc = cli("lab", "up", user="nobody")
    assert proc.returncode == 2
    assert "needs root" in proc.stderr


@needs_root
def test_up_without_podman_says_so(tmp_path: Path):
    # A PATH with everything but podman.
    for tool in ("runc", "debootstrap"):
        if shutil.which(tool):
            (tmp_path / tool).symlink_to(shutil.which(tool))
    proc = cli("lab", "up", env={"PATH": str(tmp_path)})
    assert proc.returncode == 2
    assert "podman not found" in proc.stderr


@needs_root
@pytest.mark.skipif(shutil.which("podman") is None, reason="needs podman")
def test_up_without_free_disk_says_so():
    proc = cli("lab", "up", env={"AIADMIN_LAB_MIN_FREE_GIB": "1000000"})
    assert proc.returncode == 2
    assert "GiB free" in proc.stderr and "needs at least" in proc.stderr


@needs_root
def test_interrupted_image_build_is_cleaned_up(tmp_path: Path):
    """An interrupted debootstrap leaves /proc mounted in the rootfs; the next build must unmount it."""
    from aiadmin_ops.lab import remove_rootfs

    rootfs = tmp_path / "rootfs"
    (rootfs / "proc").mkdir(parents=True)
    (rootfs / "etc").mkdir()
    (rootfs / "etc/os-release").write_text("half-built\n")
    subprocess.run(["mount", "-t", "proc", "proc", str(rootfs / "proc")], check=True)
    try:
        remove_rootfs(rootfs)
    finally:
        subprocess.run(["umount", "-l", str(rootfs / "proc")], check=False, capture_output=True)
    assert not rootfs.exists()
    assert str(rootfs) not in Path("/proc/mounts").read_text()


def test_status_exit_code_matches_its_health_verdict():
    """Whatever state the lab is in, `status` exits 0 exactly when every part is healthy."""
    if not shutil.which("podman") or os.geteuid() != 0:
        pytest.skip("needs podman and root")
    proc = cli("lab", "status", "--json")
    data = json.loads(proc.stdout)
    parts_ok = (all(data["images"].values())
                and all(v == "ok" for v in data["networks"].values())
                and all(c.get("systemd") in ("running", "degraded") for c in data["containers"].values())
                and data["containers"]["lab-db"].get("postgresql") == "accepting")
    assert data["healthy"] is parts_ok
    assert proc.returncode == (0 if parts_ok else 1)


@pytest.mark.parametrize(
    ("mutate", "why"),
    [
        (lambda d: d["images"].update({"localhost/aiadmin-lab:debian13": False}), "image missing"),
        (lambda d: d["networks"].update({"aiadmin-lab-private": "wrong shape"}), "network reshaped"),
        (lambda d: d["containers"]["lab-egress"].update({"systemd": ""}), "systemd not answering"),
        (lambda d: d["containers"].update({"lab-old": {"state": "missing"}}), "container missing"),
        (lambda d: d["containers"]["lab-db"].update({"postgresql": "down"}), "postgresql down"),
    ],
)
def test_health_verdict_rejects_each_broken_part(mutate, why):
    from aiadmin_ops.lab import healthy

    running = {"state": "running", "systemd": "running"}
    data = {
        "images": {"localhost/aiadmin-lab:debian12": True, "localhost/aiadmin-lab:debian13": True},
        "networks": {"aiadmin-lab-public": "ok", "aiadmin-lab-private": "ok"},
        "containers": {"lab-db": {**running, "postgresql": "accepting"}, "lab-old": dict(running),
                       "lab-egress": dict(running)},
    }
    assert healthy(data)
    mutate(data)
    assert not healthy(data), why


def test_db_replacement_is_a_lab_action_without_arguments():
    from aiadmin_ops.cli import build_parser

    args = build_parser().parse_args(["lab", "db-replacement"])
    assert (args.command, args.action) == ("lab", "db-replacement")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["lab", "db-replacement", "--yes"])


def test_db_replacement_is_not_managed_by_up_or_status():
    """lab-db-new exists only between `db-replacement` runs: `up` and `status` never see it."""
    from aiadmin_ops import lab

    assert lab.REPLACEMENT.name == "lab-db-new"
    assert lab.REPLACEMENT.name not in {c.name for c in lab.CONTAINERS}
    taken = {addr for c in lab.CONTAINERS for addr in c.addresses.values()}
    assert not taken & set(lab.REPLACEMENT.addresses.values())


@needs_root
def test_db_replacement_refuses_non_root():
    proc = cli("lab", "db-replacement", user="nobody")
    assert proc.returncode == 2
    assert "needs root" in proc.stderr


def test_db_replacement_without_the_lab_networks_says_run_lab_up(monkeypatch, capsys):
    from aiadmin_ops import cli as cli_mod
    from aiadmin_ops import lab

    def untouched(*args, **kwargs):
        raise AssertionError("no container may be touched without the lab's networks")

    monkeypatch.setattr(lab, "preflight", lambda need_build: None)
    monkeypatch.setattr(lab, "network_inspect", lambda name: None)
    monkeypatch.setattr(lab, "container_inspect", untouched)
    monkeypatch.setattr(lab, "create_container", untouched)
    assert cli_mod.main(["lab", "db-replacement"]) == 2
    err = capsys.readouterr().err
    assert "aiadmin-lab-public" in err and "run `aiadmin-ops lab up` first" in err


@pytest.mark.parametrize(
    ("uri", "cache_answers", "expected"),
    [
        ("http://deb.debian.org/debian/dists/bookworm/InRelease", True, "http://10.213.10.5:3142"),
        ("http://deb.debian.org", True, "http://10.213.10.5:3142"),
        ("http://deb.debian.org/debian/pool/main/x/xz-utils/xz-utils.deb", False, "DIRECT"),
        ("http://deb.debian.org.example/debian/", True, "DIRECT"),   # another host that starts alike
        ("http://10.213.10.40:8098/nodesource/", True, "DIRECT"),    # the lab's stand-in repositories
        ("https://deb.debian.org/debian/", True, "DIRECT"),
    ],
)
def test_apt_proxy_script_sends_only_the_mirror_and_only_while_the_cache_answers(tmp_path, uri, cache_answers,
                                                                                 expected):
    """The image's Proxy-Auto-Detect command, run by sh with a stand-in `nc` first on PATH."""
    from aiadmin_ops import lab

    script = tmp_path / "proxy"
    script.write_text(lab.apt_proxy_script("deb.debian.org"))
    nc = tmp_path / "bin" / "nc"
    nc.parent.mkdir()
    nc.write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path}/nc.args\nexit {0 if cache_answers else 1}\n")
    nc.chmod(0o755)
    env = {"PATH": f"{nc.parent}:/usr/bin:/bin"}
    proc = subprocess.run(["sh", str(script), uri], capture_output=True, text=True, env=env, check=True)
    assert proc.stdout == f"{expected}\n"
    if (tmp_path / "nc.args").exists():
        assert (tmp_path / "nc.args").read_text() == f"-z -w 1 {lab.APTCACHE_ADDRESS} {lab.APTCACHE_PORT}\n"


def test_mirror_host_needs_http():
    from aiadmin_ops import lab

    assert lab.mirror_host("http://deb.debian.org/debian") == "deb.debian.org"
    assert lab.mirror_host("http://mirror.lab.test:8080/debian/") == "mirror.lab.test:8080"
    with pytest.raises(lab.LabError, match="http:// Debian mirror"):
        lab.mirror_host("https://deb.debian.org/debian")
