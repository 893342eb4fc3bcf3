"""Upstreams and the targets a route forwards to: picking, fallback order, circuit breaking.

An :class:`Upstream` is one entry of the file's ``upstreams:``: an origin, a path prefix, the
headers the gateway injects, and a connection pool per event loop. A route forwards to one
upstream (``upstream: name``) or to a *logical model* served by several (``targets:``): each
:class:`UpstreamTarget` names an upstream, a model-name rewrite, a weight and a priority.

:meth:`TargetSet.order` gives the order in which one request tries them: the lowest priority
level first, its targets drawn by weight (without replacement: the others of the level are the
first fallbacks), then the next level. A :class:`Breaker` per upstream skips an upstream that
keeps failing for ``open_seconds``, then lets one request through to probe it (half-open). Every
upstream keeps an :class:`UpstreamStats` (successes, failures by kind, fallbacks, skips, latency
to the answer's headers), in memory and bounded, for metrics to read; none of it names an URL or
a header.
"""

from __future__ import annotations

import asyncio
import random
import re
import ssl
import time
import weakref
from dataclasses import dataclass, field
from typing import Literal, TypedDict

import httpx

from .clients import DEFAULT_CLIENT, UpstreamClient, UpstreamOptions, client_class
from .config import UpstreamSpec

__all__ = [
    "FALLBACK_STATUSES",
    "Breaker",
    "FailureKind",
    "TargetSet",
    "Upstream",
    "UpstreamReport",
    "UpstreamStats",
    "UpstreamTarget",
]

_NOT_IN_TARGET = re.compile(rb"[^\x21-\x22\x24-\x7e]")  # visible ASCII but "#"


def _percent_encode(match: re.Match[bytes]) -> bytes:
    return b"%%%02X" % match.group()[0]


FALLBACK_STATUSES = frozenset({402, 429, *range(500, 600)})
"""Upstream statuses after which a request goes to its next target (nothing was sent yet)."""

FailureKind = Literal["unavailable", "timeout", "status"]
"""Why an attempt failed: no connection (refused, reset, DNS, TLS), no answer in time, or an
answer whose status is in :data:`FALLBACK_STATUSES`."""


class Breaker:
    """A circuit breaker: ``failures`` failures in a row open it for ``open_seconds``.

    Closed, every request may use the upstream. Open, none may until the window ends; then it
    is half-open: one request (the probe) goes through and the others still skip it; the probe's
    success closes the breaker, its failure opens it for another window. ``failures=0``: never
    opens (routes with one upstream, whose every request must reach it).
    """

    __slots__ = ("_clock", "failures", "open_seconds", "opened_at", "opens", "probing", "streak")

    def __init__(
        self, failures: int, open_seconds: float, *, clock: object = time.monotonic
    ) -> None:
        self.failures = failures
        self.open_seconds = open_seconds
        self.streak = 0
        """Failures in a row."""
        self.opened_at: float | None = None
        self.probing = False
        self.opens = 0
        """How many times it opened (for metrics)."""
        self._clock = clock

    @property
    def state(self) -> Literal["closed", "open", "half-open"]:
        if self.opened_at is None:
            return "closed"
        now: float = self._clock()  # type: ignore[operator]
        return "open" if now - self.opened_at < self.open_seconds else "half-open"

    def allow(self) -> bool:
        """Whether a request may use the upstream now; ``True`` for an open breaker's probe
        (the caller must then report :meth:`success` or :meth:`failure`, or :meth:`abandon`)."""
        if self.opened_at is None:
            return True
        if self.probing:
            return False
        now: float = self._clock()  # type: ignore[operator]
        if now - self.opened_at < self.open_seconds:
            return False
        self.probing = True
        return True

    def success(self) -> None:
        self.streak = 0
        self.opened_at = None
        self.probing = False

    def failure(self) -> None:
        self.streak += 1
        if self.failures and (self.probing or self.streak >= self.failures):
            self.opened_at = self._clock()  # type: ignore[operator]
            self.opens += 1
        self.probing = False

    def abandon(self) -> None:
        """The probe ended with no verdict (the client left): the next request probes."""
        self.probing = False


class UpstreamReport(TypedDict):
    """One upstream's counters and breaker state (:meth:`Gateway.upstream_stats
    <x402gate.gateway.Gateway.upstream_stats>`): no URL, no header."""

    successes: int
    failures: dict[str, int]
    fallbacks: int
    skipped: int
    latency_seconds_mean: float
    latency_seconds_max: float
    breaker: Literal["closed", "open", "half-open"]
    breaker_opens: int


@dataclass(slots=True)
class UpstreamStats:
    """What one upstream did, since the gateway started (counters only: bounded memory)."""

    successes: int = 0
    """Attempts answered with a status not in :data:`FALLBACK_STATUSES`."""
    failures: dict[str, int] = field(
        default_factory=lambda: {"unavailable": 0, "timeout": 0, "status": 0}
    )
    fallbacks: int = 0
    """Failed attempts after which the request went on to another target."""
    skipped: int = 0
    """Requests that did not try this upstream because its breaker was open."""
    latency_seconds_total: float = 0.0
    """Sum, over successful attempts, of the time to the answer's status and headers."""
    latency_seconds_max: float = 0.0

    def report(self, breaker: Breaker) -> UpstreamReport:
        """The counters and ``breaker``'s state as plain values (a copy: safe to serialise)."""
        mean = self.latency_seconds_total / self.successes if self.successes else 0.0
        return {
            "successes": self.successes,
            "failures": dict(self.failures),
            "fallbacks": self.fallbacks,
            "skipped": self.skipped,
            "latency_seconds_mean": mean,
            "latency_seconds_max": self.latency_seconds_max,
            "breaker": breaker.state,
            "breaker_opens": breaker.opens,
        }


class Upstream:
    """One upstream: origin, path prefix, injected headers, timeout, a client per event loop,
    its :class:`Breaker` and :class:`UpstreamStats`.

    The injected header values are secrets; they are read here only to build requests.

    :param client: which :class:`~x402gate.gateway.clients.UpstreamClient` forwards
        (``gateway.upstream_client``: ``aiohttp``, ``httpx`` or ``builtin``).
    """

    def __init__(self, name: str, spec: UpstreamSpec, *, client: str = DEFAULT_CLIENT) -> None:
        self.name = name
        self.client_name = client
        self._client_class = client_class(client)  # a missing library fails the start
        base = httpx.URL(spec.url)  # validated by the config; only parsed here
        self.origin = f"{base.scheme}://{base.netloc.decode('ascii')}"
        self.tls = base.scheme == "https"
        self.host = base.raw_host.decode("ascii")
        self.port = base.port or (443 if self.tls else 80)
        self.host_header = base.netloc  # what httpx writes: the host, and a port not the default
        self.prefix = base.raw_path.rstrip(b"/")
        self.injected: tuple[tuple[bytes, bytes], ...] = tuple(
            (k.lower().encode("latin-1"), v.get_secret_value().encode("latin-1"))
            for k, v in spec.headers.items()
        )
        self.injected_names = frozenset(name for name, _ in self.injected)
        self.timeout = spec.timeout
        self.max_connections = spec.max_connections
        self.breaker = Breaker(spec.breaker.failures, spec.breaker.open_seconds)
        self.stats = UpstreamStats()
        self._ssl: ssl.SSLContext | None = None
        self._pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, UpstreamClient] = (
            weakref.WeakKeyDictionary()
        )

    def __repr__(self) -> str:
        return f"Upstream({self.name!r})"  # not the URL or the headers: logs show reprs

    def pool(self) -> UpstreamClient:
        """The upstream client of the running event loop (connections belong to one loop).

        Every client keeps no cookies (one client's would go out with every other client's
        requests) and follows no redirects (they would carry our credentials elsewhere).
        """
        loop = asyncio.get_running_loop()
        pool = self._pools.get(loop)
        if pool is None:
            if self.tls and self._ssl is None:
                # httpx's verification (certifi's bundle); the environment's certificate
                # settings, like its proxies and .netrc credentials, are not ours to add.
                self._ssl = httpx.create_ssl_context(trust_env=False)
                self._ssl.set_alpn_protocols(["http/1.1"])
            options = UpstreamOptions(
                self.host,
                self.port,
                # An injected Host (a virtual host behind the URL's address) replaces the URL's.
                host_header=None if b"host" in self.injected_names else self.host_header,
                ssl_context=self._ssl if self.tls else None,
                timeout=self.timeout,
                max_connections=self.max_connections,
            )
            pool = self._client_class.from_options(options)
            self._pools[loop] = pool
        return pool

    def target(self, raw_path: bytes, query: bytes) -> bytes:
        """The upstream request target for a request path (already percent-encoded) and query.

        Bytes a request target cannot hold (controls, spaces, non-ASCII, which some servers
        let through) and ``#`` (which would start a fragment) are percent-encoded: the upstream
        gets the path the route table matched, as a valid request line.
        """
        target = self.prefix + raw_path + b"?" + query if query else self.prefix + raw_path
        if _NOT_IN_TARGET.search(target) is not None:
            target = _NOT_IN_TARGET.sub(_percent_encode, target)
        return target

    def url(self, raw_path: bytes, query: bytes) -> str:
        """The full upstream URL of :meth:`target` (for messages and tests; never logged)."""
        return self.origin + self.target(raw_path, query).decode("latin-1")

    async def aclose(self) -> None:
        """Close the connection pool of the running loop."""
        pool = self._pools.pop(asyncio.get_running_loop(), None)
        if pool is not None:
            await pool.aclose()


@dataclass(frozen=True, slots=True)
class UpstreamTarget:
    """One physical target of a route: an upstream, and what changes for it."""

    upstream: Upstream
    model: str | None = None
    """The model name sent to this upstream instead of the client's (``None``: unchanged)."""
    weight: int = 1
    priority: int = 0


class TargetSet:
    """The targets of a route (or of one model of a route), in the order a request tries them."""

    __slots__ = ("_levels", "_single", "targets")

    def __init__(self, targets: tuple[UpstreamTarget, ...]) -> None:
        if not targets:
            raise ValueError("a target set needs a target")
        self.targets = targets
        levels: dict[int, list[UpstreamTarget]] = {}
        for target in targets:
            levels.setdefault(target.priority, []).append(target)
        self._levels = tuple(tuple(levels[p]) for p in sorted(levels))
        self._single = targets if len(targets) == 1 else None

    def order(self, rng: random.Random | None = None) -> tuple[UpstreamTarget, ...]:
        """Every target once: by priority level, each level drawn by weight without replacement."""
        if self._single is not None:
            return self._single
        draw = rng.random if rng is not None else random.random
        ordered: list[UpstreamTarget] = []
        for level in self._levels:
            if len(level) == 1:
                ordered.append(level[0])
                continue
            left = list(level)
            total = sum(t.weight for t in left)
            while left:
                point = draw() * total
                index = 0
                while index < len(left) - 1 and point >= left[index].weight:
                    point -= left[index].weight
                    index += 1
                chosen = left.pop(index)
                total -= chosen.weight
                ordered.append(chosen)
        return tuple(ordered)
