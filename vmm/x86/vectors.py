"""Exception and interrupt vectors (SDM vol. 3 §6.3, Table 6-1 "Protected-Mode
Exceptions and Interrupts") and the classes §6.15 and Table 6-5 sort them into."""
from __future__ import annotations

from enum import IntEnum


class Vector(IntEnum):
    """The architecturally defined vectors 0..21 (22..31 are reserved; 32..255 are
    user-defined interrupts). The member name is the SDM mnemonic without ``#``."""

    DE = 0    #: divide error (DIV, IDIV)
    DB = 1    #: debug exception
    NMI = 2   #: non-maskable interrupt (not an exception: no ``#``)
    BP = 3    #: breakpoint (INT3)
    OF = 4    #: overflow (INTO)
    BR = 5    #: BOUND range exceeded
    UD = 6    #: invalid opcode (UD2, an unknown or disallowed encoding)
    NM = 7    #: device not available (no math coprocessor: CR0.TS / CR0.EM)
    DF = 8    #: double fault (error code 0)
    CSO = 9   #: coprocessor segment overrun (reserved since the 486)
    TS = 10   #: invalid TSS
    NP = 11   #: segment not present
    SS = 12   #: stack-segment fault
    GP = 13   #: general protection
    PF = 14   #: page fault
    MF = 16   #: x87 floating-point error (math fault)
    AC = 17   #: alignment check
    MC = 18   #: machine check
    XM = 19   #: SIMD floating-point exception
    VE = 20   #: virtualization exception (EPT violation delivered to the guest)
    CP = 21   #: control-protection exception (CET)

    @property
    def mnemonic(self) -> str:
        """``#PF``, ``#GP``..., and ``NMI`` for the NMI."""
        return "NMI" if self is Vector.NMI else "CSO" if self is Vector.CSO else f"#{self.name}"


FIRST_USER_VECTOR = 32
"""Vectors 32..255 are the user-defined interrupts (IRQs, INT n)."""

HAS_ERROR_CODE = frozenset({Vector.DF, Vector.TS, Vector.NP, Vector.SS, Vector.GP, Vector.PF, Vector.AC,
                            Vector.CP})
"""The exceptions that push an error code (Table 6-1, "Error Code" column)."""

CONTRIBUTORY = frozenset({Vector.DE, Vector.TS, Vector.NP, Vector.SS, Vector.GP})
"""The contributory exceptions of Table 6-4 (with #PF they make up the double-fault rules)."""


def vector_name(vector: int) -> str:
    """The mnemonic of an architectural vector, else ``vector 0x..``."""
    try:
        return Vector(vector).mnemonic
    except ValueError:
        return f"vector {vector:#x}"
