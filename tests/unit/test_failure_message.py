"""plugins/filter/failure.py: what a rescue may repeat of a failed task's result."""

from __future__ import annotations

import importlib.util

from tests.helpers import ROOT

spec = importlib.util.spec_from_file_location("failure_filter", ROOT / "plugins/filter/failure.py")
failure = importlib.util.module_from_spec(spec)
spec.loader.exec_module(failure)


def test_a_plain_failure_gives_its_message_or_stderr_cut_to_the_limit():
    assert failure.failure_message({"msg": "x" * 900}, 500) == "x" * 500
    assert failure.failure_message({"stderr": "boom"}) == "boom"
    assert failure.failure_message(None) == ""


def test_a_no_log_failure_gives_only_the_gates_summary_or_that_it_is_hidden():
    secret = "pw-CANARY"
    hidden = {"_ansible_no_log": True, "msg": f"login with {secret} failed", "stderr": secret}
    assert failure.failure_message(hidden) == failure.HIDDEN
    gate = dict(hidden, summary="NO-GO pool | projected 42 of 27 reaches critical_pct 50.0%")
    assert failure.failure_message(gate) == gate["summary"] and secret not in failure.failure_message(gate)
