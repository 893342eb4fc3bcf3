"""Token balances read on chain, for the bound on payments in flight per payer.

Under ``settlement="after"`` the handler runs before the payment is settled. A wallet that can
pay once may sign many authorizations with different nonces; each one verifies on its own
(the balance covers it), so without a bound they would all run the handler and only one would
settle. The gate therefore admits a payment only when the payer's balance covers it plus every
payment of that payer still in flight (see the store's ``in_flight_*`` operations).

:class:`ChainBalances` reads ``balanceOf`` over JSON-RPC: ``eth_blockNumber``, then ``eth_call``
at that very block, so every reading says which block it reflects. A settled payment keeps
counting against readings of earlier blocks, which makes cached and lagging readings safe: they
can only under-admit, never admit beyond the balance. Readings are cached briefly per (asset,
payer) because they cost two round trips to the node.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from .errors import ConfigurationError, FacilitatorError, FacilitatorUnavailable

if TYPE_CHECKING:
    from .assets import Asset

__all__ = ["BalanceReading", "ChainBalances"]

logger = logging.getLogger("x402gate")

_BALANCE_OF = "0x70a08231"  # balanceOf(address)
_CACHE_SIZE = 4096
_MAX_WORD = 2**256 - 1


@dataclass(frozen=True, slots=True)
class BalanceReading:
    """A token balance and the block it was read at."""

    balance: int
    block: int


def _shown(url: str) -> str:
    # RPC URLs carry API keys in the path, query or user info: only scheme and host are shown.
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname or ''}{port}"


def _quantity(value: Any, what: str) -> int:
    if not isinstance(value, str) or not value.startswith("0x") or not 2 < len(value) <= 66:
        raise FacilitatorError(f"the chain answered a malformed {what}")
    try:
        number = int(value, 16)
    except ValueError:
        raise FacilitatorError(f"the chain answered a malformed {what}") from None
    if number > _MAX_WORD:
        raise FacilitatorError(f"the chain answered a malformed {what}")
    return number


class ChainBalances:
    """Reads token balances on chain over JSON-RPC, with a short cache.

    :param rpc_urls: network (CAIP-2) → JSON-RPC URL. Networks without one cannot be read
        (:meth:`read` answers ``None``).
    :param cache_seconds: how long a reading is reused for the same payer and asset. A stale
        reading never admits beyond the balance (it only misses recent deposits).
    :param timeout: seconds per RPC call.
    """

    def __init__(
        self, rpc_urls: Mapping[str, str], *, cache_seconds: float = 1.0, timeout: float = 5.0
    ) -> None:
        for network, url in rpc_urls.items():
            parts = urlsplit(url) if isinstance(url, str) else None
            if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
                raise ConfigurationError(
                    f"rpc_url for {network} must be an http(s) URL with a host"
                )
        if (
            isinstance(cache_seconds, bool)
            or not isinstance(cache_seconds, int | float)
            or not 0 <= cache_seconds <= 60
        ):
            raise ConfigurationError("balance_cache_seconds must be a number from 0 to 60")
        self.rpc_urls = dict(rpc_urls)
        self.cache_seconds = float(cache_seconds)
        self.timeout = float(timeout)
        self._cache: OrderedDict[tuple[str, str, str], tuple[float, BalanceReading]] = OrderedDict()
        self._tls: ssl.SSLContext | None = None
        self._reading: dict[tuple[int, str, str, str], asyncio.Task[BalanceReading]] = {}

    def __repr__(self) -> str:
        shown = {network: _shown(url) for network, url in self.rpc_urls.items()}
        return f"ChainBalances({shown!r})"

    def can_read(self, network: str) -> bool:
        """True when balances on ``network`` can be read."""
        return network in self.rpc_urls

    async def read(self, asset: Asset, owner: str) -> BalanceReading | None:
        """``owner``'s balance of ``asset``, or ``None`` when its network has no RPC URL.

        Raises :class:`~x402gate.errors.FacilitatorUnavailable` when the node cannot be
        reached and :class:`~x402gate.errors.FacilitatorError` when it answers nonsense: the
        gate then refuses to run the handler (fail closed).
        """
        url = self.rpc_urls.get(asset.network)
        if url is None:
            return None
        key = (asset.network, asset.address.lower(), owner.lower())
        cached = self._cache.get(key)
        if cached is not None and time.monotonic() - cached[0] < self.cache_seconds:
            return cached[1]
        # One reading at a time per payer and loop: a burst of one wallet's requests waits for
        # the same answer instead of opening a connection to the node each.
        loop = asyncio.get_running_loop()
        flight_key = (id(loop), *key)
        task = self._reading.get(flight_key)
        if task is None:
            task = loop.create_task(self._read(url, asset, owner, key))
            self._reading[flight_key] = task
            task.add_done_callback(lambda done: self._read_done(flight_key, done))
        return await asyncio.shield(task)

    def _read_done(
        self, flight_key: tuple[int, str, str, str], task: asyncio.Task[BalanceReading]
    ) -> None:
        self._reading.pop(flight_key, None)
        if not task.cancelled():
            task.exception()  # retrieved here too: every waiter may have gone away meanwhile

    async def _read(
        self, url: str, asset: Asset, owner: str, key: tuple[str, str, str]
    ) -> BalanceReading:
        started = time.monotonic()
        # A client per reading: nothing outlives the call (no socket left to a loop that ends),
        # and both calls share its one connection.
        async with self._client() as client:
            block = _quantity(await self._call(client, url, "eth_blockNumber", []), "block number")
            data = _BALANCE_OF + owner.lower().removeprefix("0x").rjust(64, "0")
            raw = await self._call(
                client, url, "eth_call", [{"to": asset.address, "data": data}, hex(block)]
            )
        reading = BalanceReading(_quantity(raw, "balance"), block)
        self._cache[key] = (started, reading)
        self._cache.move_to_end(key)
        while len(self._cache) > _CACHE_SIZE:
            self._cache.popitem(last=False)
        return reading

    async def settlement_block(self, network: str, transaction: str) -> int | None:
        """The block a successful transaction was mined in, or ``None`` when the node does not
        know it (yet): the caller then keeps counting the payment as not reflected."""
        url = self.rpc_urls.get(network)
        if url is None:
            return None
        async with self._client() as client:
            receipt = await self._call(client, url, "eth_getTransactionReceipt", [transaction])
        if not isinstance(receipt, Mapping) or receipt.get("blockNumber") is None:
            return None
        return _quantity(receipt["blockNumber"], "receipt block")

    def forget(self, asset: Asset, owner: str) -> None:
        """Drop the cached reading of ``owner`` (its balance just changed)."""
        self._cache.pop((asset.network, asset.address.lower(), owner.lower()), None)

    def _client(self) -> Any:
        import httpx

        if self._tls is None:
            # Loading the CA store takes tens of milliseconds: once, not per client.
            self._tls = ssl.create_default_context()
        return httpx.AsyncClient(timeout=self.timeout, follow_redirects=False, verify=self._tls)

    @staticmethod
    async def _call(client: Any, url: str, method: str, params: list[Any]) -> Any:
        import httpx

        body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
        try:
            response = await client.post(url, json=body)
        except (httpx.TransportError, OSError) as exc:
            logger.warning("chain %s %s unreachable: %s", _shown(url), method, type(exc).__name__)
            raise FacilitatorUnavailable(f"chain unreachable during {method}") from None
        if response.status_code != 200:
            # The body may echo the request (and a key in the URL): only the status is logged.
            logger.warning("chain %s %s: HTTP %s", _shown(url), method, response.status_code)
            raise FacilitatorUnavailable(f"chain unavailable during {method}")
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if not isinstance(answer, Mapping) or "result" not in answer:
            logger.warning("chain %s %s: no result in the answer", _shown(url), method)
            raise FacilitatorError(f"chain call {method} failed")
        return answer["result"]
