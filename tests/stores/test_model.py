"""Random operation sequences on every backend must match a plain dict model of base.py's rules.

In the manner of fakeredis-py's hypothesis tests: hypothesis drives the same operations into a
real store (a real SQLite file, a real redis-server) and into :class:`Model`, and every answer
must agree. Small key, resource and token alphabets make collisions, stale tokens and re-claims
common; the clock moves forward in steps that land exactly on expiry boundaries.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, rule, run_state_machine_as_test

from x402gate.stores import ClaimResult, Store

KEYS = st.sampled_from(["k1", "k2", "k3"])
RESOURCES = st.sampled_from(["GET /a", "POST /b"])
TOKENS = st.sampled_from(["t1", "t2", "t3"])
START = 1_700_000_000.0


@dataclass
class Entry:
    state: str
    resource: str
    token: str
    expires_at: float
    checked_at: float | None = None
    alive_at: float = 0.0


class Model:
    """The rules of stores/base.py, as directly as they can be written."""

    def __init__(self) -> None:
        self.entries: dict[str, Entry] = {}

    def live(self, key: str, now: float) -> Entry | None:
        entry = self.entries.get(key)
        return entry if entry is not None and now < entry.expires_at else None

    def claim(
        self, key: str, resource: str, token: str, expires_at: int, now: float
    ) -> ClaimResult:
        entry = self.live(key, now)
        if entry is None:
            self.entries[key] = Entry("held", resource, token, expires_at)
            return ClaimResult.CLAIMED
        if entry.state in ("used", "sending"):
            return ClaimResult.USED
        if entry.resource != resource:
            return ClaimResult.BOUND_ELSEWHERE
        if entry.state == "held" and entry.token != token:
            return ClaimResult.IN_FLIGHT
        entry.state, entry.token = "held", token
        entry.expires_at = max(entry.expires_at, expires_at)
        return ClaimResult.CLAIMED

    def finish_answers(self, key: str, token: str, new_state: str, now: float) -> set[bool]:
        """What release / mark_used may answer: either, once the entry may have been purged."""
        entry = self.entries.get(key)
        sources = ("held", "sending", "used") if new_state == "used" else ("held", new_state)
        if entry is None or entry.token != token or entry.state not in sources:
            return {False}
        return {True} if now < entry.expires_at else {True, False}

    def mark_sending_answers(self, key: str, token: str, now: float) -> set[bool]:
        """What mark_used(key, token, now) may answer: either, once the entry may be purged."""
        entry = self.entries.get(key)
        if entry is None or entry.token != token or entry.state == "released":
            return {False}
        return {True} if now < entry.expires_at else {True, False}

    def state(self, key: str, now: float) -> str | None:
        entry = self.live(key, now)
        return entry.state if entry is not None else None

    def recovery_check(
        self, key: str, resource: str, now: float, min_interval: float, grace: float | None
    ) -> str | None:
        entry = self.live(key, now)
        if entry is None or entry.resource != resource:
            return None
        stale = entry.state == "sending" and grace is not None and now >= entry.alive_at + grace
        if entry.state != "held" and not stale:
            return None
        if entry.checked_at is not None and now < entry.checked_at + min_interval:
            return None
        entry.checked_at = now
        return entry.token

    def take_over_answers(self, key: str, holder: str, token: str, now: float) -> set[bool]:
        """What take_over may answer: either, once the entry may have been purged."""
        entry = self.entries.get(key)
        if entry is None:
            return {False}
        held = entry.state == "held" and entry.token in (holder, token)
        sending = entry.state == "sending" and entry.token == holder
        if not held and not sending:
            return {False}
        return {True} if now < entry.expires_at else {True, False}


class StoreMachine(RuleBasedStateMachine):
    store: Store
    runs: Iterator[int]

    def __init__(self) -> None:
        super().__init__()
        # One store serves every example (opening a SQLite file or a Redis client per example
        # would dominate the run time); a key namespace per example starts it empty.
        self.namespace = f"run{next(self.runs)}:"
        self.model = Model()
        self.now = START

    @initialize(offset=st.sampled_from([0.0, 0.25, 0.5]))
    def start_clock(self, offset: float) -> None:
        self.now = START + offset

    @rule(key=KEYS, resource=RESOURCES, token=TOKENS, ttl=st.integers(min_value=-1, max_value=8))
    def claim(self, key: str, resource: str, token: str, ttl: int) -> None:
        expires_at = int(self.now) + ttl
        expected = self.model.claim(key, resource, token, expires_at, self.now)
        got = self.store.claim(self.namespace + key, resource, token, expires_at, self.now)
        assert got is expected

    @rule(key=KEYS, token=TOKENS, used=st.booleans())
    def finish(self, key: str, token: str, used: bool) -> None:
        new_state = "used" if used else "released"
        allowed = self.model.finish_answers(key, token, new_state, self.now)
        stored_key = self.namespace + key
        if used:
            done = self.store.mark_used(stored_key, token)
        else:
            done = self.store.release(stored_key, token)
        assert done in allowed
        if done:
            self.model.entries[key].state = new_state

    @rule(key=KEYS, token=TOKENS)
    def mark_sending(self, key: str, token: str) -> None:
        allowed = self.model.mark_sending_answers(key, token, self.now)
        done = self.store.mark_used(self.namespace + key, token, self.now)
        assert done in allowed
        entry = self.model.entries.get(key)
        if done and entry is not None and entry.state != "used":
            entry.state = "sending"
            entry.alive_at = max(entry.alive_at, self.now)

    @rule(
        key=KEYS,
        resource=RESOURCES,
        interval=st.sampled_from([0.5, 1.0, 2.0]),
        grace=st.sampled_from([None, 0.5, 2.0]),
    )
    def recovery_check(self, key: str, resource: str, interval: float, grace: float | None) -> None:
        expected = self.model.recovery_check(key, resource, self.now, interval, grace)
        got = self.store.recovery_check(self.namespace + key, resource, self.now, interval, grace)
        assert got == expected

    @rule(key=KEYS, holder=TOKENS, token=TOKENS)
    def take_over(self, key: str, holder: str, token: str) -> None:
        allowed = self.model.take_over_answers(key, holder, token, self.now)
        done = self.store.take_over(self.namespace + key, holder, token)
        assert done in allowed
        if done:
            self.model.entries[key].token = token
            self.model.entries[key].state = "held"

    @rule(key=KEYS)
    def state(self, key: str) -> None:
        got = self.store.state(self.namespace + key, self.now)
        assert got == self.model.state(key, self.now)

    @rule(step=st.sampled_from([0.25, 0.5, 1.0, 3.0]))
    def tick(self, step: float) -> None:
        self.now += step


def test_every_backend_matches_the_model(store: Store) -> None:
    machine = type("Machine", (StoreMachine,), {"store": store, "runs": itertools.count()})
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=200,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
