"""x402 ``batch-settlement`` as a :class:`~x402gate.schemes.base.PaymentScheme`.

The buyer deposits once into an escrow channel; each request then carries a cumulative
voucher signed by the channel's payer authorizer. :meth:`BatchSettlementScheme.check` does the
offline half (wire format, channel id, counterparties, signatures); :func:`check_channel` the
half that needs the server's view of the channel (cumulative step, balance); :func:`next_charge`
bounds the charge to commit; the ``*_extra`` helpers build what the official clients read back.
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from ...errors import ConfigurationError, PaymentError
from ...verify import _checksum, _domain_separator
from . import codes, digest
from .wire import ChannelConfig, Deposit, Kind, Voucher, parse_payload, route_terms

if TYPE_CHECKING:
    from x402.schemas import PaymentPayload, PaymentRequirements, SettleResponse, VerifyResponse

    from ...assets import Asset
    from ...facilitators import Facilitator

__all__ = [
    "BatchSettlementScheme",
    "ChannelAuthorization",
    "ChannelView",
    "check_channel",
    "corrective_requirements",
    "next_charge",
    "payment_response_extra",
]

_VALID_BEFORE_BUFFER: Final = 6  # seconds; a deposit must outlive its transaction
_ZERO: Final = bytes(20)


@dataclass(frozen=True, slots=True)
class ChannelAuthorization:
    """A ``batch-settlement`` payload that passed the offline checks.

    ``value`` is what this request may be charged at most (the requirement's amount; 0 for a
    refund); ``nonce`` (``<channelId>:<maxClaimableAmount>``) names the cumulative step, so two
    requests of one step share it. ``recovered`` is False only for a signature that cannot be
    proven offline (a contract payer without a payer authorizer, or its deposit): the
    facilitator must verify the payload before anything is served.
    """

    kind: Kind
    payer: str
    value: int
    nonce: str
    valid_before: int
    signature: bytes
    recovered: bool
    config: ChannelConfig
    voucher: Voucher
    deposit: Deposit | None
    refund_amount: int | None

    @property
    def channel_id(self) -> str:
        """``0x`` + 64 lower-case hex digits: the key of the channel's state."""
        return self.voucher.channel_id_hex

    @property
    def max_claimable_amount(self) -> int:
        """The signed cumulative ceiling."""
        return self.voucher.max_claimable_amount


@dataclass(frozen=True, slots=True)
class ChannelView:
    """The server's view of one channel when a voucher is checked: the escrow's figures
    (``balance``, ``total_claimed``, withdrawal, refund nonce) mirrored from the chain, the
    charged total, and the last voucher the server holds (for corrective 402s)."""

    channel_id: str
    balance: int
    total_claimed: int
    charged_cumulative_amount: int
    withdraw_requested_at: int = 0
    refund_nonce: int = 0
    signed_max_claimable: int | None = None
    signature: str | None = None

    def channel_state(self, charged_cumulative_amount: int | None = None) -> dict[str, Any]:
        """The wire ``channelState``; the charged total is this view's unless given."""
        charged = self.charged_cumulative_amount
        if charged_cumulative_amount is not None:
            charged = charged_cumulative_amount
        return {
            "channelId": self.channel_id,
            "balance": str(self.balance),
            "totalClaimed": str(self.total_claimed),
            "withdrawRequestedAt": self.withdraw_requested_at,
            "refundNonce": str(self.refund_nonce),
            "chargedCumulativeAmount": str(charged),
        }


class BatchSettlementScheme:
    """x402 ``batch-settlement`` on EVM, EIP-3009 deposits, EOA vouchers verified locally.

    :param facilitator: verifies and settles deposits and refunds (and contract-payer vouchers).
    :param receiver_authorizer: the address that signs claims and refunds for the receiver
        (the gate's own key, or the one the facilitator advertises when delegated).
    :param withdraw_delay: seconds a payer's timed withdrawal waits (900 s to 30 days).
    :param min_deposit: smallest first deposit, atomic units; default 10 x the request maximum.

    What the gate must still do around it (this class keeps no state): hold each channel's
    state in its store and serialise requests per channel (one cumulative step served once,
    others ``channel_busy`` or a corrective 402 from :func:`corrective_requirements`); build a
    :class:`ChannelView` from the store, refreshed from the chain when older than its TTL, and
    pass it to :func:`check_channel`; send deposits, refunds and unrecovered payloads to
    :meth:`verify`/:meth:`settle` (the facilitator); run the handler, then commit the charge
    bounded by :func:`next_charge` only if it succeeded, and answer with
    :func:`payment_response_extra`. Vouchers themselves are never sent to :meth:`settle`: they
    are claimed later, in batches.
    """

    name = codes.SCHEME
    error_codes = codes.BATCH_SETTLEMENT_ERROR_CODES

    def __init__(
        self,
        facilitator: Facilitator,
        *,
        receiver_authorizer: str,
        withdraw_delay: int = codes.MIN_WITHDRAW_DELAY,
        min_deposit: int | None = None,
    ) -> None:
        if not isinstance(receiver_authorizer, str) or len(receiver_authorizer) != 42:
            raise ConfigurationError("receiver_authorizer must be a 0x-prefixed EVM address")
        try:
            raw = bytes.fromhex(receiver_authorizer[2:])
        except ValueError:
            raise ConfigurationError("receiver_authorizer must be an EVM address") from None
        if receiver_authorizer[:2] != "0x" or raw == _ZERO:
            raise ConfigurationError("receiver_authorizer must be a non-zero EVM address")
        if (
            type(withdraw_delay) is not int
            or not codes.MIN_WITHDRAW_DELAY <= withdraw_delay <= codes.MAX_WITHDRAW_DELAY
        ):
            raise ConfigurationError("withdraw_delay must be 900 s to 30 days, in seconds")
        if min_deposit is not None and (type(min_deposit) is not int or min_deposit <= 0):
            raise ConfigurationError("min_deposit must be a positive integer (atomic units)")
        self.facilitator = facilitator
        self.receiver_authorizer = _checksum(raw)
        self.withdraw_delay = withdraw_delay
        self.min_deposit = min_deposit

    def __repr__(self) -> str:
        return f"BatchSettlementScheme({self.facilitator!r}, {self.receiver_authorizer})"

    def requirements(
        self, asset: Asset, amount: int, pay_to: str, max_timeout_seconds: int
    ) -> PaymentRequirements:
        """One ``accepts`` entry: vouchers of at most ``amount`` per request, into a channel
        whose receiver is ``pay_to``; ``extra`` carries the token's EIP-712 domain and the
        channel terms the client must sign (``receiverAuthorizer``, ``withdrawDelay``) and the
        ``minDeposit`` floor."""
        from x402.schemas import PaymentRequirements

        floor = amount * codes.DEFAULT_MIN_DEPOSIT_MULTIPLIER
        if self.min_deposit is not None:
            floor = max(amount, self.min_deposit)
        return PaymentRequirements(
            scheme=codes.SCHEME,
            network=asset.network,
            asset=asset.address,
            amount=str(amount),
            pay_to=pay_to,
            max_timeout_seconds=max_timeout_seconds,
            extra={
                **asset.extra,
                "receiverAuthorizer": self.receiver_authorizer,
                "withdrawDelay": self.withdraw_delay,
                "minDeposit": str(floor),
            },
        )

    def check(
        self,
        payload: Mapping[str, Any],
        requirements: PaymentRequirements,
        *,
        now: float,
        allow_unrecovered: bool = False,
    ) -> ChannelAuthorization:
        """Offline checks: wire format, the channel id against its config, the config against
        the route (receiver, receiver authorizer, token, withdraw delay), a deposit's amount,
        window and signature, and the voucher's signature. No state, no I/O."""
        terms = route_terms(requirements)
        parsed = parse_payload(payload)
        config, voucher = parsed.config, parsed.voucher
        if digest.channel_id(config, terms.chain_id) != voucher.channel_id:
            raise PaymentError(402, codes.CHANNEL_ID_MISMATCH, "channelId is not its config's")
        if config.receiver != terms.receiver:
            raise PaymentError(402, codes.RECEIVER_MISMATCH, "the channel pays someone else")
        if config.receiver_authorizer != terms.receiver_authorizer:
            raise PaymentError(
                402, codes.RECEIVER_AUTHORIZER_MISMATCH, "the channel has another authorizer"
            )
        if config.token != terms.token:
            raise PaymentError(402, codes.TOKEN_MISMATCH, "the channel holds another token")
        if config.withdraw_delay != terms.withdraw_delay:
            raise PaymentError(
                402, codes.WITHDRAW_DELAY_MISMATCH, "the channel has another withdraw delay"
            )
        recovered = True
        deposit = parsed.deposit
        if deposit is not None:
            if deposit.amount < terms.min_deposit:
                raise PaymentError(
                    402, codes.DEPOSIT_BELOW_MIN_DEPOSIT, "the deposit is below the minimum"
                )
            if deposit.valid_before < now + _VALID_BEFORE_BUFFER:
                raise PaymentError(402, codes.VALID_BEFORE_EXPIRED, "the deposit has expired")
            if deposit.valid_after > now:
                raise PaymentError(402, codes.VALID_AFTER_IN_FUTURE, "the deposit is not valid yet")
            signed = digest.receive_authorization_digest(
                _domain_separator(
                    terms.token_name, terms.token_version, terms.chain_id, terms.token
                ),
                config.payer,
                deposit.amount,
                deposit.valid_after,
                deposit.valid_before,
                digest.deposit_nonce(voucher.channel_id, deposit.salt),
            )
            if not digest.recover(deposit.signature, signed, config.payer):
                if not allow_unrecovered:
                    raise PaymentError(
                        402,
                        codes.RECEIVE_AUTHORIZATION_SIGNATURE,
                        "the deposit is not signed by the payer",
                    )
                recovered = False
        signed = digest.voucher_digest(
            voucher.channel_id, voucher.max_claimable_amount, terms.chain_id
        )
        if config.payer_authorizer != _ZERO:
            # The escrow checks these with plain ECDSA: a bad one is bad everywhere.
            if not digest.recover(voucher.signature, signed, config.payer_authorizer):
                raise PaymentError(402, codes.VOUCHER_SIGNATURE, "the voucher's signer is wrong")
        elif not digest.recover(voucher.signature, signed, config.payer):
            # No payer authorizer: the payer signs, maybe as a contract (EIP-1271).
            if not allow_unrecovered:
                raise PaymentError(402, codes.VOUCHER_SIGNATURE, "the voucher's signer is wrong")
            recovered = False
        return ChannelAuthorization(
            kind=parsed.kind,
            payer=config.payer_address,
            value=0 if parsed.kind == "refund" else terms.amount,
            nonce=f"{voucher.channel_id_hex}:{voucher.max_claimable_amount}",
            valid_before=int(now) + max(terms.max_timeout_seconds, 1),
            signature=voucher.signature,
            recovered=recovered,
            config=config,
            voucher=voucher,
            deposit=deposit,
            refund_amount=parsed.refund_amount,
        )

    def verify(
        self, payload: PaymentPayload, requirements: PaymentRequirements
    ) -> Awaitable[VerifyResponse]:
        """The facilitator's verification (deposits, refunds, contract-payer vouchers)."""
        return self.facilitator.verify(payload, requirements)

    def settle(
        self, payload: PaymentPayload, requirements: PaymentRequirements
    ) -> Awaitable[SettleResponse]:
        """The facilitator's settlement: a deposit's transfer, or a refund."""
        return self.facilitator.settle(payload, requirements)


def check_channel(authorization: ChannelAuthorization, channel: ChannelView) -> int:
    """Check a voucher against the server's view of its channel; return the charge ceiling.

    The voucher must be the next cumulative step (charged total + the request's maximum; the
    charged total itself for a refund), above what was claimed on chain, and within the
    channel's balance (plus the deposit it comes with). Refusals:
    ``..._cumulative_below_claimed``, ``..._cumulative_amount_mismatch`` (answer with a
    corrective 402, :func:`corrective_requirements`), ``..._cumulative_exceeds_balance``.
    A channel's first deposit is checked against a view of zeros (nothing deposited, claimed or
    charged yet). A refund's amount is left to the facilitator and the escrow.
    """
    if channel.channel_id.lower() != authorization.channel_id:
        raise PaymentError(402, codes.CHANNEL_ID_MISMATCH, "the state is another channel's")
    signed = authorization.max_claimable_amount
    refund = authorization.kind == "refund"
    if signed < channel.total_claimed or (signed == channel.total_claimed and not refund):
        raise PaymentError(
            402, codes.CUMULATIVE_BELOW_CLAIMED, "the voucher is not above the claimed total"
        )
    if signed != channel.charged_cumulative_amount + authorization.value:
        raise PaymentError(
            402, codes.CUMULATIVE_AMOUNT_MISMATCH, "the voucher is not the channel's next step"
        )
    balance = channel.balance
    if authorization.deposit is not None:
        balance += authorization.deposit.amount
    if signed > balance:
        raise PaymentError(
            402, codes.CUMULATIVE_EXCEEDS_BALANCE, "the voucher is above the channel's balance"
        )
    return signed - channel.charged_cumulative_amount


def next_charge(authorization: ChannelAuthorization, channel: ChannelView, charged: int) -> int:
    """The charged total after charging ``charged`` for this request, never above the voucher.

    Refused with ``..._charge_exceeds_signed_cumulative`` when the charge would pass the signed
    ceiling (the request is then charged nothing), so a store can commit the result as is.
    """
    if type(charged) is not int or charged < 0:
        raise ValueError("charged must be a non-negative integer")
    total = channel.charged_cumulative_amount + charged
    if charged > authorization.value or total > authorization.max_claimable_amount:
        raise PaymentError(
            402, codes.CHARGE_EXCEEDS_SIGNED_CUMULATIVE, "the charge is above the voucher"
        )
    return total


def payment_response_extra(channel: ChannelView, charged: int) -> dict[str, Any]:
    """The payment response's ``extra``: ``chargedAmount`` and the ``channelState`` after the
    charge (``channel`` is the view before it), which the official clients check against
    their own count before signing the next voucher."""
    return {
        "chargedAmount": str(charged),
        "channelState": channel.channel_state(channel.charged_cumulative_amount + charged),
    }


def corrective_requirements(
    requirements: PaymentRequirements, channel: ChannelView
) -> PaymentRequirements:
    """``requirements`` with the ``channelState`` and ``voucherState`` of a corrective 402, from
    which a client that lost count resumes (the last voucher, when the server holds one)."""
    extra = dict(requirements.extra or {})
    extra["channelState"] = channel.channel_state()
    if channel.signed_max_claimable is not None and channel.signature is not None:
        extra["voucherState"] = {
            "signedMaxClaimable": str(channel.signed_max_claimable),
            "signature": channel.signature,
        }
    else:
        extra.pop("voucherState", None)
    return requirements.model_copy(update={"extra": extra})
