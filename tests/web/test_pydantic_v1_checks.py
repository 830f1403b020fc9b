"""FastAPI's pydantic.v1 checks run without importing pydantic.v1, and still refuse v1 models."""

from __future__ import annotations

import subprocess
import sys

import fastapi.encoders
from fastapi._compat import shared

import kmsgate.web  # noqa: F401 (guards the checks)

PROGRAM = """
import sys
import fastapi
import kmsgate.web
from kmsgate.web.app import create_app  # every route of the dashboard and API made
assert "pydantic.v1" not in sys.modules, "a route imported pydantic.v1"
from pydantic import v1
class Old(v1.BaseModel):
    name: str
app = fastapi.FastAPI()
try:
    @app.get("/old", response_model=Old)
    def old() -> dict[str, str]:
        return {"name": "x"}
except fastapi.exceptions.PydanticV1NotSupportedError:
    print("refused")
"""


def test_every_check_fastapi_makes_is_guarded() -> None:
    # A FastAPI that renamed or moved these functions fails here, not silently.
    for check in (
        shared.is_pydantic_v1_model_class,
        shared.is_pydantic_v1_model_instance,
        fastapi.encoders.is_pydantic_v1_model_instance,
    ):
        assert hasattr(check, "__wrapped__")


def test_routes_load_no_pydantic_v1_and_a_v1_model_is_still_refused() -> None:
    done = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", PROGRAM],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["refused"]
