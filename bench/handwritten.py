"""Hand-written infrastructure vs the library it stands in for: what keeping it is worth.

    .venv/bin/python bench/handwritten.py [--n 5000] [--calls 500] [--rounds 3]

Two places where x402gate does not use the well-known library's code path:

* **the EIP-712 digest** of an EIP-3009 ``TransferWithAuthorization`` (``verify.py``,
  :func:`x402gate.verify.eip3009_digest`: fixed-layout bytes hashed with keccak) vs eth-account's
  ``encode_typed_data(full_message=...)`` and the EIP-191 hash of the result, for the same
  authorization; both digests are checked equal first. µs per digest, no I/O.
* **the JSON-RPC transport** (``_rpc.py``, :class:`x402gate._rpc.JsonRpcTransport`: one
  keep-alive ``http.client`` connection per thread) vs web3's ``HTTPProvider`` (requests), both
  under ``Web3`` doing ``eth_call`` of the test token's ``balanceOf`` on the local anvil chain,
  and both as bare providers (``make_request("eth_call", ...)``). Wall time and this process's
  CPU time per call (the CPU is what a facilitator pays a dozen times per settlement).

Rounds interleave the two sides; medians over the rounds are printed with their range.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import git_state, header, print_table

AUTHORIZATION = {
    "from": "0x857b06519E91e3A54538791bDbb0E22373e36b66",
    "to": "0x209693Bc6afc0C5328bA36FaF03C514EF312287C",
    "value": "10000",
    "validAfter": "0",
    "validBefore": "1893456000",
    "nonce": "0x" + "ab" * 32,
}
DOMAIN = {
    "name": "USD Coin",
    "version": "2",
    "chainId": 84532,
    "verifyingContract": "0x036CbD53842c5426634e7929541eC2318f3dCF7e",
}


def timed(function: Callable[[], Any], n: int) -> tuple[float, float]:
    """Median wall µs per call over ``n`` calls, and CPU µs per call of this process."""
    clock = time.perf_counter_ns
    samples = []
    gc.collect()
    gc.disable()
    cpu = time.process_time()
    try:
        for _ in range(n):
            start = clock()
            function()
            samples.append(clock() - start)
    finally:
        gc.enable()
    cpu_us = (time.process_time() - cpu) / n * 1e6
    return statistics.median(samples) / 1000, cpu_us


def digests() -> dict[str, Callable[[], Any]]:
    from eth_account.messages import encode_typed_data
    from eth_hash.auto import keccak

    from x402gate.testing.payments import TRANSFER_WITH_AUTHORIZATION_TYPES
    from x402gate.verify import eip3009_digest

    def ours() -> bytes:
        return eip3009_digest(
            AUTHORIZATION,
            name=DOMAIN["name"],  # type: ignore[arg-type]
            version=DOMAIN["version"],  # type: ignore[arg-type]
            chain_id=DOMAIN["chainId"],  # type: ignore[arg-type]
            verifying_contract=DOMAIN["verifyingContract"],  # type: ignore[arg-type]
        )

    def eth_account() -> bytes:
        message = {
            "from": AUTHORIZATION["from"],
            "to": AUTHORIZATION["to"],
            "value": int(AUTHORIZATION["value"]),
            "validAfter": int(AUTHORIZATION["validAfter"]),
            "validBefore": int(AUTHORIZATION["validBefore"]),
            "nonce": bytes.fromhex(AUTHORIZATION["nonce"][2:]),
        }
        signable = encode_typed_data(
            full_message={
                "types": TRANSFER_WITH_AUTHORIZATION_TYPES,
                "primaryType": "TransferWithAuthorization",
                "domain": DOMAIN,
                "message": message,
            }
        )
        digest: bytes = keccak(b"\x19" + signable.version + signable.header + signable.body)
        return digest

    if ours() != eth_account():
        raise SystemExit("the two digests differ: the comparison would be meaningless")
    return {"x402gate eip3009_digest": ours, "eth-account encode_typed_data + keccak": eth_account}


def rpc_calls(rpc_url: str, token: str, holder: str) -> tuple[dict[str, Callable[[], Any]], Any]:
    from web3 import Web3
    from web3.providers.rpc import HTTPProvider

    from x402gate._rpc import JsonRpcTransport

    ours, theirs = JsonRpcTransport(rpc_url), HTTPProvider(rpc_url)
    data = "0x70a08231" + "00" * 12 + holder[2:].lower()  # balanceOf(holder)
    call = {"to": token, "data": data}
    w3_ours, w3_theirs = Web3(ours), Web3(theirs)
    expected = w3_theirs.eth.call(call)  # type: ignore[arg-type]
    if w3_ours.eth.call(call) != expected:  # type: ignore[arg-type]
        raise SystemExit("the two transports disagree: the comparison would be meaningless")
    params = [call, "latest"]
    functions = {
        "Web3(JsonRpcTransport).eth.call": lambda: w3_ours.eth.call(call),  # type: ignore[arg-type]
        "Web3(HTTPProvider).eth.call": lambda: w3_theirs.eth.call(call),  # type: ignore[arg-type]
        "JsonRpcTransport.make_request": lambda: ours.make_request("eth_call", params),
        "HTTPProvider.make_request": lambda: theirs.make_request("eth_call", params),
    }
    return functions, ours


def run(
    functions: dict[str, Callable[[], Any]], n: int, rounds: int
) -> dict[str, list[tuple[float, float]]]:
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in functions}
    for function in functions.values():  # warm-up: imports, caches, connections
        for _ in range(min(n, 200)):
            function()
    names = list(functions)
    for round_ in range(rounds):
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
            results[name].append(timed(functions[name], n))
    return results


def table(results: dict[str, list[tuple[float, float]]], baseline: str) -> None:
    rows = []
    base = statistics.median(wall for wall, _ in results[baseline])
    for name, samples in results.items():
        walls = [wall for wall, _ in samples]
        cpus = [cpu for _, cpu in samples]
        wall = statistics.median(walls)
        rows.append(
            [
                name,
                f"{wall:.1f}",
                f"{min(walls):.1f}-{max(walls):.1f}",
                f"{statistics.median(cpus):.1f}",
                f"{wall / base:.2f}",
            ]
        )
    print_table(["path", "median µs/call", "range over rounds", "CPU µs/call", "ratio"], rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000, help="digests per round and path")
    parser.add_argument("--calls", type=int, default=500, help="RPC calls per round and path")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("PYTHONHASHSEED", "0")
    print(
        header(
            "x402gate hand-written infrastructure vs libraries",
            ["x402gate", "eth-account", "eth-hash", "pycryptodome", "web3", "requests"],
            [git_state(), f"n={args.n} digests, {args.calls} calls, rounds {args.rounds}"],
        )
    )
    print("## EIP-712 digest of a TransferWithAuthorization (no I/O)\n")
    table(run(digests(), args.n, args.rounds), "x402gate eip3009_digest")

    from x402gate.testing.chain import LocalChain

    with LocalChain() as chain:
        token = chain.deploy_token()
        holder = chain.new_account(eth_wei=0, token=token, token_amount=1_000_000).address
        functions, transport = rpc_calls(chain.rpc_url, token.address, holder)
        try:
            print("\n## eth_call balanceOf on the local anvil chain (one process, loopback)\n")
            table(run(functions, args.calls, args.rounds), "Web3(JsonRpcTransport).eth.call")
        finally:
            transport.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
