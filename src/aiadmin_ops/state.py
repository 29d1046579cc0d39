"""The operator CLI's state, outside the checkout: ledgers, reports, runner artifacts, backups.

    $AIADMIN_STATE_DIR (default /var/lib/aiadmin-ops), 0700
      ledger/      <command>-<inventory identity>.json   (0600, written by the playbooks)
      reports/     <command>-<time>.{json,html}            (0600)
      artifacts/   <playbook stem>/<runner ident>/          (ansible-runner, rotated)
      backups/     what the migration and the decommission fetch from the hosts

Every directory is created 0700 and tightened back to 0700 when it is found looser. A
directory owned by another user is refused (it could be swapped under us).

A ledger belongs to an inventory, not to the way ``-i`` was spelled: ``identity()`` resolves
'lab', 'production' or a path to its real path and names it ``<name>-<10 hex of its sha256>``.
An inventory directory and its main file (``hosts``, ``hosts.yml``, ...) are one inventory.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STATE_ENV = "AIADMIN_STATE_DIR"
DEFAULT_STATE_DIR = "/var/lib/aiadmin-ops"
SUBDIRS = ("ledger", "reports", "artifacts", "backups")
INVENTORIES = {"lab": "inventories/lab/hosts.yml", "production": "inventories/production/hosts.yml"}
# The file that IS its directory's inventory: `-i inventories/lab/` and `-i inventories/lab/hosts.yml`
# name the same inventory (and so the same ledger).
MAIN_INVENTORY_FILES = ("hosts", "hosts.yml", "hosts.yaml", "hosts.ini", "hosts.json")


class StateError(RuntimeError):
    """The state directory cannot be used safely."""


def private_dir(path: Path) -> Path:
    """Create ``path`` 0700 (parents as needed) or tighten it to 0700; refuse a foreign or odd one."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = os.stat(path)
        if not stat.S_ISDIR(st.st_mode):
            raise StateError(f"{path} is not a directory")
        if st.st_uid != os.geteuid():
            raise StateError(f"{path} belongs to uid {st.st_uid}, not to this user (uid {os.geteuid()}): "
                             "refusing to keep state there")
        if stat.S_IMODE(st.st_mode) != 0o700:
            os.chmod(path, 0o700)
    except FileExistsError:
        raise StateError(f"{path} exists and is not a directory") from None
    except OSError as exc:
        raise StateError(f"cannot use {path} for the state ({exc.strerror or exc}); "
                         f"set {STATE_ENV} to a directory of your own") from None
    return path


def state_dir() -> Path:
    """The state directory (``$AIADMIN_STATE_DIR``, default /var/lib/aiadmin-ops), created 0700."""
    raw = os.environ.get(STATE_ENV) or DEFAULT_STATE_DIR
    base = Path(raw).expanduser()
    if not base.is_absolute():
        base = Path.cwd() / base
    private_dir(base)
    for name in SUBDIRS:
        private_dir(base / name)
    return base


def subdir(name: str) -> Path:
    if name not in SUBDIRS:
        raise ValueError(f"no state subdirectory {name!r}")
    return state_dir() / name


def ledger_dir() -> Path:
    return subdir("ledger")


def reports_dir() -> Path:
    return subdir("reports")


def artifacts_dir() -> Path:
    return subdir("artifacts")


def backups_dir() -> Path:
    return subdir("backups")


def inventory_path(inventory_arg: str) -> Path:
    """'lab' / 'production' / a path -> an absolute path (not resolved: the runner gets what exists).

    A relative path is taken from the current directory when it exists there, else from the
    checkout (where the CLI has always looked)."""
    arg = INVENTORIES.get(inventory_arg, inventory_arg)
    path = Path(arg).expanduser()
    if path.is_absolute():
        return path
    if inventory_arg not in INVENTORIES and path.exists():
        return Path.cwd() / path
    return ROOT / path


def canonical_inventory(inventory_arg: str) -> Path:
    """The real path that identifies an inventory: a directory, or a file that is not its directory's main file."""
    real = Path(os.path.realpath(inventory_path(inventory_arg)))
    if real.name in MAIN_INVENTORY_FILES and not real.is_dir():
        return real.parent
    return real


def identity(inventory_arg: str) -> str:
    """``<stem-or-dirname>-<first 10 hex of sha256(realpath)>`` of an inventory, however ``-i`` spelled it."""
    real = canonical_inventory(inventory_arg)
    name = real.name if real.is_dir() else real.stem
    digest = hashlib.sha256(str(real).encode()).hexdigest()[:10]
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "inventory"
    return f"{safe}-{digest}"


def ledger_path(command: str, inventory_arg: str) -> Path:
    return ledger_dir() / f"{command}-{identity(inventory_arg)}.json"


def read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def write_private(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` with mode 0600 (also when the file existed with another mode)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            fd = -1
            handle.write(text)
    finally:
        if fd != -1:
            os.close(fd)
    return path


def tighten(path: Path) -> None:
    """chmod 0600 a file the playbooks wrote (ledgers), if it exists and is ours."""
    with contextlib.suppress(FileNotFoundError, PermissionError):
        st = os.lstat(path)
        if stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) & 0o077:
            os.chmod(path, 0o600)
