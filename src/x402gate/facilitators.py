"""Facilitators: who verifies payments on chain and settles them.

* :class:`HTTPFacilitator` talks to a facilitator service (x402.org, CDP, a self-hosted one) with
  the official ``HTTPFacilitatorClient``. ``verify`` may fail over across several URLs; ``settle``
  goes to one URL only, because settling the same authorization twice through two services is
  exactly what must never happen blindly.
* :class:`LocalFacilitator` settles in-process against an RPC URL and a funded key: EOA payments
  directly, everything else with the official exact-EVM facilitator scheme. The transfer is
  simulated right before every broadcast, so a replayed, spent or invalid authorization is
  refused before any transaction is sent.

Both are async. Blocking work (web3, the SDK's sync ``get_supported``) runs in worker threads so
the event loop never waits on the network. Errors become :class:`~x402gate.errors.FacilitatorError`
(502: the facilitator answered nonsense) or :class:`~x402gate.errors.FacilitatorUnavailable`
(503: it could not be reached in time); the raw text stays in the logs.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

from .errors import ConfigurationError, FacilitatorError, FacilitatorUnavailable

if TYPE_CHECKING:
    from x402.schemas import (
        PaymentPayload,
        PaymentRequirements,
        SettleResponse,
        SupportedResponse,
        VerifyResponse,
    )

__all__ = ["Facilitator", "HTTPFacilitator", "LocalFacilitator"]

logger = logging.getLogger("x402gate.facilitator")

T = TypeVar("T")


@runtime_checkable
class Facilitator(Protocol):
    """What the gate needs from a facilitator. Implement it to plug in your own."""

    async def verify(
        self, payload: PaymentPayload, requirements: PaymentRequirements
    ) -> VerifyResponse: ...

    async def settle(
        self, payload: PaymentPayload, requirements: PaymentRequirements
    ) -> SettleResponse: ...

    async def supported(self) -> SupportedResponse: ...


def _split_credentials(url: str) -> tuple[str, str | None]:
    """``url`` without user info, and a Basic ``Authorization`` value for it, if it had any."""
    import base64
    from urllib.parse import unquote, urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url, None
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port is not None:
        netloc += f":{parts.port}"
    user = unquote(parts.username or "")
    secret = unquote(parts.password or "")
    token = base64.b64encode(f"{user}:{secret}".encode()).decode("ascii")
    return urlunsplit(parts._replace(netloc=netloc)), f"Basic {token}"


def _status_of(exc: BaseException) -> str:
    """The HTTP status in the SDK's error text, without the body that follows it."""
    import re

    match = re.search(r"\((\d{3})\)", str(exc))
    return f"HTTP {match.group(1)}" if match else type(exc).__name__


def _is_transport_error(exc: BaseException) -> bool:
    import httpx

    return isinstance(exc, httpx.TransportError | TimeoutError | ConnectionError | OSError)


class HTTPFacilitator:
    """A facilitator service reached over HTTP.

    :param url: base URL (``https://x402.org/facilitator``), or several: verify tries them in
        order while one is unreachable; settle always uses the first.
    :param headers: extra headers for every call (an API key, say), or a callable returning
        per-endpoint headers ``{"verify": {...}, "settle": {...}, "supported": {...}}`` for
        signed auth such as CDP's JWTs. Header values never appear in logs or errors.
    :param timeout: seconds per call.
    """

    def __init__(
        self,
        url: str | Sequence[str],
        *,
        headers: Mapping[str, str] | Callable[[], Mapping[str, Mapping[str, str]]] | None = None,
        timeout: float = 20.0,
    ) -> None:
        urls = [url] if isinstance(url, str) else list(url)
        if not urls:
            raise ConfigurationError("HTTPFacilitator needs at least one URL")
        self.urls: list[str] = []
        self._basic: dict[str, str] = {}
        for u in urls:
            if not isinstance(u, str) or not u.startswith(("http://", "https://")):
                raise ConfigurationError("facilitator URL must be an http(s) URL")
            clean, basic = _split_credentials(u.rstrip("/"))
            self.urls.append(clean)
            if basic is not None:
                # Credentials never travel in a URL (URLs get logged): a Basic header instead.
                self._basic[clean] = basic
        if not isinstance(timeout, int | float) or timeout <= 0:
            raise ConfigurationError("facilitator timeout must be a positive number of seconds")
        self.timeout = float(timeout)
        self._headers = headers
        # The official async client caches an httpx.AsyncClient bound to the loop that made it;
        # keep one per URL per event loop.
        self._clients: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, dict[str, tuple[Any, Any]]
        ] = weakref.WeakKeyDictionary()

    def __repr__(self) -> str:
        return f"HTTPFacilitator({self.urls!r})"

    def _auth_provider(self, url: str) -> Any:
        from x402.http import AuthHeaders

        headers = self._headers
        basic = self._basic.get(url)
        if headers is None and basic is None:
            return None
        static = {} if headers is None or callable(headers) else dict(headers)
        if basic is not None:
            static.setdefault("Authorization", basic)

        class _Provider:
            def get_auth_headers(self) -> AuthHeaders:
                if callable(headers):
                    per = headers()
                    return AuthHeaders(
                        verify={**static, **per.get("verify", {})},
                        settle={**static, **per.get("settle", {})},
                        supported={**static, **per.get("supported", {})},
                    )
                return AuthHeaders(verify=static, settle=static, supported=static)

        return _Provider()

    def _client(self, url: str) -> Any:
        import httpx
        from x402.http import FacilitatorConfig, HTTPFacilitatorClient

        loop = asyncio.get_running_loop()
        per_loop = self._clients.setdefault(loop, {})
        entry = per_loop.get(url)
        if entry is None:
            # We own the httpx client (the SDK's aclose() leaves its own open) and never follow
            # redirects: a facilitator that moved must be reconfigured, not silently followed.
            http = httpx.AsyncClient(timeout=self.timeout, follow_redirects=False)
            client = HTTPFacilitatorClient(
                FacilitatorConfig(
                    url=url,
                    timeout=self.timeout,
                    http_client=http,
                    auth_provider=self._auth_provider(url),
                )
            )
            entry = per_loop[url] = (client, http)
        return entry[0]

    async def aclose(self) -> None:
        """Close the HTTP connections opened on the running event loop."""
        per_loop = self._clients.pop(asyncio.get_running_loop(), {})
        for _, http in per_loop.values():
            await http.aclose()

    async def _call(self, url: str, op: str, fn: Callable[[], Awaitable[T]]) -> T:
        try:
            return await asyncio.wait_for(fn(), timeout=self.timeout + 1)
        except (FacilitatorError, asyncio.CancelledError):
            raise
        except Exception as exc:
            if _is_transport_error(exc):
                logger.warning("facilitator %s %s unreachable: %s", url, op, type(exc).__name__)
                raise FacilitatorUnavailable(f"facilitator {op} unreachable") from exc
            # The SDK's error text carries the facilitator's body, which may echo our auth
            # headers: only the status is logged, never the body.
            logger.warning("facilitator %s %s failed: %s", url, op, _status_of(exc))
            raise FacilitatorError(f"facilitator {op} failed") from None

    async def verify(
        self, payload: PaymentPayload, requirements: PaymentRequirements
    ) -> VerifyResponse:
        last: FacilitatorError | None = None
        for url in self.urls:
            client = self._client(url)

            async def call(c: Any = client) -> VerifyResponse:
                result: VerifyResponse = await c.verify(payload, requirements)
                return result

            try:
                return await self._call(url, "verify", call)
            except FacilitatorUnavailable as exc:
                last = exc  # verify has no side effect: the next URL may answer
        assert last is not None
        raise last

    async def settle(
        self, payload: PaymentPayload, requirements: PaymentRequirements
    ) -> SettleResponse:
        client = self._client(self.urls[0])
        return await self._call(
            self.urls[0], "settle", lambda: client.settle(payload, requirements)
        )

    async def supported(self) -> SupportedResponse:
        last: FacilitatorError | None = None
        for url in self.urls:
            client = self._client(url)

            async def fetch(c: Any = client) -> SupportedResponse:
                result: SupportedResponse = await asyncio.to_thread(c.get_supported)
                return result

            try:
                return await self._call(url, "supported", fetch)
            except FacilitatorError as exc:
                last = exc
        assert last is not None
        raise last


_AMBIGUOUS_REASONS = frozenset(
    {
        "invalid_exact_evm_failed_to_verify_signature",
        "invalid_exact_evm_transaction_simulation_failed",
        "invalid_exact_evm_failed_to_get_asset_info",
        "asset_not_deployed_contract",
        "transaction_failed",
        "unexpected_verify_error",
        "unexpected_settle_error",
    }
)


def _close_chain(executor: Any, signer: Any, wait: bool) -> None:
    executor.shutdown(wait=wait)
    signer.close()


def _batch_settlement(signer: Any, authorizer_key: str | None) -> Any:
    """The SDK's ``batch-settlement`` facilitator scheme on ``signer`` (gas), signing for
    receivers with ``authorizer_key`` when given (the key never appears in a message)."""
    from x402.mechanisms.evm.batch_settlement.facilitator import BatchSettlementEvmFacilitator

    authorizer = None
    if authorizer_key is not None:
        from x402.mechanisms.evm.batch_settlement.authorizer_signer import (
            LocalAuthorizerSigner,
        )

        from .gate.channels import authorizer_key_address

        authorizer_key_address(authorizer_key)  # a clear error for a malformed key
        authorizer = LocalAuthorizerSigner(authorizer_key.strip())
    return BatchSettlementEvmFacilitator(signer, authorizer_signer=authorizer)


class LocalFacilitator:
    """Verify and settle in-process through web3, with the official exact-EVM scheme.

    :param rpc_url: JSON-RPC endpoint of the chain. It may carry an API key (path, query or user
        info); only its scheme and host ever appear in logs and ``repr``.
    :param private_key: the key that pays gas for settlement transactions. It is held by the
        SDK's signer only and never logged.
    :param networks: CAIP-2 networks this facilitator settles on (``"eip155:31337"``).
    :param confirmation_timeout: seconds to wait for a receipt before the SDK reports
        ``settlement_pending``.
    :param max_concurrency: chain calls (verifications and settlements) running at once, in
        threads of this facilitator's own (a settlement waiting for its receipt never takes a
        thread the store needs). Broadcasts are serialized; receipt waits overlap.
    :param receiver_authorizer_key: a private key (hex) that signs claims and refunds of
        ``batch-settlement`` channels for receivers that delegate them: its address is
        advertised as ``receiverAuthorizer`` in ``/supported``. Without it, deposits are still
        verified and settled, and no ``receiverAuthorizer`` is advertised.

    Both ``exact`` and ``batch-settlement`` (the official SDK's facilitator schemes) are
    supported on every network.

    A payment by an EOA (a 65-byte signature that recovers to the payer) is verified and
    settled by x402gate directly, doing what the SDK's scheme does in a fraction of its CPU: the
    transfer simulated at verification and again right before its broadcast, the transaction
    built from a calldata template and signed without web3, the nonce from a local counter, the
    receipt from one poll loop shared by all pending settlements (see :mod:`x402gate._direct`).
    Every other payment, and every refusal, goes through the SDK's scheme and signer, over a
    keep-alive JSON-RPC transport (see :mod:`x402gate._rpc`). Settlements overlap while their
    broadcasts stay ordered.
    """

    def __init__(
        self,
        rpc_url: str,
        private_key: str,
        *,
        networks: str | Sequence[str],
        confirmation_timeout: float = 30.0,
        max_concurrency: int = 32,
        receiver_authorizer_key: str | None = None,
    ) -> None:
        from concurrent.futures import ThreadPoolExecutor

        from x402 import x402FacilitatorSync
        from x402.mechanisms.evm.exact import register_exact_evm_facilitator

        from ._direct import DirectExact
        from ._rpc import Signer, redact_rpc_url
        from .assets import normalize_network

        nets = [networks] if isinstance(networks, str) else list(networks)
        if not nets:
            raise ConfigurationError("LocalFacilitator needs at least one network")
        if (
            isinstance(max_concurrency, bool)
            or not isinstance(max_concurrency, int)
            or (max_concurrency < 1)
        ):
            raise ConfigurationError("LocalFacilitator: max_concurrency must be an integer >= 1")
        if (
            isinstance(confirmation_timeout, bool)
            or not isinstance(confirmation_timeout, int | float)
            or not 0 < confirmation_timeout < 86_400
        ):
            raise ConfigurationError(
                "LocalFacilitator: confirmation_timeout must be a number of seconds, "
                "above 0 and below a day"
            )
        self.networks = [normalize_network(n) for n in nets]
        self.rpc_url = rpc_url
        self._shown_url = redact_rpc_url(rpc_url)
        try:
            self._signer = Signer(
                private_key, rpc_url, confirmation_timeout=float(confirmation_timeout)
            )
        except Exception as exc:  # bad key format, unusable URL
            raise ConfigurationError("LocalFacilitator: invalid private key or RPC URL") from exc
        self._direct = DirectExact(self._signer, self.networks)
        self._facilitator = x402FacilitatorSync()
        register_exact_evm_facilitator(
            self._facilitator, self._signer, networks=self.networks, simulate_in_settle=True
        )
        self._facilitator.register(
            self.networks, _batch_settlement(self._signer, receiver_authorizer_key)
        )
        self._executor = ThreadPoolExecutor(
            max_workers=max_concurrency, thread_name_prefix="x402gate-chain"
        )
        # A facilitator dropped without close(): its threads end and its sockets close anyway.
        self._finalizer = weakref.finalize(self, _close_chain, self._executor, self._signer, False)

    def __repr__(self) -> str:
        return f"LocalFacilitator({self._shown_url!r}, networks={self.networks!r})"

    @property
    def address(self) -> str:
        """The account that pays gas."""
        return str(self._signer.address)

    async def _run(self, op: str, fn: Callable[[], T]) -> T:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn)
        except RuntimeError as exc:
            if not self._finalizer.alive:  # closed: nothing can reach the chain any more
                logger.warning("local facilitator %s: the facilitator is closed", op)
                raise FacilitatorUnavailable(f"facilitator closed during {op}") from exc
            logger.warning("local facilitator %s failed: %s: %s", op, type(exc).__name__, exc)
            raise FacilitatorError(f"facilitator {op} failed") from exc
        except Exception as exc:
            if _is_transport_error(exc) or "connect" in type(exc).__name__.lower():
                logger.warning(
                    "local facilitator %s: chain unreachable: %s", op, type(exc).__name__
                )
                raise FacilitatorUnavailable(f"chain unreachable during {op}") from exc
            logger.warning("local facilitator %s failed: %s: %s", op, type(exc).__name__, exc)
            raise FacilitatorError(f"facilitator {op} failed") from exc

    async def _chain_reachable(self) -> bool:
        def probe() -> bool:
            try:
                return bool(self._signer.transport.is_connected())
            except Exception:
                return False

        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, probe)
        except RuntimeError:  # executor shut down
            return False

    async def _fail_closed_if_chain_down(self, op: str, reason: str | None) -> None:
        # The SDK turns RPC exceptions into ordinary-looking rejections; a rejection for one of
        # these reasons may be an outage, which must be a 503, not a "pay again" 402.
        if reason in _AMBIGUOUS_REASONS and not await self._chain_reachable():
            logger.warning("local facilitator %s: chain unreachable (reason %s)", op, reason)
            raise FacilitatorUnavailable(f"chain unreachable during {op}")

    async def verify(
        self, payload: PaymentPayload, requirements: PaymentRequirements
    ) -> VerifyResponse:
        result = await self._run("verify", lambda: self._verify(payload, requirements))
        if not result.is_valid:
            await self._fail_closed_if_chain_down("verify", result.invalid_reason)
        return result

    async def settle(
        self, payload: PaymentPayload, requirements: PaymentRequirements
    ) -> SettleResponse:
        from ._direct import Sent

        def settle() -> Any:
            try:
                outcome = self._settle(payload, requirements)
            except Exception:
                self._signer.forget_nonce()
                raise
            if not isinstance(outcome, Sent) and not outcome.success:
                # Not confirmed (dropped by a restarted node, say): re-read the node's count so
                # later transactions do not queue behind a nonce that will never be mined.
                self._signer.forget_nonce()
            return outcome

        outcome = await self._run("settle", settle)
        if isinstance(outcome, Sent):
            # No thread waits for a receipt: the shared poll loop calls back.
            result: SettleResponse = await self._direct.confirmed(outcome)
            if not result.success:
                self._signer.forget_nonce()
        else:
            result = outcome
        if not result.success and not result.transaction:
            await self._fail_closed_if_chain_down("settle", result.error_reason)
        return result

    def _verify(self, payload: PaymentPayload, requirements: PaymentRequirements) -> VerifyResponse:
        direct = self._direct
        transfer = direct.transfer(payload, requirements)
        if transfer is not None and direct.asset_has_code(transfer) and direct.simulate(transfer):
            from x402.schemas import VerifyResponse

            return VerifyResponse(is_valid=True, payer=transfer.payer)
        # Refused, or not a plain EOA payment: the SDK's scheme decides and says why.
        result: VerifyResponse = self._facilitator.verify(payload, requirements)
        return result

    def _settle(self, payload: PaymentPayload, requirements: PaymentRequirements) -> Any:
        """The chain thread's part of a settlement: the SDK's whole answer, or the direct
        path's transaction sent (its receipt is awaited on the event loop), or its refusal."""
        from x402.schemas import SettleResponse

        from ._rpc import StaleSimulation

        direct = self._direct
        sent = direct.pending(payload)
        if sent is not None:
            return sent
        transfer = direct.transfer(payload, requirements)
        if transfer is not None and direct.asset_has_code(transfer):
            # The transfer simulated right before it is sent: spent meanwhile (by the payer
            # or through another facilitator), or no longer possible for any other reason,
            # it goes to the SDK below, which simulates too and refuses it, sending nothing.
            simulated_after = direct.host_sends()
            gas_price = direct.simulate_with_gas_price(transfer)
            if gas_price is not None:
                try:
                    return direct.send(transfer, gas_price, simulated_after)
                except StaleSimulation:
                    pass  # another process sent it first: the SDK below refuses it, says why
                except Exception as exc:
                    from x402.mechanisms.evm.exact.eip3009_utils import (
                        parse_eip3009_transfer_error,
                    )

                    reason = parse_eip3009_transfer_error(exc)
                    logger.warning("local facilitator: broadcast refused (%s)", reason)
                    return SettleResponse(
                        success=False,
                        error_reason=reason,
                        error_message=str(exc)[:200],
                        network=transfer.network,
                        payer=transfer.payer,
                        transaction="",
                    )
        return self._facilitator.settle(payload, requirements)

    def settlement_block(self, transaction: str) -> int | None:
        """The block a transaction this facilitator settled recently was mined in, as its
        receipt said (``None`` when it is not one of the last few thousand)."""
        return self._direct.block_of(transaction)

    async def aclose(self) -> None:
        """Stop the chain threads (waiting for calls in flight) and close the RPC connections."""
        await asyncio.to_thread(self.close)

    def close(self) -> None:
        self._finalizer.detach()
        _close_chain(self._executor, self._signer, True)

    async def supported(self) -> SupportedResponse:
        """The networks settled here, once the RPC URL was reached and serves their chain.

        :class:`FacilitatorUnavailable` when the chain cannot be reached, and
        :class:`ConfigurationError` when the RPC URL serves another chain than the configured
        networks (every settlement would fail there)."""
        chain_id = await self._run("supported", self._chain_id)
        if chain_id is None:
            raise FacilitatorError("the RPC URL answered eth_chainId without a chain id")
        wrong = [n for n in self.networks if n != f"eip155:{chain_id}"]
        if wrong:
            raise ConfigurationError(
                f"LocalFacilitator: the RPC URL {self._shown_url} serves chain eip155:{chain_id}, "
                f"not {', '.join(wrong)}"
            )
        return await self._run("supported", self._facilitator.get_supported)

    def _chain_id(self) -> int | None:
        answer = self._signer.transport.make_request("eth_chainId", [])
        result = answer.get("result") if isinstance(answer, dict) else None
        try:
            return int(result, 16) if isinstance(result, str) else None
        except ValueError:
            return None
