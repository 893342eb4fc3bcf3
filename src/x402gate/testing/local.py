"""A whole local payment set-up in one ``with``: chain, test USDC, funded buyer and a gate.

:func:`local_gate` starts anvil (:class:`~x402gate.testing.chain.LocalChain`), deploys the test
USDC, funds a fresh buyer, and builds a :class:`~x402gate.gate.PaymentGate` that settles through
a :class:`~x402gate.facilitators.LocalFacilitator` on that chain into a fresh ``pay_to`` address,
with its replay store in a temporary directory. Leaving the block closes the gate and stops
anvil. It is what a demo, an example's ``--local`` mode or a smoke test needs::

    from x402gate.testing.local import local_gate

    with local_gate() as local:
        app = create_app(local.gate)        # the same app as in production, another gate
        ...                                 # serve it; pay with local.buyer (local.token.asset)

:meth:`LocalSetup.buyer_info` is what a buyer in another process needs to pay, as JSON-ready
data. Nothing here touches a public network: anvil listens on 127.0.0.1 and every key is fresh.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .chain import LocalChain, TestToken

if TYPE_CHECKING:
    from eth_account.signers.local import LocalAccount

    from ..assets import Asset
    from ..facilitators import LocalFacilitator
    from ..gate import PaymentGate
    from ..stores import Store

__all__ = ["DEFAULT_BUYER_FUNDS", "LocalSetup", "local_gate"]

DEFAULT_BUYER_FUNDS = 5_000_000
"""What the buyer of :func:`local_gate` holds by default: 5 test USDC (6 decimals)."""


@dataclass(frozen=True, slots=True)
class LocalSetup:
    """What :func:`local_gate` started: valid inside its ``with`` block only."""

    chain: LocalChain
    """The anvil node (``chain.rpc_url``, ``chain.network``, ``chain.pid``)."""
    token: TestToken
    """The test USDC the gate accepts (``token.asset``, ``token.balance_of(address)``)."""
    buyer: LocalAccount
    """A fresh account holding the test USDC (no ETH: EIP-3009 is gasless for payers)."""
    facilitator_account: LocalAccount
    """The account that pays the gas of settlements."""
    facilitator: LocalFacilitator
    """Verifies and settles on :attr:`chain` with :attr:`facilitator_account`."""
    gate: PaymentGate
    """The gate: pays :attr:`pay_to` in :attr:`token` through :attr:`facilitator`."""

    @property
    def asset(self) -> Asset:
        """The accepted asset (the test token on ``eip155:31337``)."""
        return self.token.asset

    @property
    def pay_to(self) -> str:
        """The address that receives the payments."""
        return self.gate.pay_to[self.asset.network]

    def buyer_info(self) -> dict[str, Any]:
        """What a buyer in another process needs to pay this gate, as JSON-ready data.

        ``{"buyer_key": "0x…", "asset": {network, address, name, version, decimals},
        "pay_to": "0x…"}``; ``Asset(**info["asset"])`` rebuilds the asset, and
        :func:`~x402gate.testing.clients.paying_requests_session` pays with the key.
        """
        asset = self.asset
        return {
            "buyer_key": self.buyer.key.hex(),
            "asset": {
                "network": asset.network,
                "address": asset.address,
                "name": asset.name,
                "version": asset.version,
                "decimals": asset.decimals,
            },
            "pay_to": self.pay_to,
        }


@contextlib.contextmanager
def local_gate(
    *,
    buyer_funds: int = DEFAULT_BUYER_FUNDS,
    pay_to: str | None = None,
    store: str | Store | None = None,
    chain: LocalChain | None = None,
    token: TestToken | None = None,
    **gate_options: Any,
) -> Iterator[LocalSetup]:
    """A :class:`~x402gate.gate.PaymentGate` on a local chain, and everything around it.

    :param buyer_funds: test USDC given to the buyer, in atomic units (default 5 USDC).
    :param pay_to: who is paid; a fresh address by default.
    :param store: the replay store; by default SQLite in a temporary directory, removed on exit.
    :param chain: a running chain to use instead of starting one (it is left running), e.g. the
        ``local_chain`` pytest fixture.
    :param token: a test token already deployed on ``chain``; deployed fresh by default.
    :param gate_options: any other :class:`~x402gate.gate.PaymentGate` keyword argument
        (``max_timeout_seconds``, ``verify_with_facilitator``, ``clock``, ...).

    Raises :class:`~x402gate.testing.chain.ChainUnavailable` when anvil cannot be started.
    """
    from eth_account import Account

    from ..facilitators import LocalFacilitator
    from ..gate import PaymentGate

    if token is not None and chain is None:
        chain = token.chain
    with contextlib.ExitStack() as stack:
        if chain is None:
            chain = stack.enter_context(LocalChain())
        if token is None:
            token = chain.deploy_token()
        buyer = chain.new_account(eth_wei=0, token=token, token_amount=buyer_funds)
        facilitator_account = chain.new_account()
        facilitator = LocalFacilitator(
            chain.rpc_url, facilitator_account.key.hex(), networks=chain.network
        )
        if store is None:
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="x402gate-local-"))
            store = f"sqlite:///{Path(tmp) / 'replay.db'}"
        gate = PaymentGate(
            pay_to=pay_to if pay_to is not None else Account.create().address,
            assets=token.asset,
            facilitator=facilitator,
            store=store,
            **gate_options,
        )
        stack.callback(gate.close)  # runs before the temporary directory and anvil go
        yield LocalSetup(chain, token, buyer, facilitator_account, facilitator, gate)
