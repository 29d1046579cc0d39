"""Alerts to the operators' webhook: one message per condition, cooldowns, a recovery message.

A condition is a key ("lab-new/pool", "backup") with a status (ok / warning / critical / unknown)
and a one-line summary. ``Alerter.process`` compares the conditions with the ones it remembers
(``<state>/alerts/state.json``, 0600) and sends:

- an alert when a condition turns bad, or gets worse (warning -> critical);
- the same alert again only once its cooldown has passed while it stays bad (the runbooks' 5 min
  for the pool and the queries, 30 min for the session keys; 15 min for the rest);
- a recovery message when a condition that was alerted is ok again (or gone).

The webhook is any http(s) endpoint, sent ``{"text": ..., "status": ..., "condition": ...}`` as
JSON, or the Telegram bot API (``.../bot<token>/sendMessage``) with ``chat_id``. Its URL comes from
the vault (``vault_aiadmin_alert_webhook_url``: a token is in it) and never appears in a message,
an error or the state file. Messages carry the checks' summaries, which name no secret, with any
URL credentials masked on top.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from aiadmin_ops import secrets, state

COOLDOWNS_S = {"pool": 300, "database": 300, "session_keys": 1800}
DEFAULT_COOLDOWN_S = 900
RANK = {"ok": 0, "unknown": 1, "warning": 2, "critical": 3}
ICON = {"warning": "WARNING", "critical": "CRITICAL", "unknown": "UNKNOWN", "ok": "RECOVERED"}


@dataclass
class Sent:
    condition: str
    status: str
    text: str
    delivered: bool
    error: str = ""


def cooldown(condition: str, overrides: dict[str, int] | None = None) -> int:
    check = condition.rsplit("/", 1)[-1]
    table = {**COOLDOWNS_S, **(overrides or {})}
    return int(table.get(check, table.get("default", DEFAULT_COOLDOWN_S)))


def clean(text: str) -> str:
    """One line, URL passwords masked, bounded."""
    return secrets.mask_url_passwords(" ".join(str(text).split()))[:900]


class Alerter:
    def __init__(self, url: str, state_dir: Path, *, chat_id: str = "", source: str = "aiadmin-ops",
                 cooldowns: dict[str, int] | None = None, timeout: float = 10.0):
        if not url.lower().startswith(("http://", "https://")):
            raise ValueError("the alert webhook must be an http:// or https:// URL")
        self.url, self.chat_id, self.source = url, chat_id, source
        self.cooldowns, self.timeout = cooldowns or {}, timeout
        self.path = state.private_dir(state_dir / "alerts") / "state.json"

    def load(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def save(self, data: dict) -> None:
        state.write_private(self.path, json.dumps(data, indent=2, sort_keys=True) + "\n")

    def post(self, condition: str, status: str, text: str) -> Sent:
        body = {"text": text, "status": status, "condition": condition, "source": self.source}
        if self.chat_id:
            body["chat_id"] = self.chat_id
        req = urllib.request.Request(self.url, data=json.dumps(body).encode(), method="POST",  # noqa: S310
                                     headers={"content-type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:  # noqa: S310 (http(s) checked)
                return Sent(condition, status, text, 200 <= resp.status < 300)
        except urllib.error.HTTPError as exc:
            return Sent(condition, status, text, False, f"HTTP {exc.code}")
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            return Sent(condition, status, text, False, clean(type(reason).__name__ + ": " + str(reason))
                        .replace(self.url, "<webhook>"))

    def process(self, conditions: dict[str, tuple[str, str]], scope: str, now: float | None = None) -> list[Sent]:
        """Send what the conditions call for; remember them. Remembered conditions whose key starts
        with ``scope`` and that are absent now are gone (a health run never clears a backup's alert)."""
        now = time.time() if now is None else now
        known = self.load()
        sent: list[Sent] = []
        for key, (status, summary) in sorted(conditions.items()):
            before = known.get(key)
            if status == "ok":
                if before:
                    sent.append(self.post(key, "ok", f"[RECOVERED] {key}: {clean(summary)}"))
                    known.pop(key)
                continue
            text = f"[{ICON.get(status, status.upper())}] {key}: {clean(summary)}"
            worse = before is None or RANK.get(status, 1) > RANK.get(before["status"], 1)
            due = before is not None and (before["last_sent"] is None  # never delivered: at once
                                          or now - before["last_sent"] >= cooldown(key, self.cooldowns))
            if worse or due:
                result = self.post(key, status, text)
                sent.append(result)
                if result.delivered or before is None:
                    known[key] = {"status": status, "since": (before or {}).get("since", now),
                                  "last_sent": now if result.delivered else None, "summary": clean(summary)}
            else:
                before["summary"] = clean(summary)
        for key in [k for k in known if k not in conditions and k.startswith(scope)]:
            sent.append(self.post(key, "ok", f"[RECOVERED] {key}: no longer reported"))
            known.pop(key)
        self.save(known)
        return sent


HEALTH_SCOPE = "health:"


def active(state_dir: Path, key: str) -> bool:
    """Whether an alert of this condition was sent and not recovered (read without a webhook)."""
    try:
        return key in json.loads((state_dir / "alerts" / "state.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return False


def health_conditions(result: dict) -> dict[str, tuple[str, str]]:
    """Every check of a health result as a condition health:<host>/<check>; a run that could not
    start at all is the condition health:run."""
    if not result.get("hosts"):
        return {f"{HEALTH_SCOPE}run": (result.get("status", "unknown"), result.get("reason", ""))}
    return {f"{HEALTH_SCOPE}{host}/{name}": (check["status"], check["summary"])
            for host, data in result["hosts"].items() for name, check in data["checks"].items()}


def run_condition(command: str, ok: bool, summary: str) -> tuple[str, dict[str, tuple[str, str]]]:
    """(scope, conditions) of an operator command's run: critical when it failed."""
    key = f"run:{command}"
    return key, {key: ("ok" if ok else "critical", summary)}


def report(sent: list[Sent], out) -> None:
    """One line per message for the operator (never the URL)."""
    for item in sent:
        how = "sent" if item.delivered else f"NOT delivered ({item.error})"
        print(f"alert {how}: {item.text}", file=out, flush=True)
