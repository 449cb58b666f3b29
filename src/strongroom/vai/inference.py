"""Preprocessing by a model's input contract and inference with onnxruntime (CUDA when offered, else the
CPU), and the reference label of a DICOM SR or SEG: pure, no web or database.

A contract says what the model expects::

    {"modality": "CT", "window": {"center": 40, "width": 400}, "size": [64, 64],
     "normalise": {"mean": 0.0, "std": 1.0}}

``window`` maps stored values (after the DICOM rescale) linearly to [0, 1], clipped; without it the
instance's own range is used. ``size`` resizes (bilinear, Pillow). ``normalise`` subtracts and divides.
The input is one NCHW float32 tensor (N, 1, H, W); the output named in ``output`` (or the first) gives one
score per instance: ``{"kind": "score"}`` takes element 0, ``{"kind": "probabilities", "index": k}``
takes class k.

A vendor's model is one self-contained file run with nothing of the hub's: ``check_self_contained`` refuses
anything onnxruntime would fetch from the host (tensors stored as external data, which it would read from a path
on the hub) or run beyond ONNX's standard operators (custom, contrib, preview and training operator sets), before
onnxruntime sees the bytes, at upload and again before every run.
"""

from __future__ import annotations

import functools
import hashlib
import io
import logging
import math
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pydicom
from PIL import Image

log = logging.getLogger(__name__)

MAX_SIZE = 1024
# what preprocessing reads of an instance (names, dates and private tags are skipped unread)
TAGS = ["Modality", "SOPInstanceUID", "StudyInstanceUID", "StudyDate", "RescaleSlope", "RescaleIntercept",
        "Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation", "SamplesPerPixel",
        "PhotometricInterpretation", "PlanarConfiguration", "NumberOfFrames", "PixelData", "FloatPixelData",
        "DoubleFloatPixelData"]


REFERENCE_MODALITIES = ("SR", "SEG")
FINDING_CONCEPTS = {("DCM", "121071")}  # Finding
NEGATIVE_FINDINGS = {("SCT", "2667000"), ("SCT", "260385009"), ("SCT", "373572006")}  # absent, negative,
# clinical finding absent

# onnx and onnxruntime are imported where a model is read or run, not when the hub starts: with scipy and
# scikit-learn (vai.metrics) they were two seconds of every `strongroom serve` start
@functools.cache
def standard_opsets() -> dict[str, int]:
    """The operator sets a model may use — ONNX's standard ones only — with the newest version the hub's onnx
    knows."""
    import onnx

    return {"": onnx.defs.onnx_opset_version(), "ai.onnx": onnx.defs.onnx_opset_version(),
            "ai.onnx.ml": onnx.defs.onnx_ml_opset_version()}
# what the vendor is told when onnxruntime refuses a model (its own message, which can name the hub's paths,
# goes to the log only)
LOAD_FAILURES = {"InvalidProtobuf": "it is not a valid ONNX protobuf",
                 "InvalidGraph": "its graph is not valid (onnx.checker.check_model says more)",
                 "NotImplemented": "it uses an operator or a type onnxruntime does not implement"}


class ContractError(ValueError):
    """The contract, the model or an instance does not fit."""


@dataclass(frozen=True)
class Instance:
    """What an evaluation keeps of one decrypted instance: identifiers and the model input, never pixels."""

    sop_uid: str
    study_uid: str
    study_date: str
    tensor: np.ndarray  # (1, H, W) float32


@dataclass(frozen=True)
class Reference:
    """A DICOM SR or SEG instance of the dataset: the label it gives its study (None: it gives none)."""

    kind: str  # SR | SEG
    sop_uid: str
    study_uid: str
    study_date: str
    label: int | None
    why: str  # how the label was read


def _code(item: Any, attr: str) -> tuple[str, str, str] | None:
    seq = getattr(item, attr, None)
    if not seq:
        return None
    c = seq[0]
    return (str(getattr(c, "CodingSchemeDesignator", "")), str(getattr(c, "CodeValue", "")),
            str(getattr(c, "CodeMeaning", "")))


def _coded_findings(items: Any) -> Iterator[tuple[str, str, str]]:
    """Every coded value of a Finding item (DCM 121071, as in TID 1500 and simple coded reports), at any depth."""
    for item in items or []:
        if str(getattr(item, "ValueType", "")) == "CODE":
            name = _code(item, "ConceptNameCodeSequence")
            value = _code(item, "ConceptCodeSequence")
            if name and name[:2] in FINDING_CONCEPTS and value:
                yield value
        yield from _coded_findings(getattr(item, "ContentSequence", None))


def reference(data: bytes) -> Reference:
    """The label an SR or SEG instance gives its study:

    - SEG: 1 when any segment has a non-empty mask, 0 when every frame is empty;
    - SR: 1 when a Finding (DCM 121071) carries a code other than an absent/negative one, 0 when every
      coded finding says absent or negative (SCT 2667000, 260385009, 373572006), none without a coded finding.
    """
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except Exception as exc:
        raise ContractError(f"not a readable DICOM object: {type(exc).__name__}") from None
    kind = str(getattr(ds, "Modality", "")).upper()
    ids = (str(getattr(ds, "SOPInstanceUID", "")), str(getattr(ds, "StudyInstanceUID", "")),
           str(getattr(ds, "StudyDate", "")))
    if kind == "SEG":
        try:
            mask = np.asarray(ds.pixel_array)
        except Exception as exc:
            raise ContractError(f"a segmentation without readable frames: {type(exc).__name__}") from None
        segments = len(getattr(ds, "SegmentSequence", []) or [])
        marked = bool(mask.any())
        return Reference("SEG", *ids, int(marked),
                         f"segmentation with {segments} segment(s), {'a non-empty' if marked else 'empty'} mask")
    findings = list(_coded_findings(getattr(ds, "ContentSequence", None)))
    if not findings:
        return Reference("SR", *ids, None, "structured report without a coded finding")
    positive = [f for f in findings if f[:2] not in NEGATIVE_FINDINGS]
    if positive:
        return Reference("SR", *ids, 1, f"coded finding {positive[0][0]} {positive[0][1]} ({positive[0][2]})")
    return Reference("SR", *ids, 0, "every coded finding is absent or negative")


def finite_number(value: Any) -> float | None:
    """A finite number of sensible size, or None (booleans are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        f = float(value)
    except OverflowError:
        return None
    return f if math.isfinite(f) and abs(f) <= 1e9 else None


def check_contract(contract: Mapping[str, Any]) -> dict[str, Any]:
    """The contract, validated and normalised (raises ContractError)."""
    modality = str(contract.get("modality", "")).strip().upper()
    if not modality or len(modality) > 16:
        raise ContractError("the contract names the modality (e.g. CT, MG, MR)")
    size = contract.get("size")
    if (not isinstance(size, list | tuple) or len(size) != 2
            or not all(isinstance(v, int) and 1 <= v <= MAX_SIZE for v in size)):
        raise ContractError(f"size is [height, width], each 1–{MAX_SIZE}")
    window = contract.get("window")
    if window is not None:
        center = finite_number(window.get("center")) if isinstance(window, Mapping) else None
        width = finite_number(window.get("width")) if isinstance(window, Mapping) else None
        if center is None or width is None:
            raise ContractError("window is {center, width} in stored units (HU for CT)")
        if width <= 0:
            raise ContractError("the window's width is positive")
        window = {"center": center, "width": width}
    norm = contract.get("normalise") or {"mean": 0.0, "std": 1.0}
    mean = finite_number(norm.get("mean")) if isinstance(norm, Mapping) else None
    std = finite_number(norm.get("std")) if isinstance(norm, Mapping) else None
    if mean is None or std is None or std <= 0:
        raise ContractError("normalise is {mean, std} with std > 0")
    return {"modality": modality, "window": window, "size": [int(size[0]), int(size[1])],
            "normalise": {"mean": mean, "std": std}}


def check_output(output: Mapping[str, Any]) -> dict[str, Any]:
    kind = output.get("kind", "score")
    if kind not in ("score", "probabilities"):
        raise ContractError("output kind is 'score' or 'probabilities'")
    index = output.get("index", 1 if kind == "probabilities" else 0)
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index <= 10_000:
        raise ContractError("output index is a non-negative integer")
    name = output.get("name")
    if name is not None and not isinstance(name, str):
        raise ContractError("output name is a string")
    return {"kind": kind, "index": index, **({"name": name} if name else {})}


def preprocess(data: bytes, contract: Mapping[str, Any]) -> Instance:
    """One DICOM instance (bytes in memory) → the model's input, by the contract."""
    found = read(data, contract)
    if isinstance(found, Reference):
        raise ContractError(f"modality {'SR' if found.kind == 'SR' else 'SEG'} where the model takes "
                            f"{contract['modality']}")
    return found


def read(data: bytes, contract: Mapping[str, Any]) -> Instance | Reference:
    """One DICOM instance (bytes in memory) → the model's input, by the contract; or, for a structured
    report or a segmentation, the reference label it gives its study."""
    try:
        ds = pydicom.dcmread(io.BytesIO(data), specific_tags=TAGS)  # the rest is skipped, never decoded
    except Exception as exc:
        raise ContractError(f"not a readable DICOM image: {type(exc).__name__}") from None
    modality = str(getattr(ds, "Modality", "")).upper()
    if modality in REFERENCE_MODALITIES:
        return reference(data)
    try:
        pixels = ds.pixel_array.astype(np.float32)
    except Exception as exc:
        raise ContractError(f"not a readable DICOM image: {type(exc).__name__}") from None
    if modality != contract["modality"]:
        raise ContractError(f"modality {modality or '?'} where the model takes {contract['modality']}")
    if pixels.ndim != 2:
        raise ContractError("one single-frame greyscale image per instance")
    slope = float(getattr(ds, "RescaleSlope", 1) or 1)
    intercept = float(getattr(ds, "RescaleIntercept", 0) or 0)
    values = pixels * slope + intercept
    window = contract.get("window")
    if window:
        low = window["center"] - window["width"] / 2
        scaled = np.clip((values - low) / window["width"], 0.0, 1.0)
    else:
        lo, hi = float(values.min()), float(values.max())
        scaled = (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)
    h, w = contract["size"]
    if scaled.shape != (h, w):
        image = Image.fromarray(scaled.astype(np.float32), mode="F")
        scaled = np.asarray(image.resize((w, h), Image.Resampling.BILINEAR))
    norm = contract["normalise"]
    tensor = ((scaled - norm["mean"]) / norm["std"]).astype(np.float32)[None, :, :]
    return Instance(str(getattr(ds, "SOPInstanceUID", "")), str(getattr(ds, "StudyInstanceUID", "")),
                    str(getattr(ds, "StudyDate", "")), tensor)


def _messages(root: Any) -> Iterator[Any]:
    """Every protobuf message inside ``root`` (itself included), at any depth: graphs, nodes, attributes,
    subgraphs, tensors, whatever field holds them (iterative: a deep nest of subgraphs is no recursion)."""
    import onnx

    stack = [root]
    while stack:
        message = stack.pop()
        yield message
        if isinstance(message, onnx.TensorProto):
            continue  # its numbers hold no further message (and are not copied out to look)
        for field, value in message.ListFields():
            if field.message_type is None:
                continue
            if field.is_repeated:
                stack.extend(value)
            else:
                stack.append(value)


def check_self_contained(model: bytes) -> None:
    """Refuse (ContractError) a model that could reach the host when onnxruntime loads it, read by the onnx
    package without loading anything: a tensor stored as external data anywhere (initializers, sparse
    initializers, node attributes such as Constant's, the subgraphs of If, Loop and Scan at any depth), an
    operator set or node outside ONNX's standard ones (custom operators need a library, contrib ones such as
    EPContext read files, preview and training ones are not needed), model-local functions, training
    information, device configurations, and onnxruntime settings carried in the model (``ort_config``)."""
    import onnx

    opsets = standard_opsets()
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(model)
    except Exception:  # protobuf's DecodeError
        raise ContractError("the file is not an ONNX model (a protobuf ModelProto)") from None
    if not proto.HasField("graph"):
        raise ContractError("the file is not an ONNX model: it has no graph")
    if proto.functions:
        raise ContractError("the model defines its own functions: inline them (onnx.inliner.inline_local_functions)")
    if proto.training_info:
        raise ContractError("the model carries training information: export it for inference only")
    if proto.configuration:
        raise ContractError("the model carries device configurations: export it for one device")
    if any(prop.key == "ort_config" for prop in proto.metadata_props):
        raise ContractError("the model carries onnxruntime settings (metadata 'ort_config'): the hub chooses them")
    standard = "ONNX's standard operators only (ai.onnx, ai.onnx.ml), no custom, contrib, preview or training ones"
    for opset in proto.opset_import:
        newest = opsets.get(opset.domain)
        if newest is None:
            raise ContractError(f"the model imports operator set {opset.domain[:60]!r}: a model uses {standard}")
        if not 1 <= opset.version <= newest:
            raise ContractError(f"the model imports operator set {opset.domain or 'ai.onnx'} version "
                                f"{opset.version}: this hub runs versions 1–{newest}")
    for message in _messages(proto):
        if isinstance(message, onnx.TensorProto) and (message.data_location == onnx.TensorProto.EXTERNAL
                                                      or message.external_data):
            raise ContractError(f"the model's tensor {message.name[:60]!r} is stored outside the file (external "
                                "data): a model is one self-contained .onnx file")
        if isinstance(message, onnx.NodeProto) and message.domain not in opsets:
            raise ContractError(f"the model's operator {message.op_type[:60]!r} is of domain "
                                f"{message.domain[:60]!r}: a model uses {standard}")
        if isinstance(message, onnx.NodeProto) and message.device_configurations:
            raise ContractError("the model carries device configurations: export it for one device")


def _load_failure(exc: Exception) -> str:
    """Why onnxruntime refused a model, in the hub's words (its own message goes to the log only)."""
    import onnxruntime as ort

    log.warning("onnxruntime cannot load a model: %s: %s", type(exc).__name__, exc)
    reason = LOAD_FAILURES.get(type(exc).__name__, "load it with that version on the CPU to see why")
    return f"onnxruntime {ort.__version__} cannot load the model: {reason}"


def choose_providers(available: Sequence[str] | None = None) -> list[str]:
    """CUDA when this onnxruntime offers it (a GPU build on a host with a GPU), the CPU otherwise (and as
    CUDA's fallback for operators it lacks)."""
    import onnxruntime as ort

    offered = list(ort.get_available_providers() if available is None else available)
    return ["CUDAExecutionProvider", "CPUExecutionProvider"] if "CUDAExecutionProvider" in offered \
        else ["CPUExecutionProvider"]


class Runner:
    """An ONNX model loaded into onnxruntime (CUDA when offered, else the CPU), checked against its SHA-256,
    its contract and ``check_self_contained``. ``provider`` is the execution provider the session really uses."""

    def __init__(self, model: bytes, contract: Mapping[str, Any], output: Mapping[str, Any], *,
                 sha256: str | None = None, threads: int = 0, available: Sequence[str] | None = None) -> None:
        if sha256 is not None and hashlib.sha256(model).hexdigest() != sha256:
            raise ContractError("the model file does not match its recorded SHA-256")
        self.contract, self.output = check_contract(contract), check_output(output)
        check_self_contained(model)  # at upload and before every run: models stored before this check too
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads  # 0: onnxruntime's default (one per core)
        options.add_session_config_entry("session.load_model_format", "ONNX")  # the format checked, never ORT's
        with tempfile.TemporaryDirectory(prefix="strongroom-vai-model-") as nowhere:
            # should external data ever get past the check, its relative paths resolve in this empty directory,
            # never in the working directory (the hub's var directory, its keys under it); not chdir: that is
            # process-wide, and a runner may share its process with the web app
            options.add_session_config_entry("session.model_external_initializers_file_folder_path", nowhere)
            try:
                self.session = ort.InferenceSession(model, sess_options=options,
                                                    providers=choose_providers(available))
            except Exception as exc:
                raise ContractError(_load_failure(exc)) from None
        self.provider = self.session.get_providers()[0]
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise ContractError("the model takes exactly one input tensor")
        self.input_name = inputs[0].name
        shape = inputs[0].shape
        if len(shape) != 4:
            raise ContractError("the model's input is NCHW (4 dimensions)")
        h, w = self.contract["size"]
        if (isinstance(shape[2], int) and shape[2] != h) or (isinstance(shape[3], int) and shape[3] != w):
            raise ContractError(f"the model's input is {shape[2]}×{shape[3]}, the contract says {h}×{w}")
        names = [o.name for o in self.session.get_outputs()]
        self.output_name = self.output.get("name") or names[0]
        if self.output_name not in names:
            raise ContractError(f"the model has no output {self.output_name!r}")

    def predict(self, tensors: Sequence[np.ndarray]) -> list[float]:
        """Scores of a batch of preprocessed instances (each (1, H, W))."""
        if not tensors:
            return []
        batch = np.stack(list(tensors)).astype(np.float32)
        (out,) = self.session.run([self.output_name], {self.input_name: batch})
        out = np.asarray(out, dtype=np.float64).reshape(len(tensors), -1)
        index = self.output["index"]
        if index >= out.shape[1]:
            raise ContractError(f"the model gives {out.shape[1]} values per instance, the output names #{index}")
        return [float(v) for v in out[:, index]]
