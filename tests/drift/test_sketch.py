"""Window sketches and reference statistics: merging, streaming and storage."""

from __future__ import annotations

import json
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from passerelle.demo.data import FEATURES, Drift, generate_churn
from passerelle.drift import ReferenceStats, WindowSketch, compute_drift, merge_windows
from passerelle.drift.histograms import NumericHist
from passerelle.errors import InvalidInputError


@pytest.fixture(scope="module")
def reference() -> ReferenceStats:
    return ReferenceStats.from_frame(generate_churn(20_000, seed=1)[FEATURES])


@pytest.fixture(scope="module")
def window() -> pd.DataFrame:
    drift = Drift.preset("data")
    return generate_churn(30_000, seed=2, drift=drift)[FEATURES]


def close(a: Any, b: Any) -> None:
    """Reports equal, floats to rounding (sums of a merged sketch add in another order)."""
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            close(a[key], b[key])
    elif isinstance(a, list):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            close(x, y)
    elif isinstance(a, float):
        assert a == pytest.approx(b, rel=1e-9, abs=1e-12)
    else:
        assert a == b


def test_merged_batches_equal_one_shot(reference: ReferenceStats, window: pd.DataFrame) -> None:
    one_shot = WindowSketch.from_frame(reference, window)
    cuts = [0, 1, 4_000, 4_001, 17_000, 30_000]
    parts = [WindowSketch.from_frame(reference, window.iloc[a:b]) for a, b in pairwise(cuts)]
    merged = merge_windows(parts)
    streamed = reference.window()
    for a, b in pairwise(cuts):
        streamed.update(window.iloc[a:b])
    for sketch in (merged, streamed):
        assert sketch.rows == one_shot.rows
        for name, hist in one_shot.hists.items():
            other = sketch.hists[name]
            if isinstance(hist, NumericHist):
                assert isinstance(other, NumericHist)
                assert np.array_equal(hist.counts, other.counts)
                assert np.allclose(hist.sums, other.sums, rtol=1e-9, atol=1e-6)
            else:
                assert hist.to_dict() == other.to_dict()
        close(compute_drift(reference, sketch).to_dict(), compute_drift(reference, one_shot).to_dict())


def test_json_round_trip(reference: ReferenceStats, window: pd.DataFrame) -> None:
    stored = json.dumps(reference.to_dict(), allow_nan=False)
    loaded = ReferenceStats.from_dict(json.loads(stored))
    assert loaded.key == reference.key
    sketch = WindowSketch.from_frame(reference, window)
    kept = WindowSketch.from_dict(json.loads(json.dumps(sketch.to_dict(), allow_nan=False)), loaded)
    assert compute_drift(loaded, kept).to_dict() == compute_drift(reference, sketch).to_dict()
    assert compute_drift(loaded, window).to_dict() == compute_drift(reference, window).to_dict()


def test_sketch_size_does_not_grow_with_rows(reference: ReferenceStats) -> None:
    small = WindowSketch.from_frame(reference, generate_churn(2_000, seed=3)[FEATURES])
    large = WindowSketch.from_frame(reference, generate_churn(60_000, seed=4)[FEATURES])
    size = len(json.dumps(small.to_dict()))
    assert len(json.dumps(large.to_dict())) < 1.25 * size


def test_streaming_arrow_batches_from_parquet(
    reference: ReferenceStats, window: pd.DataFrame, tmp_path: Path
) -> None:
    path = tmp_path / "window.parquet"
    window.to_parquet(path, row_group_size=7_000)
    streamed = WindowSketch.from_parquet(reference, path, batch_rows=5_000)
    assert streamed.rows == len(window)
    batches = WindowSketch.from_batches(reference, pq.ParquetFile(path).iter_batches(batch_size=3_000))
    close(compute_drift(reference, streamed).to_dict(), compute_drift(reference, batches).to_dict())
    from_table = WindowSketch.from_frame(reference, pa.Table.from_pandas(window))
    close(compute_drift(reference, streamed).to_dict(), compute_drift(reference, from_table).to_dict())
    close(compute_drift(reference, streamed).to_dict(), compute_drift(reference, window).to_dict())


def test_new_levels_beyond_the_cap_are_lumped_together(reference: ReferenceStats) -> None:
    frame = generate_churn(5_000, seed=5)[FEATURES]
    frame["region"] = [f"region-{i % 500}" for i in range(len(frame))]
    column = compute_drift(reference, frame).column("region")
    assert column.reasons == ["jensenshannon", "new categories"]
    assert column.details["new_levels"]["(other new levels)"] == len(frame) - 50 * 10


def test_references_with_one_grid_merge(reference: ReferenceStats) -> None:
    first = generate_churn(20_000, seed=1)[FEATURES]
    second = generate_churn(15_000, seed=9)[FEATURES]
    other = ReferenceStats.from_frame(second, like=reference)
    merged = reference.merge(other)
    whole = ReferenceStats.from_frame(pd.concat([first, second], ignore_index=True), like=reference)
    assert merged.rows == whole.rows == 35_000
    for name, hist in whole.hists.items():
        if isinstance(hist, NumericHist):
            mine = merged.hists[name]
            assert isinstance(mine, NumericHist)
            assert np.array_equal(hist.counts, mine.counts)
        else:
            assert hist.to_dict() == merged.hists[name].to_dict()
    assert merged.multivariate_rows() == 35_000
    with pytest.raises(InvalidInputError, match="different grids"):
        reference.merge(ReferenceStats.from_frame(second))


def test_windows_of_another_reference_are_refused(reference: ReferenceStats, window: pd.DataFrame) -> None:
    other = ReferenceStats.from_frame(generate_churn(5_000, seed=7)[FEATURES])
    sketch = WindowSketch.from_frame(other, window.head(100))
    with pytest.raises(InvalidInputError):
        compute_drift(reference, sketch)
    with pytest.raises(InvalidInputError):
        sketch.merge(WindowSketch.from_frame(reference, window.head(100)))
    with pytest.raises(InvalidInputError):
        WindowSketch.from_dict(sketch.to_dict(), reference)


def test_invalid_stored_statistics_are_refused(reference: ReferenceStats) -> None:
    data = reference.to_dict()
    with pytest.raises(InvalidInputError, match="version"):
        ReferenceStats.from_dict({**data, "version": 99})
    with pytest.raises(InvalidInputError):
        ReferenceStats.from_dict({**data, "columns": {}})
    with pytest.raises(InvalidInputError):
        ReferenceStats.from_dict({"format": "something else"})


def test_what_the_reference_leaves_out() -> None:
    frame = generate_churn(3_000, seed=1)
    reference = ReferenceStats.from_frame(frame)
    assert "customer_id" in reference.skipped  # one value per row: an identifier
    assert "event_time" in reference.skipped  # datetimes are not compared
    assert set(FEATURES) <= set(reference.columns)
