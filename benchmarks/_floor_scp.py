"""The floor of any Python DICOM receiver built on pynetdicom, for bench_receive.py: a bare Storage SCP with
Strongroom's network settings (128 KiB max PDU, objects streamed to a spool file, TCP_NODELAY, no per-PDU
log descriptions, the event-driven reactors of ``strongroom.imaging.reactor``) that does nothing else with
an object, or only fsyncs it and its directory (concurrently) before the success status (``--fsync``): no
de-identification, no summary, no database, no verification. ``--journal`` measures the cheapest durable
form instead: each object received in memory, written into a pre-zeroed segment file and ``fdatasync``ed —
no file created, renamed or deleted per object, so no filesystem metadata to commit (what a journal spool
could gain over a file per object).

    python benchmarks/_floor_scp.py PORT SPOOL_DIR [--fsync | --journal]
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, _config, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from strongroom.archive.storage.durable import fsync_path
from strongroom.imaging import reactor


def main() -> None:
    port, spool, fsync = int(sys.argv[1]), Path(sys.argv[2]), "--fsync" in sys.argv[3:]
    journal = "--journal" in sys.argv[3:]
    spool.mkdir(parents=True, exist_ok=True)
    reactor.install()
    sys.setswitchinterval(0.001)  # as `strongroom dicom serve`
    _config.STORE_RECV_CHUNKED_DATASET = True
    _config.LOG_HANDLER_LEVEL = "none"  # as the destination: no per-PDU descriptions for a silenced log
    tempfile.tempdir = str(spool)
    dir_fd = os.open(spool, os.O_RDONLY)
    syncer = ThreadPoolExecutor(2)
    count = 0
    segment_size = 64 << 20
    if journal:  # a pre-zeroed segment overwritten in place: an fdatasync with no metadata to commit
        _config.STORE_RECV_CHUNKED_DATASET = False
        seg = os.open(spool / "segment", os.O_RDWR | os.O_CREAT, 0o600)
        zero = bytes(1 << 20)
        for off in range(0, segment_size, len(zero)):
            os.pwrite(seg, zero, off)
        os.fsync(seg)
        os.fsync(dir_fd)
    offset = 0

    def on_store_journal(event: Any) -> int:
        nonlocal offset
        data = event.encoded_dataset()
        if offset + len(data) > segment_size:  # a ring: overwriting in place keeps the file's blocks and size
            offset = 0
        os.pwrite(seg, data, offset)
        offset += len(data)
        os.fdatasync(seg)
        return 0

    def on_store(event: Any) -> int:
        nonlocal count
        target = spool / f"{count}.dcm"
        count += 1
        os.replace(event.dataset_path, target)
        if fsync:  # the file and the directory naming it, concurrently, as Strongroom's spool does
            for done in [syncer.submit(fsync_path, target), syncer.submit(os.fsync, dir_fd)]:
                done.result()
        target.unlink()  # the rounds reuse the directory: keep it small (after the status would be fairer; no matter)
        return 0

    def on_connect(event: Any) -> None:
        event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    ae = AE(ae_title="FLOOR")
    ae.maximum_pdu_size = 128 * 1024
    for cx in AllStoragePresentationContexts:
        if cx.abstract_syntax is not None:
            ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    ae.add_supported_context(Verification)
    ae.start_server(("127.0.0.1", port), block=True,
                    evt_handlers=[(evt.EVT_C_STORE, on_store_journal if journal else on_store),
                                  (evt.EVT_CONN_OPEN, on_connect)])


if __name__ == "__main__":
    main()
