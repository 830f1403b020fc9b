"""FastAPI's checks for pydantic.v1 models, answered without importing pydantic.v1.

FastAPI 0.128+ refuses pydantic.v1 models, and to recognise one it imports the whole of
pydantic.v1 (1.8 MiB of the node's memory) when it registers the first route. No v1 model can
exist before pydantic.v1 has been imported, so until then each check answers False without
it, and once it is imported FastAPI's own check runs (FastAPI's pull request 16374 proposed
the same condition). kmsgate declares no v1 model. Imported by kmsgate.web before any route
is made; a FastAPI without these functions is left as it is (tests/web notice).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any

# (module, function): where FastAPI (0.165) defines the checks and where callers look them up.
_GUARDED = (
    ("fastapi._compat.shared", "is_pydantic_v1_model_class"),
    ("fastapi._compat.shared", "is_pydantic_v1_model_instance"),
    ("fastapi.encoders", "is_pydantic_v1_model_instance"),
)


def _only_once_imported(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    def guarded(value: Any) -> bool:
        return "pydantic.v1" in sys.modules and check(value)

    guarded.__wrapped__ = check  # type: ignore[attr-defined]
    return guarded


for _module_name, _name in _GUARDED:
    try:
        _module = importlib.import_module(_module_name)
    except ImportError:  # a FastAPI laid out otherwise: its own checks stay as they are
        continue
    _check = getattr(_module, _name, None)
    if callable(_check) and not hasattr(_check, "__wrapped__"):
        setattr(_module, _name, _only_once_imported(_check))
