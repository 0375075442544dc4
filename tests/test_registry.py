"""The registry on every backend: numbering, references, aliases, tags, archiving, lineage, loading."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from passerelle.client import LocalClient
from passerelle.errors import (
    ConflictError,
    IntegrityError,
    InvalidInputError,
    InvalidReferenceError,
    NotFoundError,
    SchemaError,
    UnknownFlavorError,
)
from passerelle.registry import EnvironmentMismatchWarning
from tests.helpers import small_model


def test_versions_are_numbered_and_resolved_three_ways(any_client: LocalClient) -> None:
    model, frame = small_model()
    v1 = any_client.register(model, "churn", sample=frame, metrics={"auc": 0.8})
    v2 = any_client.register(model, "churn", sample=frame, metrics={"auc": 0.9}, params={"C": 1.0})
    assert (v1.number, v2.number) == (1, 2)
    assert any_client.get_version("churn").number == 2
    assert any_client.get_version("churn:1").metrics == {"auc": 0.8}
    any_client.set_alias("churn", "champion", 1, reason="best so far")
    assert any_client.get_version("churn@champion").number == 1
    assert any_client.get_version("churn:1").aliases == ["champion"]
    info, versions = any_client.get_model("churn")
    assert info.latest == 2
    assert info.aliases == {"champion": 1}
    assert [v.number for v in versions] == [1, 2]
    assert [m.name for m in any_client.list_models()] == ["churn"]


def test_signature_and_outputs_are_recorded(client: LocalClient) -> None:
    model, frame = small_model()
    info = client.register(model, "churn", sample=frame)
    assert info.signature is not None
    assert [c["name"] for c in info.signature["columns"]] == ["age", "income", "score"]
    assert info.output_schema is not None
    assert info.output_schema["proba"] is True
    assert info.output_schema["classes"] == [0, 1]
    assert info.environment["packages"]["scikit-learn"]
    assert all(len(f.sha256) == 64 for f in info.files)


def test_loaded_model_predicts_like_the_original(client: LocalClient) -> None:
    model, frame = small_model()
    client.register(model, "churn", sample=frame)
    loaded = client.load("churn")
    np.testing.assert_array_equal(loaded.predict(frame), model.predict(frame))
    np.testing.assert_allclose(loaded.predict_proba(frame.to_dict("records")), model.predict_proba(frame))
    # Columns in another order are put back in signature order.
    np.testing.assert_array_equal(loaded.predict(frame[["score", "age", "income"]]), model.predict(frame))


def test_loaded_model_refuses_input_that_breaks_the_signature(client: LocalClient) -> None:
    model, frame = small_model()
    client.register(model, "churn", sample=frame)
    loaded = client.load("churn")
    with pytest.raises(SchemaError, match="income"):
        loaded.predict(frame.drop(columns=["income"]))


def test_references_that_do_not_resolve(any_client: LocalClient) -> None:
    model, frame = small_model()
    any_client.register(model, "churn", sample=frame)
    with pytest.raises(NotFoundError, match="model 'nope' does not exist"):
        any_client.get_version("nope")
    with pytest.raises(NotFoundError, match="churn:7"):
        any_client.get_version("churn:7")
    with pytest.raises(NotFoundError, match="churn@champion"):
        any_client.get_version("churn@champion")
    with pytest.raises(InvalidReferenceError):
        any_client.get_version("churn:x")


def test_tags_change_but_nothing_else_does(client: LocalClient) -> None:
    model, frame = small_model()
    client.register(model, "churn", sample=frame, tags={"team": "risk"})
    info = client.set_tags("churn:1", {"stage": "review"}, ["team"], reason="handover")
    assert info.tags == {"stage": "review"}
    with pytest.raises(NotFoundError, match="no tag 'team'"):
        client.set_tags("churn:1", None, ["team"])


def test_archiving_hides_from_latest_and_respects_aliases(any_client: LocalClient) -> None:
    model, frame = small_model()
    any_client.register(model, "churn", sample=frame)
    any_client.register(model, "churn", sample=frame)
    any_client.set_alias("churn", "champion", 2)
    with pytest.raises(ConflictError, match="@champion"):
        any_client.set_archived("churn:2", True)
    any_client.remove_alias("churn", "champion")
    any_client.set_archived("churn:2", True, reason="bad data")
    assert any_client.get_version("churn").number == 1
    assert any_client.get_version("churn:2").archived
    with pytest.raises(ConflictError, match="archived"):
        any_client.set_alias("churn", "champion", 2)
    any_client.set_archived("churn:2", False)
    assert any_client.get_version("churn").number == 2


def test_alias_errors(client: LocalClient) -> None:
    model, frame = small_model()
    client.register(model, "churn", sample=frame)
    with pytest.raises(NotFoundError):
        client.set_alias("churn", "champion", 9)
    with pytest.raises(NotFoundError):
        client.remove_alias("churn", "champion")
    with pytest.raises(InvalidInputError, match="reserved"):
        client.set_alias("churn", "latest", 1)


def test_every_change_is_audited_with_before_after_and_reason(client: LocalClient) -> None:
    model, frame = small_model()
    client.register(model, "churn", sample=frame, reason="first cut")
    client.register(model, "churn", sample=frame)
    client.set_alias("churn", "champion", 1, reason="launch")
    client.set_alias("churn", "champion", 2, reason="better auc")
    client.set_tags("churn:2", {"k": "v"})
    client.set_archived("churn:1", True, reason="superseded")
    entries = client.audit()
    actions = [e.action for e in reversed(entries)]
    assert actions == [
        "model.create",
        "version.register",
        "version.register",
        "alias.set",
        "alias.set",
        "version.tags",
        "version.archive",
    ]
    moved = next(e for e in entries if e.action == "alias.set" and e.reason == "better auc")
    assert moved.before == {"version": 1}
    assert moved.after == {"version": 2}
    assert moved.actor == "tester"
    assert entries[-2].reason == "first cut"
    assert [e.action for e in client.audit(target="churn@champion")] == ["alias.set", "alias.set"]


def test_dataset_lineage(client: LocalClient, tmp_path: Path) -> None:
    model, frame = small_model()
    data = tmp_path / "train.csv"
    frame.to_csv(data, index=False)
    ds = client.register_dataset(data, "churn-train")
    info = client.register(model, "churn", sample=frame, dataset="churn-train")
    assert info.dataset == "churn-train:1"
    assert info.lineage["dataset_fingerprint"] == ds.fingerprint
    with pytest.raises(NotFoundError, match="dataset 'other'"):
        client.register(model, "churn", sample=frame, dataset="other")
    assert client.get_model("churn")[0].versions == 1  # the failed registration left nothing


def test_git_lineage(client: LocalClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    for args in (
        ["init", "-q"],
        ["-c", "user.email=a@b", "-c", "user.name=a", "commit", "-q", "--allow-empty", "-m", "x"],
    ):
        subprocess.run(["git", *args], cwd=repo, check=True)
    (repo / "f.txt").write_text("x")
    subprocess.run(["git", "add", "f.txt"], cwd=repo, check=True)
    monkeypatch.chdir(repo)
    model, frame = small_model()
    info = client.register(model, "churn", sample=frame)
    assert len(info.lineage["git_commit"]) == 40
    assert info.lineage["git_dirty"] is True


def test_corrupted_artifact_refuses_to_load(client: LocalClient) -> None:
    model, frame = small_model()
    info = client.register(model, "churn", sample=frame)
    stored = Path(client.settings.effective_artifact_uri) / info.artifact_key / info.files[0].path
    stored.write_bytes(stored.read_bytes() + b"tampered")
    with pytest.raises(IntegrityError, match="corrupted"):
        client.load("churn:1")
    assert client.doctor().problems == [
        f"churn:1: {info.artifact_key}/{info.files[0].path}: checksum mismatch"
    ]


def test_environment_differences_warn(client: LocalClient) -> None:
    model, frame = small_model()
    client.register(model, "churn", sample=frame)
    import passerelle.environment as environment

    real = environment.capture

    def older(libraries: list[str]) -> dict[str, object]:
        captured = real(libraries)
        captured["packages"] = {**captured["packages"], "scikit-learn": "0.0.1"}  # type: ignore[dict-item]
        return captured

    mp = pytest.MonkeyPatch()
    mp.setattr(environment, "capture", older)
    try:
        client.register(model, "churn", sample=frame)
    finally:
        mp.undo()
    with pytest.warns(EnvironmentMismatchWarning, match=r"scikit-learn 0\.0\.1 -> "):
        client.load("churn:2")


def test_bad_registrations_leave_nothing(client: LocalClient, tmp_path: Path) -> None:
    model, frame = small_model()
    with pytest.raises(UnknownFlavorError, match="unknown flavor 'keras'"):
        client.register(model, "churn", flavor="keras")
    with pytest.raises(InvalidInputError, match="rejects the sample"):
        client.register(model, "churn", sample=frame.rename(columns={"age": "years"}))
    with pytest.raises(InvalidInputError, match="no such file"):
        client.register(tmp_path / "missing.skops", "churn")
    with pytest.raises(InvalidInputError, match="metric 'auc' must be a number"):
        client.register(model, "churn", metrics={"auc": "high"})
    with pytest.raises(InvalidReferenceError):
        client.register(model, "bad name!")
    assert client.list_models() == []
    assert client.gc(dry_run=True) == []


def test_registering_a_file_with_auto_flavor(client: LocalClient, tmp_path: Path) -> None:
    import skops.io

    model, frame = small_model()
    path = tmp_path / "model.skops"
    skops.io.dump(model, path)
    info = client.register(path, "churn", sample=frame)
    assert info.flavor == "sklearn"
    assert info.lineage["source"] == str(path.resolve())
    np.testing.assert_array_equal(client.load("churn").predict(frame), model.predict(frame))


def test_module_level_api(tmp_path: Path) -> None:
    import passerelle

    model, frame = small_model()
    info = passerelle.register(model, name="churn", sample=frame, metrics={"auc": 0.9})
    assert info.ref == "churn:1"
    np.testing.assert_array_equal(passerelle.load("churn:1").predict(frame), model.predict(frame))
    assert (tmp_path / "home" / "passerelle.db").exists()
