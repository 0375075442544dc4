"""Where a model came from and where it went.

:func:`code_lineage` records the code (git commit, dirty tree) a version is registered from;
:func:`graph` follows a version upstream (datasets, the pipeline run, what triggered it) and
downstream (endpoint revisions, alerts, the runs those alerts triggered).
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from passerelle.context import Context


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        done = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def code_lineage(cwd: Path | None = None) -> dict[str, Any]:
    """The commit and dirtiness of the git work tree around ``cwd``; empty outside git."""
    where = cwd or Path.cwd()
    commit = _git(["rev-parse", "HEAD"], where)
    if commit is None:
        return {}
    status = _git(["status", "--porcelain", "--untracked-files=no"], where)
    info: dict[str, Any] = {"git_commit": commit, "git_dirty": bool(status)}
    remote = _git(["config", "--get", "remote.origin.url"], where)
    if remote:
        info["git_remote"] = remote
    return info


# ------------------------------------------------------------------------------------------ graph


def _node(nodes: dict[str, dict[str, Any]], node_id: str, kind: str, label: str, **attrs: Any) -> str:
    if node_id not in nodes:
        nodes[node_id] = {"id": node_id, "kind": kind, "label": label, **attrs}
    return node_id


def graph(ctx: Context, ref: str) -> dict[str, Any]:
    """Where a version comes from and where it went, as JSON-ready nodes and edges.

    Upstream: the dataset versions it was trained on (with fingerprints), the pipeline run that
    registered it, that run's holdout, and what triggered the run (an alert with its rule, a
    dataset version, a schedule, or a person). Downstream: the endpoint revisions that serve,
    shadow or canary it, the alerts raised on it, and the runs those alerts triggered.
    """
    from sqlalchemy import select

    from passerelle.registry import Registry
    from passerelle.store.schema import Alert, AlertRule, Endpoint, EndpointRevision, PipelineRun

    version = Registry(ctx).get_version(ref)
    nodes: dict[str, dict[str, Any]] = {}
    edges: list[dict[str, str]] = []

    def edge(source: str, target: str, kind: str) -> None:
        item = {"from": source, "to": target, "kind": kind}
        if item not in edges:
            edges.append(item)

    root = _node(
        nodes,
        f"version:{version.ref}",
        "version",
        version.ref,
        flavor=version.flavor,
        created_at=version.created_at.isoformat(),
        created_by=version.created_by,
        aliases=version.aliases,
        git_commit=version.lineage.get("git_commit"),
    )
    with ctx.store.read() as session:
        dataset_fp = version.lineage.get("dataset_fingerprint")
        if version.dataset:
            ds = _node(
                nodes, f"dataset:{version.dataset}", "dataset", version.dataset, fingerprint=dataset_fp
            )
            edge(ds, root, "trained")
        run = session.scalar(select(PipelineRun).where(PipelineRun.model_version == version.ref))
        if run is not None:
            run_id = _run_node(nodes, run)
            edge(run_id, root, "registered")
            for role, item in sorted(run.inputs.items()):
                label = item.get("dataset") or item.get("path")
                if not label:
                    continue
                kind = "dataset" if item.get("dataset") else "path"
                ds = _node(nodes, f"{kind}:{label}", kind, label, fingerprint=item.get("fingerprint"))
                edge(ds, run_id, "holdout" if role == "holdout" else "input")
            _trigger_node(session, nodes, edge, run)

        served: list[tuple[str, int, str]] = []
        for endpoint, rev in session.execute(
            select(Endpoint.name, EndpointRevision)
            .join(Endpoint, Endpoint.id == EndpointRevision.endpoint_id)
            .order_by(Endpoint.name, EndpointRevision.number)
        ):
            found_role = _role(rev.policy, version.model, version.number)
            if found_role is not None:
                role = found_role
                served.append((endpoint, rev.number, role))
                rev_id = _node(
                    nodes,
                    f"revision:{endpoint}/{rev.number}",
                    "revision",
                    f"{endpoint} revision {rev.number}",
                    endpoint=endpoint,
                    number=rev.number,
                    revision_kind=rev.kind,
                    created_at=rev.created_at.isoformat(),
                    created_by=rev.created_by,
                    reason=rev.reason,
                )
                edge(root, rev_id, role)
        alerts = session.execute(
            select(Alert, AlertRule.name)
            .join(AlertRule, AlertRule.id == Alert.rule_id)
            .where(Alert.model == version.model, Alert.version == version.number)
            .order_by(Alert.id)
        ).all()
        alert_runs = (
            session.scalars(
                select(PipelineRun).where(PipelineRun.trigger == "alert").order_by(PipelineRun.created_at)
            ).all()
            if alerts
            else []
        )
        for alert, rule in alerts:
            alert_id = _node(
                nodes,
                f"alert:{alert.id}",
                "alert",
                f"alert #{alert.id} {rule} on {alert.endpoint}",
                rule=rule,
                endpoint=alert.endpoint,
                state=alert.state,
                summary=alert.summary,
            )
            edge(root, alert_id, "raised")
            for later in alert_runs:
                if later.trigger_detail.get("alert_id") == alert.id:
                    edge(alert_id, _run_node(nodes, later), "triggered")
    upstream = {e["from"] for e in edges if e["to"] == root}
    return {
        "ref": version.ref,
        "root": root,
        "nodes": list(nodes.values()),
        "edges": edges,
        "upstream": sorted(upstream),
        "served": [{"endpoint": e, "revision": n, "role": r} for e, n, r in served],
    }


def _run_node(nodes: dict[str, dict[str, Any]], run: Any) -> str:
    return _node(
        nodes,
        f"run:{run.id}",
        "run",
        f"run {run.pipeline}#{run.number}",
        pipeline=run.pipeline,
        number=run.number,
        state=run.state,
        trigger=run.trigger,
        model_version=run.model_version,
        code=dict(run.code),
        environment_hash=run.environment_hash,
        started_at=run.started_at.isoformat() if run.started_at else None,
        finished_at=run.finished_at.isoformat() if run.finished_at else None,
    )


def _trigger_node(session: Any, nodes: dict[str, dict[str, Any]], edge: Any, run: Any) -> None:
    detail = dict(run.trigger_detail)
    run_id = f"run:{run.id}"
    if run.trigger == "alert" and detail.get("alert_id") is not None:
        label = f"alert #{detail['alert_id']} {detail.get('rule')} on {detail.get('endpoint')}"
        alert = _node(
            nodes,
            f"alert:{detail['alert_id']}",
            "alert",
            label,
            rule=detail.get("rule"),
            endpoint=detail.get("endpoint"),
            summary=detail.get("summary"),
            model=detail.get("model"),
            version=detail.get("version"),
        )
        edge(alert, run_id, "triggered")
    elif run.trigger == "dataset" and detail.get("dataset_version"):
        ds = detail["dataset_version"]
        edge(_node(nodes, f"dataset:{ds}", "dataset", ds), run_id, "triggered")
    elif run.trigger == "schedule":
        edge(
            _node(nodes, f"schedule:{run.pipeline}", "schedule", detail.get("cron", "schedule")),
            run_id,
            "triggered",
        )
    else:
        who = run.created_by
        edge(_node(nodes, f"person:{who}", "person", who), run_id, "triggered")


def _role(policy: dict[str, Any], model: str, number: int) -> str | None:
    canary = policy.get("canary") or {}
    if canary.get("model") == model and canary.get("version") == number:
        return "canary"
    for route in policy.get("routes", []):
        if route.get("model") == model and route.get("version") == number:
            return "serves"
    for shadow in policy.get("shadows", []):
        if shadow.get("model") == model and shadow.get("version") == number:
            return "shadows"
    return None
