"""The ``channels`` setting in every spelling, its errors, the flat-route order and the
receiver authorizer delegated to the facilitator (no chain: a facilitator that only answers
``/supported``)."""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx
import pytest

from x402gate import PaymentGate
from x402gate.errors import ConfigurationError
from x402gate.gate import ChannelSettings
from x402gate.settings import (
    SettingsError,
    gate_from_settings,
    read_django_setting,
    read_flask_config,
)

NETWORK = "eip155:84532"
PAY_TO = "0x" + "22" * 20
AUTHORIZER = "0x" + "11" * 20
KEY = "0x" + "ab" * 32
KEY_ADDRESS = "0xe239cdc5fbe977a8a141B72194D3CF8c41bC5BC6"  # the address of KEY
BASE = {"pay_to": PAY_TO, "network": NETWORK, "facilitator_url": "https://x402.org/facilitator"}


def flask(channels: Any) -> Any:
    config = {f"X402GATE_{k.upper()}": v for k, v in BASE.items()}
    return read_flask_config({**config, "X402GATE_CHANNELS": channels}).channels


def test_every_source_reads_the_same_channel_settings() -> None:
    expected = ChannelSettings(
        receiver_authorizer=AUTHORIZER, withdraw_delay=3600, min_deposit=50_000, prefer=True
    )
    lower = {
        "receiver_authorizer": AUTHORIZER,
        "withdraw_delay": 3600,
        "min_deposit": 50_000,
        "prefer": True,
    }
    upper = {k.upper(): v for k, v in lower.items()}
    assert flask(lower) == expected
    assert flask(upper) == expected
    django = read_django_setting({**{k.upper(): v for k, v in BASE.items()}, "CHANNELS": upper})
    assert django.channels == expected
    # Environment variables give strings: whole numbers written as text are taken.
    assert flask({**lower, "withdraw_delay": "3600", "min_deposit": "50000"}) == expected
    # A ChannelSettings is taken as it is; none means no channels.
    assert flask(expected) is expected
    assert flask(None) is None


def test_a_gate_from_settings_offers_channels_in_the_configured_order() -> None:
    gate = gate_from_settings(
        {**BASE, "store_url": "memory://", "channels": {"receiver_authorizer": AUTHORIZER}}
    )
    try:
        assert gate.channels == ChannelSettings(receiver_authorizer=AUTHORIZER)
        assert gate.channel_scheme is not None
        assert gate.channel_scheme.receiver_authorizer == AUTHORIZER
    finally:
        gate.close()


def test_the_receiver_authorizer_key_gives_its_address_and_is_never_shown() -> None:
    settings = flask({"receiver_authorizer_key": KEY, "sync_seconds": 5})
    assert settings.authorizer_address() == KEY_ADDRESS
    assert settings.receiver_authorizer_key == KEY
    assert KEY[2:] not in repr(settings)
    assert settings.sync_seconds == 5.0
    assert not settings.delegated
    assert flask({"receiver_authorizer": "facilitator"}).delegated


@pytest.mark.parametrize(
    ("channels", "message"),
    [
        ({}, "X402GATE_CHANNELS: receiver_authorizer is required"),
        (
            {"receiver_authorizer": AUTHORIZER, "receiver_authorizer_key": KEY},
            "receiver_authorizer cannot be combined with receiver_authorizer_key",
        ),
        ({"receiver_authorizer": "0x1234"}, "receiver_authorizer: not an EVM address"),
        ({"receiver_authorizer": "0x" + "00" * 20}, "must not be the zero address"),
        ({"receiver_authorizer": "faciliator"}, "(or 'facilitator' to delegate it)"),
        ({"receiver_authorizer_key": "0x1234"}, "receiver_authorizer_key must be 64 hexadecimal"),
        ({"receiver_authorizer_key": "0x" + "00" * 32}, "is not a valid private key"),
        (
            {"receiver_authorizer": AUTHORIZER, "withdraw_delay": 60},
            "withdraw_delay must be from 900 to 2592000 seconds (30 days), not 60",
        ),
        (
            {"receiver_authorizer": AUTHORIZER, "withdraw_delay": "15m"},
            "withdraw_delay must be a whole number of seconds, not '15m'",
        ),
        (
            {"receiver_authorizer": AUTHORIZER, "min_deposit": 0},
            "min_deposit must be above 0 (atomic units of the token), not 0",
        ),
        (
            {"receiver_authorizer": AUTHORIZER, "min_deposit": 1.5},
            "min_deposit must be a whole number of atomic units of the token, not 1.5",
        ),
        (
            {"receiver_authorizer": AUTHORIZER, "sync_seconds": -1},
            "sync_seconds must be a number of seconds from 0 to below a day, not -1",
        ),
        ({"receiver_authorizer": AUTHORIZER, "prefer": "yes"}, "prefer must be True or False"),
        (
            {"receiver_authorizer": AUTHORIZER, "prefered": True},
            "prefered is not a channel setting (did you mean 'prefer'?)",
        ),
        (
            {"receiver_authorizer": AUTHORIZER, "Prefer": True},
            "Prefer is not a channel setting",
        ),
        (
            {"receiver_authorizer": AUTHORIZER, "PREFER": True, "prefer": False},
            "prefer is written twice (also as PREFER)",
        ),
        ("facilitator", "X402GATE_CHANNELS must be a mapping of channel settings, not str"),
        (
            ChannelSettings(receiver_authorizer=AUTHORIZER, withdraw_delay=1),
            "withdraw_delay must be 900 s to 30 days",
        ),
    ],
)
def test_each_wrong_channel_setting_is_named(channels: Any, message: str) -> None:
    with pytest.raises(SettingsError) as caught:
        flask(channels)
    assert message in str(caught.value)
    assert str(caught.value).startswith("Flask config: X402GATE_CHANNELS")
    assert "ab" * 32 not in str(caught.value)


def test_every_wrong_key_is_named_at_once() -> None:
    with pytest.raises(SettingsError) as caught:
        flask({"receiver_authorizer": "facilitator", "min_deposit": -5, "prefer": 1})
    assert str(caught.value) == (
        "Flask config: X402GATE_CHANNELS: min_deposit must be above 0 (atomic units of the "
        "token), not -5; prefer must be True or False, not 1"
    )


def test_channels_cannot_be_combined_with_a_gate_object() -> None:
    with pytest.raises(SettingsError, match=r"GATE cannot be combined .*CHANNELS"):
        read_django_setting({"GATE": object(), "CHANNELS": {"RECEIVER_AUTHORIZER": AUTHORIZER}})


class Advertising:
    """A facilitator that only answers ``/supported`` (batch-settlement kinds with ``extra``)."""

    def __init__(self, extras: dict[str, dict[str, Any] | None]) -> None:
        self.extras = extras

    async def verify(self, payload: Any, requirements: Any) -> Any:
        raise AssertionError("not called")

    async def settle(self, payload: Any, requirements: Any) -> Any:
        raise AssertionError("not called")

    async def supported(self) -> Any:
        from x402.schemas import SupportedKind, SupportedResponse

        kinds = [SupportedKind(x402_version=2, scheme="exact", network=n) for n in self.extras]
        kinds += [
            SupportedKind(x402_version=2, scheme="batch-settlement", network=n, extra=extra)
            for n, extra in self.extras.items()
        ]
        return SupportedResponse(kinds=kinds, extensions=[], signers={})


def _gate(facilitator: Any, channels: ChannelSettings, networks: list[str]) -> PaymentGate:
    from x402gate.assets import usdc

    return PaymentGate(
        pay_to=PAY_TO,
        assets=[usdc(n) for n in networks],
        facilitator=facilitator,
        store="memory://",
        limit_in_flight=False,
        channels=channels,
    )


async def _schemes_offered(gate: PaymentGate) -> tuple[int, list[dict[str, Any]]]:
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from x402gate.asgi import PaymentMiddleware

    async def paid(request: Any) -> PlainTextResponse:
        return PlainTextResponse("PAID")

    app = PaymentMiddleware(
        Starlette(routes=[Route("/paid", paid)]), gate=gate, routes={"GET /paid": "$0.001"}
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        response = await http.get("/paid")
    header = response.headers.get("payment-required")
    accepts = json.loads(base64.b64decode(header))["accepts"] if header else []
    return response.status_code, accepts


@pytest.mark.parametrize("prefer", [False, True])
async def test_flat_routes_list_exact_first_unless_channels_are_preferred(prefer: bool) -> None:
    pytest.importorskip("starlette")
    facilitator = Advertising({NETWORK: None})
    gate = _gate(facilitator, ChannelSettings(AUTHORIZER, prefer=prefer), [NETWORK])
    try:
        status, accepts = await _schemes_offered(gate)
    finally:
        await gate.aclose()
    assert status == 402
    schemes = [a["scheme"] for a in accepts]
    assert schemes == (["batch-settlement", "exact"] if prefer else ["exact", "batch-settlement"])


async def test_a_delegated_authorizer_is_the_one_the_facilitator_advertises() -> None:
    pytest.importorskip("starlette")
    advertised = "0x" + "33" * 20
    facilitator = Advertising({NETWORK: {"receiverAuthorizer": advertised}})
    gate = _gate(facilitator, ChannelSettings("facilitator"), [NETWORK])
    try:
        assert gate.channel_scheme is None  # nothing offered before the facilitator said
        status, accepts = await _schemes_offered(gate)
    finally:
        await gate.aclose()
    assert status == 402
    assert [a["scheme"] for a in accepts] == ["exact", "batch-settlement"]
    assert accepts[1]["extra"]["receiverAuthorizer"].lower() == advertised


@pytest.mark.parametrize(
    ("extras", "message"),
    [
        ({NETWORK: None}, f"advertises no receiverAuthorizer for batch-settlement on {NETWORK}"),
        ({NETWORK: {"receiverAuthorizer": "0x" + "00" * 20}}, "non-zero EVM address"),
        (
            {
                NETWORK: {"receiverAuthorizer": "0x" + "33" * 20},
                "eip155:8453": {"receiverAuthorizer": "0x" + "44" * 20},
            },
            "a different receiverAuthorizer on each network",
        ),
    ],
)
async def test_without_a_usable_advertised_authorizer_no_channel_is_offered(
    extras: dict[str, Any], message: str
) -> None:
    pytest.importorskip("starlette")
    gate = _gate(Advertising(extras), ChannelSettings("facilitator"), sorted(extras))
    try:
        with pytest.raises(ConfigurationError, match=message):
            await gate.startup()
        assert gate.channel_scheme is None
        # Fail closed: requests are refused (503), no offer is made with a guessed authorizer.
        status, accepts = await _schemes_offered(gate)
    finally:
        await gate.aclose()
    assert status == 503
    assert accepts == []


GATEWAY = """\
pay_to: "0x2222222222222222222222222222222222222222"
accepts: base-sepolia
facilitator: {facilitator}
upstreams:
  api:
    url: https://api.example.com
routes:
  "GET /data":
    upstream: api
    price: $0.001
channels:
{channels}
"""

LOCAL = "\n  rpc_url: http://127.0.0.1:8545\n  private_key: ${FACILITATOR_KEY}"


def _gateway(channels: str, facilitator: str = "https://x402.org/facilitator") -> Any:
    pytest.importorskip("yaml")
    from x402gate.gateway import parse_config

    text = GATEWAY.format(facilitator=facilitator, channels=channels)
    env = {"FACILITATOR_KEY": "0x" + "cd" * 32, "AUTHORIZER_KEY": KEY}
    return parse_config(text, source="gateway.yaml", env=env)


def test_the_gateway_file_reads_a_channels_block() -> None:
    config = _gateway("  receiver_authorizer: facilitator\n  prefer: true\n  min_deposit: 5000")
    assert config.channels == ChannelSettings("facilitator", min_deposit=5000, prefer=True)
    config = _gateway("  receiver_authorizer_key: ${AUTHORIZER_KEY}", facilitator=LOCAL)
    assert config.channels is not None
    assert config.channels.authorizer_address() == KEY_ADDRESS


@pytest.mark.parametrize(
    ("channels", "facilitator", "message"),
    [
        (
            "  receiver_authorizer: facilitator",
            LOCAL,
            "gateway.yaml:14: channels.receiver_authorizer: local settlement has no facilitator "
            "to delegate to",
        ),
        ("  prefer: true", None, "gateway.yaml:11: channels: receiver_authorizer is required"),
        (
            "  receiver_authorizer: facilitator\n  min_deposit: 0",
            None,
            "gateway.yaml:13: channels.min_deposit: must be above 0",
        ),
        (
            "  receiver_authorizer: facilitator\n  withdraw_dealy: 900",
            None,
            "gateway.yaml:13: channels.withdraw_dealy: is not a channel setting (did you mean "
            "'withdraw_delay'?)",
        ),
        (
            "  receiver_authorizer_key: ${AUTHORIZER_KEY}x",
            None,
            "channels.receiver_authorizer_key: must be 64 hexadecimal digits",
        ),
    ],
)
def test_a_wrong_channels_block_is_named_by_line_and_field(
    channels: str, facilitator: str | None, message: str
) -> None:
    from x402gate.gateway import GatewayConfigError

    with pytest.raises(GatewayConfigError) as caught:
        _gateway(channels, facilitator or "https://x402.org/facilitator")
    assert message in str(caught.value)
    assert "ab" * 32 not in str(caught.value)


def test_the_claim_setting_configures_the_background_claimer() -> None:
    from x402gate.channels import ClaimSettings

    base = {"receiver_authorizer": AUTHORIZER}
    assert flask(base).claim is None  # no claimer unless asked
    assert flask({**base, "claim": True}).claim == ClaimSettings()
    assert flask({**base, "claim": False}).claim is None
    written = {"every": "600", "threshold": 5_000_000, "settle": "false", "lease_seconds": 90}
    expected = ClaimSettings(every=600, threshold=5_000_000, settle=False, lease_seconds=90)
    assert flask({**base, "claim": written}).claim == expected
    upper = {k.upper(): v for k, v in written.items()}
    django = read_django_setting(
        {**{k.upper(): v for k, v in BASE.items()}, "CHANNELS": {**base, "CLAIM": upper}}
    )
    assert django.channels is not None and django.channels.claim == expected
    # every: false leaves only the threshold and withdrawals.
    assert flask({**base, "claim": {"every": False}}).claim == ClaimSettings(every=None)


@pytest.mark.parametrize(
    ("claim", "message"),
    [
        ({"evry": 60}, "claim: evry is not a claim setting (did you mean 'every'?)"),
        ({"every": 0}, "claim: every must be a positive number, not 0"),
        ({"threshold": -1}, "claim: threshold must be a positive whole amount"),
        ({"batch": 5000}, "claim: batch must be from 1 to 1000"),
        ({"settle": "maybe"}, "claim: settle must be true or false, not 'maybe'"),
        ({"tick_seconds": 10, "lease_seconds": 15}, "lease_seconds must be at least twice"),
        (7, "claim must be true, false or a mapping, not 7"),
    ],
)
def test_each_wrong_claim_setting_is_named(claim: Any, message: str) -> None:
    with pytest.raises(SettingsError) as caught:
        flask({"receiver_authorizer": AUTHORIZER, "claim": claim})
    assert message in str(caught.value)
