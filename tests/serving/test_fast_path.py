"""The gateway's per-value fast path and the batcher's cheap concatenation give exactly what the
general path gives: the same acceptance, the same frame, the same batching key."""

from __future__ import annotations

import string
from typing import Any, cast

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from passerelle.serving.batcher import Batcher, BatchOutput, concat_frames, frame_key
from passerelle.serving.gateway import Runner
from passerelle.serving.shadow import compare
from passerelle.signature import Column, Signature

CATEGORIES = ["a", "b", "c"]


@st.composite
def signatures(draw: st.DrawFn) -> Signature:
    names = draw(st.lists(st.sampled_from(string.ascii_lowercase[:8]), min_size=1, max_size=5, unique=True))
    columns = []
    for name in names:
        kind = draw(st.sampled_from(["float", "integer", "boolean", "string"]))
        closed = kind == "string" and draw(st.booleans())
        columns.append(
            Column(name, kind, draw(st.booleans()), categories=CATEGORIES if closed else None, closed=closed)
        )
    return Signature(columns)


VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**60), max_value=2**60),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["a", "b", "z", ""]),
)


@st.composite
def requests(draw: st.DrawFn) -> tuple[Signature, dict[str, list[Any]], int]:
    signature = draw(signatures())
    rows = draw(st.integers(min_value=1, max_value=4))
    names = list(signature.names)
    if draw(st.booleans()):
        names.append("extra")
    if len(names) > 1 and draw(st.integers(0, 9)) == 0:
        names.pop(draw(st.integers(0, len(names) - 1)))  # a missing column now and then
    noisy = draw(st.booleans())
    columns: dict[str, list[Any]] = {}
    for name in names:
        kind = next((c.type for c in signature.columns if c.name == name), "float")
        plain = {
            "float": st.floats(allow_nan=False, allow_infinity=False, width=32),
            "integer": st.integers(-1000, 1000),
            "boolean": st.booleans(),
            "string": st.sampled_from(CATEGORIES),
        }[kind]
        # Half the requests hold only values of each column's own kind (the fast path's case),
        # the others any value anywhere.
        values = st.one_of(plain, VALUES) if noisy else plain
        columns[name] = draw(st.lists(values, min_size=rows, max_size=rows))
    return signature, columns, rows


def runner(signature: Signature) -> Runner:
    # prepare() uses the signature only; the loaded model and the batcher play no part.
    return Runner("m:1", "m", 1, cast(Any, None), cast(Batcher, None), signature, None)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests())
def test_the_fast_path_accepts_only_what_validation_accepts_and_builds_the_same_frame(
    drawn: tuple[Signature, dict[str, list[Any]], int],
) -> None:
    signature, columns, rows = drawn
    prepared = runner(signature).prepare(columns, rows)
    if prepared is None:
        return  # the gateway runs the general validation, whose messages are tested elsewhere
    frame, extra, key = prepared
    checked = signature.validate(pd.DataFrame(columns))
    assert checked.ok, checked.problems
    assert extra == list(checked.extra_columns)
    expected = signature.conform(pd.DataFrame(columns))
    pd.testing.assert_frame_equal(frame, expected)
    assert key == frame_key(frame)


def test_the_fast_path_declines_large_requests_and_missing_columns() -> None:
    signature = Signature([Column("x", "float", False), Column("y", "integer", True)])
    fast = runner(signature)
    assert fast.prepare({"x": [1.0], "y": [None]}, 1) is not None
    assert fast.prepare({"x": [1.0]}, 1) is None
    many = Runner.FAST_ROWS + 1
    assert fast.prepare({"x": [1.0] * many, "y": [1] * many}, many) is None


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.integers(min_value=1, max_value=5), min_size=1, max_size=6),
    st.sampled_from(["float", "mixed"]),
)
def test_concatenation_equals_pandas(sizes: list[int], layout: str) -> None:
    columns = pd.Index(["a", "b", "c"])
    rng = np.random.default_rng(len(sizes))
    frames = []
    for n in sizes:
        data: dict[str, Any] = {"a": rng.random(n), "b": rng.random(n), "c": rng.random(n)}
        if layout == "mixed":
            data["b"] = rng.integers(0, 9, n)
        frames.append(pd.DataFrame(data, columns=columns))
    joined = concat_frames(frames)
    pd.testing.assert_frame_equal(joined, pd.concat(frames, ignore_index=True))
    assert frame_key(joined) == frame_key(frames[0])
    if layout == "float":
        # Row-major, as pd.concat gives it: models that walk rows are much slower otherwise.
        assert joined.to_numpy().flags["C_CONTIGUOUS"]


def test_a_shadow_chunk_is_compared_as_its_requests_would_be() -> None:
    from passerelle.serving.shadow import _joined

    served = [
        BatchOutput(np.array([0, 1]), np.array([[0.9, 0.1], [0.3, 0.7]])),
        BatchOutput(np.array([1]), np.array([[0.2, 0.8]])),
    ]
    shadow = BatchOutput(np.array([0, 0, 1]), np.array([[0.8, 0.2], [0.6, 0.4], [0.1, 0.9]]))
    together = _joined(served)
    assert together is not None
    agreement, diff = compare(together, shadow)
    first = compare(served[0], shadow.slice(0, 2))
    second = compare(served[1], shadow.slice(2, 3))
    assert agreement == first[0] + second[0] == [True, False, True]
    assert np.allclose(diff, first[1] + second[1])
    # Labels of another type would compare differently once concatenated: not joined.
    assert _joined([served[0], BatchOutput(np.array(["1"]), np.array([[0.2, 0.8]]))]) is None
