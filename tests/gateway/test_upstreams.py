"""The order in which a request tries its targets, and the circuit breaker's states."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from x402gate.gateway.config import UpstreamSpec
from x402gate.gateway.upstreams import Breaker, TargetSet, Upstream, UpstreamTarget


def upstream(name: str) -> Upstream:
    return Upstream(name, UpstreamSpec(url=f"http://127.0.0.1:9/{name}"))


A, B, C, D = (upstream(name) for name in "abcd")


def names(order: tuple[UpstreamTarget, ...]) -> str:
    return "".join(t.upstream.name for t in order)


def test_levels_are_tried_in_priority_order_each_drawn_by_weight() -> None:
    targets = TargetSet(
        (
            UpstreamTarget(C, priority=1),
            UpstreamTarget(A, weight=3),
            UpstreamTarget(B, weight=1),
            UpstreamTarget(D, priority=5),
        )
    )
    rng = random.Random(7)
    orders = Counter(names(targets.order(rng)) for _ in range(20_000))
    assert set(orders) == {"abcd", "bacd"}  # every target once, the levels in order
    assert abs(orders["abcd"] / 20_000 - 0.75) < 0.02


def test_weights_split_the_first_choice_and_the_others_follow() -> None:
    targets = TargetSet(tuple(UpstreamTarget(u, weight=w) for u, w in ((A, 5), (B, 3), (C, 2))))
    rng = random.Random(11)
    orders = [names(targets.order(rng)) for _ in range(30_000)]
    assert all(sorted(order) == list("abc") for order in orders)
    first = Counter(order[0] for order in orders)
    for name, share in (("a", 0.5), ("b", 0.3), ("c", 0.2)):
        assert abs(first[name] / len(orders) - share) < 0.02


def test_a_single_target_is_its_own_order() -> None:
    targets = TargetSet((UpstreamTarget(A),))
    assert targets.order() is targets.order()
    with pytest.raises(ValueError, match="needs a target"):
        TargetSet(())


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def state(breaker: Breaker) -> str:
    return breaker.state


def test_the_breaker_opens_after_failures_in_a_row_and_probes_once() -> None:
    clock = Clock()
    breaker = Breaker(3, 10.0, clock=clock)
    breaker.failure()
    breaker.failure()
    breaker.success()  # a success in between: the count starts again
    breaker.failure()
    breaker.failure()
    assert breaker.allow() and state(breaker) == "closed"
    breaker.failure()
    assert state(breaker) == "open" and not breaker.allow()
    clock.now += 9.9
    assert not breaker.allow()
    clock.now += 0.2
    assert state(breaker) == "half-open"
    assert breaker.allow()  # the probe
    assert not breaker.allow()  # the others wait for its verdict
    breaker.failure()  # the probe failed: open for another window
    assert state(breaker) == "open" and breaker.opens == 2
    clock.now += 10.1
    assert breaker.allow()
    breaker.abandon()  # the probe's client left: the next request probes
    assert breaker.allow()
    breaker.success()
    assert state(breaker) == "closed" and breaker.allow() and breaker.allow()
