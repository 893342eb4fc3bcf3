"""Reading a gateway file: YAML, ``${VAR}`` substitution, shape, meaning (see the package)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from ...assets import Asset
from ...stores.registry import redact_url
from .._yaml import Loc, YAMLProblem, read_yaml
from ..redaction import Redactor
from .compile import Compiler, RoutePlan
from .environment import declared_secrets, interpolate
from .errors import GatewayConfigError, Problem, Problems, describe, is_secret_loc, pydantic_message
from .schema import ALIASES, FacilitatorSpec, GatewayFile, GatewaySection, UpstreamSpec

if TYPE_CHECKING:
    from ...gate.channels import ChannelSettings
    from ...webhooks import WebhookEndpoint

__all__ = ["GatewayConfig", "load_config", "parse_config"]


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    """A valid gateway file, ready to serve (:func:`~x402gate.gateway.build_gateway`)."""

    source: str
    file: GatewayFile
    assets: tuple[Asset, ...]
    pay_to: dict[str, str]
    routes: tuple[RoutePlan, ...]
    redactor: Redactor = field(repr=False)
    channels: ChannelSettings | None = None
    """``batch-settlement`` terms from ``channels:`` (``None``: the file offers no channels)."""
    webhooks: tuple[WebhookEndpoint, ...] = ()
    """The endpoints of ``webhooks:``, checked."""

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
        found = "an empty file" if data is None else describe(data)
        raise GatewayConfigError(
            source,
            [Problem("", f"expected a mapping with gateway, upstreams and routes; got {found}")],
        )

    secrets: set[str] = set()
    problems = Problems(source, lines, Redactor())
    data = interpolate(data, environment, problems, secrets)
    problems.redactor = Redactor(secrets)
    problems.raise_if_any()
    problems.spelled = _spelled(data)

    try:
        parsed = GatewayFile.model_validate(data)
    except ValidationError as exc:
        for error in exc.errors(include_url=False):
            loc = tuple(part for part in error["loc"] if isinstance(part, str | int))
            problems.add(loc, pydantic_message(error, is_secret_loc(loc)))
        problems.raise_if_any()
        raise  # pragma: no cover - a ValidationError always has errors

    secrets.update(declared_secrets(parsed))
    problems.redactor = Redactor(secrets)
    compiler = Compiler(parsed, problems)
    compiled = compiler.run()
    problems.raise_if_any()
    assets, pay_to, routes = compiled
    return GatewayConfig(
        source,
        parsed,
        assets,
        pay_to,
        routes,
        Redactor(secrets),
        channels=compiler.channels,
        webhooks=compiler.webhooks,
    )


def _spelled(data: Mapping[str, Any]) -> dict[Loc, Loc]:
    """The fields ``data`` writes under their alias only (see :data:`.schema.ALIASES`)."""
    spelled: dict[Loc, Loc] = {}
    for loc, alias in ALIASES.items():
        *parents, name = loc
        section: Any = data
        for parent in parents:
            section = section.get(parent) if isinstance(section, Mapping) else None
        if isinstance(section, Mapping) and alias in section and name not in section:
            spelled[loc] = (*parents, alias)
    return spelled
