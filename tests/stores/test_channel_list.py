"""Listing every channel a store keeps, page by page, on every backend (operators' listings and
idle refunds read it)."""

from __future__ import annotations

import pytest

from x402gate.stores import Store
from x402gate.stores.channels import MAX_CHANNEL_LIST

from ._channel_race import BALANCE, CONFIG, NOW, PRICE, SIGNATURE


def _id(n: int) -> str:
    return "0x" + f"{n:064x}"


def _sync(store: Store, channel: str, balance: int = BALANCE) -> None:
    store.channel_sync(
        channel,
        CONFIG,
        balance=balance,
        total_claimed=0,
        withdraw_requested_at=0,
        refund_nonce=0,
        now=NOW,
    )


def _all(store: Store, limit: int) -> list[str]:
    seen: list[str] = []
    after: str | None = None
    while True:
        page = store.channel_list(limit=limit, after=after)
        assert len(page) <= limit
        if not page:
            return seen
        seen.extend(c.channel_id for c in page)
        after = page[-1].channel_id


def test_every_channel_is_listed_once_in_id_order_across_pages(store: Store) -> None:
    assert store.channel_list() == []
    numbers = [0xFF, 3, 0xABC, 17, 2**200, 1, 0x10]
    for n in numbers:
        _sync(store, _id(n).upper().replace("0X", "0x"))  # any spelling: kept lower case
    expected = [_id(n) for n in sorted(numbers)]
    assert _all(store, 1) == expected
    assert _all(store, 3) == expected
    assert [c.channel_id for c in store.channel_list(limit=MAX_CHANNEL_LIST)] == expected
    assert [c.channel_id for c in store.channel_list(limit=2, after=_id(3))] == expected[2:4]
    assert store.channel_list(after=expected[-1]) == []


def test_a_listed_channel_carries_what_the_operator_reads(store: Store) -> None:
    channel = _id(5)
    _sync(store, channel, balance=50_000)
    begun = store.channel_begin(
        channel,
        "r1",
        base=0,
        max_claimable=PRICE,
        signature=SIGNATURE,
        expires_at=NOW + 60,
        now=NOW,
    )
    assert begun.state is not None and begun.state.step is not None
    assert store.channel_commit(channel, "r1", 300, NOW + 1, step=PRICE) is not None
    assert store.channel_mark_claimed(channel, 100, NOW + 2)
    (listed,) = store.channel_list()
    assert listed == store.channel_get(channel)
    assert (listed.balance, listed.charged, listed.earned, listed.total_claimed) == (
        50_000,
        PRICE,
        300,
        100,
    )
    assert listed.last_request_at == NOW + 1 and listed.step is None


def test_list_arguments_are_checked(store: Store) -> None:
    for limit in (0, MAX_CHANNEL_LIST + 1, True):
        with pytest.raises(ValueError):
            store.channel_list(limit=limit)
    with pytest.raises(ValueError):
        store.channel_list(after="0x1234")
