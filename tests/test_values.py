"""value_class: records compared and hashed by value, slotted, and frozen to the type checker."""

from __future__ import annotations

import dataclasses
import textwrap
import uuid
from pathlib import Path

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
