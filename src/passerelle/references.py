"""Parse ``churn``, ``churn:3`` and ``churn@champion``: the three ways to name a version."""

from __future__ import annotations

import re
from dataclasses import dataclass

from passerelle.errors import InvalidReferenceError

NAME = r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,199}"
_NAME_RE = re.compile(rf"^{NAME}$")
_REF_RE = re.compile(rf"^(?P<name>{NAME})(?:(?P<sep>[:@])(?P<rest>.*))?$")


@dataclass(frozen=True)
class VersionRef:
    """A parsed reference. Exactly one of ``number`` and ``alias`` is set, or neither (latest)."""

    model: str
    number: int | None = None
    alias: str | None = None

    def __str__(self) -> str:
        if self.number is not None:
            return f"{self.model}:{self.number}"
        if self.alias is not None:
            return f"{self.model}@{self.alias}"
        return self.model


def check_name(name: str, what: str = "name") -> str:
    if not _NAME_RE.match(name):
        raise InvalidReferenceError(
            f"invalid {what} {name!r}: use letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return name


def parse_ref(text: str) -> VersionRef:
    match = _REF_RE.match(text.strip())
    if not match:
        raise InvalidReferenceError(
            f"invalid model reference {text!r}: expected NAME, NAME:VERSION or NAME@ALIAS"
        )
    name, sep, rest = match.group("name"), match.group("sep"), match.group("rest")
    if sep is None:
        return VersionRef(name)
    if sep == ":":
        if not rest or not rest.isdigit() or int(rest) < 1:
            raise InvalidReferenceError(
                f"invalid model reference {text!r}: the version after ':' must be a positive whole number"
            )
        return VersionRef(name, number=int(rest))
    if not rest or not _NAME_RE.match(rest) or rest.isdigit():
        raise InvalidReferenceError(
            f"invalid model reference {text!r}: the alias after '@' must be a name such as 'champion'"
        )
    return VersionRef(name, alias=rest)


def parse_dataset_ref(text: str) -> tuple[str, int | None]:
    """``churn-train`` or ``churn-train:2`` (aliases do not exist for datasets)."""
    ref = parse_ref(text)
    if ref.alias is not None:
        raise InvalidReferenceError(f"invalid dataset reference {text!r}: expected NAME or NAME:VERSION")
    return ref.model, ref.number
