"""Random channel sequences on every backend must match a plain model of the channel rules.

Hypothesis drives syncs, begins (on the right base, a stale one or a future one), commits,
extensions, releases, claims and clock ticks into a real store and into :class:`Model`, written
here from the rules in :mod:`x402gate.stores.channels` and not from the backends' code; every
answer must agree. Amounts above 2**64 come up, and the clock lands exactly on step expiries.
Commits come with and without a metered step (the amount the client's counter moves by, beside the
measured charge the seller earns). Throughout, the charged amount never goes back, never passes
the last accepted voucher, a step's charge is taken at most once, and ``total_claimed <= earned
<= charged``.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field

from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from x402gate.stores import Store
from x402gate.stores.channels import ChannelBeginOutcome as Out

START = 1_700_000_000.0
BIG = 10**20 + 1
SIG = "0x" + "22" * 65
CONFIG = '{"salt":"0x01"}'

CHANNELS = st.sampled_from([0, 1])
TOKENS = st.sampled_from(["t1", "t2", "t3"])
CEILINGS = st.sampled_from([1, 2, 5, BIG])
CHARGES = st.sampled_from([0, 1, 3, BIG, 2 * BIG])
STEPS = st.sampled_from([None, None, 0, 2, 4, BIG, 3 * BIG])
BALANCES = st.sampled_from([0, 4, 10, 3 * BIG])
TTLS = st.sampled_from([1.0, 2.0, 5.0])


@dataclass
class Chan:
    balance: int
    total_claimed: int
    charged: int
    earned: int
    max_claimable: int = 0
    step: tuple[str, int, int, float] | None = None  # token, base, ceiling, expires_at
    committed_steps: set[str] = field(default_factory=set)


class Model:
    def __init__(self) -> None:
        self.chans: dict[int, Chan] = {}

    def sync(self, c: int, balance: int, claimed: int) -> None:
        if c not in self.chans:
            self.chans[c] = Chan(balance, claimed, claimed, claimed)
            return
        ch = self.chans[c]
        ch.balance = balance
        ch.total_claimed = max(ch.total_claimed, claimed)
        ch.charged = max(ch.charged, ch.total_claimed)
        ch.earned = max(ch.earned, ch.total_claimed)
        if ch.step is not None and ch.step[1] != ch.charged:
            ch.step = None

    def begin(self, c: int, token: str, base: int, ceiling: int, exp: float, now: float) -> Out:
        ch = self.chans.get(c)
        if ch is None:
            return Out.UNKNOWN
        if ch.step is not None:
            if ch.step[0] == token:
                return Out.STARTED
            if ch.step[3] > now:
                return Out.BUSY
            ch.step = None
        if base != ch.charged:
            return Out.MISMATCH
        if ceiling > ch.balance:
            return Out.INSUFFICIENT
        ch.step = (token, base, ceiling, exp)
        return Out.STARTED

    def commit(self, c: int, token: str, charge: int, step: int | None) -> int | None:
        ch = self.chans.get(c)
        if ch is None or ch.step is None or ch.step[0] != token:
            return None
        _, base, ceiling, _ = ch.step
        ch.charged = min(base + (charge if step is None else step), ceiling)
        ch.earned += min(charge, ch.charged - base)
        ch.max_claimable = ceiling
        ch.step = None
        return ch.charged

    def extend(self, c: int, token: str, exp: float) -> bool:
        ch = self.chans.get(c)
        if ch is None or ch.step is None or ch.step[0] != token:
            return False
        ch.step = (*ch.step[:3], max(ch.step[3], exp))
        return True

    def release(self, c: int, token: str) -> bool:
        ch = self.chans.get(c)
        if ch is None or ch.step is None or ch.step[0] != token:
            return False
        ch.step = None
        return True

    def mark_claimed(self, c: int, amount: int) -> bool:
        ch = self.chans.get(c)
        if ch is None or amount > ch.earned:
            return False
        ch.total_claimed = max(ch.total_claimed, amount)
        return True


class ChannelMachine(RuleBasedStateMachine):
    store: Store
    runs: Iterator[int]

    def __init__(self) -> None:
        super().__init__()
        run = next(self.runs)
        # One store for every example; channel ids per example start it empty.
        self.ids = [f"0x{run:060x}{c:04x}" for c in (0, 1)]
        self.model = Model()
        self.now = START
        self.step_no = 0

    def cid(self, c: int) -> str:
        return self.ids[c]

    @initialize(balance=st.sampled_from([10, 3 * BIG]))
    def open_first_channel(self, balance: int) -> None:
        # Most examples start with a funded channel, so that steps are taken and committed
        # often; the second channel comes (or not) from the sync rule.
        self.sync(0, balance, 0)

    @rule(c=CHANNELS, balance=BALANCES, claimed=st.sampled_from([0, 0, 1, 4, BIG]))
    def sync(self, c: int, balance: int, claimed: int) -> None:
        self.model.sync(c, balance, claimed)
        got = self.store.channel_sync(
            self.cid(c),
            CONFIG,
            balance=balance,
            total_claimed=claimed,
            withdraw_requested_at=0,
            refund_nonce=0,
            now=self.now,
        )
        ch = self.model.chans[c]
        assert (got.balance, got.total_claimed, got.charged, got.earned) == (
            ch.balance,
            ch.total_claimed,
            ch.charged,
            ch.earned,
        )

    @rule(
        c=CHANNELS,
        token=TOKENS,
        offset=st.sampled_from([0, 0, 0, -1, 1, BIG]),
        ceiling=CEILINGS,
        ttl=TTLS,
    )
    def begin(self, c: int, token: str, offset: int, ceiling: int, ttl: float) -> None:
        ch = self.model.chans.get(c)
        base = max(0, (ch.charged if ch is not None else 0) + offset)
        expected = self.model.begin(c, token, base, base + ceiling, self.now + ttl, self.now)
        got = self.store.channel_begin(
            self.cid(c),
            token,
            base=base,
            max_claimable=base + ceiling,
            signature=SIG,
            expires_at=self.now + ttl,
            now=self.now,
        )
        event(f"begin: {expected.value}")
        assert got.outcome is expected
        if expected is not Out.UNKNOWN:
            assert got.state is not None and got.state.charged == self.model.chans[c].charged

    @rule(c=CHANNELS, token=TOKENS, charge=CHARGES, step=STEPS)
    def commit(self, c: int, token: str, charge: int, step: int | None) -> None:
        expected = self.model.commit(c, token, charge, step)
        if step is None:
            got = self.store.channel_commit(self.cid(c), token, charge, self.now)
        else:
            got = self.store.channel_commit(self.cid(c), token, charge, self.now, step=step)
        event("commit: " + ("none" if expected is None else "charged"))
        assert (None if got is None else got.charged) == expected
        if got is not None:
            assert got.earned == self.model.chans[c].earned
            assert got.max_claimable == self.model.chans[c].max_claimable
            assert got.signature == SIG and got.step is None

    @rule(c=CHANNELS, charge=CHARGES, step=STEPS)
    def commit_holder(self, c: int, charge: int, step: int | None) -> None:
        """Commit as the request holding the step (whether or not it expired)."""
        ch = self.model.chans.get(c)
        holder = ch.step[0] if ch is not None and ch.step is not None else "t1"
        self.commit(c, holder, charge, step)

    @rule(c=CHANNELS, token=TOKENS, ttl=TTLS)
    def extend(self, c: int, token: str, ttl: float) -> None:
        expected = self.model.extend(c, token, self.now + ttl)
        assert self.store.channel_extend(self.cid(c), token, self.now + ttl) is expected

    @rule(c=CHANNELS, token=TOKENS)
    def release(self, c: int, token: str) -> None:
        expected = self.model.release(c, token)
        assert self.store.channel_release(self.cid(c), token) is expected

    @rule(c=CHANNELS, amount=st.sampled_from([0, 1, 3, 4, BIG, 3 * BIG]))
    def mark_claimed(self, c: int, amount: int) -> None:
        expected = self.model.mark_claimed(c, amount)
        assert self.store.channel_mark_claimed(self.cid(c), amount, self.now) is expected

    @rule(step=st.sampled_from([0.5, 1.0, 2.0]))
    def tick(self, step: float) -> None:
        self.now += step

    @invariant()
    def stored_state_matches(self) -> None:
        for c in (0, 1):
            got = self.store.channel_get(self.cid(c))
            ch = self.model.chans.get(c)
            if ch is None:
                assert got is None
                continue
            assert got is not None
            assert (
                got.charged,
                got.earned,
                got.total_claimed,
                got.max_claimable,
                got.balance,
            ) == (ch.charged, ch.earned, ch.total_claimed, ch.max_claimable, ch.balance)
            step = (
                None
                if got.step is None
                else (
                    got.step.token,
                    got.step.base,
                    got.step.max_claimable,
                    got.step.expires_at,
                )
            )
            assert step == ch.step
            assert got.total_claimed <= got.earned <= got.charged
            # Never charged beyond the last voucher, unless the chain showed more claimed.
            assert got.charged <= max(got.max_claimable, got.total_claimed)
        due = {s.channel_id for s in self.store.channel_claimable(limit=1000)}
        for c in (0, 1):
            ch = self.model.chans.get(c)
            owed = ch is not None and ch.earned > ch.total_claimed
            assert (self.cid(c) in due) is owed


def test_every_backend_matches_the_channel_model(store: Store) -> None:
    machine = type("Machine", (ChannelMachine,), {"store": store, "runs": itertools.count()})
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=100,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
