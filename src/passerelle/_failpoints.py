"""Named points where a test can freeze a real process to kill it there.

``PASSERELLE_FAILPOINTS=register.before_commit=pause`` makes the process announce the point on
stderr and wait forever, so a crash test can ``kill -9`` it at exactly that moment;
``=raise`` raises instead. Unset (always, in production), a failpoint costs one dict lookup.
"""

from __future__ import annotations

import os
import sys
import time


def _parse(spec: str) -> dict[str, str]:
    points: dict[str, str] = {}
    for item in spec.split(","):
        name, _, action = item.strip().partition("=")
        if name:
            points[name] = action or "pause"
    return points


_ACTIVE = _parse(os.environ.get("PASSERELLE_FAILPOINTS", ""))


class FailpointError(RuntimeError):
    """Raised at a failpoint set to ``raise``."""


def failpoint(name: str) -> None:
    action = _ACTIVE.get(name)
    if action is None:
        return
    if action == "raise":
        raise FailpointError(f"failpoint {name}")
    sys.stderr.write(f"failpoint {name} reached\n")
    sys.stderr.flush()
    while True:  # until killed
        time.sleep(3600)
