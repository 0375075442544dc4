"""Find flavors by name or by what they recognise.

Built-in and third-party flavors alike are declared in the ``passerelle.flavors`` entry point
group, so a package can add one without touching passerelle.
"""

from __future__ import annotations

import functools
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from passerelle.errors import MissingDependencyError, UnknownFlavorError
from passerelle.flavors.base import Flavor, Predictor, SavedArtifact

__all__ = ["Flavor", "Predictor", "SavedArtifact", "all_flavors", "detect", "get_flavor"]

ENTRY_POINT_GROUP = "passerelle.flavors"
# Order matters for detection: the most specific formats are tried first.
_DETECTION_ORDER = ["mlflow", "onnx", "xgboost", "lightgbm", "sklearn", "python"]


@functools.cache
def _entry_points() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


@functools.cache
def get_flavor(name: str) -> Flavor:
    ep = _entry_points().get(name)
    if ep is None:
        known = ", ".join(sorted(_entry_points()))
        raise UnknownFlavorError(f"unknown flavor {name!r}; installed flavors: {known}")
    cls = ep.load()
    flavor = cls()
    if not isinstance(flavor, Flavor):
        raise UnknownFlavorError(f"entry point {name!r} does not provide a passerelle Flavor")
    return flavor


def flavor_names() -> list[str]:
    names = list(_entry_points())
    return sorted(names, key=lambda n: (_DETECTION_ORDER.index(n) if n in _DETECTION_ORDER else 99, n))


def all_flavors() -> list[Flavor]:
    return [get_flavor(name) for name in flavor_names()]


def detect(model: Any) -> Flavor:
    """The flavor for an in-memory model, a path, or a ``module:attr`` reference string."""
    for name in flavor_names():
        try:
            flavor = get_flavor(name)
            found = flavor.detect_path(model) if isinstance(model, Path) else flavor.detect_object(model)
        except MissingDependencyError:
            # A flavor whose library is absent cannot have produced this object.
            continue
        if found:
            return flavor
    what = f"file {model}" if isinstance(model, Path) else f"object of type {type(model).__name__}"
    raise UnknownFlavorError(f"no flavor recognises the {what}; pass --flavor explicitly")
