"""Run reports: JSON for automation, a self-contained HTML page for people.

Written 0600 to ``<state dir>/reports`` (or ``--report-dir``), never into the checkout.
"""

from __future__ import annotations

import html
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from aiadmin_ops import state
from aiadmin_ops.runner import RunResult


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def rollback_to_serving(result: RunResult, downtime: dict | None) -> float | None:
    """Seconds from the start of the automatic rollback (the first 'rollback' phase: the rescue
    after a failed task) to the first healthy probe after it; None without both."""
    starts = [p.started for p in result.phases if p.name == "rollback"]
    if not starts or not downtime:
        return None
    began = starts[0]
    for gap in downtime.get("gaps") or []:
        if gap["start"] <= began <= gap["end"]:
            return round(gap["end"] - began, 3)
    # The service never went down during the rollback (e.g. a preflight failure): no wait.
    return 0.0


def build(result: RunResult, command: str, *, downtime: dict | None = None,
          remaining: list[str] | None = None, extra: dict | None = None) -> dict[str, Any]:
    return {
        "command": command,
        "playbook": result.playbook,
        "verdict": result.verdict,
        "ok": result.ok,
        "status": result.status,
        "rc": result.rc,
        "started": _iso(result.started),
        "ended": _iso(result.ended),
        "duration_s": round(result.ended - result.started, 3),
        "phases": [
            {**asdict(p), "started": _iso(p.started), "ended": _iso(p.ended),
             "offset_s": round(p.started - result.started, 3), "duration_s": round(p.ended - p.started, 3)}
            for p in result.phases
        ],
        "failures": result.failures,
        "stats": result.stats,
        "custom_stats": result.custom_stats,
        "downtime": downtime,
        "rollback_to_serving_s": rollback_to_serving(result, downtime),
        "remaining": remaining or [],
        "artifact_dir": result.artifact_dir,
        **(extra or {}),
    }


def render_html(data: dict[str, Any]) -> str:
    esc = html.escape
    total = max(data["duration_s"], 0.001)
    rows = []
    for p in data["phases"]:
        left = 100.0 * p["offset_s"] / total
        width = max(100.0 * p["duration_s"] / total, 0.4)
        cls = "bad" if p["failed"] else "good"
        rows.append(
            f'<tr><td>{esc(p["name"])}</td><td class="num">{p["duration_s"]:.1f}s</td>'
            f'<td class="bar"><div class="{cls}" style="margin-left:{left:.2f}%;width:{width:.2f}%"></div></td></tr>'
        )
    down = data.get("downtime")
    if down:
        gap = down.get("longest_gap_ms")
        down_html = (f'<p class="big">Measured downtime: <b>{gap:.0f} ms</b> '
                     f'({down.get("samples", 0)} probes, {down.get("failures", 0)} failed, '
                     f'every {down.get("interval_ms", "?")} ms)</p>') if gap is not None else ""
    else:
        down_html = "<p>No downtime probe in this run.</p>"
    if data.get("rollback_to_serving_s") is not None:
        down_html += (f'<p class="big">Automatic rollback: old host serving again '
                      f'<b>{data["rollback_to_serving_s"]:.1f} s</b> after the rollback started.</p>')
    stats = data.get("custom_stats") or {}
    if stats:
        down_html += "<h2>Outcome</h2><table>" + "".join(
            f"<tr><td>{esc(str(k))}</td><td>{esc(str(v))}</td></tr>" for k, v in sorted(stats.items())) + "</table>"
    fails = "".join(
        f"<li><b>{esc(f['phase'])}</b> / {esc(f['task'])} on {esc(f['host'])}: {esc(f['msg'])}</li>"
        for f in data["failures"]
    )
    remaining = "".join(f"<li>{esc(s)}</li>" for s in data.get("remaining") or [])
    verdict_cls = "good" if data["ok"] else "bad"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{esc(data["command"])}: {esc(data["verdict"])}</title>
<style>
body {{ font: 15px/1.4 system-ui, sans-serif; margin: 2rem; color: #222; max-width: 70rem; }}
h1 span.good {{ color: #176f2c; }} h1 span.bad {{ color: #b3261e; }}
table {{ border-collapse: collapse; width: 100%; }} td {{ padding: .25rem .5rem; border-bottom: 1px solid #eee; }}
td.num {{ text-align: right; white-space: nowrap; width: 5rem; }} td.bar {{ width: 65%; }}
td.bar div {{ height: 1rem; border-radius: 3px; }}
div.good {{ background: #3b8c4f; }} div.bad {{ background: #c0392b; }}
p.big {{ font-size: 1.2rem; }} code {{ background: #f4f4f4; padding: 0 .2rem; }}
</style></head><body>
<h1>{esc(data["command"])}: <span class="{verdict_cls}">{esc(data["verdict"])}</span></h1>
<p>Playbook <code>{esc(data["playbook"])}</code>, {esc(data["started"])} → {esc(data["ended"])}
({data["duration_s"]:.1f} s), exit code {data["rc"]}.</p>
{down_html}
<h2>Phase timeline</h2>
<table>{"".join(rows) or "<tr><td>no phases</td></tr>"}</table>
<h2>Failures</h2><ul>{fails or "<li>none</li>"}</ul>
<h2>Remaining steps</h2><ul>{remaining or "<li>none</li>"}</ul>
</body></html>
"""


def write(data: dict[str, Any], directory: Path | None = None) -> tuple[Path, Path]:
    """Write ``<command>-<time>.{json,html}`` (0600) to ``directory``, default the state's reports/."""
    if directory is None:
        directory = state.reports_dir()
    else:
        # An operator's own directory: created private, an existing one is left as it is.
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    base = directory / f"{data['command']}-{stamp}"
    json_path, html_path = base.with_suffix(".json"), base.with_suffix(".html")
    state.write_private(json_path, json.dumps(data, indent=2, default=str) + "\n")
    state.write_private(html_path, render_html(data))
    return json_path, html_path
