"""Plain Python code as a model: a ``package.module:attr`` reference, or a pickled callable.

A reference is the safe form: only the import path is stored, and loading imports code that
is installed next to passerelle. A callable that can be re-imported under its own name is
stored as a reference too. Anything else (a lambda, a closure, a function defined in
``__main__``, a callable instance) is pickled by value, which needs the user's trust to load.
"""

from __future__ import annotations

import importlib
import json
import pickle
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from passerelle.environment import distributions_of
from passerelle.errors import InvalidInputError, TrustRequiredError
from passerelle.flavors.base import Flavor, Predictor, SavedArtifact, one_per_row, plain_list

REFERENCE_FILE = "reference.json"
PICKLE_FILE = "model.pkl"
PICKLE = "pickle"
REFERENCE_PATTERN = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


def resolve(reference: str) -> Any:
    """Import the object named by ``package.module:attr`` (``attr`` may be dotted)."""
    if not REFERENCE_PATTERN.match(reference):
        raise InvalidInputError(f"{reference!r} is not a reference of the form package.module:attr")
    module_name, _, attr_path = reference.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
        for attr in attr_path.split("."):
            obj = getattr(obj, attr)
    except (ImportError, AttributeError) as exc:
        raise InvalidInputError(f"cannot import {reference}: {exc}") from exc
    return obj


def reference_of(obj: Any) -> str | None:
    """The reference under which ``obj`` can be imported back, or None when there is none."""
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str) or module == "__main__":
        return None
    reference = f"{module}:{qualname}"
    # "<lambda>" and "<locals>" fail the pattern, which is what rules out lambdas and closures.
    if not REFERENCE_PATTERN.match(reference):
        return None
    try:
        found = resolve(reference)
    except InvalidInputError:
        return None
    return reference if found is obj else None


def _pickler() -> tuple[str, Any]:
    # cloudpickle stores lambdas, closures and __main__ functions by value; the standard
    # pickle would refuse the first two and store a dangling "__main__" name for the third.
    try:
        return "cloudpickle", importlib.import_module("cloudpickle")
    except ImportError:
        return "pickle", pickle


def _refers_to_main(data: bytes) -> bool:
    import pickletools

    return any(
        isinstance(arg, str) and (arg == "__main__" or arg.startswith("__main__ "))
        for _opcode, arg, _pos in pickletools.genops(data)
    )


class FunctionPredictor(Predictor):
    def __init__(self, function: Callable[[pd.DataFrame], Any]) -> None:
        self.function = function

    def predict(self, table: pd.DataFrame) -> np.ndarray[Any, Any]:
        return one_per_row(self.function(table))


class ObjectPredictor(Predictor):
    """Wraps an object with a ``predict`` method, and ``predict_proba``/``classes`` if it has them."""

    def __init__(self, model: Any) -> None:
        self.model = model
        classes = getattr(model, "classes", None)
        if classes is None:
            classes = getattr(model, "classes_", None)
        self.classes = None if classes is None else plain_list(classes)

    def predict(self, table: pd.DataFrame) -> np.ndarray[Any, Any]:
        return one_per_row(self.model.predict(table))

    @property
    def has_proba(self) -> bool:
        return callable(getattr(self.model, "predict_proba", None))

    def predict_proba(self, table: pd.DataFrame) -> np.ndarray[Any, Any]:
        if not self.has_proba:
            return super().predict_proba(table)
        return np.asarray(self.model.predict_proba(table))


def predictor_for(obj: Any, what: str) -> Predictor:
    if isinstance(obj, type):
        try:
            obj = obj()
        except TypeError as exc:
            raise InvalidInputError(
                f"{what} is a class that cannot be built without arguments: {exc}"
            ) from exc
    if callable(getattr(obj, "predict", None)):
        return ObjectPredictor(obj)
    if callable(obj):
        return FunctionPredictor(obj)
    raise InvalidInputError(f"{what} is neither callable nor an object with a predict method")


class PythonFlavor(Flavor):
    name: ClassVar[str] = "python"

    def detect_object(self, model: Any) -> bool:
        if isinstance(model, str):
            return REFERENCE_PATTERN.match(model) is not None
        return callable(model)

    def save_reference(self, reference: str, dest: Path) -> SavedArtifact:
        # Resolved now so that a typo fails at registration rather than at serving time.
        resolve(reference)
        (dest / REFERENCE_FILE).write_text(json.dumps({"reference": reference}) + "\n", encoding="utf-8")
        return SavedArtifact(options={"kind": "reference"}, libraries=_distributions_of(reference))

    def save_object(self, model: Any, dest: Path) -> SavedArtifact:
        if isinstance(model, str):
            return self.save_reference(model, dest)
        if not callable(model):
            raise InvalidInputError(
                f"the python flavor takes a callable or a reference, not {type(model).__name__}"
            )
        reference = reference_of(model)
        if reference is not None:
            return self.save_reference(reference, dest)
        pickler_name, pickler = _pickler()
        try:
            data = pickler.dumps(model)
        except Exception as exc:  # pickling errors come as PicklingError, TypeError, AttributeError...
            raise InvalidInputError(
                f"{model!r} can be neither imported by name nor pickled ({exc}); "
                "define it at module level in an importable module"
            ) from exc
        if pickler_name == "pickle" and _refers_to_main(data):
            raise InvalidInputError(
                f"{model!r} refers to code defined in __main__, which a server cannot import; "
                "move it to an importable module"
            )
        (dest / PICKLE_FILE).write_bytes(data)
        libraries = ["cloudpickle"] if pickler_name == "cloudpickle" else []
        return SavedArtifact(
            options={"kind": "pickle", "pickler": pickler_name}, libraries=libraries, untrusted=[PICKLE]
        )

    def load(self, path: Path, options: dict[str, Any], *, trusted: list[str]) -> Predictor:
        kind = options.get("kind") or ("reference" if (path / REFERENCE_FILE).exists() else "pickle")
        if kind == "reference":
            reference = json.loads((path / REFERENCE_FILE).read_text(encoding="utf-8"))["reference"]
            return predictor_for(resolve(reference), reference)
        if kind != "pickle":
            raise InvalidInputError(f"unknown python model storage {kind!r}")
        if PICKLE not in trusted:
            raise TrustRequiredError(
                "this model is a pickled callable, which runs code when read, and nobody vouched for it"
            )
        data = (path / PICKLE_FILE).read_bytes()
        try:
            obj = pickle.loads(data)
        except ModuleNotFoundError as exc:
            raise InvalidInputError(f"the pickled model needs a module that is not installed: {exc}") from exc
        return predictor_for(obj, "the pickled model")


def _distributions_of(reference: str) -> list[str]:
    return sorted(distributions_of([reference]))
