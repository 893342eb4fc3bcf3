"""Spend limits and session tokens of the buyer client, without a chain."""

from __future__ import annotations

import threading

import httpx
import pytest

from x402gate.client import SpendLimitExceeded, SpendLimits, http_client
from x402gate.client.limits import Budget
from x402gate.client.transport import MAX_ORIGINS, MAX_TOKEN_CHARS, SessionTokens
from x402gate.credit import SESSION_HEADER
from x402gate.errors import ConfigurationError

KEY = "0x" + "5a" * 32
USDC = ("eip155:8453", "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913")


def test_limits_are_prices_scaled_to_the_token() -> None:
    limits = SpendLimits.parse("$0.10", "2", 20)
    assert limits == SpendLimits(
        max_per_request=100_000, max_deposit=2_000_000, max_total=20_000_000
    )
    budget = Budget(limits)
    budget.check_request(100_000, 6)
    with pytest.raises(SpendLimitExceeded) as caught:
        budget.check_request(100_001, 6)
    assert caught.value.limit == "max_per_request"
    assert "$0.100001" in str(caught.value)
    # An 18-decimal token: $0.10 is 10**17 of its units.
    budget.check_request(10**17, 18)
    with pytest.raises(SpendLimitExceeded):
        budget.check_request(10**17 + 1, 18)
    assert budget.check_deposit(1, 6) == 2_000_000
    with pytest.raises(SpendLimitExceeded) as deposit:
        budget.check_deposit(2_000_001, 6)
    assert deposit.value.limit == "max_deposit"
    with pytest.raises(ConfigurationError):
        SpendLimits.parse("-$1", "$1", "$1")


def test_the_total_is_never_passed_by_concurrent_payments() -> None:
    budget = Budget(SpendLimits.parse("$1", "$1", "$0.0001"))  # 100 units
    granted: list[int] = []

    def pay() -> None:
        for _ in range(50):
            try:
                budget.reserve(*USDC, 1, 6)
            except SpendLimitExceeded:
                continue
            granted.append(1)

    threads = [threading.Thread(target=pay) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(granted) == 100
    assert budget.spent(*USDC) == 100
    # What a channel said it did not charge can be spent again; never below zero.
    budget.give_back(*USDC, 30)
    budget.reserve(*USDC, 30, 6)
    with pytest.raises(SpendLimitExceeded) as caught:
        budget.reserve(*USDC, 1, 6)
    assert caught.value.limit == "max_total"
    budget.give_back(*USDC, 10**9)
    assert budget.spent(*USDC) == 0


def test_session_tokens_are_bounded() -> None:
    tokens = SessionTokens()
    tokens.put("https://a.test", "x" * (MAX_TOKEN_CHARS + 1))
    tokens.put("https://b.test", "bad\ntoken")
    assert tokens.get("https://a.test") is None and tokens.get("https://b.test") is None
    for i in range(MAX_ORIGINS + 10):
        tokens.put(f"https://{i}.test", f"t{i}")
    assert tokens.get("https://0.test") is None
    assert tokens.get(f"https://{MAX_ORIGINS + 9}.test") == f"t{MAX_ORIGINS + 9}"


def test_a_session_token_goes_back_to_its_origin_only() -> None:
    seen: list[tuple[str, str | None]] = []

    def server(request: httpx.Request) -> httpx.Response:
        seen.append((request.url.host, request.headers.get(SESSION_HEADER)))
        headers = {SESSION_HEADER: "v2.token-of-a"} if request.url.host == "a.test" else {}
        return httpx.Response(200, headers=headers, json={})

    with http_client(
        KEY,
        max_per_request="$1",
        max_deposit="$1",
        max_total="$1",
        transport=httpx.MockTransport(server),
    ) as http:
        http.get("https://a.test/one")
        http.get("https://a.test/two")
        http.get("https://b.test/one")
        http.get("https://a.test/three", headers={SESSION_HEADER: "mine"})
    assert seen == [
        ("a.test", None),
        ("a.test", "v2.token-of-a"),
        ("b.test", None),
        ("a.test", "mine"),  # a token the caller set is left alone
    ]


def test_a_malformed_key_is_refused_without_showing_it() -> None:
    with pytest.raises(ConfigurationError) as caught:
        http_client("0xnot-a-key-123", max_per_request="$1", max_deposit="$1", max_total="$1")
    assert "not-a-key" not in str(caught.value)
