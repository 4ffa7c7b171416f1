"""The guest's CPUID: QEMU's default ``qemu32`` CPU, the one model every mode answers from.

The engine runs as Unicorn's ``qemu32`` (:data:`CPU_MODEL`), so the reserved CR4 bits and
the EFER bits it accepts are that CPU's. CPUID itself is answered from :data:`QEMU32`,
the leaves qemu-system-i386 7.2 (TCG, default machine) returns, as a guest printing them
over the serial port reads them: family 6 model 6 stepping 3 "GenuineIntel", SSE3 and the
Pentium Pro features (PAE, PGE, PAT, SEP, APIC, FXSR, SSE, SSE2), no long mode, no NX,
no SYSCALL, no x2APIC, no MTRR bit. Unicorn's own ``qemu32`` is an older QEMU's and
differs in the cache descriptors of leaf 2, which is why the leaves are a table here.

Like an Intel processor, a basic leaf above the highest one returns the highest basic
leaf's values, and so does an extended leaf above the highest extended leaf. Leaf 4
(deterministic cache parameters) answers its subleaf 0 for every subleaf, as QEMU's
table here does. The hypervisor range (0x4000_0000) carries the VMM's signature.
"""
from __future__ import annotations

import struct

from unicorn import x86_const as X

from ..x86.cpuid import Features1ECX, Leaf

CPU_MODEL = X.UC_CPU_X86_QEMU32
"""The engine's CPU: QEMU's ``qemu32``, so that CR4's and EFER's reserved bits are that CPU's."""

CR4_IMPLEMENTED = 0x7FF
"""The CR4 bits qemu32 has: VME through OSXMMEXCPT (bits 10:0). Every other bit (UMIP,
LA57, VMXE, SMXE, FSGSBASE, PCIDE, OSXSAVE, SMEP, SMAP, PKE...) is reserved on this CPU:
MOV to CR4 setting one raises #GP(0) (SDM vol. 3 §2.5)."""

CR4_RESERVED = ~CR4_IMPLEMENTED & 0xFFFFFFFF
"""The CR4 bits a VT-x hypervisor owns (guest/host mask) so that setting one exits and is #GP."""

CR0_ET = 1 << 4
"""CR0.ET: fixed at 1 on every processor since the i486 (SDM vol. 3 §2.5)."""


def cr4_reserved(value: int) -> bool:
    """Whether ``value`` sets a CR4 bit this CPU does not have (MOV to CR4 then #GPs)."""
    return bool(value & ~CR4_IMPLEMENTED)


HYPERVISOR_SIGNATURE = b"VMMLabPython"   # CPUID 0x4000_0000 EBX, ECX, EDX
HYPERVISOR_MAX_LEAF = Leaf.HYPERVISOR_FEATURES

QEMU32: dict[int, tuple[int, int, int, int]] = {
    0x0: (0x00000004, 0x756E6547, 0x6C65746E, 0x49656E69),   # highest leaf 4, "GenuineIntel"
    0x1: (0x00000663, 0x00000800, 0x80000001, 0x0781ABFD),   # 6/6/3; CLFLUSH line 8; SSE3, hypervisor
    0x2: (0x00000001, 0x00000000, 0x0000004D, 0x002C307D),   # cache and TLB descriptors
    0x3: (0x00000000, 0x00000000, 0x00000000, 0x00000000),
    0x4: (0x00000121, 0x01C0003F, 0x0000003F, 0x00000001),   # L1 data cache, subleaf 0
    0x80000000: (0x80000004, 0x756E6547, 0x6C65746E, 0x49656E69),
    0x80000001: (0x00000663, 0x00000000, 0x00000000, 0x00000000),  # no LM, NX, SYSCALL
    0x80000002: (0x554D4551, 0x72695620, 0x6C617574, 0x55504320),  # "QEMU Virtual CPU "
    0x80000003: (0x72657620, 0x6E6F6973, 0x352E3220, 0x0000002B),  # "version 2.5+"
    0x80000004: (0x00000000, 0x00000000, 0x00000000, 0x00000000),
}
"""Leaf -> (EAX, EBX, ECX, EDX), measured on qemu-system-i386 7.2 (see the module docstring)."""


def cpuid(leaf: int, subleaf: int = 0, *, hypervisor_bit: bool = True) -> tuple[int, int, int, int]:
    """CPUID's four outputs for ``leaf`` (``subleaf`` changes nothing in this model).

    ``hypervisor_bit``: CPUID.1:ECX[31], set by QEMU; a mode may clear it."""
    del subleaf
    if leaf in (Leaf.HYPERVISOR, Leaf.HYPERVISOR_FEATURES):
        if leaf == Leaf.HYPERVISOR_FEATURES:
            return 0, 0, 0, 0
        return (HYPERVISOR_MAX_LEAF, *struct.unpack("<III", HYPERVISOR_SIGNATURE))
    basic_max, extended_max = QEMU32[Leaf.VENDOR][0], QEMU32[Leaf.EXTENDED][0]
    if leaf not in QEMU32:
        leaf = basic_max if leaf < Leaf.EXTENDED or leaf > extended_max else leaf
    eax, ebx, ecx, edx = QEMU32.get(leaf, QEMU32[basic_max])
    if leaf == Leaf.FEATURES and not hypervisor_bit:
        ecx &= ~Features1ECX.HYPERVISOR
    return eax, ebx, ecx, edx
