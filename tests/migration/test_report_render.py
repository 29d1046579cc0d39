"""The window's HTML report renders in headless Chromium (skipped when chromium is missing).

The page is built from a RunResult shaped like a rolled-back window (phases, a failure, the
probe's gaps, the remaining steps), rendered to a PNG and to the DOM Chromium computed.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from aiadmin_ops import report
from aiadmin_ops.runner import PhaseSpan, RunResult

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")


def chromium(*args: str) -> subprocess.CompletedProcess:
    profile = tempfile.mkdtemp(prefix="aiadmin-chromium-")
    try:
        return subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", *args],
            capture_output=True, text=True, timeout=120, check=False)
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def rolled_back_window() -> dict:
    t0 = time.time() - 120
    names = [("confirm", 0, 1), ("preflight", 1, 9), ("backups", 9, 20), ("deploy", 20, 55),
             ("cutover", 55, 62), ("smoke", 62, 85), ("rollback", 85, 97), ("verdict", 97, 98)]
    phases = [PhaseSpan(n, t0 + a, t0 + b, failed=n == "smoke", tasks=3) for n, a, b in names]
    result = RunResult(
        playbook="playbooks/migrate.yml", status="failed", rc=2, started=t0, ended=t0 + 98,
        stats={"localhost": {"ok": 80, "failures": 1, "rescued": 1}},
        custom_stats={"migrate_failed_phase": "smoke", "migrate_failed_task": "Wait for /health on lab-new",
                      "migrate_status": "rolled_back"},
        phases=phases,
        failures=[{"phase": "smoke", "task": "Wait for /health on lab-new", "host": "localhost",
                   "msg": "HTTP -1 after 20 tries <script>alert(1)</script>"}],
    )
    gap = {"start": t0 + 57, "end": t0 + 93, "ms": 36000.0}
    downtime = {"urls": ["http://10.213.10.20:3000/health"], "interval_ms": 100, "samples": 900, "failures": 360,
                "longest_gap_ms": 36000.0, "total_down_ms": 36000.0, "gaps": [gap]}
    return report.build(result, "migrate", downtime=downtime, remaining=["deploy", "cutover", "smoke", "verdict"])


def test_rollback_time_comes_from_the_probe():
    data = rolled_back_window()
    assert data["rollback_to_serving_s"] == pytest.approx(8.0, abs=0.01)


def test_report_renders_in_headless_chromium(tmp_path: Path):
    _, html_path = report.write(rolled_back_window(), tmp_path)
    png = tmp_path / "report.png"
    proc = chromium(f"--screenshot={png}", "--window-size=1200,900", html_path.as_uri())
    assert png.exists(), proc.stderr[-2000:]
    header = png.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", header[16:24]) == (1200, 900)
    assert png.stat().st_size > 10_000, "an almost empty page"
    dom = chromium("--dump-dom", html_path.as_uri()).stdout
    assert "failed (rolled back)" in dom
    assert "Measured downtime" in dom and "36000 ms" in dom
    assert "Automatic rollback" in dom
    assert "<script>alert(1)</script>" not in dom  # escaped, not executed
    for phase in ("preflight", "cutover", "smoke", "rollback"):
        assert f"<td>{phase}</td>" in dom
    shutil.copy(png, Path(tempfile.gettempdir()) / "aiadmin-report-screenshot.png")
