"""What the drift engine compares and when it calls a difference drift.

Every default is explained in ``docs/drift.md`` and ``docs/adr/0008-drift-defaults.md``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from passerelle.drift.histograms import Kind
from passerelle.drift.methods import (
    ChiSquare,
    DriftMethod,
    JensenShannon,
    KolmogorovSmirnov,
    PopulationStability,
    Wasserstein,
    method_from_dict,
)
from passerelle.errors import InvalidInputError

_METHOD_LISTS = (
    "numeric_methods",
    "categorical_methods",
    "small_numeric_methods",
    "small_categorical_methods",
)


@dataclass(frozen=True)
class DriftConfig:
    """Methods, thresholds and the rules that respect sample size.

    A column is drifted when one of its checks has an effect size at or above its
    threshold *and* its p-value survives Benjamini-Hochberg at ``fdr``. The threshold of
    a distribution method is the larger of the method's own and ``noise_multiplier``
    times the noise the reference shows for that statistic at the window's size.
    """

    #: effect sizes for numeric columns whose reference has at least ``small_reference`` values
    numeric_methods: tuple[DriftMethod, ...] = (Wasserstein(), JensenShannon(bins=20))
    categorical_methods: tuple[DriftMethod, ...] = (JensenShannon(),)
    #: for columns whose reference has fewer than ``small_reference`` values
    small_numeric_methods: tuple[DriftMethod, ...] = (KolmogorovSmirnov(),)
    small_categorical_methods: tuple[DriftMethod, ...] = (ChiSquare(),)
    small_reference: int = 1000
    #: column -> methods used for it instead of the ones above
    column_methods: Mapping[str, tuple[DriftMethod, ...]] = field(default_factory=dict)
    #: columns left out of the comparison
    ignore: frozenset[str] = frozenset()
    #: a window column with fewer values is "insufficient data", never drift
    min_n: int = 1000
    #: a reference column with fewer values cannot judge anything
    min_reference_n: int = 100
    #: false discovery rate across every test of a report; None judges on effect sizes alone
    fdr: float | None = 0.05
    #: 0 turns the reference-derived noise floor of the thresholds off
    noise_multiplier: float = 3.0
    #: absolute change of the share of missing values that counts as drift; None: not checked
    missing_rate_change: float | None = 0.05
    #: share of a window's values in levels the reference never saw that counts as drift
    new_category_share: float | None = 0.01
    #: the dataset drifts when at least this share of the evaluated features drifted
    drift_share: float = 0.5
    #: the multivariate check (PCA reconstruction error); False leaves it out
    multivariate: bool = True
    #: relative change of the reconstruction error that counts as drift
    multivariate_change: float = 0.1
    #: half-width of the band of reference chunks, in standard deviations
    multivariate_sigmas: float = 3.0
    #: share of the reference's variance the kept principal components explain
    explained_variance: float = 0.9
    #: largest n_ref + n_win for which the KS p-value counts lattice paths (else asymptotic)
    ks_exact_limit: int = 2000

    def __post_init__(self) -> None:
        for name in _METHOD_LISTS:
            kind: Kind = "numeric" if "numeric" in name else "categorical"
            methods = tuple(getattr(self, name))
            object.__setattr__(self, name, methods)
            self._check_methods(name, methods, kind)
        object.__setattr__(self, "column_methods", {k: tuple(v) for k, v in self.column_methods.items()})
        object.__setattr__(self, "ignore", frozenset(self.ignore))
        for column, methods in self.column_methods.items():
            self._check_methods(f"column_methods[{column!r}]", methods, None)
        if self.min_n < 1 or self.min_reference_n < 1:
            raise InvalidInputError("min_n and min_reference_n must be at least 1")
        if self.fdr is not None and not 0 < self.fdr <= 1:
            raise InvalidInputError(f"fdr must be within (0, 1] or None, got {self.fdr}")
        for name in ("noise_multiplier", "multivariate_change", "multivariate_sigmas"):
            if getattr(self, name) < 0:
                raise InvalidInputError(f"{name} must be >= 0")
        if not 0 <= self.drift_share <= 1:
            raise InvalidInputError(f"drift_share must be within [0, 1], got {self.drift_share}")
        if not 0 < self.explained_variance < 1:
            raise InvalidInputError(
                f"explained_variance must be within (0, 1), got {self.explained_variance}"
            )
        for name in ("missing_rate_change", "new_category_share"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise InvalidInputError(f"{name} must be >= 0 or None")

    @staticmethod
    def _check_methods(where: str, methods: tuple[DriftMethod, ...], kind: Kind | None) -> None:
        if not methods:
            raise InvalidInputError(f"{where}: at least one method is needed")
        keys = [m.key() for m in methods]
        if len(set(keys)) != len(keys):
            raise InvalidInputError(f"{where}: a method appears twice")
        for method in methods:
            if not isinstance(method, DriftMethod):
                raise InvalidInputError(f"{where}: {method!r} is not a drift method")
            if kind is not None and not method.supports(kind):
                raise InvalidInputError(f"{where}: {method.name} does not apply to {kind} columns")
            if not method.threshold >= 0:
                raise InvalidInputError(f"{where}: the threshold of {method.name} must be >= 0")

    def methods_for(self, column: str, kind: Kind, reference_n: int) -> tuple[DriftMethod, ...]:
        """The methods judging ``column``: its own, or those for its kind and reference size."""
        own = self.column_methods.get(column)
        if own is not None:
            usable = tuple(m for m in own if m.supports(kind))
            if not usable:
                raise InvalidInputError(f"column_methods[{column!r}]: no method applies to {kind} columns")
            return usable
        small = reference_n < self.small_reference
        if kind == "numeric":
            return self.small_numeric_methods if small else self.numeric_methods
        return self.small_categorical_methods if small else self.categorical_methods

    def all_methods(self) -> list[DriftMethod]:
        """Every method the configuration can use, once each."""
        seen: dict[str, DriftMethod] = {}
        for name in _METHOD_LISTS:
            for method in getattr(self, name):
                seen.setdefault(method.key(), method)
        for methods in self.column_methods.values():
            for method in methods:
                seen.setdefault(method.key(), method)
        return list(seen.values())

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in _METHOD_LISTS:
                value = [m.to_dict() for m in value]
            elif f.name == "column_methods":
                value = {k: [m.to_dict() for m in v] for k, v in value.items()}
            elif f.name == "ignore":
                value = sorted(value)
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DriftConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidInputError(f"unknown drift settings: {', '.join(unknown)}")
        kwargs: dict[str, Any] = dict(data)
        for name in _METHOD_LISTS:
            if name in kwargs:
                kwargs[name] = tuple(method_from_dict(m) for m in kwargs[name])
        if "column_methods" in kwargs:
            kwargs["column_methods"] = {
                k: tuple(method_from_dict(m) for m in v) for k, v in kwargs["column_methods"].items()
            }
        if "ignore" in kwargs:
            kwargs["ignore"] = frozenset(kwargs["ignore"])
        return cls(**kwargs)


#: the methods whose figures every column report carries in ``details``, whatever decides
DETAIL_METHODS: tuple[DriftMethod, ...] = (
    Wasserstein(),
    JensenShannon(bins=20),
    PopulationStability(bins=10),
    KolmogorovSmirnov(),
    ChiSquare(),
)
