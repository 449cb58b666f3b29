"""One de-identification call: the walk over the parsed elements that emits the output chunks."""

from __future__ import annotations

from typing import Any

from pydicom.charset import decode_bytes, encode_string
from pydicom.datadict import DicomDictionary

from strongroom.imaging.deid_table import EDITION

from .dates import shift_values
from .encoding import LE, UNDEF, Codec, El, encode_element, pad, sequence_items, tagstr
from .plan import (
    AE_TOKEN,
    CLEAN,
    DUMMY,
    KEEP,
    MODE_CLEAN,
    MODE_DUMMY,
    NORMAL,
    OP_CODE,
    PATIENT_ID,
    PATIENT_NAME,
    PIXEL_DATA_TAG,
    REMOVE,
    SEQ,
    SEQ_CLEAN,
    SEQ_DUMMY,
    SHIFT,
    TEXT_VRS,
    UID,
    ZERO,
    Entry,
    Plan,
)
from .pseudonyms import Pseudonymizer
from .result import LogEntry
from .text import TextCleaner

_DUMMY = {
    b"AE": b"ANONYMIZED", b"AS": b"000Y", b"CS": b"ANONYMIZED", b"DA": b"19000101", b"DS": b"0 ",
    b"DT": b"19000101000000", b"IS": b"0 ", b"LO": b"ANONYMIZED", b"LT": b"ANONYMIZED", b"PN": b"ANONYMIZED^ ",
    b"SH": b"ANONYMIZED", b"ST": b"ANONYMIZED", b"TM": b"000000", b"UC": b"ANONYMIZED", b"UR": b"ANONYMIZED",
    b"UT": b"ANONYMIZED", b"US": b"\0\0", b"SS": b"\0\0", b"UL": b"\0" * 4, b"SL": b"\0" * 4, b"FL": b"\0" * 4,
    b"AT": b"\0" * 4, b"FD": b"\0" * 8, b"SV": b"\0" * 8, b"UV": b"\0" * 8,
}
_MAX_LEN = {b"AE": 16, b"CS": 16, b"SH": 16, b"LO": 64, b"ST": 1024, b"LT": 10240, b"PN": 64, b"UC": 0xFFFE}
# coded-entry attributes: kept inside dummy sequences when the coding scheme is a standard one
_CODE_TAGS = frozenset({0x00080100, 0x00080102, 0x00080103, 0x00080104, 0x00080119, 0x00080120, 0x0008010F,
                        0x00080105})


class Run:
    """State of one de-identification call."""

    def __init__(self, plan: Plan, pseudo: Pseudonymizer, buf: bytes) -> None:
        self.plan = plan
        self.pseudo = pseudo
        self.buf = buf
        self.mv = memoryview(buf)
        self.log: list[LogEntry] = []
        self.misses: list[str] = []
        self.encodings: list[str] = ["iso8859"]
        self.simple_codec: str | None = "latin_1"
        self.pseudonym = ""
        self.shift: int | None = None
        self.identifiers: list[str] = []
        self._cleaner: TextCleaner | None = None

    # ---- values
    def text(self, raw: bytes | memoryview, vr: bytes) -> str:
        raw = bytes(raw)
        if self.simple_codec:
            return raw.decode(self.simple_codec, "replace").rstrip("\0 ")
        delims = {0x5C} if vr not in (b"LT", b"ST", b"UT") else {0x0D, 0x0A, 0x09, 0x0C}
        if vr == b"PN":
            delims = {0x5E, 0x3D, 0x5C}
        return decode_bytes(raw, self.encodings, delims).rstrip("\0 ")

    def encode(self, text: str, vr: bytes) -> bytes:
        limit = _MAX_LEN.get(vr)
        if limit and vr not in (b"LT", b"ST", b"UT", b"UC"):
            text = "\\".join(v[:limit] for v in text.split("\\"))
        elif limit:
            text = text[:limit]
        if self.simple_codec:
            return pad(text.encode(self.simple_codec, "replace"), vr)
        return pad(encode_string(text, self.encodings), vr)

    @property
    def cleaner(self) -> TextCleaner:
        if self._cleaner is None:
            self._cleaner = TextCleaner(self.identifiers)
        return self._cleaner

    def uids(self, raw: bytes | memoryview) -> bytes:
        return self.pseudo.uid_value(bytes(raw))

    # ---- the walk
    def emit(self, elems: list[El], codec: Codec, explicit: bool, mode: int, path: str, out: list[Any],
             inserts: list[tuple[int, bytes]] | None = None) -> None:
        plan, mv, log = self.plan, self.mv, self.log
        ops, const, logs = plan.ops, plan.const_elements, plan.const_logs
        private = self.private_decisions(elems, explicit, path)
        ins_i, ins_n = 0, len(inserts) if inserts else 0
        inserts = inserts or []
        next_ins = inserts[0][0] if ins_n else 0x1_0000_0000
        run_s = run_e = -1
        scheme_local: bool | None = None
        for el in elems:
            tag = el[0]
            if tag >= next_ins:
                while ins_i < ins_n and inserts[ins_i][0] <= tag:
                    if run_s >= 0:
                        out.append(mv[run_s:run_e])
                        run_s = run_e = -1
                    if inserts[ins_i][0] == tag:
                        log.append(LogEntry(tagstr(tag), DicomDictionary.get(tag, ("",) * 5)[4],
                                            "replaced by the engine", "D"))
                        tag = -1
                    out.append(inserts[ins_i][1])
                    ins_i += 1
                next_ins = inserts[ins_i][0] if ins_i < ins_n else 0x1_0000_0000
                if tag == -1:
                    continue
            if tag & 0x10000:
                entry = private.get(tag)
                if entry is None:
                    continue  # removed; logged per block by private_decisions
            else:
                entry = ops.get(tag) or plan.fallback(tag)
            op = entry[0]
            if op < SEQ and op != REMOVE and (el[5] or el[1] == b"SQ") and tag != PIXEL_DATA_TAG:
                # encoded as a sequence although the plan expected a plain value: never copy it unprocessed
                op = SEQ if op == KEEP else SEQ_DUMMY if op == DUMMY else SEQ_CLEAN if op == CLEAN else ZERO
            if mode and op in (KEEP, SEQ, SEQ_CLEAN):
                fvr = el[1]
                vr = fvr if explicit and fvr is not None and fvr != b"UN" else entry[1]
                if op != KEEP:
                    op = SEQ_DUMMY if mode == MODE_DUMMY else SEQ_CLEAN
                elif vr in TEXT_VRS or vr == b"UN":
                    if mode == MODE_DUMMY:
                        if tag in _CODE_TAGS:
                            if scheme_local is None:
                                scheme_local = self.local_scheme(elems)
                            op = DUMMY if scheme_local else KEEP
                        else:
                            op = AE_TOKEN if vr == b"AE" else DUMMY
                    elif vr != b"UN":
                        op = AE_TOKEN if vr == b"AE" else CLEAN
            if op == KEEP:
                if entry[5]:
                    log.append(LogEntry(path + entry[2], entry[3], entry[4], "K"))
                if el[2] == run_e:
                    run_e = el[4]
                else:
                    if run_s >= 0:
                        out.append(mv[run_s:run_e])
                    run_s, run_e = el[2], el[4]
                continue
            if run_s >= 0:
                out.append(mv[run_s:run_e])
                run_s = run_e = -1
            tpath = path + entry[2]
            if op == REMOVE:
                log.append(LogEntry(tpath, entry[3], entry[4], "X"))
                continue
            fvr = el[1]
            vr = fvr if explicit and fvr is not None and fvr != b"UN" else entry[1]
            if op >= SEQ:
                self.emit_sequence(el, entry, op, codec, explicit, tpath, out)
                continue
            if op == ZERO or op == DUMMY and vr != b"UI":  # a constant element: encoded once per plan
                ckey = (tag, vr, op, codec.little, explicit)
                encoded = const.get(ckey)
                if encoded is None:
                    value = b"" if op == ZERO else _DUMMY.get(vr, b"\0\0")
                    encoded = const[ckey] = encode_element(tag, vr, value, codec, explicit)
                if path or tag & 0x10000:
                    log.append(LogEntry(tpath, entry[3], entry[4], OP_CODE[op]))
                else:  # top level, public tag: the entry is the plan's, the log line the same every time
                    lkey = (tag, op)
                    line = logs.get(lkey)
                    if line is None:
                        line = logs[lkey] = LogEntry(tpath, entry[3], entry[4], OP_CODE[op])
                    log.append(line)
                out.append(encoded)
                continue
            raw = mv[el[3]:el[4]]
            action = OP_CODE[op]
            if op == ZERO:
                value = b""
            elif op == UID:
                value = self.uids(raw)
            elif op == PATIENT_ID:
                value = pad(self.pseudonym.encode("ascii"), vr)
            elif op == PATIENT_NAME:
                value = pad(self.pseudonym.encode("ascii") + b"^", vr)  # family name component
            elif op == DUMMY:
                if vr == b"UI":
                    value, action = self.uids(raw), "U"
                else:
                    value = _DUMMY.get(vr, b"\0\0")
            elif op == SHIFT:
                if self.shift is None:
                    value, action = b"", "Z"
                else:
                    shifted = shift_values(bytes(raw), vr, self.shift)
                    if shifted is None:
                        value, action = b"", "Z (unparseable date)"
                    else:
                        value = pad(shifted, vr)
            elif op == AE_TOKEN:
                value = b"" if not bytes(raw).strip(b"\0 ") else pad(
                    ("AE" + self.pseudo.token("ae", self.text(raw, b"AE"))).encode("ascii"), b"AE")
            elif op == CLEAN:
                try:
                    value = self.encode(self.cleaner.clean(self.text(raw, vr)), vr)
                except (UnicodeError, LookupError, ValueError):
                    value, action = _DUMMY.get(vr, b""), "D (undecodable text)"
            else:  # pragma: no cover - exhaustive above
                raise AssertionError(op)
            log.append(LogEntry(tpath, entry[3], entry[4], action))
            out.append(encode_element(tag, vr, value, codec, explicit))
        if run_s >= 0:
            out.append(mv[run_s:run_e])
        while ins_i < ins_n:
            out.append(inserts[ins_i][1])
            ins_i += 1

    def emit_sequence(self, el: El, entry: Entry, op: int, codec: Codec, explicit: bool, tpath: str,
                      out: list[Any]) -> None:
        un = explicit and el[1] == b"UN"
        icodec, iexplicit = (LE, False) if un else (codec, explicit)
        mode = {SEQ: NORMAL, SEQ_CLEAN: MODE_CLEAN, SEQ_DUMMY: MODE_DUMMY}[op]
        self.log.append(LogEntry(tpath, entry[3], entry[4], OP_CODE[op]))
        items = []
        for i, item in enumerate(sequence_items(self.buf, el, icodec, iexplicit)):
            parts: list[Any] = []
            self.emit(item, icodec, iexplicit, mode, f"{tpath}[{i}].", parts)
            body = b"".join(parts)
            items.append(icodec.item_hdr(len(body)))
            items.append(body)
        value = b"".join(items)
        tag = el[0]
        if un or el[1] is None and el[5]:  # keep the undefined-length form (UN-SQ, implicit SQ)
            g, e = tag >> 16, tag & 0xFFFF
            hdr = codec.long.pack(g, e, b"UN", UNDEF) if un else codec.impl.pack(g, e, UNDEF)
            out.append(hdr + value + codec.item(0xFFFE, 0xE0DD, 0))
        else:
            out.append(encode_element(tag, b"SQ", value, codec, explicit))

    def local_scheme(self, elems: list[El]) -> bool:
        for el in elems:
            if el[0] == 0x00080102:
                scheme = bytes(self.mv[el[3]:el[4]]).decode("ascii", "replace").strip("\0 ").upper()
                return not scheme or scheme.startswith("99") or scheme in ("L", "LOCAL")
        return True

    def private_decisions(self, elems: list[El], explicit: bool, path: str) -> dict[int, Entry]:
        """Private tags retained at this level (tag -> entry); logs the removed blocks and creators."""
        safe = self.plan.safe_private
        keep: dict[int, Entry] = {}
        removed: dict[int, int] = {}  # block key -> number of elements removed
        creators: list[int] = []
        creator_names: dict[int, str] = {}  # creator tag -> name (only needed to look up the safe table)
        for el in elems:
            tag = el[0]
            if not tag & 0x10000:
                continue
            low = tag & 0xFFFF
            if 0x10 <= low <= 0xFF:
                creators.append(tag)
                if safe:
                    creator_names[tag] = bytes(self.mv[el[3]:el[4]]).decode("latin_1").strip("\0 ")
                continue
            if low >= 0x1000:
                if safe:
                    group = tag >> 16
                    ctag = (tag & 0xFFFF0000) | (low >> 8)
                    creator = creator_names.get(ctag)
                    hit = safe.get((creator, group, low & 0xFF)) if creator is not None else None
                    if hit is not None:
                        fvr = el[1]
                        vr = fvr if explicit and fvr is not None and fvr != b"UN" else hit[0]
                        if el[5] and vr == b"UN":
                            vr = b"SQ"
                        op = SEQ if vr == b"SQ" else (KEEP if self.plan.retain_uids else UID) if vr == b"UI" \
                            else KEEP
                        keep[tag] = Entry(op, vr, tagstr(tag), "", f"{hit[1]} (retain_safe_private)", True)
                        keep[ctag] = Entry(KEEP, b"LO", tagstr(ctag), "PrivateCreator",
                                            "private creator of a retained safe private element", True)
                        continue
                key = tag & 0xFFFFFF00
            else:
                key = tag
            removed[key] = removed.get(key, 0) + 1
        why = "not in the safe private table" if safe else "private attributes removed"
        log = self.log
        for key, n in removed.items():
            low = key & 0xFFFF
            block = f"({key >> 16:04X},{low >> 8:02X}xx)" if low >= 0x1000 else tagstr(key)
            log.append(LogEntry(path + block, "PrivateBlock", f"E.1-1 {EDITION} basic:X, {why} ({n})", "X"))
        for ctag in creators:
            if ctag not in keep:
                log.append(LogEntry(path + tagstr(ctag), "PrivateCreator", "private block removed", "X"))
        return keep
