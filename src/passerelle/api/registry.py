"""Routes of the model registry: models, versions, aliases, tags, archiving, registration."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, File, Form, Query, UploadFile
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.background import BackgroundTask

from passerelle.api import wire
from passerelle.api.deps import ClientDep
from passerelle.api.errors import responses
from passerelle.artifacts import StoredFile
from passerelle.errors import InvalidInputError
from passerelle.flavors import SavedArtifact
from passerelle.references import check_name
from passerelle.registry import ModelInfo, PreparedArtifact, VersionInfo
from passerelle.tables import read_table

router = APIRouter(prefix="/api/v1", tags=["registry"], responses=responses(422, 500, 503))

ModelName = Annotated[str, PathParam(description="Model name, e.g. churn.")]
AliasName = Annotated[str, PathParam(description="Alias name, e.g. champion.")]
Ref = Annotated[
    str,
    PathParam(
        description="churn:3 (a number), churn@champion (an alias) or churn (the latest live version); "
        "URL-encoded."
    ),
]
Reason = Annotated[str | None, Query(description="Why this change is made; kept in the audit log.")]


class ModelDetail(BaseModel):
    model: ModelInfo
    versions: list[VersionInfo]


class AliasRequest(BaseModel):
    version: int = Field(description="Number of the version the alias points to.")
    reason: str | None = Field(None, description="Why; kept in the audit log.")


class TagsRequest(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    set_: dict[str, Any] = Field(default_factory=dict, alias="set", description="Tags to add or change.")
    remove: list[str] = Field(default_factory=list, description="Keys of tags to remove.")
    reason: str | None = Field(None, description="Why; kept in the audit log.")


class ReasonRequest(BaseModel):
    reason: str | None = Field(None, description="Why; kept in the audit log.")


class RegisterManifest(BaseModel):
    """What accompanies an uploaded artifact: how it was prepared, and what to record with it.

    ``flavor``, ``options``, ``libraries``, ``untrusted``, ``environment`` and ``lineage``
    are what preparing the artifact reported (``passerelle.registry.prepare_artifact``).
    """

    model_config = ConfigDict(extra="forbid")

    flavor: str
    options: dict[str, Any] = Field(default_factory=dict)
    libraries: list[str] = Field(default_factory=list)
    untrusted: list[str] = Field(default_factory=list)
    environment: dict[str, Any] = Field(default_factory=dict)
    lineage: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    params: dict[str, Any] = Field(default_factory=dict)
    tags: dict[str, Any] = Field(default_factory=dict)
    dataset: str | None = None
    closed: list[str] | None = None
    description: str = ""
    trust: bool = False
    reason: str | None = None
    sample_format: Literal["table", "array"] = Field(
        "table", description="'array' when the sample was a NumPy array (its columns are x0, x1, ...)."
    )


MANIFEST_HELP = (
    "JSON object: flavor (required), options, libraries, untrusted, environment, lineage, metrics, "
    "params, tags, dataset, closed, description, trust, reason, sample_format."
)


@router.get("/models", summary="List models", response_model=list[ModelInfo])
def list_models(client: ClientDep) -> list[ModelInfo]:
    return client.list_models()


@router.get(
    "/models/{name}",
    summary="Show a model and its versions",
    response_model=ModelDetail,
    responses=responses(404),
)
def get_model(name: ModelName, client: ClientDep) -> ModelDetail:
    model, versions = client.get_model(name)
    return ModelDetail(model=model, versions=versions)


@router.post(
    "/models/{name}/versions",
    summary="Register a new version from an uploaded artifact",
    description="Multipart: `artifact` is a tar.gz of the artifact folder as written by the flavor, "
    "`manifest` describes it (JSON), `sample` (optional) is a Parquet sample of inputs from which "
    "the signature is inferred and which the model must accept.",
    status_code=201,
    response_model=VersionInfo,
    responses=responses(400, 403, 404, 409, 422, 501),
)
def register_version(
    name: ModelName,
    artifact: Annotated[UploadFile, File(description="tar.gz of the prepared artifact folder.")],
    manifest: Annotated[str, Form(description=MANIFEST_HELP)],
    client: ClientDep,
    sample: Annotated[UploadFile | None, File(description="Parquet sample of inputs.")] = None,
) -> VersionInfo:
    check_name(name, "model name")
    spec = _manifest(manifest)
    workdir = Path(tempfile.mkdtemp(prefix="passerelle-upload-"))
    try:
        folder = workdir / "artifact"
        wire.unpack(artifact.file, folder, what="the artifact upload")
        table: Any = None
        if sample is not None:
            local = workdir / "sample.parquet"
            with local.open("wb") as fh:
                shutil.copyfileobj(sample.file, fh)
            try:
                table = read_table(local)
            except InvalidInputError as exc:
                # The message would name a temporary file of the server; name the upload instead.
                raise InvalidInputError(str(exc).replace(str(local), "the uploaded sample")) from exc
            if spec.sample_format == "array":
                table = table.to_numpy()
        prepared = PreparedArtifact(
            folder,
            spec.flavor,
            SavedArtifact(spec.options, spec.libraries, spec.untrusted),
            spec.environment,
            spec.lineage,
        )
        return client.registry.register_prepared(
            prepared,
            name,
            sample=table,
            closed=spec.closed,
            metrics=spec.metrics,
            params=spec.params,
            tags=spec.tags,
            dataset=spec.dataset,
            description=spec.description,
            trust=spec.trust,
            reason=spec.reason,
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _manifest(text: str) -> RegisterManifest:
    try:
        # json.loads rather than pydantic's parser: NaN must reach the registry's own checks
        # ("metric 'auc' must be finite") as it would from a local client.
        data = json.loads(text)
    except ValueError as exc:
        raise InvalidInputError(f"the manifest is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidInputError("the manifest must be a JSON object")
    try:
        return RegisterManifest.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'manifest'}: {err['msg']}" for err in exc.errors()
        )
        raise InvalidInputError(f"invalid manifest: {problems}") from exc


@router.get(
    "/versions/{ref}",
    summary="Show a version",
    response_model=VersionInfo,
    responses=responses(400, 404),
)
def get_version(ref: Ref, client: ClientDep) -> VersionInfo:
    return client.get_version(ref)


@router.get(
    "/versions/{ref}/artifact",
    summary="Download a version's artifact",
    description="A tar.gz of the artifact's files, each verified against its recorded sha256 first. "
    "Verify them again on arrival against the version's `files`.",
    response_class=FileResponse,
    responses={
        200: {
            "description": "The artifact files, as a tar.gz archive.",
            "content": {wire.MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}},
        },
        **responses(400, 404),
    },
)
def download_artifact(ref: Ref, client: ClientDep) -> FileResponse:
    info = client.get_version(ref)
    files = [StoredFile(f.path, f.sha256, f.size) for f in info.files]
    folder = client.ctx.artifacts.local_path(info.artifact_key, files)
    # A file rather than a stream built on the fly: memory stays flat for large artifacts.
    handle, name = tempfile.mkstemp(prefix="passerelle-artifact-", suffix=".tar.gz")
    try:
        with os.fdopen(handle, "wb") as fh:
            wire.pack(folder, [f.path for f in files], fh)
    except BaseException:
        os.unlink(name)
        raise
    return FileResponse(
        name,
        media_type=wire.MEDIA_TYPE,
        filename=f"{info.model}-{info.number}.tar.gz",
        background=BackgroundTask(os.unlink, name),
    )


@router.put(
    "/models/{name}/aliases/{alias}",
    summary="Point an alias at a version",
    response_model=VersionInfo,
    responses=responses(400, 404, 409, 422),
)
def set_alias(name: ModelName, alias: AliasName, body: AliasRequest, client: ClientDep) -> VersionInfo:
    return client.set_alias(name, alias, body.version, reason=body.reason)


@router.delete(
    "/models/{name}/aliases/{alias}",
    summary="Remove an alias",
    status_code=204,
    response_class=Response,
    responses={204: {"description": "The alias is removed."}, **responses(404)},
)
def remove_alias(name: ModelName, alias: AliasName, client: ClientDep, reason: Reason = None) -> Response:
    client.remove_alias(name, alias, reason=reason)
    return Response(status_code=204)


@router.patch(
    "/versions/{ref}/tags",
    summary="Set or remove tags of a version",
    response_model=VersionInfo,
    responses=responses(400, 404, 422),
)
def set_tags(ref: Ref, body: TagsRequest, client: ClientDep) -> VersionInfo:
    return client.set_tags(ref, body.set_, body.remove, reason=body.reason)


@router.post(
    "/versions/{ref}/archive",
    summary="Archive a version",
    description="The version stays in the registry and can be loaded by number, but no longer counts "
    "as the latest. Refused (409) while an alias points to it.",
    response_model=VersionInfo,
    responses=responses(400, 404, 409),
)
def archive_version(
    ref: Ref, client: ClientDep, body: Annotated[ReasonRequest | None, Body()] = None
) -> VersionInfo:
    return client.set_archived(ref, True, reason=body.reason if body else None)


@router.post(
    "/versions/{ref}/restore",
    summary="Restore an archived version",
    response_model=VersionInfo,
    responses=responses(400, 404),
)
def restore_version(
    ref: Ref, client: ClientDep, body: Annotated[ReasonRequest | None, Body()] = None
) -> VersionInfo:
    return client.set_archived(ref, False, reason=body.reason if body else None)
