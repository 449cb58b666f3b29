"""A vendor's ONNX model is one self-contained file and touches nothing of the hub's: a model whose tensors are
external data (which onnxruntime would read from a path relative to the worker's working directory, the hub's
var directory with its keys under it), wherever the tensor hides (an initializer, a Constant's attribute, an If's
subgraph), or whose operators are not ONNX's standard ones, is refused at upload through the real API with a
clear message; stored before that check, it is refused again before its evaluation runs, and the evaluation fails
cleanly without a score that carries the file's bytes. onnxruntime's own messages (paths, sizes) reach the log,
never the vendor. The demo detector still evaluates."""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from onnx import GraphProto, ModelProto, TensorProto, helper
from sqlalchemy import select

from conftest import bearer
from strongroom.archive.backend import storage_for
from strongroom.db import transaction
from strongroom.vai import inference, synthetic
from strongroom.vai.models import ModelVersion, Prediction
from test_vai import _drain, _model, _register, vai  # noqa: F401 (vai: the fixture)

S = synthetic.SIZE
PLANTED = bytes([0x5A, 0x17, 0xC3]) + b" the planted file's secret rest"
LEAKED = float(0x5A * 65536 + 0x17 * 256 + 0xC3)  # the score a model reading the planted file gives
IN_WORKING_DIRECTORY, IN_KEYS = "planted.bin", "keys/planted.sec"


def _external(name: str, location: str) -> TensorProto:
    """Three uint8 stored outside the model: onnxruntime reads them from ``location``."""
    tensor = TensorProto(name=name, data_type=TensorProto.UINT8, dims=[3], data_location=TensorProto.EXTERNAL)
    for key, value in (("location", location), ("offset", "0"), ("length", "3")):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor


def _graph(nodes: list, initializers: list[TensorProto]) -> GraphProto:
    """image (N, 1, 64, 64) → score (N, 1): the three bytes of ``W`` as one number, for every instance."""
    tail = [
        helper.make_node("GlobalMaxPool", ["image"], ["peak"]),
        helper.make_node("Flatten", ["peak"], ["flat"], axis=1),
        helper.make_node("Mul", ["flat", "zero"], ["nil"]),  # (N, 1), depends on the input: not folded away
        helper.make_node("Cast", ["W"], ["bytes"], to=TensorProto.FLOAT),
        helper.make_node("Reshape", ["bytes", "row"], ["bytes_row"]),
        helper.make_node("MatMul", ["bytes_row", "places"], ["number"]),  # b0·65536 + b1·256 + b2
        helper.make_node("Add", ["nil", "number"], ["score"]),
    ]
    constants = [helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
                 helper.make_tensor("row", TensorProto.INT64, [2], [1, 3]),
                 helper.make_tensor("places", TensorProto.FLOAT, [3, 1], [65536.0, 256.0, 1.0])]
    return helper.make_graph(
        nodes + tail, "reader", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, S, S])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N", 1])], initializer=initializers + constants)


def _model_of(graph: GraphProto, *extra_opsets: tuple[str, int]) -> bytes:
    opsets = [helper.make_opsetid("", 17), *(helper.make_opsetid(d, v) for d, v in extra_opsets)]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="acme")
    model.ir_version = 9
    return model.SerializeToString()


def initializer_reads(location: str) -> bytes:
    return _model_of(_graph([], [_external("W", location)]))


def constant_reads(location: str) -> bytes:
    return _model_of(_graph([helper.make_node("Constant", [], ["W"], value=_external("c", location))], []))


def if_branch_reads(location: str) -> bytes:
    out = [helper.make_tensor_value_info("branch", TensorProto.UINT8, [3])]
    then = helper.make_graph([helper.make_node("Identity", ["inner"], ["branch"])], "then", [], out,
                             initializer=[_external("inner", location)])
    other = helper.make_graph([helper.make_node("Constant", [], ["branch"], value=helper.make_tensor(
        "nothing", TensorProto.UINT8, [3], [0, 0, 0]))], "else", [], out)
    pick = helper.make_node("If", ["yes"], ["W"], then_branch=then, else_branch=other)
    return _model_of(_graph([pick], [helper.make_tensor("yes", TensorProto.BOOL, [], [True])]))


def custom_operator(location: str) -> bytes:
    """An operator of a vendor's own domain: it would need a library the hub would have to load."""
    read = helper.make_node("ReadFile", [], ["W"], domain="com.acme.io", path=location)
    return _model_of(_graph([read], []), ("com.acme.io", 1))


READERS: dict[str, tuple[Callable[[str], bytes], str]] = {
    "initializer, working directory": (initializer_reads, IN_WORKING_DIRECTORY),
    "initializer, keys": (initializer_reads, IN_KEYS),
    "Constant attribute": (constant_reads, IN_KEYS),
    "If subgraph": (if_branch_reads, IN_WORKING_DIRECTORY),
    "custom operator": (custom_operator, IN_KEYS),
}
REASONS = {"custom operator": "ONNX's standard operators only"}
EXTERNAL = "stored outside the file (external data)"


@pytest.fixture
def planted(vai, monkeypatch):  # noqa: F811 (vai: the fixture)
    """Files a model might reach: one in the worker's working directory, which is the var directory as in the
    container (deploy/Containerfile: WORKDIR = STRONGROOM_VAR_DIR), one beside the archive's keys."""
    var = Path(vai["hub"].settings.var_dir)
    (var / "keys").mkdir(parents=True, exist_ok=True)
    for name in (IN_WORKING_DIRECTORY, IN_KEYS):
        (var / name).write_bytes(PLANTED)
    monkeypatch.chdir(var)
    return vai


def _register_file(w, model: bytes, version: str) -> str:
    r = w["c"].post("/api/v1/vai/vendors/acme/models", headers=bearer(w["t"]["vera"]), json={
        "name": "Reader", "version": version, "mode": "onnx", "intended_use": "Flags CT slices for a second look.",
        "contract": synthetic.CONTRACT, "output": synthetic.OUTPUT, "sha256": hashlib.sha256(model).hexdigest()})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def _upload(w, model_id: str, model: bytes):
    return w["c"].put(f"/api/v1/vai/models/{model_id}/file", content=model,
                      headers={**bearer(w["t"]["vera"]), "Content-Type": "application/octet-stream"})


def _evaluate(w, model_id: str, title: str) -> dict:
    c, t = w["c"], w["t"]
    r = c.post("/api/v1/projects/screen/vai/evaluations", headers=bearer(t["sam"]), json={
        "model_version": model_id, "title": title, "dataset_id": w["dataset"], "dataset_version": 1,
        "labels_csv": synthetic.labels_csv(synthetic.cases(150, seed=11)),
        "protocol": {"operating_points": {"vendor": 0.5}, "bootstrap": 0}})
    assert r.status_code == 201, r.text
    _drain(w["hub"])
    return c.get(f"/api/v1/projects/screen/vai/evaluations/{r.json()['id']}", headers=bearer(t["sam"])).json()


def _shows_no_internals(message: str) -> None:
    """What a vendor reads names nothing of onnxruntime's inside or of the hub's disk."""
    for internal in ("ONNXRuntimeError", ".cc:", "FAIL :", "/", "does not exist", "tensorprotoutils"):
        assert internal not in message, message


@pytest.mark.parametrize("what", list(READERS))
def test_a_model_reaching_the_host_is_refused_at_upload(planted, what: str) -> None:
    build, location = READERS[what]
    model = build(location)
    model_id = _register_file(planted, model, "1")
    r = _upload(planted, model_id, model)
    assert r.status_code == 422, r.text
    assert REASONS.get(what, EXTERNAL) in r.json()["detail"]
    _shows_no_internals(r.json()["detail"])
    with planted["hub"].sessions() as s:
        assert s.get_one(ModelVersion, uuid.UUID(model_id)).file_key is None  # nothing kept
    assert not storage_for(planted["hub"]).exists(f"vai/models/{hashlib.sha256(model).hexdigest()}.onnx")


def test_a_model_stored_before_the_check_fails_its_evaluation_cleanly(planted) -> None:
    hub = planted["hub"]
    for number, (what, (build, location)) in enumerate(READERS.items()):
        model = build(location)
        model_id = _register_file(planted, model, str(number))
        key = f"vai/models/{hashlib.sha256(model).hexdigest()}.onnx"
        storage_for(hub).put_bytes(key, model)  # as an upload before the check kept it
        with transaction(hub.sessions) as s:
            mv = s.get_one(ModelVersion, uuid.UUID(model_id))
            mv.file_key, mv.size = key, len(model)
        ev = _evaluate(planted, model_id, what)
        assert ev["state"] == "failed", (what, ev["state"], ev["error"])
        assert REASONS.get(what, EXTERNAL) in ev["error"]
        with hub.sessions() as s:
            scores = list(s.scalars(select(Prediction.score).where(Prediction.evaluation_id == uuid.UUID(ev["id"]))))
        assert LEAKED not in scores and not any(score is not None for score in scores), what
    # the demo detector, beside the planted files, still evaluates
    ev = _evaluate(planted, _register(planted), "the detector")
    assert ev["state"] == "done", ev["error"]
    with hub.sessions() as s:
        scores = list(s.scalars(select(Prediction.score).where(Prediction.evaluation_id == uuid.UUID(ev["id"]))))
    assert len(scores) == 150 and all(0.0 <= score <= 1.0 for score in scores)


def test_onnxruntime_refusals_are_told_in_the_hub_s_words(planted, caplog) -> None:
    """A model onnxruntime refuses for its own reasons: the vendor reads a fixed message, the log the details."""
    mismatch = helper.make_graph(
        [helper.make_node("Add", ["image", "one"], ["score"])], "mismatch",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, S, S])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N", 1])],
        initializer=[helper.make_tensor("one", TensorProto.INT64, [1], [1])])  # float + int64: a type error
    model = _model_of(mismatch)
    caplog.set_level(logging.WARNING, logger="strongroom.vai.inference")
    r = _upload(planted, _register_file(planted, model, "1"), model)
    assert r.status_code == 422, r.text
    assert r.json()["detail"].startswith("onnxruntime ") and "cannot load the model" in r.json()["detail"]
    _shows_no_internals(r.json()["detail"])
    assert "Type Error" in caplog.text  # the full text, for the operator


def _sparse_external(location: str) -> TensorProto:
    sparse = helper.make_sparse_tensor(_external("v", location), helper.make_tensor("i", TensorProto.INT64, [3],
                                                                                   [0, 1, 2]), [3])
    return sparse


def _in_loop_body(location: str) -> bytes:
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Scan", ["seq"], ["seq_out"], num_scan_inputs=1, body=helper.make_graph(
             [helper.make_node("ConstantOfShape", ["shape"], ["elem_out"], value=_external("fill", location))],
             "scan", [helper.make_tensor_value_info("elem", TensorProto.FLOAT, [])],
             [helper.make_tensor_value_info("elem_out", TensorProto.UINT8, None)],
             initializer=[helper.make_tensor("shape", TensorProto.INT64, [1], [1])]))],
        "loop", [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                 helper.make_tensor_value_info("cond_in", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, [])])
    loop = helper.make_node("Loop", ["", "yes"], [], body=body)
    return _model_of(_graph([loop], [helper.make_tensor("yes", TensorProto.BOOL, [], [True]),
                                     helper.make_tensor("W", TensorProto.UINT8, [3], [1, 2, 3])]))


def _flag_only(location: str) -> bytes:
    tensor = helper.make_tensor("W", TensorProto.UINT8, [3], [1, 2, 3])
    tensor.data_location = TensorProto.EXTERNAL  # no entries: onnxruntime would still look outside
    return _model_of(_graph([], [tensor]))


def _entries_only(location: str) -> bytes:
    tensor = _external("W", location)
    tensor.data_location = TensorProto.DEFAULT
    return _model_of(_graph([], [tensor]))


def _with(change: Callable[[ModelProto], None]) -> Callable[[str], bytes]:
    def build(location: str) -> bytes:
        model = ModelProto()
        model.ParseFromString(synthetic.build_model(1.0, 0.0))
        change(model)
        return model.SerializeToString()
    return build


SIBLINGS: dict[str, tuple[Callable[[str], bytes], str]] = {
    **{what: (build, REASONS.get(what, EXTERNAL)) for what, (build, _) in READERS.items()},
    "sparse initializer": (lambda loc: _model_of(helper.make_graph(
        [helper.make_node("Identity", ["image"], ["score"])], "g",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, S, S])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N", 1, S, S])],
        sparse_initializer=[_sparse_external(loc)])), EXTERNAL),
    "Constant sparse_value": (lambda loc: _model_of(_graph(
        [helper.make_node("Constant", [], ["W"], sparse_value=_sparse_external(loc))], [])), EXTERNAL),
    "Constant in a Loop's Scan": (_in_loop_body, EXTERNAL),
    "external flag, no entries": (_flag_only, EXTERNAL),
    "entries, no external flag": (_entries_only, EXTERNAL),
    "training operator set": (lambda loc: _model_of(_graph(
        [helper.make_node("Gradient", ["image"], ["W"], domain="ai.onnx.preview.training", xs=["image"], y="W")],
        []), ("ai.onnx.preview.training", 1)), "'ai.onnx.preview.training'"),
    "contrib operator (EPContext reads a file)": (lambda loc: _model_of(_graph(
        [helper.make_node("EPContext", ["image"], ["W"], domain="com.microsoft", embed_mode=0,
                          ep_cache_context=loc)], []), ("com.microsoft", 1)), "'com.microsoft'"),
    "node of an unimported domain": (lambda loc: _model_of(_graph(
        [helper.make_node("ReadFile", [], ["W"], domain="com.acme.io")], [])), "'com.acme.io'"),
    "operator set from the future": (_with(lambda m: setattr(m.opset_import[0], "version", 10_000)),
                                     "version 10000"),
    "model-local functions": (_with(lambda m: m.functions.add(name="f", domain="acme")), "functions"),
    "training information": (_with(lambda m: m.training_info.add()), "training information"),
    "onnxruntime settings in the model": (_with(lambda m: m.metadata_props.add(key="ort_config", value="{}")),
                                          "ort_config"),
    "device configurations": (_with(lambda m: m.configuration.add(name="two", num_devices=2)),
                              "device configurations"),
    "not protobuf": (lambda loc: b"\xff\xff\xff not a model", "not an ONNX model"),
    "no graph": (lambda loc: b"", "no graph"),
}


@pytest.mark.parametrize("what", list(SIBLINGS))
def test_every_way_out_of_the_file_is_refused_before_onnxruntime_sees_it(what: str) -> None:
    build, reason = SIBLINGS[what]
    with pytest.raises(inference.ContractError) as refused:
        inference.check_self_contained(build(IN_KEYS))
    assert reason in str(refused.value)
    _shows_no_internals(str(refused.value))


def test_the_detector_is_self_contained() -> None:
    inference.check_self_contained(_model())
    runner = inference.Runner(_model(), synthetic.CONTRACT, synthetic.OUTPUT)
    assert len(runner.predict([inference.preprocess(synthetic.cases(1, seed=3)[0].data, runner.contract).tensor])) == 1


def test_external_data_that_got_past_the_check_resolves_nowhere(tmp_path, monkeypatch, caplog) -> None:
    """Defence in depth: were the check ever to miss a tensor, onnxruntime resolves it in an empty directory of
    its own, never in the working directory."""
    (tmp_path / "keys").mkdir()
    (tmp_path / IN_KEYS).write_bytes(PLANTED)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(inference, "check_self_contained", lambda model: None)  # the first layer switched off
    caplog.set_level(logging.WARNING, logger="strongroom.vai.inference")
    with pytest.raises(inference.ContractError) as refused:
        inference.Runner(initializer_reads(IN_KEYS), synthetic.CONTRACT, synthetic.OUTPUT)
    assert "cannot load the model" in str(refused.value)
    _shows_no_internals(str(refused.value))
    assert "planted.sec" in caplog.text  # onnxruntime's own words, in the log only
