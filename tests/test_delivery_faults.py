"""Faults raised while delivering an event, as the processor reports them: a fault while
delivering INT n is the INT instruction's, so its frame points at the INT and the INT runs
again after the handler fixed the cause. Tiny guests of our own, in every mode."""
from __future__ import annotations

import struct

import pytest

from conftest import IDT_DATA, LOAD_IDT, label_address, make_vm, set_gate
from vmm.devices.debugexit import DEBUG_EXIT_PORT
from vmm.modes import MODES
from vmm.vm import StopKind

FLAT_MODES = tuple(m for m in MODES if m != "pv")
RESULT = 0x160000
NOT_PRESENT_CODE = 0x18


def flat_descriptor(access: int) -> str:
    lo, hi = struct.unpack("<II", struct.pack("<HHBBBB", 0xFFFF, 0, 0, access, 0xCF, 0))
    return f".long {lo:#x}, {hi:#x}\n"


def not_present_gate_guest(setup: str, insn: str, vector: int) -> str:
    """A gate for ``vector`` whose code segment is not present; ``insn`` raises it
    (after ``setup``). The
    #NP handler records (error code, EIP of its frame) at RESULT + 4 and points the gate
    at the present segment; the gate's own handler counts at RESULT."""
    return (f"mov esp, 0x180000\nmov dword ptr [{RESULT:#x}], 0\n"
            ".byte 0x0f, 0x01, 0x15\n.long gdtr\n"          # lgdt [gdtr]
            ".byte 0xea\n.long reload\n.word 0x08\n"          # jmp 0x08:reload
            "reload:\nmov ax, 0x10\nmov ds, ax\nmov es, ax\nmov ss, ax\n"
            + set_gate(vector, "handler") + set_gate(11, "np") + LOAD_IDT
            + f"mov word ptr [idt + 8*{vector} + 2], {NOT_PRESENT_CODE:#x}\n"
            + f"{setup}\nraise:\n{insn}\n"
            + f"mov al, 0\nout {DEBUG_EXIT_PORT:#x}, al\n"
            + f"np:\npush eax\nmov eax, [esp + 4]\nmov dword ptr [{RESULT + 4:#x}], eax\n"
            + f"mov eax, [esp + 8]\nmov dword ptr [{RESULT + 8:#x}], eax\n"
            + f"mov word ptr [idt + 8*{vector} + 2], 0x08\npop eax\nadd esp, 4\niretd\n"
            + f"handler:\ninc dword ptr [{RESULT:#x}]\niretd\n"
            + "gdtr:\n.word 31\n.long gdt\n.align 8\ngdt:\n.long 0, 0\n"
            + flat_descriptor(0x9A) + flat_descriptor(0x92) + flat_descriptor(0x1A)   # 0x18: P=0
            + IDT_DATA)


def read_u32(vm, address: int) -> int:
    return int.from_bytes(vm.read_linear(address, 4), "little")


@pytest.mark.parametrize("mode", FLAT_MODES)
@pytest.mark.parametrize(("setup", "insn", "vector"), [
    ("", "int 0x42", 0x42),
    ("", "int3", 3),
    ("mov al, 127\nadd al, 127", ".byte 0x67, 0xce", 4),    # addr16 into, with OF set: two bytes
])
def test_a_not_present_gate_segment_faults_at_the_software_interrupt(mode, setup, insn, vector):
    src = not_present_gate_guest(setup, insn, vector)
    vm, _ = make_vm(src, mode=mode)
    result = vm.run()
    assert result.kind is StopKind.EXIT, result.message
    # #NP(selector), EXT clear (a software interrupt); the frame at the INT; the INT again
    assert read_u32(vm, RESULT + 4) == NOT_PRESENT_CODE
    assert read_u32(vm, RESULT + 8) == label_address(src, "raise")
    assert read_u32(vm, RESULT) == 1


# -- NMI: taken regardless of IF, blocked from its delivery to the handler's IRET -----------------
ICR_SELF_NMI = 1 << 18 | 4 << 8   # destination shorthand "self", delivery mode NMI
APIC = 0xFEE00000


def nested_nmi_guest() -> str:
    """A self-NMI with IF=0; its handler sends a second one, which must wait for the
    handler's IRET. Each entry appends (EIP of the frame, handler entries completed so far)
    at RESULT + 8; the count is at RESULT."""
    return (f"mov esp, 0x180000\nmov dword ptr [{RESULT:#x}], 0\nmov dword ptr [{RESULT + 4:#x}], 0\n"
            + set_gate(2, "nmi") + LOAD_IDT + f"mov dword ptr [{APIC + 0xF0:#x}], 0x1ff\n"
            + f"mov dword ptr [{APIC + 0x300:#x}], {ICR_SELF_NMI:#x}\n"
            + "after_icr:\nnop\nnop\n"
            + f"mov al, 0\nout {DEBUG_EXIT_PORT:#x}, al\n"
            + f"nmi:\npush eax\npush ebx\nmov ebx, [{RESULT:#x}]\nmov eax, [esp + 8]\n"
            + f"mov dword ptr [{RESULT + 8:#x} + ebx*8], eax\nmov eax, [{RESULT + 4:#x}]\n"
            + f"mov dword ptr [{RESULT + 12:#x} + ebx*8], eax\ninc dword ptr [{RESULT:#x}]\n"
            + f"cmp ebx, 0\njne done\nmov dword ptr [{APIC + 0x300:#x}], {ICR_SELF_NMI:#x}\n"
            + "mov ecx, 20\nspin: dec ecx\njnz spin\n"                       # still blocked here
            + f"done:\ninc dword ptr [{RESULT + 4:#x}]\npop ebx\npop eax\niretd\n"
            + IDT_DATA)


@pytest.mark.parametrize("mode", FLAT_MODES)
def test_a_second_nmi_waits_for_the_iret_of_the_first_handler(mode):
    src = nested_nmi_guest()
    vm, _ = make_vm(src, mode=mode)
    result = vm.run()
    assert result.kind is StopKind.EXIT, result.message
    after = label_address(src, "after_icr")
    log = [(read_u32(vm, RESULT + 8 + 8 * i), read_u32(vm, RESULT + 12 + 8 * i)) for i in range(read_u32(vm, RESULT))]
    assert log == [(after, 0), (after, 1)]   # IF=0 does not hold it; the second after the first IRET
