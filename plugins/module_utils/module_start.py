# Copyright: aiadmin-ops contributors
# SPDX-License-Identifier: MIT
"""The opening every project module shares: check mode supported, parameters validated before
anything is touched (one failure listing every problem)."""

from __future__ import annotations

import time

from ansible.module_utils.basic import AnsibleModule


def start_module(argument_spec, validate):
    """(module, started): the AnsibleModule and the monotonic time its work started."""
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    errors = validate(module.params)
    if errors:
        module.fail_json(msg="invalid parameters: " + "; ".join(errors), duration_ms=0.0)
    return module, time.monotonic()
