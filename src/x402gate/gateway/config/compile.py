"""The meaning of a well-shaped gateway file: payment terms, upstreams and routes, compiled into
what the gateway runs (:class:`RoutePlan`)."""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from pydantic import SecretStr

from ...assets import Asset, is_address, normalize_network, usdc
from ...errors import ConfigurationError
from ...money import PriceLike
from ...pricing import DecodedBody, PriceStrategy
from ...routing import RoutePattern, shadowed_keys
from ...settings.validators import (
    check_address,
    check_public_origin,
    check_store_url,
    check_trusted_proxies,
)
from .._yaml import Loc

if TYPE_CHECKING:
    from ...gate.channels import ChannelSettings
    from ...webhooks import WebhookEndpoint
from .errors import Problems, describe
from .prices import PriceCompiler
from .schema import HOP_BY_HOP, GatewayFile, RouteSpec, UpstreamSpec

__all__ = ["Compiler", "RoutePlan"]

NOT_INJECTABLE = HOP_BY_HOP | {"content-length"}
_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_METHODS = re.compile(r"^[A-Z]+(?:,[A-Z]+)*$")
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_PRIVATE_KEY = re.compile(r"^(?:0x)?[0-9a-fA-F]{64}$")


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


class Compiler(PriceCompiler):
    """Step 4: the meaning of a well-shaped file."""

    def __init__(self, parsed: GatewayFile, problems: Problems) -> None:
        super().__init__(problems)
        self.file = parsed
        self.channels: ChannelSettings | None = None
        """The ``channels:`` section, once :meth:`run` read it."""
        self.webhooks: tuple[WebhookEndpoint, ...] = ()
        """The ``webhooks:`` endpoints, once :meth:`run` read them."""

    def run(self) -> tuple[tuple[Asset, ...], dict[str, str], tuple[RoutePlan, ...]]:
        assets = self._assets()
        pay_to = self._pay_to(assets)
        self._facilitator()
        self._channels()
        self._webhooks()
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
                self._add(loc, f"expected an address in quotes, got {describe(value)}")
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
            return check_address(value.strip())
        except ConfigurationError as exc:
            self._add(loc, str(exc))
            return None

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

    def _channels(self) -> None:
        """``channels:``: each wrong key named at its own line (no key's value is shown)."""
        from ...settings.channels import ChannelSettingsError, read_channels

        self.channels = None
        if self.file.channels is None:
            return
        try:
            self.channels = read_channels(self.file.channels)
        except ChannelSettingsError as exc:
            for key, message in exc.problems:
                self._add(("channels",) if key is None else ("channels", key), message)
            return
        if (
            self.channels is not None
            and self.channels.delegated
            and self.file.facilitator.url is None
        ):
            key = next(k for k in self.file.channels if k.lower() == "receiver_authorizer")
            self._add(
                ("channels", key),
                "local settlement has no facilitator to delegate to: give an address or "
                "receiver_authorizer_key",
            )

    def _webhooks(self) -> None:
        """``webhooks:``: each endpoint checked, a mistake named at its field's line."""
        from ...webhooks import DEFAULT_EVENTS, WebhookEndpoint

        endpoints: list[WebhookEndpoint] = []
        for index, spec in enumerate(self.file.webhooks):
            loc: Loc = ("webhooks", index)
            try:
                endpoints.append(
                    WebhookEndpoint(
                        spec.url,
                        spec.secret.get_secret_value(),
                        DEFAULT_EVENTS if spec.events is None else tuple(spec.events),
                        spec.name or "",
                    )
                )
            except ConfigurationError as exc:
                message = str(exc)
                field = next(
                    (f for f in ("url", "secret", "events", "name") if f" {f}" in message[:24]),
                    None,
                )
                self._add(loc if field is None else (*loc, field), message)
        names = [endpoint.name for endpoint in endpoints]
        for index, name in enumerate(names):
            if name in names[:index]:
                self._add(("webhooks", index), "a second endpoint with this url or name")
        self.webhooks = tuple(endpoints)

    def _store(self) -> None:
        try:
            check_store_url(self.file.store)
        except ConfigurationError as exc:
            self._add(("store",), str(exc))

    def _gateway(self) -> None:
        section = self.file.gateway
        if section.public_origin is not None:
            try:
                check_public_origin(section.public_origin)
            except ConfigurationError as exc:
                self._add(("gateway", "public_origin"), str(exc))
        try:
            check_trusted_proxies(section.trusted_proxies)
        except ConfigurationError as exc:
            self._add(("gateway", "trusted_proxies"), str(exc))
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
            elif name.lower() in NOT_INJECTABLE:
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
        pattern = self._route_key(loc, key)
        ok = pattern is not None
        if spec.upstream not in self.file.upstreams:
            known = ", ".join(sorted(self.file.upstreams))
            close = difflib.get_close_matches(spec.upstream, list(self.file.upstreams), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            self._add(
                (*loc, "upstream"),
                f"no upstream named {spec.upstream!r} ({hint}defined: {known})",
            )
            ok = False
        if spec.path is not None and pattern is not None:
            ok = self._rewrite((*loc, "path"), spec.path, pattern) and ok
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

    def _route_key(self, loc: Loc, key: str) -> RoutePattern | None:
        head, _, rest = key.strip().partition(" ")
        if rest and (not _METHODS.match(head.upper()) or head != head.upper()):
            self._add(loc, "a route key is 'METHOD /path' with the method in capitals")
            return None
        try:
            return RoutePattern.parse(key)
        except ConfigurationError as exc:
            self._add(loc, str(exc))
            return None

    def _rewrite(self, loc: Loc, template: str, pattern: RoutePattern) -> bool:
        names, star = set(pattern.params), pattern.rest
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


def _network_or_none(name: object) -> str | None:
    try:
        return normalize_network(str(name))
    except ConfigurationError:
        return None
