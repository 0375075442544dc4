"""Pipeline definitions: the file format, precise errors, gates, and storing definitions."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from passerelle import audit
from passerelle.cli import main
from passerelle.pipelines import (
    DefinitionError,
    Evaluation,
    Pipeline,
    TrainStep,
    get_pipeline,
    list_pipelines,
    load_file,
    parse_gate,
    register_pipelines,
)
from tests.pipelines.conftest import Project

GOOD = textwrap.dedent(
    """\
    pipelines:
      retrain-churn:
        model: churn
        train:
          command: python train.py --data {input} --out {output} --C {C}
          timeout: 10m
        params: {C: 0.5}
        input: {dataset: churn-train}
        evaluation:
          holdout: churn-holdout
          label: churned
          slices: {contract: [month-to-month, two-year]}
          gates:
            - auc >= champion.auc + 0.005
            - p99_ms <= 50
            - calibration_error <= 0.05
            - auc[contract=two-year] >= 0.7
            - auc.gap[contract] <= 0.1
        promotion: {policy: shadow, endpoint: churn-api}
        triggers: [dataset, alert, schedule, manual]
        schedule: "0 3 * * 1"
        cooldown: 1h
      nightly:
        model: churn
        train: {entry_point: "train:fit"}
        evaluation: {holdout: "churn-holdout:1", label: churned}
    """
)


def problems_of(tmp_path: Path, text: str) -> list[str]:
    (tmp_path / "passerelle.yaml").write_text(textwrap.dedent(text))
    with pytest.raises(DefinitionError) as caught:
        load_file(Path("passerelle.yaml"))
    return caught.value.problems


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


def test_a_file_holds_several_pipelines_with_every_key(tmp_path: Path) -> None:
    path = tmp_path / "passerelle.yaml"
    path.write_text(GOOD)
    first, second = load_file(path)
    assert (first.name, second.name) == ("retrain-churn", "nightly")
    assert first.train.timeout == 600.0
    assert first.cooldown == 3600.0
    assert first.triggers == ["dataset", "alert", "schedule", "manual"]
    assert first.promotion.policy == "shadow"
    # the training step runs in the file's folder unless told otherwise
    assert first.train.workdir == str(tmp_path.resolve())
    gate = first.evaluation.parsed_gates[0]
    assert (gate.key, gate.op, gate.champion_key, gate.offset) == ("roc_auc", ">=", "roc_auc", 0.005)
    assert first.evaluation.parsed_gates[3].key == "roc_auc[contract=two-year]"
    assert first.evaluation.parsed_gates[4].key == "roc_auc.gap[contract]"
    assert second.triggers == ["manual"]
    assert second.promotion.policy == "register"


def test_an_unknown_metric_is_named_with_file_line_and_key_path(tmp_path: Path) -> None:
    [problem] = problems_of(
        tmp_path,
        """\
        pipelines:
          retrain-churn:
            model: churn
            train: {command: "python train.py --out {output}"}
            evaluation:
              holdout: churn-holdout
              label: churned
              gates:
                - auc >= 0.7
                - acu >= champion.auc
        """,
    )
    assert problem.startswith("passerelle.yaml:10: pipelines.retrain-churn.evaluation.gates[1]: ")
    assert "unknown metric 'acu' (known: accuracy, precision, recall, f1, auc," in problem


def test_every_problem_is_reported_each_on_its_line(tmp_path: Path) -> None:
    found = problems_of(
        tmp_path,
        """\
        pipelines:
          retrain-churn:
            model: churn
            trian: {command: x}
            evaluation: {holdout: churn-holdout, label: churned}
            triggers: [schedule, sometimes]
            schedule: "61 * * * *"
          other:
            model: churn
            train: {command: "python t.py {data} {output}"}
            evaluation: {holdout: churn-holdout, label: churned}
            promotion: {policy: canary}
        """,
    )
    text = "\n".join(found)
    assert "passerelle.yaml:4: pipelines.retrain-churn.trian: unknown key (known: name, model," in text
    assert "passerelle.yaml:2: pipelines.retrain-churn.train: required key is missing" in text
    assert (
        "pipelines.retrain-churn.triggers[1]: Input should be 'dataset', 'alert', 'schedule' or 'manual'"
        in text
    )
    assert (
        "passerelle.yaml:7: pipelines.retrain-churn.schedule: cron expression '61 * * * *' does not parse"
        in text
    )
    assert "passerelle.yaml:10: pipelines.other.train.command: unknown placeholder {data}" in text
    assert (
        "passerelle.yaml:12: pipelines.other.promotion.endpoint: the canary policy needs the endpoint" in text
    )


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["triggers: [schedule]"], "pipelines.p.schedule: the schedule trigger needs a cron expression"),
        (
            ['schedule: "0 3 * * *"'],
            "pipelines.p.schedule: a schedule is set but 'schedule' is not in triggers",
        ),
        (["triggers: [dataset]"], "pipelines.p.triggers: the dataset trigger needs an input"),
        (
            ["triggers: [dataset]", "input: {dataset: 'churn-train:2'}"],
            "pipelines.p.input.dataset: churn-train:2 pins one version",
        ),
        (["input: {dataset: x, path: y}"], "pipelines.p.input: give exactly one of dataset and path"),
        (["promotion: {policy: promote}"], "Input should be 'register', 'shadow', 'canary' or 'champion'"),
        (["promotion: {alias: champion}"], "pipelines.p.promotion.alias: alias 'champion' is reserved"),
        (["cooldown: soon"], "pipelines.p.cooldown: expected a duration such as 30s, 10m or 1h, got 'soon'"),
        (["promotion: {policy: canary, endpoint: e, canary: {steps: [50, 10]}}"], "steps must be increasing"),
        (["triggers: [manual, manual]"], "pipelines.p.triggers[1]: 'manual' is listed twice"),
    ],
)
def test_cross_field_problems_name_their_key(tmp_path: Path, extra: list[str], expected: str) -> None:
    text = (
        "pipelines:\n  p:\n    model: churn\n    train: {command: 'python t.py {output}'}\n"
        "    evaluation: {holdout: churn-holdout, label: churned}\n" + "".join(f"    {e}\n" for e in extra)
    )
    found = problems_of(tmp_path, text)
    assert any(expected in problem for problem in found), found


def test_gates_on_undeclared_slices_are_refused(tmp_path: Path) -> None:
    found = problems_of(
        tmp_path,
        """\
        pipelines:
          p:
            model: churn
            train: {command: "python t.py {output}"}
            evaluation:
              holdout: churn-holdout
              label: churned
              slices: {contract: [two-year]}
              gates:
                - auc[region=north] >= 0.7
                - auc[contract=one-year] >= 0.7
        """,
    )
    text = "\n".join(found)
    assert "gates[0]: slice column 'region' is not declared in slices (contract)" in text
    assert "gates[1]: contract=one-year is not one of the declared slices (two-year)" in text


def test_a_file_that_is_not_yaml_or_has_no_pipelines(tmp_path: Path) -> None:
    assert problems_of(tmp_path, "pipelines: [unclosed\n")[0].startswith("passerelle.yaml:2: not valid YAML")
    assert problems_of(tmp_path, "pipeline: {}\n") == [
        "passerelle.yaml: no 'pipelines' section (found: pipeline)"
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("auc >= ", "cannot read the gate"),
        ("auc", "has no comparison"),
        ("speed <= 3", "unknown metric 'speed'"),
        ("auc >= champion.acu", "unknown metric 'acu'"),
        ("auc.gap[contract] <= champion.auc", "a gap gate compares with a number"),
        ("p99_ms[contract=two-year] < 5", "latency is measured over the whole holdout"),
    ],
)
def test_gate_syntax_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_gate(text)


def test_gate_forms() -> None:
    gate = parse_gate("rmse < champion.rmse - 0.5")
    assert (gate.metric, gate.op, gate.champion_metric, gate.offset) == ("rmse", "<", "rmse", -0.5)
    assert gate.holds(1.0, 1.5)
    assert not gate.holds(1.5, 1.5)
    assert parse_gate("p99_ms <= 50").number == 50.0
    assert parse_gate("auc[contract=month-to-month] > 0.6").slice == ("contract", "month-to-month")


def test_pipelines_from_python_are_stored_and_audited(project: Project) -> None:
    pipeline = Pipeline(
        name="from-python",
        model="churn",
        train=TrainStep(command="python train.py --out {output}"),
        evaluation=Evaluation(holdout="churn-holdout", label="churned", gates=["accuracy >= 0.5"]),
    )
    [info] = register_pipelines(project.ctx, [pipeline], reason="first definition")
    assert info.source == "python"
    assert info.definition["train"]["workdir"] == str(project.folder.resolve())
    changed = pipeline.model_copy(update={"cooldown": 60.0})
    register_pipelines(project.ctx, [changed])
    register_pipelines(project.ctx, [changed])  # the same again changes nothing
    assert get_pipeline(project.ctx, "from-python").definition["cooldown"] == 60.0
    actions = [e.action for e in audit.list_entries(project.ctx.store, target="pipeline:from-python")]
    assert actions == ["pipeline.update", "pipeline.create"]
    assert [p.name for p in list_pipelines(project.ctx)] == ["from-python"]


def test_a_python_definition_with_problems_is_refused_whole(project: Project) -> None:
    bad = Pipeline(
        name="bad",
        model="churn",
        train=TrainStep(command="python train.py --out {output} --k {k}"),
        evaluation=Evaluation(holdout="churn-holdout", label="churned"),
    )
    with pytest.raises(DefinitionError, match=r"pipelines\.bad\.train\.command: unknown placeholder \{k\}"):
        register_pipelines(project.ctx, [bad])
    assert list_pipelines(project.ctx) == []


def test_cli_validate_and_apply(project: Project, capsys: pytest.CaptureFixture[str]) -> None:
    path = project.folder / "passerelle.yaml"
    path.write_text(GOOD)
    main(["pipeline", "validate"])
    assert "2 pipelines valid (retrain-churn, nightly)" in capsys.readouterr().out
    main(["pipeline", "apply", "--reason", "first"])
    out = capsys.readouterr().out
    assert "pipeline retrain-churn → model churn, triggers dataset, alert, schedule, manual" in out
    assert {p.name for p in list_pipelines(project.ctx)} == {"retrain-churn", "nightly"}

    path.write_text(GOOD.replace("auc >= champion.auc + 0.005", "acu >= 0.5"))
    with pytest.raises(SystemExit) as done:
        main(["pipeline", "validate", "-f", str(path)])
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert "pipelines.retrain-churn.evaluation.gates[0]: unknown metric 'acu'" in err
