"""Small models and data shared by tests."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression


def small_frame(n: int = 200, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "age": rng.integers(18, 80, n),
            "income": rng.normal(3000, 800, n),
            "score": rng.random(n),
        }
    )
    label = (frame["income"] / 1000 + frame["score"] * 2 + rng.normal(0, 0.5, n) > 4).astype(int).to_numpy()
    return frame, label


def small_model(seed: int = 0) -> tuple[LogisticRegression, pd.DataFrame]:
    frame, label = small_frame(seed=seed)
    return LogisticRegression(max_iter=500).fit(frame, label), frame
