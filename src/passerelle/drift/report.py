"""What a drift computation returns: per column, schema, multivariate and dataset verdicts."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from passerelle.drift.histograms import Kind, Role
from passerelle.errors import NotFoundError
from passerelle.signature import json_scalar

if TYPE_CHECKING:
    from passerelle.drift.config import DriftConfig

Status = Literal["ok", "drift", "insufficient data"]


def _json_dict(value: Mapping[str, Any]) -> dict[str, Any]:
    return {str(k): _json(v) for k, v in value.items()}


def _json(value: Any) -> Any:
    """``value`` with every float made JSON-safe (NaN and infinities become None)."""
    if isinstance(value, Mapping):
        return {str(k): _json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return json_scalar(value) if value is not None else None


@dataclass(frozen=True)
class Check:
    """One judgement on a column: an effect size against its threshold, and a test.

    ``method`` is a drift method's name, ``"missing rate"`` or ``"new categories"``;
    ``test`` the significance test behind ``p_value`` (``"ks"`` or ``"chi2"``), and
    ``q_value`` that p-value after Benjamini-Hochberg across the whole report.
    ``threshold`` is the larger of ``base_threshold`` and ``noise_threshold``, the noise
    the reference shows for this statistic at this window's size.
    """

    method: str
    effect_size: float
    threshold: float
    test: str
    statistic: float
    p_value: float
    q_value: float
    drifted: bool
    base_threshold: float
    noise_threshold: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return _json_dict(
            {
                "method": self.method,
                "effect_size": self.effect_size,
                "threshold": self.threshold,
                "base_threshold": self.base_threshold,
                "noise_threshold": self.noise_threshold,
                "test": self.test,
                "statistic": self.statistic,
                "p_value": self.p_value,
                "q_value": self.q_value,
                "drifted": self.drifted,
            }
        )


@dataclass(frozen=True)
class ColumnDrift:
    """The verdict on one column (a feature, or a prediction of the model).

    ``method``, ``effect_size``, ``threshold``, ``statistic``, ``p_value`` and ``q_value``
    repeat the leading check: the drifted check furthest above its threshold, or else
    the distribution check closest to it. None when nothing could be judged.
    """

    column: str
    kind: Kind
    role: Role
    status: Status
    drifted: bool
    method: str | None
    effect_size: float | None
    threshold: float | None
    statistic: float | None
    p_value: float | None
    q_value: float | None
    reference_n: int
    window_n: int
    checks: tuple[Check, ...] = ()
    details: Mapping[str, Any] = field(default_factory=dict)

    @property
    def reasons(self) -> list[str]:
        """The methods of the checks that drifted."""
        return [c.method for c in self.checks if c.drifted]

    def to_dict(self) -> dict[str, Any]:
        return _json_dict(
            {
                "column": self.column,
                "kind": self.kind,
                "role": self.role,
                "status": self.status,
                "drifted": self.drifted,
                "reasons": self.reasons,
                "method": self.method,
                "effect_size": self.effect_size,
                "threshold": self.threshold,
                "statistic": self.statistic,
                "p_value": self.p_value,
                "q_value": self.q_value,
                "reference_n": self.reference_n,
                "window_n": self.window_n,
                "checks": [c.to_dict() for c in self.checks],
                "details": self.details,
            }
        )


@dataclass(frozen=True)
class SchemaDrift:
    """What the traffic showed against the reference's signature.

    Counts are rows: ``missing_columns`` maps a signature column to the rows of batches
    that lacked it, ``added_columns`` a column the signature does not know to the rows
    that had it, ``type_changes`` a column to the logical types seen instead of its own,
    ``out_of_signature`` a column to the reasons its values were refused (null not
    allowed, a value outside closed categories, a value of the wrong type...).
    """

    checked: bool
    rows: int
    missing_columns: Mapping[str, int] = field(default_factory=dict)
    added_columns: Mapping[str, int] = field(default_factory=dict)
    type_changes: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    out_of_signature: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    rejected_rows: int = 0

    @property
    def changed(self) -> bool:
        return bool(self.missing_columns or self.added_columns or self.type_changes or self.out_of_signature)

    @property
    def rejected_share(self) -> float:
        return self.rejected_rows / self.rows if self.rows else 0.0

    def to_dict(self) -> dict[str, Any]:
        return _json_dict(
            {
                "checked": self.checked,
                "changed": self.changed,
                "rows": self.rows,
                "missing_columns": self.missing_columns,
                "added_columns": self.added_columns,
                "type_changes": self.type_changes,
                "out_of_signature": self.out_of_signature,
                "rejected_rows": self.rejected_rows,
                "rejected_share": self.rejected_share,
            }
        )


@dataclass(frozen=True)
class MultivariateDrift:
    """PCA reconstruction error of the window against the reference's.

    ``effect_size`` is the relative change of the mean reconstruction error; ``band`` the
    interval the reference's chunks put the window's error in, at the window's size.
    """

    columns: tuple[str, ...]
    components: int
    explained_variance: float
    reference_error: float
    window_error: float
    effect_size: float
    threshold: float
    band: tuple[float, float]
    window_rows: int
    drifted: bool
    status: Status

    def to_dict(self) -> dict[str, Any]:
        return _json_dict(
            {
                "columns": list(self.columns),
                "components": self.components,
                "explained_variance": self.explained_variance,
                "reference_error": self.reference_error,
                "window_error": self.window_error,
                "effect_size": self.effect_size,
                "threshold": self.threshold,
                "band": list(self.band),
                "window_rows": self.window_rows,
                "drifted": self.drifted,
                "status": self.status,
            }
        )


@dataclass(frozen=True)
class DriftReport:
    """Every verdict of one window against one reference.

    ``share_drifted`` is the share of evaluated features that drifted (None when none
    could be evaluated) and ``dataset_drift`` whether it reached ``config.drift_share``.
    ``status`` is ``"drift"`` when the dataset drifted, a prediction column drifted or the
    multivariate check did; ``"insufficient data"`` when no feature could be judged.
    """

    columns: tuple[ColumnDrift, ...]
    schema: SchemaDrift
    multivariate: MultivariateDrift | None
    share_drifted: float | None
    dataset_drift: bool
    status: Status
    reference_rows: int
    window_rows: int
    config: DriftConfig
    skipped: Mapping[str, str] = field(default_factory=dict)

    def column(self, name: str) -> ColumnDrift:
        for col in self.columns:
            if col.column == name:
                return col
        raise NotFoundError(f"the drift report has no column {name!r}")

    @property
    def features(self) -> list[ColumnDrift]:
        return [c for c in self.columns if c.role == "feature"]

    @property
    def predictions(self) -> list[ColumnDrift]:
        return [c for c in self.columns if c.role == "prediction"]

    @property
    def drifted_columns(self) -> list[str]:
        return [c.column for c in self.columns if c.drifted]

    def to_dict(self) -> dict[str, Any]:
        return _json_dict(
            {
                "status": self.status,
                "dataset_drift": self.dataset_drift,
                "share_drifted": self.share_drifted,
                "drifted_columns": self.drifted_columns,
                "reference_rows": self.reference_rows,
                "window_rows": self.window_rows,
                "columns": [c.to_dict() for c in self.columns],
                "schema": self.schema.to_dict(),
                "multivariate": None if self.multivariate is None else self.multivariate.to_dict(),
                "skipped": self.skipped,
                "config": self.config.to_dict(),
            }
        )
