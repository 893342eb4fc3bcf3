"""Idempotent retries in the PostgreSQL store: payment identifiers and their stored answers.

Table ``x402gate_idempotency``: one row per payment identifier, ``pending`` until its answer is
stored (``done``). Each operation takes the identifier's advisory lock first. The rules are
those of :class:`~x402gate.stores.base.Store`.
"""

from __future__ import annotations

from typing import Any

from ..checks import check_idempotency_args, check_idempotency_response, check_idempotency_ttl
from ..records import IdempotencyOutcome, IdempotencyResult
from .connection import PostgresConnection

__all__ = ["PostgresIdempotency"]


class PostgresIdempotency(PostgresConnection):
    """Reserving a payment identifier, storing its answer, replaying it."""

    def idempotency_begin(
        self, payment_id: str, fingerprint: str, ttl_seconds: int, now: float
    ) -> IdempotencyResult:
        check_idempotency_args(payment_id, fingerprint)
        check_idempotency_ttl(ttl_seconds)

        def run(conn: Any) -> IdempotencyResult:
            self._lock(conn, "idempotency", payment_id)
            self._purge_idem(conn, now)
            row = conn.execute(
                "SELECT fingerprint, state, response, expires_at FROM x402gate_idempotency"
                " WHERE id = %s",
                (payment_id,),
            ).fetchone()
            if row is not None and now < row[3]:
                if row[0] != fingerprint:
                    return IdempotencyResult(IdempotencyOutcome.CONFLICT)
                if row[1] == "done":
                    return IdempotencyResult(IdempotencyOutcome.REPLAY, bytes(row[2]))
                return IdempotencyResult(IdempotencyOutcome.IN_PROGRESS)
            conn.execute(
                "INSERT INTO x402gate_idempotency"
                " (id, fingerprint, state, response, ttl_seconds, expires_at)"
                " VALUES (%s, %s, 'pending', NULL, %s, %s) ON CONFLICT (id) DO UPDATE SET"
                " fingerprint = EXCLUDED.fingerprint, state = 'pending', response = NULL,"
                " ttl_seconds = EXCLUDED.ttl_seconds, expires_at = EXCLUDED.expires_at",
                (payment_id, fingerprint, ttl_seconds, float(now + ttl_seconds)),
            )
            return IdempotencyResult(IdempotencyOutcome.NEW)

        return self._write("idempotency_begin", run)

    def idempotency_complete(
        self, payment_id: str, fingerprint: str, response: bytes, now: float
    ) -> bool:
        check_idempotency_args(payment_id, fingerprint)
        data = check_idempotency_response(response)

        def run(conn: Any) -> bool:
            self._lock(conn, "idempotency", payment_id)
            row = conn.execute(
                "SELECT fingerprint, state, expires_at FROM x402gate_idempotency WHERE id = %s",
                (payment_id,),
            ).fetchone()
            if row is None or now >= row[2] or row[0] != fingerprint:
                return False
            if row[1] == "pending":
                conn.execute(
                    "UPDATE x402gate_idempotency SET state = 'done', response = %s,"
                    " expires_at = greatest(expires_at, %s + ttl_seconds) WHERE id = %s",
                    (data, float(now), payment_id),
                )
            return True

        return self._write("idempotency_complete", run)

    def idempotency_abandon(self, payment_id: str, fingerprint: str) -> bool:
        check_idempotency_args(payment_id, fingerprint)

        def run(conn: Any) -> bool:
            self._lock(conn, "idempotency", payment_id)
            cursor = conn.execute(
                "DELETE FROM x402gate_idempotency"
                " WHERE id = %s AND fingerprint = %s AND state = 'pending'",
                (payment_id, fingerprint),
            )
            return bool(cursor.rowcount == 1)

        return self._write("idempotency_abandon", run)

    def idempotency_state(self, payment_id: str, now: float) -> str | None:
        row = self._read(
            "idempotency_state",
            lambda conn: conn.execute(
                "SELECT state, expires_at FROM x402gate_idempotency WHERE id = %s",
                (payment_id,),
            ).fetchone(),
        )
        if row is None or now >= row[1]:
            return None
        state: str = row[0]
        return state

    def _purge_idem(self, conn: Any, now: float) -> None:
        if now < self._next_idem_purge:
            return
        deleted = conn.execute(
            "DELETE FROM x402gate_idempotency WHERE id IN (SELECT id FROM x402gate_idempotency"
            " WHERE expires_at <= %s LIMIT %s FOR UPDATE SKIP LOCKED)",
            (float(now), self._PURGE_LIMIT),
        ).rowcount
        self._next_idem_purge = self._purge_after(int(deleted), now)
