"""The artifact store: a local folder or any S3-compatible bucket, through fsspec.

Every file is written with its sha256, and every read recomputes it: a mismatch refuses to
load. Artifacts of a version are written under a fresh key that nothing references until
the version's metadata commits, so a crash mid-write leaves only an unreferenced prefix,
which :meth:`ArtifactStore.orphans` finds and :meth:`ArtifactStore.delete` sweeps.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec

from passerelle._deps import require
from passerelle._failpoints import failpoint
from passerelle.errors import IntegrityError, InvalidInputError, StoreError

CHUNK = 1 << 20
MODELS_PREFIX = "models"


@dataclass(frozen=True)
class StoredFile:
    path: str  # relative to the artifact's key, with forward slashes
    sha256: str
    size: int


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _walk(root: Path) -> Iterator[Path]:
    for dirpath, _dirs, files in os.walk(root):
        for name in sorted(files):
            yield Path(dirpath) / name


def verify_folder(folder: Path, files: Iterable[StoredFile]) -> None:
    """Raise :class:`IntegrityError` unless each of ``files`` is in ``folder`` with its recorded sha256.

    Every path that hands artifact files to a flavor (the store, a remote client's cache)
    goes through this one check.
    """
    for f in files:
        path = folder / f.path
        if not path.is_file():
            raise IntegrityError(f"artifact file {f.path} is missing from {folder}")
        actual = sha256_file(path)
        if actual != f.sha256:
            raise IntegrityError(
                f"artifact file {f.path} is corrupted: sha256 {actual[:12]}… "
                f"does not match the recorded {f.sha256[:12]}…; refusing to load it"
            )


class ArtifactStore:
    """Write, verify and fetch artifact trees under one root URI."""

    def __init__(
        self, uri: str, storage_options: dict[str, Any] | None = None, cache_dir: Path | None = None
    ):
        self.uri = uri.rstrip("/")
        self.remote = "://" in self.uri and not self.uri.startswith("file://")
        if self.uri.startswith("s3://"):
            require("s3fs", "s3")
        try:
            self.fs, self.root = fsspec.core.url_to_fs(self.uri, **(storage_options or {}))
        except (ImportError, ValueError) as exc:
            raise StoreError(f"cannot open the artifact store {self.uri}: {exc}") from exc
        self.cache_dir = cache_dir
        if not self.remote:
            Path(self.root).mkdir(parents=True, exist_ok=True)

    def _full(self, key: str, rel: str = "") -> str:
        parts = [self.root, key] + ([rel] if rel else [])
        return "/".join(p.strip("/") if i else p.rstrip("/") for i, p in enumerate(parts))

    def new_key(self, model: str) -> str:
        return f"{MODELS_PREFIX}/{model}/{uuid.uuid4().hex}"

    def put_tree(self, source: Path, key: str) -> list[StoredFile]:
        """Upload every file below ``source`` to ``key``, returning their checksums."""
        files: list[StoredFile] = []
        for path in _walk(source):
            rel = path.relative_to(source).as_posix()
            files.append(StoredFile(rel, sha256_file(path), path.stat().st_size))
            target = self._full(key, rel)
            try:
                self.fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
                self.fs.put_file(str(path), target)
            except OSError as exc:
                raise StoreError(f"cannot write artifact {rel} to {self.uri}: {exc}") from exc
            failpoint("artifacts.file_written")
        if not files:
            raise InvalidInputError(f"nothing to store: {source} holds no file")
        return files

    def local_path(self, key: str, files: Iterable[StoredFile]) -> Path:
        """A local folder holding the artifact, each file verified against its checksum.

        A local store is verified in place; a remote one is downloaded into the cache
        (or a temporary folder) and verified there, so nothing unverified is ever loaded.
        """
        files = list(files)
        if not self.remote:
            folder = Path(self._full(key))
            self._verify(folder, files)
            return folder
        base = self.cache_dir if self.cache_dir is not None else Path(tempfile.mkdtemp(prefix="passerelle-"))
        folder = base / key
        try:
            self._verify(folder, files)
            return folder
        except IntegrityError:
            pass
        staging = Path(tempfile.mkdtemp(prefix=".fetch-", dir=base if base.exists() else None))
        try:
            for f in files:
                dest = staging / f.path
                dest.parent.mkdir(parents=True, exist_ok=True)
                try:
                    self.fs.get_file(self._full(key, f.path), str(dest))
                except (OSError, FileNotFoundError) as exc:
                    raise IntegrityError(f"artifact file {f.path} is missing from {self.uri}/{key}") from exc
            self._verify(staging, files)
            folder.parent.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(folder, ignore_errors=True)
            os.replace(staging, folder)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return folder

    @staticmethod
    def _verify(folder: Path, files: list[StoredFile]) -> None:
        verify_folder(folder, files)

    def verify(self, key: str, files: Iterable[StoredFile]) -> list[str]:
        """Problems found with a stored artifact, without loading it (empty when sound)."""
        problems: list[str] = []
        for f in files:
            full = self._full(key, f.path)
            try:
                digest = hashlib.sha256()
                with self.fs.open(full, "rb") as fh:
                    while chunk := fh.read(CHUNK):
                        digest.update(chunk)
            except FileNotFoundError:
                problems.append(f"{key}/{f.path}: missing")
                continue
            if digest.hexdigest() != f.sha256:
                problems.append(f"{key}/{f.path}: checksum mismatch")
        return problems

    def delete(self, key: str) -> None:
        full = self._full(key)
        if self.fs.exists(full):
            self.fs.rm(full, recursive=True)

    def keys(self) -> list[tuple[str, dt.datetime | None]]:
        """Every artifact key under ``models/`` with its newest modification time, if known."""
        out: list[tuple[str, dt.datetime | None]] = []
        base = self._full(MODELS_PREFIX)
        if not self.fs.exists(base):
            return out
        for model_dir in self.fs.ls(base, detail=False):
            for key_dir in self.fs.ls(model_dir, detail=False):
                rel = key_dir[len(self.root) :].strip("/") if key_dir.startswith(self.root) else key_dir
                out.append((rel, self._mtime(key_dir)))
        return out

    def _mtime(self, full: str) -> dt.datetime | None:
        newest: dt.datetime | None = None
        try:
            for _path, info in self.fs.find(full, detail=True).items():
                stamp = info.get("LastModified") or info.get("mtime") or info.get("created")
                if isinstance(stamp, (int, float)):
                    when = dt.datetime.fromtimestamp(stamp, dt.UTC)
                elif isinstance(stamp, dt.datetime):
                    when = stamp if stamp.tzinfo else stamp.replace(tzinfo=dt.UTC)
                else:
                    continue
                newest = when if newest is None or when > newest else newest
        except FileNotFoundError:
            return None
        return newest

    def orphans(self, referenced: set[str], older_than: dt.timedelta) -> list[str]:
        """Keys no version references and untouched for ``older_than`` (a writer may be mid-upload)."""
        now = dt.datetime.now(dt.UTC)
        return [
            key
            for key, mtime in self.keys()
            if key not in referenced and (mtime is None or now - mtime >= older_than)
        ]


def storage_options_from_settings(settings: Any) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if str(settings.effective_artifact_uri).startswith("s3://"):
        client_kwargs: dict[str, Any] = {}
        if settings.s3_endpoint_url:
            client_kwargs["endpoint_url"] = settings.s3_endpoint_url
        if settings.s3_region:
            client_kwargs["region_name"] = settings.s3_region
        if client_kwargs:
            options["client_kwargs"] = client_kwargs
        if settings.s3_access_key_id:
            options["key"] = settings.s3_access_key_id
        if settings.s3_secret_access_key:
            options["secret"] = settings.s3_secret_access_key.get_secret_value()
    return options
