"""plugins/module_utils/backup_retention.py: which backups to keep (GFS buckets in UTC, keep_min, verified/failed,
clock skew)."""

from __future__ import annotations

import random
import sys
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from tests.helpers import ROOT

sys.path.insert(0, str(ROOT / "plugins" / "module_utils"))  # imported straight from the file, as it also is on a host
from backup_retention import (
    FAILED,
    FAILED_GUARD,
    FUTURE,
    KEEP_MIN,
    NEWEST,
    OUTSIDE,
    UNVERIFIED,
    Backup,
    Decision,
    Policy,
    decide_retention,
    plan_text,
)

UTC = timezone.utc
BERLIN = ZoneInfo("Europe/Berlin")
IST = timezone(timedelta(hours=5, minutes=30))
NONE = Policy(hourly=0, daily=0, weekly=0, monthly=0, keep_min=0)  # only the "newest verified" rule is left


def at(text: str, tz: timezone | ZoneInfo = UTC, fold: int = 0) -> datetime:
    """'2026-12-01 10:30' in the given zone (UTC by default)."""
    return datetime.fromisoformat(text).replace(tzinfo=tz, fold=fold)


def bk(backup_id: str, when: str | datetime, *, verified: bool = True, failed: bool = False) -> Backup:
    """A backup; verified unless told otherwise. `when` is a datetime or a UTC '2026-12-01 10:30'."""
    return Backup(backup_id, at(when) if isinstance(when, str) else when, verified=verified, failed=failed)


def only(**counts: int) -> Policy:
    """A policy with every count 0 except the ones given."""
    return Policy(**{"hourly": 0, "daily": 0, "weekly": 0, "monthly": 0, "keep_min": 0, **counts})


def ids(backups: list[Backup]) -> list[str]:
    return [b.id for b in backups]


NOW = at("2027-06-01 00:00")


# --- bucket edges --------------------------------------------------------------------------------------------------


def test_2359_and_0001_utc_are_different_days() -> None:
    backups = [bk("d1-2359", "2026-12-01 23:59"), bk("d2-0001", "2026-12-02 00:01"), bk("d2-0030", "2026-12-02 00:30")]
    d = decide_retention(backups, only(daily=2), NOW)
    assert ids(d.keep) == ["d2-0030", "d1-2359"]
    assert ids(d.remove) == ["d2-0001"]
    assert d.reasons["d2-0030"] == [NEWEST, "daily 2026-12-02"]
    assert d.reasons["d1-2359"] == ["daily 2026-12-01"]
    assert d.reasons["d2-0001"] == [OUTSIDE]

    d = decide_retention(backups, only(daily=1), NOW)
    assert ids(d.keep) == ["d2-0030"]


def test_daily_bucket_is_the_utc_date_not_the_local_one() -> None:
    backups = [
        bk("local-1202-0200", at("2026-12-02 02:00", BERLIN)),  # 2026-12-02 01:00Z
        bk("local-1202-0030", at("2026-12-02 00:30", BERLIN)),  # 2026-12-01 23:30Z: still Dec 1 in UTC
        bk("local-1201-2200", at("2026-12-01 22:00", BERLIN)),  # 2026-12-01 21:00Z
    ]
    d = decide_retention(backups, only(daily=2), NOW)
    assert ids(d.keep) == ["local-1202-0200", "local-1202-0030"]
    assert d.reasons["local-1202-0030"] == ["daily 2026-12-01"]
    assert ids(d.remove) == ["local-1201-2200"]


def test_iso_week_boundary_at_year_end() -> None:
    # 2026 has 53 ISO weeks: Mon 2026-12-28 .. Sun 2027-01-03 is 2026-W53, Mon 2027-01-04 starts 2027-W01.
    backups = [
        bk("mon-0104", "2027-01-04 01:00"),
        bk("sun-0103", "2027-01-03 23:00"),
        bk("thu-1231", "2026-12-31 12:00"),
        bk("mon-1228", "2026-12-28 12:00"),
        bk("sun-1227", "2026-12-27 12:00"),  # 2026-W52
    ]
    d = decide_retention(backups, only(weekly=2), NOW)
    assert ids(d.keep) == ["mon-0104", "sun-0103"]
    assert d.reasons["mon-0104"] == [NEWEST, "weekly 2027-W01"]
    assert d.reasons["sun-0103"] == ["weekly 2026-W53"]

    d = decide_retention(backups, only(weekly=3), NOW)
    assert ids(d.keep) == ["mon-0104", "sun-0103", "sun-1227"]
    assert d.reasons["sun-1227"] == ["weekly 2026-W52"]

    d = decide_retention(backups, only(monthly=2), NOW)
    assert ids(d.keep) == ["mon-0104", "thu-1231"]
    assert d.reasons["thu-1231"] == ["monthly 2026-12"]


def test_iso_week_is_taken_from_the_utc_date() -> None:
    # Monday 00:30 in Helsinki (+02:00) is still Sunday 22:30 UTC, so still 2026-W53.
    helsinki = timezone(timedelta(hours=2))
    backups = [bk("helsinki-mon-0030", at("2027-01-04 00:30", helsinki)), bk("utc-sun-1200", "2027-01-03 12:00")]
    d = decide_retention(backups, only(weekly=2), NOW)
    assert ids(d.keep) == ["helsinki-mon-0030"]
    assert d.reasons["helsinki-mon-0030"] == [NEWEST, "weekly 2026-W53"]
    assert ids(d.remove) == ["utc-sun-1200"]


def test_hourly_edges_and_reason_format() -> None:
    backups = [bk("h11-00", "2026-12-01 11:00"), bk("h10-59", "2026-12-01 10:59"), bk("h10-00", "2026-12-01 10:00")]
    d = decide_retention(backups, only(hourly=5), NOW)
    assert ids(d.keep) == ["h11-00", "h10-59"]
    assert d.reasons["h10-59"] == ["hourly 2026-12-01T10"]
    assert ids(d.remove) == ["h10-00"]


# --- DST ----------------------------------------------------------------------------------------------------------


def test_dst_fall_back_in_berlin_neither_merges_nor_splits_utc_hours() -> None:
    # 2026-10-25 03:00 CEST -> 02:00 CET: the local hour 02:xx happens twice (fold=0 is CEST, fold=1 is CET).
    backups = [
        bk("local-0310", at("2026-10-25 03:10", BERLIN)),  # 02:10Z
        bk("a-cet-0250", at("2026-10-25 02:50", BERLIN, fold=1)),  # 01:50Z
        bk("a-cet-0210", at("2026-10-25 02:10", BERLIN, fold=1)),  # 01:10Z
        bk("z-cest-0250", at("2026-10-25 02:50", BERLIN, fold=0)),  # 00:50Z
        bk("z-cest-0210", at("2026-10-25 02:10", BERLIN, fold=0)),  # 00:10Z
        bk("local-0130", at("2026-10-25 01:30", BERLIN)),  # 2026-10-24 23:30Z
    ]
    random.Random(7).shuffle(backups)
    d = decide_retention(backups, only(hourly=10), NOW)
    # Four UTC hours (not three local ones), the newest backup of each; the order is the real one.
    assert ids(d.keep) == ["local-0310", "a-cet-0250", "z-cest-0250", "local-0130"]
    assert d.reasons["a-cet-0250"] == ["hourly 2026-10-25T01"]
    assert d.reasons["z-cest-0250"] == ["hourly 2026-10-25T00"]
    assert d.reasons["local-0130"] == ["hourly 2026-10-24T23"]
    # The same wall time twice: the CET one is an hour later (a wall-clock sort would get this backwards).
    assert ids(d.remove) == ["a-cet-0210", "z-cest-0210"]

    d = decide_retention(backups, only(hourly=3), NOW)
    assert ids(d.keep) == ["local-0310", "a-cet-0250", "z-cest-0250"]


def test_dst_spring_forward_in_berlin_keeps_utc_hours_contiguous() -> None:
    # 2026-03-29 02:00 CET -> 03:00 CEST: local 01:xx and 03:xx are adjacent UTC hours 00 and 01.
    backups = [
        bk("local-0330", at("2026-03-29 03:30", BERLIN)),  # 01:30Z
        bk("local-0150", at("2026-03-29 01:50", BERLIN)),  # 00:50Z
        bk("local-0110", at("2026-03-29 01:10", BERLIN)),  # 00:10Z
        bk("local-0050", at("2026-03-29 00:50", BERLIN)),  # 2026-03-28 23:50Z
    ]
    d = decide_retention(backups, only(hourly=2), NOW)
    assert ids(d.keep) == ["local-0330", "local-0150"]
    assert d.reasons["local-0330"] == [NEWEST, "hourly 2026-03-29T01"]
    assert d.reasons["local-0150"] == ["hourly 2026-03-29T00"]


# --- gaps ---------------------------------------------------------------------------------------------------------


def test_gaps_consume_no_buckets() -> None:
    backups = [
        bk("w14-tue", "2026-03-31 03:00"),
        bk("w14-mon", "2026-03-30 03:00"),
        bk("w08-mon", "2026-02-16 03:00"),  # six empty weeks before and after
        bk("w02-tue", "2026-01-06 03:00"),
        bk("w02-mon", "2026-01-05 03:00"),
    ]
    d = decide_retention(backups, only(weekly=3), NOW)
    assert ids(d.keep) == ["w14-tue", "w08-mon", "w02-tue"]
    assert ids(d.remove) == ["w14-mon", "w02-mon"]


def test_months_apart_each_fill_a_monthly_bucket() -> None:
    backups = [bk("dec", "2026-12-15 03:00"), bk("jun", "2026-06-15 03:00"), bk("jan", "2026-01-15 03:00")]
    d = decide_retention(backups, only(monthly=3), NOW)
    assert ids(d.keep) == ["dec", "jun", "jan"]
    assert d.remove == []


# --- verified / unverified / failed --------------------------------------------------------------------------------


def _failure_run() -> list[Backup]:
    verified = [bk(f"ok-11{day}", f"2026-11-{day} 03:00") for day in range(25, 30)]
    failed = [bk(f"fail-{i}", at("2026-11-30 03:00") + timedelta(days=i), verified=False, failed=True)
              for i in range(10)]
    return verified + failed


def test_run_of_failures_keeps_the_verified_and_removes_only_failures() -> None:
    d = decide_retention(_failure_run(), Policy(), at("2026-12-10 12:00"))
    assert ids(d.keep) == ["ok-1129", "ok-1128", "ok-1127", "ok-1126", "ok-1125"]
    assert ids(d.remove) == [f"fail-{i}" for i in range(9, -1, -1)]
    assert all(d.reasons[f"fail-{i}"] == [FAILED] for i in range(10))
    assert NEWEST in d.reasons["ok-1129"]


def test_failures_count_neither_for_keep_min_nor_for_buckets() -> None:
    d = decide_retention(_failure_run(), only(keep_min=3), at("2026-12-10 12:00"))
    assert ids(d.keep) == ["ok-1129", "ok-1128", "ok-1127"]
    assert ids(d.remove)[-2:] == ["ok-1126", "ok-1125"]

    backups = [
        bk("fail-1130", "2026-12-01 11:30", verified=False, failed=True),
        bk("fail-1030", "2026-12-01 10:30", verified=False, failed=True),
        bk("ok-1005", "2026-12-01 10:05"),
        bk("ok-0905", "2026-12-01 09:05"),
    ]
    d = decide_retention(backups, only(hourly=2), NOW)
    assert ids(d.keep) == ["ok-1005", "ok-0905"]
    assert d.reasons["ok-1005"] == [NEWEST, "hourly 2026-12-01T10"]
    assert d.reasons["ok-0905"] == ["hourly 2026-12-01T09"]


def test_all_failed_removes_nothing() -> None:
    backups = [bk(f"fail-{i}", at("2026-12-01 03:00") + timedelta(days=i), verified=False, failed=True)
               for i in range(5)]
    backups.append(bk("pending", "2026-11-30 03:00", verified=False))
    d = decide_retention(backups, Policy(), NOW)
    assert d.remove == []
    assert ids(d.keep) == ["fail-4", "fail-3", "fail-2", "fail-1", "fail-0", "pending"]
    assert d.reasons["fail-0"] == [FAILED_GUARD]
    assert d.reasons["pending"] == [UNVERIFIED]


def test_a_verified_backup_only_in_the_future_does_not_lift_the_guard() -> None:
    now = at("2026-12-01 12:00")
    backups = [bk("skewed", "2026-12-01 18:00"), bk("fail", "2026-12-01 11:00", verified=False, failed=True)]
    d = decide_retention(backups, Policy(), now)
    assert d.remove == []
    assert d.reasons["skewed"] == [FUTURE]
    assert d.reasons["fail"] == [FAILED_GUARD]


def test_no_backups_gives_an_empty_decision() -> None:
    assert decide_retention([], Policy(), NOW) == Decision(keep=[], remove=[], reasons={})


def test_unverified_backups_are_kept_and_never_counted() -> None:
    backups = [
        bk("new-pending-2", "2026-12-05 03:00", verified=False),
        bk("new-pending-1", "2026-12-04 03:00", verified=False),
        bk("ok-3", "2026-12-03 03:00"),
        bk("ok-2", "2026-12-02 03:00"),
        bk("ok-1", "2026-12-01 03:00"),
        bk("old-pending", "2026-01-01 03:00", verified=False),
    ]
    d = decide_retention(backups, only(keep_min=2), NOW)
    assert ids(d.keep) == ["new-pending-2", "new-pending-1", "ok-3", "ok-2", "old-pending"]
    assert ids(d.remove) == ["ok-1"]
    assert d.reasons["new-pending-2"] == [UNVERIFIED]
    assert d.reasons["old-pending"] == [UNVERIFIED]
    assert d.reasons["ok-3"] == [NEWEST, KEEP_MIN]
    assert d.reasons["ok-2"] == [KEEP_MIN]

    d = decide_retention(backups, only(daily=2), NOW)  # two days with a verified backup: Dec 3 and Dec 2
    assert ids(d.remove) == ["ok-1"]


def test_the_newest_verified_survives_an_all_zero_policy() -> None:
    backups = [bk(f"ok-{i}", at("2026-12-01 03:00") + timedelta(hours=i)) for i in range(5)]
    backups.append(bk("pending", "2026-12-02 03:00", verified=False))
    d = decide_retention(backups, NONE, NOW)
    assert ids(d.keep) == ["pending", "ok-4"]
    assert d.reasons["ok-4"] == [NEWEST]
    assert ids(d.remove) == ["ok-3", "ok-2", "ok-1", "ok-0"]


def test_keep_min_larger_than_the_number_of_backups() -> None:
    backups = [bk(f"ok-{i}", at("2026-12-01 03:00") + timedelta(days=i)) for i in range(4)]
    backups.append(bk("fail", "2026-12-09 03:00", verified=False, failed=True))
    d = decide_retention(backups, only(keep_min=10), NOW)
    assert ids(d.keep) == ["ok-3", "ok-2", "ok-1", "ok-0"]
    assert all(KEEP_MIN in d.reasons[f"ok-{i}"] for i in range(4))
    assert ids(d.remove) == ["fail"]


def test_the_newest_backup_collects_every_reason_with_the_default_policy() -> None:
    d = decide_retention([bk("only", "2026-12-01 10:30")], Policy(), NOW)
    assert d.reasons["only"] == [NEWEST, "hourly 2026-12-01T10", "daily 2026-12-01", "weekly 2026-W49",
                                 "monthly 2026-12", KEEP_MIN]


# --- clock skew ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("now", [at("2026-12-01 12:00"), at("2026-12-01 17:30", IST)])  # the same instant
def test_future_backups_are_kept_noted_and_consume_no_bucket(now: datetime) -> None:
    backups = [
        bk("future-fail", "2026-12-01 15:00", verified=False, failed=True),
        bk("future", "2026-12-01 14:00"),
        bk("at-now", "2026-12-01 12:00"),  # not in the future
        bk("past-1", "2026-12-01 11:00"),
        bk("past-2", "2026-12-01 10:00"),
    ]
    d = decide_retention(backups, only(hourly=2), now)
    assert ids(d.keep) == ["future-fail", "future", "at-now", "past-1"]
    assert d.reasons["future"] == [FUTURE]
    assert FUTURE in d.reasons["future-fail"]
    assert d.reasons["at-now"] == [NEWEST, "hourly 2026-12-01T12"]
    assert d.reasons["past-1"] == ["hourly 2026-12-01T11"]
    assert ids(d.remove) == ["past-2"]


def test_future_backups_do_not_count_for_keep_min() -> None:
    now = at("2026-12-01 12:00")
    backups = [bk("future-1", "2026-12-02 00:00"), bk("future-2", "2026-12-01 23:00"),
               bk("past-1", "2026-12-01 11:00"), bk("past-2", "2026-12-01 10:00"), bk("past-3", "2026-12-01 09:00")]
    d = decide_retention(backups, only(keep_min=2), now)
    assert ids(d.keep) == ["future-1", "future-2", "past-1", "past-2"]
    assert ids(d.remove) == ["past-3"]


# --- refused input ------------------------------------------------------------------------------------------------


def test_duplicate_ids_are_refused() -> None:
    backups = [bk("a", "2026-12-01 10:00"), bk("b", "2026-12-01 11:00"), bk("a", "2026-12-01 12:00")]
    with pytest.raises(ValueError, match=r"duplicate backup ids: a$"):
        decide_retention(backups, Policy(), NOW)


def test_naive_now_is_refused() -> None:
    with pytest.raises(ValueError, match="now must be timezone-aware"):
        decide_retention([bk("a", "2026-12-01 10:00")], Policy(), datetime(2027, 1, 1))


def test_naive_taken_at_is_refused() -> None:
    with pytest.raises(ValueError, match="taken_at must be timezone-aware"):
        Backup("a", datetime(2026, 12, 1, 10), verified=True)


def test_a_backup_cannot_be_verified_and_failed() -> None:
    with pytest.raises(ValueError, match="both verified and failed"):
        bk("a", "2026-12-01 10:00", verified=True, failed=True)


@pytest.mark.parametrize("name", ["hourly", "daily", "weekly", "monthly", "keep_min"])
def test_negative_policy_counts_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match=rf"Policy\.{name} must be >= 0, got -1"):
        Policy(**{name: -1})


@pytest.mark.parametrize("value", [1.5, "3", True, None])
def test_non_integer_policy_counts_are_refused(value: object) -> None:
    with pytest.raises(ValueError, match=r"Policy\.daily must be an integer"):
        Policy(daily=value)  # type: ignore[arg-type]


def test_policy_defaults() -> None:
    assert Policy() == Policy(hourly=24, daily=30, weekly=8, monthly=12, keep_min=3)


# --- a realistic month --------------------------------------------------------------------------------------------


def test_30_days_of_hourly_backups_with_the_default_policy() -> None:
    # 720 backups at hh:30 UTC, 2026-11-01 00:30 .. 2026-11-30 23:30, all verified.
    start = at("2026-11-01 00:30")
    backups = [bk(f"b{i:03d}", start + timedelta(hours=i)) for i in range(30 * 24)]
    random.Random(1).shuffle(backups)
    d = decide_retention(backups, Policy(), at("2026-12-01 00:00"))
    # hourly 24:  the last 24 backups, 2026-11-30 00:30 .. 23:30 (b696 .. b719).
    # daily 30:   the 23:30 backup of each of the 30 days; Nov 30's is already kept, 29 more (b023, b047, .. b695).
    # weekly 8:   only 6 ISO weeks exist (W44 ends Sun Nov 1, W45..W48 end on Sundays Nov 8..29, W49 starts Mon
    #             Nov 30); the newest of each is a 23:30 backup, all kept already as daily.
    # monthly 12: only November, its newest backup is b719, kept. keep_min 3 and newest verified: b717..b719, kept.
    expected = {f"b{i:03d}" for i in range(696, 720)} | {f"b{day * 24 + 23:03d}" for day in range(29)}
    assert len(expected) == 53
    assert set(ids(d.keep)) == expected
    assert len(d.keep) == 53
    assert len(d.remove) == 720 - 53
    assert d.reasons["b719"][0] == NEWEST
    assert d.reasons["b023"] == ["daily 2026-11-01", "weekly 2026-W44"]


# --- invariants over generated sets ---------------------------------------------------------------------------------


def _bucket_keys(t: datetime) -> dict[str, str]:
    t = t.astimezone(UTC)
    iso = t.isocalendar()
    return {"hourly": t.strftime("%Y-%m-%dT%H"), "daily": t.strftime("%Y-%m-%d"),
            "weekly": f"{iso[0]}-W{iso[1]:02d}", "monthly": t.strftime("%Y-%m")}


def _generated(seed: int) -> tuple[list[Backup], Policy, datetime]:
    rng = random.Random(seed)
    zones = [UTC, BERLIN, ZoneInfo("America/New_York"), IST]
    now = at("2026-10-25 01:00") + timedelta(minutes=rng.randint(0, 60 * 24 * 60))
    backups = []
    for i in range(rng.randint(0, 400)):
        taken = (now - timedelta(minutes=rng.randint(-600, 60 * 24 * 400))).astimezone(rng.choice(zones))
        state = rng.random()
        backups.append(Backup(f"g{seed}-{i}", taken, verified=state < 0.7, failed=state > 0.85))
    policy = Policy(*(rng.randint(0, 30) for _ in range(5)))
    return backups, policy, now


@pytest.mark.parametrize("seed", range(8))
def test_invariants_over_generated_sets(seed: int) -> None:
    backups, policy, now = _generated(seed)
    d = decide_retention(backups, policy, now)
    kept, removed = set(ids(d.keep)), set(ids(d.remove))

    # Disjoint, and together exactly the input; every backup has a reason.
    assert not kept & removed
    assert sorted(ids(d.keep) + ids(d.remove)) == sorted(ids(backups))
    assert set(d.reasons) == set(ids(backups))
    assert all(d.reasons[b.id] for b in backups)
    # Newest first, by the real instant.
    for lst in (d.keep, d.remove):
        instants = [b.taken_at.astimezone(UTC) for b in lst]
        assert instants == sorted(instants, reverse=True)
    # The input order does not matter.
    shuffled = backups[:]
    random.Random(seed + 100).shuffle(shuffled)
    again = decide_retention(shuffled, policy, now)
    assert (ids(again.keep), ids(again.remove), again.reasons) == (ids(d.keep), ids(d.remove), d.reasons)

    future = {b.id for b in backups if b.taken_at > now}
    assert future <= kept
    assert {b.id for b in backups if not b.verified and not b.failed} <= kept
    countable = sorted((b for b in backups if b.verified and b.id not in future),
                       key=lambda b: b.taken_at.astimezone(UTC), reverse=True)
    if not countable:
        assert removed == set()
        return
    assert {b.id for b in backups if b.failed and b.id not in future} <= removed
    assert removed <= {b.id for b in countable} | {b.id for b in backups if b.failed}
    assert countable[0].id in kept
    assert {b.id for b in countable[: policy.keep_min]} <= kept
    # Each bucket reason names the newest countable backup of that bucket, and exactly min(count, buckets) are kept.
    for name in ("hourly", "daily", "weekly", "monthly"):
        newest_of: dict[str, str] = {}
        for b in countable:
            newest_of.setdefault(_bucket_keys(b.taken_at)[name], b.id)
        given = {r.split(" ", 1)[1]: bid for bid, rs in d.reasons.items() for r in rs if r.startswith(name + " ")}
        assert len(given) == min(getattr(policy, name), len(newest_of))
        assert all(newest_of[key] == bid for key, bid in given.items())
        # The kept buckets are the newest ones.
        assert sorted(given, reverse=True) == sorted(newest_of, reverse=True)[: len(given)]
    # Nothing verified is kept without a rule: each kept countable backup has some reason other than the notes.
    for b in countable:
        assert (b.id in kept) == (d.reasons[b.id] != [OUTSIDE])

    assert len(plan_text(d).splitlines()) == len(backups) + 1


# --- plan_text ----------------------------------------------------------------------------------------------------


def test_plan_text_lists_every_backup_newest_first() -> None:
    backups = [
        bk("pending", at("2026-12-01 08:30", BERLIN), verified=False),  # 07:30Z
        bk("ok-new", "2026-12-01 10:30"),
        bk("broken", "2026-12-01 09:30", verified=False, failed=True),
        bk("ok-old", "2026-11-30 10:30"),
    ]
    text = plan_text(decide_retention(backups, only(daily=1), NOW))
    assert text == (
        "keep ok-new 2026-12-01T10:30:00Z: newest verified; daily 2026-12-01\n"
        "remove broken 2026-12-01T09:30:00Z: failed\n"
        f"keep pending 2026-12-01T07:30:00Z: {UNVERIFIED}\n"
        "remove ok-old 2026-11-30T10:30:00Z: verified, outside the policy\n"
        "2 to keep, 2 to remove\n"
    )


def test_plan_text_of_nothing() -> None:
    assert plan_text(decide_retention([], Policy(), NOW)) == "0 to keep, 0 to remove\n"
