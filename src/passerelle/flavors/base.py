"""The flavor protocol: how an artifact is saved, recognised and loaded.

A flavor turns a trained model (an in-memory object or a file the user points at) into a
folder of files in a canonical layout, and turns that folder back into a :class:`Predictor`.
Built-in flavors are registered through the ``passerelle.flavors`` entry point group, the
same way a third-party flavor would be.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd


@dataclass
class SavedArtifact:
    """What a flavor reports after writing a model into a folder.

    ``options`` are stored with the version and handed back to :meth:`Flavor.load`.
    ``libraries`` are the distribution names whose versions matter for loading (recorded
    as the version's environment). ``untrusted`` lists what loading would have to trust
    (types or a pickle) beyond what passerelle trusts on its own; registration refuses a
    non-empty list unless the user passed the trust flag.
    """

    options: dict[str, Any] = field(default_factory=dict)
    libraries: list[str] = field(default_factory=list)
    untrusted: list[str] = field(default_factory=list)


class Predictor(abc.ABC):
    """A loaded model. ``table`` columns are in the order of the version's signature."""

    #: labels of the classes, in the order of ``predict_proba`` columns, when the model has them
    classes: list[Any] | None = None

    @abc.abstractmethod
    def predict(self, table: pd.DataFrame) -> np.ndarray[Any, Any]:
        """One prediction per row (labels for a classifier, values for a regressor)."""

    @property
    def has_proba(self) -> bool:
        return False

    def predict_proba(self, table: pd.DataFrame) -> np.ndarray[Any, Any]:
        """Class probabilities, shape (rows, classes); only when :attr:`has_proba`."""
        raise NotImplementedError(f"{type(self).__name__} has no predict_proba")


class Flavor(abc.ABC):
    """One way of storing and calling models."""

    name: ClassVar[str]
    #: the pip extra that brings this flavor's libraries, when they are optional
    extra: ClassVar[str | None] = None

    def detect_object(self, model: Any) -> bool:
        """True when this flavor can save ``model`` (an in-memory object)."""
        return False

    def detect_path(self, path: Path) -> bool:
        """True when ``path`` (a file or folder the user gave) is an artifact of this flavor."""
        return False

    def save_object(self, model: Any, dest: Path) -> SavedArtifact:
        """Write ``model`` into the empty folder ``dest``."""
        raise NotImplementedError(f"the {self.name} flavor cannot save in-memory objects")

    def save_path(self, path: Path, dest: Path, *, trusted: bool) -> SavedArtifact:
        """Copy or convert the artifact at ``path`` into the empty folder ``dest``.

        ``trusted`` is the user's explicit trust flag: a flavor may need it to read the
        source (a pickle) in order to convert it into a safe format.
        """
        raise NotImplementedError(f"the {self.name} flavor cannot import files")

    def save_reference(self, reference: str, dest: Path) -> SavedArtifact:
        """Record a code reference such as ``package.module:function`` (python flavor)."""
        raise NotImplementedError(f"the {self.name} flavor does not take code references")

    @abc.abstractmethod
    def load(self, path: Path, options: dict[str, Any], *, trusted: list[str]) -> Predictor:
        """Load the folder ``path`` written by a ``save_*`` method.

        ``trusted`` is what the user vouched for at registration (a subset of the
        ``untrusted`` list reported then); loading anything beyond it must raise
        :class:`passerelle.errors.TrustRequiredError`.
        """


def comes_from(obj: Any, package: str) -> bool:
    """True when the class of ``obj`` or one of its bases is defined in ``package``.

    Detection runs every flavor against every object; checking module names first means a
    flavor never imports its (possibly slow or absent) library for an object that cannot
    be one of its models.
    """
    return any((cls.__module__ or "").split(".")[0] == package for cls in type(obj).__mro__)


def plain_list(values: Any) -> list[Any]:
    """``values`` (a list, tuple or array) as a list of plain Python scalars, safe for JSON."""
    if isinstance(values, list | tuple):
        return [v.item() if isinstance(v, np.generic) else v for v in values]
    return list(np.asarray(values).tolist())


def one_per_row(values: Any) -> np.ndarray[Any, Any]:
    """``values`` as an array, with a single output column flattened to one value per row."""
    if isinstance(values, pd.DataFrame):
        values = values.iloc[:, 0] if values.shape[1] == 1 else values
    array = np.asarray(values)
    if array.ndim == 2 and array.shape[1] == 1:
        return array.ravel()
    return array


def installed_distribution(*candidates: str) -> str:
    """The first of ``candidates`` that is installed (several distributions ship one package)."""
    from importlib.metadata import PackageNotFoundError, version

    for name in candidates:
        try:
            version(name)
        except PackageNotFoundError:
            continue
        return name
    return candidates[0]


def columns_in_order(table: pd.DataFrame, names: Any) -> pd.DataFrame:
    """``table`` with its columns in the order the model was fitted with, when they all exist.

    Libraries that check feature names refuse a reordered frame; the signature's order is
    not guaranteed to be the training order.
    """
    if names is None:
        return table
    wanted = [str(n) for n in names]
    if list(table.columns) == wanted or not set(wanted) <= set(table.columns):
        return table
    return table[wanted]
