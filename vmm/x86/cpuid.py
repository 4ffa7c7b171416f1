"""CPUID leaves and the feature bits the project reads or edits (SDM vol. 2A, "CPUID",
Table 3-8 "Information Returned by CPUID Instruction", Tables 3-10/3-11 feature flags)."""
from __future__ import annotations

from enum import IntEnum, IntFlag

from .bits import int_operators


class Leaf(IntEnum):
    """CPUID leaves (EAX on input)."""

    VENDOR = 0x0                    #: highest basic leaf, vendor string
    FEATURES = 0x1                  #: family/model/stepping, feature flags in ECX and EDX
    HYPERVISOR = 0x40000000         #: hypervisor range: highest leaf, vendor signature
    HYPERVISOR_FEATURES = 0x40000001
    EXTENDED = 0x80000000           #: highest extended leaf
    EXTENDED_FEATURES = 0x80000001
    ADDRESS_SIZES = 0x80000008      #: MAXPHYADDR in EAX bits 7:0


@int_operators
class Features1ECX(IntFlag):
    """CPUID.01H:ECX feature flags (Table 3-10), the ones used here."""

    SSE3 = 1 << 0
    VMX = 1 << 5            #: virtual machine extensions
    SSSE3 = 1 << 9
    SSE4_1 = 1 << 19
    SSE4_2 = 1 << 20
    X2APIC = 1 << 21
    XSAVE = 1 << 26
    OSXSAVE = 1 << 27
    HYPERVISOR = 1 << 31    #: "hypervisor present" (always 0 on bare hardware)


@int_operators
class Features1EDX(IntFlag):
    """CPUID.01H:EDX feature flags (Table 3-11), the ones used here."""

    FPU = 1 << 0
    PSE = 1 << 3
    TSC = 1 << 4
    MSR = 1 << 5
    PAE = 1 << 6
    APIC = 1 << 9
    SEP = 1 << 11           #: SYSENTER/SYSEXIT
    MTRR = 1 << 12
    PGE = 1 << 13
    PAT = 1 << 16
    PSE36 = 1 << 17
    FXSR = 1 << 24
    SSE = 1 << 25
    SSE2 = 1 << 26


BASIC_RANGE_LIMIT = 0x40
"""How many basic / extended leaves are worth reading (more than any processor defines)."""
