"""Metered routes: the credit path, session tokens and credit reservations.

A returning payer identified by a session token or a sign-in is served from its credit: the
request's quote is reserved (:func:`credit_path`). A new payment for a metered route becomes
credit first (:func:`fund_reservation`). Once the answer went out, the charge is committed and
the rest returned (:mod:`x402gate.gate.charges`).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..assets import Asset, checksum_address
from ..credit import SESSION_HEADER, TokenClaims
from ..errors import PaymentError, StoreError
from ..money import scale_to_asset
from ..request import RequestInfo
from ..siwx import SIWX_HEADER, split_url
from ..stores import ClaimResult
from ..stores.base import credit_account
from .failures import failure
from .model import Payment, PaymentSession, Route
from .settled_writes import settled_write
from .throttle import limit_payer

if TYPE_CHECKING:
    from x402.schemas import PaymentRequirements

    from .engine import PaymentGate

__all__ = [
    "balance",
    "credit_headers",
    "credit_path",
    "credit_payment",
    "credit_session",
    "credit_status",
    "fund_reservation",
    "identify",
    "owe_topup",
    "token_claims",
    "with_topup",
]

logger = logging.getLogger("x402gate")


async def credit_path(
    gate: PaymentGate, route: Route, request: RequestInfo, accepts: list[PaymentRequirements]
) -> tuple[PaymentSession | None, list[PaymentRequirements]]:
    """A session served from a returning payer's credit, or the requirements to pay: the
    whole quote, or only what the payer's credit lacks."""
    claims = await gate._identify(route, request)
    if claims is None:
        return None, accepts
    # A session token or sign-in names the payer: counted before any credit is reserved.
    await limit_payer(gate, route, request, claims.payer)
    adjusted: list[PaymentRequirements] = []
    for req in accepts:
        if req.network != claims.network or req.asset.lower() != claims.asset:
            adjusted.append(req)
            continue
        account = credit_account(req.network, req.asset, claims.payer)
        if gate._pending_commits:
            await gate._await_commits(account)
        quote = int(req.amount)
        reservation = secrets.token_hex(16)
        now = gate.clock.now()
        try:
            reserved = await gate._store_call(
                gate.store.credit_reserve,
                account,
                quote,
                reservation,
                int(now) + gate.credit_ttl_seconds,
                now,
            )
            balance = (
                None
                if reserved
                else await gate._store_call(gate.store.credit_balance, account, now)
            )
        except StoreError as exc:
            logger.error("credit ledger failed: %s", exc)
            raise failure(exc) from None
        if reserved:
            gate.holds.add(reservation, int(now) + gate.credit_ttl_seconds)
            session = gate._credit_session(route, request, req, claims.payer, quote, reservation)
            session.session_started = claims.started
            return session, accepts
        assert balance is not None
        missing = max(quote - balance.available, 1)
        adjusted.append(req.model_copy(update={"amount": str(missing)}))
    return None, adjusted


def token_claims(gate: PaymentGate, headers: Mapping[str, str], now: float) -> TokenClaims | None:
    claims = gate.session_tokens.check(headers.get(SESSION_HEADER), now)
    if claims is None or claims.origin not in gate.public_origins:
        return None  # issued for another service sharing the secret, or malformed
    return claims


async def identify(gate: PaymentGate, route: Route, request: RequestInfo) -> TokenClaims | None:
    """The payer a session token or a sign-in vouches for, if any."""
    now = gate.clock.now()
    claims = gate._token_claims(request.headers, now)
    if claims is not None:
        return claims
    header = request.headers.get(SIWX_HEADER)
    if header is None:
        return None
    assets = route.assets or gate.assets
    proof = gate.sign_in.verify(
        header,
        request.url,
        sorted({a.network for a in assets}),
        now,
        origins=gate.public_origins,
    )
    try:
        # A signed challenge opens the credit once: its nonce is spent like a payment.
        key = f"siwx|{proof.nonce}"
        token = secrets.token_hex(16)
        used = await gate._store_call(
            gate.store.claim, key, request.resource, token, proof.expires_at, now
        )
        if used is ClaimResult.CLAIMED:
            await gate._store_call(gate.store.mark_used, key, token)
    except StoreError as exc:
        raise failure(exc) from None
    if used is not ClaimResult.CLAIMED:
        raise PaymentError(402, "invalid_siwx_nonce_reused", "this sign-in was already used")
    asset = next(a for a in assets if a.network == proof.network)
    return TokenClaims(
        proof.address.lower(),
        proof.network,
        asset.address.lower(),
        proof.expires_at,
        origin=split_url(request.url)[0],
        started=int(now),
    )


def with_topup(gate: PaymentGate, route: Route, req: PaymentRequirements) -> PaymentRequirements:
    asset = next(
        a
        for a in (route.assets or gate.assets)
        if a.network == req.network and a.address == req.asset
    )
    floor = scale_to_asset(route.credit_topup, asset.decimals)
    return req if int(req.amount) >= floor else req.model_copy(update={"amount": str(floor)})


def credit_session(
    gate: PaymentGate,
    route: Route,
    request: RequestInfo,
    req: PaymentRequirements,
    payer: str,
    quote: int,
    reservation: str,
) -> PaymentSession:
    asset = next(
        a
        for a in (route.assets or gate.assets)
        if a.network == req.network and a.address == req.asset
    )
    payment = Payment(
        payer=checksum_address(payer),
        amount=quote,
        asset=asset,
        pay_to=req.pay_to,
        nonce="",
        resource=request.resource,
        valid_before=0,
        from_credit=True,
    )
    started = gate.clock.now()
    return PaymentSession(
        route=route,
        request=request,
        payment=payment,
        payload=None,
        requirements=req,
        version=2,
        key="",
        token="",
        quote=quote,
        reservation=reservation,
        started=started,
        deadline=gate._deadline(route, started),
    )


async def credit_payment(gate: PaymentGate, session: PaymentSession) -> None:
    """Credit what a metered payment paid on chain, once per authorization. A store that
    still refuses it after the retries gets it from the background thread once it is back."""
    payment = session.payment
    account = credit_account(payment.network, payment.asset.address, payment.payer)
    try:
        await settled_write(
            gate, gate.store.credit_topup, account, payment.amount, session.key, gate.clock.now()
        )
    except StoreError as exc:
        logger.error("credit ledger failed after a recovered payment: %s", exc)
        owe_topup(gate, account, payment.amount, session.key)


def owe_topup(gate: PaymentGate, account: str, amount: int, ref: str) -> None:
    """Leave a settled payment's top-up to the background thread (idempotent per ``ref``)."""
    store = gate.store

    def write(now: float) -> None:
        store.credit_topup(account, amount, ref, now)

    gate.holds.owe(f"credit top-up {ref}", write)


async def fund_reservation(gate: PaymentGate, session: PaymentSession) -> None:
    """After a metered payment settled: credit what was paid, then hold the quote.

    Both writes are retried while the store fails (:func:`settled_write`). If the top-up is
    still refused, it is owed (applied in the background once the store is back) and the
    payer is told so with a 503 that carries its session token, as is a payer whose top-up
    went through but whose hold did not: either way the payment is credit, spent with that
    token on a retry, and paying again is never needed."""
    payment = session.payment
    account = credit_account(payment.network, payment.asset.address, payment.payer)
    reservation = secrets.token_hex(16)
    now = gate.clock.now()
    try:
        await settled_write(
            gate, gate.store.credit_topup, account, payment.amount, session.key, now
        )
    except StoreError as exc:
        logger.error("credit ledger failed after settlement: %s", exc)
        owe_topup(gate, account, payment.amount, session.key)
        raise _credited_later(
            gate,
            session,
            "your payment was received and is added to your credit once the "
            "payment store is back; retry with the session token, do not pay again",
        ) from None
    try:
        reserved = await settled_write(
            gate,
            gate.store.credit_reserve,
            account,
            session.quote,
            reservation,
            int(now) + gate.credit_ttl_seconds,
            now,
        )
    except StoreError as exc:
        logger.error("credit ledger failed after settlement: %s", exc)
        raise _credited_later(
            gate,
            session,
            "your payment was added to your credit; the payment store is "
            "unavailable, retry with the session token, do not pay again",
        ) from None
    if not reserved:
        # Paid, but another request of the same payer took the credit meanwhile: nothing is
        # lost (the payment is credit now); the payer retries with its session token.
        raise PaymentError(
            402,
            "insufficient_credit",
            "your payment was added to your credit, but it does not cover this request yet",
            headers=gate._credit_headers(session),
        )
    gate.holds.add(reservation, int(now) + gate.credit_ttl_seconds)
    session.reservation = reservation


def _credited_later(gate: PaymentGate, session: PaymentSession, message: str) -> PaymentError:
    """The 503 of a metered payment that settled but could not fund its request: the session
    token goes with it, since the payment is (or will be) the payer's credit."""
    headers = {"Cache-Control": "no-store", "Retry-After": "1", **gate._credit_headers(session)}
    return PaymentError(503, "store_unavailable", message, headers=headers)


def credit_headers(gate: PaymentGate, session: PaymentSession) -> dict[str, str]:
    payment = session.payment
    now = gate.clock.now()
    started = session.session_started if session.session_started is not None else now
    if gate.session_tokens.expiry(started, now) <= now:
        return {}  # the session reached its maximum lifetime: pay or sign in again
    token = gate.session_tokens.issue(
        payment.payer,
        payment.network,
        payment.asset.address,
        now,
        origin=split_url(session.request.url)[0],
        started=started,
    )
    return {SESSION_HEADER: token}


async def credit_status(
    gate: PaymentGate, headers: Mapping[str, str]
) -> tuple[int, dict[str, Any]]:
    """The answer to ``GET /.well-known/x402/credit``: the balance of the payer whose
    ``X402GATE-SESSION`` token the request carries (401 without a valid one)."""
    claims = gate._token_claims(headers, gate.clock.now())
    if claims is None:
        return 401, {
            "error": "session_required",
            "message": f"send the {SESSION_HEADER} token of a paid metered request",
        }
    account = credit_account(claims.network, claims.asset, claims.payer)
    if gate._pending_commits:
        await gate._await_commits(account)  # the balance after the answers already sent
    try:
        result = await gate._store_call(gate.store.credit_balance, account, gate.clock.now())
    except StoreError as exc:
        answer = failure(exc)
        return answer.status_code, answer.body
    return 200, {
        "payer": checksum_address(claims.payer),
        "network": claims.network,
        "asset": checksum_address(claims.asset),
        "available": str(result.available),
        "reserved": str(result.reserved),
    }


async def balance(gate: PaymentGate, payer: str, asset: Asset | None = None) -> int:
    """A payer's available credit in atomic units of ``asset`` (default: the gate's first)."""
    asset = asset or gate.assets[0]
    account = credit_account(asset.network, asset.address, payer)
    if gate._pending_commits:
        await gate._await_commits(account)  # the balance after the answers already sent
    result = await gate._store_call(gate.store.credit_balance, account, gate.clock.now())
    return int(result.available)
