"""pynetdicom's reactors made event-driven (`strongroom.imaging.reactor`): an accepted association still
sees every PDU (also when they arrive in small pieces), answers at once, ends on release, on a peer's
abort and on a dropped connection, and still times out a silent peer."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from io import BytesIO

import pytest
from pydicom import dcmread
from pynetdicom import AE, evt
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]

from helpers import wait_until
from strongroom.imaging import reactor
from strongroom.imaging.synthetic import make_ct
from support.live import free_port


@pytest.fixture
def acceptor() -> Iterator[tuple[int, list[str], list[type]]]:
    """A storage SCP with the reactors installed; the SOP Instance UIDs it stored and the DUL classes of
    its associations."""
    reactor.install()
    stored: list[str] = []
    duls: list[type] = []

    def on_store(event: evt.Event) -> int:
        stored.append(str(event.dataset.SOPInstanceUID))
        return 0

    def on_open(event: evt.Event) -> None:
        duls.append(type(event.assoc.dul))

    ae = AE(ae_title="REACTOR")
    ae.network_timeout = 2
    ae.add_supported_context(CTImageStorage)
    ae.add_supported_context(Verification)
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False,
                             evt_handlers=[(evt.EVT_C_STORE, on_store), (evt.EVT_CONN_OPEN, on_open)])
    try:
        yield port, stored, duls
    finally:
        server.shutdown()


def _requestor() -> AE:
    ae = AE(ae_title="SENDER")
    ae.add_requested_context(CTImageStorage)
    ae.add_requested_context(Verification)
    return ae


def _objects(n: int) -> list:
    return [dcmread(BytesIO(make_ct(7, 0, 1, i, rows=64, columns=64))) for i in range(n)]


def test_stores_echo_and_release_through_the_event_driven_reactors(acceptor) -> None:
    port, stored, duls = acceptor
    objects = _objects(30)
    assoc = _requestor().associate("127.0.0.1", port, ae_title="REACTOR")
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0
    for ds in objects:
        assert assoc.send_c_store(ds).Status == 0
    assoc.release()
    assert assoc.is_released
    assert stored == [str(ds.SOPInstanceUID) for ds in objects]
    assert duls == [reactor.EventDrivenDUL]


class _TrickleProxy:
    """Forwards a requestor's bytes to the acceptor a few bytes at a time (every PDU arrives in pieces) and
    the answers back as they come."""

    def __init__(self, target: int, piece: int = 7) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.target, self.piece = target, piece
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        client, _ = self.listener.accept()
        upstream = socket.create_connection(("127.0.0.1", self.target))
        for s in (client, upstream):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=self._pump, args=(client, upstream, self.piece), daemon=True).start()
        threading.Thread(target=self._pump, args=(upstream, client, 1 << 16), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket, piece: int) -> None:
        try:
            while data := src.recv(1 << 16):
                for at in range(0, len(data), piece):
                    dst.sendall(data[at:at + piece])
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)


def test_pdus_arriving_in_small_pieces_are_read_whole(acceptor) -> None:
    port, stored, _ = acceptor
    proxy = _TrickleProxy(port, piece=97)
    objects = _objects(3)
    assoc = _requestor().associate("127.0.0.1", proxy.port, ae_title="REACTOR")
    assert assoc.is_established
    for ds in objects:
        assert assoc.send_c_store(ds).Status == 0
    assoc.release()
    assert stored == [str(ds.SOPInstanceUID) for ds in objects]


def test_an_abort_and_a_dropped_connection_end_the_association(acceptor) -> None:
    port, stored, _ = acceptor
    assoc = _requestor().associate("127.0.0.1", port, ae_title="REACTOR")
    assert assoc.send_c_store(_objects(1)[0]).Status == 0
    assoc.abort()
    assert assoc.is_aborted
    # the acceptor's side of an aborted association is gone: a new one is accepted and served
    again = _requestor().associate("127.0.0.1", port, ae_title="REACTOR")
    assert again.is_established and again.send_c_echo().Status == 0
    again.release()
    # a requestor whose connection drops mid-PDU: the acceptor ends the association (no hang)
    raw = socket.create_connection(("127.0.0.1", port))
    raw.sendall(b"\x01\x00\x00\x00\x10\x00" + b"\x00" * 5)  # an A-ASSOCIATE-RQ header and 5 of its 4096 bytes
    raw.close()
    last = _requestor().associate("127.0.0.1", port, ae_title="REACTOR")
    assert last.is_established
    last.release()
    assert len(stored) == 1


def test_a_silent_peer_is_timed_out(acceptor) -> None:
    """The acceptor's network timeout (2 s here) still fires while its reactors wait for work."""
    port, _, _ = acceptor
    assoc = _requestor().associate("127.0.0.1", port, ae_title="REACTOR")
    assert assoc.is_established
    # send nothing: the acceptor aborts the idle association and the requestor sees it
    wait_until(lambda: assoc.is_aborted or not assoc.is_established, timeout=30, step=0.05)
