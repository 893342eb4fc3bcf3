"""x402gate's pytest plugin: a real chain and a real Redis as fixtures.

Installed with x402gate and loaded automatically through the ``pytest11`` entry point; disable
it with ``-p no:x402gate``. Nothing heavy is imported until a fixture is used: a test session
that never asks for the chain starts no anvil and imports no web3.

Chain fixtures (see :mod:`x402gate.testing._chain_fixtures`): ``local_chain`` (session),
``test_token`` (session), ``chain`` (per test, snapshot/revert), ``channel_contracts``,
``payer``, ``pay_to``, ``facilitator_account``, ``local_facilitator``. Redis fixtures:
``redis_server``, ``redis_url``; PostgreSQL fixtures: ``postgres_server``, ``postgres_url``.

Tests using a chain fixture are marked ``chain`` (and Redis ones ``redis``), so
``pytest -m "not chain"`` runs everything that needs no node.
"""

from __future__ import annotations

import pytest

from ._chain_fixtures import (
    CHAIN_FIXTURES,
    chain,
    channel_contracts,
    facilitator_account,
    local_chain,
    local_facilitator,
    pay_to,
    payer,
    test_token,
)

try:
    from ._redis_fixtures import (
        redis_cluster,
        redis_cluster_url,
        redis_sentinel,
        redis_sentinel_url,
        redis_server,
        redis_url,
    )
except ModuleNotFoundError as exc:  # pragma: no cover - only while the module does not exist
    if exc.name != f"{__package__}._redis_fixtures":
        raise
    _REDIS_FIXTURES: frozenset[str] = frozenset()
else:
    _REDIS_FIXTURES = frozenset(
        {
            "redis_server",
            "redis_url",
            "redis_cluster",
            "redis_cluster_url",
            "redis_sentinel",
            "redis_sentinel_url",
        }
    )

try:
    from ._postgres_fixtures import postgres_server, postgres_url
except ModuleNotFoundError as exc:  # pragma: no cover - only while the module does not exist
    if exc.name != f"{__package__}._postgres_fixtures":
        raise
    _POSTGRES_FIXTURES: frozenset[str] = frozenset()
else:
    _POSTGRES_FIXTURES = frozenset({"postgres_server", "postgres_url"})

__all__ = [
    "chain",
    "channel_contracts",
    "facilitator_account",
    "local_chain",
    "local_facilitator",
    "pay_to",
    "payer",
    "pytest_collection_modifyitems",
    "pytest_configure",
    "test_token",
]
if _REDIS_FIXTURES:
    __all__ += [
        "redis_cluster",
        "redis_cluster_url",
        "redis_sentinel",
        "redis_sentinel_url",
        "redis_server",
        "redis_url",
    ]
if _POSTGRES_FIXTURES:
    __all__ += ["postgres_server", "postgres_url"]

_MARKERS = {
    "chain": "needs the local anvil chain (x402gate.testing)",
    "redis": "needs a redis-server binary (x402gate.testing)",
    "postgres": "needs a PostgreSQL server (x402gate.testing)",
}


def pytest_configure(config: pytest.Config) -> None:
    """Declare the ``chain``, ``redis`` and ``postgres`` markers (for ``--strict-markers``)."""
    for name, help_text in _MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {help_text}")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark tests by the real services their fixtures start, and nothing else."""
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if fixtures & CHAIN_FIXTURES:
            item.add_marker(pytest.mark.chain)
        if fixtures & _REDIS_FIXTURES:
            item.add_marker(pytest.mark.redis)
        if fixtures & _POSTGRES_FIXTURES:
            item.add_marker(pytest.mark.postgres)
