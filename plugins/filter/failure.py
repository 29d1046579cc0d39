# Copyright: aiadmin-ops contributors
# SPDX-License-Identifier: MIT
"""`ansible_failed_result | failure_message(500)`: the message of a failed task for the rescue's
records (stdout, reports, the ledger, notifications). A task marked no_log keeps its result out of
the output, but a rescue still sees it in ansible_failed_result (its msg can quote a password or a
URL with a token): then only its `summary` is given when it has one (the gate modules return it,
documented to name no secret: their tasks are no_log only for the password they are passed),
else the fact that it is hidden."""

from __future__ import annotations

HIDDEN = "(the failed task is no_log: its message is not repeated)"


def failure_message(result, limit=500):
    if not isinstance(result, dict):
        return ""
    if result.get("_ansible_no_log"):
        summary = result.get("summary")
        return str(summary)[: int(limit)] if isinstance(summary, str) and summary else HIDDEN
    text = result.get("msg") or result.get("stderr") or ""
    return str(text)[: int(limit)]


class FilterModule:
    def filters(self):
        return {"failure_message": failure_message}
