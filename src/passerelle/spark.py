"""The Spark engine of batch scoring: the local engine's chunk scorer, run by Spark executors.

The version's artifact folder, verified on the driver, is shipped to the executors once with
``SparkContext.addFile``; each Python worker checks its copy against the recorded sha256,
loads it with the same flavor loader as everywhere else, and keeps it for every chunk it
is given. ``mapInPandas`` hands the worker the input in Arrow-sized pandas frames; each goes
through :class:`passerelle.batch.ChunkScorer` (validation, conformance, prediction), and
comes back with the prediction, or with the reason its row was rejected.

PySpark is an optional extra (``passerelle[spark]``) imported only when this engine runs.
Outputs are folders of part files, Spark's own layout, written under a temporary name next
to the destination and renamed into place once complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads

from passerelle._deps import require
from passerelle.artifacts import StoredFile, sha256_file
from passerelle.batch import (
    MODEL_VERSION,
    NULL_VALUES,
    PREDICTION,
    REJECT_COLUMNS,
    RUN_ID,
    ChunkScorer,
    EngineResult,
    PredictionLogger,
    ScorePlan,
    json_records,
)
from passerelle.context import Context
from passerelle.errors import IntegrityError, InvalidInputError, PasserelleError
from passerelle.flavors import Predictor, get_flavor
from passerelle.signature import Signature

_REASON: Final = "_passerelle_reason"
_COLUMN: Final = "_passerelle_column"
_INPUTS: Final = "_passerelle_inputs"
_LATENCY: Final = "_passerelle_latency_ms"
#: rows of the input scored on the driver to learn the type of the predictions
_PROBE_ROWS: Final = 1_000
_ERROR_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception): .+")


class SparkError(PasserelleError):
    """Spark could not start, or a Spark job failed."""


@dataclass(frozen=True)
class ExecutorPayload:
    """What each Python worker needs to load the model and score; pickled once per task."""

    folder: str
    flavor: str
    options: dict[str, Any]
    trusted: list[str]
    files: list[tuple[str, str]]
    signature: dict[str, Any]
    columns: list[str]
    text_input: bool
    prediction_kind: str
    proba_columns: list[str]
    version: str
    run_id: str
    log: bool


# Loaded predictors of this Python worker, by artifact folder: Spark reuses workers across
# tasks, so a model is read and checked once per worker, not once per chunk.
_LOADED: dict[str, Predictor] = {}


def _executor_predictor(payload: ExecutorPayload) -> Predictor:
    found = _LOADED.get(payload.folder)
    if found is not None:
        return found
    from pyspark import SparkFiles

    folder = Path(SparkFiles.get(payload.folder))
    for rel, sha256 in payload.files:
        path = folder / rel
        if not path.is_file() or sha256_file(path) != sha256:
            raise IntegrityError(
                f"the copy of artifact file {rel} shipped to this executor is missing or corrupted"
            )
    predictor = get_flavor(payload.flavor).load(folder, payload.options, trusted=payload.trusted)
    _LOADED[payload.folder] = predictor
    return predictor


def _blank(kind: str, count: int) -> pd.Series[Any]:
    dtype = {"integer": "Int64", "float": "float64", "boolean": "boolean"}.get(kind, "object")
    return pd.Series([None] * count, dtype=dtype)


def _score_frames(payload: ExecutorPayload) -> Callable[[Iterator[pd.DataFrame]], Iterator[pd.DataFrame]]:
    def run(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        signature = Signature.from_dict(payload.signature)
        scorer = ChunkScorer(signature, _executor_predictor(payload))
        nulls = list(NULL_VALUES)
        for frame in frames:
            frame = frame.reset_index(drop=True)
            if payload.text_input:
                # Spark reads only empty fields as null; the local engine reads these too.
                frame = frame.replace(nulls, None)
            chunk = scorer.score(pa.RecordBatch.from_pandas(frame[payload.columns], preserve_index=False))
            count = len(frame)
            valid = chunk.valid
            out = frame.copy()
            prediction = _blank(payload.prediction_kind, count)
            if len(chunk.predictions):
                prediction[valid] = chunk.predictions
            out[PREDICTION] = prediction
            for j, name in enumerate(payload.proba_columns):
                column = np.full(count, np.nan)
                if chunk.proba is not None and len(chunk.proba):
                    column[valid] = chunk.proba[:, j]
                out[name] = column
            out[MODEL_VERSION] = payload.version
            out[RUN_ID] = payload.run_id
            reasons = pd.Series([None] * count, dtype=object)
            columns = pd.Series([None] * count, dtype=object)
            if not chunk.all_valid:
                reasons[~valid] = chunk.reject_reasons
                columns[~valid] = chunk.reject_columns
            out[_COLUMN] = columns
            out[_REASON] = reasons
            if payload.log:
                inputs = pd.Series([None] * count, dtype=object)
                if len(chunk.conformed):
                    inputs[valid] = [json.dumps(row) for row in json_records(chunk.conformed)]
                out[_INPUTS] = inputs
                out[_LATENCY] = chunk.seconds * 1000.0 / max(len(chunk.conformed), 1)
            yield out

    return run


def check_paths(*paths: str | Path | None) -> None:
    """Refuse what this engine cannot do, before any file is opened or a run recorded."""
    for path in paths:
        text = "" if path is None else str(path)
        if "://" in text and not text.startswith("file://"):
            raise InvalidInputError(
                f"--engine spark reads and writes local paths (or a cluster's shared file system "
                f"mounted as one); {text} is remote: use the local engine for s3:// files"
            )
    require("pyspark", "spark")


def _spark_error(exc: BaseException) -> SparkError:
    """The line of a Spark failure that says what went wrong, not the JVM's stack."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    reasons = [line for line in lines if _ERROR_LINE.match(line)]
    text = reasons[-1] if reasons else (lines[0] if lines else type(exc).__name__)
    return SparkError(f"the Spark job failed: {text}")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        # PySpark warns that it does not fully support pandas 3; mapInPandas over Arrow, the
        # only part used here, is covered by the tests.
        warnings.filterwarnings(
            "ignore", message=r".*PySpark does not yet fully support", category=FutureWarning
        )
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"pyspark\..*")
        yield


def session(master: str | None = None) -> tuple[Any, bool]:
    """The active Spark session, or a new one; True when this call created it."""
    require("pyspark", "spark")
    from pyspark import SparkConf
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        return active, False
    # Executors in local mode must run the interpreter that has passerelle installed.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    builder = (
        SparkSession.builder.appName("passerelle-score")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.sql.session.timeZone", "UTC")
    )
    conf = SparkConf()
    if master or not conf.contains("spark.master"):
        builder = builder.master(master or "local[*]")
    effective = master or conf.get("spark.master", "local[*]") or "local[*]"
    if effective.startswith("local") and not conf.contains("spark.driver.memory"):
        # In local mode the executors live in the driver's JVM, whose default heap is 1 GB.
        builder = builder.config("spark.driver.memory", "4g")
    try:
        with _quiet():
            spark = builder.getOrCreate()
    except Exception as exc:  # PySpark raises its own errors when Java is missing or broken
        lines = str(exc).strip().splitlines()
        raise SparkError(
            f"cannot start Spark: {lines[0] if lines else type(exc).__name__} "
            "(Spark needs Java 17 or later on the PATH or in JAVA_HOME)"
        ) from exc
    spark.sparkContext.setLogLevel("ERROR")
    return spark, True


def _spark_type(kind: str) -> Any:
    from pyspark.sql import types as T

    return {
        "integer": T.LongType(),
        "float": T.DoubleType(),
        "boolean": T.BooleanType(),
    }.get(kind, T.StringType())


def _prediction_kind(predictions: np.ndarray[Any, Any]) -> str:
    kind = predictions.dtype.kind
    return {"i": "integer", "u": "integer", "f": "float", "b": "boolean"}.get(kind, "string")


def _temp_dir(target: Path, run_id: str) -> Path:
    return target.with_name(f".{target.name}.{run_id[:12]}.part")


def _replace(temp: Path, target: Path) -> None:
    if target.is_dir():
        shutil.rmtree(target)
    elif target.exists():
        target.unlink()
    os.replace(temp, target)


def _write(frame: Any, fmt: str, gzip: bool, path: Path) -> None:
    writer = frame.write.mode("overwrite")
    if fmt == "parquet":
        writer.parquet(str(path))
        return
    writer = writer.option("header", True)
    if gzip:
        writer = writer.option("compression", "gzip")
    writer.csv(str(path))


def score(ctx: Context, plan: ScorePlan, *, master: str | None = None) -> EngineResult:
    """Run ``plan`` through Spark; outputs are folders of part files."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    spark, created = session(master)
    info = plan.loaded.info
    files = [StoredFile(f.path, f.sha256, f.size) for f in info.files]
    folder = ctx.artifacts.local_path(info.artifact_key, files)
    temps: list[Path] = []
    try:
        with _quiet():
            with contextlib.suppress(Exception):  # already shipped by an earlier run of this session
                spark.sparkContext.addFile(str(folder), recursive=True)
            text_input = plan.source.fmt == "csv"
            reader = spark.read
            if text_input:
                data = reader.option("header", True).option("inferSchema", False).csv(plan.source.path)
            else:
                data = reader.parquet(plan.source.path)
            data = data.select(*[F.col(f"`{c}`") for c in plan.columns])

            probe = ChunkScorer(plan.signature, plan.loaded.predictor)
            head = data.limit(_PROBE_ROWS).toPandas()
            if text_input:
                head = head.replace(list(NULL_VALUES), None)
            sample = (
                probe.score(pa.RecordBatch.from_pandas(head, preserve_index=False)) if len(head) else None
            )
            if sample is not None and len(sample.predictions):
                kind = _prediction_kind(sample.predictions)
            else:
                kind = str((info.output_schema or {}).get("prediction", "string"))

            payload = ExecutorPayload(
                folder=folder.name,
                flavor=info.flavor,
                options=dict(info.flavor_options),
                trusted=info.untrusted if info.trusted else [],
                files=[(f.path, f.sha256) for f in info.files],
                signature=plan.signature.to_dict(),
                columns=plan.signature.names,
                text_input=text_input,
                prediction_kind=kind,
                proba_columns=plan.proba_columns,
                version=plan.ref,
                run_id=plan.run_id,
                log=plan.log is not None,
            )
            fields = list(data.schema.fields)
            fields.append(T.StructField(PREDICTION, _spark_type(kind), True))
            fields.extend(T.StructField(name, T.DoubleType(), True) for name in plan.proba_columns)
            fields += [
                T.StructField(MODEL_VERSION, T.StringType(), False),
                T.StructField(RUN_ID, T.StringType(), False),
                T.StructField(_COLUMN, T.StringType(), True),
                T.StructField(_REASON, T.StringType(), True),
            ]
            if plan.log is not None:
                fields += [
                    T.StructField(_INPUTS, T.StringType(), True),
                    T.StructField(_LATENCY, T.DoubleType(), True),
                ]
            # One pass through the model, written to a staging folder next to the output: the
            # outputs and counts are then cheap reads of it, and nothing is cached in memory, so
            # the data may be far larger than the executors' memory.
            stage = _temp_dir(Path(plan.target.path), plan.run_id).with_suffix(".stage")
            temps.append(stage)
            data.mapInPandas(_score_frames(payload), T.StructType(fields)).write.mode("overwrite").parquet(
                str(stage)
            )
            staged = spark.read.parquet(str(stage))

            ok = F.col(_REASON).isNull()
            counts = {
                bool(row["ok"]): int(row["count"]) for row in staged.groupBy(ok.alias("ok")).count().collect()
            }
            result = EngineResult(
                rows_in=sum(counts.values()),
                rows_scored=counts.get(True, 0),
                rows_rejected=counts.get(False, 0),
            )
            if result.rows_rejected:
                by_column = staged.where(~ok).groupBy(_COLUMN).count().collect()
                result.rejections = {str(row[_COLUMN]): int(row["count"]) for row in by_column}
                rejects = staged.where(~ok).select(
                    F.lit(None).cast(T.LongType()).alias(REJECT_COLUMNS[0]),
                    F.col(_COLUMN).alias(REJECT_COLUMNS[1]),
                    F.col(_REASON).alias(REJECT_COLUMNS[2]),
                    *[F.col(f"`{name}`").alias(shown) for name, shown in plan.rejects_names()],
                )
                target = Path(plan.rejects.path)
                temp = _temp_dir(target, plan.run_id)
                temps.append(temp)
                _write(rejects, plan.rejects.fmt, plan.rejects.gzip, temp)
                _replace(temp, target)
                if plan.fail_on_reject:
                    first = staged.where(~ok).select(_COLUMN, _REASON).first()
                    result.failure = InvalidInputError(
                        f"{result.rows_rejected} row(s) of {plan.source.uri} do not match the signature of "
                        f"{plan.ref} (first: {first[_COLUMN]}: {first[_REASON]}) "
                        "and --fail-on-reject is set: "
                        f"no output written; the rejected rows are in {plan.rejects.uri}"
                    )
                    return result
            elif plan.overwrite:
                target = Path(plan.rejects.path)
                if target.is_dir():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()

            scored = staged.where(ok).select(*[F.col(f"`{c}`") for c in plan.output_columns])
            target = Path(plan.target.path)
            temp = _temp_dir(target, plan.run_id)
            temps.append(temp)
            _write(scored, plan.target.fmt, plan.target.gzip, temp)
            _replace(temp, target)

            if plan.log is not None and result.rows_scored:
                result.logged = _log(ctx, plan, stage)
            result.details["spark_master"] = spark.sparkContext.master
            return result
    except PasserelleError:
        raise
    except Exception as exc:
        raise _spark_error(exc) from exc
    finally:
        for temp in temps:
            shutil.rmtree(temp, ignore_errors=True)
        if created:
            spark.stop()


def _log(ctx: Context, plan: ScorePlan, stage: Path) -> int:
    """Append the scored rows to the prediction log, streamed by the driver from the staging folder."""
    assert plan.log is not None
    key = plan.log.key_column
    columns = [_INPUTS, PREDICTION, *plan.proba_columns, _LATENCY, *([key] if key else [])]
    dataset = pads.dataset(str(stage), format="parquet")
    logger = PredictionLogger(ctx, plan.log, plan.loaded.info.model, plan.loaded.info.number, plan.run_id)
    for batch in dataset.to_batches(columns=columns, filter=pads.field(_REASON).is_null(), batch_size=50_000):
        data = batch.to_pydict()
        inputs = [json.loads(text) for text in data[_INPUTS]]
        probas = (
            [list(values) for values in zip(*[data[c] for c in plan.proba_columns], strict=True)]
            if plan.proba_columns
            else None
        )
        keys = data[key] if key else None
        logger.insert(inputs, data[PREDICTION], probas, keys, list(data[_LATENCY]))
    return logger.rows
