"""One client contract, run against both kinds of client.

Every test takes ``any_kind_client``: a :class:`LocalClient` on a fresh store, then a
:class:`RemoteClient` talking to a real server on a fresh store. Exact messages are
asserted, so an error says the same thing whichever way the store is reached.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import skops.io
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

from passerelle.client import Client
from passerelle.errors import (
    ConflictError,
    InvalidInputError,
    InvalidReferenceError,
    NotFoundError,
    SchemaError,
    TrustRequiredError,
    UnknownFlavorError,
)
from tests.api.models import Shift
from tests.helpers import small_frame, small_model


@pytest.fixture
def train_file(tmp_path: Path) -> Path:
    frame, label = small_frame()
    path = tmp_path / "train.parquet"
    frame.assign(churned=label).to_parquet(path, index=False)
    return path


def test_register_an_object_with_sample_metrics_params_tags_and_dataset(
    any_kind_client: Client, train_file: Path
) -> None:
    model, frame = small_model()
    dataset = any_kind_client.register_dataset(train_file, "churn-train", reason="training data")

    info = any_kind_client.register(
        model,
        "churn",
        sample=frame,
        metrics={"auc": np.float64(0.91)},
        params={"C": 1.0, "solver": "lbfgs"},
        tags={"team": "retention"},
        dataset="churn-train",
        description="first try",
        reason="weekly retrain",
    )

    assert (info.ref, info.model, info.number, info.flavor) == ("churn:1", "churn", 1, "sklearn")
    assert info.metrics == {"auc": 0.91}
    assert info.params == {"C": 1.0, "solver": "lbfgs"}
    assert info.tags == {"team": "retention"}
    assert info.dataset == "churn-train:1"
    assert info.lineage["dataset_fingerprint"] == dataset.fingerprint
    assert info.description == "first try"
    assert info.created_by == "tester"
    assert info.signature is not None
    assert [c["name"] for c in info.signature["columns"]] == ["age", "income", "score"]
    assert info.signature["format"] == "table"
    assert info.output_schema is not None
    assert info.output_schema["classes"] == [0, 1]
    assert info.environment["packages"]["scikit-learn"]
    assert [(f.path, len(f.sha256)) for f in info.files] == [("model.skops", 64)]
    assert not info.trusted
    assert any_kind_client.get_version("churn:1") == info


def test_register_a_file_and_a_numpy_sample(any_kind_client: Client, tmp_path: Path) -> None:
    frame, labels = small_frame()
    model = LogisticRegression(max_iter=500).fit(frame.to_numpy(), labels)
    path = tmp_path / "model.skops"
    skops.io.dump(model, path)

    info = any_kind_client.register(path, "churn", sample=frame.to_numpy())

    assert info.flavor == "sklearn"
    assert info.lineage["source"] == str(path.resolve())
    assert info.signature is not None
    assert info.signature["format"] == "array"
    assert [c["name"] for c in info.signature["columns"]] == ["x0", "x1", "x2"]


def test_register_a_code_reference(any_kind_client: Client) -> None:
    frame = pd.DataFrame({"a": [1.0, 2.0], "b": [3.0, 4.0]})
    info = any_kind_client.register("tests.api.models:double", "doubler", sample=frame)
    assert info.flavor == "python"
    np.testing.assert_allclose(any_kind_client.load("doubler").predict(frame), [8.0, 12.0])


def test_loaded_model_predicts_like_the_original(any_kind_client: Client) -> None:
    model, frame = small_model()
    any_kind_client.register(model, "churn", sample=frame)
    any_kind_client.set_alias("churn", "champion", 1)

    for ref in ("churn:1", "churn@champion", "churn", "churn:1"):  # the second load of churn:1 is cached
        loaded = any_kind_client.load(ref)
        assert loaded.info.ref == "churn:1"
        np.testing.assert_array_equal(loaded.predict(frame), model.predict(frame))
        np.testing.assert_allclose(loaded.predict_proba(frame), model.predict_proba(frame))

    with pytest.raises(SchemaError, match="column 'income'") as caught:
        loaded.predict(frame.drop(columns=["income"]))
    assert caught.value.problems


def test_models_and_versions_are_listed_and_shown(any_kind_client: Client) -> None:
    model, frame = small_model()
    assert any_kind_client.list_models() == []
    any_kind_client.register(model, "churn", sample=frame)
    any_kind_client.register(model, "churn", metrics={"auc": 0.5})
    any_kind_client.register(model, "attrition")

    models = any_kind_client.list_models()
    assert [(m.name, m.versions, m.latest) for m in models] == [("attrition", 1, 1), ("churn", 2, 2)]
    info, versions = any_kind_client.get_model("churn")
    assert info.name == "churn"
    assert [v.ref for v in versions] == ["churn:1", "churn:2"]
    assert any_kind_client.get_version("churn").number == 2
    assert any_kind_client.get_version(" churn:1 ").number == 1


def test_aliases_are_set_moved_and_removed(any_kind_client: Client) -> None:
    model, _ = small_model()
    any_kind_client.register(model, "churn")
    any_kind_client.register(model, "churn")

    assert any_kind_client.set_alias("churn", "champion", 1, reason="launch").aliases == ["champion"]
    assert any_kind_client.get_version("churn@champion").number == 1
    moved = any_kind_client.set_alias("churn", "champion", 2)
    assert (moved.number, moved.aliases) == (2, ["champion"])
    assert any_kind_client.get_model("churn")[0].aliases == {"champion": 2}

    any_kind_client.remove_alias("churn", "champion", reason="retired")
    with pytest.raises(NotFoundError) as caught:
        any_kind_client.get_version("churn@champion")
    assert str(caught.value) == "alias churn@champion does not exist"
    with pytest.raises(NotFoundError) as caught:
        any_kind_client.remove_alias("churn", "champion")
    assert str(caught.value) == "alias churn@champion does not exist"
    with pytest.raises(InvalidInputError) as reserved:
        any_kind_client.set_alias("churn", "latest", 1)
    assert str(reserved.value) == "alias 'latest' is reserved; choose a name such as 'champion'"


def test_tags_are_set_and_removed(any_kind_client: Client) -> None:
    model, _ = small_model()
    any_kind_client.register(model, "churn", tags={"team": "risk"})

    info = any_kind_client.set_tags("churn:1", {"stage": "review", "n": np.int64(3)}, reason="review")
    assert info.tags == {"team": "risk", "stage": "review", "n": 3}
    info = any_kind_client.set_tags("churn:1", remove=["team"])
    assert info.tags == {"stage": "review", "n": 3}
    with pytest.raises(NotFoundError) as caught:
        any_kind_client.set_tags("churn:1", remove=["team"])
    assert str(caught.value) == "version churn:1 has no tag 'team'"


def test_archiving_and_restoring(any_kind_client: Client) -> None:
    model, _ = small_model()
    any_kind_client.register(model, "churn")
    any_kind_client.register(model, "churn")

    assert any_kind_client.set_archived("churn:2", True, reason="superseded").archived
    assert any_kind_client.get_version("churn").number == 1
    assert any_kind_client.get_model("churn")[0].latest == 1
    assert any_kind_client.load("churn:2").info.archived  # still loadable by number
    assert not any_kind_client.set_archived("churn:2", False).archived
    assert any_kind_client.get_version("churn").number == 2


def test_archiving_an_aliased_version_is_a_conflict(any_kind_client: Client) -> None:
    model, _ = small_model()
    any_kind_client.register(model, "churn")
    any_kind_client.set_alias("churn", "champion", 1)

    with pytest.raises(ConflictError) as caught:
        any_kind_client.set_archived("churn@champion", True)

    assert str(caught.value) == (
        "cannot archive churn:1: alias @champion points to it; move or remove the alias first"
    )
    assert not any_kind_client.get_version("churn:1").archived


def test_datasets_are_registered_listed_and_shown(any_kind_client: Client, train_file: Path) -> None:
    first = any_kind_client.register_dataset(train_file, "churn-train", tags={"source": "crm"})
    assert (first.ref, first.created, first.format, first.rows) == ("churn-train:1", True, "parquet", 200)
    assert first.fingerprint.startswith("sha256:")
    assert first.tags == {"source": "crm"}
    assert [c["name"] for c in first.signature["columns"]] == ["age", "income", "score", "churned"]
    assert "income" in first.profile["columns"]

    again = any_kind_client.register_dataset(train_file, "churn-train")
    assert (again.ref, again.created) == ("churn-train:1", False)

    csv = train_file.with_suffix(".csv")
    pd.read_parquet(train_file).head(50).to_csv(csv, index=False)
    second = any_kind_client.register_dataset(csv, "churn-train")
    assert (second.ref, second.format, second.rows) == ("churn-train:2", "csv", 50)

    assert [(d.name, d.versions, d.latest) for d in any_kind_client.list_datasets()] == [
        ("churn-train", 2, 2)
    ]
    assert any_kind_client.get_dataset("churn-train").number == 2
    assert any_kind_client.get_dataset("churn-train:1").fingerprint == first.fingerprint
    assert [v.ref for v in any_kind_client.dataset_versions("churn-train")] == [
        "churn-train:1",
        "churn-train:2",
    ]


def test_dataset_errors(any_kind_client: Client, tmp_path: Path) -> None:
    with pytest.raises(NotFoundError) as caught:
        any_kind_client.get_dataset("nope")
    assert str(caught.value) == "dataset 'nope' does not exist"
    with pytest.raises(NotFoundError) as caught:
        any_kind_client.dataset_versions("nope")
    assert str(caught.value) == "dataset 'nope' does not exist"
    with pytest.raises(InvalidReferenceError) as bad:
        any_kind_client.get_dataset("churn-train@champion")
    assert str(bad.value) == "invalid dataset reference 'churn-train@champion': expected NAME or NAME:VERSION"
    missing = tmp_path / "missing.csv"
    with pytest.raises(InvalidInputError) as unreadable:
        any_kind_client.register_dataset(missing, "churn-train")
    assert str(unreadable.value) == f"cannot read {missing}: no such file"
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"not parquet at all")
    with pytest.raises(InvalidInputError, match="as parquet"):
        any_kind_client.register_dataset(garbage, "churn-train")
    assert any_kind_client.list_datasets() == []


def test_audit_records_every_change(any_kind_client: Client) -> None:
    model, _ = small_model()
    start = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=5)
    any_kind_client.register(model, "churn", reason="first")
    any_kind_client.set_alias("churn", "champion", 1, reason="launch")
    any_kind_client.set_tags("churn:1", {"stage": "prod"})

    entries = any_kind_client.audit(since=start)
    assert [e.action for e in entries] == ["version.tags", "alias.set", "version.register", "model.create"]
    assert {e.actor for e in entries} == {"tester"}
    assert entries[1].target == "churn@champion"
    assert entries[1].after == {"version": 1}
    assert entries[1].reason == "launch"
    assert entries[2].after is not None
    assert entries[2].after["flavor"] == "sklearn"
    assert [e.action for e in any_kind_client.audit(action="alias.set")] == ["alias.set"]
    assert [e.action for e in any_kind_client.audit(target="churn", limit=2)] == [
        "version.tags",
        "version.register",
    ]
    assert any_kind_client.audit(since=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)) == []


def test_doctor_and_gc(any_kind_client: Client) -> None:
    model, _ = small_model()
    any_kind_client.register(model, "churn")

    report = any_kind_client.doctor()

    assert report.ok
    assert report.versions_checked == 1
    assert report.schema_revision
    assert report.orphans == []
    assert any_kind_client.gc(dry_run=True) == []
    assert any_kind_client.gc() == []


def test_not_found_says_the_same_thing(any_kind_client: Client) -> None:
    for call, message in (
        (lambda: any_kind_client.get_model("nope"), "model 'nope' does not exist"),
        (lambda: any_kind_client.get_version("nope:1"), "model 'nope' does not exist"),
        (lambda: any_kind_client.load("nope"), "model 'nope' does not exist"),
        (lambda: any_kind_client.set_tags("nope:1", {"a": 1}), "model 'nope' does not exist"),
        (lambda: any_kind_client.set_alias("nope", "champion", 1), "model 'nope' does not exist"),
    ):
        with pytest.raises(NotFoundError) as caught:
            call()
        assert str(caught.value) == message
    model, _ = small_model()
    any_kind_client.register(model, "churn")
    with pytest.raises(NotFoundError) as caught:
        any_kind_client.get_version("churn:7")
    assert str(caught.value) == "version churn:7 does not exist"
    with pytest.raises(NotFoundError) as caught:
        any_kind_client.register(model, "churn", dataset="nope")
    assert str(caught.value) == "dataset 'nope' does not exist"


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        (
            "churn:x",
            "invalid model reference 'churn:x': the version after ':' must be a positive whole number",
        ),
        (
            "churn@1",
            "invalid model reference 'churn@1': the alias after '@' must be a name such as 'champion'",
        ),
        ("a/b", "invalid model reference 'a/b': expected NAME, NAME:VERSION or NAME@ALIAS"),
        ("..", "invalid model reference '..': expected NAME, NAME:VERSION or NAME@ALIAS"),
    ],
)
def test_bad_references_are_refused(any_kind_client: Client, ref: str, message: str) -> None:
    with pytest.raises(InvalidReferenceError) as caught:
        any_kind_client.get_version(ref)
    assert str(caught.value) == message


def test_bad_registrations_are_refused(any_kind_client: Client) -> None:
    model, frame = small_model()
    with pytest.raises(InvalidReferenceError, match="invalid model name 'bad name'"):
        any_kind_client.register(model, "bad name")
    with pytest.raises(InvalidInputError) as caught:
        any_kind_client.register(model, "churn", metrics={"auc": float("nan")})
    assert str(caught.value) == "metric 'auc' must be finite, got nan"
    with pytest.raises(InvalidInputError) as caught:
        any_kind_client.register(model, "churn", metrics={"auc": "high"})
    assert str(caught.value) == "metric 'auc' must be a number, got 'high'"
    with pytest.raises(InvalidInputError, match="the model rejects the sample"):
        any_kind_client.register(model, "churn", sample=frame.drop(columns=["score"]))
    with pytest.raises(InvalidInputError) as caught:
        any_kind_client.register(model, "churn", closed=["age"])
    assert str(caught.value) == "closed columns need a sample to infer the signature from"
    with pytest.raises(UnknownFlavorError):
        any_kind_client.register(model, "churn", flavor="nope")
    assert any_kind_client.list_models() == []


def test_closed_columns_are_enforced_after_loading(any_kind_client: Client) -> None:
    frame = pd.DataFrame({"plan": ["basic", "premium"] * 10, "usage": np.linspace(0, 1, 20)})

    info = any_kind_client.register(
        "tests.api.models:usage_times_two", "usage", sample=frame, closed=["plan"]
    )

    assert info.signature is not None
    plan = next(c for c in info.signature["columns"] if c["name"] == "plan")
    assert plan["closed"]
    assert sorted(plan["categories"]) == ["basic", "premium"]
    loaded = any_kind_client.load("usage")
    np.testing.assert_allclose(loaded.predict(frame.head(2)), frame["usage"].head(2) * 2)
    with pytest.raises(SchemaError, match="column 'plan'"):
        loaded.predict(pd.DataFrame({"plan": ["gold"], "usage": [0.5]}))


def test_trust_is_required_for_foreign_code(any_kind_client: Client) -> None:
    frame, labels = small_frame()
    model = make_pipeline(Shift(1.0), LogisticRegression(max_iter=500)).fit(frame, labels)

    with pytest.raises(TrustRequiredError) as caught:
        any_kind_client.register(model, "custom", sample=frame)
    assert str(caught.value) == (
        "loading this model would trust code outside scikit-learn and numpy: tests.api.models.Shift; "
        "register it with trust=True (--trust) if you vouch for it"
    )
    assert any_kind_client.list_models() == []

    info = any_kind_client.register(model, "custom", sample=frame, trust=True)
    assert info.trusted
    assert info.untrusted == ["tests.api.models.Shift"]
    np.testing.assert_array_equal(any_kind_client.load("custom:1").predict(frame), model.predict(frame))
