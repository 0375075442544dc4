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
import functools
import json
import os
import re
import shutil
import tempfile
import unicodedata
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, BinaryIO, Literal, TypeVar
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
from passerelle.client import Client, DoctorReport, check_row_id
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

if TYPE_CHECKING:
    from collections.abc import Callable

    from passerelle.alerts import AlertInfo, RuleInfo, RuleSpec, SilenceInfo
    from passerelle.auth import CreatedToken, TokenInfo
    from passerelle.feedback import FeedbackItem, FeedbackResult, UnmatchedFeedback
    from passerelle.monitor import MonitorInfo, MonitorSpec, ResultInfo, RunSummary
    from passerelle.notify import NotifierInfo
    from passerelle.pipelines import Pipeline, PipelineInfo, RunInfo
    from passerelle.predictionlog import Erasure

API = "/api/v1"
DEFAULT_TIMEOUT = 60.0
#: A run of the monitors evaluates up to 48 windows of each on the server: it may take minutes.
MONITOR_RUN_TIMEOUT = 600.0
#: How long waiting on a pipeline run bears a server that cannot be reached.
WAIT_UNREACHABLE_S = 120.0
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
        actor: str | None = None,
        limit: int = 100,
    ) -> list[AuditEntry]:
        params: dict[str, str | int] = {"limit": limit}
        if since is not None:
            params["since"] = _iso(since)
        if target is not None:
            params["target"] = target
        if action is not None:
            params["action"] = action
        if actor is not None:
            params["actor"] = actor
        return self._parse(self._call("GET", "/audit", params=params), _AUDIT)

    def doctor(self, *, audit_anchor: str | None = None) -> DoctorReport:
        params = {} if audit_anchor is None else {"audit_anchor": audit_anchor}
        return self._parse(self._call("GET", "/doctor", params=params), _DOCTOR)

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

    # -- feedback (routes of passerelle.api.endpoints, served by `passerelle serve`) ---------------

    def record_feedback(
        self,
        endpoint: str,
        items: Sequence[FeedbackItem | Mapping[str, Any]],
        *,
        on_invalid: Literal["raise", "reject"] = "raise",
        reason: str | None = None,
    ) -> FeedbackResult:
        body = {"items": [_feedback_item(item) for item in items], "on_invalid": on_invalid, "reason": reason}
        try:
            # NaN travels as JSON's NaN so that the server refuses it as a local client would.
            content = json.dumps(body, default=_feedback_json, allow_nan=True).encode()
        except (TypeError, ValueError) as exc:
            raise InvalidInputError(f"cannot send the feedback items as JSON: {exc}") from exc
        response = self._call(
            "POST",
            f"/endpoints/{_quote(endpoint)}/feedback",
            content=content,
            headers={"Content-Type": "application/json"},
        )
        return self._parse(response, _feedback_adapters()[0])

    def feedback_unmatched(
        self, endpoint: str, *, status: str | None = None, limit: int = 1000
    ) -> list[UnmatchedFeedback]:
        params: dict[str, str | int] = {"limit": limit}
        if status is not None:
            params["status"] = status
        response = self._call("GET", f"/endpoints/{_quote(endpoint)}/feedback/unmatched", params=params)
        return self._parse(response, _feedback_adapters()[1])

    def rejoin_feedback(self, endpoint: str) -> int:
        response = self._call("POST", f"/endpoints/{_quote(endpoint)}/feedback/rejoin")
        return self._parse(response, _REJOINED).joined

    # -- monitors, alerts and notifiers (routes of passerelle.api.monitoring) -----------------------

    def set_monitor(
        self,
        endpoint: str,
        spec: MonitorSpec,
        *,
        enabled: bool = True,
        start: dt.datetime | None = None,
        reason: str | None = None,
    ) -> MonitorInfo:
        body = {
            "window": spec.window_s,
            "delay": spec.delay_s,
            "reference": spec.reference,
            "drift": dict(spec.drift),
            "metric": spec.metric,
            "label_column": spec.label_column,
            "enabled": enabled,
            "start": None if start is None else _iso(start),
            "reason": reason,
        }
        response = self._call("PUT", f"/endpoints/{_quote(endpoint)}/monitor", json=_jsonable(body))
        return self._parse(response, _monitoring().monitor)

    def get_monitor(self, endpoint: str) -> MonitorInfo:
        response = self._call("GET", f"/endpoints/{_quote(endpoint)}/monitor")
        return self._parse(response, _monitoring().monitor)

    def list_monitors(self) -> list[MonitorInfo]:
        return self._parse(self._call("GET", "/monitors"), _monitoring().monitors)

    def remove_monitor(self, endpoint: str, *, reason: str | None = None) -> None:
        params = {"reason": reason} if reason is not None else {}
        self._call("DELETE", f"/endpoints/{_quote(endpoint)}/monitor", params=params)

    def run_monitors(self, endpoint: str | None = None) -> list[RunSummary]:
        params = {"endpoint": endpoint} if endpoint is not None else {}
        read = self._http.timeout.read
        timeout = None if read is None else max(read, MONITOR_RUN_TIMEOUT)
        response = self._call("POST", "/monitors/run", params=params, timeout=timeout)
        return self._parse(response, _monitoring().runs)

    def monitor_results(
        self,
        endpoint: str,
        *,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        version: str | None = None,
    ) -> list[ResultInfo]:
        params = _params(since=since, until=until, version=version)
        response = self._call("GET", f"/endpoints/{_quote(endpoint)}/monitor/results", params=params)
        return self._parse(response, _monitoring().results)

    def monitor_report(
        self, endpoint: str, *, since: dt.datetime | None = None, until: dt.datetime | None = None
    ) -> str:
        params = _params(since=since, until=until)
        return self._call("GET", f"/endpoints/{_quote(endpoint)}/monitor/report", params=params).text

    def set_alert_rule(self, endpoint: str, spec: RuleSpec, *, reason: str | None = None) -> RuleInfo:
        body = {
            "expression": spec.expression,
            "for_windows": spec.for_windows,
            "keep_firing_windows": spec.keep_firing_windows,
            "severity": spec.severity,
            "inhibited_by": list(spec.inhibited_by),
            "notify": list(spec.notify),
            "pipeline": spec.pipeline,
            "labels": dict(spec.labels),
            "reason": reason,
        }
        path = f"/endpoints/{_quote(endpoint)}/alert-rules/{_quote(spec.name)}"
        return self._parse(self._call("PUT", path, json=_jsonable(body)), _monitoring().rule)

    def list_alert_rules(self, endpoint: str | None = None) -> list[RuleInfo]:
        response = self._call("GET", "/alert-rules", params=_params(endpoint=endpoint))
        return self._parse(response, _monitoring().rules)

    def remove_alert_rule(self, endpoint: str, name: str, *, reason: str | None = None) -> None:
        params = {"reason": reason} if reason is not None else {}
        self._call("DELETE", f"/endpoints/{_quote(endpoint)}/alert-rules/{_quote(name)}", params=params)

    def list_alerts(
        self, endpoint: str | None = None, *, state: str | None = None, limit: int = 200
    ) -> list[AlertInfo]:
        params = _params(endpoint=endpoint, state=state) | {"limit": limit}
        return self._parse(self._call("GET", "/alerts", params=params), _monitoring().alerts)

    def ack_alert(self, alert_id: int, *, reason: str | None = None) -> AlertInfo:
        response = self._call("POST", f"/alerts/{_row_id(alert_id, 'alert')}/ack", json={"reason": reason})
        return self._parse(response, _monitoring().alert)

    def silence(
        self, endpoint: str, *, rule: str = "*", duration: dt.timedelta, comment: str = ""
    ) -> SilenceInfo:
        seconds = duration.total_seconds() if isinstance(duration, dt.timedelta) else duration
        body = {"rule": rule, "duration": seconds, "comment": comment}
        response = self._call("POST", f"/endpoints/{_quote(endpoint)}/silences", json=_jsonable(body))
        return self._parse(response, _monitoring().silence)

    def expire_silence(self, silence_id: int, *, reason: str | None = None) -> SilenceInfo:
        path = f"/silences/{_row_id(silence_id, 'silence')}/expire"
        return self._parse(self._call("POST", path, json={"reason": reason}), _monitoring().silence)

    def list_silences(self, endpoint: str | None = None, *, active_only: bool = False) -> list[SilenceInfo]:
        params = _params(endpoint=endpoint) | {"active_only": "true" if active_only else "false"}
        return self._parse(self._call("GET", "/silences", params=params), _monitoring().silences)

    def set_notifier(
        self,
        name: str,
        kind: str,
        config: Mapping[str, Any],
        *,
        enabled: bool = True,
        reason: str | None = None,
    ) -> NotifierInfo:
        body = {"kind": kind, "config": config, "enabled": enabled, "reason": reason}
        response = self._call("PUT", f"/notifiers/{_quote(name)}", json=_jsonable(body))
        return self._parse(response, _monitoring().notifier)

    def list_notifiers(self) -> list[NotifierInfo]:
        return self._parse(self._call("GET", "/notifiers"), _monitoring().notifiers)

    def remove_notifier(self, name: str, *, reason: str | None = None) -> None:
        params = {"reason": reason} if reason is not None else {}
        self._call("DELETE", f"/notifiers/{_quote(name)}", params=params)

    def test_notifier(self, name: str) -> None:
        self._call("POST", f"/notifiers/{_quote(name)}/test")

    def notifications(self, *, status: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        params = _params(status=status) | {"limit": limit}
        return self._parse(self._call("GET", "/notifications", params=params), _ROWS)

    def close(self) -> None:
        self._http.close()

    # -- data protection (routes of passerelle.api.privacy) -----------------------------------------

    def erase_predictions(self, endpoint: str, key: str, *, reason: str | None = None) -> Erasure:
        from passerelle.predictionlog import Erasure

        body = {"key": key, "reason": reason}
        response = self._call("POST", f"/endpoints/{_quote(endpoint)}/predictions/erase", json=body)
        return self._parse(response, TypeAdapter(Erasure))

    def apply_retention(self, *, dry_run: bool = False) -> dict[str, int]:
        response = self._call("POST", "/predictions/retention", json={"dry_run": dry_run})
        return self._parse(response, TypeAdapter(dict[str, int]))

    # -- API tokens (routes of passerelle.api.tokens; an admin token is needed) --------------------

    def create_token(
        self,
        name: str,
        role: str,
        *,
        expires_in: dt.timedelta | None = None,
        endpoints: Sequence[str] = (),
        reason: str | None = None,
    ) -> CreatedToken:
        from passerelle.auth import CreatedToken

        body = {
            "name": name,
            "role": role,
            "expires_in_s": expires_in.total_seconds() if expires_in is not None else None,
            "endpoints": list(endpoints),
            "reason": reason,
        }
        return self._parse(self._call("POST", "/tokens", json=body), TypeAdapter(CreatedToken))

    def list_tokens(self) -> list[TokenInfo]:
        from passerelle.auth import TokenInfo

        return self._parse(self._call("GET", "/tokens"), TypeAdapter(list[TokenInfo]))

    def revoke_token(self, name: str, *, reason: str | None = None) -> TokenInfo:
        from passerelle.auth import TokenInfo

        response = self._call("POST", f"/tokens/{_quote(name)}/revoke", json={"reason": reason})
        return self._parse(response, TypeAdapter(TokenInfo))

    # -- retraining pipelines and lineage (routes of passerelle.api.pipelines) ----------------------

    def list_pipelines(self) -> list[PipelineInfo]:
        return self._parse(self._call("GET", "/pipelines"), _pipelines().pipelines)

    def get_pipeline(self, name: str) -> PipelineInfo:
        response = self._call("GET", f"/pipelines/{_pipeline_name(name)}")
        return self._parse(response, _pipelines().pipeline)

    def apply_pipelines(
        self, pipelines: Sequence[Pipeline], *, source: str = "python", reason: str | None = None
    ) -> list[PipelineInfo]:
        from passerelle.pipelines.definition import checked_definitions

        # Every definition is checked before the first is sent, so a bad one stores none.
        checked = checked_definitions(pipelines)
        for pipeline in checked:
            _pipeline_name(pipeline.name)
        stored = []
        for pipeline in checked:
            body = {
                "definition": pipeline.model_dump(mode="json", exclude={"name"}),
                "source": source,
                "reason": reason,
            }
            response = self._call("PUT", f"/pipelines/{_pipeline_name(pipeline.name)}", json=body)
            stored.append(self._parse(response, _pipelines().pipeline))
        return stored

    def run_pipeline(
        self,
        name: str,
        *,
        trigger: str = "manual",
        params: Mapping[str, Any] | None = None,
        reason: str | None = None,
    ) -> RunInfo:
        body = {"trigger": trigger, "params": dict(params or {}), "reason": reason}
        response = self._call("POST", f"/pipelines/{_pipeline_name(name)}/runs", json=_jsonable(body))
        return self._parse(response, _pipelines().run)

    def list_runs(
        self, name: str | None = None, *, state: str | None = None, limit: int = 50
    ) -> list[RunInfo]:
        from passerelle.client import RUNS_MAX

        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= RUNS_MAX:
            raise InvalidInputError(f"limit must be a whole number from 1 to {RUNS_MAX}, got {limit!r}")
        params = _params(state=state) | {"limit": limit}
        path = "/pipelines/runs" if name is None else f"/pipelines/{_pipeline_name(name)}/runs"
        return self._parse(self._call("GET", path, params=params), _pipelines().runs)

    def get_run(self, ref: str) -> RunInfo:
        return self._parse(self._call("GET", f"/pipelines/runs/{_run_ref(ref)}"), _pipelines().run)

    def cancel_run(self, ref: str, *, reason: str | None = None) -> RunInfo:
        response = self._call("POST", f"/pipelines/runs/{_run_ref(ref)}/cancel", json={"reason": reason})
        return self._parse(response, _pipelines().run)

    def run_logs(self, ref: str, *, offset: int = 0) -> tuple[str, int]:
        from passerelle.api.pipelines import LOG_OFFSET_HEADER

        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise InvalidInputError(f"offset must be a whole number of bytes, 0 or more, got {offset!r}")
        response = self._call("GET", f"/pipelines/runs/{_run_ref(ref)}/logs", params={"offset": offset})
        following = response.headers.get(LOG_OFFSET_HEADER, "")
        if not following.isdigit():
            raise StoreError(
                f"the server at {self.url} sent a run's log without a valid {LOG_OFFSET_HEADER} header; "
                "is it a passerelle server of the same version?"
            )
        return response.content.decode("utf-8", errors="replace"), int(following)

    def wait_run(
        self,
        ref: str,
        *,
        poll_s: float = 1.0,
        timeout_s: float | None = None,
        on_run: Callable[[RunInfo], None] | None = None,
    ) -> RunInfo:
        import time

        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        current = self.get_run(ref)
        announced: set[str] = set()
        unreachable_since: float | None = None
        while True:
            if on_run is not None and current.id not in announced:
                announced.add(current.id)
                on_run(current)
            if current.terminal:
                # A failed attempt's retry is queued in the transaction that ends it.
                following = self.list_runs(current.pipeline, limit=50)
                retry = next((r for r in following if r.retry_of == current.id), None)
                if retry is None:
                    return current
                current = retry
                continue
            if deadline is not None and time.monotonic() > deadline:
                return current
            time.sleep(poll_s)
            try:
                current = self.get_run(current.id)
                unreachable_since = None
            except StoreError:
                # A server restarting (which interrupts and retries its runs) is waited through.
                unreachable_since = unreachable_since or time.monotonic()
                if time.monotonic() - unreachable_since > WAIT_UNREACHABLE_S:
                    raise

    def lineage(self, ref: str) -> dict[str, Any]:
        return self._parse(self._call("GET", f"/lineage/{_ref(ref)}"), _pipelines().graph)


class _ModelDetail(BaseModel):
    model: ModelInfo
    versions: list[VersionInfo]


class _GcResult(BaseModel):
    removed: list[str]


class _Rejoined(BaseModel):
    joined: int


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
_REJOINED = TypeAdapter(_Rejoined)


@functools.cache
def _feedback_adapters() -> tuple[TypeAdapter[FeedbackResult], TypeAdapter[list[UnmatchedFeedback]]]:
    # passerelle.feedback pulls in the performance figures: imported when feedback is first sent.
    from passerelle.feedback import FeedbackResult, UnmatchedFeedback

    return TypeAdapter(FeedbackResult), TypeAdapter(list[UnmatchedFeedback])


class _MonitoringAdapters:
    """The answers of the monitoring routes, read back into the domain's dataclasses."""

    def __init__(self) -> None:
        from passerelle.alerts import AlertInfo, RuleInfo, SilenceInfo
        from passerelle.monitor import MonitorInfo, ResultInfo, RunSummary
        from passerelle.notify import NotifierInfo

        self.monitor = TypeAdapter(MonitorInfo)
        self.monitors = TypeAdapter(list[MonitorInfo])
        self.runs = TypeAdapter(list[RunSummary])
        self.results = TypeAdapter(list[ResultInfo])
        self.rule = TypeAdapter(RuleInfo)
        self.rules = TypeAdapter(list[RuleInfo])
        self.alert = TypeAdapter(AlertInfo)
        self.alerts = TypeAdapter(list[AlertInfo])
        self.silence = TypeAdapter(SilenceInfo)
        self.silences = TypeAdapter(list[SilenceInfo])
        self.notifier = TypeAdapter(NotifierInfo)
        self.notifiers = TypeAdapter(list[NotifierInfo])


@functools.cache
def _monitoring() -> _MonitoringAdapters:
    # passerelle.monitor pulls in the drift engine: imported when monitors are first used.
    return _MonitoringAdapters()


class _PipelineAdapters:
    """The answers of the pipeline routes, read back into the domain's models."""

    def __init__(self) -> None:
        from passerelle.pipelines import PipelineInfo, RunInfo

        self.pipeline = TypeAdapter(PipelineInfo)
        self.pipelines = TypeAdapter(list[PipelineInfo])
        self.run = TypeAdapter(RunInfo)
        self.runs = TypeAdapter(list[RunInfo])
        self.graph = TypeAdapter(dict[str, Any])


@functools.cache
def _pipelines() -> _PipelineAdapters:
    # passerelle.pipelines pulls in the training machinery: imported when pipelines are first used.
    return _PipelineAdapters()


def _pipeline_name(name: str) -> str:
    """A pipeline name as a path segment; one that cannot travel is unknown, as the server would say."""
    from passerelle.errors import NotFoundError

    if not _travels(name):
        raise NotFoundError(
            f"pipeline {name!r} does not exist; define it and run `passerelle pipeline apply`"
        )
    if name == "runs":
        raise InvalidInputError(
            "a pipeline named 'runs' cannot be reached over HTTP (/api/v1/pipelines/runs lists the runs); "
            "rename it"
        )
    return _quote(name)


def _run_ref(ref: str) -> str:
    """A run id or ``PIPELINE#NUMBER`` as a path segment (``PIPELINE/NUMBER`` is sent with ``#``)."""
    from passerelle.errors import NotFoundError

    name, sep, number = ref.strip().rpartition("/")
    if sep and name and number.isdigit() and "/" not in name:
        ref = f"{name}#{number}"
    if not _travels(ref):
        raise NotFoundError(f"pipeline run {ref!r} does not exist (give its id or PIPELINE#NUMBER)")
    return _quote(ref)


def _params(**values: str | dt.datetime | None) -> dict[str, str]:
    """Query parameters of the values given, times as ISO 8601."""
    return {
        name: _iso(value) if isinstance(value, dt.datetime) else value
        for name, value in values.items()
        if value is not None
    }


def _row_id(value: int, what: str) -> str:
    """An id as a path segment, refused in the local client's words when it cannot exist."""
    return str(check_row_id(value, what))


def _feedback_item(item: Any) -> Any:
    """An item as the route takes it; anything but a :class:`FeedbackItem` goes as it is, for the
    server to check it (and name it by its position) as a local client would."""
    from passerelle.feedback import FeedbackItem

    if isinstance(item, FeedbackItem):
        fields = {
            "prediction_id": item.prediction_id,
            "key": item.key,
            "label": item.label,
            "time": item.time,
        }
        return {name: value for name, value in fields.items() if value is not None}
    if isinstance(item, Mapping):
        return dict(item)
    return item


def _feedback_json(value: Any) -> Any:
    """What JSON cannot hold in an item: times as ISO 8601, numpy and pandas scalars as Python ones."""
    import pandas as pd

    if value is pd.NaT or value is pd.NA:
        return None  # missing, as a local client sees it
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    return _plain(value)


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
