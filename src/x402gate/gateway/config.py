"""The gateway's configuration: one YAML file, validated, every mistake named by file and field.

::

    config = load_config("gateway.yaml")        # GatewayConfigError lists what is wrong
    print(config.routes[0].strategy)

Reading a file goes through four steps, each reporting every problem it finds with the file, the
line and the field (``gateway.yaml:14: routes["POST /v1/messages"].price: ...``):

1. YAML, read strictly (:mod:`x402gate.gateway._yaml`): unquoted ``0x…`` addresses and dates
   stay strings, duplicate keys are an error;
2. ``${NAME}`` in any value is replaced by the environment variable ``NAME``; an unset variable
   is an error (``$${`` writes a literal ``${``). Substituted values count as secrets, except
   in ``pay_to`` and ``accepts``, which every 402 answer publishes;
3. the shape, with pydantic models (:class:`GatewayFile`): unknown fields, wrong types, ranges;
4. the meaning: networks, addresses, prices, rules, route keys, upstream names, path rewrites.

Secrets (upstream and facilitator headers, the settlement key, the session secret, store
passwords, anything read from the environment) are :class:`~pydantic.SecretStr` where the
model allows it, and never appear in an error message: see :mod:`x402gate.gateway.redaction`.
The reference of every field is ``docs/gateway.md``.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
)

from ..assets import Asset, checksum_address, is_address, normalize_network, usdc
from ..errors import ConfigurationError
from ..money import PriceLike, parse_price
from ..pricing import DecodedBody, MatchRules, ModelTable, PriceStrategy, Rule
from ..proxies import TrustedProxies
from ..routing import compile_pattern, shadowed_keys
from ..siwx import parse_public_origins
from ..stores.registry import DEFAULT_STORE_URL, accepted_schemes, redact_url
from ._yaml import Loc, YAMLProblem, read_yaml
from .redaction import Redactor

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "AcceptSpec",
    "DecodeBodySpec",
    "FacilitatorSpec",
    "GatewayConfig",
    "GatewayConfigError",
    "GatewayFile",
    "GatewaySection",
    "Problem",
    "RoutePlan",
    "RouteSpec",
    "RuleSpec",
    "UpstreamSpec",
    "format_field",
    "load_config",
    "parse_config",
]

DEFAULT_MAX_BODY_BYTES = 10 << 20
"""Largest request body the gateway reads (10 MiB): LLM requests carry images and documents."""

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
"""Headers that describe one connection, not the message (RFC 9110 §7.6.1): never forwarded."""

_NOT_INJECTABLE = HOP_BY_HOP | {"content-length"}
_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_METHODS = re.compile(r"^[A-Z]+(?:,[A-Z]+)*$")
_PARAM = re.compile(r"^(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|:([A-Za-z_][A-Za-z0-9_]*))$")
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_ENV = re.compile(r"\$(\$?)\{([^}]*)(\}?)")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_PRIVATE_KEY = re.compile(r"^(?:0x)?[0-9a-fA-F]{64}$")
_PUBLIC_SECTIONS = ("pay_to", "accepts")  # published in every 402: masking them helps nobody


# --- errors ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Problem:
    """One mistake in a gateway file: the field (``routes["GET /x"].price``), what is wrong, and
    the 1-based line when known."""

    field: str
    message: str
    line: int | None = None

    def render(self, source: str) -> str:
        where = f"{source}:{self.line}" if self.line is not None else source
        return (
            f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"
        )


class GatewayConfigError(ConfigurationError):
    """A gateway file is invalid. ``problems`` lists every mistake found; ``str()`` gives one line
    per mistake, each naming the file, the line and the field. Never contains a secret."""

    def __init__(self, source: str, problems: Sequence[Problem]) -> None:
        self.source = source
        self.problems = tuple(problems)
        super().__init__("\n".join(problem.render(source) for problem in self.problems))


def format_field(loc: Loc) -> str:
    """``("routes", "POST /v1/messages", "match", 0, "price")`` → ``routes["POST /v1/messages"]
    .match[0].price``: dotted where a key is a plain name, bracketed and quoted otherwise."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _IDENT.match(part):
            out += f".{part}" if out else part
        else:
            out += f"[{json.dumps(part, ensure_ascii=False)}]"
    return out


class _Problems:
    """Collects problems with their lines; raises them all at once."""

    def __init__(self, source: str, lines: Mapping[Loc, int], redactor: Redactor) -> None:
        self.source = source
        self.lines = lines
        self.redactor = redactor
        self.items: list[Problem] = []

    def add(self, loc: Loc, message: str) -> None:
        line = None
        for size in range(len(loc), -1, -1):  # the closest value the file has a line for
            line = self.lines.get(loc[:size])
            if line is not None:
                break
        self.items.append(Problem(format_field(loc), self.redactor(message), line))

    def raise_if_any(self) -> None:
        if self.items:
            ordered = sorted(self.items, key=lambda p: (p.line is None, p.line or 0, p.field))
            raise GatewayConfigError(self.source, ordered)


# --- the file's shape ------------------------------------------------------------------------


class _Model(BaseModel):
    # strict: YAML already gives real types, so "8402" for a port or "yes" for a flag is a
    # mistake worth naming rather than a value to coerce.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, hide_input_in_errors=True)


def _network_shorthand(value: Any) -> Any:
    return {"network": value} if isinstance(value, str) else value


def _url_shorthand(value: Any) -> Any:
    return {"url": value} if isinstance(value, str) else value


def _one_or_many(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


class GatewaySection(_Model):
    """``gateway:``: how the gateway serves and takes payments."""

    host: str = "127.0.0.1"
    port: int = Field(default=8402, ge=0, le=65535)
    discovery: bool = False
    trust_proxy_headers: bool = False
    """Deprecated: believe ``X-Forwarded-*`` from any peer. Use ``trusted_proxies``."""
    public_origin: str | list[str] | None = None
    trusted_proxies: list[str] = Field(default_factory=list)
    max_body_bytes: int = Field(default=DEFAULT_MAX_BODY_BYTES, ge=1024, le=1 << 30)
    secret: SecretStr | None = None
    max_timeout_seconds: int = Field(default=300, ge=10, le=86_400)
    verify_with_facilitator: bool = True
    limit_in_flight: bool = True
    balance_rpc_url: SecretStr | None = None
    balance_cache_seconds: float = Field(default=1.0, ge=0, le=60)
    startup_checks: Literal["fail", "warn", "off"] = "fail"
    upstream_client: Literal["aiohttp", "httpx", "builtin"] = "aiohttp"
    """The HTTP client that forwards to upstreams (:mod:`x402gate.gateway.clients`)."""


class AcceptSpec(_Model):
    """One item of ``accepts:``: USDC on a network, or another EIP-3009 token."""

    network: str
    asset: str = "USDC"
    name: str | None = None
    version: str | None = None
    decimals: int = Field(default=6, ge=0, le=36)
    symbol: str | None = None


class FacilitatorSpec(_Model):
    """``facilitator:``: a facilitator service (``url``), or local settlement (``rpc_url``)."""

    url: Annotated[list[str] | None, BeforeValidator(_one_or_many)] = None
    headers: dict[str, SecretStr] = Field(default_factory=dict)
    timeout: float = Field(default=20.0, gt=0, le=600)
    rpc_url: str | None = None
    private_key: SecretStr | None = None
    chain_rpc_url: str | None = None
    """With ``url``: a JSON-RPC URL of the chain, to serve the retry of a payment whose
    settlement reached the chain while the facilitator's answer was lost."""


class UpstreamSpec(_Model):
    """One entry of ``upstreams:``: where requests go and what the gateway adds to them."""

    url: str
    headers: dict[str, SecretStr] = Field(default_factory=dict)
    timeout: float = Field(default=60.0, gt=0, le=3600)
    max_connections: int = Field(default=100, ge=1, le=10_000)


Encoding = Literal["gzip", "deflate"]


def _every_encoding() -> list[Encoding]:
    return ["gzip", "deflate"]


class DecodeBodySpec(_Model):
    """A route's ``decode_body:``: compressed bodies and forms priced by what they hold (see
    :class:`~x402gate.pricing.DecodedBody`); without it they are answered 415."""

    encodings: list[Encoding] = Field(default_factory=_every_encoding)
    forms: bool = False
    max_bytes: int = Field(default=1 << 20, ge=1, le=1 << 30)


class RuleSpec(_Model):
    """One item of a route's ``match:`` list: conditions (``when``, or ``where``) and a price."""

    when: dict[str, Any] = Field(
        default_factory=dict, validation_alias=AliasChoices("when", "where")
    )
    price: Any


RouteType = Literal["flat", "match", "token-based", "per-token"]


class RouteSpec(_Model):
    """One entry of ``routes:``, keyed ``"METHOD /path"``."""

    upstream: str
    path: str | None = None
    type: RouteType | None = None
    price: Any = None
    match: list[RuleSpec] | None = None
    models: dict[str, Any] | None = None
    fallback: Any = None
    model_field: str = "body.model"
    settlement: Literal["after", "before"] = "after"
    description: str | None = None
    mime_type: str | None = None
    credit_topup: Any = None
    max_input_tokens: int | None = Field(default=None, ge=0)
    max_output_tokens: int | None = Field(default=None, ge=0)
    max_price: Any = None
    bytes_per_token: int = Field(default=1, ge=1, le=16)
    decode_body: DecodeBodySpec | None = None


class GatewayFile(_Model):
    """The whole file, as written (after ``${VAR}`` substitution)."""

    gateway: GatewaySection = Field(default_factory=GatewaySection)
    pay_to: Any
    accepts: Annotated[
        list[Annotated[AcceptSpec, BeforeValidator(_network_shorthand)]], Field(min_length=1)
    ]
    facilitator: Annotated[FacilitatorSpec, BeforeValidator(_url_shorthand)]
    store: str = DEFAULT_STORE_URL
    upstreams: Annotated[dict[str, UpstreamSpec], Field(min_length=1)]
    routes: Annotated[dict[str, RouteSpec], Field(min_length=1)]


def _known_names() -> list[str]:
    names: set[str] = set()
    for model in (
        GatewayFile,
        GatewaySection,
        AcceptSpec,
        FacilitatorSpec,
        UpstreamSpec,
        RuleSpec,
        RouteSpec,
    ):
        names.update(model.model_fields)
    names.add("where")
    return sorted(names)


_KNOWN_NAMES = _known_names()

_TYPE_MESSAGES = {
    "string_type": "expected text",
    "int_type": "expected a whole number",
    "int_from_float": "expected a whole number",
    "float_type": "expected a number",
    "bool_type": "expected true or false",
    "dict_type": "expected a mapping (name: value lines)",
    "model_type": "expected a mapping (name: value lines)",
    "model_attributes_type": "expected a mapping (name: value lines)",
    "list_type": "expected a list (lines starting with '- ')",
}


def _describe(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def _pydantic_message(error: Mapping[str, Any], secret: bool) -> str:
    kind = str(error.get("type", ""))
    loc = tuple(error.get("loc", ()))
    if kind == "extra_forbidden":
        name = str(loc[-1]) if loc else ""
        close = difflib.get_close_matches(name, _KNOWN_NAMES, n=1, cutoff=0.75)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"unknown field{hint}"
    if kind == "missing":
        return "required, and missing"
    if kind in _TYPE_MESSAGES:
        message = _TYPE_MESSAGES[kind]
        if not secret and "input" in error:
            message += f", got {_describe(error['input'])}"
        if kind == "string_type" and isinstance(error.get("input"), int | float | bool):
            message += " (put it in quotes)"
        return message
    message = str(error.get("msg", "invalid"))
    return message.removeprefix("Value error, ")


def _is_secret_loc(loc: Loc) -> bool:
    return "headers" in loc or "private_key" in loc or "secret" in loc


# --- ${VAR} substitution -------------------------------------------------------------------


def _interpolate(
    data: Any, env: Mapping[str, str], problems: _Problems, secrets: set[str], loc: Loc = ()
) -> Any:
    if isinstance(data, dict):
        return {k: _interpolate(v, env, problems, secrets, (*loc, str(k))) for k, v in data.items()}
    if isinstance(data, list):
        return [_interpolate(v, env, problems, secrets, (*loc, i)) for i, v in enumerate(data)]
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


# --- what the gateway runs -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RoutePlan:
    """A validated route: its key, the upstream, the path rewrite and the price strategy."""

    key: str
    upstream: str
    path: str | None
    """Path rewrite: ``{name}`` takes a parameter of the key, ``{*}`` the rest of a ``/*`` key;
    ``None`` forwards the request path unchanged."""
    strategy: PriceStrategy
    settlement: Literal["after", "before"]
    description: str | None
    mime_type: str | None
    credit_topup: PriceLike | None

    @property
    def metered(self) -> bool:
        return self.strategy.metered


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    """A valid gateway file, ready to serve (:func:`~x402gate.gateway.build_gateway`)."""

    source: str
    file: GatewayFile
    assets: tuple[Asset, ...]
    pay_to: dict[str, str]
    routes: tuple[RoutePlan, ...]
    redactor: Redactor = field(repr=False)

    @property
    def gateway(self) -> GatewaySection:
        return self.file.gateway

    @property
    def upstreams(self) -> dict[str, UpstreamSpec]:
        return self.file.upstreams

    @property
    def facilitator(self) -> FacilitatorSpec:
        return self.file.facilitator

    @property
    def store(self) -> str:
        return self.file.store

    def summary(self) -> str:
        """One line for humans: what this file sets up (no secrets)."""
        networks = ", ".join(sorted({a.network for a in self.assets}))
        return (
            f"{len(self.routes)} route(s) to {len(self.upstreams)} upstream(s), "
            f"paid on {networks}, store {redact_url(self.store)}"
        )


def load_config(
    path: str | os.PathLike[str], *, env: Mapping[str, str] | None = None
) -> GatewayConfig:
    """Read and validate a gateway file; ``env`` replaces ``os.environ`` for ``${VAR}``.

    Raises :class:`GatewayConfigError` listing every problem.
    """
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise GatewayConfigError(source, [Problem("", "no such file")]) from None
    except UnicodeDecodeError:
        raise GatewayConfigError(source, [Problem("", "not a UTF-8 text file")]) from None
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise GatewayConfigError(source, [Problem("", f"cannot read the file: {reason}")]) from None
    return parse_config(text, source=source, env=env)


def parse_config(
    text: str, *, source: str = "<string>", env: Mapping[str, str] | None = None
) -> GatewayConfig:
    """Validate the text of a gateway file (see :func:`load_config`)."""
    environment = os.environ if env is None else env
    try:
        data, lines = read_yaml(text)
    except YAMLProblem as exc:
        raise GatewayConfigError(source, [Problem("", exc.message, exc.line)]) from None
    if not isinstance(data, dict):
        found = "an empty file" if data is None else _describe(data)
        raise GatewayConfigError(
            source,
            [Problem("", f"expected a mapping with gateway, upstreams and routes; got {found}")],
        )

    secrets: set[str] = set()
    problems = _Problems(source, lines, Redactor())
    data = _interpolate(data, environment, problems, secrets)
    problems.redactor = Redactor(secrets)
    problems.raise_if_any()

    try:
        parsed = GatewayFile.model_validate(data)
    except ValidationError as exc:
        for error in exc.errors(include_url=False):
            loc = tuple(part for part in error["loc"] if isinstance(part, str | int))
            problems.add(loc, _pydantic_message(error, _is_secret_loc(loc)))
        problems.raise_if_any()
        raise  # pragma: no cover - a ValidationError always has errors

    secrets.update(_declared_secrets(parsed))
    problems.redactor = Redactor(secrets)
    compiled = _Compiler(parsed, problems).run()
    problems.raise_if_any()
    assets, pay_to, routes = compiled
    return GatewayConfig(source, parsed, assets, pay_to, routes, Redactor(secrets))


def _declared_secrets(parsed: GatewayFile) -> Iterator[str]:
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
    if parsed.gateway.secret is not None:
        yield parsed.gateway.secret.get_secret_value()
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


class _Compiler:
    """Step 4: the meaning of a well-shaped file."""

    def __init__(self, parsed: GatewayFile, problems: _Problems) -> None:
        self.file = parsed
        self.problems = problems

    def run(self) -> tuple[tuple[Asset, ...], dict[str, str], tuple[RoutePlan, ...]]:
        assets = self._assets()
        pay_to = self._pay_to(assets)
        self._facilitator()
        self._store()
        self._gateway()
        for name, upstream in self.file.upstreams.items():
            self._upstream(name, upstream)
        routes = tuple(
            plan
            for key, spec in self.file.routes.items()
            if (plan := self._route(key, spec)) is not None
        )
        if len(routes) == len(self.file.routes):
            # A key that an earlier one always matches first is never used: its price, upstream
            # and rewrite would silently never apply.
            for key, problem in shadowed_keys(plan.key for plan in routes).items():
                self._add(("routes", key), problem)
        return assets, pay_to, routes

    def _add(self, loc: Loc, message: str) -> None:
        self.problems.add(loc, message)

    # Payment terms.

    def _assets(self) -> tuple[Asset, ...]:
        assets: list[Asset] = []
        for index, spec in enumerate(self.file.accepts):
            loc: Loc = ("accepts", index)
            try:
                network = normalize_network(spec.network)
            except ConfigurationError as exc:
                self._add((*loc, "network"), str(exc))
                continue
            try:
                if spec.asset.upper() == "USDC" and spec.name is None and spec.version is None:
                    asset = usdc(network)
                elif is_address(spec.asset):
                    if spec.name is None or spec.version is None:
                        self._add(
                            loc,
                            "a token given by address needs its EIP-712 'name' and 'version' "
                            "(USDC: name 'USD Coin', version '2')",
                        )
                        continue
                    asset = Asset(
                        network=network,
                        address=spec.asset,
                        name=spec.name,
                        version=spec.version,
                        decimals=spec.decimals,
                        symbol=spec.symbol or "USDC",
                    )
                else:
                    self._add(
                        (*loc, "asset"),
                        "use USDC, or the token's contract address with its name and version",
                    )
                    continue
            except ConfigurationError as exc:
                self._add((*loc, "asset"), str(exc))
                continue
            if any(a.network == asset.network and a.address == asset.address for a in assets):
                self._add(loc, f"{asset.symbol} on {asset.network} is accepted twice")
                continue
            assets.append(asset)
        return tuple(assets)

    def _pay_to(self, assets: Sequence[Asset]) -> dict[str, str]:
        raw = self.file.pay_to
        networks = {a.network for a in assets}
        mapping: dict[str, str] = {}
        if isinstance(raw, str):
            address = self._address(("pay_to",), raw)
            return {network: address for network in networks} if address else {}
        if not isinstance(raw, dict) or not raw:
            self._add(
                ("pay_to",),
                "expected the address that receives payments, or a mapping network: address",
            )
            return {}
        for key, value in raw.items():
            loc: Loc = ("pay_to", str(key))
            try:
                network = normalize_network(str(key))
            except ConfigurationError as exc:
                self._add(loc, str(exc))
                continue
            if network not in networks:
                self._add(loc, f"{network} is not in accepts: no payment can arrive there")
                continue
            if not isinstance(value, str):
                self._add(loc, f"expected an address in quotes, got {_describe(value)}")
                continue
            address = self._address(loc, value)
            if address:
                mapping[network] = address
        for network in sorted(networks - set(mapping)):
            if not any(_network_or_none(k) == network for k in raw):
                self._add(("pay_to",), f"no address for {network}, which accepts lists")
        return mapping

    def _address(self, loc: Loc, value: str) -> str | None:
        try:
            address = checksum_address(value.strip())
        except ConfigurationError as exc:
            self._add(loc, str(exc))
            return None
        if int(address, 16) == 0:
            self._add(loc, "the zero address cannot receive payments")
            return None
        return address

    def _facilitator(self) -> None:
        spec = self.file.facilitator
        loc: Loc = ("facilitator",)
        if (spec.url is None) == (spec.rpc_url is None):
            self._add(
                loc,
                "give either url (a facilitator service) or rpc_url and private_key "
                "(settle through your own node)",
            )
            return
        if spec.url is not None:
            if not spec.url:
                self._add((*loc, "url"), "at least one URL is needed")
            for index, url in enumerate(spec.url):
                self._http_url((*loc, "url", index), url)
            if spec.chain_rpc_url is not None:
                self._http_url((*loc, "chain_rpc_url"), spec.chain_rpc_url)
            if spec.private_key is not None:
                self._add((*loc, "private_key"), "only for local settlement (with rpc_url)")
            self._headers((*loc, "headers"), spec.headers)
            return
        assert spec.rpc_url is not None
        self._http_url((*loc, "rpc_url"), spec.rpc_url)
        if spec.chain_rpc_url is not None:
            self._add(
                (*loc, "chain_rpc_url"),
                "only for a facilitator service (with url): local settlement reads rpc_url",
            )
        if spec.headers:
            self._add((*loc, "headers"), "only for a facilitator service (with url)")
        if spec.private_key is None:
            self._add(loc, "local settlement needs private_key (the account that pays gas)")
        elif not _PRIVATE_KEY.match(spec.private_key.get_secret_value()):
            self._add((*loc, "private_key"), "expected 64 hexadecimal digits (32 bytes)")

    def _store(self) -> None:
        url = self.file.store
        scheme, sep, _ = url.partition("://")
        if not sep or scheme.lower() not in accepted_schemes():
            self._add(
                ("store",),
                f"unknown store URL {redact_url(url)!r}: use sqlite:///path.db, "
                "redis://host:port/db or memory://",
            )

    def _gateway(self) -> None:
        section = self.file.gateway
        if section.public_origin is not None:
            try:
                parse_public_origins(section.public_origin, "public_origin")
            except ConfigurationError as exc:
                self._add(("gateway", "public_origin"), str(exc).removeprefix("public_origin: "))
        try:
            TrustedProxies(section.trusted_proxies)
        except ConfigurationError as exc:
            self._add(("gateway", "trusted_proxies"), str(exc).removeprefix("trusted_proxies: "))
        secret = self.file.gateway.secret
        if secret is not None and len(secret.get_secret_value().encode()) < 32:
            self._add(
                ("gateway", "secret"), "must be at least 32 bytes (e.g. openssl rand -hex 32)"
            )
        rpc = self.file.gateway.balance_rpc_url
        if rpc is not None:
            self._http_url(("gateway", "balance_rpc_url"), rpc.get_secret_value())

    def _http_url(self, loc: Loc, url: str) -> bool:
        import httpx

        try:
            parsed = httpx.URL(url)
        except (httpx.InvalidURL, ValueError):
            self._add(loc, "not a valid URL")
            return False
        if parsed.scheme not in ("http", "https") or not parsed.host:
            self._add(loc, "expected an http:// or https:// URL with a host")
            return False
        return True

    def _headers(self, loc: Loc, headers: Mapping[str, SecretStr]) -> None:
        for name, value in headers.items():
            if not _HEADER_NAME.match(name):
                self._add((*loc, name), "not a valid header name")
            elif name.lower() in _NOT_INJECTABLE:
                self._add((*loc, name), "describes the connection, not the request: not injectable")
            text = value.get_secret_value()
            if any(char in text for char in "\r\n\0"):
                # The value is a secret: say what is wrong with it, never what it is.
                self._add((*loc, name), "the value contains a line break or a NUL character")

    def _upstream(self, name: str, spec: UpstreamSpec) -> None:
        loc: Loc = ("upstreams", name)
        if self._http_url((*loc, "url"), spec.url):
            import httpx

            parsed = httpx.URL(spec.url)
            if parsed.query or parsed.fragment:
                self._add((*loc, "url"), "a base URL has no query or fragment")
            if parsed.userinfo:
                self._add(
                    (*loc, "url"),
                    "credentials go in headers (authorization: Basic ...), not in the URL",
                )
        self._headers((*loc, "headers"), spec.headers)

    # Routes.

    def _route(self, key: str, spec: RouteSpec) -> RoutePlan | None:
        loc: Loc = ("routes", key)
        params = self._route_key(loc, key)
        ok = params is not None
        if spec.upstream not in self.file.upstreams:
            known = ", ".join(sorted(self.file.upstreams))
            close = difflib.get_close_matches(spec.upstream, list(self.file.upstreams), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            self._add(
                (*loc, "upstream"),
                f"no upstream named {spec.upstream!r} ({hint}defined: {known})",
            )
            ok = False
        if spec.path is not None and params is not None:
            ok = self._rewrite((*loc, "path"), spec.path, params) and ok
        strategy = self._pricing(loc, spec)
        if strategy is None or not ok:
            return None
        if spec.decode_body is not None:
            decode = spec.decode_body
            strategy = DecodedBody(
                strategy, encodings=decode.encodings, forms=decode.forms, max_bytes=decode.max_bytes
            )
        if strategy.metered and self.file.gateway.public_origin is None:
            # Sign-ins and session tokens of metered routes are bound to the public origin.
            self._add(
                loc,
                "a metered route accepts sign-in-with-x and session tokens: set "
                "gateway.public_origin (e.g. https://api.example.com)",
            )
            return None
        topup = None
        if spec.credit_topup is not None:
            topup = self._price((*loc, "credit_topup"), spec.credit_topup)
            if topup is None:
                return None
        return RoutePlan(
            key=key,
            upstream=spec.upstream,
            path=spec.path,
            strategy=strategy,
            settlement=spec.settlement,
            description=spec.description,
            mime_type=spec.mime_type,
            credit_topup=topup,
        )

    def _route_key(self, loc: Loc, key: str) -> tuple[set[str], bool] | None:
        head, _, rest = key.strip().partition(" ")
        if rest:
            methods, path = head.upper(), rest.strip()
            if not _METHODS.match(methods) or head != methods:
                self._add(loc, "a route key is 'METHOD /path' with the method in capitals")
                return None
        else:
            path = head
        try:
            compile_pattern(path)
        except ConfigurationError as exc:
            self._add(loc, str(exc))
            return None
        segments = path.strip("/").split("/")
        names = {m.group(1) or m.group(2) for s in segments if (m := _PARAM.match(s))}
        return names, segments[-1] == "*"

    def _rewrite(self, loc: Loc, template: str, params: tuple[set[str], bool]) -> bool:
        names, star = params
        if not template.startswith("/"):
            self._add(loc, "a path rewrite starts with '/'")
            return False
        if "?" in template or "#" in template:
            self._add(loc, "a path rewrite has no query or fragment (the request's query is kept)")
            return False
        for placeholder in _PLACEHOLDER.findall(template):
            if placeholder == "*":
                if not star:
                    self._add(loc, "{*} needs a route key ending in /* (it takes the rest)")
                    return False
            elif placeholder not in names:
                known = ", ".join("{" + n + "}" for n in sorted(names)) or "none"
                self._add(loc, f"{{{placeholder}}} is not a parameter of the route key ({known})")
                return False
        if template.count("{") != len(_PLACEHOLDER.findall(template)) or "}" in _PLACEHOLDER.sub(
            "", template
        ):
            self._add(loc, "unbalanced braces")
            return False
        return True

    def _price(self, loc: Loc, value: Any) -> PriceLike | None:
        """The price as written once it is known to be valid (strategies parse it themselves:
        an ``int`` there means whole dollars, so micro-dollars must not be passed on)."""
        if isinstance(value, Mapping):
            self._add(
                loc,
                "expected one price ('$0.01'); input/output token prices need type: per-token",
            )
            return None
        try:
            parse_price(value)
        except ConfigurationError as exc:
            self._add(loc, str(exc))
            return None
        return value  # type: ignore[no-any-return]

    def _pricing(self, loc: Loc, spec: RouteSpec) -> PriceStrategy | None:
        kind = spec.type
        if kind is None:
            if spec.match is not None:
                kind = "match"
            elif spec.price is not None:
                kind = "flat"
            else:
                self._add(
                    loc,
                    "no price: give price, match rules, or type: token-based / per-token with "
                    "models",
                )
                return None
        allowed = {
            "flat": {"price"},
            "match": {"match", "fallback"},
            "token-based": {"models", "fallback", "model_field"},
            "per-token": {
                "price",
                "models",
                "fallback",
                "model_field",
                "credit_topup",
                "max_input_tokens",
                "max_output_tokens",
                "max_price",
                "bytes_per_token",
            },
        }[kind]
        priced = (
            "price",
            "match",
            "models",
            "fallback",
            "model_field",
            "credit_topup",
            "max_input_tokens",
            "max_output_tokens",
            "max_price",
            "bytes_per_token",
        )
        stray = [name for name in priced if name in spec.model_fields_set and name not in allowed]
        for name in stray:
            self._add((*loc, name), f"not used by a {kind} route")
        if stray:
            return None
        if kind == "flat":
            if spec.price is None:
                self._add((*loc, "price"), "a flat route needs a price")
                return None
            amount = self._price((*loc, "price"), spec.price)
            return None if amount is None else _flat(amount)
        if kind == "match":
            return self._match(loc, spec)
        if kind == "token-based":
            return self._model_table(loc, spec)
        return self._per_token(loc, spec)

    def _match(self, loc: Loc, spec: RouteSpec) -> PriceStrategy | None:
        if not spec.match:
            self._add((*loc, "match"), "a match route needs at least one rule")
            return None
        rules: list[Rule] = []
        for index, item in enumerate(spec.match):
            amount = self._price((*loc, "match", index, "price"), item.price)
            try:
                # A bad price was reported above; the conditions are still worth checking.
                rule = Rule(price=amount if amount is not None else 1, when=item.when)
            except ConfigurationError as exc:
                self._add((*loc, "match", index, "when"), str(exc))
                continue
            if amount is not None:
                rules.append(rule)
        fallback = None
        if spec.fallback is not None:
            fallback = self._price((*loc, "fallback"), spec.fallback)
            if fallback is None:
                return None
        if len(rules) != len(spec.match):
            return None
        return MatchRules(rules, fallback=fallback)

    def _model_table(self, loc: Loc, spec: RouteSpec) -> PriceStrategy | None:
        prices: dict[str, PriceLike] = {}
        failed = False
        for model, value in (spec.models or {}).items():
            amount = self._price((*loc, "models", model), value)
            failed = failed or amount is None
            if amount is not None:
                prices[model] = amount
        fallback = None
        if spec.fallback is not None:
            fallback = self._price((*loc, "fallback"), spec.fallback)
            failed = failed or fallback is None
        if failed:
            return None
        if not prices and fallback is None:
            self._add((*loc, "models"), "a token-based route needs models (or a fallback price)")
            return None
        try:
            return ModelTable(prices, fallback=fallback, field=spec.model_field)
        except ConfigurationError as exc:
            self._add((*loc, "model_field"), str(exc))
            return None

    def _per_token(self, loc: Loc, spec: RouteSpec) -> PriceStrategy | None:
        from ..metering import PerToken, TokenPrice

        if spec.settlement == "before":
            self._add(
                (*loc, "settlement"),
                "per-token routes settle when the answer starts; 'before' is not available",
            )
            return None
        failed = False

        def token_price(where: Loc, value: Any) -> TokenPrice | None:
            nonlocal failed
            try:
                return TokenPrice.of(value)
            except ConfigurationError as exc:
                self._add(where, str(exc))
                failed = True
                return None

        table: dict[str, TokenPrice] = {}
        for model, value in (spec.models or {}).items():
            price = token_price((*loc, "models", model), value)
            if price is not None:
                table[model] = price
        fallback = None
        if spec.fallback is not None:
            fallback = token_price((*loc, "fallback"), spec.fallback)
        single = None
        if spec.price is not None:
            if spec.models or spec.fallback is not None:
                self._add(
                    (*loc, "price"),
                    "one price for every model, or models and a fallback: not both",
                )
                return None
            single = token_price((*loc, "price"), spec.price)
        max_price = None
        if spec.max_price is not None:
            max_price = self._price((*loc, "max_price"), spec.max_price)
            failed = failed or max_price is None
        if failed:
            return None
        if single is None and not table and fallback is None:
            self._add((*loc, "models"), "a per-token route needs models, a fallback or a price")
            return None
        try:
            return PerToken(
                single if single is not None else table,
                fallback=fallback,
                max_input_tokens=spec.max_input_tokens,
                max_output_tokens=spec.max_output_tokens,
                max_price=max_price,
                model_field=spec.model_field,
                bytes_per_token=spec.bytes_per_token,
            )
        except ConfigurationError as exc:
            field_name = "model_field" if "field" in str(exc) else "models"
            self._add((*loc, field_name), str(exc))
            return None


def _flat(amount: PriceLike) -> PriceStrategy:
    from ..pricing import Flat

    return Flat(amount)


def _network_or_none(name: object) -> str | None:
    try:
        return normalize_network(str(name))
    except ConfigurationError:
        return None
