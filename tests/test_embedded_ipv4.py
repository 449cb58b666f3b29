"""IPv6 addresses that carry an IPv4 address are judged by the IPv4 address too (``strongroom.addresses``).

Every check of an address the hub dials for someone else goes through ``config.internal_address`` (and
``outside_addresses``, which resolves a name and judges each address): a project's C-MOVE destinations at save time
and at each move, a Slurm node's address, the operator's package mirrors. An IPv6 address that carries the hub's own
or an internal IPv4 address (loopback, link-local such as the cloud's metadata service, unspecified, multicast, the
workspaces' subnet) is internal: IPv4-mapped, IPv4-translated, IPv4-compatible, NAT64 (the well-known and the
local-use prefix), 6to4, and Teredo (its server and its obfuscated client). One that carries an outside IPv4
address is not refused for that.

The end-to-end check is the project settings API that takes a C-MOVE destination: it used to save each of these.
"""

from __future__ import annotations

import ipaddress
import re

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from conftest import bearer, token_for
from imaging_support import make_project
from strongroom import addresses
from strongroom.config import NotOutside, WorkspaceSettings, internal_address, outside_addresses
from strongroom.dicomweb.settings import INTERNAL, KEY, MoveDestination, Undialable, dial_address
from strongroom.workspaces import launcher

SUBNET = "10.213.0.0/16"  # the workspaces' subnet of the test settings (the default)
INSIDE = {"127.0.0.1": "loopback", "127.45.6.7": "loopback", "169.254.169.254": "link-local",
          "0.0.0.0": "unspecified", "224.0.0.251": "multicast", "10.213.4.2": "inside the workspaces' subnet"}
OUTSIDE = ("192.0.2.10", "8.8.8.8", "10.1.2.3")  # a private network of its own is no internal address here


def _v4(text: str) -> int:
    return int(ipaddress.IPv4Address(text))


def _v6(value: int) -> str:
    return str(ipaddress.IPv6Address(value))


def _mapped(v4: str) -> str:
    return _v6(0xFFFF << 32 | _v4(v4))


def _translated(v4: str) -> str:
    return _v6(0xFFFF << 48 | _v4(v4))


def _compatible(v4: str) -> str:
    return _v6(_v4(v4))


def _nat64(v4: str) -> str:
    return _v6(0x64FF9B << 96 | _v4(v4))


def _nat64_local(v4: str, length: int) -> str:
    """RFC 6052's placement of the IPv4 address under a prefix of ``length`` bits inside 64:ff9b:1::/48 (bits 64-71
    zero); the prefix's own bits after /48 are set to 0xab where there are any, so they are not mistaken for it."""
    prefix = bytearray(ipaddress.IPv6Address("64:ff9b:1::").packed)
    for i in range(6, length // 8):
        if i != 8:
            prefix[i] = 0xAB
    octets = ipaddress.IPv4Address(v4).packed
    places = {96: [12, 13, 14, 15], 64: [9, 10, 11, 12], 56: [7, 9, 10, 11], 48: [6, 7, 9, 10]}[length]
    for place, octet in zip(places, octets, strict=True):
        prefix[place] = octet
    return str(ipaddress.IPv6Address(bytes(prefix)))


def _sixtofour(v4: str) -> str:
    return _v6(0x2002 << 112 | _v4(v4) << 80 | 1)


def _teredo_server(v4: str) -> str:
    return _v6(0x20010000 << 96 | _v4(v4) << 64 | (_v4("192.0.2.45") ^ 0xFFFFFFFF))


def _teredo_client(v4: str) -> str:
    return _v6(0x20010000 << 96 | _v4("65.54.227.120") << 64 | 0x8000 << 48 | (_v4(v4) ^ 0xFFFFFFFF))


def _spelled(host: str) -> str:
    """As an entry's host may be written (starting and ending with a letter or digit): ``::7f00:1`` in full."""
    return ipaddress.IPv6Address(host).exploded if ":" in (host[0], host[-1]) else host


FORMS = {
    "IPv4-translated": _translated, "IPv4-compatible": _compatible, "NAT64": _nat64,
    "NAT64 local-use /96": lambda v4: _nat64_local(v4, 96), "NAT64 local-use /64": lambda v4: _nat64_local(v4, 64),
    "NAT64 local-use /56": lambda v4: _nat64_local(v4, 56), "NAT64 local-use /48": lambda v4: _nat64_local(v4, 48),
    "6to4": _sixtofour, "Teredo server": _teredo_server, "Teredo client": _teredo_client,
}


def test_the_forms_are_spelled_as_their_standards_have_them() -> None:
    """The addresses the tests build carry the IPv4 address where Python's own readers find it."""
    assert ipaddress.IPv6Address(_mapped("127.0.0.1")).ipv4_mapped == ipaddress.IPv4Address("127.0.0.1")
    assert _nat64("127.0.0.1") == "64:ff9b::7f00:1"
    assert _sixtofour("127.0.0.1") == "2002:7f00:1::1"
    assert ipaddress.IPv6Address(_sixtofour("169.254.169.254")).sixtofour == ipaddress.IPv4Address("169.254.169.254")
    server, client = ipaddress.IPv6Address(_teredo_client("127.0.0.1")).teredo
    assert (str(server), str(client)) == ("65.54.227.120", "127.0.0.1")
    assert ipaddress.IPv6Address(_teredo_server("10.213.0.1")).teredo[0] == ipaddress.IPv4Address("10.213.0.1")
    # RFC 6052 section 2.4's examples, 192.0.2.33 under a /48 and a /64 prefix, placed as the helper places it
    assert _nat64_local("192.0.2.33", 48) == "64:ff9b:1:c000:2:2100::"
    assert _nat64_local("192.0.2.33", 64) == "64:ff9b:1:abab:c0:2:2100:0"


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("inner", INSIDE)
def test_an_ipv6_form_carrying_an_internal_ipv4_address_is_internal(form: str, inner: str) -> None:
    host = FORMS[form](inner)
    why = f"{INSIDE[inner]} by the IPv4 address it carries ({form.split(' /')[0]})"
    if host == "::":  # 0.0.0.0 as IPv4-compatible is the IPv6 unspecified address itself
        why = "unspecified"
    assert internal_address(host, SUBNET) == why, host
    assert internal_address(f"[{host}]", SUBNET) == why  # as a URL writes it
    with pytest.raises(NotOutside, match=f"^is {re.escape(why)}$"):
        outside_addresses(host, 104, SUBNET)


@pytest.mark.parametrize("form", [f for f in FORMS if not f.endswith(("/56", "/48"))])
@pytest.mark.parametrize("inner", OUTSIDE)
def test_an_ipv6_form_carrying_an_outside_ipv4_address_is_judged_like_it(form: str, inner: str) -> None:
    host = FORMS[form](inner)
    assert internal_address(host, SUBNET) is None, host
    assert [ipaddress.ip_address(a) for a in outside_addresses(host, 104, SUBNET)] == [ipaddress.ip_address(host)]


@pytest.mark.parametrize("length", [56, 48])
def test_a_local_use_nat64_address_written_for_a_48_or_56_prefix_is_always_refused(length: int) -> None:
    """Its last 32 bits are zero: were the network's prefix a /96, it would be 0.0.0.0. The hub does not guess."""
    assert internal_address(_nat64_local("192.0.2.10", length), SUBNET) \
        == "unspecified by the IPv4 address it carries (NAT64 local-use)"


@pytest.mark.parametrize("inner", INSIDE)
def test_an_ipv4_mapped_address_is_the_ipv4_address_itself(inner: str) -> None:
    """A dual-stack socket dials the mapped IPv4 address itself: the same kind, said plainly (an operator's pinned
    Slurm host may be ``::ffff:127.0.0.1`` as it may be 127.0.0.1)."""
    assert internal_address(_mapped(inner), SUBNET) == INSIDE[inner]
    assert [form for form, _ in addresses.embedded_ipv4(ipaddress.IPv6Address(_mapped(inner)))] == ["IPv4-mapped"]


def test_the_local_use_nat64_prefix_is_judged_at_every_place_it_may_carry_the_address() -> None:
    """A network may split 64:ff9b:1::/48 into longer prefixes; the hub cannot know which, so every place an
    address is written for (bits 64-71 and the suffix zero) is judged; a place it is not written for is not."""
    for length in (96, 64, 56, 48):
        found = addresses.embedded_ipv4(ipaddress.IPv6Address(_nat64_local("127.0.0.1", length)))
        assert ipaddress.IPv4Address("127.0.0.1") in [inner for _, inner in found], length
    # the usual /96 spelling of an outside address is only that: no other place reads as 0.0.0.0
    assert addresses.embedded_ipv4(ipaddress.IPv6Address("64:ff9b:1::c000:20a")) == [
        ("NAT64 local-use", ipaddress.IPv4Address("192.0.2.10"))]
    # bits 64-71 set: written for the /96 prefix only
    assert [str(i) for _, i in addresses.embedded_ipv4(ipaddress.IPv6Address("64:ff9b:1:7f00:ff00:1::"))] == [
        "0.0.0.0"]


def test_addresses_that_carry_nothing_are_judged_as_before() -> None:
    for host, why in (("::1", "loopback"), ("fe80::1", "link-local"), ("fe80::1%eth0", "link-local"),
                      ("::", "unspecified"), ("ff02::1", "multicast"), ("localhost", "loopback"),
                      ("127.0.0.1", "loopback"), ("169.254.169.254", "link-local")):
        assert internal_address(host, SUBNET) == why, host
    for host in ("2001:db8::1", "2606:4700:4700::1111", "fd00::1", "192.0.2.10", "pacs.example.org",
                 "64:ff9b:2::7f00:1"):  # outside the NAT64 prefixes: nothing is carried
        assert internal_address(host, SUBNET) is None, host
    assert addresses.embedded_ipv4(ipaddress.IPv6Address("2001:db8::7f00:1")) == []


def test_each_move_refuses_a_stored_project_entry_that_carries_loopback() -> None:
    """An entry saved before this check (or by a name that now resolves there) is judged again at each move."""
    for make in FORMS.values():
        with pytest.raises(Undialable) as refused:
            dial_address(MoveDestination(ae_title="PACS", host=_spelled(make("127.0.0.1")), port=104), SUBNET)
        assert refused.value.reason == INTERNAL
    assert dial_address(MoveDestination(ae_title="PACS", host=_nat64("192.0.2.10"), port=104), SUBNET) \
        == _nat64("192.0.2.10")


def test_a_pinned_slurm_host_may_be_loopback_but_not_loopback_carried_elsewhere() -> None:
    assert launcher.dial_address("n1", node="n1", pinned="::ffff:127.0.0.1", subnet=SUBNET) == "::ffff:127.0.0.1"
    for make in FORMS.values():
        with pytest.raises(launcher.AddressRefused, match="slurm_host is loopback by the IPv4 address it carries"):
            launcher.dial_address("n1", node="n1", pinned=make("127.0.0.1"), subnet=SUBNET)
    with pytest.raises(launcher.AddressRefused, match="the Slurm node n1 is link-local by the IPv4 address"):
        launcher.dial_address(_sixtofour("169.254.169.254"), node="n1", pinned="", subnet=SUBNET)


def test_a_package_mirror_carrying_the_metadata_service_is_refused() -> None:
    for make in (_nat64, _sixtofour, _teredo_client):
        with pytest.raises(ValidationError, match="link-local by the IPv4 address it carries"):
            WorkspaceSettings(package_mirrors={"m": {"url": f"http://[{make('169.254.169.254')}]:3141/simple",
                                                     "projects": ["lung"]}})
    WorkspaceSettings(package_mirrors={"m": {"url": f"http://[{_nat64('192.0.2.10')}]:3141/simple",
                                             "projects": ["lung"]}})


def test_a_project_may_not_save_a_move_destination_that_carries_an_internal_address(app, hub, people) -> None:
    """The settings API took each of these as a move destination: the hub would open a C-MOVE association to it."""
    alice = people("alice")
    make_project(hub, "lung", "alice")
    url, headers = f"/api/v1/projects/lung/settings/{KEY}", bearer(token_for(hub, alice))
    with TestClient(app) as c:
        for form, make in FORMS.items():
            for inner in ("127.0.0.1", "169.254.169.254"):
                host = _spelled(make(inner))
                r = c.put(url, json={"value": [{"ae_title": "WS1", "host": host, "port": 104}]}, headers=headers)
                assert r.status_code == 422, (form, host, r.text)
                assert f"by the IPv4 address it carries ({form.split(' /')[0]})" in r.json()["detail"], r.text
        saved = c.get("/api/v1/projects/lung/settings", headers=headers).json()
        assert [x["value"] for x in saved if x["key"] == KEY] in ([], [None], [[]])
        # an outside workstation reached through the network's NAT64 is saved
        outside = {"ae_title": "WS1", "host": _nat64("192.0.2.10"), "port": 104}
        r = c.put(url, json={"value": [outside]}, headers=headers)
        assert r.status_code == 200, r.text
        assert r.json()["value"] == [outside]
