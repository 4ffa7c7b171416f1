"""VM-execution, VM-exit and VM-entry control words and the capability MSRs.

Bit numbers follow the Intel SDM vol. 3 §25.6-25.8 tables; names follow Linux
``arch/x86/include/asm/vmx.h`` loosely (``CPU_BASED_HLT_EXITING`` -> ``HLT_EXITING``).

Capability MSRs (SDM vol. 3 Appendix A.3-A.5): a 64-bit value whose low 32 bits are the
"allowed-0 settings" (a 1 in bit n: control n must be 1) and whose high 32 bits are the
"allowed-1 settings" (a 0 in bit n: control n must be 0). Bits without a name here in
the low half are the "default1" reserved bits of Appendix A.2.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass


class PinBased(enum.IntFlag):
    """Pin-based VM-execution controls (VMCS 0x4000), SDM Table 25-5."""

    EXTERNAL_INTERRUPT_EXITING = 1 << 0
    NMI_EXITING = 1 << 3
    VIRTUAL_NMIS = 1 << 5
    PREEMPTION_TIMER = 1 << 6
    POSTED_INTERRUPTS = 1 << 7


class PrimaryProcBased(enum.IntFlag):
    """Primary processor-based VM-execution controls (VMCS 0x4002), SDM Table 25-6."""

    INTERRUPT_WINDOW_EXITING = 1 << 2
    USE_TSC_OFFSETTING = 1 << 3
    HLT_EXITING = 1 << 7
    INVLPG_EXITING = 1 << 9
    MWAIT_EXITING = 1 << 10
    RDPMC_EXITING = 1 << 11
    RDTSC_EXITING = 1 << 12
    CR3_LOAD_EXITING = 1 << 15
    CR3_STORE_EXITING = 1 << 16
    ACTIVATE_TERTIARY = 1 << 17
    CR8_LOAD_EXITING = 1 << 19
    CR8_STORE_EXITING = 1 << 20
    USE_TPR_SHADOW = 1 << 21
    NMI_WINDOW_EXITING = 1 << 22
    MOV_DR_EXITING = 1 << 23
    UNCONDITIONAL_IO_EXITING = 1 << 24
    USE_IO_BITMAPS = 1 << 25
    MONITOR_TRAP_FLAG = 1 << 27
    USE_MSR_BITMAPS = 1 << 28
    MONITOR_EXITING = 1 << 29
    PAUSE_EXITING = 1 << 30
    ACTIVATE_SECONDARY_CONTROLS = 1 << 31


class SecondaryProcBased(enum.IntFlag):
    """Secondary processor-based VM-execution controls (VMCS 0x401E), SDM Table 25-7."""

    VIRTUALIZE_APIC_ACCESSES = 1 << 0
    ENABLE_EPT = 1 << 1
    DESCRIPTOR_TABLE_EXITING = 1 << 2
    ENABLE_RDTSCP = 1 << 3
    VIRTUALIZE_X2APIC = 1 << 4
    ENABLE_VPID = 1 << 5
    WBINVD_EXITING = 1 << 6
    UNRESTRICTED_GUEST = 1 << 7
    APIC_REGISTER_VIRTUALIZATION = 1 << 8
    VIRTUAL_INTERRUPT_DELIVERY = 1 << 9
    PAUSE_LOOP_EXITING = 1 << 10
    RDRAND_EXITING = 1 << 11
    ENABLE_INVPCID = 1 << 12
    ENABLE_VM_FUNCTIONS = 1 << 13
    VMCS_SHADOWING = 1 << 14
    ENABLE_ENCLS_EXITING = 1 << 15
    RDSEED_EXITING = 1 << 16
    ENABLE_PML = 1 << 17
    EPT_VIOLATION_VE = 1 << 18
    CONCEAL_VMX_FROM_PT = 1 << 19
    ENABLE_XSAVES_XRSTORS = 1 << 20
    MODE_BASED_EPT_EXECUTE = 1 << 22
    SUB_PAGE_WRITE_PERMISSIONS = 1 << 23
    PT_USES_GUEST_PHYSICAL_ADDRESSES = 1 << 24
    USE_TSC_SCALING = 1 << 25
    ENABLE_USER_WAIT_PAUSE = 1 << 26
    ENABLE_PCONFIG = 1 << 27
    ENABLE_ENCLV_EXITING = 1 << 28
    BUS_LOCK_DETECTION = 1 << 30
    NOTIFY_VM_EXITING = 1 << 31


class ExitControls(enum.IntFlag):
    """Primary VM-exit controls (VMCS 0x400C), SDM Table 25-13."""

    SAVE_DEBUG_CONTROLS = 1 << 2
    HOST_ADDRESS_SPACE_SIZE = 1 << 9
    LOAD_PERF_GLOBAL_CTRL = 1 << 12
    ACK_INTERRUPT_ON_EXIT = 1 << 15
    SAVE_PAT = 1 << 18
    LOAD_PAT = 1 << 19
    SAVE_EFER = 1 << 20
    LOAD_EFER = 1 << 21
    SAVE_PREEMPTION_TIMER = 1 << 22
    CLEAR_BNDCFGS = 1 << 23
    CONCEAL_VMX_FROM_PT = 1 << 24
    CLEAR_RTIT_CTL = 1 << 25


class EntryControls(enum.IntFlag):
    """VM-entry controls (VMCS 0x4012), SDM Table 25-15."""

    LOAD_DEBUG_CONTROLS = 1 << 2
    IA32E_MODE_GUEST = 1 << 9
    ENTRY_TO_SMM = 1 << 10
    DEACTIVATE_DUAL_MONITOR = 1 << 11
    LOAD_PERF_GLOBAL_CTRL = 1 << 13
    LOAD_PAT = 1 << 14
    LOAD_EFER = 1 << 15
    LOAD_BNDCFGS = 1 << 16
    CONCEAL_VMX_FROM_PT = 1 << 17
    LOAD_RTIT_CTL = 1 << 18


class VmxMsr(enum.IntEnum):
    """VMX capability MSRs, SDM vol. 3 Appendix A / vol. 4 Table 2-2."""

    IA32_VMX_BASIC = 0x480
    IA32_VMX_PINBASED_CTLS = 0x481
    IA32_VMX_PROCBASED_CTLS = 0x482
    IA32_VMX_EXIT_CTLS = 0x483
    IA32_VMX_ENTRY_CTLS = 0x484
    IA32_VMX_MISC = 0x485
    IA32_VMX_CR0_FIXED0 = 0x486
    IA32_VMX_CR0_FIXED1 = 0x487
    IA32_VMX_CR4_FIXED0 = 0x488
    IA32_VMX_CR4_FIXED1 = 0x489
    IA32_VMX_VMCS_ENUM = 0x48A
    IA32_VMX_PROCBASED_CTLS2 = 0x48B
    IA32_VMX_EPT_VPID_CAP = 0x48C
    IA32_VMX_TRUE_PINBASED_CTLS = 0x48D
    IA32_VMX_TRUE_PROCBASED_CTLS = 0x48E
    IA32_VMX_TRUE_EXIT_CTLS = 0x48F
    IA32_VMX_TRUE_ENTRY_CTLS = 0x490
    IA32_VMX_VMFUNC = 0x491


# Plain constants too, so callers can write ``controls.IA32_VMX_BASIC``.
IA32_VMX_BASIC = VmxMsr.IA32_VMX_BASIC
IA32_VMX_PINBASED_CTLS = VmxMsr.IA32_VMX_PINBASED_CTLS
IA32_VMX_PROCBASED_CTLS = VmxMsr.IA32_VMX_PROCBASED_CTLS
IA32_VMX_EXIT_CTLS = VmxMsr.IA32_VMX_EXIT_CTLS
IA32_VMX_ENTRY_CTLS = VmxMsr.IA32_VMX_ENTRY_CTLS
IA32_VMX_MISC = VmxMsr.IA32_VMX_MISC
IA32_VMX_CR0_FIXED0 = VmxMsr.IA32_VMX_CR0_FIXED0
IA32_VMX_CR0_FIXED1 = VmxMsr.IA32_VMX_CR0_FIXED1
IA32_VMX_CR4_FIXED0 = VmxMsr.IA32_VMX_CR4_FIXED0
IA32_VMX_CR4_FIXED1 = VmxMsr.IA32_VMX_CR4_FIXED1
IA32_VMX_VMCS_ENUM = VmxMsr.IA32_VMX_VMCS_ENUM
IA32_VMX_PROCBASED_CTLS2 = VmxMsr.IA32_VMX_PROCBASED_CTLS2
IA32_VMX_EPT_VPID_CAP = VmxMsr.IA32_VMX_EPT_VPID_CAP
IA32_VMX_TRUE_PINBASED_CTLS = VmxMsr.IA32_VMX_TRUE_PINBASED_CTLS
IA32_VMX_TRUE_PROCBASED_CTLS = VmxMsr.IA32_VMX_TRUE_PROCBASED_CTLS
IA32_VMX_TRUE_EXIT_CTLS = VmxMsr.IA32_VMX_TRUE_EXIT_CTLS
IA32_VMX_TRUE_ENTRY_CTLS = VmxMsr.IA32_VMX_TRUE_ENTRY_CTLS
IA32_VMX_VMFUNC = VmxMsr.IA32_VMX_VMFUNC

MEMORY_TYPE_UC = 0
MEMORY_TYPE_WB = 6
VMCS_REVISION_ID = 1
VMCS_SIZE = 4096
VMCS_SIZE_MAX = 4096
"""IA32_VMX_BASIC bits 44:32: the VMCS region size, greater than 0 and at most 4096 (SDM vol. 3 §A.1)."""
MEMORY_TYPE_LIMIT = 1 << 4
"""IA32_VMX_BASIC bits 53:50: a four-bit memory type."""


def vmx_basic(revision_id: int = VMCS_REVISION_ID, vmcs_size: int = VMCS_SIZE,
              memory_type: int = MEMORY_TYPE_WB, ins_outs_info: bool = True,
              true_controls: bool = True, physical_address_width_32: bool = False,
              dual_monitor: bool = False) -> int:
    """IA32_VMX_BASIC (SDM Appendix A.1).

    bits 30:0 VMCS revision id; 44:32 VMCS region size (1..4096); 48 physical
    addresses limited to 32 bits; 49 dual-monitor SMM; 53:50 VMCS memory type;
    54 INS/OUTS report instruction information; 55 TRUE_*_CTLS MSRs exist.
    """
    if not 0 <= revision_id < (1 << 31):
        raise ValueError("revision id is 31 bits")
    if not 0 < vmcs_size <= VMCS_SIZE_MAX:
        raise ValueError("VMCS size is 1..4096 bytes")
    if not 0 <= memory_type < MEMORY_TYPE_LIMIT:
        raise ValueError("memory type is 4 bits")
    return (revision_id
            | (vmcs_size << 32)
            | (int(physical_address_width_32) << 48)
            | (int(dual_monitor) << 49)
            | (memory_type << 50)
            | (int(ins_outs_info) << 54)
            | (int(true_controls) << 55))


@dataclass(frozen=True)
class Capability:
    """One IA32_VMX_*_CTLS MSR: which settings of a 32-bit control word are allowed."""

    name: str               # e.g. "primary processor-based VM-execution controls"
    flags: type[enum.IntFlag]
    allowed0: int           # bit set: the control must be 1
    allowed1: int           # bit clear: the control must be 0

    def __post_init__(self):
        if self.allowed0 & ~self.allowed1 & 0xFFFF_FFFF:
            raise ValueError(f"{self.name}: a must-be-1 bit is not allowed to be 1")

    @property
    def msr_value(self) -> int:
        return (self.allowed1 << 32) | self.allowed0

    @classmethod
    def from_msr(cls, name: str, flags: type[enum.IntFlag], value: int) -> Capability:
        return cls(name, flags, value & 0xFFFF_FFFF, value >> 32)

    @property
    def must_be_one(self) -> int:
        return self.allowed0

    @property
    def must_be_zero(self) -> int:
        return ~self.allowed1 & 0xFFFF_FFFF

    def adjust(self, wanted: int) -> int:
        """The value a VMM writes for ``wanted`` (KVM ``adjust_vmx_controls``): forced
        bits on, unsupported bits off."""
        return (int(wanted) | self.allowed0) & self.allowed1


def bit_name(flags: type[enum.IntFlag], bit: int) -> str:
    for m in flags:
        if int(m) == 1 << bit:
            return m.name or f"bit {bit}"
    return f"reserved bit {bit}"


def check(value: int, capability: Capability) -> list[str]:
    """Violations of ``capability`` by the control word ``value``, readable, one per bit.

    E.g. ``"primary processor-based VM-execution controls: HLT_EXITING (bit 7) must be 0"``.
    An empty list means VM entry's check of this field passes (SDM §27.2.1.1).
    """
    value = int(value)
    problems: list[str] = []
    if value >> 32 or value < 0:
        problems.append(f"{capability.name}: value {value:#x} is wider than 32 bits")
        value &= 0xFFFF_FFFF
    for bit in range(32):
        m = 1 << bit
        if capability.allowed0 & m and not value & m:
            problems.append(f"{capability.name}: {bit_name(capability.flags, bit)} (bit {bit}) must be 1")
        elif not capability.allowed1 & m and value & m:
            problems.append(f"{capability.name}: {bit_name(capability.flags, bit)} (bit {bit}) must be 0")
    return problems


# --- this model's capabilities ------------------------------------------------------
# default1 classes, SDM Appendix A.2-A.5 (Linux *_ALWAYSON_WITHOUT_TRUE_MSR).
PINBASED_DEFAULT1 = 0x0000_0016          # bits 1, 2, 4
PROCBASED_DEFAULT1 = 0x0401_E172         # bits 1, 4-6, 8, 13-16, 26
EXIT_DEFAULT1 = 0x0003_6DFF              # bits 0-8, 10, 11, 13, 14, 16, 17
ENTRY_DEFAULT1 = 0x0000_11FF             # bits 0-8, 12
# The TRUE_ MSRs may report some default1 bits as allowed to be 0; ours do so for the
# ones real processors relax: CR3-load/store exiting (15, 16), save/load debug controls (2).
TRUE_PROCBASED_DEFAULT1 = PROCBASED_DEFAULT1 & ~int(PrimaryProcBased.CR3_LOAD_EXITING
                                                    | PrimaryProcBased.CR3_STORE_EXITING)
TRUE_EXIT_DEFAULT1 = EXIT_DEFAULT1 & ~int(ExitControls.SAVE_DEBUG_CONTROLS)
TRUE_ENTRY_DEFAULT1 = ENTRY_DEFAULT1 & ~int(EntryControls.LOAD_DEBUG_CONTROLS)

# Controls this project models (32-bit guests and host: no IA-32e, CR8, SMM, APIC
# virtualization, posted interrupts, PML, ...).
SUPPORTED_PIN = (PinBased.EXTERNAL_INTERRUPT_EXITING | PinBased.NMI_EXITING
                 | PinBased.VIRTUAL_NMIS | PinBased.PREEMPTION_TIMER)
SUPPORTED_PRIMARY = (PrimaryProcBased.INTERRUPT_WINDOW_EXITING | PrimaryProcBased.USE_TSC_OFFSETTING
                     | PrimaryProcBased.HLT_EXITING | PrimaryProcBased.INVLPG_EXITING
                     | PrimaryProcBased.MWAIT_EXITING | PrimaryProcBased.RDPMC_EXITING
                     | PrimaryProcBased.RDTSC_EXITING | PrimaryProcBased.CR3_LOAD_EXITING
                     | PrimaryProcBased.CR3_STORE_EXITING | PrimaryProcBased.NMI_WINDOW_EXITING
                     | PrimaryProcBased.MOV_DR_EXITING | PrimaryProcBased.UNCONDITIONAL_IO_EXITING
                     | PrimaryProcBased.USE_IO_BITMAPS | PrimaryProcBased.MONITOR_TRAP_FLAG
                     | PrimaryProcBased.USE_MSR_BITMAPS | PrimaryProcBased.MONITOR_EXITING
                     | PrimaryProcBased.PAUSE_EXITING | PrimaryProcBased.ACTIVATE_SECONDARY_CONTROLS)
SUPPORTED_SECONDARY = (SecondaryProcBased.ENABLE_EPT | SecondaryProcBased.DESCRIPTOR_TABLE_EXITING
                       | SecondaryProcBased.ENABLE_RDTSCP | SecondaryProcBased.ENABLE_VPID
                       | SecondaryProcBased.WBINVD_EXITING | SecondaryProcBased.UNRESTRICTED_GUEST)
SUPPORTED_EXIT = (ExitControls.SAVE_DEBUG_CONTROLS | ExitControls.ACK_INTERRUPT_ON_EXIT
                  | ExitControls.SAVE_PAT | ExitControls.LOAD_PAT | ExitControls.SAVE_EFER
                  | ExitControls.LOAD_EFER | ExitControls.SAVE_PREEMPTION_TIMER)
SUPPORTED_ENTRY = (EntryControls.LOAD_DEBUG_CONTROLS | EntryControls.LOAD_PAT | EntryControls.LOAD_EFER)

_PIN = "pin-based VM-execution controls"
_PRI = "primary processor-based VM-execution controls"
_SEC = "secondary processor-based VM-execution controls"
_EXIT = "VM-exit controls"
_ENTRY = "VM-entry controls"

PINBASED_CTLS = Capability(_PIN, PinBased, PINBASED_DEFAULT1, PINBASED_DEFAULT1 | SUPPORTED_PIN)
PROCBASED_CTLS = Capability(_PRI, PrimaryProcBased, PROCBASED_DEFAULT1, PROCBASED_DEFAULT1 | SUPPORTED_PRIMARY)
PROCBASED_CTLS2 = Capability(_SEC, SecondaryProcBased, 0, int(SUPPORTED_SECONDARY))
EXIT_CTLS = Capability(_EXIT, ExitControls, EXIT_DEFAULT1, EXIT_DEFAULT1 | SUPPORTED_EXIT)
ENTRY_CTLS = Capability(_ENTRY, EntryControls, ENTRY_DEFAULT1, ENTRY_DEFAULT1 | SUPPORTED_ENTRY)
TRUE_PINBASED_CTLS = Capability(_PIN, PinBased, PINBASED_DEFAULT1, PINBASED_CTLS.allowed1)
TRUE_PROCBASED_CTLS = Capability(_PRI, PrimaryProcBased, TRUE_PROCBASED_DEFAULT1, PROCBASED_CTLS.allowed1)
TRUE_EXIT_CTLS = Capability(_EXIT, ExitControls, TRUE_EXIT_DEFAULT1, EXIT_CTLS.allowed1)
TRUE_ENTRY_CTLS = Capability(_ENTRY, EntryControls, TRUE_ENTRY_DEFAULT1, ENTRY_CTLS.allowed1)

CAPABILITIES: dict[VmxMsr, Capability] = {
    VmxMsr.IA32_VMX_PINBASED_CTLS: PINBASED_CTLS,
    VmxMsr.IA32_VMX_PROCBASED_CTLS: PROCBASED_CTLS,
    VmxMsr.IA32_VMX_EXIT_CTLS: EXIT_CTLS,
    VmxMsr.IA32_VMX_ENTRY_CTLS: ENTRY_CTLS,
    VmxMsr.IA32_VMX_PROCBASED_CTLS2: PROCBASED_CTLS2,
    VmxMsr.IA32_VMX_TRUE_PINBASED_CTLS: TRUE_PINBASED_CTLS,
    VmxMsr.IA32_VMX_TRUE_PROCBASED_CTLS: TRUE_PROCBASED_CTLS,
    VmxMsr.IA32_VMX_TRUE_EXIT_CTLS: TRUE_EXIT_CTLS,
    VmxMsr.IA32_VMX_TRUE_ENTRY_CTLS: TRUE_ENTRY_CTLS,
}


def capability_msrs() -> dict[int, int]:
    """RDMSR values of this model's VMX control-capability MSRs and IA32_VMX_BASIC."""
    msrs = {int(k): c.msr_value for k, c in CAPABILITIES.items()}
    msrs[int(VmxMsr.IA32_VMX_BASIC)] = vmx_basic()
    return msrs


def check_all(pin: int, primary: int, exit_: int, entry: int, secondary: int | None = None,
              true_controls: bool = True) -> list[str]:
    """The control-field checks of VM entry (SDM §27.2.1.1, first items) on five words.

    The secondary word is checked only when ACTIVATE_SECONDARY_CONTROLS is set (it is
    treated as 0 otherwise, as the processor does).
    """
    caps = ((TRUE_PINBASED_CTLS, TRUE_PROCBASED_CTLS, TRUE_EXIT_CTLS, TRUE_ENTRY_CTLS) if true_controls
            else (PINBASED_CTLS, PROCBASED_CTLS, EXIT_CTLS, ENTRY_CTLS))
    problems = check(pin, caps[0]) + check(primary, caps[1])
    if int(primary) & PrimaryProcBased.ACTIVATE_SECONDARY_CONTROLS:
        problems += check(secondary or 0, PROCBASED_CTLS2)
    return problems + check(exit_, caps[2]) + check(entry, caps[3])
