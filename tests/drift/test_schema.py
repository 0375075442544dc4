"""Schema drift seen in traffic, against the version's signature."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from passerelle.drift import ReferenceStats, compute_drift
from passerelle.signature import infer_signature


@pytest.fixture
def training() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {
            "age": rng.integers(18, 90, 5_000),
            "income": rng.lognormal(10, 0.5, 5_000),
            "plan": rng.choice(["basic", "premium"], 5_000),
            "region": rng.choice(["north", "south", "east"], 5_000),
        }
    )


def test_clean_traffic_changes_nothing(training: pd.DataFrame) -> None:
    reference = ReferenceStats.from_frame(training, infer_signature(training, closed=["plan"]))
    report = compute_drift(reference, training.sample(3_000, random_state=1))
    assert not report.schema.changed
    assert report.schema.checked
    assert report.schema.rows == 3_000
    assert report.schema.rejected_rows == 0


def test_traffic_against_the_signature(training: pd.DataFrame) -> None:
    signature = infer_signature(training, closed=["plan"])
    reference = ReferenceStats.from_frame(training, signature)
    traffic = training.sample(4_000, random_state=2).reset_index(drop=True)
    traffic = traffic.drop(columns=["region"]).assign(channel="web")
    traffic["plan"] = traffic["plan"].where(traffic.index % 10 != 0, "gold")  # outside closed categories
    traffic["income"] = traffic["income"].astype(object)
    traffic.loc[:99, "income"] = "n/a"  # text in a numeric column
    traffic["age"] = traffic["age"].astype(float)
    traffic.loc[:49, "age"] = np.nan  # the signature says age is never null

    report = compute_drift(reference, traffic)
    schema = report.schema
    assert schema.changed
    assert schema.missing_columns == {"region": 4_000}
    assert schema.added_columns == {"channel": 4_000}
    assert schema.type_changes == {"income": {"mixed": 4_000}}
    assert schema.out_of_signature["plan"] == {"value not among the allowed categories": 400}
    assert schema.out_of_signature["age"] == {"null not allowed": 50}
    assert schema.out_of_signature["income"] == {"expected float": 100}
    assert schema.rejected_rows == 4_000  # every row lacks region

    # The drift columns see the same story.
    assert report.column("region").status == "insufficient data"
    assert report.column("income").details["window_invalid"] == 100
    assert report.column("plan").reasons == ["jensenshannon", "new categories"]
    assert report.column("plan").details["new_levels"] == {"gold": 400}


def test_a_column_arriving_as_another_type(training: pd.DataFrame) -> None:
    reference = ReferenceStats.from_frame(training)
    traffic = training.head(2_000).assign(age=lambda f: f["age"].map(lambda v: f"{v} years"))
    report = compute_drift(reference, traffic)
    assert report.schema.type_changes == {"age": {"string": 2_000}}
    age = report.column("age")
    assert age.details["window_invalid"] == 2_000
    # No value left to compare, and none the model can use: the missing rate says so.
    assert age.window_n == 0
    assert age.reasons == ["missing rate"]


def test_validation_can_be_left_out(training: pd.DataFrame) -> None:
    reference = ReferenceStats.from_frame(training)
    sketch = reference.window(validate=False).update(training.drop(columns=["plan"]))
    report = compute_drift(reference, sketch)
    assert not report.schema.checked
    assert not report.schema.changed
