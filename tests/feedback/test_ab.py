"""A/B verdicts, calibrated by seeded simulation the way they are used: asked again and again.

Each simulation draws every run's whole stream of labelled rows at once (vectorised); the
verdict is then asked at several points of each stream, as a monitor would.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pytest

from passerelle import performance as perf
from passerelle.errors import InvalidInputError

RUNS = 200


@dataclass
class _Streams:
    """Cumulative counts per run and row: rows and correct answers of each route."""

    n_a: npt.NDArray[np.int64]
    n_b: npt.NDArray[np.int64]
    hits_a: npt.NDArray[np.int64]
    hits_b: npt.NDArray[np.int64]

    def verdict(self, run: int, rows: int, **options: object) -> perf.Verdict:
        i = rows - 1
        a = perf.proportion_estimate(int(self.hits_a[run, i]), int(self.n_a[run, i]))
        b = perf.proportion_estimate(int(self.hits_b[run, i]), int(self.n_b[run, i]))
        return perf.ab_verdict(a, b, **options)  # type: ignore[arg-type]


def _accuracy_streams(acc_a: float, acc_b: float, rows: int, seed: int, share_b: float = 0.5) -> _Streams:
    rng = np.random.default_rng(seed)
    to_b = rng.random((RUNS, rows)) < share_b
    hit = rng.random((RUNS, rows)) < np.where(to_b, acc_b, acc_a)
    return _Streams(
        np.cumsum(~to_b, axis=1),
        np.cumsum(to_b, axis=1),
        np.cumsum(hit & ~to_b, axis=1),
        np.cumsum(hit & to_b, axis=1),
    )


def test_identical_models_rarely_get_a_false_b_better_even_when_asked_after_every_batch() -> None:
    streams = _accuracy_streams(0.8, 0.8, rows=10_000, seed=31)
    looks = range(250, 10_001, 250)  # 40 looks per run

    false = sum(
        any(streams.verdict(run, rows, mde=0.05).verdict == "B better" for rows in looks)
        for run in range(RUNS)
    )
    # The same streams read the same way with a test meant to be read once: this is why the
    # sequential design is the default.
    peeked = sum(
        any(
            streams.verdict(run, rows, mde=0.05, design="fixed").verdict == "B better" for rows in looks[1::2]
        )
        for run in range(RUNS)
    )

    assert false / RUNS <= 0.05
    assert peeked / RUNS > 0.05


def test_a_truly_better_b_is_found_once_the_announced_number_of_rows_is_reached() -> None:
    streams = _accuracy_streams(0.80, 0.85, rows=20_000, seed=32)
    found = 0
    for run in range(RUNS):
        first = streams.verdict(run, 400, mde=0.05)
        assert first.verdict == "not enough data yet"
        assert first.message == f"not enough data yet (about {first.needed:,} more labelled rows needed)"
        announced = 400 + first.needed
        found += streams.verdict(run, announced, mde=0.05).verdict == "B better"
    assert found / RUNS >= 0.70


def test_an_uneven_split_is_planned_for() -> None:
    streams = _accuracy_streams(0.80, 0.85, rows=40_000, seed=33, share_b=0.2)
    found = 0
    for run in range(RUNS):
        announced = 1000 + streams.verdict(run, 1000, mde=0.05).needed
        found += streams.verdict(run, min(announced, 40_000), mde=0.05).verdict == "B better"
    assert found / RUNS >= 0.70


@pytest.mark.parametrize(("acc_b", "expected"), [(0.80, "no false verdicts"), (0.85, "power")])
def test_the_fixed_horizon_design_read_once_at_the_announced_horizon(acc_b: float, expected: str) -> None:
    streams = _accuracy_streams(0.80, acc_b, rows=20_000, seed=34)
    verdicts = []
    for run in range(RUNS):
        rows = 400
        # Follow the announcements: each look either answers or says how many more rows.
        for _ in range(20):
            v = streams.verdict(run, rows, mde=0.05, design="fixed")
            if v.verdict != "not enough data yet":
                break
            rows = min(rows + max(v.needed, 1), 20_000)
        verdicts.append(v)
        assert v.verdict == "not enough data yet" or v.needed == 0
    better = sum(v.verdict == "B better" for v in verdicts) / RUNS
    if expected == "power":
        assert better >= 0.70
        assert "Newcombe" in verdicts[0].test
    else:
        assert better <= 0.05
        assert sum(v.verdict == "no significant difference" for v in verdicts) / RUNS >= 0.90


_AucStreams = tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_], npt.NDArray[np.float64]]


def _auc_streams(shift_a: float, shift_b: float, rows: int, seed: int) -> _AucStreams:
    rng = np.random.default_rng(seed)
    to_b = rng.random((RUNS, rows)) < 0.5
    positive = rng.random((RUNS, rows)) < 0.3
    score = rng.normal(size=(RUNS, rows)) + np.where(positive, np.where(to_b, shift_b, shift_a), 0.0)
    return to_b, positive, score


def _auc_verdict(streams: _AucStreams, run: int, rows: int) -> perf.Verdict:
    to_b, positive, score = (streams[0][run, :rows], streams[1][run, :rows], streams[2][run, :rows])
    a = perf.arm_estimate("roc_auc", positive[~to_b], score=score[~to_b], positive=True)
    b = perf.arm_estimate("roc_auc", positive[to_b], score=score[to_b], positive=True)
    return perf.ab_verdict(a, b, mde=0.05)


def test_auc_identical_models_rarely_get_a_false_b_better() -> None:
    streams = _auc_streams(1.0, 1.0, rows=10_000, seed=35)
    looks = (1000, 2500, 4000, 6000, 8000, 10_000)
    false = sum(
        any(_auc_verdict(streams, run, n).verdict == "B better" for n in looks) for run in range(RUNS)
    )
    assert false / RUNS <= 0.05


def test_auc_a_truly_better_b_is_found_at_the_announced_horizon() -> None:
    streams = _auc_streams(1.0, 1.25, rows=12_000, seed=36)  # AUC 0.76 against 0.81
    found = 0
    for run in range(RUNS):
        announced = 600 + _auc_verdict(streams, run, 600).needed
        verdict = _auc_verdict(streams, run, min(announced, 12_000))
        found += verdict.verdict == "B better"
    assert found / RUNS >= 0.70
    assert "mSPRT" in verdict.test


def test_losses_are_better_when_lower() -> None:
    rng = np.random.default_rng(37)
    y = rng.normal(size=3000)
    a = perf.arm_estimate("mae", y, y_pred=y + rng.normal(0.0, 1.0, 3000))
    b = perf.arm_estimate("mae", y, y_pred=y + rng.normal(0.0, 0.6, 3000))

    verdict = perf.ab_verdict(a, b)
    swapped = perf.ab_verdict(b, a)

    assert verdict.verdict == "B better"
    assert verdict.difference < 0
    assert verdict.mde == pytest.approx(0.05 * a.value)  # 5% of route A's error by default
    assert swapped.verdict == "A better"


def test_the_verdict_says_what_it_used() -> None:
    verdict = perf.ab_verdict(perf.proportion_estimate(900, 1000), perf.proportion_estimate(700, 1000))
    assert verdict.verdict == "A better"
    assert verdict.high < 0
    assert verdict.confidence == 0.95
    assert verdict.mde == 0.02
    assert verdict.design == "sequential"
    assert verdict.p_value < 1e-6
    assert verdict.to_dict()["message"] == str(verdict)
    fixed = perf.ab_verdict(perf.proportion_estimate(5, 10), perf.proportion_estimate(5, 10), design="fixed")
    assert fixed.verdict == "not enough data yet"
    assert fixed.horizon > 10_000  # two points of accuracy need many rows


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"mde": -0.1}, "minimum detectable effect must be positive"),
        ({"alpha": 0.7}, "alpha must be in"),
        ({"design": "bayesian"}, "unknown design"),
    ],
)
def test_invalid_options_are_refused(options: dict[str, object], message: str) -> None:
    arm = perf.proportion_estimate(50, 100)
    with pytest.raises(InvalidInputError, match=message):
        perf.ab_verdict(arm, arm, **options)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="unknown A/B metric"):
        perf.arm_estimate("precision", [1, 0])
