"""Retraining pipelines: a definition, runs with logs, evaluation gates, promotion, triggers.

See ``docs/pipelines.md`` for the file format and ``docs/adr/0010-pipelines.md`` for why runs
execute in the server's workers under leases.
"""

from __future__ import annotations

from passerelle.pipelines.definition import (
    KNOWN_METRICS,
    CanaryPolicy,
    DefinitionError,
    Evaluation,
    Gate,
    InputSpec,
    Pipeline,
    Promotion,
    TrainStep,
    load_file,
    parse_gate,
)
from passerelle.pipelines.runs import (
    ACTIVE_STATES,
    TERMINAL_STATES,
    PipelineInfo,
    RunInfo,
    cancel_run,
    claim,
    execute,
    exit_code,
    get_pipeline,
    get_run,
    list_pipelines,
    list_runs,
    logs,
    register_pipelines,
    run_claimed,
    start_run,
    wait,
)
from passerelle.pipelines.scheduler import (
    Scheduler,
    TickReport,
    alert_trigger,
    install_alert_trigger,
    tick,
)

__all__ = [
    "ACTIVE_STATES",
    "KNOWN_METRICS",
    "TERMINAL_STATES",
    "CanaryPolicy",
    "DefinitionError",
    "Evaluation",
    "Gate",
    "InputSpec",
    "Pipeline",
    "PipelineInfo",
    "Promotion",
    "RunInfo",
    "Scheduler",
    "TickReport",
    "TrainStep",
    "alert_trigger",
    "cancel_run",
    "claim",
    "execute",
    "exit_code",
    "get_pipeline",
    "get_run",
    "install_alert_trigger",
    "list_pipelines",
    "list_runs",
    "load_file",
    "logs",
    "parse_gate",
    "register_pipelines",
    "run_claimed",
    "start_run",
    "tick",
    "wait",
]
