"""Event-driven waits for pynetdicom's polling reactors, on the acceptor side.

pynetdicom 3.0's upper-layer (DUL) thread sleeps 1 ms whenever it finds nothing to do, and each
association's reactor sleeps 1 ms between looks at its message queue (its source says "TODO: try and make
this event based"). A C-STORE crosses three of those sleeps between its last PDU arriving and its response
leaving, and on a busy process each sleep also ends in a wait for the GIL: measured, the polling is a
large share of the acknowledgement latency, and sender and receiver wait for each other once per object.

Here, for associations this process accepts, the DUL thread waits in ``select()`` on its socket and a
wake-up pipe (written when a primitive is queued for sending or the reactor is told to stop), and the
association's reactor waits on an event the DUL sets after each state-machine action. Both wake at once
when there is work and at most every ``IDLE_POLL_SECONDS`` otherwise, for the timers and flags they also
poll. Any other thread that polls an association's state (``release()``, ``abort()``, a sub-operation
pausing the reactor) nudges that association's reactor as it polls. Requestor associations keep
pynetdicom's own loops.

Reading a PDU: pynetdicom appends 4 KiB ``recv()`` calls to a growing bytearray (32 calls and as many
reallocations for a 128 KiB PDU); here one buffer of the requested size is filled with ``recv_into``.

Installed once per process by ``install()`` (``strongroom dicom serve`` and the tests' destinations); it
checks that the pinned pynetdicom still has the internals it wraps and otherwise leaves pynetdicom as is.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import sys
import threading
import time
from types import ModuleType
from typing import Any

import structlog
from pynetdicom import association as pynetdicom_association
from pynetdicom import dul as pynetdicom_dul
from pynetdicom import transport as pynetdicom_transport
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider

log = structlog.get_logger("strongroom.dicom")

IDLE_POLL_SECONDS = 0.05  # the longest a reactor waits without news (timers, flags set without a wake-up)
_installed = False


class EventDrivenDUL(DULServiceProvider):
    """A DUL provider that, on an accepted association, waits for its socket or a wake-up instead of
    sleeping."""

    def __init__(self, assoc: Association) -> None:
        super().__init__(assoc)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self.reactor_wake = threading.Event()  # set after each state-machine action: the association may have news
        act = self.state_machine.do_action

        def do_action(event: str) -> None:
            try:
                act(event)
            finally:
                self.reactor_wake.set()

        self.state_machine.do_action = do_action  # type: ignore[method-assign]

    def wake(self) -> None:
        with contextlib.suppress(OSError):  # full (a wake-up is pending anyway) or closed (the reactor ended)
            os.write(self._wake_w, b"\0")

    def send_pdu(self, primitive: Any) -> None:
        super().send_pdu(primitive)
        self.wake()

    def kill_dul(self) -> None:
        super().kill_dul()
        self.wake()

    def run_reactor(self) -> None:
        try:
            super().run_reactor()
        finally:
            self.reactor_wake.set()
            for fd in (self._wake_r, self._wake_w):
                with contextlib.suppress(OSError):
                    os.close(fd)

    def wait_for_work(self, seconds: float) -> None:
        """What the reactor's idle sleep becomes: return when the peer sent something, a primitive was
        queued for sending, or the reactor was told to stop (or after ``IDLE_POLL_SECONDS``)."""
        sock = self.socket.socket if self.socket is not None else None
        if not self.assoc.is_acceptor or sock is None or sock.fileno() < 0:
            time.sleep(seconds)
            return
        pending = getattr(sock, "pending", None)
        if pending is not None and pending():  # TLS: bytes already decrypted, invisible to select()
            return
        try:
            ready, _, _ = select.select([sock.fileno(), self._wake_r], [], [], IDLE_POLL_SECONDS)
        except (OSError, ValueError):  # closed under us: the reactor finds out on its next pass
            return
        if self._wake_r in ready:
            with contextlib.suppress(OSError):
                os.read(self._wake_r, 4096)


_association_reactor = Association._run_reactor.__code__


class _Clock(ModuleType):
    """Stands in for the ``time`` module inside pynetdicom's ``dul`` and ``association`` modules: only
    ``sleep`` differs."""

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    @staticmethod
    def sleep(seconds: float) -> None:
        me = threading.current_thread()
        if isinstance(me, EventDrivenDUL):
            me.wait_for_work(seconds)
            return
        caller = sys._getframe(1)
        if isinstance(me, Association) and me.is_acceptor and caller.f_code is _association_reactor:
            dul = me.dul
            if isinstance(dul, EventDrivenDUL):
                dul.reactor_wake.wait(IDLE_POLL_SECONDS)
                dul.reactor_wake.clear()  # before the reactor looks: news arriving from here on sets it again
                return
        polled = caller.f_locals.get("self")
        if isinstance(polled, Association) and polled is not me and isinstance(polled.dul, EventDrivenDUL):
            polled.dul.reactor_wake.set()  # another thread waits for this association's reactor to act
        time.sleep(seconds)


def _recv_exactly(self: Any, nr_bytes: int) -> bytearray:
    """``AssociationSocket.recv``: read ``nr_bytes`` (fewer only if the peer closed), blocking."""
    sock: socket.socket = self.socket
    buffer = bytearray(nr_bytes)
    view = memoryview(buffer)
    nr_read = 0
    while nr_read < nr_bytes:
        got = sock.recv_into(view[nr_read:], nr_bytes - nr_read)
        if not got:  # the connection was broken: what arrived so far (pynetdicom's contract)
            del view
            del buffer[nr_read:]
            return buffer
        nr_read += got
    return buffer


def install() -> None:
    global _installed
    if _installed:
        return
    wrapped = (all(hasattr(DULServiceProvider, name) for name in ("run_reactor", "send_pdu", "kill_dul"))
               and hasattr(Association, "_run_reactor") and hasattr(pynetdicom_transport.AssociationSocket, "recv")
               and getattr(pynetdicom_association, "DULServiceProvider", None) is DULServiceProvider
               and getattr(pynetdicom_association, "time", None) is time
               and getattr(pynetdicom_dul, "time", None) is time)
    if not wrapped:
        log.warning("dicom.reactor_not_installed", reason="pynetdicom's internals differ from the pinned version")
        return
    pynetdicom_association.DULServiceProvider = EventDrivenDUL  # type: ignore[misc]
    clock = _Clock("time")
    pynetdicom_association.time = clock
    pynetdicom_dul.time = clock
    pynetdicom_transport.AssociationSocket.recv = _recv_exactly  # type: ignore[method-assign]
    _installed = True
