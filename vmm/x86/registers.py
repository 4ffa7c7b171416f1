"""Control registers, EFLAGS, EFER, XCR0 and the debug registers' status and control bits.

Sources: SDM vol. 1 §3.4.3 "EFLAGS Register"; vol. 3 §2.5 "Control Registers" and
§2.2.1 "Extended Feature Enable Register"; vol. 1 §13.3 "Enabling the XSAVE Feature Set"
(XCR0); vol. 3 §18.2 "Debug Registers".
"""
from __future__ import annotations

from enum import IntEnum, IntFlag

from .bits import int_operators


@int_operators
class EFLAGS(IntFlag):
    """EFLAGS (vol. 1 §3.4.3). ``IOPL`` is a two-bit field (bits 13:12)."""

    CF = 1 << 0       #: carry
    FIXED = 1 << 1    #: reserved, always 1
    PF = 1 << 2       #: parity (not the page-fault vector: that is Vector.PF)
    AF = 1 << 4       #: auxiliary carry
    ZF = 1 << 6       #: zero
    SF = 1 << 7       #: sign
    TF = 1 << 8       #: trap (single step)
    IF = 1 << 9       #: interrupt enable
    DF = 1 << 10      #: direction (not the double-fault vector)
    OF = 1 << 11      #: overflow (not the overflow vector)
    IOPL = 3 << 12    #: I/O privilege level
    NT = 1 << 14      #: nested task
    RF = 1 << 16      #: resume
    VM = 1 << 17      #: virtual-8086 mode
    AC = 1 << 18      #: alignment check / SMAP access control
    VIF = 1 << 19     #: virtual interrupt flag
    VIP = 1 << 20     #: virtual interrupt pending
    ID = 1 << 21      #: CPUID available


IOPL_SHIFT = 12
"""EFLAGS.IOPL is bits 13:12: ``(eflags >> IOPL_SHIFT) & 3``."""


@int_operators
class CR0(IntFlag):
    """CR0 (vol. 3 §2.5)."""

    PE = 1 << 0       #: protection enable
    MP = 1 << 1       #: monitor coprocessor
    EM = 1 << 2       #: x87 emulation
    TS = 1 << 3       #: task switched
    ET = 1 << 4       #: extension type (fixed 1)
    NE = 1 << 5       #: numeric error (native #MF reporting)
    WP = 1 << 16      #: supervisor write protect
    AM = 1 << 18      #: alignment mask (with EFLAGS.AC)
    NW = 1 << 29      #: not write-through
    CD = 1 << 30      #: cache disable
    PG = 1 << 31      #: paging


@int_operators
class CR4(IntFlag):
    """CR4 (vol. 3 §2.5)."""

    VME = 1 << 0         #: virtual-8086 mode extensions
    PVI = 1 << 1         #: protected-mode virtual interrupts
    TSD = 1 << 2         #: time stamp disable (RDTSC at CPL > 0 faults)
    DE = 1 << 3          #: debugging extensions (DR4/DR5 are #UD)
    PSE = 1 << 4         #: 4 MiB pages in 32-bit paging
    PAE = 1 << 5         #: physical address extension
    MCE = 1 << 6         #: machine-check enable
    PGE = 1 << 7         #: global pages
    PCE = 1 << 8         #: RDPMC at any CPL
    OSFXSR = 1 << 9      #: FXSAVE/FXRSTOR and SSE
    OSXMMEXCPT = 1 << 10  #: unmasked SIMD exceptions (#XM)
    UMIP = 1 << 11       #: user-mode instruction prevention
    LA57 = 1 << 12       #: 5-level paging
    VMXE = 1 << 13       #: VMX enable
    SMXE = 1 << 14       #: SMX enable
    FSGSBASE = 1 << 16   #: RDFSBASE and friends
    PCIDE = 1 << 17      #: process-context identifiers
    OSXSAVE = 1 << 18    #: XSAVE and XCR0
    SMEP = 1 << 20       #: supervisor-mode execution prevention
    SMAP = 1 << 21       #: supervisor-mode access prevention
    PKE = 1 << 22        #: protection keys for user pages
    CET = 1 << 23        #: control-flow enforcement


@int_operators
class EFER(IntFlag):
    """IA32_EFER, MSR 0xC0000080 (vol. 3 §2.2.1)."""

    SCE = 1 << 0      #: SYSCALL enable
    LME = 1 << 8      #: IA-32e mode enable
    LMA = 1 << 10     #: IA-32e mode active
    NXE = 1 << 11     #: execute-disable bit enable
    SVME = 1 << 12    #: (AMD) SVM enable
    FFXSR = 1 << 14   #: (AMD) fast FXSAVE/FXRSTOR


@int_operators
class XCR0(IntFlag):
    """XCR0, the XSAVE feature-enable register (vol. 1 §13.3)."""

    X87 = 1 << 0          #: always 1
    SSE = 1 << 1
    AVX = 1 << 2
    BNDREGS = 1 << 3
    BNDCSR = 1 << 4
    OPMASK = 1 << 5
    ZMM_HI256 = 1 << 6
    HI16_ZMM = 1 << 7
    PKRU = 1 << 9


@int_operators
class DR6(IntFlag):
    """Debug status (vol. 3 §18.2.3)."""

    B0 = 1 << 0
    B1 = 1 << 1
    B2 = 1 << 2
    B3 = 1 << 3
    BD = 1 << 13     #: debug-register access detected
    BS = 1 << 14     #: single step
    BT = 1 << 15     #: task switch


@int_operators
class DR7(IntFlag):
    """Debug control, enable bits (vol. 3 §18.2.4); R/W and LEN fields are at
    ``DR7_RW_SHIFT + 4 * n`` and ``DR7_LEN_SHIFT + 4 * n``."""

    L0 = 1 << 0
    G0 = 1 << 1
    L1 = 1 << 2
    G1 = 1 << 3
    L2 = 1 << 4
    G2 = 1 << 5
    L3 = 1 << 6
    G3 = 1 << 7
    GD = 1 << 13     #: general detect


DR7_RW_SHIFT = 16
DR7_LEN_SHIFT = 18


class ControlRegister(IntEnum):
    """Control-register numbers, as MOV CRn encodes them in ModRM.reg and as the VMX
    exit qualification for control-register accesses reports them (vol. 3 §2.5; Table 28-3).
    CR1, CR5-CR7 are reserved: MOV to or from them is #UD."""

    CR0 = 0
    CR2 = 2
    CR3 = 3
    CR4 = 4
    CR8 = 8
