"""Bodies of the inference API: decode requests, encode responses. Pure functions, no I/O.

Two protocols share this module.

**MLflow scoring** (``POST /v1/endpoints/{name}/predict``). The body is a JSON object with
exactly one of these fields:

- ``"dataframe_records": [{"col": value, ...}, ...]``: one object per row; a column missing
  from a row gives None in that row (the signature check reports it later);
- ``"dataframe_split": {"columns": [...], "data": [[...], ...], "index": [...]}``: ``index``
  is optional; when given it must have one entry per row and is otherwise ignored;
- ``"inputs"`` or ``"instances"``: either a list of row objects (as ``dataframe_records``) or
  an object of columns, ``{"col": [v1, v2, ...], ...}``. MLflow's unnamed tensor forms
  (``[[1, 2], [3, 4]]``) are refused: rows need column names here.

and optionally ``"key"`` (the name of the column holding each row's business key) or
``"keys"`` (one business key per row), keys being strings, integers or null, and
``"params"`` (an object handed to the model as it is). Any other field is refused, so that a
misspelt field is reported rather than ignored. The response of :func:`encode_predict` is::

    {"predictions": [{"prediction_id": "...", "prediction": <value>,
                      "proba": {"<class>": <float>, ...}}, ...],
     "model": "churn", "version": 3, "endpoint": "churn-prod", <extra fields>}

with ``"proba"`` present only for models that give probabilities. NumPy values become
plain JSON values; NaN and infinities become null.

**Open Inference Protocol v2** (KServe's V2 protocol, Triton's HTTP API), JSON and with the
binary tensor data extension. Departures from the letter of the protocol, all compatible
with ``tritonclient``:

- an inference response carries the ids under which the predictions were logged as a JSON
  *array* in ``parameters``: ``{"prediction_ids": ["...", ...]}``, where the protocol only
  speaks of string, number and boolean parameters;
- in JSON tensor data, FP16/FP32/FP64 elements may be null, read as NaN; encoded float
  outputs write NaN and infinities as null (binary outputs keep them exactly);
- BYTES elements decode to Python ``bytes`` in an object array, whatever the form they came
  in; JSON strings are their UTF-8 bytes;
- shared memory, the classification extension and BF16 are not supported.

Decoding errors raise :class:`~passerelle.errors.InvalidInputError`, whose message starts
with where the problem is (``"dataframe_split.data[3]: ..."``, ``"inputs[1] (age): ..."``).
Encoding errors are the caller's bugs and raise :class:`ValueError`.

Everything here runs on every request: decoding and encoding one row costs a few
microseconds, dominated by orjson, and nothing builds a pandas object.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, TypeAlias

import numpy as np
import numpy.typing as npt
import orjson

from passerelle.errors import InvalidInputError

if TYPE_CHECKING:
    from passerelle.signature import Column, Signature

# ---------------------------------------------------------------------------------------
# shared


_DUMPS_OPTIONS: Final = orjson.OPT_SERIALIZE_NUMPY

#: the HTTP header giving the size of the JSON part of a binary body
HEADER_LENGTH: Final = "Inference-Header-Content-Length"
_HEADER_LENGTH_LOWER: Final = HEADER_LENGTH.lower()
JSON_CONTENT_TYPE: Final = "application/json"
BINARY_CONTENT_TYPE: Final = "application/octet-stream"

#: names of the outputs an inference endpoint returns by default
PREDICT_OUTPUT: Final = "predict"
PROBA_OUTPUT: Final = "predict_proba"
PREDICTION_IDS_PARAMETER: Final = "prediction_ids"
SERVER_NAME: Final = "passerelle"

_MAX_SHOWN: Final = 40


def _show(value: Any) -> str:
    """A short JSON-ish rendering of an offending value for an error message."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    text = repr(value)
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 3] + "..."


def _kind(value: Any) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return "a number"


def _loads(body: bytes | bytearray | memoryview | str, where: str = "body") -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        first = exc
    # Python's json module, and so many clients, write NaN and Infinity for non-finite
    # floats; accept them on this slow path rather than refuse a common body.
    raw = bytes(body) if not isinstance(body, str) else body.encode("utf-8", "surrogatepass")
    if b"NaN" in raw or b"Infinity" in raw:
        try:
            document = json.loads(raw, parse_int=_int_as_orjson)
            # Python also reads lone surrogates ("\ud800"), which orjson would refuse to
            # write later, in the prediction log or a response.
            orjson.dumps(document)
        except (ValueError, RecursionError, TypeError):
            pass
        else:
            return document
    raise InvalidInputError(f"{where}: not valid JSON: {first}") from None


def _int_as_orjson(text: str) -> int | float:
    """An integer as orjson reads it: beyond 64 bits it is a float, and too large is an error."""
    number = int(text)
    if -(2**63) <= number < 2**64:
        return number
    approximation = float(text)
    if math.isinf(approximation):
        raise ValueError(f"number is infinity when parsed as double: {text[:_MAX_SHOWN]}")
    return approximation


def _default(value: Any) -> Any:
    """What orjson cannot serialize by itself: pandas scalars, object arrays, decimals..."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    from passerelle.signature import json_scalar  # pandas, only for unusual values

    return json_scalar(value)


def _dumps(document: Any) -> bytes:
    return orjson.dumps(document, default=_default, option=_DUMPS_OPTIONS)


def error_body(message: str) -> bytes:
    """An error response body as the Open Inference Protocol gives it: ``{"error": "..."}``."""
    return orjson.dumps({"error": message})


# ---------------------------------------------------------------------------------------
# MLflow scoring: /predict


@dataclass(slots=True)
class DecodedRequest:
    """A decoded ``/predict`` body.

    ``columns`` maps each column name, in the order first seen, to one value per row;
    ``keys`` holds each row's business key (None when the request gave none).
    """

    columns: dict[str, list[Any]]
    n_rows: int
    keys: list[str | None] | None = None
    params: dict[str, Any] = field(default_factory=dict)


_PREDICT_FORMS: Final = ("dataframe_records", "dataframe_split", "inputs", "instances")
_PREDICT_OPTIONS: Final = ("key", "keys", "params")
_SPLIT_FIELDS: Final = ("columns", "data", "index")


def decode_predict(body: bytes) -> DecodedRequest:
    """Decode an MLflow scoring body (see the module documentation for the forms)."""
    document = _loads(body)
    if type(document) is not dict:
        raise InvalidInputError(f"body: expected a JSON object, got {_kind(document)}")
    form: str | None = None
    for name in document:
        if name in _PREDICT_FORMS:
            if form is not None:
                raise InvalidInputError(
                    f"body: expected only one of {', '.join(_PREDICT_FORMS)}, got {form} and {name}"
                )
            form = name
        elif name not in _PREDICT_OPTIONS:
            raise InvalidInputError(
                f"body: unknown field {name!r}; expected one of {', '.join(_PREDICT_FORMS)}, "
                f"and optionally {', '.join(_PREDICT_OPTIONS)}"
            )
    if form is None:
        raise InvalidInputError(f"body: expected one of {', '.join(_PREDICT_FORMS)}")

    value = document[form]
    if form == "dataframe_split":
        columns, n_rows = _split(value)
    elif form != "dataframe_records" and type(value) is dict:
        columns, n_rows = _columnar(value, form)
    else:
        columns, n_rows = _records(value, form)

    params = document.get("params")
    if params is None:
        params = {}
    elif type(params) is not dict:
        raise InvalidInputError(f"params: expected an object, got {_kind(params)}")
    return DecodedRequest(columns, n_rows, _keys(document, columns, n_rows), params)


def _records(value: Any, where: str) -> tuple[dict[str, list[Any]], int]:
    if type(value) is not list:
        raise InvalidInputError(f"{where}: expected a list of objects (one per row), got {_kind(value)}")
    if not value:
        return {}, 0
    first = value[0]
    if type(first) is not dict:
        raise InvalidInputError(f"{where}[0]: expected an object, got {_kind(first)}")
    names = first.keys()
    uniform = True
    for position, row in enumerate(value):
        if type(row) is not dict:
            raise InvalidInputError(f"{where}[{position}]: expected an object, got {_kind(row)}")
        if uniform and row.keys() != names:
            uniform = False
    if uniform:
        return {name: [row[name] for row in value] for name in names}, len(value)
    # dict.fromkeys keeps the order in which columns first appear.
    every = dict.fromkeys(name for row in value for name in row)
    return {name: [row.get(name) for row in value] for name in every}, len(value)


def _split(value: Any) -> tuple[dict[str, list[Any]], int]:
    where = "dataframe_split"
    if type(value) is not dict:
        raise InvalidInputError(f"{where}: expected an object with columns and data, got {_kind(value)}")
    for name in value:
        if name not in _SPLIT_FIELDS:
            raise InvalidInputError(
                f"{where}: unknown field {name!r}; expected columns, data and optionally index"
            )
    if "columns" not in value:
        raise InvalidInputError(f"{where}.columns: required (the list of column names)")
    if "data" not in value:
        raise InvalidInputError(f"{where}.data: required (the list of rows)")
    names = value["columns"]
    if type(names) is not list:
        raise InvalidInputError(f"{where}.columns: expected a list of column names, got {_kind(names)}")
    seen: set[str] = set()
    for position, name in enumerate(names):
        if type(name) is not str:
            raise InvalidInputError(f"{where}.columns[{position}]: expected a string, got {_show(name)}")
        if name in seen:
            raise InvalidInputError(f"{where}.columns[{position}]: column {name!r} appears twice")
        seen.add(name)
    data = value["data"]
    if type(data) is not list:
        raise InvalidInputError(f"{where}.data: expected a list of rows, got {_kind(data)}")
    width = len(names)
    for position, row in enumerate(data):
        if type(row) is not list:
            raise InvalidInputError(
                f"{where}.data[{position}]: expected a list of {width} values (one per column), "
                f"got {_kind(row)}"
            )
        if len(row) != width:
            raise InvalidInputError(
                f"{where}.data[{position}]: expected {width} values (one per column), got {len(row)}"
            )
    index = value.get("index")
    if index is not None:
        if type(index) is not list:
            raise InvalidInputError(f"{where}.index: expected a list (one label per row), got {_kind(index)}")
        if len(index) != len(data):
            raise InvalidInputError(
                f"{where}.index: expected {len(data)} values (one per row), got {len(index)}"
            )
    if not data:
        return {name: [] for name in names}, 0
    columns = {name: list(values) for name, values in zip(names, zip(*data, strict=True), strict=True)}
    return columns, len(data)


def _columnar(value: dict[str, Any], where: str) -> tuple[dict[str, list[Any]], int]:
    n_rows: int | None = None
    first = ""
    for name, values in value.items():
        if type(values) is not list:
            raise InvalidInputError(
                f"{where}.{name}: expected a list of values (one per row), got {_kind(values)}"
            )
        if n_rows is None:
            n_rows, first = len(values), name
        elif len(values) != n_rows:
            raise InvalidInputError(
                f"{where}.{name}: expected {n_rows} values (as many as {first}), got {len(values)}"
            )
    return dict(value), n_rows or 0


def _keys(document: dict[str, Any], columns: dict[str, list[Any]], n_rows: int) -> list[str | None] | None:
    key = document.get("key")
    keys = document.get("keys")
    if key is not None and keys is not None:
        raise InvalidInputError("body: give key (a column name) or keys (one per row), not both")
    if key is not None:
        if type(key) is not str:
            raise InvalidInputError(f"key: expected the name of a column, got {_show(key)}")
        if key not in columns:
            raise InvalidInputError(f"key: there is no column named {key!r}")
        return _key_values(columns[key], f"key: column {key!r}, row {{}}")
    if keys is None:
        return None
    if type(keys) is not list:
        raise InvalidInputError(f"keys: expected a list (one key per row), got {_kind(keys)}")
    if len(keys) != n_rows:
        raise InvalidInputError(f"keys: expected {n_rows} values (one per row), got {len(keys)}")
    return _key_values(keys, "keys[{}]")


def _key_values(values: list[Any], where: str) -> list[str | None]:
    """Keys as text; ``where`` is a format string taking the row's position."""
    if all(type(v) is str for v in values):
        return list(values)
    out: list[str | None] = []
    for position, item in enumerate(values):
        if item is None or type(item) is str:
            out.append(item)
        elif type(item) is int:
            out.append(str(item))
        else:
            raise InvalidInputError(
                f"{where.format(position)}: expected a string, an integer or null, got {_show(item)}"
            )
    return out


def encode_predict(
    prediction_ids: Sequence[str],
    model: str,
    version: int | str,
    endpoint: str,
    predictions: npt.ArrayLike,
    proba: npt.ArrayLike | None,
    classes: Sequence[Any] | None,
    extra: Mapping[str, Any] | None = None,
) -> bytes:
    """The ``/predict`` response body (shape in the module documentation).

    ``predictions`` has one value per row (or one list of values per row for models with
    several outputs); ``proba`` is ``[rows, classes]``; the keys of each ``"proba"`` object
    are the ``classes`` as text (``"0"``, ``"1"``... when None). ``extra`` adds top-level
    fields and may not replace the ones above.
    """
    values = _as_list(predictions)
    n_rows = len(values)
    if len(prediction_ids) != n_rows:
        raise ValueError(f"{len(prediction_ids)} prediction ids for {n_rows} predictions")
    rows: list[dict[str, Any]]
    if proba is None:
        rows = [
            {"prediction_id": pid, "prediction": p} for pid, p in zip(prediction_ids, values, strict=True)
        ]
    else:
        table = np.asarray(proba, dtype=np.float64)
        if table.ndim != 2 or table.shape[0] != n_rows:
            raise ValueError(f"proba has shape {list(table.shape)}; expected [{n_rows}, classes]")
        labels = [str(i) for i in range(table.shape[1])] if classes is None else [_label(c) for c in classes]
        if len(labels) != table.shape[1]:
            raise ValueError(f"{len(labels)} classes for {table.shape[1]} probability columns")
        rows = [
            {"prediction_id": pid, "prediction": p, "proba": dict(zip(labels, probs, strict=True))}
            for pid, p, probs in zip(prediction_ids, values, table.tolist(), strict=True)
        ]
    document: dict[str, Any] = {"predictions": rows, "model": model, "version": version, "endpoint": endpoint}
    if extra:
        clash = [name for name in extra if name in document]
        if clash:
            raise ValueError(f"extra fields may not replace {', '.join(clash)}")
        document.update(extra)
    return _dumps(document)


def _as_list(values: npt.ArrayLike) -> list[Any]:
    if isinstance(values, list):
        return values
    array = np.asarray(values)
    if array.ndim == 0:
        raise ValueError("predictions must have one value per row, got a scalar")
    if array.dtype.kind in "mM":
        # tolist() gives nanosecond datetimes as bare integers
        from passerelle.signature import json_scalar

        return [json_scalar(v) for v in array.ravel()] if array.ndim == 1 else array.astype(str).tolist()
    converted: list[Any] = array.tolist()
    return converted


def _label(value: Any) -> str:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# ---------------------------------------------------------------------------------------
# Open Inference Protocol v2: tensors


#: numpy dtype of each datatype, little-endian as the binary extension lays them out
_DTYPES: Final[dict[str, np.dtype[Any]]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(object),
}
DATATYPES: Final[tuple[str, ...]] = tuple(_DTYPES)
_BY_KIND: Final[dict[tuple[str, int], str]] = {
    (dtype.kind, dtype.itemsize): name for name, dtype in _DTYPES.items() if name != "BYTES"
}
_INTEGER_TYPES: Final = frozenset(d for d in DATATYPES if "INT" in d)
_FLOAT_TYPES: Final = frozenset(("FP16", "FP32", "FP64"))

#: the datatype announced in model metadata for each logical type of a signature column
LOGICAL_DATATYPES: Final[dict[str, str]] = {
    "integer": "INT64",
    "float": "FP64",
    "boolean": "BOOL",
    "string": "BYTES",
    "datetime": "BYTES",
}


@dataclass(slots=True, eq=False)
class Tensor:
    """A decoded tensor. ``data`` has ``shape``; for BYTES it is an object array of ``bytes``.

    Tensors decoded from binary data are read-only views of the request body.
    """

    name: str
    shape: list[int]
    datatype: str
    data: np.ndarray[Any, Any]


@dataclass(slots=True, frozen=True)
class RequestedOutput:
    """An output the client asked for; ``binary`` when it wants it as binary data."""

    name: str
    binary: bool


@dataclass(slots=True)
class InferRequest:
    """A decoded inference request.

    ``outputs`` is empty when the client asked for none in particular (it then wants them
    all); ``binary_response_default`` is the request's ``binary_data_output`` parameter,
    which applies to the outputs not requested by name.
    """

    id: str | None
    inputs: list[Tensor]
    parameters: dict[str, Any] = field(default_factory=dict)
    outputs: list[RequestedOutput] = field(default_factory=list)
    binary_response_default: bool = False


@dataclass(slots=True)
class InferResponse:
    """A decoded inference response (the client side of :func:`encode_infer`)."""

    model_name: str
    model_version: str | None
    id: str | None
    outputs: list[Tensor]
    parameters: dict[str, Any] = field(default_factory=dict)


#: an output to encode: name, datatype, shape and values
OutputTensor: TypeAlias = tuple[str, str, Sequence[int], np.ndarray[Any, Any]]


def datatype_of(values: npt.ArrayLike) -> str:
    """The protocol datatype for an array: strings, bytes and objects are BYTES."""
    dtype = np.asarray(values).dtype
    if dtype.kind in "OSU":
        return "BYTES"
    name = _BY_KIND.get((dtype.kind, dtype.itemsize))
    if name is None:
        raise ValueError(f"no Open Inference Protocol datatype for numpy dtype {dtype}")
    return name


def _header_length(headers: Mapping[str, str], body_size: int) -> int | None:
    raw = headers.get(HEADER_LENGTH)
    if raw is None:
        raw = headers.get(_HEADER_LENGTH_LOWER)
    if raw is None:
        # Plain dicts are case-sensitive, unlike the header maps of web frameworks.
        for name, value in headers.items():
            if name.lower() == _HEADER_LENGTH_LOWER:
                raw = value
                break
        else:
            return None
    try:
        size = int(raw)
    except (TypeError, ValueError):
        size = -1
    if not 0 < size <= body_size:
        raise InvalidInputError(
            f"{HEADER_LENGTH}: expected the size in bytes of the JSON part of the body "
            f"(1 to {body_size}), got {str(raw)[:_MAX_SHOWN]!r}"
        )
    return size


def _head_and_blobs(body: bytes, headers: Mapping[str, str]) -> tuple[Any, int | None]:
    """The JSON document, and where the binary data starts (None without the extension)."""
    length = _header_length(headers, len(body))
    # Without the extension the whole body is JSON.
    document = _loads(body) if length is None else _loads(memoryview(body)[:length], "body (JSON part)")
    if type(document) is not dict:
        raise InvalidInputError(f"body: expected a JSON object, got {_kind(document)}")
    return document, length


def _parameters(container: dict[str, Any], where: str) -> dict[str, Any]:
    parameters = container.get("parameters")
    if parameters is None:
        return {}
    if type(parameters) is not dict:
        raise InvalidInputError(f"{where}parameters: expected an object, got {_kind(parameters)}")
    return parameters


def _decode_tensors(document: dict[str, Any], key: str, body: bytes, blobs_start: int | None) -> list[Tensor]:
    items = document.get(key)
    if items is None:
        raise InvalidInputError(f"{key}: required (a list of tensors)")
    if type(items) is not list:
        raise InvalidInputError(f"{key}: expected a list of tensors, got {_kind(items)}")
    cursor = blobs_start
    tensors: list[Tensor] = []
    names: set[str] = set()
    for position, item in enumerate(items):
        where = f"{key}[{position}]"
        if type(item) is not dict:
            raise InvalidInputError(f"{where}: expected an object, got {_kind(item)}")
        name = item.get("name")
        if type(name) is not str:
            raise InvalidInputError(f"{where}.name: expected a string, got {_show(name)}")
        where = f"{where} ({name})"
        if name in names:
            raise InvalidInputError(f"{where}: a tensor of this name appears twice")
        names.add(name)
        datatype = item.get("datatype")
        if datatype not in _DTYPES:
            raise InvalidInputError(
                f"{where}: datatype {_show(datatype)} is not supported; "
                f"expected one of {', '.join(DATATYPES)}"
            )
        shape = item.get("shape")
        if type(shape) is not list or not all(type(d) is int and d >= 0 for d in shape):
            raise InvalidInputError(
                f"{where}: shape: expected a list of non-negative integers, got {_show(shape)}"
            )
        count = math.prod(shape)
        parameters = _parameters(item, f"{where}: ")
        for unsupported in ("shared_memory_region", "shared_memory_byte_size", "shared_memory_offset"):
            if unsupported in parameters:
                raise InvalidInputError(f"{where}: shared memory is not supported; send the data in the body")
        size = parameters.get("binary_data_size")
        if size is None:
            if "data" not in item:
                raise InvalidInputError(f"{where}: no data (give data, or parameters.binary_data_size)")
            flat = _json_values(where, datatype, shape, count, item["data"])
        else:
            if "data" in item:
                raise InvalidInputError(f"{where}: give data or parameters.binary_data_size, not both")
            if cursor is None:
                raise InvalidInputError(
                    f"{where}: parameters.binary_data_size needs the {HEADER_LENGTH} header "
                    "giving the size of the JSON part of the body"
                )
            if type(size) is not int or size < 0:
                raise InvalidInputError(
                    f"{where}: parameters.binary_data_size: expected a byte count, got {_show(size)}"
                )
            if cursor + size > len(body):
                raise InvalidInputError(
                    f"{where}: binary_data_size is {size} bytes but only {len(body) - cursor} "
                    "bytes of binary data are left in the body"
                )
            flat = _binary_values(where, datatype, shape, count, body, cursor, size)
            cursor += size
        tensors.append(Tensor(name, shape, datatype, flat.reshape(shape)))
    if cursor is not None and cursor != len(body):
        raise InvalidInputError(
            f"body: {len(body) - cursor} bytes of binary data follow the last tensor; "
            f"the binary_data_size of the {key} do not account for them"
        )
    return tensors


def _needs(where: str, shape: list[int], count: int, got: int) -> InvalidInputError:
    return InvalidInputError(f"{where}: shape {shape} needs {count} values, got {got}")


def _flatten(data: list[Any]) -> list[Any]:
    """Nested lists in row-major order; iterative so that deep nesting cannot recurse."""
    out: list[Any] = []
    stack: list[Iterable[Any]] = [iter(data)]
    while stack:
        for item in stack[-1]:
            if type(item) is list:
                stack.append(iter(item))
                break
            out.append(item)
        else:
            stack.pop()
    return out


#: the kinds of array numpy may build from valid JSON data of each datatype
_OK_KINDS: Final[dict[str, str]] = {
    "BOOL": "b",
    **dict.fromkeys(_INTEGER_TYPES, "iu"),
    **dict.fromkeys(_FLOAT_TYPES, "iuf"),
}


def _json_values(where: str, datatype: str, shape: list[int], count: int, data: Any) -> np.ndarray[Any, Any]:
    """The flat array of a JSON ``data`` field (flat or nested)."""
    if type(data) is not list:
        raise InvalidInputError(f"{where}: data: expected a list, got {_kind(data)}")
    dtype = _DTYPES[datatype]
    if datatype == "BYTES":
        flat = _flatten(data) if any(type(v) is list for v in data) else data
        if len(flat) != count:
            raise _needs(where, shape, count, len(flat))
        return _json_bytes(where, flat)

    raw: np.ndarray[Any, Any] | None
    try:
        # One C-level pass types and counts flat and nested data alike.
        raw = np.array(data)
    except (ValueError, TypeError, OverflowError):
        raw = None
    if raw is not None and raw.dtype.kind in _OK_KINDS[datatype] and raw.size == count:
        return _narrow(where, datatype, raw.reshape(-1), dtype)
    flat = _flatten(data)
    if len(flat) != count:
        raise _needs(where, shape, count, len(flat))
    if count == 0:
        return np.empty(0, dtype=dtype)
    return _json_values_slow(where, datatype, flat, dtype)


def _narrow(
    where: str, datatype: str, raw: np.ndarray[Any, Any], dtype: np.dtype[Any]
) -> np.ndarray[Any, Any]:
    """``raw`` (bool, int64, uint64 or float64) as ``dtype``, refusing values that do not fit."""
    if raw.dtype == dtype or raw.size == 0:
        return raw.astype(dtype, copy=False)
    if datatype in _INTEGER_TYPES:
        info = np.iinfo(dtype)
        outside = (raw < info.min) | (raw > info.max)
        if outside.any():
            raise _out_of_range(where, datatype, int(np.argmax(outside)), raw[np.argmax(outside)].item())
        return raw.astype(dtype)
    with np.errstate(over="ignore"):
        out = raw.astype(dtype)
    overflow = np.isinf(out) & ~np.isinf(raw)
    if overflow.any():
        raise _out_of_range(where, datatype, int(np.argmax(overflow)), raw[np.argmax(overflow)].item())
    return out


def _out_of_range(where: str, datatype: str, position: int, value: Any) -> InvalidInputError:
    return InvalidInputError(
        f"{where}: value {position} of data, {_show(value)}, is out of range for {datatype}"
    )


def _json_values_slow(
    where: str, datatype: str, flat: list[Any], dtype: np.dtype[Any]
) -> np.ndarray[Any, Any]:
    """Data numpy could not type at once: nulls among floats, huge integers, or wrong values."""
    accept: tuple[type, ...]
    if datatype == "BOOL":
        expected, accept = "a boolean", (bool,)
    elif datatype in _INTEGER_TYPES:
        expected, accept = "an integer", (int,)
    else:
        expected, accept = "a number or null", (int, float, type(None))
    for position, item in enumerate(flat):
        if type(item) not in accept:
            raise InvalidInputError(
                f"{where}: value {position} of data: expected {expected}, got {_show(item)}"
            )
    for position, item in enumerate(flat):
        if not _fits(item, dtype):
            raise _out_of_range(where, datatype, position, item)
    return np.array(flat, dtype=dtype)


def _fits(value: Any, dtype: np.dtype[Any]) -> bool:
    if value is None:
        return True
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return bool(info.min <= value <= info.max)
    try:
        number = float(value)
    except OverflowError:
        return False
    with np.errstate(over="ignore"):
        narrowed = dtype.type(number)
    return bool(math.isinf(number) or not np.isinf(narrowed))


def _json_bytes(where: str, flat: list[Any]) -> np.ndarray[Any, Any]:
    out = np.empty(len(flat), dtype=object)
    try:
        out[:] = [item.encode() for item in flat]
    except (AttributeError, UnicodeEncodeError, TypeError):
        for position, item in enumerate(flat):
            if type(item) is not str:
                raise InvalidInputError(
                    f"{where}: value {position} of data: expected a string, got {_show(item)}"
                ) from None
            try:
                item.encode()
            except UnicodeEncodeError:
                raise InvalidInputError(
                    f"{where}: value {position} of data is not valid Unicode text"
                ) from None
        raise
    return out


def _binary_values(
    where: str, datatype: str, shape: list[int], count: int, body: bytes, offset: int, size: int
) -> np.ndarray[Any, Any]:
    if datatype == "BYTES":
        return _binary_bytes(where, shape, count, body, offset, size)
    dtype = _DTYPES[datatype]
    if count * dtype.itemsize != size:
        raise InvalidInputError(
            f"{where}: shape {shape} of {datatype} needs {count * dtype.itemsize} bytes, "
            f"but binary_data_size is {size}"
        )
    values: np.ndarray[Any, Any] = np.frombuffer(body, dtype=dtype, count=count, offset=offset)
    if datatype == "BOOL" and count and values.view(np.uint8).max() > 1:
        position = int(np.argmax(values.view(np.uint8) > 1))
        raise InvalidInputError(f"{where}: BOOL value {position} is neither 0 nor 1")
    return values


def _binary_bytes(
    where: str, shape: list[int], count: int, body: bytes, offset: int, size: int
) -> np.ndarray[Any, Any]:
    end = offset + size
    items: list[bytes] = []
    position = offset
    while position < end:
        if position + 4 > end:
            raise InvalidInputError(f"{where}: BYTES element {len(items)} is cut inside its 4-byte length")
        length = int.from_bytes(body[position : position + 4], "little")
        position += 4
        if position + length > end:
            raise InvalidInputError(
                f"{where}: BYTES element {len(items)} announces {length} bytes, "
                f"but only {end - position} are left"
            )
        items.append(body[position : position + length])
        position += length
        if len(items) > count:
            break
    if len(items) != count:
        got = f"more than {count}" if len(items) > count else str(len(items))
        raise InvalidInputError(f"{where}: shape {shape} needs {count} BYTES elements, got {got}")
    out = np.empty(count, dtype=object)
    out[:] = items
    return out


# ---------------------------------------------------------------------------------------
# Open Inference Protocol v2: requests and responses


def decode_infer(body: bytes, headers: Mapping[str, str]) -> InferRequest:
    """Decode an inference request, JSON or with binary tensor data.

    ``headers`` are the HTTP request headers; only ``Inference-Header-Content-Length`` is
    read (case-insensitively).
    """
    document, blobs_start = _head_and_blobs(body, headers)
    request_id = document.get("id")
    if request_id is not None and type(request_id) is not str:
        raise InvalidInputError(f"id: expected a string, got {_show(request_id)}")
    parameters = _parameters(document, "")
    default = parameters.get("binary_data_output", False)
    if type(default) is not bool:
        raise InvalidInputError(
            f"parameters.binary_data_output: expected true or false, got {_show(default)}"
        )
    inputs = _decode_tensors(document, "inputs", body, blobs_start)
    if not inputs:
        raise InvalidInputError("inputs: expected at least one tensor")
    return InferRequest(request_id, inputs, parameters, _requested_outputs(document, default), default)


def _requested_outputs(document: dict[str, Any], default: bool) -> list[RequestedOutput]:
    items = document.get("outputs")
    if items is None:
        return []
    if type(items) is not list:
        raise InvalidInputError(f"outputs: expected a list, got {_kind(items)}")
    out: list[RequestedOutput] = []
    for position, item in enumerate(items):
        where = f"outputs[{position}]"
        if type(item) is not dict:
            raise InvalidInputError(f"{where}: expected an object, got {_kind(item)}")
        name = item.get("name")
        if type(name) is not str:
            raise InvalidInputError(f"{where}.name: expected a string, got {_show(name)}")
        where = f"{where} ({name})"
        parameters = _parameters(item, f"{where}: ")
        if "classification" in parameters:
            raise InvalidInputError(f"{where}: the classification extension is not supported")
        if "shared_memory_region" in parameters:
            raise InvalidInputError(f"{where}: shared memory is not supported")
        binary = parameters.get("binary_data", default)
        if type(binary) is not bool:
            raise InvalidInputError(
                f"{where}: parameters.binary_data: expected true or false, got {_show(binary)}"
            )
        out.append(RequestedOutput(name, binary))
    return out


def plan_outputs(request: InferRequest, available: Sequence[str]) -> tuple[list[str], set[str]]:
    """Which outputs to send, in order, and which of them as binary data.

    Every available output when the request named none; otherwise the requested ones,
    each of which must be available.
    """
    if not request.outputs:
        names = list(available)
        return names, set(names) if request.binary_response_default else set()
    names, binary = [], set()
    for position, wanted in enumerate(request.outputs):
        if wanted.name not in available:
            raise InvalidInputError(
                f"outputs[{position}] ({wanted.name}): no such output; "
                f"this model gives {', '.join(available)}"
            )
        if wanted.name not in names:
            names.append(wanted.name)
        if wanted.binary:
            binary.add(wanted.name)
    return names, binary


def tensors_to_columns(
    inputs: Sequence[Tensor], column_names: Sequence[str]
) -> dict[str, np.ndarray[Any, Any] | list[Any]]:
    """The columns of a table from the input tensors of a request.

    Either one tensor per column, named after it, of shape ``[n]`` or ``[n, 1]``; or a
    single tensor of shape ``[n, k]`` holding the ``k`` columns in signature order. BYTES
    columns come out as lists of ``str``, others as 1-D NumPy arrays.
    """
    expected = set(column_names)
    if (
        len(inputs) == 1
        and len(inputs[0].shape) == 2
        and (inputs[0].name not in expected or inputs[0].shape[1] > 1)
    ):
        return _matrix_columns(inputs[0], column_names)
    rows: int | None = None
    first = ""
    columns: dict[str, np.ndarray[Any, Any] | list[Any]] = {}
    for position, tensor in enumerate(inputs):
        where = f"inputs[{position}] ({tensor.name})"
        if tensor.name in columns:
            raise InvalidInputError(f"{where}: a tensor of this name appears twice")
        if tensor.name not in expected:
            raise InvalidInputError(
                f"{where}: not a column of this model; send one tensor per column named "
                f"{', '.join(column_names)}, or a single [n, {len(column_names)}] tensor"
            )
        shape = tensor.shape
        if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)):
            raise InvalidInputError(f"{where}: shape {shape} is not [n] or [n, 1] (one value per row)")
        if rows is None:
            rows, first = shape[0], where
        elif shape[0] != rows:
            raise InvalidInputError(f"{where}: {shape[0]} rows, but {first} has {rows}")
        columns[tensor.name] = _column(where, tensor.datatype, tensor.data.reshape(-1))
    missing = [name for name in column_names if name not in columns]
    if missing:
        raise InvalidInputError(
            f"inputs: no tensor for column(s) {', '.join(map(repr, missing))}; send one tensor per column, "
            f"or a single [n, {len(column_names)}] tensor with the columns in signature order"
        )
    return {name: columns[name] for name in column_names}


def _matrix_columns(
    tensor: Tensor, column_names: Sequence[str]
) -> dict[str, np.ndarray[Any, Any] | list[Any]]:
    where = f"inputs[0] ({tensor.name})"
    width = tensor.shape[1]
    if width != len(column_names):
        raise InvalidInputError(
            f"{where}: shape {tensor.shape} has {width} columns, but the model takes {len(column_names)} "
            f"({', '.join(column_names)})"
        )
    return {
        name: _column(f"{where}, column {position} ({name})", tensor.datatype, tensor.data[:, position])
        for position, name in enumerate(column_names)
    }


def _column(where: str, datatype: str, values: np.ndarray[Any, Any]) -> np.ndarray[Any, Any] | list[Any]:
    if datatype != "BYTES":
        return values
    items = values.tolist()
    try:
        return [item.decode() for item in items]
    except (UnicodeDecodeError, AttributeError):
        pass
    # Tensors built by hand may already hold text.
    out: list[Any] = []
    for position, item in enumerate(items):
        if isinstance(item, bytes):
            try:
                item = item.decode()
            except UnicodeDecodeError:
                raise InvalidInputError(f"{where}: value {position} is not valid UTF-8 text") from None
        out.append(item)
    return out


def _encode_tensors(
    tensors: Iterable[OutputTensor], binary: set[str] | bool
) -> tuple[list[dict[str, Any]], list[bytes]]:
    described: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for name, datatype, shape, values in tensors:
        dtype = _DTYPES.get(datatype)
        if dtype is None:
            raise ValueError(f"output {name!r}: unknown datatype {datatype!r}")
        dims = [int(d) for d in shape]
        array = np.asarray(values)
        if array.size != math.prod(dims):
            raise ValueError(f"output {name!r}: shape {dims} does not fit {array.size} values")
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": dims}
        if binary is True or (binary is not False and name in binary):
            blob = _bytes_blob(array) if datatype == "BYTES" else _fixed_blob(array, dtype)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        elif datatype == "BYTES":
            entry["data"] = _json_text(name, array)
        else:
            entry["data"] = array.astype(dtype, copy=False).reshape(-1).tolist()
        described.append(entry)
    return described, blobs


def _fixed_blob(array: np.ndarray[Any, Any], dtype: np.dtype[Any]) -> bytes:
    return np.ascontiguousarray(array, dtype=dtype).tobytes()


def _as_bytes(item: Any) -> bytes:
    if isinstance(item, bytes):
        return item
    return (item if isinstance(item, str) else str(item)).encode()


def _bytes_blob(array: np.ndarray[Any, Any]) -> bytes:
    parts: list[bytes] = []
    for item in array.reshape(-1).tolist():
        data = _as_bytes(item)
        parts.append(len(data).to_bytes(4, "little"))
        parts.append(data)
    return b"".join(parts)


def _json_text(name: str, array: np.ndarray[Any, Any]) -> list[str]:
    out: list[str] = []
    for position, item in enumerate(array.reshape(-1).tolist()):
        if isinstance(item, bytes):
            try:
                item = item.decode()
            except UnicodeDecodeError:
                raise ValueError(
                    f"output {name!r}: BYTES value {position} is not UTF-8 text; JSON cannot carry it, "
                    "binary data can"
                ) from None
        out.append(item if isinstance(item, str) else str(item))
    return out


def _with_blobs(document: dict[str, Any], blobs: list[bytes]) -> tuple[bytes, dict[str, str]]:
    head = _dumps(document)
    if not blobs:
        return head, {"Content-Type": JSON_CONTENT_TYPE}
    return b"".join([head, *blobs]), {
        "Content-Type": BINARY_CONTENT_TYPE,
        HEADER_LENGTH: str(len(head)),
    }


def encode_infer(
    model_name: str,
    model_version: str | int | None,
    id: str | None,
    outputs: Sequence[OutputTensor],
    parameters: Mapping[str, Any] | None,
    binary_outputs: set[str],
) -> tuple[bytes, dict[str, str]]:
    """An inference response body and the HTTP headers that go with it.

    ``outputs`` are ``(name, datatype, shape, values)``; those named in ``binary_outputs``
    are sent as binary data after the JSON part, whose size the
    ``Inference-Header-Content-Length`` header then gives. Pass the prediction ids in
    ``parameters`` as ``{"prediction_ids": [...]}``. Names in ``binary_outputs`` that are
    not outputs are ignored.
    """
    described, blobs = _encode_tensors(outputs, binary_outputs)
    document: dict[str, Any] = {"model_name": model_name}
    if model_version is not None:
        document["model_version"] = str(model_version)
    if id is not None:
        document["id"] = id
    if parameters:
        document["parameters"] = dict(parameters)
    document["outputs"] = described
    return _with_blobs(document, blobs)


def encode_infer_request(
    inputs: Sequence[Tensor],
    *,
    id: str | None = None,
    parameters: Mapping[str, Any] | None = None,
    outputs: Sequence[RequestedOutput] = (),
    binary: bool = False,
) -> tuple[bytes, dict[str, str]]:
    """An inference request body and its HTTP headers, as a client sends it.

    With ``binary`` every input travels as binary data.
    """
    described, blobs = _encode_tensors(((t.name, t.datatype, t.shape, t.data) for t in inputs), binary)
    document: dict[str, Any] = {}
    if id is not None:
        document["id"] = id
    if parameters:
        document["parameters"] = dict(parameters)
    document["inputs"] = described
    if outputs:
        document["outputs"] = [{"name": o.name, "parameters": {"binary_data": o.binary}} for o in outputs]
    return _with_blobs(document, blobs)


def decode_infer_response(body: bytes, headers: Mapping[str, str]) -> InferResponse:
    """Decode an inference response, JSON or with binary tensor data."""
    document, blobs_start = _head_and_blobs(body, headers)
    name = document.get("model_name")
    if type(name) is not str:
        raise InvalidInputError(f"model_name: expected a string, got {_show(name)}")
    version = document.get("model_version")
    if version is not None and type(version) is not str:
        raise InvalidInputError(f"model_version: expected a string, got {_show(version)}")
    response_id = document.get("id")
    if response_id is not None and type(response_id) is not str:
        raise InvalidInputError(f"id: expected a string, got {_show(response_id)}")
    parameters = _parameters(document, "")
    outputs = _decode_tensors(document, "outputs", body, blobs_start)
    return InferResponse(name, version, response_id, outputs, parameters)


# ---------------------------------------------------------------------------------------
# Open Inference Protocol v2: metadata


def server_metadata(version: str, extensions: Sequence[str]) -> bytes:
    """The server metadata response: ``{"name": "passerelle", "version", "extensions"}``."""
    return orjson.dumps({"name": SERVER_NAME, "version": version, "extensions": list(extensions)})


def signature_tensors(columns: Iterable[Column]) -> list[dict[str, Any]]:
    """Metadata tensors for the columns of a signature.

    Each column is a tensor of its own, of shape ``[-1]`` (any number of rows).
    """
    out: list[dict[str, Any]] = []
    for column in columns:
        datatype = LOGICAL_DATATYPES.get(column.type)
        if datatype is None:
            raise ValueError(f"column {column.name!r}: no datatype for logical type {column.type!r}")
        out.append({"name": column.name, "datatype": datatype, "shape": [-1]})
    return out


def prediction_tensors(output_schema: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Metadata tensors for what a model returns, from ``passerelle.signature.output_schema``.

    ``predict`` has the datatype of the predictions' logical type; ``predict_proba`` is
    ``[-1, classes]`` FP64 for models that give probabilities.
    """
    prediction = output_schema.get("prediction", "float")
    out = [{"name": PREDICT_OUTPUT, "datatype": LOGICAL_DATATYPES.get(prediction, "BYTES"), "shape": [-1]}]
    if output_schema.get("proba"):
        classes = output_schema.get("classes")
        out.append({"name": PROBA_OUTPUT, "datatype": "FP64", "shape": [-1, len(classes) if classes else -1]})
    return out


def model_metadata(
    name: str,
    versions: Sequence[str | int],
    platform: str,
    inputs: Signature | Sequence[Mapping[str, Any]],
    outputs: Sequence[Mapping[str, Any]],
) -> bytes:
    """The model metadata response.

    ``inputs`` is a :class:`~passerelle.signature.Signature` (one ``[-1]`` tensor per
    column) or a list of metadata tensors ``{"name", "datatype", "shape"}``; ``outputs``
    is a list of metadata tensors (see :func:`prediction_tensors`).
    """
    if isinstance(inputs, Sequence):
        described = [dict(t) for t in inputs]
    else:
        described = signature_tensors(inputs.columns)
    return orjson.dumps(
        {
            "name": name,
            "versions": [str(v) for v in versions],
            "platform": platform,
            "inputs": described,
            "outputs": [dict(t) for t in outputs],
        }
    )


def default_outputs(predictions: npt.ArrayLike, proba: npt.ArrayLike | None) -> list[OutputTensor]:
    """The default outputs of an inference response: ``predict``, and ``predict_proba`` if any.

    Labels that are text go out as BYTES; ``predict_proba`` is ``[n, classes]`` FP64.
    """
    values = np.asarray(predictions)
    if values.dtype.kind in "mM":
        values = values.astype(str)
    out: list[OutputTensor] = [(PREDICT_OUTPUT, datatype_of(values), list(values.shape), values)]
    if proba is not None:
        table = np.asarray(proba, dtype=np.float64)
        out.append((PROBA_OUTPUT, "FP64", list(table.shape), table))
    return out
