"""The resource URL an ASGI request is charged for."""

from __future__ import annotations

from x402.schemas import (
    PaymentPayload,
    PaymentRequirements,
    SettleResponse,
    SupportedResponse,
    VerifyResponse,
)

from x402gate.asgi import request_info_from_scope


class Unused:
    """A facilitator the test must never reach."""

    async def verify(
        self, payload: PaymentPayload, requirements: PaymentRequirements
    ) -> VerifyResponse:
        raise AssertionError("not called")

    async def settle(
        self, payload: PaymentPayload, requirements: PaymentRequirements
    ) -> SettleResponse:
        raise AssertionError("not called")

    async def supported(self) -> SupportedResponse:
        raise AssertionError("not called")


def scope(**kw: object) -> dict[str, object]:
    base: dict[str, object] = {
        "type": "http",
        "method": "GET",
        "scheme": "http",
        "path": "/paid",
        "root_path": "",
        "query_string": b"q=1",
        "headers": [(b"host", b"api.test")],
        "server": ("127.0.0.1", 80),
    }
    return {**base, **kw}


def test_url_from_host_path_and_query() -> None:
    assert request_info_from_scope(scope(), b"").url == "http://api.test/paid?q=1"


def test_root_path_is_added_once_whether_or_not_the_server_put_it_in_path() -> None:
    assert (
        request_info_from_scope(scope(root_path="/api"), b"").url == "http://api.test/api/paid?q=1"
    )
    with_prefix = scope(root_path="/api", path="/api/paid")
    assert request_info_from_scope(with_prefix, b"").url == "http://api.test/api/paid?q=1"


def test_forwarded_headers_only_when_the_proxy_is_trusted() -> None:
    forwarded = scope(
        headers=[
            (b"host", b"internal:8000"),
            (b"x-forwarded-proto", b"https"),
            (b"x-forwarded-host", b"api.example.com"),
        ]
    )
    assert request_info_from_scope(forwarded, b"").url.startswith("http://internal:8000/")
    trusted = request_info_from_scope(forwarded, b"", trust_proxy_headers=True)
    assert trusted.url == "https://api.example.com/paid?q=1"


async def test_websocket_and_lifespan_scopes_pass_through_untouched() -> None:
    from typing import Any

    from eth_account import Account

    from x402gate import PaymentGate
    from x402gate.asgi import PaymentMiddleware
    from x402gate.assets import usdc

    class NeverCalled:
        async def verify(self, *a: Any) -> Any:
            raise AssertionError

        async def settle(self, *a: Any) -> Any:
            raise AssertionError

        async def supported(self) -> Any:
            raise AssertionError

    seen: list[tuple[str, Any, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append((scope["type"], receive, send))

    gate = PaymentGate(
        pay_to=Account.create().address,
        assets=usdc("base"),
        facilitator=NeverCalled(),
        store="memory://",
    )
    # Everything is paid; the start-up checks (tested in test_startup_checks.py) are off here.
    middleware = PaymentMiddleware(app, gate=gate, routes={"/*": "$0.01"}, check_at_startup=False)

    async def receive() -> dict[str, Any]:
        return {}

    async def send(message: Any) -> None:
        raise AssertionError("the middleware must not answer non-HTTP scopes")

    for kind in ("websocket", "lifespan"):
        await middleware({"type": kind, "path": "/chat"}, receive, send)
    assert seen == [("websocket", receive, send), ("lifespan", receive, send)]


def test_forwarding_headers_count_only_from_trusted_proxies() -> None:
    from x402gate.proxies import TrustedProxies

    headers = [
        (b"host", b"api.test"),
        (b"x-forwarded-host", b"evil.example"),
        (b"x-forwarded-for", b"6.6.6.6, 192.0.2.1"),
    ]
    proxies = TrustedProxies(["10.0.0.0/8"])
    direct = request_info_from_scope(
        scope(headers=headers, client=("203.0.113.5", 5000)), b"", proxies=proxies
    )
    assert (direct.client, direct.url) == ("203.0.113.5", "http://api.test/paid?q=1")
    proxied = request_info_from_scope(
        scope(headers=headers, client=("10.1.2.3", 5000)), b"", proxies=proxies
    )
    assert (proxied.client, proxied.url) == ("192.0.2.1", "http://evil.example/paid?q=1")


def test_trust_proxy_headers_is_deprecated() -> None:
    import pytest

    from x402gate import PaymentGate
    from x402gate._web.types import Receive, Scope, Send
    from x402gate.asgi import PaymentMiddleware
    from x402gate.wsgi import PaymentMiddleware as WSGIMiddleware

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        raise AssertionError("not called")

    gate = PaymentGate(
        pay_to="0x209693Bc6afc0C5328bA36FaF03C514EF312287C",
        network="base",
        facilitator=Unused(),
        store="memory://",
        startup_checks="off",
    )
    with pytest.warns(DeprecationWarning, match="trusted_proxies"):
        PaymentMiddleware(app, gate=gate, routes={"GET /paid": 1}, trust_proxy_headers=True)
    with pytest.warns(DeprecationWarning, match="trusted_proxies"):
        WSGIMiddleware(lambda *a: [], gate=gate, routes={"GET /paid": 1}, trust_proxy_headers=True)
    gate.close()


def test_a_misspelt_route_option_fails_when_the_middleware_is_built() -> None:
    import pytest

    from x402gate import PaymentGate
    from x402gate._web.types import Receive, Scope, Send
    from x402gate.asgi import PaymentMiddleware
    from x402gate.errors import ConfigurationError

    gate = PaymentGate(
        pay_to="0x209693Bc6afc0C5328bA36FaF03C514EF312287C",
        network="base",
        facilitator=Unused(),
        store="memory://",
        startup_checks="off",
    )

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        raise AssertionError("not called")

    routes = {"GET /paid": {"price": "$0.01", "setlement": "before"}}
    with pytest.raises(ConfigurationError, match=r"'setlement'.*did you mean 'settlement'"):
        PaymentMiddleware(app, gate=gate, routes=routes)
    gate.close()
