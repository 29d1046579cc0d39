"""aiadmin-ops health: one read-only run of playbooks/health.yml, classified, shown, and an exit code.

The playbook (roles/health) records what each check saw on each app host under custom stats
``health.<host>``; this module turns that into a status per check and host, an overall status
line, a readable view or JSON (``schema_version`` 1), and a Nagios-style exit code: 0 OK,
1 WARNING, 2 CRITICAL, 3 UNKNOWN. The worst status wins in the order CRITICAL, WARNING,
UNKNOWN, OK. A host the run could not reach, or a database it could not connect to, is CRITICAL;
a run that could not start (inventory, vault) is UNKNOWN.
"""

from __future__ import annotations

import io
import json
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

SCHEMA_VERSION = 1
OK, WARNING, CRITICAL, UNKNOWN = "ok", "warning", "critical", "unknown"
EXIT = {OK: 0, WARNING: 1, CRITICAL: 2, UNKNOWN: 3}
RANK = {OK: 0, UNKNOWN: 1, WARNING: 2, CRITICAL: 3}  # worst wins
# The modules' levels (pg_pool_health says "warn").
LEVEL = {"ok": OK, "warn": WARNING, "warning": WARNING, "critical": CRITICAL}


@dataclass
class Limits:
    latency_warn_ms: float = 5.0
    latency_critical_ms: float = 20.0
    restarts_warn: int = 3
    memory_warn_pct: float = 75.0
    memory_critical_pct: float = 90.0
    ca_warn_days: float = 30.0
    ca_critical_days: float = 7.0


@dataclass
class Check:
    name: str
    status: str
    summary: str
    data: dict[str, Any] = field(default_factory=dict)


def worst(statuses) -> str:
    statuses = list(statuses)
    return max(statuses, key=RANK.__getitem__) if statuses else UNKNOWN


def _num(value, default=None):
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


def _ms(value) -> str:
    number = _num(value)
    return "?" if number is None else f"{number:.2f}"


def check_database(rec: dict, limits: Limits) -> Check:
    db = rec.get("database") or {}
    lat = db.get("latency_ms") or {}
    data = {"target": db.get("target"), "latency_ms": lat, "server_version": db.get("server_version"),
            "cert_days": _num(db.get("cert_days"))}
    if not db.get("go"):
        stage = db.get("error_stage") or "connect"
        return Check("database", CRITICAL, f"{db.get('target')} unreachable at {stage}: {db.get('error') or 'failed'}",
                     data)
    p95 = _num(lat.get("p95"))
    status = OK
    if p95 is not None and p95 > limits.latency_critical_ms:
        status = CRITICAL
    elif p95 is not None and p95 > limits.latency_warn_ms:
        status = WARNING
    return Check("database", status,
                 f"{db.get('target')}: SELECT 1 p50 {_ms(lat.get('p50'))} / p95 {_ms(lat.get('p95'))} / p99 "
                 f"{_ms(lat.get('p99'))} ms over {lat.get('count', 0)} samples (warning above p95 "
                 f"{limits.latency_warn_ms:g} ms); PostgreSQL {db.get('server_version') or '?'}", data)


def check_pool(rec: dict) -> Check:
    pool = rec.get("pool") or {}
    app = pool.get("app") if isinstance(pool.get("app"), dict) else None
    data = {k: pool.get(k) for k in ("usable", "used", "free", "utilization_pct", "lock_waiters",
                                     "idle_in_transaction", "level")} | {"app": app}
    if not pool.get("checked"):
        return Check("pool", UNKNOWN, pool.get("error") or "not checked (no database connection)", data)
    status = LEVEL.get(pool.get("level"), UNKNOWN)
    app_text = "app pool not reported"
    if app:
        waiting = int(_num(app.get("waiting"), 0))
        app_text = f"app pool {app.get('total')} total, {app.get('idle')} idle, {waiting} waiting"
        if waiting > 0:
            status = worst([status, WARNING])
    return Check("pool", status, f"server slots {pool.get('used')}/{pool.get('usable')} used "
                 f"({pool.get('utilization_pct')} %), {pool.get('free')} free, {pool.get('lock_waiters')} lock "
                 f"waiters; {app_text}", data)


def check_keys(rec: dict) -> Check:
    keys = rec.get("keys") or {}
    data = {k: keys.get(k) for k in ("level", "total_keys", "auth_records", "expired", "buckets")}
    if not keys.get("checked"):
        return Check("session_keys", UNKNOWN, keys.get("error") or "not checked (no database connection)", data)
    status = LEVEL.get(keys.get("level"), UNKNOWN)
    buckets = ", ".join(f"{b} {n}" for b, n in (keys.get("buckets") or {}).items())
    hint = "; run `aiadmin-ops maintain --job keys`" if status in (WARNING, CRITICAL) else ""
    return Check("session_keys", status, f"{keys.get('expired')} expired of {keys.get('total_keys')} keys "
                 f"({buckets}); {keys.get('auth_records')} auth records{hint}", data)


def check_app(rec: dict) -> Check:
    app = rec.get("app") or {}
    body = app.get("body") if isinstance(app.get("body"), dict) else {}
    services = body.get("services") or {}
    data = {"status_code": app.get("status_code"), "status": body.get("status"), "services": services,
            "release": body.get("release")}
    if int(_num(app.get("status_code"), -1)) not in (200, 503):
        return Check("app", CRITICAL, f"/health did not answer: {app.get('error') or 'no answer'}", data)
    down = sorted(name for name, state in services.items() if state not in ("connected", "ok", "up"))
    status = OK if body.get("status") == "healthy" and not down else CRITICAL
    text = f"/health {body.get('status')} (HTTP {app.get('status_code')})"
    if services:
        text += "; " + ", ".join(f"{name} {state}" for name, state in sorted(services.items()))
    if body.get("release"):
        text += f"; release {body['release']}"
    return Check("app", status, text, data)


def check_pm2(rec: dict, limits: Limits) -> Check:
    pm2 = rec.get("pm2") or {}
    procs = pm2.get("processes") or []
    mem = rec.get("memory") or {}
    total = _num((mem.get("real") or {}).get("total"))
    used = _num((mem.get("nocache") or {}).get("used"))
    mem_pct = round(used / total * 100, 1) if total and used is not None else None
    data = {"daemon_running": pm2.get("daemon_running"), "missing": pm2.get("missing") or [],
            "not_online": pm2.get("not_online") or [], "memory_used_pct": mem_pct,
            "processes": [{k: p.get(k) for k in ("name", "status", "restarts", "unstable_restarts", "memory_bytes",
                                                 "uptime_s")}
                          for p in procs]}
    if pm2.get("error") or not pm2.get("daemon_running"):
        return Check("pm2", CRITICAL, pm2.get("error") or "the PM2 daemon does not run", data)
    status, notes = OK, []
    if data["missing"] or data["not_online"]:
        status = CRITICAL
        notes.append("not online: " + ", ".join(data["missing"] + data["not_online"]))
    # PM2's restart count includes every reload (a deploy, a rotation): the crash restarts are the
    # unstable ones (the process died before min_uptime).
    crashing = [f"{p['name']} {p['unstable_restarts']}" for p in procs
                if int(_num(p.get("unstable_restarts"), 0)) >= limits.restarts_warn]
    if crashing:
        status = worst([status, WARNING])
        notes.append(f"crash restarts >= {limits.restarts_warn}: " + ", ".join(crashing))
    if mem_pct is not None and mem_pct > limits.memory_critical_pct:
        status = CRITICAL
    elif mem_pct is not None and mem_pct > limits.memory_warn_pct:
        status = worst([status, WARNING])
    online = sum(1 for p in procs if p.get("status") == "online")
    rss = sum(int(_num(p.get("memory_bytes"), 0)) for p in procs) / 2**20
    text = (f"{online}/{len(procs)} online, {sum(int(_num(p.get('restarts'), 0)) for p in procs)} restarts, "
            f"{rss:.0f} MiB resident; host memory {mem_pct if mem_pct is not None else '?'} % used "
            f"(warning above {limits.memory_warn_pct:g} %)")
    return Check("pm2", status, text + ("; " + "; ".join(notes) if notes else ""), data)


def check_redis(rec: dict) -> Check:
    redis = rec.get("redis") or {}
    data = {"keys": redis.get("keys"), "context_keys": redis.get("context_keys")}
    if not redis.get("ok"):
        return Check("redis", CRITICAL, redis.get("error") or "not reachable", data)
    return Check("redis", OK, f"{redis.get('keys')} keys, {redis.get('context_keys')} context:* keys", data)


def check_egress(rec: dict) -> Check | None:
    egress = rec.get("egress") or {}
    if not egress.get("checked"):
        return None
    if not egress.get("ok"):
        return Check("egress", CRITICAL, f"no answer through the proxy: {egress.get('error') or 'failed'}", {})
    code, _, secs = str(egress.get("answer") or "").partition(" ")
    return Check("egress", OK, f"through the Xray proxy: HTTP {code} in {_ms(_num(secs, 0) * 1000)} ms",
                 {"http_code": code, "seconds": _num(secs)})


def check_ca(rec: dict, limits: Limits, now: datetime) -> Check:
    ca = rec.get("ca") or {}
    if ca.get("error") or not ca.get("not_after"):
        return Check("ca", CRITICAL, f"the provider's CA cannot be read: {ca.get('error') or 'missing'}", {})
    try:
        not_after = datetime.strptime(str(ca["not_after"]), "%Y%m%d%H%M%SZ").replace(tzinfo=timezone.utc)
    except ValueError:
        return Check("ca", UNKNOWN, f"unreadable notAfter {ca['not_after']!r}", {})
    days = round((not_after - now).total_seconds() / 86400, 1)
    status = CRITICAL if days < limits.ca_critical_days else WARNING if days < limits.ca_warn_days else OK
    return Check("ca", status, f"{ca.get('subject') or 'CA'} expires {not_after:%Y-%m-%d} ({days} days)",
                 {"days_to_expiry": days, "not_after": not_after.isoformat()})


def check_backup(rec: dict) -> Check:
    backup = rec.get("backup") or {}
    newest = backup.get("newest_verified") if isinstance(backup.get("newest_verified"), dict) else None
    data = {"health": backup.get("health"), "newest_verified": newest, "last_failure": backup.get("last_failure")}
    if backup.get("error"):
        return Check("backup", UNKNOWN, backup["error"], data)
    status = LEVEL.get(backup.get("health"), UNKNOWN)
    return Check("backup", status, backup.get("msg") or ("newest verified " + str(newest.get("id")) if newest
                                                          else "no verified backup off-host"), data)


def classify(record: dict, limits: Limits, now: datetime | None = None) -> list[Check]:
    now = now or datetime.now(timezone.utc)
    checks = [check_database(record, limits), check_pool(record), check_keys(record), check_app(record),
              check_pm2(record, limits), check_redis(record), check_egress(record), check_ca(record, limits, now),
              check_backup(record)]
    return [c for c in checks if c is not None]


def evaluate(custom_stats: dict, failures: list[dict], hosts: list[str], limits: Limits) -> dict:
    """The whole result: per host its checks and status, the overall status and exit code."""
    records = custom_stats.get("health") or {}
    out_hosts: dict[str, Any] = {}
    for host in sorted(set(records) | set(hosts) | {f["host"] for f in failures if f.get("host")}):
        if host in records:
            checks = classify(records[host], limits)
        else:
            why = "; ".join(f["msg"] for f in failures if f.get("host") == host) or "no result (unreachable?)"
            checks = [Check("host", CRITICAL, f"not checked: {why[:400]}")]
        out_hosts[host] = {"status": worst(c.status for c in checks),
                           "checks": {c.name: {"status": c.status, "summary": c.summary, "data": c.data}
                                      for c in checks}}
    if not out_hosts:
        why = "; ".join(f["msg"] for f in failures)[:600] or "no app host matched"
        return {"status": UNKNOWN, "exit_code": EXIT[UNKNOWN], "reason": why, "hosts": {}}
    status = worst(h["status"] for h in out_hosts.values())
    bad = [f"{host}: {name} {c['status']}" for host, h in out_hosts.items() for name, c in h["checks"].items()
           if c["status"] != OK]
    return {"status": status, "exit_code": EXIT[status], "reason": "; ".join(bad) or "every check ok",
            "hosts": out_hosts}


def render(result: dict) -> str:
    lines = [f"AI Admin health: {result['status'].upper()} - {result['reason']}",
             f"  checked {result.get('checked_at', '?')} in {result.get('duration_s', '?')} s"]
    for host, data in result["hosts"].items():
        lines.append(f"{host}: {data['status'].upper()}")
        for name, check in data["checks"].items():
            lines.append(f"  {check['status'].upper():<8} {name:<13} {check['summary']}")
    return "\n".join(lines)


def run_once(inventory: str, vault_ids: list[str], extravars: dict, limit: str | None, limits: Limits) -> dict:
    from aiadmin_ops.runner import run_playbook

    started = time.time()
    result = run_playbook("playbooks/health.yml", inventory, extravars=extravars, limit=limit, vault_ids=vault_ids,
                          timeout=300, out=io.StringIO())
    evaluated = evaluate(result.custom_stats, result.failures, [], limits)
    evaluated.update(schema_version=SCHEMA_VERSION,
                     checked_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                     duration_s=round(time.time() - started, 1),
                     samples=extravars.get("health_db_samples"), limits=limits.__dict__)
    return evaluated


def main(args, inventory: str, vault_ids: list[str], extravars: dict, alerter=None) -> int:
    limits = Limits(latency_warn_ms=args.latency_warn_ms, latency_critical_ms=args.latency_critical_ms)
    extravars = dict(extravars, health_db_samples=args.samples)
    times = 0
    while True:
        result = run_once(inventory, vault_ids, extravars, args.limit, limits)
        if args.json:
            print(json.dumps(result, sort_keys=True), flush=True)
        else:
            if args.watch and sys.stdout.isatty():
                print("\033[2J\033[H", end="")
            print(render(result), flush=True)
        if alerter is not None:
            from aiadmin_ops import alerts

            # In --json mode stdout stays one JSON document per run: the alert lines go to stderr.
            alerts.report(alerter.process(alerts.health_conditions(result), alerts.HEALTH_SCOPE),
                          sys.stderr if args.json else sys.stdout)
        times += 1
        if not args.watch or (args.times and times >= args.times):
            return result["exit_code"]
        time.sleep(args.watch)
