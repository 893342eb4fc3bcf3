"""CI check: start ``app.py --local`` with a tier after 3 paid calls, pay 4 calls sending the
session token back, and check that the fourth is quoted and charged the lower price, that an
anonymous request is still quoted the full price, and that ``x402gate report`` counts the
revenue; exit 0 on success.

Run from the repository: ``python examples/tiered_prices/check.py`` (anvil must be findable,
see ``X402GATE_ANVIL``).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # the repository: examples/_check.py is shared

from examples._check import CheckFailed, start_example, stop  # noqa: E402

FULL, CHEAP = 10_000, 5_000  # atomic units of the test USDC (6 decimals)
SESSION = "X402GATE-SESSION"


def quoted(url: str, headers: dict[str, str]) -> int:
    import requests

    from x402gate.testing.payments import decode_payment_required

    answer = requests.get(url, headers=headers, timeout=30)
    if answer.status_code != 402:
        raise CheckFailed(f"expected a 402, got {answer.status_code}")
    (offer,) = decode_payment_required(answer.headers["payment-required"]).accepts
    return int(offer.amount)


def run(ready: dict[str, Any]) -> None:
    from x402gate import Asset
    from x402gate.cli import main
    from x402gate.testing.clients import paying_requests_session

    url = ready["url"] + "/weather/lisbon"
    session = paying_requests_session(ready["buyer_key"], asset=Asset(**ready["asset"]))
    headers: dict[str, str] = {}
    for n in range(4):
        expected = CHEAP if n == 3 else FULL
        if quoted(url, headers) != expected:
            raise CheckFailed(f"call {n + 1}: expected a quote of {expected}")
        paid = session.get(url, headers=headers, timeout=30)
        if paid.status_code != 200 or paid.json()["paid"] != expected:
            raise CheckFailed(f"call {n + 1}: expected 200 paying {expected}, got {paid.text}")
        headers = {SESSION: paid.headers[SESSION]}
        print(f"call {n + 1}: paid {expected}")
    if quoted(url, {}) != FULL:
        raise CheckFailed("an anonymous request must be quoted the full price")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        main(["report", "--store", ready["store"], "--format", "json"])
    (total,) = json.loads(out.getvalue())["totals"]
    if int(total["earned"]) != 3 * FULL + CHEAP or total["requests"] != 4:
        raise CheckFailed(f"the report does not add up: {total}")
    print(f"report: earned {total['earned']} in {total['requests']} paid requests")


if __name__ == "__main__":
    os.environ["TIER_AFTER"] = "3"  # the child inherits it: cheaper after 3 paid calls
    process, ready = start_example(HERE / "app.py")
    try:
        run(ready)
    finally:
        stop(process)
    sys.exit(0)
