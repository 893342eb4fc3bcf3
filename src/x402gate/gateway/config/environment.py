"""``${NAME}`` substitution from the environment, and the values that count as secrets."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

from .._yaml import Loc
from .errors import Problems
from .schema import GatewayFile

__all__ = ["declared_secrets", "interpolate"]

_ENV = re.compile(r"\$(\$?)\{([^}]*)(\}?)")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_PUBLIC_SECTIONS = ("pay_to", "accepts")  # published in every 402: masking them helps nobody


def interpolate(
    data: Any, env: Mapping[str, str], problems: Problems, secrets: set[str], loc: Loc = ()
) -> Any:
    if isinstance(data, dict):
        return {k: interpolate(v, env, problems, secrets, (*loc, str(k))) for k, v in data.items()}
    if isinstance(data, list):
        return [interpolate(v, env, problems, secrets, (*loc, i)) for i, v in enumerate(data)]
    if not isinstance(data, str) or "${" not in data:
        return data

    def substitute(match: re.Match[str]) -> str:
        escaped, name, closed = match.group(1), match.group(2), match.group(3)
        if escaped:
            return "${" + name + closed
        if not closed:
            problems.add(loc, "unterminated '${' (write $${ for a literal '${')")
            return ""
        if not _ENV_NAME.match(name):
            problems.add(loc, f"'${{{name}}}' is not an environment variable name")
            return ""
        value = env.get(name)
        if value is None:
            problems.add(loc, f"environment variable {name} is not set")
            return ""
        if not loc or loc[0] not in _PUBLIC_SECTIONS:
            secrets.add(value)
        return value

    return _ENV.sub(substitute, data)


def declared_secrets(parsed: GatewayFile) -> Iterator[str]:
    for upstream in parsed.upstreams.values():
        for value in upstream.headers.values():
            yield value.get_secret_value()
        yield from _url_password(upstream.url)
    for value in parsed.facilitator.headers.values():
        yield value.get_secret_value()
    if parsed.facilitator.private_key is not None:
        key = parsed.facilitator.private_key.get_secret_value()
        yield key
        yield key.removeprefix("0x")
    authorizer_key = (parsed.channels or {}).get("receiver_authorizer_key")
    if isinstance(authorizer_key, str) and authorizer_key:
        yield authorizer_key
        yield authorizer_key.removeprefix("0x")
    for webhook in parsed.webhooks:
        yield webhook.secret.get_secret_value()
    if parsed.gateway.secret is not None:
        yield parsed.gateway.secret.get_secret_value()
    metrics = parsed.gateway.metrics
    if metrics is not None and metrics.token is not None:
        yield metrics.token.get_secret_value()
    if parsed.gateway.balance_rpc_url is not None:
        # Hosted nodes put the API key in the path: the whole URL is a secret.
        yield parsed.gateway.balance_rpc_url.get_secret_value()
    yield from _url_password(parsed.store)
    for url in parsed.facilitator.url or ():
        yield from _url_password(url)
    if parsed.facilitator.rpc_url:
        yield from _url_password(parsed.facilitator.rpc_url)
    if parsed.facilitator.chain_rpc_url:
        yield from _url_password(parsed.facilitator.chain_rpc_url)


def _url_password(url: str) -> Iterator[str]:
    from urllib.parse import unquote, urlsplit

    try:
        password = urlsplit(url).password
    except ValueError:
        return
    if password:
        yield password
        yield unquote(password)
