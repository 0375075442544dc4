"""Routes of retraining pipelines and lineage: store, list, queue, cancel, a run's state and log, a graph.

A queued run is started by the server's pipeline scheduler (``passerelle serve``), or by
whoever waits on it with ``passerelle pipeline run NAME --wait`` on the store itself; these
routes never train inside a request. Each handler is one call of the request's client.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from fastapi import Path as PathParam
from pydantic import BaseModel, ConfigDict, Field

from passerelle.api.deps import ClientDep
from passerelle.api.errors import responses
from passerelle.errors import InvalidInputError
from passerelle.pipelines import PipelineInfo, RunInfo

router = APIRouter(prefix="/api/v1", tags=["pipelines"], responses=responses(422, 500, 503))

#: the byte offset a client asks for next to follow a log
LOG_OFFSET_HEADER = "X-Log-Offset"
#: the run's state when its log was read: a client stops following once it is terminal
RUN_STATE_HEADER = "X-Run-State"

PipelineName = Annotated[str, PathParam(description="Pipeline name, e.g. retrain-churn.")]
RunRef = Annotated[str, PathParam(description="Run id, or PIPELINE#NUMBER (URL-encoded: retrain-churn%233).")]
RunLimit = Annotated[int, Query(ge=1, le=1000, description="Most runs returned.")]
StateFilter = Annotated[str | None, Query(description="Only runs in this state.")]


class RunRequest(BaseModel):
    trigger: str = Field(
        "manual",
        description="What the run is recorded as started by; the pipeline must list it in its triggers.",
    )
    params: dict[str, Any] = Field(
        default_factory=dict, description="Values for parameters the pipeline declares; others are refused."
    )
    reason: str | None = Field(None, description="Why; kept in the audit log.")


class ApplyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    definition: dict[str, Any] = Field(
        description="The pipeline as under `pipelines.NAME:` in a passerelle.yaml, as JSON; the name is "
        "the path's. A relative `train.workdir` is taken from the server's current folder."
    )
    source: str = Field("api", description="Where the definition comes from, e.g. the file it was read from.")
    reason: str | None = Field(None, description="Why; kept in the audit log.")


class CancelRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str | None = Field(None, description="Why; kept in the audit log and in the run's error.")


@router.get("/pipelines", summary="List pipelines", response_model=list[PipelineInfo])
def pipelines(client: ClientDep) -> list[PipelineInfo]:
    return client.list_pipelines()


@router.get(
    "/pipelines/runs",
    summary="List runs of every pipeline",
    description="Newest first.",
    response_model=list[RunInfo],
)
def all_runs(client: ClientDep, state: StateFilter = None, limit: RunLimit = 50) -> list[RunInfo]:
    return client.list_runs(None, state=state, limit=limit)


@router.get(
    "/pipelines/runs/{ref}",
    summary="Show a run",
    description="State, timings, inputs with fingerprints, code commit, parameters, environment hash, "
    "the version it registered, the evaluation with every gate, the promotion and the error.",
    response_model=RunInfo,
    responses=responses(404),
)
def run(ref: RunRef, client: ClientDep) -> RunInfo:
    return client.get_run(ref)


@router.get(
    "/pipelines/runs/{ref}/logs",
    summary="Read a run's log",
    description=f"Plain text from byte `offset`, at most 1 MiB, ending on a whole character. "
    f"`{LOG_OFFSET_HEADER}` is the offset to ask for next; `{RUN_STATE_HEADER}` the run's state when "
    "the log was read: follow until it is terminal and no text is left. A log written on another "
    "machine is empty while the run is active, and a 404 once it has ended.",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}}, **responses(404)},
)
def run_logs(
    ref: RunRef,
    client: ClientDep,
    offset: Annotated[int, Query(ge=0, description="Byte offset to read from.")] = 0,
) -> Response:
    # The state is read before the text, so a terminal state means the text read is complete.
    info = client.get_run(ref)
    text, following = client.run_logs(info.id, offset=offset)
    return Response(
        content=text.encode("utf-8"),
        media_type="text/plain; charset=utf-8",
        headers={LOG_OFFSET_HEADER: str(following), RUN_STATE_HEADER: info.state},
    )


@router.post(
    "/pipelines/runs/{ref}/cancel",
    summary="Cancel a run",
    description="A queued run never starts; a running one has its training process group stopped by "
    "the process running it. 409 when the run has already ended.",
    response_model=RunInfo,
    responses=responses(404, 409),
)
def cancel(ref: RunRef, client: ClientDep, body: CancelRequest | None = None) -> RunInfo:
    return client.cancel_run(ref, reason=body.reason if body is not None else None)


@router.get(
    "/pipelines/{name}",
    summary="Show a pipeline",
    description="Its stored definition, trigger state (what the triggers have seen, deferred triggers) "
    "and last run.",
    response_model=PipelineInfo,
    responses=responses(404),
)
def pipeline(name: PipelineName, client: ClientDep) -> PipelineInfo:
    return client.get_pipeline(name)


@router.put(
    "/pipelines/{name}",
    summary="Create or replace a pipeline",
    description="Stores the definition (audited when it changes). The server runs the training command "
    "of its runs as its own account, in `train.workdir` on the server. 422 lists the first problem "
    "with its key path, e.g. `pipelines.retrain-churn.evaluation.gates[0]: unknown metric 'acu'`.",
    response_model=PipelineInfo,
)
def apply(name: PipelineName, body: ApplyRequest, client: ClientDep) -> PipelineInfo:
    from passerelle.pipelines.definition import DefinitionError, _where, pipeline_problems

    if name == "runs":
        raise InvalidInputError(
            "a pipeline named 'runs' cannot be reached over HTTP (/api/v1/pipelines/runs lists the runs); "
            "rename it"
        )
    found, problems = pipeline_problems(body.definition, name, ("pipelines", name))
    if found is None or problems:
        raise DefinitionError([f"{_where(loc)}: {why}" for loc, why in problems])
    [stored] = client.apply_pipelines([found], source=body.source, reason=body.reason)
    return stored


@router.get(
    "/pipelines/{name}/runs",
    summary="List a pipeline's runs",
    description="Newest first.",
    response_model=list[RunInfo],
    responses=responses(404),
)
def runs(
    name: PipelineName, client: ClientDep, state: StateFilter = None, limit: RunLimit = 50
) -> list[RunInfo]:
    return client.list_runs(name, state=state, limit=limit)


@router.post(
    "/pipelines/{name}/runs",
    summary="Queue a run",
    description="The run is queued, not executed in the request: the server's scheduler starts it. "
    "409 while another run of the pipeline is active (unless its concurrency allows more).",
    status_code=202,
    response_model=RunInfo,
    responses=responses(404, 409),
)
def queue_run(name: PipelineName, body: RunRequest, client: ClientDep) -> RunInfo:
    return client.run_pipeline(name, trigger=body.trigger, params=body.params, reason=body.reason)


@router.get(
    "/lineage/{ref}",
    summary="Lineage of a version",
    description="Nodes (dataset versions with fingerprints, runs, alerts, endpoint revisions, the version) "
    "and edges (input, holdout, registered, triggered, serves, shadows, canary, raised).",
    responses=responses(400, 404),
)
def lineage(
    ref: Annotated[str, PathParam(description="churn:7, churn@champion or churn (the latest).")],
    client: ClientDep,
) -> dict[str, Any]:
    return client.lineage(ref)
