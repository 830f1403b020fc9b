"""What an admitted connection may ask: one client machine, nothing after its window ends."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from kmsgate.protocol.engine import filetime_from_unix
from kmsgate.protocol.hresult import HResult
from kmsgate.protocol.messages import KmsRequest
from kmsgate.protocol.session import PolicyRefusal
from kmsgate.store.gateway import Window

# 0xC004F042, "the specified KMS cannot be used": what a genuine host answers a request it
# will not serve. Clients report it and retry later on their own schedule; there is no
# "try another machine id" answer, and RPC-level errors would make them retry at once.
REFUSED_BY_WINDOW = HResult.PRODUCT_NOT_ALLOWED


class WindowRequestPolicy:
    """An admitted connection's request policy: one client machine, nothing after the end.

    The first request's client machine id binds the connection; the same machine's other
    products (Windows and each Office KMS id) are served, another machine's requests refused.
    """

    __slots__ = ("ends", "machine")

    def __init__(self, expires_at: datetime) -> None:
        self.ends = filetime_from_unix(expires_at.timestamp())
        self.machine: uuid.UUID | None = None

    def __call__(self, request: KmsRequest, now: int) -> PolicyRefusal | None:
        if now >= self.ends:
            return PolicyRefusal(REFUSED_BY_WINDOW, "the activation window has ended")
        if self.machine is None:
            self.machine = request.client_machine_id
        elif request.client_machine_id != self.machine:
            return PolicyRefusal(
                REFUSED_BY_WINDOW, f"the window serves client machine {self.machine} only"
            )
        return None


@dataclass(slots=True)
class Admission:
    """A connection that took a window: its request policy, and whether it was served."""

    window: Window
    policy: WindowRequestPolicy
    served: bool = False

    def seconds_left(self, now: datetime) -> float:
        """Time until the window ends (0 when it has)."""
        return max(0.0, (self.window.expires_at - now).total_seconds())
