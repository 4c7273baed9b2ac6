"""The provisioning API's OpenAPI 3.1 document, generated from the operation table and the
pydantic models the handlers build their responses from (so it cannot drift from the code)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from ..core.errors import ERROR_TABLE
from . import schemas as s

if TYPE_CHECKING:
    from .api import Operation

REF = "#/components/schemas/{model}"
_ERROR_RESPONSES = {
    "400": "Invalid request (the error names the parameter)",
    "401": "Missing, unknown or revoked operator token",
    "403": "The operator token lacks the route's scope",
    "404": "No such account key or route",
    "503": "The store is unavailable; retry",
}
_QUERY = {
    "after": ("Cursor: the `next_cursor` of the previous page (exclusive)", {"type": "string"}),
    "before": ("Cursor: the `next_cursor` of the previous page (exclusive)", {"type": "string"}),
    "limit": ("Page size, 1-500 (default 100)", {"type": "integer", "minimum": 1, "maximum": 500}),
}


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": REF.format(model=model.__name__)}


def openapi_document(operations: list[Operation]) -> dict[str, Any]:
    models: list[type[BaseModel]] = [s.Error, s.Settings]
    for op in operations:
        models += [m for m in (op.body, op.response) if m is not None]
    unique = list(dict.fromkeys(models))
    _, defs = models_json_schema([(m, "validation") for m in unique], ref_template=REF)
    schemas: dict[str, Any] = dict(defs.get("$defs", {}))
    schemas["SettingsPatch"] = s.settings_patch_schema()
    schemas["UsageAccounts"] = {
        "type": "object",
        "properties": {"data": {"type": "array", "items": {"type": "string"}}},
        "required": ["data"],
        "additionalProperties": False,
    }
    error_codes = sorted(ERROR_TABLE)
    schemas["ErrorDetail"]["properties"]["code"]["enum"] = error_codes

    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        params: list[dict[str, Any]] = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in re.findall(r"{(\w+)}", op.path)
        ]
        params += [
            {"name": q, "in": "query", "required": False, "description": _QUERY[q][0], "schema": _QUERY[q][1]}
            for q in op.query
        ]
        if op.idempotent:
            params.append(
                {
                    "name": "Idempotency-Key",
                    "in": "header",
                    "required": True,
                    "description": "The same key again returns the first result without applying twice; "
                    "the same key with a different body is a 409",
                    "schema": {"type": "string", "minLength": 1, "maxLength": 255},
                }
            )
        response_schema = _ref(op.response) if op.response else {"$ref": REF.format(model="UsageAccounts")}
        ok: dict[str, Any] = {"description": "OK", "content": {"application/json": {"schema": response_schema}}}
        if op.idempotent:
            ok["headers"] = {
                "Idempotent-Replayed": {
                    "description": "'true' when this is the first request's result, returned again",
                    "schema": {"type": "string"},
                }
            }
        responses: dict[str, Any] = {str(op.status): ok}
        for status, text in _ERROR_RESPONSES.items():
            responses[status] = {"description": text, "content": {"application/json": {"schema": _ref(s.Error)}}}
        if op.idempotent:
            responses["402"] = {
                "description": "Debit refused: the balance would not cover open holds",
                "content": {"application/json": {"schema": _ref(s.Error)}},
            }
            responses["409"] = {
                "description": "Idempotency-Key reused with a different body",
                "content": {"application/json": {"schema": _ref(s.Error)}},
            }
        if op.body is not None or op.op_id == "patchSettings":
            responses["413"] = {
                "description": "Body too large",
                "content": {"application/json": {"schema": _ref(s.Error)}},
            }
        entry: dict[str, Any] = {
            "operationId": op.op_id,
            "summary": op.summary,
            "tags": [op.scope],
            "security": [{"operatorToken": [op.scope]}],
            "parameters": params,
            "responses": responses,
        }
        body_model = {"patchSettings": "SettingsPatch"}.get(op.op_id) or (op.body.__name__ if op.body else None)
        if body_model is not None:
            entry["requestBody"] = {
                "required": op.op_id == "patchSettings" or op.idempotent,
                "content": {"application/json": {"schema": {"$ref": REF.format(model=body_model)}}},
            }
        paths.setdefault(op.path, {})[op.method.lower()] = entry
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "critique-sidecar provisioning API",
            "version": "1",
            "description": "Keys, credits, account settings, usage export and the audit trail, for operators. "
            "Served on CRITIQUE_ADMIN_LISTEN only.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "operatorToken": {"type": "http", "scheme": "bearer", "description": "crtop_... operator token"}
            },
        },
    }
