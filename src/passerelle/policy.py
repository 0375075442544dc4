"""Traffic policies: routes with weights, sticky keys, shadows, canaries, batching.

A policy names versions by number only: a revision pins what an alias resolved to when it
was made, so moving the alias later does not silently change what serves.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import re
from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel, Field, field_validator, model_validator

from passerelle.errors import InvalidInputError
from passerelle.references import parse_ref

STICKY_BUCKETS = 10_000


class RouteSpec(BaseModel):
    model: str
    version: int = Field(ge=1)
    weight: int = Field(ge=0, le=100)

    @property
    def ref(self) -> str:
        return f"{self.model}:{self.version}"


class ShadowSpec(BaseModel):
    model: str
    version: int = Field(ge=1)
    percent: float = Field(100.0, gt=0, le=100)

    @property
    def ref(self) -> str:
        return f"{self.model}:{self.version}"


class CanaryGates(BaseModel):
    max_error_rate: float | None = Field(0.05, ge=0, le=1)
    max_p99_ms: float | None = Field(None, gt=0)
    max_disagreement: float | None = Field(None, ge=0, le=1)
    #: below this many canary requests in a step, the step waits instead of judging
    min_requests: int = Field(20, ge=1)


class CanarySpec(BaseModel):
    model: str
    version: int = Field(ge=1)
    steps: list[int]
    step_interval_s: float = Field(gt=0)
    gates: CanaryGates = CanaryGates()
    step_index: int = 0
    step_started_at: dt.datetime | None = None

    @field_validator("steps")
    @classmethod
    def _steps_grow_to_100(cls, steps: list[int]) -> list[int]:
        if not steps:
            raise ValueError("needs at least one step")
        if any(s <= 0 or s > 100 for s in steps) or steps != sorted(set(steps)):
            raise ValueError("steps must be increasing percentages between 1 and 100")
        if steps[-1] != 100:
            raise ValueError("the last step must be 100")
        return steps

    @property
    def ref(self) -> str:
        return f"{self.model}:{self.version}"

    @property
    def weight(self) -> int:
        return self.steps[min(self.step_index, len(self.steps) - 1)]


class BatchingSpec(BaseModel):
    max_batch_rows: int = Field(256, ge=1, le=100_000)
    max_wait_ms: float = Field(2.0, ge=0, le=10_000)
    max_queue_rows: int = Field(4096, ge=1)


class RetentionSpec(BaseModel):
    """How long an endpoint's logged predictions are kept; None follows the server's default."""

    #: predictions older than this many days are deleted; 0 keeps them whatever their age
    max_age_days: int | None = Field(None, ge=0)
    #: only the newest this many predictions are kept; 0 keeps them all
    max_rows: int | None = Field(None, ge=0)


class Policy(BaseModel):
    routes: list[RouteSpec]
    sticky_key: str | None = None
    shadows: list[ShadowSpec] = Field(default_factory=list)
    canary: CanarySpec | None = None
    batching: BatchingSpec = BatchingSpec()
    #: column whose value identifies the business entity (feedback by key, erasure)
    key_column: str | None = None
    #: input columns never written to the prediction log; a redacted key column is logged hashed
    redact: list[str] = Field(default_factory=list)
    retention: RetentionSpec = RetentionSpec()

    @field_validator("redact")
    @classmethod
    def _column_names(cls, names: list[str]) -> list[str]:
        for name in names:
            if not name or not name.strip() or len(name) > 200:
                raise ValueError(f"{name!r} is not a column name (1 to 200 characters)")
        # Naming a column twice is harmless: keep the first mention.
        return list(dict.fromkeys(names))

    @model_validator(mode="after")
    def _consistent(self) -> Policy:
        if not self.routes:
            raise ValueError("a policy needs at least one route")
        refs = [r.ref for r in self.routes]
        if len(set(refs)) != len(refs):
            raise ValueError(f"a version appears twice in the routes: {', '.join(refs)}")
        total = sum(r.weight for r in self.routes)
        if total != 100:
            shown = ", ".join(f"{r.ref}={r.weight}" for r in self.routes)
            raise ValueError(f"route weights must sum to 100, got {total} ({shown})")
        if self.canary is not None and self.canary.ref not in refs:
            raise ValueError(f"the canary {self.canary.ref} must be one of the routes")
        served = set(refs)
        for s in self.shadows:
            if s.ref in served:
                raise ValueError(f"{s.ref} cannot both serve and shadow")
        return self

    def versions(self) -> list[str]:
        """Every version the policy needs loaded, served ones first."""
        out = [r.ref for r in self.routes]
        out += [s.ref for s in self.shadows if s.ref not in out]
        return out

    @property
    def primary(self) -> RouteSpec:
        """The baseline route: the heaviest one that is not the canary."""
        candidates = [r for r in self.routes if self.canary is None or r.ref != self.canary.ref]
        return max(candidates or self.routes, key=lambda r: r.weight)


@contextlib.contextmanager
def readable_errors() -> Iterator[None]:
    """Turn pydantic's validation errors on policy parts into one readable line."""
    from pydantic import ValidationError

    try:
        yield
    except ValidationError as exc:
        parts = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"])
            message = str(err["msg"]).removeprefix("Value error, ")
            parts.append(f"{where}: {message}" if where else message)
        raise InvalidInputError("invalid traffic policy: " + "; ".join(parts)) from exc


def make_policy(**fields: Any) -> Policy:
    with readable_errors():
        return Policy(**fields)
    raise AssertionError("unreachable")  # pragma: no cover - readable_errors always raises or returns


_WEIGHTED = re.compile(r"^(?P<ref>[^=]+?)(?:=(?P<num>\d+(?:\.\d+)?))?$")


def parse_weighted(text: str, what: str) -> tuple[str, float | None]:
    """``churn:3=90`` → ("churn:3", 90.0); ``churn@champion`` → (…, None)."""
    match = _WEIGHTED.match(text.strip())
    if not match:
        raise InvalidInputError(f"--{what} {text!r}: expected MODEL_REF[=NUMBER]")
    ref = match.group("ref")
    parse_ref(ref)
    num = match.group("num")
    if num is None:
        return ref, None
    weight = float(num)
    if weight > 100:
        raise InvalidInputError(f"--{what} {text!r}: a percentage is at most 100")
    return ref, weight


#: 100 years
MAX_DURATION_S = 100 * 366 * 86400.0
_DURATION = re.compile(r"^(?P<n>\d+(?:\.\d+)?)(?P<unit>ms|s|m|h|d)?$")
_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def parse_duration(text: str, what: str = "duration") -> float:
    """``10m`` → 600.0 seconds; ``30s``, ``2h``, ``500ms``; a bare number is seconds."""
    match = _DURATION.match(text.strip())
    if not match:
        raise InvalidInputError(f"{what} {text!r}: use a number with ms, s, m, h or d, such as 10m")
    value = float(match.group("n")) * _SECONDS[match.group("unit")]
    if value <= 0:
        raise InvalidInputError(f"{what} {text!r} must be positive")
    if value > MAX_DURATION_S:
        # Beyond this, adding it to a date overflows; no schedule or expiry needs that long.
        raise InvalidInputError(f"{what} {text!r} is longer than 100 years")
    return value


def parse_steps(text: str) -> list[int]:
    try:
        return [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise InvalidInputError(f"--steps {text!r}: expected percentages such as 5,25,50,100") from None


def sticky_bucket(key: str) -> int:
    """A stable bucket in [0, 10000) for a business key, the same in every process and release."""
    import hashlib

    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % STICKY_BUCKETS
