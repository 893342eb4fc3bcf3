"""A gate with channels served by uvicorn in a process of its own, and the test's handle on it.

:class:`GateProcess` starts ``python -c "...; serve()"`` with a JSON config; the child builds a
:class:`~x402gate.PaymentGate` on the given store (a SQLite file or a Redis server that other
processes share) and facilitator (an HTTP facilitator service the test runs), serves it on a
free loopback port, prints its base URL and serves until its standard input closes or it is
killed. Its routes, all priced $0.001:

* ``GET /paid`` answers ``{"content": "PAID", "pid": ...}``;
* ``GET /block`` waits (at most a minute) until the file ``release`` exists in the run
  directory, then answers like ``/paid``; its channel steps expire after
  ``max_timeout_seconds`` (10 s, the least a gate accepts).

Per-token routes (``POST``, OpenAI-shaped, priced by :data:`TOKEN_PRICES`, steps expiring like
``/block``'s): ``/v1/json`` answers a JSON body using :data:`JSON_USAGE`; ``/v1/stream`` answers
server-sent events: its first chunks (headers and payment response included) go out at once,
then it waits for ``release`` like ``/block`` before sending the usage (:data:`STREAM_USAGE`)
and the end of the stream.

With ``claim`` in the config (:class:`~x402gate.channels.ClaimSettings` keywords), the gate runs
its background claimer from the start.

Every handler run leaves one file ``<route>-<pid>-<n>`` in the run directory before it answers,
so the test counts handler runs across processes, including the runs of a killed process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

__all__ = [
    "BLOCK_TIMEOUT",
    "JSON_USAGE",
    "STREAM_USAGE",
    "TOKEN_PRICES",
    "GateProcess",
    "serve",
    "token_cost",
]

TESTS_DIR = Path(__file__).resolve().parent.parent  # where the ``channels`` test package lives
_CHILD = "from channels._server import serve; serve()"
BLOCK_TIMEOUT = 10
"""``max_timeout_seconds`` of ``/block``: how long its channel step is held before it expires."""
TOKEN_PRICES = (1_000, 2_000)
"""Atomic units an input and an output token cost on the per-token routes ($1 / $2 per 1k)."""
JSON_USAGE = (7, 30)
"""Input and output tokens a ``/v1/json`` answer reports."""
STREAM_USAGE = (12, 40)
"""Input and output tokens a ``/v1/stream`` answer reports once released."""


def token_cost(usage: tuple[int, int]) -> int:
    """What ``usage`` (input, output tokens) costs on the per-token routes."""
    return usage[0] * TOKEN_PRICES[0] + usage[1] * TOKEN_PRICES[1]


async def _released(runs: Path) -> None:
    """Wait (at most a minute) for the file ``release`` in the run directory."""
    import asyncio

    deadline = time.monotonic() + 60
    while not (runs / "release").exists() and time.monotonic() < deadline:
        await asyncio.sleep(0.02)


def _app(config: dict[str, Any]) -> tuple[Any, Any]:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    from x402gate import PaymentGate
    from x402gate.asgi import PaymentMiddleware
    from x402gate.assets import Asset
    from x402gate.channels import ClaimSettings
    from x402gate.facilitators import HTTPFacilitator
    from x402gate.gate import ChannelSettings
    from x402gate.metering import PerToken, TokenPrice

    runs = Path(config["runs"])
    pid = os.getpid()
    counter = iter(range(1, 1 << 62))
    gate = PaymentGate(
        pay_to=config["pay_to"],
        assets=Asset(**config["asset"]),
        facilitator=HTTPFacilitator(config["facilitator"], timeout=10),
        store=config["store"],
        startup_checks="off",
        limit_in_flight=False,
        secret=b"k" * 32,  # metered routes issue session tokens
        public_origin="http://gate.test",
        channels=ChannelSettings(
            receiver_authorizer=config["receiver_authorizer"],
            min_deposit=config["min_deposit"],
            claim=ClaimSettings(**config["claim"]) if config.get("claim") else None,
        ),
    )

    def record(name: str) -> None:
        (runs / f"{name}-{pid}-{next(counter)}").touch()

    async def paid(request: Request) -> Response:
        record("paid")
        return JSONResponse({"content": "PAID", "pid": pid})

    async def block(request: Request) -> Response:
        record("block")
        await _released(runs)
        return JSONResponse({"content": "PAID", "pid": pid})

    def usage(tokens: tuple[int, int]) -> dict[str, int]:
        return {"prompt_tokens": tokens[0], "completion_tokens": tokens[1]}

    async def chat(request: Request) -> Response:
        kind = request.path_params["kind"]
        record(kind)
        if kind == "json":
            return JSONResponse({"content": "PAID", "choices": [], "usage": usage(JSON_USAGE)})

        def event(data: dict[str, Any]) -> bytes:
            return f"data: {json.dumps(data)}\n\n".encode()

        async def events() -> AsyncIterator[bytes]:
            for word in ("PAID", " words"):
                yield event({"choices": [{"delta": {"content": word}}]})
            await _released(runs)
            yield event({"choices": [], "usage": usage(STREAM_USAGE)})
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    app = Starlette(
        routes=[
            Route("/paid", paid),
            Route("/block", block),
            Route("/v1/{kind}", chat, methods=["POST"]),
        ]
    )
    prices = TokenPrice(input="$1", output="$2", per=1_000)  # TOKEN_PRICES
    routes = {
        "GET /paid": "$0.001",
        "GET /block": gate.route("$0.001", max_timeout_seconds=BLOCK_TIMEOUT),
        "POST /v1/*": gate.route(PerToken({"gpt-*": prices}), max_timeout_seconds=BLOCK_TIMEOUT),
    }
    return PaymentMiddleware(app, gate=gate, routes=routes), gate


def serve() -> None:
    """The child: serve the gate described by ``sys.argv[1]`` until stdin closes."""
    from x402gate.demo import serve_in_thread

    config = json.loads(sys.argv[1])
    app, gate = _app(config)
    if config.get("claim"):
        import asyncio

        asyncio.run(gate.startup())  # starts the background claimer, as an app's start-up does
    try:
        with serve_in_thread(app) as url:
            print(url, flush=True)
            sys.stdin.read()
    finally:
        gate.close()


class GateProcess:
    """One gate server process (see the module); stopped by its own process id."""

    def __init__(self, config: dict[str, Any], *, start_timeout: float = 60.0) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS_DIR), *sys.path])}
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from channels._server import serve; serve()",
                json.dumps(config),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            text=True,
        )
        self.url = self._read_url(start_timeout)

    def _read_url(self, timeout: float) -> str:
        found: list[str] = []

        def read() -> None:
            assert self.proc.stdout is not None
            found.append(self.proc.stdout.readline())

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(timeout)
        line = found[0].strip() if found else ""
        if not line.startswith("http://"):
            self.close()
            raise RuntimeError(f"the gate process did not start: {line!r}")
        return line

    def kill(self) -> None:
        """SIGKILL: no cleanup of any kind runs in the child."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        assert self.proc.returncode == -signal.SIGKILL

    def close(self) -> None:
        """Stop it (closing its stdin ends it cleanly), killing it if it does not end."""
        if self.proc.poll() is None and self.proc.stdin is not None:
            try:
                self.proc.stdin.close()
                self.proc.wait(20)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(30)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()
