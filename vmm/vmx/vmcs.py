"""VMCS field encodings (Intel SDM vol. 3, Appendix B) and a VMCS store.

Encoding layout of a 32-bit VMCS field encoding (SDM vol. 3 §25.11.2, Appendix B)::

    bit  0      access type: 0 = full, 1 = high (upper 32 bits of a 64-bit field)
    bits 9:1    index
    bits 11:10  type: 0 control, 1 VM-exit information (read-only), 2 guest state,
                3 host state
    bit  12     reserved (0)
    bits 14:13  width: 0 16-bit, 1 64-bit, 2 32-bit, 3 natural width
    bits 31:15  reserved (0)

Names follow Linux ``arch/x86/include/asm/vmx.h`` ``enum vmcs_field`` where Linux has
the field; the few Linux omits take the SDM's wording (``IO_RCX``, ``GUEST_SMBASE``).
The "_HIGH" encodings are not enum members: ``Vmcs`` accepts ``field | 1`` for any
64-bit field (see :func:`high`).

This is a 32-bit model: natural-width fields hold 32 bits (``NATURAL_BITS``).
"""
from __future__ import annotations

import enum
from collections.abc import Iterator

from .controls import PrimaryProcBased, SecondaryProcBased

NATURAL_BITS = 32
"""Width of a natural-width field in this model (the guest and host are 32-bit)."""


class Width(enum.IntEnum):
    """Bits 14:13 of an encoding."""

    BITS16 = 0
    BITS64 = 1
    BITS32 = 2
    NATURAL = 3

    @property
    def bits(self) -> int:
        """Storage width in this model (natural width = ``NATURAL_BITS``)."""
        return {0: 16, 1: 64, 2: 32, 3: NATURAL_BITS}[int(self)]


class FieldType(enum.IntEnum):
    """Bits 11:10 of an encoding."""

    CONTROL = 0
    EXIT_INFO = 1      # VM-exit information: read-only to VMWRITE
    GUEST = 2
    HOST = 3


_RESERVED_BITS = 0xFFFF_8000 | (1 << 12)
_ACTIVATE_SECONDARY = PrimaryProcBased.ACTIVATE_SECONDARY_CONTROLS._value_
_ENABLE_VPID = SecondaryProcBased.ENABLE_VPID._value_


def encoding_width(encoding: int) -> Width:
    return Width((encoding >> 13) & 3)


def encoding_type(encoding: int) -> FieldType:
    return FieldType((encoding >> 10) & 3)


def encoding_index(encoding: int) -> int:
    return (encoding >> 1) & 0x1FF


def encoding_is_high(encoding: int) -> bool:
    return bool(encoding & 1)


CR3_TARGET_SLOTS = 4
"""CR3-target values 0..3: a CR3-target count above 4 fails VM entry (SDM vol. 3 §25.6.7, §27.2.1.1)."""


class ActivityState(enum.IntEnum):
    """The guest activity state field (SDM vol. 3 §25.4.2, Table 25-3)."""

    ACTIVE = 0
    HLT = 1
    SHUTDOWN = 2
    WAIT_FOR_SIPI = 3


class Field(enum.IntEnum):
    """VMCS component encodings, SDM vol. 3 Appendix B (full access type)."""

    # --- B.1.1 16-bit control fields
    VIRTUAL_PROCESSOR_ID = 0x0000
    POSTED_INTR_NV = 0x0002
    EPTP_INDEX = 0x0004
    # --- B.1.2 16-bit guest-state fields
    GUEST_ES_SELECTOR = 0x0800
    GUEST_CS_SELECTOR = 0x0802
    GUEST_SS_SELECTOR = 0x0804
    GUEST_DS_SELECTOR = 0x0806
    GUEST_FS_SELECTOR = 0x0808
    GUEST_GS_SELECTOR = 0x080A
    GUEST_LDTR_SELECTOR = 0x080C
    GUEST_TR_SELECTOR = 0x080E
    GUEST_INTR_STATUS = 0x0810
    GUEST_PML_INDEX = 0x0812
    # --- B.1.3 16-bit host-state fields
    HOST_ES_SELECTOR = 0x0C00
    HOST_CS_SELECTOR = 0x0C02
    HOST_SS_SELECTOR = 0x0C04
    HOST_DS_SELECTOR = 0x0C06
    HOST_FS_SELECTOR = 0x0C08
    HOST_GS_SELECTOR = 0x0C0A
    HOST_TR_SELECTOR = 0x0C0C
    # --- B.2.1 64-bit control fields
    IO_BITMAP_A = 0x2000
    IO_BITMAP_B = 0x2002
    MSR_BITMAP = 0x2004
    VM_EXIT_MSR_STORE_ADDR = 0x2006
    VM_EXIT_MSR_LOAD_ADDR = 0x2008
    VM_ENTRY_MSR_LOAD_ADDR = 0x200A
    EXECUTIVE_VMCS_POINTER = 0x200C
    PML_ADDRESS = 0x200E
    TSC_OFFSET = 0x2010
    VIRTUAL_APIC_PAGE_ADDR = 0x2012
    APIC_ACCESS_ADDR = 0x2014
    POSTED_INTR_DESC_ADDR = 0x2016
    VM_FUNCTION_CONTROL = 0x2018
    EPT_POINTER = 0x201A
    EOI_EXIT_BITMAP0 = 0x201C
    EOI_EXIT_BITMAP1 = 0x201E
    EOI_EXIT_BITMAP2 = 0x2020
    EOI_EXIT_BITMAP3 = 0x2022
    EPTP_LIST_ADDRESS = 0x2024
    VMREAD_BITMAP = 0x2026
    VMWRITE_BITMAP = 0x2028
    VE_INFORMATION_ADDRESS = 0x202A
    XSS_EXIT_BITMAP = 0x202C
    ENCLS_EXITING_BITMAP = 0x202E
    TSC_MULTIPLIER = 0x2032
    TERTIARY_VM_EXEC_CONTROL = 0x2034
    # --- B.2.2 64-bit read-only data field
    GUEST_PHYSICAL_ADDRESS = 0x2400
    # --- B.2.3 64-bit guest-state fields
    VMCS_LINK_POINTER = 0x2800
    GUEST_IA32_DEBUGCTL = 0x2802
    GUEST_IA32_PAT = 0x2804
    GUEST_IA32_EFER = 0x2806
    GUEST_IA32_PERF_GLOBAL_CTRL = 0x2808
    GUEST_PDPTR0 = 0x280A
    GUEST_PDPTR1 = 0x280C
    GUEST_PDPTR2 = 0x280E
    GUEST_PDPTR3 = 0x2810
    GUEST_BNDCFGS = 0x2812
    GUEST_IA32_RTIT_CTL = 0x2814
    # --- B.2.4 64-bit host-state fields
    HOST_IA32_PAT = 0x2C00
    HOST_IA32_EFER = 0x2C02
    HOST_IA32_PERF_GLOBAL_CTRL = 0x2C04
    # --- B.3.1 32-bit control fields
    PIN_BASED_VM_EXEC_CONTROL = 0x4000
    CPU_BASED_VM_EXEC_CONTROL = 0x4002
    EXCEPTION_BITMAP = 0x4004
    PAGE_FAULT_ERROR_CODE_MASK = 0x4006
    PAGE_FAULT_ERROR_CODE_MATCH = 0x4008
    CR3_TARGET_COUNT = 0x400A
    VM_EXIT_CONTROLS = 0x400C
    VM_EXIT_MSR_STORE_COUNT = 0x400E
    VM_EXIT_MSR_LOAD_COUNT = 0x4010
    VM_ENTRY_CONTROLS = 0x4012
    VM_ENTRY_MSR_LOAD_COUNT = 0x4014
    VM_ENTRY_INTR_INFO_FIELD = 0x4016
    VM_ENTRY_EXCEPTION_ERROR_CODE = 0x4018
    VM_ENTRY_INSTRUCTION_LEN = 0x401A
    TPR_THRESHOLD = 0x401C
    SECONDARY_VM_EXEC_CONTROL = 0x401E
    PLE_GAP = 0x4020
    PLE_WINDOW = 0x4022
    # --- B.3.2 32-bit read-only data fields
    VM_INSTRUCTION_ERROR = 0x4400
    VM_EXIT_REASON = 0x4402
    VM_EXIT_INTR_INFO = 0x4404
    VM_EXIT_INTR_ERROR_CODE = 0x4406
    IDT_VECTORING_INFO_FIELD = 0x4408
    IDT_VECTORING_ERROR_CODE = 0x440A
    VM_EXIT_INSTRUCTION_LEN = 0x440C
    VMX_INSTRUCTION_INFO = 0x440E
    # --- B.3.3 32-bit guest-state fields
    GUEST_ES_LIMIT = 0x4800
    GUEST_CS_LIMIT = 0x4802
    GUEST_SS_LIMIT = 0x4804
    GUEST_DS_LIMIT = 0x4806
    GUEST_FS_LIMIT = 0x4808
    GUEST_GS_LIMIT = 0x480A
    GUEST_LDTR_LIMIT = 0x480C
    GUEST_TR_LIMIT = 0x480E
    GUEST_GDTR_LIMIT = 0x4810
    GUEST_IDTR_LIMIT = 0x4812
    GUEST_ES_AR_BYTES = 0x4814
    GUEST_CS_AR_BYTES = 0x4816
    GUEST_SS_AR_BYTES = 0x4818
    GUEST_DS_AR_BYTES = 0x481A
    GUEST_FS_AR_BYTES = 0x481C
    GUEST_GS_AR_BYTES = 0x481E
    GUEST_LDTR_AR_BYTES = 0x4820
    GUEST_TR_AR_BYTES = 0x4822
    GUEST_INTERRUPTIBILITY_INFO = 0x4824
    GUEST_ACTIVITY_STATE = 0x4826
    GUEST_SMBASE = 0x4828
    GUEST_SYSENTER_CS = 0x482A
    VMX_PREEMPTION_TIMER_VALUE = 0x482E
    # --- B.3.4 32-bit host-state field
    HOST_IA32_SYSENTER_CS = 0x4C00
    # --- B.4.1 natural-width control fields
    CR0_GUEST_HOST_MASK = 0x6000
    CR4_GUEST_HOST_MASK = 0x6002
    CR0_READ_SHADOW = 0x6004
    CR4_READ_SHADOW = 0x6006
    CR3_TARGET_VALUE0 = 0x6008
    CR3_TARGET_VALUE1 = 0x600A
    CR3_TARGET_VALUE2 = 0x600C
    CR3_TARGET_VALUE3 = 0x600E
    # --- B.4.2 natural-width read-only data fields
    EXIT_QUALIFICATION = 0x6400
    IO_RCX = 0x6402
    IO_RSI = 0x6404
    IO_RDI = 0x6406
    IO_RIP = 0x6408
    GUEST_LINEAR_ADDRESS = 0x640A
    # --- B.4.3 natural-width guest-state fields
    GUEST_CR0 = 0x6800
    GUEST_CR3 = 0x6802
    GUEST_CR4 = 0x6804
    GUEST_ES_BASE = 0x6806
    GUEST_CS_BASE = 0x6808
    GUEST_SS_BASE = 0x680A
    GUEST_DS_BASE = 0x680C
    GUEST_FS_BASE = 0x680E
    GUEST_GS_BASE = 0x6810
    GUEST_LDTR_BASE = 0x6812
    GUEST_TR_BASE = 0x6814
    GUEST_GDTR_BASE = 0x6816
    GUEST_IDTR_BASE = 0x6818
    GUEST_DR7 = 0x681A
    GUEST_RSP = 0x681C
    GUEST_RIP = 0x681E
    GUEST_RFLAGS = 0x6820
    GUEST_PENDING_DBG_EXCEPTIONS = 0x6822
    GUEST_SYSENTER_ESP = 0x6824
    GUEST_SYSENTER_EIP = 0x6826
    # --- B.4.4 natural-width host-state fields
    HOST_CR0 = 0x6C00
    HOST_CR3 = 0x6C02
    HOST_CR4 = 0x6C04
    HOST_FS_BASE = 0x6C06
    HOST_GS_BASE = 0x6C08
    HOST_TR_BASE = 0x6C0A
    HOST_GDTR_BASE = 0x6C0C
    HOST_IDTR_BASE = 0x6C0E
    HOST_IA32_SYSENTER_ESP = 0x6C10
    HOST_IA32_SYSENTER_EIP = 0x6C12
    HOST_RSP = 0x6C14
    HOST_RIP = 0x6C16

    # -- properties derived from the encoding bits (never tabulated by hand)
    @property
    def width(self) -> Width:
        return encoding_width(self)

    @property
    def bits(self) -> int:
        """Storage width in bits in this model (natural width = ``NATURAL_BITS``)."""
        return encoding_width(self).bits

    @property
    def type(self) -> FieldType:
        return encoding_type(self)

    @property
    def index(self) -> int:
        return encoding_index(self)

    @property
    def read_only(self) -> bool:
        """VM-exit information fields cannot be VMWRITten (IA32_VMX_MISC bit 29 = 0 here)."""
        return encoding_type(self) is FieldType.EXIT_INFO

    @property
    def is_high(self) -> bool:
        return encoding_is_high(self)

    @property
    def high(self) -> int:
        """The "high" encoding of a 64-bit field (its upper 32 bits)."""
        return high(self)

    @property
    def title(self) -> str:
        return self.name


def high(field: Field | int) -> int:
    """Encoding with access type "high" for a 64-bit field: ``field | 1``."""
    if encoding_width(field) is not Width.BITS64:
        raise ValueError(f"{field:#06x} is not a 64-bit field: it has no high half")
    return int(field) | 1


class VmInstructionError(enum.IntEnum):
    """VM-instruction error numbers, SDM vol. 3 §31.4 (Table 31-1); Linux ``VMXERR_*``.

    14, 21 and 27 are not assigned.
    """

    VMCALL_IN_VMX_ROOT_OPERATION = 1
    VMCLEAR_INVALID_ADDRESS = 2
    VMCLEAR_VMXON_POINTER = 3
    VMLAUNCH_NONCLEAR_VMCS = 4
    VMRESUME_NONLAUNCHED_VMCS = 5
    VMRESUME_AFTER_VMXOFF = 6
    ENTRY_INVALID_CONTROL_FIELD = 7
    ENTRY_INVALID_HOST_STATE_FIELD = 8
    VMPTRLD_INVALID_ADDRESS = 9
    VMPTRLD_VMXON_POINTER = 10
    VMPTRLD_INCORRECT_VMCS_REVISION_ID = 11
    UNSUPPORTED_VMCS_COMPONENT = 12
    VMWRITE_READ_ONLY_VMCS_COMPONENT = 13
    VMXON_IN_VMX_ROOT_OPERATION = 15
    ENTRY_INVALID_EXECUTIVE_VMCS_POINTER = 16
    ENTRY_NONLAUNCHED_EXECUTIVE_VMCS = 17
    ENTRY_EXECUTIVE_VMCS_POINTER_NOT_VMXON_POINTER = 18
    VMCALL_NONCLEAR_VMCS = 19
    VMCALL_INVALID_VM_EXIT_CONTROL_FIELDS = 20
    VMCALL_INCORRECT_MSEG_REVISION_ID = 22
    VMXOFF_UNDER_DUAL_MONITOR_TREATMENT_OF_SMIS_AND_SMM = 23
    VMCALL_INVALID_SMM_MONITOR_FEATURES = 24
    ENTRY_INVALID_VM_EXECUTION_CONTROL_FIELDS_IN_EXECUTIVE_VMCS = 25
    ENTRY_EVENTS_BLOCKED_BY_MOV_SS = 26
    INVALID_OPERAND_TO_INVEPT_INVVPID = 28

    @property
    def description(self) -> str:
        return _VMERR_TEXT[self]


_VMERR_TEXT = {
    VmInstructionError.VMCALL_IN_VMX_ROOT_OPERATION: "VMCALL executed in VMX root operation",
    VmInstructionError.VMCLEAR_INVALID_ADDRESS: "VMCLEAR with invalid physical address",
    VmInstructionError.VMCLEAR_VMXON_POINTER: "VMCLEAR with VMXON pointer",
    VmInstructionError.VMLAUNCH_NONCLEAR_VMCS: "VMLAUNCH with non-clear VMCS",
    VmInstructionError.VMRESUME_NONLAUNCHED_VMCS: "VMRESUME with non-launched VMCS",
    VmInstructionError.VMRESUME_AFTER_VMXOFF: "VMRESUME after VMXOFF (VMXOFF and VMXON between VMLAUNCH and VMRESUME)",
    VmInstructionError.ENTRY_INVALID_CONTROL_FIELD: "VM entry with invalid control field(s)",
    VmInstructionError.ENTRY_INVALID_HOST_STATE_FIELD: "VM entry with invalid host-state field(s)",
    VmInstructionError.VMPTRLD_INVALID_ADDRESS: "VMPTRLD with invalid physical address",
    VmInstructionError.VMPTRLD_VMXON_POINTER: "VMPTRLD with VMXON pointer",
    VmInstructionError.VMPTRLD_INCORRECT_VMCS_REVISION_ID: "VMPTRLD with incorrect VMCS revision identifier",
    VmInstructionError.UNSUPPORTED_VMCS_COMPONENT: "VMREAD/VMWRITE from/to unsupported VMCS component",
    VmInstructionError.VMWRITE_READ_ONLY_VMCS_COMPONENT: "VMWRITE to read-only VMCS component",
    VmInstructionError.VMXON_IN_VMX_ROOT_OPERATION: "VMXON executed in VMX root operation",
    VmInstructionError.ENTRY_INVALID_EXECUTIVE_VMCS_POINTER: "VM entry with invalid executive-VMCS pointer",
    VmInstructionError.ENTRY_NONLAUNCHED_EXECUTIVE_VMCS: "VM entry with non-launched executive VMCS",
    VmInstructionError.ENTRY_EXECUTIVE_VMCS_POINTER_NOT_VMXON_POINTER:
        "VM entry with executive-VMCS pointer not VMXON pointer",
    VmInstructionError.VMCALL_NONCLEAR_VMCS: "VMCALL with non-clear VMCS",
    VmInstructionError.VMCALL_INVALID_VM_EXIT_CONTROL_FIELDS: "VMCALL with invalid VM-exit control fields",
    VmInstructionError.VMCALL_INCORRECT_MSEG_REVISION_ID: "VMCALL with incorrect MSEG revision identifier",
    VmInstructionError.VMXOFF_UNDER_DUAL_MONITOR_TREATMENT_OF_SMIS_AND_SMM:
        "VMXOFF under dual-monitor treatment of SMIs and SMM",
    VmInstructionError.VMCALL_INVALID_SMM_MONITOR_FEATURES: "VMCALL with invalid SMM-monitor features",
    VmInstructionError.ENTRY_INVALID_VM_EXECUTION_CONTROL_FIELDS_IN_EXECUTIVE_VMCS:
        "VM entry with invalid VM-execution control fields in executive VMCS",
    VmInstructionError.ENTRY_EVENTS_BLOCKED_BY_MOV_SS: "VM entry with events blocked by MOV SS",
    VmInstructionError.INVALID_OPERAND_TO_INVEPT_INVVPID: "Invalid operand to INVEPT/INVVPID",
}


class VmxInstructionError(Exception):
    """A VMX instruction failed with VMfailValid and this VM-instruction error number."""

    def __init__(self, error: VmInstructionError, detail: str = ""):
        self.error = VmInstructionError(error)
        msg = f"VM-instruction error {int(self.error)} ({self.error.description})"
        super().__init__(f"{msg}: {detail}" if detail else msg)


_FIELDS_BY_ENCODING = {int(f): f for f in Field}

_TYPE_TITLES = {
    FieldType.CONTROL: "control fields",
    FieldType.EXIT_INFO: "VM-exit information fields",
    FieldType.GUEST: "guest-state fields",
    FieldType.HOST: "host-state fields",
}


_BITS = {f: f.bits for f in Field}


def lookup(encoding: int) -> tuple[Field, bool]:
    """Resolve an encoding to (field, high-half access); error 12 if unsupported."""
    if isinstance(encoding, Field):
        return encoding, False
    enc = int(encoding)
    if enc < 0 or enc & _RESERVED_BITS:
        raise VmxInstructionError(VmInstructionError.UNSUPPORTED_VMCS_COMPONENT, f"encoding {enc:#x}")
    hi = bool(enc & 1)
    field = _FIELDS_BY_ENCODING.get(enc & ~1)
    if field is None or (hi and field.width is not Width.BITS64):
        raise VmxInstructionError(VmInstructionError.UNSUPPORTED_VMCS_COMPONENT, f"encoding {enc:#06x}")
    return field, hi


class Vmcs:
    """The current VMCS as VMREAD / VMWRITE see it.

    ``write`` behaves like VMWRITE: an unsupported encoding fails with error 12, a
    VM-exit information field with error 13; a value wider than the field has its high
    bits ignored (SDM: "the high bits of the source operand are ignored"), unless the
    store is ``strict``, in which case that VMM bug raises ``ValueError``.
    ``set_exit_info`` is the processor's own path: it fills any field, read-only ones
    included. Fields never written read as 0.
    """

    def __init__(self, revision_id: int = 1, *, strict: bool = False):
        self.revision_id = revision_id
        self.strict = strict
        self.launched = False
        self._values: dict[Field, int] = {}

    # -- VMREAD / VMWRITE
    def read(self, encoding: Field | int) -> int:
        field, hi = lookup(encoding)
        value = self._values.get(field, 0)
        return (value >> 32) if hi else value

    def write(self, encoding: Field | int, value: int) -> None:
        field, hi = lookup(encoding)
        if field.read_only:
            raise VmxInstructionError(VmInstructionError.VMWRITE_READ_ONLY_VMCS_COMPONENT, field.name)
        self._store(field, hi, value)

    def set_exit_info(self, encoding: Field | int, value: int) -> None:
        """Processor-side write (VM exit): allowed on read-only fields."""
        field, hi = lookup(encoding)
        self._store(field, hi, value)

    def peek(self, field: Field) -> int:
        """Read a field given as a :class:`Field` member, without decoding the encoding
        (the controls and entry fields the exit hot path consults)."""
        return self._values.get(field, 0)

    def vpid_enabled(self) -> bool:
        """Secondary controls active, "enable VPID" set and a non-zero VPID: VM entries
        keep the TLB (SDM §28.3.3.1). Checked at every VM entry, in one lookup each."""
        v = self._values
        return bool(v.get(Field.CPU_BASED_VM_EXEC_CONTROL, 0) & _ACTIVATE_SECONDARY
                    and v.get(Field.SECONDARY_VM_EXEC_CONTROL, 0) & _ENABLE_VPID
                    and v.get(Field.VIRTUAL_PROCESSOR_ID, 0))

    def record_exit(self, reason: int, qualification: int, length: int, linear: int, intr_info: int,
                    intr_error: int, vectoring: int, vectoring_error: int) -> None:
        """The processor's VM-exit write of the exit-information fields, in one step (the
        hot path of every exit: no per-field lookups)."""
        v = self._values
        v[Field.VM_EXIT_REASON] = reason & 0xFFFFFFFF
        v[Field.EXIT_QUALIFICATION] = qualification & 0xFFFFFFFF
        v[Field.VM_EXIT_INSTRUCTION_LEN] = length
        v[Field.GUEST_LINEAR_ADDRESS] = linear & 0xFFFFFFFF
        v[Field.VM_EXIT_INTR_INFO] = intr_info
        v[Field.VM_EXIT_INTR_ERROR_CODE] = intr_error & 0xFFFFFFFF
        v[Field.IDT_VECTORING_INFO_FIELD] = vectoring
        v[Field.IDT_VECTORING_ERROR_CODE] = vectoring_error & 0xFFFFFFFF

    def _store(self, field: Field, hi: bool, value: int) -> None:
        value = int(value)
        if value < 0:
            raise ValueError(f"{field.name}: negative value {value}")
        bits = 32 if hi else _BITS[field]
        if self.strict and value >> bits:
            raise ValueError(f"{field.name}{' (high)' if hi else ''}: {value:#x} does not fit in {bits} bits")
        value &= (1 << bits) - 1
        if hi:
            value = (value << 32) | (self._values.get(field, 0) & 0xFFFF_FFFF)
        self._values[field] = value

    # -- whole-VMCS helpers
    def clear(self) -> None:
        """VMCLEAR: launch state "clear"; the modeled data are zeroed too."""
        self._values.clear()
        self.launched = False

    def __getitem__(self, field: Field | int) -> int:
        return self.read(field)

    def __setitem__(self, field: Field | int, value: int) -> None:
        self.write(field, value)

    def __contains__(self, field: object) -> bool:
        return field in self._values

    def items(self) -> Iterator[tuple[Field, int]]:
        return iter(sorted(self._values.items()))

    def dump(self, all_fields: bool = False) -> list[str]:
        """Readable lines ``NAME = 0x...`` grouped by field type, for error reports.

        Only fields that have been written, unless ``all_fields``.
        """
        lines: list[str] = []
        for ftype in FieldType:
            fields = [f for f in Field if f.type is ftype and (all_fields or f in self._values)]
            if not fields:
                continue
            lines.append(f"{_TYPE_TITLES[ftype]}:")
            for f in fields:
                digits = max(4, f.bits // 4)
                lines.append(f"  {f.name} = {self._values.get(f, 0):#0{digits + 2}x}")
        return lines
