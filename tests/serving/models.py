"""Models referenced by the python flavor in tests."""

from __future__ import annotations

from typing import Any

import numpy as np


def explode(frame: Any) -> Any:
    """Fails on any row whose age is 999, like a model with a bug on an edge case."""
    if (frame["age"] == 999).any():
        raise RuntimeError("this model fails on age 999")
    return np.zeros(len(frame))
