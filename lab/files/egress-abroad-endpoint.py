#!/usr/bin/python3
# LAB ONLY: the "abroad" endpoint (stand-in for the LLM API that blocks the host's country).
# Reachable only on aiadmin-lab-abroad, i.e. only from lab-egress, i.e. only through Xray.
"""Answer every GET with a recognisable body: usage: abroad-endpoint ADDRESS PORT."""

import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BODY = b"abroad-endpoint lab-egress\n"


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, fmt, *args):
        sys.stderr.write(f"{self.address_string()} {fmt % args}\n")


ThreadingHTTPServer((sys.argv[1], int(sys.argv[2])), Handler).serve_forever()
