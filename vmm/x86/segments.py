"""Segment selectors, segment and gate descriptors, and the 32-bit TSS
(SDM vol. 3 §3.4.2 "Segment Selectors", §3.4.5 "Segment Descriptors", §3.5 "System
Descriptor Types", §6.11 "IDT Descriptors", §7.2.1 "Task-State Segment").

A segment descriptor is 8 bytes; as one little-endian 64-bit value::

    bits 15:0   limit 15:0          bits 39:16  base 23:0
    bits 47:40  access byte: type (43:40), S (44), DPL (46:45), P (47)
    bits 51:48  limit 19:16         bits 55:52  flags: AVL, L, D/B, G
    bits 63:56  base 31:24

An interrupt or trap gate::

    bits 15:0   offset 15:0         bits 31:16  code-segment selector
    bits 44:40  type (0xE 32-bit interrupt gate, 0xF 32-bit trap gate)
    bits 46:45  DPL                 bit 47 P       bits 63:48 offset 31:16
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum, IntFlag

from .bits import int_operators

DESCRIPTOR_SIZE = 8
GATE_SIZE = 8                  #: an IDT entry in protected mode
IVT_ENTRY_SIZE = 4             #: a real-mode interrupt vector (offset:segment)

# -- selectors --------------------------------------------------------------------------------
SELECTOR_RPL_MASK = 3          #: bits 1:0, requested privilege level
SELECTOR_TI = 1 << 2           #: table indicator: 1 = LDT
SELECTOR_INDEX_MASK = 0xFFF8   #: bits 15:3 (already scaled by 8: the byte offset in the table)
SELECTOR_MASK = 0xFFFC         #: the selector without its RPL (what error codes carry)
KERNEL_RING = 0                #: CPL 0, the most privileged
USER_RING = 3                  #: CPL 3, applications


@int_operators
class Access(IntFlag):
    """The access byte of a segment descriptor (bits 47:40). For code and data segments
    the low four bits are the type: A, W/R, E/C, and 1 for code."""

    ACCESSED = 1 << 0
    RW = 1 << 1            #: data: writable; code: readable
    DC = 1 << 2            #: data: expand-down; code: conforming
    CODE = 1 << 3          #: executable (code segment)
    S = 1 << 4             #: code or data (0: a system descriptor)
    DPL = 3 << 5           #: descriptor privilege level
    P = 1 << 7             #: present


ACCESS_DPL_SHIFT = 5
ACCESS_TYPE_MASK = 0xF
"""The access byte's type field (bits 3:0): :class:`SystemType` for a system descriptor."""

CODE_RING0 = Access.P | Access.S | Access.CODE | Access.RW          #: 0x9A, execute/read
DATA_RING0 = Access.P | Access.S | Access.RW                        #: 0x92, read/write
CODE_RING3 = CODE_RING0 | Access.DPL                                #: 0xFA
DATA_RING3 = DATA_RING0 | Access.DPL                                #: 0xF2


@int_operators
class Granularity(IntFlag):
    """The flags nibble of a segment descriptor (bits 55:52)."""

    AVL = 1 << 0           #: available to software
    L = 1 << 1             #: 64-bit code segment
    DB = 1 << 2            #: default operand size 32 bits / big stack
    G = 1 << 3             #: limit in 4 KiB units


FLAT_FLAGS = Granularity.G | Granularity.DB
"""4 KiB granularity, 32-bit: with limit 0xFFFFF the segment covers 4 GiB."""

FLAT_LIMIT = 0xFFFFF


class SystemType(IntEnum):
    """System-descriptor and gate types (Table 3-2, S = 0)."""

    TSS16_AVAILABLE = 0x1
    LDT = 0x2
    TSS16_BUSY = 0x3
    CALL_GATE16 = 0x4
    TASK_GATE = 0x5
    INTERRUPT_GATE16 = 0x6
    TRAP_GATE16 = 0x7
    TSS32_AVAILABLE = 0x9
    TSS32_BUSY = 0xB
    CALL_GATE32 = 0xC
    INTERRUPT_GATE32 = 0xE
    TRAP_GATE32 = 0xF


class TaskSource(IntEnum):
    """What started a task switch (§7.3), numbered as VT-x's task-switch exit
    qualification numbers it (Table 28-2, bits 31:30)."""

    CALL = 0
    IRET = 1
    JMP = 2
    TASK_GATE = 3   #: an interrupt or exception through a task gate in the IDT


GATE_TYPE_MASK = 0x1F
"""Bits 44:40 of a gate as delivery checks them: the type and S (a gate has S = 0)."""

# -- the 32-bit TSS (Figure 7-2) ---------------------------------------------------------------
TSS32_ESP0 = 4                 #: ESP for ring n at 4 + 8n, its SS at 8 + 8n
TSS32_STACK_STRIDE = 8
TSS32_SS_OFFSET = 4            #: from the ESPn slot to the SSn slot
TSS32_SIZE = 104


def tss32_stack_slot(ring: int) -> int:
    """Byte offset of ESP ``ring`` in a 32-bit TSS (SS ``ring`` follows 4 bytes later)."""
    return TSS32_ESP0 + TSS32_STACK_STRIDE * ring


def encode_descriptor(base: int, limit: int, access: int, flags: int) -> int:
    """A segment descriptor as a 64-bit value (``limit`` is the 20-bit field, in pages
    when ``flags`` has G; ``access`` the access byte; ``flags`` the high nibble)."""
    lo = (limit & 0xFFFF) | ((base & 0xFFFF) << 16)
    hi = (((base >> 16) & 0xFF) | (access & 0xFF) << 8 | ((limit >> 16) & 0xF) << 16 | (flags & 0xF) << 20
          | (base & 0xFF000000))
    return lo | hi << 32


def flat_descriptor(access: int) -> int:
    """The 4 GiB, base-0, 32-bit segment with this access byte (``0x00CF9A000000FFFF``
    for ring-0 code)."""
    return encode_descriptor(0, FLAT_LIMIT, access, FLAT_FLAGS)


def descriptor_bytes(value: int) -> bytes:
    """A descriptor (or gate) as the 8 bytes a table holds."""
    return struct.pack("<Q", value)


def encode_gate(selector: int, offset: int, gate_type: int = SystemType.INTERRUPT_GATE32, dpl: int = 0,
                present: bool = True) -> int:
    """An interrupt, trap or call gate as a 64-bit value."""
    lo = (offset & 0xFFFF) | (selector & 0xFFFF) << 16
    hi = (offset & 0xFFFF0000) | (Access.P if present else 0) << 8 | (dpl & 3) << 13 | (gate_type & 0xF) << 8
    return lo | hi << 32


@dataclass(frozen=True)
class Gate:
    """An IDT entry, decoded from its two dwords."""

    selector: int
    offset: int
    type: int            #: bits 44:40 (:data:`GATE_TYPE_MASK`): a :class:`SystemType` when S = 0
    dpl: int
    present: bool

    @classmethod
    def parse(cls, lo: int, hi: int) -> Gate:
        return cls(selector=lo >> 16, offset=(hi & 0xFFFF0000) | (lo & 0xFFFF),
                   type=(hi >> 8) & GATE_TYPE_MASK, dpl=(hi >> 13) & 3, present=bool(hi & Access.P << 8))


@dataclass
class Descriptor:
    """A code, data or system segment descriptor, decoded from its two dwords."""

    base: int
    limit: int   #: the byte limit (scaled by 4 KiB when G = 1)
    access: int  #: bits 8..15 of the high dword: type, S, DPL, P
    flags: int   #: bits 20..23: AVL, L, D/B, G

    @classmethod
    def parse(cls, lo: int, hi: int) -> Descriptor:
        base = (lo >> 16) | ((hi & 0xFF) << 16) | (hi & 0xFF000000)
        limit = (lo & 0xFFFF) | (hi & 0xF0000)
        flags = (hi >> 20) & 0xF
        if flags & Granularity.G:
            limit = (limit << 12) | 0xFFF
        return cls(base, limit, (hi >> 8) & 0xFF, flags)

    @property
    def present(self) -> bool:
        return bool(self.access & Access.P)

    @property
    def dpl(self) -> int:
        return (self.access & Access.DPL) >> ACCESS_DPL_SHIFT

    @property
    def system(self) -> bool:
        return not self.access & Access.S

    @property
    def code(self) -> bool:
        return not self.system and bool(self.access & Access.CODE)

    @property
    def conforming(self) -> bool:
        return self.code and bool(self.access & Access.DC)

    @property
    def writable_data(self) -> bool:
        return not self.system and not self.code and bool(self.access & Access.RW)
