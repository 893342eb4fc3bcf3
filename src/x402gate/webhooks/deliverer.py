"""The background deliverer: pages the store's outbox and POSTs each due event, signed.

It runs in a thread of its own, started with the gate, so no response ever waits for a
webhook. Where the store has leases, one instance at a time delivers (the lease
:data:`LEASE_NAME`); others wait for it to lapse. Memory stays bounded whatever the endpoints
do: the deliverer reads at most ``page`` rows at a time and sends at most ``concurrency`` at
once; the outbox itself stays in the store. A failed attempt (connection error, timeout, any
answer but 2xx) is retried after an exponential backoff with jitter; after ``max_attempts``
attempts or ``max_age_seconds`` the row is dead (``x402gate webhooks dead`` lists those).
Delivery is at least once: a receiver deduplicates on the event id.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from ..clock import Clock, SystemClock
from ..errors import ConfigurationError, StoreError
from ..stores.outbox import OutboxEntry
from .endpoints import WebhookEndpoint
from .signing import event_body, signed_headers

__all__ = ["DELIVERY_OPTIONS", "LEASE_NAME", "WebhookDeliverer", "check_delivery_options"]

logger = logging.getLogger("x402gate.webhooks")

LEASE_NAME = "x402gate-webhooks"
"""The store lease held by the instance that delivers."""

DELIVERY_OPTIONS = (
    "max_attempts",
    "max_age_seconds",
    "backoff_seconds",
    "max_backoff_seconds",
    "timeout_seconds",
    "poll_seconds",
    "page",
    "concurrency",
)
"""The options a deliverer takes from configuration."""

DEAD_LOG_SECONDS = 60.0
"""Seconds between two warnings about dead rows of one endpoint."""


def check_delivery_options(raw: Any) -> dict[str, Any]:
    """``raw`` checked: known names, positive numbers (whole ones for counts)."""
    options: dict[str, Any] = dict(raw)
    unknown = sorted(set(options) - set(DELIVERY_OPTIONS))
    if unknown:
        raise ConfigurationError(f"unknown webhook delivery options: {', '.join(unknown)}")
    for name, value in options.items():
        whole = name in ("max_attempts", "page", "concurrency")
        kinds = (int,) if whole else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds) or not value > 0:
            what = "a whole number" if whole else "a number"
            raise ConfigurationError(f"webhook delivery {name} must be {what} above 0")
    return options


class WebhookDeliverer:
    """Delivers the outbox of ``store`` to ``endpoints``; :meth:`start` / :meth:`stop`."""

    def __init__(
        self,
        store: Any,
        endpoints: Sequence[WebhookEndpoint],
        *,
        max_attempts: int = 12,
        max_age_seconds: float = 3 * 86400.0,
        backoff_seconds: float = 1.0,
        max_backoff_seconds: float = 3600.0,
        timeout_seconds: float = 10.0,
        poll_seconds: float = 1.0,
        page: int = 64,
        concurrency: int = 4,
        clock: Clock | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if max_attempts < 1 or page < 1 or concurrency < 1:
            raise ConfigurationError("webhook max_attempts, page and concurrency must be >= 1")
        if not (backoff_seconds > 0 and max_backoff_seconds >= backoff_seconds):
            raise ConfigurationError("webhook backoff must be positive, at most its maximum")
        self.store = store
        self.endpoints = {endpoint.name: endpoint for endpoint in endpoints}
        self.max_attempts = int(max_attempts)
        self.max_age_seconds = float(max_age_seconds)
        self.backoff_seconds = float(backoff_seconds)
        self.max_backoff_seconds = float(max_backoff_seconds)
        self.poll_seconds = float(poll_seconds)
        self.page = int(page)
        self.concurrency = int(concurrency)
        self.clock: Clock = clock or SystemClock()
        self.holder = uuid.uuid4().hex
        self._timeout = float(timeout_seconds)
        self._transport = transport
        self._client: httpx.Client | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._random = random.Random()
        # endpoint -> (when a dead row was last logged, rows dead since): one entry per endpoint.
        self._dead_logged: dict[str, tuple[float, int]] = {}
        self._dead_lock = threading.Lock()

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Start the delivery thread (once; later calls do nothing)."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="x402gate-webhooks", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread (attempts under way finish or time out) and free the lease."""
        thread, self._thread = self._thread, None
        self._stop.set()
        self._wake.set()
        if thread is not None:
            thread.join(timeout)
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        if self._client is not None:
            self._client.close()
            self._client = None
        if getattr(self.store, "supports_leases", False):
            with contextlib.suppress(StoreError, ConfigurationError):
                self.store.lease_release(LEASE_NAME, self.holder)

    def wake(self) -> None:
        """Look at the outbox now rather than at the next poll."""
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            busy = False
            try:
                if self._holds_lease():
                    busy = self.deliver_once() >= self.page
            except Exception:  # a store outage: keep the thread, try again after a poll
                logger.exception("webhook delivery round failed")
            if not busy:
                self._wake.wait(self.poll_seconds)
                self._wake.clear()

    def _holds_lease(self) -> bool:
        if not getattr(self.store, "supports_leases", False):
            return True
        ttl = max(30.0, 4 * self.poll_seconds + 2 * self._timeout)
        return bool(self.store.lease_acquire(LEASE_NAME, self.holder, ttl, self.clock.now()))

    # -- one round ------------------------------------------------------------------------

    def deliver_once(self) -> int:
        """Attempt every due row of one page (at most ``concurrency`` at once); answers how
        many rows were looked at."""
        entries = self.store.outbox_due(self.clock.now(), self.page)
        if not entries:
            return 0
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.concurrency, "x402gate-webhook")
        if self._client is None:  # one client (and connection pool) shared by the workers
            self._client = httpx.Client(
                timeout=self._timeout,
                follow_redirects=False,
                transport=self._transport,
                limits=httpx.Limits(max_connections=self.concurrency),
            )
        for start in range(0, len(entries), self.concurrency):
            # The lease is renewed between chunks (each lasts one timeout at most), so that a
            # page of slow endpoints never outlives it; a lost lease ends the round.
            if self._stop.is_set() or (start and not self._holds_lease()):
                break
            list(self._pool.map(self._attempt, entries[start : start + self.concurrency]))
        return len(entries)

    def _attempt(self, entry: OutboxEntry) -> None:
        now = self.clock.now()
        endpoint = self.endpoints.get(entry.endpoint)
        if endpoint is None:
            self.store.outbox_dead(entry.endpoint, entry.event, now, "endpoint not configured")
            return
        if entry.row is None:
            self.store.outbox_dead(entry.endpoint, entry.event, now, "journal row pruned")
            return
        error = self._post(endpoint, entry, now)
        if error is None:
            self.store.outbox_done(entry.endpoint, entry.event)
            return
        attempts = entry.attempts + 1
        if attempts >= self.max_attempts or now - entry.created >= self.max_age_seconds:
            self._log_dead(endpoint.name, entry.event, attempts, error, now)
            # Counted first, so that the dead row says how many attempts failed.
            self.store.outbox_retry(entry.endpoint, entry.event, now, error)
            self.store.outbox_dead(entry.endpoint, entry.event, now, error)
            return
        self.store.outbox_retry(entry.endpoint, entry.event, now + self.backoff(attempts), error)

    def _log_dead(self, endpoint: str, event: str, attempts: int, error: str, now: float) -> None:
        """One warning per endpoint per :data:`DEAD_LOG_SECONDS` at most, with the count of
        the rows that died since: an endpoint that is down does not flood the log."""
        with self._dead_lock:
            last, count = self._dead_logged.get(endpoint, (float("-inf"), 0))
            count += 1
            if now - last < DEAD_LOG_SECONDS:
                self._dead_logged[endpoint] = (last, count)
                return
            self._dead_logged[endpoint] = (now, 0)
        logger.warning(
            "webhooks to %s: %d event(s) dead, the last %s after %d attempts: %s "
            "(x402gate webhooks --store URL lists them)",
            endpoint,
            count,
            event,
            attempts,
            error,
        )

    def backoff(self, attempts: int) -> float:
        """Seconds before the next attempt after ``attempts`` failed ones: doubling from
        ``backoff_seconds`` up to ``max_backoff_seconds``, times a random 0.5 to 1 (jitter,
        so that endpoints coming back are not hit by every instance at once)."""
        ceiling = min(self.max_backoff_seconds, self.backoff_seconds * 2.0 ** min(attempts, 40))
        return ceiling * (0.5 + 0.5 * self._random.random())

    def _post(self, endpoint: WebhookEndpoint, entry: OutboxEntry, now: float) -> str | None:
        """POST the event; None when the receiver answered 2xx, else what went wrong."""
        assert entry.row is not None
        body = event_body(entry.row)
        headers = signed_headers(endpoint.secret, entry.event, body, now)
        assert self._client is not None
        try:
            with self._client.stream("POST", endpoint.url, content=body, headers=headers) as r:
                status = r.status_code  # the answer's body is never read
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}"
        return None if 200 <= status < 300 else f"HTTP {status}"
