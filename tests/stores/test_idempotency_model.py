"""Random idempotency operation sequences on every backend must match a dict model of base.py.

The same approach as test_model.py for claims: hypothesis drives begin / complete / abandon /
state into a real store and into :class:`Model`; small id, fingerprint and response alphabets make
conflicts, replays and re-reservations common, and the clock lands exactly on expiry boundaries.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, rule, run_state_machine_as_test

from x402gate.stores import IdempotencyOutcome, IdempotencyResult, Store

IDS = st.sampled_from(["id_aaaaaaaaaaaa", "id_bbbbbbbbbbbb", "id_cccccccccccc"])
FINGERPRINTS = st.sampled_from(["fp1", "fp2"])
RESPONSES = st.sampled_from([b"", b"ok", b"\x00\xff binary"])
START = 1_700_000_000.0


@dataclass
class Entry:
    fingerprint: str
    ttl: int
    expires_at: float
    response: bytes | None = None


class Model:
    """The idempotency rules of stores/base.py, as directly as they can be written."""

    def __init__(self) -> None:
        self.entries: dict[str, Entry] = {}

    def live(self, payment_id: str, now: float) -> Entry | None:
        entry = self.entries.get(payment_id)
        return entry if entry is not None and now < entry.expires_at else None

    def begin(self, payment_id: str, fingerprint: str, ttl: int, now: float) -> IdempotencyResult:
        entry = self.live(payment_id, now)
        if entry is None:
            self.entries[payment_id] = Entry(fingerprint, ttl, now + ttl)
            return IdempotencyResult(IdempotencyOutcome.NEW)
        if entry.fingerprint != fingerprint:
            return IdempotencyResult(IdempotencyOutcome.CONFLICT)
        if entry.response is not None:
            return IdempotencyResult(IdempotencyOutcome.REPLAY, entry.response)
        return IdempotencyResult(IdempotencyOutcome.IN_PROGRESS)

    def complete(self, payment_id: str, fingerprint: str, response: bytes, now: float) -> bool:
        entry = self.live(payment_id, now)
        if entry is None or entry.fingerprint != fingerprint:
            return False
        if entry.response is None:
            entry.response = response
            entry.expires_at = max(entry.expires_at, now + entry.ttl)
        return True

    def abandon_answers(self, payment_id: str, fingerprint: str, now: float) -> set[bool]:
        """Abandon takes no clock: once the entry has expired it may be purged already."""
        entry = self.entries.get(payment_id)
        if entry is None or entry.fingerprint != fingerprint or entry.response is not None:
            return {False}
        return {True} if now < entry.expires_at else {True, False}

    def state(self, payment_id: str, now: float) -> str | None:
        entry = self.live(payment_id, now)
        if entry is None:
            return None
        return "pending" if entry.response is None else "done"


class IdempotencyMachine(RuleBasedStateMachine):
    store: Store
    runs: Iterator[int]

    def __init__(self) -> None:
        super().__init__()
        # One store for every example; an id namespace per example starts it empty.
        self.namespace = f"run{next(self.runs)}_"
        self.model = Model()
        self.now = START

    @initialize(offset=st.sampled_from([0.0, 0.25, 0.5]))
    def start_clock(self, offset: float) -> None:
        self.now = START + offset

    @rule(payment_id=IDS, fingerprint=FINGERPRINTS, ttl=st.integers(min_value=1, max_value=6))
    def begin(self, payment_id: str, fingerprint: str, ttl: int) -> None:
        expected = self.model.begin(payment_id, fingerprint, ttl, self.now)
        got = self.store.idempotency_begin(self.namespace + payment_id, fingerprint, ttl, self.now)
        assert got == expected

    @rule(payment_id=IDS, fingerprint=FINGERPRINTS, response=RESPONSES)
    def complete(self, payment_id: str, fingerprint: str, response: bytes) -> None:
        expected = self.model.complete(payment_id, fingerprint, response, self.now)
        got = self.store.idempotency_complete(
            self.namespace + payment_id, fingerprint, response, self.now
        )
        assert got is expected

    @rule(payment_id=IDS, fingerprint=FINGERPRINTS)
    def abandon(self, payment_id: str, fingerprint: str) -> None:
        allowed = self.model.abandon_answers(payment_id, fingerprint, self.now)
        done = self.store.idempotency_abandon(self.namespace + payment_id, fingerprint)
        assert done in allowed
        if done:
            del self.model.entries[payment_id]

    @rule(payment_id=IDS)
    def state(self, payment_id: str) -> None:
        got = self.store.idempotency_state(self.namespace + payment_id, self.now)
        assert got == self.model.state(payment_id, self.now)

    @rule(step=st.sampled_from([0.25, 0.5, 1.0, 3.0]))
    def tick(self, step: float) -> None:
        self.now += step


def test_every_backend_matches_the_idempotency_model(store: Store) -> None:
    machine = type("Machine", (IdempotencyMachine,), {"store": store, "runs": itertools.count()})
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=200,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
