"""The payments journal in the Redis store: a hash of rows and a sorted set by time.

``<prefix>journal:rows`` maps each row id to the row's JSON; ``<prefix>journal:time`` orders the
ids by the row's time (ties by id, as Redis orders equal scores). A row recorded with a commit
(``journal=`` of ``mark_used``, ``credit_commit``, ``channel_commit``, ``channel_mark_claimed``)
is written by the commit's own Lua script (:file:`lua/journal_prelude.lua`), so Redis runs both
atomically; the script puts what it actually charged into the row. Pruning by retention is one
Lua script too. Reading one payer's rows reads the window and filters it (there is no index by
payer).

On a Redis Cluster a script reaches keys of one slot only, so the journal is sharded: each hash
tag that holds records a commit writes (the credit ledger's ``{<prefix>credit}``, the channels'
``{<prefix>channel:<n>}``, the claims' ``{<prefix>replay:<n>}``) has its own pair,
``<tag>journal:rows`` and ``<tag>journal:time`` (no ``:`` after the tag, so they never meet the
tag's records, all named ``<tag>:...``), and a commit writes its row into the shard of its record.
A row appended on its own goes to the claims' shard its id hashes to, so an id is kept once.
Reading merges the shards in (time, id) order a bounded page at a time; pruning by age prunes
each shard, pruning by count finds the oldest rows across the shards and deletes them. One server
or a Sentinel-managed primary keeps the single pair above.
"""

from __future__ import annotations

import functools
import heapq
import secrets
import zlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ..journal import JournalRow, check_journal_row, row_from_json, row_to_json
from .connection import text
from .leases import RedisLeases
from .outbox import RedisOutbox
from .scripts import JOURNAL, script

if TYPE_CHECKING:
    import redis as redis_module

__all__ = ["REPLAY_BUCKETS", "RedisJournal"]

REPLAY_BUCKETS = 16
"""On a Redis Cluster, claims spread over this many hash tags, ``{<prefix>replay:<n>}``, each with
its own journal shard (``mark_used`` writes its row next to the claim)."""

_HEAD = '{"amount":"'
_PRUNE_INTERVAL = 30.0
_PRUNE_BATCH = 1000
_READ_BATCH = 1000
_MIN_PAGE = 32
_PRUNE_LEASE = "x402gate:journal-prune-by-count"
_PRUNE_LEASE_SECONDS = 60.0


class RedisJournal(RedisOutbox, RedisLeases):
    """Append, read and prune journal rows (a new row queued in the outbox with it)."""

    _next_journal_prune: float = float("-inf")

    @functools.cached_property
    def _journal_holder(self) -> str:
        """This store's token for the lease on pruning by count (see _journal_drop_oldest)."""
        return secrets.token_hex(16)

    def _register_scripts(self, client: redis_module.Redis) -> None:
        super()._register_scripts(client)
        self._journal_append_script = client.register_script(script("journal_append", JOURNAL))
        self._journal_prune_script = client.register_script(script("journal_prune"))
        self._journal_drop_script = client.register_script(script("journal_drop"))

    def _replay_tag(self, key: str) -> str:
        """On a cluster, the hash tag of claim ``key`` (one of :data:`REPLAY_BUCKETS`)."""
        return f"{{{self.key_prefix}replay:{zlib.crc32(key.encode()) % REPLAY_BUCKETS}}}"

    def _journal_tags(self) -> list[str]:
        """On a cluster, every hash tag with a journal shard; parts extend it and call super()."""
        return [f"{{{self.key_prefix}replay:{n}}}" for n in range(REPLAY_BUCKETS)]

    def _journal_keys(self, tag: str = "") -> tuple[str, str]:
        """The rows hash and time index of the shard of ``tag`` (one pair off a cluster)."""
        if not self.cluster:
            return f"{self.key_prefix}journal:rows", f"{self.key_prefix}journal:time"
        assert tag, "on a cluster every journal row belongs to a hash tag"
        return f"{tag}journal:rows", f"{tag}journal:time"

    def _journal_shards(self) -> list[tuple[str, str]]:
        if not self.cluster:
            return [self._journal_keys()]
        return [self._journal_keys(tag) for tag in dict.fromkeys(self._journal_tags())]

    def _journal_args(self, row: JournalRow | None, tag: str = "") -> list[str]:
        """The journal arguments of a commit script (none without a row), for the shard of
        ``tag``, the hash tag of the record the script commits; the script adds the amount it
        charged between the row's JSON head and tail."""
        if row is None:
            return []
        check_journal_row(row)
        body = row_to_json(row.with_amount(0))
        marker = _HEAD + '0"'
        assert body.startswith(marker)  # sorted keys: the amount comes first
        rows, index = self._journal_keys(tag)
        outbox = self._outbox_arg(row) if self.outbox_targets else ""
        return [rows, index, row.id, repr(float(row.time)), _HEAD, body[len(marker) - 1 :], outbox]

    def _journal_after(self, row: JournalRow | None) -> None:
        """Prune from time to time after an append (outside the commit: pruning is not part
        of what the commit records)."""
        if row is not None and row.time >= self._next_journal_prune:
            # One batch; a backlog is worked off by the next appends.
            _, backlog = self._journal_prune_batch("journal_append", row.time)
            self._next_journal_prune = row.time if backlog else row.time + _PRUNE_INTERVAL

    def journal_append(self, row: JournalRow) -> bool:
        tag = self._replay_tag(row.id) if self.cluster else ""
        args = self._journal_args(row, tag)
        try:
            done = self._journal_append_script(
                keys=list(self._journal_keys(tag)), args=[*args, str(row.amount)]
            )
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
        low = "-inf" if since == float("-inf") else repr(float(since))
        high = "+inf" if until == float("inf") else f"({float(until)!r}"
        shards = self._journal_shards()
        page = max(_MIN_PAGE, _READ_BATCH // len(shards))
        if payer is None:
            page = min(page, limit)
        found: list[JournalRow] = []
        if limit <= 0:
            return found
        try:
            streams = [self._journal_stream(shard, low, high, page, True) for shard in shards]
            for _time, _id, value in heapq.merge(*streams):
                row = row_from_json(value)
                if payer is None or row.payer == payer:
                    found.append(row)
                    if len(found) >= limit:
                        break
        except self._redis_errors as exc:
            self._fail("journal_rows", exc)
        return found

    def _journal_stream(
        self, shard: tuple[str, str], low: str, high: str, page: int, values: bool
    ) -> Iterator[tuple[float, str, str]]:
        """One shard's rows in the window, ``(time, id, json)`` in (time, id) order, read a page
        at a time (the JSON is empty unless ``values``); a row pruned meanwhile is skipped."""
        rows_key, index = shard
        offset = 0
        while True:
            pairs: list[Any] = self.client.zrangebyscore(
                index, low, high, start=offset, num=page, withscores=True
            )
            if not pairs:
                return
            offset += len(pairs)
            ids = [member for member, _score in pairs]
            texts = self.client.hmget(rows_key, ids) if values else [""] * len(ids)
            for (member, score), value in zip(pairs, texts, strict=True):
                if value is not None:
                    yield float(score), text(member), text(value)
            if len(pairs) < page:
                return

    def _journal_ids(
        self, n: int, shard: tuple[str, str], page: int
    ) -> Iterator[tuple[float, str, int]]:
        """Every id of shard ``n``, ``(time, id, n)`` oldest first."""
        for time, id_, _ in self._journal_stream(shard, "-inf", "+inf", page, False):
            yield time, id_, n

    def journal_prune(self, now: float) -> int:
        deleted = 0
        while True:  # in batches: one Lua script never blocks the server for long
            batch, more = self._journal_prune_batch("journal_prune", now)
            deleted += batch
            if not more:
                return deleted

    def _journal_prune_batch(self, op: str, now: float) -> tuple[int, bool]:
        """One batch of pruning on every shard: how many rows went, and whether more may go."""
        cutoff = self.journal_retention.cutoff(now)
        keep = self.journal_retention.rows
        shards = self._journal_shards()
        # One shard keeps its count in the script; several keep it together (below).
        keep_arg = "" if keep is None or len(shards) > 1 else keep
        args = ["" if cutoff is None else repr(cutoff), keep_arg, _PRUNE_BATCH]
        deleted, more = 0, False
        try:
            for shard in shards:
                batch = int(self._journal_prune_script(keys=list(shard), args=args))
                deleted += batch
                more = more or batch >= _PRUNE_BATCH
        except self._redis_errors as exc:
            self._fail(op, exc)
        if keep is not None and len(shards) > 1 and not more:
            batch = self._journal_drop_oldest(op, shards, keep, now)
            deleted += batch
            more = batch >= _PRUNE_BATCH
        return deleted, more

    def _journal_drop_oldest(
        self, op: str, shards: list[tuple[str, str]], keep: int, now: float
    ) -> int:
        """Delete the oldest rows across ``shards`` beyond the newest ``keep`` (one batch at
        most): merge the shards' time indexes, then delete each shard's share.

        Counting and deleting span several slots, so they are not one atomic step: two hosts
        pruning at once would each delete the oldest rows beyond the count they saw, together
        too many. A lease lets one host at a time do it; the others skip this round.
        """
        holder = self._journal_holder
        if not self.lease_acquire(_PRUNE_LEASE, holder, _PRUNE_LEASE_SECONDS, now):
            return 0
        try:
            return self._journal_drop_oldest_held(shards, keep)
        except self._redis_errors as exc:
            self._fail(op, exc)
        finally:
            self.lease_release(_PRUNE_LEASE, holder)

    def _journal_drop_oldest_held(self, shards: list[tuple[str, str]], keep: int) -> int:
        total = sum(int(self.client.zcard(index)) for _rows, index in shards)
        over = min(total - keep, _PRUNE_BATCH)
        if over <= 0:
            return 0
        page = max(_MIN_PAGE, min(over, _READ_BATCH // len(shards)))
        streams = [self._journal_ids(n, shard, page) for n, shard in enumerate(shards)]
        doomed: dict[int, list[str]] = {}
        for count, (_time, id_, n) in enumerate(heapq.merge(*streams)):
            if count >= over:
                break
            doomed.setdefault(n, []).append(id_)
        return sum(
            int(self._journal_drop_script(keys=list(shards[n]), args=ids))
            for n, ids in doomed.items()
        )
