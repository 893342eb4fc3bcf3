"""Refunds of ``batch-settlement`` channels: what the payer deposited and the seller did not earn
goes back to the payer, in one transaction that first claims what the seller earned.

Two ways in, one engine (:class:`ChannelRefunder`):

* **Cooperative**: a client sends a ``refund`` payload (the official clients' ``refund``) on any
  paid route. The route is not run: the gate checks the voucher (signed on the channel's charged
  total), reads the channel's figures from the chain through the facilitator, and has the
  facilitator execute ``refundWithSignature`` (batched with ``claimWithSignature`` for what the
  seller earned and had not claimed yet) for the amount asked, or all that is unclaimed. It
  answers ``200`` with ``{"message": "Refund acknowledged", "channelId": ...}`` and the
  facilitator's settlement in ``PAYMENT-RESPONSE``, as the spec says.
* **Server-initiated**: :meth:`ChannelRefunder.refund` for one channel, and
  :meth:`ChannelRefunder.refund_idle` for every channel without a request for a given time (the
  ``x402gate channels refund`` command).

While a refund runs it holds the channel's step in the store, so that no voucher is served
between the moment its earned amount is read and the refund (a voucher served then could not be
claimed any more: the seller would lose it). Afterwards the store mirrors the chain's figures:
the balance left is what was earned, so any later voucher is refused as above the balance until
the payer deposits again.

Who signs: with the gate's own ``receiver_authorizer_key`` the refunder signs the refund and the
claim itself; otherwise (an address, or ``"facilitator"``) the facilitator's authorizer does.
"""

from __future__ import annotations

import functools
import json
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, TypeVar

from ..errors import FacilitatorError, PaymentError, StoreError
from ..schemes.batch_settlement import codes
from ..stores.calls import call_store
from ..stores.channels import MAX_CHANNEL_LIST, ChannelBeginOutcome, ChannelState
from .events import EventKind, PaymentEvent
from .failures import failure, safe_code

if TYPE_CHECKING:
    from x402.schemas import PaymentPayload, PaymentRequirements, SettleResponse

    from ..facilitators import Facilitator
    from ..request import RequestInfo
    from ..schemes.batch_settlement import ChannelAuthorization
    from ..stores import Store
    from .channels import Reject
    from .engine import PaymentGate
    from .model import Route

__all__ = [
    "HOLD_SECONDS",
    "ChannelRefunder",
    "RefundError",
    "RefundResult",
    "cooperative_refund",
    "gate_refunder",
    "refundable",
]

logger = logging.getLogger("x402gate")

T = TypeVar("T")

HOLD_SECONDS: Final = 300
"""How long a refund holds its channel's step: long enough for the facilitator to send the
transaction and wait for its receipt. A refunder that died holding it frees it after this."""


class RefundError(Exception):
    """A refund that did not happen: ``code`` is the wire reason (the scheme's, or the
    facilitator's), ``message`` a sentence without secrets. Nothing moved on chain."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class RefundResult:
    """A refund executed on chain."""

    channel_id: str
    refunded: int
    """Atomic units returned to the payer."""
    claimed: int
    """The channel's claimed total after the transaction (what the seller collected)."""
    transaction: str
    settlement: SettleResponse
    """The facilitator's answer (what a cooperative refund returns to its client)."""


def refundable(state: ChannelState) -> int:
    """What a refund of ``state`` returns: its balance less what the seller earned (claimed or
    not). Never negative."""
    return max(state.balance - max(state.earned, state.total_claimed), 0)


def _requirements(config: dict[str, Any], network: str) -> PaymentRequirements:
    """The requirements a facilitator's refund settlement is asked under (no price)."""
    from x402.schemas import PaymentRequirements

    return PaymentRequirements(
        scheme=codes.SCHEME,
        network=network,
        asset=config["token"],
        amount="0",
        pay_to=config["receiver"],
        max_timeout_seconds=HOLD_SECONDS,
        extra={},
    )


class ChannelRefunder:
    """Refunds channels kept in ``store`` through ``facilitator``.

    :param store: the store the gate keeps its channels in.
    :param facilitator: executes the refunds (``settle`` of an enriched refund payload).
    :param networks: the networks the channels may be on (CAIP-2); a channel's network is the one
        whose chain id its id was computed with.
    :param receiver_authorizer_key: the receiver authorizer's private key (hex), when the seller
        signs refunds and claims itself; without it the facilitator signs them. Never logged.
    :param clock: the current time in seconds (the store's times are on it).
    """

    def __init__(
        self,
        store: Store,
        facilitator: Facilitator,
        networks: Sequence[str],
        *,
        receiver_authorizer_key: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.facilitator = facilitator
        self.networks = list(dict.fromkeys(networks))
        self._signer: Any = None
        if receiver_authorizer_key is not None:
            from x402.mechanisms.evm.batch_settlement.authorizer_signer import (
                LocalAuthorizerSigner,
            )

            from .channels import authorizer_key_address

            authorizer_key_address(receiver_authorizer_key)  # a clear error, no key in it
            key = receiver_authorizer_key.strip()
            self._signer = LocalAuthorizerSigner(key if key[:2] in ("0x", "0X") else "0x" + key)
        self.clock = clock

    @classmethod
    def for_gate(cls, gate: PaymentGate) -> ChannelRefunder:
        """The refunder of a gate's channels: its store, facilitator, networks and (when it
        signs itself) its receiver authorizer key. :class:`ConfigurationError` when the gate
        takes no channels."""
        from ..errors import ConfigurationError

        if gate.channels is None:
            raise ConfigurationError("this gate takes no payment channels (channels=...)")
        return cls(
            gate.store,
            gate.facilitator,
            [asset.network for asset in gate.assets],
            receiver_authorizer_key=gate.channels.receiver_authorizer_key,
            clock=gate.clock.now,
        )

    def __repr__(self) -> str:
        signs = "own key" if self._signer is not None else "facilitator"
        return f"ChannelRefunder(networks={self.networks!r}, signs={signs})"

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return await call_store(self.store, fn, *args)
        except (StoreError, ValueError):
            raise
        except Exception as exc:  # a backend bug must fail closed too
            raise StoreError(f"store operation failed: {type(exc).__name__}") from exc

    def network_of(self, state: ChannelState) -> str:
        """The network ``state``'s channel lives on (:class:`RefundError` when none of
        :attr:`networks` gives its id)."""
        from x402.mechanisms.evm.batch_settlement.types import ChannelConfig
        from x402.mechanisms.evm.batch_settlement.utils import compute_channel_id

        config = ChannelConfig.from_dict(json.loads(state.config))
        for network in self.networks:
            if compute_channel_id(config, network).lower() == state.channel_id:
                return network
        raise RefundError(
            codes.NETWORK_MISMATCH, "the channel is on none of the configured networks"
        )

    async def refund(
        self,
        channel_id: str,
        *,
        amount: int | None = None,
        voucher: dict[str, Any] | None = None,
    ) -> RefundResult:
        """Refund ``amount`` (all that is unclaimed when ``None``) of the channel to its payer,
        claiming what the seller earned in the same transaction.

        ``voucher`` is the client's refund voucher (cooperative refunds), else the last one the
        store keeps is sent. :class:`RefundError` when nothing moved: ``..._channel_busy`` (a
        request holds the channel: retry), ``..._refund_no_balance``, ``..._missing_channel``,
        or the facilitator's reason. :class:`~x402gate.errors.StoreError` and
        :class:`~x402gate.errors.FacilitatorError` when a backend failed (then nothing moved
        either, unless the facilitator sent the transaction and its answer was lost: the next
        refund finds less to return)."""
        token = "refund-" + secrets.token_hex(12)
        state = await self._call(self.store.channel_get, channel_id)
        if state is None:
            raise RefundError(codes.MISSING_CHANNEL, "this channel is not known")
        channel_id = state.channel_id
        now = self.clock()
        held = False
        if state.balance > state.charged:
            # The step every voucher must take (its ceiling is never committed: the hold is
            # only released): no request is served while the refund runs.
            begun = await self._call(
                functools.partial(
                    self.store.channel_begin,
                    channel_id,
                    token,
                    base=state.charged,
                    max_claimable=state.charged + 1,
                    signature=state.signature,
                    expires_at=now + HOLD_SECONDS,
                    now=now,
                )
            )
            if begun.outcome is ChannelBeginOutcome.BUSY:
                raise RefundError(codes.CHANNEL_BUSY, "a request holds this channel: retry")
            if begun.outcome is not ChannelBeginOutcome.STARTED or begun.state is None:
                raise RefundError(codes.CHANNEL_BUSY, "the channel moved meanwhile: retry")
            held, state = True, begun.state
        # Else no voucher fits the balance: none can be served without a deposit first.
        try:
            return await self._execute(state, amount, voucher)
        finally:
            if held:
                try:
                    await self._call(self.store.channel_release, channel_id, token)
                except StoreError as exc:  # the hold expires on its own
                    logger.error("refund hold release failed: %s", exc)

    async def _execute(
        self,
        state: ChannelState,
        amount: int | None,
        voucher: dict[str, Any] | None,
    ) -> RefundResult:
        from x402.mechanisms.evm.batch_settlement.authorizer_signer import (
            sign_claim_batch,
            sign_refund,
        )
        from x402.mechanisms.evm.batch_settlement.types import ChannelConfig, VoucherClaim
        from x402.schemas import PaymentPayload

        channel_id = state.channel_id
        network = self.network_of(state)
        remainder = refundable(state)
        if remainder <= 0:
            raise RefundError(codes.REFUND_NO_BALANCE, "nothing is left to refund")
        if amount is not None and not 0 < amount <= remainder:
            raise RefundError(
                codes.REFUND_NO_BALANCE if amount > 0 else codes.REFUND_AMOUNT_INVALID,
                "the amount asked is above what is left to refund",
            )
        refund = remainder if amount is None else amount
        config_fields = json.loads(state.config)
        config = ChannelConfig.from_dict(config_fields)
        claims = []
        if state.earned > state.total_claimed:
            # What the seller served is claimed first, in the same transaction.
            claims.append(
                VoucherClaim(
                    channel=config,
                    max_claimable_amount=str(state.max_claimable),
                    signature=state.signature,
                    total_claimed=str(state.earned),
                )
            )
        inner: dict[str, Any] = {
            "type": "refund",
            "channelConfig": config.to_dict(),
            "voucher": voucher
            or {
                "channelId": channel_id,
                "maxClaimableAmount": str(state.max_claimable),
                "signature": state.signature,
            },
            "amount": str(refund),
            "refundNonce": str(state.refund_nonce),
            "claims": [c.to_dict() for c in claims],
        }
        if self._signer is not None:
            inner["refundAuthorizerSignature"] = sign_refund(
                self._signer, channel_id, refund, state.refund_nonce, network
            )
            if claims:
                inner["claimAuthorizerSignature"] = sign_claim_batch(self._signer, claims, network)
        requirements = _requirements(config_fields, network)
        payload = PaymentPayload(x402_version=2, payload=inner, accepted=requirements)
        settled = await self.facilitator.settle(payload, requirements)
        if not settled.success:
            reason = settled.error_reason or "settlement_failed"
            logger.warning("refund of channel %s refused: %s", channel_id, reason)
            raise RefundError(reason, "the facilitator did not execute the refund")
        figures: Any = (settled.extra or {}).get("channelState")
        try:
            balance = int(str(figures["balance"]))
            claimed = int(str(figures["totalClaimed"]))
            withdraw = int(str(figures.get("withdrawRequestedAt", 0)))
            nonce = int(str(figures["refundNonce"]))
            refunded = int(str(settled.amount if settled.amount is not None else refund))
        except (TypeError, KeyError, ValueError):
            raise FacilitatorError("the facilitator answered a malformed channel state") from None
        # Never below the chain: a refund without the claim (facilitator's choice) left it so.
        await self._call(
            functools.partial(
                self.store.channel_sync,
                channel_id,
                state.config,
                balance=balance,
                total_claimed=claimed,
                withdraw_requested_at=withdraw,
                refund_nonce=max(nonce, state.refund_nonce + 1),
                now=self.clock(),
            )
        )
        logger.info("channel %s refunded %d to its payer", channel_id, refunded)
        return RefundResult(channel_id, refunded, claimed, settled.transaction or "", settled)

    async def idle(self, idle_seconds: float) -> list[ChannelState]:
        """The channels without a committed request for ``idle_seconds`` (or, never used, since
        they were opened) that still hold something to refund and no live step."""
        now = self.clock()
        due: list[ChannelState] = []
        after: str | None = None
        while True:
            page = await self._call(
                functools.partial(self.store.channel_list, MAX_CHANNEL_LIST, after)
            )
            for state in page:
                last = state.last_request_at or state.synced_at
                live = state.step is not None and state.step.expires_at > now
                if now - last >= idle_seconds and not live and refundable(state) > 0:
                    due.append(state)
            if len(page) < MAX_CHANNEL_LIST:
                return due
            after = page[-1].channel_id

    async def refund_idle(
        self, idle_seconds: float
    ) -> tuple[list[RefundResult], dict[str, RefundError | Exception]]:
        """Refund every channel :meth:`idle` lists, one after the other. Answers the refunds
        done and, by channel id, the ones that failed (a failure never stops the others)."""
        done: list[RefundResult] = []
        failed: dict[str, RefundError | Exception] = {}
        for state in await self.idle(idle_seconds):
            try:
                done.append(await self.refund(state.channel_id))
            except (RefundError, StoreError, FacilitatorError) as exc:
                failed[state.channel_id] = exc
        return done, failed


def gate_refunder(gate: PaymentGate, network: str) -> ChannelRefunder:
    """The refunder of a gate's channels on ``network`` (its store, facilitator and key)."""
    settings = gate.channels
    assert settings is not None
    return ChannelRefunder(
        gate.store,
        gate.facilitator,
        [network],
        receiver_authorizer_key=settings.receiver_authorizer_key,
        clock=gate.clock.now,
    )


async def cooperative_refund(
    gate: PaymentGate,
    route: Route,
    request: RequestInfo,
    payload: PaymentPayload,
    requirements: PaymentRequirements,
    accepts: list[PaymentRequirements],
    auth: ChannelAuthorization,
    reject: Reject,
) -> PaymentError:
    """A client's ``refund`` payload (checked offline already): the answer to send; the
    route's handler is never run. See the module."""
    from .. import protocol
    from ..schemes.batch_settlement import check_channel
    from .channels import _corrective, _sync, _view

    scheme = gate.channel_scheme
    assert scheme is not None
    channel_id = auth.channel_id
    config = json.dumps(auth.config.to_wire(), sort_keys=True, separators=(",", ":"))
    try:
        state = await gate._store_call(gate.store.channel_get, channel_id)
        if state is None:
            return await reject(codes.CHANNEL_NOT_FOUND, "this channel is not known", 402)
        if auth.max_claimable_amount != state.charged:
            # Signed on another charged total: the client resyncs from the corrective 402.
            return await _corrective(gate, route, request, accepts, requirements, _view(state))
        # The chain's figures now (balance, claims, refund nonce), and the voucher checked again.
        verdict = await scheme.verify(payload, requirements)
        if not verdict.is_valid:
            code = safe_code(verdict.invalid_reason, "payment_invalid")
            return await reject(code, "the facilitator refused this refund", 402)
        state = await _sync(gate, channel_id, config, verdict.extra, gate.clock.now())
        try:
            check_channel(auth, _view(state))
        except PaymentError as exc:
            if exc.code == codes.CUMULATIVE_AMOUNT_MISMATCH:
                return await _corrective(gate, route, request, accepts, requirements, _view(state))
            return await reject(exc.code, exc.message, exc.status_code)
        # Rebuilt from what was checked: nothing else the client sent reaches the facilitator.
        voucher = {
            "channelId": channel_id,
            "maxClaimableAmount": str(auth.max_claimable_amount),
            "signature": "0x" + auth.signature.hex(),
        }
        result = await gate_refunder(gate, requirements.network).refund(
            channel_id, amount=auth.refund_amount, voucher=voucher
        )
    except RefundError as exc:
        status = 409 if exc.code == codes.CHANNEL_BUSY else 402
        return await reject(safe_code(exc.code, "settlement_failed"), exc.message, status)
    except (StoreError, FacilitatorError) as exc:
        logger.error("channel refund failed: %s", exc)
        await gate._emit(PaymentEvent(EventKind.ERROR, request, route, code="channel"))
        return failure(exc)
    except ValueError as exc:
        logger.info("channel refund refused by the store: %s", exc)
        return await reject(codes.REFUND_PAYLOAD, "the refund was refused", 402)
    headers = {protocol.PAYMENT_RESPONSE: protocol.encode_settle_response(result.settlement)}
    body = {"message": "Refund acknowledged", "channelId": channel_id}
    return PaymentError(200, "refunded", "Refund acknowledged", headers=headers, body=body)
