"""Whether an address the hub would dial for someone else is the hub's own machine or its internals: one pure
judgment every check of an outbound address uses (``config.internal_address``, and through it
``config.outside_addresses``: a project's C-MOVE destinations, a Slurm node's address, the workspaces' package
mirrors and egress rules).

Internal: loopback, link-local (the cloud's metadata service at 169.254.169.254), unspecified, multicast, or inside
the workspaces' subnet (each workspace's host side is the hub's machine itself).

An IPv6 address can carry an IPv4 address; the IPv4 address it carries is judged too, and an address that carries
an internal one is internal:

- IPv4-mapped ``::ffff:a.b.c.d``: a dual-stack socket dials the IPv4 address itself, so it is judged as that
  address (``::ffff:127.0.0.1`` is loopback, as 127.0.0.1 is);
- IPv4-translated ``::ffff:0:a.b.c.d`` (SIIT, RFC 6145);
- IPv4-compatible ``::a.b.c.d`` (deprecated, RFC 4291);
- NAT64, the well-known prefix ``64:ff9b::/96`` (RFC 6052) and the local-use ``64:ff9b:1::/48`` (RFC 8215): a
  network may use the local-use prefix as it is or split into longer prefixes (/48, /56, /64 or /96), each of which
  puts the IPv4 address at another place, and this hub cannot know which one its network uses: the IPv4 address at
  every place the address is written for (bits 64-71 and the bits after the IPv4 address zero, as RFC 6052 has
  them) is judged. The last 32 bits are always one of those places; in an address written for a /48 or /56 prefix
  they are zero, read as 0.0.0.0 (unspecified): such an address is always refused, a price paid for never guessing
  the network's prefix length wrong;
- 6to4 ``2002::/16`` (RFC 3056): the relay's IPv4 address;
- Teredo ``2001::/32`` (RFC 4380): the server's IPv4 address and the client's (stored obfuscated, judged as the
  client's address).

No web, database or settings import: a pure function of its text.
"""

from __future__ import annotations

import ipaddress

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
_TRANSLATED = ipaddress.IPv6Network("::ffff:0:0:0/96")
_COMPATIBLE = ipaddress.IPv6Network("::/96")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")
# RFC 6052 section 2.2: for each prefix length, where the 32 bits of the IPv4 address lie, as byte slices of the
# 16-byte address (byte 8, bits 64-71, the "u" octet, never holds any of them), and from which byte on the suffix
# runs (zero in an address written for that prefix length; the "u" octet is zero too); /96 first, the usual one
_RFC6052 = {96: (((12, 16),), 16), 64: (((9, 13),), 13), 56: (((7, 8), (9, 12)), 12), 48: (((6, 8), (9, 11)), 11)}


def parse(host: str) -> IPAddress | None:
    """``host`` as an IP address (an IPv6 one may be written in brackets, with a zone), or None for a name."""
    try:
        return ipaddress.ip_address(host.strip().strip("[]"))
    except ValueError:
        return None


def _rfc6052(address: ipaddress.IPv6Address, lengths: tuple[int, ...]) -> list[ipaddress.IPv4Address]:
    """The IPv4 address ``address`` carries for each prefix length it is written for (RFC 6052)."""
    packed, out = address.packed, []
    for length in lengths:
        places, suffix = _RFC6052[length]
        if length == 96 or (packed[8] == 0 and not any(packed[suffix:])):
            out.append(ipaddress.IPv4Address(b"".join(packed[a:b] for a, b in places)))
    return out


def embedded_ipv4(address: ipaddress.IPv6Address) -> list[tuple[str, ipaddress.IPv4Address]]:
    """Each IPv4 address ``address`` carries, with the name of the form that carries it (see the module)."""
    if address in _MAPPED:
        return [("IPv4-mapped", ipaddress.IPv4Address(address.packed[12:]))]
    if address in _TRANSLATED:
        return [("IPv4-translated", ipaddress.IPv4Address(address.packed[12:]))]
    if address in _COMPATIBLE:
        return [("IPv4-compatible", ipaddress.IPv4Address(address.packed[12:]))]
    if address in _NAT64:
        return [("NAT64", inner) for inner in _rfc6052(address, (96,))]
    if address in _NAT64_LOCAL:
        return [("NAT64 local-use", inner) for inner in _rfc6052(address, tuple(_RFC6052))]
    if address.sixtofour is not None:
        return [("6to4", address.sixtofour)]
    if address.teredo is not None:
        server, client = address.teredo
        return [("Teredo server", server), ("Teredo client", client)]
    return []


def _own_kind(address: IPAddress, subnet: str) -> str | None:
    for why, hit in (("loopback", address.is_loopback), ("link-local", address.is_link_local),
                     ("unspecified", address.is_unspecified), ("multicast", address.is_multicast)):
        if hit:
            return why
    try:
        workspaces = ipaddress.ip_network(subnet, strict=False)
    except ValueError:
        return None
    return "inside the workspaces' subnet" if address in workspaces else None


def internal_kind(address: IPAddress, subnet: str) -> str | None:
    """Why ``address`` is the hub's machine or its internals (see the module), or None. An IPv4-mapped address is
    judged as the IPv4 address it maps (``"loopback"``); any other form that carries an internal IPv4 address says
    so (``"loopback by the IPv4 address it carries (6to4)"``). Names no address."""
    if (why := _own_kind(address, subnet)) is not None:
        return why
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    hits = [(why, form) for form, inner in embedded_ipv4(address) if (why := _own_kind(inner, subnet)) is not None]
    if not hits:
        return None
    # of several places (NAT64 local-use), the one that tells most: an all-zero place reads as unspecified
    why, form = next((hit for hit in hits if hit[0] != "unspecified"), hits[0])
    return why if form == "IPv4-mapped" else f"{why} by the IPv4 address it carries ({form})"


def internal_host(host: str, subnet: str) -> str | None:
    """``internal_kind`` of a host as written: a name is judged by its spelling only (``localhost`` and
    ``*.localhost`` are loopback; any other name None: where it leads is for its resolution to say)."""
    name = host.strip().strip("[]").rstrip(".").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return "loopback"
    address = parse(name)
    return None if address is None else internal_kind(address, subnet)
