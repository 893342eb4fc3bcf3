"""Reconciling from the chain: is a claimed authorization's transfer already on chain?

A settlement can reach the chain while its answer never reaches the gate (the facilitator's
connection drops after broadcasting, it answers 500 after settling, the server process is killed
between the receipt and the response). The authorization is then spent, and the buyer's retry of
the same payment would be refused as a replay: paid, and served nothing.

:class:`ChainReconciler` answers the one question the gate needs to serve that retry instead: was
*this* authorization executed on chain, as a transfer of the agreed value from the payer to the
merchant? It reads the EIP-3009 token directly, over JSON-RPC:

1. ``authorizationState(payer, nonce)``: one ``eth_call``; ``false`` ends it (the usual case);
2. the ``AuthorizationUsed(payer, nonce)`` event, to find the transaction that spent the nonce;
3. that transaction's receipt, which must have succeeded and hold a ``Transfer(payer, pay_to,
   value)`` of the same token. A nonce spent by another authorization of the payer's (the same
   nonce signed for another recipient or amount) is not this payment, and is not served.

The gate asks only for claims it holds, at most once per authorization per
``min_interval_seconds`` (the store keeps the time of the last read), so that a client cannot
make it read the chain for free. A claim whose request gave up (its settlement answer was lost)
is recovered at once; one whose request may still be alive (it was killed, or is about to
answer) only once the transfer has been on chain for ``owner_grace_seconds``, time enough for a
live request to have recorded its answer. That age is read in the chain's own clock (the latest
block's timestamp against the transfer's), so that a host clock out of step cannot shorten it.
"""

from __future__ import annotations

import logging
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from ._json import loads
from .assets import normalize_network
from .errors import ConfigurationError

__all__ = [
    "AUTHORIZATION_USED_TOPIC",
    "TRANSFER_TOPIC",
    "ChainReadError",
    "ChainReconciler",
    "OnChainTransfer",
]

logger = logging.getLogger("x402gate.reconcile")

AUTHORIZATION_USED_TOPIC = "0x98de503528ee59b575ef0c0a2576a82497bfc029a5685b209e9ec333479b10a5"
"""keccak256("AuthorizationUsed(address,bytes32)"), the EIP-3009 event of a spent nonce."""

TRANSFER_TOPIC = "0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef"
"""keccak256("Transfer(address,address,uint256)"), the ERC-20 transfer event."""

_AUTHORIZATION_STATE = "0xe94a0102"  # authorizationState(address,bytes32)
_ADDRESS_RE = re.compile(r"0x[0-9a-fA-F]{40}")
_NONCE_RE = re.compile(r"0x[0-9a-fA-F]{64}")
_HEX_RE = re.compile(r"0x[0-9a-fA-F]{1,64}")
# An answer larger than this is not one of the few logs or the receipt asked for.
_MAX_ANSWER_BYTES = 4 * 1024 * 1024


class ChainReadError(Exception):
    """The chain could not be read, or answered something malformed (the retry waits)."""


@dataclass(frozen=True, slots=True)
class OnChainTransfer:
    """The transaction that executed an authorization, as read from the chain."""

    transaction: str
    block: int
    mined_at: int
    """The block's timestamp (seconds)."""
    age: int
    """Seconds from the transfer's block to the latest block, in the chain's clock."""


def _word(value: str) -> str:
    """A 20-byte address or a 32-byte value as one lower-case 32-byte ABI word, without 0x."""
    return value[2:].lower().rjust(64, "0")


def _topic(value: str) -> str:
    return "0x" + _word(value)


class ChainReconciler:
    """Reads EIP-3009 tokens over JSON-RPC to tell whether an authorization was executed.

    :param rpc_urls: the JSON-RPC endpoint per network (``{"eip155:8453": "https://..."}``), or
        one URL for every network of the gate. URLs may carry an API key; they are never logged.
    :param lookback_blocks: how far back from the latest block the ``AuthorizationUsed`` event
        is searched (RPC providers limit the range of ``eth_getLogs``). An authorization lives at
        most ``max_timeout_seconds``, so this needs only cover that long a time.
    :param timeout: seconds per RPC call.
    :param min_interval_seconds: a claimed authorization is looked up on chain at most once per
        this many seconds, whatever the number of retries (the store keeps the time).
    :param owner_grace_seconds: how long after its transfer was mined a claim whose request
        did not give up (the process was killed, say) is left to that request before a retry
        takes it over, counted in the chain's clock. Longer than the facilitator's timeout (or
        the confirmation timeout of a :class:`~x402gate.facilitators.LocalFacilitator`), so
        that a live request always answers first.
    """

    def __init__(
        self,
        rpc_urls: str | Mapping[str, str],
        *,
        lookback_blocks: int = 50_000,
        timeout: float = 10.0,
        min_interval_seconds: float = 2.0,
        owner_grace_seconds: float = 60.0,
    ) -> None:
        if isinstance(rpc_urls, str):
            self._default: str | None = self._check_url(rpc_urls)
            self._urls: dict[str, str] = {}
        elif isinstance(rpc_urls, Mapping) and rpc_urls:
            self._default = None
            self._urls = {normalize_network(k): self._check_url(v) for k, v in rpc_urls.items()}
        else:
            raise ConfigurationError("reconcile: give an RPC URL, or a mapping network → RPC URL")
        if (
            isinstance(lookback_blocks, bool)
            or not isinstance(lookback_blocks, int)
            or lookback_blocks < 1
        ):
            raise ConfigurationError("reconcile: lookback_blocks must be an integer >= 1")
        for name, value in (
            ("timeout", timeout),
            ("min_interval_seconds", min_interval_seconds),
            ("owner_grace_seconds", owner_grace_seconds),
        ):
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ConfigurationError(f"reconcile: {name} must be a positive number of seconds")
        self.lookback_blocks = lookback_blocks
        self.timeout = float(timeout)
        self.min_interval_seconds = float(min_interval_seconds)
        self.owner_grace_seconds = float(owner_grace_seconds)

    @staticmethod
    def _check_url(url: Any) -> str:
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ConfigurationError("reconcile: an RPC URL must be an http(s) URL")
        return url

    def __repr__(self) -> str:
        from ._rpc import redact_rpc_url

        shown = (
            redact_rpc_url(self._default)
            if self._default is not None
            else {k: redact_rpc_url(v) for k, v in self._urls.items()}
        )
        return f"ChainReconciler({shown!r})"

    def covers(self, network: str) -> bool:
        """True when this reconciler can read ``network``."""
        return self._default is not None or network in self._urls

    async def find_transfer(
        self,
        *,
        network: str,
        asset: str,
        payer: str,
        nonce: str,
        pay_to: str,
        value: int,
    ) -> OnChainTransfer | None:
        """The successful transaction in which the token ``asset`` executed the authorization
        ``(payer, nonce)`` as a transfer of ``value`` to ``pay_to``; ``None`` when the nonce is
        unused, or was spent in any other way. Raises :class:`ChainReadError` when the chain
        cannot be read: the caller must then treat the outcome as unknown."""
        url = self._urls.get(network, self._default)
        if url is None:
            raise ChainReadError(f"no RPC URL for {network}")
        for what, text, pattern in (
            ("asset", asset, _ADDRESS_RE),
            ("payer", payer, _ADDRESS_RE),
            ("pay_to", pay_to, _ADDRESS_RE),
            ("nonce", nonce, _NONCE_RE),
        ):
            if not isinstance(text, str) or pattern.fullmatch(text) is None:
                raise ValueError(f"find_transfer: malformed {what}")
        async with httpx.AsyncClient(
            timeout=self.timeout, follow_redirects=False, verify=_tls_context()
        ) as client:
            rpc = _Rpc(client, url)
            state = await rpc.call(
                "eth_call",
                [
                    {"to": asset, "data": _AUTHORIZATION_STATE + _word(payer) + _word(nonce)},
                    "latest",
                ],
            )
            if not isinstance(state, str) or _HEX_RE.fullmatch(state[:66]) is None:
                raise ChainReadError("authorizationState: malformed answer")
            if int(state[:66], 16) == 0:
                return None
            head = await rpc.call("eth_getBlockByNumber", ["latest", False])
            if not isinstance(head, dict):
                raise ChainReadError("eth_getBlockByNumber: malformed answer")
            latest, now = _int(head.get("number")), _int(head.get("timestamp"))
            logs = await rpc.call(
                "eth_getLogs",
                [
                    {
                        "address": asset,
                        "fromBlock": hex(max(0, latest - self.lookback_blocks)),
                        "toBlock": hex(latest),
                        "topics": [AUTHORIZATION_USED_TOPIC, _topic(payer), nonce.lower()],
                    }
                ],
            )
            if not isinstance(logs, list):
                raise ChainReadError("eth_getLogs: malformed answer")
            if not logs:
                # Spent, but before the window searched: too old to be a claim of ours.
                logger.warning("authorization used on chain, its event is not in the last blocks")
                return None
            tx_hash = logs[0].get("transactionHash") if isinstance(logs[0], dict) else None
            if not isinstance(tx_hash, str) or _NONCE_RE.fullmatch(tx_hash) is None:
                raise ChainReadError("eth_getLogs: malformed log")
            receipt = await rpc.call("eth_getTransactionReceipt", [tx_hash])
            if not isinstance(receipt, dict):
                raise ChainReadError("eth_getTransactionReceipt: malformed answer")
            if _int(receipt.get("status")) != 1 or not _pays(receipt, asset, payer, pay_to, value):
                return None
            number = _int(receipt.get("blockNumber"))
            block = await rpc.call("eth_getBlockByNumber", [hex(number), False])
        if not isinstance(block, dict):
            raise ChainReadError("eth_getBlockByNumber: malformed answer")
        mined_at = _int(block.get("timestamp"))
        return OnChainTransfer(tx_hash, number, mined_at, max(0, now - mined_at))


def _pays(receipt: dict[str, Any], asset: str, payer: str, pay_to: str, value: int) -> bool:
    """Whether the receipt holds the token's ``Transfer(payer, pay_to, value)``."""
    wanted = [TRANSFER_TOPIC, _topic(payer), _topic(pay_to)]
    for log in receipt.get("logs") or ():
        if not isinstance(log, dict) or str(log.get("address", "")).lower() != asset.lower():
            continue
        if [str(t).lower() for t in log.get("topics") or ()] != wanted:
            continue
        data = log.get("data")
        if isinstance(data, str) and _HEX_RE.fullmatch(data) and int(data, 16) == value:
            return True
    return False


_TLS: list[ssl.SSLContext] = []


def _tls_context() -> ssl.SSLContext:
    """One TLS context for every look-up: building one loads the CA bundle, tens of ms."""
    if not _TLS:
        import certifi  # httpx's own CA bundle: the same trust as every other client here

        _TLS.append(ssl.create_default_context(cafile=certifi.where()))
    return _TLS[0]


def _int(value: Any) -> int:
    if not isinstance(value, str) or _HEX_RE.fullmatch(value) is None:
        raise ChainReadError("malformed quantity in an RPC answer")
    return int(value, 16)


class _Rpc:
    def __init__(self, client: httpx.AsyncClient, url: str) -> None:
        self.client = client
        self.url = url
        self.next_id = 0

    async def call(self, method: str, params: list[Any]) -> Any:
        self.next_id += 1
        body = {"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params}
        try:
            async with self.client.stream("POST", self.url, json=body) as response:
                if response.status_code != 200:
                    raise ChainReadError(f"{method}: HTTP {response.status_code}")
                chunks: list[bytes] = []
                size = 0
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > _MAX_ANSWER_BYTES:
                        raise ChainReadError(f"{method}: answer too large")
                    chunks.append(chunk)
        except httpx.HTTPError as exc:
            # The URL may hold an API key: only the method and the kind of failure are told.
            raise ChainReadError(f"{method}: {type(exc).__name__}") from None
        try:
            answer = loads(b"".join(chunks))
        except ValueError:
            raise ChainReadError(f"{method}: not JSON") from None
        if not isinstance(answer, dict) or "error" in answer or "result" not in answer:
            raise ChainReadError(f"{method}: error answer")
        return answer["result"]
