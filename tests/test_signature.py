from __future__ import annotations

import datetime as dt
import json
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from passerelle import signature as sigmod
from passerelle.errors import InvalidInputError, NotFoundError, SchemaError
from passerelle.signature import (
    MAX_CATEGORIES,
    Column,
    Signature,
    infer_signature,
    logical_type,
    output_schema,
)

PROPERTY = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
UTC = dt.UTC
PLUS2 = dt.timezone(dt.timedelta(hours=2))


def reasons(validation: sigmod.Validation) -> list[tuple[int | None, str, str]]:
    return [(p.row, p.column, p.reason) for p in validation.problems]


# ---------------------------------------------------------------------------------------
# logical types


@pytest.mark.parametrize(
    ("series", "expected"),
    [
        (pd.Series([1, 2], dtype="int8"), "integer"),
        (pd.Series([1, 2], dtype="uint32"), "integer"),
        (pd.Series([1, None], dtype="Int64"), "integer"),
        (pd.Series([1.0, None], dtype="float32"), "float"),
        (pd.Series([1.5, None], dtype="Float64"), "float"),
        (pd.Series([True, False]), "boolean"),
        (pd.Series([True, None], dtype="boolean"), "boolean"),
        (pd.Series([True, None], dtype=object), "boolean"),
        (pd.Series(["a", None], dtype=object), "string"),
        (pd.Series(["a", None], dtype="string"), "string"),
        (pd.Series(["a", "b"], dtype="category"), "string"),
        (pd.Series([1, 2], dtype="category"), "integer"),
        (pd.Series([1, None, 3], dtype=object), "integer"),
        (pd.Series([1, 2.5, None], dtype=object), "float"),
        (pd.Series([None, None], dtype=object), "string"),
        (pd.Series(pd.to_datetime(["2020-01-01", None])), "datetime"),
        (pd.Series(pd.to_datetime(["2020-01-01"]).tz_localize("Europe/Paris")), "datetime"),
        (pd.Series([dt.datetime(2020, 1, 1, tzinfo=UTC), dt.datetime(2020, 1, 1, tzinfo=PLUS2)]), "datetime"),
    ],
)
def test_logical_type(series: pd.Series[Any], expected: str) -> None:
    assert logical_type(series, "c") == expected


def test_mixed_object_column_is_refused_by_name() -> None:
    with pytest.raises(InvalidInputError, match=r"column 'age'.*mixed"):
        logical_type(pd.Series([1, "a"], dtype=object), "age")


def test_unsupported_dtype_is_refused_by_name() -> None:
    with pytest.raises(InvalidInputError, match=r"column 'wait'.*timedelta"):
        infer_signature(pd.DataFrame({"wait": pd.to_timedelta([1, 2], unit="s")}))


# ---------------------------------------------------------------------------------------
# inference


def sample() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "age": [31, 45, 27, 60],
            "income": [1200.5, np.nan, 3000.0, 2500.25],
            "active": [True, False, True, True],
            "city": ["Paris", "Lyon", None, "Paris"],
            "joined": pd.to_datetime(["2020-01-01", "2021-06-30", "2019-03-15", "2018-11-11"]),
        }
    )


def test_infer_signature_types_nullability_and_categories() -> None:
    sig = infer_signature(sample())
    assert sig.format == "table"
    assert sig.names == ["age", "income", "active", "city", "joined"]
    assert [(c.type, c.nullable) for c in sig.columns] == [
        ("integer", False),
        ("float", True),
        ("boolean", False),
        ("string", True),
        ("datetime", False),
    ]
    assert sig.column("city").categories == ["Lyon", "Paris"]
    assert sig.column("active").categories == [False, True]
    assert sig.column("age").categories is None
    assert not any(c.closed for c in sig.columns)


def test_categories_are_dropped_beyond_the_limit() -> None:
    few = [f"v{i}" for i in range(MAX_CATEGORIES)]
    many = [*few, "one more"]
    assert infer_signature({"c": few}).column("c").categories == sorted(few)
    assert infer_signature({"c": many}).column("c").categories is None


def test_categories_of_a_categorical_are_the_values_seen() -> None:
    series = pd.Categorical(["b", "a"], categories=["a", "b", "unused"])
    assert infer_signature({"c": series}).column("c").categories == ["a", "b"]


def test_closed_columns() -> None:
    sig = infer_signature(sample(), closed=["city"])
    assert sig.column("city").closed
    assert not sig.column("active").closed
    assert infer_signature(sample(), closed="city").column("city").closed


def test_closing_an_unknown_column_is_refused() -> None:
    with pytest.raises(InvalidInputError, match="'town'"):
        infer_signature(sample(), closed=["town"])


def test_closing_a_column_without_categories_is_refused() -> None:
    with pytest.raises(InvalidInputError, match="'age'"):
        infer_signature(sample(), closed=["age"])


def test_numpy_input_gives_array_format() -> None:
    sig = infer_signature(np.zeros((3, 2)))
    assert sig.format == "array"
    assert sig.names == ["x0", "x1"]
    assert infer_signature(pd.DataFrame(np.zeros((3, 2)))).format == "table"


def test_non_text_column_labels_are_named_as_text() -> None:
    frame = pd.DataFrame(np.zeros((2, 2)))
    sig = infer_signature(frame)
    assert sig.names == ["0", "1"]
    assert sig.validate(frame).ok
    assert list(sig.conform(frame).columns) == ["0", "1"]


def test_duplicate_columns_are_refused() -> None:
    frame = pd.DataFrame([[1, 2]], columns=["a", "a"])
    with pytest.raises(InvalidInputError, match="more than once"):
        infer_signature(frame)


# ---------------------------------------------------------------------------------------
# serialisation


def test_round_trip_through_json() -> None:
    sig = infer_signature(sample(), closed=["city"])
    data = json.loads(json.dumps(sig.to_dict()))
    assert Signature.from_dict(data) == sig
    assert Signature.from_dict(data).to_dict() == sig.to_dict()


@pytest.mark.parametrize(
    "data",
    [
        {},
        {"columns": "nope"},
        {"columns": [{"name": "a"}]},
        {"columns": [{"name": "a", "type": "decimal", "nullable": False}]},
        {"columns": [{"name": "a", "type": "integer", "nullable": "yes"}]},
        {"columns": [{"name": "a", "type": "string", "nullable": False, "closed": True}]},
        {"columns": [{"name": "a", "type": "integer", "nullable": False}] * 2},
        {"columns": [], "format": "matrix"},
    ],
)
def test_from_dict_refuses_invalid_data(data: dict[str, Any]) -> None:
    with pytest.raises(InvalidInputError):
        Signature.from_dict(data)


def test_column_lookup() -> None:
    sig = infer_signature(sample())
    assert sig.column("age").type == "integer"
    with pytest.raises(NotFoundError, match="'nope'"):
        sig.column("nope")


# ---------------------------------------------------------------------------------------
# compatibility


def test_identical_signatures_are_compatible() -> None:
    sig = infer_signature(sample())
    assert sig.differences(infer_signature(sample())) == []
    assert sig.compatible(infer_signature(sample()))


def test_categories_and_closed_never_count() -> None:
    base = infer_signature(sample())
    other = infer_signature(sample().assign(city=["Nice", "Nice", "Brest", None]), closed=["city"])
    assert base.compatible(other)


def test_differences_are_listed() -> None:
    base = infer_signature(sample())
    changed = sample().drop(columns=["joined"]).assign(age=[31.5, 45, 27, 60], income=[1.0, 2, 3, 4], extra=1)
    changed["active"] = [True, None, True, False]
    assert base.differences(infer_signature(changed)) == [
        "missing column 'joined'",
        "added column 'extra'",
        "age: integer -> float",
        "income: nullable -> not nullable",
        "active: not nullable -> nullable",
    ]
    assert not base.compatible(infer_signature(changed))


def test_format_change_is_a_difference() -> None:
    table = infer_signature(pd.DataFrame(np.zeros((2, 2)), columns=["x0", "x1"]))
    array = infer_signature(np.zeros((2, 2)))
    assert table.differences(array) == ["format: table -> array"]


# ---------------------------------------------------------------------------------------
# validation


def test_valid_frame() -> None:
    sig = infer_signature(sample())
    result = sig.validate(sample())
    assert result.ok
    assert result.valid.tolist() == [True] * 4
    assert result.problems == []
    assert result.rejected_rows == 0
    assert result.extra_columns == []
    assert result.by_column_reason() == {}
    result.raise_for_problems()


def test_missing_column_refuses_every_row() -> None:
    sig = infer_signature(sample())
    result = sig.validate(sample().drop(columns=["age"]))
    assert not result.ok
    assert result.valid.tolist() == [False] * 4
    assert reasons(result) == [(None, "age", "missing column")]
    assert result.rejected_rows == 4
    assert result.by_column_reason() == {("age", "missing column"): 4}


def test_extra_columns_are_reported_not_refused() -> None:
    sig = infer_signature(sample())
    result = sig.validate(sample().assign(note="x", score=1))
    assert result.ok
    assert result.extra_columns == ["note", "score"]


def test_null_not_allowed() -> None:
    sig = infer_signature(sample())
    frame = sample()
    frame["age"] = [31, None, 27, 60]
    frame["income"] = [None, None, None, None]
    result = sig.validate(frame)
    assert reasons(result) == [(1, "age", "null not allowed")]
    assert result.valid.tolist() == [True, False, True, True]


def test_nulls_of_every_kind_are_nulls() -> None:
    sig = infer_signature({"s": ["a", "b", "c", "d"]})
    frame = pd.DataFrame({"s": pd.Series(["a", None, np.nan, pd.NA], dtype=object)})
    assert [p.row for p in sig.validate(frame).problems] == [1, 2, 3]


def test_strings_in_integer_column() -> None:
    sig = infer_signature(sample())
    frame = sample().assign(age=pd.Series([31, "abc", 27, "4"], dtype=object))
    result = sig.validate(frame)
    assert reasons(result) == [
        (1, "age", "expected integer, got 'abc'"),
        (3, "age", "expected integer, got '4'"),
    ]
    assert result.by_column_reason() == {("age", "expected integer"): 2}


def test_non_whole_floats_in_integer_column() -> None:
    sig = infer_signature(sample())
    result = sig.validate(sample().assign(age=[31.0, 45.5, np.inf, 60.0]))
    assert reasons(result) == [
        (1, "age", "expected integer, got 45.5"),
        (2, "age", "expected integer, got inf"),
    ]


def test_whole_floats_and_python_objects_fit_integer_columns() -> None:
    sig = infer_signature({"n": [1, 2, 3]})
    assert sig.validate({"n": [1.0, 2.0, 3.0]}).ok
    assert sig.validate({"n": pd.Series([1, np.int32(2), 3.0], dtype=object)}).ok
    assert sig.validate({"n": pd.array([1, 2, 3], dtype="Int64")}).ok


def test_booleans_and_huge_numbers_do_not_fit_integer_columns() -> None:
    sig = infer_signature({"n": [1, 2, 3]})
    result = sig.validate({"n": pd.Series([True, 2**70, 2**63 - 1], dtype=object)})
    assert reasons(result) == [
        (0, "n", "expected integer, got True"),
        (1, "n", f"expected integer, got {2**70}"),
    ]
    big = sig.validate({"n": np.array([1, 2**64 - 1, 3], dtype=np.uint64)})
    assert [p.row for p in big.problems] == [1]
    assert big.by_column_reason() == {("n", "integer out of range"): 1}


def test_float_column_takes_ints_but_not_strings_or_booleans() -> None:
    sig = infer_signature(sample())
    assert sig.validate(sample().assign(income=[1, 2, None, 4])).ok
    frame = sample().assign(income=pd.Series([1, "1.5", True, None], dtype=object))
    assert reasons(sig.validate(frame)) == [
        (1, "income", "expected float, got '1.5'"),
        (2, "income", "expected float, got True"),
    ]


def test_boolean_column_takes_only_booleans() -> None:
    sig = infer_signature(sample())
    assert sig.validate(sample().assign(active=pd.Series([np.True_, False, True, False], dtype=object))).ok
    frame = sample().assign(active=pd.Series([True, 1, "False", 0.0], dtype=object))
    assert reasons(sig.validate(frame)) == [
        (1, "active", "expected boolean, got 1"),
        (2, "active", "expected boolean, got 'False'"),
        (3, "active", "expected boolean, got 0.0"),
    ]
    assert [p.row for p in sig.validate(sample().assign(active=[1, 0, 1, 1])).problems] == [0, 1, 2, 3]


def test_numbers_in_string_column_are_refused() -> None:
    sig = infer_signature(sample())
    frame = sample().assign(city=pd.Series(["Paris", 75, None, 1.5], dtype=object))
    assert reasons(sig.validate(frame)) == [
        (1, "city", "expected string, got 75"),
        (3, "city", "expected string, got 1.5"),
    ]
    assert [p.row for p in sig.validate(sample().assign(city=[1, 2, 3, 4])).problems] == [0, 1, 2, 3]


def test_datetime_column_takes_datetimes_and_iso_strings() -> None:
    sig = infer_signature(sample())
    mixed = pd.Series(
        [
            "2020-01-01",
            "2020-01-01T10:00:00+02:00",
            dt.datetime(2020, 1, 1, tzinfo=PLUS2),
            pd.Timestamp("2021-01-01"),
        ],
        dtype=object,
    )
    assert sig.validate(sample().assign(joined=mixed)).ok
    bad = pd.Series(["01/02/2020", 5, "2020-13-45", dt.datetime(9999, 1, 1)], dtype=object)
    result = sig.validate(sample().assign(joined=bad))
    assert reasons(result) == [
        (0, "joined", "expected datetime, got '01/02/2020'"),
        (1, "joined", "expected datetime, got 5"),
        (2, "joined", "expected datetime, got '2020-13-45'"),
        (3, "joined", "datetime.datetime(9999, 1, 1, 0, 0) is outside the supported datetime range"),
    ]


def test_datetimes_beyond_nanosecond_range_are_refused() -> None:
    sig = infer_signature(sample())
    far = pd.Series(np.array(["2020-01-01", "2300-01-01", "NaT", "1600-01-01"], dtype="datetime64[s]"))
    result = sig.validate(sample().assign(joined=far))
    assert [(p.row, p.reason.endswith("outside the supported datetime range")) for p in result.problems] == [
        (1, True),
        (2, False),
        (3, True),
    ]
    assert result.problems[1].reason == "null not allowed"


def test_closed_column_refuses_unknown_categories() -> None:
    sig = infer_signature(sample(), closed=["city"])
    frame = sample().assign(city=["Paris", "Nantes", None, "Lyon"])
    result = sig.validate(frame)
    assert reasons(result) == [(1, "city", "value 'Nantes' not among the allowed categories")]
    assert result.by_column_reason() == {("city", "value not among the allowed categories"): 1}
    # an open column takes anything of the right type
    assert infer_signature(sample()).validate(frame).ok


def test_closed_boolean_column() -> None:
    sig = infer_signature({"flag": [True, True]}, closed=["flag"])
    assert reasons(sig.validate({"flag": [True, False]})) == [
        (1, "flag", "value False not among the allowed categories")
    ]


def test_categorical_input_is_checked_through_its_categories() -> None:
    sig = infer_signature(sample(), closed=["city"])
    frame = sample().assign(city=pd.Categorical(["Paris", "Nantes", None, "Nantes"]))
    result = sig.validate(frame)
    assert [p.row for p in result.problems] == [1, 3]
    frame = sample().assign(age=pd.Categorical([1, 2, 1, 2]))
    assert sig.validate(frame).ok
    frame = sample().assign(age=pd.Categorical(["1", "2", "1", None]))
    assert [(p.row, p.reason) for p in sig.validate(frame).problems] == [
        (0, "expected integer, got '1'"),
        (1, "expected integer, got '2'"),
        (2, "expected integer, got '1'"),
        (3, "null not allowed"),
    ]


def test_problems_are_ordered_by_row_then_column() -> None:
    sig = infer_signature(sample())
    frame = sample().assign(
        age=pd.Series([1, "x", 3, "y"], dtype=object),
        active=pd.Series(["no", True, True, "no"], dtype=object),
    )
    assert [(p.row, p.column) for p in sig.validate(frame).problems] == [
        (0, "active"),
        (1, "age"),
        (3, "age"),
        (3, "active"),
    ]


def test_rows_are_positions_not_index_labels() -> None:
    sig = infer_signature(sample())
    frame = sample().assign(age=pd.Series([1, "x", 3, 4], dtype=object)).set_axis([10, 20, 30, 40])
    assert [p.row for p in sig.validate(frame).problems] == [1]


def test_problems_are_capped_but_rows_are_all_counted() -> None:
    sig = infer_signature({"n": [1]})
    frame = pd.DataFrame({"n": ["bad"] * 5000})
    result = sig.validate(frame)
    assert len(result.problems) == 1000
    assert result.rejected_rows == 5000
    assert result.truncated
    assert result.by_column_reason() == {("n", "expected integer"): 5000}
    few = sig.validate(frame, max_problems=3)
    assert [p.row for p in few.problems] == [0, 1, 2]
    assert not few.ok


def test_whole_frame_problems_come_first_even_when_capped() -> None:
    sig = infer_signature({"a": [1], "b": [1]})
    result = sig.validate({"a": ["x", "y"]}, max_problems=1)
    assert reasons(result) == [(None, "b", "missing column")]


def test_duplicate_input_columns_refuse_every_row() -> None:
    sig = infer_signature({"a": [1]})
    frame = pd.DataFrame([[1, 2]], columns=["a", "a"])
    assert reasons(sig.validate(frame)) == [(None, "a", "duplicate column")]


def test_empty_frame() -> None:
    sig = infer_signature(sample())
    assert sig.validate(sample().head(0)).ok
    result = sig.validate(sample().head(0).drop(columns=["age"]))
    assert not result.ok
    assert result.rejected_rows == 0


def test_raise_for_problems() -> None:
    sig = infer_signature(sample())
    result = sig.validate(sample().assign(age=pd.Series([1, "x", 3, 4], dtype=object)))
    with pytest.raises(SchemaError, match="1 of 4 rows") as info:
        result.raise_for_problems()
    assert info.value.problems == [{"row": 1, "column": "age", "reason": "expected integer, got 'x'"}]


def test_long_values_are_shortened_in_reasons() -> None:
    sig = infer_signature({"n": [1]})
    (problem,) = sig.validate({"n": ["x" * 500]}).problems
    assert len(problem.reason) < 100
    assert problem.reason.endswith("...")


def test_validation_is_vectorised(monkeypatch: pytest.MonkeyPatch) -> None:
    rows = 1_000_000
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "i": rng.integers(0, 100, rows),
            "f": rng.normal(size=rows),
            "b": rng.random(rows) < 0.5,
            "s": pd.Series(rng.choice(["a", "b", "c"], rows)),
            "d": pd.Timestamp("2020-01-01") + pd.to_timedelta(rng.integers(0, 10**6, rows), unit="s"),
            "c": pd.Categorical(rng.choice(["u", "v"], rows)),
            "n": np.where(rng.random(rows) < 0.1, np.nan, 1.0),
            "i2": rng.integers(0, 5, rows),
            "o": pd.Series(rng.choice(np.array([1, 2, None], dtype=object), rows), dtype=object),
            "f2": rng.random(rows),
        }
    )
    sig = infer_signature(frame, closed=["s"])
    # Python-level work for object columns must grow with distinct types, not with rows.
    seen: list[type] = []
    original = sigmod._kind_of_type

    def spy(kind: type) -> int:
        seen.append(kind)
        return original(kind)

    monkeypatch.setattr(sigmod, "_kind_of_type", spy)
    frame["i"] = frame["i"].astype(object)
    frame.loc[[7, 500_000], "i"] = "oops"
    result = sig.validate(frame, max_problems=10)
    # two object columns: (int, str) in "i", (int, NoneType) in "o"
    assert len(seen) == 4
    assert reasons(result) == [
        (7, "i", "expected integer, got 'oops'"),
        (500_000, "i", "expected integer, got 'oops'"),
    ]
    assert result.rejected_rows == 2
    assert result.valid.shape == (rows,)


# ---------------------------------------------------------------------------------------
# conform


def test_conform_orders_and_casts() -> None:
    sig = infer_signature(sample())
    frame = sample()[["joined", "city", "active", "income", "age"]].assign(extra=1)
    out = sig.conform(frame)
    assert list(out.columns) == sig.names
    assert out["age"].dtype == np.int64
    assert out["income"].dtype == np.float64
    assert out["active"].dtype == np.bool_
    assert out["city"].tolist()[:2] == ["Paris", "Lyon"]
    assert pd.isna(out["city"].iloc[2])
    assert str(out["joined"].dtype) == "datetime64[ns, UTC]"
    assert out["joined"].iloc[0] == pd.Timestamp("2020-01-01", tz="UTC")
    assert out is not frame


def test_conform_keeps_the_index() -> None:
    sig = infer_signature(sample())
    frame = sample().set_axis([5, 6, 7, 8])
    assert sig.conform(frame).index.tolist() == [5, 6, 7, 8]


def test_conform_converts_compatible_inputs() -> None:
    sig = infer_signature(sample())
    frame = pd.DataFrame(
        {
            "age": pd.Series([31.0, 45.0, 27.0, 60.0]),
            "income": pd.Series([1, 2, None, 4], dtype=object),
            "active": pd.Series([True, False, None, True], dtype=object),
            "city": pd.Categorical(["a", "b", None, "a"]),
            "joined": pd.Series(["2020-01-01T02:00:00+02:00", None, "2020-01-02", None], dtype=object),
        }
    )
    out = sig.conform(frame)
    assert out["age"].tolist() == [31, 45, 27, 60]
    assert out["age"].dtype == np.int64
    assert out["income"].dtype == np.float64
    assert out["income"].isna().tolist() == [False, False, True, False]
    assert out["active"].iloc[0] is True or out["active"].iloc[0] == True  # noqa: E712
    assert out["active"].isna().tolist() == [False, False, True, False]
    assert out["city"].tolist()[:2] == ["a", "b"]
    assert out["joined"].iloc[0] == pd.Timestamp("2020-01-01", tz="UTC")
    assert str(out["joined"].dtype) == "datetime64[ns, UTC]"


def test_conform_integers_with_nulls_become_floats() -> None:
    sig = infer_signature({"n": pd.array([1, None], dtype="Int64")})
    assert sig.column("n").nullable
    out = sig.conform({"n": pd.array([1, None], dtype="Int64")})
    assert out["n"].dtype == np.float64
    assert sig.conform({"n": pd.array([1, 2], dtype="Int64")})["n"].dtype == np.int64


def test_conform_converts_timezones_to_utc() -> None:
    paris = pd.to_datetime(["2020-06-01 12:00"]).tz_localize("Europe/Paris")
    sig = infer_signature({"t": paris})
    out = sig.conform({"t": paris})
    assert out["t"].iloc[0] == pd.Timestamp("2020-06-01 10:00", tz="UTC")


def test_conform_refuses_missing_columns() -> None:
    sig = infer_signature(sample())
    with pytest.raises(SchemaError, match="'age'") as info:
        sig.conform(sample().drop(columns=["age"]))
    assert info.value.problems == [{"row": None, "column": "age", "reason": "missing column"}]


def test_conform_refuses_values_it_cannot_cast() -> None:
    sig = infer_signature(sample())
    with pytest.raises(SchemaError, match="'age'"):
        sig.conform(sample().assign(age=["a", "b", "c", "d"]))


# ---------------------------------------------------------------------------------------
# outputs


def test_output_schema() -> None:
    assert output_schema(np.array([0, 1, 1]), np.zeros((3, 2)), [np.int64(0), np.int64(1)]) == {
        "prediction": "integer",
        "proba": True,
        "classes": [0, 1],
    }
    assert output_schema(np.array([0.5, 1.5]), None, None) == {
        "prediction": "float",
        "proba": False,
        "classes": None,
    }
    out = output_schema(np.array(["no", "yes"], dtype=object), np.zeros((2, 2)), ["no", "yes"])
    assert out == {"prediction": "string", "proba": True, "classes": ["no", "yes"]}
    assert output_schema(np.array([True, False]), None, None)["prediction"] == "boolean"
    assert output_schema(np.zeros((3, 2)), None, None)["prediction"] == "float"
    json.dumps(out, allow_nan=False)


# ---------------------------------------------------------------------------------------
# properties

KINDS = ["integer", "int_nullable", "float", "boolean", "string", "category", "datetime", "datetime_tz"]
OFFSETS = st.sampled_from([UTC, PLUS2, dt.timezone(dt.timedelta(hours=-7, minutes=-30))])
NAIVE = st.datetimes(min_value=dt.datetime(1700, 1, 1), max_value=dt.datetime(2200, 1, 1))


def values_of(kind: str) -> st.SearchStrategy[Any]:
    if kind in ("integer", "int_nullable"):
        return st.integers(-(2**53), 2**53)
    if kind == "float":
        return st.floats(allow_nan=False, allow_infinity=True)
    if kind == "boolean":
        return st.booleans()
    if kind in ("string", "category"):
        return st.text(max_size=8)
    if kind == "datetime":
        return NAIVE
    return st.builds(lambda d, tz: d.replace(tzinfo=tz), NAIVE, OFFSETS)


def build_column(kind: str, values: list[Any]) -> Any:
    if kind == "int_nullable":
        return pd.array(values, dtype="Int64")
    if kind == "category":
        return pd.Categorical(values)
    # Everything else as pandas itself types a list of Python values.
    return pd.Series(values, dtype=object).infer_objects() if kind == "datetime_tz" else values


@st.composite
def frames(draw: st.DrawFn, *, nulls: bool = True, min_rows: int = 0) -> pd.DataFrame:
    rows = draw(st.integers(min_rows, 12))
    kinds = draw(st.lists(st.sampled_from(KINDS), min_size=1, max_size=6))
    data: dict[str, Any] = {}
    for position, kind in enumerate(kinds):
        element = values_of(kind)
        if nulls and draw(st.booleans()):
            element = st.one_of(st.none(), element)
        values = draw(st.lists(element, min_size=rows, max_size=rows))
        data[f"{kind}_{position}"] = build_column(kind, values)
    return pd.DataFrame(data)


def same_value(before: Any, after: Any) -> bool:
    if pd.isna(before):
        return bool(pd.isna(after))
    if isinstance(before, dt.datetime):
        stamp = pd.Timestamp(before)
        stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
        return bool(stamp == after)
    if isinstance(before, (bool, np.bool_)):
        return isinstance(after, (bool, np.bool_)) and bool(before) == bool(after)
    return bool(before == after) and type(after) is not bool


@PROPERTY
@given(frames())
def test_a_frame_always_matches_its_own_signature(frame: pd.DataFrame) -> None:
    sig = infer_signature(frame)
    result = sig.validate(frame)
    assert result.ok, result.problems
    assert result.valid.all()
    out = sig.conform(frame)
    assert list(out.columns) == sig.names
    assert len(out) == len(frame)
    for name in sig.names:
        for before, after in zip(frame[name].tolist(), out[name].tolist(), strict=True):
            assert same_value(before, after), (name, before, after)
    # conformed output is itself valid and conforms to itself
    assert sig.validate(out).ok
    pd.testing.assert_frame_equal(sig.conform(out), out)


@PROPERTY
@given(st.integers(1, 20), st.integers(1, 4), st.sampled_from(["float64", "int64", "bool"]))
def test_arrays_match_their_own_signature(rows: int, cols: int, dtype: str) -> None:
    data = np.ones((rows, cols), dtype=dtype)
    sig = infer_signature(data)
    assert sig.format == "array"
    assert sig.validate(data).ok
    assert sig.conform(data).to_numpy().tolist() == data.tolist()


names = st.text(min_size=1, max_size=10)
categories = st.one_of(
    st.none(),
    st.lists(st.text(max_size=5), unique=True, max_size=5).map(sorted),
    st.lists(st.booleans(), unique=True).map(sorted),
)


@st.composite
def columns(draw: st.DrawFn, name: str) -> Column:
    cats = draw(categories)
    return Column(
        name=name,
        type=draw(st.sampled_from(sigmod.LOGICAL_TYPES)),
        nullable=draw(st.booleans()),
        categories=cats,
        closed=cats is not None and draw(st.booleans()),
    )


@st.composite
def signatures(draw: st.DrawFn) -> Signature:
    column_names = draw(st.lists(names, unique=True, max_size=8))
    return Signature(
        [draw(columns(n)) for n in column_names],
        format=draw(st.sampled_from(["table", "array"])),
    )


@PROPERTY
@given(signatures())
def test_to_dict_from_dict_round_trip(sig: Signature) -> None:
    data = sig.to_dict()
    through_json = json.loads(json.dumps(data, allow_nan=False))
    assert through_json == data
    again = Signature.from_dict(through_json)
    assert again == sig
    assert again.to_dict() == data
    assert sig.compatible(again)


def wrong_value(ltype: str) -> st.SearchStrategy[Any]:
    return {
        "integer": st.sampled_from(["abc", 1.5, True]),
        "float": st.sampled_from(["abc", False, "1.0"]),
        "boolean": st.sampled_from(["yes", 1, 0.0]),
        "string": st.sampled_from([12, 3.5, True]),
        "datetime": st.sampled_from(["not a date", 5, 2.5]),
    }[ltype]


@PROPERTY
@given(st.data(), frames(nulls=False, min_rows=1))
def test_a_bad_value_is_reported_at_its_row_and_column(data: st.DataObject, frame: pd.DataFrame) -> None:
    sig = infer_signature(frame)
    row = data.draw(st.integers(0, len(frame) - 1))
    column = data.draw(st.sampled_from(sig.names))
    ltype = sig.column(column).type
    bad = data.draw(st.one_of(st.none(), wrong_value(ltype)))
    broken = frame.copy()
    broken[column] = broken[column].astype(object)
    broken.iloc[row, broken.columns.get_loc(column)] = bad
    result = sig.validate(broken)
    assert [(p.row, p.column) for p in result.problems] == [(row, column)]
    expected = "null not allowed" if bad is None else f"expected {ltype}, got {bad!r}"
    assert result.problems[0].reason == expected
    assert np.flatnonzero(~result.valid).tolist() == [row]
    assert result.rejected_rows == 1


#: any value a JSON request or a loose frame may hold in a cell, typed or not
ANY_VALUE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=6),
    NAIVE,
    st.builds(lambda d, tz: d.replace(tzinfo=tz), NAIVE, OFFSETS),
    st.sampled_from([float("nan"), pd.NaT, np.int64(7), np.float32(1.5), b"raw", "2024-02-30", "1e3"]),
    st.lists(st.integers(0, 3), max_size=2),
    st.dictionaries(st.text(max_size=2), st.integers(0, 3), max_size=2),
)


@st.composite
def any_frames(draw: st.DrawFn) -> tuple[Signature, pd.DataFrame]:
    """A signature, and a frame built without regard to it: some of its columns, others, any values."""
    sig = draw(signatures())
    rows = draw(st.integers(0, 8))
    present = draw(st.lists(st.sampled_from(sig.names), unique=True)) if sig.names else []
    extra = draw(st.lists(names.filter(lambda n: n not in sig.names), unique=True, max_size=2))
    data: dict[str, Any] = {}
    for name in [*present, *extra]:
        if draw(st.booleans()):
            kind = draw(st.sampled_from(KINDS))
            values = draw(st.lists(st.one_of(st.none(), values_of(kind)), min_size=rows, max_size=rows))
            data[name] = build_column(kind, values)
        else:
            values = draw(st.lists(ANY_VALUE, min_size=rows, max_size=rows))
            # As pandas builds it from JSON records (its own inference), or left as Python objects.
            data[name] = pd.Series(values, dtype=object if draw(st.booleans()) else None)
    return sig, pd.DataFrame(data, index=range(rows))


@PROPERTY
@given(any_frames())
def test_any_frame_validates_or_is_refused_by_row_and_column(case: tuple[Signature, pd.DataFrame]) -> None:
    """Never another exception: problems name a signature column and a row (or every row), and
    the refusal is one SchemaError (an InvalidInputError). Conforming the rows that passed gives
    the signature's columns, or a SchemaError naming the column: a nullable column whose passing
    rows are all null but typed otherwise (a datetime64 column of NaT for a boolean) is refused."""
    sig, frame = case
    result = sig.validate(frame)
    assert result.valid.shape == (len(frame),)
    for problem in result.problems:
        assert problem.column in sig.names, problem
        assert problem.row is None or 0 <= problem.row < len(frame), problem
        assert problem.reason
        if problem.row is not None:
            assert not result.valid[problem.row]
    missing = [n for n in sig.names if n not in frame.columns]
    assert {p.column for p in result.problems if p.row is None} == set(missing)
    if result.ok:
        result.raise_for_problems()
    else:
        with pytest.raises(InvalidInputError) as refused:
            result.raise_for_problems()
        assert isinstance(refused.value, SchemaError)
        assert refused.value.problems
        assert str(refused.value).startswith(f"{result.rejected_rows} of {len(frame)} rows")
    if missing:
        return
    out, error = _conformed(sig, frame[result.valid])
    if error is not None:
        assert [p["column"] for p in error.problems] == [error.problems[0]["column"]]
        assert error.problems[0]["column"] in sig.names
        return
    assert list(out.columns) == sig.names
    assert len(out) == int(result.valid.sum())
    again = sig.validate(out)
    assert again.ok, again.problems


def _conformed(sig: Signature, frame: pd.DataFrame) -> tuple[pd.DataFrame, SchemaError | None]:
    try:
        return sig.conform(frame), None
    except SchemaError as exc:
        return frame, exc
