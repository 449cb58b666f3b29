"""The ports test servers get: outside the kernel's ephemeral range, so a server stopped for an outage or a
crash gets its port back when it restarts (no outbound connection or port-0 bind can have taken it)."""

from __future__ import annotations

import contextlib
import socket

from support.live import _ephemeral_low, _port_slice, free_port


def test_test_server_ports_lie_below_the_ephemeral_range_and_are_free():
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == 50  # walked, not re-picked
    assert all(10000 <= p < _ephemeral_low() for p in ports)
    assert all(p in _port_slice() for p in ports)
    for p in ports[:5]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", p))


def test_a_port_in_use_is_skipped():
    last = free_port()
    following = last + 1 if last + 1 in _port_slice() else _port_slice()[0]  # the walk's next candidate
    with socket.socket() as held:
        with contextlib.suppress(OSError):  # in use already: it must be skipped all the same
            held.bind(("127.0.0.1", following))
        assert free_port() != following
