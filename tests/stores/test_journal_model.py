"""Random journal operation sequences on every backend against a model of the rules in
``stores/journal.py``: rows kept once per id, read back in (time, id) order within a window,
and pruned by retention (by age and by count) exactly when asked, never beyond it otherwise."""

from __future__ import annotations

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from x402gate.stores import Store
from x402gate.stores.journal import JournalRetention, JournalRow

START = 1_700_000_000.0
DAY = 86400.0
IDS = st.sampled_from([f"r{n}" for n in range(8)])


def _row(row_id: str, time: float, amount: int) -> JournalRow:
    return JournalRow(
        id=row_id,
        time=time,
        route="GET /a",
        payer="0xp",
        amount=amount,
        asset="0xa",
        network="eip155:1",
        outcome="settled",
    )


class JournalMachine(RuleBasedStateMachine):
    store: Store

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, JournalRow] = {}
        self.now = START

    @initialize(days=st.sampled_from([None, 1.0, 2.5]), rows=st.sampled_from([None, 1, 3, 5]))
    def empty(self, days: float | None, rows: int | None) -> None:
        # One store for every example: start each from an empty journal.
        self.store.journal_retention = JournalRetention(days=1e-9, rows=None)
        self.store.journal_prune(START + 1000 * DAY)
        assert self.store.journal_rows() == []
        self.retention = JournalRetention(days=days, rows=rows)
        self.store.journal_retention = self.retention

    def _kept(self, now: float) -> list[JournalRow]:
        ordered = sorted(self.rows.values(), key=lambda r: (r.time, r.id))
        cutoff = self.retention.cutoff(now)
        if cutoff is not None:
            ordered = [r for r in ordered if r.time >= cutoff]
        if self.retention.rows is not None:
            ordered = ordered[max(0, len(ordered) - self.retention.rows) :]
        return ordered

    @rule(row_id=IDS, back=st.sampled_from([0.0, 0.5 * DAY, 2 * DAY]), amount=st.integers(0, 9))
    def append(self, row_id: str, back: float, amount: int) -> None:
        row = _row(row_id, self.now - back, amount)
        present = row_id in {r.id for r in self.store.journal_rows()}
        fresh = self.store.journal_append(row)
        # Kept once per id: a stored id is never written again; one the store pruned may be.
        assert fresh is not present
        if fresh:
            self.rows[row_id] = row

    @rule()
    def prune(self) -> None:
        self.store.journal_prune(self.now)
        kept = self._kept(self.now)
        assert self.store.journal_rows() == kept
        self.rows = {r.id: r for r in kept}

    @rule(step=st.sampled_from([0.25 * DAY, DAY, 3 * DAY]))
    def tick(self, step: float) -> None:
        self.now += step

    @rule(since=st.sampled_from([0.0, DAY, 2 * DAY]), span=st.sampled_from([DAY, 10 * DAY]))
    def window(self, since: float, span: float) -> None:
        low = self.now - since
        got = self.store.journal_rows(low, low + span)
        assert all(low <= r.time < low + span for r in got)
        assert got == [r for r in self.store.journal_rows() if low <= r.time < low + span]

    @invariant()
    def between_what_retention_keeps_and_what_was_appended(self) -> None:
        stored = self.store.journal_rows()
        assert stored == sorted(stored, key=lambda r: (r.time, r.id))
        # Nothing that was not appended, and each row as it was appended ...
        assert all(self.rows.get(r.id) == r for r in stored)
        # ... and stores prune on their own too, but never a row retention keeps now.
        assert {r.id for r in self._kept(self.now)} <= {r.id for r in stored}


def test_every_backend_matches_the_journal_model(store: Store) -> None:
    machine = type("Machine", (JournalMachine,), {"store": store})
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=60,
            stateful_step_count=25,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
