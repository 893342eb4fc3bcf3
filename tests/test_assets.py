"""Assets and networks: what a route accepts."""

from __future__ import annotations

import pytest

from x402gate.assets import (
    Asset,
    chain_id_of,
    checksum_address,
    is_address,
    normalize_network,
    usdc,
)
from x402gate.errors import ConfigurationError

BASE_USDC = "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913"


def test_known_usdc_carries_its_eip712_domain() -> None:
    assert usdc("base") == Asset("eip155:8453", BASE_USDC, "USD Coin", "2")
    assert usdc("base-sepolia").name == "USDC"
    assert usdc("eip155:84532").chain_id == 84532


@pytest.mark.parametrize("value", ["0x" + "ab" * 20, "0x" + "AB" * 20, BASE_USDC])
def test_addresses_in_any_single_case_or_checksummed_are_accepted(value: str) -> None:
    assert checksum_address(value).lower() == value.lower()


@pytest.mark.parametrize(
    "value",
    [
        BASE_USDC + "\n",
        BASE_USDC[:-1],
        "0x" + "zz" * 20,
        BASE_USDC.replace("f", "F", 1),
        "",
        "833589fCD6eDb6E08f4c7C32D4f71b54bdA02913",
    ],
)
def test_bad_or_miscased_addresses_are_refused(value: str) -> None:
    with pytest.raises(ConfigurationError):
        checksum_address(value)


@pytest.mark.parametrize("value", ["eip155:0", "eip155:-1", "solana:abc", "mainnet", "eip155:"])
def test_bad_networks_are_refused(value: str) -> None:
    with pytest.raises(ConfigurationError):
        normalize_network(value)


def test_network_aliases_and_chain_ids() -> None:
    assert normalize_network(" Base-Sepolia ") == "eip155:84532"
    assert chain_id_of("eip155:31337") == 31337
    with pytest.raises(ConfigurationError):
        chain_id_of("eip155:1\n")
    assert not is_address(None)


def test_unknown_usdc_network_asks_for_an_explicit_asset() -> None:
    with pytest.raises(ConfigurationError, match="Asset"):
        usdc("eip155:31337")


@pytest.mark.parametrize(
    "kwargs",
    [{"name": ""}, {"version": ""}, {"decimals": -1}, {"decimals": True}, {"decimals": 77}],
)
def test_asset_fields_are_validated(kwargs: dict[str, object]) -> None:
    base: dict[str, object] = {
        "network": "eip155:8453",
        "address": BASE_USDC,
        "name": "USD Coin",
        "version": "2",
    }
    with pytest.raises(ConfigurationError):
        Asset(**{**base, **kwargs})  # type: ignore[arg-type]
