"""Model-specific register numbers and the bit layouts the project reads in them
(SDM vol. 4 chapter 2 "Model-Specific Registers", Table 2-2 "IA-32 Architectural MSRs";
vol. 3 appendix A "VMX Capability Reporting Facility")."""
from __future__ import annotations

from enum import IntEnum, IntFlag

from .bits import int_operators


class MSR(IntEnum):
    """Architectural MSR addresses, by their SDM name without the ``IA32_`` prefix."""

    TSC = 0x10                    #: time-stamp counter
    PLATFORM_ID = 0x17
    APIC_BASE = 0x1B              #: local APIC base address and enables
    FEATURE_CONTROL = 0x3A        #: lock bit and VMXON enables
    TSC_ADJUST = 0x3B
    BIOS_SIGN_ID = 0x8B           #: microcode revision
    MTRRCAP = 0xFE                #: MTRR capabilities
    SYSENTER_CS = 0x174
    SYSENTER_ESP = 0x175
    SYSENTER_EIP = 0x176
    MCG_CAP = 0x179
    MCG_STATUS = 0x17A
    MISC_ENABLE = 0x1A0
    MTRR_PHYSBASE0 = 0x200        #: variable-range MTRR n base: 0x200 + 2n
    MTRR_PHYSMASK0 = 0x201        #: variable-range MTRR n mask: 0x201 + 2n
    MTRR_FIX64K_00000 = 0x250
    MTRR_FIX16K_80000 = 0x258
    MTRR_FIX16K_A0000 = 0x259
    MTRR_FIX4K_C0000 = 0x268      #: eight 4 KiB fixed-range MTRRs, 0x268 .. 0x26F
    MTRR_FIX4K_F8000 = 0x26F
    PAT = 0x277                   #: page attribute table
    MTRR_DEF_TYPE = 0x2FF
    TSC_DEADLINE = 0x6E0
    VMX_BASIC = 0x480
    VMX_PINBASED_CTLS = 0x481
    VMX_PROCBASED_CTLS = 0x482
    VMX_EXIT_CTLS = 0x483
    VMX_ENTRY_CTLS = 0x484
    VMX_MISC = 0x485
    VMX_CR0_FIXED0 = 0x486
    VMX_CR0_FIXED1 = 0x487
    VMX_CR4_FIXED0 = 0x488
    VMX_CR4_FIXED1 = 0x489
    VMX_VMCS_ENUM = 0x48A
    VMX_PROCBASED_CTLS2 = 0x48B
    VMX_EPT_VPID_CAP = 0x48C
    VMX_TRUE_PINBASED_CTLS = 0x48D
    VMX_TRUE_PROCBASED_CTLS = 0x48E
    VMX_TRUE_EXIT_CTLS = 0x48F
    VMX_TRUE_ENTRY_CTLS = 0x490
    VMX_VMFUNC = 0x491
    EFER = 0xC0000080             #: extended feature enables (:class:`vmm.x86.registers.EFER`)
    STAR = 0xC0000081             #: SYSCALL target (legacy mode CS/SS and EIP)
    LSTAR = 0xC0000082            #: SYSCALL target RIP in 64-bit mode
    CSTAR = 0xC0000083            #: SYSCALL target RIP in compatibility mode (AMD)
    FMASK = 0xC0000084            #: SYSCALL RFLAGS mask
    FS_BASE = 0xC0000100
    GS_BASE = 0xC0000101
    KERNEL_GS_BASE = 0xC0000102   #: SWAPGS's other GS base
    TSC_AUX = 0xC0000103          #: RDTSCP's ECX


SYSENTER_MSRS = (MSR.SYSENTER_CS, MSR.SYSENTER_ESP, MSR.SYSENTER_EIP)
"""The three MSRs SYSENTER reads (vol. 3 §5.8.7)."""

PAT_POWER_ON = 0x0007040600070406
"""IA32_PAT after reset: WB, WT, UC-, UC in entries 0..3 and again in 4..7 (vol. 3 §11.12.4)."""


@int_operators
class ApicBase(IntFlag):
    """IA32_APIC_BASE (vol. 3 §11.4.4): flags; bits (M-1):12 are the APIC page."""

    BSP = 1 << 8       #: this processor is the bootstrap processor
    EXTD = 1 << 10     #: x2APIC mode
    EN = 1 << 11       #: APIC global enable


APIC_BASE_ADDRESS_MASK = 0xFFFFF000
"""IA32_APIC_BASE bits 31:12 (of (M-1):12): the physical page of the local APIC."""

APIC_DEFAULT_BASE = 0xFEE00000
"""The local APIC's page after reset."""


@int_operators
class FeatureControl(IntFlag):
    """IA32_FEATURE_CONTROL (vol. 3 §24.7)."""

    LOCK = 1 << 0                 #: further writes #GP
    VMXON_IN_SMX = 1 << 1
    VMXON_OUTSIDE_SMX = 1 << 2
