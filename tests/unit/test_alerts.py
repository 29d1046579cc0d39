"""src/aiadmin_ops/alerts.py against a real HTTP receiver on loopback: one message per condition,
the runbooks' cooldowns, escalation, recovery, an unreachable webhook retried, no secret anywhere."""

from __future__ import annotations

import stat

import pytest

from aiadmin_ops import alerts
from tests.helpers import TOKEN, Receiver


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.server.shutdown()


def test_one_alert_per_condition_cooldowns_escalation_recovery(receiver, tmp_path):
    a = alerts.Alerter(receiver.url, tmp_path, chat_id="-100123")
    pool = {"health:lab-new/pool": ("warning", "server slots 26/27 used (96 %)")}
    keys = {"health:lab-new/session_keys": ("warning", "150 expired")}
    t = 1_000_000.0
    a.process({**pool, **keys}, alerts.HEALTH_SCOPE, now=t)
    assert receiver.texts() == ["[WARNING] health:lab-new/pool: server slots 26/27 used (96 %)",
                                "[WARNING] health:lab-new/session_keys: 150 expired"]
    assert receiver.messages[0]["chat_id"] == "-100123" and receiver.messages[0]["status"] == "warning"
    a.process({**pool, **keys}, alerts.HEALTH_SCOPE, now=t + 299)  # within both cooldowns: nothing
    assert len(receiver.messages) == 2
    a.process({**pool, **keys}, alerts.HEALTH_SCOPE, now=t + 300)  # the pool's 5 min passed, not the keys' 30
    assert len(receiver.messages) == 3 and "pool" in receiver.texts()[-1]
    worse = {"health:lab-new/session_keys": ("critical", "300 expired")}
    a.process({**pool, **worse}, alerts.HEALTH_SCOPE, now=t + 310)  # escalation: at once
    assert receiver.texts()[-1] == "[CRITICAL] health:lab-new/session_keys: 300 expired"
    a.process({"health:lab-new/pool": ("ok", "22/27 used"), **worse}, alerts.HEALTH_SCOPE, now=t + 320)
    assert receiver.texts()[-1] == "[RECOVERED] health:lab-new/pool: 22/27 used"
    a.process({}, alerts.HEALTH_SCOPE, now=t + 330)  # gone from the run: recovered too
    assert receiver.texts()[-1] == "[RECOVERED] health:lab-new/session_keys: no longer reported"
    assert len(receiver.messages) == 6
    a.process({}, alerts.HEALTH_SCOPE, now=t + 340)
    assert len(receiver.messages) == 6  # nothing alerted, nothing to recover


def test_scopes_do_not_clear_each_other(receiver, tmp_path):
    a = alerts.Alerter(receiver.url, tmp_path)
    scope, failed = alerts.run_condition("backup", False, "failed: [run] pg_dump: connection refused")
    a.process(failed, scope, now=1.0)
    a.process({}, alerts.HEALTH_SCOPE, now=2.0)  # a health run knows nothing of the backup
    assert receiver.texts() == ["[CRITICAL] run:backup: failed: [run] pg_dump: connection refused"]
    assert alerts.active(tmp_path, "run:backup")
    a.process(alerts.run_condition("backup", True, "succeeded in 12 s")[1], scope, now=3.0)
    assert receiver.texts()[-1] == "[RECOVERED] run:backup: succeeded in 12 s"
    assert not alerts.active(tmp_path, "run:backup")


def test_an_unreachable_webhook_is_retried_and_no_secret_leaks(tmp_path):
    down = Receiver(status=502)
    try:
        a = alerts.Alerter(down.url, tmp_path)
        summary = "fetch from https://user:hunter2@mirror.example/x failed"
        sent = a.process({"health:lab-new/database": ("critical", summary)}, alerts.HEALTH_SCOPE, now=10.0)
        assert [(s.delivered, s.error) for s in sent] == [(False, "HTTP 502")]
        assert "hunter2" not in down.messages[0]["text"]
        down.status = 200
        again = a.process({"health:lab-new/database": ("critical", summary)}, alerts.HEALTH_SCOPE, now=11.0)
        assert [s.delivered for s in again] == [True], "undelivered: due again at once"
    finally:
        down.server.shutdown()
        down.server.server_close()
    port = down.server.server_port  # nothing listens there now
    gone = alerts.Alerter(f"http://127.0.0.1:{port}/bot{TOKEN}/x", tmp_path / "b")
    sent = gone.process({"health:h/redis": ("critical", "down")}, alerts.HEALTH_SCOPE, now=1.0)
    assert not sent[0].delivered and TOKEN not in sent[0].error and sent[0].error
    for path in (tmp_path / "alerts" / "state.json", tmp_path / "b" / "alerts" / "state.json"):
        text = path.read_text()
        assert TOKEN not in text and "hunter2" not in text
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_cooldowns_and_refusals(tmp_path):
    assert alerts.cooldown("health:lab-new/pool") == 300 == alerts.cooldown("health:x/database")
    assert alerts.cooldown("health:lab-new/session_keys") == 1800
    assert alerts.cooldown("run:backup") == 900 and alerts.cooldown("run:backup", {"default": 60}) == 60
    with pytest.raises(ValueError, match="http"):
        alerts.Alerter("file:///etc/passwd", tmp_path)


def test_health_results_become_conditions():
    result = {"hosts": {"lab-new": {"checks": {"pool": {"status": "warning", "summary": "81 %"},
                                               "redis": {"status": "ok", "summary": "ok"}}}}}
    assert alerts.health_conditions(result) == {"health:lab-new/pool": ("warning", "81 %"),
                                                "health:lab-new/redis": ("ok", "ok")}
    assert alerts.health_conditions({"status": "unknown", "reason": "no inventory", "hosts": {}}) == {
        "health:run": ("unknown", "no inventory")}


def test_the_webhook_comes_from_the_inventory_or_minus_e_and_never_a_placeholder(tmp_path, monkeypatch):
    from aiadmin_ops import cli, runner, state

    monkeypatch.setenv("AIADMIN_STATE_DIR", str(tmp_path))
    lab = state.inventory_path("lab")
    assert not runner.mentions(str(lab), "aiadmin_alert_webhook_url")
    assert cli.alerter_for(lab, [], {}) is None  # the lab names no webhook: no vault read at all
    given = cli.alerter_for(lab, [], {"aiadmin_alert_webhook_url": "http://127.0.0.1:9/hook"})
    assert given is not None and given.url == "http://127.0.0.1:9/hook"
    assert runner.mentions(str(state.inventory_path("production")), "aiadmin_alert_webhook_url")
    data = {"_meta": {"hostvars": {"h": {"aiadmin_alert_chat_id": "<TELEGRAM_CHAT_ID>",
                                         "aiadmin_alert_webhook_url": "{{ vault_aiadmin_alert_webhook_url }}",
                                         "vault_aiadmin_alert_webhook_url": "https://hooks.example/x"}}}}
    assert runner.inventory_var(data, "aiadmin_alert_chat_id") == ""
    assert runner.inventory_var(data, "vault_aiadmin_alert_webhook_url", "aiadmin_alert_webhook_url") == \
        "https://hooks.example/x"
