"""Discovery: a ``/.well-known/x402`` document listing the paid routes, and bazaar metadata.

``/.well-known/x402`` is an informal convention of x402 gateways and crawlers, not part of the
merged x402 specification; x402gate serves it only when asked (``discovery=True`` on an
integration). Its shape follows the manifest proposed upstream::

    {"x402Version": 2, "lastUpdated": "...", "items": [
        {"type": "http", "resource": {"url": ..., "description": ...},
         "input": {"method": "GET", "routeTemplate": "/weather"},
         "accepts": [<payment requirements, advisory>], "price": {...}}]}

The live 402 answer stays authoritative: prices computed from the request are described
(``price``) rather than quoted.

:func:`bazaar_extension` builds the x402 ``bazaar`` discovery extension (``info`` + JSON schema)
that a route can put on its 402 answers so facilitators can catalogue it.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from .pricing import Flat

if TYPE_CHECKING:
    from .gate import PaymentGate, Route

__all__ = ["CREDIT_PATH", "WELL_KNOWN_PATH", "bazaar_extension", "discovery_document"]

WELL_KNOWN_PATH = "/.well-known/x402"
CREDIT_PATH = "/.well-known/x402/credit"
"""A payer's credit on metered routes (``GET`` with its ``X402GATE-SESSION`` token)."""


def _route_template(key: str) -> tuple[list[str], str]:
    head, _, rest = key.strip().partition(" ")
    if rest:
        return head.upper().split(","), rest.strip()
    return ["GET"], head


def discovery_document(
    gate: PaymentGate,
    routes: Iterable[tuple[str, Route]],
    base_url: str,
    *,
    updated: _dt.datetime | None = None,
) -> dict[str, Any]:
    """The ``/.well-known/x402`` document for ``routes`` (``(key, Route)`` pairs of a table).

    ``base_url`` is the public origin (``https://api.example.com``) the resource URLs are
    built on. Nothing secret is in the document: addresses, prices and descriptions only.
    """
    from . import protocol
    from .money import format_usd, scale_to_asset

    base = base_url.rstrip("/")
    items: list[dict[str, Any]] = []
    for key, route in routes:
        methods, template = _route_template(key)
        assets = route.assets or gate.assets
        pay_to = route.pay_to or gate.pay_to
        timeout = route.max_timeout_seconds or gate.max_timeout_seconds
        price = route.price.describe()
        accepts: list[dict[str, Any]] = []
        if isinstance(route.price, Flat):
            for asset in assets:
                req = protocol.build_requirements(
                    asset,
                    scale_to_asset(route.price.amount, asset.decimals),
                    pay_to[asset.network],
                    timeout,
                )
                accepts.append(req.model_dump(mode="json", by_alias=True, exclude_none=True))
        else:
            for asset in assets:
                accepts.append(
                    {
                        "scheme": "exact",
                        "network": asset.network,
                        "asset": asset.address,
                        "payTo": pay_to[asset.network],
                        "maxTimeoutSeconds": timeout,
                        "extra": asset.extra,
                    }
                )
        for method in methods:
            item: dict[str, Any] = {
                "type": "http",
                "resource": {"url": f"{base}{template}"},
                "input": {"method": method, "routeTemplate": template},
                "accepts": accepts,
                "price": price,
            }
            if route.description:
                item["resource"]["description"] = route.description
            if route.mime_type:
                item["resource"]["mimeType"] = route.mime_type
            if isinstance(route.price, Flat):
                item["price"] = {**price, "display": format_usd(route.price.amount)}
            items.append(item)
    stamp = (updated or _dt.datetime.now(_dt.UTC)).replace(microsecond=0)
    return {
        "x402Version": 2,
        "lastUpdated": stamp.isoformat().replace("+00:00", "Z"),
        "items": items,
    }


def bazaar_extension(
    *,
    method: str = "GET",
    query_params: Mapping[str, Any] | None = None,
    body_type: str | None = None,
    body: Mapping[str, Any] | None = None,
    output_example: Any = None,
    output_schema: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``bazaar`` extension of a route's 402 answers: ``{"bazaar": {"info", "schema"}}``.

    Pass it as ``extensions=`` to :meth:`~x402gate.gate.PaymentGate.route`.
    """
    method = method.upper()
    info_input: dict[str, Any] = {"type": "http", "method": method}
    if query_params:
        info_input["queryParams"] = dict(query_params)
    if body_type is not None:
        info_input["bodyType"] = body_type
        info_input["body"] = dict(body or {})
    info: dict[str, Any] = {"input": info_input}
    if output_example is not None or output_schema is not None:
        info["output"] = {"type": "json"}
        if output_example is not None:
            info["output"]["example"] = output_example
    schema: dict[str, Any] = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "properties": {
            "input": {
                "type": "object",
                "properties": {
                    "type": {"type": "string", "const": "http"},
                    "method": {"type": "string", "enum": [method]},
                },
                "required": ["type", "method"],
            }
        },
        "required": ["input"],
    }
    if output_schema is not None:
        schema["properties"]["output"] = {
            "type": "object",
            "properties": {"example": dict(output_schema)},
        }
    return {"bazaar": {"info": info, "schema": schema}}
