"""The Lua scripts of the Redis store, read from the package's ``lua/`` directory.

Every check-and-set of the Redis store is one Lua script, which Redis runs atomically. The
scripts are package data files rather than Python strings, so that they can be read, linted and
tried with ``redis-cli --eval`` on their own. The credit and in-flight scripts start with shared
preludes (the ledger's exact decimal arithmetic), named in :data:`CREDIT` and :data:`IN_FLIGHT`.
"""

from __future__ import annotations

import functools
from importlib import resources

__all__ = ["CHANNEL", "CREDIT", "IN_FLIGHT", "JOURNAL", "script"]

JOURNAL = ("journal_prelude",)
"""Prelude of the scripts that write journal rows."""

CREDIT = ("credit_prelude", "journal_prelude")
"""Preludes of the credit ledger scripts."""

IN_FLIGHT = ("credit_prelude", "in_flight_prelude")
"""Preludes of the payments-in-flight scripts."""

CHANNEL = ("credit_prelude", "channel_prelude", "journal_prelude")
"""Preludes of the payment-channel scripts (the ledger's exact decimal arithmetic)."""


@functools.cache
def _read(name: str) -> str:
    return resources.files(__package__).joinpath("lua", f"{name}.lua").read_text("utf-8")


def script(name: str, preludes: tuple[str, ...] = ()) -> str:
    """The source of script ``name`` (``lua/<name>.lua``), after its ``preludes``."""
    return "".join(_read(part) for part in (*preludes, name))
