"""The SSRF guard's classification of addresses and host names. Nothing here connects."""

from __future__ import annotations

import socket

import pytest

from conveyor.core.netguard import (
    BlockedDestination,
    InvalidUrl,
    NetPolicy,
    address_problem,
)
from conveyor.core.settings import Settings


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("172.31.255.254", "private"),
        ("192.168.1.1", "private"),
        ("100.64.0.1", "carrier-grade NAT"),
        ("100.127.255.254", "carrier-grade NAT"),
        ("169.254.169.254", "metadata"),
        ("169.254.1.1", "link-local"),
        ("fe80::1", "link-local"),
        ("fe80::1%2", "link-local"),
        ("fd00::1", "private"),
        ("fc00::1", "private"),
        ("fd00:ec2::254", "metadata"),
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:10.0.0.1", "private"),
        ("::ffff:169.254.169.254", "metadata"),
        ("64:ff9b::a00:1", "private"),  # NAT64 of 10.0.0.1
        ("2002:7f00:1::1", "loopback"),  # 6to4 of 127.0.0.1
        ("0.0.0.0", "unspecified"),  # noqa: S104 - classified, never bound
        ("::", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "reserved"),
        ("192.0.2.10", "private"),  # documentation range
    ],
)
def test_forbidden_addresses(address: str, reason: str) -> None:
    problem = address_problem(address)
    assert problem is not None
    assert reason in problem


@pytest.mark.parametrize(
    "address", ["93.184.216.34", "8.8.8.8", "1.1.1.1", "2606:2800:220:1:248:1893:25c8:1946"]
)
def test_public_addresses_are_allowed(address: str) -> None:
    assert address_problem(address) is None


def test_allowing_private_networks_still_refuses_metadata() -> None:
    assert address_problem("127.0.0.1", allow_private=True) is None
    assert address_problem("10.0.0.1", allow_private=True) is None
    assert address_problem("169.254.169.254", allow_private=True) == "cloud metadata endpoint"
    policy = NetPolicy(allow_private=True, resolver=lambda host, port: ["127.0.0.1"])
    assert policy.vet_host("receiver.test", 80) == ["127.0.0.1"]
    with pytest.raises(BlockedDestination):
        policy.vet_host("metadata.google.internal", 80)


def fixed(table: dict[str, list[str]]) -> NetPolicy:
    def resolve(host: str, port: int) -> list[str]:
        if host not in table:
            raise socket.gaierror(f"{host} not found")
        return table[host]

    return NetPolicy(allow_private=False, resolver=resolve)


def test_every_resolved_address_is_checked() -> None:
    # One public and one private answer: the client could pick either, so refuse.
    policy = fixed({"mixed.test": ["93.184.216.34", "10.0.0.7"], "ok.test": ["93.184.216.34"]})
    with pytest.raises(BlockedDestination, match=r"mixed\.test \(10\.0\.0\.7\): private"):
        policy.vet_host("mixed.test", 443)
    assert policy.vet_host("ok.test", 443) == ["93.184.216.34"]


def test_host_names_refused_before_resolution() -> None:
    policy = fixed({})
    for name in ("localhost", "api.localhost", "metadata.google.internal", "METADATA.GOOG."):
        with pytest.raises(BlockedDestination):
            policy.vet_host(name, 80)


def test_ip_literals_are_not_resolved() -> None:
    policy = fixed({})
    assert policy.vet_host("93.184.216.34", 80) == ["93.184.216.34"]
    with pytest.raises(BlockedDestination, match="loopback"):
        policy.vet_host("[::1]", 80)


def test_check_url() -> None:
    policy = fixed({"hooks.test": ["93.184.216.34"], "internal.test": ["192.168.0.5"]})
    assert policy.check_url("https://hooks.test/receive") == ["93.184.216.34"]
    # A name that does not resolve yet is no reason to refuse; every connect checks again.
    assert policy.check_url("https://not-yet.test/") == []
    with pytest.raises(BlockedDestination, match="private"):
        policy.check_url("https://internal.test/")
    with pytest.raises(BlockedDestination, match="CONVEYOR_ALLOW_PRIVATE_NETWORKS"):
        policy.check_url("http://127.0.0.1:8080/")
    with pytest.raises(BlockedDestination, match="scheme"):
        policy.check_url("ftp://hooks.test/")
    with pytest.raises(BlockedDestination, match="scheme"):
        policy.check_url("file:///etc/passwd")
    with pytest.raises(InvalidUrl):
        policy.check_url("/relative/path")


def test_policy_follows_the_setting() -> None:
    assert NetPolicy.from_settings(Settings()).allow_private is False
    assert NetPolicy.from_settings(Settings(allow_private_networks=True)).allow_private is True
