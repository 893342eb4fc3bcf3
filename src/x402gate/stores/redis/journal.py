"""The payments journal in the Redis store: a hash of rows and a sorted set by time.

``<prefix>journal:rows`` maps each row id to the row's JSON; ``<prefix>journal:time`` orders the
ids by the row's time (ties by id, as Redis orders equal scores). A row recorded with a commit
(``journal=`` of ``mark_used``, ``credit_commit``, ``channel_commit``) is written by the commit's
own Lua script (:file:`lua/journal_prelude.lua`), so Redis runs both atomically; the script puts
what it actually charged into the row. Pruning by retention is one Lua script too. Reading one
payer's rows reads the window and filters it (there is no index by payer).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..journal import JournalRow, check_journal_row, row_from_json, row_to_json
from .connection import RedisConnection
from .scripts import JOURNAL, script

if TYPE_CHECKING:
    import redis as redis_module

__all__ = ["RedisJournal"]

_HEAD = '{"amount":"'
_PRUNE_INTERVAL = 30.0
_PRUNE_BATCH = 1000
_READ_BATCH = 1000


class RedisJournal(RedisConnection):
    """Append, read and prune journal rows."""

    _next_journal_prune: float = float("-inf")

    def _register_scripts(self, client: redis_module.Redis) -> None:
        super()._register_scripts(client)
        self._journal_append_script = client.register_script(script("journal_append", JOURNAL))
        self._journal_prune_script = client.register_script(script("journal_prune"))

    def _journal_keys(self) -> tuple[str, str]:
        return f"{self.key_prefix}journal:rows", f"{self.key_prefix}journal:time"

    def _journal_args(self, row: JournalRow | None) -> list[str]:
        """The journal arguments of a commit script (none without a row); the script adds the
        amount it charged between the row's JSON head and tail."""
        if row is None:
            return []
        check_journal_row(row)
        text = row_to_json(row.with_amount(0))
        marker = _HEAD + '0"'
        assert text.startswith(marker)  # sorted keys: the amount comes first
        rows, index = self._journal_keys()
        return [rows, index, row.id, repr(float(row.time)), _HEAD, text[len(marker) - 1 :]]

    def _journal_after(self, row: JournalRow | None) -> None:
        """Prune from time to time after an append (outside the commit: pruning is not part
        of what the commit records)."""
        if row is not None and row.time >= self._next_journal_prune:
            # One batch; a backlog is worked off by the next appends.
            batch = self._journal_prune_batch("journal_append", row.time)
            backlog = batch >= _PRUNE_BATCH
            self._next_journal_prune = row.time if backlog else row.time + _PRUNE_INTERVAL

    def journal_append(self, row: JournalRow) -> bool:
        args = self._journal_args(row)
        try:
            done = self._journal_append_script(args=[*args, str(row.amount)])
        except self._redis_errors as exc:
            self._fail("journal_append", exc)
        self._journal_after(row)
        return int(done) == 1

    def journal_rows(
        self,
        since: float = float("-inf"),
        until: float = float("inf"),
        limit: int = 1_000_000,
        *,
        payer: str | None = None,
    ) -> list[JournalRow]:
        rows_key, index = self._journal_keys()
        low = "-inf" if since == float("-inf") else repr(float(since))
        high = "+inf" if until == float("inf") else f"({float(until)!r}"
        found: list[JournalRow] = []
        try:
            offset = 0
            while len(found) < limit:
                count = _READ_BATCH if payer is not None else min(_READ_BATCH, limit - len(found))
                ids: list[Any] = self.client.zrangebyscore(
                    index, low, high, start=offset, num=count
                )
                if not ids:
                    break
                offset += len(ids)
                values = self.client.hmget(rows_key, ids)
                for value in values:
                    if value is not None:
                        row = row_from_json(value)
                        if payer is None or row.payer == payer:
                            found.append(row)
        except self._redis_errors as exc:
            self._fail("journal_rows", exc)
        return found[:limit]

    def journal_prune(self, now: float) -> int:
        deleted = 0
        while True:  # in batches: one Lua script never blocks the server for long
            batch = self._journal_prune_batch("journal_prune", now)
            deleted += batch
            if batch < _PRUNE_BATCH:
                return deleted

    def _journal_prune_batch(self, op: str, now: float) -> int:
        cutoff = self.journal_retention.cutoff(now)
        keep = self.journal_retention.rows
        args = ["" if cutoff is None else repr(cutoff), "" if keep is None else keep, _PRUNE_BATCH]
        try:
            return int(self._journal_prune_script(keys=list(self._journal_keys()), args=args))
        except self._redis_errors as exc:
            self._fail(op, exc)
