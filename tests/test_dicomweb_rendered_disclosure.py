"""The rendered routes give a caller who may not download pictures, never the stored pixel values (audit
finding, HIGH). Before: ``/rendered?window=c,256`` with c = k·256+128 returned value − k·256 exactly as 8-bit
pixels, so a member with downloads locked (the default) or an approved applicant of an in-platform-only
dataset rebuilt every frame from a few dozen requests, audited as one aggregated read.

Through the real API, for both kinds of non-downloader: the auditor's band scan is refused (403, audited as
refused), and everything such a caller may ask for together does not determine the stored values; the
header's windows, the modality's presets and the thumbnails still render (the viewer works); a downloader
keeps custom windows; ``/metadata`` leaves long binary values (a waveform's samples) out for a
non-downloader; every picture a non-downloader gets is one audit event with its window; and
``/frames/{list}`` sends a repeated frame once and refuses more than 1000 numbers. A class test walks every
DICOMweb route of ``/openapi.json`` that sends pixels."""

from __future__ import annotations

import base64
import datetime as dt
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import select

from conftest import bearer, token_for
from imaging_support import archived_bytes, instances, make_project
from strongroom.access.models import Entitlement
from strongroom.audit.models import AuditEvent
from strongroom.db import transaction
from strongroom.imaging import bulk, synthetic
from strongroom.imaging.models import ImagingProject, ImportedInstance

SIDE = 16
CT_RANGE = (-1024, 3072)  # 12-bit CT in Hounsfield units
CT_PRESETS = {"soft-tissue": (40, 400), "lung": (-600, 1500), "bone": (300, 1500), "brain": (40, 80)}
NON_DOWNLOADERS = ["member-with-downloads-locked", "applicant-in-platform-only"]
WAVEFORM = np.arange(3000, dtype="<i2").tobytes()  # an ECG's samples are its data, as pixels are an image's


def variant(series: int, values: np.ndarray, *, modality: str = "CT", bits: int = 16, signed: bool = True,
            samples: int = 1, windows: tuple[list[str], list[str]] | None = None, waveform: bytes = b"") -> bytes:
    """A generated CT instance turned into another pixel format: ``values`` (frames × rows × columns
    [× samples]) stored as they are, with the header windows given (none: no Window Center/Width) and
    a waveform's samples (Waveform Data in a Waveform Sequence item) if any."""
    ds = pydicom.dcmread(io.BytesIO(synthetic.make_ct(0, 0, series, 1, rows=SIDE, columns=SIDE)))
    ds.Modality = modality
    if modality == "MR":
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    ds.BitsAllocated = ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = int(signed)
    ds.SamplesPerPixel = samples
    if samples == 3:
        ds.PhotometricInterpretation, ds.PlanarConfiguration = "RGB", 0
    if values.ndim == 3 + (samples == 3):
        ds.NumberOfFrames = values.shape[0]
    del ds.WindowCenter, ds.WindowWidth
    if windows:
        ds.WindowCenter, ds.WindowWidth = windows
    if waveform:
        item = pydicom.Dataset()
        item.WaveformBitsAllocated, item.NumberOfWaveformChannels = 16, 1
        item.add_new(0x54001010, "OW", waveform)
        ds.WaveformSequence = pydicom.Sequence([item])
    ds.PixelData = values.astype(f"{'<i' if signed else '<u'}{bits // 8}").tobytes()
    ds["PixelData"].VR = "OW" if bits > 8 else "OB"
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


@dataclass
class Image_:
    inst: ImportedInstance
    truth: np.ndarray  # modality values (rescaled), frames × rows × columns [× samples]
    url: str  # …/instances/{sop}


@dataclass
class Corpus:
    images: dict[str, Image_]
    people: dict[str, Any]

    def __getitem__(self, name: str) -> Image_:
        return self.images[name]


@pytest.fixture
def corpus(hub, people, tmp_path: Path) -> Corpus:
    """lung (alice's, downloads locked: the default): a 12-bit CT with two header windows (and a waveform's
    samples in its header), a 3-frame CT, an
    unsigned 16-bit MR without a header window, an 8-bit greyscale image and an 8-bit RGB image; rita has
    no grant yet."""
    persons = {name: people(name) for name in ("alice", "rita")}
    make_project(hub, "lung", "alice", profile={"retain_longitudinal": "modified"})
    rng = np.random.default_rng(7)
    files = {
        "ct": variant(1, rng.integers(*CT_RANGE, (SIDE, SIDE)), windows=(["40", "-600"], ["400", "1500"]),
                      waveform=WAVEFORM),
        "multiframe": variant(2, rng.integers(*CT_RANGE, (3, SIDE, SIDE)), windows=(["50"], ["350"])),
        "mr": variant(3, rng.integers(0, 4096, (SIDE, SIDE)), modality="MR", signed=False),
        "grey8": variant(4, rng.integers(0, 256, (SIDE, SIDE)), bits=8, signed=False, windows=(["128"], ["256"])),
        "rgb": variant(5, rng.integers(0, 256, (SIDE, SIDE, 3)), bits=8, signed=False, samples=3),
    }
    folder = tmp_path / "in"
    folder.mkdir()
    for name, data in files.items():
        (folder / f"{name}.dcm").write_bytes(data)
    report = bulk.run_import(hub, bulk.project_by_slug(hub, "lung"), folder, workers=1)
    assert (report.archived, report.quarantined) == (5, 0)
    by_series = {i.series_number: i for i in instances(hub, "published")}
    out = {}
    for n, name in enumerate(files, start=1):
        inst = by_series[n]
        ds = pydicom.dcmread(io.BytesIO(archived_bytes(hub, inst.file_id)))
        pixels = ds.pixel_array.reshape(int(ds.get("NumberOfFrames", 1) or 1), SIDE, SIDE, -1).squeeze(-1) \
            if ds.SamplesPerPixel == 1 else ds.pixel_array.reshape(1, SIDE, SIDE, 3)
        truth = pixels.astype(np.float64) * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))
        out[name] = Image_(inst, truth, f"/dicomweb/projects/lung/studies/{inst.study_uid}/series/"
                                        f"{inst.series_uid}/instances/{inst.sop_instance_uid}")
    return Corpus(out, persons)


def _dataset_id(hub) -> str:
    with hub.sessions() as s:
        return str(s.scalar(select(ImagingProject.dataset_id)))


def caller(hub, corpus: Corpus, who: str) -> dict[str, str]:
    """The Authorization header of a reader who may not download: alice (the PI; the project's downloads
    locked, the default) or rita (approved for the published dataset, in-platform use only: its default)."""
    if who == "member-with-downloads-locked":
        return bearer(token_for(hub, corpus.people["alice"]))
    with transaction(hub.sessions) as s:
        now = dt.datetime.now(dt.UTC)
        s.add(Entitlement(user_id=corpus.people["rita"].user.id, dataset_id=_dataset_id(hub), version=None,
                          starts_at=now, ends_at=now + dt.timedelta(days=9)))
    return bearer(token_for(hub, corpus.people["rita"]))


def open_downloads(hub, api: TestClient, corpus: Corpus, who: str) -> None:
    """The PI lets the bytes leave: the project's setting (members), the dataset's policy (applicants)."""
    alice = bearer(token_for(hub, corpus.people["alice"]))
    if who.startswith("member"):
        r = api.put("/api/v1/projects/lung/settings/download_allowed", json={"value": True}, headers=alice)
        assert r.status_code == 200, r.text
    else:
        r = api.put(f"/api/v1/datasets/{_dataset_id(hub)}/access-policy", json={"applicant_download": True},
                    headers=alice)
        assert r.status_code == 204, r.text


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)), dtype=np.float64)


def windowed(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1, the linear VOI function, as the hub renders it."""
    low = center - 0.5 - (width - 1) / 2
    return np.clip((values - low) / max(width - 1, 1) * 255.0, 0, 255).astype(np.uint8).astype(np.float64)


def band_scan(api: TestClient, url: str, headers: dict[str, str], truth: np.ndarray
              ) -> tuple[np.ndarray, dict[str, int]]:
    """The auditor's attack: windows of width 256 at every 128th value over the range; each picture gives
    the values strictly inside its band exactly. Returns what it rebuilt and each window's status."""
    lo, hi = int(truth.min()) - 256, int(truth.max()) + 256
    recovered = np.full(truth.shape, np.nan)
    statuses = {}
    for offset in (0, 128):
        for band_low in range(lo - lo % 256 + offset - 256, hi + 256, 256):
            window = f"{band_low + 128},256"
            r = api.get(url, params={"window": window}, headers=headers | {"Accept": "image/png"})
            statuses[window] = r.status_code
            if r.status_code != 200:
                assert r.status_code == 403 and r.json()["code"] == "custom-window-refused", r.text
                assert "download right" in r.json()["detail"]
                continue
            shown = pixels(r.content)
            inside = (shown > 0) & (shown < 255)
            recovered[inside] = band_low + shown[inside]
    return recovered, statuses


# (image, rendered route below the instance, frame index in truth)
ATTACKED = [("ct", "/rendered", 0), ("ct", "/frames/1/rendered", 0), ("multiframe", "/frames/2/rendered", 1),
            ("multiframe", "/frames/3/rendered", 2), ("mr", "/rendered", 0), ("mr", "/frames/1/rendered", 0)]


@pytest.mark.parametrize("who", NON_DOWNLOADERS)
def test_the_band_scan_rebuilds_nothing_for_a_caller_who_may_not_download(app, hub, corpus, who) -> None:
    api = TestClient(app)
    headers = caller(hub, corpus, who)
    for name, route, frame in ATTACKED:
        image = corpus[name]
        recovered, statuses = band_scan(api, image.url + route, headers, image.truth[frame])
        assert len(statuses) > 10 and set(statuses.values()) == {403}, (name, route, statuses)
        assert not np.array_equal(recovered, image.truth[frame]) and np.isnan(recovered).all(), (name, route)
    # An 8-bit image's own window (here 128/256) is one of the bands: that one picture is the image — seeing
    # 256 values at 256 grey levels is what viewing it means (docs/dicomweb.md, "What viewing shows"); every
    # other band is refused.
    recovered, statuses = band_scan(api, corpus["grey8"].url + "/frames/1/rendered", headers,
                                    corpus["grey8"].truth[0])
    assert {w for w, status in statuses.items() if status == 200} == {"128,256"}, statuses
    assert set(statuses.values()) == {200, 403}
    # the instance's bytes stay locked too (the download rules), so nothing else hands the values out
    for leaves in ("", "/frames/1"):
        r = api.get(corpus["ct"].url + leaves, headers=headers)
        assert r.status_code == 403, leaves


@pytest.mark.parametrize("who", NON_DOWNLOADERS)
def test_everything_a_viewer_may_ask_for_does_not_determine_the_values(app, hub, corpus, who) -> None:
    """Every window the hub offers for the CT (its two header windows and the four CT presets), rendered and
    combined: each pixel is narrowed to the 12-bit values consistent with all the pictures, and the frame is
    not determined (the module note of dicomweb/render.py: at most 255·k + 1 intervals for k windows)."""
    api = TestClient(app)
    headers = caller(hub, corpus, who)
    image = corpus["ct"]
    truth = image.truth[0]
    windows = {"40,400", "-600,1500", *(f"{c},{w}" for c, w in CT_PRESETS.values())}
    candidates = np.arange(*CT_RANGE, dtype=np.float64)
    consistent = np.ones(truth.shape + candidates.shape, dtype=bool)
    for window in sorted(windows):
        r = api.get(image.url + "/rendered", params={"window": window}, headers=headers)
        assert r.status_code == 200, (window, r.text)
        center, width = (float(v) for v in window.split(","))
        shown = pixels(r.content)
        assert np.array_equal(shown, windowed(truth, center, width)), window
        consistent &= windowed(candidates, center, width)[None, None, :] == shown[..., None]
    left = consistent.sum(axis=-1)
    assert (left >= 1).all()  # the truth is always among them
    assert (left > 1).any() and (left == 1).mean() < 0.5, (left == 1).mean()


@pytest.mark.parametrize("who", NON_DOWNLOADERS)
def test_the_hubs_windows_still_render_for_viewing(app, hub, corpus, who) -> None:
    api = TestClient(app)
    headers = caller(hub, corpus, who)
    png = {"Accept": "image/png"}

    def shown(image: str, route: str = "/rendered", **params: str) -> np.ndarray:
        r = api.get(corpus[image].url + route, params=params, headers=headers | png)
        assert r.status_code == 200, (image, route, params, r.text)
        assert r.headers["strongroom-custom-windows"] == "refused"  # the viewer offers presets only
        return pixels(r.content)

    def refused(image: str, window: str, route: str = "/rendered") -> dict:
        r = api.get(corpus[image].url + route, params={"window": window}, headers=headers | png)
        assert r.status_code == 403, (image, window, r.text)
        assert r.json()["code"] == "custom-window-refused"
        return r.json()

    ct, frames = corpus["ct"].truth[0], corpus["multiframe"].truth
    # the header's own window (the default; the first of a multi-valued one), and each header window by value
    assert np.array_equal(shown("ct"), windowed(ct, 40, 400))
    assert np.array_equal(shown("ct", window="40,400"), windowed(ct, 40, 400))
    assert np.array_equal(shown("ct", window="-600,1500,linear"), windowed(ct, -600, 1500))
    # the CT presets, on every frame of a multi-frame instance, whose own header window is 50/350
    for n in (1, 2, 3):
        assert np.array_equal(shown("multiframe", f"/frames/{n}/rendered"), windowed(frames[n - 1], 50, 350))
        for center, width in CT_PRESETS.values():
            assert np.array_equal(shown("multiframe", f"/frames/{n}/rendered", window=f"{center},{width}"),
                                  windowed(frames[n - 1], center, width))
    assert np.array_equal(shown("multiframe", "/frames/2/rendered", window="50,350"), windowed(frames[1], 50, 350))
    # a window is offered per instance: the multi-frame's header window is not the CT slice's
    assert refused("ct", "50,350")["windows"] == {"header": "40,400", "header-2": "-600,1500", "soft-tissue": "40,400",
                                                  "lung": "-600,1500", "bone": "300,1500", "brain": "40,80"}
    # MR: no header window (the frame's full range), no presets (Hounsfield windows mean nothing there)
    mr = corpus["mr"].truth[0]
    lo, hi = mr.min(), mr.max()
    assert np.array_equal(shown("mr"), windowed(mr, (lo + hi) / 2 + 0.5, hi - lo + 1))
    assert refused("mr", "40,400")["windows"] == {}
    # 8-bit greyscale (its header window), RGB as stored; neither takes a window of the caller's
    assert np.array_equal(shown("grey8"), windowed(corpus["grey8"].truth[0], 128, 256))
    assert np.array_equal(shown("rgb"), corpus["rgb"].truth[0])
    refused("rgb", "128,256")
    refused("grey8", "127,256", "/frames/1/rendered")
    # parameters the hub does not support (PS3.18 quality, viewport, annotation) change nothing
    assert np.array_equal(shown("ct", quality="100", viewport="16,16", annotation="patient"), windowed(ct, 40, 400))
    refused("ct", "40,401")
    assert api.get(corpus["ct"].url + "/rendered", params={"window": "0,256", "quality": "100"},
                   headers=headers).status_code == 403
    # /metadata: the header, without the long binary values that are data (the waveform's samples)
    r = api.get(corpus["ct"].url + "/metadata", headers=headers)
    assert r.status_code == 200
    (meta,) = r.json()
    assert meta["00281050"]["Value"] == [40, -600] and meta["00280010"]["Value"] == [SIDE]
    (waveform,) = meta["54000100"]["Value"]
    assert "54001010" not in waveform and waveform["003A0005"]["Value"] == [1]
    assert "InlineBinary" not in r.text
    # the thumbnails: the header's window, small
    inst = corpus["ct"].inst
    study = f"/dicomweb/projects/lung/studies/{inst.study_uid}"
    for url in (corpus["ct"].url + "/thumbnail", f"{study}/series/{inst.series_uid}/thumbnail", f"{study}/thumbnail"):
        r = api.get(url, headers=headers)
        assert r.status_code == 200 and r.content[:4] == b"\x89PNG", url


@pytest.mark.parametrize("who", NON_DOWNLOADERS)
def test_a_caller_who_may_download_keeps_custom_windows(app, hub, corpus, who) -> None:
    """Once the PI lets the bytes leave (the project's setting; the dataset's policy for applicants), any
    window renders — the frames themselves are the caller's anyway — and the reads are aggregated as before."""
    api = TestClient(app)
    headers = caller(hub, corpus, who)
    open_downloads(hub, api, corpus, who)
    image = corpus["ct"]
    recovered, statuses = band_scan(api, image.url + "/frames/1/rendered", headers, image.truth[0])
    assert set(statuses.values()) == {200} and np.array_equal(recovered, image.truth[0])
    r = api.get(image.url + "/rendered", params={"window": "33,77"}, headers=headers)
    assert r.status_code == 200 and r.headers["strongroom-custom-windows"] == "allowed"
    assert np.array_equal(pixels(r.content), windowed(image.truth[0], 33, 77))
    assert api.get(image.url + "/frames/1", headers=headers).status_code == 200
    (meta,) = api.get(image.url + "/metadata", headers=headers).json()
    assert base64.b64decode(meta["54000100"]["Value"][0]["54001010"]["InlineBinary"]) == WAVEFORM
    with hub.sessions() as s:
        events = list(s.scalars(select(AuditEvent).where(AuditEvent.action.like("dicomweb.%"))))
    assert [(e.action, e.target, e.details.get("first")) for e in events] == [
        ("dicomweb.study.read", f"study:{image.inst.study_uid}", "rendered")]


def test_every_picture_a_non_downloader_gets_is_one_audit_event(app, hub, corpus) -> None:
    api = TestClient(app)
    headers = caller(hub, corpus, "member-with-downloads-locked")
    ct, multiframe = corpus["ct"], corpus["multiframe"]
    asked = [(ct.url + "/rendered", {}), (ct.url + "/rendered", {"window": "-600,1500"}),
             (ct.url + "/frames/1/rendered", {"window": "40,80"}),
             (multiframe.url + "/frames/2/rendered", {}), (multiframe.url + "/frames/3/rendered", {"window": "50,350"}),
             (multiframe.url + "/frames/3/rendered", {"window": "50,350"}), (ct.url + "/thumbnail", {})]
    for url, params in asked:
        assert api.get(url, params=params, headers=headers).status_code == 200, (url, params)
    assert api.get(ct.url + "/rendered", params={"window": "128,256"}, headers=headers).status_code == 403
    with hub.sessions() as s:
        events = list(s.scalars(select(AuditEvent).where(AuditEvent.action.like("dicomweb.%"))
                                .order_by(AuditEvent.seq)))
    reads = [e for e in events if e.action == "dicomweb.study.read"]
    assert [(e.details["read"], e.details["sop_instance_uid"], e.details["frame"], e.details["window"],
             e.details["frames"], e.details["instances"]) for e in reads] == [
        ("rendered", ct.inst.sop_instance_uid, 1, "header 40,400", 1, 1),
        ("rendered", ct.inst.sop_instance_uid, 1, "header-2 -600,1500", 1, 1),
        ("rendered", ct.inst.sop_instance_uid, 1, "brain 40,80", 1, 1),
        ("rendered", multiframe.inst.sop_instance_uid, 2, "header 50,350", 1, 1),
        ("rendered", multiframe.inst.sop_instance_uid, 3, "header 50,350", 1, 1),
        ("rendered", multiframe.inst.sop_instance_uid, 3, "header 50,350", 1, 1),
        ("thumbnail", ct.inst.sop_instance_uid, 1, "header 40,400", 1, 1)]
    assert all(e.target == f"study:{ct.inst.study_uid}" and e.details["basis"] == "owner" for e in reads)
    (refused,) = [e for e in events if e.action != "dicomweb.study.read"]
    assert (refused.action, refused.outcome, refused.details["window"], refused.details["sop_instance_uid"]) == (
        "dicomweb.window.refused", "denied", "128,256", ct.inst.sop_instance_uid)


def _parts(response) -> list[bytes]:
    boundary = re.search(r"boundary=([^;]+)", response.headers["content-type"]).group(1)
    body = response.content.split(f"--{boundary}--".encode())[0]
    return [p.split(b"\r\n\r\n", 1)[1][:-2] for p in body.split(f"--{boundary}\r\n".encode())[1:]]


def test_a_frame_list_sends_each_frame_once_and_is_capped(app, hub, corpus) -> None:
    api = TestClient(app)
    headers = caller(hub, corpus, "member-with-downloads-locked")
    open_downloads(hub, api, corpus, "member-with-downloads-locked")
    image = corpus["multiframe"]
    stored = [f.astype("<i2").tobytes() for f in image.truth]  # rescale 1, 0: the stored values
    r = api.get(image.url + "/frames/2,1,2,2,1", headers=headers)
    assert r.status_code == 200 and _parts(r) == [stored[1], stored[0]]
    r = api.get(image.url + "/frames/" + ",".join(["3"] * 1000), headers=headers)
    assert r.status_code == 200 and _parts(r) == [stored[2]]
    for numbers in (["1"] * 1001, [str(n % 3 + 1) for n in range(5000)], ["1"] * 10_000):
        r = api.get(image.url + "/frames/" + ",".join(numbers), headers=headers)
        assert r.status_code == 400 and "at most 1000 frame numbers" in r.json()["detail"], len(numbers)


def test_every_route_that_sends_pixels_is_gated(app, hub, corpus) -> None:
    """The class: each DICOMweb GET route of /openapi.json whose answer can carry pixels (an image or a
    multipart body) is, for a caller who may not download, either refused (the bytes: 403) or a picture whose
    only query parameter is ``window`` and which refuses a window of the caller's. Nothing else (no
    /bulkdata, /pixeldata, no transcoding Accept) hands pixels out."""
    api = TestClient(app)
    headers = caller(hub, corpus, "member-with-downloads-locked")
    inst = corpus["multiframe"].inst
    values = {"slug": "lung", "study": inst.study_uid, "series": inst.series_uid, "sop": inst.sop_instance_uid,
              "frames": "1,2", "frame": "2"}
    pixel_routes = []
    for path, methods in app.openapi()["paths"].items():
        get = methods.get("get")
        if not path.startswith("/dicomweb/") or get is None:
            continue
        kinds = {k for answer in get["responses"].values() for k in answer.get("content", {})}
        if not any(k.startswith(("image/", "multipart/")) for k in kinds):
            continue
        pixel_routes.append(path)
        url = re.sub(r"\{(\w+)\}", lambda m: values[m.group(1)], path)
        query = {p["name"] for p in get.get("parameters", []) if p["in"] == "query"}
        for accept in ("*/*", "image/png", 'multipart/related; type="application/octet-stream"',
                       'multipart/related; type="image/jpeg"', "application/dicom"):
            r = api.get(url, headers=headers | {"Accept": accept})
            assert r.status_code in (200, 403, 406), (path, accept, r.status_code)
            if r.status_code == 200:
                assert r.headers["content-type"] == "image/png" and query <= {"window"}, (path, accept, query)
        if "window" in query:
            r = api.get(url, params={"window": "0,256"}, headers=headers)
            assert r.status_code == 403 and r.json()["code"] == "custom-window-refused", path
    assert len(pixel_routes) == 9, pixel_routes  # study, series, instance, frames, 2 rendered, 3 thumbnails
