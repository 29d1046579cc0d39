#!/usr/bin/python
"""Ansible module: one aiadmin-ops run at a time on a host; the lock file is read, not only written."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: run_lock
short_description: One aiadmin-ops run at a time - a lock file on the host that names its holder
description:
  - Keeps one lock file per host (default C(/run/aiadmin-ops/run.lock), a tmpfs, so a reboot clears it)
    holding the JSON record of the run that holds it (I(owner), plus C(host) and C(acquired)).
  - The lock is read before anything is decided. C(state=present) acquires it, or fails naming the
    holder - C(run lock held by <command> run <run_id> (controller <controller> pid <pid>, since <started>)) -
    unless the holder is this run (re-entrant, unchanged) or the caller names the holder in I(takeover).
  - Acquiring is atomic and exclusive - the record is written to a temporary file (C(O_CREAT|O_EXCL), 0600,
    fsync) and hard-linked to I(path), which fails when the lock exists, so a reader never sees a half
    written lock (where hard links are not supported, the lock itself is created C(O_CREAT|O_EXCL)).
    Every change (acquire, take over, release) runs under an exclusive C(flock) of the lock's directory,
    so a take-over is a true compare-and-swap and a release never removes a lock acquired meanwhile.
  - A lock file that cannot be read or parsed (or has no run_id) is a holder too - C(run_id=unknown),
    with the file's mtime - so the module fails closed. Only C(state=absent force=true) removes it.
  - C(state=absent) removes the lock only when it is held by I(owner.run_id); someone else's lock is left
    in place with a warning (the task does not fail), unless I(force=true) (the operator's explicit clear).
  - Creates the lock's directory 0700 when missing (an existing directory is left as it is).
  - Supports check mode - it only reads the lock and reports what it would do (C(changed)); C(held) and
    C(holder) then describe the lock as it is.
version_added: "1.0.0"
options:
  path:
    description: The lock file. Its directory is created 0700 when missing.
    type: path
    default: /run/aiadmin-ops/run.lock
  state:
    description:
      - C(present) acquires the lock (or fails naming its holder), C(absent) releases it,
        C(query) only reports C(held) and C(holder).
    type: str
    choices: [present, absent, query]
    default: present
  owner:
    description:
      - The run that acquires or releases the lock (aiadmin-ops passes its C(aiadmin_run) extra variable).
      - Required for C(state=present), and for C(state=absent) unless I(force=true).
    type: dict
    suboptions:
      run_id:
        description: The run's id. Required for C(present) and C(absent). C(unknown) is reserved.
        type: str
      command:
        description: The aiadmin-ops command (migrate, rollback, ...).
        type: str
      controller:
        description: Host name of the controller the run started on.
        type: str
      pid:
        description: The controller process of the run.
        type: int
      started:
        description: When the run started (ISO 8601, UTC); defaults to now.
        type: str
      inventory:
        description: The inventory's identity (aiadmin-ops' C(<name>-<hash>)).
        type: str
  takeover:
    description:
      - With C(state=present) only. The run_id of a holder the caller has proven dead (e.g. its controller
        process is gone). The lock is replaced (atomically, temporary file and rename) only when the current
        holder has exactly this run_id - a compare-and-swap; any other holder still fails the task.
      - A holder that cannot be read (C(run_id=unknown)) is never taken over.
    type: str
  force:
    description:
      - With C(state=absent) only. Remove the lock whoever holds it (also an unreadable one) - the operator's
        explicit clear.
    type: bool
    default: false
author:
  - aiadmin-ops
"""

EXAMPLES = r"""
- name: Confirm | Take the run lock on the app hosts
  run_lock:
    state: present
    owner: "{{ aiadmin_run }}"
  become: true

- name: Confirm | Take over the lock of a run proven dead
  run_lock:
    state: present
    owner: "{{ aiadmin_run }}"
    takeover: "{{ _dead_run_id }}"

- name: Verdict | Release the run lock (only ours)
  run_lock:
    state: absent
    owner: "{{ aiadmin_run }}"

- name: Unlock | Who holds the lock
  run_lock:
    state: query
  register: _lock

- name: Unlock | The operator's explicit clear, whoever holds it
  run_lock:
    state: absent
    force: true
  when: unlock_force | bool
"""

RETURN = r"""
held:
  description: Whether the lock is held after the task (in check mode - whether it is held now).
  returned: always
  type: bool
holder:
  description:
    - The lock's record (the parsed JSON) after the task, or null when the lock is free. On a refused
      C(present) - the other holder. An unreadable lock is C(run_id=unknown) with C(corrupt=true),
      C(error) and C(mtime).
  returned: always
  type: dict
  contains:
    run_id: {description: The holder's run id (C(unknown) when the file is unreadable), type: str}
    command: {description: The holder's aiadmin-ops command, type: str}
    controller: {description: The controller host of the holder, type: str}
    pid: {description: The controller process of the holder, type: int}
    started: {description: When the holder's run started (the file's mtime when unreadable), type: str}
    inventory: {description: The holder's inventory identity, type: str}
    host: {description: The host the lock was written on, type: str}
    acquired: {description: When the lock was written (ISO 8601, UTC), type: str}
    corrupt: {description: Present and true when the file could not be read, type: bool}
    error: {description: Why the file could not be read, type: str}
    mtime: {description: The unreadable file's mtime (ISO 8601, UTC), type: str}
  sample: {run_id: 3f2a9c1b7d4e, command: migrate, controller: ops1, pid: 4242, started: "2026-12-01T21:00:03Z",
           inventory: production-1a2b3c4d5e, host: aiadmin-new, acquired: "2026-12-01T21:00:05Z"}
path:
  description: The lock file.
  returned: always
  type: str
took_over:
  description: The holder that was replaced by a take-over (would be, in check mode); null otherwise.
  returned: always
  type: dict
removed:
  description: The holder whose lock was removed by C(state=absent) (would be, in check mode); null otherwise.
  returned: always
  type: dict
msg:
  description: What was done - acquired, already held by this run, took over, released, not held, ...
  returned: always
  type: str
"""

import contextlib
import errno
import fcntl
import json
import os
import socket
import stat
import time

from ansible.module_utils.basic import AnsibleModule

OWNER_KEYS = ("run_id", "command", "controller", "pid", "started", "inventory")
UNKNOWN = "unknown"
GUARD_TIMEOUT_S = 30
MAX_LOCK_BYTES = 65536
NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def iso(ts):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def describe(holder):
    """run lock held by <command> run <run_id> (controller <controller> pid <pid>, since <started>)"""

    def field(key):
        value = holder.get(key)
        return UNKNOWN if value is None or value == "" else str(value)

    return (f"run lock held by {field('command')} run {field('run_id')} "
            f"(controller {field('controller')} pid {field('pid')}, since {field('started')})")


def unknown_holder(path, error):
    """An unreadable lock is still a lock (fail closed): a holder nobody can name."""
    try:
        mtime = iso(os.lstat(path).st_mtime)
    except OSError:
        mtime = None
    return {"run_id": UNKNOWN, "command": UNKNOWN, "controller": UNKNOWN, "pid": None, "started": mtime,
            "inventory": UNKNOWN, "mtime": mtime, "corrupt": True, "error": error}


def read_holder(path):
    """None when there is no lock file; its parsed record; or an unknown holder when unreadable."""
    try:
        fd = os.open(path, os.O_RDONLY | NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as exc:
        reason = "a symbolic link" if exc.errno == errno.ELOOP else f"cannot open: {exc.strerror}"
        return unknown_holder(path, reason)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return unknown_holder(path, "not a regular file")
        chunks, size = [], 0
        while size <= MAX_LOCK_BYTES:
            chunk = os.read(fd, 8192)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        return unknown_holder(path, f"cannot read: {exc.strerror}")
    finally:
        os.close(fd)
    raw = b"".join(chunks)
    if size > MAX_LOCK_BYTES:
        return unknown_holder(path, "larger than a lock record")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return unknown_holder(path, "empty" if not raw.strip() else "not JSON")
    if not isinstance(data, dict):
        return unknown_holder(path, "not a JSON object")
    run_id = data.get("run_id")
    if not isinstance(run_id, str) or not run_id.strip() or run_id == UNKNOWN:
        return unknown_holder(path, "no run_id")
    return data


def is_holder(holder, run_id):
    return holder is not None and not holder.get("corrupt") and run_id is not None and holder.get("run_id") == run_id


def fsync_dir(directory):
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_new(path, data):
    """Create ``path`` exclusively (O_CREAT|O_EXCL, 0600) with ``data``, fsynced; FileExistsError if it exists."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
    os.close(fd)


def temp_name(path):
    return os.path.join(os.path.dirname(path),
                        f".{os.path.basename(path)}.{os.getpid()}.{os.urandom(4).hex()}.tmp")


def create_lock(path, record):
    """Acquire: the whole record appears at once, and only if there is no lock. False if there is one."""
    data = (json.dumps(record, sort_keys=True) + "\n").encode("utf-8")
    tmp = temp_name(path)
    write_new(tmp, data)
    try:
        try:
            os.link(tmp, path)  # atomic and exclusive: EEXIST when the lock exists
        except FileExistsError:
            return False
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK, errno.ENOSYS):
                raise
            try:  # no hard links on this file system: O_CREAT|O_EXCL on the lock itself
                write_new(path, data)
            except FileExistsError:
                return False
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    fsync_dir(os.path.dirname(path))
    return True


def replace_lock(path, record):
    """Take over: the new record replaces the old one at once (temporary file + rename)."""
    tmp = temp_name(path)
    write_new(tmp, (json.dumps(record, sort_keys=True) + "\n").encode("utf-8"))
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(os.path.dirname(path))


@contextlib.contextmanager
def guard(directory):
    """An exclusive flock of the lock's directory: read-decide-write is one step for every caller."""
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        deadline = time.monotonic() + GUARD_TIMEOUT_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{directory} stayed flocked for {GUARD_TIMEOUT_S}s") from None
                time.sleep(0.01)
        yield
    finally:
        os.close(fd)  # also releases the flock


def make_parent(directory):
    """Create the lock's directory 0700 when missing (True when created); an existing one is left alone."""
    if os.path.isdir(directory):
        return False
    os.makedirs(directory, mode=0o700, exist_ok=True)
    os.chmod(directory, 0o700)
    return True


def fail(module, result, msg):
    module.fail_json(**dict(result, msg=msg))


def main():
    module = AnsibleModule(
        argument_spec={
            "path": {"type": "path", "default": "/run/aiadmin-ops/run.lock"},
            "state": {"type": "str", "choices": ["present", "absent", "query"], "default": "present"},
            "owner": {
                "type": "dict",
                "options": {
                    "run_id": {"type": "str"},
                    "command": {"type": "str"},
                    "controller": {"type": "str"},
                    "pid": {"type": "int"},
                    "started": {"type": "str"},
                    "inventory": {"type": "str"},
                },
            },
            "takeover": {"type": "str"},
            "force": {"type": "bool", "default": False},
        },
        supports_check_mode=True,
    )
    path = module.params["path"]
    state = module.params["state"]
    owner = module.params["owner"] or {}
    takeover = module.params["takeover"]
    force = module.params["force"]
    check = module.check_mode
    run_id = (owner.get("run_id") or "").strip() or None
    directory = os.path.dirname(path) or "."
    result = {"changed": False, "held": False, "holder": None, "path": path, "took_over": None,
              "removed": None, "msg": ""}

    if takeover is not None and state != "present":
        fail(module, result, "takeover applies to state=present only")
    if force and state != "absent":
        fail(module, result, "force applies to state=absent only (state=present takes over with takeover)")
    if state == "present" or (state == "absent" and not force):
        if run_id is None:
            fail(module, result, f"owner.run_id is required for state={state}")
        if run_id == UNKNOWN:
            fail(module, result, f"owner.run_id {UNKNOWN!r} is reserved (an unreadable lock's holder)")

    if state == "query" or (state == "absent" and not os.path.isdir(directory)):
        holder = read_holder(path)
        result.update(held=holder is not None, holder=holder,
                      msg=describe(holder) if holder else "the run lock is free")
        module.exit_json(**result)

    if state == "present":
        record = {key: owner.get(key) for key in OWNER_KEYS}
        record["run_id"] = run_id
        record["started"] = record["started"] or iso(time.time())
        record["host"] = socket.gethostname()
        record["acquired"] = iso(time.time())
        if check:
            run_present(module, path, None, record, takeover, result, check=True)
        try:
            make_parent(directory)
            with guard(directory):
                run_present(module, path, directory, record, takeover, result, check=False)
        except OSError as exc:
            fail(module, result, f"cannot take the run lock {path}: {exc}")

    # state == absent, the directory exists
    try:
        if check:
            run_absent(module, path, run_id, force, result, check=True)
        with guard(directory):
            run_absent(module, path, run_id, force, result, check=False)
    except OSError as exc:
        fail(module, result, f"cannot release the run lock {path}: {exc}")


def run_present(module, path, directory, record, takeover, result, check):
    """Acquire (or take over) the lock, or fail naming its holder. Exits the module."""
    run_id = record["run_id"]
    for _attempt in range(3):
        holder = read_holder(path)
        if holder is None:
            if check:
                result.update(changed=True, msg=f"would acquire the run lock for run {run_id}")
                module.exit_json(**result)
            if not create_lock(path, record):
                continue  # someone outside this module created it meanwhile: read it again
            result.update(changed=True, held=True, holder=read_holder(path) or record,
                          msg=f"acquired the run lock for {record.get('command') or UNKNOWN} run {run_id}")
            module.exit_json(**result)
        if is_holder(holder, run_id):
            result.update(held=True, holder=holder, msg=f"the run lock is already held by this run ({run_id})")
            module.exit_json(**result)
        if takeover is not None and is_holder(holder, takeover):
            if not check:
                replace_lock(path, record)
            result.update(changed=True, held=True, holder=holder if check else (read_holder(path) or record),
                          took_over=holder,
                          msg=f"{'would take' if check else 'took'} over the run lock of run {takeover} "
                              f"for run {run_id}")
            module.exit_json(**result)
        msg = describe(holder)
        if holder.get("corrupt"):
            msg += (f"; {path} is unreadable ({holder.get('error')}, modified {holder.get('mtime')}): "
                    "only a forced clear (state=absent force=true) removes it")
        elif takeover is not None:
            msg += f"; not taken over: takeover names run {takeover}, the holder is run {holder.get('run_id')}"
        result.update(held=True, holder=holder)
        fail(module, result, msg)
    fail(module, result, f"the run lock {path} kept changing while it was being acquired")


def run_absent(module, path, run_id, force, result, check):
    """Release our lock (or, forced, anyone's); leave someone else's in place. Exits the module."""
    holder = read_holder(path)
    if holder is None:
        result.update(msg="the run lock is not held")
        module.exit_json(**result)
    if force or is_holder(holder, run_id):
        if not check:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            fsync_dir(os.path.dirname(path))
        result.update(changed=True, removed=holder, held=check, holder=holder if check else None,
                      msg=f"{'would release' if check else 'released'} the run lock of run {holder.get('run_id')}"
                          f"{' (forced)' if force and not is_holder(holder, run_id) else ''}")
        module.exit_json(**result)
    msg = f"{describe(holder)}; not removed: only its owner (run {holder.get('run_id')}) or force=true removes it"
    module.warn(msg)
    result.update(held=True, holder=holder, msg=msg)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
