"""Serving benchmark (issue 3): passerelle against mlflow, BentoML and a minimal FastAPI app.

    .venv/bin/python benchmarks/serving.py                       # full: 20 s x 3 runs, ~1 h
    .venv/bin/python benchmarks/serving.py --duration 5 --runs 1 # a quick look
    .venv/bin/python benchmarks/serving.py --report A.json [B.json ...]  # tables from saved runs

One model, ``HistGradientBoostingClassifier(max_iter=100)`` on ``make_classification(50_000
rows, 20 features, 8 informative, random_state=0)``, is trained once here, saved with joblib
and handed to every server in the form it needs: passerelle's registry (a temporary home), an
MLflow model folder, a BentoML model store, and the joblib file itself for the FastAPI app.
The peers run from their own virtualenvs under ``benchmarks/.work/`` (created with ``uv`` when
missing), never from passerelle's.

Each server answers single-row requests in its own request shape, on a free loopback port.
Servers are measured one at a time and interleaved (A B C ... A B C ...), each once per run in
its default environment and once with ``OMP_NUM_THREADS=1``. For each concurrency (1, 16, 64)
a warm-up run of ``wrk`` precedes the measured one: ``wrk -t2 -cN -dDs --latency -s body.lua``
(``-t1`` at concurrency 1). Throughput counts 2xx answers only; any non-2xx or socket error
from passerelle marks the run failed.

passerelle is measured in three set-ups, all with ``passerelle serve --workers 2``:

- ``passerelle``: one route, no shadow, durable logging (the default: fsync before answering);
- ``passerelle-full``: an A/B split (50/50 over two versions), a shadow version on 100% of the
  traffic, durable logging;
- ``passerelle-off``: one route, no shadow, ``--no-fsync``. The prediction log cannot be turned
  off: "off" still writes every record to the local segment, without waiting for the disk.

For passerelle, the CPU seconds of each worker process (``/proc/<pid>/stat`` utime + stime)
and the mean rows per model call (``passerelle_batch_rows_sum / _count`` in ``/metrics``) are
read before and after each measured run. wrk runs on the same 2-core machine and takes CPU
from the servers; its CPU time is recorded with each run.

Results go to ``benchmarks/.work/serving/`` (git-ignored): a JSON file of raw results and a
Markdown file with the tables and the targets of the issue.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "benchmarks" / ".work"
OUT = WORK / "serving"
FEATURES = [f"f{i}" for i in range(20)]
CLK_TCK = os.sysconf("SC_CLK_TCK")
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
ENVS = ("default", "omp1")
#: before each run, wait (up to --quiet-wait s) until other work uses less than this many cores
QUIET_CORES = 0.25

#: (venv name, packages) of each peer; the venvs live in benchmarks/.work/<name>
PEER_VENVS: dict[str, list[str]] = {
    "mlflow": ["mlflow", "scikit-learn", "pandas"],
    "bentoml": ["bentoml", "scikit-learn", "pandas"],
    "fastapi": ["fastapi", "uvicorn[standard]", "scikit-learn", "pandas", "joblib"],
}
ALL_SERVERS = (
    "passerelle",
    "passerelle-full",
    "passerelle-off",
    "mlflow",
    "bentoml",
    "bentoml-batch",
    "fastapi",
)

# ------------------------------------------------------------------------------------ the peers' code

FASTAPI_APP = '''\
"""A minimal hand-written FastAPI app: one sync route, pydantic body, predict_proba."""
import os
import warnings

import joblib
import numpy as np
from fastapi import FastAPI
from pydantic import BaseModel

# The model was fitted on a frame; arrays are fine, the warning is noise.
warnings.filterwarnings("ignore", message="X does not have valid feature names")
model = joblib.load(os.environ["BENCH_MODEL"])
app = FastAPI()


class Instances(BaseModel):
    instances: list[list[float]]


@app.post("/predict")
def predict(body: Instances) -> dict[str, list[list[float]]]:
    proba = model.predict_proba(np.asarray(body.instances, dtype=np.float64))
    return {"predictions": proba.tolist()}


@app.get("/health")
def health() -> dict[str, bool]:
    return {"ok": True}
'''

BENTO_SERVICE = '''\
"""BentoML services over the benchmark model: plain, and with adaptive batching."""
import warnings

import bentoml
import numpy as np

warnings.filterwarnings("ignore", message="X does not have valid feature names")
# No access log line per request: the figures are the peer's best, not its defaults.
CONFIG = {"workers": 2, "logging": {"access": {"enabled": False}}}


@bentoml.service(**CONFIG)
class Plain:
    def __init__(self) -> None:
        self.model = bentoml.sklearn.load_model("hgb:latest")

    @bentoml.api
    def predict(self, input: np.ndarray) -> np.ndarray:
        return self.model.predict_proba(input)


@bentoml.service(**CONFIG)
class Batched:
    def __init__(self) -> None:
        self.model = bentoml.sklearn.load_model("hgb:latest")

    @bentoml.api(batchable=True, max_batch_size=256, max_latency_ms=1000)
    def predict(self, input: np.ndarray) -> np.ndarray:
        return self.model.predict_proba(input)
'''

SAVE_MLFLOW = """\
import sys, joblib, pandas as pd, mlflow.sklearn
from mlflow.models import infer_signature
model = joblib.load(sys.argv[1])
sample = pd.read_json(sys.argv[3], orient="split")
mlflow.sklearn.save_model(
    model, sys.argv[2], signature=infer_signature(sample, model.predict_proba(sample)),
    pyfunc_predict_fn="predict_proba",
    skops_trusted_types=["sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor"],
)
"""

SAVE_BENTO = """\
import sys, joblib, bentoml
bentoml.sklearn.save_model("hgb", joblib.load(sys.argv[1]))
"""

FLOOR = """\
import json, os, sys, time, statistics, warnings, joblib, numpy as np
warnings.filterwarnings("ignore", message="X does not have valid feature names")
model = joblib.load(sys.argv[1])
rng = np.random.default_rng(0)
one = rng.normal(size=(1, 20))
big = rng.normal(size=(1000, 20))
def med(fn, n):
    for _ in range(max(20, n // 10)):
        fn()
    t = []
    for _ in range(n):
        s = time.perf_counter(); fn(); t.append(time.perf_counter() - s)
    return statistics.median(t) * 1000
one_ms = med(lambda: model.predict_proba(one), 3000)
big_ms = med(lambda: model.predict_proba(big), 200)
fd = os.open(os.path.join(sys.argv[2], "fsync.bin"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
def sync():
    os.write(fd, b"x" * 400); os.fdatasync(fd)
fsync_ms = med(sync, 1000)
os.close(fd)
print(json.dumps({"predict_proba_1x20_ms": one_ms, "predict_proba_1000x20_ms": big_ms,
                  "fdatasync_ms": fsync_ms}))
"""

# ------------------------------------------------------------------------------------ helpers


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def http(method: str, url: str, body: bytes | None = None, timeout: float = 5.0) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method=method)
    if body is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def uv() -> str:
    found = Path(sys.executable).parent / "uv"
    return str(found) if found.exists() else (shutil.which("uv") or "uv")


def ensure_venv(name: str) -> Path:
    """The python of the peer's own virtualenv, created with uv when missing."""
    venv = WORK / name
    python = venv / "bin" / "python"
    if not python.exists():
        log(f"creating {venv} ({' '.join(PEER_VENVS[name])})")
        subprocess.run([uv(), "venv", str(venv), "--python", "3.11", "-q"], check=True)
        subprocess.run([uv(), "pip", "install", "-q", "--python", str(python), *PEER_VENVS[name]], check=True)
    return python


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(parents.get(pid, []))
    return out


def cpu_seconds(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    # utime and stime are fields 14 and 15 of /proc/<pid>/stat (1-based, counting pid and comm).
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_busy_s() -> float:
    """CPU seconds the whole machine has spent busy since boot (all cores, /proc/stat)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def wait_quiet(limit_cores: float, max_wait_s: float) -> float:
    """Wait until the machine's other load stays under ``limit_cores`` for a second; return the wait."""
    began = time.monotonic()
    while True:
        before = machine_busy_s()
        time.sleep(1.0)
        busy = machine_busy_s() - before
        if busy <= limit_cores or time.monotonic() - began > max_wait_s:
            return time.monotonic() - began


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def lua_script(path: Path, body: bytes) -> None:
    """A wrk script posting ``body`` and printing one JSON line of results when done."""
    text = body.decode()
    if "]==]" in text:
        raise ValueError("the body cannot sit in a Lua long string")
    path.write_text(
        textwrap.dedent(
            """\
            wrk.method = "POST"
            wrk.headers["Content-Type"] = "application/json"
            wrk.body = [==[%s]==]

            done = function(summary, latency, requests)
              local e = summary.errors
              io.write(string.format(
                'WRKJSON {"requests":%%d,"duration_us":%%d,"bytes":%%d,"non2xx":%%d,' ..
                '"connect":%%d,"read":%%d,"write":%%d,"timeout":%%d,' ..
                '"p50_us":%%d,"p90_us":%%d,"p99_us":%%d,"p999_us":%%d,"mean_us":%%.1f,"max_us":%%d}\\n',
                summary.requests, summary.duration, summary.bytes, e.status,
                e.connect, e.read, e.write, e.timeout,
                latency:percentile(50), latency:percentile(90), latency:percentile(99),
                latency:percentile(99.9), latency.mean, latency.max))
            end
            """
        )
        % text
    )


def run_wrk(url: str, script: Path, concurrency: int, seconds: float) -> dict[str, Any]:
    threads = min(2, concurrency)
    cmd = [
        "wrk",
        f"-t{threads}",
        f"-c{concurrency}",
        f"-d{seconds:g}s",
        "--timeout",
        "10s",
        "--latency",
        "-s",
        str(script),
        url,
    ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=seconds + 60)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    found = re.search(r"^WRKJSON (\{.*\})$", done.stdout, re.MULTILINE)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout[-2000:]} {done.stderr[-2000:]}")
    out: dict[str, Any] = json.loads(found.group(1))
    out["wrk_cpu_s"] = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    out["command"] = " ".join(cmd)
    return out


# ------------------------------------------------------------------------------------ servers


@dataclass
class Server:
    name: str
    command: list[str]
    path: str
    body: bytes
    health: str
    cwd: Path
    env: dict[str, str] = field(default_factory=dict)
    #: passerelle: read worker CPU and /metrics
    gateway: bool = False
    #: checks a 200 answer is a real prediction
    check: Callable[[Any], bool] = lambda _: True


@dataclass
class Running:
    server: Server
    proc: subprocess.Popen[bytes]
    port: int
    logfile: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def workers(self) -> list[int]:
        """The gateway's worker processes (spawned children), not the supervisor."""
        return [pid for pid in process_tree(self.proc.pid)[1:] if "spawn_main" in cmdline(pid)] or [
            self.proc.pid
        ]


def start(server: Server, env_name: str, logdir: Path, timeout: float = 180.0) -> Running:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARS and not k.startswith("PASSERELLE_")}
    env.update(server.env)
    env["PYTHONUNBUFFERED"] = "1"
    if env_name == "omp1":
        env["OMP_NUM_THREADS"] = "1"
    command = [part.replace("{port}", str(port)) for part in server.command]
    logfile = logdir / f"{server.name}-{env_name}-{port}.log"
    with logfile.open("wb") as out:
        proc = subprocess.Popen(
            command, cwd=server.cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    running = Running(server, proc, port, logfile)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{server.name} exited with {proc.returncode}: {logfile.read_text()[-3000:]}")
        with contextlib.suppress(OSError):
            status, _ = http("GET", running.base + server.health, timeout=2)
            if status == 200:
                break
        time.sleep(0.5)
    else:
        stop(running)
        raise RuntimeError(f"{server.name} not ready after {timeout:g} s: {logfile.read_text()[-3000:]}")
    status, answer = http("POST", running.base + server.path, server.body, timeout=30)
    if status != 200 or not server.check(json.loads(answer)):
        stop(running)
        raise RuntimeError(f"{server.name} answered {status}: {answer[:500]!r}")
    return running


def stop(running: Running) -> None:
    """Stop the server's process group (started here in its own session)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(running.proc.pid, signal.SIGTERM)
    try:
        running.proc.wait(30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(running.proc.pid, signal.SIGKILL)
        running.proc.wait(10)
    # Workers that outlived their supervisor still belong to the group.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(running.proc.pid, signal.SIGKILL)


def batch_figures(running: Running) -> tuple[float, float]:
    """(sum, count) of passerelle_batch_rows over every label set."""
    status, body = http("GET", running.base + "/metrics")
    if status != 200:
        return 0.0, 0.0
    total = count = 0.0
    for line in body.decode().splitlines():
        if line.startswith("passerelle_batch_rows_sum"):
            total += float(line.rsplit(" ", 1)[1])
        elif line.startswith("passerelle_batch_rows_count"):
            count += float(line.rsplit(" ", 1)[1])
    return total, count


def measure(
    running: Running, script: Path, concurrency: int, seconds: float, warmup: float, quiet_wait_s: float
) -> dict[str, Any]:
    url = running.base + running.server.path
    # Other work on this machine (tests, other benchmarks) distorts the figures: wait for it
    # to calm down, and record what it still took during the run.
    waited = wait_quiet(QUIET_CORES, quiet_wait_s) if quiet_wait_s > 0 else 0.0
    if warmup > 0:
        run_wrk(url, script, concurrency, warmup)
    tree = process_tree(running.proc.pid)
    workers = running.workers() if running.server.gateway else []
    cpu_before = {pid: cpu_seconds(pid) for pid in tree}
    batch_before = batch_figures(running) if running.server.gateway else (0.0, 0.0)
    busy_before = machine_busy_s()
    result = run_wrk(url, script, concurrency, seconds)
    busy = machine_busy_s() - busy_before
    batch_after = batch_figures(running) if running.server.gateway else (0.0, 0.0)
    cpu_after = {pid: cpu_seconds(pid) for pid in tree}
    spent = {
        pid: after - before
        for pid in tree
        if (before := cpu_before.get(pid)) is not None and (after := cpu_after.get(pid)) is not None
    }
    seconds_run = result["duration_us"] / 1e6
    ok = result["requests"] - result["non2xx"]
    result.update(
        rps_2xx=ok / seconds_run,
        server_cpu_s=sum(spent.values()),
        worker_cpu_s=[spent.get(pid, 0.0) for pid in workers],
        socket_errors=result["connect"] + result["read"] + result["write"] + result["timeout"],
        quiet_wait_s=waited,
        # CPU taken during the run by neither the server nor wrk: other work on the machine.
        foreign_cpu_s=max(0.0, busy - sum(spent.values()) - result["wrk_cpu_s"]),
    )
    calls = batch_after[1] - batch_before[1]
    result["mean_batch_rows"] = (batch_after[0] - batch_before[0]) / calls if calls else None
    return result


# ------------------------------------------------------------------------------------ set-up


def train(work: Path) -> tuple[Any, Any, Path]:
    import joblib
    import pandas as pd
    from sklearn.datasets import make_classification
    from sklearn.ensemble import HistGradientBoostingClassifier

    X, y = make_classification(n_samples=50_000, n_features=20, n_informative=8, random_state=0)
    frame = pd.DataFrame(X, columns=FEATURES)
    began = time.perf_counter()
    model = HistGradientBoostingClassifier(max_iter=100, random_state=0).fit(frame, y)
    log(f"trained in {time.perf_counter() - began:.1f} s ({model.n_iter_} iterations)")
    path = work / "model.joblib"
    joblib.dump(model, path)
    return model, frame, path


def passerelle_home(work: Path, name: str, model: Any, frame: Any, *, full: bool) -> Path:
    from passerelle.client import LocalClient
    from passerelle.endpoints import DeploySpec
    from passerelle.settings import Settings

    home = work / name
    with LocalClient(Settings(home=home)) as client:
        for _ in range(3 if full else 1):
            client.register(model, "hgb", sample=frame.head(1000))
        if full:
            spec = DeploySpec(routes=[("hgb:1", 50), ("hgb:2", 50)], shadows=[("hgb:3", 100.0)])
        else:
            spec = DeploySpec(routes=[("hgb:1", 100)])
        client.deploy("bench", spec, reason="serving benchmark")
    return home


def build_servers(
    names: list[str], work: Path, model: Any, frame: Any, model_path: Path, passerelle_src: Path | None = None
) -> dict[str, Server]:
    row = [float(v) for v in frame.iloc[0].tolist()]
    servers: dict[str, Server] = {}
    bin_dir = Path(sys.executable).parent
    passerelle = str(bin_dir / "passerelle")
    split = json.dumps({"dataframe_split": {"columns": FEATURES, "data": [row]}}).encode()

    def has_predictions(answer: Any) -> bool:
        return isinstance(answer, dict) and len(answer.get("predictions", [])) == 1

    for name, full, extra in (
        ("passerelle", False, []),
        ("passerelle-full", True, []),
        ("passerelle-off", False, ["--no-fsync"]),
    ):
        if name not in names:
            continue
        home = passerelle_home(work, name, model, frame, full=full)
        servers[name] = Server(
            name=name,
            command=[passerelle, "serve", "--port", "{port}", "--workers", "2", *extra],
            path="/v1/endpoints/bench/predict",
            body=split,
            health="/readyz",
            cwd=home,
            # --passerelle-src: serve another copy of passerelle's source (a before/after comparison).
            env={
                "PASSERELLE_HOME": str(home),
                **({"PYTHONPATH": str(passerelle_src)} if passerelle_src else {}),
            },
            gateway=True,
            check=has_predictions,
        )
    quiet = {"DO_NOT_TRACK": "1", "MLFLOW_DISABLE_TELEMETRY": "true", "BENTOML_DO_NOT_TRACK": "true"}
    if "mlflow" in names:
        python = ensure_venv("mlflow")
        target = work / "mlflow-model"
        sample = work / "sample.json"
        frame.head(5).to_json(sample, orient="split")
        subprocess.run(
            [str(python), "-c", SAVE_MLFLOW, str(model_path), str(target), str(sample)], check=True
        )
        venv_bin = python.parent
        servers["mlflow"] = Server(
            name="mlflow",
            command=[
                str(venv_bin / "mlflow"),
                "models",
                "serve",
                "-m",
                str(target),
                "--env-manager",
                "local",
                "-w",
                "2",
                "-h",
                "127.0.0.1",
                "-p",
                "{port}",
            ],
            path="/invocations",
            body=split,
            health="/ping",
            cwd=work,
            env={**quiet, "PATH": f"{venv_bin}:{os.environ.get('PATH', '')}"},
            check=has_predictions,
        )
    bento = [n for n in ("bentoml", "bentoml-batch") if n in names]
    if bento:
        python = ensure_venv("bentoml")
        folder = work / "bento"
        folder.mkdir(exist_ok=True)
        (folder / "service.py").write_text(BENTO_SERVICE)
        env = {**quiet, "BENTOML_HOME": str(work / "bentoml-home")}
        subprocess.run(
            [str(python), "-c", SAVE_BENTO, str(model_path)], check=True, env={**os.environ, **env}
        )
        body = json.dumps({"input": [row]}).encode()
        for name in bento:
            service = "service:Batched" if name == "bentoml-batch" else "service:Plain"
            servers[name] = Server(
                name=name,
                command=[
                    str(python.parent / "bentoml"),
                    "serve",
                    service,
                    "--host",
                    "127.0.0.1",
                    "--port",
                    "{port}",
                ],
                path="/predict",
                body=body,
                health="/readyz",
                cwd=folder,
                env={**env, "PATH": f"{python.parent}:{os.environ.get('PATH', '')}"},
                check=lambda answer: isinstance(answer, list) and len(answer) == 1,
            )
    if "fastapi" in names:
        python = ensure_venv("fastapi")
        folder = work / "fastapi"
        folder.mkdir(exist_ok=True)
        (folder / "app.py").write_text(FASTAPI_APP)
        servers["fastapi"] = Server(
            name="fastapi",
            command=[
                str(python.parent / "uvicorn"),
                "app:app",
                "--workers",
                "2",
                "--host",
                "127.0.0.1",
                "--port",
                "{port}",
                "--no-access-log",
                "--log-level",
                "warning",
            ],
            path="/predict",
            body=json.dumps({"instances": [row]}).encode(),
            health="/health",
            cwd=folder,
            env={"BENCH_MODEL": str(model_path)},
            check=has_predictions,
        )
    return servers


def floor(model_path: Path, work: Path) -> dict[str, float]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", FLOOR, str(model_path), str(work)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    found: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return found


def machine() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory = ""
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        memory = subprocess.run(["free", "-h"], capture_output=True, text=True, check=True).stdout
    wrk = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False)
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory": memory.strip(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "wrk": (wrk.stdout or wrk.stderr).strip().splitlines()[0] if (wrk.stdout or wrk.stderr) else "",
    }


# ------------------------------------------------------------------------------------ the run


def run(args: argparse.Namespace) -> Path:
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is missing: apt-get install -y wrk (Debian package)")
    names = [n.strip() for n in args.servers.split(",") if n.strip()]
    unknown = sorted(set(names) - set(ALL_SERVERS))
    if unknown:
        raise SystemExit(f"unknown server(s) {', '.join(unknown)}; choose among {', '.join(ALL_SERVERS)}")
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    envs = [e.strip() for e in args.envs.split(",")]
    OUT.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    label = args.label or stamp
    work = Path(tempfile.mkdtemp(prefix="passerelle-serving-bench-"))
    logdir = OUT / f"logs-{label}"
    logdir.mkdir(parents=True, exist_ok=True)
    document: dict[str, Any] = {
        "label": label,
        "started": stamp,
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": machine(),
        "runs": [],
        "skipped": {},
    }
    out_json = OUT / f"serving-{label}.json"
    try:
        model, frame, model_path = train(work)
        wait_quiet(QUIET_CORES, args.quiet_wait)
        document["floor"] = floor(model_path, work)
        log(f"floor: {document['floor']}")
        servers = build_servers(names, work, model, frame, model_path, args.passerelle_src)
        for round_ in range(args.runs):
            for env_name in envs:
                for name in names:
                    server = servers[name]
                    log(f"run {round_ + 1}/{args.runs} {name} [{env_name}]: starting")
                    try:
                        running = start(server, env_name, logdir)
                    except RuntimeError as exc:
                        log(f"{name} [{env_name}] could not start: {exc}")
                        document["skipped"][f"{name}/{env_name}/{round_}"] = str(exc)[:2000]
                        continue
                    try:
                        for concurrency in concurrencies:
                            script = work / f"{name}.lua"
                            lua_script(script, server.body)
                            result = measure(
                                running, script, concurrency, args.duration, args.warmup, args.quiet_wait
                            )
                            result.update(server=name, env=env_name, concurrency=concurrency, round=round_)
                            result["failed"] = server.gateway and (
                                result["non2xx"] > 0 or result["socket_errors"] > 0
                            )
                            document["runs"].append(result)
                            log(
                                f"  c={concurrency:<3} {result['rps_2xx']:8.1f} req/s  "
                                f"p50 {result['p50_us'] / 1000:7.2f} ms  "
                                f"p99 {result['p99_us'] / 1000:8.2f} ms  "
                                f"non2xx {result['non2xx']}  sockerr {result['socket_errors']}  "
                                f"batch {result['mean_batch_rows']}  workers cpu {result['worker_cpu_s']}  "
                                f"foreign cpu {result['foreign_cpu_s']:.1f} s"
                            )
                            out_json.write_text(json.dumps(document, indent=1))
                    finally:
                        stop(running)
    finally:
        out_json.write_text(json.dumps(document, indent=1))
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return out_json


# ------------------------------------------------------------------------------------ the report


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _span(values: list[float], fmt: str = "{:.0f}") -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(_median(values))} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def _runs(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [run_ for doc in docs for run_ in doc["runs"]]


def _pick(runs: list[dict[str, Any]], server: str, env: str | None, c: int) -> list[dict[str, Any]]:
    return [
        r
        for r in runs
        if r["server"] == server and (env is None or r["env"] == env) and r["concurrency"] == c
    ]


def _rps(runs: list[dict[str, Any]], server: str, env: str, c: int) -> float:
    return _median([r["rps_2xx"] for r in _pick(runs, server, env, c)])


def _best(runs: list[dict[str, Any]], server: str, c: int) -> tuple[float, str]:
    """The better environment's median throughput, and that environment."""
    found = [(_rps(runs, server, env, c), env) for env in ENVS if _pick(runs, server, env, c)]
    found = [f for f in found if f[0] == f[0]]
    return max(found) if found else (float("nan"), "-")


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "MISS")


def report(docs: list[dict[str, Any]]) -> str:
    runs = _runs(docs)
    first = docs[0]
    args = first["args"]
    lines = [
        f"Runs: {', '.join(d['label'] for d in docs)}; {args['runs']} run(s) of {args['duration']:g} s per "
        f"server, environment and concurrency, after a {args['warmup']:g} s warm-up; wrk "
        f"`-t2 -cN -d{args['duration']:g}s --latency` (`-t1` at concurrency 1).",
        "",
    ]
    fl = first.get("floor", {})
    if fl:
        lines += [
            f"Floor (in-process, `OMP_NUM_THREADS=1`): `predict_proba` on a 1x20 array "
            f"{fl['predict_proba_1x20_ms']:.2f} ms, on 1,000 rows {fl['predict_proba_1000x20_ms']:.2f} ms; "
            f"one 400-byte append + `fdatasync` {fl['fdatasync_ms']:.3f} ms (medians).",
            "",
        ]
    servers = [s for s in ALL_SERVERS if any(r["server"] == s for r in runs)]
    concurrencies = sorted({r["concurrency"] for r in runs})
    lines += [
        "| server | env | conc. | req/s (2xx), median (min-max) | p50 ms | p99 ms | non-2xx | sock. err. "
        "| mean batch | worker CPU s | server CPU ms/req | wrk CPU s | other CPU s |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for server in servers:
        for env in ENVS:
            for c in concurrencies:
                picked = _pick(runs, server, env, c)
                if not picked:
                    continue
                batches = [r["mean_batch_rows"] for r in picked if r.get("mean_batch_rows")]
                workers = [w for r in picked for w in [r["worker_cpu_s"]] if w]
                cpu_per_req = [1000 * r["server_cpu_s"] / max(1, r["requests"] - r["non2xx"]) for r in picked]
                lines.append(
                    f"| {server}{' **FAILED**' if any(r.get('failed') for r in picked) else ''} "
                    f"| {env} | {c} "
                    f"| {_span([r['rps_2xx'] for r in picked])} "
                    f"| {_span([r['p50_us'] / 1000 for r in picked], '{:.2f}')} "
                    f"| {_span([r['p99_us'] / 1000 for r in picked], '{:.1f}')} "
                    f"| {sum(r['non2xx'] for r in picked)} | {sum(r['socket_errors'] for r in picked)} "
                    f"| {_span(batches, '{:.1f}') if batches else '-'} "
                    f"| {'; '.join('/'.join(f'{x:.1f}' for x in w) for w in workers) or '-'} "
                    f"| {_span(cpu_per_req, '{:.2f}')} "
                    f"| {_span([r['wrk_cpu_s'] for r in picked], '{:.1f}')} "
                    f"| {_span([r.get('foreign_cpu_s', 0.0) for r in picked], '{:.1f}')} |"
                )
    lines += ["", *targets(docs)]
    return "\n".join(lines) + "\n"


def targets(docs: list[dict[str, Any]]) -> list[str]:
    runs = _runs(docs)
    fl = docs[0].get("floor", {})
    out = ["| target | figure | verdict |", "| --- | --- | --- |"]

    def row(name: str, figure: str, ok: bool | None) -> None:
        out.append(f"| {name} | {figure} | {_verdict(ok)} |")

    c = 64
    for mine in ("passerelle", "passerelle-full"):
        own, own_env = _best(runs, mine, c)
        for peer, goal in (("mlflow", 10.0), ("bentoml-batch", 2.0)):
            theirs, env = _best(runs, peer, c)
            if own == own and theirs == theirs:
                ratio = own / theirs
                row(
                    f"c64: {mine} ≥ {goal:g}x {peer}",
                    f"{own:.0f} ({own_env}) / {theirs:.0f} ({env}) = {ratio:.2f}x",
                    ratio >= goal,
                )
    for cc in (16, 64):
        full = _best(runs, "passerelle-full", cc)[0]
        off = _best(runs, "passerelle-off", cc)[0]
        if full == full and off == off:
            cost = 1 - full / off
            row(
                f"c{cc}: A/B + 100% shadow + durable log cost ≤ 15%",
                f"1 - {full:.0f} / {off:.0f} = {cost:.1%}",
                cost <= 0.15,
            )
    for mine in ("passerelle", "passerelle-full"):
        p50s = [r["p50_us"] / 1000 for r in runs if r["server"] == mine and r["concurrency"] == 1]
        if p50s and fl:
            goal = fl["predict_proba_1x20_ms"] + 1.5
            p50 = _median(p50s)
            row(f"c1: {mine} p50 ≤ floor + 1.5 ms", f"{p50:.2f} ms vs {goal:.2f} ms", p50 <= goal)
    for mine in ("passerelle", "passerelle-full", "passerelle-off"):
        ratios = []
        for r in runs:
            w = r.get("worker_cpu_s") or []
            if r["server"] == mine and r["concurrency"] >= 16 and len(w) == 2 and min(w) > 0:
                ratios.append(max(w) / min(w))
        if ratios:
            row(
                f"c16/c64: {mine} worker CPU within ±25% (max/min)",
                f"worst {max(ratios):.2f}, median {_median(ratios):.2f} over {len(ratios)} runs",
                max(ratios) <= 1.25,
            )
    for mine in ("passerelle", "passerelle-full", "passerelle-off"):
        gaps = []
        for cc in (16, 64):
            a, b = _rps(runs, mine, "default", cc), _rps(runs, mine, "omp1", cc)
            if a == a and b == b:
                gaps.append((cc, a / b - 1))
        if gaps:
            row(
                f"{mine}: default env within 10% of OMP_NUM_THREADS=1",
                ", ".join(f"c{cc}: {g:+.1%}" for cc, g in gaps),
                all(abs(g) <= 0.10 for _, g in gaps),
            )
    for mine in ("passerelle", "passerelle-full", "passerelle-off"):
        batches = [r["mean_batch_rows"] for r in _pick(runs, mine, None, 64) if r.get("mean_batch_rows")]
        if batches:
            m = _median(batches)
            row(f"c64: {mine} mean batch ≥ 8 rows", f"{m:.1f} rows per call", m >= 8)
    failed = [r for r in runs if r.get("failed")]
    row("no non-2xx / socket error from passerelle", f"{len(failed)} failed run(s)", not failed)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per measured run")
    parser.add_argument(
        "--warmup", type=float, default=None, help="seconds of warm-up (default 5, 2 if short)"
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--servers", default=",".join(ALL_SERVERS))
    parser.add_argument("--envs", default=",".join(ENVS))
    parser.add_argument(
        "--quiet-wait", type=float, default=10.0, help="longest wait for other load to calm down before a run"
    )
    parser.add_argument(
        "--passerelle-src", type=Path, default=None, help="serve passerelle from this source folder instead"
    )
    parser.add_argument("--label", default=None, help="name of the result files")
    parser.add_argument("--keep", action="store_true", help="keep the temporary homes and models")
    parser.add_argument("--report", nargs="+", type=Path, help="print the tables of saved JSON results")
    args, _ = parser.parse_known_args()
    if args.report:
        docs = [json.loads(p.read_text()) for p in args.report]
        print(report(docs))
        return 0
    # Stop the servers on a plain kill too (the finally blocks run on SystemExit).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.warmup is None:
        args.warmup = 5.0 if args.duration >= 10 else 2.0
    out_json = run(args)
    doc = json.loads(out_json.read_text())
    text = report([doc])
    out_md = out_json.with_suffix(".md")
    out_md.write_text(text)
    print(text)
    log(f"results: {out_json} and {out_md}")
    failed = any(r.get("failed") for r in doc["runs"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
