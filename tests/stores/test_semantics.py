"""The replay rules of stores/base.py, checked step by step on every backend."""

from __future__ import annotations

import pytest

from x402gate.stores import ClaimResult, Store, replay_key

CLAIMED = ClaimResult.CLAIMED
IN_FLIGHT = ClaimResult.IN_FLIGHT
USED = ClaimResult.USED
BOUND_ELSEWHERE = ClaimResult.BOUND_ELSEWHERE

NOW = 1_700_000_000.0
EXP = 1_700_000_300  # validBefore five minutes after NOW
KEY = replay_key("eip155:8453", "0xASSET", "0xPAYER", "0x" + "ab" * 32)
GET_A = "GET /a"
POST_B = "POST /b"


def test_first_claim_wins_and_holds(store: Store) -> None:
    assert store.state(KEY, NOW) is None
    assert store.claim(KEY, GET_A, "t1", EXP, NOW) is CLAIMED
    assert store.state(KEY, NOW) == "held"


def test_held_key_is_in_flight_for_every_other_request(store: Store) -> None:
    store.claim(KEY, GET_A, "t1", EXP, NOW)
    assert store.claim(KEY, GET_A, "t2", EXP, NOW) is IN_FLIGHT
    assert store.claim(KEY, POST_B, "t3", EXP, NOW) is BOUND_ELSEWHERE
    # The losers took nothing: the first holder still owns the key.
    assert store.release(KEY, "t2") is False
    assert store.mark_used(KEY, "t1") is True


def test_every_operation_can_be_repeated_by_its_own_request(store: Store) -> None:
    # What a driver that re-sends a command after a lost answer does.
    assert store.claim(KEY, GET_A, "t1", EXP, NOW) is CLAIMED
    assert store.claim(KEY, GET_A, "t1", EXP, NOW) is CLAIMED
    assert store.release(KEY, "t1") is True
    assert store.release(KEY, "t1") is True
    assert store.state(KEY, NOW) == "released"
    assert store.claim(KEY, GET_A, "t2", EXP, NOW) is CLAIMED
    assert store.mark_used(KEY, "t2") is True
    assert store.mark_used(KEY, "t2") is True
    assert store.state(KEY, NOW) == "used"
    # Repeating is not changing: a used key is not released, not even by its own request.
    assert store.release(KEY, "t2") is False


def test_release_needs_the_holding_token(store: Store) -> None:
    store.claim(KEY, GET_A, "t1", EXP, NOW)
    assert store.release(KEY, "t2") is False
    assert store.state(KEY, NOW) == "held"
    assert store.release(KEY, "t1") is True
    assert store.state(KEY, NOW) == "released"


def test_released_key_can_be_claimed_again_for_the_same_resource_only(store: Store) -> None:
    store.claim(KEY, GET_A, "t1", EXP, NOW)
    store.release(KEY, "t1")
    assert store.claim(KEY, POST_B, "t2", EXP, NOW) is BOUND_ELSEWHERE
    assert store.state(KEY, NOW) == "released"
    assert store.claim(KEY, GET_A, "t3", EXP, NOW) is CLAIMED
    assert store.state(KEY, NOW) == "held"
    # The new holder owns it; the first request's token is stale.
    assert store.release(KEY, "t1") is False
    assert store.mark_used(KEY, "t1") is False
    assert store.mark_used(KEY, "t3") is True


def test_used_key_is_refused_for_every_resource_and_cannot_change(store: Store) -> None:
    store.claim(KEY, GET_A, "t1", EXP, NOW)
    assert store.mark_used(KEY, "t2") is False
    assert store.mark_used(KEY, "t1") is True
    assert store.state(KEY, NOW) == "used"
    assert store.claim(KEY, GET_A, "t2", EXP, NOW) is USED
    assert store.claim(KEY, POST_B, "t2", EXP, NOW) is USED
    assert store.release(KEY, "t1") is False
    assert store.release(KEY, "t2") is False
    assert store.mark_used(KEY, "t2") is False
    assert store.state(KEY, NOW) == "used"


def test_a_released_key_must_be_claimed_before_it_is_marked_used(store: Store) -> None:
    store.claim(KEY, GET_A, "t1", EXP, NOW)
    store.release(KEY, "t1")
    assert store.mark_used(KEY, "t1") is False
    assert store.state(KEY, NOW) == "released"


def test_unknown_key_cannot_be_released_or_used(store: Store) -> None:
    assert store.release(KEY, "t1") is False
    assert store.mark_used(KEY, "t1") is False
    assert store.state(KEY, NOW) is None


def test_keys_are_independent(store: Store) -> None:
    other = replay_key("eip155:8453", "0xASSET", "0xPAYER", "0x" + "cd" * 32)
    assert store.claim(KEY, GET_A, "t1", EXP, NOW) is CLAIMED
    assert store.claim(other, POST_B, "t2", EXP, NOW) is CLAIMED
    store.mark_used(KEY, "t1")
    assert store.state(other, NOW) == "held"


def test_replay_key_ignores_address_and_nonce_case(store: Store) -> None:
    nonce = "0x" + "Ab" * 32
    store.claim(replay_key("eip155:8453", "0xAsSeT", "0xPaYeR", nonce), GET_A, "t1", EXP, NOW)
    same = replay_key("eip155:8453", "0xasset", "0xPAYER", nonce.upper().replace("0X", "0x"))
    assert store.claim(same, GET_A, "t2", EXP, NOW) is IN_FLIGHT
    other_network = replay_key("eip155:84532", "0xasset", "0xpayer", nonce)
    assert store.claim(other_network, GET_A, "t3", EXP, NOW) is CLAIMED


@pytest.mark.parametrize("state_before", ["held", "released", "used"])
def test_entry_expires_exactly_at_expires_at(store: Store, state_before: str) -> None:
    store.claim(KEY, GET_A, "t1", EXP, NOW)
    if state_before == "released":
        store.release(KEY, "t1")
    elif state_before == "used":
        store.mark_used(KEY, "t1")
    just_before = EXP - 0.001
    assert store.state(KEY, just_before) == state_before
    refused = USED if state_before == "used" else BOUND_ELSEWHERE
    assert store.claim(KEY, POST_B, "t2", EXP + 300, just_before) is refused
    # validBefore is exclusive: at EXP the authorization is dead on chain, the entry is gone.
    assert store.state(KEY, EXP) is None
    assert store.claim(KEY, POST_B, "t2", EXP + 300, EXP) is CLAIMED
    assert store.state(KEY, EXP) == "held"
    assert store.mark_used(KEY, "t2") is True


def test_reclaim_after_release_keeps_the_later_expiry(store: Store) -> None:
    store.claim(KEY, GET_A, "t1", EXP, NOW)
    store.release(KEY, "t1")
    # A retry carrying an earlier expiry must not shorten the protection...
    assert store.claim(KEY, GET_A, "t2", EXP - 200, NOW) is CLAIMED
    assert store.state(KEY, EXP - 1) == "held"
    store.release(KEY, "t2")
    # ...and a later one extends it.
    assert store.claim(KEY, GET_A, "t3", EXP + 100, NOW) is CLAIMED
    assert store.state(KEY, EXP + 99) == "held"
    assert store.state(KEY, EXP + 100) is None


def test_claim_of_an_already_expired_authorization_protects_nothing(store: Store) -> None:
    # The gate refuses such payments before the store; the store must still answer sanely.
    assert store.claim(KEY, GET_A, "t1", int(NOW) - 3600, NOW) is CLAIMED
    assert store.state(KEY, NOW) is None
    assert store.claim(KEY, POST_B, "t2", EXP, NOW) is CLAIMED
    assert store.state(KEY, NOW) == "held"


def test_flags_describe_the_backend(store: Store) -> None:
    expected = {
        "memory": (False, False),
        "sqlite": (True, True),
        "redis": (True, True),
        "postgresql": (True, True),
    }[store.scheme]
    assert (store.blocking, store.shared_across_processes) == expected


def test_ping_and_close(store: Store) -> None:
    store.ping()
    with store:
        assert store.claim(KEY, GET_A, "t1", EXP, NOW) is CLAIMED
