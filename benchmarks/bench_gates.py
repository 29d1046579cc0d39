#!/usr/bin/env python3
"""Benchmark: an Ansible task running pg_reachability vs community.postgresql.postgresql_ping.

Both modules talk to the same loopback PostgreSQL 15 with TLS (verify-full against a test CA,
scram-sha-256), started here in a temporary directory. pg_reachability does its full probe
(DNS, raw TCP, SSLRequest + TLS handshake, driver connect, SELECT now() + pg_stat_ssl and
20 round-trip samples); postgresql_ping connects and runs SELECT version().

Every ansible-playbook run executes the same module ``--tasks`` times: the first task of a run
is "cold" (Ansible builds the AnsiballZ payload), the others are "warm". A third playbook
with ansible.builtin.ping gives Ansible's fixed cost per task. Runs alternate between the tools;
per-task wall time comes from benchmarks/callback/gate_task_timer.py. Reported: medians over
``--runs`` runs and the ratio pg_reachability / postgresql_ping (target <= 1.2).

    .venv/bin/python benchmarks/bench_gates.py [--runs 7] [--tasks 4] [--json out.json]

Needs the PostgreSQL 15 server binaries (/usr/lib/postgresql/15/bin, or PG_GATES_BIN) and,
when run as root, the ``postgres`` user (the server runs as that user).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.gates.gates_pg import (  # noqa: E402 - needs ROOT on sys.path
    DATABASE,
    USER,
    USER_PASSWORD,
    PgServer,
    free_port,
    make_pki,
    setup_roles,
)

VENV_BIN = pathlib.Path(sys.executable).parent
TARGET_RATIO = 1.2

TOOLS = {
    'pg_reachability': """
    - name: "Probe {n}"
      pg_reachability:
        host: 127.0.0.1
        port: "{{{{ bench_port }}}}"
        database: "{{{{ bench_database }}}}"
        user: "{{{{ bench_user }}}}"
        password: "{{{{ bench_password }}}}"
        sslmode: verify-full
        ssl_rootcert: "{{{{ bench_ca }}}}"
        samples: 20
""",
    'postgresql_ping': """
    - name: "Probe {n}"
      community.postgresql.postgresql_ping:
        login_host: 127.0.0.1
        login_port: "{{{{ bench_port }}}}"
        login_db: "{{{{ bench_database }}}}"
        login_user: "{{{{ bench_user }}}}"
        login_password: "{{{{ bench_password }}}}"
        ssl_mode: verify-full
        ca_cert: "{{{{ bench_ca }}}}"
      register: bench_ping
      failed_when: not bench_ping.is_available
""",
    'noop (ansible.builtin.ping)': """
    - name: "Probe {n}"
      ansible.builtin.ping:
""",
}


def write_playbook(path: pathlib.Path, task_template: str, tasks: int) -> None:
    body = ''.join(task_template.format(n=n) for n in range(1, tasks + 1))
    path.write_text(
        '---\n- name: Benchmark\n  hosts: bench\n  gather_facts: false\n  tasks:' + body
    )


def run_playbook(playbook: pathlib.Path, inventory: pathlib.Path, varsfile: pathlib.Path,
                 timings: pathlib.Path, tmp: pathlib.Path) -> tuple[float, list[dict]]:
    env = dict(os.environ)
    env.update(
        ANSIBLE_CONFIG=str(ROOT / 'ansible.cfg'),
        # Plain Ansible (a new interpreter per task), as when these figures were first taken:
        # mitogen (ansible.cfg) hides the start-up cost alike for both modules.
        ANSIBLE_STRATEGY='linear',
        ANSIBLE_CALLBACK_PLUGINS=str(ROOT / 'benchmarks' / 'callback'),
        ANSIBLE_CALLBACKS_ENABLED='gate_task_timer',
        ANSIBLE_LOCAL_TEMP=str(tmp / 'ansible-local'),
        GATE_BENCH_TIMINGS=str(timings),
        ANSIBLE_NOCOLOR='1',
        PATH=f'{VENV_BIN}{os.pathsep}{env.get("PATH", "")}',
    )
    start = time.perf_counter()
    proc = subprocess.run(
        [str(VENV_BIN / 'ansible-playbook'), '-i', str(inventory), str(playbook), '-e', f'@{varsfile}'],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f'{playbook.name} failed (rc {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-2000:]}')
    records = json.loads(timings.read_text())
    if any(r['status'] != 'ok' for r in records):
        sys.exit(f'{playbook.name}: a task did not succeed: {records}')
    return wall, records


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--runs', type=int, default=7, help='ansible-playbook runs per tool (default 7)')
    parser.add_argument('--tasks', type=int, default=4, help='tasks per run: 1 cold + N-1 warm (default 4)')
    parser.add_argument('--json', type=pathlib.Path, help='also write the figures to this file')
    parser.add_argument('--check', action='store_true', help=f'exit 1 when a ratio exceeds {TARGET_RATIO}')
    args = parser.parse_args()
    if args.runs < 1 or args.tasks < 1:
        parser.error('--runs and --tasks must be >= 1')

    base = pathlib.Path(tempfile.mkdtemp(prefix='bench-gates-', dir='/tmp'))
    base.chmod(0o755)
    (base / 'pki').mkdir(mode=0o755)
    server = PgServer('bench', base / 'pg', free_port(), tls=True, pki=make_pki(base / 'pki'))
    try:
        server.start()
        setup_roles(server)
        varsfile = base / 'vars.json'
        varsfile.write_text(json.dumps({
            'bench_port': server.port, 'bench_database': DATABASE, 'bench_user': USER,
            'bench_password': USER_PASSWORD, 'bench_ca': str(server.pki.ca),
        }))
        varsfile.chmod(0o600)
        inventory = base / 'inventory.json'
        inventory.write_text(json.dumps({'all': {'children': {'bench': {'hosts': {'bench-local': {
            'ansible_connection': 'local', 'ansible_python_interpreter': sys.executable}}}}}}))
        playbooks = {}
        for index, (tool, template) in enumerate(TOOLS.items()):
            playbooks[tool] = base / f'bench-{index}.yml'
            write_playbook(playbooks[tool], template, args.tasks)

        cold = {tool: [] for tool in TOOLS}
        warm = {tool: [] for tool in TOOLS}
        walls = {tool: [] for tool in TOOLS}
        names = list(TOOLS)
        for run in range(args.runs):
            order = names[run % len(names):] + names[:run % len(names)]  # rotate to spread drift
            for tool in order:
                wall, records = run_playbook(playbooks[tool], inventory, varsfile, base / 'timings.json', base)
                walls[tool].append(wall)
                cold[tool].append(records[0]['seconds'])
                warm[tool].extend(r['seconds'] for r in records[1:])
            print(f'run {run + 1}/{args.runs} done', file=sys.stderr)
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)

    def med(values):
        return statistics.median(values) if values else float('nan')

    figures = {tool: {'cold_task_s': med(cold[tool]), 'warm_task_s': med(warm[tool]),
                      'playbook_wall_s': med(walls[tool]), 'runs': args.runs, 'tasks_per_run': args.tasks,
                      'samples': {'cold_task_s': cold[tool], 'warm_task_s': warm[tool], 'playbook_wall_s': walls[tool]}}
               for tool in TOOLS}
    reach, ping, noop = (figures[name] for name in names)
    ratios = {
        'cold_task': reach['cold_task_s'] / ping['cold_task_s'],
        'warm_task': reach['warm_task_s'] / ping['warm_task_s'] if args.tasks > 1 else float('nan'),
        'playbook_wall': reach['playbook_wall_s'] / ping['playbook_wall_s'],
        # Without Ansible's fixed per-task cost (what the modules themselves cost).
        'warm_task_minus_noop': ((reach['warm_task_s'] - noop['warm_task_s'])
                                 / (ping['warm_task_s'] - noop['warm_task_s'])) if args.tasks > 1 else float('nan'),
    }

    print(f'\nmedians over {args.runs} runs x {args.tasks} tasks (first task of a run = cold)')
    print(f'{"tool":32} {"cold task":>10} {"warm task":>10} {"playbook":>10}')
    for tool, fig in figures.items():
        print(f'{tool:32} {fig["cold_task_s"]:>9.3f}s {fig["warm_task_s"]:>9.3f}s {fig["playbook_wall_s"]:>9.3f}s')
    print('\nratio pg_reachability (samples=20) / postgresql_ping:')
    for key, value in ratios.items():
        print(f'  {key:22} {value:.3f}')
    verdict = all(ratios[k] <= TARGET_RATIO for k in ('cold_task', 'warm_task') if ratios[k] == ratios[k])
    print(f'target <= {TARGET_RATIO} per task: {"met" if verdict else "NOT met"}')
    if args.json:
        args.json.write_text(json.dumps({'figures': figures, 'ratios': ratios, 'target': TARGET_RATIO}, indent=2))
    return 1 if args.check and not verdict else 0


if __name__ == '__main__':
    sys.exit(main())
