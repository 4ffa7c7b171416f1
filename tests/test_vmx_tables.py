"""VMX architectural tables: VMCS encodings, the VMCS store, controls, qualifications."""
from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from vmm.vmx import controls as C
from vmm.vmx import qualification as Q
from vmm.vmx.vmcs import (Field, FieldType, VmInstructionError, Vmcs, VmxInstructionError, Width, high,
                          lookup)

# --- VMCS field encodings -----------------------------------------------------------
# (name, encoding) as SDM vol. 3 Appendix B and Linux asm/vmx.h list them.
KNOWN = {
    "VIRTUAL_PROCESSOR_ID": 0x0000, "GUEST_ES_SELECTOR": 0x0800, "GUEST_TR_SELECTOR": 0x080E,
    "HOST_CS_SELECTOR": 0x0C02, "HOST_TR_SELECTOR": 0x0C0C,
    "IO_BITMAP_A": 0x2000, "IO_BITMAP_B": 0x2002, "MSR_BITMAP": 0x2004, "TSC_OFFSET": 0x2010,
    "EPT_POINTER": 0x201A, "GUEST_PHYSICAL_ADDRESS": 0x2400, "VMCS_LINK_POINTER": 0x2800,
    "GUEST_IA32_EFER": 0x2806, "GUEST_PDPTR3": 0x2810, "HOST_IA32_EFER": 0x2C02,
    "PIN_BASED_VM_EXEC_CONTROL": 0x4000, "CPU_BASED_VM_EXEC_CONTROL": 0x4002,
    "EXCEPTION_BITMAP": 0x4004, "PAGE_FAULT_ERROR_CODE_MASK": 0x4006,
    "PAGE_FAULT_ERROR_CODE_MATCH": 0x4008, "CR3_TARGET_COUNT": 0x400A, "VM_EXIT_CONTROLS": 0x400C,
    "VM_ENTRY_CONTROLS": 0x4012, "VM_ENTRY_INTR_INFO_FIELD": 0x4016,
    "VM_ENTRY_EXCEPTION_ERROR_CODE": 0x4018, "VM_ENTRY_INSTRUCTION_LEN": 0x401A,
    "SECONDARY_VM_EXEC_CONTROL": 0x401E, "VM_INSTRUCTION_ERROR": 0x4400, "VM_EXIT_REASON": 0x4402,
    "VM_EXIT_INTR_INFO": 0x4404, "VM_EXIT_INTR_ERROR_CODE": 0x4406, "IDT_VECTORING_INFO_FIELD": 0x4408,
    "IDT_VECTORING_ERROR_CODE": 0x440A, "VM_EXIT_INSTRUCTION_LEN": 0x440C, "VMX_INSTRUCTION_INFO": 0x440E,
    "GUEST_ES_LIMIT": 0x4800, "GUEST_IDTR_LIMIT": 0x4812, "GUEST_ES_AR_BYTES": 0x4814,
    "GUEST_TR_AR_BYTES": 0x4822, "GUEST_INTERRUPTIBILITY_INFO": 0x4824, "GUEST_ACTIVITY_STATE": 0x4826,
    "GUEST_SYSENTER_CS": 0x482A, "VMX_PREEMPTION_TIMER_VALUE": 0x482E, "HOST_IA32_SYSENTER_CS": 0x4C00,
    "CR0_GUEST_HOST_MASK": 0x6000, "CR4_GUEST_HOST_MASK": 0x6002, "CR0_READ_SHADOW": 0x6004,
    "CR4_READ_SHADOW": 0x6006, "CR3_TARGET_VALUE0": 0x6008, "CR3_TARGET_VALUE3": 0x600E,
    "EXIT_QUALIFICATION": 0x6400, "GUEST_LINEAR_ADDRESS": 0x640A, "GUEST_CR0": 0x6800,
    "GUEST_CR3": 0x6802, "GUEST_CR4": 0x6804, "GUEST_ES_BASE": 0x6806, "GUEST_GDTR_BASE": 0x6816,
    "GUEST_IDTR_BASE": 0x6818, "GUEST_DR7": 0x681A, "GUEST_RSP": 0x681C, "GUEST_RIP": 0x681E,
    "GUEST_RFLAGS": 0x6820, "GUEST_PENDING_DBG_EXCEPTIONS": 0x6822, "HOST_CR0": 0x6C00,
    "HOST_CR3": 0x6C02, "HOST_CR4": 0x6C04, "HOST_GDTR_BASE": 0x6C0C, "HOST_RSP": 0x6C14,
    "HOST_RIP": 0x6C16,
}


@pytest.mark.parametrize("name,encoding", sorted(KNOWN.items()))
def test_known_encodings(name, encoding):
    assert Field[name] == encoding


def test_encodings_are_well_formed():
    for f in Field:
        assert f & 1 == 0, f.name                      # full access type
        assert f & 0xFFFF_9000 == 0, f.name           # reserved bits 12 and 31:15
    assert len(set(Field)) == len(list(Field))        # no aliases


@pytest.mark.parametrize("field,width,bits,ftype", [
    (Field.VIRTUAL_PROCESSOR_ID, Width.BITS16, 16, FieldType.CONTROL),
    (Field.GUEST_CS_SELECTOR, Width.BITS16, 16, FieldType.GUEST),
    (Field.HOST_TR_SELECTOR, Width.BITS16, 16, FieldType.HOST),
    (Field.EPT_POINTER, Width.BITS64, 64, FieldType.CONTROL),
    (Field.GUEST_PHYSICAL_ADDRESS, Width.BITS64, 64, FieldType.EXIT_INFO),
    (Field.VMCS_LINK_POINTER, Width.BITS64, 64, FieldType.GUEST),
    (Field.HOST_IA32_EFER, Width.BITS64, 64, FieldType.HOST),
    (Field.CPU_BASED_VM_EXEC_CONTROL, Width.BITS32, 32, FieldType.CONTROL),
    (Field.VM_EXIT_REASON, Width.BITS32, 32, FieldType.EXIT_INFO),
    (Field.GUEST_CS_AR_BYTES, Width.BITS32, 32, FieldType.GUEST),
    (Field.HOST_IA32_SYSENTER_CS, Width.BITS32, 32, FieldType.HOST),
    (Field.CR0_GUEST_HOST_MASK, Width.NATURAL, 32, FieldType.CONTROL),
    (Field.EXIT_QUALIFICATION, Width.NATURAL, 32, FieldType.EXIT_INFO),
    (Field.GUEST_RIP, Width.NATURAL, 32, FieldType.GUEST),
    (Field.HOST_RIP, Width.NATURAL, 32, FieldType.HOST),
])
def test_derived_properties(field, width, bits, ftype):
    assert field.width is width
    assert field.bits == bits
    assert field.type is ftype
    assert field.read_only == (ftype is FieldType.EXIT_INFO)
    assert not field.is_high


def test_read_only_fields_are_exactly_exit_information():
    ro = {f for f in Field if f.read_only}
    assert Field.VM_EXIT_REASON in ro and Field.EXIT_QUALIFICATION in ro and Field.GUEST_PHYSICAL_ADDRESS in ro
    assert Field.GUEST_RIP not in ro and Field.VM_ENTRY_INTR_INFO_FIELD not in ro
    assert all((f >> 10) & 3 == 1 for f in ro)


def test_instruction_error_numbers():
    assert VmInstructionError.UNSUPPORTED_VMCS_COMPONENT == 12
    assert VmInstructionError.VMWRITE_READ_ONLY_VMCS_COMPONENT == 13
    assert VmInstructionError.ENTRY_INVALID_CONTROL_FIELD == 7
    assert VmInstructionError.INVALID_OPERAND_TO_INVEPT_INVVPID == 28
    assert {14, 21, 27}.isdisjoint(int(e) for e in VmInstructionError)
    assert VmInstructionError(12).description == "VMREAD/VMWRITE from/to unsupported VMCS component"


# --- the store ------------------------------------------------------------------------
def test_vmcs_read_write_and_default_zero():
    v = Vmcs()
    assert v.read(Field.GUEST_RIP) == 0
    v.write(Field.GUEST_RIP, 0x100000)
    v[Field.EXCEPTION_BITMAP] = 1 << 14
    assert v.read(0x681E) == 0x100000
    assert v[Field.EXCEPTION_BITMAP] == 0x4000


@pytest.mark.parametrize("encoding", [0x0001, 0x0006, 0x4001, 0x6801, 0x1000, 0x8000, 0x2FFE, 0x10000])
def test_unsupported_component_is_error_12(encoding):
    v = Vmcs()
    for op in (lambda: v.read(encoding), lambda: v.write(encoding, 0)):
        with pytest.raises(VmxInstructionError) as ei:
            op()
        assert ei.value.error == 12


def test_write_read_only_is_error_13_and_set_exit_info_fills_it():
    v = Vmcs()
    with pytest.raises(VmxInstructionError) as ei:
        v.write(Field.VM_EXIT_REASON, 10)
    assert ei.value.error is VmInstructionError.VMWRITE_READ_ONLY_VMCS_COMPONENT
    with pytest.raises(VmxInstructionError) as ei:
        v.write(high(Field.GUEST_PHYSICAL_ADDRESS), 1)
    assert ei.value.error == 13
    v.set_exit_info(Field.VM_EXIT_REASON, 10)
    v.set_exit_info(Field.EXIT_QUALIFICATION, 0x3F80008)
    assert v.read(Field.VM_EXIT_REASON) == 10
    assert v.read(Field.EXIT_QUALIFICATION) == 0x3F80008


def test_width_masking_and_strict_mode():
    v = Vmcs()
    v.write(Field.GUEST_CS_SELECTOR, 0x12345)
    assert v.read(Field.GUEST_CS_SELECTOR) == 0x2345          # VMWRITE ignores high bits
    v.write(Field.GUEST_RIP, 0x1_0000_1000)
    assert v.read(Field.GUEST_RIP) == 0x1000                   # natural width = 32 here
    s = Vmcs(strict=True)
    with pytest.raises(ValueError):
        s.write(Field.GUEST_CS_SELECTOR, 0x10000)
    with pytest.raises(ValueError):
        v.write(Field.GUEST_RIP, -1)


def test_high_half_of_64_bit_field():
    v = Vmcs()
    v.write(Field.EPT_POINTER, 0x1234_5678_9ABC_D01E)
    assert v.read(Field.EPT_POINTER) == 0x1234_5678_9ABC_D01E
    assert Field.EPT_POINTER.high == 0x201B
    assert v.read(0x201B) == 0x1234_5678
    v.write(0x201B, 0xCAFE)                                    # writes bits 63:32 only
    assert v.read(Field.EPT_POINTER) == 0x0000_CAFE_9ABC_D01E
    assert lookup(0x201B) == (Field.EPT_POINTER, True)
    with pytest.raises(ValueError):
        high(Field.GUEST_RIP)
    with pytest.raises(VmxInstructionError):
        v.read(Field.GUEST_RIP | 1)


def test_dump_groups_by_type():
    v = Vmcs()
    v.write(Field.GUEST_RIP, 0x7C00)
    v.write(Field.CPU_BASED_VM_EXEC_CONTROL, 0x80)
    v.set_exit_info(Field.VM_EXIT_REASON, 12)
    lines = v.dump()
    assert lines == [
        "control fields:",
        "  CPU_BASED_VM_EXEC_CONTROL = 0x00000080",
        "VM-exit information fields:",
        "  VM_EXIT_REASON = 0x0000000c",
        "guest-state fields:",
        "  GUEST_RIP = 0x00007c00",
    ]
    assert len(v.dump(all_fields=True)) == len(Field) + 4


# --- controls ---------------------------------------------------------------------------
def test_control_bits():
    assert C.PinBased.NMI_EXITING == 1 << 3
    assert C.PrimaryProcBased.HLT_EXITING == 0x80
    assert C.PrimaryProcBased.USE_IO_BITMAPS == 1 << 25
    assert C.PrimaryProcBased.ACTIVATE_SECONDARY_CONTROLS == 0x8000_0000
    assert C.SecondaryProcBased.ENABLE_EPT == 2 and C.SecondaryProcBased.ENABLE_VPID == 0x20
    assert C.SecondaryProcBased.UNRESTRICTED_GUEST == 0x80
    assert C.ExitControls.ACK_INTERRUPT_ON_EXIT == 0x8000
    assert C.EntryControls.IA32E_MODE_GUEST == 0x200 and C.EntryControls.LOAD_EFER == 0x8000


def test_msr_numbers_and_basic():
    assert C.IA32_VMX_BASIC == 0x480 and C.IA32_VMX_PROCBASED_CTLS2 == 0x48B
    assert C.IA32_VMX_TRUE_PINBASED_CTLS == 0x48D and C.IA32_VMX_TRUE_ENTRY_CTLS == 0x490
    assert C.IA32_VMX_VMFUNC == 0x491
    basic = C.vmx_basic(revision_id=0x12)
    assert basic & 0x7FFF_FFFF == 0x12
    assert (basic >> 32) & 0x1FFF == 4096
    assert (basic >> 50) & 0xF == 6
    assert basic >> 54 & 1 and basic >> 55 & 1
    assert C.capability_msrs()[0x480] == C.vmx_basic()


def test_default1_masks():
    assert C.PINBASED_DEFAULT1 == 0b10110
    assert C.TRUE_PROCBASED_DEFAULT1 == sum(1 << b for b in (1, 4, 5, 6, 8, 13, 14, 26))
    assert C.EXIT_DEFAULT1 == sum(1 << b for b in (*range(9), 10, 11, 13, 14, 16, 17))
    assert C.ENTRY_DEFAULT1 == sum(1 << b for b in (*range(9), 12))
    for cap in C.CAPABILITIES.values():
        assert cap.allowed0 & ~cap.allowed1 == 0
        assert C.Capability.from_msr(cap.name, cap.flags, cap.msr_value) == cap


def test_check_reports_must_be_one_and_must_be_zero():
    cap = C.TRUE_PROCBASED_CTLS
    good = cap.adjust(C.PrimaryProcBased.HLT_EXITING | C.PrimaryProcBased.USE_IO_BITMAPS)
    assert good & C.PrimaryProcBased.HLT_EXITING
    assert C.check(good, cap) == []
    missing = C.check(good & ~(1 << 1), cap)
    assert missing == ["primary processor-based VM-execution controls: reserved bit 1 (bit 1) must be 1"]
    extra = C.check(good | C.PrimaryProcBased.USE_TPR_SHADOW, cap)
    assert extra == ["primary processor-based VM-execution controls: USE_TPR_SHADOW (bit 21) must be 0"]
    # a made-up capability that forces HLT exiting on
    forced = C.Capability("primary", C.PrimaryProcBased, int(C.PrimaryProcBased.HLT_EXITING), 0xFFFF_FFFF)
    assert C.check(0, forced) == ["primary: HLT_EXITING (bit 7) must be 1"]
    # non-TRUE MSR forces CR3 exiting; the TRUE one does not
    assert C.check(good, C.PROCBASED_CTLS)[0].endswith("CR3_LOAD_EXITING (bit 15) must be 1")


def test_check_all_gates_secondary():
    pin = C.TRUE_PINBASED_CTLS.adjust(0)
    exit_ = C.TRUE_EXIT_CTLS.adjust(0)
    entry = C.TRUE_ENTRY_CTLS.adjust(0)
    primary = C.TRUE_PROCBASED_CTLS.adjust(C.PrimaryProcBased.ACTIVATE_SECONDARY_CONTROLS)
    assert C.check_all(pin, primary, exit_, entry, C.SecondaryProcBased.ENABLE_EPT) == []
    bad = C.check_all(pin, primary, exit_, entry, C.SecondaryProcBased.VIRTUALIZE_X2APIC)
    assert bad == ["secondary processor-based VM-execution controls: VIRTUALIZE_X2APIC (bit 4) must be 0"]
    no_sec = primary & ~C.PrimaryProcBased.ACTIVATE_SECONDARY_CONTROLS
    assert C.check_all(pin, no_sec, exit_, entry, C.SecondaryProcBased.VIRTUALIZE_X2APIC) == []
    assert C.check_all(pin, primary, exit_ | C.ExitControls.HOST_ADDRESS_SPACE_SIZE, entry, 0) == [
        "VM-exit controls: HOST_ADDRESS_SPACE_SIZE (bit 9) must be 0"]


# --- qualifications: round trips over the defined bits --------------------------------
def bits_strategy(mask: int):
    return st.integers(min_value=0, max_value=0xFFFF_FFFF).map(lambda x: x & mask)


CR_MASK = 0xF | 0x3 << 4 | 1 << 6 | 0xF << 8 | 0xFFFF << 16
IO_MASK = 0x78 | 0xFFFF << 16
EPT_MASK = 0b111_111 | 1 << 7 | 1 << 8 | 1 << 12
DB_MASK = 0xF | 1 << 13 | 1 << 14
TS_MASK = 0xFFFF | 3 << 30
DR_MASK = 0x7 | 1 << 4 | 0xF << 8
INTR_MASK = 0xFF | 7 << 8 | 1 << 11 | 1 << 12 | 1 << 31


@pytest.mark.parametrize("cls,mask", [
    (Q.CrAccess, CR_MASK), (Q.EptViolation, EPT_MASK), (Q.DebugException, DB_MASK),
    (Q.Invlpg, 0xFFFF_FFFF), (Q.TaskSwitch, TS_MASK), (Q.MovDr, DR_MASK), (Q.InterruptionInfo, INTR_MASK),
])
def test_round_trip(cls, mask):
    @given(bits_strategy(mask))
    def prop(x):
        decoded = cls.decode(x)
        assert decoded.encode() == x
        assert cls.decode(decoded.encode()) == decoded
        assert isinstance(decoded.describe(), str)
    prop()


@given(bits_strategy(IO_MASK), st.sampled_from([0, 1, 3]))
def test_round_trip_io(x, size_code):
    q = x | size_code
    assert Q.IoInstruction.decode(q).encode() == q


def test_io_undefined_size_rejected():
    with pytest.raises(ValueError):
        Q.IoInstruction.decode(2)
    with pytest.raises(ValueError):
        Q.IoInstruction(port=0x3F8, size=3, direction_in=False).encode()


def test_decoders_ignore_undefined_bits():
    assert Q.MovDr.decode(0xFFFF_F5FF).encode() == 0x517
    assert Q.DebugException.decode(0xFFFF_FFFF).encode() == DB_MASK


def test_encoders_reject_out_of_range():
    with pytest.raises(ValueError):
        Q.CrAccess(cr=16, access=Q.CrAccessType.MOV_TO_CR).encode()
    with pytest.raises(ValueError):
        Q.IoInstruction(port=0x10000, size=1, direction_in=True).encode()
    with pytest.raises(ValueError):
        Q.InterruptionInfo(vector=256, type=Q.InterruptionType.NMI).encode()


# --- describe() --------------------------------------------------------------------------
def test_describe_known_values():
    assert Q.CrAccess.decode(0x0003).describe() == "MOV to CR3 from EAX"
    assert Q.CrAccess.decode(0x0313).describe() == "MOV from CR3 to EBX"
    assert Q.CrAccess(0, Q.CrAccessType.MOV_TO_CR, gpr=1).encode() == 0x100
    assert Q.CrAccess.decode(0x20).describe() == "CLTS"
    assert Q.CrAccess.decode(0x0001_0030).describe() == "LMSW 0x0001 (register operand)"
    assert Q.IoInstruction.decode(0x03F8_0000).describe() == "OUT dx, 1 byte, port 0x3f8"
    assert Q.IoInstruction(port=0x3F8, size=1, direction_in=False).encode() == 0x03F8_0000
    assert Q.IoInstruction.decode(0x0060_0049).describe() == "IN imm8, 2 bytes, port 0x60"
    assert Q.IoInstruction.decode(0x03F8_0030).describe() == "REP OUTS dx, 1 byte, port 0x3f8"
    assert Q.IoInstruction.decode(0x00F4_0003).size == 4
    assert Q.MovDr.decode(0x0217).describe() == "MOV from DR7 to EDX"
    assert Q.MovDr.decode(0x0707).describe() == "MOV to DR7 from EDI"
    assert Q.Invlpg(0xC0001000).describe() == "INVLPG 0xc0001000"
    assert Q.TaskSwitch.decode(0xC000_0028).describe() == "task switch to TSS selector 0x0028 via task gate in IDT"
    assert Q.DebugException.decode(0x4005).describe() == "debug exception: B0 B2 BS"
    assert Q.EptViolation.decode(0x18A).describe() == \
        "EPT violation: write, entry r--, linear address valid, final translation"
    assert Q.EptViolation(read=True, linear_valid=True).encode() == 0x81


def test_interruption_info():
    pf = Q.InterruptionInfo.exception(14, error_code=True)
    assert pf.encode() == 0x8000_0B0E
    assert pf.describe() == "#PF (hardware exception), error code"
    assert Q.InterruptionInfo.decode(0x8000_0020).describe() == "vector 0x20 (external interrupt)"
    assert Q.InterruptionInfo.decode(0x8000_0202).type is Q.InterruptionType.NMI
    assert Q.InterruptionInfo.decode(0x8000_0480).describe() == "vector 0x80 (software interrupt)"
    assert Q.InterruptionInfo.decode(0x8000_0603).describe() == "#BP (software exception)"
    assert Q.InterruptionInfo.decode(0).describe() == "no event (invalid)"
    assert [int(t) for t in Q.InterruptionType] == list(range(8))
