#!/usr/bin/env python3
"""An OpenAI webhook receiver behind caddy-openai-webhook, standard library only.

Caddy verifies every delivery before it reaches this app, so the app holds no
secret and trusts what arrives. It listens on 127.0.0.1 only, so nothing can
reach it but through Caddy. As OpenAI advises, it answers at once and does
the work afterwards, once per event id: OpenAI retries a delivery it did not
see answered, so the same event can arrive twice.

    PORT=8000 python3 app.py
"""

import json
import logging
import os
import queue
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# One line per record, each written whole: the request threads and the
# worker print at the same time, and print() writes a line's text and its
# newline separately, so two lines could end up on one.
logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="%(message)s")
log = logging.getLogger("app")

work = queue.Queue()
seen = set()  # event ids already taken; use your database in production
seen_lock = threading.Lock()


def handle(event):
    """The slow part, after the answer: fetch the batch's results, etc."""
    data = event.get("data", {})
    log.info("processed %s %s about %s", event["type"], event["id"], data.get("id", data.get("call_id")))


def worker():
    while True:
        handle(work.get())


class Hooks(BaseHTTPRequestHandler):
    def do_POST(self):
        if self.path != "/hooks/openai":
            self.send_error(404)
            return
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        try:
            event = json.loads(body)
            event_id, event_type = event["id"], event["type"]
        except (ValueError, KeyError, TypeError):
            # Verified, but not an event this app understands: say so, and
            # OpenAI will not retry it.
            self.send_response(204)
            self.end_headers()
            return
        with seen_lock:
            first = event_id not in seen
            seen.add(event_id)
        if first:
            work.put(event)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, fmt, *args):
        log.info("%s %s %s", self.command, self.path, args[1] if len(args) > 1 else "")


class Server(ThreadingHTTPServer):
    # socketserver listens with a backlog of 5 connections. Caddy opens one
    # per delivery (this server closes each after its answer), and a burst of
    # deliveries overflows 5 before the accept loop takes them: the kernel
    # resets the rest and Caddy answers 502. Queue a burst instead (Linux
    # caps the backlog at net.core.somaxconn).
    request_queue_size = 1024


if __name__ == "__main__":
    threading.Thread(target=worker, daemon=True).start()
    port = int(os.environ.get("PORT", "8000"))
    server = Server(("127.0.0.1", port), Hooks)
    log.info("listening on 127.0.0.1:%d", port)
    server.serve_forever()
