"""A :class:`~passerelle.client.Client` that speaks to a passerelle server over its management API.

Selected by :func:`passerelle.client.connect` when ``PASSERELLE_URL`` is set, it behaves as
the local client does: the same methods, the same results, the same error classes with the
server's messages. What needs the model's own libraries happens here (preparing an artifact
for upload, loading a downloaded one); everything that touches the store happens on the
server.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import shutil
import tempfile
import unicodedata
import warnings
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, TypeVar
from urllib.parse import quote

import httpx
import pyarrow as pa
from pydantic import BaseModel, TypeAdapter, ValidationError

from passerelle import environment
from passerelle.__about__ import __version__
from passerelle.api import wire
from passerelle.api.errors import REQUEST_ID_HEADER, error_from_response
from passerelle.artifacts import StoredFile, verify_folder
from passerelle.audit import AuditEntry, current_user
from passerelle.client import Client, DoctorReport
from passerelle.datasets import DatasetInfo, DatasetVersionInfo
from passerelle.endpoints import DeploySpec, EndpointDetail, EndpointInfo, RevisionInfo
from passerelle.errors import IntegrityError, InvalidInputError, PasserelleError, StoreError
from passerelle.flavors import get_flavor
from passerelle.references import check_name, parse_dataset_ref, parse_ref
from passerelle.registry import (
    EnvironmentMismatchWarning,
    LoadedModel,
    ModelInfo,
    VersionInfo,
    prepare_artifact,
)
from passerelle.serving.compare import Comparison
from passerelle.settings import Settings, load_settings
from passerelle.tables import is_array_like, table_format, to_frame

API = "/api/v1"
DEFAULT_TIMEOUT = 60.0
PARQUET = "application/vnd.apache.parquet"
_T = TypeVar("_T")
_KEY_PART = re.compile(r"^[A-Za-z0-9._\-]+$")


class RemoteClient(Client):
    """The management API of the passerelle server at ``settings.url``."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.settings = settings or load_settings()
        if not self.settings.url:
            raise InvalidInputError("no server URL: set PASSERELLE_URL (or url in the settings file)")
        self.url = self.settings.url
        headers = {"User-Agent": f"passerelle/{__version__}"}
        user = _header_text(current_user(self.settings.user))
        if user:
            headers[wire.USER_HEADER] = user
        if self.settings.token is not None and self.settings.token.get_secret_value():
            headers["Authorization"] = f"Bearer {self.settings.token.get_secret_value()}"
        self._http = httpx.Client(base_url=self.url, timeout=timeout, headers=headers, transport=transport)

    # -- HTTP ------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _reaching(self) -> Iterator[None]:
        try:
            yield
        except httpx.TransportError as exc:
            reason = str(exc) or type(exc).__name__
            raise StoreError(f"cannot reach the passerelle server at {self.url}: {reason}") from exc
        except httpx.RequestError as exc:
            raise StoreError(f"request to the passerelle server at {self.url} failed: {exc}") from exc

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        with self._reaching():
            response = self._http.request(method, API + path, **kwargs)
        if response.is_error:
            raise self._error(response)
        return response

    def _download(self, path: str, dest: BinaryIO, **kwargs: Any) -> None:
        """Stream the body of ``GET path`` into ``dest``, so large files never sit in memory."""
        with self._reaching(), self._http.stream("GET", API + path, **kwargs) as response:
            if response.is_error:
                response.read()
                raise self._error(response)
            for chunk in response.iter_bytes():
                dest.write(chunk)

    def _error(self, response: httpx.Response) -> PasserelleError:
        try:
            body = response.json()
        except ValueError:
            body = None
        return error_from_response(response.status_code, body, fallback=response.text)

    def _parse(self, response: httpx.Response, adapter: TypeAdapter[_T]) -> _T:
        try:
            parsed = adapter.validate_json(response.content)
        except ValidationError as exc:
            rid = response.headers.get(REQUEST_ID_HEADER, "?")
            raise StoreError(
                f"the server at {self.url} answered {response.request.method} {response.request.url.path} "
                f"with something passerelle does not understand (request id {rid}): {exc.error_count()} "
                "problem(s); is it a passerelle server of the same version?"
            ) from exc
        return parsed

    # -- registry --------------------------------------------------------------------------------

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
    ) -> VersionInfo:
        # Checked here too so that a bad name fails before the artifact is written and sent.
        check_name(name, "model name")
        with tempfile.TemporaryDirectory(prefix="passerelle-upload-") as tmp:
            work = Path(tmp)
            folder = work / "artifact"
            folder.mkdir()
            prepared = prepare_artifact(model, folder, flavor=flavor, trust=trust)
            manifest = {
                "flavor": prepared.flavor,
                "options": prepared.saved.options,
                "libraries": prepared.saved.libraries,
                "untrusted": prepared.saved.untrusted,
                "environment": prepared.environment,
                "lineage": prepared.lineage,
                "metrics": metrics or {},
                "params": params or {},
                "tags": tags or {},
                "dataset": dataset,
                "closed": closed,
                "description": description,
                "trust": trust,
                "reason": reason,
                "sample_format": "array" if is_array_like(sample) else "table",
            }
            packed = work / "artifact.tar.gz"
            with packed.open("wb") as fh:
                wire.pack(folder, wire.files_below(folder), fh)
            with contextlib.ExitStack() as stack:
                parts: dict[str, tuple[str, BinaryIO, str]] = {
                    "artifact": ("artifact.tar.gz", stack.enter_context(packed.open("rb")), wire.MEDIA_TYPE)
                }
                if sample is not None:
                    table = _write_sample(sample, work / "sample.parquet")
                    parts["sample"] = ("sample.parquet", stack.enter_context(table.open("rb")), PARQUET)
                # NaN stays in the manifest (as JSON's NaN) so the server refuses it as a local
                # registration would.
                form = {"manifest": json.dumps(manifest, default=_plain)}
                response = self._call("POST", f"/models/{_quote(name)}/versions", data=form, files=parts)
        return self._parse(response, _VERSION)

    def load(self, ref: str) -> LoadedModel:
        info = self.get_version(ref)
        folder = self._artifact_folder(info)
        diffs = environment.differences(info.environment)
        if diffs:
            warnings.warn(
                f"{info.ref} was registered in another environment: {'; '.join(diffs)}",
                EnvironmentMismatchWarning,
                stacklevel=2,
            )
        predictor = get_flavor(info.flavor).load(
            folder, info.flavor_options, trusted=info.untrusted if info.trusted else []
        )
        return LoadedModel(info, predictor)

    def _artifact_folder(self, info: VersionInfo) -> Path:
        """The version's files in the local cache, each verified against its recorded sha256."""
        files = [StoredFile(f.path, f.sha256, f.size) for f in info.files]
        base = Path(self.settings.home).resolve() / "cache" / "remote" / _slug(self.url)
        folder = base / _safe_key(info.artifact_key)
        with contextlib.suppress(IntegrityError):
            verify_folder(folder, files)
            return folder
        base.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".fetch-", dir=base))
        try:
            packed = staging / "artifact.tar.gz"
            with packed.open("wb") as fh:
                self._download(f"/versions/{_quote(info.ref)}/artifact", fh)
            unpacked = staging / "files"
            try:
                with packed.open("rb") as fh:
                    names = wire.unpack(fh, unpacked, what=f"the artifact of {info.ref} sent by {self.url}")
            except InvalidInputError as exc:
                raise IntegrityError(str(exc)) from exc
            unexpected = sorted(set(names) - {f.path for f in files})
            if unexpected:
                raise IntegrityError(
                    f"the artifact of {info.ref} sent by {self.url} holds files its version does not "
                    f"record: {', '.join(unexpected)}; refusing to load it"
                )
            verify_folder(unpacked, files)
            folder.parent.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(folder, ignore_errors=True)
            os.replace(unpacked, folder)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return folder

    def list_models(self) -> list[ModelInfo]:
        return self._parse(self._call("GET", "/models"), _MODELS)

    def get_model(self, name: str) -> tuple[ModelInfo, list[VersionInfo]]:
        detail = self._parse(self._call("GET", f"/models/{_quote(name)}"), _MODEL_DETAIL)
        return detail.model, detail.versions

    def get_version(self, ref: str) -> VersionInfo:
        return self._parse(self._call("GET", f"/versions/{_ref(ref)}"), _VERSION)

    def set_alias(self, model: str, alias: str, number: int, *, reason: str | None = None) -> VersionInfo:
        body = {"version": number, "reason": reason}
        path = f"/models/{_quote(model)}/aliases/{_quote(alias)}"
        return self._parse(self._call("PUT", path, json=body), _VERSION)

    def remove_alias(self, model: str, alias: str, *, reason: str | None = None) -> None:
        params = {"reason": reason} if reason is not None else {}
        self._call("DELETE", f"/models/{_quote(model)}/aliases/{_quote(alias)}", params=params)

    def set_tags(
        self,
        ref: str,
        set_: dict[str, Any] | None = None,
        remove: list[str] | None = None,
        *,
        reason: str | None = None,
    ) -> VersionInfo:
        body = _jsonable({"set": set_ or {}, "remove": remove or [], "reason": reason})
        return self._parse(self._call("PATCH", f"/versions/{_ref(ref)}/tags", json=body), _VERSION)

    def set_archived(self, ref: str, archived: bool, *, reason: str | None = None) -> VersionInfo:
        action = "archive" if archived else "restore"
        response = self._call("POST", f"/versions/{_ref(ref)}/{action}", json={"reason": reason})
        return self._parse(response, _VERSION)

    # -- datasets --------------------------------------------------------------------------------

    def register_dataset(
        self, source: str | Path, name: str, *, tags: dict[str, Any] | None = None, reason: str | None = None
    ) -> DatasetVersionInfo:
        uri = str(source)
        path = f"/datasets/{_quote(name)}/versions"
        if "://" in uri and not uri.startswith("file://"):
            # The server reads it, with its own credentials.
            body = _jsonable({"uri": uri, "tags": tags or {}, "reason": reason})
            return self._parse(self._call("POST", path, json=body), _DATASET_VERSION)
        # A path is a file on this machine: it is uploaded, and the server keeps a copy.
        check_name(name, "dataset name")
        table_format(uri)
        local = Path(uri.removeprefix("file://"))
        if not local.is_file():
            raise InvalidInputError(f"cannot read {uri}: no such file")
        form = {"tags": json.dumps(_jsonable(tags or {}))}
        if reason is not None:
            form["reason"] = reason
        with local.open("rb") as fh:
            response = self._call("POST", path + "/upload", data=form, files={"file": (local.name, fh)})
        return self._parse(response, _DATASET_VERSION)

    def list_datasets(self) -> list[DatasetInfo]:
        return self._parse(self._call("GET", "/datasets"), _DATASETS)

    def get_dataset(self, ref: str) -> DatasetVersionInfo:
        if not _travels(ref):
            parse_dataset_ref(ref)
        return self._parse(self._call("GET", f"/dataset-versions/{_quote(ref)}"), _DATASET_VERSION)

    def dataset_versions(self, name: str) -> list[DatasetVersionInfo]:
        response = self._call("GET", f"/datasets/{_quote(name)}/versions")
        return self._parse(response, _DATASET_VERSIONS)

    # -- governance and housekeeping -------------------------------------------------------------

    def audit(
        self,
        *,
        since: dt.datetime | None = None,
        target: str | None = None,
        action: str | None = None,
        limit: int = 100,
    ) -> list[AuditEntry]:
        params: dict[str, str | int] = {"limit": limit}
        if since is not None:
            params["since"] = _iso(since)
        if target is not None:
            params["target"] = target
        if action is not None:
            params["action"] = action
        return self._parse(self._call("GET", "/audit", params=params), _AUDIT)

    def doctor(self) -> DoctorReport:
        return self._parse(self._call("GET", "/doctor"), _DOCTOR)

    def gc(self, *, dry_run: bool = False) -> list[str]:
        response = self._call("POST", "/gc", params={"dry_run": "true" if dry_run else "false"})
        return self._parse(response, _GC).removed

    # -- endpoints and traffic (routes of passerelle.api.endpoints, served by `passerelle serve`) --

    def deploy(self, name: str, spec: DeploySpec, *, reason: str | None = None) -> RevisionInfo:
        body = {**spec.model_dump(mode="json"), "reason": reason}
        return self._parse(self._call("PUT", f"/endpoints/{_quote(name)}", json=body), _REVISION)

    def set_weights(
        self, name: str, routes: list[tuple[str, int]], *, reason: str | None = None
    ) -> RevisionInfo:
        body = {"routes": [list(route) for route in routes], "reason": reason}
        response = self._call("POST", f"/endpoints/{_quote(name)}/weights", json=body)
        return self._parse(response, _REVISION)

    def promote(self, name: str, ref: str, *, reason: str | None = None) -> RevisionInfo:
        body = {"ref": ref, "reason": reason}
        response = self._call("POST", f"/endpoints/{_quote(name)}/promote", json=body)
        return self._parse(response, _REVISION)

    def rollback(self, name: str, *, to: int | None = None, reason: str | None = None) -> RevisionInfo:
        body = {"to": to, "reason": reason}
        response = self._call("POST", f"/endpoints/{_quote(name)}/rollback", json=body)
        return self._parse(response, _REVISION)

    def list_endpoints(self) -> list[EndpointInfo]:
        return self._parse(self._call("GET", "/endpoints"), _ENDPOINTS)

    def get_endpoint(self, name: str) -> EndpointDetail:
        return self._parse(self._call("GET", f"/endpoints/{_quote(name)}"), _ENDPOINT_DETAIL)

    def compare(self, name: str, *, since: dt.datetime) -> Comparison:
        params = {"since": _iso(since)}
        return self._parse(
            self._call("GET", f"/endpoints/{_quote(name)}/compare", params=params), _COMPARISON
        )

    def predictions_tail(self, name: str, *, limit: int = 20) -> list[dict[str, Any]]:
        response = self._call("GET", f"/endpoints/{_quote(name)}/predictions", params={"limit": limit})
        return self._parse(response, _ROWS)

    def predictions_export(
        self, name: str, *, output: Path, since: dt.datetime | None = None, fmt: str = "parquet"
    ) -> int:
        params = {"format": fmt} | ({"since": _iso(since)} if since is not None else {})
        output = Path(output)
        output.parent.mkdir(parents=True, exist_ok=True)
        # Written next to the output and renamed: the file appears whole or not at all.
        handle, partial = tempfile.mkstemp(prefix=f".{output.name}-", dir=output.parent)
        try:
            with os.fdopen(handle, "wb") as fh:
                self._download(f"/endpoints/{_quote(name)}/predictions/export", fh, params=params)
            rows = _count_rows(Path(partial), fmt)
            os.replace(partial, output)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(partial)
        return rows

    def close(self) -> None:
        self._http.close()


class _ModelDetail(BaseModel):
    model: ModelInfo
    versions: list[VersionInfo]


class _GcResult(BaseModel):
    removed: list[str]


_VERSION = TypeAdapter(VersionInfo)
_MODELS = TypeAdapter(list[ModelInfo])
_MODEL_DETAIL = TypeAdapter(_ModelDetail)
_DATASET_VERSION = TypeAdapter(DatasetVersionInfo)
_DATASET_VERSIONS = TypeAdapter(list[DatasetVersionInfo])
_DATASETS = TypeAdapter(list[DatasetInfo])
_AUDIT = TypeAdapter(list[AuditEntry])
_DOCTOR = TypeAdapter(DoctorReport)
_GC = TypeAdapter(_GcResult)
_REVISION = TypeAdapter(RevisionInfo)
_ENDPOINTS = TypeAdapter(list[EndpointInfo])
_ENDPOINT_DETAIL = TypeAdapter(EndpointDetail)
_COMPARISON = TypeAdapter(Comparison)
_ROWS = TypeAdapter(list[dict[str, Any]])


def _iso(when: dt.datetime) -> str:
    return (when if when.tzinfo else when.replace(tzinfo=dt.UTC)).isoformat()


def _count_rows(path: Path, fmt: str) -> int:
    """Rows in an exported file (the export route sends the file, not its count)."""
    if path.stat().st_size == 0:
        return 0
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return int(pq.ParquetFile(path).metadata.num_rows)
    if fmt == "csv":
        import pyarrow.csv

        return int(pyarrow.csv.read_csv(path).num_rows)
    with path.open("rb") as fh:
        return sum(1 for line in fh if line.strip())


def _write_sample(sample: Any, dest: Path) -> Path:
    """The sample as a Parquet file, the one form the server takes: it keeps the column types."""
    frame = to_frame(sample)
    frame = frame.set_axis([str(c) for c in frame.columns], axis=1)
    try:
        frame.to_parquet(dest, index=False)
    except (ValueError, TypeError, pa.ArrowException) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InvalidInputError(f"cannot send the sample as Parquet: {first}") from exc
    return dest


def _quote(segment: str) -> str:
    return quote(segment, safe=":@")


def _travels(segment: str) -> bool:
    """Whether ``segment`` reaches the server intact as one path segment."""
    return bool(segment.strip()) and "/" not in segment and segment.strip(".") != ""


def _ref(ref: str) -> str:
    # A reference that cannot travel in a path is refused as the server would refuse it,
    # rather than reaching some other route.
    if not _travels(ref):
        parse_ref(ref)
    return _quote(ref)


def _jsonable(value: Any) -> Any:
    """``value`` with what JSON cannot hold replaced as the registry would (numpy scalars, objects)."""
    return json.loads(json.dumps(value, default=_plain))


def _plain(value: Any) -> Any:
    item = getattr(value, "item", None)
    return item() if callable(item) else str(value)


def _header_text(text: str) -> str:
    """``text`` in the printable ASCII an HTTP header carries safely (accents dropped: josé → jose)."""
    ascii_only = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return "".join(c for c in ascii_only if " " <= c <= "~").strip()[:200]


def _slug(url: str) -> str:
    return re.sub(r"[^A-Za-z0-9.\-]+", "_", url.split("://", 1)[-1]).strip("_") or "server"


def _safe_key(key: str) -> PurePosixPath:
    path = PurePosixPath(key)
    if path.is_absolute() or not path.parts or not all(_KEY_PART.match(p) and p != ".." for p in path.parts):
        raise IntegrityError(f"the server sent an unusable artifact key {key!r}")
    return path
