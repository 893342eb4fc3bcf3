"""Replay protection in the Redis store: claims on authorizations and their recovery.

One hash per claimed authorization, ``<prefix>replay:<key>`` (on a Redis Cluster
``{<prefix>replay:<n>}:<key>``, one of :data:`~.journal.REPLAY_BUCKETS` hash tags chosen by a
hash of the key, so that ``mark_used`` writes its journal row in the same slot); a claim whose
answer is on the way has the state ``sending`` and its last sign of life in ``alive_at``. The
rules are those of :class:`~x402gate.stores.base.Store`.
"""

from __future__ import annotations

from typing import Any

from ..journal import JournalRow
from ..records import ClaimResult
from .connection import EXPIRY_GRACE_SECONDS, text
from .journal import RedisJournal
from .scripts import JOURNAL, script

__all__ = ["RedisReplay"]

_CLAIM_RESULTS = {result.value: result for result in ClaimResult}


class RedisReplay(RedisJournal):
    """Claims, releases, recovery checks and take-overs of authorizations."""

    def _register_scripts(self, client: Any) -> None:
        super()._register_scripts(client)
        self._claim_script = client.register_script(script("claim"))
        self._finish_script = client.register_script(script("finish"))
        self._recovery_check_script = client.register_script(script("recovery_check"))
        self._mark_used_script = client.register_script(script("mark_used", JOURNAL))
        self._take_over_script = client.register_script(script("take_over"))

    def _key(self, key: str) -> str:
        if self.cluster:  # next to its journal shard: one of REPLAY_BUCKETS hash tags
            return f"{self._replay_tag(key)}:{key}"
        return f"{self.key_prefix}replay:{key}"

    def claim(
        self, key: str, resource: str, token: str, expires_at: int, now: float
    ) -> ClaimResult:
        try:
            answer = self._claim_script(
                keys=[self._key(key)],
                args=[resource, token, expires_at, repr(float(now)), EXPIRY_GRACE_SECONDS * 1000],
            )
        except self._redis_errors as exc:
            self._fail("claim", exc)
        return _CLAIM_RESULTS[text(answer)]

    def release(self, key: str, token: str) -> bool:
        return self._finish("release", key, token, "released")

    def mark_used(
        self, key: str, token: str, now: float | None = None, *, journal: JournalRow | None = None
    ) -> bool:
        extra = self._journal_args(journal, self._replay_tag(key) if self.cluster else "")
        if journal is not None:
            extra.append(str(journal.amount))
        try:
            done = self._mark_used_script(
                keys=[self._key(key)],
                args=[token, "" if now is None else repr(float(now)), *extra],
            )
        except self._redis_errors as exc:
            self._fail("mark_used", exc)
        self._journal_after(journal)
        return int(done) == 1

    def recovery_check(
        self,
        key: str,
        resource: str,
        now: float,
        min_interval: float,
        answer_grace: float | None = None,
    ) -> str | None:
        grace = "" if answer_grace is None else repr(float(answer_grace))
        try:
            answer = self._recovery_check_script(
                keys=[self._key(key)],
                args=[resource, repr(float(now)), repr(float(min_interval)), grace],
            )
        except self._redis_errors as exc:
            self._fail("recovery_check", exc)
        return None if answer is None else text(answer)

    def take_over(self, key: str, holder: str, token: str) -> bool:
        try:
            done = self._take_over_script(keys=[self._key(key)], args=[holder, token])
        except self._redis_errors as exc:
            self._fail("take_over", exc)
        return int(done) == 1

    def state(self, key: str, now: float) -> str | None:
        try:
            state, expires_at = self.client.hmget(self._key(key), ["state", "expires_at"])
        except self._redis_errors as exc:
            self._fail("state", exc)
        if state is None or expires_at is None or now >= float(expires_at):
            return None
        return text(state)

    def _finish(self, op: str, key: str, token: str, new_state: str) -> bool:
        try:
            done = self._finish_script(keys=[self._key(key)], args=[token, new_state])
        except self._redis_errors as exc:
            self._fail(op, exc)
        return int(done) == 1
