from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from passerelle.errors import InvalidInputError
from passerelle.profile import QUANTILES, fingerprint_file, profile_frame


def strict_json(value: Any) -> Any:
    """Round-trips through JSON, failing on NaN or infinity."""
    return json.loads(json.dumps(value, allow_nan=False))


def test_rows_and_column_order() -> None:
    profile = profile_frame(pd.DataFrame({"b": [1, 2], "a": ["x", "y"]}))
    assert profile["rows"] == 2
    assert list(profile["columns"]) == ["b", "a"]


def test_numeric_column() -> None:
    values = np.arange(101, dtype=float)
    values[0] = np.nan
    col = profile_frame(pd.DataFrame({"v": values}))["columns"]["v"]
    assert col["type"] == "float"
    assert col["missing_rate"] == pytest.approx(1 / 101)
    assert col["min"] == 1.0
    assert col["max"] == 100.0
    assert col["mean"] == pytest.approx(50.5)
    assert col["std"] == pytest.approx(np.arange(1, 101).std(ddof=1))
    assert list(col["quantiles"]) == [str(q) for q in QUANTILES]
    assert col["quantiles"]["0.5"] == pytest.approx(50.5)
    assert col["quantiles"]["0.01"] == pytest.approx(np.quantile(np.arange(1, 101), 0.01))
    assert "top" not in col


def test_integer_extremes_are_exact() -> None:
    big = 2**62 + 1
    col = profile_frame(pd.DataFrame({"n": [1, big]}))["columns"]["n"]
    assert col["type"] == "integer"
    assert col["min"] == 1
    assert col["max"] == big
    assert isinstance(col["max"], int)


def test_nullable_and_object_integers() -> None:
    frame = pd.DataFrame(
        {
            "a": pd.array([1, None, 3], dtype="Int64"),
            "b": pd.Series([1, None, 3], dtype=object),
        }
    )
    profile = strict_json(profile_frame(frame))
    for name in "ab":
        col = profile["columns"][name]
        assert col["type"] == "integer"
        assert (col["min"], col["max"], col["mean"]) == (1, 3, 2.0)
        assert col["missing_rate"] == pytest.approx(1 / 3)


def test_nan_and_infinity_never_leak() -> None:
    frame = pd.DataFrame(
        {
            "only_missing": [np.nan, np.nan],
            "with_inf": [np.inf, -np.inf],
            "single": [1.0, np.nan],
            "mixed_inf": [1.0, np.inf],
        }
    )
    profile = strict_json(profile_frame(frame))
    cols = profile["columns"]
    assert cols["only_missing"]["min"] is None
    assert cols["only_missing"]["quantiles"] == dict.fromkeys(map(str, QUANTILES))
    assert cols["with_inf"]["mean"] is None
    assert cols["single"]["std"] is None
    assert cols["single"]["mean"] == 1.0
    # statistics are over finite values
    assert cols["mixed_inf"]["max"] == 1.0


def test_string_column_top_categories() -> None:
    values = ["a"] * 5 + ["b"] * 3 + ["c"] * 3 + [f"u{i:02d}" for i in range(30)] + [None] * 9
    col = profile_frame(pd.DataFrame({"s": values}))["columns"]["s"]
    assert col["type"] == "string"
    assert col["missing_rate"] == pytest.approx(9 / 50)
    assert col["distinct"] == 33
    assert len(col["top"]) == 20
    # most frequent first, ties broken by value
    assert col["top"][:4] == [
        {"value": "a", "count": 5},
        {"value": "b", "count": 3},
        {"value": "c", "count": 3},
        {"value": "u00", "count": 1},
    ]
    assert col["top"][-1] == {"value": "u16", "count": 1}


def test_categorical_column_ignores_unused_categories() -> None:
    series = pd.Categorical(["x", "x", "y", None], categories=["x", "y", "never"])
    col = profile_frame(pd.DataFrame({"c": series}))["columns"]["c"]
    assert col["type"] == "string"
    assert col["distinct"] == 2
    assert col["top"] == [{"value": "x", "count": 2}, {"value": "y", "count": 1}]


def test_boolean_column() -> None:
    col = profile_frame(pd.DataFrame({"b": [True, False, True, None]}))["columns"]["b"]
    assert col["type"] == "boolean"
    assert col["distinct"] == 2
    assert col["top"] == [{"value": True, "count": 2}, {"value": False, "count": 1}]
    strict_json(col)


def test_datetime_columns() -> None:
    frame = pd.DataFrame(
        {
            "naive": pd.to_datetime(["2021-03-01", None, "2020-01-01 10:30"], format="ISO8601"),
            "aware": [*pd.to_datetime(["2021-03-01", "2020-01-01"]).tz_localize("UTC").tolist(), None],
            "offsets": pd.Series(
                [
                    dt.datetime(2020, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=2))),
                    dt.datetime(2020, 1, 1, tzinfo=dt.UTC),
                    None,
                ],
                dtype=object,
            ),
        }
    )
    cols = strict_json(profile_frame(frame))["columns"]
    assert cols["naive"] == {
        "type": "datetime",
        "missing_rate": pytest.approx(1 / 3),
        "min": "2020-01-01T10:30:00",
        "max": "2021-03-01T00:00:00",
    }
    assert cols["aware"]["min"] == "2020-01-01T00:00:00+00:00"
    assert cols["offsets"]["min"] == "2019-12-31T22:00:00+00:00"
    assert cols["offsets"]["max"] == "2020-01-01T00:00:00+00:00"


def test_empty_frame() -> None:
    frame = pd.DataFrame({"n": pd.Series([], dtype="int64"), "s": pd.Series([], dtype=object)})
    profile = strict_json(profile_frame(frame))
    assert profile["rows"] == 0
    assert profile["columns"]["n"]["missing_rate"] is None
    assert profile["columns"]["n"]["min"] is None
    assert profile["columns"]["s"] == {"type": "string", "missing_rate": None, "distinct": 0, "top": []}


def test_unsupported_column_is_described_not_fatal() -> None:
    frame = pd.DataFrame({"mixed": pd.Series([1, "a", None], dtype=object), "ok": [1, 2, 3]})
    cols = strict_json(profile_frame(frame))["columns"]
    assert cols["mixed"]["type"] == "unsupported"
    assert "mixed" in cols["mixed"]["reason"]
    assert cols["mixed"]["missing_rate"] == pytest.approx(1 / 3)
    assert cols["ok"]["type"] == "integer"


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.one_of(st.none(), st.floats()), max_size=30),
    st.lists(st.one_of(st.none(), st.text(max_size=3)), max_size=30),
)
def test_profiles_are_always_strict_json(numbers: list[float | None], texts: list[str | None]) -> None:
    size = min(len(numbers), len(texts))
    frame = pd.DataFrame({"n": pd.Series(numbers[:size], dtype="float64"), "t": texts[:size]})
    profile = profile_frame(frame)
    assert strict_json(profile) == profile


def test_fingerprint_file(tmp_path: Path) -> None:
    path = tmp_path / "data.bin"
    payload = bytes(range(256)) * 1000
    path.write_bytes(payload)
    expected = "sha256:" + hashlib.sha256(payload).hexdigest()
    assert fingerprint_file(path) == expected
    assert fingerprint_file(str(path), chunk=7) == expected


def test_fingerprint_of_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty"
    path.write_bytes(b"")
    assert fingerprint_file(path) == "sha256:" + hashlib.sha256(b"").hexdigest()


def test_fingerprint_of_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="absent"):
        fingerprint_file(tmp_path / "absent")
