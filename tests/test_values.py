"""value_class: records compared and hashed by value, slotted, and frozen to the type checker."""

from __future__ import annotations

import dataclasses
import textwrap
import types
import uuid
from pathlib import Path

import pytest
from mypy import api

from kmsgate.protocol.messages import KmsResponse
from kmsgate.values import value_class


@value_class
class Pair:
    left: int
    right: str = "r"


def test_values_compare_and_hash_by_their_fields() -> None:
    assert Pair(1) == Pair(1, "r") != Pair(2)
    assert hash(Pair(1)) == hash(Pair(1, "r"))
    assert len({Pair(1), Pair(1), Pair(2)}) == 2
    assert dataclasses.replace(Pair(1), right="x") == Pair(1, "x")
    assert not hasattr(Pair(1), "__dict__")  # slotted: no stray attributes either


def test_protocol_values_keep_their_value_semantics() -> None:
    response = KmsResponse(6, "epid", uuid.UUID(int=1), 0, 50, 120, 10080)
    assert hash(response) == hash(dataclasses.replace(response))


def test_the_type_checker_refuses_assigning_to_a_field(tmp_path: Path) -> None:
    module = tmp_path / "assign.py"
    module.write_text(
        textwrap.dedent(
            """
            from kmsgate.values import value_class

            @value_class
            class Pair:
                left: int

            pair = Pair(1)
            pair.left = 2
            """
        )
    )
    out, _, status = api.run(["--strict", "--no-incremental", str(module)])
    assert status == 1
    assert 'Property "left" defined in "Pair" is read-only' in out


def test_the_per_request_records_keep_value_semantics_and_refuse_assignment() -> None:
    """The native records (KmsRequest, pdus.Request, ...): equal, hashed and shown by value."""
    from kmsgate.protocol.events import ActivationServed
    from kmsgate.protocol.messages import DecodedRequest, KmsRequest
    from kmsgate.protocol.ndr import TransferSyntax
    from kmsgate.protocol.pdus import Request

    def request() -> KmsRequest:
        return KmsRequest(6, uuid.UUID(int=1), uuid.UUID(int=2), uuid.UUID(int=3),
                          uuid.UUID(int=4), 25, 1, "pc")  # fmt: skip

    assert request() == request() != KmsRequest(6, *[uuid.UUID(int=0)] * 4, 25, 1, "pc")
    assert hash(request()) == hash(request()) and request() is not request()
    assert "machine_name='pc'" in repr(request())
    assert dataclasses.replace(request(), machine_name="x").machine_name == "x"
    response = KmsResponse(6, "epid", uuid.UUID(int=1), 0, 50, 120, 10080)
    served = ActivationServed(1, TransferSyntax.NDR32, request(), response)
    assert served == ActivationServed(1, TransferSyntax.NDR32, request(), response)
    assert DecodedRequest(request(), 6, b"m") == DecodedRequest(request(), 6, b"m", None, True)
    assert Request(1, 0, 0, b"s") == Request(call_id=1, context_id=0, opnum=0, stub=b"s")
    if not isinstance(KmsRequest.__init__, types.FunctionType):
        # Compiled (as the suite runs, tests/test_native.py), no field takes a new value.
        with pytest.raises(AttributeError):
            request().machine_name = "y"  # type: ignore[misc]


def test_the_type_checker_refuses_assigning_to_a_native_record_field(tmp_path: Path) -> None:
    module = tmp_path / "assign_native.py"
    module.write_text(
        textwrap.dedent(
            """
            import uuid
            from kmsgate.protocol.messages import KmsRequest

            nil = uuid.UUID(int=0)
            request = KmsRequest(6, nil, nil, nil, nil, 25, 1, "pc")
            request.machine_name = "other"
            """
        )
    )
    out, _, status = api.run(["--strict", "--no-incremental", str(module)])
    assert status == 1
    assert 'Cannot assign to final attribute "machine_name"' in out
