"""A webhook receiver served in a process of its own: ``python webhook_receiver.py PORT SECRET
OUT [STATUS [DELAY]]``.

It checks each POST's signature with :func:`x402gate.webhooks.verify_signature`, appends one
JSON line per POST to ``OUT`` (the event-id header, whether the signature is valid, the body,
the time it arrived), and answers ``STATUS`` (204 by default; a test gives 500 for an endpoint
that keeps failing) after ``DELAY`` seconds (0 by default; a slow receiver).
"""

from __future__ import annotations

import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from x402gate.webhooks import (
    EVENT_ID_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    verify_signature,
)


def main() -> None:
    port, secret, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    status = int(sys.argv[4]) if len(sys.argv) > 4 else 204
    delay = float(sys.argv[5]) if len(sys.argv) > 5 else 0.0

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            valid = verify_signature(
                secret, body, self.headers.get(TIMESTAMP_HEADER), self.headers.get(SIGNATURE_HEADER)
            )
            line = {
                "id": self.headers.get(EVENT_ID_HEADER),
                "valid": valid,
                "body": body.decode(),
                "at": time.time(),
            }
            fd = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, (json.dumps(line) + "\n").encode())
            finally:
                os.close(fd)
            if delay:
                time.sleep(delay)
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
