"""The direct path of :class:`~x402gate.facilitators.LocalFacilitator` for ``exact`` EIP-3009
payments by an EOA: what the SDK's exact-EVM facilitator scheme does, in a fraction of its CPU.

The SDK's scheme builds every read and the settlement transaction through web3's contract layer
and eth-account, and reads the payer's code and the token's code at every verification. For the
payments nearly every client makes (a 65-byte signature that recovers, offline, to the payer)
the chain work reduces to:

* **verify**: the token has code (cached, as the SDK caches it), then one ``eth_call`` of the
  very ``transferWithAuthorization`` the settlement would send (the simulation);
* **settle**: the same simulation again, in one JSON-RPC batch with the gas price, right before
  the broadcast; then the broadcast (nonce from a local counter, transaction signed by
  :mod:`x402gate._tx`), and the receipt from the facilitator's shared poll loop, checked for
  the expected ``Transfer`` event.

The simulation before the broadcast is kept, rather than a cheaper read of the authorization
state and balance, because it also catches what such a read cannot: a paused token, a
blacklisted payer or recipient, an EOA that became a contract since verification. Built from the
same calldata as the transaction, it costs one batched round trip and almost no CPU.

Anything else (a payment that fails a check, a contract wallet's signature, Permit2, a
simulation that reverts) is handed to the SDK's scheme as it is, which then decides and
explains it exactly as before; a simulation that reverts before settling sends nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from ._rpc import RpcError, Signer
from ._tx import transfer_with_authorization_calldata
from .errors import PaymentError
from .verify import verify_exact

if TYPE_CHECKING:
    from x402.schemas import PaymentPayload, PaymentRequirements, SettleResponse

__all__ = ["DirectExact", "Sent", "Transfer"]

_NO_UPPER_BOUND: Final = 1 << 256
# keccak256("Transfer(address,address,uint256)")
_TRANSFER_TOPIC: Final = "0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef"
# How long a token found to have code is trusted to keep it (the SDK caches as long).
_ASSET_CODE_SECONDS: Final = 900.0
_BLOCKS_KEPT: Final = 4096
_CHECKED_KEPT: Final = 4096
_PENDING_SECONDS: Final = 300.0
_AUTH_FIELDS: Final = ("from", "to", "value", "validAfter", "validBefore", "nonce")
_VALID_BEFORE_MARGIN: Final = 6  # seconds, as the SDK's scheme and x402gate.verify require


@dataclass(frozen=True, slots=True)
class Transfer:
    """One checked authorization, ready to simulate and send."""

    network: str
    token: bytes
    token_hex: str
    payer: str
    """As the payload spells it (the SDK reports it so)."""
    payer_raw: bytes
    pay_to_raw: bytes
    value: int
    key: str
    """The payload's signature as sent: what a pending settlement is remembered by."""
    calldata: bytes

    def call(self, sender: str) -> dict[str, str]:
        return {"from": sender, "to": self.token_hex, "data": "0x" + self.calldata.hex()}


@dataclass(frozen=True, slots=True)
class Sent:
    """A broadcast settlement transaction, waiting for its receipt."""

    transfer: Transfer
    tx_hash: str


def _answer(
    sent: Sent, success: bool, reason: str | None = None, message: str | None = None
) -> SettleResponse:
    from x402.schemas import SettleResponse

    return SettleResponse(
        success=success,
        error_reason=reason,
        error_message=message,
        transaction=sent.tx_hash,
        network=sent.transfer.network,
        payer=sent.transfer.payer,
    )


def _resolve(
    future: asyncio.Future[dict[str, Any]],
    receipt: dict[str, Any] | None,
    error: BaseException | None,
) -> None:
    if future.done():  # the settlement was cancelled meanwhile
        return
    if error is not None:
        future.set_exception(error)
    else:
        assert receipt is not None
        future.set_result(receipt)


class DirectExact:
    """Verification and settlement of plain EOA ``exact`` payments, sharing the SDK scheme's
    signer (and so its nonce counter and broadcast lock)."""

    def __init__(self, signer: Signer, networks: list[str]) -> None:
        self._signer = signer
        self._networks = frozenset(networks)
        self._sender = signer.address
        # Settlements sent whose receipt never came, by signature (as long as the SDK keeps
        # them): a retry of the payment waits for the same transaction.
        self._pending: OrderedDict[str, tuple[float, Sent]] = OrderedDict()
        self._assets: dict[str, float] = {}
        self._assets_lock = threading.Lock()
        self._blocks: OrderedDict[str, int] = OrderedDict()
        self._checked: OrderedDict[tuple[str, ...], tuple[Transfer, int, int]] = OrderedDict()

    def transfer(
        self, payload: PaymentPayload, requirements: PaymentRequirements
    ) -> Transfer | None:
        """The authorization of ``payload`` when it takes the direct path, else ``None``."""
        if getattr(payload, "x402_version", None) != 2:
            return None
        network = str(requirements.network)
        accepted = payload.accepted
        if (
            requirements.scheme != "exact"
            or accepted.scheme != "exact"
            or network not in self._networks
            or str(accepted.network) != network
        ):
            return None
        body = payload.payload
        if not isinstance(body, dict):
            return None
        auth = body.get("authorization")
        signature = body.get("signature")
        if not isinstance(auth, dict) or not isinstance(signature, str):
            return None
        # Everything the offline checks depend on but the clock: the signed fields, and the
        # requirement's fields that make the EIP-712 domain and the expected terms. A payment's
        # settlement finds the result of its verification here (public-key recovery and the
        # digest are half of this path's CPU); the times are checked again each time.
        extra = requirements.extra or {}
        memo_key = (
            signature,
            *(repr(auth.get(name)) for name in _AUTH_FIELDS),
            network,
            requirements.asset,
            requirements.pay_to,
            requirements.amount,
            repr(extra.get("name")),
            repr(extra.get("version")),
        )
        now = time.time()
        with self._assets_lock:
            known = self._checked.get(memo_key)
        if known is not None:
            transfer, valid_after, valid_before = known
            if valid_before < now + _VALID_BEFORE_MARGIN or valid_after > now:
                return None  # the SDK's scheme says which of the two
            return transfer
        try:
            # The SDK's checks (times at the same 6 s margin, amount, recipient, signature);
            # no upper bound on validBefore, which the SDK does not have either.
            checked = verify_exact(body, requirements, now=now, max_clock_skew=_NO_UPPER_BOUND)
        except PaymentError:
            return None
        if not checked.recovered:
            return None
        payer_raw = bytes.fromhex(checked.payer[2:])
        pay_to_raw = bytes.fromhex(requirements.pay_to[2:])
        token = bytes.fromhex(requirements.asset[2:])
        nonce = bytes.fromhex(checked.nonce[2:])
        calldata = transfer_with_authorization_calldata(
            payer_raw,
            pay_to_raw,
            checked.value,
            checked.valid_after,
            checked.valid_before,
            nonce,
            checked.signature,
        )
        transfer = Transfer(
            network=network,
            token=token,
            token_hex="0x" + token.hex(),
            payer=str(auth.get("from")),
            payer_raw=payer_raw,
            pay_to_raw=pay_to_raw,
            value=checked.value,
            key=signature,
            calldata=calldata,
        )
        with self._assets_lock:
            self._checked[memo_key] = (transfer, checked.valid_after, checked.valid_before)
            if len(self._checked) > _CHECKED_KEPT:
                self._checked.popitem(last=False)
        return transfer

    def asset_has_code(self, transfer: Transfer) -> bool:
        """The token is a contract (an ``eth_call`` to an address without code "succeeds")."""
        now = time.monotonic()
        with self._assets_lock:
            until = self._assets.get(transfer.token_hex)
        if until is not None and now < until:
            return True
        code = self._signer.transport.request("eth_getCode", [transfer.token_hex, "latest"])
        if not isinstance(code, str) or code in ("0x", ""):
            return False
        with self._assets_lock:
            if len(self._assets) >= 1024:
                self._assets.clear()
            self._assets[transfer.token_hex] = now + _ASSET_CODE_SECONDS
        return True

    def simulate(self, transfer: Transfer, block: str = "latest") -> bool:
        """True when the transfer would succeed now (``eth_call``); a revert is False.
        ``block="pending"`` counts the transactions the node has not mined yet too."""
        try:
            self._signer.transport.request("eth_call", [transfer.call(self._sender), block])
        except RpcError:
            return False
        return True

    def simulate_with_gas_price(self, transfer: Transfer) -> int | None:
        """The simulation and the gas price in one round trip: the gas price when the transfer
        would succeed, ``None`` when it would revert."""
        simulated, gas_price = self._signer.transport.batch(
            [("eth_call", [transfer.call(self._sender), "latest"]), ("eth_gasPrice", [])]
        )
        if isinstance(simulated, RpcError):
            return None
        if isinstance(gas_price, BaseException):
            raise gas_price
        return int(gas_price, 16)

    def pending(self, payload: PaymentPayload) -> Sent | None:
        """The transaction of an earlier settlement of this payment whose receipt never came
        (``settlement_pending``): a retry waits for it rather than sending anything.

        Looked up by the payload's signature before any check, as the SDK's scheme does: the
        authorization may have expired while its transaction was being mined."""
        body = payload.payload
        signature = body.get("signature") if isinstance(body, dict) else None
        if not isinstance(signature, str):
            return None
        now = time.monotonic()
        with self._assets_lock:
            entry = self._pending.pop(signature, None)
        if entry is None or entry[0] < now:
            return None
        return entry[1]

    def _remember(self, sent: Sent) -> None:
        with self._assets_lock:
            self._pending[sent.transfer.key] = (time.monotonic() + _PENDING_SECONDS, sent)
            self._pending.move_to_end(sent.transfer.key)
            while len(self._pending) > _CHECKED_KEPT:
                self._pending.popitem(last=False)

    def host_sends(self) -> int:
        """Take before simulating a transfer, for :meth:`send`."""
        return self._signer.host_sends()

    def send(self, transfer: Transfer, gas_price: int, simulated_after: int = 0) -> Sent:
        """Broadcast the transfer. Simulated again first when other processes of this host
        send from the account and one did since ``simulated_after`` (:meth:`host_sends`):
        :class:`~x402gate._rpc.StaleSimulation` when it no longer succeeds, nothing sent."""
        tx_hash = self._signer.send_call(
            transfer.token,
            transfer.calldata,
            gas_price,
            still_valid=lambda: self.simulate(transfer, "pending"),
            simulated_after=simulated_after,
        )
        return Sent(transfer, tx_hash)

    async def confirmed(self, sent: Sent) -> SettleResponse:
        """Wait for the receipt, on the event loop (the shared poll loop calls back), and judge
        it: ``settlement_pending`` (remembered for a retry) when it does not come,
        ``transaction_failed`` when reverted, a success only with the expected ``Transfer``
        event in its logs."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[dict[str, Any]] = loop.create_future()

        def done(receipt: dict[str, Any] | None, error: BaseException | None) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                loop.call_soon_threadsafe(_resolve, future, receipt, error)

        self._signer.receipts.watch(sent.tx_hash, self._signer.confirmation_timeout, done)
        try:
            receipt = await future
        except asyncio.CancelledError:
            # The transaction is out: a retry of this payment must wait for it, not send again.
            self._remember(sent)
            raise
        except Exception as exc:
            self._remember(sent)
            return _answer(sent, False, "settlement_pending", str(exc)[:200])
        return self.judge(sent, receipt)

    def judge(self, sent: Sent, receipt: dict[str, Any]) -> SettleResponse:
        """The settlement's outcome from its receipt (JSON-RPC form)."""
        if receipt.get("status") != "0x1":
            return _answer(sent, False, "transaction_failed")
        logs = receipt.get("logs")
        if not isinstance(logs, list) or not self._transferred(sent.transfer, logs):
            return _answer(sent, False, "invalid_exact_evm_transfer_event_mismatch")
        block = receipt.get("blockNumber")
        if isinstance(block, str):
            with self._assets_lock:
                self._blocks[sent.tx_hash] = int(block, 16)
                if len(self._blocks) > _BLOCKS_KEPT:
                    self._blocks.popitem(last=False)
        return _answer(sent, True)

    def block_of(self, tx_hash: str) -> int | None:
        """The block of a transaction this path saw confirmed (the last few thousand)."""
        with self._assets_lock:
            return self._blocks.get(tx_hash.lower())

    @staticmethod
    def _transferred(transfer: Transfer, logs: list[Any]) -> bool:
        payer = "0x" + bytes(12).hex() + transfer.payer_raw.hex()
        pay_to = "0x" + bytes(12).hex() + transfer.pay_to_raw.hex()
        value = transfer.value
        for log in logs:
            if not isinstance(log, dict):
                continue
            address, topics, data = log.get("address"), log.get("topics"), log.get("data")
            if not isinstance(address, str) or address.lower() != transfer.token_hex:
                continue
            if not isinstance(topics, list) or len(topics) != 3:
                continue
            if not all(isinstance(t, str) for t in topics) or not isinstance(data, str):
                continue
            if [t.lower() for t in topics] != [_TRANSFER_TOPIC, payer, pay_to]:
                continue
            try:
                if int(data, 16) == value:
                    return True
            except ValueError:
                continue
        return False
