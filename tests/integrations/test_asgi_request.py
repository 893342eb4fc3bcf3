"""The resource URL an ASGI request is charged for."""

from __future__ import annotations

from x402gate.integrations.asgi import request_info_from_scope


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
