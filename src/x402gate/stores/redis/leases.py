"""Leases in the Redis store: ``<prefix>lease:<name>`` is a hash of ``holder`` and
``expires_at``; acquire and release are Lua scripts (``lua/lease_*.lua``), atomic across every
client of the server. The rules are those of :mod:`x402gate.stores.leases`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..leases import check_lease
from .connection import RedisConnection, text
from .scripts import script

if TYPE_CHECKING:
    import redis as redis_module

__all__ = ["RedisLeases"]


class RedisLeases(RedisConnection):
    """The lease operations of :class:`~x402gate.stores.redis.RedisStore`."""

    def _register_scripts(self, client: redis_module.Redis) -> None:
        super()._register_scripts(client)
        self._lease_acquire_script = client.register_script(script("lease_acquire"))
        self._lease_release_script = client.register_script(script("lease_release"))

    def _lease_key(self, name: str) -> str:
        return f"{self.key_prefix}lease:{name}"

    def lease_acquire(self, name: str, holder: str, ttl_seconds: float, now: float) -> bool:
        check_lease(name, holder, ttl_seconds)
        expires_at = float(now) + float(ttl_seconds)
        try:
            answer = self._lease_acquire_script(
                keys=[self._lease_key(name)], args=[holder, repr(float(now)), repr(expires_at)]
            )
        except self._redis_errors as exc:
            self._fail("lease_acquire", exc)
        return int(answer) == 1

    def lease_release(self, name: str, holder: str) -> bool:
        check_lease(name, holder)
        try:
            answer = self._lease_release_script(keys=[self._lease_key(name)], args=[holder])
        except self._redis_errors as exc:
            self._fail("lease_release", exc)
        return int(answer) == 1

    def lease_holder(self, name: str, now: float) -> str | None:
        try:
            holder, expires_at = self.client.hmget(self._lease_key(name), "holder", "expires_at")
        except self._redis_errors as exc:
            self._fail("lease_holder", exc)
        if holder is None or expires_at is None or float(text(expires_at)) <= now:
            return None
        return text(holder)
