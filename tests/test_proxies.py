"""The client address behind reverse proxies: the rightmost X-Forwarded-For entry not added by
a trusted proxy, and only when the request came from one."""

from __future__ import annotations

import pytest

from x402gate.errors import ConfigurationError
from x402gate.proxies import TrustedProxies

PROXIES = TrustedProxies(["10.0.0.0/8", "::1", "127.0.0.1"])


@pytest.mark.parametrize(
    ("peer", "forwarded_for", "client", "forwarded"),
    [
        # Not from a proxy: what the client wrote is ignored.
        ("203.0.113.9", "1.2.3.4", "203.0.113.9", False),
        # From a proxy: the entry it appended, never the ones the client wrote before it.
        ("10.0.0.2", "6.6.6.6, 203.0.113.9", "203.0.113.9", True),
        # Two proxies in a row: both skipped.
        ("10.0.0.2", "6.6.6.6, 203.0.113.9, 10.1.1.1", "203.0.113.9", True),
        ("::1", "6.6.6.6,198.51.100.1", "198.51.100.1", True),
        ("10.0.0.2", "[2001:db8::1]:4711", "2001:db8::1", True),
        ("10.0.0.2", "198.51.100.1:4711", "198.51.100.1", True),
        # Garbage where an address should be: the last hop known is answered.
        ("10.0.0.2", "6.6.6.6, not-an-ip", "10.0.0.2", True),
        ("10.0.0.2", "not-an-ip, 10.3.3.3", "10.3.3.3", True),
        ("10.0.0.2", None, "10.0.0.2", True),
        (None, "6.6.6.6", None, False),
        ("::ffff:10.0.0.2", "203.0.113.9", "203.0.113.9", True),
    ],
)
def test_client_address(
    peer: str | None, forwarded_for: str | None, client: str | None, forwarded: bool
) -> None:
    assert PROXIES.resolve(peer, forwarded_for) == (client, forwarded)


def test_no_proxies_trust_nothing_and_the_deprecated_switch_trusts_one_hop() -> None:
    none = TrustedProxies()
    assert not none and none.resolve("10.0.0.2", "6.6.6.6") == ("10.0.0.2", False)
    assert none.resolve("10.0.0.2", "6.6.6.6, 7.7.7.7", trust_peer=True) == ("7.7.7.7", True)


def test_a_long_forwarded_for_is_walked_a_bounded_number_of_hops() -> None:
    chain = ", ".join(["6.6.6.6"] + ["10.0.0.1"] * 10_000)
    assert PROXIES.resolve("10.0.0.2", chain) == ("10.0.0.1", True)


@pytest.mark.parametrize("value", ["10.0.0.0/8", [""], ["10.0.0.0/8", "bad"], [b"10.0.0.1"]])
def test_bad_entries_are_configuration_errors(value: object) -> None:
    with pytest.raises(ConfigurationError, match="trusted_proxies"):
        TrustedProxies(value)  # type: ignore[arg-type]
