"""The x86 vocabulary against the SDM's own numbers."""
from __future__ import annotations

import ast
import pathlib
import struct

import pytest

from vmm import x86
from vmm.x86 import (
    CR0,
    CR4,
    EFER,
    EFLAGS,
    EPTE,
    MSR,
    PTE,
    XCR0,
    Access,
    Descriptor,
    EptViolationBits,
    EptViolationQualification,
    Gate,
    MemoryType,
    PFError,
    SystemType,
    Vector,
)
from vmm.x86.paging import CR3_PDPT_MASK_PAE, CR3_PML4_MASK, INDEX_MASK_32, INDEX_MASK_64, frame_mask
from vmm.x86.segments import tss32_stack_slot

PACKAGE = pathlib.Path(x86.__file__).parent


def test_exception_vectors_are_table_6_1():
    expected = {"DE": 0, "DB": 1, "NMI": 2, "BP": 3, "OF": 4, "BR": 5, "UD": 6, "NM": 7, "DF": 8, "TS": 10,
                "NP": 11, "SS": 12, "GP": 13, "PF": 14, "MF": 16, "AC": 17, "MC": 18, "XM": 19, "VE": 20, "CP": 21}
    assert {name: Vector[name].value for name in expected} == expected
    assert Vector.PF.mnemonic == "#PF" and Vector.NMI.mnemonic == "NMI"
    assert x86.vector_name(13) == "#GP" and x86.vector_name(0x80) == "vector 0x80"


def test_error_code_and_contributory_classes():
    assert x86.HAS_ERROR_CODE == {8, 10, 11, 12, 13, 14, 17, 21}
    assert x86.CONTRIBUTORY == {0, 10, 11, 12, 13}


def test_control_register_bits():
    assert CR0.PE == 1 and CR0.WP == 1 << 16 and CR0.PG == 1 << 31 and CR0.NE == 1 << 5
    assert CR0.CD == 1 << 30 and CR0.NW == 1 << 29 and CR0.TS == 1 << 3
    assert CR4.PSE == 1 << 4 and CR4.PAE == 1 << 5 and CR4.PGE == 1 << 7 and CR4.VMXE == 1 << 13
    assert CR4.SMEP == 1 << 20 and CR4.SMAP == 1 << 21 and CR4.OSXSAVE == 1 << 18 and CR4.LA57 == 1 << 12
    assert EFER.SCE == 1 and EFER.LME == 1 << 8 and EFER.LMA == 1 << 10 and EFER.NXE == 1 << 11
    assert XCR0.X87 == 1 and XCR0.SSE == 2 and XCR0.AVX == 4 and XCR0.PKRU == 1 << 9


def test_eflags_bits_and_no_clash_with_vectors():
    assert (EFLAGS.CF, EFLAGS.PF, EFLAGS.AF, EFLAGS.ZF, EFLAGS.SF) == (1, 4, 0x10, 0x40, 0x80)
    assert (EFLAGS.TF, EFLAGS.IF, EFLAGS.DF, EFLAGS.OF) == (0x100, 0x200, 0x400, 0x800)
    assert EFLAGS.IOPL == 0x3000 and EFLAGS.NT == 1 << 14 and EFLAGS.RF == 1 << 16 and EFLAGS.VM == 1 << 17
    assert EFLAGS.AC == 1 << 18 and EFLAGS.ID == 1 << 21
    # the same letters, two different things, never the same name
    assert EFLAGS.PF is not Vector.PF and type(EFLAGS.PF) is not type(Vector.PF)


def test_flag_operators_are_plain_ints():
    combined = CR0.PE | CR0.PG
    assert type(combined) is int and combined == 0x80000001
    assert ~EFER.NXE == -(1 << 11) - 1                       # a true NOT: undeclared bits survive
    assert (0xFFFF_FFFF_FFFF_FFFF & ~PTE.XD) == (1 << 63) - 1
    assert repr(CR0(0x80000011)) == "<CR0.PE|ET|PG: 2147483665>"


def test_paging_entry_bits_and_masks():
    assert (PTE.P, PTE.RW, PTE.US, PTE.PWT, PTE.PCD, PTE.A, PTE.D, PTE.PS, PTE.G) == \
        (1, 2, 4, 8, 0x10, 0x20, 0x40, 0x80, 0x100)
    assert PTE.PAT_LARGE == 1 << 12 and PTE.XD == 1 << 63
    assert (PFError.P, PFError.WR, PFError.US, PFError.RSVD, PFError.ID) == (1, 2, 4, 8, 16)
    assert x86.PAGE_SIZE == 4096 and x86.PAGE_MASK == 0xFFFFF000 and x86.PAGE_OFFSET_MASK == 0xFFF
    assert INDEX_MASK_32 == 0x3FF and INDEX_MASK_64 == 0x1FF
    assert CR3_PDPT_MASK_PAE == 0xFFFFFFE0 and CR3_PML4_MASK == 0x000FFFFFFFFFF000
    assert frame_mask(36) == 0xFFFFFF000 and frame_mask(52) == 0x000FFFFFFFFFF000


def test_ept_bits_and_memory_types():
    assert (EPTE.R, EPTE.W, EPTE.X, EPTE.IGNORE_PAT, EPTE.LARGE, EPTE.A, EPTE.D) == (1, 2, 4, 64, 128, 256, 512)
    assert EPTE.SUPPRESS_VE == 1 << 63 and x86.EPT_RWX == 7 and x86.EPT_MEMTYPE_MASK == 0x38
    assert (MemoryType.UC, MemoryType.WC, MemoryType.WT, MemoryType.WP, MemoryType.WB) == (0, 1, 4, 5, 6)


def test_ept_violation_qualification_is_table_28_7():
    assert EptViolationBits.LINEAR_VALID == 1 << 7 and EptViolationBits.TRANSLATED == 1 << 8
    q = EptViolationQualification(write=True, readable=True, executable=True, linear_valid=True, translated=True)
    assert q.encode() == 0x1AA
    assert EptViolationQualification.decode(0x1AA) == q
    assert EptViolationQualification(read=True, linear_valid=True).encode() == 0x81


def test_msr_numbers_are_volume_4_table_2_2():
    assert MSR.TSC == 0x10 and MSR.APIC_BASE == 0x1B and MSR.FEATURE_CONTROL == 0x3A and MSR.TSC_ADJUST == 0x3B
    assert (MSR.SYSENTER_CS, MSR.SYSENTER_ESP, MSR.SYSENTER_EIP) == (0x174, 0x175, 0x176)
    assert MSR.MISC_ENABLE == 0x1A0 and MSR.PAT == 0x277 and MSR.MTRRCAP == 0xFE and MSR.MTRR_DEF_TYPE == 0x2FF
    assert MSR.TSC_DEADLINE == 0x6E0 and MSR.VMX_BASIC == 0x480 and MSR.VMX_EPT_VPID_CAP == 0x48C
    assert MSR.EFER == 0xC0000080 and MSR.STAR == 0xC0000081 and MSR.LSTAR == 0xC0000082
    assert MSR.CSTAR == 0xC0000083 and MSR.FMASK == 0xC0000084
    assert (MSR.FS_BASE, MSR.GS_BASE, MSR.KERNEL_GS_BASE) == (0xC0000100, 0xC0000101, 0xC0000102)
    assert x86.PAT_POWER_ON == 0x0007040600070406


def test_flat_descriptors():
    assert x86.flat_descriptor(x86.CODE_RING0) == 0x00CF9A000000FFFF
    assert x86.flat_descriptor(x86.DATA_RING0) == 0x00CF92000000FFFF
    assert x86.flat_descriptor(x86.CODE_RING3) == 0x00CFFA000000FFFF
    assert x86.flat_descriptor(x86.DATA_RING3) == 0x00CFF2000000FFFF


def test_descriptor_round_trip():
    value = x86.encode_descriptor(0x12345678, 0x67, SystemType.TSS32_AVAILABLE | Access.P, 0)
    lo, hi = struct.unpack("<II", struct.pack("<Q", value))
    d = Descriptor.parse(lo, hi)
    assert (d.base, d.limit, d.present, d.system, d.dpl) == (0x12345678, 0x67, True, True, 0)
    code = Descriptor.parse(*struct.unpack("<II", struct.pack("<Q", x86.flat_descriptor(x86.CODE_RING3))))
    assert code.limit == 0xFFFFFFFF and code.code and code.dpl == 3 and not code.conforming


def test_gates_and_tss():
    value = x86.encode_gate(0x08, 0xC0101234, SystemType.TRAP_GATE32, dpl=3)
    assert value == 0xC010EF0000081234
    lo, hi = value & 0xFFFFFFFF, value >> 32
    assert Gate.parse(lo, hi) == Gate(0x08, 0xC0101234, SystemType.TRAP_GATE32, 3, True)
    assert SystemType.INTERRUPT_GATE32 == 0xE and SystemType.TRAP_GATE32 == 0xF
    assert tss32_stack_slot(0) == 4 and tss32_stack_slot(1) == 12 and tss32_stack_slot(2) == 20


@pytest.mark.parametrize("path", sorted(PACKAGE.glob("*.py")), ids=lambda p: p.name)
def test_the_vocabulary_stands_alone(path):
    """No Unicorn, no other vmm package: every layer may import the vocabulary."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                assert node.level == 1, f"{path.name} reaches outside vmm.x86"
                continue
            names = [node.module or ""]
        else:
            continue
        for name in names:
            assert not name.startswith(("unicorn", "vmm")), f"{path.name} imports {name}"


def test_ept_violation_qualification_matches_the_vmx_layout():
    """vmx/qualification.py names the vocabulary's one class for Table 28-7."""
    from vmm.vmx.qualification import EptViolation as VmxQualification

    assert VmxQualification is EptViolationQualification

    names = [f for f in EptViolationQualification.__dataclass_fields__]
    for bit, name in enumerate(names):
        one = {name: True}
        assert EptViolationQualification(**one).encode() == VmxQualification(**one).encode(), (bit, name)
    every = dict.fromkeys(names, True)
    assert EptViolationQualification(**every).encode() == VmxQualification(**every).encode() == 0x11BF
