"""Routes for operators and tools: /healthz and /metrics (open), /openapi.json (admins)."""

from __future__ import annotations

import prometheus_client
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.responses import Response

from kmsgate.web.context import Web
from kmsgate.web.health import health_response

# The exposition format generate_latest() writes; prometheus_client's CONTENT_TYPE_LATEST
# names a newer version in recent releases, which older scrapers reject.
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

router = APIRouter()


@router.get("/openapi.json", include_in_schema=False)
async def openapi(request: Request, web: Web) -> JSONResponse:
    """The OpenAPI document (admins only, like the API it describes)."""
    if await web.authenticator.current_admin(request) is None:
        return JSONResponse({"detail": "authentication required: log in at /login"}, 401)
    return JSONResponse(request.app.openapi())


@router.get("/healthz", tags=["ops"], summary="Liveness, database and recording check")
async def healthz(web: Web) -> JSONResponse:
    """200 while the store answers and keeps every record, else 503 (web/health.py)."""
    return await health_response(web.store, web.store_health)


@router.get("/metrics", tags=["ops"], summary="Prometheus metrics")
async def metrics(web: Web) -> Response:
    """Prometheus text exposition format 0.0.4 (unauthenticated, for scrapers)."""
    body = prometheus_client.generate_latest(web.metrics_registry)
    return Response(body, media_type=METRICS_CONTENT_TYPE)
