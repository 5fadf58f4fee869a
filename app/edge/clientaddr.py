"""Who the client is: the TCP peer, unless the peer is a proxy we were told to trust.

uvicorn's own proxy-headers mode is always off (both starts): it would replace the peer
with whatever ``X-Forwarded-For`` claims from 127.0.0.1, and the peer would be lost for
the ``X-Forwarded-For`` the origin is sent. With ``SLICECACHE_TRUSTED_PROXIES`` the client
is the right-most address of ``X-Forwarded-For`` that is not one of those proxies, as
nginx's realip module with ``real_ip_recursive on`` finds it; it is used for the admin
network check and the access log only.
"""

from __future__ import annotations

import ipaddress

from starlette.types import Scope

CLIENT_KEY = "slicecache.client"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class TrustedProxies:
    def __init__(self, networks: list[str]) -> None:
        self.networks: list[Network] = [ipaddress.ip_network(n, strict=False) for n in networks]

    def _trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self.networks)

    def client(self, scope: Scope) -> str | None:
        peer = scope.get("client")
        address: str | None = peer[0] if peer else None
        if not self.networks or address is None or not self._trusted(address):
            return address
        hops = [
            hop.strip()
            for name, value in scope["headers"]
            if name == b"x-forwarded-for"
            for hop in value.decode("latin-1").split(",")
        ]
        for hop in reversed(hops):
            if not hop:
                continue
            if not self._trusted(hop):
                return hop if _is_ip(hop) else address
            address = hop
        return address


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def client_of(scope: Scope) -> str | None:
    """The client address the access-log middleware settled, else the TCP peer."""
    known = scope.get(CLIENT_KEY)
    if isinstance(known, str):
        return known
    peer = scope.get("client")
    return peer[0] if peer else None
