"""Networks and the tokens a route accepts.

An :class:`Asset` is everything needed to ask for and check an EIP-3009 payment: the CAIP-2
network, the token contract, its decimals and its EIP-712 domain (``name``/``version``).
USDC on the main EVM networks is known by name; any other EIP-3009 token (a test token on a
local chain, say) is described explicitly.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field

from .errors import ConfigurationError

__all__ = ["USDC", "Asset", "chain_id_of", "checksum_address", "is_address", "usdc"]

_ADDRESS_RE = re.compile(r"^0x[0-9a-fA-F]{40}$")
_NETWORK_RE = re.compile(r"^eip155:([1-9][0-9]{0,18})$")

# Facts about Circle's USDC deployments (address, EIP-712 name, version); decimals are 6.
_KNOWN_USDC: dict[str, tuple[str, str, str]] = {
    "eip155:8453": ("0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913", "USD Coin", "2"),
    "eip155:84532": ("0x036CbD53842c5426634e7929541eC2318f3dCF7e", "USDC", "2"),
    "eip155:1": ("0xA0b86991c6218b36c1d19D4a2e9Eb0cE3606eB48", "USD Coin", "2"),
    "eip155:43114": ("0xB97EF9Ef8734C71904D8002F8b6Bc66Dd9c48a6E", "USD Coin", "2"),
    "eip155:43113": ("0x5425890298aed601595a70AB815c96711a31Bc65", "USD Coin", "2"),
    "eip155:137": ("0x3c499c542cEF5E3811e1192ce70d8cC03d5c3359", "USD Coin", "2"),
    "eip155:80002": ("0x41E94Eb019C0762f9Bfcf9Fb1E58725BfB0e7582", "USDC", "2"),
    "eip155:42161": ("0xaf88d065e77c8cC2239327C5EDb3A432268e5831", "USD Coin", "2"),
    "eip155:421614": ("0x75faf114eafb1BDbe2F0316DF893fd58CE46AA4d", "USD Coin", "2"),
    "eip155:10": ("0x0b2C639c533813f4Aa9D7837CAf62653d097Ff85", "USD Coin", "2"),
    "eip155:11155420": ("0x5fd84259d66Cd46123540766Be93DFE6D43130D7", "USDC", "2"),
}

_NETWORK_ALIASES = {
    "base": "eip155:8453",
    "base-sepolia": "eip155:84532",
    "ethereum": "eip155:1",
    "avalanche": "eip155:43114",
    "avalanche-fuji": "eip155:43113",
    "polygon": "eip155:137",
    "polygon-amoy": "eip155:80002",
    "arbitrum": "eip155:42161",
    "arbitrum-sepolia": "eip155:421614",
    "optimism": "eip155:10",
    "optimism-sepolia": "eip155:11155420",
}


def is_address(value: object) -> bool:
    """True for a 0x-prefixed 20-byte hex string (any letter case)."""
    return isinstance(value, str) and bool(_ADDRESS_RE.fullmatch(value))


@functools.lru_cache(maxsize=4096)
def checksum_address(value: str) -> str:
    """EIP-55 checksummed form of an address; ``ConfigurationError`` if it is not one.

    Cached: payers come back, and EIP-55 costs a keccak per call."""
    if not is_address(value):
        raise ConfigurationError(f"not an EVM address: {value!r}")
    from eth_utils.address import to_checksum_address  # local import: eth_utils is not cheap

    checksummed: str = to_checksum_address(value)
    digits = value[2:]
    if digits != digits.lower() and digits != digits.upper() and value != checksummed:
        # Mixed case means the writer meant a checksum: a wrong one is a typo, not a style.
        raise ConfigurationError(f"address has a wrong EIP-55 checksum: {value!r}")
    return checksummed


def normalize_network(network: str) -> str:
    """CAIP-2 id for a network name or id (``base-sepolia`` → ``eip155:84532``)."""
    if not isinstance(network, str):
        raise ConfigurationError(f"network must be a string, got {type(network).__name__}")
    network = _NETWORK_ALIASES.get(network.strip().lower(), network.strip())
    if not _NETWORK_RE.fullmatch(network):
        raise ConfigurationError(
            f"unsupported network {network!r}: use a CAIP-2 EVM id such as 'eip155:8453'"
        )
    return network


def chain_id_of(network: str) -> int:
    """The EVM chain id in a CAIP-2 network id."""
    match = _NETWORK_RE.fullmatch(network)
    if not match:
        raise ConfigurationError(f"not an EVM CAIP-2 network: {network!r}")
    return int(match.group(1))


@dataclass(frozen=True, slots=True)
class Asset:
    """An EIP-3009 token on one network, as x402 payment requirements name it."""

    network: str
    address: str
    name: str
    version: str
    decimals: int = 6
    symbol: str = "USDC"
    chain_id: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        network = normalize_network(self.network)
        object.__setattr__(self, "network", network)
        object.__setattr__(self, "address", checksum_address(self.address))
        object.__setattr__(self, "chain_id", chain_id_of(network))
        if not isinstance(self.name, str) or not self.name:
            raise ConfigurationError("asset needs its EIP-712 domain name (e.g. 'USD Coin')")
        if not isinstance(self.version, str) or not self.version:
            raise ConfigurationError("asset needs its EIP-712 domain version (e.g. '2')")
        if isinstance(self.decimals, bool) or not isinstance(self.decimals, int):
            raise ConfigurationError("asset decimals must be an integer")
        if not 0 <= self.decimals <= 36:
            raise ConfigurationError(f"asset decimals out of range: {self.decimals}")

    @property
    def extra(self) -> dict[str, str]:
        """The ``extra`` object of payment requirements: the token's EIP-712 domain."""
        return {"name": self.name, "version": self.version}


def usdc(network: str) -> Asset:
    """USDC on a known network (Base, Base Sepolia, Ethereum, Polygon, Arbitrum, ...)."""
    caip = normalize_network(network)
    try:
        address, name, version = _KNOWN_USDC[caip]
    except KeyError:
        raise ConfigurationError(
            f"no USDC address is known for {caip}: describe the token with Asset(...)"
        ) from None
    return Asset(network=caip, address=address, name=name, version=version, decimals=6)


USDC = usdc
