"""Idempotent retries in the Redis store: payment identifiers and their stored answers.

One hash per payment identifier, ``<prefix>idem:<id>``. Stored responses are base64 text, so
that a client built with ``decode_responses=True`` reads them back intact. The rules are those
of :class:`~x402gate.stores.base.Store`.
"""

from __future__ import annotations

import base64
from typing import Any

from ..checks import check_idempotency_args, check_idempotency_response, check_idempotency_ttl
from ..records import IdempotencyOutcome, IdempotencyResult
from .connection import EXPIRY_GRACE_SECONDS, RedisConnection, text
from .scripts import script

__all__ = ["RedisIdempotency"]

_IDEM_OUTCOMES = {outcome.value: outcome for outcome in IdempotencyOutcome}


class RedisIdempotency(RedisConnection):
    """Reserving a payment identifier, storing its answer, replaying it."""

    def _register_scripts(self, client: Any) -> None:
        super()._register_scripts(client)
        self._idem_begin_script = client.register_script(script("idempotency_begin"))
        self._idem_complete_script = client.register_script(script("idempotency_complete"))
        self._idem_abandon_script = client.register_script(script("idempotency_abandon"))

    def _idem_key(self, payment_id: str) -> str:
        return f"{self.key_prefix}idem:{payment_id}"

    def idempotency_begin(
        self, payment_id: str, fingerprint: str, ttl_seconds: int, now: float
    ) -> IdempotencyResult:
        check_idempotency_args(payment_id, fingerprint)
        check_idempotency_ttl(ttl_seconds)
        now = float(now)
        try:
            answer = self._idem_begin_script(
                keys=[self._idem_key(payment_id)],
                args=[
                    fingerprint,
                    ttl_seconds,
                    repr(now + ttl_seconds),
                    repr(now),
                    EXPIRY_GRACE_SECONDS * 1000,
                ],
            )
        except self._redis_errors as exc:
            self._fail("idempotency_begin", exc)
        outcome = _IDEM_OUTCOMES[text(answer[0])]
        if outcome is IdempotencyOutcome.REPLAY:
            return IdempotencyResult(outcome, base64.b64decode(answer[1]))
        return IdempotencyResult(outcome)

    def idempotency_complete(
        self, payment_id: str, fingerprint: str, response: bytes, now: float
    ) -> bool:
        check_idempotency_args(payment_id, fingerprint)
        encoded = base64.b64encode(check_idempotency_response(response))
        try:
            done = self._idem_complete_script(
                keys=[self._idem_key(payment_id)],
                args=[fingerprint, encoded, repr(float(now)), EXPIRY_GRACE_SECONDS * 1000],
            )
        except self._redis_errors as exc:
            self._fail("idempotency_complete", exc)
        return int(done) == 1

    def idempotency_abandon(self, payment_id: str, fingerprint: str) -> bool:
        check_idempotency_args(payment_id, fingerprint)
        try:
            done = self._idem_abandon_script(keys=[self._idem_key(payment_id)], args=[fingerprint])
        except self._redis_errors as exc:
            self._fail("idempotency_abandon", exc)
        return int(done) == 1

    def idempotency_state(self, payment_id: str, now: float) -> str | None:
        try:
            state, expires_at = self.client.hmget(
                self._idem_key(payment_id), ["state", "expires_at"]
            )
        except self._redis_errors as exc:
            self._fail("idempotency_state", exc)
        if state is None or expires_at is None or now >= float(expires_at):
            return None
        return text(state)
