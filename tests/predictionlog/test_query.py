"""tail, count and export over shipped predictions."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pandas as pd
import pytest

from passerelle.predictionlog import LogShipper, PredictionLog, PredictionRecord, count, export, tail
from passerelle.store import Store
from tests.predictionlog.records import prediction, shadow

T0 = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)


def _at(minutes: int) -> dt.datetime:
    return T0 + dt.timedelta(minutes=minutes)


def _log(store: Store, directory: Path, records: list[PredictionRecord], shadows: int = 0) -> None:
    with PredictionLog(directory, worker="w0") as log:
        log.append_sync(records)
        log.append_shadow(
            [shadow(r, version=3, outputs={"prediction": f"s{r.key}"}) for r in records[:shadows]]
        )
    LogShipper(directory, store).ship_once()


def test_tail_and_count(store: Store, tmp_path: Path) -> None:
    records = [prediction(i, at=_at(i)) for i in range(10)]
    records.append(prediction(99, endpoint="other", at=_at(50)))
    _log(store, tmp_path / "log", records, shadows=3)

    newest = tail(store, "churn", limit=4)
    assert [row["id"] for row in newest] == [r.id for r in reversed(records[6:10])]
    assert newest[0]["at"] == _at(9)
    assert newest[0]["inputs"] == {"age": 39, "plan": "pro"}
    assert newest[0]["shadows"] == []
    oldest = tail(store, "churn", limit=100)[-1]
    assert oldest["id"] == records[0].id
    (only,) = oldest["shadows"]
    assert (only["model"], only["version"], only["outputs"]) == ("churn", 3, {"prediction": "scustomer-0"})
    assert [row["id"] for row in tail(store, "churn", since=_at(8))] == [records[9].id, records[8].id]
    assert tail(store, "nothing") == []

    assert count(store, "churn") == 10
    assert count(store, "churn", since=_at(7)) == 3
    assert count(store, "other") == 1


def _export_rows(path: Path, fmt: str) -> pd.DataFrame:
    if fmt == "parquet":
        return pd.read_parquet(path)
    if fmt == "csv":
        return pd.read_csv(path, keep_default_na=True)
    return pd.DataFrame([json.loads(line) for line in path.read_text().splitlines()])


@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl"])
def test_export_flattens_and_streams(sqlite_store: Store, tmp_path: Path, fmt: str) -> None:
    records = [prediction(i, at=_at(i)) for i in range(7)]
    # A column that only appears in a late chunk, and one whose kind changes between chunks.
    records[5].inputs = {"age": 35, "plan": "pro", "region": "nord"}
    records[6].inputs = {"age": "unknown", "plan": "pro"}
    records.append(prediction(7, endpoint="other", at=_at(3)))
    _log(sqlite_store, tmp_path / "log", records, shadows=2)

    output = tmp_path / "out" / f"churn.{fmt}"
    written = export(sqlite_store, "churn", output=output, format=fmt, chunk_rows=2)  # type: ignore[arg-type]
    assert written == 7
    frame = _export_rows(output, fmt)
    assert list(frame.columns) == [
        "id",
        "at",
        "endpoint",
        "revision",
        "model",
        "version",
        "latency_ms",
        "key",
        "request_id",
        "source",
        "in_age",
        "in_plan",
        "in_region",
        "out_prediction",
        "out_proba_no",
        "out_proba_yes",
        "shadow_churn_3_prediction",
    ]
    assert list(frame["id"]) == [r.id for r in records[:7]]
    assert pd.to_datetime(frame["at"], utc=True).tolist() == [pd.Timestamp(_at(i)) for i in range(7)]
    assert set(frame["endpoint"]) == {"churn"}
    assert list(frame["revision"]) == [2] * 7
    assert list(frame["latency_ms"]) == [1.25] * 7
    assert list(frame["out_prediction"]) == ["no", "yes"] * 3 + ["no"]
    assert list(frame["out_proba_yes"]) == [0.75] * 7
    assert [str(v) for v in frame["in_age"]] == ["30", "31", "32", "33", "34", "35", "unknown"]
    assert frame["in_region"].isna().sum() == 6
    assert frame["in_region"].iloc[5] == "nord"
    assert list(frame["shadow_churn_3_prediction"].iloc[:2]) == ["scustomer-0", "scustomer-1"]
    assert frame["shadow_churn_3_prediction"].iloc[2:].isna().all()
    assert not [p for p in output.parent.iterdir() if p != output]  # no staging left behind


def test_export_time_window_in_chunks(store: Store, tmp_path: Path) -> None:
    # Two predictions at the same instant straddle a chunk boundary: (at, id) keeps both.
    records = [prediction(i, at=_at(min(i, 4))) for i in range(8)]
    _log(store, tmp_path / "log", records)
    output = tmp_path / "window.parquet"
    assert export(store, "churn", since=_at(2), until=_at(4), output=output, chunk_rows=1) == 2
    assert list(pd.read_parquet(output)["id"]) == [records[2].id, records[3].id]
    assert export(store, "churn", since=_at(3), output=output, chunk_rows=2) == 5
    assert list(pd.read_parquet(output)["id"]) == sorted(r.id for r in records[3:])


def test_an_empty_export_has_the_base_columns(sqlite_store: Store, tmp_path: Path) -> None:
    for fmt in ("parquet", "csv", "jsonl"):
        output = tmp_path / f"empty.{fmt}"
        assert export(sqlite_store, "none", output=output, format=fmt) == 0  # type: ignore[arg-type]
        assert output.exists()
    assert list(pd.read_parquet(tmp_path / "empty.parquet").columns)[:3] == ["id", "at", "endpoint"]
    with pytest.raises(ValueError, match="format"):
        export(sqlite_store, "none", output=tmp_path / "x.xlsx", format="xlsx")  # type: ignore[arg-type]
