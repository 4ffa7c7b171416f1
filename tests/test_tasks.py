"""Hardware task switching, carried out by the VMM (vmm.cpu.tasks), against QEMU.

One guest, built with paging off and with paging on (4 MiB identity pages; task 2 on its
own copy of the page directory, so its CR3 load shows), switches tasks in every way the
SDM lists: a far CALL to a TSS and the IRET with NT back (back link, NT, busy bits), a
far JMP there and back, a CALL through a task gate in the GDT, #DE and #GP through task
gates in the IDT (the error code on the new task's stack; the handler task changes the
interrupted task's saved registers), an IRET with NT into a busy virtual-8086 TSS whose
UD2 comes back through a task gate, and three refused switches: a busy TSS (#GP), a
limit below 0x67 (#TS) and a TSS not present (#NP). Every mode that models task
switching prints what QEMU prints; under VT-x each switch is a TASK_SWITCH exit with
its qualification.
"""
from __future__ import annotations

import pytest

from conftest import SHOW_MACRO, build_kernel, run_kernel, run_kernel_in_qemu
from tools.machines import qemu_command
from vmm.loader import load_image
from vmm.vm import VM, StopKind
from vmm.vmx.exit_reasons import ExitReason
from vmm.vmx.qualification import TaskSwitch, TaskSwitchSource

MODES = ("native", "bt", "vtx", "vtx-ept")
RAM = 128 << 20

GUEST = """%include "kernel.inc"
{show}%macro CALL_FAR 2
    .byte 0x9a
    .long %2
    .word %1
%endmacro
%define TSS2_SEL   0x30
%define GATE2_SEL  0x38
%define TSS3_SEL   0x40
%define SMALL_SEL  0x48
%define ABSENT_SEL 0x50
%define TSS4_SEL   0x58
%define EFLAGS_NT  0x4000


// make_desc: EAX base, ECX limit (< 64 KiB), EDX access byte << 8, EDI the slot.
make_desc:
    push eax
    push ecx
    shl eax, 16
    or eax, ecx
    mov dword ptr [edi], eax
    mov eax, dword ptr [esp + 4]
    mov ecx, eax
    shr ecx, 16
    and ecx, 0xff
    and eax, 0xff000000
    or eax, ecx
    or eax, edx
    mov dword ptr [edi + 4], eax
    pop ecx
    pop eax
    ret

// init_tss: EDI the TSS, EAX its entry point, ECX its stack top.
init_tss:
    mov dword ptr [edi + 0x20], eax
    mov dword ptr [edi + 0x38], ecx
    mov dword ptr [edi + 0x24], 2
    mov dword ptr [edi + 0x4c], KERNEL_CS
    mov dword ptr [edi + 0x48], KERNEL_DS
    mov dword ptr [edi + 0x50], KERNEL_DS
    mov dword ptr [edi + 0x54], KERNEL_DS
    mov dword ptr [edi + 0x58], KERNEL_DS
    mov dword ptr [edi + 0x5c], KERNEL_DS
    mov word ptr [edi + 0x66], TSS_SIZE
    mov eax, cr3
    mov dword ptr [edi + 0x1c], eax
    ret

type_of:            // EAX selector -> EAX the type nibble of its gdt2 entry
    movzx eax, byte ptr [gdt2 + eax + 5]
    and eax, 0x0f
    ret

task2:
    mov eax, cr3
    cmp eax, page_dir2
    sete al
    movzx eax, al
    SHOW "task 2: on its own page tables "
    str ax
    movzx eax, ax
    SHOW "task 2: TR "
    movzx eax, word ptr [tss2]
    SHOW "task 2: back link "
    pushfd
    pop eax
    and eax, EFLAGS_NT
    SHOW "task 2: NT "
    test eax, eax
    jz task2_jmp_back
    iretd
    jmp task2
task2_jmp_back:
    JMP_FAR TSS_SEL, 0
    jmp task2

task3:                      // #DE through a task gate: the divisor in main's TSS becomes 2
    PRINT "task 3: #DE\\n"
    mov dword ptr [tss + 0x2c], 2      // main's saved ECX
    iretd
    jmp task3

task4:                      // #GP through a task gate: error code on this task's stack
    pop eax
    SHOW "task 4: #GP error code "
    add dword ptr [tss + 0x20], 2      // main's saved EIP: past the 2-byte MOV ES
    iretd
    jmp task4

fault_handler:              // #GP, #TS, #NP as plain interrupt gates
    mov eax, dword ptr [ebx + F_VECTOR]
    SHOW "fault vector "
    mov eax, dword ptr [ebx + F_ERROR]
    SHOW "  error code "
    add dword ptr [ebx + F_EIP], 7     // past the far call
    ret

kmain:
%ifdef PAGING
    mov edi, page_dir
    mov eax, 0x87                      // P, W, U, PS: 4 MiB identity pages
    mov ecx, 1024
fill_pd:
    mov dword ptr [edi], eax
    add eax, 0x400000
    add edi, 4
    loop fill_pd
    mov eax, cr4
    or eax, 0x10
    mov cr4, eax
    mov eax, page_dir
    mov cr3, eax
    mov dword ptr [tss + 0x1c], eax    // the CPU never saves CR3: software keeps it
    mov esi, page_dir
    mov edi, page_dir2
    mov ecx, 1024
copy_pd:
    mov edx, dword ptr [esi]
    mov dword ptr [edi], edx
    add esi, 4
    add edi, 4
    loop copy_pd
    mov eax, cr0
    or eax, 0x80000000
    mov cr0, eax
    PRINT "paging on\\n"
%endif
    mov esi, gdt
    mov edi, gdt2
    mov ecx, 12
copy_gdt:
    mov eax, dword ptr [esi]
    mov dword ptr [edi], eax
    add esi, 4
    add edi, 4
    loop copy_gdt
    mov eax, tss2
    mov ecx, TSS_SIZE - 1
    mov edx, 0x8900
    mov edi, gdt2 + TSS2_SEL
    call make_desc
    mov dword ptr [gdt2 + GATE2_SEL], TSS2_SEL << 16
    mov dword ptr [gdt2 + GATE2_SEL + 4], 0x8500
    mov eax, tss3
    mov edi, gdt2 + TSS3_SEL
    call make_desc
    mov eax, tss4
    mov edi, gdt2 + TSS4_SEL
    call make_desc
    mov eax, tss2
    mov ecx, 0x40
    mov edi, gdt2 + SMALL_SEL
    call make_desc
    mov eax, tss2
    mov ecx, TSS_SIZE - 1
    mov edx, 0x0900
    mov edi, gdt2 + ABSENT_SEL
    call make_desc
    LGDT_M gdtr2
    mov edi, tss2
    mov eax, task2
    mov ecx, stack2_top
    call init_tss
    mov eax, page_dir2
%ifdef PAGING
    mov dword ptr [tss2 + 0x1c], eax   // task 2 runs on its own (identical) page tables
%endif
    mov edi, tss3
    mov eax, task3
    mov ecx, stack3_top
    call init_tss
    mov edi, tss4
    mov eax, task4
    mov ecx, stack4_top
    call init_tss

    mov ebx, 0x12345678
    CALL_FAR TSS2_SEL, 0
    mov eax, ebx
    SHOW "main: back from the call, EBX "
    str ax
    movzx eax, ax
    SHOW "main: TR "
    mov eax, TSS2_SEL
    call type_of
    SHOW "main: TSS 2 type "
    pushfd
    pop eax
    and eax, EFLAGS_NT
    SHOW "main: NT "

    JMP_FAR TSS2_SEL, 0
    PRINT "main: back from the jump\\n"
    mov eax, TSS2_SEL
    call type_of
    SHOW "main: TSS 2 type "
    movzx eax, word ptr [tss2]
    SHOW "main: TSS 2 back link "

    CALL_FAR GATE2_SEL, 0
    PRINT "main: back through the task gate\\n"

    mov dword ptr [idt + 0], TSS3_SEL << 16
    mov dword ptr [idt + 4], 0x8500
    mov eax, 10
    xor edx, edx
    xor ecx, ecx
    div ecx
    SHOW "main: 10 / 2 = "

    mov dword ptr [idt + 13 * 8], TSS4_SEL << 16
    mov dword ptr [idt + 13 * 8 + 4], 0x8500
    mov eax, 0x1234
    mov es, eax
    PRINT "main: past the bad MOV ES\\n"

    SET_GATE VEC_GP, GATE_INT
    SET_HANDLER VEC_GP, fault_handler
    SET_HANDLER 10, fault_handler
    SET_HANDLER 11, fault_handler
    CALL_FAR TSS_SEL, 0
    CALL_FAR SMALL_SEL, 0
    CALL_FAR ABSENT_SEL, 0
    // a virtual-8086 task: IRET with NT into a busy TSS whose EFLAGS has VM; its UD2
    // comes back through a task gate in the IDT
    mov eax, tss5
    mov ecx, TSS_SIZE - 1
    mov edx, 0x8b00
    mov edi, gdt2 + 0x60
    call make_desc
    mov dword ptr [tss5 + 0x24], 0x20002
    mov dword ptr [tss5 + 0x20], 0
    mov dword ptr [tss5 + 0x4c], 0x4200
    mov dword ptr [tss5 + 0x50], 0x4200
    mov dword ptr [tss5 + 0x38], 0x100
    mov dword ptr [tss5 + 0x54], 0x1234
    mov eax, cr3
    mov dword ptr [tss5 + 0x1c], eax
    mov word ptr [0x42000], 0x0b0f
    mov word ptr [tss], 0x60
    mov dword ptr [idt + 6 * 8], TSS_SEL << 16
    mov dword ptr [idt + 6 * 8 + 4], 0x8500
    mov eax, TSS_SEL
    call type_of
    SHOW "main: main TSS type "
    pushfd
    or dword ptr [esp], EFLAGS_NT
    popfd
    iretd
    PRINT "main: back from virtual-8086 mode\\n"
    movzx eax, word ptr [tss5 + 0x4c]
    SHOW "vm86 CS "
    mov eax, dword ptr [tss5 + 0x20]
    SHOW "vm86 EIP "
    mov eax, dword ptr [tss5 + 0x24]
    SHOW "vm86 EFLAGS "
    PRINT "done\\n"
    EXIT EXIT_OK

    .balign 8, 0
gdt2:
    .space 14 * 8
gdtr2:
    .word 14 * 8 - 1
    .long gdt2
%include "kernel_bss.inc"
tss2: .space TSS_SIZE
tss3: .space TSS_SIZE
tss4: .space TSS_SIZE
tss5: .space TSS_SIZE
    .balign 16, 0
    .space 1024
stack2_top:
    .space 1024
stack3_top:
    .space 1024
stack4_top:
    .balign 4096, 0
page_dir: .space 4096
page_dir2: .space 4096
"""

SWITCHES = [  # (source, TSS selector) of each task switch, in order
    (TaskSwitchSource.CALL, 0x30), (TaskSwitchSource.IRET, 0x28), (TaskSwitchSource.JMP, 0x30),
    (TaskSwitchSource.JMP, 0x28), (TaskSwitchSource.CALL, 0x30), (TaskSwitchSource.IRET, 0x28),
    (TaskSwitchSource.TASK_GATE, 0x40), (TaskSwitchSource.IRET, 0x28), (TaskSwitchSource.TASK_GATE, 0x58),
    (TaskSwitchSource.IRET, 0x28), (TaskSwitchSource.IRET, 0x60), (TaskSwitchSource.TASK_GATE, 0x28),
]


@pytest.fixture(scope="module", params=[False, True], ids=["flat", "paging"])
def image(request, tmp_path_factory) -> bytes:
    source = ("%define PAGING\n" if request.param else "") + GUEST.format(show=SHOW_MACRO)
    return build_kernel(tmp_path_factory.mktemp("tasks"), "tasks", source)


@pytest.fixture(scope="module")
def qemu_output(image, tmp_path_factory) -> bytes:
    out, status = run_kernel_in_qemu(image, tmp_path_factory.mktemp("qemu"), qemu_command)
    assert status == 1, out   # EXIT_OK through isa-debug-exit
    return out


@pytest.mark.qemu
@pytest.mark.parametrize("mode", MODES)
def test_task_switches_match_qemu(mode, image, qemu_output):
    result, out = run_kernel(image, mode)
    assert result.kind is StopKind.EXIT, result.message
    assert out == qemu_output
    assert b"done" in out and b"main: 10 / 2 = 0x00000005" in out


@pytest.mark.parametrize("mode", ["vtx", "vtx-ept"])
def test_each_switch_is_a_task_switch_exit(mode, image):
    vm = VM(load_image(image, ram_size=RAM), mode=mode, ram_size=RAM, timeout=30)
    seen = []
    vm.bus.subscribe("exit", lambda exit: seen.append(exit) if exit.reason is ExitReason.TASK_SWITCH else None)
    result = vm.run()
    assert result.kind is StopKind.EXIT, result.message
    decoded = [TaskSwitch.decode(e.qualification) for e in seen]
    assert [(q.source, q.selector) for q in decoded] == SWITCHES
    lengths = {(TaskSwitchSource(e.source), e.length) for e in seen}
    assert lengths == {(TaskSwitchSource.CALL, 7), (TaskSwitchSource.JMP, 7), (TaskSwitchSource.IRET, 1),
                       (TaskSwitchSource.TASK_GATE, 0)}
    assert result.exits[ExitReason.TASK_SWITCH] == len(SWITCHES)
    gp = [e for e in seen if e.source == TaskSwitchSource.TASK_GATE and e.selector == 0x58]
    assert gp[0].error_code == 0x1234   # #GP(selector) of the MOV ES, for the new task's stack


def test_the_native_engine_no_longer_switches_tasks_itself(image):
    """The engine's TR base lies above 4 GiB: its own task switch could not even start."""
    vm = VM(load_image(image, ram_size=RAM), mode="native", ram_size=RAM, timeout=30)
    result = vm.run()
    assert result.kind is StopKind.EXIT
    assert vm.mode.tasks.switches == len(SWITCHES)
    assert vm.engine.table("tr")[0] == 0x28 and vm.engine.tr_virtualized


INTERCEPT_GUEST = """%include "kernel.inc"
{show}
bp_handler:
    ret
kmain:
    SET_HANDLER VEC_BP, bp_handler
    SET_GATE VEC_BP, GATE_TRAP
    int3
    and byte ptr [gdt_tss + 5], 0xfd        // the TSS available again, for a second LTR
    mov eax, TSS_SEL
    ltr ax
    str ax
    movzx eax, ax
    SHOW "TR after an INT3 and an LTR: "
    int3
    mov ecx, 0x1b                           // IA32_APIC_BASE
    rdmsr
    SHOW "APIC base after an INT3: "
    EXIT EXIT_OK
%include "kernel_bss.inc"
"""


@pytest.fixture(scope="module")
def intercept_image(tmp_path_factory) -> bytes:
    return build_kernel(tmp_path_factory.mktemp("intercepts"), "intercepts", INTERCEPT_GUEST.format(show=SHOW_MACRO))


@pytest.mark.qemu
@pytest.mark.parametrize("mode", MODES)
def test_an_instruction_the_engine_reports_after_an_int3_is_the_one_that_ran(mode, intercept_image, tmp_path):
    """Unicorn moves EIP to the instruction after the last INT n before every exception
    hook while QEMU's exception_is_int stays set, and an engine intercept (LTR, RDMSR)
    leaves it set: the LTR was decoded at the INT3's successor (#GP)."""
    result, out = run_kernel(intercept_image, mode)
    expected, _ = run_kernel_in_qemu(intercept_image, tmp_path, qemu_command)
    assert result.kind is StopKind.EXIT, result.message
    assert out == expected == b"TR after an INT3 and an LTR: 0x00000028\nAPIC base after an INT3: 0xfee00900\n"
