"""Payment-channel state in the SQLite store: one row per channel, one transaction per step.

Table ``x402gate_channel``: the channel's fields, amounts as decimal text (any ``uint256``; SQLite's
INTEGER stops at 2**63), and the step in progress in the ``step_*`` columns (NULL when idle).
Every operation reads the row, applies the rule of :mod:`x402gate.stores.channels` and writes it
back in one ``BEGIN IMMEDIATE`` transaction, so the steps of one channel are serialised across
every thread and process on the file. ``unclaimed`` (``earned > total_claimed``) is kept in the
row so that listing the channels to claim reads an index, not the whole table.

``earned`` came after the table's first version: :mod:`~x402gate.stores.sqlite.schema` adds the
column to an older file (its rows earned what they charged). The column may hold NULL, read as
``charged``: an older x402gate sharing the file during an upgrade writes rows without it, and it
knows no other rule (every step it serves earns what it charges).

Each store remembers the row as it last read or wrote it, per channel (bounded). An operation
applies its rule to that row and writes the change with an ``UPDATE`` of the changed columns
guarded by every column of the remembered row: one statement, no read, for the steps of a
channel that only this store moves (a begin is then a transaction of one statement). When the
guard finds the row changed (another process, a forgotten channel), nothing is written and the
operation reads the row and applies its rule to it, as every operation does without a
remembered row; the answer is the rule's on the stored row either way.

Durability: begin, commit and release are committed with ``ledger_synchronous`` like the credit
ledger's spending writes. A commit lost to a power cut is a charge forfeited (the client's next
voucher then gets the corrective 402 and is signed again on the older amount), which is what the
scheme prescribes for a server that lost its state; never a charge taken twice. Syncs and claim
records keep the store's ``synchronous``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import ClassVar

from ..channels import (
    ChannelBegin,
    ChannelState,
    ChannelStep,
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
from .journal import SQLiteJournal

__all__ = ["SQLiteChannels"]

_COLUMNS = (
    "id, config, balance, total_claimed, charged, max_claimable, signature,"
    " withdraw_requested_at, refund_nonce, synced_at, last_request_at,"
    " step_token, step_base, step_max_claimable, step_signature, step_expires_at, earned"
)


# The columns in the order of _to_row: a row as stored (what a guarded update compares).
_ROW = (
    "id",
    "config",
    "balance",
    "total_claimed",
    "charged",
    "max_claimable",
    "signature",
    "withdraw_requested_at",
    "refund_nonce",
    "synced_at",
    "last_request_at",
    "unclaimed",
    "step_token",
    "step_base",
    "step_max_claimable",
    "step_signature",
    "step_expires_at",
    "earned",
)
_SELECT_ROW = f"SELECT {', '.join(_ROW)} FROM x402gate_channel WHERE id = ?"
_REPLACE = (
    f"INSERT OR REPLACE INTO x402gate_channel ({', '.join(_ROW)})"
    f" VALUES ({', '.join('?' * len(_ROW))})"
)
_GUARD = " AND ".join(f"{column} IS ?" for column in _ROW[1:])
_UPDATES: dict[tuple[int, ...], str] = {}


def _update_sql(changed: tuple[int, ...]) -> str:
    """``UPDATE`` of the columns at ``changed`` (positions in :data:`_ROW`) of the row whose
    every column is as given after them."""
    sql = _UPDATES.get(changed)
    if sql is None:
        assignments = ", ".join(f"{_ROW[i]} = ?" for i in changed)
        sql = f"UPDATE x402gate_channel SET {assignments} WHERE id = ? AND {_GUARD}"
        if len(_UPDATES) < 256:  # a handful of column sets in practice
            _UPDATES[changed] = sql
    return sql


def _from_stored(row: tuple[object, ...]) -> ChannelState:
    """The state of a row read in :data:`_ROW` order."""
    return _from_row((*row[:11], *row[12:]))


def _from_row(row: tuple[object, ...]) -> ChannelState:
    (cid, config, balance, claimed, charged, ceiling, signature, withdraw, nonce, synced, last,
     token, base, step_max, step_sig, step_exp, earned) = row  # fmt: skip
    step = None
    if token is not None:
        step = ChannelStep(
            str(token), int(str(base)), int(str(step_max)), str(step_sig), float(str(step_exp))
        )
    return ChannelState(
        channel_id=str(cid),
        config=str(config),
        balance=int(str(balance)),
        total_claimed=int(str(claimed)),
        charged=int(str(charged)),
        earned=int(str(charged if earned is None else earned)),
        max_claimable=int(str(ceiling)),
        signature=str(signature),
        withdraw_requested_at=int(str(withdraw)),
        refund_nonce=int(str(nonce)),
        synced_at=float(str(synced)),
        last_request_at=float(str(last)),
        step=step,
    )


def _to_row(state: ChannelState) -> tuple[object, ...]:
    step = state.step
    return (
        state.channel_id,
        state.config,
        str(state.balance),
        str(state.total_claimed),
        str(state.charged),
        str(state.max_claimable),
        state.signature,
        str(state.withdraw_requested_at),
        str(state.refund_nonce),
        float(state.synced_at),
        float(state.last_request_at),
        int(state.earned > state.total_claimed),
        None if step is None else step.token,
        None if step is None else str(step.base),
        None if step is None else str(step.max_claimable),
        None if step is None else step.signature,
        None if step is None else float(step.expires_at),
        str(state.earned),
    )


class SQLiteChannels(SQLiteJournal):
    """Payment-channel state: syncs, steps (begin, commit, release) and claims."""

    _ROWS_KEPT: ClassVar[int] = 1024
    """Channels whose row this store remembers at most (see the module)."""

    _rows: dict[str, tuple[ChannelState, tuple[object, ...]]] | None = None

    def _remember(self, state: ChannelState, row: tuple[object, ...]) -> None:
        rows = self._rows
        if rows is None:
            rows = self._rows = {}
        elif len(rows) >= self._ROWS_KEPT and state.channel_id not in rows:
            rows.clear()
        rows[state.channel_id] = (state, row)

    def _channel_update(
        self,
        op: str,
        channel_id: str,
        rule: Callable[[ChannelState | None], ChannelState | None],
        synchronous: str | None = None,
        journal: JournalRow | None = None,
        claims: bool = False,
    ) -> ChannelState | None:
        """Apply ``rule`` to the row and write back what it answers (if anything changed); with
        ``journal``, record the seller's earnings of this change (with ``claims``, what it adds
        to the claimed total) in the same transaction. The remembered row first (see the
        module): a change written from it is one guarded ``UPDATE``."""
        known = None if self._rows is None else self._rows.get(channel_id)
        guess: ChannelState | None = None
        plan: tuple[tuple[object, ...], str, tuple[object, ...]] | None = None
        if known is not None:
            guess = rule(known[0])
            # Nothing to write: the answer needs the stored row, read below.
            if guess is not None and guess != known[0]:
                plan = self._guarded(known[1], _to_row(guess))
        if plan is not None and journal is None:
            # One statement, committed on its own.
            assert guess is not None
            if self._write_changes(op, plan[1], plan[2], synchronous):
                self._remember(guess, plan[0])
                return guess
            plan = None

        def run(conn: sqlite3.Connection) -> ChannelState | None:
            if plan is not None:
                assert guess is not None and known is not None and journal is not None
                if conn.execute(plan[1], plan[2]).rowcount == 1:
                    self._journal(conn, journal, known[0], guess, claims)
                    self._remember(guess, plan[0])
                    return guess
            stored = conn.execute(_SELECT_ROW, (channel_id,)).fetchone()
            current = None if stored is None else _from_stored(tuple(stored))
            new = rule(current)
            if new is not None and new != current:
                row = _to_row(new)
                conn.execute(_REPLACE, row)
                self._remember(new, row)
            elif current is not None:
                assert stored is not None
                self._remember(current, tuple(stored))
            if journal is not None and new is not None and current is not None:
                self._journal(conn, journal, current, new, claims)
            return new

        return self._write(op, run, synchronous)

    @staticmethod
    def _guarded(
        old: tuple[object, ...], new: tuple[object, ...]
    ) -> tuple[tuple[object, ...], str, tuple[object, ...]] | None:
        """``new`` and the guarded ``UPDATE`` from the stored row ``old`` to it (both in
        :data:`_ROW` order); None when no column differs."""
        changed = tuple(i for i in range(1, len(_ROW)) if new[i] != old[i])
        if not changed or new[0] != old[0]:
            return None
        return new, _update_sql(changed), (*(new[i] for i in changed), *old)

    def _journal(
        self,
        conn: sqlite3.Connection,
        journal: JournalRow,
        current: ChannelState,
        new: ChannelState,
        claims: bool,
    ) -> None:
        if claims:
            added = new.total_claimed - current.total_claimed
            if added > 0:
                self._journal_insert(conn, journal.with_amount(added))
        else:
            self._journal_insert(conn, journal.with_amount(new.earned - current.earned))

    @staticmethod
    def _channel_row(conn: sqlite3.Connection, channel_id: str) -> ChannelState | None:
        row = conn.execute(
            f"SELECT {_COLUMNS} FROM x402gate_channel WHERE id = ?", (channel_id,)
        ).fetchone()
        return None if row is None else _from_row(tuple(row))

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

        def rule(current: ChannelState | None) -> ChannelState:
            return sync_channel(
                current,
                channel_id,
                config,
                balance,
                total_claimed,
                withdraw_requested_at,
                refund_nonce,
                now,
            )

        state = self._channel_update("channel_sync", channel_id, rule)
        assert state is not None
        return state

    def channel_get(self, channel_id: str) -> ChannelState | None:
        channel_id = check_channel_id(channel_id)
        return self._read("channel_get", lambda conn: self._channel_row(conn, channel_id))

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
        answers: list[ChannelBegin] = []

        def rule(current: ChannelState | None) -> ChannelState | None:
            answer = step_begin(current, token, base, max_claimable, signature, expires_at, now)
            answers.append(answer)
            return answer.state

        self._channel_update("channel_begin", channel_id, rule, self.ledger_synchronous)
        return answers[-1]

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
        return self._channel_update(
            "channel_commit",
            channel_id,
            lambda current: step_commit(current, token, charge, now, step),
            self.ledger_synchronous,
            journal,
        )

    def channel_extend(self, channel_id: str, token: str, expires_at: float) -> bool:
        channel_id = check_channel_id(channel_id)
        state = self._channel_update(
            "channel_extend",
            channel_id,
            lambda current: step_extend(current, token, expires_at),
            self.ledger_synchronous,
        )
        return state is not None

    def channel_release(self, channel_id: str, token: str) -> bool:
        channel_id = check_channel_id(channel_id)
        state = self._channel_update(
            "channel_release",
            channel_id,
            lambda current: step_release(current, token),
            self.ledger_synchronous,
        )
        return state is not None

    def channel_mark_claimed(
        self, channel_id: str, claimed: int, now: float, *, journal: JournalRow | None = None
    ) -> bool:
        channel_id = check_channel_id(channel_id)
        check_channel_amount(claimed, "claimed")
        if journal is not None:
            check_journal_row(journal)
        state = self._channel_update(
            "channel_mark_claimed",
            channel_id,
            lambda current: mark_claimed(current, claimed),
            None,
            journal,
            claims=True,
        )
        return state is not None

    def channel_claimable(self, limit: int = 100) -> list[ChannelState]:
        check_channel_limit(limit)
        rows = self._read(
            "channel_claimable",
            lambda conn: conn.execute(
                f"SELECT {_COLUMNS} FROM x402gate_channel WHERE unclaimed = 1"
                " ORDER BY last_request_at, id LIMIT ?",
                (limit,),
            ).fetchall(),
        )
        return [_from_row(tuple(row)) for row in rows]

    def channel_list(self, limit: int = 100, after: str | None = None) -> list[ChannelState]:
        after = check_channel_page(limit, after)
        rows = self._read(
            "channel_list",
            lambda conn: conn.execute(
                f"SELECT {_COLUMNS} FROM x402gate_channel WHERE id > ? ORDER BY id LIMIT ?",
                (after or "", limit),
            ).fetchall(),
        )
        return [_from_row(tuple(row)) for row in rows]
