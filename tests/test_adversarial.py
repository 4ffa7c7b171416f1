"""Guests that misbehave on purpose: each is contained and stopped with a reason, in every
mode available, and the VMM never raises."""
from __future__ import annotations

import pytest

from vmm.vm import StopKind

from conftest import IDT_DATA, LOAD_IDT, make_vm, set_gate

MODES = ("native", "vtx", "vtx-ept")

PIT_FASTEST = """
    mov al, 0x11; out 0x20, al; mov al, 0x20; out 0x21, al; mov al, 4; out 0x21, al; mov al, 1; out 0x21, al
    mov al, 0xfe; out 0x21, al
    mov al, 0x34; out 0x43, al; mov al, 1; out 0x40, al; mov al, 0; out 0x40, al
    sti
spin: jmp spin
"""

CASES = {
    # name: (source, expected stop kind, fragment of the message)
    "exit flood (I/O in a tight loop)": ("spin: in al, 0x80; jmp spin", StopKind.TIMEOUT, "wall-clock"),
    "CPUID flood": ("spin: cpuid; jmp spin", StopKind.TIMEOUT, "wall-clock"),
    "triple fault on purpose": ("xor ecx, ecx; div ecx", StopKind.TRIPLE_FAULT, "triple fault at EIP"),
    "PIT at the fastest rate, no IDT": (PIT_FASTEST, StopKind.TRIPLE_FAULT, "vector 0x20"),
    "garbage GDT": (".byte 0x0f,0x01,0x15; .long 0x50000; mov ax, 0x10; mov ds, ax; hlt",
                    StopKind.TRIPLE_FAULT, "#GP"),
}

# Memory with nothing behind it is QEMU's unassigned memory: reads 0, writes dropped, the
# guest goes on (tests/test_unassigned.py compares it with QEMU).
OUTSIDE = {
    # name: (source, how the run ends)
    "jump outside RAM": ("mov eax, 0xdeadbeef; jmp eax", StopKind.BUDGET),  # zeros run: add [eax], al
    "page tables outside RAM": ("mov eax, 0xfff00000; mov cr3, eax; mov eax, cr0; or eax, 0x80000000; "
                                "mov cr0, eax; nop", StopKind.TRIPLE_FAULT),  # every PDE reads 0; no IDT
}
OUTSIDE_BUDGET = 2_000


def check_outside(case: str, mode: str) -> None:
    src, kind = OUTSIDE[case]
    vm, _ = make_vm(src, mode=mode, timeout=30, max_instructions=OUTSIDE_BUDGET)
    result = vm.run()
    assert result.kind is kind, result.message
    assert result.memory["unassigned-memory reads (0 returned)"] > 0


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", sorted(OUTSIDE))
def test_memory_outside_the_guest_is_unassigned(case, mode):
    check_outside(case, mode)


@pytest.mark.parametrize("mode", MODES)
def test_the_fastest_timer_is_bounded_by_the_instruction_budget(mode):
    # With an IDT that acknowledges each tick, the guest is flooded with IRQ0 but the
    # budget still ends the run at exactly the budget.
    src = set_gate(0x20, "tick") + LOAD_IDT + "mov esp, 0x180000" + PIT_FASTEST + """
    tick:
        push eax
        mov al, 0x20
        out 0x20, al
        pop eax
        iretd
    """ + IDT_DATA
    vm, _ = make_vm(src, mode=mode, max_instructions=6_000, timeout=30)
    result = vm.run()
    assert result.kind is StopKind.BUDGET and result.instructions == 6_000
    assert result.exits.total() > 100  # the ticks kept coming
