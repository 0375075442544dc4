"""Datasets: named, versioned by content fingerprint, with a schema and a profile.

A dataset version records where the data lives (a local path or an ``s3://`` URI), the
sha256 of its bytes, its schema and a per-column profile. Registering the same content
again returns the existing version instead of duplicating it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
import pandas as pd
from pydantic import BaseModel
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError as DBIntegrityError
from sqlalchemy.orm import Session

from passerelle import audit
from passerelle.artifacts import storage_options_from_settings
from passerelle.context import Context
from passerelle.errors import ConflictError, IntegrityError, InvalidInputError, NotFoundError
from passerelle.profile import fingerprint_file, profile_frame
from passerelle.references import check_name, parse_dataset_ref
from passerelle.signature import infer_signature
from passerelle.store.schema import Dataset, DatasetVersion
from passerelle.tables import read_table, table_format

_RETRIES = 20


class DatasetVersionInfo(BaseModel):
    dataset: str
    number: int
    ref: str
    uri: str
    format: str
    fingerprint: str
    rows: int
    signature: dict[str, Any]
    profile: dict[str, Any]
    tags: dict[str, Any]
    created_at: dt.datetime
    created_by: str
    created: bool = True  # False when registering found the same content already there


class DatasetInfo(BaseModel):
    name: str
    description: str
    created_at: dt.datetime
    created_by: str
    latest: int | None
    versions: int


def _version_info(v: DatasetVersion, created: bool = True) -> DatasetVersionInfo:
    return DatasetVersionInfo(
        dataset=v.dataset.name,
        number=v.number,
        ref=f"{v.dataset.name}:{v.number}",
        uri=v.uri,
        format=v.format,
        fingerprint=v.fingerprint,
        rows=v.rows,
        signature=v.schema,
        profile=v.profile,
        tags=dict(v.tags),
        created_at=v.created_at,
        created_by=v.created_by,
        created=created,
    )


def resolve_dataset_version(session: Session, name: str, number: int | None) -> DatasetVersion:
    dataset = session.scalar(select(Dataset).where(Dataset.name == name))
    if dataset is None:
        raise NotFoundError(f"dataset {name!r} does not exist")
    query = select(DatasetVersion).where(DatasetVersion.dataset_id == dataset.id)
    if number is None:
        found = session.scalar(query.order_by(DatasetVersion.number.desc()).limit(1))
    else:
        found = session.scalar(query.where(DatasetVersion.number == number))
    if found is None:
        raise NotFoundError(
            f"dataset version {name}:{number} does not exist"
            if number
            else f"dataset {name!r} has no version"
        )
    return found


class Datasets:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def register(
        self, source: str | Path, name: str, *, tags: dict[str, Any] | None = None, reason: str | None = None
    ) -> DatasetVersionInfo:
        check_name(name, "dataset name")
        uri = str(source)
        fmt = table_format(uri)
        with self._local_copy(uri) as (local, uri):
            fingerprint = fingerprint_file(local)
            existing = self._find(name, fingerprint)
            if existing is not None:
                return existing
            frame = read_table(local)
            schema = infer_signature(frame).to_dict()
            profile = profile_frame(frame)
            rows = len(frame)
        for _ in range(_RETRIES):
            try:
                with self.ctx.store.write() as session:
                    return self._insert(
                        session, name, uri, fmt, fingerprint, rows, schema, profile, tags or {}, reason
                    )
            except DBIntegrityError:
                # A concurrent writer registered this dataset or this content first.
                existing = self._find(name, fingerprint)
                if existing is not None:
                    return existing
        raise ConflictError(f"could not register a version of dataset {name!r}")

    @contextlib.contextmanager
    def _local_copy(self, uri: str) -> Iterator[tuple[Path, str]]:
        """A local path for ``uri`` (downloaded to a temporary folder when remote) and its canonical URI."""
        if "://" in uri and not uri.startswith("file://"):
            tmpdir = Path(tempfile.mkdtemp(prefix="passerelle-dataset-"))
            try:
                local = tmpdir / Path(uri.split("?")[0]).name
                try:
                    fs, path = fsspec.core.url_to_fs(uri, **storage_options_from_settings(self.ctx.settings))
                    fs.get_file(path, str(local))
                except (OSError, ValueError, ImportError) as exc:
                    raise InvalidInputError(f"cannot read {uri}: {exc}") from exc
                yield local, uri
            finally:
                shutil.rmtree(tmpdir, ignore_errors=True)
            return
        local = Path(uri.removeprefix("file://")).resolve()
        if not local.is_file():
            raise InvalidInputError(f"cannot read {uri}: no such file")
        yield local, str(local)

    def load(self, ref: str) -> pd.DataFrame:
        """The rows of a dataset version, refused when the file changed since it was registered."""
        info = self.get(ref)
        with self._local_copy(info.uri) as (local, _):
            if fingerprint_file(local) != info.fingerprint:
                raise IntegrityError(
                    f"dataset {info.ref}: {info.uri} changed since it was registered (fingerprint differs)"
                )
            return read_table(local)

    def _find(self, name: str, fingerprint: str) -> DatasetVersionInfo | None:
        with self.ctx.store.read() as session:
            found = session.scalar(
                select(DatasetVersion)
                .join(Dataset)
                .where(Dataset.name == name, DatasetVersion.fingerprint == fingerprint)
            )
            return _version_info(found, created=False) if found is not None else None

    def _insert(
        self,
        session: Session,
        name: str,
        uri: str,
        fmt: str,
        fingerprint: str,
        rows: int,
        schema: dict[str, Any],
        profile: dict[str, Any],
        tags: dict[str, Any],
        reason: str | None,
    ) -> DatasetVersionInfo:
        actor = self.ctx.actor
        dataset = session.scalar(select(Dataset).where(Dataset.name == name).with_for_update())
        if dataset is None:
            dataset = Dataset(name=name, created_by=actor)
            session.add(dataset)
            session.flush()
        number = (
            session.scalar(
                select(func.max(DatasetVersion.number)).where(DatasetVersion.dataset_id == dataset.id)
            )
            or 0
        ) + 1
        version = DatasetVersion(
            dataset=dataset,
            number=number,
            uri=uri,
            format=fmt,
            fingerprint=fingerprint,
            rows=rows,
            schema=schema,
            profile=profile,
            tags={k: str(v) for k, v in tags.items()},
            created_by=actor,
        )
        session.add(version)
        session.flush()
        audit.record(
            session,
            actor=actor,
            action="dataset.register",
            target=f"{name}:{number}",
            after={"uri": uri, "fingerprint": fingerprint, "rows": rows},
            reason=reason,
        )
        return _version_info(version)

    def list_datasets(self) -> list[DatasetInfo]:
        with self.ctx.store.read() as session:
            out = []
            for d in session.scalars(select(Dataset).order_by(Dataset.name)).all():
                out.append(
                    DatasetInfo(
                        name=d.name,
                        description=d.description,
                        created_at=d.created_at,
                        created_by=d.created_by,
                        latest=d.versions[-1].number if d.versions else None,
                        versions=len(d.versions),
                    )
                )
            return out

    def get(self, ref: str) -> DatasetVersionInfo:
        name, number = parse_dataset_ref(ref)
        with self.ctx.store.read() as session:
            return _version_info(resolve_dataset_version(session, name, number))

    def versions(self, name: str) -> list[DatasetVersionInfo]:
        with self.ctx.store.read() as session:
            dataset = session.scalar(select(Dataset).where(Dataset.name == name))
            if dataset is None:
                raise NotFoundError(f"dataset {name!r} does not exist")
            return [_version_info(v) for v in dataset.versions]
