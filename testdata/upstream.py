#!/usr/bin/env python3
"""A stand-in webhook receiver for the end-to-end tests, standard library only.

Usage: upstream.py [PORT] [--watch-stdin]

Listens on 127.0.0.1:PORT (0, the default, picks a free port) and prints the
port on the first line of standard output. Every request is recorded (method,
path, headers in order, whether its body came chunked, and the body's length,
SHA-256 and bytes in base64) and answered 200 with that record as JSON.
GET /__received answers the list of all records so far, oldest first, and is
not recorded itself, so a test can tell that a refused request never got here.

A recorded request can ask for a fault, by headers that the gateway passes on
unchanged (they are not signed). The request is recorded first, then:

  X-Upstream-Hold: NAME     the answer waits until GET /__release/NAME (or at
                            most HOLD_MAX seconds): the test decides exactly
                            when a forwarded request completes
  X-Upstream-Delay: SECONDS the answer waits that long (at most HOLD_MAX)
  X-Upstream-Status: CODE   the answer has that status instead of 200

GET /__release/NAME is not recorded either; it may come before the held
request does.

Records are kept in memory: this is for tests, not for load.
"""

import argparse
import base64
import hashlib
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

RECEIVED_PATH = "/__received"
RELEASE_PREFIX = "/__release/"
MAX_LINE = 64 * 1024
# No fault keeps a request, or the thread serving it, longer than this.
HOLD_MAX = 60.0

_lock = threading.Lock()
_received = []
_holds = {}  # name -> threading.Event, set by GET /__release/NAME


def _hold(name):
    with _lock:
        return _holds.setdefault(name, threading.Event())


class BadRequest(Exception):
    pass


class Handler(BaseHTTPRequestHandler):
    # HTTP/1.1 keeps connections alive the way a real application server
    # does; every response then needs a Content-Length.
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        if self.path == RECEIVED_PATH:
            with _lock:
                self._reply(200, list(_received))
        elif self.path.startswith(RELEASE_PREFIX):
            name = self.path[len(RELEASE_PREFIX):]
            _hold(name).set()
            self._reply(200, {"released": name})
        else:
            self._record()

    def _record(self):
        record = {
            "method": self.command,
            "path": self.path,
            "headers": [[name, value] for name, value in self.headers.items()],
        }
        try:
            body, chunked = self._read_body()
        except (BadRequest, ValueError) as e:
            # Framing is lost: answer, then close the connection.
            self.close_connection = True
            record["error"] = str(e)
            with _lock:
                _received.append(record)
            self._reply(400, record)
            return
        record.update(
            chunked=chunked,
            body_length=len(body),
            body_sha256=hashlib.sha256(body).hexdigest(),
            body_base64=base64.b64encode(body).decode("ascii"),
        )
        with _lock:
            _received.append(record)
        self._reply(self._fault(), record)

    def _fault(self):
        """Waits as the request's X-Upstream-* headers ask and returns the
        status to answer with."""
        name = self.headers.get("X-Upstream-Hold")
        if name:
            _hold(name).wait(HOLD_MAX)
        delay = self.headers.get("X-Upstream-Delay")
        if delay:
            time.sleep(min(float(delay), HOLD_MAX))
        return int(self.headers.get("X-Upstream-Status") or 200)

    do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _record

    def _read_body(self):
        """Returns the body, read exactly as its framing says, and whether it
        came chunked."""
        codings = self.headers.get_all("Transfer-Encoding") or []
        tokens = [t.strip().lower() for v in codings for t in v.split(",") if t.strip()]
        if tokens:
            if tokens[-1] != "chunked":
                raise BadRequest("Transfer-Encoding without final chunked: %r" % codings)
            return self._read_chunked(), True
        lengths = self.headers.get_all("Content-Length") or []
        if not lengths:
            return b"", False
        if len(set(lengths)) != 1 or not lengths[0].isdigit():
            raise BadRequest("invalid Content-Length: %r" % lengths)
        return self._read_exactly(int(lengths[0])), False

    def _read_exactly(self, n):
        data = self.rfile.read(n)
        if len(data) != n:
            raise BadRequest("body ended after %d of %d bytes" % (len(data), n))
        return data

    def _read_line(self):
        line = self.rfile.readline(MAX_LINE + 1)
        if not line.endswith(b"\r\n"):
            raise BadRequest("chunked framing line not ended by CRLF")
        return line[:-2]

    def _read_chunked(self):
        parts = []
        while True:
            size_field = self._read_line().split(b";", 1)[0].strip()
            size = int(size_field, 16)  # ValueError on a bad size
            if size == 0:
                break
            parts.append(self._read_exactly(size))
            if self._read_exactly(2) != b"\r\n":
                raise BadRequest("chunk data not followed by CRLF")
        while self._read_line():  # trailer fields, up to the empty line
            pass
        return b"".join(parts)

    def _reply(self, status, document):
        payload = json.dumps(document).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        try:
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client left; nothing to tell it


class Server(ThreadingHTTPServer):
    # socketserver's listen backlog is 5: a burst of connections from the
    # gateway would overflow it and the kernel would reset them (502s the
    # test did not ask for).
    request_queue_size = 1024
    daemon_threads = True


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("port", nargs="?", type=int, default=0)
    parser.add_argument(
        "--watch-stdin",
        action="store_true",
        help="exit when standard input closes, so the server never outlives the process that started it",
    )
    args = parser.parse_args()

    server = Server(("127.0.0.1", args.port), Handler)
    print(server.server_address[1], flush=True)
    if args.watch_stdin:

        def watch():
            sys.stdin.buffer.read()
            os._exit(0)

        threading.Thread(target=watch, daemon=True).start()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
