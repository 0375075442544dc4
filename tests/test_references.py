from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from passerelle.errors import InvalidReferenceError
from passerelle.references import VersionRef, parse_dataset_ref, parse_ref


def test_three_forms() -> None:
    assert parse_ref("churn") == VersionRef("churn")
    assert parse_ref("churn:3") == VersionRef("churn", number=3)
    assert parse_ref("churn@champion") == VersionRef("churn", alias="champion")
    assert str(parse_ref("churn@champion")) == "churn@champion"


@pytest.mark.parametrize(
    "bad", ["churn:x", "churn:", "churn:0", "churn:-1", "churn@", "churn@3", "", ":3", "a b"]
)
def test_malformed_references_are_refused_with_the_reason(bad: str) -> None:
    with pytest.raises(InvalidReferenceError, match="invalid model reference"):
        parse_ref(bad)


def test_dataset_refs_have_no_alias() -> None:
    assert parse_dataset_ref("train:2") == ("train", 2)
    assert parse_dataset_ref("train") == ("train", None)
    with pytest.raises(InvalidReferenceError):
        parse_dataset_ref("train@latest")


@given(
    name=st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,30}", fullmatch=True),
    number=st.integers(min_value=1, max_value=10**9),
)
def test_round_trip(name: str, number: int) -> None:
    assert parse_ref(str(VersionRef(name, number=number))) == VersionRef(name, number=number)
