"""The portal's OpenAPI document (webapp/openapi.json) as the tests read it.

``DOCUMENT`` is the parsed file; ``resolve`` follows a local ``$ref``; ``validate`` checks a value
against a schema of the document -- the subset of JSON Schema 2020-12 the document uses (``$ref``,
``type``, ``const``, ``enum``, ``properties``, ``required``, ``additionalProperties: false``,
``pattern``, ``minLength``, ``maxProperties``, ``minimum``, ``maximum``), written out here because
the project has no JSON Schema library and needs none besides this. It refuses a schema keyword it
does not know, so the document cannot grow past what the tests check. ``documented`` answers
whether an answer (path, status, media type, error code) is one the document describes.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

DOCUMENT_PATH = Path(__file__).resolve().parent.parent / "webapp" / "openapi.json"
DOCUMENT: dict = json.loads(DOCUMENT_PATH.read_text(encoding="utf-8"))

#: Keywords that only describe (they constrain nothing the tests could check).
ANNOTATIONS = {"description", "format", "title", "examples", "example", "default"}
CHECKED = {
    "$ref", "type", "const", "enum", "properties", "required", "additionalProperties", "pattern",
    "minLength", "maxProperties", "minimum", "maximum",
}  # fmt: skip
JSON_TYPES = {"object", "array", "string", "integer", "number", "boolean", "null"}


def resolve(ref: str, document: dict = DOCUMENT) -> object:
    """The value a local reference (``#/a/b``) points at; KeyError when it points at nothing."""
    if not ref.startswith("#/"):
        raise KeyError(f"only local references are used here, not {ref!r}")
    node: object = document
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, dict) or part not in node:
            raise KeyError(f"{ref} does not resolve (no {part!r})")
        node = node[part]
    return node


def deref(node: object) -> object:
    """``node``, or what its ``$ref`` points at (followed until no ``$ref`` is left)."""
    while isinstance(node, dict) and "$ref" in node:
        node = resolve(node["$ref"])
    return node


def _type_of(value: object) -> set[str]:
    if value is None:
        return {"null"}
    if isinstance(value, bool):
        return {"boolean"}
    if isinstance(value, int):
        return {"integer", "number"}
    if isinstance(value, float):
        return {"number"}
    if isinstance(value, str):
        return {"string"}
    if isinstance(value, list):
        return {"array"}
    if isinstance(value, dict):
        return {"object"}
    raise TypeError(f"not a JSON value: {value!r}")


def validate(value: object, schema: dict, where: str = "$") -> list[str]:
    """What is wrong with ``value`` under ``schema`` (empty when nothing is)."""
    unknown = set(schema) - CHECKED - ANNOTATIONS
    if unknown:
        return [f"{where}: the schema uses {sorted(unknown)}, which validate() does not check"]
    if "$ref" in schema:
        return validate(value, resolve(schema["$ref"]), where)
    problems: list[str] = []
    if "type" in schema:
        allowed = {schema["type"]} if isinstance(schema["type"], str) else set(schema["type"])
        if not _type_of(value) & allowed:
            return [f"{where}: {value!r:.80} is not of type {sorted(allowed)}"]
    if "const" in schema and (value != schema["const"] or _type_of(value) != _type_of(schema["const"])):
        problems.append(f"{where}: {value!r:.80} is not {schema['const']!r}")
    if "enum" in schema and value not in schema["enum"]:
        problems.append(f"{where}: {value!r:.80} is not one of {schema['enum']}")
    if isinstance(value, str):
        if "pattern" in schema and re.search(schema["pattern"], value) is None:
            problems.append(f"{where}: {value!r:.80} does not match {schema['pattern']}")
        if len(value) < schema.get("minLength", 0):
            problems.append(f"{where}: {value!r:.80} is shorter than {schema['minLength']}")
    if isinstance(value, int | float) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            problems.append(f"{where}: {value} is less than {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            problems.append(f"{where}: {value} is more than {schema['maximum']}")
    if isinstance(value, dict):
        for name in schema.get("required", []):
            if name not in value:
                problems.append(f"{where}: {name!r} is missing")
        properties = schema.get("properties", {})
        for name, item in value.items():
            if name in properties:
                problems += validate(item, properties[name], f"{where}.{name}")
            elif schema.get("additionalProperties") is False:
                problems.append(f"{where}: {name!r} is not a documented property")
        if len(value) > schema.get("maxProperties", len(value)):
            problems.append(f"{where}: more than {schema['maxProperties']} properties")
    return problems


def operation(path: str, method: str = "get") -> dict:
    return DOCUMENT["paths"][path][method]


def documented(path: str, status: int, media_type: str, error: str | None = None) -> list[str]:
    """Why an answer is not what the document describes for ``path`` (empty when it is): its
    status, its media type, and -- for an error envelope -- its code among the examples."""
    responses = operation(path)["responses"]
    response = deref(responses.get(str(status)) or responses.get("default") or {})
    if not response:
        return [f"{path}: status {status} is not documented"]
    content = response.get("content", {})
    if content and media_type not in content:
        return [f"{path} {status}: {media_type} is not documented (only {sorted(content)})"]
    if error is not None:
        examples = content.get("application/json", {}).get("examples", {})
        if error not in examples:
            return [f"{path} {status}: error {error!r} is not documented (only {sorted(examples)})"]
    return []


def response_schema(path: str, status: int, media_type: str = "application/json") -> dict:
    response = deref(operation(path)["responses"][str(status)])
    return response["content"][media_type]["schema"]
