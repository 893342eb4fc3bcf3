"""Payments in flight in the Redis store: the bound on handler runs per payer.

One hash per payer account, ``<prefix>credit:inflight:<account>``, a field per payment
(``amount|until_block|expires_at``), checked and added by one script with the ledger's exact
decimal arithmetic, so admissions of one payer from every host are serialized. The hash's Redis
TTL follows its longest-lived entry (plus the grace). The rules are those of
:class:`~x402gate.stores.base.Store`.
"""

from __future__ import annotations

from typing import Any

from ..checks import check_block, check_in_flight_admit
from ..records import IN_FLIGHT_UNSETTLED
from .connection import EXPIRY_GRACE_SECONDS, RedisConnection, text
from .scripts import IN_FLIGHT, script

__all__ = ["RedisInFlight"]


class RedisInFlight(RedisConnection):
    """Admitting, settling and releasing payments in flight, and their total per reading."""

    def _register_scripts(self, client: Any) -> None:
        super()._register_scripts(client)
        admit, settle = script("in_flight_admit", IN_FLIGHT), script("in_flight_settle", IN_FLIGHT)
        self._in_flight_admit_script = client.register_script(admit)
        self._in_flight_settle_script = client.register_script(settle)

    def _in_flight_key(self, account: str) -> str:
        # One key per payer; on a cluster its own hash tag spreads payers over the shards.
        if self.cluster:
            return f"{{{self.key_prefix}credit:inflight:{account}}}"
        return self._credit_key("inflight", account)

    def in_flight_admit(
        self,
        account: str,
        entry_id: str,
        amount: int,
        balance: int,
        block: int,
        expires_at: float,
        now: float,
    ) -> bool:
        check_in_flight_admit(account, entry_id, amount, balance, block, expires_at)
        if "|" in entry_id:
            raise ValueError("in-flight entry id must not contain '|'")
        answer = self._credit(
            "in_flight_admit",
            self._in_flight_admit_script,
            [self._in_flight_key(account)],
            now,
            entry_id,
            str(amount),
            str(balance),
            str(block),
            repr(float(expires_at)),
            str(IN_FLIGHT_UNSETTLED),
            EXPIRY_GRACE_SECONDS * 1000,
        )
        return int(answer) == 1

    def in_flight_settle(
        self, account: str, entry_id: str, block: int, expires_at: float, now: float
    ) -> bool:
        check_block(block)
        answer = self._credit(
            "in_flight_settle",
            self._in_flight_settle_script,
            [self._in_flight_key(account)],
            now,
            entry_id,
            str(block),
            repr(float(expires_at)),
            EXPIRY_GRACE_SECONDS * 1000,
        )
        return int(answer) == 1

    def in_flight_release(self, account: str, entry_id: str) -> bool:
        try:
            return int(self.client.hdel(self._in_flight_key(account), entry_id)) == 1
        except self._redis_errors as exc:
            self._fail("in_flight_release", exc)

    def in_flight_total(self, account: str, block: int, now: float) -> int:
        try:
            entries = self.client.hgetall(self._in_flight_key(account))
        except self._redis_errors as exc:
            self._fail("in_flight_total", exc)
        total = 0
        for value in entries.values():
            amount, until, expires_at = text(value).split("|")
            if int(until) > block and float(expires_at) > now:
                total += int(amount)
        return total
