"""The ``x402gate`` command: ``x402gate demo``, ``x402gate --version``."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from .__about__ import __version__

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="x402gate", description="Charge per call for any Python API with HTTP 402 and x402."
    )
    parser.add_argument("--version", action="version", version=f"x402gate {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = sub.add_parser(
        "demo", help="run a paid round trip on a local chain (needs the pinned anvil: npm ci)"
    )
    demo.add_argument("--json", action="store_true", help="also print the rows as JSON")
    demo.add_argument("-v", "--verbose", action="store_true", help="log what the gate does")
    args = parser.parse_args(argv)
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
    return 2  # pragma: no cover


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
