from __future__ import annotations

import gzip
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from passerelle.errors import InvalidInputError
from passerelle.tables import is_array_like, read_table, table_format, to_frame

EXPECTED = pd.DataFrame({"a": [1, 2, 3], "b": ["x", "y", "z"]})


def assert_expected(frame: pd.DataFrame) -> None:
    assert list(frame.columns) == ["a", "b"]
    assert frame["a"].tolist() == [1, 2, 3]
    assert frame["b"].tolist() == ["x", "y", "z"]


def test_pandas_frame_is_returned_as_is() -> None:
    frame = EXPECTED.copy()
    assert to_frame(frame) is frame


def test_named_series_keeps_its_name() -> None:
    frame = to_frame(pd.Series([1.5, 2.5], name="price"))
    assert list(frame.columns) == ["price"]
    assert frame["price"].tolist() == [1.5, 2.5]


def test_unnamed_series_is_x0() -> None:
    assert list(to_frame(pd.Series([1, 2])).columns) == ["x0"]


def test_polars_frame() -> None:
    pl = pytest.importorskip("polars")
    assert_expected(to_frame(pl.DataFrame({"a": [1, 2, 3], "b": ["x", "y", "z"]})))


def test_polars_series() -> None:
    pl = pytest.importorskip("polars")
    frame = to_frame(pl.Series("a", [1, 2, 3]))
    assert list(frame.columns) == ["a"]
    assert frame["a"].tolist() == [1, 2, 3]


def test_pyarrow_table_and_record_batch() -> None:
    table = pa.table({"a": [1, 2, 3], "b": ["x", "y", "z"]})
    assert_expected(to_frame(table))
    assert_expected(to_frame(table.to_batches()[0]))


def test_numpy_one_dimensional() -> None:
    frame = to_frame(np.array([1.0, 2.0, 3.0]))
    assert list(frame.columns) == ["x0"]
    assert frame["x0"].tolist() == [1.0, 2.0, 3.0]


def test_numpy_two_dimensional() -> None:
    frame = to_frame(np.arange(6).reshape(2, 3))
    assert list(frame.columns) == ["x0", "x1", "x2"]
    assert frame.to_numpy().tolist() == [[0, 1, 2], [3, 4, 5]]


def test_numpy_three_dimensional_is_refused() -> None:
    with pytest.raises(InvalidInputError, match=r"shape \(2, 2, 2\)"):
        to_frame(np.zeros((2, 2, 2)))


def test_numpy_record_array_keeps_field_names() -> None:
    records = np.array([(1, 2.5), (2, 3.5)], dtype=[("a", "i8"), ("b", "f8")])
    frame = to_frame(records)
    assert list(frame.columns) == ["a", "b"]
    assert frame["b"].tolist() == [2.5, 3.5]


def test_dict_of_lists() -> None:
    assert_expected(to_frame({"a": [1, 2, 3], "b": ["x", "y", "z"]}))


def test_dict_of_scalars_is_refused() -> None:
    with pytest.raises(InvalidInputError, match="cannot build a table"):
        to_frame({"a": 1, "b": 2})


def test_dict_of_unequal_lists_is_refused() -> None:
    with pytest.raises(InvalidInputError, match="cannot build a table"):
        to_frame({"a": [1, 2], "b": [1]})


def test_list_of_dicts() -> None:
    assert_expected(to_frame([{"a": 1, "b": "x"}, {"a": 2, "b": "y"}, {"a": 3, "b": "z"}]))


def test_list_of_dicts_with_missing_keys_gives_missing_values() -> None:
    frame = to_frame([{"a": 1}, {"b": "y"}])
    assert frame["a"].isna().tolist() == [False, True]
    assert frame["b"].isna().tolist() == [True, False]


def test_list_of_non_dicts_is_refused() -> None:
    with pytest.raises(InvalidInputError, match=r"one dict per row.*int"):
        to_frame([1, 2, 3])


@pytest.mark.parametrize("as_path", [True, False])
def test_csv_file(tmp_path: Path, as_path: bool) -> None:
    path = tmp_path / "data.csv"
    EXPECTED.to_csv(path, index=False)
    assert_expected(to_frame(path if as_path else str(path)))


def test_gzipped_csv_file(tmp_path: Path) -> None:
    path = tmp_path / "data.csv.gz"
    with gzip.open(path, "wt") as handle:
        handle.write("a,b\n1,x\n2,y\n3,z\n")
    assert table_format(path) == "csv"
    assert_expected(to_frame(path))


@pytest.mark.parametrize("name", ["data.parquet", "data.pq", "DATA.PARQUET"])
def test_parquet_file(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    EXPECTED.to_parquet(path)
    assert_expected(to_frame(path))
    assert_expected(read_table(str(path)))


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.csv"
    with pytest.raises(InvalidInputError) as info:
        to_frame(path)
    message = str(info.value)
    assert str(path) in message
    assert "no such file" in message
    assert "\n" not in message


def test_corrupt_parquet_gives_one_readable_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"this is not parquet at all")
    with pytest.raises(InvalidInputError) as info:
        read_table(path)
    message = str(info.value)
    assert message.startswith(f"cannot read {path} as parquet: ")
    assert "\n" not in message


def test_csv_that_is_not_text(tmp_path: Path) -> None:
    path = tmp_path / "binary.csv"
    path.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(InvalidInputError, match=r"cannot read .*binary\.csv as csv: "):
        read_table(path)


def test_truncated_gzip(tmp_path: Path) -> None:
    payload = gzip.compress(b"a,b\n" + b"1,2\n" * 10_000)
    path = tmp_path / "cut.csv.gz"
    path.write_bytes(payload[: len(payload) // 2])
    with pytest.raises(InvalidInputError, match=r"cannot read .*cut\.csv\.gz as csv: "):
        read_table(path)


def test_empty_csv(tmp_path: Path) -> None:
    path = tmp_path / "empty.csv"
    path.write_text("")
    with pytest.raises(InvalidInputError, match=r"empty\.csv"):
        read_table(path)


@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        ("a.csv", "csv"),
        ("a.CSV", "csv"),
        ("a.csv.gz", "csv"),
        ("a.parquet", "parquet"),
        ("a.pq", "parquet"),
        ("s3://bucket/dir/a.parquet?versionId=3", "parquet"),
    ],
)
def test_table_format(name: str, fmt: str) -> None:
    assert table_format(name) == fmt


@pytest.mark.parametrize("name", ["a.json", "a.txt", "a", "a.csv.bz2", "csv"])
def test_table_format_refuses_other_extensions(name: str) -> None:
    with pytest.raises(InvalidInputError, match="unsupported file type"):
        table_format(name)


def test_unsupported_type_is_named() -> None:
    with pytest.raises(InvalidInputError, match="unsupported data type int"):
        to_frame(42)

    class Custom:
        pass

    with pytest.raises(InvalidInputError, match=r"unsupported data type .*Custom"):
        to_frame(Custom())


def test_is_array_like() -> None:
    assert is_array_like(np.zeros((2, 2)))
    assert is_array_like(np.zeros(3))
    assert not is_array_like(np.zeros(2, dtype=[("a", "i8")]))
    assert not is_array_like(EXPECTED)
    assert not is_array_like([[1, 2]])


def test_polars_is_not_imported_for_other_inputs() -> None:
    code = (
        "import sys\n"
        "from passerelle.tables import to_frame\n"
        "import numpy as np\n"
        "to_frame({'a': [1]}); to_frame(np.zeros(2)); to_frame([{'a': 1}])\n"
        "assert 'polars' not in sys.modules, 'polars was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
