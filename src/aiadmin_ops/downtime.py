"""Measure service downtime: poll health URLs; the service is up while ANY of them is healthy.

During a migration the app runs on the old host, then (after the cutover) on the new one;
WhatsApp users see an outage exactly while neither answers healthy. The longest such gap is
the measured downtime.
"""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request


def healthy(url: str, timeout: float) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - lab/inventory URLs
            return resp.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


class AnyProbe:
    def __init__(self, urls: list[str], interval: float = 0.1, timeout: float = 1.0):
        if not urls:
            raise ValueError("AnyProbe needs at least one URL")
        self.urls, self.interval, self.timeout = urls, interval, timeout
        self.samples = 0
        self.failures = 0
        self.gaps: list[tuple[float, float]] = []  # (start, end) of every down period
        self._down_since: float | None = None
        self._stop = threading.Event()

    def poll_once(self) -> bool:
        now = time.time()
        up = any(healthy(u, self.timeout) for u in self.urls)
        self.samples += 1
        if up and self._down_since is not None:
            self.gaps.append((self._down_since, now))
            self._down_since = None
        elif not up:
            self.failures += 1
            if self._down_since is None:
                self._down_since = now
        return up

    def run(self, duration: float | None = None) -> None:
        deadline = None if duration is None else time.monotonic() + duration
        while not self._stop.is_set() and (deadline is None or time.monotonic() < deadline):
            started = time.monotonic()
            self.poll_once()
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - started)))

    def stop(self) -> None:
        self._stop.set()
        if self._down_since is not None:  # still down at the end: count the open gap
            self.gaps.append((self._down_since, time.time()))
            self._down_since = None

    def summary(self) -> dict:
        longest = max((end - start for start, end in self.gaps), default=0.0)
        return {
            "urls": self.urls,
            "interval_ms": round(self.interval * 1000),
            "samples": self.samples,
            "failures": self.failures,
            "longest_gap_ms": round(longest * 1000, 1),
            "total_down_ms": round(sum(end - start for start, end in self.gaps) * 1000, 1),
            "gaps": [{"start": s, "end": e, "ms": round((e - s) * 1000, 1)} for s, e in self.gaps],
        }
