# Copyright: aiadmin-ops contributors
# SPDX-License-Identifier: MIT
"""Expired WhatsApp session keys (the runbook's rule): health counts and a batched cleanup.

A key of ``whatsapp_keys`` is expired when ``expires_at < now()`` or when it was not updated for
``max_age_days`` (30). Expired keys fall into the runbook's age buckets: 0-1 d, 1-7 d, 7-14 d and
14-30 d by the time since ``expires_at``; > 30 d for the keys not updated for ``max_age_days``
(and for the ones whose expiry is older than that). The credentials (``whatsapp_auth``) are
never touched, and neither is any key type on the protected list.

The cleanup deletes per company in batches, each batch its own transaction with
``lock_timeout`` and ``statement_timeout`` set locally; the expiry condition is part of the
DELETE itself, so a key the app refreshes while a batch waits for its row lock is re-checked and
kept. A batch that times out is rolled back whole; the batches before it stay committed.
"""

from __future__ import annotations

import contextlib
import time

BUCKETS = ("0-1d", "1-7d", "7-14d", "14-30d", ">30d")
DEFAULT_PROTECTED = ("app-state-sync-key", "app-state-sync-version", "creds")

# %(days)s: max_age_days; %(protected)s: key types never counted as deletable nor deleted.
_EXPIRED = """(k.expires_at < now() OR k.updated_at < now() - make_interval(days => %(days)s))"""
_BUCKET = """CASE WHEN k.updated_at < now() - make_interval(days => %(days)s) THEN '>30d'
     WHEN now() - k.expires_at < interval '1 day' THEN '0-1d'
     WHEN now() - k.expires_at < interval '7 days' THEN '1-7d'
     WHEN now() - k.expires_at < interval '14 days' THEN '7-14d'
     WHEN now() - k.expires_at < interval '30 days' THEN '14-30d'
     ELSE '>30d' END"""

HEALTH_SQL = """
SELECT k.company_id::text AS company, """ + _BUCKET + """ AS bucket,
       count(*) FILTER (WHERE NOT (k.key_type = ANY(%(protected)s)))::bigint AS deletable,
       count(*)::bigint AS expired
FROM whatsapp_keys k
WHERE """ + _EXPIRED + """ AND (%(companies)s::text[] IS NULL OR k.company_id::text = ANY(%(companies)s::text[]))
GROUP BY 1, 2
"""
TOTALS_SQL = """
SELECT (SELECT count(*) FROM whatsapp_keys k
        WHERE %(companies)s::text[] IS NULL OR k.company_id::text = ANY(%(companies)s::text[]))::bigint,
       (SELECT count(*) FROM whatsapp_auth a
        WHERE %(companies)s::text[] IS NULL OR a.company_id::text = ANY(%(companies)s::text[]))::bigint
"""
# One batch: the rows are chosen and re-checked in the DELETE (EvalPlanQual re-evaluates the
# WHERE on a row another session updated meanwhile).
DELETE_SQL = """
DELETE FROM whatsapp_keys k
WHERE (k.company_id, k.key_type, k.key_id) IN (
        SELECT c.company_id, c.key_type, c.key_id FROM whatsapp_keys c
        WHERE c.company_id::text = %(company)s AND NOT (c.key_type = ANY(%(protected)s))
          AND (c.expires_at < now() OR c.updated_at < now() - make_interval(days => %(days)s))
        LIMIT %(batch)s)
  AND k.company_id::text = %(company)s AND NOT (k.key_type = ANY(%(protected)s)) AND """ + _EXPIRED + """
RETURNING """ + _BUCKET + """ AS bucket
"""  # noqa: S608 (constants only; every value is a bound parameter)


def empty_buckets():
    return dict.fromkeys(BUCKETS, 0)


def level_of(expired, warn, critical):
    """The runbook's thresholds: more than `warn` expired keys is a warning, more than
    `critical` is critical."""
    if expired > critical:
        return "critical"
    if expired > warn:
        return "warning"
    return "ok"


def query_params(params):
    companies = [str(c) for c in params.get("companies") or []] or None
    return {"days": params["max_age_days"], "protected": list(params["protected_key_types"]),
            "companies": companies}


def _run(conn, sql, params=None):
    cur = conn.cursor()
    try:
        cur.execute(sql, params)
        return cur.fetchall() if cur.description else []
    finally:
        cur.close()


def _rollback_quietly(conn):
    with contextlib.suppress(Exception):  # the connection itself is gone; nothing is left to undo
        _run(conn, "ROLLBACK")


def health(conn, params):
    """Counts in one read-only transaction (conn in autocommit, psycopg 3 or psycopg2): keys and
    auth records, the expired keys per company and bucket, and how many of them the cleanup may
    delete (not a protected type)."""
    qp = query_params(params)
    _run(conn, "BEGIN TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
    try:
        total_keys, auth_records = _run(conn, TOTALS_SQL, qp)[0]
        rows = _run(conn, HEALTH_SQL, qp)
    finally:
        _rollback_quietly(conn)
    buckets, deletable_buckets, per_company = empty_buckets(), empty_buckets(), {}
    expired = deletable = 0
    for company, bucket, n_deletable, n_expired in rows:
        entry = per_company.setdefault(company, {"expired": 0, "deletable": 0, "buckets": empty_buckets(),
                                                 "deletable_buckets": empty_buckets()})
        entry["expired"] += n_expired
        entry["deletable"] += n_deletable
        entry["buckets"][bucket] += n_expired
        entry["deletable_buckets"][bucket] += n_deletable
        buckets[bucket] += n_expired
        deletable_buckets[bucket] += n_deletable
        expired += n_expired
        deletable += n_deletable
    for entry in per_company.values():
        entry["level"] = level_of(entry["expired"], params["warn_count"], params["critical_count"])
    return {
        "total_keys": total_keys, "auth_records": auth_records, "expired": expired, "deletable": deletable,
        "buckets": buckets, "deletable_buckets": deletable_buckets, "companies": per_company,
        "level": level_of(expired, params["warn_count"], params["critical_count"]),
    }


def cleanup(conn, params, companies, progress=None):
    """Delete the deletable expired keys of each company in batches, each its own transaction
    (conn in autocommit). Returns (deleted, batches, error): deleted per bucket and per company;
    error is the message of the batch that failed (rolled back whole), after which nothing more
    is deleted."""
    qp = query_params(params)
    deleted = {"total": 0, "buckets": empty_buckets(), "companies": {}}
    batches = 0
    pause = params["pause_ms"] / 1000.0
    for company in companies:
        mine = deleted["companies"].setdefault(company, {"total": 0, "buckets": empty_buckets()})
        while True:
            try:
                _run(conn, "BEGIN")
                _run(conn, "SELECT set_config('lock_timeout', %(lock)s, true), "
                           "set_config('statement_timeout', %(stmt)s, true)",
                     {"lock": "%dms" % params["lock_timeout_ms"], "stmt": "%dms" % params["statement_timeout_ms"]})
                rows = _run(conn, DELETE_SQL, dict(qp, company=company, batch=params["batch_size"]))
                _run(conn, "COMMIT")
            except Exception as exc:  # the driver's error: lock_timeout, statement_timeout, connection
                _rollback_quietly(conn)
                return deleted, batches, "batch %d (company %s) rolled back, nothing of it deleted: %s" % (
                    batches + 1, company, " ".join(str(exc).split())[:400])
            batches += 1
            for (bucket,) in rows:
                mine["buckets"][bucket] += 1
                deleted["buckets"][bucket] += 1
            mine["total"] += len(rows)
            deleted["total"] += len(rows)
            if progress:
                progress(company, batches, deleted["total"])
            if len(rows) < params["batch_size"]:
                break
            if pause:
                time.sleep(pause)
    return deleted, batches, None
