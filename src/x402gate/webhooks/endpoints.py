"""Webhook endpoints: where payment events are POSTed, with which secret, for which outcomes.

Endpoints come from configuration only (never from a client): ``http`` or ``https`` URLs with
a host, checked when the gate is built.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from ..errors import ConfigurationError
from ..stores.journal import OUTCOMES
from ..stores.outbox import OutboxTarget, check_endpoint_name

__all__ = ["DEFAULT_EVENTS", "WebhookEndpoint", "webhook_endpoints"]

DEFAULT_EVENTS = ("settled", "charged", "refunded", "channel_charge", "claim", "settle")
"""The outcomes sent by default: those that moved money (refusals and errors are opt-in)."""

MIN_SECRET = 16
"""Shortest secret accepted, in characters."""


@dataclass(frozen=True)
class WebhookEndpoint:
    """One receiver of signed payment events.

    :param url: ``http(s)://host[:port]/path`` the events are POSTed to.
    :param secret: the HMAC-SHA256 key shared with the receiver (at least 16 characters).
    :param events: the journal outcomes sent (:data:`DEFAULT_EVENTS` by default).
    :param name: the endpoint's key in the outbox (the URL by default): keep it when the URL
        changes and pending events follow it to the new URL.
    """

    url: str
    secret: str = field(repr=False)
    events: tuple[str, ...] = DEFAULT_EVENTS
    name: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.url, str):
            raise ConfigurationError("a webhook url must be text")
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigurationError(f"a webhook url must be http(s)://host/...: {self.url!r}")
        if parts.username or parts.password:
            raise ConfigurationError("a webhook url must not carry credentials")
        if not isinstance(self.secret, str) or len(self.secret) < MIN_SECRET:
            raise ConfigurationError(f"a webhook secret needs at least {MIN_SECRET} characters")
        events = (self.events,) if isinstance(self.events, str) else tuple(self.events)
        unknown = sorted(set(events) - set(OUTCOMES))
        if unknown or not events:
            raise ConfigurationError(
                f"webhook events must be among {', '.join(OUTCOMES)}; got {', '.join(unknown)}"
            )
        object.__setattr__(self, "events", events)
        object.__setattr__(self, "name", check_endpoint_name(self.name or self.url[:256]))

    def target(self) -> OutboxTarget:
        """Its outbox target: name and outcomes."""
        return OutboxTarget(self.name, frozenset(self.events))


def webhook_endpoints(value: Any) -> tuple[WebhookEndpoint, ...]:
    """Endpoints from :class:`WebhookEndpoint` objects or mappings (``url``, ``secret``,
    ``events``, ``name``); names must be unique."""
    if value is None:
        return ()
    if isinstance(value, (WebhookEndpoint, Mapping)):
        value = [value]
    if not isinstance(value, Iterable) or isinstance(value, str):
        raise ConfigurationError("webhooks must be a list of endpoints")
    endpoints: list[WebhookEndpoint] = []
    for item in value:
        if isinstance(item, Mapping):
            extra = set(item) - {"url", "secret", "events", "name"}
            if extra:
                raise ConfigurationError(f"unknown webhook keys: {', '.join(sorted(extra))}")
            item = WebhookEndpoint(**item)
        if not isinstance(item, WebhookEndpoint):
            raise ConfigurationError("a webhook is a WebhookEndpoint or a mapping")
        endpoints.append(item)
    names = [endpoint.name for endpoint in endpoints]
    if len(set(names)) != len(names):
        raise ConfigurationError("webhook endpoint names (URLs by default) must be unique")
    return tuple(endpoints)
