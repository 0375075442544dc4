"""Drift methods: the effect sizes that decide whether a column moved.

A method turns a :class:`~passerelle.drift.histograms.NumericPair` or
:class:`~passerelle.drift.histograms.CategoricalPair` into one number, an effect size
that grows with the difference between reference and window, and carries the threshold
above which that difference matters. Methods are frozen dataclasses; their parameters
(bins, threshold) are fields, so a configuration is plain data.

Built-in methods register through :func:`register_method`, exactly like a third-party
one would; :func:`method_from_dict` rebuilds any registered method from its
``to_dict()``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

from passerelle.drift.exact import PSI_EPSILON, cramers_v, exact_chi2, exact_js, psi_from_counts
from passerelle.drift.histograms import Kind, NumericPair, Pair
from passerelle.errors import InvalidInputError


@runtime_checkable
class DriftMethod(Protocol):
    """What the engine needs from a drift method."""

    @property
    def name(self) -> str:
        """The registered name, e.g. ``"wasserstein"``."""
        ...

    @property
    def threshold(self) -> float:
        """The effect size from which a column counts as drifted."""
        ...

    @property
    def null_power(self) -> float:
        """How the statistic shrinks with sample size when nothing changed: it scales like
        ``n_eff ** -null_power`` (0.5 for distances, 1 for divergences such as PSI)."""
        ...

    def supports(self, kind: Kind) -> bool:
        """Whether the method applies to numeric or categorical columns."""
        ...

    def key(self) -> str:
        """Name and the parameters that change the statistic (not the threshold): the key
        under which the reference stores the statistic's noise level."""
        ...

    def statistic(self, pair: Pair) -> float:
        """The effect size between the pair's reference and window; >= 0."""
        ...

    def to_dict(self) -> dict[str, Any]:
        """``{"name": ..., **parameters}``, accepted by :func:`method_from_dict`."""
        ...


@dataclass(frozen=True)
class Wasserstein:
    """First Wasserstein distance divided by the reference's standard deviation.

    Reads as "how far, in reference standard deviations, mass had to move": 0.2 for a
    mean shift of 0.2 sd, about 0.4 for a normal column whose spread grew 1.5x.
    """

    threshold: float = 0.1
    name: ClassVar[str] = "wasserstein"
    null_power: ClassVar[float] = 0.5

    def supports(self, kind: Kind) -> bool:
        return kind == "numeric"

    def key(self) -> str:
        return self.name

    def statistic(self, pair: Pair) -> float:
        if not isinstance(pair, NumericPair):
            raise InvalidInputError("wasserstein applies to numeric columns")
        distance = pair.wasserstein()
        scale = pair.reference_std()
        # A constant reference column has no scale: its distance stays in its own units.
        return distance / scale if scale > 0 else distance

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **asdict(self)}


@dataclass(frozen=True)
class JensenShannon:
    """Jensen-Shannon distance (base 2, in [0, 1]) on levels, or on ``bins``
    reference-quantile bins of a numeric column."""

    threshold: float = 0.1
    bins: int = 20
    name: ClassVar[str] = "jensenshannon"
    null_power: ClassVar[float] = 0.5

    def supports(self, kind: Kind) -> bool:
        return True

    def key(self) -> str:
        return f"{self.name}(bins={self.bins})"

    def statistic(self, pair: Pair) -> float:
        reference, window = pair.counts(self.bins)
        return exact_js(reference, window)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **asdict(self)}


@dataclass(frozen=True)
class PopulationStability:
    """Population stability index on levels, or on ``bins`` reference-quantile bins.

    The customary reading: below 0.1 stable, 0.1-0.2 moderate, above 0.2 significant.
    """

    threshold: float = 0.2
    bins: int = 10
    epsilon: float = PSI_EPSILON
    name: ClassVar[str] = "psi"
    null_power: ClassVar[float] = 1.0

    def supports(self, kind: Kind) -> bool:
        return True

    def key(self) -> str:
        return f"{self.name}(bins={self.bins},epsilon={self.epsilon})"

    def statistic(self, pair: Pair) -> float:
        reference, window = pair.counts(self.bins)
        return psi_from_counts(reference, window, epsilon=self.epsilon)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **asdict(self)}


@dataclass(frozen=True)
class KolmogorovSmirnov:
    """The KS statistic D: the largest gap between the two cumulative distributions.

    0.05 is about what a mean shift of 0.125 sd does to a normal column.
    """

    threshold: float = 0.05
    name: ClassVar[str] = "ks"
    null_power: ClassVar[float] = 0.5

    def supports(self, kind: Kind) -> bool:
        return kind == "numeric"

    def key(self) -> str:
        return self.name

    def statistic(self, pair: Pair) -> float:
        if not isinstance(pair, NumericPair):
            raise InvalidInputError("ks applies to numeric columns")
        return pair.ks_statistic()

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **asdict(self)}


@dataclass(frozen=True)
class ChiSquare:
    """Cramér's V of the chi-square test of homogeneity on levels (0.1 is a small effect)."""

    threshold: float = 0.1
    name: ClassVar[str] = "chi2"
    null_power: ClassVar[float] = 0.5

    def supports(self, kind: Kind) -> bool:
        return kind == "categorical"

    def key(self) -> str:
        return self.name

    def statistic(self, pair: Pair) -> float:
        reference, window = pair.counts()
        result = exact_chi2(reference, window)
        return cramers_v(result.statistic, float(reference.sum() + window.sum()))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **asdict(self)}


# ---------------------------------------------------------------------------------------
# registry

MethodFactory = Callable[..., DriftMethod]
_REGISTRY: dict[str, MethodFactory] = {}


def register_method(name: str, factory: MethodFactory) -> None:
    """Make ``factory(**parameters)`` available as ``{"name": name, **parameters}``."""
    if not name or name in _REGISTRY:
        raise InvalidInputError(f"a drift method named {name!r} is already registered")
    _REGISTRY[name] = factory


def registered_methods() -> list[str]:
    return sorted(_REGISTRY)


def method_from_dict(data: Mapping[str, Any]) -> DriftMethod:
    """The method described by ``{"name": ..., **parameters}``."""
    params = dict(data)
    name = params.pop("name", None)
    factory = _REGISTRY.get(str(name))
    if factory is None:
        raise InvalidInputError(
            f"unknown drift method {name!r}; registered: {', '.join(registered_methods())}"
        )
    try:
        return factory(**params)
    except TypeError as exc:
        raise InvalidInputError(f"invalid parameters for drift method {name!r}: {exc}") from None


for _method in (Wasserstein, JensenShannon, PopulationStability, KolmogorovSmirnov, ChiSquare):
    register_method(_method.name, _method)
