"""pytest fixtures for a real PostgreSQL; the x402gate pytest plugin re-exports them.

* ``postgres_server`` (session): one :class:`~x402gate.testing.postgres_server.PostgresServer`
  for the whole run. Without a server binary (the ``pgserver`` wheel or a system PostgreSQL)
  the tests that use it are skipped, unless ``X402GATE_REQUIRE_POSTGRES=1`` (CI) makes that a
  failure: a missing server must never let PostgreSQL tests pass by not running.
* ``postgres_url`` (function): the server's URL with a schema of its own, so each test starts
  from an empty store.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from .postgres_server import ENV_BIN, PostgresServer, PostgresServerError, find_postgres_bin

__all__ = ["postgres_server", "postgres_url"]

ENV_REQUIRE = "X402GATE_REQUIRE_POSTGRES"


def _unavailable(reason: str) -> None:
    if os.environ.get(ENV_REQUIRE) == "1":
        pytest.fail(f"{reason} ({ENV_REQUIRE}=1)", pytrace=False)
    pytest.skip(f"{reason}; set {ENV_REQUIRE}=1 to make this a failure")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server on a unix socket, shared by the session."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        _unavailable("psycopg is not installed (pip install 'x402gate[postgres]')")
    bin_dir = find_postgres_bin()
    if bin_dir is None:
        _unavailable(f"no PostgreSQL server found (install pgserver, or set {ENV_BIN})")
    server = PostgresServer(bin_dir)
    try:
        server.start()
    except PostgresServerError as exc:
        _unavailable(f"PostgreSQL could not be started: {exc}")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """URL of the session's server with a new schema: a store that starts empty."""
    return postgres_server.fresh_url()
