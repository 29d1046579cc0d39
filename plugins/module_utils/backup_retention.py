# Copyright: aiadmin-ops contributors
# SPDX-License-Identifier: MIT
"""Which database backups to keep: grandfather-father-son buckets plus a minimum keep (like restic `forget`).

The retention rules of the backup_catalog module (plugins/module_utils/backup_catalog.py applies them to a store).
Standard library only: Ansible ships it to the hosts as ansible.module_utils.backup_retention, and it also
imports directly from this file.

`decide_retention(backups, policy, now)` is pure: no I/O, no clock reads (`now` is a parameter). The rules:

1. Only verified backups count, for the buckets and for keep_min. A backup that is neither verified nor failed (not
   yet restore-tested) is always kept: retention never removes it, it may be verified later. Failed backups are
   removed - unless there is no verified backup taken at or before `now`: then nothing at all is removed (a run of
   failures must never erode what exists).
2. The newest verified backup is always kept, whatever the policy (even with all counts 0).
3. Buckets, as in restic: for each of hourly, daily, weekly and monthly, walk the verified backups newest first and
   keep the newest backup of each distinct bucket until `count` buckets are kept. Bucket keys are taken in UTC (the
   UTC hour, the UTC date, the ISO year-week of the UTC date, the UTC year-month), so that DST and other changes of
   local time never merge or split buckets. Buckets count backups, not calendar time: a gap of weeks without backups
   consumes no bucket.
4. keep_min: the keep_min newest verified backups are kept regardless of the buckets.
5. Backups taken after `now` (clock skew) are kept, noted "in the future", and take no part in rules 2-4.
6. Duplicate ids, naive datetimes and negative policy counts are refused with ValueError.

The result: `keep` and `remove` are disjoint, together they are the input, both are sorted newest first (by the
real instant, whatever the time zone of each backup), and `reasons` says, for every backup id, why it is kept or
removed. `plan_text(decision)` renders this as a dry-run listing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone

UNVERIFIED = "not verified (never counted, never removed by retention)"
NEWEST = "newest verified"
KEEP_MIN = "keep_min"
FUTURE = "in the future"
FAILED = "failed"
FAILED_FUTURE = "failed (not removed while in the future)"
FAILED_GUARD = "failed, kept: no verified backup up to now, so nothing is removed"
OUTSIDE = "verified, outside the policy"


def _is_aware(value: datetime) -> bool:
    return value.tzinfo is not None and value.tzinfo.utcoffset(value) is not None


def _require_aware(value: object, what: str) -> datetime:
    if not isinstance(value, datetime):
        raise ValueError(f"{what} must be a datetime, got {type(value).__name__}")
    if not _is_aware(value):
        raise ValueError(f"{what} must be timezone-aware, got the naive datetime {value.isoformat()}")
    return value


@dataclass(frozen=True)
class Backup:
    """One backup. `taken_at` must be timezone-aware (any zone). A backup cannot be both verified and failed."""

    id: str
    taken_at: datetime
    verified: bool
    failed: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id:
            raise ValueError(f"Backup.id must be a non-empty string, got {self.id!r}")
        _require_aware(self.taken_at, f"Backup {self.id!r}: taken_at")
        if self.verified and self.failed:
            raise ValueError(f"Backup {self.id!r} cannot be both verified and failed")

    @property
    def taken_at_utc(self) -> datetime:
        return self.taken_at.astimezone(timezone.utc)


@dataclass(frozen=True)
class Policy:
    """How many hourly/daily/weekly/monthly buckets to keep, and the minimum number of newest verified backups."""

    hourly: int = 24
    daily: int = 30
    weekly: int = 8
    monthly: int = 12
    keep_min: int = 3

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"Policy.{f.name} must be an integer, got {value!r}")
            if value < 0:
                raise ValueError(f"Policy.{f.name} must be >= 0, got {value}")


@dataclass(frozen=True)
class Decision:
    """keep/remove, each newest first; reasons: backup id -> why it is kept (or removed)."""

    keep: list[Backup] = field(default_factory=list)
    remove: list[Backup] = field(default_factory=list)
    reasons: dict[str, list[str]] = field(default_factory=dict)


def _hour(t: datetime) -> str:
    return f"{t.year:04d}-{t.month:02d}-{t.day:02d}T{t.hour:02d}"


def _day(t: datetime) -> str:
    return f"{t.year:04d}-{t.month:02d}-{t.day:02d}"


def _week(t: datetime) -> str:
    year, week, _ = t.isocalendar()
    return f"{year:04d}-W{week:02d}"


def _month(t: datetime) -> str:
    return f"{t.year:04d}-{t.month:02d}"


def _newest_first_key(b: Backup) -> tuple[datetime, str]:
    # Sort by the UTC instant: aware datetimes sharing one tzinfo compare by wall time and ignore `fold`,
    # which puts the repeated hour of a DST change in the wrong order.
    return (b.taken_at_utc, b.id)


def decide_retention(backups: Iterable[Backup], policy: Policy, now: datetime) -> Decision:
    """Decide which backups to keep and which to remove (see the module docstring for the rules)."""
    if not isinstance(policy, Policy):
        raise ValueError(f"policy must be a Policy, got {type(policy).__name__}")
    now_utc = _require_aware(now, "now").astimezone(timezone.utc)
    items = list(backups)
    for b in items:
        if not isinstance(b, Backup):
            raise ValueError(f"backups must be Backup objects, got {type(b).__name__}")
    duplicates = sorted(backup_id for backup_id, n in Counter(b.id for b in items).items() if n > 1)
    if duplicates:
        raise ValueError(f"duplicate backup ids: {', '.join(duplicates)}")

    ordered = sorted(items, key=_newest_first_key, reverse=True)
    reasons: dict[str, list[str]] = {b.id: [] for b in ordered}
    kept: set[str] = set()

    def keep(b: Backup, reason: str) -> None:
        reasons[b.id].append(reason)
        kept.add(b.id)

    future = {b.id for b in ordered if b.taken_at_utc > now_utc}
    countable = [b for b in ordered if b.verified and b.id not in future]  # newest first

    for b in ordered:
        if b.id in future:
            keep(b, FUTURE)

    if countable:
        keep(countable[0], NEWEST)
        buckets: tuple[tuple[str, int, Callable[[datetime], str]], ...] = (
            ("hourly", policy.hourly, _hour),
            ("daily", policy.daily, _day),
            ("weekly", policy.weekly, _week),
            ("monthly", policy.monthly, _month),
        )
        for name, count, bucket_of in buckets:
            taken: set[str] = set()
            for b in countable:
                if len(taken) >= count:
                    break
                key = bucket_of(b.taken_at_utc)
                if key not in taken:
                    taken.add(key)
                    keep(b, f"{name} {key}")
        for b in countable[: policy.keep_min]:
            keep(b, KEEP_MIN)

    for b in ordered:
        if b.failed:
            if b.id in future:
                keep(b, FAILED_FUTURE)
            elif not countable:
                keep(b, FAILED_GUARD)
            else:
                reasons[b.id].append(FAILED)
        elif not b.verified:
            keep(b, UNVERIFIED)
        elif b.id not in kept:
            reasons[b.id].append(OUTSIDE)

    return Decision(
        keep=[b for b in ordered if b.id in kept],
        remove=[b for b in ordered if b.id not in kept],
        reasons=reasons,
    )


def _stamp(b: Backup) -> str:
    return b.taken_at_utc.strftime("%Y-%m-%dT%H:%M:%SZ")


def plan_text(decision: Decision) -> str:
    """A dry-run listing, newest first: "keep <id> <UTC time>: reasons" / "remove <id> <UTC time>: reason"."""
    rows = [("keep", b) for b in decision.keep] + [("remove", b) for b in decision.remove]
    rows.sort(key=lambda row: _newest_first_key(row[1]), reverse=True)
    lines = [f"{action} {b.id} {_stamp(b)}: {'; '.join(decision.reasons.get(b.id, []))}" for action, b in rows]
    lines.append(f"{len(decision.keep)} to keep, {len(decision.remove)} to remove")
    return "\n".join(lines) + "\n"
