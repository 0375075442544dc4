"""scikit-learn estimators, stored with skops so that loading does not run arbitrary code.

skops lists the types a file would instantiate; passerelle vouches for the classes of
scikit-learn, NumPy and SciPy and asks the user to vouch for anything else (typically a
custom transformer from the user's own code). Pickles are accepted only with the trust flag
and are converted to skops whenever skops can represent the estimator.
"""

from __future__ import annotations

import copy
import functools
import importlib
import shutil
import warnings
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from passerelle.environment import distributions_of
from passerelle.errors import InvalidInputError, TrustRequiredError
from passerelle.flavors.base import (
    Flavor,
    Predictor,
    SavedArtifact,
    columns_in_order,
    comes_from,
    plain_list,
)

SKOPS_FILE = "model.skops"
PICKLE_FILE = "model.pkl"
#: the ``untrusted`` entry meaning "loading unpickles a file"
PICKLE = "pickle"
PICKLE_SUFFIXES = frozenset({".pkl", ".pickle", ".joblib"})
LIBRARIES = ["scikit-learn", "skops", "numpy"]
_AUTO_TRUSTED_PACKAGES = frozenset({"sklearn", "numpy", "scipy"})


@functools.cache
def is_auto_trusted(name: str) -> bool:
    """True for a class of scikit-learn, NumPy or SciPy, named as skops names types.

    Only classes qualify: skops rebuilds them from their state without calling their code.
    A function of these packages stays the user's call, because an estimator such as
    ``FunctionTransformer`` calls the function it holds and some of them touch the filesystem.
    """
    parts = name.split(".")
    if len(parts) < 2 or parts[0] not in _AUTO_TRUSTED_PACKAGES:
        return False
    # Resolving the name imports its module; a dunder module such as ``__main__`` runs code.
    if any(not part.isidentifier() or part.startswith("__") for part in parts):
        return False
    for split in range(len(parts) - 1, 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for attr in parts[split:]:
            obj = getattr(obj, attr, None)
        return isinstance(obj, type)
    return False


def untrusted_types(file: Path) -> list[str]:
    """Every type skops would have to be told to trust to load ``file``, sorted."""
    import skops.io as sio

    try:
        found = sio.get_untrusted_types(file=file)
    except Exception as exc:  # skops raises assorted errors for files it cannot parse
        raise InvalidInputError(f"{file.name} is not a readable skops file: {exc}") from exc
    return sorted(found)


def _skops_artifact(types: list[str]) -> SavedArtifact:
    untrusted = [t for t in types if not is_auto_trusted(t)]
    libraries = LIBRARIES + [d for d in distributions_of(untrusted) if d not in LIBRARIES]
    return SavedArtifact(options={"format": "skops"}, libraries=libraries, untrusted=untrusted)


def _pickle_artifact() -> SavedArtifact:
    return SavedArtifact(options={"format": "pickle"}, libraries=[*LIBRARIES, "joblib"], untrusted=[PICKLE])


def _check_estimator(model: Any) -> None:
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    if not callable(getattr(model, "predict", None)):
        raise InvalidInputError(f"{type(model).__name__} has no predict method, so it cannot be served")
    try:
        check_is_fitted(model)
    except (NotFittedError, TypeError) as exc:
        raise InvalidInputError(f"{type(model).__name__} is not a fitted estimator: {exc}") from exc


def _write_skops(model: Any, dest: Path) -> list[str] | None:
    """Store ``model`` as skops; the types it needs, or None when skops cannot represent it."""
    import skops.io as sio

    target = dest / SKOPS_FILE
    try:
        sio.dump(model, target)
        types = untrusted_types(target)
        # Some objects dump but cannot be rebuilt (skops refuses ``re.Pattern``, for one):
        # finding out now keeps a model that cannot be loaded out of the registry.
        sio.load(target, trusted=types)
    except Exception:
        target.unlink(missing_ok=True)
        return None
    return types


class SklearnPredictor(Predictor):
    def __init__(self, model: Any) -> None:
        self.model = model
        names = getattr(model, "feature_names_in_", None)
        # An estimator fitted on a frame warns when given an array and vice versa.
        self._feature_names = None if names is None else [str(n) for n in names]
        classes = getattr(model, "classes_", None)
        self.classes = None if classes is None else plain_list(classes)
        #: the same estimator without its feature names, proven to answer arrays as it answers frames
        self._unnamed = None if self._feature_names is None else _unnamed_twin(model, self._feature_names)

    def _call(self, method: str, table: pd.DataFrame) -> np.ndarray[Any, Any]:
        names = self._feature_names
        if names is None:
            return np.asarray(getattr(self.model, method)(table.to_numpy()))
        ordered = columns_in_order(table, names)
        unnamed = self._unnamed
        if unnamed is not None and list(ordered.columns) == names and _all_float(ordered):
            # scikit-learn checks a frame column by column, which costs as much as a small
            # tree ensemble's whole prediction; these columns are the fitted ones, in order.
            return np.asarray(getattr(unnamed, method)(ordered.to_numpy(dtype=np.float64, copy=False)))
        return np.asarray(getattr(self.model, method)(ordered))

    def predict(self, table: pd.DataFrame) -> np.ndarray[Any, Any]:
        return self._call("predict", table)

    @property
    def has_proba(self) -> bool:
        return hasattr(self.model, "predict_proba")

    def predict_proba(self, table: pd.DataFrame) -> np.ndarray[Any, Any]:
        if not self.has_proba:
            return super().predict_proba(table)
        return self._call("predict_proba", table)


_FLOAT = np.dtype(np.float64)


def _all_float(frame: pd.DataFrame) -> bool:
    return all(dtype == _FLOAT for dtype in frame.dtypes)


def _same(a: np.ndarray[Any, Any], b: np.ndarray[Any, Any]) -> bool:
    # Floats only to rounding: a frame reaches the estimator as a column-major array, and
    # linear algebra over another memory layout may differ in the last bit.
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.dtype.kind == "f":
        return bool(np.allclose(a, b, rtol=1e-9, atol=1e-12, equal_nan=True))
    return bool(np.array_equal(a, b))


def _unnamed_twin(model: Any, names: list[str]) -> Any | None:
    """A shallow copy of ``model`` without ``feature_names_in_``, if it answers arrays like frames.

    Only estimators that keep the names as a plain attribute qualify (a pipeline's are its first
    step's), and only when a probe of float rows gives identical answers both ways: an
    estimator that selects columns by name (a column transformer) fails the probe and keeps
    getting frames.
    """
    if "feature_names_in_" not in getattr(model, "__dict__", {}) or not hasattr(model, "predict"):
        return None
    twin = copy.copy(model)
    del twin.feature_names_in_
    probe = np.random.default_rng(0).normal(size=(8, len(names)))
    from threadpoolctl import threadpool_limits

    try:
        # One OpenMP thread: a team started here (a loader thread) would outlive the probe and
        # oversubscribe the cores the serving threads use.
        with warnings.catch_warnings(), threadpool_limits(limits=1, user_api="openmp"):
            warnings.simplefilter("ignore")
            frame = pd.DataFrame(probe, columns=names)
            for method in ("predict", "predict_proba"):
                if not hasattr(model, method):
                    continue
                named = np.asarray(getattr(model, method)(frame))
                unnamed = np.asarray(getattr(twin, method)(probe))
                if not _same(named, unnamed):
                    return None
    except Exception:
        return None
    return twin


class SklearnFlavor(Flavor):
    name: ClassVar[str] = "sklearn"

    def detect_object(self, model: Any) -> bool:
        if not comes_from(model, "sklearn"):
            return False
        from sklearn.base import BaseEstimator

        return isinstance(model, BaseEstimator)

    def detect_path(self, path: Path) -> bool:
        return path.is_file() and (path.suffix.lower() == ".skops" or path.suffix.lower() in PICKLE_SUFFIXES)

    def save_object(self, model: Any, dest: Path) -> SavedArtifact:
        _check_estimator(model)
        types = _write_skops(model, dest)
        if types is not None:
            return _skops_artifact(types)
        import joblib

        try:
            joblib.dump(model, dest / PICKLE_FILE)
        except Exception as exc:
            (dest / PICKLE_FILE).unlink(missing_ok=True)
            raise InvalidInputError(
                f"{type(model).__name__} can be stored neither with skops nor with pickle: {exc}"
            ) from exc
        return _pickle_artifact()

    def save_path(self, path: Path, dest: Path, *, trusted: bool) -> SavedArtifact:
        suffix = path.suffix.lower()
        if suffix == ".skops":
            types = untrusted_types(path)
            shutil.copyfile(path, dest / SKOPS_FILE)
            return _skops_artifact(types)
        if suffix not in PICKLE_SUFFIXES:
            raise InvalidInputError(f"{path.name} is not a .skops, .pkl, .pickle or .joblib file")
        if not trusted:
            raise TrustRequiredError(
                f"{path.name} is a pickle, and reading a pickle runs whatever code it holds; "
                "pass the trust flag if you vouch for it (it is then converted to skops when possible)"
            )
        import joblib

        try:
            model = joblib.load(path)
        except Exception as exc:
            raise InvalidInputError(f"cannot read the pickle {path.name}: {exc}") from exc
        _check_estimator(model)
        converted = _write_skops(model, dest)
        if converted is not None:
            return _skops_artifact(converted)
        # The user vouched for these exact bytes, so they are kept rather than re-pickled.
        shutil.copyfile(path, dest / PICKLE_FILE)
        return _pickle_artifact()

    def load(self, path: Path, options: dict[str, Any], *, trusted: list[str]) -> Predictor:
        storage = options.get("format", "skops")
        if storage == "pickle":
            if PICKLE not in trusted:
                raise TrustRequiredError(
                    "this model is stored as a pickle, which runs code when read, and nobody vouched for it"
                )
            import joblib

            return SklearnPredictor(joblib.load(path / PICKLE_FILE))
        if storage != "skops":
            raise InvalidInputError(f"unknown scikit-learn storage format {storage!r}")
        import skops.io as sio

        file = path / SKOPS_FILE
        # Recomputed from the file rather than taken from the registry: what counts is what
        # this file would instantiate.
        types = untrusted_types(file)
        refused = [t for t in types if t not in trusted and not is_auto_trusted(t)]
        if refused:
            raise TrustRequiredError(
                f"loading this model would instantiate types nobody vouched for: {', '.join(refused)}"
            )
        return SklearnPredictor(sio.load(file, trusted=types))
