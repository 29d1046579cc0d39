"""aiadmin-ops health's classification (src/aiadmin_ops/health.py) on the records roles/health writes.

The records here have the shape the role's set_stats task gives (the lab test runs the real role);
what is checked is each status rule, the worst-wins order and the exit codes."""

from __future__ import annotations

import copy
import json
from datetime import datetime, timedelta, timezone

import pytest

from aiadmin_ops import health

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=timezone.utc)
GOOD = {
    "database": {"go": True, "error": "", "error_stage": None, "target": "10.213.20.10:5432",
                 "latency_ms": {"count": 50, "min": 0.2, "p50": 0.3, "p95": 0.6, "p99": 0.9, "max": 1.1},
                 "server_version": "15.10", "cert_days": 360.0},
    "pool": {"checked": True, "error": "", "level": "ok", "usable": 97, "used": 22, "free": 75,
             "utilization_pct": 22.7, "lock_waiters": 0, "idle_in_transaction": 0,
             "app": {"total": 10, "idle": 9, "waiting": 0}},
    "keys": {"checked": True, "error": "", "level": "ok", "total_keys": 104, "auth_records": 1, "expired": 4,
             "buckets": {"0-1d": 1, "1-7d": 3, "7-14d": 0, "14-30d": 0, ">30d": 0}},
    "app": {"status_code": 200, "error": "", "body": {"status": "healthy", "release": "v1.1.0",
                                                      "services": {"database": "connected", "redis": "connected",
                                                                   "whatsapp": "connected"}}},
    "pm2": {"error": "", "daemon_running": True, "missing": [], "not_online": [],
            "processes": [{"name": "ai-admin-api", "status": "online", "restarts": 0, "memory_bytes": 60 << 20}]},
    "redis": {"ok": True, "error": "", "keys": 12, "context_keys": 3},
    "egress": {"checked": True, "ok": True, "error": "", "answer": "200 0.012"},
    "ca": {"error": "", "not_after": (NOW + timedelta(days=400)).strftime("%Y%m%d%H%M%SZ"), "subject": "LAB CA"},
    "memory": {"real": {"total": 24000, "used": 8000}, "nocache": {"used": 6000}},
    "backup": {"error": "", "health": "ok", "newest_verified": {"id": "ai_admin-20261203T110000Z", "age_s": 3600},
               "last_failure": None, "msg": "1 verified"},
}


def statuses(record: dict) -> dict[str, str]:
    return {c.name: c.status for c in health.classify(record, health.Limits(), NOW)}


def changed(**paths) -> dict:
    record = copy.deepcopy(GOOD)
    for path, value in paths.items():
        *parents, leaf = path.split("__")
        node = record
        for key in parents:
            node = node[key]
        node[leaf] = value
    return record


def test_a_healthy_host_is_ok_on_every_check():
    assert set(statuses(GOOD).values()) == {"ok"}
    result = health.evaluate({"health": {"lab-new": GOOD}}, [], [], health.Limits())
    assert (result["status"], result["exit_code"], result["reason"]) == ("ok", 0, "every check ok")


def test_a_database_that_does_not_answer_is_critical_and_its_other_checks_unknown():
    record = changed(database__go=False, database__error="timed out after 3 s", database__error_stage="tcp",
                     pool__checked=False, keys__checked=False)
    got = statuses(record)
    assert got["database"] == "critical" and got["pool"] == "unknown" and got["session_keys"] == "unknown"
    result = health.evaluate({"health": {"lab-new": record}}, [], [], health.Limits())
    assert result["exit_code"] == 2
    assert "unreachable at tcp: timed out" in result["hosts"]["lab-new"]["checks"]["database"]["summary"]


@pytest.mark.parametrize(("p95", "expected"), [(4.9, "ok"), (5.1, "warning"), (20.5, "critical")])
def test_latency_percentile_limits(p95, expected):
    record = changed(database__latency_ms={"count": 50, "p50": 1, "p95": p95, "p99": p95})
    assert statuses(record)["database"] == expected


def test_levels_from_the_modules_and_the_app_pool_waiting():
    assert statuses(changed(pool__level="critical"))["pool"] == "critical"
    assert statuses(changed(pool__level="warn"))["pool"] == "warning"  # pg_pool_health's word
    assert statuses(changed(pool__app={"total": 10, "idle": 0, "waiting": 4}))["pool"] == "warning"
    keys = health.classify(changed(keys__level="critical", keys__expired=300), health.Limits(), NOW)
    check = next(c for c in keys if c.name == "session_keys")
    assert check.status == "critical" and "maintain --job keys" in check.summary


def test_processes_restarts_and_memory():
    assert statuses(changed(pm2__not_online=["baileys-whatsapp-service"]))["pm2"] == "critical"
    assert statuses(changed(pm2__daemon_running=False))["pm2"] == "critical"
    reloaded = [{"name": "ai-admin-api", "status": "online", "restarts": 9, "unstable_restarts": 0, "memory_bytes": 1}]
    assert statuses(changed(pm2__processes=reloaded))["pm2"] == "ok"  # reloads are not crashes
    crashing = [{"name": "ai-admin-api", "status": "online", "restarts": 9, "unstable_restarts": 3, "memory_bytes": 1}]
    assert statuses(changed(pm2__processes=crashing))["pm2"] == "warning"
    assert statuses(changed(memory={"real": {"total": 1000}, "nocache": {"used": 800}}))["pm2"] == "warning"
    assert statuses(changed(memory={"real": {"total": 1000}, "nocache": {"used": 950}}))["pm2"] == "critical"


def test_app_redis_egress_ca_backup():
    assert statuses(changed(app__body={"status": "degraded", "services": {"whatsapp": "disconnected"}},
                            app__status_code=503))["app"] == "critical"
    assert statuses(changed(app__status_code=-1, app__error="Connection refused"))["app"] == "critical"
    assert statuses(changed(redis__ok=False, redis__error="WRONGPASS"))["redis"] == "critical"
    assert statuses(changed(egress__ok=False))["egress"] == "critical"
    assert "egress" not in statuses(changed(egress__checked=False))
    soon = (NOW + timedelta(days=10)).strftime("%Y%m%d%H%M%SZ")
    assert statuses(changed(ca__not_after=soon))["ca"] == "warning"
    assert statuses(changed(ca__not_after=(NOW + timedelta(days=2)).strftime("%Y%m%d%H%M%SZ")))["ca"] == "critical"
    assert statuses(changed(ca__error="No such file"))["ca"] == "critical"
    assert statuses(changed(backup__health="critical"))["backup"] == "critical"


def test_worst_wins_critical_then_warning_then_unknown():
    assert health.worst(["ok", "unknown", "warning"]) == "warning"
    assert health.worst(["unknown", "critical", "warning"]) == "critical"
    assert health.worst(["ok", "unknown"]) == "unknown"


def test_an_unreachable_host_is_critical_and_no_host_at_all_unknown():
    failures = [{"host": "lab-new", "msg": "podman exec failed", "phase": "main", "task": "x"}]
    result = health.evaluate({}, failures, [], health.Limits())
    assert result["exit_code"] == 2 and result["hosts"]["lab-new"]["checks"]["host"]["status"] == "critical"
    nothing = health.evaluate({}, [{"host": "", "msg": "ERROR! the vault password is wrong", "phase": "start",
                                    "task": "ansible-playbook"}], [], health.Limits())
    assert nothing["exit_code"] == 3 and "vault" in nothing["reason"]


def test_render_and_json_shape():
    result = health.evaluate({"health": {"lab-new": changed(keys__level="warning")}}, [], [], health.Limits())
    result.update(schema_version=health.SCHEMA_VERSION, checked_at="2026-12-03T12:00:00+00:00", duration_s=7.5)
    text = health.render(result)
    assert text.splitlines()[0].startswith("AI Admin health: WARNING - lab-new: session_keys warning")
    assert "p99" in text and "lab-new: WARNING" in text
    doc = json.loads(json.dumps(result))
    assert doc["schema_version"] == 1 and set(doc) >= {"status", "exit_code", "reason", "hosts", "checked_at"}
    assert set(doc["hosts"]["lab-new"]["checks"]["database"]) == {"status", "summary", "data"}
