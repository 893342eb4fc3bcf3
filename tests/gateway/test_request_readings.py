"""The gateway prices the request its upstream reads, and hostile 10 MiB bodies cost little.

The upstream (the fake provider) reads JSON the way most servers do: the last of repeated query
parameters and keys, UTF-16 detected, gzip bodies decompressed. Anything pricing would read
differently is refused before a payment and never forwarded; a route that declares
``decode_body`` prices compressed bodies by what they hold, within a bound. Ten-megabyte hostile
bodies of every kind are answered at once while a cheap request on the same server still gets
its answer promptly.
"""

from __future__ import annotations

import asyncio
import gzip
import time
from typing import Any

import httpx
import pytest

from x402gate.testing.payments import decode_payment_required

from .conftest import ROUTES, GatewayFactory

pytestmark = pytest.mark.chain

READ_ROUTES = """\
  "POST /tiered/v1/messages":
    upstream: llm
    path: /v1/messages
    match:
      - when: {query.tier: opus}
        price: $0.20
      - when: {header.x-tier: opus}
        price: $0.20
      - when: {body.model: "claude-opus-*"}
        price: $0.20
    fallback: $0.01
  "POST /gzip/v1/messages":
    upstream: llm
    path: /v1/messages
    match:
      - when: {body.model: "claude-opus-*"}
        price: $0.20
    fallback: $0.01
    decode_body: {encodings: [gzip], max_bytes: 65536}
"""

OPUS = b'{"model": "claude-opus-4-5", "max_tokens": 5, "messages": []}'
JSON = {"content-type": "application/json"}
TEN_MIB = 10 << 20
ROOM = TEN_MIB - 64  # what fits in the gateway's 10 MiB limit next to a short prefix


def _price(response: httpx.Response) -> int:
    assert response.status_code == 402, response.text
    required = decode_payment_required(response.headers["payment-required"])
    return int(required.accepts[0].amount)


async def test_readings_an_upstream_would_differ_on_are_refused_and_not_forwarded(
    gateway: GatewayFactory, llm: Any
) -> None:
    attacks: list[tuple[dict[str, Any], int, str]] = [
        ({"params": [("tier", "mini"), ("tier", "opus")]}, 400, "ambiguous_request"),
        ({"headers": [("x-tier", "mini"), ("x-tier", "opus")]}, 400, "ambiguous_request"),
        (
            {"content": b'{"model": "claude-haiku-4-5", "model": "claude-opus-4-5"}'},
            400,
            "invalid_body",
        ),
        ({"content": OPUS.decode().encode("utf-16")}, 400, "invalid_body"),
        ({"content": OPUS.decode().encode("utf-16-be")}, 400, "invalid_body"),
        (
            {"content": gzip.compress(OPUS), "headers": {"content-encoding": "gzip"}},
            415,
            "unsupported_body",
        ),
        ({"files": {"model": (None, "claude-opus-4-5")}}, 415, "unsupported_body"),
    ]
    with gateway(routes=ROUTES + READ_ROUTES) as (url, _):
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            assert _price(await client.post("/tiered/v1/messages", content=OPUS)) == 200_000
            for request, status, code in attacks:
                if "files" not in request:
                    request.setdefault("headers", JSON)
                response = await client.post("/tiered/v1/messages", **request)
                assert (response.status_code, response.json()["error"]) == (status, code), request
    assert llm.requests == []


async def test_a_route_declaring_gzip_prices_what_the_body_holds_within_a_bound(
    gateway: GatewayFactory, llm: Any
) -> None:
    bomb = gzip.compress(b'{"model": "claude-haiku-4-5", "pad": "' + b"0" * (64 << 20) + b'"}')
    assert len(bomb) < 100 << 10  # 64 MiB of zeros in well under 100 KiB
    with gateway(routes=ROUTES + READ_ROUTES) as (url, _):
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            zipped = {**JSON, "content-encoding": "gzip"}
            response = await client.post(
                "/gzip/v1/messages", content=gzip.compress(OPUS), headers=zipped
            )
            assert _price(response) == 200_000  # not the $0.01 fallback of "not JSON"
            started = time.process_time()
            response = await client.post("/gzip/v1/messages", content=bomb, headers=zipped)
            assert time.process_time() - started < 1
            assert (response.status_code, response.json()["error"]) == (413, "request_too_large")
            truncated = gzip.compress(OPUS)[:-4]
            response = await client.post("/gzip/v1/messages", content=truncated, headers=zipped)
            assert (response.status_code, response.json()["error"]) == (400, "invalid_body")
    assert llm.requests == []


def _hostile_bodies() -> dict[str, tuple[bytes, int]]:
    """Ten megabytes of each kind, and the status the gateway answers it with."""
    unit = b"[" * 250 + b'"' + b"x" * 14_000 + b'"' + b"]" * 250
    keys = b",".join(b'"k%012d":"%06d"' % (i, i) for i in range(195_000))
    many = b"[" + b",".join(b'"%048d"' % i for i in range(195_000)) + b"]"
    return {
        "deep nesting": (b"[" * ROOM, 400),
        "UTF-16 with a BOM": (b"\xff\xfe" + b"[\x00" * (ROOM // 2), 400),
        "UTF-32 without a BOM": (b"[\x00\x00\x00" * (ROOM // 4), 400),
        "unterminated string of escapes": (b'["' + b'\\"[' * (ROOM // 3), 402),  # not JSON
        "long string of escapes": (b'{"s": "' + b'\\"\\\\' * (ROOM // 4) + b'"}', 402),
        "many values": (b"[" + b"[]," * (ROOM // 3) + b"1]", 400),
        "many keys": (b"{" + keys + b', "' + b"k" * (ROOM - len(keys)) + b'": 1}', 402),
        "many values under the limit": (many, 402),
        "duplicate keys": (b"{" + b'"model": "claude-opus-4-5", ' * (ROOM // 28) + b'"x": 1}', 400),
        "huge number": (b'{"n": ' + b"9" * ROOM + b"}", 400),
        "nesting near the limit, padded": (b"[" + b",".join([unit] * 700) + b"]", 402),
    }


async def test_hostile_ten_megabyte_bodies_never_block_a_cheap_request(
    gateway: GatewayFactory, llm: Any
) -> None:
    bodies = _hostile_bodies()
    with gateway(routes=ROUTES + READ_ROUTES) as (url, _):
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            await client.get("/.well-known/x402")  # connections and caches warm
            for kind, (body, status) in bodies.items():
                assert 9 << 20 <= len(body) <= TEN_MIB, kind
                latencies: list[float] = []
                hostile = asyncio.ensure_future(
                    client.post("/tiered/v1/messages", content=body, headers=JSON)
                )
                while not hostile.done():
                    started = time.perf_counter()
                    cheap = await client.get("/.well-known/x402")
                    latencies.append(time.perf_counter() - started)
                    assert cheap.status_code == 200
                    await asyncio.sleep(0.01)
                response = await hostile
                assert response.status_code == status, (kind, response.text[:200])
                assert latencies, kind
                assert max(latencies) < 1.0, (kind, latencies)
    assert llm.requests == []
