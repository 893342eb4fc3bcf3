"""Buyers: one call for an HTTP client that pays x402 APIs from a private key.

Give the result to the OpenAI or Anthropic Python SDK (or use it as any ``httpx`` client)::

    import anthropic
    from x402gate.client import http_client

    claude = anthropic.Anthropic(
        base_url="https://llm.example.com",
        api_key="unused",
        http_client=http_client(
            PRIVATE_KEY, max_per_request="$0.10", max_deposit="$2", max_total="$20"
        ),
    )

What it does, on the official x402 client:

- **channels where offered**: when a 402 offers the ``batch-settlement`` scheme it is chosen; the
  first payment deposits into a channel, later ones only sign vouchers, and a metered route
  charges what the work used. Otherwise ``exact`` pays the quoted amount.
- **spend limits** (:mod:`x402gate.client.limits`): per request, per channel deposit, in total;
  checked before anything is signed, refused with :class:`SpendLimitExceeded`. The OpenAI and
  Anthropic SDKs wrap transport errors in their ``APIConnectionError``; the refusal is its
  ``__cause__``.
- **session tokens**: an x402gate server paid with ``exact`` on a metered route keeps the change
  as credit and answers with a session token; the client sends it back to that origin, so later
  requests are served from that credit first.

Keys and signatures are never logged.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from ..assets import Asset
from ..errors import ConfigurationError
from ..money import PriceLike
from .limits import Budget, SpendLimitExceeded, SpendLimits
from .transport import AsyncPayingTransport, PayingTransport, SessionTokens

if TYPE_CHECKING:
    from eth_account.signers.local import LocalAccount
    from x402 import x402Client, x402ClientSync
    from x402.mechanisms.evm.batch_settlement.client import ClientChannelStorage

__all__ = [
    "SpendLimitExceeded",
    "SpendLimits",
    "async_http_client",
    "http_client",
    "x402_client",
    "x402_client_sync",
]

CHANNEL_SCHEME = "batch-settlement"
DEFAULT_TIMEOUT = 120.0
"""Seconds; model answers can be slow, and the first payment of a channel waits for a deposit."""


class _Payer:
    """The spend-limit checks, wired into an official x402 client as hooks."""

    def __init__(self, limits: SpendLimits, assets: Sequence[Asset]) -> None:
        self.budget = Budget(limits)
        self._decimals = {(a.network, a.address.lower()): a.decimals for a in assets}

    def decimals(self, network: str, asset: str) -> int:
        """Decimals of a token this client may pay, or refuse it."""
        known = self._decimals.get((str(network), asset.lower()))
        if known is not None:
            return known
        from x402.mechanisms.evm.default_assets import find_default_asset

        default = find_default_asset(asset, str(network))
        if default is None:
            raise SpendLimitExceeded(
                "asset", f"this client is not set up to pay {asset} on {network}"
            )
        return int(default["decimals"])

    def before(self, context: Any) -> None:
        """Refuse a payment over ``max_per_request`` or ``max_total``, and count it."""
        selected = context.selected_requirements
        amount = int(selected.get_amount())
        decimals = self.decimals(selected.network, selected.asset)
        self.budget.check_request(amount, decimals)
        self.budget.reserve(str(selected.network), selected.asset, amount, decimals)

    def failed(self, context: Any) -> None:
        """Nothing was signed after all: give the counted amount back."""
        selected = context.selected_requirements
        self.budget.give_back(str(selected.network), selected.asset, int(selected.get_amount()))

    def answered(self, context: Any) -> None:
        """A channel answer says what was charged: give back what was not."""
        settle = context.settle_response
        requirements = context.requirements
        if settle is None or not settle.success or requirements.scheme != CHANNEL_SCHEME:
            return
        charged = (settle.extra or {}).get("chargedAmount")
        if not isinstance(charged, str) or not charged.isdigit() or len(charged) > 78:
            return
        unused = int(requirements.get_amount()) - int(charged)
        self.budget.give_back(str(requirements.network), requirements.asset, unused)

    def deposit(self, context: Any) -> str:
        """The deposit to sign: the SDK's choice, capped by ``max_deposit``; refused when the
        channel needs more than that, or the server's floor is above it."""
        requirements = context.payment_requirements
        decimals = self.decimals(requirements.network, requirements.asset)
        needed = int(context.minimum_deposit_amount)
        floor = (requirements.extra or {}).get("minDeposit")
        if isinstance(floor, str) and floor.isdigit() and len(floor) <= 78:
            needed = max(needed, int(floor))
        allowed = self.budget.check_deposit(needed, decimals)
        return str(min(int(context.deposit_amount), allowed))


def _account(private_key: LocalAccount | str) -> LocalAccount:
    if isinstance(private_key, str):
        from eth_account import Account

        try:
            local: LocalAccount = Account.from_key(private_key)
        except Exception:  # never echo the key
            raise ConfigurationError("private_key is not a valid secp256k1 key") from None
        return local
    return private_key


def _assets(assets: Asset | Sequence[Asset] | None) -> list[Asset]:
    if assets is None:
        return []
    items = [assets] if isinstance(assets, Asset) else list(assets)
    for item in items:
        if not isinstance(item, Asset):
            raise ConfigurationError(f"expected an x402gate Asset, got {type(item).__name__}")
    return items


def _storage(channel_storage: ClientChannelStorage | str | Path | None) -> Any:
    from x402.mechanisms.evm.batch_settlement.client import InMemoryClientChannelStorage

    if channel_storage is None:
        return InMemoryClientChannelStorage()
    if isinstance(channel_storage, str | Path):
        from x402.mechanisms.evm.batch_settlement.client.file_storage import (
            FileChannelStorageOptions,
            FileClientChannelStorage,
        )

        return FileClientChannelStorage(FileChannelStorageOptions(directory=channel_storage))
    return channel_storage


def _configure(
    client: Any,
    private_key: LocalAccount | str,
    limits: SpendLimits,
    assets: Asset | Sequence[Asset] | None,
    rpc_url: str | None,
    channel_storage: ClientChannelStorage | str | Path | None,
) -> _Payer:
    from x402 import prefer_scheme
    from x402.mechanisms.evm.batch_settlement.client import (
        BatchSettlementEvmScheme,
        BatchSettlementEvmSchemeOptions,
    )
    from x402.mechanisms.evm.exact import register_exact_evm_client
    from x402.mechanisms.evm.signers import EthAccountSigner, EthAccountSignerWithRPC

    account = _account(private_key)
    tokens = _assets(assets)
    payer = _Payer(limits, tokens)
    networks = sorted({a.network for a in tokens}) or ["eip155:*"]
    signer: Any = (
        EthAccountSignerWithRPC(account, rpc_url=rpc_url)
        if rpc_url is not None
        else EthAccountSigner(account)
    )
    options = BatchSettlementEvmSchemeOptions(
        storage=_storage(channel_storage), deposit_strategy=payer.deposit, rpc_url=rpc_url
    )
    channel = BatchSettlementEvmScheme(signer, options)
    for network in networks:
        client.register(network, channel)
    register_exact_evm_client(client, EthAccountSigner(account), networks=networks)
    client.register_policy(prefer_scheme(CHANNEL_SCHEME))
    # The SDK's own caps are replaced by ours (checked in the hooks below); its allow-list of
    # tokens stays: well-known USDC deployments, plus the assets given here.
    controls: dict[str, Any] = {"max_amount_per_payment": False}
    if tokens:
        controls["allowed_assets"] = [{"network": a.network, "asset": a.address} for a in tokens]
    client.set_spend_controls(controls)
    client.on_before_payment_creation(payer.before)
    client.on_payment_creation_failure(payer.failed)
    client.on_payment_response(payer.answered)
    return payer


def x402_client(
    private_key: LocalAccount | str,
    *,
    max_per_request: PriceLike,
    max_deposit: PriceLike,
    max_total: PriceLike,
    assets: Asset | Sequence[Asset] | None = None,
    rpc_url: str | None = None,
    channel_storage: ClientChannelStorage | str | Path | None = None,
) -> x402Client:
    """The official async ``x402Client`` set up as :func:`async_http_client` uses it."""
    from x402 import x402Client

    client = x402Client()
    limits = SpendLimits.parse(max_per_request, max_deposit, max_total)
    _configure(client, private_key, limits, assets, rpc_url, channel_storage)
    return client


def x402_client_sync(
    private_key: LocalAccount | str,
    *,
    max_per_request: PriceLike,
    max_deposit: PriceLike,
    max_total: PriceLike,
    assets: Asset | Sequence[Asset] | None = None,
    rpc_url: str | None = None,
    channel_storage: ClientChannelStorage | str | Path | None = None,
) -> x402ClientSync:
    """The official ``x402ClientSync`` set up as :func:`http_client` uses it."""
    from x402 import x402ClientSync

    client = x402ClientSync()
    limits = SpendLimits.parse(max_per_request, max_deposit, max_total)
    _configure(client, private_key, limits, assets, rpc_url, channel_storage)
    return client


def http_client(
    private_key: LocalAccount | str,
    *,
    max_per_request: PriceLike,
    max_deposit: PriceLike,
    max_total: PriceLike,
    assets: Asset | Sequence[Asset] | None = None,
    rpc_url: str | None = None,
    channel_storage: ClientChannelStorage | str | Path | None = None,
    transport: httpx.BaseTransport | None = None,
    **httpx_kwargs: Any,
) -> httpx.Client:
    """An ``httpx.Client`` that pays 402 answers from ``private_key`` within the limits.

    ``private_key`` is a hex key or an eth-account ``LocalAccount``. ``max_per_request``,
    ``max_deposit`` and ``max_total`` are prices (``"$0.10"``; an int is whole dollars): see
    :mod:`x402gate.client.limits`. ``assets`` adds tokens beyond the well-known USDC
    deployments (and then restricts networks to theirs). ``rpc_url`` lets the channel scheme
    read a channel from the chain to recover its state (after a restart, with the default
    in-memory ``channel_storage``; a directory path keeps channels in files instead).
    ``transport`` is the inner transport (the network by default); other keyword arguments go
    to ``httpx.Client`` (``base_url``, ``timeout``, ...).
    """
    client = x402_client_sync(
        private_key,
        max_per_request=max_per_request,
        max_deposit=max_deposit,
        max_total=max_total,
        assets=assets,
        rpc_url=rpc_url,
        channel_storage=channel_storage,
    )
    inner = transport if transport is not None else httpx.HTTPTransport()
    httpx_kwargs.setdefault("timeout", DEFAULT_TIMEOUT)
    return httpx.Client(transport=PayingTransport(client, SessionTokens(), inner), **httpx_kwargs)


def async_http_client(
    private_key: LocalAccount | str,
    *,
    max_per_request: PriceLike,
    max_deposit: PriceLike,
    max_total: PriceLike,
    assets: Asset | Sequence[Asset] | None = None,
    rpc_url: str | None = None,
    channel_storage: ClientChannelStorage | str | Path | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    **httpx_kwargs: Any,
) -> httpx.AsyncClient:
    """The async twin of :func:`http_client`, for ``AsyncOpenAI`` and ``AsyncAnthropic``."""
    client = x402_client(
        private_key,
        max_per_request=max_per_request,
        max_deposit=max_deposit,
        max_total=max_total,
        assets=assets,
        rpc_url=rpc_url,
        channel_storage=channel_storage,
    )
    inner = transport if transport is not None else httpx.AsyncHTTPTransport()
    httpx_kwargs.setdefault("timeout", DEFAULT_TIMEOUT)
    return httpx.AsyncClient(
        transport=AsyncPayingTransport(client, SessionTokens(), inner), **httpx_kwargs
    )
