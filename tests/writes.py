"""A client-side write probe for the migration-window tests (stdlib only; psycopg for ``verify``).

``WebhookWriter`` POSTs one new message to the app's ``POST /webhook`` every ``interval`` seconds,
from a background thread, for as long as it runs::

    with WebhookWriter(["http://10.213.10.20:3000", "http://10.213.10.30:3000"]) as writer:
        ...  # the window runs
    report = writer.verify(conn)  # every acknowledged write is in `messages` exactly once?

Each tick makes a new id ``probe-<run>-<n>`` (``run``: random hex per writer, ``n`` from 1) and
tries the base URLs in order, each with a 1 s socket timeout, until one acknowledges it. An
acknowledgement is a ``201`` whose JSON says ``{"stored": true, "id": <that id>}``: the app sends
it only after the row committed. Anything else (refused, timeout, reset, 4xx/5xx, a malformed
answer) is recorded as that URL's attempt and the next URL is tried with the same id. A write
that no URL acknowledged stays unacknowledged; its id is never sent again.

The demo app stores the webhook's id as ``messages.body``, so ``verify`` looks the ids up there.
An id stored although not acknowledged is allowed (the answer may have been lost, e.g. a timeout
after the commit) but counted; an acknowledged id that is missing or any id stored twice is a
failure.
"""

from __future__ import annotations

import http.client
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

__all__ = ["Attempt", "WebhookWriter", "Write"]


@dataclass(frozen=True)
class Attempt:
    """One POST of one id to one base URL."""

    url: str
    started: float  # time.time() when the attempt began
    finished: float  # time.time() when it ended (answer read, or error)
    outcome: str  # "acked" | "rejected" (an HTTP answer that is not an ack) | "refused" | "timeout" | "error"
    status: int | None = None  # the HTTP status, when there was an answer
    detail: str = ""  # error text, or the answer's "error" field


@dataclass
class Write:
    """One id: whether, by whom and when it was acknowledged, and every attempt."""

    id: str
    started: float  # time.time() when the tick began
    acked: bool = False
    acked_by: str | None = None
    ack_time: float | None = None  # time.time() when the 201 arrived
    message_row: int | str | None = None  # the app's messages.id for it
    attempts: list[Attempt] = field(default_factory=list)


class WebhookWriter:
    """Background writer of unique, verifiable webhook messages (see the module docstring)."""

    def __init__(self, urls: list[str] | tuple[str, ...] | str, interval: float = 0.1, *,
                 timeout: float = 1.0, phone: str | None = None, path: str = "/webhook",
                 run: str | None = None) -> None:
        if isinstance(urls, str):
            urls = [urls]
        self.urls = [u.rstrip("/") for u in urls]
        if not self.urls:
            raise ValueError("WebhookWriter needs at least one base URL")
        self.interval = float(interval)
        self.timeout = float(timeout)
        self.path = path
        self.run = run or secrets.token_hex(4)
        self.phone = phone or f"probe-{self.run}"
        self._n = 0
        self._writes: list[Write] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.started: float | None = None
        self.stopped: float | None = None

    # -- running ---------------------------------------------------------------------------------

    def __enter__(self) -> WebhookWriter:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("this WebhookWriter was already started")
        self.started = time.time()
        self._thread = threading.Thread(target=self._loop, name=f"webhook-writer-{self.run}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop ticking; the write under way (if any) finishes first."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.stopped is None:
            self.stopped = time.time()

    def _loop(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            self.write_once()
            next_at += self.interval
            delay = next_at - time.monotonic()
            if delay < 0:  # a slow tick: carry on from now, no burst to catch up
                next_at, delay = time.monotonic(), 0.0
            self._stop.wait(delay)

    def write_once(self) -> Write:
        """One tick, synchronously: a new id, tried on each URL in order until one acknowledges it."""
        with self._lock:
            self._n += 1
            n = self._n
            write = Write(id=f"probe-{self.run}-{n}", started=time.time())
            self._writes.append(write)
        payload = json.dumps({"id": write.id, "phone": self.phone, "body": f"probe {n}"}).encode()
        for url in self.urls:
            attempt, ack_time, row = self._post(url, write.id, payload)
            with self._lock:
                write.attempts.append(attempt)
                if attempt.outcome == "acked":
                    write.acked, write.acked_by, write.ack_time, write.message_row = True, url, ack_time, row
            if write.acked:
                break
        return write

    def _post(self, url: str, write_id: str, payload: bytes) -> tuple[Attempt, float | None, int | str | None]:
        parts = urlsplit(url)
        cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        conn = cls(parts.hostname, parts.port, timeout=self.timeout)
        started = time.time()
        status = None
        try:
            conn.request("POST", parts.path + self.path, body=payload,
                         headers={"content-type": "application/json", "connection": "close"})
            resp = conn.getresponse()
            arrived = time.time()
            status = resp.status
            raw = resp.read()
            try:
                doc = json.loads(raw)
            except ValueError:
                doc = None
            if not isinstance(doc, dict):
                doc = {}
            if status == 201 and doc.get("stored") is True and doc.get("id") == write_id:
                return Attempt(url, started, time.time(), "acked", status), arrived, doc.get("message_row")
            detail = str(doc.get("error", "")) or raw[:200].decode(errors="replace")
            return Attempt(url, started, time.time(), "rejected", status, detail), None, None
        except ConnectionRefusedError as err:
            return Attempt(url, started, time.time(), "refused", status, str(err)), None, None
        except TimeoutError as err:
            return Attempt(url, started, time.time(), "timeout", status, str(err) or "timed out"), None, None
        except (OSError, http.client.HTTPException) as err:
            return Attempt(url, started, time.time(), "error", status, f"{type(err).__name__}: {err}"), None, None
        finally:
            conn.close()

    # -- what happened ---------------------------------------------------------------------------

    def writes(self) -> list[Write]:
        """Every write so far, in order (copies)."""
        with self._lock:
            return [Write(w.id, w.started, w.acked, w.acked_by, w.ack_time, w.message_row, list(w.attempts))
                    for w in self._writes]

    def acked(self) -> list[str]:
        return [w.id for w in self.writes() if w.acked]

    def unacked(self) -> list[str]:
        return [w.id for w in self.writes() if not w.acked]

    def acked_by(self, url: str) -> list[str]:
        url = url.rstrip("/")
        return [w.id for w in self.writes() if w.acked and w.acked_by == url]

    def acked_by_after(self, url: str, t: float) -> list[str]:
        """Ids acknowledged by ``url`` with an ack time after ``t`` (a time.time() value)."""
        url = url.rstrip("/")
        return [w.id for w in self.writes() if w.acked and w.acked_by == url and w.ack_time > t]

    def attempts(self, url: str | None = None) -> list[tuple[str, Attempt]]:
        """(id, attempt) pairs in order, for one URL or all."""
        want = url.rstrip("/") if url else None
        return [(w.id, a) for w in self.writes() for a in w.attempts if want is None or a.url == want]

    def outcomes(self) -> dict[str, dict[str, int]]:
        """Per URL: how many attempts ended in each outcome."""
        out: dict[str, dict[str, int]] = {u: {} for u in self.urls}
        for _, a in self.attempts():
            out[a.url][a.outcome] = out[a.url].get(a.outcome, 0) + 1
        return out

    def verify(self, conn) -> dict:
        """Look every id up in ``messages.body`` (a psycopg connection to the app's database).

        Returns ``{"acked", "unacked", "missing", "duplicates", "stored_unacked", "ok"}``: the
        counts of acknowledged and unacknowledged writes, the acknowledged ids not stored, the ids
        (acknowledged or not) stored more than once, how many unacknowledged ids are stored
        anyway, and ``ok`` = nothing missing and no duplicate.
        """
        writes = self.writes()
        ids = [w.id for w in writes]
        query = "SELECT body, count(*) FROM messages WHERE body = ANY(%s) GROUP BY body"
        if hasattr(conn, "transaction"):  # psycopg 3: a transaction, or a savepoint inside the caller's
            with conn.transaction(), conn.cursor() as cur:
                cur.execute(query, (ids,))
                rows = cur.fetchall()
        else:
            with conn.cursor() as cur:
                cur.execute(query, (ids,))
                rows = cur.fetchall()
        stored = {body: int(n) for body, n in rows}
        acked = [w.id for w in writes if w.acked]
        unacked = [w.id for w in writes if not w.acked]
        missing = [i for i in acked if i not in stored]
        duplicates = [i for i in ids if stored.get(i, 0) > 1]
        return {
            "acked": len(acked),
            "unacked": len(unacked),
            "missing": missing,
            "duplicates": duplicates,
            "stored_unacked": sum(1 for i in unacked if i in stored),
            "ok": not missing and not duplicates,
        }
