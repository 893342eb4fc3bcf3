"""Claiming what payment channels earned, and settling it to the receiver.

A served voucher request only moves counters in the store (``earned``); the money stays in the
escrow until the receiver's side *claims* it, and reaches the receiver when it is *settled*:

* **claim**: one ``claimWithSignature`` transaction for up to ``batch`` channels, each row being
  the channel's last accepted voucher (its ``maxClaimableAmount`` and signature) with
  ``totalClaimed`` set to what the channel earned. The receiver authorizer signs the batch
  (EIP-712 ``ClaimBatch``): this process with ``receiver_authorizer_key``, or the facilitator
  when it is delegated. The batch is sent to the facilitator's settle endpoint as the scheme's
  ``claim`` payload, so it works with the in-process facilitator and with remote ones alike.
* **settle**: the escrow's ``settle(receiver, token)`` sweeps everything claimed to the
  receiver (the scheme's ``settle`` payload).

Only what the chain confirmed is recorded: a batch that fails (facilitator or chain down, the
transaction reverted) marks nothing claimed and its channels are retried in the next round. A
batch that landed but whose answer was lost is recognised when its channels are read again from
the chain (:meth:`ClaimEngine.refresh`: ``totalClaimed`` on chain is taken into the store); and
sending it again is harmless, since the escrow treats a row at or below what is already claimed
as superseded. No amount is ever claimed twice.

The chain is read through the facilitator too: verifying a channel's last voucher answers the
channel's balance, ``totalClaimed`` and ``withdrawRequestedAt`` as read on chain.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from ..clock import Clock, SystemClock
from ..errors import ConfigurationError, FacilitatorError
from ..stores.channels import MAX_CHANNEL_LIST, ChannelState
from .claim_settings import ClaimSettings
from .journal import claim_row, read_settled_amount, settle_row, settled_amount

if TYPE_CHECKING:
    from ..assets import Asset
    from ..stores.base import Store
    from ..stores.journal import JournalRow

__all__ = [
    "ClaimEngine",
    "ClaimReport",
    "ClaimSettings",
    "SettleReport",
    "claim_ceiling",
    "unclaimed",
]

logger = logging.getLogger("x402gate")

T = TypeVar("T")

SCHEME = "batch-settlement"
_BELOW_CLAIMED = "invalid_batch_settlement_evm_cumulative_below_claimed"
_SIMULATION_FAILED = "invalid_batch_settlement_evm_claim_simulation_failed"
_NOTHING_TO_SETTLE = "invalid_batch_settlement_evm_nothing_to_settle"


@dataclass(slots=True)
class ClaimReport:
    """What one claim run did."""

    channels: int = 0
    """Channels whose claimed total moved."""
    amount: int = 0
    """Atomic units newly claimed (recorded in the store after the chain confirmed them)."""
    transactions: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    """Why batches failed (retried in the next run)."""
    settle: list[tuple[str, str, str]] = field(default_factory=list)
    """``(network, receiver, token)`` that received claims in this run: what to settle."""


@dataclass(slots=True)
class SettleReport:
    """What one settle run did: transactions sent, and failures (retried next time)."""

    transactions: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    amount: int = 0
    """Atomic units transferred to the receivers, as the facilitator reported them."""


@dataclass(frozen=True, slots=True)
class _Row:
    state: ChannelState
    config: dict[str, Any]
    network: str
    amount: int
    """The new ``totalClaimed``: what the channel earned (never above its mirrored balance)."""


def _requirements(network: str, token: str, receiver: str, extra: dict[str, Any]) -> Any:
    from x402.schemas import PaymentRequirements

    return PaymentRequirements(
        scheme=SCHEME,
        network=network,
        asset=token,
        amount="0",
        pay_to=receiver,
        max_timeout_seconds=0,
        extra=extra,
    )


def _payload(requirements: Any, inner: dict[str, Any]) -> Any:
    from x402.schemas import PaymentPayload

    return PaymentPayload(x402_version=2, payload=inner, accepted=requirements)


def _figure(figures: dict[str, Any], name: str) -> int:
    value = int(str(figures.get(name, 0)))
    if value < 0:
        raise ValueError(name)
    return value


def claim_ceiling(state: ChannelState) -> int:
    """What a claim of the channel can bring its claimed total to now: what it earned, within
    its last voucher and its balance (a payer's finished withdrawal may have left less)."""
    return min(state.earned, state.max_claimable, state.balance)


def unclaimed(state: ChannelState) -> int:
    """What a claim of the channel would collect now."""
    return max(claim_ceiling(state) - state.total_claimed, 0)


class ClaimEngine:
    """Claims and settles the channels a store keeps, through a facilitator.

    :param store: the gate's store (any backend keeping channels).
    :param facilitator: the gate's facilitator (``settle`` takes the ``claim`` and ``settle``
        payloads; ``verify`` of a voucher reads a channel on chain).
    :param assets: the tokens the gate takes, which say each channel's network.
    :param network: the network of channels in a token no asset names (the command line,
        which knows no assets, claims on one network per run).
    :param rpc_urls: network → JSON-RPC URL to read channels from the chain directly (the
        gate's, which a local facilitator gives); elsewhere they are read by verifying their
        last voucher at the facilitator, which answers no figures once the channel's balance
        fell below that voucher (a payer's finished withdrawal).
    :param pay_to: network → receiver to settle for when asked to settle without a claim
        first (the gate's ``pay_to``).
    :param authorizer_key: the receiver authorizer's private key, to sign claim batches here;
        ``None`` lets the facilitator sign them (delegated authorizer).
    :param journal: record each claim and settlement in the store's payments journal
        (:mod:`.journal`; default: whenever the store keeps one). A gate passes its own
        ``journal`` setting.
    """

    def __init__(
        self,
        store: Store,
        facilitator: Any,
        *,
        assets: Sequence[Asset] = (),
        network: str | None = None,
        rpc_urls: Mapping[str, str] | None = None,
        pay_to: Mapping[str, str] | None = None,
        authorizer_key: str | None = None,
        batch: int = 100,
        clock: Clock | None = None,
        journal: bool | None = None,
    ) -> None:
        if not getattr(store, "supports_channels", False):
            raise ConfigurationError("this store keeps no payment-channel state")
        self.store = store
        self.facilitator = facilitator
        self.assets = list(assets)
        self.network = network
        self.rpc_urls = dict(rpc_urls or {})
        self._readers: dict[str, Any] = {}
        self.pay_to = dict(pay_to or {})
        self.batch = batch
        self.clock: Clock = clock or SystemClock()
        keeps = bool(getattr(store, "supports_journal", False))
        self.journal = keeps if journal is None else bool(journal) and keeps
        """Claims and settlements are written to the store's payments journal."""
        self._signer: Any = None
        self._signer_address = ""
        if authorizer_key is not None:
            from x402.mechanisms.evm.batch_settlement.authorizer_signer import (
                LocalAuthorizerSigner,
            )

            from ..gate.channels import authorizer_key_address

            authorizer_key_address(authorizer_key)  # checked; its message shows none of it
            self._signer = LocalAuthorizerSigner(authorizer_key.strip())
            self._signer_address = str(self._signer.address).lower()
        self._suspect: set[str] = set()
        """Channels of a batch whose outcome is unknown: read from the chain before the next."""

    def __repr__(self) -> str:
        return f"<ClaimEngine {self.store!r}>"

    async def _store(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if self.store.blocking:
            return await asyncio.to_thread(fn, *args, **kwargs)
        return fn(*args, **kwargs)

    def _network(self, token: str) -> str | None:
        for asset in self.assets:
            if asset.address.lower() == token.lower():
                return asset.network
        return self.network

    async def claimable(self, limit: int = MAX_CHANNEL_LIST) -> list[ChannelState]:
        """Channels with unclaimed value, oldest request first (at most ``limit``)."""
        return await self._store(self.store.channel_claimable, limit)

    # ------------------------------------------------------------------ chain reads

    async def refresh(self, states: Sequence[ChannelState]) -> list[ChannelState]:
        """Read each channel on chain (through the facilitator) and mirror it in the store.

        Answers the channels as stored afterwards; a channel that cannot be read now keeps its
        mirror (it is read again next time). A channel whose last voucher is at or below what
        the chain shows claimed has had everything it earned claimed (a claim whose answer
        was lost): it is recorded so."""
        out: list[ChannelState] = []
        for state in states:
            try:
                out.append(await self._refresh_one(state))
            except (FacilitatorError, ValueError) as exc:
                logger.warning("claims: channel %s not read from chain: %s", state.channel_id, exc)
                out.append(state)
        return out

    def _read_chain(self, rpc_url: str, channel_id: str) -> dict[str, int]:
        """The channel's figures read from the escrow (blocking: called in a thread)."""
        contract = self._readers.get(rpc_url)
        if contract is None:
            from web3 import Web3
            from x402.mechanisms.evm.batch_settlement.abi import BATCH_SETTLEMENT_ABI
            from x402.mechanisms.evm.batch_settlement.constants import (
                BATCH_SETTLEMENT_ADDRESS,
            )

            w3 = Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": 10}))
            address = Web3.to_checksum_address(BATCH_SETTLEMENT_ADDRESS)
            contract = w3.eth.contract(address=address, abi=BATCH_SETTLEMENT_ABI)
            self._readers[rpc_url] = contract
        key = bytes.fromhex(channel_id.removeprefix("0x"))
        try:
            balance, claimed = contract.functions.channels(key).call()
            _, initiated = contract.functions.pendingWithdrawals(key).call()
            nonce = contract.functions.refundNonce(key).call()
        except Exception as exc:  # any transport or node error: not read this time
            raise FacilitatorError(f"chain read failed: {type(exc).__name__}") from None
        return {
            "balance": int(balance),
            "totalClaimed": int(claimed),
            "withdrawRequestedAt": int(initiated),
            "refundNonce": int(nonce),
        }

    async def _refresh_one(self, state: ChannelState) -> ChannelState:
        config = json.loads(state.config)
        network = self._network(str(config.get("token", "")))
        if network is None:
            return state
        rpc_url = self.rpc_urls.get(network)
        if rpc_url is not None:
            figures = await asyncio.to_thread(self._read_chain, rpc_url, state.channel_id)
            return await self._mirror(state, figures)
        if not state.max_claimable:
            return state
        requirements = _requirements(
            network,
            config["token"],
            config["receiver"],
            {"receiverAuthorizer": config["receiverAuthorizer"]},
        )
        voucher = {
            "channelId": state.channel_id,
            "maxClaimableAmount": str(state.max_claimable),
            "signature": state.signature,
        }
        payload = _payload(
            requirements, {"type": "voucher", "channelConfig": config, "voucher": voucher}
        )
        verdict = await self.facilitator.verify(payload, requirements)
        now = self.clock.now()
        if not verdict.is_valid:
            if verdict.invalid_reason == _BELOW_CLAIMED:
                # On chain: totalClaimed >= the last voucher >= earned.
                row = self._claim_row(
                    config, state, network, state.earned, now, detail="claimed on chain earlier"
                )
                await self._store(
                    self.store.channel_mark_claimed,
                    state.channel_id,
                    state.earned,
                    now,
                    **self._journaled(row),
                )
                self._suspect.discard(state.channel_id)
                fresh = await self._store(self.store.channel_get, state.channel_id)
                return fresh or state
            raise FacilitatorError(
                f"the facilitator refused the voucher ({verdict.invalid_reason})"
            )
        return await self._mirror(state, verdict.extra or {})

    async def _mirror(self, state: ChannelState, figures: dict[str, Any]) -> ChannelState:
        """Take the chain's figures into the store."""
        now = self.clock.now()
        synced: ChannelState = await self._store(
            lambda: self.store.channel_sync(
                state.channel_id,
                state.config,
                balance=_figure(figures, "balance"),
                total_claimed=_figure(figures, "totalClaimed"),
                withdraw_requested_at=_figure(figures, "withdrawRequestedAt"),
                refund_nonce=_figure(figures, "refundNonce"),
                now=now,
            )
        )
        self._suspect.discard(state.channel_id)
        if self.journal and synced.total_claimed > state.total_claimed:
            # A claim found on chain that the store had not recorded (its answer was lost):
            # its row has the id a recorded one would have had, so it never counts twice.
            try:
                config = json.loads(state.config)
            except ValueError:
                config = {}
            network = self._network(str(config.get("token", ""))) or ""
            row = self._claim_row(
                config,
                state,
                network,
                synced.total_claimed,
                now,
                detail="claimed on chain earlier",
            )
            await self._append(row)
        return synced

    # ------------------------------------------------------------------ journal

    def _claim_row(
        self,
        config: dict[str, Any],
        state: ChannelState,
        network: str,
        total: int,
        now: float,
        *,
        transaction: str = "",
        detail: str = "",
    ) -> JournalRow | None:
        """The ``claim`` row taking ``state``'s claimed total to ``total`` (None without a
        journal)."""
        if not self.journal:
            return None
        return claim_row(
            config,
            state.channel_id,
            network=network,
            before=state.total_claimed,
            total=total,
            now=now,
            transaction=transaction,
            detail=detail,
        )

    @staticmethod
    def _journaled(row: JournalRow | None) -> dict[str, Any]:
        return {} if row is None else {"journal": row}

    async def _append(self, row: JournalRow | None) -> None:
        """Append a row written on its own; a failure is logged (the chain already moved the
        money, and the next report would otherwise be the only one to miss it)."""
        from ..errors import StoreError

        if row is None:
            return
        try:
            await self._store(self.store.journal_append, row)
        except (StoreError, ConfigurationError, ValueError) as exc:
            logger.error("claims: payments journal append failed: %s", exc)

    # ------------------------------------------------------------------ claims

    def _rows(self, states: Iterable[ChannelState]) -> list[_Row]:
        rows: list[_Row] = []
        for state in states:
            if state.earned <= state.total_claimed or not state.max_claimable:
                continue
            try:
                config = json.loads(state.config)
                token = str(config["token"])
            except (ValueError, KeyError, TypeError):
                logger.error("claims: channel %s has an unreadable config", state.channel_id)
                continue
            network = self._network(token)
            if network is None:
                logger.warning(
                    "claims: channel %s is in token %s, which no configured asset names",
                    state.channel_id,
                    token,
                )
                continue
            if self._signer is not None and (
                str(config.get("receiverAuthorizer", "")).lower() != self._signer_address
            ):
                # Another seller's channel in a shared store: this key cannot sign its claim,
                # and a batch holding it would be refused on chain. Its own claimer takes it.
                continue
            amount = claim_ceiling(state)
            if amount <= state.total_claimed:
                continue
            rows.append(_Row(state, config, network, amount))
        return rows

    async def claim(
        self,
        states: Sequence[ChannelState] | None = None,
        *,
        refresh: bool | None = None,
        max_batches: int = 10,
        guard: Callable[[], Awaitable[bool]] | None = None,
    ) -> ClaimReport:
        """Claim ``states`` (default: everything claimable, in batches of ``batch``),
        withdrawing payers first. ``refresh`` reads the channels on chain first (default:
        those whose last claim had an unknown outcome). ``guard`` is awaited before each
        batch is sent; False stops the run (the background claimer renews its lease there)."""
        report = ClaimReport()
        read: set[str] = set()  # channels read on chain in this run
        for _ in range(max_batches):
            # Listed beyond one batch: channels that cannot be claimed now (their balance
            # spent) are passed over instead of holding up the others.
            listed = list(states) if states is not None else await self.claimable()
            stale = [
                s
                for s in listed
                if s.channel_id not in read
                and (refresh or (refresh is None and s.channel_id in self._suspect))
            ]
            if stale:
                read.update(s.channel_id for s in stale)
                fresh = {s.channel_id: s for s in await self.refresh(stale)}
                listed = [fresh.get(s.channel_id, s) for s in listed]
            rows = self._rows(sorted(listed, key=lambda s: s.withdraw_requested_at == 0))
            if not rows:
                break
            before = report.channels
            for group in self._groups(rows[: self.batch]):
                if guard is not None and not await guard():
                    return report
                await self._claim_rows(group, report)
            if states is not None or report.channels == before or report.failures:
                break
        return report

    @staticmethod
    def _groups(rows: list[_Row]) -> list[list[_Row]]:
        """One batch per network and receiver authorizer (the escrow checks one signature)."""
        groups: dict[tuple[str, str], list[_Row]] = {}
        for row in rows:
            key = (row.network, str(row.config["receiverAuthorizer"]).lower())
            groups.setdefault(key, []).append(row)
        return list(groups.values())

    async def _claim_rows(self, rows: list[_Row], report: ClaimReport) -> None:
        """Send one batch; on a failed simulation, split it to isolate the row at fault."""
        from x402.mechanisms.evm.batch_settlement.types import ChannelConfig, VoucherClaim

        network = rows[0].network
        claims = [
            VoucherClaim(
                channel=ChannelConfig.from_dict(row.config),
                max_claimable_amount=str(row.state.max_claimable),
                signature=row.state.signature,
                total_claimed=str(row.amount),
            )
            for row in rows
        ]
        inner: dict[str, Any] = {"type": "claim", "claims": [c.to_dict() for c in claims]}
        if self._signer is not None:
            from x402.mechanisms.evm.batch_settlement.authorizer_signer import sign_claim_batch

            inner["claimAuthorizerSignature"] = sign_claim_batch(self._signer, claims, network)
        first = rows[0].config
        requirements = _requirements(network, first["token"], first["receiver"], {})
        ids = [row.state.channel_id for row in rows]
        try:
            answer = await self.facilitator.settle(_payload(requirements, inner), requirements)
        except FacilitatorError as exc:
            # Sent or not, we cannot tell: read these channels on chain before claiming again.
            self._suspect.update(ids)
            report.failures.append(f"claim of {len(rows)} channels: {exc}")
            logger.warning("claims: a batch of %d channels failed: %s", len(rows), exc)
            return
        if not answer.success:
            # Sent or not (a broadcast whose answer was lost looks like one never sent), read
            # these channels on chain before claiming them again.
            self._suspect.update(ids)
            if answer.error_reason == _SIMULATION_FAILED and len(rows) > 1:
                half = len(rows) // 2
                await self._claim_rows(rows[:half], report)
                await self._claim_rows(rows[half:], report)
                return
            reason = answer.error_reason or "unknown"
            report.failures.append(f"claim of {len(rows)} channels: {reason}")
            logger.warning("claims: a batch of %d channels was refused: %s", len(rows), reason)
            return
        transaction = str(answer.transaction or "")
        report.transactions.append(transaction)
        now = self.clock.now()
        for row in rows:
            entry = self._claim_row(
                row.config, row.state, network, row.amount, now, transaction=transaction
            )
            if await self._store(
                self.store.channel_mark_claimed,
                row.state.channel_id,
                row.amount,
                now,
                **self._journaled(entry),
            ):
                report.channels += 1
                report.amount += row.amount - row.state.total_claimed
                # A request that read the channel from the chain between the transaction and
                # this mark took the new total into the store first, and the mark added
                # nothing, so wrote no row: the row then goes in on its own. When the mark
                # wrote it, this one has its id and changes nothing.
                await self._append(entry)
            target = (row.network, str(row.config["receiver"]), str(row.config["token"]))
            if target not in report.settle:
                report.settle.append(target)
        logger.info(
            "claims: %d channels claimed in %s", len(rows), answer.transaction or "a transaction"
        )

    # ------------------------------------------------------------------ settle

    async def _read_settled(
        self, network: str, transaction: str, receiver: str, token: str
    ) -> int | None:
        """What a settle transaction transferred, read from the chain (None without an RPC
        URL of the network, or when it cannot be read)."""
        rpc_url = self.rpc_urls.get(network)
        if rpc_url is None or not transaction:
            return None
        try:
            return await asyncio.to_thread(
                read_settled_amount, rpc_url, transaction, receiver, token
            )
        except Exception as exc:  # any transport or node error: recorded as unknown
            logger.warning("claims: settlement %s not read from chain: %s", transaction, exc)
            return None

    def settle_targets(self) -> list[tuple[str, str, str]]:
        """``(network, receiver, token)`` for every configured receiver and asset."""
        return [
            (a.network, self.pay_to[a.network], a.address)
            for a in self.assets
            if a.network in self.pay_to
        ]

    async def settle(self, targets: Sequence[tuple[str, str, str]] | None = None) -> SettleReport:
        """Sweep what is claimed and not yet transferred to each receiver (default: every
        configured receiver in every asset). Nothing to settle is not a failure."""
        report = SettleReport()
        for network, receiver, token in targets if targets is not None else self.settle_targets():
            requirements = _requirements(network, token, receiver, {})
            inner = {"type": "settle", "receiver": receiver, "token": token}
            try:
                answer = await self.facilitator.settle(_payload(requirements, inner), requirements)
            except FacilitatorError as exc:
                report.failures.append(f"settle {receiver}: {exc}")
                continue
            if answer.success:
                transaction = str(answer.transaction or "")
                report.transactions.append(transaction)
                amount = settled_amount(answer)
                if amount is None:
                    amount = await self._read_settled(network, transaction, receiver, token)
                report.amount += amount or 0
                logger.info("claims: settled to %s in %s", receiver, transaction)
                if self.journal:
                    await self._append(
                        settle_row(network, receiver, token, transaction, amount, self.clock.now())
                    )
            elif answer.error_reason != _NOTHING_TO_SETTLE:
                report.failures.append(f"settle {receiver}: {answer.error_reason}")
        return report
