"""Payment-channel state in the Redis store: one hash per channel, one script per step.

``<prefix>channel:<id>`` holds the channel's fields (amounts as decimal text, compared and added
exactly by the credit ledger's Lua arithmetic) and the step in progress in its ``step_*`` fields;
``<prefix>channel:unclaimed`` is a sorted set of the channels with ``earned > total_claimed``,
scored by their last committed request, for listing what to claim; ``<prefix>channel:ids`` a
sorted set of every channel id (all scored 0, so ordered by id), for listing them all (a
channel written by an older x402gate joins it at its next sync). A hash without an ``earned``
field (written by an older x402gate, which knew no other rule) earned what it charged. Each
operation that checks and sets is one script (``lua/channel_*.lua``), so the steps of one channel
are serialised across every client and host on the server. Channel records never expire (they
live as long as the escrow on chain): configure Redis without eviction. On a Redis Cluster each
channel's hash and the index it belongs to share one of :data:`CHANNEL_BUCKETS` hash tags
(``{<prefix>channel:<n>}:<id>``, ``{<prefix>channel:<n>}:unclaimed``), so channels spread over
the primaries. The rules are those of
:mod:`x402gate.stores.channels`.
"""

from __future__ import annotations

import zlib
from typing import Any

from ..channels import (
    ChannelBegin,
    ChannelBeginOutcome,
    ChannelState,
    ChannelStep,
    check_channel_amount,
    check_channel_begin,
    check_channel_commit,
    check_channel_id,
    check_channel_limit,
    check_channel_page,
    check_channel_sync,
)
from ..journal import JournalRow
from .connection import text
from .journal import RedisJournal
from .scripts import CHANNEL, script

__all__ = ["CHANNEL_BUCKETS", "RedisChannels"]

CHANNEL_BUCKETS = 16
"""On a Redis Cluster, channels spread over this many hash tags, ``{<prefix>channel:<n>}``, each
holding its channels' hashes and their own index of channels to claim (a script reaches both)."""


def _state(fields: list[Any]) -> ChannelState | None:
    """A channel from a script's flat ``HGETALL`` answer (None when empty)."""
    if not fields:
        return None
    f = {text(fields[i]): text(fields[i + 1]) for i in range(0, len(fields), 2)}
    step = None
    if "step_token" in f:
        step = ChannelStep(
            f["step_token"],
            int(f["step_base"]),
            int(f["step_max_claimable"]),
            f["step_signature"],
            float(f["step_expires_at"]),
        )
    return ChannelState(
        channel_id=f["id"],
        config=f["config"],
        balance=int(f["balance"]),
        total_claimed=int(f["total_claimed"]),
        charged=int(f["charged"]),
        earned=int(f.get("earned", f["charged"])),
        max_claimable=int(f["max_claimable"]),
        signature=f["signature"],
        withdraw_requested_at=int(f["withdraw_requested_at"]),
        refund_nonce=int(f["refund_nonce"]),
        synced_at=float(f["synced_at"]),
        last_request_at=float(f["last_request_at"]),
        step=step,
    )


class RedisChannels(RedisJournal):
    """Payment-channel state: syncs, steps (begin, commit, release) and claims."""

    def _register_scripts(self, client: Any) -> None:
        super()._register_scripts(client)
        for name in ("sync", "begin", "commit", "extend", "release", "mark_claimed"):
            registered = client.register_script(script(f"channel_{name}", CHANNEL))
            setattr(self, f"_channel_{name}_script", registered)

    def _bucket_prefix(self, channel_id: str) -> str:
        """Where a channel's keys live: on a cluster, one of :data:`CHANNEL_BUCKETS` hash tags."""
        if not self.cluster:
            return self._channel_prefix
        return f"{{{self.key_prefix}channel:{zlib.crc32(channel_id.encode()) % CHANNEL_BUCKETS}}}:"

    def _journal_tags(self) -> list[str]:
        tags = [f"{{{self.key_prefix}channel:{bucket}}}" for bucket in range(CHANNEL_BUCKETS)]
        return [*super()._journal_tags(), *tags]

    def _channel_key(self, channel_id: str) -> str:
        return f"{self._bucket_prefix(channel_id)}{channel_id}"

    def _unclaimed_keys(self) -> list[str]:
        if not self.cluster:
            return [f"{self._channel_prefix}unclaimed"]
        tags = (f"{{{self.key_prefix}channel:{bucket}}}" for bucket in range(CHANNEL_BUCKETS))
        return [f"{tag}:unclaimed" for tag in tags]

    @property
    def _ids_key(self) -> str:
        return f"{self.key_prefix}channel:ids"

    def _channel(self, name: str, channel_id: str, now: float, *args: str) -> Any:
        keys = [self._channel_key(channel_id), f"{self._bucket_prefix(channel_id)}unclaimed"]
        args_ = [self._channel_prefix, repr(float(now)), 0, *args]
        script_ = getattr(self, f"_channel_{name}_script")
        return self._run(f"channel_{name}", script_, keys, args_, durable=True)

    def channel_sync(
        self,
        channel_id: str,
        config: str,
        *,
        balance: int,
        total_claimed: int,
        withdraw_requested_at: int,
        refund_nonce: int,
        now: float,
    ) -> ChannelState:
        channel_id = check_channel_sync(
            channel_id, config, balance, total_claimed, withdraw_requested_at, refund_nonce
        )
        status, fields = self._channel(
            "sync",
            channel_id,
            now,
            channel_id,
            config,
            str(balance),
            str(total_claimed),
            str(withdraw_requested_at),
            str(refund_nonce),
        )
        if text(status) == "config":
            raise ValueError(f"channel {channel_id} is known with another config")
        try:
            # Idempotent: a sync lost between the two commands adds it at the next one.
            self.client.zadd(self._ids_key, {channel_id: 0}, nx=True)
        except self._redis_errors as exc:
            self._fail("channel_sync", exc)
        state = _state(fields)
        assert state is not None
        return state

    def channel_get(self, channel_id: str) -> ChannelState | None:
        channel_id = check_channel_id(channel_id)
        try:
            raw = self.client.hgetall(self._channel_key(channel_id))
        except self._redis_errors as exc:
            self._fail("channel_get", exc)
        return _state([x for pair in raw.items() for x in pair])

    def channel_begin(
        self,
        channel_id: str,
        token: str,
        *,
        base: int,
        max_claimable: int,
        signature: str,
        expires_at: float,
        now: float,
    ) -> ChannelBegin:
        channel_id, signature = check_channel_begin(
            channel_id, token, base, max_claimable, signature, expires_at, now
        )
        outcome, fields = self._channel(
            "begin",
            channel_id,
            now,
            token,
            str(base),
            str(max_claimable),
            signature,
            repr(float(expires_at)),
        )
        return ChannelBegin(ChannelBeginOutcome(text(outcome)), _state(fields))

    def channel_commit(
        self,
        channel_id: str,
        token: str,
        charge: int,
        now: float,
        *,
        step: int | None = None,
        journal: JournalRow | None = None,
    ) -> ChannelState | None:
        channel_id = check_channel_commit(channel_id, charge, step)
        moved = charge if step is None else step
        _, fields = self._channel(
            "commit",
            channel_id,
            now,
            channel_id,
            token,
            str(charge),
            str(moved),
            *self._journal_args(journal, self._bucket_prefix(channel_id)[:-1]),
        )
        self._journal_after(journal)
        return _state(fields)

    def channel_extend(self, channel_id: str, token: str, expires_at: float) -> bool:
        channel_id = check_channel_id(channel_id)
        answer = self._channel("extend", channel_id, 0.0, token, repr(float(expires_at)))
        return int(answer) == 1

    def channel_release(self, channel_id: str, token: str) -> bool:
        channel_id = check_channel_id(channel_id)
        return int(self._channel("release", channel_id, 0.0, token)) == 1

    def channel_mark_claimed(
        self, channel_id: str, claimed: int, now: float, *, journal: JournalRow | None = None
    ) -> bool:
        channel_id = check_channel_id(channel_id)
        check_channel_amount(claimed, "claimed")
        answer = self._channel(
            "mark_claimed",
            channel_id,
            now,
            channel_id,
            str(claimed),
            *self._journal_args(journal, self._bucket_prefix(channel_id)[:-1]),
        )
        self._journal_after(journal)
        return int(answer) == 1

    def channel_claimable(self, limit: int = 100) -> list[ChannelState]:
        check_channel_limit(limit)
        try:
            keys = self._unclaimed_keys()
            if len(keys) == 1:
                ids = self.client.zrange(keys[0], 0, limit - 1)
            else:
                # One index per bucket of a cluster: the first ``limit`` of each, merged in the
                # order of one index (score, then member).
                pipe = self.client.pipeline(transaction=False)
                for key in keys:
                    pipe.zrange(key, 0, limit - 1, withscores=True)
                entries = [entry for found in pipe.execute() for entry in found]
                entries.sort(key=lambda entry: (entry[1], entry[0]))
                ids = [member for member, _ in entries[:limit]]
            pipe = self.client.pipeline(transaction=False)
            for channel_id in ids:
                pipe.hgetall(self._channel_key(text(channel_id)))
            hashes = pipe.execute()
        except self._redis_errors as exc:
            self._fail("channel_claimable", exc)
        states = [_state([x for pair in raw.items() for x in pair]) for raw in hashes]
        # A channel claimed between the two reads is left out rather than listed stale.
        return [s for s in states if s is not None and s.earned > s.total_claimed]

    def channel_list(self, limit: int = 100, after: str | None = None) -> list[ChannelState]:
        after = check_channel_page(limit, after)
        low = "-" if after is None else f"({after}"
        try:
            ids = self.client.zrangebylex(self._ids_key, low, "+", start=0, num=limit)
            pipe = self.client.pipeline(transaction=False)
            for channel_id in ids:
                pipe.hgetall(self._channel_key(text(channel_id)))
            hashes = pipe.execute()
        except self._redis_errors as exc:
            self._fail("channel_list", exc)
        states = [_state([x for pair in raw.items() for x in pair]) for raw in hashes]
        return [s for s in states if s is not None]
