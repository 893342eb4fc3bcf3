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
from ...ratelimit import RateLimit, as_rate_limit, check_storage_url
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
from .schema import HOP_BY_HOP, GatewayFile, RouteSpec, TargetSpec, UpstreamSpec

__all__ = ["Compiler", "RoutePlan", "TargetPlan"]

NOT_INJECTABLE = HOP_BY_HOP | {"content-length"}
_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_METHODS = re.compile(r"^[A-Z]+(?:,[A-Z]+)*$")
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_PRIVATE_KEY = re.compile(r"^(?:0x)?[0-9a-fA-F]{64}$")


@dataclass(frozen=True, slots=True)
class TargetPlan:
    """A validated item of a route's ``targets:`` (or the route's one ``upstream``)."""

    upstream: str
    model: str | None = None
    weight: int = 1
    priority: int = 0


@dataclass(frozen=True, slots=True)
class RoutePlan:
    """A validated route: its key, the upstream, the path rewrite and the price strategy."""

    key: str
    upstream: str
    """The upstream of a one-upstream route; with ``targets:``, the first target's."""
    path: str | None
    """Path rewrite: ``{name}`` takes a parameter of the key, ``{*}`` the rest of a ``/*`` key;
    ``None`` forwards the request path unchanged."""
    strategy: PriceStrategy
    settlement: Literal["after", "before"]
    description: str | None
    mime_type: str | None
    credit_topup: PriceLike | None
    targets: tuple[TargetPlan, ...] = ()
    """The route's targets in the file's order (one, for ``upstream:``)."""
    model_targets: Mapping[str, tuple[TargetPlan, ...]] | None = None
    """With ``targets:`` keyed by model: model name (``"*"``: any other) → its targets."""
    model_field: str | None = None
    """The top-level JSON body field that holds the model, when targets read or rewrite it."""
    rate_limit: RateLimit | None = None

    @property
    def metered(self) -> bool:
        return self.strategy.metered

    @property
    def fallback(self) -> bool:
        """Whether the route has targets to fall back on (and breakers to skip them)."""
        return self.model_targets is not None or len(self.targets) > 1


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
        if section.rate_limit_storage is not None:
            try:
                check_storage_url(section.rate_limit_storage)
            except ConfigurationError as exc:
                self._add(("gateway", "rate_limit_storage"), str(exc))
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
        routing = self._targets(loc, spec)
        ok = routing is not None and ok
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
        assert routing is not None
        targets, model_targets, model_field = routing
        rate_limit = None
        if spec.rate_limit is not None:
            rate_limit = self._rate_limit((*loc, "rate_limit"), key, spec)
            if rate_limit is None:
                return None
        return RoutePlan(
            key=key,
            upstream=targets[0].upstream,
            targets=targets,
            model_targets=model_targets,
            model_field=model_field,
            path=spec.path,
            strategy=strategy,
            settlement=spec.settlement,
            description=spec.description,
            mime_type=spec.mime_type,
            credit_topup=topup,
            rate_limit=rate_limit,
        )

    def _rate_limit(self, loc: Loc, key: str, spec: RouteSpec) -> RateLimit | None:
        """The route's limits, counted under its key unless the file names a scope."""
        written = spec.rate_limit
        assert written is not None
        for name in ("per_ip", "per_payer"):
            rate = getattr(written, name)
            if rate is not None:
                try:
                    as_rate_limit({name: rate})
                except ConfigurationError as exc:
                    self._add((*loc, name), str(exc).split(": ", 1)[-1])
                    return None
        try:
            limit = as_rate_limit(written.model_dump())
        except ConfigurationError as exc:
            self._add(loc, str(exc))
            return None
        assert limit is not None
        return limit.scoped(key)

    def _upstream_name(self, loc: Loc, name: str) -> bool:
        if name in self.file.upstreams:
            return True
        known = ", ".join(sorted(self.file.upstreams))
        close = difflib.get_close_matches(name, list(self.file.upstreams), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        self._add(loc, f"no upstream named {name!r} ({hint}defined: {known})")
        return False

    def _targets(
        self, loc: Loc, spec: RouteSpec
    ) -> tuple[tuple[TargetPlan, ...], dict[str, tuple[TargetPlan, ...]] | None, str | None] | None:
        """The route's targets: its ``upstream``, ``targets`` or ``targets_by_model``."""
        given = [spec.upstream, spec.targets, spec.targets_by_model]
        if sum(value is not None for value in given) != 1:
            self._add(
                loc,
                "give one of upstream (one upstream), targets (several, with fallback) or "
                "targets_by_model (several for each model)",
            )
            return None
        if spec.upstream is not None:
            if not self._upstream_name((*loc, "upstream"), spec.upstream):
                return None
            return (TargetPlan(spec.upstream),), None, None
        lists: dict[str | None, list[TargetSpec]] = {}
        if spec.targets is not None:
            lists[None] = spec.targets
        else:
            lists.update(spec.targets_by_model or {})
        plans: dict[str | None, tuple[TargetPlan, ...]] = {}
        rewrites = False
        ok = True
        for model, items in lists.items():
            list_loc: Loc = (
                (*loc, "targets") if model is None else (*loc, "targets_by_model", model)
            )
            if model is not None and not model.strip():
                self._add(list_loc, "a model name is not empty ('*' stands for any other)")
                ok = False
            seen: set[str] = set()
            plan: list[TargetPlan] = []
            for index, item in enumerate(items):
                item_loc: Loc = (*list_loc, index)
                if not self._upstream_name((*item_loc, "upstream"), item.upstream):
                    ok = False
                    continue
                if item.upstream in seen:
                    self._add(
                        (*item_loc, "upstream"),
                        f"{item.upstream!r} is listed twice: a failed target is not retried "
                        "(raise its weight instead)",
                    )
                    ok = False
                    continue
                seen.add(item.upstream)
                rewrites = rewrites or item.model is not None
                plan.append(_target_plan(item, index))
            plans[model] = tuple(plan)
        field_name: str | None = None
        if rewrites or spec.targets_by_model is not None:
            field_name = self._model_field(loc, spec)
            ok = ok and field_name is not None
        if not ok:
            return None
        if None in plans:
            return plans[None], None, field_name
        by_model = {str(k): v for k, v in plans.items()}
        first = by_model.get("*") or next(iter(by_model.values()))
        return first, by_model, field_name

    def _model_field(self, loc: Loc, spec: RouteSpec) -> str | None:
        """The body field a model-keyed or model-rewriting route reads (``body.<name>``)."""
        path = spec.model_field
        name = path.removeprefix("body.")
        if path == name or not name or "." in name:
            where = (*loc, "model_field") if "model_field" in spec.model_fields_set else loc
            self._add(
                where,
                "targets that rewrite or choose by the model need it in a top-level field of a "
                "JSON body: model_field: body.<field> (the default is body.model)",
            )
            return None
        return name

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


def _target_plan(item: TargetSpec, index: int) -> TargetPlan:
    priority = index if item.priority is None else item.priority
    return TargetPlan(item.upstream, item.model, item.weight, priority)


def _network_or_none(name: object) -> str | None:
    try:
        return normalize_network(str(name))
    except ConfigurationError:
        return None
