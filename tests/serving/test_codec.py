"""The inference API codecs: every accepted shape, every error, and interoperability.

Interoperability is checked against the real ``tritonclient.http`` library without a
server: it builds request bodies (binary by default, as it sends them) that our decoder
reads, and parses the responses our encoder writes.

Cost on the hot path, measured with ``timeit`` (best of 5 x 20,000 calls, Python 3.11,
one row of five columns: integer, string, float, integer, boolean)::

    decode_predict, dataframe_records + key        ~4.5 us
    decode_predict, dataframe_split                ~3.0 us
    encode_predict, with proba for two classes     ~3.3 us
    decode_infer, tritonclient binary body         ~17 us
    decode_infer, tritonclient JSON body           ~14 us
    tensors_to_columns                             ~3.4 us
    encode_infer, predict + predict_proba          ~2.7 us (JSON or binary)
"""

from __future__ import annotations

import contextlib
import json
import math
import struct
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from passerelle.errors import InvalidInputError
from passerelle.serving import codec
from passerelle.serving.codec import (
    DATATYPES,
    HEADER_LENGTH,
    InferRequest,
    RequestedOutput,
    Tensor,
    decode_infer,
    decode_infer_response,
    decode_predict,
    encode_infer,
    encode_infer_request,
    encode_predict,
    tensors_to_columns,
)
from passerelle.signature import Column, Signature

tritonclient_http = pytest.importorskip("tritonclient.http")
InferInput = tritonclient_http.InferInput
InferRequestedOutput = tritonclient_http.InferRequestedOutput
TritonClient = tritonclient_http.InferenceServerClient

PROPERTY = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

NUMPY: dict[str, Any] = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
    "BYTES": np.object_,
}


def predict(document: Any) -> codec.DecodedRequest:
    return decode_predict(orjson.dumps(document))


def infer(document: Any) -> InferRequest:
    return decode_infer(orjson.dumps(document), {})


def tensor_doc(
    name: str = "x", datatype: str = "INT64", shape: Any = None, data: Any = None
) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": [1] if shape is None else shape, "data": data or [1]}


def binary_body(header: dict[str, Any], *blobs: bytes) -> tuple[bytes, dict[str, str]]:
    head = orjson.dumps(header)
    return head + b"".join(blobs), {HEADER_LENGTH: str(len(head))}


def bytes_blob(*items: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


def assert_same(actual: np.ndarray[Any, Any], expected: np.ndarray[Any, Any], datatype: str) -> None:
    assert actual.shape == expected.shape
    if datatype == "BYTES":
        assert actual.dtype == np.object_
        assert actual.reshape(-1).tolist() == expected.reshape(-1).tolist()
    else:
        assert actual.dtype == np.dtype(NUMPY[datatype])
        np.testing.assert_array_equal(actual, expected)


# ---------------------------------------------------------------------------------------
# /predict: decoding


def test_dataframe_records() -> None:
    decoded = predict({"dataframe_records": [{"a": 1, "b": "x"}, {"a": 2, "b": "y"}]})
    assert decoded.columns == {"a": [1, 2], "b": ["x", "y"]}
    assert decoded.n_rows == 2
    assert decoded.keys is None
    assert decoded.params == {}


def test_dataframe_records_missing_cells_are_none_and_columns_keep_first_seen_order() -> None:
    decoded = predict({"dataframe_records": [{"b": 1}, {"a": 2}, {"b": 3, "c": None}]})
    assert list(decoded.columns) == ["b", "a", "c"]
    assert decoded.columns == {"b": [1, None, 3], "a": [None, 2, None], "c": [None, None, None]}
    assert decoded.n_rows == 3


def test_dataframe_records_empty() -> None:
    decoded = predict({"dataframe_records": []})
    assert decoded.columns == {}
    assert decoded.n_rows == 0


def test_dataframe_split() -> None:
    decoded = predict(
        {"dataframe_split": {"columns": ["a", "b"], "data": [[1, "x"], [2, None]], "index": [7, 8]}}
    )
    assert decoded.columns == {"a": [1, 2], "b": ["x", None]}
    assert decoded.n_rows == 2


def test_dataframe_split_without_rows() -> None:
    decoded = predict({"dataframe_split": {"columns": ["a", "b"], "data": []}})
    assert decoded.columns == {"a": [], "b": []}
    assert decoded.n_rows == 0


@pytest.mark.parametrize("form", ["inputs", "instances"])
def test_inputs_and_instances_as_records_or_columns(form: str) -> None:
    as_records = predict({form: [{"a": 1, "b": True}, {"a": 2, "b": False}]})
    as_columns = predict({form: {"a": [1, 2], "b": [True, False]}})
    assert as_records.columns == as_columns.columns == {"a": [1, 2], "b": [True, False]}
    assert as_records.n_rows == as_columns.n_rows == 2


def test_params_and_nan_from_python_json() -> None:
    body = json.dumps({"dataframe_records": [{"a": float("nan"), "b": float("inf")}], "params": {"t": 0.5}})
    decoded = decode_predict(body.encode())
    assert math.isnan(decoded.columns["a"][0])
    assert decoded.columns["b"] == [math.inf]
    assert decoded.params == {"t": 0.5}
    assert predict({"dataframe_records": [], "params": None}).params == {}


def test_key_column() -> None:
    decoded = predict(
        {"dataframe_records": [{"id": "c1", "x": 1}, {"id": 42, "x": 2}, {"x": 3}], "key": "id"}
    )
    assert decoded.keys == ["c1", "42", None]
    assert decoded.columns["id"] == ["c1", 42, None]


def test_keys_per_row() -> None:
    decoded = predict({"dataframe_split": {"columns": ["x"], "data": [[1], [2]]}, "keys": ["a", 7]})
    assert decoded.keys == ["a", "7"]
    assert predict({"inputs": {"x": [1]}, "keys": [None]}).keys == [None]


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (
            {"dataframe_records": {"a": 1}},
            "dataframe_records: expected a list of objects (one per row), got an object",
        ),
        (
            {"dataframe_records": [{"a": 1}, {"a": 2}, 3]},
            "dataframe_records[2]: expected an object, got a number",
        ),
        ({"dataframe_records": [[1]]}, "dataframe_records[0]: expected an object, got a list"),
        ({"dataframe_split": [1]}, "dataframe_split: expected an object with columns and data, got a list"),
        ({"dataframe_split": {"data": []}}, "dataframe_split.columns: required (the list of column names)"),
        ({"dataframe_split": {"columns": []}}, "dataframe_split.data: required (the list of rows)"),
        (
            {"dataframe_split": {"columns": [], "data": [], "orient": "split"}},
            "dataframe_split: unknown field 'orient'; expected columns, data and optionally index",
        ),
        (
            {"dataframe_split": {"columns": "a", "data": []}},
            "dataframe_split.columns: expected a list of column names, got a string",
        ),
        (
            {"dataframe_split": {"columns": ["a", 1], "data": []}},
            "dataframe_split.columns[1]: expected a string, got 1",
        ),
        (
            {"dataframe_split": {"columns": ["a", "a"], "data": []}},
            "dataframe_split.columns[1]: column 'a' appears twice",
        ),
        (
            {"dataframe_split": {"columns": ["a"], "data": {}}},
            "dataframe_split.data: expected a list of rows, got an object",
        ),
        (
            {"dataframe_split": {"columns": list("abcde"), "data": [[1] * 5] * 3 + [[1] * 4]}},
            "dataframe_split.data[3]: expected 5 values (one per column), got 4",
        ),
        (
            {"dataframe_split": {"columns": ["a"], "data": [{"a": 1}]}},
            "dataframe_split.data[0]: expected a list of 1 values (one per column), got an object",
        ),
        (
            {"dataframe_split": {"columns": ["a"], "data": [[1], [2]], "index": [0]}},
            "dataframe_split.index: expected 2 values (one per row), got 1",
        ),
        (
            {"dataframe_split": {"columns": ["a"], "data": [[1]], "index": 0}},
            "dataframe_split.index: expected a list (one label per row), got a number",
        ),
        ({"inputs": {"a": 1}}, "inputs.a: expected a list of values (one per row), got a number"),
        ({"instances": {"a": [1, 2], "b": [1]}}, "instances.b: expected 2 values (as many as a), got 1"),
        ({"instances": [[1, 2]]}, "instances[0]: expected an object, got a list"),
        ({"inputs": "x"}, "inputs: expected a list of objects (one per row), got a string"),
        ([1], "body: expected a JSON object, got a list"),
        ({}, "body: expected one of dataframe_records, dataframe_split, inputs, instances"),
        ({"params": {}}, "body: expected one of dataframe_records, dataframe_split, inputs, instances"),
        (
            {"dataframe_records": [], "dataframe_split": {}},
            "body: expected only one of dataframe_records, dataframe_split, inputs, instances, "
            "got dataframe_records and dataframe_split",
        ),
        (
            {"dataframe_record": []},
            "body: unknown field 'dataframe_record'; expected one of dataframe_records, dataframe_split, "
            "inputs, instances, and optionally key, keys, params",
        ),
        ({"inputs": {}, "params": [1]}, "params: expected an object, got a list"),
        (
            {"inputs": {"a": [1]}, "key": "a", "keys": ["x"]},
            "body: give key (a column name) or keys (one per row), not both",
        ),
        ({"inputs": {"a": [1]}, "key": 3}, "key: expected the name of a column, got 3"),
        ({"inputs": {"a": [1]}, "key": "id"}, "key: there is no column named 'id'"),
        (
            {"inputs": {"id": ["a", "b", 1.5]}, "key": "id"},
            "key: column 'id', row 2: expected a string, an integer or null, got 1.5",
        ),
        ({"inputs": {"a": [1]}, "keys": "a"}, "keys: expected a list (one key per row), got a string"),
        ({"inputs": {"a": [1, 2]}, "keys": ["a"]}, "keys: expected 2 values (one per row), got 1"),
        (
            {"inputs": {"a": [1, 2]}, "keys": ["a", True]},
            "keys[1]: expected a string, an integer or null, got true",
        ),
    ],
)
def test_predict_errors(document: Any, message: str) -> None:
    with pytest.raises(InvalidInputError) as caught:
        predict(document)
    assert str(caught.value) == message


@pytest.mark.parametrize("body", [b"", b"{", b"[1,", b"\xff\xfe", b"{'a': 1}", b"NaN]"])
def test_predict_invalid_json(body: bytes) -> None:
    with pytest.raises(InvalidInputError, match=r"^body: not valid JSON: "):
        decode_predict(body)


# ---------------------------------------------------------------------------------------
# /predict: encoding


def test_encode_predict_shape_and_values() -> None:
    body = encode_predict(
        ["p1", "p2"],
        "churn",
        3,
        "churn-prod",
        np.array([1, 0]),
        np.array([[0.25, 0.75], [np.nan, 0.5]], dtype=np.float32),
        np.array([0, 1]),
        {"alias": "champion"},
    )
    assert orjson.loads(body) == {
        "predictions": [
            {"prediction_id": "p1", "prediction": 1, "proba": {"0": 0.25, "1": 0.75}},
            {"prediction_id": "p2", "prediction": 0, "proba": {"0": None, "1": 0.5}},
        ],
        "model": "churn",
        "version": 3,
        "endpoint": "churn-prod",
        "alias": "champion",
    }


def test_encode_predict_without_proba_converts_numpy_and_nan() -> None:
    body = encode_predict(
        ["a", "b", "c"], "m", "2", "e", [np.float32(1.5), np.float64("nan"), np.int64(7)], None, None, None
    )
    document = orjson.loads(body)
    assert [p["prediction"] for p in document["predictions"]] == [1.5, None, 7]
    assert all("proba" not in p for p in document["predictions"])
    strings = orjson.loads(encode_predict(["a"], "m", 1, "e", np.array(["yes"]), None, None, None))
    assert strings["predictions"][0]["prediction"] == "yes"
    infinite = orjson.loads(encode_predict(["a"], "m", 1, "e", np.array([np.inf]), None, None, None))
    assert infinite["predictions"][0]["prediction"] is None


def test_encode_predict_labels_of_classes() -> None:
    proba = np.array([[0.1, 0.9]])
    unnamed = orjson.loads(encode_predict(["a"], "m", 1, "e", [True], proba, None, None))
    assert unnamed["predictions"][0]["proba"] == {"0": 0.1, "1": 0.9}
    booleans = orjson.loads(encode_predict(["a"], "m", 1, "e", np.array([True]), proba, [False, True], None))
    assert booleans["predictions"][0] == {
        "prediction_id": "a",
        "prediction": True,
        "proba": {"false": 0.1, "true": 0.9},
    }
    text = orjson.loads(encode_predict(["a"], "m", 1, "e", ["no"], proba, np.array(["no", "yes"]), None))
    assert text["predictions"][0]["proba"] == {"no": 0.1, "yes": 0.9}


def test_encode_predict_datetimes_and_objects() -> None:
    stamps = np.array(["2024-01-02T03:04:05"], dtype="datetime64[ns]")
    document = orjson.loads(encode_predict(["a"], "m", 1, "e", stamps, None, None, None))
    assert document["predictions"][0]["prediction"] == "2024-01-02T03:04:05"
    from decimal import Decimal

    objects = orjson.loads(
        encode_predict(["a"], "m", 1, "e", np.array([Decimal("1.5")], dtype=object), None, None, None)
    )
    assert objects["predictions"][0]["prediction"] == "1.5"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"prediction_ids": ["a", "b"]}, "2 prediction ids for 1 predictions"),
        ({"proba": np.array([0.5])}, r"proba has shape \[1\]"),
        ({"proba": np.array([[0.5, 0.5]]), "classes": [1]}, "1 classes for 2 probability columns"),
        ({"extra": {"model": "x"}}, "extra fields may not replace model"),
        ({"predictions": np.float64(1.0)}, "one value per row"),
    ],
)
def test_encode_predict_misuse(kwargs: dict[str, Any], message: str) -> None:
    arguments: dict[str, Any] = {
        "prediction_ids": ["a"],
        "model": "m",
        "version": 1,
        "endpoint": "e",
        "predictions": [1],
        "proba": None,
        "classes": None,
        "extra": None,
    }
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=message):
        encode_predict(**arguments)


# ---------------------------------------------------------------------------------------
# Open Inference Protocol: JSON requests


ALL_JSON_VALUES: dict[str, list[Any]] = {
    "BOOL": [True, False, True, False],
    "UINT8": [0, 255, 1, 2],
    "UINT16": [0, 65535, 1, 2],
    "UINT32": [0, 2**32 - 1, 1, 2],
    "UINT64": [0, 2**64 - 1, 2**63, 2],
    "INT8": [-128, 127, 0, 1],
    "INT16": [-(2**15), 2**15 - 1, 0, 1],
    "INT32": [-(2**31), 2**31 - 1, 0, 1],
    "INT64": [-(2**63), 2**63 - 1, 0, 1],
    "FP16": [0.5, -65504.0, 1, 2],
    "FP32": [0.1, 3.4e38, -1, None],
    "FP64": [0.1, 1e308, -1, None],
    "BYTES": ["a", "", "é ☃", "\x00z"],
}


@pytest.mark.parametrize("datatype", DATATYPES)
@pytest.mark.parametrize("nested", [False, True])
def test_json_request_every_datatype(datatype: str, nested: bool) -> None:
    values = ALL_JSON_VALUES[datatype]
    data = [values[:2], values[2:]] if nested else values
    request = infer(
        {"id": "r1", "inputs": [{"name": "x", "datatype": datatype, "shape": [2, 2], "data": data}]}
    )
    assert request.id == "r1"
    (tensor,) = request.inputs
    assert (tensor.name, tensor.shape, tensor.datatype) == ("x", [2, 2], datatype)
    if datatype == "BYTES":
        expected = np.array([v.encode() for v in values], dtype=object).reshape(2, 2)
    else:
        expected = np.array([np.nan if v is None else v for v in values], dtype=NUMPY[datatype]).reshape(2, 2)
    assert_same(tensor.data, expected, datatype)


def test_json_request_defaults() -> None:
    request = infer({"inputs": [tensor_doc()]})
    assert request.id is None
    assert request.parameters == {}
    assert request.outputs == []
    assert request.binary_response_default is False


def test_requested_outputs_and_binary_default() -> None:
    request = infer(
        {
            "inputs": [tensor_doc()],
            "parameters": {"binary_data_output": True, "custom": "x"},
            "outputs": [{"name": "predict"}, {"name": "predict_proba", "parameters": {"binary_data": False}}],
        }
    )
    assert request.parameters == {"binary_data_output": True, "custom": "x"}
    assert request.binary_response_default is True
    assert request.outputs == [RequestedOutput("predict", True), RequestedOutput("predict_proba", False)]


def test_scalar_and_empty_tensors() -> None:
    request = infer(
        {
            "inputs": [
                {"name": "s", "datatype": "FP32", "shape": [], "data": [2.5]},
                {"name": "e", "datatype": "INT8", "shape": [0, 3], "data": []},
                {"name": "b", "datatype": "BYTES", "shape": [2, 0], "data": [[], []]},
            ]
        }
    )
    scalar, empty, no_bytes = request.inputs
    assert scalar.data.shape == ()
    assert scalar.data.item() == 2.5
    assert empty.data.shape == (0, 3)
    assert empty.data.dtype == np.int8
    assert no_bytes.data.shape == (2, 0)
    assert no_bytes.data.dtype == np.object_


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (
            {
                "inputs": [
                    tensor_doc("plan", "BYTES", [2], ["a", "b"]),
                    tensor_doc("age", "INT64", [3, 1], [1, 2]),
                ]
            },
            "inputs[1] (age): shape [3, 1] needs 3 values, got 2",
        ),
        (
            {"inputs": [tensor_doc("age", "INT64", [2, 2], [[1, 2], [3]])]},
            "inputs[0] (age): shape [2, 2] needs 4 values, got 3",
        ),
        (
            {"inputs": [tensor_doc("x", "UINT8", [2], [1, 256])]},
            "inputs[0] (x): value 1 of data, 256, is out of range for UINT8",
        ),
        (
            {"inputs": [tensor_doc("x", "UINT16", [1], [-1])]},
            "inputs[0] (x): value 0 of data, -1, is out of range for UINT16",
        ),
        (
            {"inputs": [tensor_doc("x", "INT8", [1], [-129])]},
            "inputs[0] (x): value 0 of data, -129, is out of range for INT8",
        ),
        (
            {"inputs": [tensor_doc("x", "INT64", [2], [1, 2**63])]},
            "inputs[0] (x): value 1 of data, 9223372036854775808, is out of range for INT64",
        ),
        (
            {"inputs": [tensor_doc("x", "UINT64", [2], [2**63, -1])]},
            "inputs[0] (x): value 1 of data, -1, is out of range for UINT64",
        ),
        (
            {"inputs": [tensor_doc("x", "INT32", [2], [1, 1.5])]},
            "inputs[0] (x): value 1 of data: expected an integer, got 1.5",
        ),
        (
            {"inputs": [tensor_doc("x", "INT32", [1], [True])]},
            "inputs[0] (x): value 0 of data: expected an integer, got true",
        ),
        (
            {"inputs": [tensor_doc("x", "INT32", [2], [1, None])]},
            "inputs[0] (x): value 1 of data: expected an integer, got null",
        ),
        (
            {"inputs": [tensor_doc("x", "BOOL", [2], [True, 1])]},
            "inputs[0] (x): value 1 of data: expected a boolean, got 1",
        ),
        (
            {"inputs": [tensor_doc("x", "FP64", [2], [1.0, "2"])]},
            "inputs[0] (x): value 1 of data: expected a number or null, got '2'",
        ),
        (
            {"inputs": [tensor_doc("x", "FP64", [1], [True])]},
            "inputs[0] (x): value 0 of data: expected a number or null, got true",
        ),
        (
            {"inputs": [tensor_doc("x", "FP64", [2], [1.0, {}])]},
            "inputs[0] (x): value 1 of data: expected a number or null, got an object",
        ),
        (
            {"inputs": [tensor_doc("x", "FP16", [2], [1.0, 70000.0])]},
            "inputs[0] (x): value 1 of data, 70000.0, is out of range for FP16",
        ),
        (
            {"inputs": [tensor_doc("x", "FP32", [2], [None, 1e39])]},
            "inputs[0] (x): value 1 of data, 1e+39, is out of range for FP32",
        ),
        (
            {"inputs": [tensor_doc("x", "BYTES", [2], ["a", 1])]},
            "inputs[0] (x): value 1 of data: expected a string, got 1",
        ),
        (
            {"inputs": [tensor_doc("x", "BYTES", [1], [None])]},
            "inputs[0] (x): value 0 of data: expected a string, got null",
        ),
        (
            {"inputs": [tensor_doc("x", "INT64", [1], 5)]},
            "inputs[0] (x): data: expected a list, got a number",
        ),
        (
            {"inputs": [tensor_doc("x", "BF16", [1], [1.0])]},
            "inputs[0] (x): datatype 'BF16' is not supported; expected one of " + ", ".join(DATATYPES),
        ),
        (
            {"inputs": [tensor_doc("x", "INT64", [-1], [1])]},
            "inputs[0] (x): shape: expected a list of non-negative integers, got a list",
        ),
        (
            {"inputs": [tensor_doc("x", "INT64", "1", [1])]},
            "inputs[0] (x): shape: expected a list of non-negative integers, got '1'",
        ),
        (
            {"inputs": [{"name": "x", "datatype": "INT64", "shape": [1]}]},
            "inputs[0] (x): no data (give data, or parameters.binary_data_size)",
        ),
        (
            {"inputs": [{**tensor_doc(), "parameters": {"binary_data_size": 8}}]},
            "inputs[0] (x): give data or parameters.binary_data_size, not both",
        ),
        (
            {
                "inputs": [
                    {"name": "x", "datatype": "INT64", "shape": [1], "parameters": {"binary_data_size": 8}}
                ]
            },
            "inputs[0] (x): parameters.binary_data_size needs the Inference-Header-Content-Length header "
            "giving the size of the JSON part of the body",
        ),
        (
            {
                "inputs": [
                    {
                        "name": "x",
                        "datatype": "INT64",
                        "shape": [1],
                        "parameters": {"shared_memory_region": "r"},
                    }
                ]
            },
            "inputs[0] (x): shared memory is not supported; send the data in the body",
        ),
        (
            {"inputs": [{**tensor_doc(), "parameters": [1]}]},
            "inputs[0] (x): parameters: expected an object, got a list",
        ),
        ({"inputs": [tensor_doc(), tensor_doc()]}, "inputs[1] (x): a tensor of this name appears twice"),
        ({"inputs": [{"datatype": "INT64"}]}, "inputs[0].name: expected a string, got null"),
        ({"inputs": [1]}, "inputs[0]: expected an object, got a number"),
        ({"inputs": []}, "inputs: expected at least one tensor"),
        ({"inputs": {}}, "inputs: expected a list of tensors, got an object"),
        ({"id": "x"}, "inputs: required (a list of tensors)"),
        ({"id": 3, "inputs": [tensor_doc()]}, "id: expected a string, got 3"),
        ({"inputs": [tensor_doc()], "parameters": "x"}, "parameters: expected an object, got a string"),
        (
            {"inputs": [tensor_doc()], "parameters": {"binary_data_output": "yes"}},
            "parameters.binary_data_output: expected true or false, got 'yes'",
        ),
        ({"inputs": [tensor_doc()], "outputs": {}}, "outputs: expected a list, got an object"),
        ({"inputs": [tensor_doc()], "outputs": ["predict"]}, "outputs[0]: expected an object, got a string"),
        ({"inputs": [tensor_doc()], "outputs": [{"name": 1}]}, "outputs[0].name: expected a string, got 1"),
        (
            {"inputs": [tensor_doc()], "outputs": [{"name": "p", "parameters": {"binary_data": 1}}]},
            "outputs[0] (p): parameters.binary_data: expected true or false, got 1",
        ),
        (
            {"inputs": [tensor_doc()], "outputs": [{"name": "p", "parameters": {"classification": 2}}]},
            "outputs[0] (p): the classification extension is not supported",
        ),
        ([], "body: expected a JSON object, got a list"),
    ],
)
def test_infer_errors(document: Any, message: str) -> None:
    with pytest.raises(InvalidInputError) as caught:
        infer(document)
    assert str(caught.value) == message


def test_python_json_in_tensor_data() -> None:
    body = (
        b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [3], "data": [NaN, Infinity, -Infinity]}]}'
    )
    assert str(decode_infer(body, {}).inputs[0].data.tolist()) == "[nan, inf, -inf]"
    huge = (
        b'{"inputs": [{"name": "x", "datatype": "FP64", "shape": [2], "data": [NaN, 1' + b"0" * 30 + b"]}]}"
    )
    assert decode_infer(huge, {}).inputs[0].data[1] == 1e30
    # an integer too large for a double, a lone surrogate: orjson refuses both
    for junk in (b"1" + b"0" * 400, b'"\\ud800"'):
        body = b'{"inputs": [{"name": "x", "datatype": "FP64", "shape": [2], "data": [NaN, ' + junk + b"]}]}"
        with pytest.raises(InvalidInputError, match=r"^body: not valid JSON: "):
            decode_infer(body, {})


def test_null_among_floats_out_of_range() -> None:
    with pytest.raises(InvalidInputError) as caught:
        infer({"inputs": [tensor_doc("x", "FP16", [2], [None, 70000])]})
    assert str(caught.value) == "inputs[0] (x): value 1 of data, 70000, is out of range for FP16"


def test_infer_invalid_json() -> None:
    with pytest.raises(InvalidInputError, match=r"^body: not valid JSON: "):
        decode_infer(b"{", {})


# ---------------------------------------------------------------------------------------
# Open Inference Protocol: binary requests


def test_binary_request_every_datatype_and_mixed_with_json() -> None:
    arrays = {
        datatype: np.array(
            [
                v.encode() if isinstance(v, str) else (np.nan if v is None else v)
                for v in ALL_JSON_VALUES[datatype]
            ],
            dtype=NUMPY[datatype],
        ).reshape(2, 2)
        for datatype in DATATYPES
    }
    header_inputs: list[dict[str, Any]] = []
    blobs = []
    for datatype, array in arrays.items():
        blob = (
            bytes_blob(*array.reshape(-1).tolist())
            if datatype == "BYTES"
            else array.astype(array.dtype.newbyteorder("<")).tobytes()
        )
        header_inputs.append(
            {
                "name": datatype.lower(),
                "datatype": datatype,
                "shape": [2, 2],
                "parameters": {"binary_data_size": len(blob)},
            }
        )
        blobs.append(blob)
    header_inputs.insert(3, tensor_doc("json", "INT16", [2], [1, 2]))
    body, headers = binary_body({"inputs": header_inputs}, *blobs)
    request = decode_infer(body, headers)
    decoded = {t.name: t for t in request.inputs}
    for datatype, array in arrays.items():
        assert_same(decoded[datatype.lower()].data, array, datatype)
    assert decoded["json"].data.tolist() == [1, 2]
    assert list(decoded) == [t["name"] for t in header_inputs]


def test_binary_header_name_is_case_insensitive() -> None:
    body, headers = binary_body(
        {"inputs": [{"name": "x", "datatype": "INT32", "shape": [1], "parameters": {"binary_data_size": 4}}]},
        struct.pack("<i", -5),
    )
    for name in (HEADER_LENGTH, HEADER_LENGTH.lower(), HEADER_LENGTH.upper()):
        assert decode_infer(body, {name: headers[HEADER_LENGTH]}).inputs[0].data.tolist() == [-5]


def test_binary_header_without_binary_inputs() -> None:
    head = orjson.dumps({"inputs": [tensor_doc()]})
    assert decode_infer(head, {HEADER_LENGTH: str(len(head))}).inputs[0].data.tolist() == [1]


def _binary_input(datatype: str, shape: list[int], size: int) -> dict[str, Any]:
    return {"name": "x", "datatype": datatype, "shape": shape, "parameters": {"binary_data_size": size}}


@pytest.mark.parametrize(
    ("header", "blob", "message"),
    [
        (
            {"inputs": [_binary_input("FP32", [3], 8)]},
            b"\0" * 8,
            "inputs[0] (x): shape [3] of FP32 needs 12 bytes, but binary_data_size is 8",
        ),
        (
            {"inputs": [_binary_input("FP32", [2], 8)]},
            b"\0" * 4,
            "inputs[0] (x): binary_data_size is 8 bytes but only 4 bytes of binary data are left in the body",
        ),
        (
            {"inputs": [_binary_input("INT8", [2], 2)]},
            b"\0" * 5,
            "body: 3 bytes of binary data follow the last tensor; "
            "the binary_data_size of the inputs do not account for them",
        ),
        (
            {"inputs": [tensor_doc()]},
            b"\0",
            "body: 1 bytes of binary data follow the last tensor; "
            "the binary_data_size of the inputs do not account for them",
        ),
        (
            {"inputs": [_binary_input("INT8", [1], -1)]},
            b"",
            "inputs[0] (x): parameters.binary_data_size: expected a byte count, got -1",
        ),
        (
            {"inputs": [_binary_input("INT8", [1], "1")]},
            b"1",
            "inputs[0] (x): parameters.binary_data_size: expected a byte count, got '1'",
        ),
        (
            {"inputs": [_binary_input("BOOL", [3], 3)]},
            b"\x01\x00\x02",
            "inputs[0] (x): BOOL value 2 is neither 0 nor 1",
        ),
        (
            {"inputs": [_binary_input("BYTES", [1], 10)]},
            b"\x01\0\0\0a\x01\0\0\0b",
            "inputs[0] (x): shape [1] needs 1 BYTES elements, got more than 1",
        ),
        (
            {"inputs": [_binary_input("BYTES", [2], 5)]},
            b"\x01\0\0\0a",
            "inputs[0] (x): shape [2] needs 2 BYTES elements, got 1",
        ),
        (
            {"inputs": [_binary_input("BYTES", [1], 6)]},
            b"\x05\0\0\0ab",
            "inputs[0] (x): BYTES element 0 announces 5 bytes, but only 2 are left",
        ),
        (
            {"inputs": [_binary_input("BYTES", [2], 7)]},
            b"\x01\0\0\0a\0\0",
            "inputs[0] (x): BYTES element 1 is cut inside its 4-byte length",
        ),
    ],
)
def test_binary_errors(header: dict[str, Any], blob: bytes, message: str) -> None:
    body, headers = binary_body(header, blob)
    with pytest.raises(InvalidInputError) as caught:
        decode_infer(body, headers)
    assert str(caught.value) == message


@pytest.mark.parametrize("value", ["abc", "0", "-3", "1000", ""])
def test_bad_header_length(value: str) -> None:
    body = orjson.dumps({"inputs": [tensor_doc()]})
    with pytest.raises(
        InvalidInputError, match=rf"^{HEADER_LENGTH}: expected the size in bytes of the JSON part"
    ):
        decode_infer(body, {HEADER_LENGTH: value})


def test_header_length_cutting_the_json() -> None:
    body = orjson.dumps({"inputs": [tensor_doc()]})
    with pytest.raises(InvalidInputError, match=r"^body \(JSON part\): not valid JSON: "):
        decode_infer(body, {HEADER_LENGTH: "10"})


# ---------------------------------------------------------------------------------------
# tensors to columns


def bytes_tensor(name: str, values: list[str], shape: list[int] | None = None) -> Tensor:
    data = np.array([v.encode() for v in values], dtype=object).reshape(shape or [len(values)])
    return Tensor(name, shape or [len(values)], "BYTES", data)


def test_one_tensor_per_column_in_signature_order() -> None:
    columns = tensors_to_columns(
        [
            Tensor("age", [2, 1], "INT64", np.array([[30], [40]])),
            bytes_tensor("plan", ["pro", "é"]),
            Tensor("paid", [2], "BOOL", np.array([True, False])),
        ],
        ["plan", "age", "paid"],
    )
    assert list(columns) == ["plan", "age", "paid"]
    assert columns["plan"] == ["pro", "é"]
    assert isinstance(columns["age"], np.ndarray)
    assert columns["age"].tolist() == [30, 40]
    assert isinstance(columns["paid"], np.ndarray)
    assert columns["paid"].dtype == np.bool_


def test_single_matrix_in_signature_order() -> None:
    matrix = Tensor("input", [2, 3], "FP32", np.arange(6, dtype=np.float32).reshape(2, 3))
    columns = tensors_to_columns([matrix], ["a", "b", "c"])
    assert {k: np.asarray(v).tolist() for k, v in columns.items()} == {"a": [0, 3], "b": [1, 4], "c": [2, 5]}
    text = tensors_to_columns([bytes_tensor("x", ["p", "q", "r", "s"], [2, 2])], ["a", "b"])
    assert text == {"a": ["p", "r"], "b": ["q", "s"]}
    # a matrix named after one column is still a matrix when it is wider than one column
    assert list(tensors_to_columns([Tensor("a", [1, 2], "INT8", np.zeros((1, 2), np.int8))], ["a", "b"])) == [
        "a",
        "b",
    ]
    single = tensors_to_columns([Tensor("x", [2, 1], "INT8", np.zeros((2, 1), np.int8))], ["only"])
    assert np.asarray(single["only"]).tolist() == [0, 0]


def test_columns_from_hand_built_text_tensor() -> None:
    tensor = Tensor("a", [2], "BYTES", np.array(["x", b"y"], dtype=object))
    assert tensors_to_columns([tensor], ["a"]) == {"a": ["x", "y"]}


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        (
            [Tensor("x", [2, 2], "FP64", np.zeros((2, 2)))],
            "inputs[0] (x): shape [2, 2] has 2 columns, but the model takes 3 (a, b, c)",
        ),
        (
            [Tensor("a", [2], "FP64", np.zeros(2)), Tensor("z", [2], "FP64", np.zeros(2))],
            "inputs[1] (z): not a column of this model; "
            "send one tensor per column named a, b, c, or a single [n, 3] tensor",
        ),
        (
            [Tensor("a", [2], "FP64", np.zeros(2)), Tensor("b", [2], "FP64", np.zeros(2))],
            "inputs: no tensor for column(s) 'c'; send one tensor per column, or a single [n, 3] tensor "
            "with the columns in signature order",
        ),
        (
            [Tensor("a", [2], "FP64", np.zeros(2)), Tensor("b", [3], "FP64", np.zeros(3))],
            "inputs[1] (b): 3 rows, but inputs[0] (a) has 2",
        ),
        (
            [Tensor("a", [2], "FP64", np.zeros(2)), Tensor("a", [2], "FP64", np.zeros(2))],
            "inputs[1] (a): a tensor of this name appears twice",
        ),
        (
            [Tensor("a", [2, 2, 1], "FP64", np.zeros((2, 2, 1))), Tensor("b", [2], "FP64", np.zeros(2))],
            "inputs[0] (a): shape [2, 2, 1] is not [n] or [n, 1] (one value per row)",
        ),
        (
            [
                Tensor("a", [1], "BYTES", np.array([b"\xff"], dtype=object)),
                Tensor("b", [1], "INT8", np.zeros(1)),
            ],
            "inputs[0] (a): value 0 is not valid UTF-8 text",
        ),
        (
            [Tensor("m", [1, 3], "BYTES", np.array([[b"a", b"\xff", b"c"]], dtype=object))],
            "inputs[0] (m), column 1 (b): value 0 is not valid UTF-8 text",
        ),
    ],
)
def test_columns_errors(inputs: list[Tensor], message: str) -> None:
    with pytest.raises(InvalidInputError) as caught:
        tensors_to_columns(inputs, ["a", "b", "c"])
    assert str(caught.value) == message


# ---------------------------------------------------------------------------------------
# Open Inference Protocol: responses


def test_encode_infer_json() -> None:
    outputs = codec.default_outputs(np.array(["no", "yes"]), np.array([[0.9, 0.1], [np.nan, 0.8]]))
    body, headers = encode_infer("churn", 3, "r1", outputs, {"prediction_ids": ["p1", "p2"]}, set())
    assert headers == {"Content-Type": "application/json"}
    assert orjson.loads(body) == {
        "model_name": "churn",
        "model_version": "3",
        "id": "r1",
        "parameters": {"prediction_ids": ["p1", "p2"]},
        "outputs": [
            {"name": "predict", "datatype": "BYTES", "shape": [2], "data": ["no", "yes"]},
            {"name": "predict_proba", "datatype": "FP64", "shape": [2, 2], "data": [0.9, 0.1, None, 0.8]},
        ],
    }


def test_encode_infer_binary() -> None:
    outputs = codec.default_outputs(np.array([1, 0]), np.array([[0.25, 0.75], [1.0, 0.0]]))
    body, headers = encode_infer("churn", "3", None, outputs, None, {"predict_proba", "unknown"})
    assert headers["Content-Type"] == "application/octet-stream"
    length = int(headers[HEADER_LENGTH])
    head = orjson.loads(body[:length])
    assert "id" not in head
    assert "parameters" not in head
    assert head["outputs"][0] == {"name": "predict", "datatype": "INT64", "shape": [2], "data": [1, 0]}
    assert head["outputs"][1] == {
        "name": "predict_proba",
        "datatype": "FP64",
        "shape": [2, 2],
        "parameters": {"binary_data_size": 32},
    }
    assert np.frombuffer(body[length:], "<f8").tolist() == [0.25, 0.75, 1.0, 0.0]


def test_encode_infer_misuse() -> None:
    with pytest.raises(ValueError, match="shape"):
        encode_infer("m", "1", None, [("predict", "INT64", [3], np.zeros(2))], None, set())
    with pytest.raises(ValueError, match="unknown datatype"):
        encode_infer("m", "1", None, [("predict", "INT128", [2], np.zeros(2))], None, set())
    with pytest.raises(ValueError, match="not UTF-8 text"):
        encode_infer(
            "m", "1", None, [("predict", "BYTES", [1], np.array([b"\xff"], dtype=object))], None, set()
        )
    body, _ = encode_infer(
        "m", "1", None, [("predict", "BYTES", [1], np.array([b"\xff"], dtype=object))], None, {"predict"}
    )
    assert body.endswith(b"\x01\0\0\0\xff")


def test_encode_bytes_outputs_from_objects() -> None:
    labels = np.array([1, "a", b"b"], dtype=object)
    body, _ = encode_infer("m", None, None, [("predict", "BYTES", [3], labels)], None, set())
    document = orjson.loads(body)
    assert "model_version" not in document
    assert document["outputs"][0]["data"] == ["1", "a", "b"]
    body, headers = encode_infer("m", None, None, [("predict", "BYTES", [3], labels)], None, {"predict"})
    assert body[int(headers[HEADER_LENGTH]) :] == bytes_blob(b"1", b"a", b"b")


def test_plan_outputs() -> None:
    available = ["predict", "predict_proba"]
    request = InferRequest(None, [], binary_response_default=True)
    assert codec.plan_outputs(request, available) == (available, set(available))
    request.binary_response_default = False
    assert codec.plan_outputs(request, available) == (available, set())
    request.outputs = [RequestedOutput("predict_proba", True), RequestedOutput("predict", False)]
    assert codec.plan_outputs(request, available) == (["predict_proba", "predict"], {"predict_proba"})
    request.outputs = [RequestedOutput("predict", False), RequestedOutput("classes", False)]
    with pytest.raises(InvalidInputError) as caught:
        codec.plan_outputs(request, available)
    assert (
        str(caught.value) == "outputs[1] (classes): no such output; this model gives predict, predict_proba"
    )


def test_datatype_of_and_default_outputs() -> None:
    for datatype in DATATYPES:
        assert codec.datatype_of(np.zeros(1, dtype=NUMPY[datatype])) == datatype
    assert codec.datatype_of(np.array(["a"])) == "BYTES"
    assert codec.datatype_of(np.array([b"a"])) == "BYTES"
    assert codec.datatype_of(np.zeros(1, dtype=">i4")) == "INT32"
    with pytest.raises(ValueError, match="no Open Inference Protocol datatype"):
        codec.datatype_of(np.zeros(1, dtype=np.complex64))
    (predict_output,) = codec.default_outputs(np.array(["2024-01-01"], dtype="datetime64[D]"), None)
    assert predict_output[:3] == ("predict", "BYTES", [1])


def test_decode_response_errors() -> None:
    for document, message in [
        ({"outputs": []}, "model_name: expected a string, got null"),
        ({"model_name": "m", "model_version": 1, "outputs": []}, "model_version: expected a string, got 1"),
        ({"model_name": "m", "id": 1, "outputs": []}, "id: expected a string, got 1"),
        ({"model_name": "m"}, "outputs: required (a list of tensors)"),
    ]:
        with pytest.raises(InvalidInputError) as caught:
            decode_infer_response(orjson.dumps(document), {})
        assert str(caught.value) == message


# ---------------------------------------------------------------------------------------
# metadata and errors


def test_metadata_and_error_bodies() -> None:
    assert orjson.loads(codec.server_metadata("0.1.0", ["binary_tensor_data"])) == {
        "name": "passerelle",
        "version": "0.1.0",
        "extensions": ["binary_tensor_data"],
    }
    signature = Signature(
        [
            Column("age", "integer", False),
            Column("spend", "float", True),
            Column("paid", "boolean", False, [False, True]),
            Column("plan", "string", False, ["a"]),
            Column("since", "datetime", True),
        ]
    )
    outputs = codec.prediction_tensors({"prediction": "string", "proba": True, "classes": ["no", "yes"]})
    document = orjson.loads(codec.model_metadata("churn", [1, 2], "passerelle_sklearn", signature, outputs))
    assert document == {
        "name": "churn",
        "versions": ["1", "2"],
        "platform": "passerelle_sklearn",
        "inputs": [
            {"name": "age", "datatype": "INT64", "shape": [-1]},
            {"name": "spend", "datatype": "FP64", "shape": [-1]},
            {"name": "paid", "datatype": "BOOL", "shape": [-1]},
            {"name": "plan", "datatype": "BYTES", "shape": [-1]},
            {"name": "since", "datatype": "BYTES", "shape": [-1]},
        ],
        "outputs": [
            {"name": "predict", "datatype": "BYTES", "shape": [-1]},
            {"name": "predict_proba", "datatype": "FP64", "shape": [-1, 2]},
        ],
    }
    tensors = [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}]
    regression = codec.prediction_tensors({"prediction": "float", "proba": False, "classes": None})
    plain = orjson.loads(codec.model_metadata("m", ["1"], "p", tensors, regression))
    assert plain["inputs"] == tensors
    assert plain["outputs"] == [{"name": "predict", "datatype": "FP64", "shape": [-1]}]
    assert orjson.loads(codec.error_body('bad "input"')) == {"error": 'bad "input"'}


# ---------------------------------------------------------------------------------------
# properties: round trips


def shapes() -> st.SearchStrategy[tuple[int, ...]]:
    return hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)


@st.composite
def tensors(draw: st.DrawFn, *, json_safe: bool, name: str = "x") -> Tensor:
    datatype = draw(st.sampled_from(DATATYPES))
    shape = draw(shapes())
    if datatype == "BYTES":
        items = st.text(max_size=6).map(str.encode) if json_safe else st.binary(max_size=6)
        flat = draw(st.lists(items, min_size=math.prod(shape), max_size=math.prod(shape)))
        data = np.empty(len(flat), dtype=object)
        data[:] = flat
        data = data.reshape(shape)
    else:
        dtype = np.dtype(NUMPY[datatype])
        # JSON writes infinities as null, read back as NaN; binary keeps every value.
        elements = hnp.from_dtype(dtype, allow_infinity=not json_safe) if dtype.kind == "f" else None
        data = draw(hnp.arrays(dtype, shape, elements=elements))
    return Tensor(name, list(shape), datatype, data)


def tensor_lists(json_safe: bool) -> st.SearchStrategy[list[Tensor]]:
    return st.lists(st.integers(0, 3), min_size=1, max_size=4).flatmap(
        lambda ids: st.tuples(*(tensors(json_safe=json_safe, name=f"t{i}") for i in range(len(ids)))).map(
            list
        )
    )


def assert_tensors_equal(actual: list[Tensor], expected: list[Tensor]) -> None:
    assert [(t.name, t.shape, t.datatype) for t in actual] == [
        (t.name, t.shape, t.datatype) for t in expected
    ]
    for got, want in zip(actual, expected, strict=True):
        assert_same(got.data, want.data, want.datatype)


@PROPERTY
@given(inputs=tensor_lists(json_safe=False), data=st.data())
def test_request_round_trip_binary(inputs: list[Tensor], data: st.DataObject) -> None:
    outputs = data.draw(
        st.lists(
            st.builds(RequestedOutput, st.sampled_from(["predict", "predict_proba"]), st.booleans()),
            max_size=2,
        )
    )
    body, headers = encode_infer_request(inputs, id="r", parameters={"k": 1}, outputs=outputs, binary=True)
    request = decode_infer(body, headers)
    assert request.id == "r"
    assert request.parameters == {"k": 1}
    assert request.outputs == outputs
    assert_tensors_equal(request.inputs, inputs)


@PROPERTY
@given(inputs=tensor_lists(json_safe=True))
def test_request_round_trip_json(inputs: list[Tensor]) -> None:
    body, headers = encode_infer_request(inputs)
    assert HEADER_LENGTH not in headers
    assert_tensors_equal(decode_infer(body, headers).inputs, inputs)


@PROPERTY
@given(outputs=tensor_lists(json_safe=False), data=st.data())
def test_response_round_trip(outputs: list[Tensor], data: st.DataObject) -> None:
    # What JSON cannot carry exactly (any bytes, infinities) goes binary.
    binary = {t.name for t in outputs if data.draw(st.booleans())} | {
        t.name
        for t in outputs
        if t.datatype == "BYTES" or (t.datatype[:2] == "FP" and np.isinf(t.data).any())
    }
    encoded = [(t.name, t.datatype, t.shape, t.data) for t in outputs]
    body, headers = encode_infer("m", "2", "r", encoded, {"prediction_ids": ["a"]}, binary)
    response = decode_infer_response(body, headers)
    assert (response.model_name, response.model_version, response.id) == ("m", "2", "r")
    assert response.parameters == {"prediction_ids": ["a"]}
    assert_tensors_equal(response.outputs, outputs)


# ---------------------------------------------------------------------------------------
# properties: tritonclient interoperability


def triton_array(tensor: Tensor, binary: bool) -> np.ndarray[Any, Any]:
    """What tritonclient hands back: text for JSON BYTES, bytes for binary ones."""
    if tensor.datatype == "BYTES" and not binary:
        return np.array([b.decode() for b in tensor.data.reshape(-1).tolist()], dtype=object).reshape(
            tensor.shape
        )
    return tensor.data


@PROPERTY
@given(inputs=tensor_lists(json_safe=False), data=st.data())
def test_tritonclient_requests_decode(inputs: list[Tensor], data: st.DataObject) -> None:
    triton_inputs = []
    for tensor in inputs:
        # tritonclient sends binary unless told otherwise, and JSON BYTES must be text
        binary = data.draw(st.booleans()) or tensor.datatype == "BYTES"
        triton_input = InferInput(tensor.name, tensor.shape, tensor.datatype)
        triton_input.set_data_from_numpy(tensor.data, binary_data=binary)
        triton_inputs.append(triton_input)
    requested = [InferRequestedOutput("predict"), InferRequestedOutput("predict_proba", binary_data=False)]
    outputs = data.draw(st.sampled_from([None, requested]))
    body, header_length = TritonClient.generate_request_body(
        triton_inputs, outputs=outputs, request_id="req-1"
    )
    headers = {} if header_length is None else {HEADER_LENGTH: str(header_length)}
    request = decode_infer(body, headers)
    assert request.id == "req-1"
    assert_tensors_equal(request.inputs, inputs)
    if outputs is None:
        assert request.binary_response_default is True
        assert request.outputs == []
    else:
        assert request.outputs == [RequestedOutput("predict", True), RequestedOutput("predict_proba", False)]


@PROPERTY
@given(outputs=tensor_lists(json_safe=True), data=st.data())
def test_tritonclient_parses_responses(outputs: list[Tensor], data: st.DataObject) -> None:
    binary = {t.name for t in outputs if data.draw(st.booleans())}
    encoded = [(t.name, t.datatype, t.shape, t.data) for t in outputs]
    body, headers = encode_infer("m", "1", "r", encoded, {"prediction_ids": ["p"]}, binary)
    length = headers.get(HEADER_LENGTH)
    result = TritonClient.parse_response_body(body, header_length=None if length is None else int(length))
    response = result.get_response()
    assert response["model_version"] == "1"
    assert response["parameters"] == {"prediction_ids": ["p"]}
    for tensor in outputs:
        actual = result.as_numpy(tensor.name)
        expected = triton_array(tensor, tensor.name in binary)
        assert actual.shape == expected.shape
        if tensor.datatype == "BYTES":
            assert actual.reshape(-1).tolist() == expected.reshape(-1).tolist()
        else:
            assert actual.dtype == np.dtype(NUMPY[tensor.datatype])
            np.testing.assert_array_equal(actual, expected)


def test_tritonclient_default_prediction_response() -> None:
    outputs = codec.default_outputs(np.array(["no", "yes"]), np.array([[0.9, 0.1], [0.2, 0.8]]))
    body, headers = encode_infer(
        "churn", "4", "r", outputs, {"prediction_ids": ["a", "b"]}, {"predict", "predict_proba"}
    )
    result = TritonClient.parse_response_body(body, header_length=int(headers[HEADER_LENGTH]))
    assert result.as_numpy("predict").tolist() == [b"no", b"yes"]
    assert result.as_numpy("predict_proba").tolist() == [[0.9, 0.1], [0.2, 0.8]]


# ---------------------------------------------------------------------------------------
# properties: junk


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=12,
)
KEYS = st.sampled_from(
    [
        "dataframe_records",
        "dataframe_split",
        "inputs",
        "instances",
        "outputs",
        "key",
        "keys",
        "params",
        "parameters",
        "columns",
        "data",
        "index",
        "name",
        "shape",
        "datatype",
        "id",
        "binary_data_size",
        "binary_data",
        "binary_data_output",
        "INT64",
        "BYTES",
        "FP16",
        "BOOL",
        "x",
    ]
)
PLAUSIBLE = st.recursive(
    JSON_VALUES | st.sampled_from(DATATYPES),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=5),
    max_leaves=25,
)


def only_invalid_input(call: Any) -> None:
    with contextlib.suppress(InvalidInputError):
        call()


def python_json(document: Any) -> bytes:
    """Python's encoder: unlike orjson it writes integers beyond 64 bits, which orjson reads as floats."""
    return json.dumps(document).encode()


@PROPERTY
@given(body=st.binary(max_size=200), header=st.none() | st.integers(-2, 220).map(str) | st.text(max_size=4))
def test_junk_bytes(body: bytes, header: str | None) -> None:
    only_invalid_input(lambda: decode_predict(body))
    headers = {} if header is None else {HEADER_LENGTH: header}
    only_invalid_input(lambda: decode_infer(body, headers))
    only_invalid_input(lambda: decode_infer_response(body, headers))


@PROPERTY
@given(document=PLAUSIBLE, blob=st.binary(max_size=40), binary=st.booleans())
def test_junk_documents(document: Any, blob: bytes, binary: bool) -> None:
    body = python_json(document)
    only_invalid_input(lambda: decode_predict(body))
    headers = {HEADER_LENGTH: str(len(body))} if binary else {}
    full = body + blob if binary else body
    only_invalid_input(lambda: decode_infer(full, headers))
    only_invalid_input(lambda: decode_infer_response(full, headers))
    for form in ("dataframe_records", "dataframe_split", "inputs"):
        only_invalid_input(lambda form=form: decode_predict(python_json({form: document})))
    tensor = {"name": "x", "datatype": "FP32", "shape": [2], "data": document}
    for datatype in DATATYPES:
        junk = python_json({"inputs": [{**tensor, "datatype": datatype}]})
        only_invalid_input(lambda junk=junk: decode_infer(junk, {}))


@PROPERTY
@given(inputs=tensor_lists(json_safe=False), data=st.data())
def test_damaged_binary_requests(inputs: list[Tensor], data: st.DataObject) -> None:
    body, headers = encode_infer_request(inputs, binary=True)
    damaged = bytearray(body)
    for _ in range(data.draw(st.integers(1, 3))):
        if damaged:
            damaged[data.draw(st.integers(0, len(damaged) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(damaged)))
    length = data.draw(st.sampled_from([headers[HEADER_LENGTH], str(int(headers[HEADER_LENGTH]) + 1), "1"]))
    only_invalid_input(lambda: decode_infer(bytes(damaged[:cut]), {HEADER_LENGTH: length}))
    only_invalid_input(lambda: decode_infer(bytes(damaged), {HEADER_LENGTH: length}))
    only_invalid_input(lambda: tensors_to_columns(inputs, ["t0", "t1"]))
