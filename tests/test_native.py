"""The native mode end to end: built-in guests, event delivery, stops with a reason."""
from __future__ import annotations

import pytest

from vmm.build.guests import build_guest, list_guests
from vmm.loader.image import load_image
from vmm.vm import VM, StopKind
from vmm.vmx.exit_reasons import ExitReason

from conftest import IDT_DATA, LOAD_IDT, RAM, assemble, run_flat, set_gate

GUESTS = [g.name for g in list_guests()]


@pytest.mark.parametrize("name", GUESTS)
def test_builtin_guest_matches_golden_transcript(name):
    info = next(g for g in list_guests() if g.name == name)
    out = bytearray()
    image = load_image(build_guest(name).elf, ram_size=128 << 20, image_name=name)
    result = VM(image, mode="native", serial_output=out.extend, timeout=60).run()
    assert result.kind is StopKind.EXIT, result.message
    assert bytes(out) == info.expected_output()
    assert result.exit_status == info.expected_status


SERIAL = """
    mov dx, 0x3f8
    out dx, al
"""


def test_triple_fault_stops_with_reason_and_eip():
    # IDTR limit is 0 at entry: #DE cannot be delivered -> #GP -> #DF -> triple fault.
    result, _ = run_flat("xor ecx, ecx; div ecx; hlt")
    assert result.kind is StopKind.TRIPLE_FAULT
    assert f"{0x100002:#010x}" in result.message
    assert "#DE -> #GP -> #DF" in result.message


def test_endless_loop_stops_at_instruction_budget():
    result, _ = run_flat("spin: jmp spin", max_instructions=100_000)
    assert result.kind is StopKind.BUDGET
    assert result.instructions == 100_000
    assert "100000 instructions" in result.message


def test_endless_loop_stops_at_wall_clock_budget():
    result, _ = run_flat("spin: jmp spin", timeout=0.3)
    assert result.kind is StopKind.TIMEOUT
    assert "0.3 s" in result.message


def test_cli_hlt_is_a_clean_stop():
    result, _ = run_flat("hlt")
    assert result.kind is StopKind.HALTED
    assert "interrupts disabled" in result.message


def idt_guest(vec, gate, body) -> str:
    return set_gate(vec, "handler", gate) + LOAD_IDT + f"""
    mov esp, 0x180000
    push 0x202
    popfd
    {body}
    hlt
handler:
    pushfd
    pop eax                     # EFLAGS inside the handler
    mov ebx, [esp]              # error code (or EIP when there is none)
    mov ecx, [esp + 4]
    mov edx, cr2
    mov al, 0x21
    out 0xf4, al
""" + IDT_DATA


def _idt_run(vec, body, gate=0x8E00):
    from vmm.cpu.engine import Engine  # noqa: F401  (the VM drives it)
    out = bytearray()
    src = idt_guest(vec, gate, body)
    image = load_image(assemble(src), ram_size=RAM, kind="flat", load_address=0x100000)
    vm = VM(image, ram_size=RAM, serial_output=out.extend, timeout=20)
    result = vm.run()
    regs = {r: vm.engine.reg(r) for r in ("eax", "ebx", "ecx", "edx")}
    return result, regs


def test_gp_delivery_pushes_the_error_code():
    result, regs = _idt_run(13, "mov ax, 0x1234; mov ds, ax")
    assert result.exit_status == (0x21 << 1) | 1
    assert regs["ebx"] == 0x1234       # error code: the selector
    assert regs["ecx"] & 0xFFFFF000 == 0x100000  # saved EIP inside the guest


def test_interrupt_gate_clears_if_and_trap_gate_keeps_it():
    _, regs = _idt_run(0, "xor ecx, ecx; div ecx", gate=0x8E00)
    assert not regs["eax"] & 0x200
    _, regs = _idt_run(0, "xor ecx, ecx; div ecx", gate=0x8F00)
    assert regs["eax"] & 0x200


def test_software_interrupt_returns_after_the_instruction():
    result, regs = _idt_run(0x80, "int 0x80")
    assert result.exit_status == (0x21 << 1) | 1
    # no error code for INT n: [esp] is the return EIP, just past the 2-byte INT
    int_at = assemble(idt_guest(0x80, 0x8E00, "int 0x80")).index(b"\xcd\x80")
    assert regs["ebx"] == 0x100000 + int_at + 2


def test_software_interrupt_through_a_dpl0_gate_from_ring0_is_allowed_and_ud_is_delivered():
    result, regs = _idt_run(6, "ud2")
    assert result.exit_status == (0x21 << 1) | 1
    ud_at = assemble(idt_guest(6, 0x8E00, "ud2")).index(b"\x0f\x0b")
    assert regs["ebx"] == 0x100000 + ud_at  # a fault: saved EIP is the UD2 itself


def test_boot_sector_runs_in_real_mode_with_ivt_delivery(tmp_path):
    from conftest import run_cli
    src = """
        xor ax, ax
        mov ds, ax
        mov ss, ax
        mov sp, 0x7000
        mov word ptr [0x80*4], handler
        mov word ptr [0x80*4+2], 0
        mov al, 0x41
        mov dx, 0x3f8
        out dx, al
        int 0x80
        mov al, 0x21
        mov dx, 0xf4
        out dx, al
        hlt
    handler:
        mov al, 0x52
        mov dx, 0x3f8
        out dx, al
        iret
    """
    code = assemble(src, 0x7C00, bits=16)
    image = tmp_path / "boot.bin"
    image.write_bytes(code + bytes(510 - len(code)) + b"\x55\xaa")
    proc = run_cli("run", str(image))
    assert proc.stdout == b"AR"
    assert proc.returncode == (0x21 << 1) | 1


def test_unknown_port_reads_all_ones_and_is_counted():
    src = "mov dx, 0x80; in al, dx; mov edi, eax; mov dx, 0x84; in ax, dx; mov esi, eax; mov al, 0; out 0xf4, al"
    image = load_image(assemble(src), ram_size=RAM, kind="flat", load_address=0x100000)
    vm = VM(image, ram_size=RAM, serial_output=lambda b: None, timeout=20)
    assert vm.run().exit_status == 1
    assert vm.engine.reg("edi") & 0xFF == 0xFF and vm.engine.reg("esi") & 0xFFFF == 0xFFFF
    assert vm.board.port_bus.unknown[(0x80, "r")] == 1 and vm.board.port_bus.unknown[(0x84, "r")] == 1


def test_timer_guest_is_deterministic_in_virtual_time():
    runs = []
    for _ in range(2):
        image = load_image(build_guest("timer").elf, ram_size=128 << 20, image_name="timer")
        vm = VM(image, serial_output=lambda b: None, timeout=60)
        result = vm.run()
        runs.append((result.virtual_time, result.exits[ExitReason.EXTERNAL_INTERRUPT]))
    assert runs[0] == runs[1]
    assert runs[0][1] == 10  # ten IRQ0 deliveries, as the guest counts


def test_write_through_a_mapping_of_non_ram_host_memory_is_dropped():
    # Identity-map 4 KiB at linear 0 onto frame 0xfffff000 (no RAM there: the VMM's own
    # scratch page on the host, unassigned memory to the guest) and write it.
    src = """
        mov edi, 0x110000
        mov dword ptr [edi], 0x111003        # PDE 0 -> page table at 0x111000
        mov dword ptr [edi + 0xc00], 0x83 | 0x100000 & 0xffc00000  # unused slot
        mov dword ptr [0x111000], 0xfffff003  # PTE 0 -> host frame 0xfffff000
        mov dword ptr [0x111000 + 0x100*4], 0x100003
        mov dword ptr [0x111000 + 0x110*4], 0x110003
        mov dword ptr [0x111000 + 0x111*4], 0x111003
        mov eax, edi
        mov cr3, eax
        mov eax, cr0
        or eax, 0x80000000
        mov cr0, eax
        mov dword ptr [0], 1
        hlt
    """
    result, _ = run_flat(src)
    assert result.kind is StopKind.HALTED, result.message
    assert result.memory["unassigned-memory writes (dropped)"] == 1
