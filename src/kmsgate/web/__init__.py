"""Web dashboard: admin login, HTML pages, JSON API with OpenAPI, /metrics and /healthz."""

from kmsgate.web.app import create_app

__all__ = ["create_app"]
