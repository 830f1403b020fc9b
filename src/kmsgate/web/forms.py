"""Request bodies of the login forms and the portal's JSON login, read within small limits."""

from __future__ import annotations

from urllib.parse import parse_qsl

from fastapi import HTTPException, Request
from fastapi.responses import JSONResponse

MAX_FORM_BYTES = 8192
MAX_JSON_BYTES = 8192


def _content_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def read_form(request: Request) -> dict[str, str]:
    """Parse a small urlencoded form, refusing big or odd bodies before reading them whole."""
    if _content_type(request) != "application/x-www-form-urlencoded":
        raise HTTPException(415, "expected an application/x-www-form-urlencoded form")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise HTTPException(413, "form too large")
    try:
        pairs = parse_qsl(
            body.decode("utf-8"), keep_blank_values=True, strict_parsing=False, max_num_fields=10
        )
    except (UnicodeDecodeError, ValueError):
        raise HTTPException(400, "malformed form") from None
    return dict(pairs)


async def read_json(request: Request) -> bytes | JSONResponse:
    """The raw body, or the error response for a wrong type or an oversized body."""
    if _content_type(request) != "application/json":
        # Requiring JSON also stops other sites from posting here with a plain HTML form.
        return JSONResponse({"detail": "expected an application/json body"}, 415)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_JSON_BYTES:
            return JSONResponse({"detail": "body too large"}, 413)
    return bytes(body)
