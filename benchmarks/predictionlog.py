"""Micro-benchmark of the prediction log's hot path: appends/s and append latency.

    .venv/bin/python benchmarks/predictionlog.py [--seconds 2] [--dir PATH] [--no-write]

Each "request" is an asyncio task that appends one record and waits for it, as the gateway
does before answering. Runs at concurrency 1, 16 and 64, with fsync on and off, next to the raw
cost of one write + fdatasync on the same disk. The results go to BENCHMARKS.md, section
"Prediction log" (replaced on a re-run; other sections are left alone).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from _report import machine, write_section  # a sibling of this script, on sys.path when run

from passerelle import predictionlog
from passerelle.predictionlog import PredictionLog, PredictionRecord, new_prediction_id

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Prediction log"


def _record() -> PredictionRecord:
    return PredictionRecord(
        id=new_prediction_id(),
        endpoint="churn",
        revision=3,
        model="churn",
        version=7,
        at=dt.datetime.now(dt.UTC),
        latency_ms=1.7,
        inputs={
            "tenure": 14,
            "plan": "pro",
            "monthly_charges": 71.35,
            "total_charges": 998.9,
            "contract": "month-to-month",
            "payment": "card",
            "support_calls": 2,
            "region": "nord",
            "age": 41,
            "data_gb": 12.5,
        },
        outputs={"prediction": "yes", "proba": {"no": 0.31, "yes": 0.69}},
        key="customer-123456",
        request_id="0f5c2e1a9b7d",
    )


def raw_fsync(directory: Path, seconds: float = 1.0) -> float:
    """p50 milliseconds of one ~400-byte append + fdatasync, over ``seconds``."""
    path = directory / "raw.bin"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sync = getattr(os, "fdatasync", os.fsync)
    payload = b"x" * 400
    times = []
    stop = time.perf_counter() + seconds
    try:
        while time.perf_counter() < stop:
            began = time.perf_counter()
            os.write(fd, payload)
            sync(fd)
            times.append(time.perf_counter() - began)
    finally:
        os.close(fd)
        path.unlink()
    return statistics.median(times) * 1000


async def _run(log: PredictionLog, concurrency: int, seconds: float) -> list[float]:
    latencies: list[float] = []
    stop = time.perf_counter() + seconds

    async def request() -> None:
        while time.perf_counter() < stop:
            record = _record()
            began = time.perf_counter()
            await log.append([record])
            latencies.append(time.perf_counter() - began)

    await asyncio.gather(*(request() for _ in range(concurrency)))
    return latencies


def measure(directory: Path, *, fsync: bool, concurrency: int, seconds: float) -> dict[str, float]:
    folder = Path(tempfile.mkdtemp(dir=directory))
    # The disk's fsync time drifts with whatever else uses it: time the log's own fsyncs during
    # the row, so that each row can be compared with the fsyncs it actually paid.
    syncs: list[float] = []
    real_sync = predictionlog._sync_file

    def timed_sync(fd: int) -> None:
        began = time.perf_counter()
        real_sync(fd)
        syncs.append(time.perf_counter() - began)

    predictionlog._sync_file = timed_sync
    try:
        with PredictionLog(folder, worker="bench", fsync=fsync) as log:
            asyncio.run(_run(log, concurrency, 0.2))  # warm-up: file created, thread running
            before = log.figures()
            syncs.clear()
            began = time.perf_counter()
            latencies = asyncio.run(_run(log, concurrency, seconds))
            elapsed = time.perf_counter() - began
            after = log.figures()
    finally:
        predictionlog._sync_file = real_sync
        shutil.rmtree(folder)
    latencies.sort()
    groups = after.groups_written - before.groups_written
    return {
        "appends_s": len(latencies) / elapsed,
        "p50_ms": latencies[len(latencies) // 2] * 1000,
        "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
        "per_group": (after.records_written - before.records_written) / groups if groups else 0.0,
        "fsync_p50_ms": statistics.median(syncs) * 1000 if syncs else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="duration of each measurement")
    parser.add_argument("--dir", type=Path, default=ROOT, help="where the log is written (its disk)")
    parser.add_argument("--no-write", action="store_true", help="print only, leave BENCHMARKS.md alone")
    args = parser.parse_args()

    load = "unknown"
    with contextlib.suppress(OSError):
        load = Path("/proc/loadavg").read_text().split()[0]
    base = Path(tempfile.mkdtemp(prefix=".bench-predictionlog-", dir=args.dir))
    try:
        # The disk is shared: sample its raw cost around the runs, not once.
        raw = [raw_fsync(base)]
        rows = []
        for fsync in (True, False):
            if not fsync:
                raw.append(raw_fsync(base))
            for concurrency in (1, 16, 64):
                result = measure(base, fsync=fsync, concurrency=concurrency, seconds=args.seconds)
                rows.append((fsync, concurrency, result))
                print(
                    f"fsync={'on ' if fsync else 'off'} concurrency={concurrency:>2}: "
                    f"{result['appends_s']:>8.0f} appends/s  p50 {result['p50_ms']:.3f} ms  "
                    f"p99 {result['p99_ms']:.3f} ms  {result['per_group']:.1f} records/group  "
                    f"fsync p50 {result['fsync_p50_ms']:.3f} ms",
                    flush=True,
                )
        raw.append(raw_fsync(base))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    raw_text = " / ".join(f"{value:.3f}" for value in raw)
    print(f"raw write + fdatasync, p50 before / between / after the runs: {raw_text} ms")

    lines = [
        SECTION,
        "",
        f"`benchmarks/predictionlog.py`, {dt.date.today().isoformat()}, {args.seconds:g} s per row; "
        f"{machine()}. One record (10 input columns) per append; each request is an asyncio task "
        "that waits for its append, as the gateway does before answering. "
        f"Load average when the run started: {load} (other work shares this machine and its disk).",
        "",
        f"Raw cost of one ~400-byte write + fdatasync on this disk, p50 sampled for 1 s before the "
        f"runs, between fsync on and off, and after: {raw_text} ms.",
        "",
        "| fsync | concurrency | appends/s | p50 latency (ms) | p99 latency (ms) | records per group "
        "| p50 of the log's fsyncs (ms) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for fsync, concurrency, result in rows:
        fsyncs = f"{result['fsync_p50_ms']:.3f}" if fsync else "n/a"
        lines.append(
            f"| {'on' if fsync else 'off'} | {concurrency} | {result['appends_s']:,.0f} | "
            f"{result['p50_ms']:.3f} | {result['p99_ms']:.3f} | {result['per_group']:.1f} | {fsyncs} |"
        )
    text = "\n".join(lines) + "\n"
    if not args.no_write:
        write_section(text, ROOT / "BENCHMARKS.md", SECTION)
        print("written to BENCHMARKS.md")


if __name__ == "__main__":
    main()
