"""The OpenAPI document of the vendor API (webapp/openapi.json, served at
/.api/toolcall/v2/openapi.json): valid OpenAPI 3.1, complete against the spec, and true to the
endpoints as they answer.

Structure is checked by walking the document against the rules of OpenAPI 3.1 that matter for it
(the fields each object must have, status codes, parameter locations, security requirements naming
schemes that exist, unique operation ids) and by resolving every ``$ref``. Completeness is checked
against the spec (toolcall-api-v2, copied below: its endpoints and its error table, docs/api.md §2)
and against the code (every code ``webapp.errors`` can put in the envelope). Truth is checked by
asking the portal: each error a real request can provoke, and each success, must be a documented
status, media type and error code, and the body must validate against the documented schema.
"""

from __future__ import annotations

import ast
import hashlib
import hmac
import json
import re
import time

import pytest
from openapi_support import (
    ANNOTATIONS,
    CHECKED,
    DOCUMENT,
    DOCUMENT_PATH,
    JSON_TYPES,
    deref,
    documented,
    resolve,
    response_schema,
    validate,
)
from portal_support import (
    REDIS_URL,
    add_client,
    add_tool,
    add_user,
)

from webapp import create_app, errors, lifecycle
from webapp.lifecycle import Status

REPO = DOCUMENT_PATH.parent.parent
METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
SECRET = "the vendor's secret"
BROWSER = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}

# From the API spec (toolcall-api-v2 docs/api.md §2), written out here: the spec lives outside the repository,
# and a test must not pass because the code agrees with itself.
#: The endpoints the spec fixes.
SPEC_PATHS = {"/.api/toolcall/v2/", "/fetch-token/", "/result/"}
#: The spec's error table: code -> status.
SPEC_ERRORS = {
    "missing-token": 400,
    "token-invalid": 401,
    "token-expired": 401,
    "missing-client": 400,
    "unknown-client": 404,
    "client-auth-failed": 401,
    "rate-limited": 429,
}


def spec_paths() -> set[str]:
    return SPEC_PATHS


def spec_errors() -> dict[str, int]:
    return SPEC_ERRORS


def walk(node: object, where: str = "#"):
    """Every (pointer, dict) in the document."""
    if isinstance(node, dict):
        yield where, node
        for key, value in node.items():
            yield from walk(value, f"{where}/{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from walk(value, f"{where}/{index}")


def operations() -> list[tuple[str, str, dict]]:
    """(where, method, operation) for every path and webhook."""
    found = []
    for kind in ("paths", "webhooks"):
        for name, item in DOCUMENT.get(kind, {}).items():
            for method, op in item.items():
                if method in METHODS:
                    found.append((f"{kind} {name}", method, op))
    return found


def schemas() -> list[tuple[str, dict]]:
    """Every schema object: the components' and each parameter's, header's and media type's."""
    found = [(f"#/components/schemas/{name}", s) for name, s in DOCUMENT["components"]["schemas"].items()]
    for where, node in walk(DOCUMENT):
        if "schema" in node and isinstance(node["schema"], dict) and not where.endswith("/properties"):
            found.append((f"{where}/schema", node["schema"]))
    return found


# ---- OpenAPI 3.1, structurally ---------------------------------------------------------------------


def test_the_document_is_openapi_3_1_with_info_and_paths():
    assert re.fullmatch(r"3\.1\.\d+", DOCUMENT["openapi"])
    assert isinstance(DOCUMENT["info"]["title"], str) and isinstance(DOCUMENT["info"]["version"], str)
    assert set(DOCUMENT) <= {"openapi", "info", "jsonSchemaDialect", "servers", "paths", "webhooks",
                             "components", "security", "tags", "externalDocs"}  # fmt: skip
    assert all(path.startswith("/") for path in DOCUMENT["paths"])
    components = {"schemas", "responses", "parameters", "examples", "requestBodies", "headers",
                  "securitySchemes", "links", "callbacks", "pathItems"}  # fmt: skip
    assert set(DOCUMENT["components"]) <= components
    for kind, entries in DOCUMENT["components"].items():
        assert all(re.fullmatch(r"[a-zA-Z0-9._-]+", name) for name in entries), kind


def test_every_operation_has_an_id_a_summary_and_valid_responses():
    ids = [op["operationId"] for _, _, op in operations()]
    assert len(ids) == len(set(ids)), "operationIds are unique"
    for where, method, op in operations():
        assert op.get("summary"), f"{where} {method}"
        assert op["responses"], f"{where} {method} has no responses"
        for status, response in op["responses"].items():
            assert status == "default" or re.fullmatch(r"[1-5](\d\d|XX)", status), (where, status)
            response = deref(response)
            assert response.get("description"), (where, status)
            for media_type, media in response.get("content", {}).items():
                assert re.fullmatch(r"[a-z]+/[a-z0-9.+-]+", media_type), (where, media_type)
                assert "schema" in media, (where, status, media_type)
            for header in response.get("headers", {}).values():
                assert "schema" in deref(header) and "name" not in deref(header), (where, status)


def test_every_parameter_has_a_name_a_place_and_a_schema():
    for where, _, op in operations():
        for parameter in op.get("parameters", []):
            parameter = deref(parameter)
            assert parameter["in"] in {"query", "header", "path", "cookie"}, where
            assert parameter["name"] and ("schema" in parameter) != ("content" in parameter), where
            # OpenAPI ignores header parameters by these names: they are described otherwise.
            if parameter["in"] == "header":
                assert parameter["name"].lower() not in {"accept", "content-type", "authorization"}, where
            if parameter["in"] == "path":
                assert parameter["required"] is True and f"{{{parameter['name']}}}" in where, where


def test_security_requirements_name_schemes_that_exist_and_are_well_formed():
    schemes = DOCUMENT["components"]["securitySchemes"]
    for name, scheme in schemes.items():
        assert scheme["type"] in {"apiKey", "http", "mutualTLS", "oauth2", "openIdConnect"}, name
        if scheme["type"] == "apiKey":
            assert scheme["in"] in {"query", "header", "cookie"} and scheme["name"], name
        if scheme["type"] == "http":
            assert scheme["scheme"], name
    for where, _, op in operations():
        for requirement in op.get("security", []):
            assert set(requirement) <= set(schemes), (where, requirement)
            assert all(scopes == [] for scopes in requirement.values()), where


def test_every_reference_resolves():
    references = [(where, node["$ref"]) for where, node in walk(DOCUMENT) if "$ref" in node]
    assert references
    for where, ref in references:
        assert resolve(ref) is not None, where  # raises KeyError naming what is missing


def test_every_schema_uses_only_keywords_the_tests_check():
    for where, schema in schemas():
        for inner_where, node in walk(schema, where):
            if inner_where.endswith("/properties"):
                continue  # property names, each mapped to a schema (walked on its own)
            unknown = set(node) - CHECKED - ANNOTATIONS - {"items", "maxItems", "minItems"}
            assert not unknown, (inner_where, unknown)
            if "type" in node:
                types = {node["type"]} if isinstance(node["type"], str) else set(node["type"])
                assert types <= JSON_TYPES, inner_where
            if "pattern" in node:
                re.compile(node["pattern"])


def test_every_example_of_an_error_validates_against_the_envelope():
    envelope = DOCUMENT["components"]["schemas"]["ErrorEnvelope"]
    examples = [
        (where, example["value"])
        for where, node in walk(DOCUMENT)
        if where.endswith("/examples")
        for example in node.values()
    ]
    assert examples
    for where, value in examples:
        assert validate(value, envelope) == [], where


# ---- complete against the spec and the code ----------------------------------------------------------


def error_statuses() -> dict[str, set[int]]:
    """Each error code, and the statuses under which the document shows it."""
    found: dict[str, set[int]] = {}
    for _, _, op in operations():
        for status, response in op["responses"].items():
            examples = deref(response).get("content", {}).get("application/json", {}).get("examples", {})
            for code in examples:
                found.setdefault(code, set()).add(int(status))
    for response in DOCUMENT["components"]["responses"].values():
        examples = response.get("content", {}).get("application/json", {}).get("examples", {})
        for code in examples:
            found.setdefault(code, set())
    return found


def test_every_path_the_spec_names_is_documented():
    assert spec_paths() == {"/.api/toolcall/v2/", "/fetch-token/", "/result/"}
    assert spec_paths() <= set(DOCUMENT["paths"])


def test_every_error_code_the_spec_names_is_documented_with_its_status():
    codes = spec_errors()
    assert len(codes) == 7, codes
    enum = DOCUMENT["components"]["schemas"]["ErrorCode"]["enum"]
    shown = error_statuses()
    for code, status in codes.items():
        assert code in enum, code
        assert shown.get(code) == {status}, (code, shown.get(code))


def codes_in_source() -> set[str]:
    """The codes ``api_error`` is called with anywhere in the portal."""
    found = set()
    for module in (REPO / "webapp").glob("*.py"):
        for node in ast.walk(ast.parse(module.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "api_error":
                first = node.args[0]
                assert isinstance(first, ast.Constant), f"{module.name}: api_error with a computed code"
                found.add(first.value)
    return found


def test_every_error_code_the_portal_can_answer_is_documented_with_its_status():
    enum = DOCUMENT["components"]["schemas"]["ErrorCode"]["enum"]
    assert set(enum) == set(errors.STATUS)
    assert codes_in_source() <= set(errors.STATUS)
    shown = error_statuses()
    for code, status in errors.STATUS.items():
        assert code in shown, f"no response shows {code}"
        assert shown[code] <= {status}, (code, shown[code])
    wanted = 'Token realm="Person", location="renew-token-url"'
    assert (
        DOCUMENT["components"]["headers"]["WWWAuthenticate"]["schema"]["const"]
        == errors.WWW_AUTHENTICATE
        == wanted
    )


def test_the_documented_operations_are_exactly_the_api_routes(app):
    routes = {
        (rule.rule, method.lower())
        for rule in app.url_map.iter_rules()
        if rule.endpoint.startswith("api.")
        for method in rule.methods - {"HEAD", "OPTIONS"}
    }
    documented_ops = {
        (path, method) for path, item in DOCUMENT["paths"].items() for method in item if method in METHODS
    }
    assert documented_ops == routes


# ---- true to the endpoints ----------------------------------------------------------------------------


@pytest.fixture(name="portal")
def portal_fixture(app, redis_db):
    """A portal with a client without a secret (tool excel) and one with a secret (tool word)."""
    app.extensions["db"].upgrade()
    with app.extensions["db"].session() as session:
        plain = add_client(session, "vendor")
        add_tool(session, plain, "excel")
        secured = add_client(session, "secured")
        secured.secret = SECRET
        add_tool(session, secured, "word")
        add_user(session, "candidate")
    return app


def start_token(app, slug: str) -> str:
    from sqlalchemy import select

    from webapp.models import Exam, User

    with app.extensions["db"].session() as session:
        tool = session.scalar(select(Exam).where(Exam.slug == slug))
        user = session.scalar(select(User))
        toolcall = lifecycle.create(session, tool, user)
        lifecycle.advance(session, toolcall, (Status.START_TK_SENT, "token issued"))
        toolcall_id = toolcall.id
    return app.extensions["start_tokens"].issue(toolcall_id)


def client_auth(target: str, secret: str = SECRET, name: str = "secured", stamp: int | None = None) -> str:
    """``X-Toolcall-Auth`` made by the recipe of the document's ``clientAuth`` scheme."""
    stamp = int(time.time()) if stamp is None else stamp
    digest = hmac.new(secret.encode(), f"{stamp}\nGET\n{target}".encode(), hashlib.sha256).hexdigest()
    return f"{name} {stamp} {digest}"


def check_answer(response, path: str, expected_code: str | None = None) -> None:
    """The answer is documented for ``path``, and its body validates against the documented schema."""
    status = response.status_code
    if response.mimetype == "application/json":
        body = response.get_json()
        code = body["data"]["error"] if body.get("type") == "error" else None
        assert code == expected_code, body
        assert documented(path, status, "application/json", code) == []
        assert validate(body, response_schema(path, status)) == []
    else:
        assert response.mimetype == "text/html", response.mimetype
        assert documented(path, status, "text/html") == []
        if expected_code is not None:
            assert expected_code.encode() in response.data
    if status == 401:
        assert response.headers["WWW-Authenticate"] == errors.WWW_AUTHENTICATE


ERRORS = [
    # (path, what makes the error, its code)
    ("/fetch-token/", lambda app: ("/fetch-token/", {}), "missing-token"),
    ("/fetch-token/", lambda app: ("/fetch-token/?access_token=not%20a%20token", {}), "token-invalid"),
    ("/fetch-token/", lambda app: ("/fetch-token/?access_token=" + "A" * 43, {}), "token-expired"),
    ("/fetch-token/", lambda app: (f"/fetch-token/?access_token={start_token(app, 'word')}", {}), "client-auth-failed"),
    ("/fetch-token/", lambda app: (f"/fetch-token/?access_token={start_token(app, 'word')}",
                                   {"X-Toolcall-Auth": client_auth("/elsewhere/")}), "client-auth-failed"),
    ("/fetch-token/", lambda app: ("/fetch-token/", {"X-Access-Token": start_token(app, "word"),
                                                     "X-Toolcall-Auth": client_auth("/fetch-token/")}), "client-auth-failed"),
    ("/result/", lambda app: ("/result/?access_token=R1", {}), "missing-client"),
    ("/result/", lambda app: ("/result/?access_token=R1&client=nobody", {}), "unknown-client"),
    ("/result/", lambda app: ("/result/?client=vendor", {}), "missing-token"),
    ("/result/", lambda app: ("/result/?client=vendor&access_token=R%01", {}), "token-invalid"),
]  # fmt: skip


@pytest.mark.parametrize("accept", [{}, BROWSER], ids=["json", "html"])
@pytest.mark.parametrize(("path", "provoke", "code"), ERRORS, ids=[f"{p}-{c}" for p, _, c in ERRORS])
def test_each_error_is_answered_as_documented(portal, path, provoke, code, accept):
    target, headers = provoke(portal)
    check_answer(portal.test_client().get(target, headers={**headers, **accept}), path, code)


@pytest.mark.parametrize(
    "path", ["/.api/toolcall/v2/", "/fetch-token/", "/result/", "/.api/toolcall/v2/openapi.json"]
)
@pytest.mark.parametrize("method", ["post", "put", "delete", "patch"])
def test_a_wrong_method_is_the_documented_envelope(portal, path, method):
    response = getattr(portal.test_client(), method)(path)
    assert response.status_code == 405
    check_answer(response, path, "method-not-allowed")
    assert response.headers["Allow"] == "GET, HEAD, OPTIONS"


def test_an_unknown_path_under_the_api_is_the_not_found_envelope(portal):
    response = portal.test_client().get("/.api/toolcall/v2/nothing-here")
    assert response.status_code == 404
    assert validate(response.get_json(), DOCUMENT["components"]["schemas"]["ErrorEnvelope"]) == []
    assert response.get_json()["data"]["error"] == "not-found"
    # Elsewhere a missing page stays the site's own page.
    assert portal.test_client().get("/nothing-here").mimetype == "text/html"


@pytest.mark.parametrize("accept", [{}, BROWSER], ids=["json", "html"])
@pytest.mark.parametrize(
    "path", ["/.api/toolcall/v2/", "/fetch-token/", "/result/", "/.api/toolcall/v2/openapi.json"]
)
def test_a_body_too_large_is_the_documented_envelope(portal, path, accept):
    response = portal.test_client().get(
        path, data=b"x" * (portal.config["MAX_CONTENT_LENGTH"] + 1), headers=accept
    )
    assert response.status_code == 413
    check_answer(response, path, "content-too-large")


def test_client_auth_is_documented_with_the_start_token_in_the_query_only():
    """X-Toolcall-Auth signs the path and query, so a client that authenticates sends T there."""
    (operation,) = [op for _, _, op in operations() if op["operationId"] == "fetchStartData"]
    with_auth = [set(requirement) for requirement in operation["security"] if "clientAuth" in requirement]
    assert with_auth == [{"startTokenQuery", "clientAuth"}]
    assert "query" in DOCUMENT["components"]["securitySchemes"]["clientAuth"]["description"]


@pytest.mark.parametrize("path", ["/fetch-token/?access_token=R", "/result/?access_token=R&client=vendor"])
def test_the_rate_limit_is_the_documented_envelope(portal, path):
    portal.config["RATELIMIT_ENABLED"] = True
    portal.config["TOOLCALL_RATELIMIT_API"] = "1/minute"
    client = portal.test_client()
    client.get(path)
    response = client.get(path)
    assert response.status_code == 429
    check_answer(response, path.split("?")[0], "rate-limited")
    assert "Retry-After" in response.headers


@pytest.mark.parametrize(
    ("path", "broken"),
    [
        ("/fetch-token/?access_token=" + "A" * 43, {"REDIS_URL": "redis://127.0.0.1:1/0"}),
        (
            "/result/?access_token=R&client=vendor",
            {"DATABASE_URL": "sqlite:////nonexistent/dir/portal.sqlite3"},
        ),
    ],
    ids=["redis-down", "database-down"],
)
def test_a_failing_portal_answers_the_documented_server_error(tmp_path, portal_environment, path, broken):
    app = create_app(
        {"INSTANCE_PATH": tmp_path / "instance", "DATABASE_URL": f"sqlite:///{tmp_path / 'p.sqlite3'}",
         "REDIS_URL": REDIS_URL, "SECRET_KEY": "k", "TOOLCALL_RATELIMIT": False, **broken}
    )  # fmt: skip
    if "DATABASE_URL" not in broken:
        app.extensions["db"].upgrade()
    try:
        response = app.test_client().get(path)
        assert response.status_code == 500
        check_answer(response, path.split("?")[0], "server-error")
    finally:
        app.extensions["db"].dispose()


def test_the_successes_match_their_schemas(portal):
    client = portal.test_client()
    check_answer(client.get("/.api/toolcall/v2/"), "/.api/toolcall/v2/")
    check_answer(client.get(f"/fetch-token/?access_token={start_token(portal, 'excel')}"), "/fetch-token/")
    check_answer(client.get("/result/?access_token=R%20one&client=vendor"), "/result/")
    check_answer(client.get("/result/?access_token=R%20one&client=vendor", headers=BROWSER), "/result/")


@pytest.mark.parametrize("case", ["lower", "upper"])
def test_client_auth_made_by_the_documented_recipe_is_accepted(portal, case):
    target = f"/fetch-token/?access_token={start_token(portal, 'word')}"
    header = client_auth(target)
    name, stamp, digest = header.split(" ")
    header = f"{name} {stamp} {digest.upper() if case == 'upper' else digest}"
    parameter = resolve("#/components/parameters/ClientAuthHeader")
    assert validate(header, parameter["schema"]) == []
    response = portal.test_client().get(target, headers={"X-Toolcall-Auth": header})
    assert response.status_code == 200
    check_answer(response, "/fetch-token/")


@pytest.mark.parametrize(
    "headers",
    [
        lambda t: {"X-Access-Token": t},
        lambda t: {"Authorization": f'Token token="{t}"'},
        lambda t: {"Authorization": f"Token {t}"},
    ],
    ids=["x-access-token", "token-token", "token"],
)
def test_each_documented_security_scheme_carries_the_start_token(portal, headers):
    schemes = DOCUMENT["components"]["securitySchemes"]
    assert schemes["startTokenHeader"]["name"] == "X-Access-Token"
    assert schemes["startTokenAuthorization"]["scheme"] == "Token"
    response = portal.test_client().get("/fetch-token/", headers=headers(start_token(portal, "excel")))
    assert response.status_code == 200


# ---- served ---------------------------------------------------------------------------------------------


def test_the_document_is_served_as_it_is_without_login(portal):
    response = portal.test_client().get("/.api/toolcall/v2/openapi.json")
    assert response.status_code == 200 and response.mimetype == "application/json"
    assert json.loads(response.data) == DOCUMENT
    assert response.headers["X-Content-Type-Options"] == "nosniff"  # the site's headers, as everywhere
    assert "Set-Cookie" not in response.headers


def test_the_document_is_cacheable_and_answers_304_when_unchanged(portal):
    client = portal.test_client()
    first = client.get("/.api/toolcall/v2/openapi.json")
    cache = first.cache_control
    assert cache.public and cache.max_age == 3600
    assert first.headers["ETag"]
    again = client.get("/.api/toolcall/v2/openapi.json", headers={"If-None-Match": first.headers["ETag"]})
    assert again.status_code == 304 and again.data == b""
