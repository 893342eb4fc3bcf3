"""The scheme interface: the gate runs any :class:`~x402gate.schemes.PaymentScheme`.

``FakeUpto`` is a toy ``upto``-like scheme (the payer authorizes a maximum; the server settles
what was used, at most that): an HMAC stands in for the signature, and settlement is recorded
instead of sent. It proves that a second scheme fits the interface the gate composes and runs
through the same flow as ``exact``.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pytest
from eth_account import Account
from x402.schemas import (
    PaymentPayload,
    PaymentRequirements,
    SettleResponse,
    SupportedKind,
    SupportedResponse,
    VerifyResponse,
)

from x402gate import ExactScheme, PaymentError, PaymentGate, PaymentScheme
from x402gate.assets import Asset
from x402gate.errors import ConfigurationError
from x402gate.request import RequestInfo
from x402gate.testing.payments import encode_payment

ASSET = Asset("eip155:84532", "0x036CbD53842c5426634e7929541eC2318f3dCF7e", "USDC", "2")
PAY_TO = Account.create().address
KEY = b"a key shared by the fake payer and the fake scheme"


@dataclass(frozen=True)
class UptoAuthorization:
    payer: str
    value: int
    nonce: str
    valid_before: int
    signature: bytes
    recovered: bool = True


def mac(payer: str, maximum: int, nonce: str, valid_before: int) -> str:
    message = f"{payer}|{maximum}|{nonce}|{valid_before}".encode()
    return hmac.new(KEY, message, hashlib.sha256).hexdigest()


class FakeUpto:
    """Authorize at most ``amount``; settle ``requirements.amount`` (what was used)."""

    name = "upto"
    error_codes = frozenset({"invalid_upto_signature", "invalid_upto_expired"})

    def __init__(self) -> None:
        self.settled: list[int] = []

    def requirements(
        self, asset: Asset, amount: int, pay_to: str, max_timeout_seconds: int
    ) -> PaymentRequirements:
        return PaymentRequirements(
            scheme=self.name,
            network=asset.network,
            asset=asset.address,
            amount=str(amount),
            pay_to=pay_to,
            max_timeout_seconds=max_timeout_seconds,
            extra={},
        )

    def check(
        self,
        payload: Mapping[str, Any],
        requirements: PaymentRequirements,
        *,
        now: float,
        allow_unrecovered: bool = False,
    ) -> UptoAuthorization:
        payer, nonce = str(payload["payer"]), str(payload["nonce"])
        maximum, valid_before = int(payload["max"]), int(payload["validBefore"])
        expected = mac(payer, maximum, nonce, valid_before)
        if maximum != int(requirements.amount) or not hmac.compare_digest(
            expected, str(payload["mac"])
        ):
            raise PaymentError(402, "invalid_upto_signature", "the authorization is not ours")
        if valid_before <= now:
            raise PaymentError(402, "invalid_upto_expired", "the authorization has expired")
        return UptoAuthorization(payer, maximum, nonce, valid_before, bytes.fromhex(expected))

    async def verify(
        self, payload: PaymentPayload, requirements: PaymentRequirements
    ) -> VerifyResponse:
        return VerifyResponse(is_valid=True, payer=payload.payload["payer"])

    async def settle(
        self, payload: PaymentPayload, requirements: PaymentRequirements
    ) -> SettleResponse:
        used = int(requirements.amount)
        assert used <= int(payload.payload["max"])  # never more than was authorized
        self.settled.append(used)
        return SettleResponse(
            success=True, transaction="0x" + "ef" * 32, network=requirements.network
        )


class Facilitator:
    def __init__(self, scheme: str) -> None:
        self.scheme = scheme

    async def supported(self) -> SupportedResponse:
        kind = SupportedKind(x402_version=2, scheme=self.scheme, network=ASSET.network)
        return SupportedResponse(kinds=[kind], extensions=[], signers={})

    async def verify(self, payload: Any, requirements: Any) -> VerifyResponse:
        raise AssertionError("the scheme verifies, not the gate")

    async def settle(self, payload: Any, requirements: Any) -> SettleResponse:
        raise AssertionError("the scheme settles, not the gate")


def request(headers: dict[str, str] | None = None) -> RequestInfo:
    return RequestInfo("GET", "/paid", headers=headers or {}, url="https://api.test/paid")


def upto_payment(req: PaymentRequirements, *, tamper: bool = False) -> dict[str, str]:
    payer, nonce = Account.create().address, os.urandom(32).hex()
    valid_before = int(time.time()) + 100
    signed = mac(payer, int(req.amount), nonce, valid_before)
    payload = {
        "payer": payer,
        "max": req.amount,
        "nonce": nonce,
        "validBefore": valid_before,
        "mac": ("00" * 32) if tamper else signed,
    }
    return {
        "PAYMENT-SIGNATURE": encode_payment(
            PaymentPayload(x402_version=2, payload=payload, accepted=req)
        )
    }


def test_the_built_in_scheme_fits_the_interface() -> None:
    assert isinstance(ExactScheme(Facilitator("exact")), PaymentScheme)
    assert isinstance(FakeUpto(), PaymentScheme)


def test_a_gate_uses_exact_unless_told_otherwise() -> None:
    gate = PaymentGate(
        pay_to=PAY_TO, facilitator=Facilitator("exact"), assets=ASSET, store="memory://"
    )
    assert isinstance(gate.scheme, ExactScheme) and gate.scheme.facilitator is gate.facilitator
    with pytest.raises(ConfigurationError, match="scheme"):
        PaymentGate(
            pay_to=PAY_TO,
            facilitator=Facilitator("exact"),
            assets=ASSET,
            store="memory://",
            scheme=object(),  # type: ignore[arg-type]
        )


async def test_an_upto_like_scheme_runs_through_the_same_flow() -> None:
    scheme = FakeUpto()
    gate = PaymentGate(pay_to=PAY_TO, facilitator=Facilitator("upto"), assets=ASSET, scheme=scheme)
    route = gate.route("$0.05")
    with pytest.raises(PaymentError) as info:
        await gate.begin(route, request())
    assert info.value.status_code == 402
    (req,) = await gate.requirements(route, request())
    assert (req.scheme, req.amount) == ("upto", "50000")

    with pytest.raises(PaymentError) as refused:
        await gate.begin(route, request(upto_payment(req, tamper=True)))
    assert refused.value.code == "invalid_upto_signature"

    paid = request(upto_payment(req))
    session = await gate.begin(route, paid)
    assert session.payment.amount == 50_000
    headers = await gate.finish(session, 200)
    assert "PAYMENT-RESPONSE" in headers and scheme.settled == [50_000]
    with pytest.raises(PaymentError) as replay:  # the claim is the gate's, whatever the scheme
        await gate.begin(route, paid)
    assert replay.value.code == "invalid_exact_evm_nonce_already_used"

    # Settling less than the maximum is the same call with the used amount as requirements.
    assert session.payload is not None
    used = req.model_copy(update={"amount": "12000"})
    await scheme.settle(session.payload, used)
    assert scheme.settled == [50_000, 12_000]


async def test_the_start_up_check_names_the_gate_scheme() -> None:
    gate = PaymentGate(
        pay_to=PAY_TO,
        facilitator=Facilitator("exact"),
        assets=ASSET,
        scheme=FakeUpto(),
        store="memory://",
    )
    assert "upto scheme" in (await gate.startup_problem() or "")


async def test_a_scheme_of_the_applications_own_is_asked_for_every_offer() -> None:
    """The built-in schemes' offers are kept per route and quote; an application's scheme may
    answer differently each time (a rotating payee, a fresh term), so it is asked every time."""

    class Rotating(FakeUpto):
        def __init__(self) -> None:
            super().__init__()
            self.calls = 0

        def requirements(
            self, asset: Asset, amount: int, pay_to: str, max_timeout_seconds: int
        ) -> PaymentRequirements:
            self.calls += 1
            req = super().requirements(asset, amount, pay_to, max_timeout_seconds)
            return req.model_copy(update={"extra": {"term": self.calls}})

    scheme = Rotating()
    gate = PaymentGate(pay_to=PAY_TO, facilitator=Facilitator("upto"), assets=ASSET, scheme=scheme)
    route = gate.route("$0.05")
    (first,) = await gate.requirements(route, request())
    (second,) = await gate.requirements(route, request())
    assert (first.extra, second.extra) == ({"term": 1}, {"term": 2})

    built_in = PaymentGate(
        pay_to=PAY_TO, facilitator=Facilitator("exact"), assets=ASSET, store="memory://"
    )
    route = built_in.route("$0.05")
    (one,) = await built_in.requirements(route, request())
    (again,) = await built_in.requirements(route, request())
    assert one == again and one.amount == "50000"
    assert (await built_in.requirements(built_in.route("$0.07"), request()))[0].amount == "70000"
