"""plugins/module_utils/pg_backup_job.py: which pg_dump / pg_restore binary the backup job runs.

Debian's pg_dump on PATH is the Perl pg_wrapper; for a remote server it runs the newest installed
major's binary. The job resolves that binary once instead of paying the wrapper's start at each
of its four tool runs. Against this machine's real postgresql-common and client packages."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT

sys.path.insert(0, str(ROOT / "plugins" / "module_utils"))  # imported straight from the file, as it also is on a host
from pg_backup_job import resolve_client

WRAPPED = shutil.which("pg_dump") and Path(shutil.which("pg_dump")).resolve().name == "pg_wrapper"


@pytest.mark.skipif(not WRAPPED, reason="needs Debian's postgresql-common (pg_dump on PATH is pg_wrapper)")
@pytest.mark.parametrize("tool", ["pg_dump", "pg_restore"])
def test_the_wrapper_resolves_to_the_newest_installed_major(tool):
    majors = sorted(int(d) for d in os.listdir("/usr/lib/postgresql")
                    if d.isdigit() and os.access(f"/usr/lib/postgresql/{d}/bin/{tool}", os.X_OK))
    assert resolve_client(tool) == f"/usr/lib/postgresql/{majors[-1]}/bin/{tool}"


def test_an_explicit_path_is_kept(tmp_path):
    assert resolve_client(str(tmp_path / "pg_dump")) == str(tmp_path / "pg_dump")


def test_a_tool_that_is_not_the_wrapper_is_kept(tmp_path, monkeypatch):
    own = tmp_path / "pg_dump"
    own.write_text("#!/bin/sh\necho 'pg_dump (PostgreSQL) 99.0'\n")
    own.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert resolve_client("pg_dump") == "pg_dump"


def test_a_missing_tool_is_kept_for_the_clear_not_found_error(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert resolve_client("pg_dump") == "pg_dump"
