"""Feedback over HTTP (a real server on a free port) and from the command line."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pandas as pd
import pytest

from passerelle import audit
from passerelle.api import endpoints as endpoints_api
from passerelle.api.app import create_app
from passerelle.cli import main
from passerelle.client import LocalClient
from passerelle.context import Context
from passerelle.endpoints import DeploySpec
from passerelle.feedback import labelled
from passerelle.settings import Settings
from tests.api.conftest import serve
from tests.feedback.conftest import ENDPOINT, T0, binary, deploy, new_id, ship
from tests.helpers import small_model
from tests.serving.conftest import serving, wait_until

HOUR = dt.timedelta(hours=1)
FEEDBACK = f"/api/v1/endpoints/{ENDPOINT}/feedback"


@dataclass
class Api:
    url: str
    ctx: Context


def _api(settings: Settings) -> Iterator[Api]:
    """The management API with the endpoint routes, on a real socket, over ``settings``' store."""
    local = LocalClient(settings)
    with local:
        deploy(local.ctx, ENDPOINT, [("churn", 1, 100)])
        with serve(create_app(settings, routers=[endpoints_api.router])) as url:
            yield Api(url, local.ctx)


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    yield from _api(Settings(home=tmp_path / "server"))


@pytest.fixture
def api_on_each_backend(backend: str, tmp_path: Path) -> Iterator[Api]:
    yield from _api(Settings(home=tmp_path / "home", database_url=backend))


# ------------------------------------------------------------------------------------------ HTTP


def test_http_joins_by_id_and_by_key_with_a_time_and_reports_unknown_ids(api_on_each_backend: Api) -> None:
    api = api_on_each_backend
    ids = ship(
        api.ctx,
        [
            binary(0.8, at=T0),
            binary(0.3, at=T0 + HOUR, key="C-1"),
            binary(0.9, at=T0 + 3 * HOUR, key="C-1"),
        ],
    )
    ghost = new_id()
    body = {
        "items": [
            {"prediction_id": ids[0], "label": 1},
            # Dated between C-1's two predictions: it belongs to the first.
            {"key": "C-1", "label": 0, "time": (T0 + 2 * HOUR).isoformat()},
            {"prediction_id": ghost, "label": 1},
        ],
        "reason": "weekly churn labels",
    }

    answer = httpx.post(api.url + FEEDBACK, json=body, headers={"X-Passerelle-User": "labeller"})

    assert answer.status_code == 200, answer.text
    assert answer.json() == {
        "matched": 2,
        "updated": 0,
        "unknown": [
            {"index": 2, "prediction_id": ghost, "key": None, "reason": "no prediction with this id (yet)"}
        ],
        "rejected": [],
    }
    frame = labelled(api.ctx, ENDPOINT)
    assert dict(zip(frame["prediction_id"], frame["label"], strict=True)) == {ids[0]: 1, ids[1]: 0}
    entry = audit.list_entries(api.ctx.store, action="feedback.record")[0]
    assert (entry.actor, entry.reason, entry.after) == (
        "labeller",
        "weekly churn labels",
        {"items": 3, "matched": 2, "updated": 0, "unknown": 1, "rejected": 0},
    )


def test_http_takes_a_bare_list_and_rejects_bad_rows_on_request(api: Api) -> None:
    ids = ship(api.ctx, [binary(0.8, at=T0), binary(0.2, at=T0)])

    bare = httpx.post(api.url + FEEDBACK, json=[{"prediction_id": ids[0], "label": 0}])
    assert bare.status_code == 200, bare.text
    assert (bare.json()["matched"], bare.json()["updated"]) == (1, 0)

    body = {
        "items": [{"prediction_id": ids[0], "label": 1}, {"prediction_id": ids[1], "label": "yes"}],
        "on_invalid": "reject",
    }
    answer = httpx.post(api.url + FEEDBACK, json=body)
    assert answer.status_code == 200, answer.text
    assert answer.json()["matched"] == 1
    assert answer.json()["updated"] == 1  # the first label changed from 0 to 1
    assert answer.json()["rejected"] == [
        [1, "label 'yes' (str) does not fit churn:1, which predicts integer classes"]
    ]


def test_http_a_wrong_label_type_is_a_422_naming_the_row_and_the_reason(api: Api) -> None:
    ids = ship(api.ctx, [binary(0.8, at=T0), binary(0.2, at=T0)])
    items = [{"prediction_id": ids[0], "label": 1}, {"prediction_id": ids[1], "label": "yes"}]

    answer = httpx.post(api.url + FEEDBACK, json={"items": items})

    assert answer.status_code == 422
    error = answer.json()["error"]
    assert error["type"] == "Schema"
    wrong = "label 'yes' (str) does not fit churn:1, which predicts integer classes"
    assert error["message"] == f"1 feedback row refused: row 1: {wrong}"
    assert error["details"] == [{"row": 1, "column": "label", "reason": wrong}]
    assert len(labelled(api.ctx, ENDPOINT)) == 0  # nothing of the call is stored

    malformed = httpx.post(
        api.url + FEEDBACK, json=[items[0], {"key": "x"}, {"id": ids[1], "label": 1, "at": 0}]
    )
    assert malformed.status_code == 422
    assert malformed.json()["error"]["message"] == (
        "2 feedback rows refused: row 1: label is missing; row 2: unknown field(s) at"
    )


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (5, "invalid request: request body: expected an object with items, or a list of items"),
        ({"labels": []}, "invalid request: field 'request.items': Field required"),
        ({"items": [], "on_invalid": "maybe"}, "on_invalid must be raise or reject, got 'maybe'"),
    ],
)
def test_http_malformed_bodies_are_422_with_one_readable_line(api: Api, body: object, message: str) -> None:
    answer = httpx.post(api.url + FEEDBACK, json=body)
    assert answer.status_code == 422
    assert answer.json()["error"]["message"].startswith(message)


def test_http_unknown_endpoint_is_404_on_every_feedback_route(api: Api) -> None:
    message = "endpoint 'ghost' does not exist and has no logged predictions"
    base = f"{api.url}/api/v1/endpoints/ghost/feedback"
    for answer in (
        httpx.post(base, json=[{"prediction_id": new_id(), "label": 1}]),
        httpx.get(base + "/unmatched"),
        httpx.post(base + "/rejoin"),
    ):
        assert answer.status_code == 404, answer.text
        assert answer.json()["error"] == {
            "type": "NotFound",
            "message": message,
            "request_id": answer.headers["X-Request-ID"],
        }


def test_http_bodies_are_bounded(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(endpoints_api, "FEEDBACK_MAX_BYTES", 1000)
    items = [{"prediction_id": new_id(), "label": 1} for _ in range(40)]

    declared = httpx.post(api.url + FEEDBACK, json=items)
    assert declared.status_code == 413
    assert declared.json()["error"]["type"] == "PayloadTooLarge"
    assert declared.json()["error"]["message"].endswith(
        "exceeds the limit of 1000; send the labels in several calls"
    )

    def streamed() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        yield json.dumps(items).encode()

    chunked = httpx.post(api.url + FEEDBACK, content=streamed(), headers={"Content-Type": "application/json"})
    assert chunked.status_code == 413
    assert chunked.json()["error"]["message"] == (
        "request body exceeds the limit of 1000 bytes; send the labels in several calls"
    )

    monkeypatch.setattr(endpoints_api, "FEEDBACK_MAX_BYTES", 32 * 2**20)
    too_many = [{"label": 1}] * (endpoints_api.FEEDBACK_MAX_ITEMS + 1)
    answer = httpx.post(api.url + FEEDBACK, json=too_many, timeout=30)
    assert answer.status_code == 422
    assert answer.json()["error"]["message"] == (
        "invalid request: field 'items': List should have at most 100000 items after validation, not 100001"
    )


def test_http_unmatched_labels_wait_and_rejoin(api: Api) -> None:
    late = binary(0.7, at=T0)
    answer = httpx.post(api.url + FEEDBACK, json=[{"prediction_id": late.id, "label": 1}])
    assert answer.json()["unknown"][0]["index"] == 0

    waiting = httpx.get(f"{api.url}{FEEDBACK}/unmatched", params={"status": "waiting"})
    assert waiting.status_code == 200
    [row] = waiting.json()
    assert (row["prediction_id"], row["label"], row["status"]) == (late.id, 1, "waiting")
    assert httpx.post(f"{api.url}{FEEDBACK}/rejoin").json() == {"joined": 0}

    ship(api.ctx, [late])  # the prediction reaches the database after its label
    assert httpx.post(f"{api.url}{FEEDBACK}/rejoin").json() == {"joined": 1}
    assert httpx.get(f"{api.url}{FEEDBACK}/unmatched").json() == []
    assert labelled(api.ctx, ENDPOINT)["prediction_id"].tolist() == [late.id]

    bad = httpx.get(f"{api.url}{FEEDBACK}/unmatched", params={"status": "lost"})
    assert bad.status_code == 422
    assert bad.json()["error"]["message"] == "status must be waiting or invalid, got 'lost'"


# ---------------------------------------------------------------------------- CLI, local store


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Context]:
    """The store the command line uses (PASSERELLE_HOME is tmp_path/home), with churn-api deployed."""
    local = LocalClient(Settings(home=tmp_path / "home"))
    with local:
        deploy(local.ctx, ENDPOINT, [("churn", 1, 100)])
        yield local.ctx


def test_cli_sends_a_csv_by_id(capsys: pytest.CaptureFixture[str], store: Context, tmp_path: Path) -> None:
    ids = ship(store, [binary(0.8, at=T0), binary(0.3, at=T0)])
    ghost = new_id()
    path = tmp_path / "labels.csv"
    pd.DataFrame({"prediction_id": [ids[0], ids[1], ghost], "label": [1, 0, 1]}).to_csv(path, index=False)

    code, out, err = run(capsys, "feedback", ENDPOINT, "--input", str(path), "--reason", "march labels")

    assert (code, err) == (0, "")
    assert out.splitlines()[0] == "churn-api: 3 rows in 1 call: 2 matched (0 updated), 1 unknown, 0 rejected"
    assert f"unknown   row 2 (prediction_id {ghost}): no prediction with this id (yet)" in out
    assert dict(zip(*[labelled(store, ENDPOINT)[c] for c in ("prediction_id", "label")], strict=True)) == {
        ids[0]: 1,
        ids[1]: 0,
    }
    assert audit.list_entries(store.store, action="feedback.record")[0].reason == "march labels"


def test_cli_sends_a_parquet_by_key_with_named_columns(
    capsys: pytest.CaptureFixture[str], store: Context, tmp_path: Path
) -> None:
    ids = ship(store, [binary(0.8, at=T0, key="C-1"), binary(0.4, at=T0 + 2 * HOUR, key="C-1")])
    path = tmp_path / "labels.parquet"
    pd.DataFrame(
        {
            "customer_id": ["C-1", "C-1"],
            "churned": [1, 0],
            "seen_at": pd.to_datetime([T0 + HOUR, T0 + 3 * HOUR], utc=True),
            "note": ["first", "second"],
        }
    ).to_parquet(path, index=False)

    code, out, err = run(
        capsys,
        "feedback", "send", ENDPOINT, "--input", str(path), "--key-column", "customer_id",
        "--label-column", "churned", "--time-column", "seen_at", "--json",
    )  # fmt: skip

    assert (code, err) == (0, "")
    assert json.loads(out) == {
        "endpoint": ENDPOINT,
        "rows": 2,
        "calls": 1,
        "matched": 2,
        "updated": 0,
        "unknown": [],
        "rejected": [],
    }
    frame = labelled(store, ENDPOINT)
    assert dict(zip(frame["prediction_id"], frame["label"], strict=True)) == {ids[0]: 1, ids[1]: 0}


def test_cli_sends_large_files_in_chunks_and_counts_rows_over_the_file(
    capsys: pytest.CaptureFixture[str], store: Context, tmp_path: Path
) -> None:
    ids = ship(store, [binary(0.8, at=T0) for _ in range(25)])
    labels: list[object] = [1] * 25
    labels[13] = "maybe"  # in the second chunk of 10
    path = tmp_path / "labels.csv"
    pd.DataFrame({"id": ids, "label": labels}).to_csv(path, index=False)

    code, out, _ = run(
        capsys, "feedback", ENDPOINT, "--input", str(path), "--chunk-rows", "10", "--on-invalid", "reject"
    )

    assert code == 1  # rows were rejected
    assert (
        out.splitlines()[0] == "churn-api: 25 rows in 3 calls: 24 matched (0 updated), 0 unknown, 1 rejected"
    )
    assert "rejected  row 13: label 'maybe' (str) does not fit churn:1" in out
    assert len(labelled(store, ENDPOINT)) == 24


def test_cli_stops_at_the_first_refused_chunk(
    capsys: pytest.CaptureFixture[str], store: Context, tmp_path: Path
) -> None:
    ids = ship(store, [binary(0.8, at=T0) for _ in range(25)])
    labels: list[object] = [1] * 25
    labels[12] = "maybe"
    path = tmp_path / "labels.csv"
    pd.DataFrame({"prediction_id": ids, "label": labels}).to_csv(path, index=False)

    code, out, err = run(capsys, "feedback", ENDPOINT, "--input", str(path), "--chunk-rows", "10")

    assert code == 1
    assert (
        out.splitlines()[0] == "churn-api: 10 rows in 1 call: 10 matched (0 updated), 0 unknown, 0 rejected"
    )
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("error: row 12: label 'maybe' (str) does not fit churn:1")
    assert "rows from 10 on were not stored (rows before were)" in err
    assert labelled(store, ENDPOINT)["prediction_id"].tolist() == ids[:10]


def test_cli_reads_a_gzipped_csv_from_s3(
    capsys: pytest.CaptureFixture[str], s3_settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import s3fs

    secret = s3_settings.s3_secret_access_key
    assert secret is not None
    for name in ("artifact_uri", "s3_endpoint_url", "s3_access_key_id", "s3_region"):
        monkeypatch.setenv(f"PASSERELLE_{name.upper()}", str(getattr(s3_settings, name)))
    monkeypatch.setenv("PASSERELLE_S3_SECRET_ACCESS_KEY", secret.get_secret_value())
    local = LocalClient(s3_settings)
    with local:
        deploy(local.ctx, ENDPOINT, [("churn", 1, 100)])
        ids = ship(local.ctx, [binary(0.8, at=T0, key="C-1"), binary(0.2, at=T0, key="C-2")])
    path = tmp_path / "march.csv.gz"
    pd.DataFrame({"key": ["C-1", "C-2"], "label": ["1", "false"]}).to_csv(path, index=False)
    bucket = s3_settings.effective_artifact_uri.split("/")[2]
    s3 = s3fs.S3FileSystem(
        key=s3_settings.s3_access_key_id,
        secret=secret.get_secret_value(),
        client_kwargs={"endpoint_url": s3_settings.s3_endpoint_url, "region_name": "us-east-1"},
    )
    s3.put_file(str(path), f"{bucket}/labels/march.csv.gz")

    code, out, err = run(capsys, "feedback", ENDPOINT, "--input", f"s3://{bucket}/labels/march.csv.gz")

    # A boolean label does not fit integer classes: the key label of C-2 is refused, by row.
    assert code == 1
    assert out.startswith("churn-api: 0 rows in 0 calls")
    assert err.startswith("error: row 1: label False (bool) does not fit churn:1")
    code, out, err = run(
        capsys,
        "feedback",
        ENDPOINT,
        "--input",
        f"s3://{bucket}/labels/march.csv.gz",
        "--on-invalid",
        "reject",
    )
    assert (code, out.splitlines()[0]) == (
        1,
        "churn-api: 2 rows in 1 call: 1 matched (0 updated), 0 unknown, 1 rejected",
    )
    local = LocalClient(s3_settings)
    with local:
        assert labelled(local.ctx, ENDPOINT)["prediction_id"].tolist() == [ids[0]]


@pytest.mark.parametrize(
    ("make", "args", "message"),
    [
        ("none", [], "cannot read {path}: no such file"),
        (
            "csv",
            ["--label-column", "outcome"],
            "{path} has no column 'outcome' (columns: prediction_id, label)",
        ),
        (
            "csv",
            ["--id-column", "prediction_id", "--key-column", "label"],
            "give --id-column or --key-column",
        ),
        ("txt", [], "unsupported file type; expected a .csv, .csv.gz, .parquet or .pq file"),
        ("broken", [], "cannot read {path} as parquet"),
        ("csv-ghost", [], "endpoint 'ghost' does not exist and has no logged predictions"),
    ],
)
def test_cli_exits_2_with_one_line_on_what_cannot_be_used(
    capsys: pytest.CaptureFixture[str],
    store: Context,
    tmp_path: Path,
    make: str,
    args: list[str],
    message: str,
) -> None:
    suffix = {"txt": ".txt", "broken": ".parquet"}.get(make, ".csv")
    path = tmp_path / f"labels{suffix}"
    if make == "broken":
        path.write_bytes(b"not a parquet file")
    elif make != "none":
        pd.DataFrame({"prediction_id": [new_id()], "label": [1]}).to_csv(path, index=False)
    endpoint = "ghost" if make == "csv-ghost" else ENDPOINT

    code, out, err = run(capsys, "feedback", endpoint, "--input", str(path), *args)

    assert code == 2
    assert out == ""
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("error: ")
    assert message.format(path=path) in err
    assert "Traceback" not in err
    assert len(labelled(store, ENDPOINT)) == 0


def test_cli_lists_and_rejoins_unmatched_labels(
    capsys: pytest.CaptureFixture[str], store: Context, tmp_path: Path
) -> None:
    late = binary(0.8, at=T0)
    path = tmp_path / "labels.csv"
    pd.DataFrame({"prediction_id": [late.id], "label": [1]}).to_csv(path, index=False)
    assert run(capsys, "feedback", ENDPOINT, "--input", str(path))[0] == 0

    code, out, _ = run(capsys, "feedback", "unmatched", ENDPOINT, "--json")
    assert code == 0
    [kept] = json.loads(out)
    assert (kept["prediction_id"], kept["status"], kept["received_by"]) == (late.id, "waiting", "tester")
    code, out, _ = run(capsys, "feedback", "unmatched", ENDPOINT, "--status", "waiting")
    assert code == 0
    assert late.id[:8] in out
    assert "waiting" in out
    code, out, _ = run(capsys, "feedback", "unmatched", ENDPOINT, "--status", "invalid")
    assert (code, out.strip()) == (0, "no kept labels for churn-api")

    ship(store, [late])
    code, out, _ = run(capsys, "feedback", "rejoin", ENDPOINT)
    assert (code, out.strip()) == (0, "churn-api: 1 kept label(s) joined to their predictions")
    code, out, _ = run(capsys, "feedback", "unmatched", ENDPOINT)
    assert (code, out.strip()) == (0, "no kept labels for churn-api")

    for command in ("unmatched", "rejoin"):
        code, out, err = run(capsys, "feedback", command, "ghost")
        assert (code, out) == (2, "")
        assert err.strip() == "error: endpoint 'ghost' does not exist and has no logged predictions"


# ------------------------------------------------------------------- end to end, through `serve`


def test_predictions_served_then_labelled_from_the_command_line_through_the_server(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(home=tmp_path / "server")
    local = LocalClient(settings)
    with local:
        model, frame = small_model()
        local.register(model, "churn", sample=frame)
        local.deploy(ENDPOINT, DeploySpec(routes=[("churn:1", 100)]))
    with serving(settings) as (url, gateway):
        wait_until(lambda: ENDPOINT in gateway.live)
        body = {"dataframe_records": frame.head(4).to_dict("records"), "keys": ["A", "B", "C", "D"]}
        answered = httpx.post(f"{url}/v1/endpoints/{ENDPOINT}/predict", json=body).json()["predictions"]
        gateway.log.flush()
        local = LocalClient(settings)
        with local:
            wait_until(lambda: len(local.predictions_tail(ENDPOINT, limit=10)) == 4)
        first = answered[0]
        ids = tmp_path / "by_id.parquet"
        by_id = pd.DataFrame({"prediction_id": [first["prediction_id"]], "label": [first["prediction"]]})
        by_id.to_parquet(ids, index=False)
        keys = tmp_path / "by_key.csv"
        pd.DataFrame({"customer": ["B", "Z"], "label": [1, 0]}).to_csv(keys, index=False)

        monkeypatch.setenv("PASSERELLE_URL", url)
        monkeypatch.setenv("PASSERELLE_HOME", str(tmp_path / "client"))
        code, out, err = run(capsys, "feedback", ENDPOINT, "--input", str(ids))
        assert (code, err) == (0, "")
        assert out.startswith("churn-api: 1 row in 1 call: 1 matched (0 updated), 0 unknown, 0 rejected")
        code, out, err = run(capsys, "feedback", ENDPOINT, "--input", str(keys), "--key-column", "customer")
        assert (code, err) == (0, "")
        assert out.startswith("churn-api: 2 rows in 1 call: 1 matched (0 updated), 1 unknown, 0 rejected")
        assert "unknown   row 1 (key Z): no prediction with key 'Z' at or before" in out
        # Applications that predict send labels beside the predict route, on the same base path.
        third = answered[2]
        sent = httpx.post(
            f"{url}/v1/endpoints/{ENDPOINT}/feedback",
            json=[{"prediction_id": third["prediction_id"], "label": third["prediction"]}],
        )
        assert sent.status_code == 200, sent.text
        assert sent.json()["matched"] == 1
        assert httpx.post(f"{url}/v1/endpoints/ghost/feedback", json=[]).status_code == 404

    local = LocalClient(settings)
    with local:
        joined = labelled(local.ctx, ENDPOINT)
        key_of = {r["id"]: str(r["key"]) for r in local.predictions_tail(ENDPOINT, limit=10)}
    assert [key_of[p] for p in joined["prediction_id"]] == ["A", "B", "C"]
    assert joined["label"].tolist() == [first["prediction"], 1, third["prediction"]]
