"""The ``x402gate`` command: ``x402gate demo``, ``x402gate proxy gateway.yaml``,
``x402gate prices``, ``x402gate testing install-chain``, ``x402gate channels
list|refund|claim|settle`` (:mod:`x402gate.channels.cli`),
``x402gate report --store URL``, ``x402gate webhooks --store URL``, ``--version``."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .__about__ import __version__

if TYPE_CHECKING:
    from .gateway.config import GatewayConfig

__all__ = ["GATEWAY_DOCS_URL", "main"]

GATEWAY_DOCS_URL = "https://x402gate.readthedocs.io/en/latest/gateway/"
"""The gateway's documentation (``docs/gateway.md`` of the source distribution)."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="x402gate", description="Charge per call for any Python API with HTTP 402 and x402."
    )
    parser.add_argument("--version", action="version", version=f"x402gate {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = sub.add_parser(
        "demo",
        help="run a paid round trip on a local chain (needs the pinned anvil: x402gate testing "
        "install-chain)",
    )
    demo.add_argument("--json", action="store_true", help="also print the rows as JSON")
    demo.add_argument("-v", "--verbose", action="store_true", help="log what the gate does")
    proxy = sub.add_parser(
        "proxy",
        help="serve a paid gateway in front of HTTP APIs, from a YAML file (docs/gateway.md)",
        description="Charge per call for upstream HTTP APIs, as configured in a YAML file.",
        epilog=f"Documentation: {GATEWAY_DOCS_URL} (docs/gateway.md in the source distribution); "
        "example files: examples/gateway/.",
    )
    proxy.add_argument("config", help="the gateway file (e.g. gateway.yaml)")
    proxy.add_argument(
        "--check", action="store_true", help="validate the file (and its ${VARS}), do not serve"
    )
    proxy.add_argument(
        "--online",
        action="store_true",
        help="with --check: also open the store and ask the facilitator (or the chain) whether "
        "it supports the accepted networks, as the start-up does",
    )
    proxy.add_argument("--host", help="listen on this address instead of gateway.host")
    proxy.add_argument("--port", type=int, help="listen on this port instead of gateway.port")
    proxy.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="serve with N processes on one socket (needs a shared store: sqlite, redis or "
        "postgresql; refused with memory://)",
    )
    proxy.add_argument("--no-access-log", action="store_true", help="do not log a line per request")
    proxy.add_argument("-v", "--verbose", action="store_true", help="log every payment step")
    proxy.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="json: one JSON object per log line (payment fields as keys)",
    )
    testing = sub.add_parser(
        "testing",
        help="the test kit's tools (x402gate.testing): install-chain",
        description="Tools of the test kit (x402gate.testing and its pytest plugin).",
    )
    testing_sub = testing.add_subparsers(dest="testing_command", metavar="TOOL", required=True)
    install = testing_sub.add_parser(
        "install-chain",
        help="install the pinned anvil from npm into the user cache and print its path",
        description="Install the anvil version the test kit pins (npm, into a user cache "
        "directory: $X402GATE_CACHE_DIR or ~/.cache/x402gate), unless it is there already, "
        "and print the binary's path. The pytest fixtures then find it.",
    )
    install.add_argument("--force", action="store_true", help="install again even if present")
    prices = sub.add_parser(
        "prices",
        help="print the built-in model price table (per-token prices, their sources and dates)",
        description="The model price table shipped in this version, used by gateway routes "
        "with price_table: builtin. Prices are US dollars per million tokens.",
    )
    prices.add_argument("--json", action="store_true", help="print the table as JSON")
    prices.add_argument("--provider", help="only this provider's models (anthropic, openai...)")
    from .channels import cli as channels_command

    channels_command.add_parser(sub)
    from .analytics import command as report_command

    report_command.add_parser(sub)
    from .webhooks import command as webhooks_command

    webhooks_command.add_parser(sub)
    args = parser.parse_args(argv)
    if args.command == "proxy" and args.online and not args.check:
        parser.error("--online goes with --check (serving runs the same checks at start-up)")
    if args.command == "proxy" and args.workers < 1:
        parser.error("--workers must be 1 or more")
    if args.command is None:
        parser.print_help()
        return 2
    if args.command == "demo":
        logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
        from .demo import run_demo
        from .testing.chain import ChainUnavailable

        try:
            return run_demo(as_json=args.json)
        except ChainUnavailable as exc:
            print(f"x402gate demo: {exc}", file=sys.stderr)
            return 1
    if args.command == "proxy":
        return _proxy(args)
    if args.command == "testing":
        return _install_chain(force=args.force)
    if args.command == "prices":
        return _prices(args)
    if args.command == "channels":
        logging.basicConfig(level=logging.WARNING)
        return channels_command.run(args)
    if args.command == "report":
        return report_command.run(args)
    if args.command == "webhooks":
        return webhooks_command.run(args)
    return 2  # pragma: no cover


def _install_chain(*, force: bool) -> int:
    """``x402gate testing install-chain``: the pinned anvil's path on stdout, or why not."""
    from .testing.anvil import ANVIL_VERSION, AnvilInstallError, install_anvil

    try:
        path = install_anvil(force=force)
    except AnvilInstallError as exc:
        print(f"x402gate testing install-chain: {exc}", file=sys.stderr)
        return 1
    print(f"anvil {ANVIL_VERSION} ready", file=sys.stderr)
    print(path)
    return 0


def _proxy(args: argparse.Namespace) -> int:
    """``x402gate proxy FILE``: validate the file, then serve it (unless ``--check``)."""
    from .gateway.config import GatewayConfigError, load_config

    try:
        config = load_config(args.config)
    except GatewayConfigError as exc:
        print(exc, file=sys.stderr)
        count = len(exc.problems)
        plural = "s" if count != 1 else ""
        print(f"{args.config}: invalid ({count} problem{plural})", file=sys.stderr)
        return 1
    if args.check and not args.online:
        print(f"{args.config}: valid: {config.summary()}")
        return 0
    if args.check:
        return _check_online(args.config, config)

    from .gateway.workers import serve_workers, shared_store_problem

    problem = shared_store_problem(config.store, args.workers)
    if problem is not None:
        print(f"x402gate proxy: {problem}", file=sys.stderr)
        return 1

    import uvicorn

    from .errors import ConfigurationError
    from .gateway.app import Gateway, bind_socket, uvicorn_config
    from .gateway.redaction import RedactingFilter

    # Every handler masks the file's secrets, whichever library logs (uvicorn, httpx, web3).
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    redacting = RedactingFilter(config.redactor)
    for handler in logging.getLogger().handlers:
        handler.addFilter(redacting)
        if args.log_format == "json":
            from .observability import JsonFormatter

            handler.setFormatter(JsonFormatter())
    try:
        gateway = Gateway(config)
    except ConfigurationError as exc:
        print(f"{args.config}: {config.redactor(str(exc))}", file=sys.stderr)
        return 1
    settings = uvicorn_config(
        gateway,
        host=args.host,
        port=args.port,
        log_config=None,
        log_level="info",
        access_log=not args.no_access_log,
    )
    try:
        # Bound here, not by uvicorn: the address printed is the real one (also for --port 0),
        # and it accepts connections from this line on.
        sock = bind_socket(settings.host, settings.port)
    except OSError as exc:
        print(
            f"x402gate proxy: cannot listen on {settings.host}:{settings.port}: {exc.strerror}",
            file=sys.stderr,
        )
        return 1
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    processes = f" ({args.workers} worker processes)" if args.workers > 1 else ""
    print(
        f"x402gate gateway on http://{shown}:{port}{processes}: {config.summary()}",
        file=sys.stderr,
        flush=True,
    )
    if args.workers > 1:
        # The workers build their own gateway from the file; this one only proved it builds.
        import asyncio

        asyncio.run(gateway.aclose())
        try:
            serve_workers(
                args.config,
                config,
                sock,
                workers=args.workers,
                verbose=args.verbose,
                log_format=args.log_format,
                host=settings.host,
                port=settings.port,
                log_config=None,
                access_log=not args.no_access_log,
            )
        finally:
            sock.close()
        return 0
    server = uvicorn.Server(settings)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    return 0 if server.started else 1


def _prices(args: argparse.Namespace) -> int:
    """``x402gate prices``: the built-in table, as aligned text or JSON."""
    import json

    from .metering import builtin_prices
    from .money import format_usd

    table = builtin_prices()
    rows = [r for r in table if args.provider is None or r.provider == args.provider.lower()]
    if not rows:
        print(f"x402gate prices: no model of provider {args.provider!r}", file=sys.stderr)
        return 1
    if args.json:
        document = table.as_dict()
        document["models"] = [row.as_dict() for row in rows]
        print(json.dumps(document, indent=2))
        return 0
    header = ("model", "provider", "kind", "input $/M", "output $/M", "read", "source")
    lines = [
        (
            r.model,
            r.provider,
            r.kind,
            format_usd(r.input),
            format_usd(r.output) if r.kind == "text" else "-",
            r.read,
            r.source,
        )
        for r in rows
    ]
    widths = [max(len(line[i]) for line in (header, *lines)) for i in range(len(header) - 1)]
    print(f"x402gate price table {table.version} (US dollars per million tokens)")
    for line in (header, *lines):
        cells = [cell.ljust(width) for cell, width in zip(line, widths, strict=False)]
        print("  ".join([*cells, line[-1]]))
    return 0


def _check_online(path: str, config: GatewayConfig) -> int:
    """``--check --online``: the start-up checks of ``proxy``, without serving."""
    import asyncio

    from .errors import ConfigurationError
    from .gateway.app import Gateway

    async def check(gateway: Gateway) -> str | None:
        try:
            # Whatever gateway.startup_checks says: the operator asked for the checks.
            return await gateway.gate.startup_problem()
        finally:
            await gateway.aclose()

    try:
        gateway = Gateway(config)
        problem = asyncio.run(check(gateway))
    except ConfigurationError as exc:
        problem = str(exc)
    if problem is not None:
        print(f"{path}: start-up check failed: {config.redactor(problem)}", file=sys.stderr)
        return 1
    print(f"{path}: valid, store and facilitator ready: {config.summary()}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
