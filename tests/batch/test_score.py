"""Batch scoring with the local engine: outputs, rejects, refusals, run records and the prediction log."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from sqlalchemy import select

from passerelle import _failpoints
from passerelle.batch import get_run
from passerelle.cli import main
from passerelle.demo.data import FEATURES
from passerelle.errors import InvalidInputError, NotFoundError, SchemaError
from passerelle.store.schema import BatchRun, Prediction
from tests.batch.conftest import Churn


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def expected(churn: Churn, rows: pd.DataFrame) -> np.ndarray:
    return churn.client.load("churn:1").predict_proba(rows[FEATURES])


def test_parquet_to_parquet_keeps_columns_and_adds_outputs(churn: Churn, tmp_path: Path) -> None:
    out = tmp_path / "scored.parquet"
    info = churn.client.score("churn", churn.parquet, out, keep=["customer_id"], batch_rows=500)
    assert info.status == "succeeded"
    assert (info.rows_in, info.rows_scored, info.rows_rejected) == (1_200, 1_200, 0)
    assert info.rejects_uri is None
    assert info.input_fingerprint.startswith("sha256:")
    scored = pd.read_parquet(out)
    assert list(scored.columns) == [
        "customer_id",
        "prediction",
        "proba_0",
        "proba_1",
        "model_version",
        "run_id",
    ]
    assert scored["customer_id"].tolist() == churn.data["customer_id"].tolist()
    proba = expected(churn, churn.data)
    np.testing.assert_allclose(scored[["proba_0", "proba_1"]].to_numpy(), proba)
    assert scored["prediction"].tolist() == proba.argmax(axis=1).tolist()
    assert set(scored["model_version"]) == {"churn:1"}
    assert set(scored["run_id"]) == {info.run_id}
    # Written chunk by chunk, never held whole: one row group per 500-row chunk.
    assert pq.ParquetFile(out).metadata.num_row_groups == 3
    assert not list(tmp_path.glob(".*.part"))


def test_csv_to_csv_gives_the_same_scores(churn: Churn, tmp_path: Path) -> None:
    parquet_out = tmp_path / "a.parquet"
    csv_out = tmp_path / "a.csv"
    churn.client.score("churn:1", churn.parquet, parquet_out, keep=["customer_id"])
    info = churn.client.score("churn:1", churn.csv, csv_out, keep=["customer_id", "event_time"])
    assert info.rows_scored == 1_200
    from_csv = pd.read_csv(csv_out)
    from_parquet = pd.read_parquet(parquet_out)
    assert list(from_csv.columns[:2]) == ["customer_id", "event_time"]
    # Kept columns pass through as the file has them.
    assert from_csv["event_time"].iloc[0] == str(churn.data["event_time"].iloc[0])
    np.testing.assert_allclose(from_csv["proba_1"], from_parquet["proba_1"], rtol=1e-12)
    assert from_csv["prediction"].tolist() == from_parquet["prediction"].tolist()


def test_rejects_file_names_the_row_column_and_reason(churn: Churn, tmp_path: Path) -> None:
    text = churn.data.copy()
    text["tenure_months"] = text["tenure_months"].astype(object)
    text.loc[3, "tenure_months"] = "abc"  # a wrong type
    text.loc[7, "contract"] = None  # a null where the signature has none
    source = tmp_path / "bad.csv"
    text.to_csv(source, index=False)
    out = tmp_path / "scored.csv"
    info = churn.client.score("churn:1", source, out, keep=["customer_id"], batch_rows=100)
    assert (info.rows_in, info.rows_scored, info.rows_rejected) == (1_200, 1_198, 2)
    assert info.rejects_uri == str(tmp_path / "scored.rejects.csv")
    assert info.details["rejections"] == {
        "tenure_months: expected integer": 1,
        "contract: null not allowed": 1,
    }
    rejects = pd.read_csv(tmp_path / "scored.rejects.csv")
    assert rejects["row"].tolist() == [3, 7]
    assert rejects["column"].tolist() == ["tenure_months", "contract"]
    assert rejects["reason"].tolist() == ["expected integer, got 'abc'", "null not allowed"]
    assert rejects["customer_id"].tolist() == ["C000003", "C000007"]
    assert rejects["tenure_months"].iloc[0] == "abc"
    scored = pd.read_csv(out)
    assert len(scored) == 1_198
    assert "C000003" not in set(scored["customer_id"])
    # The rows that passed are scored exactly as without the bad ones.
    good = churn.data.drop(index=[3, 7])
    np.testing.assert_allclose(scored["proba_1"], expected(churn, good)[:, 1], rtol=1e-9)


def test_parquet_null_in_a_non_nullable_column_is_rejected(churn: Churn, tmp_path: Path) -> None:
    data = churn.data.copy()
    data["age"] = data["age"].astype("float64")
    data.loc[0, "age"] = np.nan
    source = tmp_path / "nulls.parquet"
    data.to_parquet(source, index=False)
    info = churn.client.score("churn:1", source, tmp_path / "out.parquet", rejects=tmp_path / "bad.parquet")
    assert info.rows_rejected == 1
    rejects = pd.read_parquet(tmp_path / "bad.parquet")
    assert rejects[["row", "column", "reason"]].to_dict("records") == [
        {"row": 0, "column": "age", "reason": "null not allowed"}
    ]


def test_fail_on_reject_fails_the_run_and_writes_no_output(
    churn: Churn, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = churn.data.copy()
    data.loc[5, "contract"] = None
    source = tmp_path / "bad.parquet"
    data.to_parquet(source, index=False)
    out = tmp_path / "out.parquet"
    code, _, err = run(
        capsys, "score", "churn:1", "--input", str(source), "--output", str(out), "--fail-on-reject"
    )
    assert code == 1
    assert err.startswith("error: row 5 of")
    assert "--fail-on-reject" in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()
    assert (tmp_path / "out.rejects.parquet").exists()
    (record,) = churn.client.batch_runs()
    assert record.status == "failed"
    assert record.rows_rejected == 1
    # Without the flag the same file scores, with its reject counted.
    code, out_text, _ = run(
        capsys, "score", "churn:1", "-i", str(source), "-o", str(out), "--overwrite", "-q"
    )
    assert code == 0
    assert out_text == ""
    assert len(pd.read_parquet(out)) == 1_199


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "missing.parquet", "no such file"),
        (lambda d: _write(d / "garbage.parquet", b"not parquet at all"), "cannot read"),
        (lambda d: _write(d / "data.txt", b"a,b\n1,2\n"), "unsupported file type"),
        (lambda d: _without(d / "partial.csv", "monthly_charges"), "has no column 'monthly_charges'"),
    ],
    ids=["missing-file", "unreadable", "unsupported-format", "missing-column"],
)
def test_bad_inputs_exit_1_with_one_line(
    churn: Churn, tmp_path: Path, capsys: pytest.CaptureFixture[str], make: object, message: str
) -> None:
    source = make(tmp_path)  # type: ignore[operator]
    out = tmp_path / "out.parquet"
    code, _, err = run(capsys, "score", "churn:1", "--input", str(source), "--output", str(out))
    assert code == 1
    assert err.startswith("error: ")
    assert message in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()
    assert churn.client.batch_runs() == []  # refused before anything ran


def _write(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


def _without(path: Path, column: str) -> Path:
    from passerelle.demo.data import generate_churn

    generate_churn(50, seed=3).drop(columns=[column]).to_csv(path, index=False)
    return path


def test_existing_output_is_refused_unless_overwrite(
    churn: Churn, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out.parquet"
    out.write_text("previous results")
    args = ["score", "churn:1", "--input", str(churn.parquet), "--output", str(out)]
    code, _, err = run(capsys, *args)
    assert code == 1
    assert "already exists; pass --overwrite" in err
    assert out.read_text() == "previous results"
    code, out_text, _ = run(capsys, *args, "--overwrite", "--keep", "customer_id")
    assert code == 0
    assert "scored 1,200 of 1,200 rows with churn:1" in out_text
    assert len(pd.read_parquet(out)) == 1_200


def test_other_refusals(churn: Churn, tmp_path: Path) -> None:
    c = churn.client
    out = tmp_path / "out.parquet"
    with pytest.raises(InvalidInputError, match=r"--keep: .* has no column 'nope'"):
        c.score("churn:1", churn.parquet, out, keep=["nope"])
    clashing = tmp_path / "clash.parquet"
    churn.data.assign(prediction=1).to_parquet(clashing, index=False)
    with pytest.raises(InvalidInputError, match="the output adds a column"):
        c.score("churn:1", clashing, out, keep=["prediction"])
    with pytest.raises(InvalidInputError, match="does not exist"):
        c.score("churn:1", churn.parquet, tmp_path / "no" / "out.parquet")
    with pytest.raises(InvalidInputError, match="both the input and an output"):
        c.score("churn:1", churn.parquet, churn.parquet, overwrite=True)
    with pytest.raises(NotFoundError):
        c.score("churn:9", churn.parquet, out)
    with pytest.raises(InvalidInputError, match="unknown engine"):
        c.score("churn:1", churn.parquet, out, engine="dask")


def test_a_failure_midway_leaves_no_output_and_records_it(
    churn: Churn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(_failpoints._ACTIVE, "batch.chunk_written", "raise")
    out = tmp_path / "out.parquet"
    with pytest.raises(_failpoints.FailpointError):
        churn.client.score("churn:1", churn.parquet, out, batch_rows=200)
    assert not out.exists()
    assert not list(tmp_path.glob(".*.part"))
    (record,) = churn.client.batch_runs()
    assert record.status == "failed"
    assert record.error == "failpoint batch.chunk_written"
    assert record.rows_scored == 200
    assert record.finished_at is not None


def test_run_record_audit_and_cli(churn: Churn, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    info = churn.client.score("churn:1", churn.parquet, tmp_path / "out.parquet")
    again = get_run(churn.client.ctx, info.run_id[:8])
    assert again == info
    assert again.created_by == "tester"
    assert again.engine == "local"
    assert again.duration_s is not None
    assert again.duration_s > 0
    assert again.finished_at is not None
    assert again.finished_at >= again.started_at
    (entry,) = churn.client.audit(action="batch.score")
    assert entry.target == "churn:1"
    assert entry.after is not None
    assert entry.after["run_id"] == info.run_id
    assert entry.after["rows_scored"] == 1_200
    assert entry.after["input_fingerprint"] == info.input_fingerprint

    code, out, _ = run(capsys, "batch", "runs", "--json")
    assert code == 0
    assert [r["run_id"] for r in json.loads(out)] == [info.run_id]
    code, out, _ = run(capsys, "batch", "show", info.run_id[:10])
    assert code == 0
    assert info.run_id in out
    assert "1,200 in, 1,200 scored, 0 rejected" in out
    code, _, err = run(capsys, "batch", "show", "ffffffffff")
    assert code == 1
    assert "does not exist" in err


def test_log_appends_every_scored_row_to_the_prediction_log(churn: Churn, tmp_path: Path) -> None:
    data = churn.data.head(300).copy()
    data.loc[10, "contract"] = None
    source = tmp_path / "few.parquet"
    data.to_parquet(source, index=False)
    info = churn.client.score(
        "churn:1", source, tmp_path / "out.parquet", log=True, key_column="customer_id", batch_rows=128
    )
    assert info.details["logged_rows"] == 299
    assert info.details["log_endpoint"] == "churn-batch"
    with churn.client.ctx.store.read() as session:
        rows = session.scalars(select(Prediction).order_by(Prediction.key)).all()
        assert len(rows) == 299
        first = rows[0]
        assert (first.endpoint, first.revision, first.model, first.version) == ("churn-batch", 0, "churn", 1)
        assert (first.source, first.request_id, first.key) == ("batch", info.run_id, "C000000")
        assert first.latency_ms > 0
        assert set(first.inputs) == set(FEATURES)
        assert first.inputs["contract"] == data.loc[0, "contract"]
        assert first.outputs["prediction"] in (0, 1)
        assert len(first.outputs["proba"]) == 2
        assert "C000010" not in {r.key for r in rows}
        assert len({r.id for r in rows}) == 299
    scored = pd.read_parquet(tmp_path / "out.parquet")
    assert first.outputs["proba"][1] == pytest.approx(scored["proba_1"].iloc[0])

    info2 = churn.client.score(
        "churn:1", source, tmp_path / "out2.parquet", log=True, log_endpoint="nightly", batch_rows=1000
    )
    with churn.client.ctx.store.read() as session:
        nightly = session.scalars(select(Prediction).where(Prediction.endpoint == "nightly")).all()
        assert len(nightly) == 299
        assert {p.key for p in nightly} == {None}
        assert {p.request_id for p in nightly} == {info2.run_id}
        assert session.get(BatchRun, info2.run_id) is not None


def test_schema_error_is_one_line_for_fail_on_reject(churn: Churn, tmp_path: Path) -> None:
    data = churn.data.head(10).copy()
    data["tenure_months"] = "many"
    source = tmp_path / "strings.parquet"
    data.to_parquet(source, index=False)
    with pytest.raises(SchemaError, match="expected integer, got 'many'"):
        churn.client.score("churn:1", source, tmp_path / "out.parquet", fail_on_reject=True)
    info = churn.client.score("churn:1", source, tmp_path / "out.parquet", rejects=tmp_path / "r.csv")
    assert (info.rows_scored, info.rows_rejected) == (0, 10)
    empty = pd.read_parquet(tmp_path / "out.parquet")
    assert len(empty) == 0
    assert list(empty.columns) == ["prediction", "proba_0", "proba_1", "model_version", "run_id"]
    assert len(pd.read_csv(tmp_path / "r.csv")) == 10
