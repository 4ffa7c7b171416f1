"""Helpers shared by the vocabulary: bit-range masks and fast flag classes."""
from __future__ import annotations

from enum import IntFlag
from typing import TypeVar

F = TypeVar("F", bound=type[IntFlag])

_INT_OPERATORS = ("__and__", "__rand__", "__or__", "__ror__", "__xor__", "__rxor__", "__invert__")


def bits(hi: int, lo: int) -> int:
    """The mask of bits ``hi``..``lo`` inclusive (0 when ``hi < lo``)."""
    return ((1 << (hi + 1)) - 1) & ~((1 << lo) - 1) if hi >= lo else 0


def int_operators(cls: F) -> F:
    """Give an IntFlag's members the plain ``int`` bitwise operators.

    An IntFlag's own ``&``, ``|`` and ``^`` run in Python (about fifty times slower than
    ``int``'s, and the page walkers and event delivery do many), and its ``~`` complements
    within the declared bits only, so ``value & ~EFER.NXE`` would also clear every
    undeclared bit. With this decorator ``CR0.PG & cr0`` is an ``int`` at C speed and
    ``~CR0.PG`` the true bitwise NOT. Members keep their names and ``CR0(value)`` still
    decodes a value for display (``<CR0.PE|PG: ...>``).
    """
    for name in _INT_OPERATORS:
        setattr(cls, name, getattr(int, name))
    return cls
