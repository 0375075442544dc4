"""The prediction archive: old predictions moved to Parquet files that DuckDB reads, on SQLite and
PostgreSQL, to a local folder and to S3 (moto over HTTP)."""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import duckdb
import fsspec
import pandas as pd
import pyarrow.parquet as pq
import pytest
from sqlalchemy import func, select

from passerelle import _failpoints
from passerelle.archive import (
    ARCHIVE_ACTION,
    ERASE_ARCHIVED_ACTION,
    ArchiveLocation,
    archive,
    archive_tick,
    erase_key,
    read_archive,
)
from passerelle.audit import list_entries
from passerelle.context import Context
from passerelle.errors import (
    ConflictError,
    InvalidInputError,
    InvalidReferenceError,
    NotFoundError,
    StoreError,
)
from passerelle.predictionlog import (
    LogShipper,
    PredictionLog,
    PredictionRecord,
    export,
    hash_key,
    redaction_secret,
)
from passerelle.serving import leases
from passerelle.settings import Settings
from passerelle.store.schema import Feedback, Prediction, ShadowPrediction
from tests.predictionlog.records import prediction, shadow
from tests.test_cli import run

NOW = dt.datetime(2026, 3, 10, 12, 0, tzinfo=dt.UTC)
TWO_DAYS = dt.timedelta(days=2)
#: the cut-off for NOW and TWO_DAYS: midnight of March 8
CUTOFF = dt.datetime(2026, 3, 8, tzinfo=dt.UTC)
ROOT = Path(__file__).resolve().parents[2]


def _at(day: int, hour: float = 10.0) -> dt.datetime:
    return dt.datetime(2026, 3, day, tzinfo=dt.UTC) + dt.timedelta(hours=hour)


def _context(request: pytest.FixtureRequest, store: str, database: str, tmp_path: Path) -> Context:
    if store == "s3":
        base: Settings = request.getfixturevalue("s3_settings")
        settings = base.model_copy(update={"database_url": database})
    else:
        settings = Settings(home=tmp_path / "home", database_url=database)
    return Context(settings, actor="tester")


@pytest.fixture(params=["local", "s3"])
def ctx(request: pytest.FixtureRequest, backend: str, tmp_path: Path) -> Iterator[Context]:
    """A context on each database, with its artifact store (so the archive) local or on S3."""
    context = _context(request, request.param, backend, tmp_path)
    yield context
    context.close()


@pytest.fixture(params=["local-sqlite", "s3-postgres"])
def pair(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Context]:
    """Each database and each kind of store once, for the tests that do not need every pairing."""
    store, database = request.param.split("-")
    if database == "sqlite":
        url = f"sqlite:///{tmp_path / 'home' / 'passerelle.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    context = _context(request, store, url, tmp_path)
    yield context
    context.close()


@pytest.fixture
def local_ctx(tmp_path: Path) -> Iterator[Context]:
    context = Context(Settings(home=tmp_path / "home"), actor="tester")
    yield context
    context.close()


def _log(ctx: Context, records: list[PredictionRecord], shadows: Sequence[PredictionRecord] = ()) -> None:
    folder = Path(ctx.settings.home) / "predictions"
    with PredictionLog(folder, worker="w0", fsync=False) as log:
        log.append_sync(records)
        log.append_shadow([shadow(r, version=3, outputs={"prediction": f"s-{r.key}"}) for r in shadows])
    LogShipper(folder, ctx.store).ship_once()


def _history(ctx: Context) -> dict[str, list[PredictionRecord]]:
    """Three old rows on March 5, one just before the cut-off, one at it, one recent; and another endpoint."""
    old = [prediction(i, at=_at(5, 10 + i)) for i in range(3)]
    edge = [prediction(3, at=CUTOFF - dt.timedelta(microseconds=1))]
    kept = [prediction(4, at=CUTOFF), prediction(5, at=_at(9))]
    other = [prediction(6, endpoint="fraud", at=_at(5))]
    _log(ctx, old + edge + kept + other, shadows=[old[0], kept[1]])
    return {"old": old, "edge": edge, "kept": kept, "other": other}


def _ids(records: list[PredictionRecord]) -> list[str]:
    return [r.id for r in records]


def _db_ids(ctx: Context, endpoint: str = "churn") -> list[str]:
    with ctx.store.read() as session:
        query = select(Prediction.id).where(Prediction.endpoint == endpoint).order_by(Prediction.at)
        return list(session.scalars(query))


def _fs(ctx: Context) -> tuple[Any, str]:
    location = ArchiveLocation.from_settings(ctx.settings)
    fs, base = fsspec.core.url_to_fs(location.uri, **location.storage_options)
    fs.invalidate_cache()
    return fs, str(base)


def _files(ctx: Context) -> list[str]:
    """Every file under the archive root, relative to it."""
    fs, base = _fs(ctx)
    try:
        found = fs.find(base)
    except FileNotFoundError:
        found = []
    return sorted(path[len(base) :].lstrip("/") for path in found)


def _duck(ctx: Context) -> tuple[duckdb.DuckDBPyConnection, str]:
    """A DuckDB connection that reaches the archive, and the glob of its files."""
    location = ArchiveLocation.from_settings(ctx.settings)
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    if location.uri.startswith("s3://"):
        con.register_filesystem(fsspec.filesystem("s3", **location.storage_options))
    return con, f"{location.uri}/predictions/*/*/*.parquet"


# ------------------------------------------------------------------------------------------ moving


def test_archive_moves_exactly_the_old_rows(ctx: Context) -> None:
    rows = _history(ctx)
    with ctx.store.write() as session:
        session.add(
            Feedback(
                prediction_id=rows["old"][0].id,
                endpoint="churn",
                prediction_at=rows["old"][0].at,
                label="yes",
                label_at=NOW,
                received_by="tester",
            )
        )

    report = archive(ctx, "churn", older_than=TWO_DAYS, batch_rows=2, now=NOW)

    assert report.cutoff == CUTOFF
    assert [(b.date, b.rows) for b in report.batches] == [
        (dt.date(2026, 3, 5), 2),
        (dt.date(2026, 3, 5), 1),
        (dt.date(2026, 3, 7), 1),
    ]
    assert report.rows == 4
    assert not report.dry_run
    assert not report.more
    # The database keeps the rows from the cut-off on, the other endpoint, and every label.
    assert _db_ids(ctx) == _ids(rows["kept"])
    assert _db_ids(ctx, "fraud") == _ids(rows["other"])
    with ctx.store.read() as session:
        assert list(session.scalars(select(ShadowPrediction.prediction_id))) == [rows["kept"][1].id]
        assert session.scalar(select(func.count()).select_from(Feedback)) == 1
    entries = list_entries(ctx.store, action=ARCHIVE_ACTION, target="churn")
    assert sorted(e.after["rows"] for e in entries if e.after) == [1, 1, 2]
    assert {e.actor for e in entries} == {"tester"}

    # Hive partitions, one record per file, nothing left pending.
    files = _files(ctx)
    parts = [f for f in files if f.endswith(".parquet")]
    assert len(parts) == 3
    assert all(
        re.fullmatch(r"predictions/endpoint=churn/date=2026-03-0[57]/part-[0-9a-f]{32}\.parquet", f)
        for f in parts
    )
    records = [f for f in files if "/_files/" in f]
    assert len(records) == 3
    assert not [f for f in records if f.endswith(".pending.json")]
    fs, base = _fs(ctx)
    record = json.loads(fs.cat_file(f"{base}/{records[0]}"))
    assert record["rows"] in {1, 2}
    assert len(record["sha256"]) == 64

    # DuckDB reads the partitions; the endpoint is the path's, not a column of the files.
    con, glob = _duck(ctx)
    source = f"read_parquet('{glob}', hive_partitioning = true, union_by_name = true)"
    found = con.sql(f'SELECT * FROM {source} ORDER BY "at"')
    types = dict(zip(found.columns, [str(t) for t in found.types], strict=True))
    assert types["at"] == "TIMESTAMP WITH TIME ZONE"
    assert types["date"] == "DATE"
    assert types["endpoint"] == "VARCHAR"
    assert types["revision"] == "BIGINT"
    assert types["in_age"] == "BIGINT"
    assert types["out_proba_yes"] == "DOUBLE"
    assert types["shadows"] == (
        'STRUCT(model VARCHAR, "version" BIGINT, "at" TIMESTAMP WITH TIME ZONE, latency_ms DOUBLE, '
        'outputs VARCHAR, "error" VARCHAR)[]'
    )
    table = found.to_arrow_table()
    assert table.column("id").to_pylist() == _ids(rows["old"] + rows["edge"])
    assert set(table.column("endpoint").to_pylist()) == {"churn"}
    assert [str(d) for d in table.column("date").to_pylist()] == ["2026-03-05"] * 3 + ["2026-03-07"]
    con.close()
    with fs.open(f"{base}/{parts[0]}", "rb") as handle:
        assert "endpoint" not in pq.read_schema(handle).names

    # read_archive: export's columns, oldest first, shadow answers nested in full.
    archived = read_archive(ctx, "churn")
    assert archived.column_names[:10] == [
        "id", "at", "endpoint", "revision", "model", "version", "latency_ms", "key", "request_id", "source",
    ]  # fmt: skip
    assert archived.column_names[-1] == "shadows"
    assert archived.column("id").to_pylist() == _ids(rows["old"] + rows["edge"])
    first = archived.slice(0, 1).to_pylist()[0]
    assert first["at"] == rows["old"][0].at
    assert first["key"] == "customer-0"
    assert first["in_age"] == 30
    assert first["out_prediction"] == "no"
    assert first["shadow_churn_3_prediction"] == "s-customer-0"
    (nested,) = first["shadows"]
    assert (nested["model"], nested["version"], json.loads(nested["outputs"])) == (
        "churn",
        3,
        {"prediction": "s-customer-0"},
    )
    # A period keeps its rows only.
    assert read_archive(ctx, "churn", since=_at(6)).column("id").to_pylist() == _ids(rows["edge"])
    assert read_archive(ctx, "churn", until=_at(5, 11)).column("id").to_pylist() == _ids(rows["old"][:1])
    assert read_archive(ctx, "fraud").num_rows == 0

    # Nothing more is due: a second run changes nothing.
    again = archive(ctx, "churn", older_than=TWO_DAYS, now=NOW)
    assert again.batches == []
    assert _db_ids(ctx) == _ids(rows["kept"])


def test_every_endpoint_is_archived_when_none_is_named(local_ctx: Context) -> None:
    rows = _history(local_ctx)
    report = archive(local_ctx, older_than=TWO_DAYS, now=NOW)
    assert {(b.endpoint, b.date, b.rows) for b in report.batches} == {
        ("churn", dt.date(2026, 3, 5), 3),
        ("churn", dt.date(2026, 3, 7), 1),
        ("fraud", dt.date(2026, 3, 5), 1),
    }
    assert _db_ids(local_ctx, "fraud") == []
    assert read_archive(local_ctx, "fraud").column("id").to_pylist() == _ids(rows["other"])


def test_reads_skip_the_days_outside_the_period(local_ctx: Context) -> None:
    _history(local_ctx)
    archive(local_ctx, "churn", older_than=TWO_DAYS, now=NOW)
    root = Path(ArchiveLocation.from_settings(local_ctx.settings).uri)
    (part,) = root.glob("predictions/endpoint=churn/date=2026-03-05/part-*.parquet")
    part.write_bytes(b"not a parquet file")
    assert read_archive(local_ctx, "churn", since=_at(6)).num_rows == 1
    with pytest.raises(StoreError, match="cannot read the prediction archive"):
        read_archive(local_ctx, "churn")


def test_a_dry_run_changes_nothing(pair: Context) -> None:
    ctx = pair
    rows = _history(ctx)
    report = archive(ctx, "churn", older_than=TWO_DAYS, now=NOW, dry_run=True)
    assert report.dry_run
    assert [(b.date, b.rows, b.file) for b in report.batches] == [
        (dt.date(2026, 3, 5), 3, None),
        (dt.date(2026, 3, 7), 1, None),
    ]
    assert _db_ids(ctx) == _ids(rows["old"] + rows["edge"] + rows["kept"])
    assert _files(ctx) == []
    assert list_entries(ctx.store, action=ARCHIVE_ACTION) == []


# ------------------------------------------------------------------------------------------ reading


def test_an_export_spans_both_tiers_without_duplicates(pair: Context, tmp_path: Path) -> None:
    ctx = pair
    rows = _history(ctx)
    location = ArchiveLocation.from_settings(ctx.settings)
    before = tmp_path / "before.parquet"
    assert export(ctx.store, "churn", output=before, include_archive=False) == 6

    archive(ctx, "churn", older_than=TWO_DAYS, now=NOW)

    after = tmp_path / "after.parquet"
    assert export(ctx.store, "churn", output=after, archive=location, chunk_rows=2) == 6
    old, new = pd.read_parquet(before), pd.read_parquet(after)
    assert new["id"].tolist() == _ids(rows["old"] + rows["edge"] + rows["kept"])  # the archive first
    assert list(new.columns) == list(old.columns)
    pd.testing.assert_frame_equal(
        new.sort_values("id").reset_index(drop=True), old.sort_values("id").reset_index(drop=True)
    )
    database_only = tmp_path / "database.parquet"
    assert export(ctx.store, "churn", output=database_only, include_archive=False) == 2
    # A period across the cut-off takes what it needs from each tier.
    since = tmp_path / "since.csv"
    assert export(ctx.store, "churn", output=since, since=_at(7), format="csv", archive=location) == 3


# ------------------------------------------------------------------------------------------ crashes


def test_a_crash_between_writing_and_deleting_loses_and_doubles_nothing(
    ctx: Context, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _crash(ctx, tmp_path, monkeypatch, "archive.before_delete")


@pytest.mark.parametrize("point", ["archive.file_written", "archive.deleted"])
def test_a_crash_just_after_writing_or_deleting_converges_too(
    local_ctx: Context, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, point: str
) -> None:
    _crash(local_ctx, tmp_path, monkeypatch, point)


def _crash(ctx: Context, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, point: str) -> None:
    rows = _history(ctx)
    everything = _ids(rows["old"] + rows["edge"] + rows["kept"])
    location = ArchiveLocation.from_settings(ctx.settings)
    monkeypatch.setattr(_failpoints, "_ACTIVE", {point: "raise"})
    with pytest.raises(_failpoints.FailpointError):
        archive(ctx, "churn", older_than=TWO_DAYS, now=NOW)
    monkeypatch.setattr(_failpoints, "_ACTIVE", {})
    if not location.uri.startswith("s3://"):
        # What a local write killed before its rename leaves: readers ignore it, the next run removes it.
        torn = Path(location.uri) / "predictions/endpoint=churn/date=2026-03-05/.part-0.parquet.0badf00d.tmp"
        torn.write_bytes(b"PAR1")

    # The file is whole; its rows may still be in the database as well: readers see each once.
    assert [f for f in _files(ctx) if f.endswith(".pending.json")]
    assert read_archive(ctx, "churn").column("id").to_pylist() == _ids(rows["old"])
    expected_in_db = everything if point != "archive.deleted" else _ids(rows["edge"] + rows["kept"])
    assert _db_ids(ctx) == expected_in_db
    output = tmp_path / "during.parquet"
    assert export(ctx.store, "churn", output=output, archive=location) == 6
    assert sorted(pd.read_parquet(output)["id"]) == sorted(everything)

    # The next run finishes the batch from its record instead of writing the rows again.
    report = archive(ctx, "churn", older_than=TWO_DAYS, now=NOW)
    assert report.recovered == 1
    assert [(b.date, b.rows) for b in report.batches] == [(dt.date(2026, 3, 7), 1)]
    assert _db_ids(ctx) == _ids(rows["kept"])
    assert read_archive(ctx, "churn").column("id").to_pylist() == _ids(rows["old"] + rows["edge"])
    files = _files(ctx)
    assert len([f for f in files if f.endswith(".parquet")]) == 2
    assert not [f for f in files if f.endswith((".pending.json", ".tmp"))]
    moved = sum(e.before["rows"] for e in list_entries(ctx.store, action=ARCHIVE_ACTION) if e.before)
    assert moved == 4


# ------------------------------------------------------------------------------------------ erasure


def test_erasure_rewrites_only_the_partitions_holding_the_key(pair: Context) -> None:
    ctx = pair
    rows = _history(ctx)
    archive(ctx, "churn", older_than=TWO_DAYS, now=NOW)
    fs, base = _fs(ctx)
    march_7 = [f for f in _files(ctx) if "date=2026-03-07/" in f]
    untouched = {f: fs.cat_file(f"{base}/{f}") for f in march_7}
    march_5 = [f for f in _files(ctx) if "date=2026-03-05/part-" in f]

    assert erase_key(ctx, "churn", "customer-1", reason="ticket 42") == 1

    assert {f: fs.cat_file(f"{base}/{f}") for f in _files(ctx) if "date=2026-03-07/" in f} == untouched
    rewritten = [f for f in _files(ctx) if "date=2026-03-05/part-" in f]
    assert len(rewritten) == 1
    assert rewritten != march_5
    archived = read_archive(ctx, "churn")
    assert archived.column("key").to_pylist() == ["customer-0", "customer-2", "customer-3"]
    assert archived.column("shadows").to_pylist()[0][0]["outputs"] == '{"prediction":"s-customer-0"}'
    (entry,) = list_entries(ctx.store, action=ERASE_ARCHIVED_ACTION)
    assert entry.after is not None
    assert entry.after["rows"] == 2
    assert entry.after["removed"] == 1
    assert entry.after["file"] in {
        f"{ArchiveLocation.from_settings(ctx.settings).uri}/{f}" for f in rewritten
    }
    assert entry.reason == "ticket 42"
    assert "customer-1" not in json.dumps([entry.before, entry.after])

    # By the keyed hash the erasure's audit record names, a key kept in clear is found too; a file
    # left empty is removed with its record.
    digest = hash_key(redaction_secret(ctx.settings), "customer-3")
    assert erase_key(ctx, "churn", digest) == 1
    assert [f for f in _files(ctx) if "date=2026-03-07/" in f] == []
    assert read_archive(ctx, "churn").column("id").to_pylist() == [rows["old"][0].id, rows["old"][2].id]
    assert erase_key(ctx, "churn", "nobody") == 0


def test_erasure_finds_keys_logged_as_their_hash(local_ctx: Context) -> None:
    digest = hash_key(redaction_secret(local_ctx.settings), "customer-0")
    hidden = prediction(0, at=_at(5))
    hidden.key = digest
    _log(local_ctx, [hidden, prediction(1, at=_at(5, 11))])
    archive(local_ctx, "churn", older_than=TWO_DAYS, now=NOW)
    assert erase_key(local_ctx, "churn", "customer-0") == 1
    assert read_archive(local_ctx, "churn").column("key").to_pylist() == ["customer-1"]


def test_an_interrupted_rewrite_shows_no_duplicate_and_finishes_later(
    local_ctx: Context, monkeypatch: pytest.MonkeyPatch
) -> None:
    _history(local_ctx)
    archive(local_ctx, "churn", older_than=TWO_DAYS, now=NOW)
    monkeypatch.setattr(_failpoints, "_ACTIVE", {"archive.erase_written": "raise"})
    with pytest.raises(_failpoints.FailpointError):
        erase_key(local_ctx, "churn", "customer-1")
    monkeypatch.setattr(_failpoints, "_ACTIVE", {})
    # Both files exist for now; readers take the new one only.
    assert len([f for f in _files(local_ctx) if "date=2026-03-05/part-" in f]) == 2
    assert read_archive(local_ctx, "churn").column("key").to_pylist() == [
        "customer-0",
        "customer-2",
        "customer-3",
    ]
    assert erase_key(local_ctx, "churn", "customer-1") == 0
    assert len([f for f in _files(local_ctx) if "date=2026-03-05/part-" in f]) == 1


# ------------------------------------------------------------------------------------------ running it


def test_archive_tick_follows_the_setting(tmp_path: Path) -> None:
    off = Context(Settings(home=tmp_path / "home"))
    try:
        _history(off)
        assert archive_tick(off, now=NOW) is None
    finally:
        off.close()
    on = Context(Settings(home=tmp_path / "home", archive_after_days=2))
    try:
        report = archive_tick(on, now=NOW)
        assert report is not None
        assert report.rows == 5
        again = archive_tick(on, now=NOW)
        assert again is not None
        assert again.rows == 0
        assert leases.holder(on.store, "predictions-archive:churn") is None
    finally:
        on.close()


def test_one_archiver_per_endpoint_and_plain_errors(local_ctx: Context) -> None:
    _history(local_ctx)
    assert leases.acquire(local_ctx.store, "predictions-archive:churn", "elsewhere", 60)
    with pytest.raises(ConflictError, match="another process is archiving 'churn'"):
        archive(local_ctx, "churn", older_than=TWO_DAYS, now=NOW)
    report = archive(local_ctx, older_than=TWO_DAYS, now=NOW)
    assert report.busy == ["churn"]
    assert {b.endpoint for b in report.batches} == {"fraud"}
    with pytest.raises(ConflictError):
        erase_key(local_ctx, "churn", "customer-1", wait_s=0)
    leases.release(local_ctx.store, "predictions-archive:churn", "elsewhere")

    with pytest.raises(InvalidInputError, match="older_than must be a positive duration"):
        archive(local_ctx, older_than=dt.timedelta(0))
    with pytest.raises(InvalidInputError, match="batch_rows"):
        archive(local_ctx, older_than=TWO_DAYS, batch_rows=0)
    with pytest.raises(NotFoundError, match="'nowhere' does not exist"):
        archive(local_ctx, "nowhere", older_than=TWO_DAYS)
    with pytest.raises(InvalidInputError, match="never hold"):
        erase_key(local_ctx, "churn", "customer-1", reason="customer-1 asked")
    with pytest.raises(InvalidReferenceError, match="invalid endpoint"):
        read_archive(local_ctx, "../etc")


def test_the_command(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    ctx = Context(Settings(home=tmp_path / "home"))
    now = dt.datetime.now(dt.UTC)
    try:
        _log(ctx, [prediction(i, at=now - dt.timedelta(days=10, hours=i)) for i in range(3)])
        _log(ctx, [prediction(9, at=now)])
    finally:
        ctx.close()
    code, out, err = run(capsys, "predictions", "archive", "churn", "--older-than", "5d", "--dry-run")
    assert code == 0, err
    assert "would move 3 prediction(s)" in out
    target = tmp_path / "elsewhere"
    code, out, err = run(
        capsys,
        "predictions",
        "archive",
        "--older-than",
        "5d",
        "--to",
        str(target),
        "--reason",
        "space",
        "--json",
    )
    assert code == 0, err
    report = json.loads(out)
    assert report["rows"] == 3
    assert report["root"] == str(target)
    assert len(list(target.glob("predictions/endpoint=churn/date=*/part-*.parquet"))) >= 1
    code, _, err = run(capsys, "predictions", "archive", "--older-than", "soon")
    assert code == 2
    assert "--older-than 'soon'" in err


def test_the_documented_query_runs(local_ctx: Context) -> None:
    """The DuckDB example of docs/predictions.md, over a real archive."""
    text = (ROOT / "docs" / "predictions.md").read_text()
    section = text.split("## Archive (Parquet)", 1)[1]
    query = re.search(r"```sql\n(.*?)```", section, flags=re.S)
    assert query is not None
    _log(
        local_ctx,
        [prediction(i, endpoint="churn-api", at=_at(2, 8 + i), version=1 + i % 2) for i in range(4)],
    )
    archive(local_ctx, "churn-api", older_than=TWO_DAYS, now=NOW)
    root = ArchiveLocation.from_settings(local_ctx.settings).uri
    sql = query.group(1).replace("/var/lib/passerelle/artifacts/predictions-archive", root)
    result = duckdb.sql(sql).fetchall()
    assert [(str(r[0]), r[1], r[2], r[3]) for r in result] == [
        ("2026-03-02", "churn", 1, 2),
        ("2026-03-02", "churn", 2, 2),
    ]
