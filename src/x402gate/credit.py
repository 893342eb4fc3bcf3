"""Credit for returning payers: short-lived signed session tokens.

Metered routes (per token, per second) are paid with plain ``exact`` payments of the quote; what
the work did not use stays as the payer's credit in the store's ledger. A returning payer proves
which wallet the credit belongs to with a session token x402gate issued after a payment (the
``X402GATE-SESSION`` response header), sent back in the same header.

A token is ``v2.<payload>.<mac>``: base64url JSON ``{"p": payer, "n": network, "a": asset,
"o": origin, "s": session start, "e": expiry}`` and an HMAC-SHA256 over it with the gate's
secret. It is a bearer credential for the credit of that (payer, network, asset) at that public
origin until it expires: keep the lifetime short (minutes), and serve it over HTTPS only. A gate
accepts only tokens naming one of its own configured public origins, so a token issued by one
service is worthless at another sharing the secret.

Each answer served from credit carries a fresh token, but a renewed token keeps the start of the
session (the payment or sign-in that opened it): no token outlives ``start + max_lifetime_seconds``,
however often it is used. After that the payer pays or signs in again; its credit stays.
Tokens carry no balance: the ledger is the only source of truth.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
from dataclasses import dataclass
from typing import Any

from . import _json
from .errors import ConfigurationError

__all__ = ["SESSION_HEADER", "SessionTokens", "TokenClaims"]

SESSION_HEADER = "X402GATE-SESSION"
_VERSION = "v2"
_CACHE_SIZE = 4096
# What issue() writes for the payer and asset of a payment: lower-case EVM addresses.
_ADDRESS = re.compile(r"0x[0-9a-f]{40}")
# A CAIP-2 EVM network as payments name it (see assets.normalize_network).
_NETWORK = re.compile(r"eip155:[1-9][0-9]{0,18}")
# An origin as configured (scheme://host[:port], a DNS name at most 253 characters), or "".
_ORIGIN = re.compile(r"[!-~]{0,300}")
# Times are Unix seconds up to the end of year 9999, as far as datetime reaches.
_MAX_TIME = 253_402_300_799


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True, slots=True)
class TokenClaims:
    """Whose credit a valid token unlocks."""

    payer: str
    network: str
    asset: str
    expires_at: int
    origin: str = ""
    """The public origin the token was issued for."""
    started: int = 0
    """When the session began (the payment or sign-in); renewals keep it."""


def _time(value: Any) -> int | None:
    if type(value) is not int or not 0 <= value <= _MAX_TIME:
        return None
    return value


def _claims_of(data: Any) -> TokenClaims | None:
    """The claims of a decoded token payload when they are what :meth:`SessionTokens.issue`
    writes for a payment or sign-in; ``None`` otherwise.

    The MAC only says the gate's key signed the payload: whoever holds the key (or code that
    issues tokens for claims of its own) can sign anything, and every reader of the claims
    (credit accounts, checksums, the ledger) expects a payment's values. Checked here, once,
    so that no later step meets a payer that is no address, an unbounded network or a float.
    """
    if not isinstance(data, dict):
        return None
    payer, network, asset, origin = (data.get(k) for k in ("p", "n", "a", "o"))
    expires, started = _time(data.get("e")), _time(data.get("s"))
    if (
        not isinstance(payer, str)
        or _ADDRESS.fullmatch(payer) is None
        or not isinstance(asset, str)
        or _ADDRESS.fullmatch(asset) is None
        or not isinstance(network, str)
        or _NETWORK.fullmatch(network) is None
        or not isinstance(origin, str)
        or _ORIGIN.fullmatch(origin) is None
        or expires is None
        or started is None
        or started > expires
    ):
        return None
    return TokenClaims(payer, network, asset, expires, origin=origin, started=started)


class SessionTokens:
    """Issues and checks session tokens.

    :param secret: at least 32 bytes shared by every instance of the service (so a token issued
        by one is accepted by the others); a random one per process when omitted, which suits a
        single process only.
    :param ttl_seconds: token lifetime; each answer served from credit renews it.
    :param max_lifetime_seconds: hard limit from the session's start: renewals never go past it
        (one hour, or ``ttl_seconds`` when longer, by default).
    """

    def __init__(
        self,
        secret: bytes | str | None = None,
        *,
        ttl_seconds: int = 900,
        max_lifetime_seconds: int | None = None,
    ) -> None:
        if secret is None:
            secret = secrets.token_bytes(32)
        if isinstance(secret, str):
            secret = secret.encode()
        if not isinstance(secret, bytes) or len(secret) < 32:
            raise ConfigurationError("session token secret must be at least 32 bytes")
        if (
            isinstance(ttl_seconds, bool)
            or not isinstance(ttl_seconds, int)
            or not 10 <= ttl_seconds <= 86_400
        ):
            raise ConfigurationError(
                "session token ttl_seconds must be an integer from 10 to 86400"
            )
        if max_lifetime_seconds is None:
            max_lifetime_seconds = max(3600, ttl_seconds)
        if (
            isinstance(max_lifetime_seconds, bool)
            or not isinstance(max_lifetime_seconds, int)
            or not ttl_seconds <= max_lifetime_seconds <= 7 * 86_400
        ):
            raise ConfigurationError(
                "session token max_lifetime_seconds must be an integer from ttl_seconds to 604800"
            )
        self._key = hashlib.sha256(b"x402gate-session-v2" + secret).digest()
        self.ttl_seconds = ttl_seconds
        self.max_lifetime_seconds = max_lifetime_seconds
        # Small caches on the hot path of every request served from credit. A token is only
        # cached after its MAC checked out, under its exact text, and its expiry is still checked
        # on every use; issuing is deterministic for the same claims and second.
        self._checked: dict[str, TokenClaims] = {}
        self._issued: dict[tuple[str, str, str, str, int, int], str] = {}

    def _mac(self, payload: str) -> str:
        return _b64(hmac.new(self._key, f"{_VERSION}.{payload}".encode(), hashlib.sha256).digest())

    def expiry(self, started: float, now: float) -> int:
        """When a token issued ``now`` for a session begun at ``started`` expires (``<= now``:
        the session is over and no token is issued)."""
        return min(int(now) + self.ttl_seconds, int(started) + self.max_lifetime_seconds)

    def issue(
        self,
        payer: str,
        network: str,
        asset: str,
        now: float,
        *,
        origin: str = "",
        started: float | None = None,
    ) -> str:
        """A token for the credit of ``payer`` in ``asset`` on ``network`` at ``origin``, for a
        session begun at ``started`` (``now`` when omitted: a new session)."""
        start = int(now if started is None else started)
        expires = self.expiry(start, now)
        key = (payer.lower(), network, asset.lower(), origin, start, expires)
        token = self._issued.get(key)
        if token is not None:
            return token
        claims = {"p": key[0], "n": key[1], "a": key[2], "o": origin, "s": start, "e": expires}
        payload = _b64(json.dumps(claims, separators=(",", ":"), sort_keys=True).encode())
        token = f"{_VERSION}.{payload}.{self._mac(payload)}"
        if len(self._issued) >= _CACHE_SIZE:
            self._issued.clear()
        self._issued[key] = token
        return token

    def check(self, token: str | None, now: float) -> TokenClaims | None:
        """The claims of a valid, unexpired token; ``None`` for anything else (never raises).

        Valid means the gate's MAC and claims as :meth:`issue` writes them for a payment: the
        payer and asset lower-case EVM addresses, an ``eip155`` network, an origin of at most
        300 printable characters, integer start and expiry (start first) in range.
        """
        if not isinstance(token, str) or not token or len(token) > 1024 or not token.isascii():
            # compare_digest refuses non-ASCII text: such a token is simply not one of ours.
            return None
        cached = self._checked.get(token)
        if cached is not None:
            return cached if cached.expires_at > now else None
        parts = token.strip().split(".")
        if len(parts) != 3 or parts[0] != _VERSION:
            return None
        _, payload, mac = parts
        if not hmac.compare_digest(mac, self._mac(payload)):
            return None
        try:
            data = _json.loads(_unb64(payload))
        except (ValueError, RecursionError):
            return None
        claims = _claims_of(data)
        if claims is None:
            return None
        if claims.expires_at <= now:
            return None
        if len(self._checked) >= _CACHE_SIZE:
            self._checked.clear()
        self._checked[token] = claims
        return claims
