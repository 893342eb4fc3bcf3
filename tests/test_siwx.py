"""Sign-in-with-x for returning payers: challenges, verification and the official client."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import pytest
from eth_account import Account
from eth_account.messages import encode_defunct

from x402gate.errors import PaymentError
from x402gate.siwx import SignInWithX, format_eip4361

URL = "https://api.example.com/v1/chat"
NETWORKS = ["eip155:8453"]


def answer(challenge: dict[str, Any], account: Any, **override: Any) -> str:
    """What a wallet sends back: the challenge fields, its address and an EIP-191 signature."""
    fields = {**challenge["info"], "chainId": "eip155:8453", "type": "eip191", **override}
    message = format_eip4361(fields, account.address, int(fields["chainId"].split(":")[1]))
    signed = account.sign_message(encode_defunct(text=message))
    payload = {
        **fields,
        "address": account.address,
        "signature": "0x" + signed.signature.hex().removeprefix("0x"),
    }
    return base64.b64encode(json.dumps(payload).encode()).decode()


@pytest.fixture
def siwx() -> SignInWithX:
    return SignInWithX(b"s" * 32)


def test_a_signed_challenge_names_the_wallet(siwx: SignInWithX) -> None:
    now = time.time()
    account = Account.create()
    challenge = siwx.declaration(URL, NETWORKS, now)
    assert challenge["info"]["domain"] == "api.example.com"
    assert challenge["supportedChains"] == [{"chainId": "eip155:8453", "type": "eip191"}]
    proof = siwx.verify(answer(challenge, account), URL, NETWORKS, now + 1)
    assert proof.address == account.address and proof.network == "eip155:8453"


def test_message_layout_follows_eip4361() -> None:
    fields = {
        "domain": "example.com",
        "uri": "https://example.com/a",
        "version": "1",
        "nonce": "abcdef12",
        "issuedAt": "2026-01-01T00:00:00Z",
        "expirationTime": "2026-01-01T00:05:00Z",
        "statement": "Sign in.",
        "resources": ["https://example.com/a"],
    }
    assert format_eip4361(fields, "0xAbC", 8453) == (
        "example.com wants you to sign in with your Ethereum account:\n0xAbC\n\nSign in.\n\n"
        "URI: https://example.com/a\nVersion: 1\nChain ID: 8453\nNonce: abcdef12\n"
        "Issued At: 2026-01-01T00:00:00Z\nExpiration Time: 2026-01-01T00:05:00Z\n"
        "Resources:\n- https://example.com/a"
    )


@pytest.mark.parametrize(
    ("tamper", "code"),
    [
        ({"nonce": "f" * 48}, "invalid_siwx_nonce"),  # a challenge this server never issued
        ({"expirationTime": "2099-01-01T00:00:00Z"}, "invalid_siwx_nonce"),  # stretched
        ({"domain": "evil.example"}, "invalid_siwx_domain"),
        ({"uri": "https://evil.example/v1/chat"}, "invalid_siwx_uri"),
        ({"chainId": "eip155:1"}, "invalid_siwx_chain"),
    ],
)
def test_tampered_sign_ins_are_refused(
    siwx: SignInWithX, tamper: dict[str, str], code: str
) -> None:
    now = time.time()
    challenge = siwx.declaration(URL, NETWORKS, now)
    with pytest.raises(PaymentError) as info:
        siwx.verify(answer(challenge, Account.create(), **tamper), URL, NETWORKS, now)
    assert info.value.code == code


def test_a_signature_by_another_wallet_is_refused(siwx: SignInWithX) -> None:
    now = time.time()
    challenge = siwx.declaration(URL, NETWORKS, now)
    header = json.loads(base64.b64decode(answer(challenge, Account.create())))
    header["address"] = Account.create().address  # claims a wallet it did not sign for
    with pytest.raises(PaymentError) as info:
        siwx.verify(base64.b64encode(json.dumps(header).encode()).decode(), URL, NETWORKS, now)
    assert info.value.code == "invalid_siwx_signature"


def test_an_expired_challenge_is_refused(siwx: SignInWithX) -> None:
    now = time.time()
    challenge = siwx.declaration(URL, NETWORKS, now)
    with pytest.raises(PaymentError) as info:
        siwx.verify(answer(challenge, Account.create()), URL, NETWORKS, now + 301)
    assert info.value.code == "invalid_siwx_expired"


@pytest.mark.parametrize(
    "header",
    ["", "!!!", base64.b64encode(b"[]").decode(), base64.b64encode(b'{"domain": 1}').decode()],
)
def test_malformed_headers_are_refused(siwx: SignInWithX, header: str) -> None:
    with pytest.raises(PaymentError) as info:
        siwx.verify(header, URL, NETWORKS, time.time())
    assert info.value.code.startswith("invalid_siwx")


ORIGINS = ["https://api.example.com"]


def test_the_signed_origin_must_be_a_configured_one(siwx: SignInWithX) -> None:
    now = time.time()
    account = Account.create()
    # A challenge the server itself issued while its Host header said "evil.example".
    relayed = siwx.declaration("https://evil.example/v1/chat", NETWORKS, now)
    with pytest.raises(PaymentError) as info:
        siwx.verify(answer(relayed, account), URL, NETWORKS, now, origins=ORIGINS)
    assert info.value.code == "invalid_siwx_domain"
    genuine = siwx.declaration(URL, NETWORKS, now)
    proof = siwx.verify(answer(genuine, account), URL, NETWORKS, now, origins=ORIGINS)
    assert proof.address == account.address


def test_a_sign_in_is_for_the_resource_it_was_issued_for(siwx: SignInWithX) -> None:
    now = time.time()
    challenge = siwx.declaration(URL, NETWORKS, now)
    with pytest.raises(PaymentError) as info:
        siwx.verify(
            answer(challenge, Account.create()),
            "https://api.example.com/v1/other",
            NETWORKS,
            now,
            origins=ORIGINS,
        )
    assert info.value.code == "invalid_siwx_uri"


@pytest.mark.parametrize(
    ("tamper", "code"),
    [
        ({"statement": "Sign in to evil.example."}, "invalid_siwx_nonce"),
        ({"resources": ["https://api.example.com/admin"]}, "invalid_siwx_nonce"),
        ({"issuedAt": "2026-01-01T00:00:01Z"}, "invalid_siwx_nonce"),
        ({"requestId": "abc"}, "invalid_siwx_header"),
        ({"notBefore": "2026-01-01T00:00:00Z"}, "invalid_siwx_header"),
        ({"notBefore": 5}, "invalid_siwx_header"),
        ({"resources": "https://api.example.com/v1/chat"}, "invalid_siwx_header"),
        ({"resources": [1]}, "invalid_siwx_header"),
        ({"statement": None}, "invalid_siwx_header"),
        ({"uri": "http://[::1/v1/chat"}, "invalid_siwx_uri"),
        ({"domain": ["api.example.com"]}, "invalid_siwx_header"),
        ({"expirationTime": 10**30}, "invalid_siwx_expired"),
        ({"chainId": "solana:mainnet"}, "invalid_siwx_chain"),
        ({"type": "eip1271"}, "invalid_siwx_header"),
    ],
)
def test_every_signed_field_is_checked(
    siwx: SignInWithX, tamper: dict[str, Any], code: str
) -> None:
    now = time.time()
    challenge = siwx.declaration(URL, NETWORKS, now)
    networks = [*NETWORKS, "solana:mainnet"]
    with pytest.raises(PaymentError) as info:
        # Signed as tampered: only the server's own checks stand between it and the credit.
        # (a wallet cannot sign EIP-4361 for a non-numeric chain: that one goes unsigned)
        signed = "chainId" not in tamper
        header = (
            answer(challenge, Account.create(), **tamper)
            if signed
            else _unsigned(challenge, **tamper)
        )
        siwx.verify(header, URL, networks, now, origins=ORIGINS)
    assert info.value.code == code


def _unsigned(challenge: dict[str, Any], **override: Any) -> str:
    fields = {**challenge["info"], "chainId": "eip155:8453", "type": "eip191", **override}
    payload = {**fields, "address": "0x" + "1" * 40, "signature": "0x" + "ab" * 65}
    return base64.b64encode(json.dumps(payload).encode()).decode()
