"""app_watch's parts on this machine: the health probe against a real HTTP server on loopback,
the error-log line counter on real files (growth, rotation, a new file), and the refusals of the
module run by Ansible. The triggers over a real PM2 are tested on the lab (test_maintenance_lab)."""

from __future__ import annotations

import http.server
import importlib.util
import json
import threading
from pathlib import Path

import pytest

from tests.gates.gates_modrun import alias_module_utils
from tests.helpers import ROOT
from tests.helpers import adhoc_module as module

alias_module_utils()
_spec = importlib.util.spec_from_file_location("app_watch", ROOT / "plugins/modules/app_watch.py")
app_watch = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(app_watch)


@pytest.fixture
def server():
    """A loopback HTTP server answering /health with whatever the test sets."""
    answer = {"status": 200, "doc": {}}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps(answer["doc"]).encode()
            self.send_response(answer["status"])
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/health", answer
    httpd.shutdown()


def test_health_ok_degraded_and_down(server):
    url, answer = server
    answer["doc"] = {"database": "connected", "services": {"whatsapp": "connected"}}
    assert app_watch.health(url, 2) == (True, True, "")
    answer["doc"] = {"database": "connected", "services": {"whatsapp": "disconnected"}}
    assert app_watch.health(url, 2) == (True, False, "")
    answer.update(status=503, doc={"database": "disconnected", "services": {}})
    assert app_watch.health(url, 2) == (False, False, "HTTP 503, database disconnected")
    answer.update(status=200, doc={"database": "disconnected"})
    assert app_watch.health(url, 2)[0] is False


def test_health_without_a_listener():
    ok, whatsapp, why = app_watch.health("http://127.0.0.1:9/health", 2)
    assert (ok, whatsapp) == (False, False) and why.startswith("no answer")


def test_error_lines_counted_across_growth_rotation_and_new_files(tmp_path: Path):
    old = tmp_path / "ai-admin-api.err-0.log"
    old.write_text("before 1\nbefore 2\n")
    lines = app_watch.LogLines([str(tmp_path / "*.err*.log")])
    assert lines.read() == 0, "lines from before the watch were counted"
    with old.open("a") as f:
        f.write("e1\ne2\ne3\n")
    assert lines.read() == 3
    old.write_text("after rotation\n")  # copytruncate: the file starts again
    assert lines.read() == 4
    (tmp_path / "ai-admin-worker-v2.err-1.log").write_text("n1\nn2\n")  # appeared during the watch
    (tmp_path / "ai-admin-api.err-0.log.1").write_text("rotated copy\n" * 5)  # not a live log
    assert lines.read() == 6
    assert lines.read() == 6


def test_message_lines_counted_by_pattern_and_partial_lines_wait(tmp_path: Path):
    out, err = tmp_path / "ai-admin-api.out-0.log", tmp_path / "ai-admin-api.err-0.log"
    out.write_text("T [api] webhook: acknowledged message 1 (m1)\n")
    err.write_text("T [api] webhook: failed message (m0): database: x\n")
    lines = app_watch.LogLines([str(tmp_path / "*.out*.log"), str(tmp_path / "*.err*.log")],
                               ["webhook: acknowledged message ", "webhook: failed message "])
    lines.read()
    assert lines.matches == [0, 0], "messages from before the watch were counted"
    with out.open("a") as f:
        f.write("T [api] webhook: acknowledged message 2 (m2)\nT [api] health: ok\nT [api] webhook: ackno")
    with err.open("a") as f:
        f.write("T [api] webhook: failed message (m3): database: x\nT [api] webhook: failed message (m4): d\n")
    lines.read()
    assert lines.matches == [1, 2], "a line without its newline was counted, or one was missed"
    with out.open("a") as f:
        f.write("wledged message 5 (m5)\n")  # the rest of the line written at the previous read
    lines.read()
    assert lines.matches == [2, 2] and lines.lines == 5
    out.write_text("T [api] webhook: acknowledged message 6 (m6)\n")  # copytruncate
    lines.read()
    assert lines.matches == [3, 2]


def test_the_module_refuses_without_a_pm2_daemon(tmp_path: Path):
    res = module("app_watch", {"health_url": "http://127.0.0.1:9/health", "duration": 5,
                               "pm2_home": str(tmp_path), "processes": ["ai-admin-api"]})
    assert res.get("failed") and "the PM2 daemon of" in res["msg"] and "is not running" in res["msg"], res


@pytest.mark.parametrize(("args", "message"), [
    ({"health_url": "file:///etc/passwd"}, "must be an http(s) URL"),
    ({"interval": 0}, "interval > 0"),
    ({"processes": []}, "processes not empty"),
    ({"message_ok_pattern": "acknowledged"}, "message_ok_pattern and message_failed_pattern go together"),
    ({"message_ok_pattern": "ok", "message_failed_pattern": "fail(ed"}, "message_failed_pattern is not a regular"),
])
def test_the_module_refuses_bad_input(tmp_path: Path, args, message):
    base = {"health_url": "http://127.0.0.1:9/health", "duration": 5, "pm2_home": str(tmp_path),
            "processes": ["ai-admin-api"]}
    res = module("app_watch", {**base, **args})
    assert res.get("failed") and message in res["msg"], res
