"""Shipping segments into the database: batches, idempotence, the spool, takeover, bad rows."""

from __future__ import annotations

import os
import time
from pathlib import Path

import orjson
from sqlalchemy import func, select

from passerelle.predictionlog import LogShipper, PredictionLog, _shipper_lock, count, read_log
from passerelle.store import Store
from passerelle.store.schema import Prediction, ShadowPrediction
from tests.predictionlog.records import prediction, shadow

UNREACHABLE = "postgresql+psycopg://postgres@127.0.0.1:1/nowhere"


def _rows(store: Store) -> tuple[int, int]:
    with store.read() as session:
        predictions = session.execute(select(func.count()).select_from(Prediction)).scalar_one()
        shadows = session.execute(select(func.count()).select_from(ShadowPrediction)).scalar_one()
    return predictions, shadows


def _segments(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.suffix in {".seg", ".done", ".pos"})


def test_ship_live_and_closed_segments(store: Store, tmp_path: Path) -> None:
    directory = tmp_path / "log"
    log = PredictionLog(directory, worker="w0", segment_bytes=8192)
    shipper = LogShipper(directory, store, log=log, batch_size=40)
    records = [prediction(i) for i in range(120)]
    for record in records:
        log.append_sync([record])
    log.append_shadow([shadow(records[0]), shadow(records[0], version=3), shadow(records[1])])
    log.flush()

    assert shipper.ship_once() == 123
    assert _rows(store) == (120, 3)
    # Closed segments are gone once shipped; the live one stays, with its position.
    names = _segments(directory)
    assert [n for n in names if n.endswith(".done")] == []
    assert [n for n in names if n.endswith(".seg")] == [f"w0-{log._seq:08d}.seg"]
    assert shipper.ship_once() == 0  # nothing new: nothing re-sent

    more = [prediction(i) for i in range(7)]
    for record in more:
        log.append_sync([record])
    assert shipper.ship_once() == 7
    assert _rows(store) == (127, 3)

    log.close()
    assert shipper.ship_once() == 0
    assert _segments(directory) == []
    with store.read() as session:
        stored = session.get(Prediction, records[5].id)
        assert stored is not None
        assert stored.inputs == records[5].inputs
        assert stored.outputs == records[5].outputs
        assert stored.at == records[5].at
        assert (stored.key, stored.request_id, stored.source) == ("customer-5", "req-5", "online")
    figures = shipper.figures()
    assert figures.shipped == 130
    assert figures.last_error is None


def test_shipping_is_idempotent_without_positions(sqlite_store: Store, tmp_path: Path) -> None:
    with PredictionLog(tmp_path, worker="w0") as log:
        for i in range(50):
            log.append_sync([prediction(i)])
    kept = tmp_path / "kept"
    kept.mkdir()
    os.link(tmp_path / "w0-00000001.done", kept / "w0-00000001.done")
    assert LogShipper(tmp_path, sqlite_store).ship_once() == 50
    # The same segment again, as after a crash that lost the position: no duplicate, no failure.
    (kept / "w0-00000001.done").rename(tmp_path / "w0-00000001.done")
    assert LogShipper(tmp_path, sqlite_store).ship_once() == 50
    assert _rows(sqlite_store) == (50, 0)


def test_unreachable_database_spools_then_ships(sqlite_store: Store, tmp_path: Path) -> None:
    directory = tmp_path / "log"
    away = Store(UNREACHABLE, migrate=False)
    log = PredictionLog(directory, worker="w0")
    shipper = LogShipper(directory, away, log=log)
    records = [prediction(i) for i in range(30)]
    for record in records:
        log.append_sync([record])

    assert shipper.ship_once() == 0  # raises nothing
    assert shipper.last_error is not None
    assert shipper.figures().failed_passes == 1
    assert [r["id"] for r in read_log(directory)] == [r.id for r in records]
    lag = log.figures().lag_seconds
    assert lag is not None
    time.sleep(0.02)
    assert (log.figures().lag_seconds or 0) > lag  # the lag grows while the database is away

    log.close()
    assert LogShipper(directory, away).ship_once() == 0
    assert _segments(directory) == ["w0-00000001.done"]

    back = LogShipper(directory, sqlite_store)
    assert back.ship_once() == 30
    assert count(sqlite_store, "churn") == 30
    assert _segments(directory) == []
    away.dispose()


def test_lag_is_zero_when_everything_is_shipped(sqlite_store: Store, tmp_path: Path) -> None:
    with PredictionLog(tmp_path, worker="w0") as log:
        shipper = LogShipper(tmp_path, sqlite_store, log=log)
        log.append_sync([prediction()])
        shipper.ship_once()
        assert log.figures().lag_seconds == 0.0


def test_a_live_worker_is_left_to_its_own_shipper(sqlite_store: Store, tmp_path: Path) -> None:
    other = PredictionLog(tmp_path, worker="other", segment_bytes=2048)
    for i in range(30):
        other.append_sync([prediction(i)])
    before = _segments(tmp_path)
    assert LogShipper(tmp_path, sqlite_store).ship_once() == 0
    assert _segments(tmp_path) == before
    other.close()  # now its segments are leftovers anyone may ship
    assert LogShipper(tmp_path, sqlite_store).ship_once() == 30
    assert _segments(tmp_path) == []


def test_two_shippers_never_ship_one_worker_at_once(sqlite_store: Store, tmp_path: Path) -> None:
    with PredictionLog(tmp_path, worker="w0") as log:
        log.append_sync([prediction()])
    held = _shipper_lock(tmp_path, "w0")
    held.acquire()
    try:
        assert LogShipper(tmp_path, sqlite_store).ship_once() == 0
        assert _segments(tmp_path) == ["w0-00000001.done"]
    finally:
        held.release()
    assert LogShipper(tmp_path, sqlite_store).ship_once() == 1


def test_a_crashed_workers_open_segment_is_taken_over(sqlite_store: Store, tmp_path: Path) -> None:
    with PredictionLog(tmp_path, worker="gone") as log:
        records = [prediction(i) for i in range(3)]
        log.append_sync(records)
    # As a killed process leaves it: still ".seg", last line torn, its writer lock free.
    segment = tmp_path / "gone-00000001.seg"
    (tmp_path / "gone-00000001.done").rename(segment)
    segment.write_bytes(segment.read_bytes() + b'{"t":"p","id":"0')
    # And a position left behind by a shipper killed after deleting its segment.
    (tmp_path / "gone-00000000.pos").write_text("123")
    assert LogShipper(tmp_path, sqlite_store).ship_once() == 3
    assert _segments(tmp_path) == []
    assert not (tmp_path / "rejected").exists()  # a torn tail is expected, not a rejection


def test_unreadable_lines_are_set_aside(sqlite_store: Store, tmp_path: Path) -> None:
    with PredictionLog(tmp_path, worker="w0") as log:
        log.append_sync([prediction(1)])
    segment = tmp_path / "w0-00000001.done"
    good = segment.read_bytes()
    segment.write_bytes(good + b"not json\n" + b'{"t":"p","id":"x"}\n' + good.replace(b"req-1", b"req-2"))
    shipper = LogShipper(tmp_path, sqlite_store)
    assert shipper.ship_once() == 2
    assert _rows(sqlite_store) == (1, 0)  # the same id twice is one row
    assert shipper.figures().rejected == 2
    rejected = (tmp_path / "rejected" / "w0-00000001.jsonl").read_bytes().splitlines()
    assert [orjson.loads(line)["line"] for line in rejected] == ["not json", '{"t":"p","id":"x"}']
    assert _segments(tmp_path) == []


def test_rows_the_database_refuses_are_set_aside(postgres_url: str, tmp_path: Path) -> None:
    """PostgreSQL enforces column widths; one bad row must not hold back the others."""
    store = Store(postgres_url)
    try:
        with PredictionLog(tmp_path, worker="w0") as log:
            records = [prediction(i) for i in range(4)]
            log.append_sync(records)
        segment = tmp_path / "w0-00000001.done"
        lines = segment.read_bytes().splitlines(keepends=True)
        lines[2] = lines[2].replace(b'"endpoint":"churn"', b'"endpoint":"' + b"e" * 300 + b'"')
        segment.write_bytes(b"".join(lines))
        shipper = LogShipper(tmp_path, store)
        assert shipper.ship_once() == 3
        assert count(store, "churn") == 3
        assert shipper.figures().rejected == 1
        (entry,) = (tmp_path / "rejected" / "w0-00000001.jsonl").read_bytes().splitlines()
        assert records[2].id in orjson.loads(entry)["line"]
        assert _segments(tmp_path) == []
    finally:
        store.dispose()


def test_a_database_without_tables_is_retried_not_fatal(tmp_path: Path) -> None:
    bare = Store(f"sqlite:///{tmp_path / 'bare.db'}", migrate=False)
    try:
        with PredictionLog(tmp_path / "log", worker="w0") as log:
            log.append_sync([prediction()])
        shipper = LogShipper(tmp_path / "log", bare)
        assert shipper.ship_once() == 0
        assert shipper.last_error is not None
        bare.upgrade()
        assert shipper.ship_once() == 1
    finally:
        bare.dispose()


def test_background_shipping(sqlite_store: Store, tmp_path: Path) -> None:
    log = PredictionLog(tmp_path, worker="w0")
    shipper = LogShipper(tmp_path, sqlite_store, log=log)
    shipper.start(interval_s=0.02)
    try:
        for i in range(25):
            log.append_sync([prediction(i)])
        deadline = time.monotonic() + 10
        while count(sqlite_store, "churn") < 25 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert count(sqlite_store, "churn") == 25
    finally:
        log.close()
        shipper.stop()  # one last pass ships and removes the sealed segment
    assert _segments(tmp_path) == []


def test_background_shipping_survives_an_unreachable_database(tmp_path: Path) -> None:
    away = Store(UNREACHABLE, migrate=False)
    with PredictionLog(tmp_path, worker="w0") as log:
        shipper = LogShipper(tmp_path, away, log=log)
        shipper.start(interval_s=0.01)
        log.append_sync([prediction()])
        time.sleep(0.2)
        assert shipper._thread is not None
        assert shipper._thread.is_alive()
        assert shipper.figures().failed_passes >= 1
        shipper.stop(flush=False)
    assert _segments(tmp_path) == ["w0-00000001.done"]
    away.dispose()
