"""Who the client is, behind reverse proxies the operator names.

``X-Forwarded-For`` is a list every hop appends to: the client writes what it likes on the left,
and each proxy adds the address it received the request from on the right. Only the entries added
by proxies the operator trusts are facts, so the client address is the rightmost entry that is not
one of those proxies, and only when the request really came from one of them. The same rule
decides when ``X-Forwarded-Host``/``-Proto`` may be read at all.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from .errors import ConfigurationError

__all__ = ["TrustedProxies"]

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_Address = ipaddress.IPv4Address | ipaddress.IPv6Address
_MAX_HOPS = 32
"""``X-Forwarded-For`` entries looked at, from the right: a bound on work per request."""


def _address(text: str) -> _Address | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # "[v6]:port"
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:  # "v4:port"
        text = text.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class TrustedProxies:
    """The reverse proxies whose forwarding headers are believed.

    :param networks: IP addresses or CIDR blocks (``"10.0.0.0/8"``, ``"127.0.0.1"``, ``"::1"``).
        Empty: no proxy is trusted, the client is the TCP peer and forwarding headers are ignored.
    :param setting: the configuration key named in errors.
    """

    __slots__ = ("networks",)

    def __init__(self, networks: Iterable[str] = (), *, setting: str = "trusted_proxies") -> None:
        if isinstance(networks, str | bytes):
            raise ConfigurationError(f"{setting} must be a list of IP addresses or CIDR blocks")
        parsed: list[_Network] = []
        for item in networks:
            if not isinstance(item, str):
                raise ConfigurationError(f"{setting}: {item!r} is not an IP address or CIDR block")
            try:
                parsed.append(ipaddress.ip_network(item.strip(), strict=False))
            except ValueError:
                raise ConfigurationError(
                    f"{setting}: {item!r} is not an IP address or CIDR block"
                ) from None
        self.networks: tuple[_Network, ...] = tuple(parsed)

    def __bool__(self) -> bool:
        return bool(self.networks)

    def __repr__(self) -> str:
        return f"TrustedProxies({[str(n) for n in self.networks]!r})"

    def trusts(self, peer: str | None) -> bool:
        """Whether ``peer`` (an address as the server saw it) is one of the trusted proxies."""
        if not peer or not self.networks:
            return False
        address = _address(peer)
        return address is not None and any(address in net for net in self.networks)

    def resolve(
        self, peer: str | None, forwarded_for: str | None, *, trust_peer: bool = False
    ) -> tuple[str | None, bool]:
        """``(client address, whether forwarding headers may be read)`` for a request from
        ``peer``. ``trust_peer`` believes the peer whatever its address (the deprecated
        ``trust_proxy_headers=True``: exactly one proxy in front)."""
        trusted = trust_peer or self.trusts(peer)
        return self.client_address(peer, forwarded_for, trust_peer=trusted), trusted

    def client_address(
        self, peer: str | None, forwarded_for: str | None, *, trust_peer: bool = False
    ) -> str | None:
        """The client's address: ``peer`` itself unless it is a trusted proxy; then the rightmost
        ``X-Forwarded-For`` entry that is not a trusted proxy. An entry that is not an IP address
        stops the walk: the hop that wrote it is the last one known, and is answered instead."""
        if not (trust_peer or self.trusts(peer)) or not forwarded_for:
            return peer
        hop = peer
        for entry in reversed(forwarded_for.split(",")[-_MAX_HOPS:]):
            address = _address(entry)
            if address is None:
                return hop
            hop = str(address)
            if not any(address in net for net in self.networks):
                return hop
        return hop
