"""Store URLs in messages and logs: :func:`redact_url` hides the passwords they may hold."""

from __future__ import annotations

import urllib.parse

__all__ = ["redact_url"]


def redact_url(url: str) -> str:
    """``url`` with passwords (user info, ``password=`` or ``sentinel_password=``) as ``***``.

    Safe for messages and logs. A URL too malformed to tell where a password would be is
    shown by its scheme only.
    """
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - validates the port, raising ValueError like the drivers would
    except ValueError:
        return _opaque(url)
    if "@" in url and "@" not in parts.netloc:
        return _opaque(url)
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    redacted = url
    if parts.password is not None:
        # Splice rather than urlunsplit, which would rewrite "unix:///p" as "unix:/p".
        start = url.index("//") + 2
        user = parts.netloc.rpartition("@")[0].partition(":")[0]
        hostport = parts.netloc.rpartition("@")[2]
        redacted = f"{url[:start]}{user}:***@{hostport}{url[start + len(parts.netloc) :]}"
    if any(name.endswith("password") for name, _ in query):
        base, _, rest = redacted.partition("?")
        _, hash_sign, fragment = rest.partition("#")
        safe = [(name, "***" if name.endswith("password") else value) for name, value in query]
        redacted = f"{base}?{urllib.parse.urlencode(safe, safe='*/:')}{hash_sign}{fragment}"
    return redacted


def _opaque(url: str) -> str:
    scheme, sep, _ = url.partition("://")
    return f"{scheme}://..." if sep else "<URL not shown: it may contain a password>"
