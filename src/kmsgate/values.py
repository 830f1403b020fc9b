"""value_class: the immutable records of the protocol core, built at the cost of plain ones.

A frozen dataclass sets each field through object.__setattr__: 1.18 µs for eight fields
against 0.24 for a plain slotted one, and a v6 exchange builds about thirty such fields per
request. Declared frozen to the type checker (dataclass_transform), so mypy refuses any
assignment to a field; slotted, compared and hashed by value like a frozen dataclass.

mypyc does not see the __eq__ this decorator adds: in a compiled module, `a == b` between
two value_class instances compares identities. Compare their fields there, or use a
frozen dataclass for values that compiled code compares (pdus.SyntaxId).

The records built for every request (messages.KmsRequest, pdus.Request, events.
ActivationServed, ...) are native records instead: `@dataclass(init=False, unsafe_hash=True,
slots=True)`, fields annotated `Final`, and an `__init__` written out. mypyc compiles only
a class whose decorator is dataclass itself: its own __init__ then binds the fields natively
(0.03 µs against 0.35 for an interpreted one), its fields read natively and refuse
assignment at run time; the dataclass adds the same comparison, hash and repr by value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar, dataclass_transform

T = TypeVar("T")


@dataclass_transform(frozen_default=True)
def value_class(cls: type[T]) -> type[T]:
    """A slotted dataclass, hashable by value, frozen for the type checker."""
    return dataclass(slots=True, unsafe_hash=True)(cls)
