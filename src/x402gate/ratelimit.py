"""Per-route rate limits: per client IP before payment, per payer after the payment is checked.

A route's :class:`RateLimit` names up to two limits in the ``limits`` notation
(``"10/minute"``, ``"100 per hour"``, ``"5/second;200/day"``):

``per_ip``
    counted on every request to the route, paid or not, by the client address the gate
    derives (``trusted_proxies`` aware), before anything else is done: a flood of unpaid
    requests is answered 429 without pricing, 402 challenges or store work.
``per_payer``
    counted on requests that carry a payment, by the payer's address, once the payment's
    signature was checked locally and before anything moves: no claim in the store, no credit
    reservation, no channel step, no facilitator call. A payer over the limit is answered 429
    and charged nothing. (A signature that cannot be proven offline, a smart wallet's, names a
    payer only once the facilitator verified it: its per-payer limit is counted then, and a
    limited request is released unsettled.)

Counting is done by a :class:`RateLimiter` of the gate, built on the ``limits`` package (the
``ratelimit`` extra) with a memory or Redis storage and a moving or fixed window. A limited
request gets ``429`` with ``Retry-After`` and ``RateLimit-Limit``, ``RateLimit-Remaining``,
``RateLimit-Reset`` and ``RateLimit-Policy`` headers. A storage failure fails closed (503).
"""

from __future__ import annotations

import asyncio
import math
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from .errors import ConfigurationError, PaymentError, StoreError

if TYPE_CHECKING:
    from limits import RateLimitItem
    from limits.storage import Storage
    from limits.strategies import RateLimiter as Strategy

__all__ = [
    "RATE_LIMITED",
    "RATE_LIMIT_HEADERS",
    "RateLimit",
    "RateLimitStrategy",
    "RateLimiter",
    "as_rate_limit",
    "check_storage_url",
    "check_strategy",
    "default_storage_url",
]

RateLimitStrategy = Literal["moving-window", "fixed-window"]
"""How requests are counted: over the last period (``moving-window``, exact) or per calendar
period (``fixed-window``, cheaper; up to twice the limit across a period boundary)."""

STRATEGIES: tuple[str, ...] = ("moving-window", "fixed-window")

RATE_LIMITED = "rate_limited"
"""``PaymentError.code`` of a 429."""

RATE_LIMIT_HEADERS = (
    "Retry-After",
    "RateLimit-Limit",
    "RateLimit-Remaining",
    "RateLimit-Reset",
    "RateLimit-Policy",
)
"""Headers of a 429 (browsers' scripts may read them: they are CORS-exposed)."""

_MAX_IDENTITY = 128
"""Characters of a client address or payer kept in a counter key: a bound on client bytes."""


def check_strategy(strategy: Any) -> RateLimitStrategy:
    """``strategy`` if it is a known counting strategy; :class:`ConfigurationError` otherwise."""
    if strategy not in STRATEGIES:
        raise ConfigurationError(
            f"rate_limit_strategy must be one of {', '.join(STRATEGIES)}, not {strategy!r}"
        )
    return strategy  # type: ignore[no-any-return]


STORAGE_SCHEMES = ("memory", "redis", "rediss", "redis+unix", "redis+cluster", "redis+sentinel")
"""``limits`` storages the counters may live in: one process, or a Redis shared by instances."""


def check_storage_url(url: Any) -> str:
    """``url`` if it names a counter storage (:data:`STORAGE_SCHEMES`); otherwise
    :class:`ConfigurationError`. Nothing is connected to."""
    scheme = url.partition("://")[0].lower() if isinstance(url, str) and "://" in url else None
    if scheme not in STORAGE_SCHEMES:
        shown = f"{scheme}://" if scheme else repr(url) if not isinstance(url, str) else "no URL"
        raise ConfigurationError(
            f"rate limit storage must be memory:// or a redis:// URL, not {shown}"
        )
    return url  # type: ignore[no-any-return]


def _parse(text: Any, what: str) -> tuple[RateLimitItem, ...]:
    if not isinstance(text, str) or not text.strip():
        raise ConfigurationError(f"{what} must be a rate like '10/minute', not {text!r}")
    try:
        from limits import parse_many
    except ImportError:  # pragma: no cover - depends on the install
        raise ConfigurationError(
            "rate limits need the 'limits' package: pip install 'x402gate[ratelimit]'"
        ) from None
    try:
        items = tuple(parse_many(text))
    except ValueError:
        raise ConfigurationError(
            f"{what}: {text!r} is not a rate (write e.g. '10/minute', '100 per hour', "
            "'5/second;200/day')"
        ) from None
    if not items or any(item.amount < 1 for item in items):
        raise ConfigurationError(f"{what}: {text!r} allows no request at all")
    return items


@dataclass(frozen=True, slots=True)
class RateLimit:
    """The rate limits of one route (see the module docstring).

    :param per_ip: rate per client address, counted before payment (``"60/minute"``).
    :param per_payer: rate per payer address, counted after the payment was checked locally and
        before it is claimed, verified or settled (``"10/minute"``).
    :param scope: name of the counters; routes with the same scope share them. By default each
        request path counts apart (the gateway and route tables give their route key).
    """

    per_ip: str | None = None
    per_payer: str | None = None
    scope: str | None = None
    ip_items: tuple[RateLimitItem, ...] = field(default=(), init=False, repr=False, compare=False)
    payer_items: tuple[RateLimitItem, ...] = field(
        default=(), init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        if self.per_ip is None and self.per_payer is None:
            raise ConfigurationError("rate_limit needs per_ip, per_payer or both")
        if self.scope is not None and (not isinstance(self.scope, str) or not self.scope):
            raise ConfigurationError("rate_limit scope must be a non-empty string")
        if self.per_ip is not None:
            object.__setattr__(self, "ip_items", _parse(self.per_ip, "rate_limit per_ip"))
        if self.per_payer is not None:
            object.__setattr__(self, "payer_items", _parse(self.per_payer, "rate_limit per_payer"))

    def scoped(self, scope: str) -> RateLimit:
        """This limit counted under ``scope`` unless it names its own."""
        if self.scope is not None:
            return self
        return RateLimit(self.per_ip, self.per_payer, scope)


def as_rate_limit(value: Any) -> RateLimit | None:
    """The :class:`RateLimit` a route option writes: ``None``, a ``RateLimit``, a rate string
    (a per-IP limit: every request counts, before payment) or a mapping with ``per_ip``,
    ``per_payer`` and ``scope`` (the YAML and settings form)."""
    if value is None or isinstance(value, RateLimit):
        return value
    if isinstance(value, str):
        return RateLimit(per_ip=value)
    if isinstance(value, Mapping):
        known = ("per_ip", "per_payer", "scope")
        unknown = [key for key in value if key not in known]
        if unknown:
            from .options import unknown_key_message

            raise ConfigurationError(
                "rate_limit: " + "; ".join(unknown_key_message(k, known) for k in unknown)
            )
        return RateLimit(
            per_ip=value.get("per_ip"), per_payer=value.get("per_payer"), scope=value.get("scope")
        )
    raise ConfigurationError(
        "rate_limit must be a rate like '10/minute', a RateLimit or a mapping with per_ip and "
        f"per_payer, not {type(value).__name__}"
    )


def default_storage_url(store: Any) -> str:
    """Where counters live by default: the store's Redis when the store URL is a Redis one
    (so every instance sharing the store shares the counters), memory otherwise."""
    if isinstance(store, str):
        scheme = urllib.parse.urlsplit(store).scheme.lower()
        if scheme in ("redis", "rediss"):
            base, _, rest = store.partition("?")
            query = [
                (k, v)
                for k, v in urllib.parse.parse_qsl(rest, keep_blank_values=True)
                if k != "key_prefix"
            ]
            return base + ("?" + urllib.parse.urlencode(query) if query else "")
    return "memory://"


class RateLimiter:
    """Counts requests for the gate's routes with the ``limits`` package.

    :param storage: a ``limits`` storage URL: ``memory://`` (one process) or ``redis://...``
        (shared by every process and instance using it).
    :param strategy: ``moving-window`` (the default) or ``fixed-window``.
    :param key_prefix: put before every counter's key, so two services can share a Redis.
    """

    def __init__(
        self,
        storage: str = "memory://",
        strategy: RateLimitStrategy = "moving-window",
        *,
        key_prefix: str = "x402gate",
    ) -> None:
        check_strategy(strategy)
        check_storage_url(storage)
        try:
            from limits.storage import Storage as SyncStorage
            from limits.storage import storage_from_string
            from limits.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter
        except ImportError:  # pragma: no cover - depends on the install
            raise ConfigurationError(
                "rate limits need the 'limits' package: pip install 'x402gate[ratelimit]'"
            ) from None
        try:
            built = storage_from_string(storage)
        except Exception as exc:
            raise ConfigurationError(
                f"rate_limit_storage: cannot use this storage ({type(exc).__name__})"
            ) from None
        assert isinstance(built, SyncStorage)
        self.storage: Storage = built
        self.blocking = not storage.startswith("memory://")
        self.strategy = strategy
        self.key_prefix = key_prefix
        self._limiter: Strategy = (
            MovingWindowRateLimiter(self.storage)
            if strategy == "moving-window"
            else FixedWindowRateLimiter(self.storage)
        )

    def __repr__(self) -> str:
        return f"RateLimiter({type(self.storage).__name__}, {self.strategy!r})"

    def check(
        self, items: tuple[RateLimitItem, ...], kind: str, scope: str, identity: str | None
    ) -> PaymentError | None:
        """Count one request of ``identity`` against ``items``: the 429 to answer when one of
        them is exhausted, else ``None``. Blocks on a Redis storage (run it in a thread)."""
        who = (identity or "-")[:_MAX_IDENTITY]
        keys = (self.key_prefix, kind, scope, who)
        try:
            for item in items:
                if not self._limiter.hit(item, *keys):
                    stats = self._limiter.get_window_stats(item, *keys)
                    return _limited(item, stats.reset_time, kind)
        except Exception as exc:
            raise StoreError(f"rate limit storage failed: {type(exc).__name__}") from exc
        return None

    async def acheck(
        self, items: tuple[RateLimitItem, ...], kind: str, scope: str, identity: str | None
    ) -> PaymentError | None:
        """:meth:`check` from async code (in a thread when the storage does I/O)."""
        if self.blocking:
            return await asyncio.to_thread(self.check, items, kind, scope, identity)
        return self.check(items, kind, scope, identity)

    def reset(self) -> None:
        """Forget every counter of the storage (tests; operators after a mistake)."""
        self.storage.reset()


def _limited(item: RateLimitItem, reset_time: float, kind: str) -> PaymentError:
    wait = max(1, math.ceil(reset_time - time.time()))
    window = item.get_expiry()
    who = "client address" if kind == "ip" else "payer"
    return PaymentError(
        429,
        RATE_LIMITED,
        f"too many requests from this {who}: retry in {wait} s",
        headers={
            "Retry-After": str(wait),
            "RateLimit-Limit": str(item.amount),
            "RateLimit-Remaining": "0",
            "RateLimit-Reset": str(wait),
            "RateLimit-Policy": f"{item.amount};w={window}",
        },
    )
