"""Payment channels of the ``memory://`` store: one record per channel id, under the store's lock.

The rules of each step (who may take a channel, what a commit may charge) are the shared ones of
:mod:`x402gate.stores.channels`; this module only keeps the records.
"""

from __future__ import annotations

import threading

from ..channels import (
    ChannelBegin,
    ChannelState,
    check_channel_amount,
    check_channel_begin,
    check_channel_commit,
    check_channel_id,
    check_channel_limit,
    check_channel_page,
    check_channel_sync,
    mark_claimed,
    step_begin,
    step_commit,
    step_extend,
    step_release,
    sync_channel,
)
from ..journal import JournalRow, check_journal_row

__all__ = ["MemoryChannels"]


class MemoryChannels:
    """The channel operations of :class:`~x402gate.stores.memory.MemoryStore`."""

    _lock: threading.Lock
    _channels: dict[str, ChannelState]

    def _journal_add(self, row: JournalRow) -> bool:
        raise NotImplementedError  # the store's journal (MemoryJournal) provides it

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
        with self._lock:
            state = sync_channel(
                self._channels.get(channel_id),
                channel_id,
                config,
                balance,
                total_claimed,
                withdraw_requested_at,
                refund_nonce,
                now,
            )
            self._channels[channel_id] = state
            return state

    def channel_get(self, channel_id: str) -> ChannelState | None:
        channel_id = check_channel_id(channel_id)
        with self._lock:
            return self._channels.get(channel_id)

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
        with self._lock:
            answer = step_begin(
                self._channels.get(channel_id),
                token,
                base,
                max_claimable,
                signature,
                expires_at,
                now,
            )
            if answer.state is not None:
                self._channels[channel_id] = answer.state
            return answer

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
        if journal is not None:
            check_journal_row(journal)
        with self._lock:
            before = self._channels.get(channel_id)
            state = step_commit(before, token, charge, now, step)
            if state is not None:
                self._channels[channel_id] = state
                if journal is not None and before is not None:
                    self._journal_add(journal.with_amount(state.earned - before.earned))
            return state

    def channel_extend(self, channel_id: str, token: str, expires_at: float) -> bool:
        channel_id = check_channel_id(channel_id)
        with self._lock:
            state = step_extend(self._channels.get(channel_id), token, expires_at)
            if state is None:
                return False
            self._channels[channel_id] = state
            return True

    def channel_release(self, channel_id: str, token: str) -> bool:
        channel_id = check_channel_id(channel_id)
        with self._lock:
            state = step_release(self._channels.get(channel_id), token)
            if state is None:
                return False
            self._channels[channel_id] = state
            return True

    def channel_mark_claimed(
        self, channel_id: str, claimed: int, now: float, *, journal: JournalRow | None = None
    ) -> bool:
        channel_id = check_channel_id(channel_id)
        check_channel_amount(claimed, "claimed")
        if journal is not None:
            check_journal_row(journal)
        with self._lock:
            before = self._channels.get(channel_id)
            state = mark_claimed(before, claimed)
            if state is None or before is None:
                return False
            self._channels[channel_id] = state
            added = state.total_claimed - before.total_claimed
            if journal is not None and added > 0:
                self._journal_add(journal.with_amount(added))
            return True

    def channel_claimable(self, limit: int = 100) -> list[ChannelState]:
        check_channel_limit(limit)
        with self._lock:
            due = [c for c in self._channels.values() if c.earned > c.total_claimed]
        due.sort(key=lambda c: (c.last_request_at, c.channel_id))
        return due[:limit]

    def channel_list(self, limit: int = 100, after: str | None = None) -> list[ChannelState]:
        after = check_channel_page(limit, after)
        with self._lock:
            page = [c for c in self._channels.values() if after is None or c.channel_id > after]
        page.sort(key=lambda c: c.channel_id)
        return page[:limit]
