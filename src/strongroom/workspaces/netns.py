"""Egress control for one workspace: its own network namespace, a veth pair to the hub's namespace and
nftables rules inside it. Pure plumbing (``ip`` and ``nft``), no database or web imports.

Inside the namespace (table ``inet strongroom``) the output chain's policy is drop: loopback, replies to
connections the hub opened (the proxy reaching Jupyter), new connections to the hub's API port on the veth's
host side and to each allow-listed ``(address, port)`` are accepted; everything else is rejected (TCP reset,
so a refused connection is told at once). The input chain accepts only loopback, replies, and the hub's
connections to Jupyter's port. Another workspace's address is never in the allow-list, so it is unreachable.

Allow-listed destinations beyond the hub are routed by the hub's namespace (``ip_forward``; if the host
forwarded nothing before, a guard rule keeps dropping every forwarded packet that is not to or from a
workspace veth, so the host does not become a router for anything else); a table there
(``inet strongroom_ws``) accepts forwarded packets from a workspace veth only to that workspace's list —
defence in depth should the namespace's own rules ever be changed from inside (they cannot be: the process
has no CAP_NET_ADMIN).
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
from dataclasses import dataclass, field

JUPYTER_PORT = 8888


class NetnsError(RuntimeError):
    pass


@dataclass(frozen=True)
class Plan:
    """One workspace's namespace: names, the /30 addresses, what it may reach."""

    name: str  # namespace name, e.g. "srws-0ad5000c" (the /30's address in hex)
    host_if: str  # veth end in the hub's namespace
    ns_if: str  # veth end inside the workspace's namespace
    host_ip: str
    ns_ip: str
    hub_port: int
    allowed: tuple[tuple[str, int], ...] = field(default_factory=tuple)  # (address or network, port)
    jupyter_port: int = JUPYTER_PORT


def plan_for(slot: int, subnet: str, *, hub_port: int, allowed: list[tuple[str, int]]) -> Plan:
    """Slot ``n`` gets the n-th /30 of ``subnet``: ``.1`` on the host side, ``.2`` in the namespace (IPv4 only:
    interface names hold the block's address in 8 hex digits)."""
    net: ipaddress.IPv4Network | ipaddress.IPv6Network = ipaddress.ip_network(subnet)
    blocks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = list(net.subnets(new_prefix=30))
    for i, block in enumerate(blocks):
        if i == slot:
            hosts = [str(h) for h in block.hosts()]
            # Named after the block's address, not the slot: namespaces and links are global to the host, so
            # two hubs (or test workers) with different subnets never share a name, and a leftover torn down
            # before setup can only be one with this very address.
            tag = f"{int(block.network_address):08x}"
            return Plan(name=f"srws-{tag}", host_if=f"srwh{tag}", ns_if=f"srwn{tag}", host_ip=hosts[0],
                        ns_ip=hosts[1], hub_port=hub_port, allowed=tuple(allowed))
    raise NetnsError(f"subnet {subnet} has no room for workspace slot {slot}")


def missing() -> str | None:
    """Why namespaces cannot be made here, or None."""
    if os.geteuid() != 0:
        return "the hub does not run as root"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed (Debian: iproute2, nftables)"
    return None


def nft_rules(plan: Plan) -> str:
    """The namespace's ruleset (``nft -f``)."""
    allow = "\n".join(
        f"    {'ip6' if ipaddress.ip_network(a, strict=False).version == 6 else 'ip'} daddr {a} "
        f"tcp dport {p} accept" for a, p in plan.allowed)
    return f"""table inet strongroom {{
  chain output {{
    type filter hook output priority 0; policy drop;
    oif "lo" accept
    ct state established,related accept
    ip daddr {plan.host_ip} tcp dport {plan.hub_port} accept
{allow}
    meta l4proto tcp reject with tcp reset
    reject
  }}
  chain input {{
    type filter hook input priority 0; policy drop;
    iif "lo" accept
    ct state established,related accept
    ip saddr {plan.host_ip} tcp dport {plan.jupyter_port} accept
  }}
}}
"""


def _chain(plan: Plan) -> str:
    return "ws_" + plan.name.replace("-", "_")


def host_rules(plan: Plan) -> str:
    """The hub namespace's forward rules for this workspace (its own chain in table ``inet strongroom_ws``)."""
    allow = "".join(f"add rule inet strongroom_ws {_chain(plan)} ip daddr {a} tcp dport {p} accept\n"
                    for a, p in plan.allowed if ipaddress.ip_network(a, strict=False).version == 4)
    return (
        "add table inet strongroom_ws\n"
        "add chain inet strongroom_ws forward { type filter hook forward priority 0; policy accept; }\n"
        f"add chain inet strongroom_ws {_chain(plan)}\n"
        f"add rule inet strongroom_ws {_chain(plan)} ct state established,related accept\n"
        f"{allow}"
        f"add rule inet strongroom_ws {_chain(plan)} reject\n"
        f'add rule inet strongroom_ws forward iifname "{plan.host_if}" jump {_chain(plan)}\n')


FORWARD_GUARD = ('add rule inet strongroom_ws forward iifname != "srwh*" oifname != "srwh*" drop '
                 'comment "forwarding was off before the workspaces needed it"\n')


def _forwarding_off() -> bool:
    with open("/proc/sys/net/ipv4/ip_forward") as f:
        return f.read().strip() == "0"


def _run(args: list[str], *, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(args, input=stdin, capture_output=True, text=True, timeout=30, check=False)
    if check and done.returncode != 0:
        raise NetnsError(f"{' '.join(args[:4])}: {(done.stderr or done.stdout).strip()}")
    return done


def setup(plan: Plan) -> None:
    """Create the namespace, the veth pair, addresses, routes and both rulesets. On failure, undo."""
    try:
        _run(["ip", "netns", "add", plan.name])
        _run(["ip", "link", "add", plan.host_if, "type", "veth", "peer", "name", plan.ns_if])
        _run(["ip", "link", "set", plan.ns_if, "netns", plan.name])
        _run(["ip", "addr", "add", f"{plan.host_ip}/30", "dev", plan.host_if])
        _run(["ip", "link", "set", plan.host_if, "up"])
        ns = ["ip", "netns", "exec", plan.name]
        _run([*ns, "ip", "addr", "add", f"{plan.ns_ip}/30", "dev", plan.ns_if])
        _run([*ns, "ip", "link", "set", plan.ns_if, "up"])
        _run([*ns, "ip", "link", "set", "lo", "up"])
        _run([*ns, "ip", "route", "add", "default", "via", plan.host_ip])
        _run([*ns, "nft", "-f", "-"], stdin=nft_rules(plan))
        # create the table and chains if absent, then (re)fill this workspace's chain
        _run(["nft", "-f", "-"], stdin=host_rules(plan))
        if plan.allowed and _forwarding_off():
            # Routing for the workspaces must not turn the host into a router for anything else: the host
            # forwarded nothing before, so everything not to or from a workspace veth stays dropped.
            _run(["nft", "-f", "-"], stdin=FORWARD_GUARD)
            _run(["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])
    except NetnsError:
        teardown(plan)
        raise


def reapply(plan: Plan) -> None:
    """Replace a running workspace's allow-list (both rulesets) with ``plan``'s, each in one nft transaction, so
    a destination the project closed is closed for the workspaces already running too. (A TCP connection
    already open to it is not cut: conntrack lets established flows finish.)"""
    allow = "".join(f"add rule inet strongroom_ws {_chain(plan)} ip daddr {a} tcp dport {p} accept\n"
                    for a, p in plan.allowed if ipaddress.ip_network(a, strict=False).version == 4)
    _run(["ip", "netns", "exec", plan.name, "nft", "-f", "-"],
         stdin="table inet strongroom {}\ndelete table inet strongroom\n" + nft_rules(plan))
    _run(["nft", "-f", "-"], stdin=(
        f"flush chain inet strongroom_ws {_chain(plan)}\n"
        f"add rule inet strongroom_ws {_chain(plan)} ct state established,related accept\n"
        f"{allow}"
        f"add rule inet strongroom_ws {_chain(plan)} reject\n"))


def teardown(plan: Plan) -> None:
    """Remove everything ``setup`` made; idempotent (missing parts are fine)."""
    listed = _run(["nft", "-a", "list", "chain", "inet", "strongroom_ws", "forward"], check=False)
    for line in listed.stdout.splitlines():
        if f'"{plan.host_if}"' in line and "# handle" in line:
            handle = line.rsplit("# handle", 1)[1].strip()
            _run(["nft", "delete", "rule", "inet", "strongroom_ws", "forward", "handle", handle], check=False)
    _run(["nft", "delete", "chain", "inet", "strongroom_ws", _chain(plan)], check=False)
    _run(["ip", "link", "del", plan.host_if], check=False)  # removes the peer too
    _run(["ip", "netns", "del", plan.name], check=False)


def exists(name: str) -> bool:
    return name in _run(["ip", "netns", "list"], check=False).stdout.split()


def wrap(plan: Plan, argv: list[str]) -> list[str]:
    """``argv`` run inside the namespace."""
    return ["ip", "netns", "exec", plan.name, *argv]
