"""The common exchange's byte layout in C (_wire.c), when built and not turned off.

Each function mirrors the Python reference (rpc, ndr, messages) for the common case and
returns None for the rest, which the reference then decides. None in place of a function:
the extension is not built, or KMSGATE_PURE_PYTHON_WIRE=1 asks for the reference alone.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Final

from kmsgate._native import optional_extension

FragLength = Callable[[bytes | bytearray], "int | None"]
RequestMessage = Callable[[bytes, int, int], "tuple[int, int, bool, bytes] | None"]
# (minor, major, VM, licence status, grace, application, SKU, KMS id, CMID big-endian,
#  client count, request time, previous CMID, machine name)
BaseFields = tuple[int, int, int, int, int, bytes, bytes, bytes, bytes, int, int, bytes, str]
BaseRequest = Callable[[bytes], "BaseFields | None"]
UuidFromBytes = Callable[[bytes], uuid.UUID]
UuidBytes = Callable[[uuid.UUID], bytes]
ResponsePdu = Callable[[int, int, bool, bytes], "bytes | None"]
# (minor, major, ePID field, CMID, response time, client count, activation, renewal)
ResponseBase = Callable[[int, int, bytes, uuid.UUID, int, int, int, int], "bytes | None"]


_MODULE, _BUILD = optional_extension("kmsgate.protocol._wire", "WIRE")
# Which layout this process runs (the start-up log names it).
WIRE_BACKEND: Final = f"C ({_BUILD})" if _MODULE is not None else f"Python ({_BUILD})"
frag_length: Final[FragLength | None] = getattr(_MODULE, "frag_length", None)
request_message: Final[RequestMessage | None] = getattr(_MODULE, "request_message", None)
base_request: Final[BaseRequest | None] = getattr(_MODULE, "base_request", None)
# Absent also when the uuid module's layout is not the one _wire.c expects.
uuid_from_bytes: Final[UuidFromBytes | None] = getattr(_MODULE, "uuid_from_bytes", None)
uuid_bytes: Final[UuidBytes | None] = getattr(_MODULE, "uuid_bytes", None)
uuid_bytes_le: Final[UuidBytes | None] = getattr(_MODULE, "uuid_bytes_le", None)
response_pdu: Final[ResponsePdu | None] = getattr(_MODULE, "response_pdu", None)
# Absent with the UUID functions (it reads the CMID's value as they do).
response_base: Final[ResponseBase | None] = getattr(_MODULE, "response_base", None)
