"""Properties of the traffic-policy parsers: on any text, a value or one readable InvalidInputError."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from passerelle.errors import InvalidInputError, InvalidReferenceError
from passerelle.policy import Policy, make_policy, parse_duration, parse_steps, parse_weighted

PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

#: text users type on a command line, and text that only looks like it
SHAPED = st.from_regex(r"\A\s?[a-z]{0,6}[:@]?[0-9a-z]{0,4}(=[0-9]{0,400}(\.[0-9]{0,4})?)?[a-z%]{0,2}\s?\Z")
TEXT = st.one_of(st.text(max_size=40), SHAPED)


def attempt(call: Callable[[], Any]) -> tuple[Any, str | None]:
    """What ``call`` returns, or the message of the user-facing error it raised (any other fails)."""
    try:
        return call(), None
    except (InvalidInputError, InvalidReferenceError) as exc:
        message = str(exc)
    assert message.strip()
    return None, message


@PROPERTY
@given(TEXT)
@example("churn:3=90")
@example("churn:3=" + "9" * 400)
@example("=")
def test_parse_weighted_returns_a_reference_or_refuses(text: str) -> None:
    parsed, error = attempt(lambda: parse_weighted(text, "route"))
    if error is not None:
        assert "--route" in error or "model reference" in error, error
        return
    ref, number = parsed
    assert ref.strip()
    assert number is None or number >= 0


@PROPERTY
@given(st.one_of(TEXT, st.from_regex(r"\A[0-9]{1,400}(\.[0-9]{0,3})?(ms|s|m|h|d)?\Z")))
@example("0s")
@example("9" * 400 + "d")
def test_parse_duration_returns_a_positive_number_or_refuses(text: str) -> None:
    seconds, error = attempt(lambda: parse_duration(text, "--interval"))
    if error is not None:
        assert error.startswith("--interval "), error
        return
    assert seconds > 0


@PROPERTY
@given(st.one_of(TEXT, st.lists(st.integers(-5, 200).map(str), max_size=6).map(",".join)))
@example("1" * 5000)
@example("5,25,50,100")
def test_parse_steps_returns_integers_or_refuses(text: str) -> None:
    steps, error = attempt(lambda: parse_steps(text))
    if error is not None:
        assert error.startswith("--steps "), error
        return
    assert all(isinstance(s, int) for s in steps)


JSONISH = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**70), 2**70),
        st.floats(),
        st.text(max_size=8),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)
FIELDS = st.sampled_from(
    ["routes", "sticky_key", "shadows", "canary", "batching", "key_column", "redact", "retention", "other"]
)
ROUTE = st.fixed_dictionaries(
    {"model": st.sampled_from(["churn", "", "x" * 3]), "version": JSONISH, "weight": JSONISH}
)


@PROPERTY
@given(
    st.dictionaries(
        FIELDS,
        st.one_of(JSONISH, st.lists(ROUTE, max_size=3)),
        max_size=5,
    )
)
@example({"routes": [{"model": "churn", "version": 1, "weight": 100}]})
@example({"routes": [{"model": "churn", "version": 1, "weight": float("nan")}]})
@example({"routes": [{"model": "churn", "version": 1, "weight": 100}], "canary": {"steps": [], "model": "c"}})
def test_make_policy_builds_a_policy_or_refuses_in_one_line(fields: dict[str, Any]) -> None:
    policy, error = attempt(lambda: make_policy(**fields))
    if error is not None:
        assert error.startswith("invalid traffic policy: "), error
        assert "\n" not in error
        return
    assert isinstance(policy, Policy)
    assert sum(r.weight for r in policy.routes) == 100


def test_the_readable_error_names_the_field() -> None:
    with pytest.raises(InvalidInputError, match=r"routes\.0\.weight"):
        make_policy(routes=[{"model": "churn", "version": 1, "weight": "most"}])
