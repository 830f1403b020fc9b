"""Web dashboard: admin login, HTML pages, JSON API with OpenAPI, /metrics and /healthz."""

# Before any route exists: FastAPI would import pydantic.v1 to check each one.
import kmsgate.web.pydantic_v1_checks  # noqa: F401
from kmsgate.web.app import create_app

__all__ = ["create_app"]
