"""A real facilitator HTTP service for tests, with faults you can switch on.

It serves the x402 facilitator API (``POST /verify``, ``POST /settle``, ``GET /supported``) over
any :class:`~x402gate.facilitators.Facilitator` (a :class:`~x402gate.facilitators.LocalFacilitator`
on the local chain, typically), so :class:`~x402gate.facilitators.HTTPFacilitator` can be tested
against a real HTTP peer. ``faults`` makes an endpoint misbehave::

    server.faults["settle"] = "500"        # HTTP 500 with an error body
    server.faults["verify"] = "timeout"    # answers 504 only after ``hang_seconds``, doing nothing
    server.faults["verify"] = "drop"       # closes the connection without an answer
    server.faults["settle"] = "malformed"  # 200 with a body that is not a valid answer
    server.faults["settle"] = "slow"       # answers correctly after ``slow_seconds``
    server.faults["settle"] = "pending"    # settlement_pending, without settling
    server.faults["settle"] = "settle_then_drop"  # settles on chain, then drops the connection
    server.faults["settle"] = "settle_then_500"   # settles on chain, then answers 500
    server.faults["settle"] = "settle_then_slow"  # settles on chain, answers after slow_seconds

Every call is counted in ``calls`` so tests can assert what reached the facilitator.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["FacilitatorServer"]

_FAULTS = (
    "500",
    "timeout",
    "drop",
    "malformed",
    "slow",
    "pending",
    "settle_then_drop",
    "settle_then_500",
    "settle_then_slow",
)


class FacilitatorServer:
    """An x402 facilitator HTTP service on a loopback port (stdlib ``ThreadingHTTPServer``, so
    faults can act on the socket itself).

    ``port`` 0 takes a free one, kept in :attr:`port`: after :meth:`stop`, :meth:`start`
    serves again at the same URL (a facilitator that was down and is up again).
    """

    def __init__(
        self,
        backend: Any,
        *,
        slow_seconds: float = 0.5,
        hang_seconds: float = 30.0,
        port: int = 0,
    ) -> None:
        self.backend = backend
        self.port = port
        self.faults: dict[str, str] = {}
        self.calls: Counter[str] = Counter()
        self.slow_seconds = slow_seconds
        self.hang_seconds = hang_seconds
        self.url = ""
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    def handle(self, op: str, method: str, body: bytes) -> tuple[int, bytes] | None:
        """Answer one call: (status, body), or ``None`` to drop the connection."""
        self.calls[op] += 1
        fault = self.faults.get(op)
        if fault == "500":
            return 500, b'{"error":"internal error","detail":"fault injected"}'
        if fault == "timeout":
            self._stopping.wait(self.hang_seconds)
            return 504, b'{"error":"gateway timeout"}'
        if fault == "drop":
            return None
        if fault == "malformed":
            return 200, b'{"isValid": "perhaps", "success": '
        if fault == "slow":
            self._stopping.wait(self.slow_seconds)
        if op == "settle" and fault in ("settle_then_drop", "settle_then_500"):
            # The money moves, the answer is lost: the outcome is unknown to the caller.
            asyncio.run(self._answer(op, method, body, None))
            return None if fault == "settle_then_drop" else (500, b'{"error":"oops"}')
        if op == "settle" and fault == "settle_then_slow":
            # The money moves at once; the answer comes late (a slow receipt poll, say).
            answer = asyncio.run(self._answer(op, method, body, None))
            self._stopping.wait(self.slow_seconds)
            return answer
        return asyncio.run(self._answer(op, method, body, fault))

    async def _answer(
        self, op: str, method: str, body: bytes, fault: str | None
    ) -> tuple[int, bytes]:
        from x402.schemas import PaymentPayload, PaymentRequirements

        def dump(model: Any) -> bytes:
            return json.dumps(
                model.model_dump(mode="json", by_alias=True, exclude_none=True)
            ).encode()

        if op == "supported" and method == "GET":
            return 200, dump(await self.backend.supported())
        if op not in ("verify", "settle") or method != "POST":
            return 404, b'{"error":"not found"}'
        try:
            data = json.loads(body)
            payload = PaymentPayload.model_validate(data["paymentPayload"])
            requirements = PaymentRequirements.model_validate(data["paymentRequirements"])
        except (ValueError, KeyError, TypeError):
            return 400, b'{"error":"invalid request"}'
        if op == "settle" and fault == "pending":
            pending = {
                "success": False,
                "errorReason": "settlement_pending",
                "transaction": "0x" + "ab" * 32,
                "network": requirements.network,
            }
            return 200, json.dumps(pending).encode()
        call = self.backend.verify if op == "verify" else self.backend.settle
        return 200, dump(await call(payload, requirements))

    def start(self) -> FacilitatorServer:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                op = self.path.split("?")[0].strip("/").split("/")[-1]
                answer = owner.handle(op, self.command, body)
                if answer is None:
                    # drop: close the socket without a single byte of answer
                    self.close_connection = True
                    with contextlib.suppress(OSError):
                        self.connection.shutdown(socket.SHUT_RDWR)
                    return
                status, raw = answer
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            do_GET = do_POST = _serve

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep test output clean

        self._stopping.clear()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="facilitator-server",
            daemon=True,
        )
        self._thread.start()
        self.port = self._httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._httpd = self._thread = None

    def __enter__(self) -> FacilitatorServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @contextlib.contextmanager
    def fault(self, op: str, kind: str) -> Iterator[None]:
        """Switch a fault on for the duration of a ``with`` block."""
        if kind not in _FAULTS:
            raise ValueError(f"unknown fault {kind!r}; one of {', '.join(_FAULTS)}")
        self.faults[op] = kind
        try:
            yield
        finally:
            self.faults.pop(op, None)
