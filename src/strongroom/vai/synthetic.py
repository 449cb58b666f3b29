"""A synthetic screening dataset (computer-generated CT slices, some with a lesion of known place, size and
contrast) and a small ONNX lesion detector trained on it: the demo's and the tests' data. No real patient data.

Each case is one 64×64 CT instance (``imaging.synthetic.make_ct``): a soft-tissue ellipse (40 HU) in air with
scanner noise (sites differ: site B's scanner is noisier), and with probability ``prevalence`` a round lesion
10–60 HU brighter. The detector is ``sigmoid(a · max(5×5 mean of the windowed image) + b)``: an
AveragePool, a GlobalMaxPool and a logistic layer, built with onnx's helper API; ``train`` fits a and b by
logistic regression (scikit-learn) on a training set, so its scores are calibrated probabilities.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
from numpy.lib.stride_tricks import sliding_window_view
from onnx import TensorProto, helper
from sklearn.linear_model import LogisticRegression

from ..imaging.synthetic import make_ct

if TYPE_CHECKING:
    from pydicom.uid import UID

SIZE = 64
WINDOW = {"center": 40, "width": 400}
CONTRACT = {"modality": "CT", "window": WINDOW, "size": [SIZE, SIZE], "normalise": {"mean": 0.0, "std": 1.0}}
OUTPUT = {"kind": "score", "index": 0, "name": "score"}
SITES = {"A": ("GE MEDICAL SYSTEMS", "Revolution CT", 18.0), "B": ("SIEMENS", "SOMATOM Force", 30.0)}
POOL = 5


@dataclass(frozen=True)
class Case:
    index: int
    lesion: bool
    site: str
    sex: str
    age_band: str
    data: bytes  # the DICOM instance
    sop_uid: str
    study_uid: str = ""
    mask: np.ndarray | None = None  # where the lesion is (all False without one)


def _pixels(rng: np.random.Generator, lesion: bool, noise: float) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    body = ((yy - 32) / 28) ** 2 + ((xx - 32) / 24) ** 2 <= 1
    img = np.where(body, 40.0, -1000.0) + rng.normal(0, noise, (SIZE, SIZE))
    mask = np.zeros((SIZE, SIZE), dtype=bool)
    if lesion:
        r = rng.uniform(2.0, 4.0)
        cy, cx = rng.integers(18, 46), rng.integers(18, 46)
        contrast = rng.uniform(10.0, 60.0)
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        img = img + np.where(mask, contrast, 0.0)
    return np.clip(np.round(img), -1024, 3071).astype("<i2"), mask


def cases(n: int, *, seed: int = 0, prevalence: float = 0.3, first: int = 0) -> list[Case]:
    """``n`` cases, reproducible from ``seed``; ``first`` offsets patient numbers (a second clinic)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(first, first + n):
        lesion = bool(rng.random() < prevalence)
        site = "A" if rng.random() < 0.6 else "B"
        maker, model, noise = SITES[site]
        pixels, mask = _pixels(rng, lesion, noise)
        data = make_ct(i, 0, 1, 1, rows=SIZE, columns=SIZE, manufacturer=maker, model=model,
                       pixel_bytes=pixels.tobytes())
        import pydicom  # local: only the generator needs to read back what it wrote

        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        age = 2021 - int(str(ds.PatientBirthDate)[:4])
        band = f"{age // 10 * 10}-{age // 10 * 10 + 9}"
        out.append(Case(i, lesion, site, str(ds.PatientSex), band, data, str(ds.SOPInstanceUID),
                        str(ds.StudyInstanceUID), mask))
    return out


def labels_csv(items: list[Case]) -> str:
    """The reference standard: image id (SOP Instance UID) → label, with subgroup columns."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["image_id", "label", "site", "sex", "age_band"])
    for c in items:
        w.writerow([c.sop_uid, int(c.lesion), c.site, c.sex, c.age_band])
    return buf.getvalue()


def _derived(case: Case, sop_class: UID, modality: str, number: int) -> Any:
    """The header an SR or SEG of ``case``'s study shares (patient and study copied from the image)."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    image = pydicom.dcmread(io.BytesIO(case.data), stop_before_pixels=True)
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    uid = generate_uid(entropy_srcs=[case.sop_uid, modality])  # reproducible
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = sop_class, uid, modality
    for tag in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
                "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName"):
        if tag in image:
            setattr(ds, tag, getattr(image, tag))
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[case.study_uid, modality, "series"])
    ds.SeriesNumber, ds.InstanceNumber = 900 + number, 1
    ds.ContentDate, ds.ContentTime = image.StudyDate, "120000"
    ds.Manufacturer = "Strongroom synthetic reader"
    return ds


def _code(value: str, scheme: str, meaning: str) -> Any:
    import pydicom

    c = pydicom.Dataset()
    c.CodeValue, c.CodingSchemeDesignator, c.CodeMeaning = value, scheme, meaning
    return c


def segmentation(case: Case) -> bytes:
    """A DICOM SEG (binary) of the case's lesion: one segment, its mask empty when there is no lesion."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence as Seq
    from pydicom.uid import SegmentationStorage

    ds = _derived(case, SegmentationStorage, "SEG", 1)
    ds.SegmentationType = "BINARY"
    ds.ContentLabel, ds.ContentCreatorName = "LESION", "READER^SYNTHETIC"
    ds.ImageType = ["DERIVED", "PRIMARY"]
    segment = Dataset()
    segment.SegmentNumber, segment.SegmentLabel, segment.SegmentAlgorithmType = 1, "Lesion", "MANUAL"
    segment.SegmentedPropertyCategoryCodeSequence = Seq([_code("49755003", "SCT", "Morphologically Altered Structure")])
    segment.SegmentedPropertyTypeCodeSequence = Seq([_code("52988006", "SCT", "Lesion")])
    ds.SegmentSequence = Seq([segment])
    mask = case.mask if case.mask is not None else np.zeros((SIZE, SIZE), dtype=bool)
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns, ds.NumberOfFrames = SIZE, SIZE, 1
    ds.BitsAllocated = ds.BitsStored = 1
    ds.HighBit, ds.PixelRepresentation = 0, 0
    ds.LossyImageCompression = "00"
    ds.PixelData = np.packbits(mask.astype(np.uint8).ravel(), bitorder="little").tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def report(case: Case) -> bytes:
    """A DICOM Comprehensive SR after TID 1500 (Imaging Measurement Report) with a coded Finding: Lesion
    (SCT 52988006) when there is one, Absent (SCT 2667000) otherwise."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence as Seq
    from pydicom.uid import ComprehensiveSRStorage

    ds = _derived(case, ComprehensiveSRStorage, "SR", 2)
    ds.ValueType, ds.ContinuityOfContent = "CONTAINER", "SEPARATE"
    ds.ConceptNameCodeSequence = Seq([_code("126000", "DCM", "Imaging Measurement Report")])
    ds.CompletionFlag, ds.VerificationFlag = "COMPLETE", "UNVERIFIED"
    template = Dataset()
    template.MappingResource, template.TemplateIdentifier = "DCMR", "1500"
    ds.ContentTemplateSequence = Seq([template])
    finding = Dataset()
    finding.RelationshipType, finding.ValueType = "CONTAINS", "CODE"
    finding.ConceptNameCodeSequence = Seq([_code("121071", "DCM", "Finding")])
    finding.ConceptCodeSequence = Seq([_code("52988006", "SCT", "Lesion") if case.lesion
                                       else _code("2667000", "SCT", "Absent")])
    group = Dataset()
    group.RelationshipType, group.ValueType, group.ContinuityOfContent = "CONTAINS", "CONTAINER", "SEPARATE"
    group.ConceptNameCodeSequence = Seq([_code("125007", "DCM", "Measurement Group")])
    group.ContentSequence = Seq([finding])
    ds.ContentSequence = Seq([group])
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def reference_objects(items: list[Case]) -> dict[str, bytes]:
    """The reference standard as DICOM, one object per case's study: a SEG for even-numbered cases, an SR
    for odd ones (file name → bytes)."""
    return {f"case-{c.index:04d}-{'seg' if c.index % 2 == 0 else 'sr'}.dcm":
            segmentation(c) if c.index % 2 == 0 else report(c) for c in items}


def feature(data: bytes) -> float:
    """What the detector computes before its logistic layer (numpy, for training)."""
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(data))
    hu = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    low = WINDOW["center"] - WINDOW["width"] / 2
    x = np.clip((hu - low) / WINDOW["width"], 0, 1)
    return float(sliding_window_view(x, (POOL, POOL)).mean(axis=(-1, -2)).max())


def build_model(a: float, b: float) -> bytes:
    """The detector as an ONNX model: input ``image`` (N, 1, 64, 64) float32 → output ``score`` (N, 1)."""
    nodes = [
        helper.make_node("AveragePool", ["image"], ["pooled"], kernel_shape=[POOL, POOL], strides=[1, 1]),
        helper.make_node("GlobalMaxPool", ["pooled"], ["peak"]),
        helper.make_node("Flatten", ["peak"], ["flat"], axis=1),
        helper.make_node("Mul", ["flat", "a"], ["scaled"]),
        helper.make_node("Add", ["scaled", "b"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["score"]),
    ]
    graph = helper.make_graph(
        nodes, "vai-synthetic-lesion-detector",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, SIZE, SIZE])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N", 1])],
        initializer=[helper.make_tensor("a", TensorProto.FLOAT, [1], [a]),
                     helper.make_tensor("b", TensorProto.FLOAT, [1], [b])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="strongroom-vai")
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model.SerializeToString()


def train(n: int = 300, *, seed: int = 1000) -> bytes:
    """The detector fitted by logistic regression on ``n`` training cases (a seed apart from the test's)."""
    items = cases(n, seed=seed, first=100_000)
    x = np.array([[feature(c.data)] for c in items])
    y = np.array([int(c.lesion) for c in items])
    fit = LogisticRegression(C=1e4).fit(x, y)
    return build_model(float(fit.coef_[0][0]), float(fit.intercept_[0]))
