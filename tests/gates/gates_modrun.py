"""Run a gate module file outside Ansible (used by the tests, also inside `ip netns exec`).

    python modrun.py plugins/modules/pg_reachability.py args.json

args.json is {"ANSIBLE_MODULE_ARGS": {...}}, the format AnsibleModule reads from a file
argument. `ansible.module_utils.pg_gate` is served from plugins/module_utils, the way
AnsiballZ bundles it when Ansible runs the module.
"""

from __future__ import annotations

import importlib.util
import pathlib
import runpy
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def alias_module_utils() -> None:
    """Serve plugins/module_utils/*.py as ansible.module_utils.* (what AnsiballZ bundles)."""
    import ansible.module_utils as module_utils

    pending = [p for p in sorted((ROOT / 'plugins' / 'module_utils').glob('*.py')) if p.name != '__init__.py']
    while pending:  # a file that imports another one loads after it
        failed = []
        for path in pending:
            name = 'ansible.module_utils.' + path.stem
            spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            try:
                spec.loader.exec_module(module)
            except ImportError:
                del sys.modules[name]
                failed.append(path)
                continue
            setattr(module_utils, path.stem, module)
        if len(failed) == len(pending):
            raise ImportError(f'cannot load {[p.name for p in failed]}')
        pending = failed


def main() -> None:
    module_path, args_path = sys.argv[1], sys.argv[2]
    alias_module_utils()
    sys.argv = [module_path, args_path]
    runpy.run_path(module_path, run_name='__main__')


if __name__ == '__main__':
    main()
