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

The package has one module per step: :mod:`.environment` (2), :mod:`.schema` (3),
:mod:`.compile` and :mod:`.prices` (4); :mod:`.errors` collects and words the problems and
:mod:`.loading` runs the steps.
"""

from __future__ import annotations

from .compile import RoutePlan
from .errors import GatewayConfigError, Problem, format_field
from .loading import GatewayConfig, load_config, parse_config
from .schema import (
    DEFAULT_MAX_BODY_BYTES,
    HOP_BY_HOP,
    AcceptSpec,
    BreakerSpec,
    DecodeBodySpec,
    FacilitatorSpec,
    GatewayFile,
    GatewaySection,
    RouteSpec,
    RuleSpec,
    TargetSpec,
    UpstreamSpec,
)

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "HOP_BY_HOP",
    "AcceptSpec",
    "BreakerSpec",
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
    "TargetSpec",
    "UpstreamSpec",
    "format_field",
    "load_config",
    "parse_config",
]
