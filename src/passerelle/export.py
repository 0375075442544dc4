"""Export a registered version to ONNX, for embedding where Python cannot run.

scikit-learn estimators and pipelines convert through skl2onnx; XGBoost models (from its
scikit-learn API) and LightGBM boosters through onnxmltools. A converted graph is never
trusted on its own: it is run with onnxruntime on a sample (``sample``, else the first rows
of the version's training dataset) next to the original, and refused when the largest
absolute difference of their probabilities (or predictions, for a regressor) exceeds the
tolerance, or when they disagree on a label. The exported file can be registered as a new
``onnx`` version whose lineage says where it came from (``exported_from``).
"""

from __future__ import annotations

import contextlib
import copy
import os
import shutil
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Final

import numpy as np
import pandas as pd
from pydantic import BaseModel

from passerelle._deps import require
from passerelle.batch import ChunkScorer, locate, read_chunks
from passerelle.context import Context
from passerelle.datasets import Datasets
from passerelle.errors import InvalidInputError, PasserelleError
from passerelle.flavors import Predictor, get_flavor
from passerelle.registry import LoadedModel, Registry, VersionInfo
from passerelle.signature import Signature, infer_signature
from passerelle.tables import read_table

FORMATS: Final[tuple[str, ...]] = ("onnx",)
#: largest absolute difference accepted between the original's outputs and the export's; ONNX
#: converters compute in float32, which leaves differences around 1e-7 on probabilities
DEFAULT_TOLERANCE: Final = 1e-4
#: rows of the sample the export is checked on
CHECK_ROWS: Final = 1_000
#: rows given to the registration of the exported version, to infer its signature from
_REGISTER_ROWS: Final = 200
# Opsets the installed converters support: skl2onnx follows onnx closely, onnxmltools lags.
_SKLEARN_OPSET: Final = {"": 17, "ai.onnx.ml": 3}
_ONNXMLTOOLS_OPSET: Final = 15
EXPORT_EXTRA: Final = "export"
_CONVERTIBLE: Final = frozenset({"sklearn", "xgboost", "lightgbm"})


class ExportError(PasserelleError):
    """The version cannot be exported, or its export does not behave like it."""


class ExportInfo(BaseModel):
    source: str
    format: str
    output: str
    converter: str
    rows_checked: int
    compared: str
    max_abs_diff: float
    tolerance: float
    label_mismatches: int
    registered: str | None = None


def _installed(name: str) -> str:
    try:
        return f"{name} {version(name)}"
    except PackageNotFoundError:
        return name


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    line = text.splitlines()[0] if text else ""
    if len(text) > 500 and exc.__cause__ is not None:
        # Converters wrap the real problem in a message that dumps the whole node.
        return _first_line(exc.__cause__)
    return (line[:200] + "…") if len(line) > 200 else (line or type(exc).__name__)


# ---------------------------------------------------------------------------------------
# the sample


def _check_frame(
    ctx: Context, info: VersionInfo, signature: Signature, sample: str | Path | None
) -> pd.DataFrame:
    """Rows that pass the signature, conformed: from ``sample``, else the training dataset."""
    if sample is not None:
        raw = read_table(sample).head(CHECK_ROWS * 2)
        where = str(sample)
    elif info.dataset:
        dataset = Datasets(ctx).get(info.dataset)
        loc = locate(dataset.uri, ctx.settings)
        try:
            batch, _, _ = next(read_chunks(loc, signature.names, CHECK_ROWS * 2))
        except StopIteration:
            raise ExportError(
                f"the dataset {info.dataset} of {info.ref} has no rows to check the export on"
            ) from None
        raw = ChunkScorer(signature, _NoPredictor()).frame(batch)
        where = f"dataset {info.dataset}"
    else:
        raise ExportError(
            f"{info.ref} has no training dataset to check the export against; give a sample of inputs "
            "(--sample FILE)"
        )
    missing = [n for n in signature.names if n not in raw.columns]
    if missing:
        raise InvalidInputError(f"the sample ({where}) has no column {', '.join(map(repr, missing))}")
    checked = signature.validate(raw)
    frame = signature.conform(raw[checked.valid] if not checked.ok else raw).head(CHECK_ROWS)
    if frame.empty:
        raise ExportError(f"no row of the sample ({where}) matches the signature of {info.ref}")
    return frame.reset_index(drop=True)


class _NoPredictor(Predictor):
    """Stands in for a model where only :meth:`ChunkScorer.frame` is used."""

    def predict(self, table: pd.DataFrame) -> np.ndarray[Any, Any]:  # pragma: no cover - never called
        raise NotImplementedError


# ---------------------------------------------------------------------------------------
# converters


def _final_estimator(model: Any) -> Any:
    steps = getattr(model, "steps", None)
    return steps[-1][1] if steps else model


def _convert_sklearn(model: Any, signature: Signature) -> tuple[Any, list[str]]:
    """The graph, and the column order its single matrix input takes (empty for named inputs)."""
    require("skl2onnx", EXPORT_EXTRA)
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType

    final = _final_estimator(model)
    options: dict[Any, Any] = {}
    if hasattr(final, "predict_proba"):
        # Probabilities as a plain tensor rather than one dict per row (ZipMap): faster to run,
        # and what passerelle's onnx flavor reads directly.
        options[id(final)] = {"zipmap": False}
    if any(c.type == "datetime" for c in signature.columns):
        raise ExportError(
            "datetime inputs have no ONNX counterpart in skl2onnx; derive numbers from them first"
        )
    fitted = getattr(model, "feature_names_in_", None)
    named = [str(n) for n in fitted] if fitted is not None else []
    strings = any(c.type == "string" for c in signature.columns)
    layouts: list[tuple[list[tuple[str, Any]], list[str]]] = []
    if not strings:
        # A plain estimator takes one matrix, in the order it was fitted with.
        order = named if named and set(named) == set(signature.names) else signature.names
        layouts.append(([("input", FloatTensorType([None, len(order)]))], order))
    # A pipeline opening on a ColumnTransformer picks its columns by name: one input each.
    layouts.append(
        (
            [
                (c.name, StringTensorType([None, 1]) if c.type == "string" else FloatTensorType([None, 1]))
                for c in signature.columns
            ],
            [],
        )
    )
    failure: BaseException | None = None
    for inputs, order in layouts:
        try:
            return convert_sklearn(
                model, initial_types=inputs, target_opset=_SKLEARN_OPSET, options=options
            ), order
        except Exception as exc:  # converters raise anything from RuntimeError to protobuf errors
            failure = exc
    assert failure is not None
    raise ExportError(
        f"{_installed('skl2onnx')} cannot convert {type(model).__name__} "
        f"(scikit-learn {version('scikit-learn')}): {_first_line(failure)}"
    ) from failure


def _convert_xgboost(model: Any, signature: Signature) -> tuple[Any, list[str]]:
    require("onnxmltools", EXPORT_EXTRA)
    import onnxmltools
    from onnxmltools.convert.common.data_types import FloatTensorType

    names = [str(n) for n in (model.get_booster().feature_names or signature.names)]
    if set(names) != set(signature.names):
        raise ExportError("the XGBoost model's feature names do not match the version's signature")
    # The converter only reads features named f0, f1…; the matrix input keeps the model's order.
    unnamed = copy.deepcopy(model)
    unnamed.get_booster().feature_names = None
    try:
        graph = onnxmltools.convert_xgboost(
            unnamed,
            initial_types=[("input", FloatTensorType([None, len(names)]))],
            target_opset=_ONNXMLTOOLS_OPSET,
        )
    except Exception as exc:
        raise ExportError(
            f"{_installed('onnxmltools')} cannot convert this XGBoost model: {_first_line(exc)}"
        ) from exc
    return graph, names


def _convert_lightgbm(booster: Any, signature: Signature, classes: list[Any] | None) -> tuple[Any, list[str]]:
    require("onnxmltools", EXPORT_EXTRA)
    import onnxmltools
    from onnxmltools.convert.common.data_types import FloatTensorType

    if classes is not None and list(classes) != list(range(len(classes))):
        raise ExportError(
            f"the LightGBM model's classes are {classes}; its ONNX conversion can only label classes "
            "0, 1, 2…, so the export would answer other labels than the original"
        )
    names = [str(n) for n in booster.feature_name()]
    if set(names) != set(signature.names):
        raise ExportError("the LightGBM model's feature names do not match the version's signature")
    try:
        graph = onnxmltools.convert_lightgbm(
            booster,
            initial_types=[("input", FloatTensorType([None, len(names)]))],
            target_opset=_ONNXMLTOOLS_OPSET,
            zipmap=False,
        )
    except Exception as exc:
        raise ExportError(
            f"{_installed('onnxmltools')} cannot convert this LightGBM model: {_first_line(exc)}"
        ) from exc
    return graph, names


def convert(loaded: LoadedModel) -> tuple[Any, list[str], str]:
    """``(onnx.ModelProto, matrix column order or [], converter)`` for a loaded version."""
    from passerelle.flavors.lightgbm import LightGBMPredictor
    from passerelle.flavors.sklearn import SklearnPredictor
    from passerelle.flavors.xgboost import XGBoostWrapperPredictor

    assert loaded.signature is not None
    flavor = loaded.info.flavor
    predictor = loaded.predictor
    _check_flavor(loaded.info)
    if flavor == "sklearn" and isinstance(predictor, SklearnPredictor):
        graph, order = _convert_sklearn(predictor.model, loaded.signature)
        return graph, order, _installed("skl2onnx")
    if flavor == "xgboost":
        if not isinstance(predictor, XGBoostWrapperPredictor):
            raise ExportError(
                "only XGBoost models saved from its scikit-learn API (XGBClassifier, XGBRegressor) can be "
                "exported: a bare Booster's outputs do not say whether they are labels or probabilities"
            )
        graph, order = _convert_xgboost(predictor.model, loaded.signature)
        return graph, order, _installed("onnxmltools")
    if flavor == "lightgbm" and isinstance(predictor, LightGBMPredictor):
        graph, order = _convert_lightgbm(predictor.booster, loaded.signature, predictor.classes)
        return graph, order, _installed("onnxmltools")
    raise ExportError(
        f"{loaded.info.ref} cannot be converted: {type(predictor).__name__} is not a model object"
    )


def _check_flavor(info: VersionInfo) -> None:
    if info.flavor == "onnx":
        raise ExportError(f"{info.ref} is already an ONNX model; its file is the export")
    if info.flavor not in _CONVERTIBLE:
        raise ExportError(
            f"{info.ref} is a {info.flavor} model, which cannot be converted to ONNX; exportable flavors: "
            "sklearn (through skl2onnx), xgboost and lightgbm (through onnxmltools)"
        )


# ---------------------------------------------------------------------------------------
# checking and writing


def _load_graph(graph: Any, folder: Path) -> tuple[Predictor, dict[str, Any]]:
    flavor = get_flavor("onnx")
    folder.mkdir(parents=True, exist_ok=True)
    saved = flavor.save_object(graph, folder)
    return flavor.load(folder, saved.options, trusted=[]), saved.options


def _compare(
    original: LoadedModel,
    exported: Predictor,
    frame: pd.DataFrame,
    onnx_frame: pd.DataFrame,
    tolerance: float,
) -> tuple[str, float, int]:
    """``(what was compared, max absolute difference, label disagreements)``."""
    base = original.predictor
    ours = np.asarray(base.predict(frame))
    theirs = np.asarray(exported.predict(onnx_frame))
    if base.has_proba and exported.has_proba:
        expected = np.asarray(base.predict_proba(frame), dtype=np.float64)
        got = np.asarray(exported.predict_proba(onnx_frame), dtype=np.float64)
        if expected.shape != got.shape:
            raise ExportError(
                f"the export gives probabilities of shape {got.shape}, the original {expected.shape}"
            )
        diff = float(np.max(np.abs(expected - got))) if expected.size else 0.0
        # A label may flip where the original hesitates between two classes within the tolerance.
        top = np.sort(expected, axis=1)
        clear = (top[:, -1] - top[:, -2] > 2 * tolerance) if top.shape[1] > 1 else np.ones(len(top), bool)
        differs = ours.astype(str) != theirs.astype(str)
        return "probabilities", diff, int(np.count_nonzero(differs & clear))
    try:
        diff = (
            float(np.max(np.abs(ours.astype(np.float64) - theirs.astype(np.float64)))) if ours.size else 0.0
        )
    except (TypeError, ValueError):
        mismatches = int(np.count_nonzero(ours.astype(str) != theirs.astype(str)))
        return "labels", 0.0 if not mismatches else float("inf"), mismatches
    return "predictions", diff, 0


def _registration_sample(signature: Signature, frame: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """A sample from which the registry infers the source's signature (nullability, closed columns)."""
    sample = frame.head(_REGISTER_ROWS).copy()
    extra: list[pd.DataFrame] = []
    for col in signature.columns:
        if col.nullable and not sample[col.name].isna().any():
            row = sample.head(1).copy()
            row[col.name] = None
            extra.append(row)
        if col.closed and col.categories is not None:
            seen = set(sample[col.name].dropna().tolist())
            for category in col.categories:
                if category not in seen:
                    row = sample.head(1).copy()
                    row[col.name] = category
                    extra.append(row)
    if extra:
        sample = pd.concat([sample, *extra], ignore_index=True)
        sample = signature.conform(sample)
    closed = [c.name for c in signature.columns if c.closed]
    inferred = infer_signature(sample, closed=closed)
    changes = signature.differences(inferred)
    if changes:
        raise ExportError(
            "the exported version would not take the same inputs as the original: " + "; ".join(changes)
        )
    return sample, closed


def export_model(
    ctx: Context,
    ref: str,
    output: str | Path,
    *,
    fmt: str = "onnx",
    tolerance: float | None = None,
    sample: str | Path | None = None,
    register: str | None = None,
    overwrite: bool = False,
    reason: str | None = None,
) -> ExportInfo:
    """Convert ``ref`` to ``fmt``, check it against the original, write it to ``output``.

    With ``register``, the file also becomes a new version of the model named so, with the
    source's signature, training dataset and ``exported_from`` lineage.
    """
    if fmt not in FORMATS:
        raise InvalidInputError(f"unknown export format {fmt!r}; supported: {', '.join(FORMATS)}")
    tol = DEFAULT_TOLERANCE if tolerance is None else float(tolerance)
    if not np.isfinite(tol) or tol < 0:
        raise InvalidInputError(f"the tolerance must be a non-negative number, got {tolerance}")
    target = Path(output).expanduser().resolve()
    if target.suffix.lower() != ".onnx":
        raise InvalidInputError(f"{output}: an ONNX export is written to a .onnx file")
    if not target.parent.is_dir():
        raise InvalidInputError(f"cannot write {output}: the folder {target.parent} does not exist")
    if target.exists() and not overwrite:
        raise InvalidInputError(f"{output} already exists; pass --overwrite to replace it")
    require("onnxruntime", "onnx")

    registry = Registry(ctx)
    loaded = registry.load(ref)
    info = loaded.info
    _check_flavor(info)
    if loaded.signature is None:
        raise ExportError(
            f"{info.ref} has no signature (registered without a sample): nothing to build inputs from"
        )
    graph, order, converter = convert(loaded)
    frame = _check_frame(ctx, info, loaded.signature, sample)
    onnx_frame = frame[order] if order else frame

    workdir = Path(tempfile.mkdtemp(prefix="passerelle-export-"))
    try:
        exported, _options = _load_graph(graph, workdir / "check")
        compared, diff, mismatches = _compare(loaded, exported, frame, onnx_frame, tol)
        if not diff <= tol or mismatches:
            what = f"{mismatches} label(s) differ and " if mismatches else ""
            raise ExportError(
                f"the ONNX export of {info.ref} does not match it: {what}its {compared} differ by up to "
                f"{diff:.3g} on {len(frame)} sample rows (tolerance {tol:g}); nothing written"
            )
        result = ExportInfo(
            source=info.ref,
            format=fmt,
            output=str(target),
            converter=converter,
            rows_checked=len(frame),
            compared=compared,
            max_abs_diff=diff,
            tolerance=tol,
            label_mismatches=mismatches,
        )
        temp = target.with_name(f".{target.name}.{os.getpid()}.part")
        try:
            shutil.copyfile(workdir / "check" / "model.onnx", temp)
            with open(temp, "rb+") as handle:
                os.fsync(handle.fileno())
            os.replace(temp, target)
        finally:
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()
        if register is not None:
            result.registered = _register(registry, loaded, target, onnx_frame, register, result, reason)
        return result
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _register(
    registry: Registry,
    loaded: LoadedModel,
    path: Path,
    frame: pd.DataFrame,
    name: str,
    result: ExportInfo,
    reason: str | None,
) -> str:
    from passerelle.registry import prepare_artifact

    assert loaded.signature is not None
    signature = loaded.signature
    if list(frame.columns) != signature.names:
        signature = Signature([signature.column(n) for n in frame.columns], format=signature.format)
    sample, closed = _registration_sample(signature, frame)
    workdir = Path(tempfile.mkdtemp(prefix="passerelle-export-register-"))
    try:
        prepared = prepare_artifact(path, workdir, flavor="onnx")
        prepared.lineage.update(
            {
                "exported_from": loaded.info.ref,
                "exported_with": result.converter,
                "export_max_abs_diff": result.max_abs_diff,
            }
        )
        info = registry.register_prepared(
            prepared,
            name,
            sample=sample,
            closed=closed,
            metrics=dict(loaded.info.metrics),
            params=dict(loaded.info.params),
            tags={"exported_from": loaded.info.ref},
            dataset=loaded.info.dataset,
            description=f"ONNX export of {loaded.info.ref}",
            reason=reason or f"ONNX export of {loaded.info.ref}",
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return info.ref
