"""Benchmark: x402gate's local EIP-3009 pre-verification against the official SDK's.

Run with ``.venv/bin/python bench/verify.py [--n 3000] [--repeats 3]``. No chain, no network.

One payload is signed by the official client (``x402ClientSync`` + ``register_exact_evm_client``
with an eth-account key) for a made-up token on ``eip155:31337``; every path then verifies that
same payload, and each path is first checked to accept it. Paths:

* ``x402gate verify_exact``: the function under test (all checks, EIP-712 digest, ecrecover).
* ``SDK ExactEvmScheme._verify``: the official facilitator scheme's verification with
  ``simulate=False`` and an in-memory signer whose ``eth_getCode`` says "EOA payer, deployed
  token", i.e. the SDK's whole EOA path minus RPC latency.
* ``SDK hash + verify_eoa_signature``: just the crypto core of the path above
  (``hash_eip3009_authorization`` + ``verify_eoa_signature``).
* ``eth-account typed data + recover``: what ``FacilitatorWeb3Signer.verify_typed_data`` does for
  an EOA (``encode_typed_data`` + ``Account.recover_message``).

Each repeat times every path in turn (round-robin, so background noise hits all of them), one
``perf_counter_ns`` reading per call, garbage collector paused during a batch. The table gives
the median and 90th percentile over all repeats, and official/x402gate as the ratio of medians.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from eth_account import Account
from eth_account.messages import encode_typed_data
from x402 import x402ClientSync
from x402.mechanisms.evm import EthAccountSigner
from x402.mechanisms.evm.eip712 import hash_eip3009_authorization
from x402.mechanisms.evm.exact import ExactEvmFacilitatorScheme, register_exact_evm_client
from x402.mechanisms.evm.types import ExactEIP3009Payload
from x402.mechanisms.evm.verify import verify_eoa_signature
from x402.schemas import PaymentPayload, PaymentRequired, PaymentRequirements, ResourceInfo

from x402gate.testing.payments import TRANSFER_WITH_AUTHORIZATION_TYPES
from x402gate.verify import verify_exact

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import git_state, header

TOKEN = "0x5FbDB2315678afecb367f032d93F642f64180aa3"  # made up: nothing is deployed anywhere
PAY_TO = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
NETWORK = "eip155:31337"
WARM_UP = 200


class OfflineFacilitatorSigner:
    """Just enough of FacilitatorEvmSigner for the SDK's verify to run with no chain."""

    def get_addresses(self) -> list[str]:
        return []

    def get_code(self, address: str) -> bytes:
        # The payer is an EOA (no code); the token is "deployed".
        return b"\x60\x80" if address.lower() == TOKEN.lower() else b""


def make_payment() -> tuple[PaymentPayload, PaymentRequirements]:
    requirements = PaymentRequirements(
        scheme="exact",
        network=NETWORK,
        asset=TOKEN,
        amount="10000",
        pay_to=PAY_TO,
        max_timeout_seconds=300,
        extra={"name": "USD Coin", "version": "2"},
    )
    client = register_exact_evm_client(x402ClientSync(), EthAccountSigner(Account.create()))
    # The official client pays only tokens it knows unless told otherwise.
    client.set_spend_controls(
        {
            "allowed_assets": [
                {"network": NETWORK, "asset": TOKEN, "max_amount_per_payment": "10000"}
            ]
        }
    )
    payment = client.create_payment_payload(
        PaymentRequired(
            x402_version=2,
            resource=ResourceInfo(url="https://api.example/paid"),
            accepts=[requirements],
        )
    )
    assert isinstance(payment, PaymentPayload)  # v2 requirements give a v2 payload
    return payment, requirements


def paths(
    payment: PaymentPayload, requirements: PaymentRequirements
) -> dict[str, Callable[[], Any]]:
    payload = payment.payload
    now = time.time()  # the SDK reads the wall clock itself; give x402gate the same instant
    scheme = ExactEvmFacilitatorScheme(OfflineFacilitatorSigner())  # type: ignore[arg-type]
    chain_id = int(NETWORK.split(":")[1])
    signature = bytes.fromhex(payload["signature"][2:])

    def x402gate() -> bool:
        return verify_exact(payload, requirements, now=now).recovered

    def sdk_scheme() -> bool:
        response, _ = scheme._verify(payment, requirements, simulate=False)
        return bool(response.is_valid)

    def sdk_core() -> bool:
        authorization = ExactEIP3009Payload.from_dict(payload).authorization
        digest = hash_eip3009_authorization(authorization, chain_id, TOKEN, "USD Coin", "2")
        return bool(verify_eoa_signature(digest, signature, authorization.from_address))

    def eth_account() -> bool:
        authorization = payload["authorization"]
        typed = {
            "types": TRANSFER_WITH_AUTHORIZATION_TYPES,
            "primaryType": "TransferWithAuthorization",
            "domain": {
                "name": "USD Coin",
                "version": "2",
                "chainId": chain_id,
                "verifyingContract": TOKEN,
            },
            "message": {
                "from": authorization["from"],
                "to": authorization["to"],
                "value": int(authorization["value"]),
                "validAfter": int(authorization["validAfter"]),
                "validBefore": int(authorization["validBefore"]),
                "nonce": authorization["nonce"],
            },
        }
        signable = encode_typed_data(full_message=typed)
        recovered = Account.recover_message(signable, signature=signature)
        return bool(recovered.lower() == authorization["from"].lower())

    return {
        "x402gate verify_exact": x402gate,
        "SDK ExactEvmScheme._verify (no RPC)": sdk_scheme,
        "SDK hash + verify_eoa_signature": sdk_core,
        "eth-account typed data + recover": eth_account,
    }


def time_batch(function: Callable[[], Any], n: int) -> list[int]:
    clock = time.perf_counter_ns
    samples = []
    gc.collect()
    gc.disable()
    try:
        for _ in range(n):
            start = clock()
            function()
            samples.append(clock() - start)
    finally:
        gc.enable()
    return samples


def percentile(samples: list[int], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] / 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=3000, help="timed calls per path and repeat")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    payment, requirements = make_payment()
    candidates = paths(payment, requirements)
    for name, function in candidates.items():
        if function() is not True:
            sys.exit(f"{name} does not accept the official client's payment")
        for _ in range(WARM_UP):
            function()

    samples: dict[str, list[int]] = {name: [] for name in candidates}
    started = time.perf_counter()
    for _ in range(args.repeats):
        for name, function in candidates.items():
            samples[name] += time_batch(function, args.n)
    elapsed = time.perf_counter() - started

    print(
        header(
            "x402gate verify benchmark",
            ["x402", "eth-account", "coincurve", "eth-hash", "pycryptodome"],
            [
                git_state(),
                f"{args.repeats} repeats x {args.n} calls per path after {WARM_UP} warm-up calls "
                f"({elapsed:.1f} s); µs per verification",
            ],
        )
    )
    baseline = statistics.median(samples["x402gate verify_exact"]) / 1000
    print(f"| {'path':38} | {'median':>7} | {'p90':>7} | {'official/x402gate':>17} |")
    print(f"|{'-' * 40}|{'-' * 9}|{'-' * 9}|{'-' * 19}|")
    for name, timings in samples.items():
        median = statistics.median(timings) / 1000
        ratio = "" if name.startswith("x402gate") else f"{median / baseline:.2f}x"
        print(f"| {name:38} | {median:7.1f} | {percentile(timings, 0.9):7.1f} | {ratio:>17} |")


if __name__ == "__main__":
    main()
