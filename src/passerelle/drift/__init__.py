"""Drift: how far a window of traffic moved from a reference, per column and as a whole.

Pure computation: no storage, no HTTP. The usual flow::

    reference = ReferenceStats.from_frame(train, version_signature)   # once per version
    stored = reference.to_dict()                                      # JSON-safe
    window = reference.window()
    for batch in batches:                                             # any number of rows
        window.update(batch)
    report = compute_drift(reference, window)                        # time ~ window's size
    report.status, report.drifted_columns, report.to_dict()

See ``docs/drift.md`` for the methods, the defaults and why they were chosen.
"""

from passerelle.drift.config import DriftConfig
from passerelle.drift.engine import benjamini_hochberg, compute_drift
from passerelle.drift.exact import (
    Significance,
    cramers_v,
    exact_chi2,
    exact_js,
    exact_ks,
    exact_wasserstein,
    numeric_js,
    psi,
    psi_from_counts,
)
from passerelle.drift.histograms import CategoricalPair, Kind, NumericPair, Pair, Role
from passerelle.drift.methods import (
    ChiSquare,
    DriftMethod,
    JensenShannon,
    KolmogorovSmirnov,
    PopulationStability,
    Wasserstein,
    method_from_dict,
    register_method,
    registered_methods,
)
from passerelle.drift.report import Check, ColumnDrift, DriftReport, MultivariateDrift, SchemaDrift, Status
from passerelle.drift.sketch import ReferenceStats, WindowSketch, coalesce_windows, merge_windows

__all__ = [
    "CategoricalPair",
    "Check",
    "ChiSquare",
    "ColumnDrift",
    "DriftConfig",
    "DriftMethod",
    "DriftReport",
    "JensenShannon",
    "Kind",
    "KolmogorovSmirnov",
    "MultivariateDrift",
    "NumericPair",
    "Pair",
    "PopulationStability",
    "ReferenceStats",
    "Role",
    "SchemaDrift",
    "Significance",
    "Status",
    "Wasserstein",
    "WindowSketch",
    "benjamini_hochberg",
    "coalesce_windows",
    "compute_drift",
    "cramers_v",
    "exact_chi2",
    "exact_js",
    "exact_ks",
    "exact_wasserstein",
    "merge_windows",
    "method_from_dict",
    "numeric_js",
    "psi",
    "psi_from_counts",
    "register_method",
    "registered_methods",
]
