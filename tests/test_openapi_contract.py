"""The HTTP API contract: /openapi.json tells the truth, and a client generated from it works.

1. The document: every operation has a typed 2xx body (binary downloads declared as bytes), the
   bearer scheme unless the route is public, 401/403/404/400/422 with the one error body where they
   apply, a short unique operationId, and raw request bodies with their media types.
2. A client generated from it with openapi-python-client (into a temporary folder) drives the main
   flow against a real API over HTTP: the admin creates orgs, an owner uploads a dataset (the raw
   ciphertext body), an analyst submits a plugin, the owner reads its review, downloads the bundle and
   signs an approval. The answers are the generated typed models, and none carries a key the schema
   does not declare (a response model that lost track of its handler shows here).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import io
import re
import subprocess
import sys
import time
import typing
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import attrs
import httpx
import pytest
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute

from cleanroom import bundle
from cleanroom.api.app import create_app
from cleanroom.api.authz import PUBLIC, ROLES, RULES, iter_routes
from cleanroom.crypto import encrypt_bytes, generate_keypair
from cleanroom.settings import Settings
from tests.conftest import Room

REPO = Path(__file__).resolve().parent.parent
PACKAGE = "cleanroom_api_client"
MINIMAL_POLICY = "[privacy]\nk = 10\n"
# operations that check a signature (their 422 is an integrity error; invalid input is a 400)
SIGNED = {"rotate_keys", "decide_plugin", "approve_release", "reject_release"}
METHODS = {"get", "put", "post", "delete", "patch"}


# The document ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return create_app(Settings(data_dir=tmp_path_factory.mktemp("api")))


@pytest.fixture(scope="module")
def spec(app: Any) -> dict[str, Any]:
    return dict(app.openapi())


def operations(spec: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, methods in spec["paths"].items():
        for method, op in methods.items():
            if method in METHODS:
                yield path, method, op


def routes(app: Any) -> dict[tuple[str, str], APIRoute]:
    """(path as in the document, method) -> route, for the routes in the document."""
    out = {}
    for route in iter_routes(app.routes):
        if isinstance(route, APIRoute) and route.include_in_schema:
            for method in route.methods:
                out[(route.path_format, method.lower())] = route
    return out


def resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    return resolve(spec, spec["components"]["schemas"][ref.rsplit("/", 1)[1]]) if ref else schema


def typed(spec: dict[str, Any], schema: dict[str, Any]) -> bool:
    """A schema that says what the body holds: an object with properties (or a list or union of them)."""
    schema = resolve(spec, schema)
    if "anyOf" in schema:
        return all(typed(spec, s) for s in schema["anyOf"] if s.get("type") != "null")
    if schema.get("type") == "array":
        return typed(spec, schema.get("items", {}))
    return bool(schema.get("properties"))


def is_binary(content: dict[str, Any]) -> bool:
    return (
        bool(content)
        and "application/json" not in content
        and all(c.get("schema") == {"type": "string", "format": "binary"} for c in content.values())
    )


def returns_bytes(route: APIRoute) -> bool:
    answer = typing.get_type_hints(route.endpoint).get("return")
    return isinstance(answer, type) and issubclass(answer, Response) and not issubclass(answer, JSONResponse)


def reads_raw_body(route: APIRoute) -> bool:
    return ".stream()" in inspect.getsource(route.endpoint)


def test_every_operation_has_a_typed_success_body(spec: dict[str, Any], app: Any) -> None:
    table = routes(app)
    problems = []
    for path, method, op in operations(spec):
        ok = [r for status, r in op["responses"].items() if status.startswith("2")]
        if len(ok) != 1:
            problems.append(f"{method} {path}: {len(ok)} success responses")
            continue
        content = ok[0].get("content", {})
        if returns_bytes(table[(path, method)]):
            if not is_binary(content) or "application/octet-stream" not in content:
                problems.append(f"{method} {path}: answers bytes but declares {sorted(content)}")
        elif not typed(spec, content.get("application/json", {}).get("schema", {})):
            problems.append(f"{method} {path}: untyped body {content}")
    assert not problems, "\n".join(problems)
    assert len(list(operations(spec))) >= 45


def test_the_bearer_scheme_is_declared_and_required_unless_public(spec: dict[str, Any], app: Any) -> None:
    scheme = spec["components"]["securitySchemes"]["HTTPBearer"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    table = routes(app)
    public = {(path, method) for path, method, _ in operations(spec) if RULES[table[(path, method)].name] == PUBLIC}
    assert public == {("/health", "get"), ("/room", "get")}  # the web login is not in the document
    for path, method, op in operations(spec):
        if (path, method) in public:
            assert op.get("security") == [] and "401" not in op["responses"], (method, path)
            continue
        assert op.get("security") == [{"HTTPBearer": []}], (method, path)
        unauthorized = op["responses"]["401"]
        assert unauthorized["headers"]["WWW-Authenticate"]["schema"] == {"type": "string"}, (method, path)
        assert "403" in op["responses"], (method, path)


def test_errors_are_documented_with_the_one_error_body(spec: dict[str, Any]) -> None:
    error = spec["components"]["schemas"]["Error"]
    assert set(error["required"]) == {"error", "message"} and {"hint", "details"} <= set(error["properties"])
    assert "HTTPValidationError" not in str(spec)
    problems = []
    for path, method, op in operations(spec):
        responses = op["responses"]
        for status, response in responses.items():
            if status[0] in "45" and response["content"] != {
                "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}
            }:
                problems.append(f"{method} {path}: {status} is not the Error body")
        params = op.get("parameters", [])
        needed = {"400"} if params or "requestBody" in op else set()
        if any(p["in"] == "path" for p in params):
            needed.add("404")
        if op["operationId"] in SIGNED:
            needed.add("422")
        elif "422" in responses:
            problems.append(f"{method} {path}: a 422 without a signature to check")
        if "requestBody" in op:
            needed.add("413")
        missing = needed - set(responses)
        if missing:
            problems.append(f"{method} {path}: does not document {sorted(missing)}")
    assert not problems, "\n".join(problems)


def test_operation_ids_are_short_unique_names(spec: dict[str, Any]) -> None:
    ids = [op["operationId"] for _, _, op in operations(spec)]
    assert len(ids) == len(set(ids))
    assert all(re.fullmatch(r"[a-z][a-z_]{2,29}", i) for i in ids), [i for i in ids if len(i) > 30]


def test_raw_bodies_and_binary_downloads_declare_their_media_types(spec: dict[str, Any], app: Any) -> None:
    table = routes(app)
    raw = {(path, method): op for path, method, op in operations(spec) if reads_raw_body(table[(path, method)])}
    assert {op["operationId"] for op in raw.values()} == {"upload_dataset", "submit_plugin", "runner_upload_artifact"}
    for (path, method), op in raw.items():
        content = op.get("requestBody", {}).get("content", {})
        assert op["requestBody"]["required"] and is_binary(content), (method, path)
        assert "application/octet-stream" in content, (method, path)
    assert "application/x-tar" in spec["paths"]["/plugins"]["post"]["requestBody"]["content"]
    downloads = {op["operationId"] for path, method, op in operations(spec) if returns_bytes(table[(path, method)])}
    assert downloads == {
        "get_plugin_bundle",
        "get_job_logs",
        "get_artifact",
        "runner_get_ciphertext",
        "runner_get_bundle",
    }


def test_enums_name_the_vocabulary(spec: dict[str, Any]) -> None:
    schemas = spec["components"]["schemas"]
    assert schemas["Role"]["enum"] == list(ROLES)
    assert schemas["PluginKind"]["enum"] == list(bundle.KINDS)
    assert {
        "queued",
        "running",
        "succeeded",
        "failed",
        "cancelled",
        "timed_out",
        "released",
        "nothing_released",
    } == set(schemas["JobStatus"]["enum"])
    assert schemas["Org"]["properties"]["roles"]["items"] == {"$ref": "#/components/schemas/Role"}
    assert schemas["Job"]["properties"]["status"] == {"$ref": "#/components/schemas/JobStatus"}
    assert schemas["PluginDetail"]["properties"]["id"]["pattern"] == "^[0-9a-f]{64}$"


def test_response_models_keep_what_handlers_answer() -> None:
    """Validation through a response model changes nothing: a key the view lacks stays out (not null), a
    null stays null, and a key the model does not know passes through."""
    from pydantic import TypeAdapter

    from cleanroom.api.schemas import Job

    analyst_view = {
        "id": "job_1",
        "name": "spend",
        "submitted_by": "analyst-co",
        "status": "running",
        "phase": None,
        "error_class": None,
        "created_at": 1.5,
        "started_at": 2.0,
        "finished_at": None,
        "outcome_at": 60.0,
        "recipient": "analyst-co",
        "inputs": ["retail.purchases"],
        "release_id": None,
        "spec": {"name": "spend"},
    }
    owner_view = {
        **analyst_view,
        "status": "failed",
        "analyst_status": "running",
        "withdrawn": False,
        "reason": None,
        "effective_policy": None,
        "new_key": [1],
    }
    job = TypeAdapter(Job)
    for view in (analyst_view, owner_view):
        assert job.dump_python(job.validate_python(view), mode="json", by_alias=True) == view


# A generated client ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Room]:
    room = Room(tmp_path_factory.mktemp("room") / "api-data")
    yield room
    room.stop()


@pytest.fixture(scope="module")
def generated(served: Room, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleType]:
    """A client package generated from the running room's /openapi.json, imported from a temporary folder."""
    assert importlib.util.find_spec("openapi_python_client"), "install the dev extra: pip install -e '.[dev]'"
    folder = tmp_path_factory.mktemp("generated")
    (folder / "openapi.json").write_text(httpx.get(served.url + "/openapi.json").text)
    (folder / "config.yaml").write_text(f"package_name_override: {PACKAGE}\npost_hooks: []\n")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "openapi_python_client",
            "generate",
            "--path",
            str(folder / "openapi.json"),
            "--output-path",
            str(folder / PACKAGE),
            "--meta",
            "none",
            "--config",
            str(folder / "config.yaml"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    # the one warning: application/x-tar (what the CLI sends) is not a type the generator knows; it uses
    # the application/octet-stream the same operation declares
    warnings = re.findall(r"WARNING parsing (\S+ \S+)", done.stdout)
    assert warnings in ([], ["POST /plugins"]), done.stdout
    sys.path.insert(0, str(folder))
    try:
        yield importlib.import_module(PACKAGE)
    finally:
        sys.path.remove(str(folder))
        for name in [m for m in sys.modules if m == PACKAGE or m.startswith(PACKAGE + ".")]:
            del sys.modules[name]


class Api:
    """The generated package's operations and models by name (`api.create_org.sync(...)`, `api.m.Org`)."""

    def __init__(self, package: ModuleType, spec: dict[str, Any]) -> None:
        self.package = package
        self.tags = {op["operationId"]: op["tags"][0] for _, _, op in operations(spec)}
        self.m = importlib.import_module(f"{package.__name__}.models")

    def __getattr__(self, operation: str) -> ModuleType:
        return importlib.import_module(f"{self.package.__name__}.api.{self.tags[operation]}.{operation}")

    def client(self, url: str, token: str | None = None) -> Any:
        if token is None:
            return self.package.Client(base_url=url, raise_on_unexpected_status=True)
        return self.package.AuthenticatedClient(base_url=url, token=token, raise_on_unexpected_status=True)


def undeclared(value: Any, where: str = "") -> list[str]:
    """Keys the server sent that the schema does not declare (a generated model keeps them aside)."""
    found = []
    if isinstance(value, list):
        for index, item in enumerate(value):
            found += undeclared(item, f"{where}[{index}]")
    elif attrs.has(type(value)):
        fields = [f.name for f in attrs.fields(type(value)) if f.name != "additional_properties"]
        extra = getattr(value, "additional_properties", {})
        if fields and extra:
            found.append(f"{type(value).__name__} at {where or '.'}: {sorted(extra)}")
        for name in fields:
            found += undeclared(getattr(value, name), f"{where}.{name}")
        if not fields:  # a map (name -> model) or a free-form document
            for key, item in extra.items():
                found += undeclared(item, f"{where}[{key!r}]")
    return found


def typed_answer(result: Any, model: type) -> Any:
    assert isinstance(result, model), result
    assert not undeclared(result), undeclared(result)
    return result


def test_a_generated_client_drives_the_main_flow(served: Room, generated: ModuleType, spec: dict[str, Any]) -> None:
    api = Api(generated, spec)
    m = api.m
    url = served.url
    anonymous, admin = api.client(url), api.client(url, served.admin_token)

    health = typed_answer(api.get_health.sync(client=anonymous), m.Health)
    assert health.status == "ok"
    room_keys = generate_keypair()  # what the runner publishes on its first start
    runner = api.client(url, served.runner_token)
    typed_answer(
        api.runner_register.sync(
            client=runner, body=m.RoomKeysIn(enc_public=room_keys.enc_public, sign_public=room_keys.sign_public)
        ),
        m.PublicKeys,
    )
    room = typed_answer(api.get_room.sync(client=anonymous), m.RoomInfo)
    assert room.ready and room.keys.enc_public == room_keys.enc_public

    # the admin creates the orgs; each token is shown once
    made = {}
    for name, role in (("retailer", m.Role.OWNER), ("analyst-co", m.Role.ANALYST)):
        created = typed_answer(
            api.create_org.sync(client=admin, body=m.OrgIn(name=name, roles=[role.value])), m.OrgToken
        )
        assert created.org.roles == [role] and created.token.startswith("crt_")
        made[name] = created.token
    owner, analyst = api.client(url, made["retailer"]), api.client(url, made["analyst-co"])
    owner_keys = generate_keypair()
    me = typed_answer(
        api.register_keys.sync(
            client=owner, body=m.KeysIn(enc_public=owner_keys.enc_public, sign_public=owner_keys.sign_public)
        ),
        m.Org,
    )
    assert me.name == "retailer" and me.keys.sign_public == owner_keys.sign_public

    # the owner uploads a dataset: declare it, then PUT the ciphertext as the raw body
    ciphertext = encrypt_bytes(b"_pid\nabc\ndef\n", [room.keys.enc_public])
    digest = hashlib.sha256(ciphertext).hexdigest()
    declared = typed_answer(
        api.declare_upload.sync(
            client=owner,
            body=m.UploadIn.from_dict(
                {
                    "name": "retail.purchases",
                    "policy": MINIMAL_POLICY,
                    "row_count": 2,
                    "mock": [],
                    "schema": {"columns": [{"name": "_pid", "type": "string"}]},
                    "sha256": digest,
                    "size": len(ciphertext),
                }
            ),
        ),
        m.UploadDeclared,
    )
    assert declared.put == f"/datasets/uploads/{declared.upload_id}"
    uploaded = typed_answer(
        api.upload_dataset.sync(
            declared.upload_id, client=owner, body=generated.types.File(payload=io.BytesIO(ciphertext))
        ),
        m.DatasetUploaded,
    )
    assert (uploaded.name, uploaded.sha256, uploaded.size, uploaded.policy_version) == (
        "retail.purchases",
        digest,
        len(ciphertext),
        1,
    )
    listed = api.list_datasets.sync(client=analyst)
    items = getattr(listed, "items", listed)  # a page of datasets (or, before pagination, a list)
    assert [d.name for d in items] == ["retail.purchases"] and items[0].row_count is None  # n is the owner's
    dataset = typed_answer(api.get_dataset.sync("retail.purchases", client=owner), m.Dataset)
    assert dataset.columns == ["_pid"] and dataset.policy_text == MINIMAL_POLICY

    # the analyst submits a plugin bundle as the raw body; the owner reads its review and its bytes
    archive = bundle.pack(REPO / "plugins" / "scale")
    submitted = typed_answer(
        api.submit_plugin.sync(client=analyst, body=generated.types.File(payload=io.BytesIO(archive))),
        m.PluginSubmitted,
    )
    assert submitted.created and submitted.id == hashlib.sha256(archive).hexdigest()
    assert isinstance(submitted.kind, m.PluginKind) and submitted.submitted_by == "analyst-co"
    plugin = typed_answer(api.get_plugin.sync(submitted.id[:12], client=owner), m.PluginDetail)
    assert plugin.review.blocking == submitted.blocking_findings == 0 and plugin.diff_against is None
    assert all(isinstance(f, m.Finding) and isinstance(f.severity, m.Severity) for f in plugin.review.findings)
    assert bundle.MANIFEST in plugin.files.additional_properties
    downloaded = api.get_plugin_bundle.sync(submitted.id, client=owner)
    assert isinstance(downloaded, generated.types.File) and downloaded.payload.read() == archive

    # the owner signs an approval of these bytes for the dataset (the signature is made on its machine)
    payload = {
        "type": "plugin-approval",
        "plugin_id": plugin.id,
        "dataset": dataset.name,
        "policy_version": dataset.policy_version,
        "policy_sha256": dataset.policy_sha256,
        "dataset_sha256": dataset.sha256,
        "decision": "approve",
        "reason": "",
        "org": "retailer",
        "issued_at": time.time(),
    }
    approval = typed_answer(
        api.decide_plugin.sync(
            plugin.id,
            client=owner,
            body=m.ApprovalIn.from_dict({"payload": payload, "signature": owner_keys.sign(payload)}),
        ),
        m.ApprovalRecorded,
    )
    assert approval.decision == m.Decision.APPROVE
    seen = typed_answer(api.get_plugin.sync(plugin.id, client=analyst), m.PluginDetail)
    assert [(a.dataset, a.decision, a.revoked_at) for a in seen.approvals] == [
        ("retail.purchases", m.Decision.APPROVE, None)
    ]

    jobs = api.list_jobs.sync(client=analyst)
    assert list(getattr(jobs, "items", jobs)) == []
    log = typed_answer(api.list_audit_events.sync(client=analyst), m.AuditPage)
    kinds = {type(e) for e in log.events}
    assert kinds == {m.AuditEvent, m.RedactedAuditEvent}  # the owner's upload is not the analyst's to read
    assert all(e.redacted for e in log.events if isinstance(e, m.RedactedAuditEvent))
    chain = typed_answer(api.verify_audit.sync(client=analyst), m.AuditVerification)
    assert chain.ok and chain.count == log.total == len(log.events) and chain.head.seq == log.total


def test_generated_client_reads_errors_as_the_error_model(
    served: Room, generated: ModuleType, spec: dict[str, Any]
) -> None:
    api = Api(generated, spec)
    admin = api.client(served.url, served.admin_token)
    missing = api.get_dataset.sync_detailed("no.such.dataset", client=admin)
    assert missing.status_code == 404
    assert isinstance(missing.parsed, api.m.Error) and missing.parsed.error == "not_found"
    anonymous = api.list_datasets.sync_detailed(client=api.client(served.url))
    assert anonymous.status_code == 401 and anonymous.headers["www-authenticate"] == "Bearer"
    assert isinstance(anonymous.parsed, api.m.Error) and anonymous.parsed.error == "unauthenticated"
    bad = api.create_org.sync_detailed(client=admin, body=api.m.OrgIn(name="Bad Name!", roles=["owner"]))
    assert bad.status_code == 400 and bad.parsed.error == "invalid_input"
    analyst = api.create_org.sync(client=admin, body=api.m.OrgIn(name="lone-analyst", roles=["analyst"]))
    refused = api.create_org.sync_detailed(
        client=api.client(served.url, analyst.token), body=api.m.OrgIn(name="other-org", roles=["owner"])
    )
    assert refused.status_code == 403 and refused.parsed.error == "forbidden"
