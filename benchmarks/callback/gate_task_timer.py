# Copyright: aiadmin-ops contributors
# SPDX-License-Identifier: MIT
"""Benchmark helper: write the wall time of every task to a JSON file.

Enabled only by benchmarks/bench_gates.py (ANSIBLE_CALLBACK_PLUGINS + ANSIBLE_CALLBACKS_ENABLED);
the file name comes from the GATE_BENCH_TIMINGS environment variable.
"""

# Ansible plugin layout: DOCUMENTATION comes before the imports.
# ruff: noqa: E402

from __future__ import annotations

DOCUMENTATION = r"""
name: gate_task_timer
type: aggregate
short_description: Record per-task wall time for benchmarks/bench_gates.py
description:
  - Writes [{task, host, status, seconds}] to the file named by E(GATE_BENCH_TIMINGS)
    when the playbook ends. A task's time runs from its start to its host's result.
requirements:
  - enabled through ANSIBLE_CALLBACKS_ENABLED
"""

import json
import os
import time

from ansible.plugins.callback import CallbackBase


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = 'aggregate'
    CALLBACK_NAME = 'gate_task_timer'
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._records = []
        self._task = None
        self._started = 0.0

    def v2_playbook_on_task_start(self, task, is_conditional):
        self._task = task.get_name()
        self._started = time.perf_counter()

    def _record(self, result, status):
        self._records.append({
            'task': self._task,
            'host': result._host.get_name(),
            'status': status,
            'seconds': time.perf_counter() - self._started,
        })

    def v2_runner_on_ok(self, result):
        self._record(result, 'ok')

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._record(result, 'failed')

    def v2_runner_on_unreachable(self, result):
        self._record(result, 'unreachable')

    def v2_playbook_on_stats(self, stats):
        target = os.environ.get('GATE_BENCH_TIMINGS')
        if target:
            with open(target, 'w', encoding='utf-8') as handle:
                json.dump(self._records, handle)
