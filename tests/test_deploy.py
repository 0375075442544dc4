"""The container image and the Kubernetes manifests, checked without Docker or a cluster.

The manifests are validated against the schemas of a named Kubernetes version, rendered with
kustomize (kubectl's), and tied to the code they run: the CLI parses their arguments, the probe
paths answer on a real server, and the settings they name are fields of ``Settings``. The
Dockerfile is parsed and held to the same facts.
"""

from __future__ import annotations

import inspect
import json
import os
import posixpath
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import typer
import yaml

from passerelle.__about__ import __version__
from passerelle.cli import app as cli_app
from passerelle.predictionlog import LogShipper
from passerelle.serving.threads import THREAD_ENV_VARS
from passerelle.settings import ENV_PREFIX, Settings, load_settings
from tests.conftest import service_missing

ROOT = Path(__file__).resolve().parents[1]
KUBE = ROOT / "deploy" / "kubernetes"
COMPONENTS = ("autoscaling", "persistent-log")
# Older than what most clusters run: manifests valid for it use no field that a current cluster
# lacks. kubernetes-validate ships the schemas of every release it names.
KUBERNETES_VERSION = "1.30.0"
PLACEHOLDER = "CHANGE-ME"
# run_worker's uvicorn timeout_graceful_shutdown: how long in-flight requests may take to finish.
IN_FLIGHT_S = 10


Doc = dict[str, Any]


# ------------------------------------------------------------------------------------ manifests


def _read(path: Path) -> list[Doc]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def _manifest_files() -> list[Path]:
    return sorted(p for p in KUBE.rglob("*.yaml") if p.name != "kustomization.yaml")


def _one(docs: list[Doc], kind: str, name: str | None = None) -> Doc:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


@cache
def _all_docs() -> tuple[Doc, ...]:
    return tuple(doc for path in _manifest_files() for doc in _read(path))


def _deployment() -> Doc:
    return _one(list(_all_docs()), "Deployment")


def _statefulset() -> Doc:
    return _one(list(_all_docs()), "StatefulSet")


def _workloads() -> list[Doc]:
    return [_deployment(), _statefulset()]


def _pod(workload: Doc) -> Doc:
    spec: Doc = workload["spec"]["template"]["spec"]
    return spec


def _gateway(workload: Doc) -> Doc:
    (container,) = (c for c in _pod(workload)["containers"] if c["name"] == "passerelle")
    found: Doc = container
    return found


def _all_containers(workload: Doc) -> list[Doc]:
    pod = _pod(workload)
    return [*pod.get("initContainers", []), *pod["containers"]]


def _container_port(container: Doc, port: int | str) -> int:
    if isinstance(port, int):
        return port
    return next(int(p["containerPort"]) for p in container["ports"] if p["name"] == port)


def _cpu(quantity: str) -> float:
    return int(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def _kustomization(directory: Path) -> Doc:
    return _read(directory / "kustomization.yaml")[0]


def _render(directory: Path) -> list[Doc]:
    """What ``kubectl apply -k DIRECTORY`` would send, through kubectl's built-in kustomize."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        service_missing("kubectl (its built-in kustomize renders the manifests)")
    done = subprocess.run(
        [str(kubectl), "kustomize", str(directory)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc is not None]


def _kustomize(tmp_path: Path, components: tuple[str, ...] = ()) -> list[Doc]:
    """Render the base with some components, through an overlay as a user would write one."""
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    base = os.path.relpath(KUBE, overlay)
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [base],
                "components": [f"{base}/{name}" for name in components],
            }
        )
    )
    return _render(overlay)


def _validate(doc: Doc) -> None:
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


# ------------------------------------------------------------------------------------ Dockerfile


def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in (ROOT / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not pending):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        whole = (pending + line).strip()
        pending = ""
        keyword, _, rest = whole.partition(" ")
        out.append((keyword.upper(), rest.strip()))
    assert not pending, "the Dockerfile ends inside a continued line"
    return out


def _final_stage() -> list[tuple[str, str]]:
    instructions = _dockerfile()
    last_from = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[last_from:]


def _args(instructions: list[tuple[str, str]], keyword: str) -> list[str]:
    return [rest for kw, rest in instructions if kw == keyword]


def _docker_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for rest in _args(_final_stage(), "ENV"):
        for pair in shlex.split(rest):
            name, _, value = pair.partition("=")
            env[name] = value
    return env


def _exec_form(rest: str) -> list[str]:
    value = json.loads(rest)
    assert isinstance(value, list), f"{rest!r} is not in exec form"
    return [str(v) for v in value]


def _glob_regex(pattern: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out.append(pattern[i : end + 1])
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return "".join(out)


@cache
def _ignore_rules() -> tuple[tuple[bool, re.Pattern[str]], ...]:
    rules: list[tuple[bool, re.Pattern[str]]] = []
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = posixpath.normpath(line.lstrip("!").strip().lstrip("/"))
        rules.append((negated, re.compile(_glob_regex(pattern))))
    return tuple(rules)


def _ignored(path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = PurePosixPath(path).parts
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    ignored = False
    for negated, regex in _ignore_rules():
        if any(regex.fullmatch(c) for c in candidates):
            ignored = not negated
    return ignored


def _copy_sources() -> list[str]:
    sources: list[str] = []
    for rest in _args(_dockerfile(), "COPY"):
        words = shlex.split(rest)
        if any(w.startswith("--from") for w in words):
            continue
        sources.extend(w for w in words[:-1] if not w.startswith("--"))
    return sources


def _cli_context(args: list[str]) -> Any:
    """Parse ``passerelle ARGS`` as the CLI would, without running the command; the context's
    ``params`` hold the parsed, converted and validated options."""
    command: Any = typer.main.get_command(cli_app)
    rest = list(args)
    name = "passerelle"
    # Groups have sub-commands; typer ships its own click, so duck typing rather than isinstance.
    while hasattr(command, "commands"):
        assert rest, f"{args}: no command after {name!r}"
        name, rest = rest[0], rest[1:]
        assert name in command.commands, f"{args}: {name!r} is not a passerelle command"
        command = command.commands[name]
    return command.make_context(name, rest)


def _checked_serve(args: list[str]) -> dict[str, Any]:
    """The options of ``passerelle serve ARGS``, after the check the command makes before it
    binds (a reachable address without authentication is refused there)."""
    from passerelle.serving.server import ServeOptions, check_bind

    params: dict[str, Any] = _cli_context(args).params
    check_bind(
        ServeOptions(
            host=params["host"],
            port=params["port"],
            workers=params["workers"],
            insecure=params["insecure"],
            auth=params["auth"],
        )
    )
    return params


# ------------------------------------------------------------------------------------ validation


@pytest.mark.parametrize("path", _manifest_files(), ids=lambda p: str(p.relative_to(KUBE)))
def test_every_manifest_is_valid_for_kubernetes(path: Path) -> None:
    docs = _read(path)
    assert docs
    for doc in docs:
        assert "namespace" not in doc["metadata"], f"{path.name}: the manifests choose no namespace"
        _validate(doc)


def test_the_validation_is_strict() -> None:
    broken = json.loads(json.dumps(_deployment()))
    gateway = broken["spec"]["template"]["spec"]["containers"][0]
    gateway["readinesProbe"] = gateway.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        _validate(broken)


def test_kustomizations_list_every_file() -> None:
    for directory in (KUBE, *(KUBE / name for name in COMPONENTS)):
        kustomization = _kustomization(directory)
        expected_kind = "Kustomization" if directory == KUBE else "Component"
        assert kustomization["kind"] == expected_kind, directory
        listed = set(kustomization.get("resources", []))
        listed |= {p["path"] for p in kustomization.get("patches", []) if "path" in p}
        present = {p.name for p in directory.glob("*.yaml") if p.name != "kustomization.yaml"}
        assert listed == present, f"{directory.relative_to(ROOT)}: listed {listed}, present {present}"
    # The components are optional: the base never pulls them in by itself.
    assert {p.name for p in KUBE.iterdir() if p.is_dir()} == set(COMPONENTS)


def test_the_base_renders_to_valid_manifests(tmp_path: Path) -> None:
    docs = _kustomize(tmp_path)
    for doc in docs:
        _validate(doc)
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted(
        ["ConfigMap", "Secret", "Deployment", "Service", "PodDisruptionBudget", "NetworkPolicy"]
    )
    deployment = _one(docs, "Deployment")
    assert deployment["spec"]["replicas"] >= 2
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    selectors = {
        "Service": _one(docs, "Service")["spec"]["selector"],
        "PodDisruptionBudget": _one(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
        "NetworkPolicy": _one(docs, "NetworkPolicy")["spec"]["podSelector"]["matchLabels"],
    }
    for kind, selector in selectors.items():
        assert selector.items() <= labels.items(), f"the {kind} does not select the gateway's pods"


def test_the_autoscaling_component_owns_the_replica_count(tmp_path: Path) -> None:
    docs = _kustomize(tmp_path, ("autoscaling",))
    for doc in docs:
        _validate(doc)
    deployment = _one(docs, "Deployment")
    hpa = _one(docs, "HorizontalPodAutoscaler")
    assert "replicas" not in deployment["spec"]
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert 2 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]


def test_the_persistent_log_component_replaces_the_deployment(tmp_path: Path) -> None:
    docs = _kustomize(tmp_path, ("persistent-log",))
    for doc in docs:
        _validate(doc)
    assert not [d for d in docs if d["kind"] == "Deployment"]
    statefulset = _one(docs, "StatefulSet")
    governing = _one(docs, "Service", statefulset["spec"]["serviceName"])
    assert governing["spec"]["clusterIP"] == "None"
    claims = [t["metadata"]["name"] for t in statefulset["spec"]["volumeClaimTemplates"]]
    assert claims == ["predictions"]
    # Clients still reach the replicas through the base's Service.
    service = _one(docs, "Service", "passerelle")
    assert (
        service["spec"]["selector"].items() <= statefulset["spec"]["template"]["metadata"]["labels"].items()
    )


def test_the_statefulset_runs_the_same_pod_as_the_deployment() -> None:
    deployment, statefulset = _deployment(), _statefulset()
    assert deployment["metadata"]["name"] == statefulset["metadata"]["name"]
    assert deployment["spec"]["selector"] == statefulset["spec"]["selector"]
    assert deployment["spec"]["replicas"] == statefulset["spec"]["replicas"]
    ours = json.loads(json.dumps(deployment["spec"]["template"]))
    theirs = statefulset["spec"]["template"]
    ours["spec"]["volumes"] = [v for v in ours["spec"]["volumes"] if v["name"] != "predictions"]
    assert ours == theirs


# ------------------------------------------------------------------------------------ the pods


@pytest.mark.parametrize("workload", _workloads(), ids=lambda w: w["kind"])
def test_probes_point_at_the_health_routes(workload: Doc) -> None:
    gateway = _gateway(workload)
    port = _container_port(gateway, "http")
    for probe, path in (
        ("readinessProbe", "/readyz"),
        ("livenessProbe", "/healthz"),
        ("startupProbe", "/healthz"),
    ):
        get = gateway[probe]["httpGet"]
        assert get["path"] == path, probe
        assert _container_port(gateway, get["port"]) == port, probe
    # Nothing answers until every endpoint's versions are loaded: the startup probe gives that
    # minutes, and keeps the liveness probe from killing a pod that is still loading.
    startup = gateway["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300
    live = gateway["livenessProbe"]
    assert live["periodSeconds"] * live["failureThreshold"] >= 30
    annotations = workload["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == port
    assert annotations["prometheus.io/path"] == "/metrics"


def test_the_service_reaches_the_container_port() -> None:
    docs = list(_all_docs())
    gateway = _gateway(_deployment())
    exposed = {int(p) for rest in _args(_final_stage(), "EXPOSE") for p in rest.split()}
    for service in (d for d in docs if d["kind"] == "Service"):
        (port,) = service["spec"]["ports"]
        assert _container_port(gateway, port["targetPort"]) == 8000
        assert {port["port"]} == exposed, service["metadata"]["name"]


@pytest.mark.parametrize("workload", _workloads(), ids=lambda w: w["kind"])
def test_the_containers_run_real_commands(workload: Doc) -> None:
    gateway = _gateway(workload)
    assert gateway["args"][0] == "serve"
    serve = _checked_serve(gateway["args"])
    assert serve["host"] == "0.0.0.0"
    assert (serve["auth"], serve["insecure"]) == (True, False), "every request must need a token"
    assert serve["port"] == _container_port(gateway, "http")
    limits, requests = gateway["resources"]["limits"], gateway["resources"]["requests"]
    assert serve["workers"] == _cpu(limits["cpu"]), "--workers must match the CPU limit"
    assert requests["cpu"] == limits["cpu"]
    assert requests["memory"] == limits["memory"]
    (init,) = _pod(workload)["initContainers"]
    assert init["args"] == ["db", "upgrade"]
    _cli_context(init["args"])
    for container in _all_containers(workload):
        assert container["image"] == f"passerelle:{__version__}"
        assert container["resources"]["requests"]["cpu"] == container["resources"]["limits"]["cpu"]
        assert container["resources"]["requests"]["memory"] == container["resources"]["limits"]["memory"]


@pytest.mark.parametrize("workload", _workloads(), ids=lambda w: w["kind"])
def test_the_pods_run_locked_down(workload: Doc) -> None:
    pod = _pod(workload)
    user = next(rest for rest in reversed(_args(_final_stage(), "USER")))
    uid, _, gid = user.partition(":")
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == int(uid)
    assert pod["securityContext"]["fsGroup"] == int(gid)
    assert pod["automountServiceAccountToken"] is False
    assert pod["enableServiceLinks"] is False
    for container in _all_containers(workload):
        context = container["securityContext"]
        assert context["readOnlyRootFilesystem"] is True, container["name"]
        assert context["allowPrivilegeEscalation"] is False, container["name"]
        assert context["capabilities"]["drop"] == ["ALL"], container["name"]
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert "/tmp" in mounts, f"{container['name']}: a read-only root needs a writable /tmp"
        names = {e["name"] for e in container.get("env", [])}
        assert not names & set(THREAD_ENV_VARS), "the gateway sizes its native thread pools itself"


@pytest.mark.parametrize("workload", _workloads(), ids=lambda w: w["kind"])
def test_the_prediction_log_is_on_its_own_volume(workload: Doc) -> None:
    gateway = _gateway(workload)
    env = {e["name"]: e["value"] for e in gateway["env"]}
    home = env["PASSERELLE_HOME"]
    assert home == _docker_env()["PASSERELLE_HOME"]
    mounts = {m["name"]: m["mountPath"] for m in gateway["volumeMounts"]}
    assert mounts["home"] == home
    assert mounts["predictions"] == posixpath.join(home, "predictions")
    volumes = {v["name"]: v for v in _pod(workload).get("volumes", [])}
    if workload["kind"] == "Deployment":
        assert "emptyDir" in volumes["predictions"], "survives container restarts, not pod deletion"
    else:
        assert "predictions" not in volumes
        assert [t["metadata"]["name"] for t in workload["spec"]["volumeClaimTemplates"]] == ["predictions"]


def test_the_grace_period_covers_a_clean_shutdown() -> None:
    pod = _pod(_deployment())
    pre_stop = pod["containers"][0]["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    shipper_s = inspect.signature(LogShipper.stop).parameters["timeout"].default
    needed = float(pre_stop[1]) + IN_FLIGHT_S + shipper_s
    assert pod["terminationGracePeriodSeconds"] >= needed


# ------------------------------------------------------------------------------------ settings


def _manifest_settings() -> dict[str, str]:
    """Every PASSERELLE_* variable the manifests give the pods, with its value."""
    found: dict[str, str] = {}
    for doc in _all_docs():
        if doc["kind"] == "ConfigMap":
            found.update(doc["data"])
        elif doc["kind"] == "Secret":
            found.update(doc["stringData"])
        elif doc["kind"] in {"Deployment", "StatefulSet"}:
            for container in _all_containers(doc):
                found.update({e["name"]: e["value"] for e in container.get("env", [])})
    return {name: value for name, value in found.items() if name.startswith(ENV_PREFIX)}


def test_the_manifests_name_real_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    variables = _manifest_settings()
    assert {"PASSERELLE_HOME", "PASSERELLE_DATABASE_URL", "PASSERELLE_ARTIFACT_URI"} <= set(variables)
    unknown = sorted(n for n in variables if n.removeprefix(ENV_PREFIX).lower() not in Settings.model_fields)
    assert not unknown, f"not settings fields: {unknown}"
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    assert settings.home == Path("/var/lib/passerelle")
    assert settings.effective_database_url.startswith("postgresql+psycopg://")
    assert settings.effective_artifact_uri.startswith("s3://")
    # Every pod container reads the same ConfigMap and Secret.
    for workload in _workloads():
        for container in _all_containers(workload):
            sources = {next(iter(s.values()))["name"] for s in container["envFrom"]}
            assert sources == {"passerelle-config", "passerelle-credentials"}, container["name"]


def test_the_secret_holds_only_placeholders() -> None:
    secret = _one(list(_all_docs()), "Secret")
    configmap = _one(list(_all_docs()), "ConfigMap")
    assert "data" not in secret, "base64 data would hide what the template holds"
    assert secret["stringData"]
    for name, value in secret["stringData"].items():
        assert PLACEHOLDER in value, f"{name} holds something other than a placeholder"
    # Settings that carry secrets never go to the ConfigMap: the SecretStr ones, the database URL
    # (it may embed a password) and the S3 key id (half of a credential pair).
    secret_fields = {
        f"{ENV_PREFIX}{name.upper()}"
        for name, field in Settings.model_fields.items()
        if "SecretStr" in str(field.annotation)
    } | {f"{ENV_PREFIX}DATABASE_URL", f"{ENV_PREFIX}S3_ACCESS_KEY_ID"}
    assert not secret_fields & set(configmap["data"])
    assert set(secret["stringData"]) <= secret_fields


def test_the_documented_overlay_applies(tmp_path: Path) -> None:
    """docs/deploy.md's overlay, file by file, beside a clone of the repository as it says."""
    text = (ROOT / "docs" / "deploy.md").read_text()
    blocks = re.findall(r"```yaml\n# (my-passerelle/[a-z.]+)\n(.*?)```", text, flags=re.S)
    assert {name for name, _ in blocks} == {"my-passerelle/kustomization.yaml", "my-passerelle/settings.yaml"}
    for name, body in blocks:
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(body)
    (tmp_path / "passerelle").symlink_to(ROOT, target_is_directory=True)
    for mentioned in set(re.findall(r"\.\./passerelle/([\w/.-]+)", text)):
        assert (ROOT / mentioned).exists(), f"docs/deploy.md names {mentioned}, which does not exist"
    docs = _render(tmp_path / "my-passerelle")
    for doc in docs:
        _validate(doc)
        assert doc["metadata"].get("namespace") == "ml", doc["kind"]
    assert not [d for d in docs if d["kind"] == "Secret"], "the credentials are created with kubectl"
    images = {c["image"] for c in _all_containers(_one(docs, "Deployment"))}
    assert images == {f"registry.example.com/ml/passerelle:{__version__}"}
    data = _one(docs, "ConfigMap")["data"]
    assert data["PASSERELLE_ARTIFACT_URI"] == "s3://ml-artifacts/passerelle"
    assert all(n.removeprefix(ENV_PREFIX).lower() in Settings.model_fields for n in data)
    # The secret the docs create with kubectl has the keys the template has.
    created = set(re.findall(r"--from-literal=(PASSERELLE_\w+)=", text))
    assert created == set(_one(list(_all_docs()), "Secret")["stringData"])


# ------------------------------------------------------------------------------------ the image


def test_the_image_is_pinned_and_unprivileged() -> None:
    instructions = _dockerfile()
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    minimum = tuple(int(p) for p in requires.removeprefix(">=").split("."))
    bases = [rest.split()[0] for kw, rest in instructions if kw == "FROM"]
    assert len(bases) >= 2, "a multi-stage build"
    for base in bases:
        match = re.fullmatch(r"python:(\d+)\.(\d+)-slim", base)
        assert match, f"{base}: pin the base image to a Python minor version"
        assert (int(match[1]), int(match[2])) >= minimum
    assert len(set(bases)) == 1, "the virtualenv's interpreter path must exist in the runtime stage"
    (user,) = _args(_final_stage(), "USER")
    uid = user.partition(":")[0]
    assert uid.isdigit(), "a numeric USER lets Kubernetes check runAsNonRoot"
    assert int(uid) != 0
    env = _docker_env()
    assert env["PYTHONUNBUFFERED"] == "1"
    assert not set(env) & set(THREAD_ENV_VARS)
    (volume,) = _args(_final_stage(), "VOLUME")
    assert json.loads(volume) == [env["PASSERELLE_HOME"]]


def test_the_image_installs_the_scale_out_extras() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    installs = [rest for rest in _args(_dockerfile(), "RUN") if " install " in rest and "[" in rest]
    assert len(installs) == 1
    extras = set(re.search(r"\.\[([a-z0-9_,-]+)\]", installs[0])[1].split(","))  # type: ignore[index]
    assert extras == {"postgres", "s3"}
    assert extras <= set(project["optional-dependencies"])
    (entrypoint,) = _args(_final_stage(), "ENTRYPOINT")
    assert _exec_form(entrypoint) == ["passerelle"]
    assert "passerelle" in project["scripts"]
    (cmd,) = _args(_final_stage(), "CMD")
    serve = _checked_serve(_exec_form(cmd))
    exposed = {int(p) for rest in _args(_final_stage(), "EXPOSE") for p in rest.split()}
    assert serve["host"] == "0.0.0.0"
    assert (serve["auth"], serve["insecure"]) == (True, False), "every request must need a token"
    assert {serve["port"]} == exposed


def test_nothing_shipped_serves_without_authentication() -> None:
    """--insecure lets anyone who reaches the port do anything: no manifest, component or image
    command may pass it, in any form (args, command, a shell line)."""
    shipped = [*sorted(KUBE.rglob("*.yaml")), ROOT / "Dockerfile"]
    assert len(shipped) > len(_manifest_files())
    for path in shipped:
        code = [line for line in path.read_text().splitlines() if not line.lstrip().startswith("#")]
        assert code, path
        found = [line.strip() for line in code if "--insecure" in line]
        assert not found, f"{path.relative_to(ROOT)} passes --insecure: {found}"
    commands = [[*c.get("command", []), *c.get("args", [])] for w in _workloads() for c in _all_containers(w)]
    commands.append(_exec_form(_args(_final_stage(), "CMD")[0]))
    serving = [c for c in commands if "serve" in c]
    assert len(serving) == 3, "the Deployment's, the StatefulSet's and the image's"
    assert all("--auth" in c and "--insecure" not in c for c in serving)


def test_every_copied_file_is_in_the_build_context() -> None:
    sources = _copy_sources()
    assert {"pyproject.toml", "README.md", "src/"} <= set(sources)
    for source in sources:
        path = ROOT / source
        assert path.exists(), f"COPY {source}: not in the repository"
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        for file in files:
            rel = file.relative_to(ROOT).as_posix()
            if "__pycache__" in file.parts:
                continue
            assert not _ignored(rel), f"COPY {source}: .dockerignore excludes {rel}"
    assert (ROOT / "src" / "passerelle" / "store" / "migrations").is_dir()


def test_the_build_context_leaves_out_local_state() -> None:
    for path in (".venv/bin/python", ".git/config", ".passerelle/passerelle.db", "tests/conftest.py"):
        assert _ignored(path), path
    assert _ignored("src/passerelle/__pycache__/settings.cpython-311.pyc")
    assert not _ignored("src/passerelle/settings.py")


# ------------------------------------------------------------------------------------ a real server


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Any, Path]]:
    from passerelle.serving.app import create_serving_app
    from passerelle.serving.server import background_server

    home = tmp_path / "home"
    # As the manifests and the image run it: with authentication, so the probes must stay public.
    app = create_serving_app(Settings(home=home, auth=True), worker="deploy-test")
    with background_server(app) as url:
        yield url, app, home


def test_the_probed_paths_answer(served: tuple[str, Any, Path]) -> None:
    """Probes and Prometheus carry no token: what they call answers without one, while the rest
    of the server refuses a request that has none."""
    url, app, home = served
    routes = set(app.openapi()["paths"])
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(url + "/api/v1/endpoints", timeout=10)
    assert refused.value.code == 401
    assert refused.value.headers["WWW-Authenticate"].startswith("Bearer")
    refused.value.close()
    for workload in _workloads():
        gateway = _gateway(workload)
        paths = {gateway[p]["httpGet"]["path"] for p in ("startupProbe", "readinessProbe", "livenessProbe")}
        paths.add(workload["spec"]["template"]["metadata"]["annotations"]["prometheus.io/path"])
        for path in paths:
            assert path in routes
            with urllib.request.urlopen(url + path, timeout=10) as answer:
                assert answer.status == 200, path
        # The volume mounted for the log is where the gateway writes it.
        mounts = {m["name"]: PurePosixPath(m["mountPath"]) for m in gateway["volumeMounts"]}
        log_dir = Path(app.state.gateway.log.directory)
        assert log_dir.relative_to(home.resolve()).as_posix() == str(
            mounts["predictions"].relative_to(mounts["home"])
        )


def test_the_image_healthcheck_runs(served: tuple[str, Any, Path]) -> None:
    url, app, _ = served
    (healthcheck,) = _args(_final_stage(), "HEALTHCHECK")
    command = _exec_form(healthcheck[healthcheck.index("CMD ") + 4 :])
    assert command[:2] == ["python", "-c"]
    checked = re.search(r"http://127\.0\.0\.1:(\d+)(/[a-z]+)", command[2])
    assert checked, "the health check calls the server on loopback"
    exposed = {int(p) for rest in _args(_final_stage(), "EXPOSE") for p in rest.split()}
    assert {int(checked[1])} == exposed
    assert checked[2] in app.openapi()["paths"]

    def run(target: str) -> int:
        code = command[2].replace(checked[0], target)
        return subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=30).returncode

    assert run(url + checked[2]) == 0
    assert run(url + "/no-such-route") != 0
