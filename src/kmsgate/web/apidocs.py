"""The /docs page: the API reference rendered from the OpenAPI document.

Server-rendered and offline: Swagger UI and ReDoc would load their scripts from a CDN.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from starlette.responses import Response

from kmsgate.web.context import Web

router = APIRouter(include_in_schema=False)


def _schema_text(schema: Mapping[str, Any]) -> str:
    """Short type description of an OpenAPI parameter schema."""
    if "anyOf" in schema:
        kinds = [_schema_text(s) for s in schema["anyOf"] if s.get("type") != "null"]
        return " | ".join(kinds)
    if "enum" in schema:
        return " | ".join(f'"{v}"' for v in schema["enum"])
    if "const" in schema:
        return f'"{schema["const"]}"'
    text = str(schema.get("type", "object"))
    if schema.get("format"):
        text += f" ({schema['format']})"
    limits = []
    for key, word in (("minimum", "≥"), ("maximum", "≤"), ("maxLength", "max length")):
        if key in schema:
            limits.append(f"{word} {schema[key]}")
    return text + (f", {', '.join(limits)}" if limits else "")


def _parameter(param: Mapping[str, Any]) -> dict[str, Any]:
    schema = param.get("schema", {})
    return {
        "name": param["name"],
        "where": param["in"],
        "required": param.get("required", False),
        "type": _schema_text(schema),
        "default": schema.get("default"),
        "description": param.get("description", ""),
    }


def operations(spec: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Flatten an OpenAPI document into operations for the docs page."""
    ops = []
    for path, methods in spec.get("paths", {}).items():
        for method, op in methods.items():
            responses = [
                (code, r.get("description", ""))
                for code, r in sorted(op.get("responses", {}).items())
            ]
            ops.append(
                {
                    "method": method.upper(),
                    "path": path,
                    "summary": op.get("summary", ""),
                    "description": op.get("description", ""),
                    "params": [_parameter(p) for p in op.get("parameters", [])],
                    "responses": responses,
                    "anchor": op.get("operationId", f"{method}-{path}"),
                }
            )
    return ops


@router.get("/docs", response_class=HTMLResponse)
async def docs(request: Request, web: Web) -> Response:
    """API reference rendered from the OpenAPI document."""
    spec: dict[str, Any] = request.app.openapi()
    return web.renderer.page(
        request,
        "docs.html",
        {"active": "docs", "title": "API", "operations": operations(spec)},
    )
