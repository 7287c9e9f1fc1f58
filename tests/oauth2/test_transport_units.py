"""transport.py without servers: the guard's address forms, --deny-cidrs, the SSL context
cache keys and the request limiter."""

from __future__ import annotations

import ipaddress
import ssl

import pytest
import trustme

from tokensync.oauth2 import TLSSettings
from tokensync.transport import (
    NetworkGuard,
    SSLContextCache,
    embedded_ipv4,
    is_denied_address,
    parse_cidrs,
    trust_key,
)

# --- the private-network guard -----------------------------------------------------------

DENIED = [
    "127.0.0.1",
    "127.255.255.254",
    "0.0.0.0",
    "0.1.2.3",
    "::1",
    "::",
    "169.254.169.254",
    "169.254.170.2",  # ECS task metadata (link-local)
    "fe80::1",
    "fe80::1%eth0",
    "168.63.129.16",  # Azure WireServer
    "100.100.100.200",  # Alibaba Cloud metadata
    "fd00:ec2::254",  # AWS IMDS IPv6
    "::ffff:169.254.169.254",  # IPv4-mapped
    "::ffff:127.0.0.1",
    "::ffff:a9fe:a9fe",
    "::ffff:168.63.129.16",
    "64:ff9b::a9fe:a9fe",  # NAT64 well-known prefix -> 169.254.169.254
    "64:ff9b::7f00:1",  # NAT64 -> 127.0.0.1
    "64:ff9b::a83f:8110",  # NAT64 -> 168.63.129.16
    "64:ff9b:1:a9fe:a9:fe00::",  # RFC 8215 local-use /48 -> 169.254.169.254
    "2002:a9fe:a9fe::1",  # 6to4 -> 169.254.169.254
    "::169.254.169.254",  # IPv4-compatible (deprecated)
]
ALLOWED = [
    "93.184.215.14",
    "10.0.0.1",
    "172.16.0.1",
    "192.168.1.1",
    "100.64.0.1",
    "100.100.100.201",
    "168.63.129.17",
    "2606:4700::6810:84e5",
    "fd00:ec2::253",
    "64:ff9b::5db8:d70e",  # NAT64 of a public address
    "::ffff:93.184.215.14",
]


@pytest.mark.parametrize("address", DENIED)
def test_denied(address):
    assert is_denied_address(address) is True
    assert NetworkGuard().denies(address) is True


@pytest.mark.parametrize("address", ALLOWED)
def test_allowed(address):
    assert is_denied_address(address) is False


@pytest.mark.parametrize("address", DENIED)
def test_nothing_is_denied_with_the_guard_off(address):
    assert NetworkGuard(deny_private=False).denies(address) is False
    assert not NetworkGuard(deny_private=False).active


def test_embedded_ipv4():
    v6 = ipaddress.IPv6Address
    assert str(embedded_ipv4(v6("64:ff9b::a9fe:a9fe"))) == "169.254.169.254"
    assert str(embedded_ipv4(v6("64:ff9b:1:a9fe:a9:fe00::"))) == "169.254.169.254"
    assert str(embedded_ipv4(v6("::ffff:10.1.2.3"))) == "10.1.2.3"
    assert embedded_ipv4(v6("2606:4700::1")) is None
    assert embedded_ipv4(v6("::1")) is None


RFC1918 = parse_cidrs(["10.0.0.0/8,172.16.0.0/12", "192.168.0.0/16, fc00::/7"])


@pytest.mark.parametrize(
    "address",
    ["10.0.0.1", "172.31.255.255", "192.168.1.1", "fd12::1", "::ffff:10.0.0.1", "64:ff9b::a00:1"],
)
def test_deny_cidrs(address):
    guard = NetworkGuard(deny_private=False, deny_cidrs=RFC1918)
    assert guard.active
    assert guard.denies(address) is True
    assert NetworkGuard(deny_private=True).denies(address) is False


def test_deny_cidrs_leave_other_addresses():
    guard = NetworkGuard(deny_private=True, deny_cidrs=RFC1918)
    assert not guard.denies("93.184.215.14")
    assert not guard.denies("172.32.0.1")
    assert guard.denies("127.0.0.1")


def test_parse_cidrs():
    assert parse_cidrs([]) == ()
    assert parse_cidrs(["", " , "]) == ()
    assert parse_cidrs(["10.1.2.3"]) == (ipaddress.ip_network("10.1.2.3/32"),)
    assert parse_cidrs(["10.1.2.3/8"]) == (ipaddress.ip_network("10.0.0.0/8"),)
    with pytest.raises(ValueError, match="not-a-network"):
        parse_cidrs(["10.0.0.0/8,not-a-network"])


def test_guard_checks_every_resolved_address():
    with pytest.raises(Exception) as caught:
        NetworkGuard().check_resolved("localhost", 443)
    assert type(caught.value).__name__ == "PrivateNetworkDenied"
    NetworkGuard(deny_private=False).check_resolved("localhost", 443)


# --- SSL context cache ------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


def test_trust_key_holds_digests_not_key_material(ca):
    leaf = ca.issue_cert("client.test")
    key_pem = leaf.private_key_pem.bytes()
    tls = TLSSettings(client_cert_pem=leaf.cert_chain_pems[0].bytes(), client_key_pem=key_pem)
    assert key_pem.decode() not in repr(trust_key(tls))


def test_cache_shares_contexts_per_trust_configuration(ca):
    cache = SSLContextCache()
    pem = ca.cert_pem.bytes()
    first = cache.get(TLSSettings(ca_pem=pem, ca_description="a"))
    assert cache.get(TLSSettings(ca_pem=bytes(pem), ca_description="b")) is first
    insecure = cache.get(TLSSettings(ca_pem=pem, insecure_skip_verify=True))
    assert insecure is not first and insecure.verify_mode == ssl.CERT_NONE
    system = cache.get(TLSSettings())
    assert cache.get(TLSSettings()) is system
    assert system is not first
    assert cache.builds == 3


def test_cache_is_bounded(ca):
    cache = SSLContextCache(maxsize=2)
    cas = [trustme.CA() for _ in range(3)]
    contexts = [cache.get(TLSSettings(ca_pem=c.cert_pem.bytes())) for c in cas]
    assert cache.get(TLSSettings(ca_pem=cas[2].cert_pem.bytes())) is contexts[2]
    cache.get(TLSSettings(ca_pem=cas[0].cert_pem.bytes()))  # evicted: built again
    assert cache.builds == 4


def test_system_store_change_builds_a_new_context(ca, tmp_path, monkeypatch):
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(ca.cert_pem.bytes())
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
    cache = SSLContextCache()
    first = cache.get(TLSSettings())
    assert cache.get(TLSSettings()) is first
    bundle.write_bytes(ca.cert_pem.bytes() + trustme.CA().cert_pem.bytes())
    assert cache.get(TLSSettings()) is not first


# --- flags ------------------------------------------------------------------------------


def test_run_flags_for_the_transport():
    from tokensync.cli import build_parser

    args = build_parser().parse_args(
        ["run", "-A", "--deny-cidrs", "10.0.0.0/8,192.168.0.0/16", "--deny-cidrs", "fc00::/7"]
    )
    assert parse_cidrs(args.deny_cidrs) == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("192.168.0.0/16"),
        ipaddress.ip_network("fc00::/7"),
    )
    assert (args.max_requests, args.max_requests_per_host) == (64, 8)
    args = build_parser().parse_args(
        ["run", "-A", "--max-requests", "5", "--max-requests-per-host", "2"]
    )
    assert (args.max_requests, args.max_requests_per_host) == (5, 2)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "-A", "--max-requests", "0"])


def test_bad_deny_cidrs_stop_the_operator_before_it_starts(capsys):
    from tokensync.cli import main

    assert main(["run", "-A", "--deny-cidrs", "10.0.0.0/33"]) == 2
    assert "10.0.0.0/33" in capsys.readouterr().err
