"""Which client a request without a proxy key comes from: its address, or the one an ingress forwarded.

Without proxy keys the client's address stands in for the key (per-minute limits, in-flight shares). Behind
an ingress every request arrives from the ingress's address, so the address in X-Forwarded-For is the client's,
but only when the peer is one of ``server.trusted_proxies``: anyone else could write any address there. The
header is read from the right: each trusted proxy appends the address it got the request from, so the first
address from the right that is not itself a trusted proxy is the client. Entries left of it were written by the
client and are not believed.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Union

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]


def parse_networks(values: Sequence[str]) -> tuple[Network, ...]:
    """The CIDRs of ``server.trusted_proxies``; ValueError naming the first bad one."""
    networks = []
    for value in values:
        if not isinstance(value, str):
            raise ValueError(f"{value!r} is not a CIDR string such as 10.0.0.0/8")
        try:
            networks.append(ipaddress.ip_network(value, strict=False))
        except ValueError:
            raise ValueError(f"{value!r} is not a CIDR such as 10.0.0.0/8 or fd00::/8") from None
    return tuple(networks)


def _trusted(address: str, networks: Sequence[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in networks)


def client_address(peer: str, forwarded: bytes | None, networks: Sequence[Network]) -> str:
    """The client's address for a request from ``peer`` carrying X-Forwarded-For ``forwarded`` (or None)."""
    if not networks or forwarded is None or not _trusted(peer, networks):
        return peer
    hops = [hop.strip() for hop in forwarded.decode("latin-1").split(",")]
    for hop in reversed(hops):
        try:
            ipaddress.ip_address(hop)
        except ValueError:
            return peer  # a garbled header: the peer is all that is known
        if not _trusted(hop, networks):
            return hop
    return hops[0] if hops and hops[0] else peer  # every hop is a trusted proxy: the first is the origin
