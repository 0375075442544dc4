"""The model registry: models, immutable numbered versions, aliases, tags, and loading.

A registration writes the artifact under a fresh key first and commits the metadata last,
in one transaction with its audit record: a process killed at any point leaves either a
whole version or nothing visible (at most an unreferenced artifact prefix, swept by
:meth:`Registry.sweep_orphans`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError as DBIntegrityError
from sqlalchemy.orm import Session, selectinload

from passerelle import audit, environment
from passerelle._failpoints import failpoint
from passerelle.artifacts import StoredFile
from passerelle.context import Context
from passerelle.errors import (
    ConflictError,
    InvalidInputError,
    NotFoundError,
    PasserelleError,
    SchemaError,
    TrustRequiredError,
)
from passerelle.flavors import Flavor, Predictor, SavedArtifact, detect, get_flavor
from passerelle.lineage import code_lineage
from passerelle.references import VersionRef, check_name, parse_dataset_ref, parse_ref
from passerelle.signature import Signature, infer_signature, output_schema
from passerelle.store.schema import Alias, ArtifactFile, Model, ModelVersion
from passerelle.tables import to_frame

# How many rows of the sample are used to check that the model accepts it.
SAMPLE_CHECK_ROWS = 100
# Concurrent registrations on PostgreSQL may collide on a version number; each retry re-reads.
_NUMBERING_RETRIES = 20


class EnvironmentMismatchWarning(UserWarning):
    """A version is loaded with other library versions than it was registered with."""


class FileInfo(BaseModel):
    path: str
    sha256: str
    size: int


class VersionInfo(BaseModel):
    model_config = ConfigDict(frozen=True)

    model: str
    number: int
    flavor: str
    flavor_options: dict[str, Any]
    ref: str
    aliases: list[str]
    signature: dict[str, Any] | None
    output_schema: dict[str, Any] | None
    metrics: dict[str, Any]
    params: dict[str, Any]
    tags: dict[str, Any]
    environment: dict[str, Any]
    lineage: dict[str, Any]
    dataset: str | None
    trusted: bool
    untrusted: list[str]
    description: str
    archived: bool
    created_at: dt.datetime
    created_by: str
    artifact_key: str
    files: list[FileInfo]


class ModelInfo(BaseModel):
    name: str
    description: str
    created_at: dt.datetime
    created_by: str
    latest: int | None
    versions: int
    aliases: dict[str, int]


def _version_info(version: ModelVersion) -> VersionInfo:
    dataset = None
    if version.dataset_version is not None:
        dataset = f"{version.dataset_version.dataset.name}:{version.dataset_version.number}"
    return VersionInfo(
        model=version.model.name,
        number=version.number,
        flavor=version.flavor,
        flavor_options=dict(version.flavor_options),
        ref=f"{version.model.name}:{version.number}",
        aliases=sorted(a.name for a in version.model.aliases if a.version_id == version.id),
        signature=version.signature,
        output_schema=version.output_schema,
        metrics=dict(version.metrics),
        params=dict(version.params),
        tags=dict(version.tags),
        environment=dict(version.environment),
        lineage=dict(version.lineage),
        dataset=dataset,
        trusted=version.trusted,
        untrusted=list(version.flavor_options.get("untrusted", [])),
        description=version.description,
        archived=version.archived,
        created_at=version.created_at,
        created_by=version.created_by,
        artifact_key=version.artifact_key,
        files=[FileInfo(path=f.path, sha256=f.sha256, size=f.size) for f in version.files],
    )


def _model_info(model: Model) -> ModelInfo:
    live = [v.number for v in model.versions if not v.archived]
    return ModelInfo(
        name=model.name,
        description=model.description,
        created_at=model.created_at,
        created_by=model.created_by,
        latest=max(live) if live else None,
        versions=len(model.versions),
        aliases={a.name: a.version.number for a in model.aliases},
    )


def _json_safe(values: dict[str, Any] | None, what: str) -> dict[str, Any]:
    """Metrics, params and tags are stored as JSON; refuse what JSON cannot hold."""
    out: dict[str, Any] = {}
    for key, value in (values or {}).items():
        if not isinstance(key, str) or not key:
            raise InvalidInputError(f"{what} names must be non-empty strings, got {key!r}")
        if isinstance(value, np.generic):
            value = value.item()
        if what == "metrics":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise InvalidInputError(f"metric {key!r} must be a number, got {value!r}")
            if not np.isfinite(value):
                raise InvalidInputError(f"metric {key!r} must be finite, got {value!r}")
        elif value is not None and not isinstance(value, (str, int, float, bool)):
            value = str(value)
        out[key] = value
    return out


@dataclass
class PreparedArtifact:
    """A model written in its flavor's layout, ready to be stored.

    Preparing needs the model's libraries but no store, so a remote client prepares
    locally and uploads the folder; the environment and code lineage are the preparer's.
    """

    folder: Path
    flavor: str
    saved: SavedArtifact
    environment: dict[str, Any] = field(default_factory=dict)
    lineage: dict[str, Any] = field(default_factory=dict)


def prepare_artifact(
    model: Any,
    dest: Path,
    *,
    flavor: str | None = None,
    trust: bool = False,
    source_dir: Path | None = None,
) -> PreparedArtifact:
    """Write ``model`` (object, file/folder path, or ``module:attr``) into the empty folder ``dest``."""
    if isinstance(model, str) and Path(model).exists():
        model = Path(model)
    if isinstance(model, Path) and not model.exists():
        raise InvalidInputError(f"cannot read {model}: no such file or directory")
    chosen = get_flavor(flavor) if flavor and flavor != "auto" else detect(model)
    if isinstance(model, Path):
        saved = chosen.save_path(model, dest, trusted=trust)
    elif isinstance(model, str) and chosen.name == "python":
        saved = chosen.save_reference(model, dest)
    else:
        saved = chosen.save_object(model, dest)
    lineage: dict[str, Any] = {**code_lineage(source_dir), "flavor": chosen.name}
    if isinstance(model, Path):
        lineage["source"] = str(model.resolve())
    return PreparedArtifact(dest, chosen.name, saved, environment.capture(saved.libraries), lineage)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


class Registry:
    """Registry operations on one context (store, artifacts, actor)."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    # -- reading -------------------------------------------------------------------------

    def _resolve(
        self, session: Session, ref: VersionRef | str, *, allow_archived: bool = True
    ) -> ModelVersion:
        ref = parse_ref(ref) if isinstance(ref, str) else ref
        model = session.scalar(select(Model).where(Model.name == ref.model))
        if model is None:
            raise NotFoundError(f"model {ref.model!r} does not exist")
        query = select(ModelVersion).where(ModelVersion.model_id == model.id)
        if ref.number is not None:
            version = session.scalar(query.where(ModelVersion.number == ref.number))
            if version is None:
                raise NotFoundError(f"version {ref} does not exist")
        elif ref.alias is not None:
            alias = session.scalar(select(Alias).where(Alias.model_id == model.id, Alias.name == ref.alias))
            if alias is None:
                raise NotFoundError(f"alias {ref} does not exist")
            version = alias.version
        else:
            version = session.scalar(
                query.where(ModelVersion.archived.is_(False)).order_by(ModelVersion.number.desc()).limit(1)
            )
            if version is None:
                raise NotFoundError(f"model {ref.model!r} has no live version")
        if version.archived and not allow_archived:
            raise ConflictError(f"version {version.model.name}:{version.number} is archived")
        return version

    def resolve_in(self, session: Session, ref: str, *, allow_archived: bool = True) -> VersionInfo:
        """Resolve a reference inside the caller's transaction."""
        return _version_info(self._resolve(session, ref, allow_archived=allow_archived))

    def get_version(self, ref: str) -> VersionInfo:
        with self.ctx.store.read() as session:
            return _version_info(self._resolve(session, ref))

    def list_models(self) -> list[ModelInfo]:
        with self.ctx.store.read() as session:
            models = session.scalars(
                select(Model)
                .options(
                    selectinload(Model.versions), selectinload(Model.aliases).selectinload(Alias.version)
                )
                .order_by(Model.name)
            ).all()
            return [_model_info(m) for m in models]

    def get_model(self, name: str) -> tuple[ModelInfo, list[VersionInfo]]:
        with self.ctx.store.read() as session:
            model = session.scalar(select(Model).where(Model.name == name))
            if model is None:
                raise NotFoundError(f"model {name!r} does not exist")
            return _model_info(model), [_version_info(v) for v in model.versions]

    # -- registering ---------------------------------------------------------------------

    def register(
        self,
        model: Any,
        name: str,
        *,
        flavor: str | None = None,
        sample: Any = None,
        closed: list[str] | None = None,
        metrics: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
        tags: dict[str, Any] | None = None,
        dataset: str | None = None,
        description: str = "",
        trust: bool = False,
        reason: str | None = None,
        source_dir: Path | None = None,
    ) -> VersionInfo:
        """Register ``model`` (an object, a file/folder path, or a ``module:attr`` reference)."""
        check_name(name, "model name")
        workdir = Path(tempfile.mkdtemp(prefix="passerelle-register-"))
        try:
            prepared = prepare_artifact(model, workdir, flavor=flavor, trust=trust, source_dir=source_dir)
            return self.register_prepared(
                prepared,
                name,
                sample=sample,
                closed=closed,
                metrics=metrics,
                params=params,
                tags=tags,
                dataset=dataset,
                description=description,
                trust=trust,
                reason=reason,
            )
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    def register_prepared(
        self,
        prepared: PreparedArtifact,
        name: str,
        *,
        sample: Any = None,
        closed: list[str] | None = None,
        metrics: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
        tags: dict[str, Any] | None = None,
        dataset: str | None = None,
        description: str = "",
        trust: bool = False,
        reason: str | None = None,
    ) -> VersionInfo:
        """Register an artifact already written in a flavor's layout (what a remote client uploads)."""
        check_name(name, "model name")
        metrics_ = _json_safe(metrics, "metrics")
        params_ = _json_safe(params, "params")
        tags_ = _json_safe(tags, "tags")
        flavor = get_flavor(prepared.flavor)
        saved = prepared.saved
        if saved.untrusted and not trust:
            raise TrustRequiredError(
                "loading this model would trust code outside scikit-learn and numpy: "
                + ", ".join(saved.untrusted)
                + "; register it with trust=True (--trust) if you vouch for it"
            )
        signature, outputs = self._check_sample(flavor, prepared.folder, saved, sample, closed, trust)
        options = dict(saved.options)
        if saved.untrusted:
            options["untrusted"] = list(saved.untrusted)
        key = self.ctx.artifacts.new_key(name)
        committed = False
        try:
            files = self.ctx.artifacts.put_tree(prepared.folder, key)
            failpoint("register.before_commit")
            info = self._commit(
                name=name,
                flavor=flavor.name,
                options=options,
                key=key,
                files=files,
                signature=signature,
                outputs=outputs,
                metrics=metrics_,
                params=params_,
                tags=tags_,
                env=dict(prepared.environment),
                lineage=dict(prepared.lineage),
                dataset=dataset,
                trusted=bool(saved.untrusted) and trust,
                description=description,
                reason=reason,
            )
            committed = True  # the artifact now belongs to the version
            failpoint("register.committed")
            return info
        finally:
            if not committed:
                with contextlib.suppress(OSError):  # else left as an orphan for the sweep
                    self.ctx.artifacts.delete(key)

    @staticmethod
    def _check_sample(
        flavor: Flavor,
        folder: Path,
        saved: SavedArtifact,
        sample: Any,
        closed: list[str] | None,
        trust: bool,
    ) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        if sample is None:
            if closed:
                raise InvalidInputError("closed columns need a sample to infer the signature from")
            return None, None
        frame = to_frame(sample)
        if frame.empty:
            raise InvalidInputError("the sample has no rows")
        signature = infer_signature(
            sample if not isinstance(sample, (str, Path)) else frame, closed=closed or []
        )
        predictor = flavor.load(folder, saved.options, trusted=list(saved.untrusted) if trust else [])
        head = signature.conform(frame.head(SAMPLE_CHECK_ROWS))
        try:
            predictions = np.asarray(predictor.predict(head))
            proba = np.asarray(predictor.predict_proba(head)) if predictor.has_proba else None
        except PasserelleError:
            raise
        except Exception as exc:
            raise InvalidInputError(
                f"the model rejects the sample: {type(exc).__name__}: {_first_line(exc)}"
            ) from exc
        if len(predictions) != len(head):
            raise InvalidInputError(
                f"the model returned {len(predictions)} predictions for {len(head)} sample rows"
            )
        return signature.to_dict(), output_schema(predictions, proba, predictor.classes)

    def _commit(self, *, name: str, dataset: str | None, reason: str | None, **fields: Any) -> VersionInfo:
        last_error: Exception | None = None
        for _ in range(_NUMBERING_RETRIES):
            try:
                with self.ctx.store.write() as session:
                    return self._insert(session, name=name, dataset=dataset, reason=reason, **fields)
            except DBIntegrityError as exc:
                # Another writer took the number (or created the model) first: re-read and retry.
                last_error = exc
        raise ConflictError(f"could not allocate a version number for {name!r}: {last_error}")

    def _insert(
        self,
        session: Session,
        *,
        name: str,
        flavor: str,
        options: dict[str, Any],
        key: str,
        files: list[StoredFile],
        signature: dict[str, Any] | None,
        outputs: dict[str, Any] | None,
        metrics: dict[str, Any],
        params: dict[str, Any],
        tags: dict[str, Any],
        env: dict[str, Any],
        lineage: dict[str, Any],
        dataset: str | None,
        trusted: bool,
        description: str,
        reason: str | None,
    ) -> VersionInfo:
        from passerelle.datasets import resolve_dataset_version

        dataset_version = None
        if dataset:
            ds_name, ds_number = parse_dataset_ref(dataset)
            dataset_version = resolve_dataset_version(session, ds_name, ds_number)
            lineage["dataset"] = f"{ds_name}:{dataset_version.number}"
            lineage["dataset_fingerprint"] = dataset_version.fingerprint
        actor = self.ctx.actor
        model = session.scalar(select(Model).where(Model.name == name).with_for_update())
        if model is None:
            model = Model(name=name, created_by=actor)
            session.add(model)
            session.flush()
            audit.record(
                session, actor=actor, action="model.create", target=name, after={"name": name}, reason=reason
            )
        number = (
            session.scalar(select(func.max(ModelVersion.number)).where(ModelVersion.model_id == model.id))
            or 0
        ) + 1
        version = ModelVersion(
            model=model,
            number=number,
            flavor=flavor,
            flavor_options=options,
            artifact_key=key,
            signature=signature,
            output_schema=outputs,
            metrics=metrics,
            params=params,
            tags=tags,
            environment=env,
            lineage=lineage,
            dataset_version=dataset_version,
            trusted=trusted,
            description=description,
            created_by=actor,
            files=[ArtifactFile(path=f.path, sha256=f.sha256, size=f.size) for f in files],
        )
        session.add(version)
        session.flush()
        info = _version_info(version)
        audit.record(
            session,
            actor=actor,
            action="version.register",
            target=info.ref,
            after={
                "flavor": flavor,
                "metrics": metrics,
                "params": params,
                "tags": tags,
                "dataset": info.dataset,
                "trusted": trusted,
                "files": {f.path: f.sha256 for f in files},
            },
            reason=reason,
        )
        failpoint("register.in_transaction")
        return info

    # -- changing ------------------------------------------------------------------------

    def set_alias(self, model: str, alias: str, number: int, *, reason: str | None = None) -> VersionInfo:
        with self.ctx.store.write() as session:
            return self.set_alias_in(session, model, alias, number, reason=reason)

    def set_alias_in(
        self, session: Session, model: str, alias: str, number: int, *, reason: str | None = None
    ) -> VersionInfo:
        """Move an alias inside the caller's transaction (a promotion moves it with its revision)."""
        check_name(alias, "alias")
        if alias.isdigit() or alias == "latest":
            raise InvalidInputError(f"alias {alias!r} is reserved; choose a name such as 'champion'")
        version = self._resolve(session, VersionRef(model, number=number), allow_archived=False)
        existing = session.scalar(
            select(Alias).where(Alias.model_id == version.model_id, Alias.name == alias)
        )
        before = {"version": existing.version.number} if existing else None
        if existing is None:
            session.add(
                Alias(model_id=version.model_id, name=alias, version_id=version.id, updated_by=self.ctx.actor)
            )
        else:
            existing.version_id = version.id
            existing.updated_by = self.ctx.actor
            existing.updated_at = dt.datetime.now(dt.UTC)
        audit.record(
            session,
            actor=self.ctx.actor,
            action="alias.set",
            target=f"{model}@{alias}",
            before=before,
            after={"version": number},
            reason=reason,
        )
        session.flush()
        session.expire(version.model, ["aliases"])
        return _version_info(version)

    def remove_alias(self, model: str, alias: str, *, reason: str | None = None) -> None:
        with self.ctx.store.write() as session:
            found = session.scalar(select(Alias).join(Model).where(Model.name == model, Alias.name == alias))
            if found is None:
                raise NotFoundError(f"alias {model}@{alias} does not exist")
            audit.record(
                session,
                actor=self.ctx.actor,
                action="alias.remove",
                target=f"{model}@{alias}",
                before={"version": found.version.number},
                reason=reason,
            )
            session.delete(found)

    def set_tags(
        self,
        ref: str,
        set_: dict[str, Any] | None = None,
        remove: list[str] | None = None,
        *,
        reason: str | None = None,
    ) -> VersionInfo:
        """Tags are the one mutable part of a version (with the archived flag)."""
        updates = _json_safe(set_, "tags")
        with self.ctx.store.write() as session:
            version = self._resolve(session, ref)
            before = dict(version.tags)
            tags = dict(before)
            for key in remove or []:
                if key not in tags:
                    raise NotFoundError(f"version {version.model.name}:{version.number} has no tag {key!r}")
                del tags[key]
            tags.update(updates)
            version.tags = tags
            audit.record(
                session,
                actor=self.ctx.actor,
                action="version.tags",
                target=f"{version.model.name}:{version.number}",
                before=before,
                after=tags,
                reason=reason,
            )
            session.flush()
            return _version_info(version)

    def add_metrics(self, ref: str, metrics: dict[str, Any], *, reason: str | None = None) -> VersionInfo:
        """Record metrics measured after registration (an evaluation); recorded ones never change."""
        added = _json_safe(metrics, "metrics")
        with self.ctx.store.write() as session:
            version = self._resolve(session, ref)
            target = f"{version.model.name}:{version.number}"
            before = dict(version.metrics)
            clashing = sorted(k for k in added if k in before and before[k] != added[k])
            if clashing:
                raise ConflictError(
                    f"{target} already has metric {clashing[0]!r} = {before[clashing[0]]!r}; "
                    "recorded metrics do not change"
                )
            version.metrics = {**before, **added}
            audit.record(
                session,
                actor=self.ctx.actor,
                action="version.metrics",
                target=target,
                before=before,
                after=dict(version.metrics),
                reason=reason,
            )
            session.flush()
            return _version_info(version)

    def set_archived(self, ref: str, archived: bool, *, reason: str | None = None) -> VersionInfo:
        with self.ctx.store.write() as session:
            version = self._resolve(session, ref)
            target = f"{version.model.name}:{version.number}"
            if archived:
                pointing = [a.name for a in version.model.aliases if a.version_id == version.id]
                if pointing:
                    raise ConflictError(
                        f"cannot archive {target}: alias {', '.join('@' + p for p in pointing)} "
                        "points to it; "
                        "move or remove the alias first"
                    )
            if version.archived == archived:
                return _version_info(version)
            version.archived = archived
            audit.record(
                session,
                actor=self.ctx.actor,
                action="version.archive" if archived else "version.restore",
                target=target,
                before={"archived": not archived},
                after={"archived": archived},
                reason=reason,
            )
            session.flush()
            return _version_info(version)

    # -- loading -------------------------------------------------------------------------

    def load(self, ref: str) -> LoadedModel:
        """Fetch, verify (sha256 of every file) and load a version."""
        info = self.get_version(ref)
        files = [StoredFile(f.path, f.sha256, f.size) for f in info.files]
        folder = self.ctx.artifacts.local_path(info.artifact_key, files)
        diffs = environment.differences(info.environment)
        if diffs:
            warnings.warn(
                f"{info.ref} was registered in another environment: {'; '.join(diffs)}",
                EnvironmentMismatchWarning,
                stacklevel=2,
            )
        flavor = get_flavor(info.flavor)
        predictor = flavor.load(folder, info.flavor_options, trusted=info.untrusted if info.trusted else [])
        return LoadedModel(info, predictor)

    # -- housekeeping --------------------------------------------------------------------

    def referenced_keys(self) -> set[str]:
        with self.ctx.store.read() as session:
            return set(session.scalars(select(ModelVersion.artifact_key)).all())

    def sweep_orphans(self, *, dry_run: bool = False, older_than: dt.timedelta | None = None) -> list[str]:
        grace = (
            older_than
            if older_than is not None
            else dt.timedelta(seconds=self.ctx.settings.orphan_grace_seconds)
        )
        orphans = self.ctx.artifacts.orphans(self.referenced_keys(), grace)
        if not dry_run:
            for key in orphans:
                self.ctx.artifacts.delete(key)
        return orphans

    def verify_artifacts(self) -> list[str]:
        problems: list[str] = []
        with self.ctx.store.read() as session:
            versions = session.scalars(select(ModelVersion).options(selectinload(ModelVersion.files))).all()
            todo = [
                (
                    f"{v.model.name}:{v.number}",
                    v.artifact_key,
                    [StoredFile(f.path, f.sha256, f.size) for f in v.files],
                )
                for v in versions
            ]
        for ref, key, files in todo:
            problems.extend(f"{ref}: {p}" for p in self.ctx.artifacts.verify(key, files))
        return problems


class LoadedModel(Predictor):
    """A loaded version: accepts any table, checks it against the signature, then predicts."""

    def __init__(self, info: VersionInfo, predictor: Predictor) -> None:
        self.info = info
        self.predictor = predictor
        self.signature = Signature.from_dict(info.signature) if info.signature else None
        self.classes = predictor.classes

    @property
    def has_proba(self) -> bool:
        return self.predictor.has_proba

    def prepare(self, data: Any) -> pd.DataFrame:
        frame = to_frame(data)
        if self.signature is None:
            return frame
        checked = self.signature.validate(frame)
        if not checked.ok:
            first = checked.problems[0]
            where = f"row {first.row}, " if first.row is not None else ""
            raise SchemaError(
                f"input does not match the signature of {self.info.ref}: {where}column {first.column!r}: "
                f"{first.reason} ({checked.rejected_rows} rejected row(s))",
                [{"row": p.row, "column": p.column, "reason": p.reason} for p in checked.problems],
            )
        return self.signature.conform(frame)

    def predict(self, table: Any) -> np.ndarray[Any, Any]:
        return self.predictor.predict(self.prepare(table))

    def predict_proba(self, table: Any) -> np.ndarray[Any, Any]:
        return self.predictor.predict_proba(self.prepare(table))
