"""Payment-channel state in the PostgreSQL store: one row per channel, one transaction per step.

Table ``x402gate_channel``: the channel's fields, amounts as ``NUMERIC(78, 0)``, and the step in
progress in the ``step_*`` columns (NULL when idle). Every write takes the channel's advisory
lock (the row may not exist yet: a first sync creates it), reads the row, applies the rule of
:mod:`x402gate.stores.channels` and writes it back in one transaction, so the steps of one
channel are serialised across every connection. ``unclaimed`` (``earned > total_claimed``) is
kept in the row so that listing the channels to claim reads a partial index.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

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
from .journal import PostgresJournal

__all__ = ["PostgresChannels"]

_FIELDS = (
    "id", "config", "balance", "total_claimed", "charged", "earned", "max_claimable",
    "signature", "withdraw_requested_at", "refund_nonce", "synced_at", "last_request_at",
    "unclaimed", "step_token", "step_base", "step_max_claimable", "step_signature",
    "step_expires_at",
)  # fmt: skip
_COLUMNS = ", ".join(_FIELDS)
_UPSERT = (
    f"INSERT INTO x402gate_channel ({_COLUMNS}) VALUES ({', '.join(['%s'] * len(_FIELDS))})"
    " ON CONFLICT (id) DO UPDATE SET "
    + ", ".join(f"{name} = EXCLUDED.{name}" for name in _FIELDS[1:])
)


def _from_row(row: tuple[Any, ...]) -> ChannelState:
    (cid, config, balance, claimed, charged, earned, ceiling, signature, withdraw, nonce, synced,
     last, _unclaimed, token, base, step_max, step_sig, step_exp) = row  # fmt: skip
    step = None
    if token is not None:
        step = ChannelStep(str(token), int(base), int(step_max), str(step_sig), float(step_exp))
    return ChannelState(
        channel_id=str(cid),
        config=str(config),
        balance=int(balance),
        total_claimed=int(claimed),
        charged=int(charged),
        earned=int(earned),
        max_claimable=int(ceiling),
        signature=str(signature),
        withdraw_requested_at=int(withdraw),
        refund_nonce=int(nonce),
        synced_at=float(synced),
        last_request_at=float(last),
        step=step,
    )


def _to_row(state: ChannelState) -> tuple[object, ...]:
    step = state.step
    return (
        state.channel_id,
        state.config,
        state.balance,
        state.total_claimed,
        state.charged,
        state.earned,
        state.max_claimable,
        state.signature,
        state.withdraw_requested_at,
        state.refund_nonce,
        float(state.synced_at),
        float(state.last_request_at),
        state.earned > state.total_claimed,
        None if step is None else step.token,
        None if step is None else step.base,
        None if step is None else step.max_claimable,
        None if step is None else step.signature,
        None if step is None else float(step.expires_at),
    )


class PostgresChannels(PostgresJournal):
    """Payment-channel state: syncs, steps (begin, commit, release) and claims."""

    def _channel_update(
        self,
        op: str,
        channel_id: str,
        rule: Callable[[ChannelState | None], ChannelState | None],
        journal: JournalRow | None = None,
        claims: bool = False,
    ) -> ChannelState | None:
        """Lock the channel, read its row, apply ``rule``, write back what it answers; with
        ``journal``, record the seller's earnings of this change in the same transaction."""

        def run(conn: Any) -> ChannelState | None:
            self._lock(conn, "channel", channel_id)
            current = self._channel_row(conn, channel_id)
            new = rule(current)
            if new is not None and new != current:
                conn.execute(_UPSERT, _to_row(new))
            if journal is not None and new is not None and current is not None:
                if claims:
                    added = new.total_claimed - current.total_claimed
                    if added > 0:
                        self._journal_insert(conn, journal.with_amount(added))
                else:
                    self._journal_insert(conn, journal.with_amount(new.earned - current.earned))
            return new

        return self._write(op, run)

    @staticmethod
    def _channel_row(conn: Any, channel_id: str) -> ChannelState | None:
        row = conn.execute(
            f"SELECT {_COLUMNS} FROM x402gate_channel WHERE id = %s", (channel_id,)
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

        self._channel_update("channel_begin", channel_id, rule)
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
            journal,
        )

    def channel_extend(self, channel_id: str, token: str, expires_at: float) -> bool:
        channel_id = check_channel_id(channel_id)
        state = self._channel_update(
            "channel_extend", channel_id, lambda current: step_extend(current, token, expires_at)
        )
        return state is not None

    def channel_release(self, channel_id: str, token: str) -> bool:
        channel_id = check_channel_id(channel_id)
        state = self._channel_update(
            "channel_release", channel_id, lambda current: step_release(current, token)
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
            journal,
            claims=True,
        )
        return state is not None

    def channel_claimable(self, limit: int = 100) -> list[ChannelState]:
        check_channel_limit(limit)
        rows = self._read(
            "channel_claimable",
            lambda conn: conn.execute(
                f"SELECT {_COLUMNS} FROM x402gate_channel WHERE unclaimed"
                " ORDER BY last_request_at, id LIMIT %s",
                (limit,),
            ).fetchall(),
        )
        return [_from_row(tuple(row)) for row in rows]

    def channel_list(self, limit: int = 100, after: str | None = None) -> list[ChannelState]:
        after = check_channel_page(limit, after)
        rows = self._read(
            "channel_list",
            lambda conn: conn.execute(
                f"SELECT {_COLUMNS} FROM x402gate_channel WHERE id > %s ORDER BY id LIMIT %s",
                (after or "", limit),
            ).fetchall(),
        )
        return [_from_row(tuple(row)) for row in rows]
