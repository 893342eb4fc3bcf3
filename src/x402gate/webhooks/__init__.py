"""Signed payment webhooks, delivered at least once from an outbox kept in the store.

Configure endpoints on the gate (``webhooks=[WebhookEndpoint(url, secret)]``), in Flask/Django
settings (``WEBHOOKS``) or in the gateway file (``webhooks:``). Each journal row of a chosen
outcome queues one outbox row per endpoint in the same store transaction; a background
:class:`WebhookDeliverer` POSTs them signed (see :mod:`.signing`); receivers check with
:func:`verify_signature` and deduplicate on the event id. See docs/webhooks.md.
"""

from __future__ import annotations

from .deliverer import LEASE_NAME, WebhookDeliverer
from .endpoints import DEFAULT_EVENTS, WebhookEndpoint, webhook_endpoints
from .signing import (
    EVENT_ID_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    event_body,
    sign,
    verify_signature,
)

__all__ = [
    "DEFAULT_EVENTS",
    "EVENT_ID_HEADER",
    "LEASE_NAME",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "WebhookDeliverer",
    "WebhookEndpoint",
    "event_body",
    "sign",
    "verify_signature",
    "webhook_endpoints",
]
