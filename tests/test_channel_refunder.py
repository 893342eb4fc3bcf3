"""The channel refunder's choices that need no chain: which channels are idle, and the refunds
it refuses before asking the facilitator anything (refunds on the chain are tested in
``tests/channels/test_refunds.py``)."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

from x402gate.gate.refunds import ChannelRefunder, RefundError, refundable
from x402gate.stores import Store, open_store

NOW = 1_800_000_000.0
DAY = 86400.0
NETWORK = "eip155:31337"
PRICE = 1_000


class NoFacilitator:
    """Fails the test if a refund reaches the facilitator."""

    async def verify(self, payload: Any, requirements: Any) -> Any:
        raise AssertionError("the facilitator was asked")

    async def settle(self, payload: Any, requirements: Any) -> Any:
        raise AssertionError("the facilitator was asked")

    async def supported(self) -> Any:
        raise AssertionError("the facilitator was asked")


def _config(payer: str) -> str:
    fields = {
        "payer": payer,
        "payerAuthorizer": payer,
        "receiver": "0x" + "22" * 20,
        "receiverAuthorizer": "0x" + "33" * 20,
        "token": "0x" + "44" * 20,
        "withdrawDelay": 900,
        "salt": "0x" + os.urandom(32).hex(),
    }
    return json.dumps(fields, sort_keys=True, separators=(",", ":"))


def _channel(store: Store, payer: str, *, balance: int = 100_000, synced: float = NOW) -> str:
    from x402.mechanisms.evm.batch_settlement.types import ChannelConfig
    from x402.mechanisms.evm.batch_settlement.utils import compute_channel_id

    config = _config(payer)
    channel_id = compute_channel_id(ChannelConfig.from_dict(json.loads(config)), NETWORK).lower()
    store.channel_sync(
        channel_id,
        config,
        balance=balance,
        total_claimed=0,
        withdraw_requested_at=0,
        refund_nonce=0,
        now=synced,
    )
    return channel_id


def _serve(store: Store, channel_id: str, at: float, token: str = "r", commit: bool = True) -> None:
    state = store.channel_get(channel_id)
    assert state is not None
    begun = store.channel_begin(
        channel_id,
        token,
        base=state.charged,
        max_claimable=state.charged + PRICE,
        signature="0x" + "11" * 65,
        expires_at=at + 60,
        now=at,
    )
    assert begun.state is not None and begun.state.step is not None
    if commit:
        assert store.channel_commit(channel_id, token, PRICE, at) is not None


@pytest.fixture
def store() -> Any:
    store = open_store("memory://")
    yield store
    store.close()


def _refunder(store: Store, at: float, networks: list[str] | None = None) -> ChannelRefunder:
    return ChannelRefunder(
        store,
        NoFacilitator(),
        networks or [NETWORK],
        clock=lambda: at,
    )


async def test_idle_means_no_request_for_the_time_given(store: Store) -> None:
    quiet = _channel(store, "0x" + "a1" * 20)
    _serve(store, quiet, NOW - 8 * DAY)
    recent = _channel(store, "0x" + "a2" * 20)
    _serve(store, recent, NOW - 8 * DAY)
    _serve(store, recent, NOW - 1 * DAY, token="r2")
    never_used = _channel(store, "0x" + "a3" * 20, synced=NOW - 9 * DAY)
    fresh = _channel(store, "0x" + "a4" * 20, synced=NOW - 60)
    busy = _channel(store, "0x" + "a5" * 20)
    _serve(store, busy, NOW - 8 * DAY)
    _serve(store, busy, NOW - 10, token="live", commit=False)  # a request running now
    spent = _channel(store, "0x" + "a6" * 20, balance=PRICE)
    _serve(store, spent, NOW - 8 * DAY)  # all of its balance was earned: nothing to return
    idle = await _refunder(store, NOW).idle(7 * DAY)
    assert sorted(s.channel_id for s in idle) == sorted([quiet, never_used])
    assert await _refunder(store, NOW).idle(10 * DAY) == []
    assert {s.channel_id for s in await _refunder(store, NOW).idle(0)} == {
        quiet,
        recent,
        never_used,
        fresh,
    }
    state = store.channel_get(quiet)
    assert state is not None and refundable(state) == 100_000 - PRICE


async def test_refunds_refused_before_the_facilitator_is_asked(store: Store) -> None:
    refunder = _refunder(store, NOW)
    with pytest.raises(RefundError) as unknown:
        await refunder.refund("0x" + "ab" * 32)
    assert unknown.value.code.endswith("missing_channel")
    channel = _channel(store, "0x" + "b1" * 20)
    _serve(store, channel, NOW - 5)
    _serve(store, channel, NOW - 1, token="live", commit=False)
    with pytest.raises(RefundError) as busy:
        await refunder.refund(channel)
    assert busy.value.code.endswith("channel_busy")
    store.channel_release(channel, "live")
    with pytest.raises(RefundError) as above:
        await refunder.refund(channel, amount=100_000)
    assert above.value.code.endswith("refund_no_balance")
    with pytest.raises(RefundError) as elsewhere:
        await _refunder(store, NOW, ["eip155:8453"]).refund(channel)
    assert elsewhere.value.code.endswith("network_mismatch")
    spent = _channel(store, "0x" + "b2" * 20, balance=PRICE)
    _serve(store, spent, NOW - 5)
    with pytest.raises(RefundError) as empty:
        await refunder.refund(spent)
    assert empty.value.code.endswith("refund_no_balance")
    # Refused refunds leave no hold behind: the channel serves its next request.
    _serve(store, channel, NOW, token="next")
    after = store.channel_get(channel)
    assert after is not None and after.charged == 2 * PRICE and after.step is None


def test_a_malformed_key_is_refused_without_showing_it(store: Store) -> None:
    from x402gate.errors import ConfigurationError

    with pytest.raises(ConfigurationError) as bad:
        ChannelRefunder(
            store,
            NoFacilitator(),
            [NETWORK],
            receiver_authorizer_key="0x1234beef",
        )
    assert "1234beef" not in str(bad.value)
    refunder = ChannelRefunder(
        store,
        NoFacilitator(),
        [NETWORK],
        receiver_authorizer_key="0x" + "5" * 64,
    )
    assert "5555" not in repr(refunder) and "own key" in repr(refunder)
