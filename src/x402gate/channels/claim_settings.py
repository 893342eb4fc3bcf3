"""When the background claimer claims and settles: :class:`ClaimSettings`."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigurationError
from ..stores.channels import MAX_CHANNEL_LIST

__all__ = ["ClaimSettings"]


@dataclass(frozen=True, slots=True)
class ClaimSettings:
    """When a gate's background claimer claims and settles (``ChannelSettings(claim=...)``).

    Three strategies, each optional, checked every ``tick_seconds`` by the one claimer that
    holds the store's lease:

    :param every: periodic: a claim round when the claimer takes the lease and then every
        ``every`` seconds while anything is unclaimed (``None``: never on a timer).
    :param threshold: a round as soon as the unclaimed total of the listed channels reaches
        this many atomic units of the token (``None``: off).
    :param withdrawals: a round as soon as a channel with unclaimed value shows a timed
        withdrawal started by its payer, long before its delay ends (the escrow lets the payer
        take back only what was not claimed by then).
    :param refresh_seconds: how old the store's mirror of a channel with unclaimed value may
        get before it is read from the chain again (what reveals withdrawals; keep it well under
        the channels' withdraw delay, 900 s at least).
    :param batch: most channels per claim transaction.
    :param settle: sweep the claimed amount to the receiver after each successful round.
    :param tick_seconds: how often the claimer wakes up.
    :param lease_seconds: how long the lease lasts unrenewed: when its holder dies, another
        worker or instance takes over after at most this long.
    """

    every: float | None = 3600.0
    threshold: int | None = None
    withdrawals: bool = True
    refresh_seconds: float = 300.0
    batch: int = 100
    settle: bool = True
    tick_seconds: float = 5.0
    lease_seconds: float = 60.0

    def check(self) -> None:
        """:class:`ConfigurationError` naming the first wrong value."""
        seconds = {
            "every": self.every,
            "refresh_seconds": self.refresh_seconds,
            "tick_seconds": self.tick_seconds,
            "lease_seconds": self.lease_seconds,
        }
        for name, value in seconds.items():
            if value is None and name == "every":
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise ConfigurationError(f"claim {name} must be a positive number of seconds")
        if self.every is None and self.threshold is None and not self.withdrawals:
            raise ConfigurationError(
                "claim needs a strategy: every, threshold or withdrawals (or no claim at all)"
            )
        if self.lease_seconds < 2 * self.tick_seconds:
            raise ConfigurationError("claim lease_seconds must be at least twice tick_seconds")
        if self.threshold is not None and (
            isinstance(self.threshold, bool)
            or not isinstance(self.threshold, int)
            or self.threshold <= 0
        ):
            raise ConfigurationError("claim threshold must be a positive whole amount")
        if (
            isinstance(self.batch, bool)
            or not isinstance(self.batch, int)
            or not 0 < self.batch <= MAX_CHANNEL_LIST
        ):
            raise ConfigurationError(f"claim batch must be from 1 to {MAX_CHANNEL_LIST}")
        for name in ("withdrawals", "settle"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigurationError(f"claim {name} must be True or False")
