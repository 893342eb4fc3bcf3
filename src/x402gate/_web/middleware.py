"""The options every paywall middleware and extension takes beside its gate and routes.

:class:`MiddlewareOptions` types them once (``**options: Unpack[MiddlewareOptions]``), and
:func:`middleware_options` refuses a misspelt one at construction, naming it with the closest
known name: a keyword argument collected into ``**options`` would otherwise be dropped silently.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypedDict

from ..errors import ConfigurationError
from ..options import unknown_key_message

__all__ = ["DEFAULT_MAX_BODY", "MiddlewareOptions", "MiddlewareSettings", "middleware_options"]

DEFAULT_MAX_BODY = 1 << 20
"""Largest request body read for pricing on a paid route, by default (413 above)."""


class MiddlewareOptions(TypedDict, total=False):
    """The keyword options of the WSGI middleware and the Flask extension."""

    max_body_bytes: int
    """Largest request body read for pricing on a paid route (413 above)."""
    trust_proxy_headers: bool
    """Deprecated: trust the peer's ``X-Forwarded-*`` headers whatever its address."""
    discovery: bool
    """Serve ``GET /.well-known/x402`` listing the paid routes."""


@dataclass(frozen=True, slots=True)
class MiddlewareSettings:
    """:class:`MiddlewareOptions` checked, with their defaults."""

    max_body_bytes: int = DEFAULT_MAX_BODY
    trust_proxy_headers: bool = False
    discovery: bool = False


def middleware_options(options: Mapping[str, Any], where: str) -> MiddlewareSettings:
    """``options`` checked (every unknown name reported at once, with a suggestion)."""
    known = tuple(MiddlewareOptions.__annotations__)
    unknown = [key for key in options if key not in known]
    if unknown:
        problems = "; ".join(unknown_key_message(key, known, "option") for key in unknown)
        raise ConfigurationError(f"{where}: {problems}")
    return MiddlewareSettings(**options)
