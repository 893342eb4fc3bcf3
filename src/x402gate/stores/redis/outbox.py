"""The webhook outbox in the Redis store.

``<prefix>outbox:due`` orders the pending rows (members ``endpoint\\nevent``) by when they are
due; the Lua script that writes a journal row adds its members (:file:`lua/journal_prelude.lua`),
so Redis runs both atomically. ``outbox:attempts`` and ``outbox:errors`` count a pending row's
failed attempts and keep its last error; ``outbox:dead`` (by the time they died) and
``outbox:dead_info`` keep the newest :data:`~x402gate.stores.outbox.DEAD_KEPT` dead rows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..journal import JournalRow, row_from_json
from ..outbox import DEAD_KEPT, OutboxEntry, OutboxTarget, targets_of
from .connection import RedisConnection
from .scripts import script

if TYPE_CHECKING:
    import redis as redis_module

__all__ = ["RedisOutbox"]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisOutbox(RedisConnection):
    """Queue, page, retry, deliver and bury outbox rows."""

    outbox_targets: tuple[OutboxTarget, ...] = ()

    def _register_scripts(self, client: redis_module.Redis) -> None:
        super()._register_scripts(client)
        self._outbox_retry_script = client.register_script(script("outbox_retry"))
        self._outbox_finish_script = client.register_script(script("outbox_finish"))

    def _outbox_keys(self) -> list[str]:
        prefix = f"{self.key_prefix}outbox:"
        return [f"{prefix}{name}" for name in ("due", "attempts", "errors", "dead", "dead_info")]

    def _outbox_arg(self, row: JournalRow) -> str:
        """The outbox argument of a journal write: '' or the due set and the endpoints."""
        endpoints = targets_of(self.outbox_targets, row)
        return "\n".join([self._outbox_keys()[0], *endpoints]) if endpoints else ""

    def _outbox_entries(
        self, members: list[tuple[Any, float]], attempts: list[Any], errors: list[Any]
    ) -> list[OutboxEntry]:
        rows_key = f"{self.key_prefix}journal:rows"
        names = [_text(member).split("\n", 1) for member, _ in members]
        values = self.client.hmget(rows_key, [event for _, event in names]) if names else []
        entries = []
        for (endpoint, event), (_, score), count, error, value in zip(
            names, members, attempts, errors, values, strict=True
        ):
            row = None if value is None else row_from_json(value)
            entries.append(
                OutboxEntry(
                    endpoint,
                    event,
                    float(score),
                    int(count or 0),
                    float(score) if row is None else row.time,
                    "" if error is None else _text(error),
                    row,
                )
            )
        return entries

    def outbox_due(self, now: float, limit: int) -> list[OutboxEntry]:
        due, attempts_key, errors_key = self._outbox_keys()[:3]
        try:
            members: list[Any] = self.client.zrangebyscore(
                due, "-inf", repr(float(now)), start=0, num=limit, withscores=True
            )
            if not members:
                return []
            keys = [member for member, _ in members]
            attempts = self.client.hmget(attempts_key, keys)
            errors = self.client.hmget(errors_key, keys)
            return self._outbox_entries(members, attempts, errors)
        except self._redis_errors as exc:
            self._fail("outbox_due", exc)

    def outbox_retry(self, endpoint: str, event: str, due: float, error: str) -> None:
        try:
            self._outbox_retry_script(
                keys=self._outbox_keys()[:3],
                args=[f"{endpoint}\n{event}", repr(float(due)), error[:256]],
            )
        except self._redis_errors as exc:
            self._fail("outbox_retry", exc)

    def outbox_done(self, endpoint: str, event: str) -> None:
        try:
            self._outbox_finish_script(keys=self._outbox_keys(), args=[f"{endpoint}\n{event}"])
        except self._redis_errors as exc:
            self._fail("outbox_done", exc)

    def outbox_dead(self, endpoint: str, event: str, now: float, error: str) -> None:
        try:
            self._outbox_finish_script(
                keys=self._outbox_keys(),
                args=[f"{endpoint}\n{event}", repr(float(now)), error[:256], DEAD_KEPT],
            )
        except self._redis_errors as exc:
            self._fail("outbox_dead", exc)

    def outbox_dead_rows(self, limit: int = 100) -> list[OutboxEntry]:
        dead, info = self._outbox_keys()[3:]
        try:
            members: list[Any] = self.client.zrevrange(dead, 0, limit - 1, withscores=True)
            if not members:
                return []
            details = self.client.hmget(info, [member for member, _ in members])
        except self._redis_errors as exc:
            self._fail("outbox_dead_rows", exc)
        attempts: list[Any] = []
        errors: list[Any] = []
        for detail in details:
            count, _, error = ("0\n" if detail is None else _text(detail)).partition("\n")
            attempts.append(count)
            errors.append(error)
        try:
            return self._outbox_entries(members, attempts, errors)
        except self._redis_errors as exc:
            self._fail("outbox_dead_rows", exc)

    def outbox_pending(self) -> int:
        try:
            return int(self.client.zcard(self._outbox_keys()[0]))
        except self._redis_errors as exc:
            self._fail("outbox_pending", exc)
