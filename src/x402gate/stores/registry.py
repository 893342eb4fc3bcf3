"""Choosing a store backend from a URL.

The built-in backends are named here by module and class, and imported only when their scheme
is first asked for, so ``import x402gate`` never loads ``sqlite3`` or ``redis`` and the backends
never import this module. Other backends register their URL scheme with :func:`register_scheme`;
a scheme registered that way, built-in or not, is the one :func:`open_store` uses.
"""

from __future__ import annotations

import importlib
import re
import sys
from typing import TypeVar

from ..errors import ConfigurationError
from .base import Store
from .urls import redact_url

__all__ = ["DEFAULT_STORE_URL", "accepted_schemes", "open_store", "redact_url", "register_scheme"]

DEFAULT_STORE_URL = "sqlite:///x402gate.db"
"""The embedded default: a SQLite file in the working directory, shared by all worker processes."""

S = TypeVar("S", bound=Store)

_SCHEMES: dict[str, type[Store]] = {}

# Built-in schemes and the module and class that serve them. Kept as names, not classes, so
# that choosing ``memory://`` does not import the SQLite or Redis code.
_BUILTIN_BACKENDS: dict[str, tuple[str, str]] = {
    "memory": ("x402gate.stores.memory", "MemoryStore"),
    "sqlite": ("x402gate.stores.sqlite", "SQLiteStore"),
    "redis": ("x402gate.stores.redis", "RedisStore"),
    "rediss": ("x402gate.stores.redis", "RedisStore"),
    "unix": ("x402gate.stores.redis", "RedisStore"),
    "redis+cluster": ("x402gate.stores.redis", "RedisStore"),
    "rediss+cluster": ("x402gate.stores.redis", "RedisStore"),
    "redis+sentinel": ("x402gate.stores.redis", "RedisStore"),
    "postgresql": ("x402gate.stores.postgres", "PostgresStore"),
    "postgres": ("x402gate.stores.postgres", "PostgresStore"),
}

# RFC 3986 scheme syntax.
_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def register_scheme(cls: type[S]) -> type[S]:
    """Class decorator: make ``cls`` the backend for ``cls.scheme`` (and ``cls.aliases``).

    Registering a scheme again replaces the earlier backend, so an application can override a
    built-in one.
    """
    if not cls.scheme:
        raise ConfigurationError(f"{cls.__name__} has no 'scheme' to register under")
    for scheme in (cls.scheme, *cls.aliases):
        if not _SCHEME_RE.match(f"{scheme}://"):
            raise ConfigurationError(f"{cls.__name__}: {scheme!r} is not a valid URL scheme")
        _SCHEMES[scheme.lower()] = cls
    return cls


def accepted_schemes() -> list[str]:
    """Every scheme :func:`open_store` understands, sorted."""
    return sorted(set(_SCHEMES) | set(_BUILTIN_BACKENDS))


def _register_builtin(scheme: str) -> None:
    """Import the built-in backend for ``scheme`` and register it (with its aliases)."""
    module, name = _BUILTIN_BACKENDS[scheme]
    backend = getattr(importlib.import_module(module), name)
    for alias in (backend.scheme, *backend.aliases):
        # An application's own backend for one of these schemes stays in place.
        if alias.lower() not in _SCHEMES:
            _SCHEMES[alias.lower()] = backend


def _backend_for(url: str) -> type[Store]:
    match = _SCHEME_RE.match(url)
    if match is None:
        raise ConfigurationError(
            f"store URL {redact_url(url)!r} is malformed: expected scheme://..., "
            f"one of {', '.join(s + '://' for s in accepted_schemes())}"
        )
    scheme = match.group(1).lower()
    if scheme not in _SCHEMES and scheme in _BUILTIN_BACKENDS:
        _register_builtin(scheme)
    try:
        return _SCHEMES[scheme]
    except KeyError:
        raise ConfigurationError(
            f"unknown store URL scheme {scheme!r}; accepted: "
            f"{', '.join(s + '://' for s in accepted_schemes())}"
        ) from None


def open_store(url_or_store: str | Store | object) -> Store:
    """The store for a URL, an existing :class:`Store`, or an existing ``redis.Redis`` client.

    * ``memory://`` — one process only (tests, single-worker servers);
    * ``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db`` — the default
      (:data:`DEFAULT_STORE_URL`), shared by every process on the host;
    * ``redis://[:password@]host:port/db``, ``rediss://...``, ``unix:///path/redis.sock`` —
      shared by several hosts; ``redis+cluster://host:port`` (Redis Cluster) and
      ``redis+sentinel://host:port/<service>`` (a primary managed by Sentinel);
    * ``postgresql://user:password@host:port/db`` (or ``postgres://``) — shared by several
      hosts, with transactions (needs the ``postgres`` extra).

    A :class:`Store` is returned as it is. Raises :class:`~x402gate.errors.ConfigurationError`
    for an unknown scheme or a malformed URL; messages never contain a password from the URL.
    """
    if isinstance(url_or_store, Store):
        return url_or_store
    if isinstance(url_or_store, str):
        return _backend_for(url_or_store.strip()).from_url(url_or_store.strip())
    # A redis client can only exist if redis was imported by the caller, so checking
    # sys.modules keeps the import lazy.
    redis_module = sys.modules.get("redis")
    cluster_module = sys.modules.get("redis.cluster")
    if (redis_module is not None and isinstance(url_or_store, redis_module.Redis)) or (
        cluster_module is not None and isinstance(url_or_store, cluster_module.RedisCluster)
    ):
        from .redis import RedisStore

        return RedisStore(client=url_or_store)
    if type(url_or_store).__module__.partition(".")[0] == "redis":
        raise ConfigurationError(
            f"unsupported redis client {type(url_or_store).__name__}: pass a synchronous "
            "redis.Redis (stores are called from worker threads) or a redis:// URL"
        )
    raise ConfigurationError(
        "a store is a URL ("
        + ", ".join(s + "://" for s in accepted_schemes())
        + f"), a Store instance or a redis.Redis client; got {type(url_or_store).__name__}"
    )
