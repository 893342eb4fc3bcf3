"""How a gate takes ``batch-settlement`` payments: :class:`ChannelSettings` and the receiver
authorizer's address (given, from a key, or advertised by the facilitator).

:mod:`x402gate.gate.channels` re-exports everything here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from ..channels.claims import ClaimSettings
from ..errors import ConfigurationError
from ..schemes.batch_settlement import BatchSettlementScheme, codes

__all__ = [
    "FACILITATOR",
    "ChannelSettings",
    "advertised_authorizer",
    "authorizer_key_address",
]


FACILITATOR: Final = "facilitator"
"""``receiver_authorizer="facilitator"``: the facilitator signs claims and refunds (delegation)."""


@dataclass(frozen=True, slots=True)
class ChannelSettings:
    """How a gate takes ``batch-settlement`` payments.

    The receiver is the gate's ``pay_to``. Who signs claims and refunds for it is given by
    exactly one of ``receiver_authorizer`` and ``receiver_authorizer_key``.

    :param receiver_authorizer: the address that signs claims and refunds for the receiver, or
        ``"facilitator"`` to delegate them: the gate then takes the address the facilitator
        advertises for ``batch-settlement`` in ``/supported`` (``extra.receiverAuthorizer``)
        when it starts, and offers no channel until it has one.
    :param withdraw_delay: seconds a payer's timed withdrawal waits (900 s to 30 days).
    :param min_deposit: smallest first deposit, atomic units (default 10 x the price).
    :param sync_seconds: how old the store's mirror of a channel's chain figures may be
        before a voucher is sent to the facilitator, which reads them again.
    :param receiver_authorizer_key: instead of ``receiver_authorizer``, the private key (hex)
        whose address is the receiver authorizer; kept to sign claims, never logged nor shown
        by ``repr``.
    :param prefer: list ``batch-settlement`` before ``exact`` on flat-priced routes (clients
        take the first option they support); metered routes always list it first.
    :param claim: run the background claimer in every process of this gate
        (:class:`~x402gate.channels.ClaimSettings`: when to claim and settle); ``None`` leaves
        claims to ``x402gate channels claim`` (cron) or to :class:`~x402gate.channels.ClaimEngine`.
    """

    receiver_authorizer: str | None = None
    withdraw_delay: int = codes.MIN_WITHDRAW_DELAY
    min_deposit: int | None = None
    sync_seconds: float = 60.0
    receiver_authorizer_key: str | None = field(default=None, repr=False)
    prefer: bool = False
    claim: ClaimSettings | None = None

    @property
    def delegated(self) -> bool:
        """Whether the facilitator's advertised authorizer is used (resolved at start-up)."""
        return self.receiver_authorizer == FACILITATOR and self.receiver_authorizer_key is None

    def authorizer_address(self) -> str | None:
        """The receiver authorizer's address (of the key, when one is given); ``None`` when
        delegated to the facilitator. Raises :class:`ConfigurationError` unless exactly one
        of ``receiver_authorizer`` and ``receiver_authorizer_key`` is given."""
        given_key = self.receiver_authorizer_key is not None
        if (self.receiver_authorizer is not None) == given_key:
            raise ConfigurationError(
                "channels need exactly one of receiver_authorizer (an address, or "
                "'facilitator') and receiver_authorizer_key"
            )
        if given_key:
            return authorizer_key_address(self.receiver_authorizer_key)
        if self.receiver_authorizer == FACILITATOR:
            return None
        return self.receiver_authorizer

    def check(self) -> None:
        """Check every value (:class:`ConfigurationError` naming the wrong one)."""
        if not isinstance(self.sync_seconds, (int, float)) or isinstance(self.sync_seconds, bool):
            raise ConfigurationError("sync_seconds must be a non-negative number")
        if not self.sync_seconds >= 0:
            raise ConfigurationError("sync_seconds must be a non-negative number")
        if not isinstance(self.prefer, bool):
            raise ConfigurationError("prefer must be True or False")
        if self.claim is not None:
            if not isinstance(self.claim, ClaimSettings):
                raise ConfigurationError("claim must be a x402gate.channels.ClaimSettings")
            self.claim.check()
        address = self.authorizer_address()
        # The scheme checks the address and the terms; a delegated one is checked the same way
        # at start-up, so the terms are checked here with a stand-in address.
        self.scheme(None, address or "0x" + "11" * 20)

    def scheme(
        self, facilitator: Any, receiver_authorizer: str | None = None
    ) -> BatchSettlementScheme:
        """The scheme these settings describe, with ``receiver_authorizer`` (the one the
        facilitator advertises) when delegated; checks them."""
        if receiver_authorizer is None:
            receiver_authorizer = self.authorizer_address()
            if receiver_authorizer is None:
                raise ConfigurationError(
                    "receiver_authorizer is delegated to the facilitator: it is known at start-up"
                )
        if not isinstance(self.sync_seconds, (int, float)) or not self.sync_seconds >= 0:
            raise ConfigurationError("sync_seconds must be a non-negative number")
        return BatchSettlementScheme(
            facilitator,
            receiver_authorizer=receiver_authorizer,
            withdraw_delay=self.withdraw_delay,
            min_deposit=self.min_deposit,
        )


def authorizer_key_address(key: Any) -> str:
    """The address of a receiver-authorizer private key (64 hex digits, ``0x`` optional).

    The message of a refused key never contains any of it."""
    text = key.strip() if isinstance(key, str) else None
    digits = text[2:] if text is not None and text[:2] in ("0x", "0X") else text
    if digits is None or len(digits) != 64 or not all(c in _HEX for c in digits):
        raise ConfigurationError("receiver_authorizer_key must be 64 hexadecimal digits (32 bytes)")
    from eth_account import Account

    try:
        address: str = Account.from_key("0x" + digits).address
    except Exception:  # zero or above the curve order: not a key
        raise ConfigurationError("receiver_authorizer_key is not a valid private key") from None
    return address


_HEX = frozenset("0123456789abcdefABCDEF")


def advertised_authorizer(supported: Any, networks: Sequence[str]) -> str:
    """The receiver authorizer a facilitator's ``/supported`` answer advertises for
    ``batch-settlement`` on every one of ``networks`` (``extra.receiverAuthorizer``).

    :class:`ConfigurationError` when a network has none (the facilitator signs nothing for
    this receiver: no channel can be offered) or when they differ between networks."""
    found: dict[str, str] = {}
    for kind in supported.kinds:
        extra = kind.extra if isinstance(kind.extra, dict) else {}
        address = extra.get("receiverAuthorizer")
        if kind.x402_version == 2 and kind.scheme == codes.SCHEME and isinstance(address, str):
            found.setdefault(kind.network, address)
    missing = sorted(set(networks) - set(found))
    if missing:
        raise ConfigurationError(
            f"the facilitator advertises no receiverAuthorizer for {codes.SCHEME} on "
            f"{', '.join(missing)}: set receiver_authorizer to an address or give "
            "receiver_authorizer_key"
        )
    addresses = {found[network].lower() for network in networks}
    if len(addresses) > 1:
        raise ConfigurationError(
            "the facilitator advertises a different receiverAuthorizer on each network: set "
            "receiver_authorizer to one address or give receiver_authorizer_key"
        )
    return found[networks[0]]
