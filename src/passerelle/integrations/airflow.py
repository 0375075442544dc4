"""An Apache Airflow operator that runs a passerelle pipeline and fails the task unless it succeeded.

It has the semantics of ``passerelle pipeline run NAME --wait``: queue a manual run, wait for it
and its retries, and end with its outcome. Without a server URL the Airflow worker executes the
run itself, on the store its settings name (an Airflow worker then needs the project's training
environment); with one (``url=`` or ``PASSERELLE_URL``) the run is queued on that server, whose
scheduler executes it, and the task follows it over HTTP.

Airflow is imported only when present (``pip install 'passerelle[airflow]'``): the operator then
subclasses Airflow's ``BaseOperator``; without Airflow it is a plain class with the same
``execute(context)``, which is how it is tested and how a script may call it.
"""

from __future__ import annotations

import importlib
import time
from typing import Any

from passerelle.errors import PasserelleError

__all__ = ["PasserellePipelineOperator", "PipelineRunFailed"]

TERMINAL = ("succeeded", "rejected", "failed", "interrupted", "cancelled")


class PipelineRunFailed(PasserelleError):
    """The run did not succeed; ``run`` is its record and ``exit_code`` what the command line exits with."""

    def __init__(self, message: str, run: dict[str, Any], exit_code: int) -> None:
        super().__init__(message)
        self.run = run
        self.exit_code = exit_code


class _PlainOperator:
    """What the operator stands on without Airflow: a task id and keyword arguments, kept."""

    template_fields: tuple[str, ...] = ()

    def __init__(self, *, task_id: str = "passerelle_pipeline", **kwargs: Any) -> None:
        self.task_id = task_id
        self.extra = kwargs


def _base() -> type:
    for module, name in (("airflow.sdk", "BaseOperator"), ("airflow.models.baseoperator", "BaseOperator")):
        try:
            found: type = getattr(importlib.import_module(module), name)
            return found
        except (ImportError, AttributeError):
            continue
    return _PlainOperator


_Base: Any = _base()


class PasserellePipelineOperator(_Base):  # type: ignore[misc]
    """Run the pipeline ``pipeline`` and wait for it (see the module's documentation).

    ``pipeline_params`` override parameters the pipeline declares. A rejected run (gates, or an
    incompatible signature) fails the task unless ``rejected_ok``. The task returns the run as
    a dict (pushed to XCom by Airflow).
    """

    template_fields = ("pipeline", "pipeline_params", "reason")

    def __init__(
        self,
        *,
        pipeline: str,
        pipeline_params: dict[str, Any] | None = None,
        reason: str | None = None,
        url: str | None = None,
        token: str | None = None,
        settings: Any = None,
        rejected_ok: bool = False,
        poll_s: float = 5.0,
        timeout_s: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.pipeline = pipeline
        self.pipeline_params = dict(pipeline_params or {})
        self.reason = reason
        self.url = url
        self.token = token
        self.settings = settings
        self.rejected_ok = rejected_ok
        self.poll_s = poll_s
        self.timeout_s = timeout_s

    def _settings(self) -> Any:
        from passerelle.settings import load_settings

        return self.settings if self.settings is not None else load_settings()

    def execute(self, context: Any) -> dict[str, Any]:
        settings = self._settings()
        url = self.url or settings.url
        why = self.reason or f"scheduled by Airflow task {getattr(self, 'task_id', '?')}"
        run = self._remote(url, settings, why) if url else self._local(settings, why)
        return self._outcome(run)

    def _local(self, settings: Any, why: str) -> dict[str, Any]:
        from passerelle.context import Context
        from passerelle.pipelines import start_run, wait

        ctx = Context(settings)
        try:
            queued = start_run(ctx, self.pipeline, params=self.pipeline_params, reason=why)
            final = wait(ctx, queued.id, poll_s=self.poll_s, timeout_s=self.timeout_s)
            return final.model_dump(mode="json")
        finally:
            ctx.close()

    def _remote(self, url: str, settings: Any, why: str) -> dict[str, Any]:
        import httpx

        from passerelle.api.errors import error_from_response
        from passerelle.api.wire import USER_HEADER
        from passerelle.audit import current_user

        headers = {USER_HEADER: current_user(settings.user)}
        token = self.token or (settings.token.get_secret_value() if settings.token is not None else None)
        if token:
            headers["Authorization"] = f"Bearer {token}"

        def call(http: httpx.Client, method: str, path: str, **kwargs: Any) -> Any:
            response = http.request(method, path, **kwargs)
            if response.is_error:
                try:
                    body = response.json()
                except ValueError:
                    body = None
                raise error_from_response(response.status_code, body, fallback=response.text)
            return response.json()

        deadline = None if self.timeout_s is None else time.monotonic() + self.timeout_s
        with httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=60.0) as http:
            run: dict[str, Any] = call(
                http,
                "POST",
                f"/api/v1/pipelines/{self.pipeline}/runs",
                json={"params": self.pipeline_params, "reason": why},
            )
            while True:
                if run["state"] in TERMINAL:
                    following = call(
                        http, "GET", f"/api/v1/pipelines/{self.pipeline}/runs", params={"limit": 20}
                    )
                    retry = next((r for r in following if r.get("retry_of") == run["id"]), None)
                    if retry is None:
                        return run
                    run = retry
                    continue
                if deadline is not None and time.monotonic() > deadline:
                    return run
                time.sleep(self.poll_s)
                run = call(http, "GET", f"/api/v1/pipelines/runs/{run['id']}")

    def _outcome(self, run: dict[str, Any]) -> dict[str, Any]:
        from passerelle.pipelines.runs import exit_code

        state = run["state"]
        if state == "succeeded" or (state == "rejected" and self.rejected_ok):
            return run
        ref = f"{run['pipeline']}#{run['number']}"
        if state not in TERMINAL:
            raise PipelineRunFailed(f"run {ref} is still {state} after {self.timeout_s:g} s", run, 2)
        error = (run.get("error") or "").splitlines()
        detail = f": {error[0]}" if error else ""
        raise PipelineRunFailed(f"run {ref} ended {state}{detail}", run, exit_code(state))
