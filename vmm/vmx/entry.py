"""VM-entry checks (SDM vol. 3 ch. 27): a documented subset, failing as hardware does.

A failed check of the control fields or of the guest-state area makes VM entry fail with
exit reason 33 ("VM-entry failure due to invalid guest state") and bit 31 of the
exit-reason field set; the VM stops and the report lists every check that failed.

Checked here:

* §27.2.1.1 controls against the capability MSRs (allowed-0 / allowed-1 settings);
  unrestricted guest requires enable EPT; CR3-target count at most 4; with enable EPT,
  the EPT pointer: memory type UC or WB, a 4-level walk, no reserved bit set;
* §27.3.1.1 guest CR0 and CR4 against the fixed bits: CR0.PG=1 requires CR0.PE=1,
  CR0.NW=1 requires CR0.CD=1; without unrestricted guest CR0.PE must be 1
  (IA32_VMX_CR0_FIXED0). This model does not require CR4.VMXE in the guest (a real
  processor does; hypervisors hide it behind the CR4 read shadow) nor CR0.PG (a guest
  with paging off runs on the VMM's identity map, as KVM's shadow paging does);
* §27.3.1.4 guest RFLAGS: bit 1 set, reserved bits 3, 5, 15, 22-31 clear, IF set when
  an external interrupt is injected;
* §27.3.1.2 CS and SS: in protected mode the CS selector's RPL equals SS's (the CPL),
  and CS names a present code segment in the guest's GDT;
* §27.2.1.3 VM-entry interruption information: reserved bits clear, a valid type, a
  hardware exception vector below 32 and not 2, NMI vector 2, an error code only for
  vectors that have one and only in protected mode;
* activity state 0-3.
"""
from __future__ import annotations

import functools
import operator
from collections.abc import Callable

from ..mmu.ept import Eptp
from ..x86 import CR0, CR4, EFLAGS, HAS_ERROR_CODE, bits
from ..x86.segments import SELECTOR_RPL_MASK
from ..x86.vectors import FIRST_USER_VECTOR, Vector
from .controls import PrimaryProcBased, SecondaryProcBased, check_all
from .exit_reasons import ExitReason, exit_reason_word
from .qualification import INTR_INFO_VALID, InterruptionInfo, InterruptionType
from .vmcs import CR3_TARGET_SLOTS, ActivityState, Field

CR0_PE, CR0_NW, CR0_CD, CR0_PG = CR0.PE, CR0.NW, CR0.CD, CR0.PG
# RFLAGS bits 3, 5, 15 and 22-31: every bit EFLAGS does not name (§27.3.1.4)
RFLAGS_RESERVED_ZERO = bits(31, 0) & ~functools.reduce(operator.or_, map(int, EFLAGS.__members__.values()))
RFLAGS_IF = EFLAGS.IF
CR4_DEFINED = (CR4.CET << 1) - 1  # bits above those this model knows must be 0
INTR_INFO_RESERVED = bits(30, 12)  # VM-entry interruption information, §24.8.3

ENTRY_FAILURE_REASON = exit_reason_word(ExitReason.INVALID_GUEST_STATE, entry_failure=True)


def check_controls(vmcs) -> list[str]:
    primary = vmcs.read(Field.CPU_BASED_VM_EXEC_CONTROL)
    secondary = vmcs.read(Field.SECONDARY_VM_EXEC_CONTROL)
    problems = check_all(vmcs.read(Field.PIN_BASED_VM_EXEC_CONTROL), primary,
                         vmcs.read(Field.VM_EXIT_CONTROLS), vmcs.read(Field.VM_ENTRY_CONTROLS), secondary)
    if primary & PrimaryProcBased.ACTIVATE_SECONDARY_CONTROLS:
        if secondary & SecondaryProcBased.UNRESTRICTED_GUEST and not secondary & SecondaryProcBased.ENABLE_EPT:
            problems.append("unrestricted guest requires enable EPT")
        if secondary & SecondaryProcBased.ENABLE_EPT:
            eptp = vmcs.read(Field.EPT_POINTER)
            problems += [f"EPT pointer {eptp:#x}: {p}" for p in Eptp.decode(eptp).problems()]
    if vmcs.read(Field.CR3_TARGET_COUNT) > CR3_TARGET_SLOTS:
        problems.append(f"CR3-target count {vmcs.read(Field.CR3_TARGET_COUNT)} is above 4")
    return problems


def check_guest_state(vmcs, code_descriptor: Callable[[int], tuple[bool, bool] | None]) -> list[str]:
    """``code_descriptor(selector)`` -> (is code, present) from the guest GDT, or None."""
    problems = []
    cr0, cr4 = vmcs.read(Field.GUEST_CR0), vmcs.read(Field.GUEST_CR4)
    primary = vmcs.read(Field.CPU_BASED_VM_EXEC_CONTROL)
    unrestricted = bool(primary & PrimaryProcBased.ACTIVATE_SECONDARY_CONTROLS
                        and vmcs.read(Field.SECONDARY_VM_EXEC_CONTROL) & SecondaryProcBased.UNRESTRICTED_GUEST)
    if cr0 & CR0_PG and not cr0 & CR0_PE:
        problems.append(f"guest CR0 {cr0:#010x}: CR0.PG = 1 requires CR0.PE = 1")
    if cr0 & CR0_NW and not cr0 & CR0_CD:
        problems.append(f"guest CR0 {cr0:#010x}: CR0.NW = 1 requires CR0.CD = 1")
    if not unrestricted and not cr0 & CR0_PE:
        problems.append(f"guest CR0 {cr0:#010x}: CR0.PE must be 1 (IA32_VMX_CR0_FIXED0) without unrestricted guest")
    if cr4 & ~CR4_DEFINED:
        problems.append(f"guest CR4 {cr4:#010x}: reserved bits set")
    rflags = vmcs.read(Field.GUEST_RFLAGS)
    if not rflags & EFLAGS.FIXED:
        problems.append(f"guest RFLAGS {rflags:#010x}: reserved bit 1 must be 1")
    if rflags & RFLAGS_RESERVED_ZERO:
        problems.append(f"guest RFLAGS {rflags:#010x}: reserved bits 3, 5, 15 and 22-31 must be 0")
    if cr0 & CR0_PE:
        cs, ss = vmcs.read(Field.GUEST_CS_SELECTOR), vmcs.read(Field.GUEST_SS_SELECTOR)
        if cs & SELECTOR_RPL_MASK != ss & SELECTOR_RPL_MASK:
            problems.append(f"guest CS {cs:#06x} and SS {ss:#06x}: RPLs differ (CPL undefined)")
        desc = code_descriptor(cs)
        if desc is None:
            problems.append(f"guest CS {cs:#06x}: outside the GDT")
        elif not desc[0]:
            problems.append(f"guest CS {cs:#06x}: not a code segment")
        elif not desc[1]:
            problems.append(f"guest CS {cs:#06x}: segment not present")
    activity = vmcs.read(Field.GUEST_ACTIVITY_STATE)
    if activity > max(ActivityState):
        problems.append(f"guest activity state {activity} is not 0-3")
    problems += check_injection(vmcs, cr0, rflags)
    return problems


def check_injection(vmcs, cr0: int, rflags: int) -> list[str]:
    raw = vmcs.read(Field.VM_ENTRY_INTR_INFO_FIELD)
    if not raw & INTR_INFO_VALID:
        return []
    problems = []
    if raw & INTR_INFO_RESERVED:
        problems.append(f"VM-entry interruption information {raw:#010x}: reserved bits 30:12 set")
    info = InterruptionInfo.decode(raw)
    if info.type in (InterruptionType.RESERVED, InterruptionType.OTHER_EVENT):
        problems.append(f"VM-entry interruption information: type {int(info.type)} cannot be injected")
    if info.type is InterruptionType.NMI and info.vector != Vector.NMI:
        problems.append(f"VM-entry interruption information: NMI with vector {info.vector}")
    if info.type is InterruptionType.HARDWARE_EXCEPTION and (info.vector >= FIRST_USER_VECTOR
                                                             or info.vector == Vector.NMI):
        problems.append(f"VM-entry interruption information: hardware exception vector {info.vector}")
    if info.error_code_valid and (info.vector not in HAS_ERROR_CODE or not cr0 & CR0_PE
                                  or info.type is not InterruptionType.HARDWARE_EXCEPTION):
        problems.append(f"VM-entry interruption information: vector {info.vector} delivers no error code")
    if info.type is InterruptionType.EXTERNAL_INTERRUPT and not rflags & RFLAGS_IF:
        problems.append("VM-entry interruption information: external interrupt injected with RFLAGS.IF = 0")
    return problems


def entry_failure_report(problems: list[str], vmcs) -> str:
    lines = [f"exit reason {ENTRY_FAILURE_REASON:#010x} (basic reason 33 INVALID_GUEST_STATE, "
             f"bit 31 set); {len(problems)} check(s) failed:"]
    lines += [f"  - {p}" for p in problems]
    lines += ["VMCS:"] + [f"  {line}" for line in vmcs.dump()]
    return "\n".join(lines)
