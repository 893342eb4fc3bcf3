"""OpenAPI for paid operations, framework-neutral: integrations that generate a schema call it."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .. import protocol
from ..discovery import discovery_document

if TYPE_CHECKING:
    from ..assets import Asset
    from ..gate import PaymentGate, Route

__all__ = ["document_paid_operation"]


def _price_text(
    price: dict[str, Any], accepts: list[dict[str, Any]], assets: Iterable[Asset]
) -> str:
    if price.get("type") == "flat":
        amount = f"{price['price']} per call"
    elif "min" in price:
        amount = f"{price['min']} to {price['max']} per call, depending on the request"
    else:
        amount = "a price computed from the request"
    symbols = {a.address: a.symbol for a in assets}
    where = ", ".join(f"{symbols.get(a['asset'], 'USDC')} on {a['network']}" for a in accepts)
    return f"{amount} in {where}"


def _header(description: str) -> dict[str, Any]:
    return {"description": description, "schema": {"type": "string"}}


def document_paid_operation(
    operation: dict[str, Any], gate: PaymentGate, key: str, route: Route
) -> None:
    """Add to an OpenAPI operation object what a client needs to know before paying.

    The price in words (description and 402 description), ``x-payment-info`` (price, settlement
    policy, payment requirements: the same terms as ``/.well-known/x402``), the 402 response
    with its ``PAYMENT-REQUIRED`` header and an example body, the ``PAYMENT-SIGNATURE`` request
    header and the ``PAYMENT-RESPONSE`` receipt on success. ``key`` is ``"METHOD /template"``.
    """
    item = discovery_document(gate, [(key, route)], "")["items"][0]
    text = _price_text(item["price"], item["accepts"], route.assets or gate.assets)
    operation["x-payment-info"] = {
        "protocol": "x402",
        "scheme": "exact",
        "price": item["price"],
        "settlement": route.settlement,
        "accepts": item["accepts"],
    }
    note = f"**Paid per call with x402:** {text}."
    operation["description"] = f"{operation.get('description', '')}\n\n{note}".strip()
    responses = operation.setdefault("responses", {})
    for status, response in responses.items():
        if str(status).startswith("2"):
            response.setdefault("headers", {})[protocol.PAYMENT_RESPONSE] = _header(
                "The settlement receipt (x402), base64-encoded JSON."
            )
    example = {
        "x402Version": 2,
        "error": "payment_required",
        "message": "this resource requires payment",
        "accepts": item["accepts"],
    }
    responses["402"] = {
        "description": f"Payment required: {text}. Pay with an x402 client, which retries "
        f"with the {protocol.PAYMENT_SIGNATURE} header.",
        "headers": {
            protocol.PAYMENT_REQUIRED: _header(
                "The payment requirements (x402 v2), base64-encoded JSON."
            )
        },
        "content": {"application/json": {"example": example}},
    }
    parameters = operation.setdefault("parameters", [])
    if not any(p.get("name") == protocol.PAYMENT_SIGNATURE for p in parameters):
        parameters.append(
            {
                "name": protocol.PAYMENT_SIGNATURE,
                "in": "header",
                "required": False,
                **_header("The signed x402 payment; without it the answer is the 402."),
            }
        )
