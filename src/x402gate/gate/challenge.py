"""The answers the gate builds before any payment is taken: payment requirements, the 402
challenge (x402 v2 header and v1 body) with its small cache.

A 402 for a request without payment on a flat-priced route depends only on the route and the
URL: it is built once and then copied from a bounded cache (:func:`plain_challenge`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .. import protocol
from ..credit import SESSION_HEADER
from ..errors import ConfigurationError, PaymentError
from ..money import scale_to_asset
from ..pricing import Flat, PayerPrice, resolve_quote
from ..request import RequestInfo
from ..schemes import ExactScheme
from ..siwx import SIWX_HEADER, SIWX_KEY
from . import payer_prices
from .events import EventKind, PaymentEvent
from .idempotency import PAYMENT_IDENTIFIER, payment_identifier_extension
from .model import Route

if TYPE_CHECKING:
    from x402.schemas import PaymentRequirements

    from .engine import PaymentGate

__all__ = [
    "CREDIT_NOTE",
    "PAYING_HEADERS",
    "UNPAID",
    "cached_challenge",
    "challenge",
    "plain_challenge",
    "remember_challenge",
    "requirements",
    "resource_info",
]

logger = logging.getLogger("x402gate")

UNPAID = "this resource requires payment"
CREDIT_NOTE = (
    "metered route: an exact payment is charged what the request used and the change is kept "
    f"as the payer's credit; send back the {SESSION_HEADER} header of the answer to spend it"
)
"""What a 402 of a metered route says about ``exact`` payments (in the offers' ``extra`` and the
body), so that a client never pays the quote again and again while its change piles up."""
PAYING_HEADERS = (protocol.PAYMENT_SIGNATURE, protocol.X_PAYMENT, SESSION_HEADER, SIWX_HEADER)
"""Request headers that make a request more than a plain "what does it cost?": a payment, a
session token or a sign-in. Integrations that answer unpaid requests early check the same."""
CHALLENGE_CACHE_SIZE = 1024


async def requirements(
    gate: PaymentGate, route: Route, request: RequestInfo
) -> list[PaymentRequirements]:
    """The payment requirements of this request (its quote in each accepted asset).

    With the built-in schemes they depend on the route and the quote only, so a route's offers
    at a quote are built once and kept (bounded, :data:`CHALLENGE_CACHE_SIZE`); each request
    gets a list of its own."""
    try:
        quote = await resolve_quote(route.price, request)
        if isinstance(route.price, PayerPrice):
            quote = await payer_prices.exact_quote(gate, route.price, request, quote)
    except PaymentError:
        raise
    except ConfigurationError as exc:
        logger.error("pricing failed for %s: %s", request.resource, exc)
        raise PaymentError(
            500, "pricing_error", "the price of this request could not be computed"
        ) from exc
    if type(gate.scheme) is not ExactScheme:
        # A scheme of the application's own may answer differently from one call to the next.
        return _offers(gate, route, quote)
    # The channel scheme is set at start-up when the facilitator names its authorizer.
    key = (id(route), quote, id(gate.channel_scheme))
    cached = gate._offers.get(key)
    if cached is not None and cached[0] is route:
        return list(cached[1])
    accepts = _offers(gate, route, quote)
    if len(gate._offers) >= CHALLENGE_CACHE_SIZE:
        gate._offers.clear()
    gate._offers[key] = (route, tuple(accepts))
    return accepts


def _offers(gate: PaymentGate, route: Route, quote: int) -> list[PaymentRequirements]:
    """The route's requirements at ``quote``: ``exact`` and, with channels, ``batch-settlement``
    in each of its assets."""
    assets = route.assets or gate.assets
    pay_to = route.pay_to or gate.pay_to
    timeout = route.max_timeout_seconds or gate.max_timeout_seconds
    build = gate.scheme.requirements
    accepts = []
    for asset in assets:
        try:
            amount = scale_to_asset(quote, asset.decimals)
        except ConfigurationError as exc:
            logger.error("price %s not payable in %s: %s", quote, asset.symbol, exc)
            raise PaymentError(
                500, "pricing_error", "the price of this request could not be computed"
            ) from exc
        accepts.append(build(asset, amount, pay_to[asset.network], timeout))
    channels = gate.channel_scheme
    if channels is not None:
        offers = [
            channels.requirements(asset, int(offer.amount), offer.pay_to, timeout)
            for asset, offer in zip(assets, accepts, strict=True)
        ]
        # Clients take the first option they support. Metered routes list channels first: a
        # voucher's ceiling is the quote and the charge is what was used, where ``exact``
        # collects the whole quote. Flat routes list ``exact`` first unless configured otherwise.
        prefer = route.price.metered or (gate.channels is not None and gate.channels.prefer)
        accepts = offers + accepts if prefer else accepts + offers
    return accepts


def resource_info(route: Route, request: RequestInfo) -> Any:
    from x402.schemas import ResourceInfo

    return ResourceInfo(url=request.url, description=route.description, mime_type=route.mime_type)


def challenge(
    gate: PaymentGate,
    route: Route,
    request: RequestInfo,
    accepts: Sequence[PaymentRequirements],
    code: str,
    message: str,
    status: int = 402,
    extra_headers: Mapping[str, str] | None = None,
) -> PaymentError:
    """The 402 (or ``status``) answer offering ``accepts``, in the v2 header and the body."""
    extensions = dict(route.extensions or {})
    if route.payment_identifier != "off":
        extensions[PAYMENT_IDENTIFIER] = payment_identifier_extension(
            route.payment_identifier == "required"
        )
    if route.price.metered:
        # Returning payers sign in to spend the credit left from earlier payments.
        networks = sorted({a.network for a in (route.assets or gate.assets)})
        extensions[SIWX_KEY] = gate.sign_in.declaration(request.url, networks, gate.clock.now())
    if route.price.metered:
        accepts = [_with_credit_terms(req) for req in accepts]
    resource = resource_info(route, request)
    required = protocol.build_payment_required(accepts, resource, code, extensions)
    document = required.model_dump(mode="json", by_alias=True, exclude_none=True)
    headers = {
        protocol.PAYMENT_REQUIRED: protocol.b64json(document),
        "Cache-Control": "no-store",
    }
    # v2 clients read the header; v1 clients (x402-fetch 1.x, x402-axios 0.x) only read the
    # body, so where a network has a v1 name the body is the v1 document, else they could
    # never pay. It keeps the v2 resource and extensions, which v1 readers ignore.
    v1_document = protocol.build_payment_required_v1(accepts, resource, code)
    body = {**document, **(v1_document or {}), "message": message}
    if route.price.metered:
        body["credit"] = CREDIT_NOTE
    if extra_headers:
        headers.update(extra_headers)
    return PaymentError(status, code, message, headers=headers, body=body)


def _with_credit_terms(req: PaymentRequirements) -> PaymentRequirements:
    """An ``exact`` offer of a metered route, its ``extra`` saying where the change goes.

    Only the 402 carries these keys: a client echoing them back still matches the gate's own
    requirements (a client may add keys to ``extra``)."""
    if req.scheme != "exact":
        return req
    extra = {**(req.extra or {}), "change": "credit", "sessionHeader": SESSION_HEADER}
    return req.model_copy(update={"extra": extra})


def plain_challenge(gate: PaymentGate, route: Route, request: RequestInfo) -> PaymentError | None:
    """The 402 for a request without any payment on a flat-priced route, from a small cache
    (its terms depend only on the route and the URL), or ``None`` when that does not apply."""
    if type(route.price) is not Flat:
        return None
    headers = request.headers
    if any(headers.get(name) is not None for name in PAYING_HEADERS):
        return None
    key = (id(route), request.url)
    cached = gate._challenges.get(key)
    if cached is None or cached[0] is not route:
        return None
    return PaymentError(
        402, "payment_required", UNPAID, headers=dict(cached[1]), body=dict(cached[2])
    )


def cached_challenge(gate: PaymentGate, route: Route, request: RequestInfo) -> PaymentError | None:
    """The 402 to send without any await, or ``None`` (then run :meth:`PaymentGate.begin`).

    It applies once the gate started, while no event listener waits for the ``challenged``
    event (listeners may be coroutines), to a request that :func:`plain_challenge` answers.
    Like ``begin``, it first puts the request's URL under the configured public origin.
    """
    if not gate._started or gate._listeners:
        return None
    if route.rate_limit is not None and route.rate_limit.ip_items:
        return None  # every request counts against the per-IP limit: begin() counts it
    request.url = gate.public_url(request)
    answer = plain_challenge(gate, route, request)
    if answer is not None and gate.telemetry.wants(EventKind.CHALLENGED):
        gate.telemetry.observe(PaymentEvent(EventKind.CHALLENGED, request, route, status=402))
    return answer


def remember_challenge(
    gate: PaymentGate, route: Route, request: RequestInfo, answer: PaymentError
) -> None:
    """Keep the 402 of a flat-priced route for :func:`plain_challenge` (a bounded cache)."""
    if type(route.price) is not Flat:
        return
    challenges = gate._challenges
    challenges[(id(route), request.url)] = (route, dict(answer.headers), answer.body)
    while len(challenges) > CHALLENGE_CACHE_SIZE:
        challenges.pop(next(iter(challenges)))
