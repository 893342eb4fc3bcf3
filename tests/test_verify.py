"""Local pre-verification of exact/EIP-3009 payments (x402gate.verify).

Payloads are signed independently of the code under test: by the official x402 client, or by
eth-account's EIP-712 encoder. Time is always injected; nothing sleeps.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import pytest
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_account.signers.local import LocalAccount
from eth_hash.auto import keccak
from eth_keys.datatypes import Signature
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from x402 import x402ClientSync
from x402.mechanisms.evm import EthAccountSigner
from x402.mechanisms.evm.eip712 import hash_eip3009_authorization
from x402.mechanisms.evm.exact import register_exact_evm_client
from x402.mechanisms.evm.types import ExactEIP3009Authorization
from x402.schemas import PaymentRequired, PaymentRequirements, ResourceInfo

from x402gate.errors import PaymentError
from x402gate.verify import MAX_SIGNATURE_BYTES, Authorization, eip3009_digest, verify_exact

TOKEN = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
PAY_TO = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
OTHER = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"
ZERO = "0x" + "00" * 20
NETWORK = "eip155:31337"
CHAIN_ID = 31337
AMOUNT = "10000"
TIMEOUT = 300
NOW = 1_800_000_000  # the injected clock for hand-made payloads
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141

# A fixed key keeps failures reproducible (anvil's well-known account #0; never funded here).
KEY = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"
SIGNER: LocalAccount = Account.from_key(KEY)


def requirements(**changes: Any) -> PaymentRequirements:
    fields: dict[str, Any] = {
        "scheme": "exact",
        "network": NETWORK,
        "asset": TOKEN,
        "amount": AMOUNT,
        "pay_to": PAY_TO,
        "max_timeout_seconds": TIMEOUT,
        "extra": {"name": "USD Coin", "version": "2"},
    }
    fields.update(changes)
    return PaymentRequirements(**fields)


def typed_data(
    auth: dict[str, str],
    *,
    name: str = "USD Coin",
    version: str = "2",
    chain_id: int = CHAIN_ID,
    contract: str = TOKEN,
) -> dict[str, Any]:
    """The EIP-3009 typed data exactly as a wallet would receive it."""
    return {
        "types": {
            "EIP712Domain": [
                {"name": "name", "type": "string"},
                {"name": "version", "type": "string"},
                {"name": "chainId", "type": "uint256"},
                {"name": "verifyingContract", "type": "address"},
            ],
            "TransferWithAuthorization": [
                {"name": "from", "type": "address"},
                {"name": "to", "type": "address"},
                {"name": "value", "type": "uint256"},
                {"name": "validAfter", "type": "uint256"},
                {"name": "validBefore", "type": "uint256"},
                {"name": "nonce", "type": "bytes32"},
            ],
        },
        "primaryType": "TransferWithAuthorization",
        "domain": {
            "name": name,
            "version": version,
            "chainId": chain_id,
            "verifyingContract": contract,
        },
        "message": {
            "from": auth["from"],
            "to": auth["to"],
            "value": int(auth["value"]),
            "validAfter": int(auth["validAfter"]),
            "validBefore": int(auth["validBefore"]),
            "nonce": auth["nonce"],
        },
    }


def eth_account_digest(data: dict[str, Any]) -> bytes:
    signable = encode_typed_data(full_message=data)
    return keccak(b"\x19" + signable.version + signable.header + signable.body)


def signed(
    account: LocalAccount = SIGNER,
    domain: dict[str, Any] | None = None,
    /,
    **auth_changes: str,
) -> dict[str, Any]:
    """A payload signed by ``account`` with eth-account (optionally over another domain)."""
    auth = {
        "from": account.address,
        "to": PAY_TO,
        "value": AMOUNT,
        "validAfter": "0",
        "validBefore": str(NOW + TIMEOUT),
        "nonce": "0x" + "ab" * 32,
    }
    auth.update(auth_changes)
    message = encode_typed_data(full_message=typed_data(auth, **(domain or {})))
    signature = account.sign_message(message).signature
    return {"authorization": auth, "signature": "0x" + bytes(signature).hex()}


def with_signature(payload: dict[str, Any], signature: bytes) -> dict[str, Any]:
    return {**payload, "signature": "0x" + signature.hex()}


def refused(call: Callable[[], object]) -> PaymentError:
    with pytest.raises(PaymentError) as info:
        call()
    return info.value


# --- accepted payments ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def official_payment() -> tuple[dict[str, Any], PaymentRequirements, str]:
    """A payload from the official client as an agent would send it: (payload, req, payer)."""
    account: LocalAccount = Account.create()
    req = requirements()
    client = register_exact_evm_client(x402ClientSync(), EthAccountSigner(account))
    # The official client pays only well-known tokens unless told otherwise.
    client.set_spend_controls(
        {"allowed_assets": [{"network": NETWORK, "asset": TOKEN, "max_amount_per_payment": AMOUNT}]}
    )
    paid = client.create_payment_payload(
        PaymentRequired(
            x402_version=2, resource=ResourceInfo(url="https://api.test/paid"), accepts=[req]
        )
    )
    return paid.payload, req, account.address


def test_official_client_payment_is_accepted(
    official_payment: tuple[dict[str, Any], PaymentRequirements, str],
) -> None:
    payload, req, payer = official_payment
    valid_before = int(payload["authorization"]["validBefore"])
    signed_at = valid_before - TIMEOUT  # the client signs validBefore = now + maxTimeoutSeconds

    result = verify_exact(payload, req, now=signed_at + 0.5)

    assert result == Authorization(
        payer=payer,
        pay_to=PAY_TO,
        value=10000,
        valid_after=0,
        valid_before=valid_before,
        nonce=payload["authorization"]["nonce"].lower(),
        signature=bytes.fromhex(payload["signature"][2:]),
        recovered=True,
    )


def test_official_payment_is_accepted_until_six_seconds_before_expiry(
    official_payment: tuple[dict[str, Any], PaymentRequirements, str],
) -> None:
    payload, req, _ = official_payment
    valid_before = int(payload["authorization"]["validBefore"])

    assert verify_exact(payload, req, now=valid_before - 6).recovered
    error = refused(lambda: verify_exact(payload, req, now=valid_before - 5.9))
    assert (error.status_code, error.code) == (
        402,
        "invalid_exact_evm_payload_authorization_valid_before",
    )


def test_result_is_normalised() -> None:
    payload = signed()
    payload["authorization"]["from"] = SIGNER.address.lower()
    payload["authorization"]["to"] = PAY_TO.upper().replace("0X", "0x")
    payload["authorization"]["nonce"] = "0x" + "AB" * 32

    result = verify_exact(payload, requirements(), now=NOW)

    assert result.payer == SIGNER.address  # checksummed whatever the client sent
    assert result.pay_to == PAY_TO
    assert result.nonce == "0x" + "ab" * 32
    assert isinstance(result.value, int)
    assert isinstance(result.valid_before, int)


def test_authorization_is_immutable() -> None:
    result = verify_exact(signed(), requirements(), now=NOW)
    with pytest.raises(AttributeError):
        result.value = 1  # type: ignore[misc]


def test_leading_zeros_in_integers_are_the_same_number() -> None:
    payload = signed()
    payload["authorization"]["value"] = "00" + AMOUNT
    assert verify_exact(payload, requirements(), now=NOW).value == 10000


# --- requirement / payment mismatches (402) ---------------------------------------------------


def test_wrong_recipient() -> None:
    error = refused(lambda: verify_exact(signed(to=OTHER), requirements(), now=NOW))
    assert (error.status_code, error.code) == (402, "invalid_exact_evm_payload_recipient_mismatch")


@pytest.mark.parametrize("value", ["9999", "10001", "0", str(2**256 - 1)])
def test_amount_must_be_exact(value: str) -> None:
    error = refused(lambda: verify_exact(signed(value=value), requirements(), now=NOW))
    assert (error.status_code, error.code) == (
        402,
        "invalid_exact_evm_payload_authorization_value_mismatch",
    )


def test_expired() -> None:
    payload = signed(validBefore=str(NOW - 1))
    error = refused(lambda: verify_exact(payload, requirements(), now=NOW))
    assert (error.status_code, error.code) == (
        402,
        "invalid_exact_evm_payload_authorization_valid_before",
    )


def test_expiring_within_the_block_time_buffer() -> None:
    payload = signed(validBefore=str(NOW + 5))
    error = refused(lambda: verify_exact(payload, requirements(), now=NOW))
    assert error.code == "invalid_exact_evm_payload_authorization_valid_before"
    assert verify_exact(signed(validBefore=str(NOW + 6)), requirements(), now=NOW).recovered


def test_too_far_in_the_future() -> None:
    limit = NOW + TIMEOUT + 60  # maxTimeoutSeconds + default clock skew
    assert verify_exact(signed(validBefore=str(limit)), requirements(), now=NOW).recovered

    payload = signed(validBefore=str(limit + 1))
    error = refused(lambda: verify_exact(payload, requirements(), now=NOW))
    assert (error.status_code, error.code) == (
        402,
        "invalid_exact_evm_payload_authorization_valid_before",
    )
    assert "maxTimeoutSeconds" in error.message


def test_clock_skew_is_configurable() -> None:
    payload = signed(validBefore=str(NOW + TIMEOUT + 10))
    assert verify_exact(payload, requirements(), now=NOW, max_clock_skew=10).recovered
    error = refused(lambda: verify_exact(payload, requirements(), now=NOW, max_clock_skew=9))
    assert error.code == "invalid_exact_evm_payload_authorization_valid_before"


def test_zero_max_timeout_means_the_client_default_of_an_hour() -> None:
    req = requirements(max_timeout_seconds=0)
    assert verify_exact(signed(validBefore=str(NOW + 3600)), req, now=NOW).recovered
    error = refused(lambda: verify_exact(signed(validBefore=str(NOW + 3661)), req, now=NOW))
    assert error.code == "invalid_exact_evm_payload_authorization_valid_before"


def test_not_yet_valid() -> None:
    payload = signed(validAfter=str(NOW + 1))
    error = refused(lambda: verify_exact(payload, requirements(), now=NOW))
    assert (error.status_code, error.code) == (
        402,
        "invalid_exact_evm_payload_authorization_valid_after",
    )
    assert verify_exact(signed(validAfter=str(NOW)), requirements(), now=NOW).recovered


def test_signed_by_someone_else() -> None:
    payload = signed(Account.create())
    payload["authorization"]["from"] = SIGNER.address
    error = refused(lambda: verify_exact(payload, requirements(), now=NOW))
    assert (error.status_code, error.code) == (402, "invalid_exact_evm_payload_signature")


def test_tampered_field_breaks_the_signature() -> None:
    payload = signed()
    payload["authorization"]["nonce"] = "0x" + "cd" * 32
    error = refused(lambda: verify_exact(payload, requirements(), now=NOW))
    assert error.code == "invalid_exact_evm_payload_signature"


@pytest.mark.parametrize(
    "domain",
    [
        {"name": "USDC"},
        {"version": "1"},
        {"chain_id": 8453},
        {"contract": OTHER},
    ],
    ids=["name", "version", "chain", "contract"],
)
def test_signature_over_another_domain(domain: dict[str, Any]) -> None:
    payload = signed(SIGNER, domain)
    error = refused(lambda: verify_exact(payload, requirements(), now=NOW))
    assert (error.status_code, error.code) == (402, "invalid_exact_evm_payload_signature")


def test_zero_address_payer_is_refused_even_when_deferring() -> None:
    payload = signed(**{"from": ZERO})
    for allow in (False, True):
        error = refused(
            partial(verify_exact, payload, requirements(), now=NOW, allow_unrecovered=allow)
        )
        assert (error.status_code, error.code) == (402, "invalid_exact_evm_payload_signature")


def _split(payload: dict[str, Any]) -> tuple[int, int, int]:
    raw = bytes.fromhex(payload["signature"][2:])
    return int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:64], "big"), raw[64]


def test_high_s_twin_is_refused() -> None:
    payload = signed()
    r, s, v = _split(payload)
    high_s, flipped_v = SECP256K1_N - s, 55 - v  # 27 <-> 28
    twin = r.to_bytes(32, "big") + high_s.to_bytes(32, "big") + bytes((flipped_v,))
    # The twin is mathematically a signature by the same key (ecrecover would accept it) ...
    recovered = Signature(vrs=(flipped_v - 27, r, high_s)).recover_public_key_from_msg_hash(
        eth_account_digest(typed_data(payload["authorization"]))
    )
    assert recovered.to_checksum_address() == SIGNER.address
    # ... but EIP-3009 tokens refuse high s on chain, so it is refused here.
    error = refused(lambda: verify_exact(with_signature(payload, twin), requirements(), now=NOW))
    assert (error.status_code, error.code) == (402, "invalid_exact_evm_payload_signature")


@pytest.mark.parametrize("v_offset", [0, 27])
def test_v_as_recovery_id_or_27_28_is_accepted_and_normalised(v_offset: int) -> None:
    payload = signed()
    r, s, v = _split(payload)
    sent = r.to_bytes(32, "big") + s.to_bytes(32, "big") + bytes((v - 27 + v_offset,))

    result = verify_exact(with_signature(payload, sent), requirements(), now=NOW)

    assert result.recovered
    assert result.signature == r.to_bytes(32, "big") + s.to_bytes(32, "big") + bytes((v,))


@pytest.mark.parametrize("v", [2, 26, 29, 35, 255])
def test_other_v_values_are_refused(v: int) -> None:
    raw = bytes.fromhex(signed()["signature"][2:])
    payload = with_signature(signed(), raw[:64] + bytes((v,)))
    error = refused(lambda: verify_exact(payload, requirements(), now=NOW))
    assert error.code == "invalid_exact_evm_payload_signature"


@pytest.mark.parametrize(
    "signature",
    [
        bytes(65),  # r = s = 0
        b"\xff" * 64 + b"\x1b",  # r, s >= n
        bytes(32) + (1).to_bytes(32, "big") + b"\x1b",  # r = 0
        b"\x01" * 64,  # 64 bytes (EIP-2098 compact form is not what USDC takes)
        b"\x01" * 66,
    ],
    ids=["zeros", "overflow", "r-zero", "64-bytes", "66-bytes"],
)
def test_unusable_signatures_are_refused(signature: bytes) -> None:
    payload = with_signature(signed(), signature)
    error = refused(lambda: verify_exact(payload, requirements(), now=NOW))
    assert (error.status_code, error.code) == (402, "invalid_exact_evm_payload_signature")


def test_checks_run_in_the_reference_order() -> None:
    # Structure first, then recipient, amount, validBefore, validAfter, signature: fixing one
    # fault at a time reveals the next, as in the SDK verifier.
    payload = signed(
        Account.create(), to=OTHER, value="1", validBefore="1", validAfter=str(NOW + 9)
    )
    auth = payload["authorization"]
    auth["nonce"] = "0x12"
    fixes = [
        ("invalid_payload", "nonce", "0x" + "00" * 32),
        ("invalid_exact_evm_payload_recipient_mismatch", "to", PAY_TO),
        ("invalid_exact_evm_payload_authorization_value_mismatch", "value", AMOUNT),
        ("invalid_exact_evm_payload_authorization_valid_before", "validBefore", str(NOW + 60)),
        ("invalid_exact_evm_payload_authorization_valid_after", "validAfter", "0"),
    ]
    for code, field, good in fixes:
        assert refused(lambda: verify_exact(payload, requirements(), now=NOW)).code == code
        auth[field] = good
    error = refused(lambda: verify_exact(payload, requirements(), now=NOW))
    assert error.code == "invalid_exact_evm_payload_signature"


# --- the server's own requirement -------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        ({"scheme": "upto"}, "unsupported_scheme"),
        (
            {"network": "solana:5eykt4UsFv8P8NJdTREpY1vzqKqZKvdp"},
            "invalid_exact_evm_failed_to_get_network_config",
        ),
        ({"network": "eip155:0x1"}, "invalid_exact_evm_failed_to_get_network_config"),
        ({"extra": {}}, "missing_eip712_domain"),
        ({"extra": {"name": "USD Coin"}}, "missing_eip712_domain"),
        ({"extra": {"version": "2"}}, "missing_eip712_domain"),
        ({"extra": {"name": ["USD Coin"], "version": "2"}}, "missing_eip712_domain"),
        ({"extra": {"name": "", "version": "2"}}, "missing_eip712_domain"),
        (
            {"extra": {"name": "USD Coin", "version": "2", "assetTransferMethod": "permit2"}},
            "invalid_payment_requirements",
        ),
        ({"asset": "usdc"}, "invalid_payment_requirements"),
        ({"pay_to": "merchant"}, "invalid_payment_requirements"),
        ({"amount": "0.01"}, "invalid_payment_requirements"),
    ],
)
def test_unusable_requirements(changes: dict[str, Any], code: str) -> None:
    error = refused(lambda: verify_exact(signed(), requirements(**changes), now=NOW))
    assert (error.status_code, error.code) == (402, code)


def test_explicit_eip3009_transfer_method_is_fine() -> None:
    req = requirements(extra={"name": "USD Coin", "version": "2", "assetTransferMethod": "eip3009"})
    assert verify_exact(signed(), req, now=NOW).recovered


def test_pay_to_comparison_ignores_case() -> None:
    assert verify_exact(signed(), requirements(pay_to=PAY_TO.lower()), now=NOW).pay_to == PAY_TO


# --- malformed payloads (400 invalid_payload) -------------------------------------------------

_HEX40 = "70997970c51812dc3a010c7d01b50e0d17dc79c8"
BAD_FIELDS: list[tuple[str, object]] = [
    # addresses
    *[(f, None) for f in ("from", "to")],
    *[(f, 123) for f in ("from", "to")],
    *[
        (f, bad)
        for f in ("from", "to")
        for bad in (
            "",
            "0x",
            _HEX40,  # no prefix
            "0X" + _HEX40,
            "0x" + _HEX40[:-1],
            "0x" + _HEX40 + "0",
            "0x" + _HEX40[:-1] + "g",
            "0x" + _HEX40 + "\n",
            " 0x" + _HEX40,
            "0x" + _HEX40[:20] + " " + _HEX40[21:],
        )
    ],
    # uint256 decimal strings
    *[(f, None) for f in ("value", "validAfter", "validBefore")],
    *[
        (f, bad)
        for f in ("value", "validAfter", "validBefore")
        for bad in (
            10000,
            10000.0,
            True,
            "",
            "-1",
            "+1",
            " 1",
            "1 ",
            "1\n",
            "1.0",
            "1e4",
            "0x10",
            "1_000",
            "\u0663",  # ARABIC-INDIC DIGIT THREE: str.isdigit() says yes
            "\u00b2",  # SUPERSCRIPT TWO
            str(2**256),
            "9" * 79,
        )
    ],
    # nonce
    ("nonce", None),
    ("nonce", 5),
    ("nonce", "0x" + "ab" * 31),
    ("nonce", "0x" + "ab" * 33),
    ("nonce", "ab" * 32),
    ("nonce", "0x" + "ab" * 31 + "zz"),
    ("nonce", "0x" + "ab" * 32 + "\n"),
]


@pytest.mark.parametrize(("field", "bad"), BAD_FIELDS)
def test_malformed_authorization_field(field: str, bad: object) -> None:
    payload = signed()
    if bad is None:
        del payload["authorization"][field]
    else:
        payload["authorization"][field] = bad

    error = refused(lambda: verify_exact(payload, requirements(), now=NOW))

    assert (error.status_code, error.code) == (400, "invalid_payload")
    assert f"authorization.{field}" in error.message
    assert error.body == {"error": "invalid_payload", "message": error.message}


def test_json_null_counts_as_missing() -> None:
    payload = signed()
    payload["authorization"]["value"] = None
    error = refused(lambda: verify_exact(payload, requirements(), now=NOW))
    assert error.code == "invalid_payload"
    assert "missing" in error.message


@pytest.mark.parametrize(
    "bad",
    [
        None,
        65,
        b"\x01" * 65,
        "",
        "0x",
        "0X" + "11" * 65,
        "11" * 65,
        "0x" + "1" * 129,  # half a byte
        "0x" + "zz" * 65,
        "0x" + "11" * 32 + " " + "11" * 32,
        "0x" + "11" * 65 + "\n",
        "0x" + "\u0661" * 130,  # non-ASCII digits
        "0x" + "11" * (MAX_SIGNATURE_BYTES + 1),
    ],
)
def test_malformed_signature(bad: object) -> None:
    payload = signed()
    if bad is None:
        del payload["signature"]
    else:
        payload["signature"] = bad
    for allow in (False, True):
        error = refused(
            partial(verify_exact, payload, requirements(), now=NOW, allow_unrecovered=allow)
        )
        assert (error.status_code, error.code) == (400, "invalid_payload")
        assert "signature" in error.message


@pytest.mark.parametrize(
    "payload",
    [None, [], "0x", {}, {"signature": "0x" + "11" * 65}, {"authorization": [], "signature": "0x"}],
)
def test_malformed_payload_shape(payload: Any) -> None:
    error = refused(lambda: verify_exact(payload, requirements(), now=NOW))
    assert (error.status_code, error.code) == (400, "invalid_payload")


def test_error_messages_do_not_echo_client_input() -> None:
    payload = signed()
    payload["authorization"]["value"] = "<script>alert(1)</script>"
    error = refused(lambda: verify_exact(payload, requirements(), now=NOW))
    assert "script" not in error.message


def test_unknown_fields_are_ignored() -> None:
    payload = signed()
    payload["authorization"]["memo"] = "hello"
    payload["extra"] = {"anything": True}
    assert verify_exact(payload, requirements(), now=NOW).recovered


# --- smart wallets: allow_unrecovered ---------------------------------------------------------


def test_unrecovered_65_byte_signature_is_deferred_when_allowed() -> None:
    # A single-owner Safe signs with its owner key: 65 bytes that do not recover to `from`.
    payload = signed(Account.create())
    payload["authorization"]["from"] = OTHER

    default = refused(lambda: verify_exact(payload, requirements(), now=NOW))
    assert default.code == "invalid_exact_evm_payload_signature"

    result = verify_exact(payload, requirements(), now=NOW, allow_unrecovered=True)
    assert result.recovered is False
    assert result.payer == OTHER
    assert result.signature == bytes.fromhex(payload["signature"][2:])  # passed on untouched


def test_long_smart_wallet_signature_is_deferred_when_allowed() -> None:
    # ERC-6492 wrapper: abi(factory, calldata, signature) + the 32-byte magic suffix.
    wrapped = b"\x00" * 400 + bytes.fromhex("64" * 32)
    payload = with_signature(signed(), wrapped)

    default = refused(lambda: verify_exact(payload, requirements(), now=NOW))
    assert (default.status_code, default.code) == (402, "invalid_exact_evm_payload_signature")

    result = verify_exact(payload, requirements(), now=NOW, allow_unrecovered=True)
    assert (result.recovered, result.signature) == (False, wrapped)


def test_high_s_is_deferred_when_allowed() -> None:
    # For a contract wallet a high-s blob may mean something to its EIP-1271 check.
    payload = signed()
    r, s, v = _split(payload)
    twin = r.to_bytes(32, "big") + (SECP256K1_N - s).to_bytes(32, "big") + bytes((55 - v,))
    result = verify_exact(
        with_signature(payload, twin), requirements(), now=NOW, allow_unrecovered=True
    )
    assert result.recovered is False


def test_allow_unrecovered_still_recovers_eoas() -> None:
    result = verify_exact(signed(), requirements(), now=NOW, allow_unrecovered=True)
    assert result.recovered is True


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        ({"to": OTHER}, "invalid_exact_evm_payload_recipient_mismatch"),
        ({"value": "1"}, "invalid_exact_evm_payload_authorization_value_mismatch"),
        ({"validBefore": "1"}, "invalid_exact_evm_payload_authorization_valid_before"),
        ({"validAfter": str(NOW + 1)}, "invalid_exact_evm_payload_authorization_valid_after"),
    ],
)
def test_allow_unrecovered_skips_no_other_check(changes: dict[str, str], code: str) -> None:
    payload = with_signature(signed(**changes), b"\x00" * 200)
    error = refused(lambda: verify_exact(payload, requirements(), now=NOW, allow_unrecovered=True))
    assert (error.status_code, error.code) == (402, code)


# --- the digest is the EIP-712 digest everyone else computes ----------------------------------

addresses = st.binary(min_size=20, max_size=20).map(lambda raw: "0x" + raw.hex())
uint256 = st.integers(min_value=0, max_value=2**256 - 1)


@st.composite
def authorizations(draw: st.DrawFn) -> dict[str, str]:
    return {
        "from": draw(addresses),
        "to": draw(addresses),
        "value": str(draw(uint256)),
        "validAfter": str(draw(uint256)),
        "validBefore": str(draw(uint256)),
        "nonce": "0x" + draw(st.binary(min_size=32, max_size=32)).hex(),
    }


@settings(max_examples=300, deadline=None)
@given(
    auth=authorizations(),
    name=st.text(max_size=40),
    version=st.text(max_size=10),
    chain_id=st.integers(min_value=1, max_value=2**256 - 1),
    contract=addresses,
)
def test_digest_matches_eth_account_and_the_sdk(
    auth: dict[str, str], name: str, version: str, chain_id: int, contract: str
) -> None:
    ours = eip3009_digest(
        auth, name=name, version=version, chain_id=chain_id, verifying_contract=contract
    )
    theirs = eth_account_digest(
        typed_data(auth, name=name, version=version, chain_id=chain_id, contract=contract)
    )
    sdk = hash_eip3009_authorization(
        ExactEIP3009Authorization(
            from_address=auth["from"],
            to=auth["to"],
            value=auth["value"],
            valid_after=auth["validAfter"],
            valid_before=auth["validBefore"],
            nonce=auth["nonce"],
        ),
        chain_id,
        contract,
        name,
        version,
    )
    assert ours == theirs == sdk


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    key=st.binary(min_size=32, max_size=32).filter(
        lambda raw: 0 < int.from_bytes(raw, "big") < SECP256K1_N
    ),
    to=addresses,
    value=uint256,
    window=st.integers(min_value=6, max_value=86_400),
    nonce=st.binary(min_size=32, max_size=32),
    name=st.text(min_size=1, max_size=20),
    version=st.text(min_size=1, max_size=5),
    chain_id=st.integers(min_value=1, max_value=10**18),
    contract=addresses,
)
def test_any_wallet_signed_authorization_verifies(
    key: bytes,
    to: str,
    value: int,
    window: int,
    nonce: bytes,
    name: str,
    version: str,
    chain_id: int,
    contract: str,
) -> None:
    account: LocalAccount = Account.from_key(key)
    domain = {"name": name, "version": version, "chain_id": chain_id, "contract": contract}
    payload = signed(
        account,
        domain,
        to=to,
        value=str(value),
        validBefore=str(NOW + window),
        nonce="0x" + nonce.hex(),
    )
    req = requirements(
        network=f"eip155:{chain_id}",
        asset=contract,
        amount=str(value),
        pay_to=to,
        max_timeout_seconds=window,
        extra={"name": name, "version": version},
    )

    result = verify_exact(payload, req, now=NOW)

    assert result.recovered
    assert result.payer == account.address
    assert result.value == value


def test_digest_refuses_malformed_input() -> None:
    auth = signed()["authorization"]
    domain: dict[str, Any] = {"name": "USD Coin", "version": "2", "chain_id": CHAIN_ID}
    with pytest.raises(ValueError, match="verifying_contract"):
        eip3009_digest(auth, verifying_contract="0x1234", **domain)
    error = refused(
        lambda: eip3009_digest({**auth, "value": "-1"}, verifying_contract=TOKEN, **domain)
    )
    assert (error.status_code, error.code) == (400, "invalid_payload")


def test_digest_is_what_the_official_client_signed(
    official_payment: tuple[dict[str, Any], PaymentRequirements, str],
) -> None:
    payload, _, payer = official_payment
    digest = eip3009_digest(
        payload["authorization"],
        name="USD Coin",
        version="2",
        chain_id=CHAIN_ID,
        verifying_contract=TOKEN,
    )
    raw = bytes.fromhex(payload["signature"][2:])
    signature = Signature(raw[:64] + bytes((raw[64] - 27,)))  # eth-keys wants v as 0/1
    assert signature.recover_public_key_from_msg_hash(digest).to_checksum_address() == payer
