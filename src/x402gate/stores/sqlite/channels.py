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

The two steps of every paid request take the fewest statements: a begin on an idle (or
expired) channel whose voucher is its next step is one ``UPDATE ... RETURNING`` in a transaction
of its own (its ``WHERE`` is :func:`~x402gate.stores.channels.step_begin`'s rule for that case;
any other case runs the rule on the row read in a transaction); a commit updates the changed
columns guarded by what the begin answered (the step's token, ``earned``, ``total_claimed``),
and reads the row and runs the rule only when something else moved the channel meanwhile.

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


_REPLACE = (
    f"INSERT OR REPLACE INTO x402gate_channel ({_COLUMNS}, unclaimed)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# A begin on an idle channel, or one whose step expired (forfeited), when the voucher is the
# next step and within the balance: step_begin's STARTED case. Amounts are decimal text without
# leading zeros, so of two, the longer is the larger and equal lengths compare as text.
_BEGIN_STEP = (
    "UPDATE x402gate_channel SET step_token = ?, step_base = ?, step_max_claimable = ?,"
    " step_signature = ?, step_expires_at = ?"
    " WHERE id = ? AND charged = ?"
    " AND (step_token IS NULL OR (step_token != ? AND step_expires_at <= ?))"
    " AND substr(balance, 1, 1) != '0'"
    " AND (length(balance) > ? OR (length(balance) = ? AND balance >= ?))"
    f" RETURNING {_COLUMNS}"
)
# The commit of a step whose channel nothing else moved since its begin: step_commit's answer
# depends on the row only through the step (its token) and ``earned``; ``unclaimed`` on
# ``total_claimed`` too. A NULL ``earned`` (a row of an older x402gate) never matches.
_COMMIT_STEP = (
    "UPDATE x402gate_channel SET charged = ?, earned = ?, max_claimable = ?, signature = ?,"
    " last_request_at = ?, unclaimed = ?, step_token = NULL, step_base = NULL,"
    " step_max_claimable = NULL, step_signature = NULL, step_expires_at = NULL"
    " WHERE id = ? AND step_token = ? AND earned = ? AND total_claimed = ?"
    f" RETURNING {_COLUMNS}"
)
# UPDATE ... RETURNING came with SQLite 3.35; an older library takes the rule's path always.
_RETURNING = sqlite3.sqlite_version_info >= (3, 35, 0)


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

    _STEPS_KEPT: ClassVar[int] = 4096
    """Steps begun here whose state is remembered until their commit (a guess the commit's
    guarded update checks: a step forgotten or moved meanwhile takes the rule's path)."""

    _steps: dict[tuple[str, str], ChannelState] | None = None

    def _remember_step(self, state: ChannelState) -> None:
        steps = self._steps
        if steps is None:
            steps = self._steps = {}
        elif len(steps) >= self._STEPS_KEPT:
            steps.clear()  # steps never committed nor released (their requests died)
        assert state.step is not None
        steps[(state.channel_id, state.step.token)] = state

    def _begun(self, channel_id: str, token: str) -> ChannelState | None:
        steps = self._steps
        return None if steps is None else steps.pop((channel_id, token), None)

    def _channel_update(
        self,
        op: str,
        channel_id: str,
        rule: Callable[[ChannelState | None], ChannelState | None],
        synchronous: str | None = None,
        journal: JournalRow | None = None,
        claims: bool = False,
    ) -> ChannelState | None:
        """Read the row, apply ``rule``, write back what it answers (if anything changed);
        with ``journal``, record the seller's earnings of this change (with ``claims``, what it
        adds to the claimed total) in the same transaction."""

        def run(conn: sqlite3.Connection) -> ChannelState | None:
            current = self._channel_row(conn, channel_id)
            new = rule(current)
            if new is not None and new != current:
                conn.execute(_REPLACE, _reorder(_to_row(new)))
            if journal is not None and new is not None and current is not None:
                if claims:
                    added = new.total_claimed - current.total_claimed
                    if added > 0:
                        self._journal_insert(conn, journal.with_amount(added))
                else:
                    self._journal_insert(conn, journal.with_amount(new.earned - current.earned))
            return new

        return self._write(op, run, synchronous)

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
        if _RETURNING:
            amount = str(max_claimable)
            rows = self._write_one(
                "channel_begin",
                _BEGIN_STEP,
                (
                    token,
                    str(base),
                    amount,
                    signature,
                    float(expires_at),
                    channel_id,
                    str(base),
                    token,
                    now,
                    len(amount),
                    len(amount),
                    amount,
                ),
                self.ledger_synchronous,
            )
            if rows:
                state = _from_row(rows[0])
                self._remember_step(state)
                return ChannelBegin(ChannelBeginOutcome.STARTED, state)
        answers: list[ChannelBegin] = []

        def rule(current: ChannelState | None) -> ChannelState | None:
            answer = step_begin(current, token, base, max_claimable, signature, expires_at, now)
            answers.append(answer)
            return answer.state

        self._channel_update("channel_begin", channel_id, rule, self.ledger_synchronous)
        answer = answers[-1]
        if answer.outcome is ChannelBeginOutcome.STARTED and answer.state is not None:
            self._remember_step(answer.state)
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
        begun = self._begun(channel_id, token)
        guess = None if begun is None else step_commit(begun, token, charge, now, step)
        if guess is None or begun is None or not _RETURNING:
            return self._channel_update(
                "channel_commit",
                channel_id,
                lambda current: step_commit(current, token, charge, now, step),
                self.ledger_synchronous,
                journal,
            )
        values = (
            str(guess.charged),
            str(guess.earned),
            str(guess.max_claimable),
            guess.signature,
            float(guess.last_request_at),
            int(guess.earned > guess.total_claimed),
            channel_id,
            token,
            str(begun.earned),
            str(begun.total_claimed),
        )

        def run(conn: sqlite3.Connection) -> ChannelState | None:
            row = conn.execute(_COMMIT_STEP, values).fetchone()
            if row is None:  # moved since the begin (a sync, a claim, taken over): the rule
                current = self._channel_row(conn, channel_id)
                new = step_commit(current, token, charge, now, step)
                if new is not None:
                    conn.execute(_REPLACE, _reorder(_to_row(new)))
                    if journal is not None and current is not None:
                        self._journal_insert(conn, journal.with_amount(new.earned - current.earned))
                return new
            new = _from_row(tuple(row))
            if journal is not None:
                self._journal_insert(conn, journal.with_amount(new.earned - begun.earned))
            return new

        return self._write("channel_commit", run, self.ledger_synchronous)

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
        self._begun(channel_id, token)
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


def _reorder(row: tuple[object, ...]) -> tuple[object, ...]:
    """``_to_row`` puts ``unclaimed`` after ``last_request_at``; the INSERT wants it last."""
    return (*row[:11], *row[12:], row[11])
