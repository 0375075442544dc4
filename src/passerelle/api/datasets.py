"""Routes of datasets: register (by URI or by upload), list, show, versions."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import tempfile
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Response, UploadFile
from fastapi import Path as PathParam
from pydantic import BaseModel, Field

from passerelle.api.deps import ClientDep
from passerelle.api.errors import responses
from passerelle.datasets import DatasetInfo, DatasetVersionInfo
from passerelle.errors import InvalidInputError
from passerelle.profile import fingerprint_file
from passerelle.references import check_name
from passerelle.tables import table_format

router = APIRouter(prefix="/api/v1", tags=["datasets"], responses=responses(422, 500, 503))

DatasetName = Annotated[str, PathParam(description="Dataset name, e.g. churn-train.")]
DatasetRef = Annotated[str, PathParam(description="churn-train:2 (a number) or churn-train (the latest).")]

# Uploaded files are kept in the artifact store, beside the models, under this prefix.
UPLOADS_PREFIX = "datasets"

REGISTERED: dict[int | str, dict[str, Any]] = {
    200: {"description": "This content is already a version of the dataset; that version is returned."},
    201: {"description": "A new dataset version."},
}


class DatasetSource(BaseModel):
    uri: str = Field(description="A CSV or Parquet file the server can read: a path on it, or s3://...")
    tags: dict[str, Any] = Field(default_factory=dict)
    reason: str | None = Field(None, description="Why; kept in the audit log.")


@router.get("/datasets", summary="List datasets", response_model=list[DatasetInfo])
def list_datasets(client: ClientDep) -> list[DatasetInfo]:
    return client.list_datasets()


@router.get(
    "/datasets/{name}/versions",
    summary="List the versions of a dataset",
    response_model=list[DatasetVersionInfo],
    responses=responses(404),
)
def dataset_versions(name: DatasetName, client: ClientDep) -> list[DatasetVersionInfo]:
    return client.dataset_versions(name)


@router.post(
    "/datasets/{name}/versions",
    summary="Register a dataset version from a file the server can read",
    status_code=201,
    response_model=DatasetVersionInfo,
    responses={**REGISTERED, **responses(400, 422, 501)},
)
def register_dataset(
    name: DatasetName, body: DatasetSource, response: Response, client: ClientDep
) -> DatasetVersionInfo:
    info = client.register_dataset(body.uri, name, tags=body.tags, reason=body.reason)
    response.status_code = 201 if info.created else 200
    return info


@router.post(
    "/datasets/{name}/versions/upload",
    summary="Register a dataset version from an uploaded file",
    description="Multipart: `file` is a CSV or Parquet file (its name's extension tells which); the "
    "server keeps it in its artifact store and records that copy as the version's URI.",
    status_code=201,
    response_model=DatasetVersionInfo,
    responses={**REGISTERED, **responses(400, 422)},
)
def upload_dataset(
    name: DatasetName,
    file: Annotated[UploadFile, File(description="CSV (.csv, .csv.gz) or Parquet (.parquet, .pq) file.")],
    response: Response,
    client: ClientDep,
    tags: Annotated[str, Form(description="JSON object of tags.")] = "{}",
    reason: Annotated[str | None, Form(description="Why; kept in the audit log.")] = None,
) -> DatasetVersionInfo:
    check_name(name, "dataset name")
    filename = _safe_filename(file.filename)
    parsed_tags = _tags(tags)
    workdir = Path(tempfile.mkdtemp(prefix="passerelle-upload-"))
    try:
        folder = workdir / "upload"
        folder.mkdir()
        with (folder / filename).open("wb") as fh:
            shutil.copyfileobj(file.file, fh)
        # Keyed by content, so uploading the same file again writes to the same place.
        digest = fingerprint_file(folder / filename).removeprefix("sha256:")
        store = client.ctx.artifacts
        key = f"{UPLOADS_PREFIX}/{name}/{digest}"
        store.put_tree(folder, key)
        uri = f"{store.uri}/{key}/{filename}"
        try:
            info = client.register_dataset(uri, name, tags=parsed_tags, reason=reason)
        except BaseException:
            # No version holds this content (registering would have returned it): drop the copy.
            with contextlib.suppress(OSError):
                store.delete(key)
            raise
        if not info.created and info.uri != uri:
            # The same content was registered from elsewhere: this copy is not needed.
            store.delete(key)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    response.status_code = 201 if info.created else 200
    return info


def _safe_filename(given: str | None) -> str:
    name = Path(given or "").name
    if not name:
        raise InvalidInputError("the uploaded file needs a name ending in .csv, .csv.gz, .parquet or .pq")
    table_format(name)  # refuses what is neither CSV nor Parquet, with the accepted extensions
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


def _tags(text: str) -> dict[str, Any]:
    try:
        tags = json.loads(text or "{}")
    except ValueError as exc:
        raise InvalidInputError(f"tags must be a JSON object: {exc}") from exc
    if not isinstance(tags, dict):
        raise InvalidInputError("tags must be a JSON object")
    return tags


@router.get(
    "/dataset-versions/{ref}",
    summary="Show a dataset version",
    description="Its source, fingerprint, schema and profile.",
    response_model=DatasetVersionInfo,
    responses=responses(400, 404),
)
def get_dataset(ref: DatasetRef, client: ClientDep) -> DatasetVersionInfo:
    return client.get_dataset(ref)
