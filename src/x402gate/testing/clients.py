"""Official x402 clients that pay with a given key, ready for tests and demos.

x402gate is tested against the clients its users' agents actually run: the official ``x402``
SDK's ``x402Client`` with the exact-EVM scheme, its httpx transport and its ``requests``
adapter, unchanged. These helpers only do the wiring every test would repeat:

- register the exact-EVM scheme for the networks of the given assets (and nothing else, so a
  test client never signs for a network it was not meant to pay on);
- open the SDK's spend controls for those assets: by default they allow only well-known USDC
  deployments capped at $1, so a local test token would be refused.

Example::

    async with paying_httpx_client(payer, asset=token.asset, base_url="http://test",
                                   transport=httpx.ASGITransport(app=app)) as http:
        response = await http.get("/paid")
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from ..assets import Asset

if TYPE_CHECKING:
    import httpx
    import requests
    from eth_account.signers.local import LocalAccount
    from x402 import SpendControls, x402Client, x402ClientSync

__all__ = [
    "DEFAULT_MAX_AMOUNT_PER_PAYMENT",
    "paying_httpx_client",
    "paying_requests_session",
    "payment_recorder",
    "spend_controls_for",
    "x402_client",
    "x402_client_sync",
]

DEFAULT_MAX_AMOUNT_PER_PAYMENT = 10**9
"""Default cap per payment in atomic units: 1,000 tokens of 6 decimals."""


class _HasAsset(Protocol):
    """Anything with an ``asset`` attribute, e.g. :class:`~x402gate.testing.chain.TestToken`."""

    @property
    def asset(self) -> Asset: ...


AssetLike = Asset | _HasAsset
Assets = AssetLike | Sequence[AssetLike]
_ClientT = TypeVar("_ClientT", "x402Client", "x402ClientSync")


def _assets(asset: Assets) -> list[Asset]:
    items: Sequence[AssetLike] = [asset] if not isinstance(asset, Sequence) else asset
    resolved = [item if isinstance(item, Asset) else item.asset for item in items]
    if not resolved:
        raise ValueError("at least one asset is needed to pay with")
    for item in resolved:
        if not isinstance(item, Asset):
            raise TypeError(f"expected an x402gate Asset, got {type(item).__name__}")
    return resolved


def _account(account: LocalAccount | str) -> LocalAccount:
    if isinstance(account, str):
        from eth_account import Account

        local: LocalAccount = Account.from_key(account)
        return local
    return account


def spend_controls_for(
    asset: Assets, *, max_amount_per_payment: int = DEFAULT_MAX_AMOUNT_PER_PAYMENT
) -> SpendControls:
    """The SDK's ``SpendControls`` allowing exactly these assets, each capped in atomic units."""
    if isinstance(max_amount_per_payment, bool) or max_amount_per_payment < 0:
        raise ValueError("max_amount_per_payment must be a non-negative integer")
    return {
        "allowed_assets": [
            {
                "network": item.network,
                "asset": item.address,
                # The SDK wants an atomic integer string here, never "$1".
                "max_amount_per_payment": str(max_amount_per_payment),
            }
            for item in _assets(asset)
        ]
    }


def _configure(
    client: _ClientT,
    account: LocalAccount | str,
    asset: Assets,
    max_amount_per_payment: int,
) -> _ClientT:
    from x402.mechanisms.evm.exact import register_exact_evm_client
    from x402.mechanisms.evm.signers import EthAccountSigner

    assets = _assets(asset)
    networks = sorted({item.network for item in assets})
    register_exact_evm_client(client, EthAccountSigner(_account(account)), networks=networks)
    client.set_spend_controls(
        spend_controls_for(assets, max_amount_per_payment=max_amount_per_payment)
    )
    return client


def x402_client(
    account: LocalAccount | str,
    *,
    asset: Assets,
    max_amount_per_payment: int = DEFAULT_MAX_AMOUNT_PER_PAYMENT,
) -> x402Client:
    """An official async ``x402Client`` that pays ``asset`` with ``account`` (exact scheme).

    ``account`` is an eth-account ``LocalAccount`` or a hex private key; ``asset`` one
    :class:`~x402gate.assets.Asset` (or a ``TestToken``) or a list of them.
    """
    from x402 import x402Client

    return _configure(x402Client(), account, asset, max_amount_per_payment)


def x402_client_sync(
    account: LocalAccount | str,
    *,
    asset: Assets,
    max_amount_per_payment: int = DEFAULT_MAX_AMOUNT_PER_PAYMENT,
) -> x402ClientSync:
    """The synchronous twin of :func:`x402_client` (``x402ClientSync``)."""
    from x402 import x402ClientSync

    return _configure(x402ClientSync(), account, asset, max_amount_per_payment)


def paying_httpx_client(
    account: LocalAccount | str,
    *,
    asset: Assets,
    base_url: str | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    max_amount_per_payment: int = DEFAULT_MAX_AMOUNT_PER_PAYMENT,
    **httpx_kwargs: Any,
) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` that answers 402 by paying, through the SDK's x402 transport.

    ``transport`` is the inner transport (``httpx.ASGITransport(app=app)`` for socket-free
    tests); a plain ``httpx.AsyncHTTPTransport`` is used when omitted. Close the client (use it
    as ``async with``) as any httpx client.
    """
    import httpx
    from x402.http.clients import x402_httpx_transport

    client = x402_client(account, asset=asset, max_amount_per_payment=max_amount_per_payment)
    inner = transport if transport is not None else httpx.AsyncHTTPTransport()
    if base_url is not None:
        httpx_kwargs["base_url"] = base_url
    return httpx.AsyncClient(transport=x402_httpx_transport(client, inner), **httpx_kwargs)


def paying_requests_session(
    account: LocalAccount | str,
    *,
    asset: Assets,
    max_amount_per_payment: int = DEFAULT_MAX_AMOUNT_PER_PAYMENT,
) -> requests.Session:
    """A ``requests.Session`` that answers 402 by paying (the SDK's ``x402_requests`` adapter)."""
    from x402.http.clients import x402_requests

    client = x402_client_sync(account, asset=asset, max_amount_per_payment=max_amount_per_payment)
    session: requests.Session = x402_requests(client)
    return session


def payment_recorder() -> tuple[httpx.AsyncBaseTransport, list[str]]:
    """A network transport for :func:`paying_httpx_client` (``transport=``) that remembers every
    payment header the client sends, and the list it appends them to: a test can then retry the
    very same payment, as a client does whose answer was lost."""
    import httpx

    sent: list[str] = []

    class Recording(httpx.AsyncBaseTransport):
        def __init__(self) -> None:
            self.inner = httpx.AsyncHTTPTransport()

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            for name in ("payment-signature", "x-payment"):
                value = request.headers.get(name)
                if value is not None:
                    sent.append(value)
            return await self.inner.handle_async_request(request)

        async def aclose(self) -> None:
            await self.inner.aclose()

    return Recording(), sent
