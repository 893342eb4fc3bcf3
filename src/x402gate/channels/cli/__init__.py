"""``x402gate channels list|claim|settle|refund``: operators' commands on the payment channels a
store keeps (docs/channels.md).

* ``list`` (:mod:`.listing`): every channel with its amounts and withdrawal state.
* ``claim`` and ``settle`` (:mod:`.claiming`): claims and settlement, for cron or by hand.
* ``refund`` (:mod:`.refunding`): the unearned remainder of a channel, or of every idle one,
  back to its payer.

Each works from the gateway file the server runs (``--config gateway.yaml``) or from flags
(``--store URL``, ``--facilitator URL``...); what they share is in :mod:`.common`. Each
subcommand sets ``channels_run`` on the parsed arguments, which :func:`run` calls.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .claiming import add_claim_settle
from .listing import add_list
from .refunding import add_refund

__all__ = ["add_parser", "run"]


def add_parser(sub: Any) -> Any:
    """Add ``channels`` to the ``x402gate`` command's subparsers; answers its own."""
    channels = sub.add_parser(
        "channels",
        help="list, refund, claim and settle the payment channels a store keeps",
        description="Operators' commands on payment channels (docs/channels.md).",
    )
    commands = channels.add_subparsers(dest="channels_command", metavar="COMMAND")
    add_list(commands)
    add_refund(commands)
    add_claim_settle(commands)
    return commands


def run(args: argparse.Namespace) -> int:
    """Run the ``channels`` subcommand ``args`` names; the exit status."""
    command = getattr(args, "channels_run", None)
    if command is None:
        print(
            "x402gate channels: name a command (list, refund, claim, settle); see --help",
            file=sys.stderr,
        )
        return 2
    status: int = command(args)
    return status
