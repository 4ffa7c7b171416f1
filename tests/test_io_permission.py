"""The I/O permission check (SDM vol. 1 §19.5): at CPL > IOPL a port access is allowed
only where the TSS's I/O permission bitmap clears the bits of every port it touches,
else #GP(0) at the instruction with nothing read or written. Unicorn makes no such check
(vmm.cpu.iocheck makes it); this guest, with a bitmap that allows COM1 and port 0x80
only, runs ring-3 tasks under QEMU and every mode that has a TSS of the guest's."""
from __future__ import annotations

import pytest

from conftest import SHOW_MACRO, build_kernel, run_kernel, run_kernel_in_qemu
from tools.machines import qemu_command
from vmm.vm import StopKind

GUEST = """%include "kernel.inc"
{show}
%define IOMAP_BYTES 8192
// A TSS with an I/O permission bitmap: all ports denied but COM1 (0x3f8-0x3ff) and
// port 0x80; then one ring-3 task per check, each ending in int 0x80 back to the kernel.

gp_handler:                         // the #GP of a refused access: report it, end the task
    mov eax, dword ptr [ebx + F_ERROR]
    SHOW "  #GP, error code "
    mov eax, dword ptr [ebx + F_EIP]
    sub eax, dword ptr [task_entry]
    SHOW "  at task offset "
    mov eax, dword ptr [ebx + F_ECX]
    SHOW "  ECX "
    mov eax, dword ptr [ebx + F_ESI]
    sub eax, user_buffer
    SHOW "  ESI - buffer "
    mov eax, dword ptr [ebx + F_EAX]
    SHOW "  EAX "
    jmp back_to_kernel

done_handler:                       // int 0x80: the task ran to its end
    mov eax, dword ptr [ebx + F_EAX]
    SHOW "  finished, EAX "
back_to_kernel:
    mov esp, dword ptr [kernel_esp]
    mov eax, KERNEL_DS
    mov ds, eax
    mov es, eax
    ret

// run_task: EAX = entry, EDX = EFLAGS for it. Returns when the task ends.
run_task:
    mov dword ptr [task_entry], eax
    mov dword ptr [kernel_esp], esp
    push USER_DS
    mov ecx, user_stack_top
    push ecx
    push edx
    push USER_CS
    push eax
    mov ecx, USER_DS
    mov ds, ecx
    mov es, ecx
    iretd

task_allowed:                       // COM1 and port 0x80 are in the bitmap's clear bits
    mov dx, 0x3f8
    mov al, 0x41
    out dx, al
    mov al, 0x0a
    out dx, al
    in al, 0x80
    mov eax, 0x1234
    int 0x80
task_denied_in:
    mov eax, 0x11223344
    in al, 0x92                     // port 0x92 (A20): denied; AL keeps 0x44
    int 0x80
task_word_straddles:
    mov eax, 0x55667788
    mov dx, 0x3ff                   // 0x3ff allowed, 0x400 not: the word is refused
    in ax, dx
    int 0x80
task_denied_outs:
    mov esi, user_buffer
    mov ecx, 3
    mov dx, 0x70
    rep outsb
    int 0x80
task_denied_ins:
    mov edi, user_buffer
    mov ecx, 2
    mov dx, 0x71
    mov esi, user_buffer
    rep insb
    int 0x80

kmain:
    SET_HANDLER VEC_GP, gp_handler
    SET_HANDLER 0x80, done_handler
    SET_GATE 0x80, GATE_TRAP_USER
    // deny everything, then clear COM1's byte (ports 0x3f8-0x3ff) and port 0x80's bit
    mov edi, iomap
    mov ecx, IOMAP_BYTES + 1
deny_all:
    mov byte ptr [edi], 0xff
    inc edi
    loop deny_all
    mov byte ptr [iomap + 0x7f], 0
    and byte ptr [iomap + 0x10], 0xfe
    mov dword ptr [tss_io + TSS_SS0], KERNEL_DS
    mov dword ptr [tss_io + TSS_ESP0], kernel_stack_top
    mov eax, iomap
    sub eax, tss_io
    mov word ptr [tss_io + TSS_IOMAP], ax
    // its descriptor replaces the runtime's in the GDT: limit covers the bitmap
    mov eax, tss_io
    mov ecx, eax
    shl ecx, 16
    mov edx, iomap_end
    dec edx
    sub edx, tss_io
    or ecx, edx
    mov dword ptr [gdt_tss], ecx
    mov ecx, eax
    shr ecx, 16
    and ecx, 0xff
    and eax, 0xff000000
    or ecx, eax
    or ecx, 0x00008900
    mov dword ptr [gdt_tss + 4], ecx
    mov eax, TSS_SEL
    ltr ax
    PRINT "allowed ports, IOPL 0:\\n"
    mov eax, task_allowed
    mov edx, 0x2
    call run_task
    PRINT "denied IN:\\n"
    mov eax, task_denied_in
    mov edx, 0x2
    call run_task
    PRINT "denied IN, IOPL 3:\\n"
    mov eax, task_denied_in
    mov edx, 0x3002
    call run_task
    PRINT "a word across the bitmap's edge:\\n"
    mov eax, task_word_straddles
    mov edx, 0x2
    call run_task
    PRINT "denied REP OUTSB:\\n"
    mov eax, task_denied_outs
    mov edx, 0x2
    call run_task
    PRINT "denied REP INSB:\\n"
    mov dword ptr [user_buffer], 0x44434241
    mov eax, task_denied_ins
    mov edx, 0x2
    call run_task
    EXIT EXIT_OK

task_entry: .long 0
kernel_esp: .long 0
    .balign 16, 0
user_buffer: .long 0x64636261, 0
%include "kernel_bss.inc"
    .balign 16, 0
tss_io: .space TSS_SIZE
iomap: .space IOMAP_BYTES + 1       // one byte past the last port's, all ones (SDM)
iomap_end:
    .balign 16, 0
    .space 4096
user_stack_top:
"""

IOPL3 = b"denied IN, IOPL 3:\n  finished, EAX 0x11223302\n"
IOPL3_IN_TRAP = (b"denied IN, IOPL 3:\n  #GP, error code 0x00000000\n  at task offset 0x00000005\n"
                 b"  ECX 0x00000023\n")


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> bytes:
    return build_kernel(tmp_path_factory.mktemp("iobitmap"), "iobitmap", GUEST.replace("{show}", SHOW_MACRO))


@pytest.fixture(scope="module")
def qemu_output(image, tmp_path_factory) -> bytes:
    out, status = run_kernel_in_qemu(image, tmp_path_factory.mktemp("qemu"), qemu_command)
    assert status == 1, out
    return out


@pytest.mark.qemu
@pytest.mark.parametrize("mode", ["native", "bt", "vtx", "vtx-ept"])
def test_ring3_port_access_is_checked_against_the_bitmap(mode, image, qemu_output):
    result, out = run_kernel(image, mode)
    assert result.kind is StopKind.EXIT, result.message
    assert out == qemu_output
    assert out.count(b"#GP, error code 0x00000000") == 4 and IOPL3 in out


@pytest.mark.qemu
def test_trap_cannot_give_ring_3_an_iopl(image, qemu_output):
    """Popek and Goldberg: the deprivileged kernel's IRET to ring 3 cannot change IOPL
    (IRET at CPL 1 keeps it, silently), so its IOPL-3 task is checked against the bitmap
    and refused; every other case is the hardware's."""
    result, out = run_kernel(image, "trap")
    assert result.kind is StopKind.EXIT, result.message
    assert IOPL3 in qemu_output and IOPL3_IN_TRAP in out
    before, after = qemu_output.split(IOPL3)
    assert out.startswith(before) and out.endswith(after)
