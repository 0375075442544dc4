"""The demo's retraining step: a pipeline entry point that fits the churn model on fresh data."""

from __future__ import annotations

from typing import Any

from sklearn.pipeline import Pipeline

from passerelle.demo.data import make_model, split_features
from passerelle.tables import read_table


def fit(input_path: str, output_dir: str, params: dict[str, Any]) -> Pipeline:
    """Fit ``params["kind"]`` (default gradient boosting) on the labelled rows at ``input_path``."""
    frame = read_table(input_path)
    features, label = split_features(frame)
    model = make_model(str(params.get("kind", "hgb")), seed=int(params.get("seed", 0)))
    return model.fit(features, label)
