"""x402 on the wire: the payment headers, encoded and decoded on the official pydantic models.

* v2: ``PAYMENT-REQUIRED`` (402 challenge), ``PAYMENT-SIGNATURE`` (client payment),
  ``PAYMENT-RESPONSE`` (settlement receipt).
* v1: ``X-PAYMENT`` / ``X-PAYMENT-RESPONSE``, still sent by older clients (npm ``x402-fetch``
  1.x, ``x402-axios`` 0.x), which read the 402's JSON *body* and know networks by name
  (``base-sepolia``), not by CAIP-2 id. Where a route accepts a network that has a v1 name, the
  402 body is the v1 document (:func:`build_payment_required_v1`) beside the v2 header. A v1
  payment is upgraded to a v2 payload internally (the EIP-3009 authorization inside is the
  same), so the flow in between speaks v2 only, and its receipt goes back in the v1 shape
  (:func:`encode_settle_response_v1`).

Decoding is strict: standard base64 with padding, a JSON object, the model's schema, a bounded
size. Anything else is a *malformed header* (400 with the reason), unlike a payment for other
terms than the server's own, which is a 402 with the field that differs.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import _json
from .errors import PaymentError

if TYPE_CHECKING:
    from x402.schemas import (
        PaymentPayload,
        PaymentRequired,
        PaymentRequirements,
        ResourceInfo,
        SettleResponse,
    )

    from .assets import Asset

__all__ = [
    "EXPOSED_HEADERS",
    "MAX_HEADER_BYTES",
    "PAYMENT_REQUIRED",
    "PAYMENT_RESPONSE",
    "PAYMENT_SIGNATURE",
    "X_PAYMENT",
    "X_PAYMENT_RESPONSE",
    "DecodedPayment",
    "b64json",
    "build_payment_required",
    "build_payment_required_v1",
    "build_requirements",
    "decode_payment",
    "encode_settle_response",
    "encode_settle_response_v1",
    "match_requirements",
    "v1_network_name",
]

PAYMENT_REQUIRED = "PAYMENT-REQUIRED"
PAYMENT_SIGNATURE = "PAYMENT-SIGNATURE"
PAYMENT_RESPONSE = "PAYMENT-RESPONSE"
X_PAYMENT = "X-PAYMENT"
X_PAYMENT_RESPONSE = "X-PAYMENT-RESPONSE"
EXPOSED_HEADERS = "PAYMENT-REQUIRED, PAYMENT-RESPONSE, X-PAYMENT-RESPONSE"

MAX_HEADER_BYTES = 16 * 1024
"""Larger payment headers are refused before decoding (a real one is about 1.5 KB)."""

# v1 network names the official clients use, mapped to CAIP-2 (facts from the x402 v1 spec).
_V1_NETWORKS = {
    "base": "eip155:8453",
    "base-sepolia": "eip155:84532",
    "avalanche": "eip155:43114",
    "avalanche-fuji": "eip155:43113",
    "polygon": "eip155:137",
    "polygon-amoy": "eip155:80002",
    "iotex": "eip155:4689",
    "sei": "eip155:1329",
    "sei-testnet": "eip155:1328",
    "abstract": "eip155:2741",
    "abstract-testnet": "eip155:11124",
    "peaq": "eip155:3338",
    "story": "eip155:1514",
    "educhain": "eip155:41923",
    "skale-base-sepolia": "eip155:324705682",
}
_V1_NAMES = {caip: name for name, caip in _V1_NETWORKS.items()}


def v1_network_name(network: str) -> str | None:
    """The x402 v1 name of a CAIP-2 network (``eip155:84532`` → ``base-sepolia``), if it has one.

    v1 clients validate network names against a fixed list: a network outside it (a local chain,
    Arbitrum, ...) cannot be offered to them at all.
    """
    return _V1_NAMES.get(network)


def _malformed(reason: str) -> PaymentError:
    return PaymentError(400, "invalid_payment_header", reason)


def b64json(obj: Any) -> str:
    """Standard base64 (with padding) of compact UTF-8 JSON."""
    raw = json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()
    return base64.b64encode(raw).decode("ascii")


@dataclass(frozen=True, slots=True)
class DecodedPayment:
    """A payment header, decoded: always a v2 payload, plus the version the client spoke."""

    payload: PaymentPayload
    version: int
    header: str
    v1_network: str | None = None


def _decode_b64_json(value: str, name: str) -> dict[str, Any]:
    if len(value) > MAX_HEADER_BYTES:
        raise _malformed(f"{name} header is larger than {MAX_HEADER_BYTES} bytes")
    text = value.strip()
    if not text:
        raise _malformed(f"{name} header is empty")
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise _malformed(f"{name} header is not valid base64") from None
    try:
        data = _json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise _malformed(f"{name} header is not base64-encoded JSON") from None
    if not isinstance(data, dict):
        raise _malformed(f"{name} header must encode a JSON object")
    return data


def _schema_reason(exc: Exception) -> str:
    from pydantic import ValidationError

    if isinstance(exc, ValidationError) and exc.errors():
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "payload"
        return f"{where}: {first.get('msg', 'invalid')}"
    return "does not match the x402 payment payload schema"


def decode_payment(headers: Mapping[str, str]) -> DecodedPayment | None:
    """Decode the client's payment header, or ``None`` when the request carries none.

    ``PAYMENT-SIGNATURE`` wins over ``X-PAYMENT``. Raises :class:`PaymentError` 400
    (``invalid_payment_header``) with the reason when a header is present but malformed.
    """
    from pydantic import ValidationError
    from x402.schemas import PaymentPayload, PaymentPayloadV1

    value = headers.get(PAYMENT_SIGNATURE)
    name = PAYMENT_SIGNATURE
    if value is None:
        value = headers.get(X_PAYMENT)
        name = X_PAYMENT
    if value is None:
        return None
    data = _decode_b64_json(value, name)
    version = data.get("x402Version")
    if isinstance(version, bool) or version not in (1, 2):
        raise _malformed(f"unsupported x402Version {version!r}: this server speaks 2 (and 1)")
    if version == 2:
        try:
            payload = PaymentPayload.model_validate(data)
        except (ValidationError, ValueError, TypeError) as exc:
            raise _malformed(f"{name}: {_schema_reason(exc)}") from None
        return DecodedPayment(payload=payload, version=2, header=name)
    try:
        v1 = PaymentPayloadV1.model_validate(data)
    except (ValidationError, ValueError, TypeError) as exc:
        raise _malformed(f"{name}: {_schema_reason(exc)}") from None
    # A v1 payload names no asset, amount or recipient: those come from the requirement it is
    # matched to; only scheme and network are the client's own choice.
    network = _V1_NETWORKS.get(v1.network, v1.network)
    placeholder = _placeholder_requirements(v1.scheme, network)
    payload = PaymentPayload(x402_version=2, payload=v1.payload, accepted=placeholder)
    return DecodedPayment(payload=payload, version=1, header=name, v1_network=v1.network)


def _placeholder_requirements(scheme: str, network: str) -> PaymentRequirements:
    from x402.schemas import PaymentRequirements

    return PaymentRequirements(
        scheme=scheme, network=network, asset="", amount="", pay_to="", max_timeout_seconds=0
    )


def build_requirements(
    asset: Asset, amount: int, pay_to: str, max_timeout_seconds: int
) -> PaymentRequirements:
    """One ``accepts`` entry: pay ``amount`` atomic units of ``asset`` to ``pay_to``."""
    from x402.schemas import PaymentRequirements

    return PaymentRequirements(
        scheme="exact",
        network=asset.network,
        asset=asset.address,
        amount=str(amount),
        pay_to=pay_to,
        max_timeout_seconds=max_timeout_seconds,
        extra=asset.extra,
    )


def build_payment_required(
    accepts: Sequence[PaymentRequirements],
    resource: ResourceInfo,
    error: str,
    extensions: Mapping[str, Any] | None = None,
) -> PaymentRequired:
    from x402.schemas import PaymentRequired

    return PaymentRequired(
        x402_version=2,
        error=error,
        resource=resource,
        accepts=list(accepts),
        extensions=dict(extensions) if extensions else None,
    )


def build_payment_required_v1(
    accepts: Sequence[PaymentRequirements], resource: ResourceInfo, error: str
) -> dict[str, Any] | None:
    """The x402 v1 402 body (``PaymentRequiredV1``, as JSON) for the ``accepts`` whose network
    has a v1 name, or ``None`` when none has.

    Only those entries are listed: a v1 client validates every entry and refuses the whole
    document when one names a network it does not know. ``description`` and ``mimeType`` are
    required strings in v1, so an undescribed route gets empty ones, as v1 servers send.
    Plain dicts, not the SDK's models: this runs on every 402 of a priced route, and the
    fields are copied from requirements that were validated when they were built.
    """
    entries = []
    for req in accepts:
        name = _V1_NAMES.get(req.network)
        if name is None:
            continue
        entry: dict[str, Any] = {
            "scheme": req.scheme,
            "network": name,
            "maxAmountRequired": req.amount,
            "resource": resource.url,
            "description": resource.description or "",
            "mimeType": resource.mime_type or "",
            "payTo": req.pay_to,
            "maxTimeoutSeconds": req.max_timeout_seconds,
            "asset": req.asset,
        }
        if req.extra:
            entry["extra"] = dict(req.extra)
        entries.append(entry)
    if not entries:
        return None
    return {"x402Version": 1, "error": error, "accepts": entries}


def _extra_subset(server: Mapping[str, Any], client: Mapping[str, Any]) -> bool:
    # Clients may add keys to extra, never change or drop the server's.
    for key, value in server.items():
        if key not in client:
            return False
        theirs = client[key]
        if isinstance(value, Mapping):
            if not isinstance(theirs, Mapping) or not _extra_subset(value, theirs):
                return False
        elif theirs != value:
            return False
    return True


def match_requirements(
    decoded: DecodedPayment, accepts: Sequence[PaymentRequirements]
) -> PaymentRequirements:
    """The server requirement the client's payment is for.

    The client's ``accepted`` must equal one of ours on scheme, network, asset, amount, payTo
    and maxTimeoutSeconds, and carry our ``extra`` (it may add keys). Otherwise a 402 names the
    first field that differs from the closest requirement (same network first, then same
    scheme), so a client holding an old price or the wrong token learns what to change.
    """
    accepted = decoded.payload.accepted
    if decoded.version == 1:
        for req in accepts:
            if req.scheme == accepted.scheme and req.network == accepted.network:
                return req
        raise _mismatch("network" if accepted.scheme == "exact" else "scheme", accepts, accepted)
    for req in accepts:
        if (
            req.scheme == accepted.scheme
            and req.network == accepted.network
            and req.asset == accepted.asset
            and req.amount == accepted.amount
            and req.pay_to == accepted.pay_to
            and req.max_timeout_seconds == accepted.max_timeout_seconds
            and _extra_subset(req.extra, accepted.extra or {})
        ):
            return req
    # Same network first, then same scheme: a voucher for the wrong token is told "asset".
    closest = min(
        accepts, key=lambda r: (r.network != accepted.network, r.scheme != accepted.scheme)
    )
    for field, ours, theirs in (
        ("scheme", closest.scheme, accepted.scheme),
        ("network", closest.network, accepted.network),
        ("asset", closest.asset, accepted.asset),
        ("amount", closest.amount, accepted.amount),
        ("payTo", closest.pay_to, accepted.pay_to),
        ("maxTimeoutSeconds", closest.max_timeout_seconds, accepted.max_timeout_seconds),
    ):
        if ours != theirs:
            raise _mismatch(field, accepts, accepted)
    raise _mismatch("extra", accepts, accepted)


_MISMATCH_CODES = {
    "scheme": "unsupported_scheme",
    "network": "network_mismatch",
    "asset": "asset_mismatch",
    "amount": "invalid_exact_evm_payload_authorization_value_mismatch",
    "payTo": "invalid_exact_evm_payload_recipient_mismatch",
    "maxTimeoutSeconds": "max_timeout_mismatch",
    "extra": "extra_mismatch",
}


def _mismatch(field: str, accepts: Sequence[PaymentRequirements], accepted: Any) -> PaymentError:
    del accepts, accepted  # the challenge the gate attaches carries the server's terms
    return PaymentError(
        402,
        _MISMATCH_CODES[field],
        f"the payment is for other terms than this server's: {field} differs",
    )


def encode_settle_response(response: SettleResponse) -> str:
    """``PAYMENT-RESPONSE`` value for a settlement result."""
    return b64json(response.model_dump(mode="json", by_alias=True, exclude_none=True))


_V1_SETTLE_FIELDS = ("success", "errorReason", "payer", "transaction", "network")


def encode_settle_response_v1(response: SettleResponse) -> str:
    """``X-PAYMENT-RESPONSE`` value for a settlement result, for a client that paid with v1.

    The v1 receipt has the v1 fields only and names the network the way the client did
    (``base-sepolia``); a network without a v1 name keeps its CAIP-2 id.
    """
    document = response.model_dump(mode="json", by_alias=True, exclude_none=True)
    document["network"] = v1_network_name(response.network) or response.network
    return b64json({k: document[k] for k in _V1_SETTLE_FIELDS if k in document})
