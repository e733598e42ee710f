"""Without proxy keys, the per-minute limit counts each client address on its own; behind an ingress listed in
``server.trusted_proxies`` the address comes from X-Forwarded-For, and from nobody else's.

Loopback has many addresses (127.0.0.0/8): a client bound to 127.0.0.2 is a second address on this machine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from proxy.settings import ConfigError, settings_from_dict
from tests.conftest import base_config


def _client(proxy: Any, source: str = "127.0.0.1") -> httpx.Client:
    return httpx.Client(base_url=proxy.base_url, timeout=10, transport=httpx.HTTPTransport(local_address=source))


def _route(http: httpx.Client, forwarded: str | None = None) -> int:
    headers = {"x-forwarded-for": forwarded} if forwarded else {}
    return http.post("/v1/route", json={"prompt": "hello"}, headers=headers).status_code


def test_without_keys_each_client_address_has_its_own_per_minute_budget(make_proxy: Any) -> None:
    proxy = make_proxy(server={"limit_requests_per_minute": 2})
    with _client(proxy) as first, _client(proxy, "127.0.0.2") as second:
        assert [_route(first) for _ in range(3)] == [200, 200, 429]
        assert [_route(second) for _ in range(3)] == [200, 200, 429]
        # A forwarded address from a peer that is not a trusted proxy is ignored: still the same budget.
        assert _route(first, "198.51.100.7") == 429


def test_behind_a_trusted_proxy_the_forwarded_address_is_the_client(make_proxy: Any) -> None:
    proxy = make_proxy(server={"limit_requests_per_minute": 2, "trusted_proxies": ["127.0.0.1/32"]})
    with _client(proxy) as ingress, _client(proxy, "127.0.0.2") as direct:
        assert [_route(ingress, "203.0.113.5") for _ in range(3)] == [200, 200, 429]
        # Another client behind the ingress; a client-supplied address left of it is not believed.
        assert [_route(ingress, "198.51.100.1, 203.0.113.6") for _ in range(3)] == [200, 200, 429]
        assert _route(ingress, "203.0.113.6") == 429
        # A peer outside the trusted list is counted by its own address, whatever it forwards.
        assert [_route(direct, "203.0.113.99") for _ in range(3)] == [200, 200, 429]
        # A garbled header from the ingress counts against the ingress's own address.
        assert [_route(ingress, "not an address") for _ in range(3)] == [200, 200, 429]


@pytest.mark.parametrize("value", [["not-a-cidr"], [5], "10.0.0.0/8", ["10.0.0.1/33"]])
def test_trusted_proxies_are_validated(tmp_path: Path, value: Any) -> None:
    with pytest.raises(ConfigError, match="server.trusted_proxies"):
        settings_from_dict(base_config(tmp_path, server={"trusted_proxies": value}))
