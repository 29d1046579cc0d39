"""The linear strategy on mitogen: modules run in a persistent Python on each host.

ansible.cfg selects it (``strategy = mitogen_linear``); this file only makes the strategy that
the ``mitogen`` package installs findable from the project's ``strategy_plugins`` path, so
that no path into the virtualenv is written into the configuration. ``ANSIBLE_STRATEGY=linear``
runs everything without it (Molecule does: its scenarios prove the roles on plain Ansible).
"""

from __future__ import annotations

from ansible_mitogen.plugins.strategy.mitogen_linear import StrategyModule

__all__ = ["StrategyModule"]
