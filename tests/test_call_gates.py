"""A far CALL from ring 3 through a call gate to ring 0 (vmm.cpu.callgate): the inner
stack from the TSS, the parameters copied, the outer SS:ESP and CS:EIP on the new stack,
and the far RET back out; and a refused gate (DPL below CPL: #GP). The same guest runs
in every mode that models the TSS and under QEMU; the output must be the same."""
from __future__ import annotations

import pytest

from conftest import SHOW_MACRO, build_kernel, run_kernel, run_kernel_in_qemu
from tools.machines import qemu_command
from vmm.vm import StopKind

MODES = ("native", "bt", "vtx", "vtx-ept")

GUEST = f"""%include "kernel.inc"
{SHOW_MACRO}
%macro CALL_FAR 2
    .byte 0x9a
    .long %2
    .word %1
%endmacro
%define GATE_SEL  0x30
%define LOW_GATE  0x38

kmain:
    mov esi, gdt
    mov edi, gdt2
    mov ecx, 12
copy_gdt:
    mov eax, dword ptr [esi]
    mov dword ptr [edi], eax
    add esi, 4
    add edi, 4
    loop copy_gdt
    // The call gate: KERNEL_CS:gate_target, DPL 3, 32-bit, two parameters.
    mov eax, gate_target
    mov ecx, eax
    and ecx, 0xffff
    or ecx, KERNEL_CS << 16
    mov dword ptr [gdt2 + GATE_SEL], ecx
    and eax, 0xffff0000
    or eax, 0xec02
    mov dword ptr [gdt2 + GATE_SEL + 4], eax
    // The same gate at DPL 0: ring 3 may not use it.
    mov dword ptr [gdt2 + LOW_GATE], ecx
    and eax, 0xffff0000
    or eax, 0x8c02
    mov dword ptr [gdt2 + LOW_GATE + 4], eax
    LGDT_M gdtr2
    SET_HANDLER 0x80, back_in_kernel
    SET_GATE 0x80, GATE_INT_USER
    SET_HANDLER VEC_GP, gp_handler
    push USER_DS
    mov eax, user_stack_top
    push eax
    push 0x2
    push USER_CS
    mov eax, user_code
    push eax
    mov edx, USER_DS
    mov ds, edx
    mov es, edx
    iretd

user_code:
    mov dword ptr [user_esp_before], esp
    push 0x11111111
    push 0x22222222
    CALL_FAR GATE_SEL | 3, 0
    mov dword ptr [user_esp_after], esp
    mov eax, cs
    mov dword ptr [cpl_after], eax
    CALL_FAR LOW_GATE | 3, 0
    int 0x80

gate_target:
    mov eax, cs
    mov dword ptr [gate_cs], eax
    mov eax, ss
    mov dword ptr [gate_ss], eax
    mov eax, dword ptr [esp + 8]
    mov dword ptr [param0], eax
    mov eax, dword ptr [esp + 12]
    mov dword ptr [param1], eax
    mov eax, dword ptr [esp + 16]
    mov dword ptr [outer_esp], eax
    mov eax, dword ptr [esp + 20]
    mov dword ptr [outer_ss], eax
    mov eax, dword ptr [esp + 4]
    mov dword ptr [outer_cs], eax
    mov dword ptr [inner_esp], esp
    retf 8

gp_handler:
    mov eax, dword ptr [ebx + F_ERROR]
    mov dword ptr [gp_error], eax
    mov eax, dword ptr [ebx + F_EIP]
    add eax, 7                          // past the CALL_FAR
    mov dword ptr [ebx + F_EIP], eax
    ret

back_in_kernel:
    mov eax, dword ptr [gate_cs]
    SHOW "CS in the gate's procedure: "
    mov eax, dword ptr [gate_ss]
    SHOW "SS there (the TSS's SS0): "
    mov eax, dword ptr [param0]
    SHOW "first parameter: "
    mov eax, dword ptr [param1]
    SHOW "second parameter: "
    mov eax, dword ptr [outer_cs]
    SHOW "caller's CS on the inner stack: "
    mov eax, dword ptr [outer_ss]
    SHOW "caller's SS: "
    mov eax, dword ptr [user_esp_before]
    sub eax, dword ptr [outer_esp]
    SHOW "caller's ESP, below the user stack top by: "
    mov eax, kernel_stack_top
    sub eax, dword ptr [inner_esp]
    SHOW "inner stack used: "
    mov eax, dword ptr [user_esp_before]
    sub eax, dword ptr [user_esp_after]
    SHOW "user stack after RETF 8 (parameters popped): "
    mov eax, dword ptr [cpl_after]
    SHOW "CS after the return: "
    mov eax, dword ptr [gp_error]
    SHOW "#GP error code for the DPL-0 gate: "
    EXIT EXIT_OK

    .balign 8
gdt2:
    .long 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0
gdtr2:
    .word 0x3f
    .long gdt2
    .balign 4
user_esp_before: .long 0
user_esp_after: .long 0
cpl_after: .long 0
gate_cs: .long 0
gate_ss: .long 0
param0: .long 0
param1: .long 0
outer_esp: .long 0
outer_ss: .long 0
outer_cs: .long 0
inner_esp: .long 0
gp_error: .long 0
    .balign 16
user_stack: .space 1024
user_stack_top:
%include "kernel_bss.inc"
"""
EXPECTED = b"""CS in the gate's procedure: 0x00000008
SS there (the TSS's SS0): 0x00000010
first parameter: 0x22222222
second parameter: 0x11111111
caller's CS on the inner stack: 0x0000001b
caller's SS: 0x00000023
caller's ESP, below the user stack top by: 0x00000008
inner stack used: 0x00000018
user stack after RETF 8 (parameters popped): 0x00000000
CS after the return: 0x0000001b
#GP error code for the DPL-0 gate: 0x00000038
"""


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> bytes:
    return build_kernel(tmp_path_factory.mktemp("callgate"), "callgate", GUEST)


@pytest.mark.parametrize("mode", MODES)
def test_call_gate_to_ring_0(mode, image):
    result, out = run_kernel(image, mode)
    assert result.kind is StopKind.EXIT, result.message
    assert out.decode() == EXPECTED.decode()


@pytest.mark.qemu
def test_qemu_agrees(image, tmp_path):
    out, status = run_kernel_in_qemu(image, tmp_path, qemu_command)
    assert out.decode() == EXPECTED.decode() and status == 1
