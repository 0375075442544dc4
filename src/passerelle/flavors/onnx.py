"""ONNX graphs, run with onnxruntime on the CPU.

An ONNX file holds no code, so it never needs trust. The graph's inputs decide how a table
is fed: one matrix input takes every column in signature order; several inputs take one
column each, by name (the layout skl2onnx produces for ``ColumnTransformer`` pipelines).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from passerelle._deps import require
from passerelle.errors import InvalidInputError
from passerelle.flavors.base import Flavor, Predictor, SavedArtifact, comes_from, plain_list

MODEL_FILE = "model.onnx"
EXTRA = "onnx"
LIBRARIES = ["onnx", "onnxruntime", "numpy"]

_TENSOR_TYPES: dict[str, Any] = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int16)": np.int16,
    "tensor(int8)": np.int8,
    "tensor(uint64)": np.uint64,
    "tensor(uint32)": np.uint32,
    "tensor(uint16)": np.uint16,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
    "tensor(string)": np.str_,
}
# Operators of the ONNX-ML domain that carry the class labels of a classifier.
_CLASS_LABEL_OPS = frozenset({"ZipMap", "LinearClassifier", "TreeEnsembleClassifier", "SVMClassifier"})
_CLASS_LABEL_ATTRS = frozenset({"classlabels_int64s", "classlabels_ints", "classlabels_strings"})


def class_labels(model: Any) -> list[Any] | None:
    """The class labels recorded in the graph of ``model`` (an ``onnx.ModelProto``), if any."""
    onnx = require("onnx", EXTRA)
    labels: list[Any] | None = None
    # The last classifier-like node wins: in a pipeline it is the one producing the outputs.
    for node in model.graph.node:
        if node.op_type not in _CLASS_LABEL_OPS:
            continue
        for attribute in node.attribute:
            if attribute.name in _CLASS_LABEL_ATTRS:
                values = onnx.helper.get_attribute_value(attribute)
                labels = [v.decode() if isinstance(v, bytes) else int(v) for v in values]
    return labels


def _convert(values: np.ndarray[Any, Any], onnx_type: str, what: str) -> np.ndarray[Any, Any]:
    dtype = _TENSOR_TYPES.get(onnx_type)
    if dtype is None:
        raise InvalidInputError(f"the ONNX input {what} has the unsupported type {onnx_type}")
    try:
        # errstate turns NaN-to-integer casts into errors instead of silent garbage.
        with np.errstate(invalid="raise"):
            return values.astype(dtype)
    except (ValueError, TypeError, FloatingPointError) as exc:
        raise InvalidInputError(
            f"cannot convert the data for ONNX input {what} to {onnx_type}: {exc}"
        ) from exc


class OnnxPredictor(Predictor):
    def __init__(self, session: Any, classes: list[Any] | None) -> None:
        self.session = session
        self._inputs = list(session.get_inputs())
        outputs = list(session.get_outputs())
        proba = next((o for o in outputs if o.type.startswith("seq(map")), None)
        if proba is None and len(outputs) > 1:
            proba = next((o for o in outputs if "prob" in o.name.lower()), outputs[1])
        self._proba_name: str | None = None if proba is None else proba.name
        self._label_name: str = next(o.name for o in outputs if o.name != self._proba_name)
        self.classes = classes

    def _feed(self, table: pd.DataFrame) -> dict[str, np.ndarray[Any, Any]]:
        n_columns = table.shape[1]
        if len(self._inputs) == 1:
            node = self._inputs[0]
            shape = list(node.shape)
            width = shape[-1] if shape else None
            if len(shape) >= 2 and (not isinstance(width, int) or width == n_columns):
                return {node.name: _convert(table.to_numpy(), node.type, repr(node.name))}
            if len(shape) == 1 and n_columns == 1:
                return {node.name: _convert(table.iloc[:, 0].to_numpy(), node.type, repr(node.name))}
            raise InvalidInputError(
                f"the ONNX input {node.name!r} has shape {shape}, which does not fit {n_columns} columns"
            )
        missing = [node.name for node in self._inputs if node.name not in table.columns]
        if missing:
            raise InvalidInputError(
                f"the ONNX model takes one input per column; no column for: {', '.join(missing)}"
            )
        feeds = {}
        for node in self._inputs:
            column = table[node.name].to_numpy()
            if len(node.shape) != 1:
                column = column.reshape(-1, 1)
            feeds[node.name] = _convert(column, node.type, repr(node.name))
        return feeds

    def predict(self, table: pd.DataFrame) -> np.ndarray[Any, Any]:
        (result,) = self.session.run([self._label_name], self._feed(table))
        values = np.asarray(result)
        # A regressor's (rows, 1) output is one value per row; wider outputs are kept whole.
        if values.ndim == 2 and values.shape[1] == 1:
            return values.ravel()
        return values

    @property
    def has_proba(self) -> bool:
        return self._proba_name is not None

    def predict_proba(self, table: pd.DataFrame) -> np.ndarray[Any, Any]:
        if self._proba_name is None:
            return super().predict_proba(table)
        (result,) = self.session.run([self._proba_name], self._feed(table))
        if isinstance(result, list):
            # ZipMap output: one {label: probability} dict per row.
            classes = self.classes
            if classes is None:
                classes = plain_list(list(result[0])) if result else []
                if result:
                    self.classes = classes
            rows = [[row[c] for c in classes] for row in result]
            return np.array(rows, dtype=np.float64).reshape(len(result), len(classes))
        return np.asarray(result)


class OnnxFlavor(Flavor):
    name: ClassVar[str] = "onnx"
    extra: ClassVar[str | None] = EXTRA

    def detect_object(self, model: Any) -> bool:
        if not comes_from(model, "onnx"):
            return False
        return isinstance(model, require("onnx", EXTRA).ModelProto)

    def detect_path(self, path: Path) -> bool:
        return path.is_file() and path.suffix.lower() == ".onnx"

    def save_object(self, model: Any, dest: Path) -> SavedArtifact:
        onnx = require("onnx", EXTRA)
        if not isinstance(model, onnx.ModelProto):
            raise InvalidInputError(f"expected an onnx.ModelProto, got {type(model).__name__}")
        try:
            onnx.checker.check_model(model)
        except onnx.checker.ValidationError as exc:
            raise InvalidInputError(f"the ONNX model is not valid: {exc}") from exc
        onnx.save_model(model, dest / MODEL_FILE)
        options: dict[str, Any] = {}
        labels = class_labels(model)
        if labels is not None:
            options["classes"] = labels
        return SavedArtifact(options=options, libraries=list(LIBRARIES))

    def save_path(self, path: Path, dest: Path, *, trusted: bool) -> SavedArtifact:
        onnx = require("onnx", EXTRA)
        try:
            # Loading also pulls in tensors kept in external files next to the graph, so the
            # stored copy is self-contained.
            model = onnx.load(str(path))
        except Exception as exc:  # protobuf raises its own DecodeError for foreign files
            raise InvalidInputError(f"{path.name} is not a readable ONNX model: {exc}") from exc
        return self.save_object(model, dest)

    def load(self, path: Path, options: dict[str, Any], *, trusted: list[str]) -> Predictor:
        ort = require("onnxruntime", EXTRA)
        session_options = ort.SessionOptions()
        # One thread per request by default: the server runs many requests side by side.
        session_options.intra_op_num_threads = int(options.get("intra_op_num_threads", 1))
        session_options.log_severity_level = 3
        file = path / MODEL_FILE
        session = ort.InferenceSession(
            str(file), sess_options=session_options, providers=["CPUExecutionProvider"]
        )
        classes = options.get("classes")
        if classes is None and len(session.get_outputs()) > 1:
            classes = class_labels(require("onnx", EXTRA).load(str(file)))
        return OnnxPredictor(session, classes)
