"""One ``make_store`` fixture over every backend, so each rule is checked on each of them.

The Redis server comes from the x402gate pytest plugin (``redis_url``), and so do a Redis Cluster
(``redis_cluster_url``) and a Sentinel-managed primary (``redis_sentinel_url``); the Redis cases
are marked ``redis`` and skip, or fail under ``X402GATE_REQUIRE_REDIS=1``, when no server can
run; the
PostgreSQL one likewise (``postgres_server``, ``X402GATE_REQUIRE_POSTGRES=1``), each store in a
schema of its own.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from x402gate.stores import Store, open_store
from x402gate.testing.postgres_server import PostgresServer

StoreFactory = Callable[[], Store]

_REDIS_URL_FIXTURES = {
    "redis": "redis_url",
    "redis-cluster": "redis_cluster_url",
    "redis-sentinel": "redis_sentinel_url",
}


def _redis_url(request: pytest.FixtureRequest, backend: str) -> str:
    """The URL of the Redis deployment ``backend`` names (one server, cluster, sentinel)."""
    fixture = _REDIS_URL_FIXTURES.get(backend)
    return "" if fixture is None else str(request.getfixturevalue(fixture))


@pytest.fixture(
    params=[
        "memory",
        "sqlite",
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("redis-cluster", marks=pytest.mark.redis),
        pytest.param("redis-sentinel", marks=pytest.mark.redis),
        pytest.param("postgres", marks=pytest.mark.postgres),
    ],
)
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    """A factory of fresh, empty stores of one backend, each opened by URL."""
    backend: str = request.param
    redis_url = _redis_url(request, backend)
    postgres: PostgresServer | None = (
        request.getfixturevalue("postgres_server") if backend == "postgres" else None
    )
    counter = itertools.count()
    opened: list[Store] = []

    def url_of(n: int) -> str:
        if backend == "memory":
            return "memory://"
        if backend == "sqlite":
            # Durability is not what these tests check, and an fsync per operation would make
            # the model test wait on the disk; test_sqlite and test_atomicity use the default.
            return f"sqlite:///{tmp_path}/store-{n}.db?synchronous=normal"
        if postgres is not None:
            return postgres.fresh_url()  # a schema of its own
        # A prefix per store keeps stores apart on one server without flushing it.
        return f"{redis_url}{'&' if '?' in redis_url else '?'}key_prefix=t{n}:"

    def make() -> Store:
        store = open_store(url_of(next(counter)))
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


@pytest.fixture
def store(make_store: StoreFactory) -> Store:
    """A fresh, empty store of each backend."""
    return make_store()


@pytest.fixture(
    params=[
        "memory",
        "sqlite",
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("redis-cluster", marks=pytest.mark.redis),
        pytest.param("redis-sentinel", marks=pytest.mark.redis),
        pytest.param("postgres", marks=pytest.mark.postgres),
    ],
)
def make_handle(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    """A factory of handles on one and the same empty store of one backend.

    What several threads, worker processes or hosts share: the one ``MemoryStore`` (it cannot
    be shared otherwise), a new connection to one SQLite file, a new client on one Redis prefix.
    """
    backend: str = request.param
    if backend == "memory":
        shared = open_store("memory://")
        yield lambda: shared
        return
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path}/shared.db?synchronous=normal"
    elif backend == "postgres":
        url = request.getfixturevalue("postgres_url")
    else:
        base = _redis_url(request, backend)
        url = f"{base}{'&' if '?' in base else '?'}key_prefix=shared:"
    opened: list[Store] = []

    def make() -> Store:
        store = open_store(url)
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A Redis Cluster store keeps no webhook outbox (a gate refuses webhooks on one; see
    test_webhooks_are_refused_on_a_cluster): the outbox tests leave that backend out."""
    left_out = [
        item
        for item in items
        if item.path.name == "test_outbox.py" and "[redis-cluster" in item.nodeid
    ]
    if left_out:
        config.hook.pytest_deselected(items=left_out)
        items[:] = [item for item in items if item not in left_out]
