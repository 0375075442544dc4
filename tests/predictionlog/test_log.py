"""The local segment log: ids, group commit, durability bookkeeping, rotation, recovery."""

from __future__ import annotations

import asyncio
import datetime as dt
import errno
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import passerelle.predictionlog as predictionlog
from passerelle.predictionlog import (
    PredictionLog,
    PredictionLogError,
    PredictionRecord,
    new_prediction_id,
    read_log,
)
from tests.predictionlog.records import prediction, shadow


def _ids(directory: Path) -> list[str]:
    return [r["id"] for r in read_log(directory) if r["t"] == "p"]


# ------------------------------------------------------------------------------------------------ ids


def test_prediction_ids_are_uuid7_and_time_ordered() -> None:
    ids = [new_prediction_id() for _ in range(20_000)]
    assert len(set(ids)) == len(ids)
    for value in ids[:100]:
        parsed = uuid.UUID(value)
        assert str(parsed) == value
        assert len(value) == 36
        assert parsed.version == 7
        assert parsed.variant == uuid.RFC_4122
    stamps = [int(value.replace("-", "")[:12], 16) for value in ids]
    assert stamps == sorted(stamps)
    before = new_prediction_id()
    time.sleep(0.002)
    after = new_prediction_id()
    assert before < after
    stamp_ms = int(after.replace("-", "")[:12], 16)
    assert abs(stamp_ms - time.time() * 1000) < 5_000


def test_prediction_ids_are_unique_across_processes() -> None:
    code = "from passerelle.predictionlog import new_prediction_id as n\nfor _ in range(30000): print(n())"
    procs = [
        subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) for _ in range(2)
    ]
    ids: list[str] = []
    for proc in procs:
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0
        ids += out.split()
    assert len(ids) == 60_000
    assert len(set(ids)) == 60_000


# ------------------------------------------------------------------------------------------- appending


def test_append_writes_json_lines_and_close_seals(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path, worker="w0")
    records = [prediction(i) for i in range(3)]
    records[0].inputs = {
        "n": np.int64(7),
        "x": np.float32(0.5),
        "when": dt.date(2026, 1, 2),
        "s": {"a"},
        "missing": pd.NaT,
    }

    async def main() -> None:
        await log.append(records[:2])
        await log.append([records[2]])

    asyncio.run(main())
    log.append_shadow([shadow(records[0])])
    log.flush()
    live = tmp_path / "w0-00000001.seg"
    lines = live.read_bytes().splitlines()
    assert len(lines) == 4
    assert lines[0].startswith(b'{"t":"p","id":"')
    assert lines[3].startswith(b'{"t":"s","prediction_id":"')
    got = list(read_log(tmp_path))
    assert [r["id"] for r in got if r["t"] == "p"] == [r.id for r in records]
    assert got[0]["inputs"] == {"n": 7, "x": 0.5, "when": "2026-01-02", "s": ["a"], "missing": None}
    assert got[0]["at"] == records[0].at
    assert got[3]["prediction_id"] == records[0].id
    assert got[3]["version"] == 2

    log.close()
    log.close()  # idempotent
    assert not live.exists()
    assert (tmp_path / "w0-00000001.done").exists()
    with pytest.raises(PredictionLogError, match="closed"):
        log.append_sync([prediction()])


def test_append_sync_from_many_threads(tmp_path: Path) -> None:
    with PredictionLog(tmp_path, worker="w0") as log:
        records = [prediction(i) for i in range(400)]

        def work(part: list[PredictionRecord]) -> None:
            for record in part:
                log.append_sync([record])

        threads = [threading.Thread(target=work, args=(records[i::8],)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        figures = log.figures()
    assert sorted(_ids(tmp_path)) == sorted(r.id for r in records)
    assert figures.records_written == 400
    assert figures.queue_depth == 0


def test_records_are_checked_before_they_are_answered(tmp_path: Path) -> None:
    with PredictionLog(tmp_path, worker="w0") as log:
        naive = prediction(at=dt.datetime(2026, 1, 1))
        with pytest.raises(ValueError, match="aware"):
            log.append_sync([naive])
        with pytest.raises(ValueError, match="endpoint"):
            log.append_sync([prediction(endpoint="e" * 201)])
        long_request = prediction()
        long_request.request_id = "r" * 41
        with pytest.raises(ValueError, match="request_id"):
            log.append_sync([long_request])
    assert _ids(tmp_path) == []


def test_invalid_worker_names_are_refused(tmp_path: Path) -> None:
    for name in ["", "a/b", "-x", "x" * 101, "a b"]:
        with pytest.raises(ValueError, match="worker"):
            PredictionLog(tmp_path, worker=name)


def test_a_worker_name_is_held_by_one_log_at_a_time(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path, worker="w0")
    with pytest.raises(PredictionLogError, match="in use"):
        PredictionLog(tmp_path, worker="w0", lock_timeout=0.05)
    PredictionLog(tmp_path, worker="w1").close()
    log.close()
    PredictionLog(tmp_path, worker="w0").close()


# ------------------------------------------------------------------------------------------- group commit


def test_concurrent_appends_share_fsyncs(tmp_path: Path) -> None:
    """200 concurrent requests cost a handful of fsyncs, not 200."""

    async def main() -> tuple[int, int]:
        with PredictionLog(tmp_path, worker="w0") as log:
            await log.append([prediction()])  # warm up: file created, thread running
            before = log.figures()
            await asyncio.gather(*(log.append([prediction(i)]) for i in range(200)))
            after = log.figures()
        return after.records_written - before.records_written, after.groups_written - before.groups_written

    records, groups = asyncio.run(main())
    assert records == 200
    assert groups < records / 4


def test_a_lone_append_waits_for_no_timer(tmp_path: Path) -> None:
    async def main() -> float:
        with PredictionLog(tmp_path, worker="w0") as log:
            await log.append([prediction()])
            await asyncio.sleep(0.05)  # the writer is idle again, as for a lone request
            began = time.perf_counter()
            await log.append([prediction()])
            return time.perf_counter() - began

    elapsed = min(asyncio.run(main()) for _ in range(3))
    assert elapsed < 0.05


def test_appends_from_two_event_loops(tmp_path: Path) -> None:
    with PredictionLog(tmp_path, worker="w0") as log:

        def run_loop(offset: int) -> None:
            async def main() -> None:
                await asyncio.gather(*(log.append([prediction(offset + i)]) for i in range(50)))

            asyncio.run(main())

        threads = [threading.Thread(target=run_loop, args=(n * 100,)) for n in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
    assert len(_ids(tmp_path)) == 100


def test_fsync_off_still_writes_before_answering(tmp_path: Path) -> None:
    with PredictionLog(tmp_path, worker="w0", fsync=False) as log:
        record = prediction()
        asyncio.run(log.append([record]))
        assert _ids(tmp_path) == [record.id]
        assert log.figures().last_fsync_ms == 0.0


def test_a_failed_fsync_fails_its_waiters_and_moves_to_a_new_segment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_sync = predictionlog._sync_file
    failures = [OSError(errno.EIO, "I/O error")]

    def flaky_sync(fd: int) -> None:
        if failures:
            raise failures.pop()
        real_sync(fd)

    with PredictionLog(tmp_path, worker="w0") as log:
        first = prediction(1)
        log.append_sync([first])
        monkeypatch.setattr(predictionlog, "_sync_file", flaky_sync)
        lost = prediction(2)
        with pytest.raises(PredictionLogError, match="I/O error"):
            asyncio.run(log.append([lost]))
        after = prediction(3)
        log.append_sync([after])
        assert log.figures().write_errors == 1
    # The unacknowledged record was cut off; later ones went to a fresh segment.
    assert _ids(tmp_path) == [first.id, after.id]
    assert sorted(p.name for p in tmp_path.glob("w0-*")) == ["w0-00000001.done", "w0-00000002.done"]


def test_cancelled_callers_do_not_lose_their_record(tmp_path: Path) -> None:
    async def main() -> PredictionRecord:
        with PredictionLog(tmp_path, worker="w0") as log:
            record = prediction()
            task = asyncio.ensure_future(log.append([record]))
            await asyncio.sleep(0)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            log.flush()
            return record

    record = asyncio.run(main())
    assert _ids(tmp_path) == [record.id]


# ------------------------------------------------------------------------------------------- files


def test_segments_rotate_at_their_size(tmp_path: Path) -> None:
    with PredictionLog(tmp_path, worker="w0", segment_bytes=4096) as log:
        records = [prediction(i) for i in range(100)]
        for record in records:
            log.append_sync([record])
        names = sorted(p.name for p in tmp_path.glob("w0-*"))
        assert names[-1].endswith(".seg")
        assert all(name.endswith(".done") for name in names[:-1])
        assert len(names) > 5
        for path in tmp_path.glob("w0-*"):
            assert path.stat().st_size <= 4096
    assert _ids(tmp_path) == [r.id for r in records]


def test_a_restart_seals_leftovers_and_continues_after_them(tmp_path: Path) -> None:
    with PredictionLog(tmp_path, worker="w0") as log:
        kept = prediction(1)
        log.append_sync([kept])
    # What a process killed during a write leaves: an open segment with a torn last line.
    done = tmp_path / "w0-00000001.done"
    leftover = tmp_path / "w0-00000007.seg"
    done.rename(leftover)
    leftover.write_bytes(leftover.read_bytes() + b'{"t":"p","id":"01a2')
    (tmp_path / "w0-00000008.pos").write_text("0")  # a stale position must not be inherited

    with PredictionLog(tmp_path, worker="w0") as log:
        assert (tmp_path / "w0-00000007.done").exists()
        later = prediction(2)
        log.append_sync([later])
        assert (tmp_path / "w0-00000009.seg").exists()
    assert _ids(tmp_path) == [kept.id, later.id]


def test_figures(tmp_path: Path) -> None:
    with PredictionLog(tmp_path, worker="w0") as log:
        assert log.figures().lag_seconds is None  # no shipper attached
        for i in range(5):
            log.append_sync([prediction(i)])
        figures = log.figures()
    assert figures.records_written == 5
    assert figures.groups_written == 5
    assert figures.records_per_group == 1.0
    assert figures.bytes_written == sum(p.stat().st_size for p in tmp_path.glob("w0-*"))
    assert figures.last_fsync_ms > 0
    assert figures.write_errors == 0
