"""The management API over real HTTP: status codes, error bodies, headers, uploads, OpenAPI."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import httpx
import pytest
from fastapi import APIRouter, Depends
from fastapi.routing import APIRoute
from pydantic import SecretStr

from passerelle.api.app import MANAGEMENT_ROUTERS, create_app
from passerelle.api.deps import ClientDep, app_client
from passerelle.api.errors import ERROR_TABLE, ErrorKind, error_from_response
from passerelle.client import LocalClient, connect
from passerelle.errors import (
    IntegrityError,
    InvalidInputError,
    MissingDependencyError,
    ModelError,
    OverloadedError,
    PasserelleError,
    SchemaError,
    StoreError,
)
from passerelle.remote import RemoteClient
from passerelle.settings import Settings, load_settings
from tests.api.conftest import Server, running_server, serve, settings_for
from tests.conftest import free_port
from tests.helpers import small_model


def assert_error_body(response: httpx.Response, status: int, type_: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    error: dict[str, Any] = body["error"]
    assert error["type"] == type_
    assert isinstance(error["message"], str)
    assert error["message"]
    assert error["request_id"] == response.headers["x-request-id"]
    assert set(error) <= {"type", "message", "request_id", "details"}
    return error


# One server for the module: tests that change its state use names of their own.
@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("server")) as found:
        yield found


@pytest.fixture(scope="module")
def churn(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RemoteClient]:
    """A remote client of the server, which holds churn:1 (@champion, with a sample) and churn:2."""
    client = RemoteClient(settings_for(tmp_path_factory.mktemp("client"), url=server.url))
    try:
        model, frame = small_model()
        client.register(model, "churn", sample=frame)
        client.register(model, "churn")
        client.set_alias("churn", "champion", 1)
        yield client
    finally:
        client.close()


@pytest.fixture
def http(server: Server, churn: RemoteClient) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


def test_healthz(http: httpx.Client) -> None:
    response = http.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert response.headers["x-request-id"]


# -- the error table, end to end ---------------------------------------------------------------


def _example(kind: ErrorKind) -> PasserelleError:
    if kind.error is MissingDependencyError:
        return MissingDependencyError("onnxruntime", "onnx")
    if kind.error is SchemaError:
        return SchemaError("input does not match", [{"row": 3, "column": "age", "reason": "missing"}])
    if kind.error is OverloadedError:
        return OverloadedError("the queue is full", retry_after_s=2.5)
    if kind.error is ModelError:
        return ModelError("the model failed", "req-1")
    return kind.error(f"something {kind.type} happened")


@pytest.fixture(scope="module")
def failing_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A server with one extra route raising each error of the table, and one raising a bug."""
    router = APIRouter()

    @router.get("/raise/{type_}")
    def raise_(type_: str) -> None:
        for kind in ERROR_TABLE:
            if kind.type == type_:
                raise _example(kind)
        raise RuntimeError("secret internals /etc/passerelle")

    @router.get("/whoami")
    def whoami(client: ClientDep, base: Annotated[LocalClient, Depends(app_client)]) -> dict[str, Any]:
        shared = client.ctx.store is base.ctx.store and client.ctx.artifacts is base.ctx.artifacts
        return {"actor": client.ctx.actor, "shares_stores": shared, "same_client": client is base}

    app = create_app(settings_for(tmp_path_factory.mktemp("failing")), routers=[router])
    with serve(app) as url:
        yield url


@pytest.mark.parametrize("kind", ERROR_TABLE, ids=[k.type for k in ERROR_TABLE])
def test_each_error_kind_has_its_status_and_comes_back_as_itself(
    failing_server: str, kind: ErrorKind
) -> None:
    raised = _example(kind)
    response = httpx.get(f"{failing_server}/raise/{kind.type}")

    error = assert_error_body(response, kind.status, kind.type)

    assert error["message"] == str(raised)
    back = error_from_response(response.status_code, response.json())
    assert type(back) is kind.error
    assert str(back) == str(raised)
    if isinstance(raised, SchemaError):
        assert isinstance(back, SchemaError)
        assert back.problems == raised.problems
    if isinstance(raised, MissingDependencyError):
        assert isinstance(back, MissingDependencyError)
        assert (back.package, back.extra) == ("onnxruntime", "onnx")
    if isinstance(raised, OverloadedError):
        assert isinstance(back, OverloadedError)
        assert back.retry_after_s == 2.5
        assert response.headers["retry-after"] == "3"
    if isinstance(raised, ModelError):
        assert isinstance(back, ModelError)
        assert back.request_id == error["request_id"]


def test_each_request_acts_as_its_user_on_the_apps_connections(failing_server: str) -> None:
    as_alice = httpx.get(f"{failing_server}/whoami", headers={"X-Passerelle-User": "alice"}).json()
    assert as_alice == {"actor": "alice", "shares_stores": True, "same_client": False}
    assert httpx.get(f"{failing_server}/whoami").json()["actor"] == "tester"


def test_a_bug_is_a_500_with_a_request_id_and_no_trace(
    failing_server: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="passerelle.api"):
        response = httpx.get(f"{failing_server}/raise/Bug")

    error = assert_error_body(response, 500, "Internal")
    rid = error["request_id"]
    assert error["message"] == f"internal error (request id {rid})"
    assert "secret" not in response.text
    assert "Traceback" not in response.text
    logged = [r for r in caplog.records if rid in r.getMessage()]
    assert logged
    assert logged[0].exc_info is not None  # the operator's log has the traceback
    back = error_from_response(500, response.json())
    assert type(back) is PasserelleError
    assert str(back) == error["message"]


def test_request_ids_are_echoed_when_sane(http: httpx.Client) -> None:
    assert http.get("/healthz", headers={"X-Request-ID": "abc-123"}).headers["x-request-id"] == "abc-123"
    response = http.get("/api/v1/models/nope", headers={"X-Request-ID": "abc-123"})
    assert assert_error_body(response, 404, "NotFound")["request_id"] == "abc-123"
    replaced = http.get("/healthz", headers={"X-Request-ID": "x" * 100}).headers["x-request-id"]
    assert replaced != "x" * 100
    assert len(replaced) == 32


# -- errors of the real routes -----------------------------------------------------------------


def _artifact(members: dict[str, bytes], *, link: str | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if link is not None:
            info = tarfile.TarInfo(link)
            info.type = tarfile.SYMTYPE
            info.linkname = "/etc/passwd"
            tar.addfile(info)
    return buffer.getvalue()


def _upload(
    http: httpx.Client, manifest: Any, artifact: bytes, name: str = "churn", sample: bytes | None = None
) -> httpx.Response:
    files: dict[str, Any] = {"artifact": ("artifact.tar.gz", artifact, "application/gzip")}
    if sample is not None:
        files["sample"] = ("sample.parquet", sample, "application/octet-stream")
    text = manifest if isinstance(manifest, str) else json.dumps(manifest)
    return http.post(f"/api/v1/models/{name}/versions", data={"manifest": text}, files=files)


REFERENCE = _artifact({"reference.json": b'{"reference": "tests.api.models:double"}'})


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "type_", "message"),
    [
        ("GET", "/api/v1/models/nope", None, 404, "NotFound", "model 'nope' does not exist"),
        ("GET", "/api/v1/versions/churn:9", None, 404, "NotFound", "version churn:9 does not exist"),
        ("GET", "/api/v1/dataset-versions/nope", None, 404, "NotFound", "dataset 'nope' does not exist"),
        ("GET", "/api/v1/nowhere", None, 404, "NotFound", "no such route: GET /api/v1/nowhere"),
        (
            "GET",
            "/api/v1/versions/churn:x",
            None,
            400,
            "InvalidReference",
            "invalid model reference 'churn:x': the version after ':' must be a positive whole number",
        ),
        (
            "POST",
            "/api/v1/versions/churn@champion/archive",
            {"reason": "no"},
            409,
            "Conflict",
            "cannot archive churn:1: alias @champion points to it; move or remove the alias first",
        ),
        (
            "PUT",
            "/api/v1/models/churn/aliases/latest",
            {"version": 1},
            422,
            "InvalidInput",
            "alias 'latest' is reserved; choose a name such as 'champion'",
        ),
        (
            "PUT",
            "/api/v1/models/churn/aliases/champion",
            {"reason": "x"},
            422,
            "InvalidInput",
            "invalid request: field 'version': Field required",
        ),
        (
            "GET",
            "/api/v1/audit?limit=0",
            None,
            422,
            "InvalidInput",
            "invalid request: query parameter 'limit': Input should be greater than or equal to 1",
        ),
        (
            "POST",
            "/api/v1/datasets/train/versions",
            {"uri": "/nowhere/train.csv"},
            422,
            "InvalidInput",
            "cannot read /nowhere/train.csv: no such file",
        ),
        (
            "DELETE",
            "/api/v1/models",
            None,
            405,
            "MethodNotAllowed",
            "DELETE is not allowed on /api/v1/models",
        ),
    ],
)
def test_route_errors(
    http: httpx.Client, method: str, path: str, body: Any, status: int, type_: str, message: str
) -> None:
    response = http.request(method, path, json=body)
    error = assert_error_body(response, status, type_)
    assert error["message"] == message


def test_validation_errors_name_each_field(http: httpx.Client) -> None:
    response = http.patch("/api/v1/versions/churn:1/tags", json={"set": [1], "remove": "x"})
    error = assert_error_body(response, 422, "InvalidInput")
    assert {d["field"] for d in error["details"]} == {"field 'set'", "field 'remove'"}
    assert all(d["reason"] for d in error["details"])


@pytest.mark.parametrize(
    ("manifest", "artifact", "status", "type_", "message"),
    [
        ("{", REFERENCE, 422, "InvalidInput", "the manifest is not valid JSON"),
        ("[1]", REFERENCE, 422, "InvalidInput", "the manifest must be a JSON object"),
        ({"options": {}}, REFERENCE, 422, "InvalidInput", "invalid manifest: flavor: Field required"),
        ({"flavor": "python", "bogus": 1}, REFERENCE, 422, "InvalidInput", "invalid manifest: bogus"),
        ({"flavor": "nope"}, REFERENCE, 422, "UnknownFlavor", "nope"),
        ({"flavor": "python"}, b"not a tarball", 422, "InvalidInput", "not a readable tar.gz archive"),
        ({"flavor": "python"}, _artifact({}), 422, "InvalidInput", "holds no file"),
        (
            {"flavor": "python"},
            _artifact({"../evil": b"x"}),
            422,
            "InvalidInput",
            "a path outside its folder",
        ),
        ({"flavor": "python"}, _artifact({"/abs": b"x"}), 422, "InvalidInput", "a path outside its folder"),
        ({"flavor": "python"}, _artifact({}, link="link"), 422, "InvalidInput", "not a plain file"),
        (
            {"flavor": "sklearn", "options": {"format": "skops"}, "untrusted": ["evil.Type"]},
            _artifact({"model.skops": b"x"}),
            403,
            "TrustRequired",
            "loading this model would trust code outside scikit-learn and numpy: evil.Type",
        ),
        (
            {"flavor": "python", "metrics": {"auc": float("nan")}},
            REFERENCE,
            422,
            "InvalidInput",
            "metric 'auc' must be finite, got nan",
        ),
    ],
)
def test_bad_uploads_are_refused(
    http: httpx.Client, manifest: Any, artifact: bytes, status: int, type_: str, message: str
) -> None:
    error = assert_error_body(_upload(http, manifest, artifact, name="upload"), status, type_)
    assert message in error["message"]
    assert "upload" not in [m["name"] for m in http.get("/api/v1/models").json()]


def test_a_bad_sample_upload_is_refused(http: httpx.Client) -> None:
    response = _upload(http, {"flavor": "python"}, REFERENCE, sample=b"garbage")
    assert "as parquet" in assert_error_body(response, 422, "InvalidInput")["message"]


def test_an_upload_registers_a_version(http: httpx.Client) -> None:
    manifest = {"flavor": "python", "tags": {"via": "curl"}, "reason": "manual"}
    response = _upload(http, manifest, REFERENCE, name="uploaded")
    assert response.status_code == 201, response.text
    assert response.json()["ref"] == "uploaded:1"
    assert response.json()["tags"] == {"via": "curl"}


def test_the_artifact_download_holds_the_verified_files(http: httpx.Client, churn: RemoteClient) -> None:
    info = churn.get_version("churn@champion")
    response = http.get("/api/v1/versions/churn%40champion/artifact")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/gzip"
    with tarfile.open(fileobj=io.BytesIO(response.content), mode="r:gz") as tar:
        found = {m.name: hashlib.sha256(tar.extractfile(m).read()).hexdigest() for m in tar}  # type: ignore[union-attr]
    assert found == {f.path: f.sha256 for f in info.files}


def test_a_corrupted_artifact_is_refused_on_both_sides(churn: RemoteClient, server: Server) -> None:
    model, _ = small_model()
    info = churn.register(model, "fragile")
    churn.load("fragile:1")  # now in the client's cache
    cache = churn.settings.home / "cache"
    cached = next(p for p in cache.rglob("model.skops") if info.artifact_key in p.as_posix())
    cached.write_bytes(b"tampered in the cache")
    assert churn.load("fragile:1").info.ref == "fragile:1"  # the cache is checked, then fetched again
    assert cached.read_bytes() != b"tampered in the cache"

    stored = server.settings.home / "artifacts" / info.artifact_key / "model.skops"
    stored.write_bytes(b"tampered on the server")
    cached.write_bytes(b"tampered in the cache")
    with pytest.raises(IntegrityError, match=r"artifact file model\.skops is corrupted"):
        churn.load("fragile:1")


def test_the_acting_user_comes_from_the_header(http: httpx.Client, churn: RemoteClient) -> None:
    response = http.patch(
        "/api/v1/versions/churn:1/tags",
        json={"set": {"stage": "prod"}},
        headers={"X-Passerelle-User": "alice@example.com"},
    )
    assert response.status_code == 200
    assert churn.audit(action="version.tags", target="churn:1")[0].actor == "alice@example.com"
    assert churn.audit(action="alias.set")[0].actor == "tester"
    too_long = http.get("/api/v1/models", headers={"X-Passerelle-User": "a" * 201})
    assert_error_body(too_long, 422, "InvalidInput")


def test_datasets_by_uri_answer_201_then_200(http: httpx.Client, tmp_path: Path) -> None:
    path = tmp_path / "train.csv"
    path.write_text("a,b\n1,x\n2,y\n")
    first = http.post("/api/v1/datasets/by-uri/versions", json={"uri": str(path), "tags": {"k": "v"}})
    assert first.status_code == 201
    assert first.json()["uri"] == str(path)
    again = http.post("/api/v1/datasets/by-uri/versions", json={"uri": str(path)})
    assert again.status_code == 200
    assert again.json()["ref"] == "by-uri:1"
    assert again.json()["created"] is False


def test_uploaded_datasets_are_kept_by_the_server(http: httpx.Client, server: Server) -> None:
    content = b"a,b\n1,x\n2,y\n"
    first = http.post("/api/v1/datasets/uploaded/versions/upload", files={"file": ("t.csv", content)})
    assert first.status_code == 201, first.text
    kept = Path(first.json()["uri"])
    assert kept.is_relative_to(server.settings.home.resolve())
    assert kept.read_bytes() == content
    again = http.post("/api/v1/datasets/uploaded/versions/upload", files={"file": ("other.csv", content)})
    assert (again.status_code, again.json()["ref"]) == (200, "uploaded:1")
    assert not kept.with_name("other.csv").exists()
    refused = http.post("/api/v1/datasets/uploaded/versions/upload", files={"file": ("t.txt", content)})
    assert "unsupported file type" in assert_error_body(refused, 422, "InvalidInput")["message"]


def test_config_masks_secrets(tmp_path: Path) -> None:
    settings = Settings(
        home=tmp_path / "home",
        s3_secret_access_key=SecretStr("s3cret"),
        token=SecretStr("t0ken"),
    )
    with serve(create_app(settings)) as url:
        response = httpx.get(f"{url}/api/v1/config")
    assert response.status_code == 200
    values = response.json()
    assert values["s3_secret_access_key"] == "********"
    assert values["token"] == "********"
    assert "s3cret" not in response.text
    assert "t0ken" not in response.text
    assert values["home"] == str(tmp_path / "home")


# -- OpenAPI -----------------------------------------------------------------------------------


def test_openapi_documents_every_route(http: httpx.Client) -> None:
    spec = http.get("/openapi.json").json()
    routes = {("/healthz", "get")} | {
        (route.path, method.lower())
        for router in MANAGEMENT_ROUTERS
        for route in router.routes
        if isinstance(route, APIRoute)
        for method in route.methods or ()
    }
    documented = {(path, method) for path, ops in spec["paths"].items() for method in ops}
    assert routes == documented
    error_ref = "#/components/schemas/ErrorResponse"
    for path, method in sorted(documented):
        operation = spec["paths"][path][method]
        assert operation.get("summary"), f"{method.upper()} {path} has no summary"
        if path == "/healthz":
            continue
        errors = {code: r for code, r in operation["responses"].items() if code[0] in "45"}
        assert {"500", "503"} <= set(errors), f"{method.upper()} {path}"
        for code, response in errors.items():
            assert response["content"]["application/json"]["schema"]["$ref"] == error_ref, (path, code)
            assert response["description"]
    assert {"/api/v1/models", "/api/v1/versions/{ref}/artifact", "/api/v1/audit"} <= set(spec["paths"])
    docs = http.get("/docs")
    assert docs.status_code == 200
    assert "swagger" in docs.text.lower()


# -- the remote client's own behaviour -----------------------------------------------------------


def test_connect_picks_the_client_from_the_settings(tmp_path: Path) -> None:
    with connect(Settings(home=tmp_path, url="http://127.0.0.1:1/")) as remote:
        assert isinstance(remote, RemoteClient)
        assert remote.url == "http://127.0.0.1:1"
    with connect(Settings(home=tmp_path)) as local:
        assert isinstance(local, LocalClient)
    with pytest.raises(InvalidInputError, match="PASSERELLE_URL: Value error, must start with http"):
        load_settings(url="ftp://example.com")


def test_the_token_and_the_user_are_sent(tmp_path: Path) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=[])

    settings = Settings(home=tmp_path, url="http://passerelle.test", token=SecretStr("t0ken"), user="bob")
    with RemoteClient(settings, transport=httpx.MockTransport(handler)) as client:
        assert client.list_models() == []
    assert seen[0].headers["authorization"] == "Bearer t0ken"
    assert seen[0].headers["x-passerelle-user"] == "bob"
    assert seen[0].url == "http://passerelle.test/api/v1/models"
    with RemoteClient(
        Settings(home=tmp_path, url="http://passerelle.test", user="josé\n"),
        transport=httpx.MockTransport(handler),
    ) as client:
        client.list_models()
    assert seen[1].headers["x-passerelle-user"] == "jose"
    assert "authorization" not in seen[1].headers


def test_an_unreachable_server_is_a_store_error(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with RemoteClient(Settings(home=tmp_path, url=url)) as client, pytest.raises(StoreError) as caught:
        client.list_models()
    assert str(caught.value).startswith(f"cannot reach the passerelle server at {url}: ")


@pytest.mark.parametrize(
    ("response", "error", "message"),
    [
        (httpx.Response(502, text="<html>Bad Gateway</html>"), StoreError, "the server answered 502: <html>"),
        (httpx.Response(404, json={"detail": "x"}), PasserelleError, "the server answered 404: "),
        (httpx.Response(200, json={"unexpected": True}), StoreError, "passerelle does not understand"),
        (httpx.Response(200, text="not json"), StoreError, "passerelle does not understand"),
    ],
)
def test_foreign_answers_are_reported(
    tmp_path: Path, response: httpx.Response, error: type[Exception], message: str
) -> None:
    transport = httpx.MockTransport(lambda request: response)
    with (
        RemoteClient(Settings(home=tmp_path, url="http://passerelle.test"), transport=transport) as client,
        pytest.raises(error) as caught,
    ):
        client.get_version("churn:1")
    assert type(caught.value) is error
    assert message in str(caught.value)
