"""A model for the python flavor that takes its time, to run into the request timeout."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

#: longer than the timeout of the limits server, short enough to keep the tests quick
SLOW_SECONDS = 2.5


def slow(frame: Any) -> Any:
    time.sleep(SLOW_SECONDS)
    return np.zeros(len(frame))
