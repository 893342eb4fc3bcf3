"""Header codecs and requirement matching, without a chain."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from x402.http import decode_payment_signature_header, encode_payment_signature_header
from x402.schemas import PaymentPayload, PaymentRequirements

from x402gate import protocol
from x402gate.assets import Asset
from x402gate.errors import PaymentError

ASSET = Asset(
    network="eip155:84532",
    address="0x036CbD53842c5426634e7929541eC2318f3dCF7e",
    name="USDC",
    version="2",
)
PAY_TO = "0x209693Bc6afc0C5328bA36FaF03C514EF312287C"


def requirements(amount: int = 10_000) -> PaymentRequirements:
    return protocol.build_requirements(ASSET, amount, PAY_TO, 300)


def payload(accepted: PaymentRequirements | None = None, **payload_fields: Any) -> PaymentPayload:
    return PaymentPayload(
        x402_version=2,
        payload=payload_fields or {"signature": "0x00", "authorization": {}},
        accepted=accepted or requirements(),
    )


def header(value: str, name: str = protocol.PAYMENT_SIGNATURE) -> dict[str, str]:
    return {name: value}


def test_requirements_carry_the_token_domain_and_atomic_amount() -> None:
    req = requirements(12_345)
    assert req.model_dump(by_alias=True) == {
        "scheme": "exact",
        "network": "eip155:84532",
        "asset": ASSET.address,
        "amount": "12345",
        "payTo": PAY_TO,
        "maxTimeoutSeconds": 300,
        "extra": {"name": "USDC", "version": "2"},
    }


def test_header_written_by_the_official_encoder_is_decoded() -> None:
    original = payload()
    decoded = protocol.decode_payment(header(encode_payment_signature_header(original)))
    assert decoded is not None and decoded.version == 2
    assert decoded.payload == original


def test_our_encoding_is_read_by_the_official_decoder() -> None:
    original = payload()
    from x402gate.testing.payments import encode_payment

    assert decode_payment_signature_header(encode_payment(original)) == original


def test_no_header_means_no_payment() -> None:
    assert protocol.decode_payment({}) is None


def test_payment_signature_wins_over_x_payment() -> None:
    v2 = encode_payment_signature_header(payload())
    decoded = protocol.decode_payment(
        {protocol.PAYMENT_SIGNATURE: v2, protocol.X_PAYMENT: "garbage"}
    )
    assert decoded is not None and decoded.header == protocol.PAYMENT_SIGNATURE


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("", "empty"),
        ("not base64 !!!", "not valid base64"),
        ("YWJj", "not base64-encoded JSON"),  # "abc"
        (base64.b64encode(b"[1]").decode(), "JSON object"),
        (base64.b64encode(b'{"x402Version": 3}').decode(), "unsupported x402Version"),
        (base64.b64encode(b'{"x402Version": true}').decode(), "unsupported x402Version"),
        (base64.b64encode(b'{"x402Version": 2, "payload": {}}').decode(), "accepted"),
        (base64.b64encode(b'{"x402Version": 1, "payload": {}}').decode(), "scheme"),
        ("A" * (protocol.MAX_HEADER_BYTES + 1), "larger than"),
        (base64.b64encode(b"\xff\xfe{}").decode(), "not base64-encoded JSON"),
    ],
)
def test_malformed_headers_are_400_with_the_reason(value: str, reason: str) -> None:
    with pytest.raises(PaymentError) as info:
        protocol.decode_payment(header(value))
    assert info.value.status_code == 400
    assert info.value.code == "invalid_payment_header"
    assert reason in info.value.message


@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_crash_the_decoder(raw: bytes) -> None:
    value = base64.b64encode(raw).decode()
    try:
        protocol.decode_payment(header(value))
    except PaymentError as exc:
        assert exc.status_code == 400


@given(st.text(max_size=300))
def test_arbitrary_text_never_crashes_the_decoder(value: str) -> None:
    for name in (protocol.PAYMENT_SIGNATURE, protocol.X_PAYMENT):
        try:
            protocol.decode_payment(header(value, name))
        except PaymentError as exc:
            assert exc.status_code == 400


def test_v1_payload_is_upgraded_with_its_network_name_mapped() -> None:
    raw = {
        "x402Version": 1,
        "scheme": "exact",
        "network": "base-sepolia",
        "payload": {"signature": "0x"},
    }
    decoded = protocol.decode_payment(
        header(base64.b64encode(json.dumps(raw).encode()).decode(), protocol.X_PAYMENT)
    )
    assert decoded is not None and decoded.version == 1 and decoded.v1_network == "base-sepolia"
    assert protocol.match_requirements(decoded, [requirements()]) == requirements()


def test_v1_payload_for_an_unaccepted_network_is_a_network_mismatch() -> None:
    raw = {"x402Version": 1, "scheme": "exact", "network": "base", "payload": {}}
    decoded = protocol.decode_payment(
        header(base64.b64encode(json.dumps(raw).encode()).decode(), protocol.X_PAYMENT)
    )
    assert decoded is not None
    with pytest.raises(PaymentError) as info:
        protocol.match_requirements(decoded, [requirements()])
    assert info.value.code == "network_mismatch"


def test_every_v1_name_maps_back_to_itself_and_other_networks_have_none() -> None:
    for name in ("base", "base-sepolia", "avalanche", "polygon-amoy", "skale-base-sepolia"):
        raw = {"x402Version": 1, "scheme": "exact", "network": name, "payload": {}}
        decoded = protocol.decode_payment(
            header(base64.b64encode(json.dumps(raw).encode()).decode(), protocol.X_PAYMENT)
        )
        assert decoded is not None
        assert protocol.v1_network_name(decoded.payload.accepted.network) == name
    assert protocol.v1_network_name("eip155:31337") is None
    assert protocol.v1_network_name("eip155:42161") is None  # Arbitrum: v2 only


def test_a_failed_v1_receipt_keeps_the_reason_and_only_v1_fields() -> None:
    from x402.schemas import SettleResponse

    failed = SettleResponse(
        success=False,
        error_reason="invalid_exact_evm_insufficient_balance",
        transaction="",
        network="eip155:84532",
        amount="10000",
        extensions={"x": {}},
    )
    decoded = json.loads(base64.b64decode(protocol.encode_settle_response_v1(failed)))
    assert decoded == {
        "success": False,
        "errorReason": "invalid_exact_evm_insufficient_balance",
        "transaction": "",
        "network": "base-sepolia",
    }
    local = failed.model_copy(update={"network": "eip155:31337"})
    assert json.loads(base64.b64decode(protocol.encode_settle_response_v1(local)))["network"] == (
        "eip155:31337"
    )


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"scheme": "upto"}, "unsupported_scheme"),
        ({"network": "eip155:8453"}, "network_mismatch"),
        ({"asset": "0x" + "11" * 20}, "asset_mismatch"),
        ({"amount": "9999"}, "invalid_exact_evm_payload_authorization_value_mismatch"),
        ({"amount": "10000.0"}, "invalid_exact_evm_payload_authorization_value_mismatch"),
        ({"pay_to": "0x" + "22" * 20}, "invalid_exact_evm_payload_recipient_mismatch"),
        ({"pay_to": PAY_TO.lower()}, "invalid_exact_evm_payload_recipient_mismatch"),
        ({"max_timeout_seconds": 301}, "max_timeout_mismatch"),
        ({"extra": {"name": "USD Coin", "version": "2"}}, "extra_mismatch"),
        ({"extra": {}}, "extra_mismatch"),
    ],
)
def test_payment_for_other_terms_is_a_402_naming_the_field(
    change: dict[str, Any], code: str
) -> None:
    decoded = protocol.DecodedPayment(
        payload=payload(requirements().model_copy(update=change)),
        version=2,
        header=protocol.PAYMENT_SIGNATURE,
    )
    with pytest.raises(PaymentError) as info:
        protocol.match_requirements(decoded, [requirements()])
    assert info.value.status_code == 402 and info.value.code == code


def test_client_may_add_keys_to_extra() -> None:
    accepted = requirements().model_copy(
        update={"extra": {"name": "USDC", "version": "2", "note": "x"}}
    )
    decoded = protocol.DecodedPayment(
        payload=payload(accepted), version=2, header=protocol.PAYMENT_SIGNATURE
    )
    assert protocol.match_requirements(decoded, [requirements()]) == requirements()


def test_the_matching_requirement_among_several_is_chosen() -> None:
    other = Asset(
        network="eip155:8453",
        address="0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913",
        name="USD Coin",
        version="2",
    )
    base = protocol.build_requirements(other, 10_000, PAY_TO, 300)
    decoded = protocol.DecodedPayment(
        payload=payload(base), version=2, header=protocol.PAYMENT_SIGNATURE
    )
    assert protocol.match_requirements(decoded, [requirements(), base]) == base


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"network": "eip155:8453"}, "network_mismatch"),
        ({"asset": "0x" + "11" * 20}, "asset_mismatch"),
        ({"amount": "1"}, "invalid_exact_evm_payload_authorization_value_mismatch"),
    ],
)
def test_a_payment_of_the_second_offers_scheme_is_told_its_own_fault(
    change: dict[str, Any], code: str
) -> None:
    # Compared with the exact offer listed first, every such payment was "unsupported_scheme".
    channel = requirements().model_copy(update={"scheme": "batch-settlement"})
    decoded = protocol.DecodedPayment(
        payload=payload(channel.model_copy(update=change)),
        version=2,
        header=protocol.PAYMENT_SIGNATURE,
    )
    with pytest.raises(PaymentError) as info:
        protocol.match_requirements(decoded, [requirements(), channel])
    assert info.value.code == code


def test_b64json_is_standard_padded_base64_of_compact_json() -> None:
    value = protocol.b64json({"a": 1, "b": "é"})
    assert base64.b64decode(value, validate=True).decode() == '{"a":1,"b":"é"}'
