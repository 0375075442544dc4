"""Benchmark of batch scoring: ``passerelle score`` against a plain PyArrow + scikit-learn script.

    .venv/bin/python benchmarks/batch.py [--rows 2000000] [--big-rows 20000000] [--no-spark] [--no-write]

Models: HistGradientBoostingClassifier(max_iter=100) and LogisticRegression trained on
make_classification(n_samples=50_000, n_features=20, n_informative=8, random_state=0).
Input: Parquet files of the same 20 features. The floor streams the file with PyArrow,
calls predict_proba on each batch and writes the same output columns with ParquetWriter.
Every measurement runs in its own process (interpreter start-up, imports and model loading
included on both sides); peak memory is that process's maximum resident set size (wait4).
The results go to BENCHMARKS.md, section "Batch scoring" (replaced on a re-run).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from _report import machine, write_section  # a sibling of this script, on sys.path when run

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "benchmarks" / ".work" / "batch"
SECTION = "## Batch scoring"
FEATURES = [f"x{i}" for i in range(20)]
BATCH_ROWS = 100_000
BIN = Path(sys.executable).parent


# ---------------------------------------------------------------------------------------
# the floor: what a user would write without passerelle (run as `batch.py floor ...`)


def floor(model_path: str, source: str, target: str, ref: str) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    import skops.io as sio

    model = sio.load(model_path, trusted=sio.get_untrusted_types(file=model_path))
    classes = model.classes_
    run_id = uuid.uuid4().hex
    names = ["prediction", *[f"proba_{c}" for c in classes], "model_version", "run_id"]
    writer = None
    for batch in pq.ParquetFile(source).iter_batches(batch_size=BATCH_ROWS):
        # Row-major, as the models were trained on: HistGradientBoosting walks each row's features,
        # and on a column-major array (what `batch.to_pandas().to_numpy()` gives) it runs slower.
        proba = model.predict_proba(np.column_stack([column.to_numpy() for column in batch.columns]))
        n = batch.num_rows
        arrays = [pa.array(classes[proba.argmax(axis=1)])]
        arrays += [pa.array(np.ascontiguousarray(proba[:, j])) for j in range(proba.shape[1])]
        arrays += [pa.repeat(ref, n), pa.repeat(run_id, n)]
        out = pa.RecordBatch.from_arrays(arrays, names=names)
        if writer is None:
            writer = pq.ParquetWriter(target, out.schema, compression="snappy")
        writer.write_batch(out)
    assert writer is not None
    writer.close()


# ---------------------------------------------------------------------------------------
# set-up


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PASSERELLE_")}
    env["PASSERELLE_HOME"] = str(WORK / "home")
    return env


def write_features(path: Path, rows: int, seed: int) -> None:
    if path.exists() and _rows(path) == rows:
        return
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    schema = pa.schema([pa.field(n, pa.float64()) for n in FEATURES])
    temp = path.with_suffix(".tmp")
    with pq.ParquetWriter(temp, schema, compression="snappy") as writer:
        step = 1_000_000
        for start in range(0, rows, step):
            n = min(step, rows - start)
            block = rng.normal(size=(n, len(FEATURES))) * 2.0
            writer.write_table(
                pa.table({name: block[:, i] for i, name in enumerate(FEATURES)}, schema=schema)
            )
    temp.replace(path)


def _rows(path: Path) -> int:
    import pyarrow.parquet as pq

    return int(pq.ParquetFile(path).metadata.num_rows)


def set_up(rows: int, big_rows: int) -> dict[str, Any]:
    """Train and register both models, write the model files for the floor, write the inputs."""
    import numpy as np
    import skops.io as sio
    from sklearn.datasets import make_classification
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression

    from passerelle.client import LocalClient
    from passerelle.settings import Settings

    WORK.mkdir(parents=True, exist_ok=True)
    X, y = make_classification(n_samples=50_000, n_features=20, n_informative=8, random_state=0)
    refs: dict[str, str] = {}
    shutil.rmtree(WORK / "home", ignore_errors=True)
    with LocalClient(Settings(home=WORK / "home")) as client:
        for name, model in (
            ("hgb", HistGradientBoostingClassifier(max_iter=100, random_state=0)),
            ("logreg", LogisticRegression(max_iter=1000)),
        ):
            model.fit(X, y)
            sio.dump(model, WORK / f"{name}.skops")
            refs[name] = client.register(model, f"bench-{name}", sample=np.asarray(X[:1000])).ref
    inputs = {"small": WORK / f"features-{rows}.parquet", "big": WORK / f"features-{big_rows}.parquet"}
    write_features(inputs["small"], rows, seed=1)
    if big_rows:
        write_features(inputs["big"], big_rows, seed=2)
    return {"refs": refs, "inputs": {k: str(v) for k, v in inputs.items()}}


# ---------------------------------------------------------------------------------------
# measuring


def measure(command: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS in MiB) of one child process."""
    started = time.perf_counter()
    child = subprocess.Popen(command, env=_env(), cwd=WORK, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _pid, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - started
    out = child.stdout.read().decode() if child.stdout else ""
    err = child.stderr.read().decode() if child.stderr else ""
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        raise RuntimeError(f"{' '.join(command)} failed ({child.returncode}):\n{out}\n{err}")
    return seconds, usage.ru_maxrss / 1024.0


def best_of(runs: int, *commands: list[str]) -> list[tuple[float, float]]:
    """(best wall seconds, largest peak RSS) of each command, runs interleaved so that a change
    in the machine's load between runs weighs on every command alike."""
    results: list[list[tuple[float, float]]] = [[] for _ in commands]
    for _ in range(runs):
        for i, command in enumerate(commands):
            results[i].append(measure(command))
    return [(min(r[0] for r in runs_), max(r[1] for r in runs_)) for runs_ in results]


def score_command(ref: str, source: str, engine: str = "local") -> list[str]:
    return [
        str(BIN / "passerelle"),
        "score",
        ref,
        "--input",
        source,
        "--output",
        str(WORK / f"out-{engine}.parquet"),
        "--overwrite",
        "--quiet",
        "--engine",
        engine,
    ]


def floor_command(name: str, ref: str, source: str) -> list[str]:
    return [
        sys.executable,
        __file__,
        "floor",
        str(WORK / f"{name}.skops"),
        source,
        str(WORK / "out-floor.parquet"),
        ref,
    ]


def spark_start_up() -> float:
    code = (
        "import time; t = time.perf_counter()\n"
        "from passerelle.spark import session\n"
        "spark, _ = session()\n"
        "spark.range(1).count()\n"
        "print(time.perf_counter() - t)\n"
        "spark.stop()\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=_env(), cwd=WORK, capture_output=True, text=True, check=True
    )
    return float(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------
# report


def report(results: dict[str, Any], args: argparse.Namespace) -> str:
    rows = args.rows
    lines = [
        SECTION,
        "",
        f"`benchmarks/batch.py`, {dt.date.today().isoformat()}; {machine()}. Models trained on "
        "`make_classification(n_samples=50_000, n_features=20, n_informative=8, random_state=0)`; "
        f"input: {rows:,} rows of the 20 features in Parquet. Each figure is the best of {args.runs} "
        "runs of a fresh process (start-up, imports and model loading included); `passerelle score` "
        "includes signature validation, the run record and the input's sha256. Load average when the "
        f"run started: {results.get('load_average', 0.0):.2f} (other work shares this machine, so the "
        "figures vary from run to run; the ratios compare runs made side by side).",
        "",
        "| model | floor (PyArrow + predict_proba) | `passerelle score` | ratio | target |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, label, target in (
        ("hgb", "HistGradientBoosting (max_iter=100)", "≥ 0.8"),
        ("logreg", "LogisticRegression", "reported"),
    ):
        r = results[name]
        ratio = r["passerelle_rps"] / r["floor_rps"]
        met = "" if target == "reported" else (" met" if ratio >= 0.8 else " **missed**")
        lines.append(
            f"| {label} | {r['floor_rps']:,.0f} rows/s ({r['floor_s']:.1f} s) | "
            f"{r['passerelle_rps']:,.0f} rows/s ({r['passerelle_s']:.1f} s) | {ratio:.2f} | {target}{met} |"
        )
    if "memory" in results:
        m = results["memory"]
        growth = m["big_mib"] / m["small_mib"] - 1.0
        lines += [
            "",
            "Peak memory (max RSS) of `passerelle score` with HistGradientBoosting: "
            f"{m['small_mib']:,.0f} MiB "
            f"on {rows:,} rows, {m['big_mib']:,.0f} MiB on {args.big_rows:,} rows ({growth:+.1%}; target: "
            f"within ±20%{', met' if abs(growth) <= 0.2 else ', **missed**'}). The floor script peaks at "
            f"{results['hgb']['floor_mib']:,.0f} MiB on {rows:,} rows.",
        ]
    if "spark" in results:
        s = results["spark"]
        lines += [
            "",
            f"Spark local mode (`--engine spark`, local[*] on this machine): session start-up "
            f"{s['start_up_s']:.1f} s; HistGradientBoosting on {rows:,} rows: {s['seconds']:.1f} s wall, "
            f"{s['rps']:,.0f} rows/s including start-up ({s['rps'] / results['hgb']['floor_rps']:.2f} of the "
            f"floor), peak driver RSS {s['mib']:,.0f} MiB (the JVM is a separate process). Spark pays off "
            "on data spread over a cluster, not on one machine.",
        ]
    lines += [
        "",
        "Commands: `make bench`, or `.venv/bin/python benchmarks/batch.py` "
        f"(`--rows {rows} --big-rows {args.big_rows}`).",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "floor":
        floor(*sys.argv[2:6])
        return
    if len(sys.argv) > 1 and sys.argv[1] == "setup":
        print(json.dumps(set_up(int(sys.argv[2]), int(sys.argv[3]))))
        return
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--big-rows", type=int, default=20_000_000, help="0 to skip the memory comparison")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--no-spark", action="store_true")
    parser.add_argument("--no-write", action="store_true", help="print only, leave BENCHMARKS.md alone")
    args = parser.parse_args()

    # Set up in a child: a child's peak RSS counts its parent's memory at fork time, so the
    # parent stays free of numpy, scikit-learn and the generated data.
    prepared = subprocess.run(
        [sys.executable, __file__, "setup", str(args.rows), str(args.big_rows)],
        env=_env(),
        capture_output=True,
        text=True,
        check=True,
    )
    setup = json.loads(prepared.stdout.strip().splitlines()[-1])
    small, big = setup["inputs"]["small"], setup["inputs"]["big"]
    results: dict[str, Any] = {"load_average": os.getloadavg()[0]}
    for name in ("hgb", "logreg"):
        ref = setup["refs"][name]
        (floor_s, floor_mib), (ours_s, ours_mib) = best_of(
            args.runs, floor_command(name, ref, small), score_command(ref, small)
        )
        results[name] = {
            "floor_s": floor_s,
            "floor_rps": args.rows / floor_s,
            "floor_mib": floor_mib,
            "passerelle_s": ours_s,
            "passerelle_rps": args.rows / ours_s,
            "passerelle_mib": ours_mib,
        }
        print(name, json.dumps(results[name]), flush=True)
    if args.big_rows:
        _, big_mib = measure(score_command(setup["refs"]["hgb"], big))
        results["memory"] = {"small_mib": results["hgb"]["passerelle_mib"], "big_mib": big_mib}
        print("memory", json.dumps(results["memory"]), flush=True)
    if not args.no_spark:
        start_up = spark_start_up()
        seconds, mib = measure(score_command(setup["refs"]["hgb"], small, engine="spark"))
        results["spark"] = {
            "start_up_s": start_up,
            "seconds": seconds,
            "rps": args.rows / seconds,
            "mib": mib,
        }
        print("spark", json.dumps(results["spark"]), flush=True)
    (WORK / "results.json").write_text(json.dumps(results, indent=2))
    text = report(results, args)
    print(text)
    if not args.no_write:
        write_section(text, ROOT / "BENCHMARKS.md", SECTION)
        print("written to BENCHMARKS.md")


if __name__ == "__main__":
    main()
