"""Coverage-guided fuzzing of the payment header decoder, with atheris (libFuzzer).

Each input is one ``PAYMENT-SIGNATURE`` or ``X-PAYMENT`` header; it goes through what the gate
does before any store or network call: :func:`x402gate.protocol.decode_payment`,
:func:`~x402gate.protocol.match_requirements` against a fixed requirement, and
:func:`x402gate.verify.verify_exact` (fields, window, EIP-712 signature). The oracles:

* the only exception allowed is :class:`~x402gate.errors.PaymentError` with the status of its
  stage (decode: 400 ``invalid_payment_header``; match: 402; verify: 400 or 402); anything else
  (``KeyError``, ``TypeError``, ``UnicodeError``, a pydantic error escaping, ...) is a crash;
* a payment that passes verification carries exactly the authorization of the seed payment
  (the only one signed by the key): any other accepted authorization would be a forgery.

The first byte of an input picks the mode: ``& 3`` = 0 the rest is the raw header value
(latin-1), 1 the rest is base64-encoded by the harness (so the fuzzer works on the JSON text),
2 the same but the rest is the JSON of ``payload`` only, inside a valid envelope; ``& 4`` picks
``X-PAYMENT`` instead of ``PAYMENT-SIGNATURE``. Seeds (a valid v2 payment, its v1 form, its raw
header) are written to the corpus directory at start, and a dictionary of x402 field names and
values is given to libFuzzer.

Run it (budget: ``-max_total_time`` seconds or ``-runs`` inputs; default
``X402GATE_FUZZ_SECONDS`` or 60 s)::

    .venv/bin/python tests/fuzz/fuzz_payment_header.py                 # 60 s
    .venv/bin/python tests/fuzz/fuzz_payment_header.py -runs=200000
    X402GATE_FUZZ_SECONDS=600 .venv/bin/python tests/fuzz/fuzz_payment_header.py [CORPUS_DIR]

It needs ``atheris`` (``pip install atheris``; wheels for CPython 3.11-3.13 on Linux x86-64).
A crash writes the input to ``crash-*`` under ``X402GATE_FUZZ_ARTIFACTS`` (default: a temporary
directory, printed) and exits non-zero.
"""

from __future__ import annotations

import base64
import json
import sys
from typing import Any

import atheris

with atheris.instrument_imports(include=["x402gate", "x402"]):
    import x402.schemas

    from x402gate import protocol, verify
    from x402gate.errors import PaymentError

import known
from _harness import run

NOW = 1_900_000_000
KEY = "0x" + "42" * 32  # a key for this harness only
NONCE = "0x" + "11" * 32
HEADERS = (protocol.PAYMENT_SIGNATURE, protocol.X_PAYMENT)

REQUIREMENTS = x402.schemas.PaymentRequirements(
    scheme="exact",
    network="eip155:31337",
    asset="0x5FbDB2315678afecb367f032d93F642f64180aa3",
    amount="10000",
    pay_to="0x70997970C51812dc3A010C7d01b50e0d17dc79C8",
    max_timeout_seconds=300,
    extra={"name": "USD Coin", "version": "2"},
)
ACCEPTS = [REQUIREMENTS]


def _seed_payment() -> dict[str, Any]:
    from eth_account import Account

    from x402gate.testing.payments import encode_payment, sign_exact_payment

    payload = sign_exact_payment(
        Account.from_key(KEY), REQUIREMENTS, valid_before=NOW + 300, nonce=NONCE
    )
    document: dict[str, Any] = json.loads(base64.b64decode(encode_payment(payload)))
    return document


SEED = _seed_payment()
SEED_AUTHORIZATION = SEED["payload"]["authorization"]


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def header_of(data: bytes) -> tuple[str, str]:
    """(header name, header value) for one fuzzer input."""
    if not data:
        return HEADERS[0], ""
    mode, rest = data[0], data[1:]
    name = HEADERS[1] if mode & 4 else HEADERS[0]
    if mode & 3 == 0:
        return name, rest.decode("latin-1")
    if mode & 3 == 2:
        envelope = json.dumps({**SEED, "payload": "@PAYLOAD@"}).encode()
        return name, _b64(envelope.replace(b'"@PAYLOAD@"', rest))
    return name, _b64(rest)


def check_one(data: bytes) -> str:
    """The property, for one input; raises on a violation, else returns the stage reached."""
    name, value = header_of(data)
    try:
        decoded = protocol.decode_payment({name: value})
    except PaymentError as exc:
        assert (exc.status_code, exc.code) == (400, "invalid_payment_header"), exc
        return "refused by the decoder"
    assert decoded is not None
    try:
        requirements = protocol.match_requirements(decoded, ACCEPTS)
    except PaymentError as exc:
        assert exc.status_code == 402, exc
        return "refused as other terms"
    try:
        authorization = verify.verify_exact(decoded.payload.payload, requirements, now=NOW)
    except PaymentError as exc:
        assert exc.status_code in (400, 402), exc
        return "refused by verification"
    accepted = {
        "from": authorization.payer,
        "to": authorization.pay_to,
        "value": str(authorization.value),
        "validAfter": str(authorization.valid_after),
        "validBefore": str(authorization.valid_before),
        "nonce": authorization.nonce,
    }
    assert accepted == SEED_AUTHORIZATION, f"forged authorization accepted: {accepted}"
    return "accepted"


def seeds() -> list[bytes]:
    v2 = json.dumps(SEED).encode()
    v1 = json.dumps(
        {"x402Version": 1, "scheme": "exact", "network": "eip155:31337", "payload": SEED["payload"]}
    ).encode()
    payload = json.dumps(SEED["payload"]).encode()
    return [
        b"\x01" + v2,
        b"\x05" + v1,
        b"\x02" + payload,
        b"\x00" + _b64(v2).encode(),
        b"\x04" + _b64(v1).encode(),
    ]


DICTIONARY = [
    "x402Version",
    "accepted",
    "payload",
    "authorization",
    "signature",
    "from",
    "to",
    "value",
    "validAfter",
    "validBefore",
    "nonce",
    "scheme",
    "network",
    "asset",
    "amount",
    "payTo",
    "maxTimeoutSeconds",
    "extra",
    "resource",
    "extensions",
    "exact",
    "eip155:31337",
    "USD Coin",
    "0x",
    "null",
    "true",
    "1e400",
    "\\u0000",
    "\\ud800",
]


def main(argv: list[str]) -> None:
    # The seeds are valid payments: if they did not pass, the forgery oracle would be dead.
    stages = {check_one(seed) for seed in seeds()}
    assert stages == {"accepted"}, stages
    run(
        "payment_header",
        check_one,
        argv,
        seeds=seeds(),
        dictionary=DICTIONARY,
        known=known.FINDINGS["payment_header"],
    )


if __name__ == "__main__":
    main(sys.argv)
