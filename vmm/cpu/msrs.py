"""The MSRs of the guest's CPU: one row per MSR, QEMU's ``qemu32`` behaviour.

Every mode but pv (Xen's model: the domain's own copies) answers RDMSR and WRMSR from
here, however it reaches them: a VT-x MSR exit, trap's #GP, bt's callout, native's
engine intercept.

Each row says where the MSR lives, what it reads after reset, and which bits a WRMSR
stores (a write to a row with none is accepted and ignored, as QEMU does). The values
and the read-back are those qemu-system-i386 7.2 gives a guest that reads and writes
each MSR (``tests/test_cpu_details.py`` compares the two).

An MSR with no row raises #GP(0) on RDMSR and WRMSR. That covers the MSRs of features
qemu32 does not have: the long-mode ones (FS_BASE, GS_BASE, KERNEL_GS_BASE, LSTAR,
CSTAR, FMASK; so a non-canonical base can never be loaded), TSC_AUX without RDTSCP,
the VMX capability MSRs without VMX, machine-check banks when MCG_CAP reports none.
Hardware (and KVM) raise #GP on them; QEMU's TCG instead reads 0 and ignores writes of
any MSR it does not know, which is the one place this table departs from it.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from ..x86.msr import MSR, PAT_POWER_ON

U64_MASK = 0xFFFFFFFFFFFFFFFF
U32_MASK = 0xFFFFFFFF
MTRR_VARIABLE_PAIRS = 8      # QEMU's MSR_MTRRcap_VCNT
MISC_ENABLE_FAST_STRINGS = 1
UCODE_REVISION = 1 << 32     # IA32_BIOS_SIGN_ID: microcode revision 1 in EDX (QEMU)


class Home(Enum):
    """Where an MSR's value lives."""

    VMM = "vmm"          #: the hypervisor's copy (the CPU itself never reads it)
    ENGINE = "engine"    #: the engine's MSR: the CPU uses it (SYSENTER, EFER's masking)
    TSC = "tsc"          #: the guest's time-stamp counter
    APIC_BASE = "apic"   #: the local APIC's base register


@dataclass(frozen=True, slots=True)
class MsrRow:
    msr: int
    name: str
    home: Home = Home.VMM
    reset: int = 0
    writable: int = 0    #: bits a WRMSR stores (VMM and ENGINE rows); 0: writes ignored


def _rows() -> dict[int, MsrRow]:
    rows = [
        MsrRow(MSR.TSC, "TSC", Home.TSC),
        MsrRow(MSR.PLATFORM_ID, "PLATFORM_ID"),
        MsrRow(MSR.APIC_BASE, "APIC_BASE", Home.APIC_BASE),
        MsrRow(MSR.FEATURE_CONTROL, "FEATURE_CONTROL"),
        MsrRow(MSR.TSC_ADJUST, "TSC_ADJUST"),
        MsrRow(MSR.BIOS_SIGN_ID, "BIOS_SIGN_ID", reset=UCODE_REVISION),
        MsrRow(MSR.MTRRCAP, "MTRRCAP"),                         # CPUID has no MTRR bit: 0
        MsrRow(MSR.SYSENTER_CS, "SYSENTER_CS", Home.ENGINE, writable=0xFFFF),
        MsrRow(MSR.SYSENTER_ESP, "SYSENTER_ESP", Home.ENGINE, writable=U32_MASK),
        MsrRow(MSR.SYSENTER_EIP, "SYSENTER_EIP", Home.ENGINE, writable=U32_MASK),
        MsrRow(MSR.MCG_CAP, "MCG_CAP"),                         # no banks
        MsrRow(MSR.MCG_STATUS, "MCG_STATUS"),
        MsrRow(MSR.MISC_ENABLE, "MISC_ENABLE", reset=MISC_ENABLE_FAST_STRINGS, writable=U64_MASK),
        MsrRow(MSR.PAT, "PAT", reset=PAT_POWER_ON, writable=U64_MASK),
        MsrRow(MSR.MTRR_DEF_TYPE, "MTRR_DEF_TYPE", writable=U64_MASK),
        MsrRow(MSR.TSC_DEADLINE, "TSC_DEADLINE"),               # no TSC-deadline timer
        MsrRow(MSR.EFER, "EFER", Home.ENGINE, writable=U64_MASK),  # the engine keeps qemu32's bits
        MsrRow(MSR.STAR, "STAR", writable=U64_MASK),
    ]
    for n in range(MTRR_VARIABLE_PAIRS):
        rows.append(MsrRow(MSR.MTRR_PHYSBASE0 + 2 * n, f"MTRR_PHYSBASE{n}", writable=U64_MASK))
        rows.append(MsrRow(MSR.MTRR_PHYSMASK0 + 2 * n, f"MTRR_PHYSMASK{n}", writable=U64_MASK))
    fixed = [MSR.MTRR_FIX64K_00000, MSR.MTRR_FIX16K_80000, MSR.MTRR_FIX16K_A0000,
             *range(MSR.MTRR_FIX4K_C0000, MSR.MTRR_FIX4K_F8000 + 1)]
    rows += [MsrRow(m, f"MTRR_FIX_{m:X}", writable=U64_MASK) for m in fixed]
    return {r.msr: r for r in rows}


MSRS: dict[int, MsrRow] = _rows()
"""MSR number -> its row."""


class MsrFile:
    """One vCPU's MSRs as the table describes them. ``vm`` gives the engine, the TSC
    (``guest_tsc``/``set_tsc``) and the board's local APIC."""

    def __init__(self, vm):
        self.vm = vm
        self.values = {r.msr: r.reset for r in MSRS.values() if r.home is Home.VMM}

    def read(self, msr: int) -> int | None:
        """RDMSR: the value, or None for #GP(0)."""
        row = MSRS.get(msr)
        if row is None:
            return None
        if row.home is Home.ENGINE:
            return self.vm.engine.msr(msr)
        if row.home is Home.TSC:
            return self.vm.guest_tsc()
        if row.home is Home.APIC_BASE:
            return self.vm.board.lapic.read_apic_base()
        return self.values[msr]

    def write(self, msr: int, value: int) -> bool:
        """WRMSR: False for #GP(0)."""
        row = MSRS.get(msr)
        if row is None:
            return False
        if row.home is Home.TSC:
            self.vm.set_tsc(value)
        elif row.home is Home.APIC_BASE:
            self.vm.board.lapic.write_apic_base(value)
        elif row.home is Home.ENGINE:
            self.vm.engine.set_msr(msr, value & row.writable)
        elif row.writable:
            self.values[msr] = (self.values[msr] & ~row.writable) | (value & row.writable)
        return True

    # -- the instructions: ECX names the MSR, EDX:EAX holds the value ----------------------
    def rdmsr(self) -> bool:
        """RDMSR on the engine's registers; False for #GP(0) (registers untouched)."""
        eng = self.vm.engine
        value = self.read(eng.reg("ecx"))
        if value is None:
            return False
        eng.set_reg("eax", value & U32_MASK)
        eng.set_reg("edx", value >> 32)
        return True

    def wrmsr(self) -> bool:
        """WRMSR from the engine's registers; False for #GP(0)."""
        eng = self.vm.engine
        return self.write(eng.reg("ecx"), (eng.reg("edx") << 32) | eng.reg("eax"))
