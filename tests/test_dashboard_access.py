"""The dashboard's access rules on their own: what opens it, what does not, and what its
sign-in cookie is (the served behaviour is tested per integration in tests/integrations)."""

from __future__ import annotations

import time

import pytest

from x402gate.dashboard import COOKIE_NAME, Dashboard, DashboardRequest
from x402gate.errors import ConfigurationError
from x402gate.stores import open_store
from x402gate.stores.base import Store
from x402gate.stores.journal import JournalRow

TOKEN = "a-long-enough-dashboard-token"
HOST = {"host": "shop.test", "origin": "https://shop.test"}


@pytest.fixture
def store() -> Store:
    store = open_store("memory://")
    store.journal_append(
        JournalRow(
            id="one",
            time=time.time() - 10 * 86400,
            route="GET /weather",
            payer="0x" + "ab" * 20,
            amount=2500,
            asset="0x" + "cd" * 20,
            network="eip155:84532",
            outcome="settled",
            latency=0.05,
        )
    )
    return store


def sign_in(dashboard: Dashboard, store: Store, token: str = TOKEN) -> str:
    answer = dashboard.handle(
        DashboardRequest("POST", headers=HOST, body=f"token={token}".encode(), https=True), store
    )
    assert answer.status == 303
    return dict(answer.headers)["Set-Cookie"].split(";")[0]


def test_the_cookie_expires_and_dies_with_the_token(store: Store) -> None:
    now = [1_800_000_000.0]
    dashboard = Dashboard(TOKEN, clock=lambda: now[0], session_seconds=3600)
    cookie = sign_in(dashboard, store)
    assert TOKEN not in cookie and cookie.startswith(f"{COOKIE_NAME}=")
    with_cookie = DashboardRequest("GET", query="format=json", headers={"cookie": cookie})
    assert dashboard.handle(with_cookie, store).status == 200
    now[0] += 3601
    assert dashboard.handle(with_cookie, store).status == 401  # expired
    now[0] -= 3601
    rotated = Dashboard(TOKEN + "-rotated", clock=lambda: now[0])
    assert rotated.handle(with_cookie, store).status == 401  # another token: signed out
    stretched = cookie.replace(f"={int(now[0]) + 3600}.", f"={int(now[0]) + 99999}.")
    tampered = DashboardRequest("GET", query="format=json", headers={"cookie": stretched})
    assert dashboard.handle(tampered, store).status == 401


def test_the_sign_in_checks_where_it_comes_from(store: Store) -> None:
    dashboard = Dashboard(TOKEN)
    body = f"token={TOKEN}".encode()

    def post(headers: dict[str, str]) -> int:
        return dashboard.handle(DashboardRequest("POST", headers=headers, body=body), store).status

    assert post({"host": "shop.test", "referer": "https://shop.test/x402/dashboard"}) == 303
    assert post({"host": "shop.test", "origin": "https://shop.test.evil.test"}) == 403
    assert post({"host": "shop.test", "origin": "null"}) == 403
    assert post({"host": "shop.test"}) == 403
    big = DashboardRequest("POST", headers=HOST, body=b"token=" + b"x" * 5000)
    assert dashboard.handle(big, store).status == 413


def test_the_window_and_methods(store: Store) -> None:
    dashboard = Dashboard(TOKEN)
    bearer = {"authorization": f"Bearer {TOKEN}"}
    week = dashboard.handle(DashboardRequest("GET", "format=json&days=7", bearer), store)
    month = dashboard.handle(DashboardRequest("GET", "format=json", bearer), store)
    assert b'"rows":0' in week.body and b'"rows":1' in month.body  # the row is 10 days old
    head = dashboard.handle(DashboardRequest("HEAD", headers=bearer), store)
    assert head.status == 200 and head.body == b"" and int(dict(head.headers)["Content-Length"])
    assert dashboard.handle(DashboardRequest("PUT", headers=bearer), store).status == 405
    assert (
        dashboard.handle(
            DashboardRequest("GET", headers={"authorization": "Basic x"}), store
        ).status
        == 401
    )


def test_tokens_and_paths_are_checked() -> None:
    with pytest.raises(ConfigurationError, match="16 characters"):
        Dashboard("short")
    with pytest.raises(ConfigurationError, match="path"):
        Dashboard(TOKEN, path="dashboard")
    assert TOKEN not in repr(Dashboard(TOKEN))
