"""What a pipeline is: its training step, input, evaluation gates, promotion policy and triggers.

The same :class:`Pipeline` model is written in a ``passerelle.yaml`` (several pipelines under
``pipelines:``, keyed by name) or built in Python. :func:`load_file` reads a file and reports
every problem on one line each, naming the file, the line, the key path and the reason::

    passerelle.yaml:14: pipelines.retrain-churn.evaluation.gates[1]: unknown metric 'acu' (known: ...)
"""

from __future__ import annotations

import datetime as dt
import functools
import math
import re
import string
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from passerelle.errors import InvalidInputError, InvalidReferenceError
from passerelle.references import check_name, parse_dataset_ref

__all__ = [
    "CLASSIFICATION_METRICS",
    "KNOWN_METRICS",
    "LATENCY_METRICS",
    "REGRESSION_METRICS",
    "CanaryPolicy",
    "DefinitionError",
    "Evaluation",
    "Gate",
    "InputSpec",
    "Pipeline",
    "Promotion",
    "TrainStep",
    "check_pipeline",
    "load_file",
    "next_schedule",
    "parse_duration",
    "parse_gate",
    "placeholders",
]

CLASSIFICATION_METRICS = (
    "accuracy",
    "precision",
    "recall",
    "f1",
    "auc",
    "roc_auc",
    "log_loss",
    "calibration_error",
)
REGRESSION_METRICS = ("mae", "rmse", "mape", "r2")
#: measured on single-row predictions of the holdout, as a gateway would call the model
LATENCY_METRICS = ("p50_ms", "p99_ms")
KNOWN_METRICS = (*CLASSIFICATION_METRICS, *REGRESSION_METRICS, *LATENCY_METRICS)
#: names a user may write for a metric of :mod:`passerelle.performance`
METRIC_ALIASES = {"auc": "roc_auc"}

TRIGGERS = ("dataset", "alert", "schedule", "manual")
TriggerName = Literal["dataset", "alert", "schedule", "manual"]
POLICIES = ("register", "shadow", "canary", "champion")
#: what a training command's placeholders may name besides the pipeline's params
BUILTIN_PLACEHOLDERS = ("input", "output", "run_id")


class DefinitionError(InvalidInputError):
    """A pipeline definition is not valid; ``problems`` holds one line per problem."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        more = len(self.problems) - 1
        text = self.problems[0] if self.problems else "the pipeline definition is not valid"
        if more > 0:
            plural = "s" if more > 1 else ""
            text += f" (and {more} more problem{plural}; `passerelle pipeline validate` lists them)"
        super().__init__(text)


# ------------------------------------------------------------------------------------- durations

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def parse_duration(value: Any) -> float:
    """``90``, ``"90s"``, ``"30m"``, ``"1h"``, ``"2d"`` → seconds."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration such as 30s, 10m or 1h, got {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        match = _DURATION_RE.match(value)
        if not match:
            raise ValueError(f"expected a duration such as 30s, 10m or 1h, got {value!r}")
        seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2) or "s"]
    else:
        raise ValueError(f"expected a duration such as 30s, 10m or 1h, got {value!r}")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"a duration must be zero or more, got {value!r}")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]


# ------------------------------------------------------------------------------------------ gates

_OPS = (">=", "<=", ">", "<")
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_SIDE = r"(?P<{p}metric>[A-Za-z_][A-Za-z0-9_]*)(?:\[(?P<{p}col>[^\]=]+)=(?P<{p}val>[^\]]*)\])?"
_GATE_RE = re.compile(
    r"^\s*"
    + _SIDE.format(p="l")
    + r"(?:\.gap\[(?P<gapcol>[^\]=]+)\])?"
    + r"\s*(?P<op>>=|<=|>|<)\s*"
    + r"(?:(?P<number>"
    + _NUMBER
    + r")|champion\."
    + _SIDE.format(p="r")
    + r"(?:\s*(?P<sign>[-+])\s*(?P<offset>"
    + _NUMBER
    + r"))?)\s*$"
)


@dataclass(frozen=True)
class Gate:
    """One parsed gate: ``metric[slice] OP number`` or ``... OP champion.metric[slice] ± offset``.

    ``gap`` names a slice column: the gate then bounds the largest difference of the metric
    between that column's slices (a fairness check).
    """

    text: str
    metric: str
    op: str
    slice: tuple[str, str] | None = None
    gap: str | None = None
    number: float | None = None
    champion_metric: str | None = None
    champion_slice: tuple[str, str] | None = None
    offset: float = 0.0

    @property
    def key(self) -> str:
        """The name of the figure the gate reads, as stored in an evaluation."""
        return figure_key(self.metric, self.slice, self.gap)

    @property
    def champion_key(self) -> str | None:
        if self.champion_metric is None:
            return None
        return figure_key(self.champion_metric, self.champion_slice, None)

    def holds(self, value: float, threshold: float) -> bool:
        if self.op == ">=":
            return value >= threshold
        if self.op == "<=":
            return value <= threshold
        if self.op == ">":
            return value > threshold
        return value < threshold


def figure_key(metric: str, slice_: tuple[str, str] | None = None, gap: str | None = None) -> str:
    metric = METRIC_ALIASES.get(metric, metric)
    if gap is not None:
        return f"{metric}.gap[{gap}]"
    if slice_ is not None:
        return f"{metric}[{slice_[0]}={slice_[1]}]"
    return metric


def _known(metric: str) -> None:
    if metric not in KNOWN_METRICS:
        raise ValueError(f"unknown metric {metric!r} (known: {', '.join(KNOWN_METRICS)})")


@functools.lru_cache(maxsize=1024)
def parse_gate(text: str) -> Gate:
    """Parse ``auc >= champion.auc + 0.005``; a ValueError says what is wrong."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("a gate is a condition such as 'auc >= champion.auc + 0.005' or 'p99_ms <= 50'")
    match = _GATE_RE.match(text)
    if match is None:
        head = re.match(r"^\s*([A-Za-z_][A-Za-z0-9_]*)", text)
        if head is not None and head.group(1) not in KNOWN_METRICS:
            _known(head.group(1))
        if not any(op in text for op in _OPS):
            raise ValueError(f"{text!r} has no comparison; use one of {', '.join(_OPS)}")
        raise ValueError(
            f"cannot read the gate {text!r}; write METRIC OP NUMBER or "
            "METRIC OP champion.METRIC [+|- NUMBER], "
            "e.g. 'auc >= champion.auc + 0.005', 'p99_ms <= 50', 'auc[contract=two-year] >= 0.7'"
        )
    g = match.groupdict()
    _known(g["lmetric"])
    slice_ = (g["lcol"].strip(), g["lval"].strip()) if g["lcol"] is not None else None
    gap = g["gapcol"].strip() if g["gapcol"] is not None else None
    if gap is not None and slice_ is not None:
        raise ValueError(f"{text!r}: a gap is over every slice of a column; drop the [column=value]")
    if g["lmetric"] in LATENCY_METRICS and (slice_ is not None or gap is not None):
        raise ValueError(f"{text!r}: latency is measured over the whole holdout, not per slice")
    if g["number"] is not None:
        return Gate(text.strip(), g["lmetric"], g["op"], slice_, gap, number=float(g["number"]))
    if gap is not None:
        raise ValueError(f"{text!r}: a gap gate compares with a number, e.g. 'auc.gap[contract] <= 0.1'")
    _known(g["rmetric"])
    rslice = (g["rcol"].strip(), g["rval"].strip()) if g["rcol"] is not None else None
    if g["rmetric"] in LATENCY_METRICS and rslice is not None:
        raise ValueError(f"{text!r}: latency is measured over the whole holdout, not per slice")
    offset = float(g["offset"]) if g["offset"] is not None else 0.0
    if g["sign"] == "-":
        offset = -offset
    return Gate(
        text.strip(),
        g["lmetric"],
        g["op"],
        slice_,
        None,
        champion_metric=g["rmetric"],
        champion_slice=rslice,
        offset=offset,
    )


def _checked_gate(text: str) -> str:
    parse_gate(text)
    return text.strip()


GateText = Annotated[str, AfterValidator(_checked_gate)]


# ------------------------------------------------------------------------------------------ model


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


Scalar = str | int | float | bool


class TrainStep(_Strict):
    """How a candidate is trained: a command, or a Python entry point, in the project's folder."""

    #: ``python train.py --data {input} --out {output}``; placeholders: input, output, run_id, params
    command: str | None = None
    #: ``package.module:function``, called as ``function(input_path, output_dir, params)``
    entry_point: str | None = None
    #: folder the step runs in; default: the folder of the passerelle.yaml (or the current one)
    workdir: str | None = None
    timeout: Duration = 3600.0
    env: dict[str, str] = Field(default_factory=dict)
    #: register a model whose loading needs trust (a pickle, custom types)
    trust: bool = False

    @model_validator(mode="after")
    def _one_way(self) -> TrainStep:
        if (self.command is None) == (self.entry_point is None):
            raise ValueError("give exactly one of command and entry_point")
        if self.command is not None and not self.command.strip():
            raise ValueError("command is empty")
        if self.entry_point is not None and not re.match(
            r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$", self.entry_point
        ):
            raise ValueError(f"entry_point must look like package.module:function, got {self.entry_point!r}")
        if self.timeout <= 0:
            raise ValueError("timeout must be more than zero")
        return self


class InputSpec(_Strict):
    """The training data: a registered dataset (``churn-train``: its newest version) or a path/URI."""

    dataset: str | None = None
    path: str | None = None

    @model_validator(mode="after")
    def _one_way(self) -> InputSpec:
        if (self.dataset is None) == (self.path is None):
            raise ValueError("give exactly one of dataset and path")
        if self.dataset is not None:
            try:
                parse_dataset_ref(self.dataset)
            except InvalidReferenceError as exc:
                raise ValueError(str(exc)) from None
        return self


class Evaluation(_Strict):
    """Candidate and champion scored on the same holdout, then judged by the gates."""

    holdout: str
    label: str
    task: Literal["classification", "regression"] | None = None
    #: the positive class of a binary classifier (default: the last class, e.g. 1 of 0/1)
    positive: Scalar | None = None
    #: holdout columns that are neither features nor the label (ids, timestamps)
    drop: list[str] = Field(default_factory=list)
    #: rows predicted one at a time to measure p50_ms / p99_ms; 0 skips the measurement
    latency_rows: int = Field(100, ge=0, le=100_000)
    #: column → the values whose rows are scored apart, e.g. {contract: [month-to-month, two-year]}
    slices: dict[str, list[Scalar]] = Field(default_factory=dict)
    gates: list[GateText] = Field(default_factory=list)

    @field_validator("holdout")
    @classmethod
    def _holdout_ref(cls, value: str) -> str:
        try:
            parse_dataset_ref(value)
        except InvalidReferenceError as exc:
            raise ValueError(str(exc)) from None
        return value

    @property
    def parsed_gates(self) -> list[Gate]:
        return [parse_gate(g) for g in self.gates]


class CanaryPolicy(_Strict):
    steps: list[int] = Field(default_factory=lambda: [5, 25, 50, 100])
    interval: Duration = 600.0
    max_error_rate: float | None = Field(0.05, ge=0, le=1)
    max_p99_ms: float | None = Field(None, gt=0)
    max_disagreement: float | None = Field(None, ge=0, le=1)
    min_requests: int = Field(20, ge=1)

    @field_validator("steps")
    @classmethod
    def _steps(cls, steps: list[int]) -> list[int]:
        if not steps or any(s <= 0 or s > 100 for s in steps) or steps != sorted(set(steps)):
            raise ValueError("steps must be increasing percentages between 1 and 100")
        if steps[-1] != 100:
            raise ValueError("the last step must be 100")
        return steps


class Promotion(_Strict):
    """What a candidate that passed its gates becomes; always through the endpoint's revisions."""

    policy: Literal["register", "shadow", "canary", "champion"] = "register"
    endpoint: str | None = None
    #: the alias the ``register`` policy moves to the candidate
    alias: str = "challenger"
    shadow_percent: float = Field(100.0, gt=0, le=100)
    canary: CanaryPolicy = Field(default_factory=CanaryPolicy)


class Pipeline(_Strict):
    """A retraining recipe. In a passerelle.yaml its name is the key under ``pipelines:``."""

    name: str
    #: the registered model the runs add versions to
    model: str
    description: str = ""
    train: TrainStep
    input: InputSpec | None = None
    params: dict[str, Scalar] = Field(default_factory=dict)
    evaluation: Evaluation
    promotion: Promotion = Field(default_factory=Promotion)
    triggers: list[TriggerName] = Field(default_factory=lambda: list[TriggerName](["manual"]))
    #: cron expression (five fields, UTC) for the schedule trigger
    schedule: str | None = None
    #: after an automatic run is queued, further automatic triggers wait this long
    cooldown: Duration = 900.0
    retries: int = Field(1, ge=0, le=10)
    retry_backoff: Duration = 60.0
    #: queue a new attempt when a run is found interrupted (its process stopped)
    retry_interrupted: bool = True
    #: how many runs of this pipeline may be active (queued or running) at once
    concurrency: int = Field(1, ge=1, le=16)
    #: how often a watched path is checked for new content
    watch_interval: Duration = 60.0
    enabled: bool = True

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is None:
            return None
        next_schedule(value, dt.datetime.now(dt.UTC))
        return value.strip()

    def problems(self) -> list[tuple[tuple[str | int, ...], str]]:
        """What field validation cannot see alone: (key path inside the pipeline, reason)."""
        return check_pipeline(self)


def next_schedule(expression: str, after: dt.datetime) -> dt.datetime:
    """The first time strictly after ``after`` that the cron ``expression`` (UTC) names."""
    from cronsim import CronSim, CronSimError

    try:
        return next(CronSim(expression.strip(), after.astimezone(dt.UTC)))
    except CronSimError as exc:
        raise ValueError(f"cron expression {expression!r} does not parse: {exc}") from None
    except StopIteration:
        raise ValueError(f"cron expression {expression!r} never matches a time") from None


def placeholders(command: str) -> list[str]:
    """The ``{names}`` a command refers to; a ValueError when its braces do not parse."""
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(command) if f is not None]
    except ValueError as exc:
        raise ValueError(
            f"the command's braces do not parse ({exc}); write {{{{ and }}}} for literal braces"
        ) from None
    out = []
    for name in fields:
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", name):
            raise ValueError(f"placeholder {{{name}}} is not a plain name such as {{input}} or {{C}}")
        out.append(name)
    return out


def check_pipeline(p: Pipeline) -> list[tuple[tuple[str | int, ...], str]]:
    """Problems between fields, each with the key path it belongs to."""
    found: list[tuple[tuple[str | int, ...], str]] = []

    def name_ok(value: str, what: str, where: tuple[str | int, ...]) -> None:
        try:
            check_name(value, what)
        except InvalidReferenceError as exc:
            found.append((where, str(exc)))

    name_ok(p.name, "pipeline name", ())
    name_ok(p.model, "model name", ("model",))
    if p.train.command is not None:
        try:
            for field in placeholders(p.train.command):
                if field in BUILTIN_PLACEHOLDERS or field in p.params:
                    if field == "input" and p.input is None:
                        found.append((("train", "command"), "{input} is used but the pipeline has no input"))
                    continue
                known = ", ".join([*BUILTIN_PLACEHOLDERS, *p.params])
                found.append(
                    (
                        ("train", "command"),
                        f"unknown placeholder {{{field}}} (known: {known}; declare it in params)",
                    )
                )
        except ValueError as exc:
            found.append((("train", "command"), str(exc)))
    for i, trigger in enumerate(p.triggers):
        if trigger in p.triggers[:i]:
            found.append((("triggers", i), f"{trigger!r} is listed twice"))
    if "schedule" in p.triggers and p.schedule is None:
        found.append((("schedule",), "the schedule trigger needs a cron expression here, e.g. '0 3 * * 1'"))
    if p.schedule is not None and "schedule" not in p.triggers:
        found.append((("schedule",), "a schedule is set but 'schedule' is not in triggers"))
    if "dataset" in p.triggers:
        if p.input is None:
            found.append((("triggers",), "the dataset trigger needs an input (a dataset or a path to watch)"))
        elif p.input.dataset is not None and parse_dataset_ref(p.input.dataset)[1] is not None:
            found.append(
                (
                    ("input", "dataset"),
                    f"{p.input.dataset} pins one version, so no new version can trigger; "
                    "name the dataset alone",
                )
            )
    promo = p.promotion
    if promo.policy != "register" and promo.endpoint is None:
        found.append(
            (("promotion", "endpoint"), f"the {promo.policy} policy needs the endpoint it applies to")
        )
    if promo.endpoint is not None:
        name_ok(promo.endpoint, "endpoint name", ("promotion", "endpoint"))
    if promo.alias.isdigit() or promo.alias in ("latest", "champion"):
        found.append((("promotion", "alias"), f"alias {promo.alias!r} is reserved; use e.g. 'challenger'"))
    else:
        name_ok(promo.alias, "alias", ("promotion", "alias"))
    ev = p.evaluation
    if ev.label in ev.drop:
        found.append((("evaluation", "drop"), f"the label {ev.label!r} cannot also be dropped"))
    for column, values in ev.slices.items():
        if not values:
            found.append((("evaluation", "slices", column), "list the values whose rows are scored apart"))
    for i, gate in enumerate(ev.parsed_gates):
        for side in (gate.slice, gate.champion_slice):
            if side is None:
                continue
            column, value = side
            if column not in ev.slices:
                declared = ", ".join(ev.slices) or "none"
                found.append(
                    (
                        ("evaluation", "gates", i),
                        f"slice column {column!r} is not declared in slices ({declared})",
                    )
                )
            elif value not in [str(v) for v in ev.slices[column]]:
                shown = ", ".join(str(v) for v in ev.slices[column])
                found.append(
                    (
                        ("evaluation", "gates", i),
                        f"{column}={value} is not one of the declared slices ({shown})",
                    )
                )
        if gate.gap is not None and gate.gap not in ev.slices:
            declared = ", ".join(ev.slices) or "none"
            found.append(
                (
                    ("evaluation", "gates", i),
                    f"slice column {gate.gap!r} is not declared in slices ({declared})",
                )
            )
        task_metrics = {"classification": CLASSIFICATION_METRICS, "regression": REGRESSION_METRICS}
        if ev.task is not None:
            for metric in (gate.metric, gate.champion_metric):
                if metric is not None and metric not in (*task_metrics[ev.task], *LATENCY_METRICS):
                    found.append((("evaluation", "gates", i), f"{metric!r} is not a {ev.task} metric"))
    return found


# ------------------------------------------------------------------------------------ reading files


def _where(loc: Iterable[str | int]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _lines(node: yaml.Node, path: tuple[str | int, ...] = ()) -> dict[tuple[str | int, ...], int]:
    """Line (1-based) of every key path in a composed YAML document."""
    out: dict[tuple[str | int, ...], int] = {path: node.start_mark.line + 1}
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            sub = (*path, str(key.value))
            out.update(_lines(value, sub))
            out[sub] = key.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            out.update(_lines(item, (*path, i)))
    return out


def _line_of(lines: dict[tuple[str | int, ...], int], loc: tuple[str | int, ...]) -> int | None:
    for end in range(len(loc), -1, -1):
        if loc[:end] in lines:
            return lines[loc[:end]]
    return None


def _model_at(loc: Sequence[str | int]) -> type[BaseModel] | None:
    """The model class whose keys a path inside a pipeline ends in (for 'unknown key' messages)."""
    current: Any = Pipeline
    for part in loc:
        if isinstance(part, int):
            continue
        fields = getattr(current, "model_fields", {})
        field = fields.get(part)
        if field is None:
            return None
        annotation = field.annotation
        found = None
        for candidate in (annotation, *getattr(annotation, "__args__", ())):
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                found = candidate
        if found is None:
            return None
        current = found
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _message(error: Any, inner: tuple[str | int, ...]) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        model = _model_at(inner[:-1])
        known = f" (known: {', '.join(model.model_fields)})" if model is not None else ""
        return f"unknown key{known}"
    if kind == "missing":
        return "required key is missing"
    text = str(error["msg"]).removeprefix("Value error, ")
    value = error.get("input")
    if kind not in ("value_error", "assertion_error") and isinstance(value, (str, int, float, bool)):
        text += f", got {value!r}"
    return text


def pipeline_problems(
    body: Any, name: str, prefix: tuple[str | int, ...] = ()
) -> tuple[Pipeline | None, list[tuple[tuple[str | int, ...], str]]]:
    """Validate one pipeline's body; problems carry their key path (with ``prefix``)."""
    if not isinstance(body, dict):
        return None, [(prefix, "a pipeline is a mapping of keys (model, train, input, evaluation, ...)")]
    if "name" in body and body["name"] != name:
        return None, [((*prefix, "name"), f"the name comes from the key above ({name!r}); remove it")]
    try:
        pipeline = Pipeline.model_validate({**body, "name": name})
    except ValidationError as exc:
        out = []
        for error in exc.errors():
            inner = tuple(error["loc"])
            out.append(((*prefix, *inner), _message(error, inner)))
        return None, out
    return pipeline, [((*prefix, *loc), text) for loc, text in pipeline.problems()]


def load_file(path: str | Path, *, workdir: Path | None = None) -> list[Pipeline]:
    """Read the pipelines of a passerelle.yaml; a :class:`DefinitionError` lists every problem.

    A training step without ``workdir`` runs in the file's folder; a relative one is taken from
    there too, so the definition means the same whichever folder the command was started from.
    """
    path = Path(path)
    shown = str(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise DefinitionError([f"{shown}: cannot read the file: {exc.strerror or exc}"]) from exc
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise DefinitionError([f"{shown}{line}: not valid YAML: {problem}"]) from exc
    lines = _lines(node) if node is not None else {}
    if not isinstance(data, dict) or "pipelines" not in data:
        found = ", ".join(map(str, data)) if isinstance(data, dict) else type(data).__name__
        raise DefinitionError([f"{shown}: no 'pipelines' section (found: {found or 'nothing'})"])
    section = data["pipelines"]
    if not isinstance(section, dict) or not section:
        raise DefinitionError(
            [f"{shown}:{lines.get(('pipelines',), 1)}: pipelines: expected a mapping of pipeline names"]
        )
    base = (workdir or path.parent).resolve()
    problems: list[str] = []
    pipelines: list[Pipeline] = []
    for key, body in section.items():
        name = str(key)
        pipeline, issues = pipeline_problems(body, name, ("pipelines", name))
        for loc, reason in issues:
            at = _line_of(lines, loc)
            problems.append(f"{shown}{f':{at}' if at else ''}: {_where(loc)}: {reason}")
        if pipeline is not None and not issues:
            pipelines.append(with_workdir(pipeline, base))
    if problems:
        raise DefinitionError(problems)
    return pipelines


def with_workdir(pipeline: Pipeline, base: Path) -> Pipeline:
    """The pipeline with its training folder made absolute against ``base``."""
    given = Path(pipeline.train.workdir) if pipeline.train.workdir else Path()
    folder = given if given.is_absolute() else (base / given)
    train = pipeline.train.model_copy(update={"workdir": str(folder.resolve())})
    return pipeline.model_copy(update={"train": train})


def checked_definitions(pipelines: Sequence[Pipeline]) -> list[Pipeline]:
    """``pipelines`` checked together, relative training folders made absolute from here.

    Raises :class:`DefinitionError` listing every problem, so a bad definition stores none.
    """
    problems: list[str] = []
    checked: list[Pipeline] = []
    for pipeline in pipelines:
        for loc, why in pipeline.problems():
            problems.append(f"{_where(('pipelines', pipeline.name, *loc))}: {why}")
        if pipeline.train.workdir is None or not Path(pipeline.train.workdir).is_absolute():
            pipeline = with_workdir(pipeline, Path.cwd())
        checked.append(pipeline)
    names = [p.name for p in checked]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        problems.append(f"pipelines.{duplicated[0]}: defined more than once")
    if problems:
        raise DefinitionError(problems)
    return checked
