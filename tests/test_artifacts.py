"""The artifact store on a local folder and on S3 (moto's server over real HTTP)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pytest

from passerelle.artifacts import ArtifactStore, storage_options_from_settings
from passerelle.client import LocalClient
from passerelle.errors import IntegrityError, MissingDependencyError
from passerelle.settings import Settings
from tests.helpers import small_model


def _tree(root: Path) -> Path:
    (root / "sub").mkdir(parents=True)
    (root / "a.bin").write_bytes(b"alpha" * 1000)
    (root / "sub" / "b.txt").write_text("beta")
    return root


def test_local_put_verify_and_corruption(tmp_path: Path) -> None:
    store = ArtifactStore(str(tmp_path / "store"))
    key = store.new_key("churn")
    files = store.put_tree(_tree(tmp_path / "src"), key)
    assert sorted(f.path for f in files) == ["a.bin", "sub/b.txt"]
    folder = store.local_path(key, files)
    assert (folder / "sub" / "b.txt").read_text() == "beta"
    assert store.verify(key, files) == []
    (folder / "sub" / "b.txt").write_text("evil")
    with pytest.raises(IntegrityError, match=r"sub/b\.txt is corrupted"):
        store.local_path(key, files)
    assert store.verify(key, files) == [f"{key}/sub/b.txt: checksum mismatch"]


def test_orphans_respect_the_grace_period(tmp_path: Path) -> None:
    store = ArtifactStore(str(tmp_path / "store"))
    kept = store.new_key("churn")
    lost = store.new_key("churn")
    store.put_tree(_tree(tmp_path / "a"), kept)
    store.put_tree(_tree(tmp_path / "b"), lost)
    assert store.orphans({kept}, dt.timedelta(hours=1)) == []
    assert store.orphans({kept}, dt.timedelta(0)) == [lost]


def test_s3_round_trip_with_verification(s3_settings: Settings, tmp_path: Path) -> None:
    store = ArtifactStore(
        s3_settings.effective_artifact_uri,
        storage_options_from_settings(s3_settings),
        cache_dir=tmp_path / "cache",
    )
    assert store.remote
    key = store.new_key("churn")
    files = store.put_tree(_tree(tmp_path / "src"), key)
    folder = store.local_path(key, files)
    assert folder.is_relative_to(tmp_path / "cache")
    assert (folder / "a.bin").read_bytes() == b"alpha" * 1000
    assert store.verify(key, files) == []
    # Tamper with the object in the bucket: the next fetch must refuse it.
    store.fs.pipe_file(f"{store.root}/{key}/a.bin", b"evil")
    store.fs.invalidate_cache()
    (folder / "a.bin").write_bytes(b"stale cache")
    with pytest.raises(IntegrityError, match=r"a\.bin is corrupted"):
        store.local_path(key, files)
    assert store.orphans(set(), dt.timedelta(0)) == [key]


def test_registry_on_s3(s3_settings: Settings) -> None:
    model, frame = small_model()
    with LocalClient(s3_settings) as c:
        info = c.register(model, "churn", sample=frame)
        np.testing.assert_array_equal(c.load("churn:1").predict(frame), model.predict(frame))
        assert c.doctor().ok
        assert info.artifact_key.startswith("models/churn/")


def test_s3_without_the_extra_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "s3fs", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'passerelle\[s3\]'"):
        ArtifactStore("s3://bucket/prefix")
