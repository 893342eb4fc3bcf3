"""The gateway's ASGI app: a PaymentGate, a route table, and a forwarder behind the middleware.

Nothing here takes payments itself: :func:`build_gateway` turns a :class:`GatewayConfig` into
the same :class:`~x402gate.gate.PaymentGate`, :class:`~x402gate.routing.RouteTable` and
:class:`~x402gate.asgi.PaymentMiddleware` an application would write by hand, with
a :class:`~x402gate.gateway.forward.Forwarder` as the application. So every guarantee of the
library (atomic claims, settlement only on success, credit for metered routes, discovery
without secrets) holds for the gateway as it is.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .._web.types import Receive, Scope, Send
from ..asgi import PaymentMiddleware
from ..errors import ConfigurationError
from ..routing import RouteTable
from .config import GatewayConfig, load_config
from .config.compile import TargetPlan
from .forward import Forwarder, Target, capture_pattern, send_problem
from .upstreams import TargetSet, Upstream, UpstreamReport, UpstreamTarget

if TYPE_CHECKING:
    import uvicorn

    from ..facilitators import Facilitator
    from ..gate import PaymentGate
    from ..observability.metrics import PaymentMetrics
    from ..stores import Store
    from .config.schema import MetricsSpec

__all__ = [
    "Gateway",
    "build_facilitator",
    "build_gateway",
    "server_stack",
    "uvicorn_config",
    "uvicorn_options",
]

logger = logging.getLogger("x402gate.gateway")


def build_facilitator(config: GatewayConfig) -> Facilitator:
    """The facilitator the file describes: a service (``url``) or local settlement."""
    from ..facilitators import HTTPFacilitator, LocalFacilitator

    spec = config.facilitator
    if spec.url is not None:
        headers = {k: v.get_secret_value() for k, v in spec.headers.items()}
        return HTTPFacilitator(spec.url, headers=headers or None, timeout=spec.timeout)
    assert spec.rpc_url is not None and spec.private_key is not None  # checked by the config
    networks = sorted({asset.network for asset in config.assets})
    # Local settlement signs channel claims with the gate's own receiver-authorizer key.
    channels = config.channels
    return LocalFacilitator(
        spec.rpc_url,
        spec.private_key.get_secret_value(),
        networks=networks,
        receiver_authorizer_key=channels.receiver_authorizer_key if channels else None,
    )


class Gateway:
    """The gateway as an ASGI app (serve it with uvicorn, or any ASGI server).

    :param config: a validated file (:func:`~x402gate.gateway.load_config`).
    :param facilitator: use this facilitator instead of the file's.
    :param store: use this store (URL or :class:`~x402gate.stores.Store`) instead of the file's.

    ``gateway.gate`` is the :class:`~x402gate.gate.PaymentGate` (``gate.on_event`` for hooks).
    With ``lifespan`` on (the ``x402gate proxy`` default), start-up checks the store and the
    facilitator and shutdown closes every connection; without it, call :meth:`aclose`.
    """

    def __init__(
        self,
        config: GatewayConfig,
        *,
        facilitator: Facilitator | None = None,
        store: str | Store | None = None,
    ) -> None:
        from ..gate import PaymentGate
        from ..stores.journal import JournalRetention

        self.config = config
        settings = config.gateway
        self.gate: PaymentGate = PaymentGate(
            pay_to=config.pay_to,
            assets=config.assets,
            facilitator=facilitator if facilitator is not None else build_facilitator(config),
            store=store if store is not None else config.store,
            max_timeout_seconds=settings.max_timeout_seconds,
            verify_with_facilitator=settings.verify_with_facilitator,
            limit_in_flight=settings.limit_in_flight,
            rpc_url=(
                settings.balance_rpc_url.get_secret_value()
                if settings.balance_rpc_url is not None
                else None
            ),
            balance_cache_seconds=settings.balance_cache_seconds,
            secret=settings.secret.get_secret_value() if settings.secret is not None else None,
            public_origin=settings.public_origin,
            trusted_proxies=settings.trusted_proxies,
            # Local settlement reconciles from its own rpc_url; a service needs chain_rpc_url.
            reconcile=config.facilitator.chain_rpc_url,
            channels=config.channels,
            rate_limit_storage=settings.rate_limit_storage,
            rate_limit_strategy=settings.rate_limit_strategy,
            journal=settings.journal,
            journal_retention=JournalRetention(
                days=settings.journal_retention_days, rows=settings.journal_retention_rows
            ),
            dashboard=_dashboard(settings.dashboard),
            webhooks=config.webhooks,
            webhook_delivery=(
                None
                if config.file.webhook_delivery is None
                else config.file.webhook_delivery.model_dump()
            ),
        )
        self.metrics = _metrics(self.gate, settings.metrics)
        self.upstreams = {
            name: Upstream(name, spec, client=settings.upstream_client)
            for name, spec in config.upstreams.items()
        }
        if self.metrics is not None:
            from ..observability.upstreams import UpstreamCollector

            self.metrics.registry.register(UpstreamCollector(self.upstream_stats))
        routes = {
            plan.key: self.gate.route(
                plan.strategy,
                settlement=plan.settlement,
                description=plan.description,
                mime_type=plan.mime_type,
                credit_topup=plan.credit_topup,
                rate_limit=plan.rate_limit,
            )
            for plan in config.routes
        }
        self.table = RouteTable(self.gate, routes)
        targets: dict[int, Target] = {}
        for (_, route), plan in zip(self.table, config.routes, strict=True):
            capture = capture_pattern(plan.key) if plan.path is not None else None
            by_model = (
                {model: self._target_set(items) for model, items in plan.model_targets.items()}
                if plan.model_targets is not None
                else None
            )
            targets[id(route)] = Target(
                plan, self._target_set(plan.targets), capture, by_model=by_model
            )
        self.forwarder = Forwarder(
            self.table, targets, on_startup=self.startup, on_shutdown=self.aclose
        )
        self.app = PaymentMiddleware(
            self.forwarder,
            gate=self.gate,
            routes=self.table,
            max_body_bytes=settings.max_body_bytes,
            discovery=settings.discovery,
            # The forwarder's lifespan runs startup() below, with the file's secrets masked.
            check_at_startup=False,
        )
        if settings.trust_proxy_headers:
            logger.warning(
                "gateway.trust_proxy_headers is deprecated: it believes X-Forwarded-* from any "
                "peer; list your proxies in gateway.trusted_proxies instead"
            )
            self.app.trust_proxy_headers = True

    def _target_set(self, plans: tuple[TargetPlan, ...]) -> TargetSet:
        return TargetSet(
            tuple(
                UpstreamTarget(self.upstreams[p.upstream], p.model, p.weight, p.priority)
                for p in plans
            )
        )

    def upstream_stats(self) -> dict[str, UpstreamReport]:
        """Per upstream (by its name in the file): successes, failures by kind, fallbacks,
        requests that skipped it (breaker open), latency to the answer's headers, and its
        breaker's state. Never its URL or headers."""
        return {
            name: upstream.stats.report(upstream.breaker)
            for name, upstream in self.upstreams.items()
        }

    def __repr__(self) -> str:
        return f"Gateway({self.config.source!r}, {len(self.config.routes)} routes)"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and _has_dot_segment(scope["path"]):
            # Refused before payment: httpx would resolve "/v1/../admin" to "/admin" upstream,
            # a path no route of the file sells.
            await send_problem(send, 400, "invalid_path", "the path has '.' or '..' segments")
            return
        await self.app(scope, receive, send)

    async def startup(self) -> None:
        """The start-up checks: the store opens, the facilitator answers and supports the
        exact scheme on every accepted network (a local facilitator: its RPC URL serves their
        chain).

        With ``gateway.startup_checks: fail`` (the default) a failure raises one
        :class:`ConfigurationError` and the gateway does not start; ``warn`` logs it and starts
        anyway (paid calls answer 503 until it holds); ``off`` skips the checks. The
        environment variable ``X402GATE_STARTUP_CHECKS`` overrides the file.
        """
        try:
            await self.gate.check_startup(self.config.gateway.startup_checks)
        except ConfigurationError as exc:
            message = str(exc).replace(
                "startup_checks='warn'", "gateway.startup_checks: warn in the file"
            )
            raise ConfigurationError(self.config.redactor(message)) from None

    async def aclose(self) -> None:
        """Close the upstream connections of the running loop, the facilitator and the store."""
        for upstream in self.upstreams.values():
            await upstream.aclose()
        if self.metrics is not None:
            self.metrics.close()
        await self.gate.aclose()


def _has_dot_segment(path: str) -> bool:
    return any(segment in (".", "..") for segment in path.split("/"))


def build_gateway(
    config: GatewayConfig | str,
    *,
    env: Mapping[str, str] | None = None,
    **options: Any,
) -> Gateway:
    """A :class:`Gateway` from a validated config or a file path (``env`` for ``${VAR}``).

    ``options`` go to :class:`Gateway` (``facilitator=``, ``store=``).
    """
    if isinstance(config, str):
        config = load_config(config, env=env)
    return Gateway(config, **options)


def server_stack() -> dict[str, str]:
    """uvicorn's HTTP parser and event loop for the gateway: ``httptools`` (the ``gateway``
    extra installs it) and ``uvloop`` when installed, else ``h11`` and ``asyncio``.

    The same choice as uvicorn's ``auto``, made explicit so that the benchmark serves its
    upstream alike and the tests serve the gateway as the CLI does. On the 2-core development
    machine httptools takes ~0.2 ms off a call from credit, and uvloop ~0.1 ms more.
    """
    return {
        "http": "httptools" if _installed("httptools") else "h11",
        "loop": "uvloop" if _installed("uvloop") else "asyncio",
    }


def _installed(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # pragma: no cover - a broken installation
        return False


def uvicorn_config(
    app: Gateway, *, host: str | None = None, port: int | None = None, **options: Any
) -> uvicorn.Config:
    """The uvicorn settings the gateway is served with (the CLI, the tests and the benchmark).

    uvicorn's own ``Server`` and ``Date`` headers are off (the upstream's pass through instead
    of being doubled), and so is its reading of ``X-Forwarded-*``: the file's
    ``trusted_proxies`` decide that. The HTTP parser and the event loop are
    :func:`server_stack`'s.
    """
    import uvicorn

    return uvicorn.Config(app, **uvicorn_options(app.config, host=host, port=port, **options))


def uvicorn_options(
    config: GatewayConfig, *, host: str | None = None, port: int | None = None, **options: Any
) -> dict[str, Any]:
    """:func:`uvicorn_config`'s settings as keywords, for a server that builds its app itself
    (the worker processes of ``x402gate proxy --workers``)."""
    settings = config.gateway
    values: dict[str, Any] = {
        **server_stack(),
        "host": host if host is not None else settings.host,
        "port": port if port is not None else settings.port,
        "lifespan": "on",
        "proxy_headers": False,
        "server_header": False,
        "date_header": False,
        "log_level": "info",
        "timeout_graceful_shutdown": 10,
    }
    values.update(options)
    return values


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket (``port`` 0: a free one): clients can connect from now on, so a
    server given it is ready without polling."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio turns Nagle's algorithm off only on sockets that say TCP, and
    # with it on, a response written in two parts waits ~40 ms for the client's delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def _metrics(gate: PaymentGate, spec: MetricsSpec | None) -> PaymentMetrics | None:
    """The gateway's metrics as ``gateway.metrics`` asks (``None`` without the key)."""
    if spec is None:
        return None
    from ..observability.metrics import PaymentMetrics

    token = spec.token.get_secret_value() if spec.token is not None else None
    metrics = PaymentMetrics(gate, path=spec.path, token=token)
    if spec.port is not None:
        metrics.serve(spec.port, spec.host)
    return metrics


def _dashboard(spec: Any) -> Any:
    """The gate's :class:`~x402gate.dashboard.Dashboard` of ``gateway.dashboard:``, if any."""
    if spec is None:
        return None
    from ..dashboard import Dashboard

    return Dashboard(spec.token.get_secret_value(), path=spec.path, days=spec.days)
