"""Bad ``batch-settlement`` payments refused by real servers, each with the spec's error code.

One channel is opened by a real deposit on the local chain (signed with the test kit), then a
table of faulty payloads is sent as ``PAYMENT-SIGNATURE`` headers to uvicorn (ASGI middleware)
and waitress (WSGI middleware). For every one the answer's status and error code (JSON body and
``PAYMENT-REQUIRED`` header) are the ones the x402 batch-settlement reference server gives for
that fault, the handler never runs, the charged total stays put, no token moves, and the answer
echoes neither the payload's signatures nor any key. The channel then still serves its next step.
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from x402gate import PaymentGate
from x402gate.gate import ChannelSettings

from ._kit import SdkFacilitator

if TYPE_CHECKING:
    from eth_account.signers.local import LocalAccount

    from x402gate.testing import LocalChain, TestToken
    from x402gate.testing.channels import ChannelConfig, ChannelContracts

pytest.importorskip("uvicorn")
pytest.importorskip("starlette")
pytest.importorskip("waitress")

PRICE = 1_000  # "$0.001" in 6-decimal units
DEAR = 1_000_000  # "$1": one request of it is above the channel's balance
DEPOSIT = 100_000  # the channel's only deposit, which is also the route's minimum
P = "invalid_batch_settlement_evm_"


def _make_asgi(gate: PaymentGate, runs: dict[str, int]) -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    from x402gate.asgi import PaymentMiddleware

    async def handler(request: Request) -> Response:
        name = request.url.path.strip("/")
        runs[name] = runs.get(name, 0) + 1
        return JSONResponse({"content": "PAID"})

    app = Starlette(routes=[Route("/paid", handler), Route("/dear", handler)])
    return PaymentMiddleware(app, gate=gate, routes={"GET /paid": "$0.001", "GET /dear": "$1"})


def _make_wsgi(gate: PaymentGate, runs: dict[str, int]) -> Any:
    from x402gate.wsgi import PaymentMiddleware

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        name = environ.get("PATH_INFO", "/").strip("/")
        runs[name] = runs.get(name, 0) + 1
        start_response("200 OK", [("Content-Type", "application/json")])
        return [b'{"content": "PAID"}']

    return PaymentMiddleware(app, gate=gate, routes={"GET /paid": "$0.001", "GET /dear": "$1"})


@dataclass
class Server:
    """One served gate and the keys that must never show in its answers."""

    base_url: str
    gate: PaymentGate
    runs: dict[str, int]
    receiver: str
    secrets: list[str] = field(default_factory=list)


@pytest.fixture(params=["asgi", "wsgi"])
def served(
    request: pytest.FixtureRequest,
    chain: LocalChain,
    test_token: TestToken,
    facilitator: SdkFacilitator,
    facilitator_account: LocalAccount,
    receiver_authorizer: LocalAccount,
    tmp_path: Any,
) -> Iterator[Server]:
    from x402gate.demo import serve_in_thread
    from x402gate.testing.servers import serve_wsgi

    receiver = chain.new_account().address
    gate = PaymentGate(
        pay_to=receiver,
        assets=test_token.asset,
        facilitator=facilitator,
        store=f"sqlite:///{tmp_path / 'gate.db'}",
        startup_checks="off",
        limit_in_flight=False,
        channels=ChannelSettings(
            receiver_authorizer=receiver_authorizer.address, min_deposit=DEPOSIT
        ),
    )
    runs: dict[str, int] = {}
    serve: Callable[[Any], Any] = serve_in_thread
    app = _make_asgi(gate, runs)
    if request.param == "wsgi":
        serve, app = serve_wsgi, _make_wsgi(gate, runs)
    keys = [receiver_authorizer.key.hex(), facilitator_account.key.hex()]
    with serve(app) as base_url:
        yield Server(base_url, gate, runs, receiver, [k.removeprefix("0x") for k in keys])
    gate.close()


def _decode(header: str) -> dict[str, Any]:
    decoded: dict[str, Any] = json.loads(base64.b64decode(header))
    return decoded


@dataclass
class Kit:
    """Builds signed ``batch-settlement`` payloads for one channel with the test kit's signer."""

    contracts: ChannelContracts
    token: TestToken
    payer: LocalAccount
    config: ChannelConfig
    offers: dict[str, dict[str, Any]]
    """The server's ``batch-settlement`` offer per path."""
    opening: dict[str, Any] = field(default_factory=dict)
    """The deposit payload that opened the channel."""

    def channel_id(self, config: ChannelConfig | None = None) -> str:
        return "0x" + self.contracts.channel_id(config or self.config).hex()

    @staticmethod
    def wire(config: ChannelConfig) -> dict[str, Any]:
        return {
            "payer": config.payer,
            "payerAuthorizer": config.payer_authorizer,
            "receiver": config.receiver,
            "receiverAuthorizer": config.receiver_authorizer,
            "token": config.token,
            "withdrawDelay": config.withdraw_delay,
            "salt": "0x" + config.salt.hex(),
        }

    def voucher(
        self,
        amount: int,
        *,
        config: ChannelConfig | None = None,
        signer: LocalAccount | None = None,
        channel_id: str | None = None,
    ) -> dict[str, Any]:
        """A voucher payload; the channel id is the config's unless given."""
        config = config or self.config
        channel_id = channel_id or self.channel_id(config)
        signature = self.contracts.sign_voucher(signer or self.payer, channel_id, amount)
        return {
            "type": "voucher",
            "channelConfig": self.wire(config),
            "voucher": {
                "channelId": channel_id,
                "maxClaimableAmount": str(amount),
                "signature": "0x" + signature.hex(),
            },
        }

    def deposit(
        self,
        amount: int,
        max_claimable: int,
        *,
        config: ChannelConfig | None = None,
        valid_before: int | None = None,
    ) -> dict[str, Any]:
        """A deposit payload: the payer's ``receiveWithAuthorization`` and a voucher."""
        from eth_abi.abi import decode

        config = config or self.config
        if valid_before is None:
            valid_before = int(time.time()) + 3600
        data = self.contracts.deposit_collector_data(
            self.payer, self.token, config, amount, valid_before=valid_before
        )
        valid_after, valid_before, salt, signature = decode(
            ["uint256", "uint256", "uint256", "bytes"], data
        )
        payload = self.voucher(max_claimable, config=config)
        payload["type"] = "deposit"
        payload["deposit"] = {
            "amount": str(amount),
            "authorization": {
                "erc3009Authorization": {
                    "validAfter": str(valid_after),
                    "validBefore": str(valid_before),
                    "salt": "0x" + salt.to_bytes(32, "big").hex(),
                    "signature": "0x" + bytes(signature).hex(),
                }
            },
        }
        return payload

    def header(self, payload: dict[str, Any], path: str = "/paid", **accepted: Any) -> str:
        """The ``PAYMENT-SIGNATURE`` value: the payload under the path's offer (fields of
        ``accepted`` replaced as given)."""
        from x402gate.protocol import b64json

        offer = {**self.offers[path], **accepted}
        return b64json({"x402Version": 2, "accepted": offer, "payload": payload})


def _signatures(payload: dict[str, Any]) -> list[str]:
    """The hex digits of every signature in a payload (what an answer must not echo)."""
    found = [payload["voucher"]["signature"]]
    if "deposit" in payload:
        found.append(payload["deposit"]["authorization"]["erc3009Authorization"]["signature"])
    return [s.removeprefix("0x").lower() for s in found if len(s) > 20]


@dataclass(frozen=True)
class Case:
    """One faulty payment and the answer the spec gives it."""

    name: str
    build: Callable[[Kit], tuple[dict[str, Any], str]]
    """The payload and the header carrying it."""
    code: str
    status: int = 402
    path: str = "/paid"


def _voucher_case(
    name: str, code: str, build: Callable[[Kit], dict[str, Any]], status: int = 402
) -> Case:
    def make(kit: Kit) -> tuple[dict[str, Any], str]:
        payload = build(kit)
        return payload, kit.header(payload)

    return Case(name, make, code, status)


def _stranger() -> LocalAccount:
    from eth_account import Account

    account: LocalAccount = Account.from_key(os.urandom(32))
    return account


def _config_cases() -> list[Case]:
    """Each field of the channel config changed: with the old channel id (which then no longer
    binds it), and with the id recomputed (the route's terms or the channel's state refuse it)."""
    other = _stranger().address
    changes: dict[str, tuple[dict[str, Any], str]] = {
        "receiver": ({"receiver": other}, P + "receiver_mismatch"),
        "receiverAuthorizer": ({"receiver_authorizer": other}, P + "receiver_authorizer_mismatch"),
        "token": ({"token": other}, P + "token_mismatch"),
        "withdrawDelay": ({"withdraw_delay": 1800}, P + "withdraw_delay_mismatch"),
        # A channel the escrow has never seen (the facilitator reads its balance: zero).
        "salt": ({"salt": os.urandom(32)}, P + "channel_not_found"),
        "payer": ({"payer": other}, P + "channel_not_found"),
        # The payer's signature is not the new authorizer's.
        "payerAuthorizer": ({"payer_authorizer": other}, P + "voucher_signature"),
    }
    cases = []
    for name, (change, code) in changes.items():
        cases.append(
            _voucher_case(
                f"config {name} differs, channel id kept",
                P + "channel_id_mismatch",
                lambda kit, change=change: kit.voucher(  # type: ignore[misc]
                    2 * PRICE, config=replace(kit.config, **change), channel_id=kit.channel_id()
                ),
            )
        )
        cases.append(
            _voucher_case(
                f"config {name} differs, channel id recomputed",
                code,
                lambda kit, change=change: kit.voucher(  # type: ignore[misc]
                    2 * PRICE, config=replace(kit.config, **change)
                ),
            )
        )
    return cases


def _with_signature(payload: dict[str, Any], signature: str) -> dict[str, Any]:
    payload["voucher"]["signature"] = signature
    return payload


def _with_channel_id(payload: dict[str, Any], channel_id: str) -> dict[str, Any]:
    payload["voucher"]["channelId"] = channel_id
    return payload


def _replay(kit: Kit) -> tuple[dict[str, Any], str]:
    return kit.opening, kit.header(kit.opening)


def _replay_with_next_voucher(kit: Kit) -> tuple[dict[str, Any], str]:
    payload = json.loads(json.dumps(kit.opening))
    payload["voucher"] = kit.voucher(2 * PRICE)["voucher"]
    return payload, kit.header(payload)


def _new_channel(kit: Kit) -> ChannelConfig:
    return replace(kit.config, salt=os.urandom(32))


def _stale_refund(kit: Kit) -> dict[str, Any]:
    # A refund is signed on the charged total (PRICE here): one signed above it is stale.
    payload = kit.voucher(2 * PRICE)
    payload["type"] = "refund"
    return payload


def _dear(kit: Kit) -> tuple[dict[str, Any], str]:
    payload = kit.voucher(PRICE + DEAR)
    return payload, kit.header(payload, "/dear")


CASES: list[Case] = [
    _voucher_case(
        "wrong signer",
        P + "voucher_signature",
        lambda kit: kit.voucher(2 * PRICE, signer=_stranger()),
    ),
    # The three below are not the channel's next step: the corrective 402.
    _voucher_case(
        "cumulative equal to the charged total",
        P + "cumulative_amount_mismatch",
        lambda kit: kit.voucher(PRICE),
    ),
    _voucher_case(
        "cumulative below the charged total",
        P + "cumulative_amount_mismatch",
        lambda kit: kit.voucher(PRICE // 2),
    ),
    _voucher_case("cumulative zero", P + "cumulative_amount_mismatch", lambda kit: kit.voucher(0)),
    Case(
        "cumulative above the channel balance",
        _dear,
        P + "cumulative_exceeds_balance",
        path="/dear",
    ),
    *_config_cases(),
    _voucher_case(
        "channel id of no config",
        P + "channel_id_mismatch",
        lambda kit: kit.voucher(2 * PRICE, channel_id="0x" + os.urandom(32).hex()),
    ),
    _voucher_case(
        "channel id not 32 bytes",
        P + "channel_id_invalid",
        lambda kit: _with_channel_id(kit.voucher(2 * PRICE), "0x" + "ab" * 20),
        status=400,
    ),
    _voucher_case(
        "signature of random bytes",
        P + "voucher_signature",
        lambda kit: _with_signature(kit.voucher(2 * PRICE), "0x" + os.urandom(65).hex()),
    ),
    _voucher_case(
        "signature cut short",
        P + "voucher_signature",
        lambda kit: _with_signature(
            kit.voucher(2 * PRICE), kit.voucher(2 * PRICE)["voucher"]["signature"][:-2]
        ),
    ),
    _voucher_case(
        "signature not hex",
        P + "voucher_payload",
        lambda kit: _with_signature(kit.voucher(2 * PRICE), "0x" + "zz" * 65),
        status=400,
    ),
    # A payment for another network or scheme matches none of the route's offers.
    Case(
        "another network",
        lambda kit: (p := kit.voucher(2 * PRICE), kit.header(p, network="eip155:8453")),
        "network_mismatch",
    ),
    Case(
        "another scheme",
        lambda kit: (p := kit.voucher(2 * PRICE), kit.header(p, scheme="batch-settlement-v9")),
        "unsupported_scheme",
    ),
    Case("the opening deposit replayed", _replay, P + "cumulative_amount_mismatch"),
    Case(
        "the opening deposit's authorization replayed with the next voucher",
        _replay_with_next_voucher,
        P + "deposit_simulation_failed",
    ),
    _voucher_case(
        "deposit below the minimum",
        P + "deposit_below_min_deposit",
        lambda kit: kit.deposit(DEPOSIT - 1, PRICE, config=_new_channel(kit)),
    ),
    _voucher_case(
        "deposit authorization expired",
        P + "payload_authorization_valid_before",
        lambda kit: kit.deposit(
            DEPOSIT, PRICE, config=_new_channel(kit), valid_before=int(time.time()) - 60
        ),
    ),
    _voucher_case(
        "refund on another charged total", P + "cumulative_amount_mismatch", _stale_refund
    ),
]


def _strip_voucher_state(required: dict[str, Any]) -> dict[str, Any]:
    """The challenge without ``voucherState``: the server's own last voucher, which the spec
    has it send back in a corrective 402 (the client's recovery needs it)."""
    stripped: dict[str, Any] = json.loads(json.dumps(required))
    for offer in stripped.get("accepts", []):
        (offer.get("extra") or {}).pop("voucherState", None)
    return stripped


async def test_bad_payments_are_refused_with_the_spec_codes(
    served: Server,
    chain: LocalChain,
    test_token: TestToken,
    channel_contracts: ChannelContracts,
    payer: LocalAccount,
    receiver_authorizer: LocalAccount,
    facilitator: SdkFacilitator,
) -> None:
    from x402gate.testing.channels import ChannelConfig

    async with httpx.AsyncClient(base_url=served.base_url, timeout=60) as http:
        challenge = await http.get("/paid")
        offers = {"/paid": _decode(challenge.headers["payment-required"])["accepts"][1]}
        challenge = await http.get("/dear")
        offers["/dear"] = _decode(challenge.headers["payment-required"])["accepts"][1]
        config = ChannelConfig.new(
            payer.address, served.receiver, receiver_authorizer.address, test_token.address
        )
        kit = Kit(channel_contracts, test_token, payer, config, offers)
        # The channel, opened by a deposit of exactly the minimum and its first voucher.
        opening = kit.deposit(DEPOSIT, PRICE)
        opened = await http.get("/paid", headers={"PAYMENT-SIGNATURE": kit.header(opening)})
        assert opened.status_code == 200, opened.text
        kit.opening = opening
        channel_id = kit.channel_id()
        assert channel_contracts.channel(channel_id).balance == DEPOSIT
        watched = [
            payer.address,
            channel_contracts.settlement.address,
            channel_contracts.collector.address,
            served.receiver,
        ]
        balances = [test_token.balance_of(a) for a in watched]
        settled = facilitator.settled
        secrets = [*served.secrets, payer.key.hex().removeprefix("0x")]

        faults: list[str] = []
        for case in CASES:
            payload, header = case.build(kit)
            answer = await http.get(case.path, headers={"PAYMENT-SIGNATURE": header})
            required = _decode(answer.headers.get("payment-required", "e30="))
            got = (answer.status_code, answer.json().get("error"), required.get("error"))
            if got != (case.status, case.code, case.code):
                faults.append(f"{case.name}: {got} {answer.text[:300]}, expected {case.code}")
            if case.code.endswith("cumulative_amount_mismatch"):
                offers = required.get("accepts", [{}, {}])
                state = offers[-1].get("extra", {}).get("channelState", {})
                voucher = offers[-1].get("extra", {}).get("voucherState", {})
                if (
                    state.get("chargedCumulativeAmount") != str(PRICE)
                    or voucher.get("signature") != opening["voucher"]["signature"]
                ):
                    faults.append(f"{case.name}: corrective 402 without the channel's state")
            shown = json.dumps(
                [_strip_voucher_state(answer.json()), _strip_voucher_state(required)]
            )
            leaked = [s for s in _signatures(payload) + secrets if s in shown.lower()]
            if leaked:
                faults.append(f"{case.name}: the answer echoes a signature or a key")
            stored = served.gate.store.channel_get(channel_id)
            if stored is None or stored.charged != PRICE or stored.step is not None:
                faults.append(f"{case.name}: the channel's charged total moved")
            if served.runs != {"paid": 1}:
                faults.append(f"{case.name}: the handler ran")
                served.runs["paid"] = 1
            if [test_token.balance_of(a) for a in watched] != balances:
                faults.append(f"{case.name}: tokens moved")
        assert not faults, "\n".join(faults)
        assert served.runs == {"paid": 1}
        assert facilitator.settled == settled
        assert channel_contracts.channel(channel_id).balance == DEPOSIT
        # The channel is unharmed: its next step is served.
        payload = kit.voucher(2 * PRICE)
        good = await http.get("/paid", headers={"PAYMENT-SIGNATURE": kit.header(payload)})
        assert good.status_code == 200, good.text
    assert served.runs == {"paid": 2}
    stored = served.gate.store.channel_get(channel_id)
    assert stored is not None and stored.charged == 2 * PRICE
