"""``x402gate proxy --workers N``: several gateway processes on one listening socket.

The parent validates the file, binds the socket and runs uvicorn's process supervisor; every
worker is a fresh interpreter (uvicorn spawns them) that reads the file again, through
:func:`worker_app`, and serves its own :class:`~x402gate.gateway.app.Gateway` on the inherited
socket. The kernel spreads the connections over the workers, so the answers scale with cores.

What must be shared between the workers is what the store holds (replay claims, the credit
ledger, channel state), so a store that lives in one process (``memory://``) is refused: every
worker would have its own, and a payment could be accepted once per worker. The session-token
secret must be shared too (a token issued by one worker is read by another): the file's
``gateway.secret``, or else one random secret the parent draws for all its workers (tokens then
last as long as the supervisor, as a single process's last as long as it).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
import socket
from typing import Any
from urllib.parse import urlsplit

from pydantic import SecretStr

from .app import Gateway, uvicorn_options
from .config import GatewayConfig, load_config
from .redaction import RedactingFilter

__all__ = [
    "ENV_FILE",
    "ENV_LOG_FORMAT",
    "ENV_SECRET",
    "ENV_VERBOSE",
    "serve_workers",
    "shared_store_problem",
    "worker_app",
]

ENV_FILE = "X402GATE_GATEWAY_FILE"
"""The gateway file a worker process reads (set by the parent before it starts the workers)."""
ENV_VERBOSE = "X402GATE_GATEWAY_VERBOSE"
"""``1``: the workers log every payment step (``--verbose``)."""
ENV_LOG_FORMAT = "X402GATE_GATEWAY_LOG_FORMAT"
"""``json``: the workers log one JSON object per line (``--log-format json``)."""
ENV_SECRET = "X402GATE_GATEWAY_WORKER_SECRET"
"""The session secret the parent drew for its workers when the file sets none (hex)."""

_PROCESS_LOCAL_SCHEMES = frozenset({"memory"})


def shared_store_problem(store_url: str, workers: int) -> str | None:
    """Why ``workers`` processes cannot serve a gateway on ``store_url``, or ``None``.

    A ``memory://`` store lives inside one process: with several workers each would accept
    the same payment once, and credit bought in one would be unknown to the others.
    """
    scheme = urlsplit(store_url).scheme.lower()
    if workers > 1 and scheme in _PROCESS_LOCAL_SCHEMES:
        return (
            f"--workers {workers} needs a store the processes share, and {scheme}:// lives "
            "in one process (a payment could be accepted once per worker): use "
            "sqlite:///path.db (one host), redis://... or postgresql://..."
        )
    return None


def _configure_logging(config: GatewayConfig) -> None:
    """The parent's logging, again in a spawned worker: same level, secrets masked."""
    verbose = os.environ.get(ENV_VERBOSE) == "1"
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    redacting = RedactingFilter(config.redactor)
    for handler in logging.getLogger().handlers:
        handler.addFilter(redacting)
        if os.environ.get(ENV_LOG_FORMAT) == "json":
            from ..observability import JsonFormatter

            handler.setFormatter(JsonFormatter())


def worker_app() -> Gateway:
    """The app of one worker process (uvicorn calls this factory once per worker)."""
    config = load_config(os.environ[ENV_FILE])
    _configure_logging(config)
    drawn = os.environ.get(ENV_SECRET)
    if config.gateway.secret is None and drawn:
        section = config.gateway.model_copy(update={"secret": SecretStr(drawn)})
        config = dataclasses.replace(
            config, file=config.file.model_copy(update={"gateway": section})
        )
    return Gateway(config)


def serve_workers(
    path: str,
    config: GatewayConfig,
    sock: socket.socket,
    *,
    workers: int,
    verbose: bool,
    log_format: str = "text",
    **options: Any,
) -> None:
    """Serve the file at ``path`` with ``workers`` processes on the bound ``sock``.

    Returns when the supervisor stops (SIGINT or SIGTERM stop every worker); a worker that
    dies is replaced. ``options`` are uvicorn settings as
    :func:`~x402gate.gateway.app.uvicorn_options` takes them.
    """
    import inspect

    import uvicorn
    from uvicorn.supervisors import Multiprocess

    # Spawned workers inherit the environment: the file to read and how much to log.
    os.environ[ENV_FILE] = os.path.abspath(path)
    os.environ[ENV_VERBOSE] = "1" if verbose else "0"
    os.environ[ENV_LOG_FORMAT] = log_format
    if config.gateway.secret is None:
        # One secret for every worker: a session token must work on whichever one reads it.
        os.environ[ENV_SECRET] = secrets.token_hex(32)
    values = uvicorn_options(config, **options)
    settings = uvicorn.Config(f"{__name__}:worker_app", factory=True, workers=workers, **values)
    if "target" in inspect.signature(Multiprocess).parameters:  # older uvicorn releases
        server = uvicorn.Server(settings)
        Multiprocess(settings, target=server.run, sockets=[sock]).run()  # type: ignore[call-arg]
    else:
        Multiprocess(settings, sockets=[sock]).run()
