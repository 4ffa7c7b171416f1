"""The PIIX4's ACPI registers as a guest sees them: PM1 status/enable/control, the PM
timer, GPE0, the APM port's ACPI enable, the timer-overflow SCI on IRQ 9 through the
I/O APIC, and soft-off through PM1a_CNT, which ends the VM with status 0 as it ends
QEMU. The same image runs in every mode and under QEMU; the output must be the same.
Also the debug console at port 0xe9, against QEMU's ``-debugcon``."""
from __future__ import annotations

import subprocess

import pytest

from conftest import DEVICE_GUEST_MODES, SHOW_MACRO, build_kernel, run_cli, run_kernel, run_kernel_in_qemu
from tools.machines import qemu_binary
from tools.machines import testdev_command as qemu_testdev_command
from vmm.devices.board import Board
from vmm.devices.ioapic import IOAPIC_BASE, LEVEL_TRIGGERED
from vmm.loader import load_image
from vmm.vm import VM, StopKind

IO = IOAPIC_BASE
APIC = 0xFEE00000

ACPI_GUEST = f"""%include "kernel.inc"
{SHOW_MACRO}
kmain:
    SET_HANDLER 0x49, sci_handler
    mov dx, 0x600
    in ax, dx
    movzx eax, ax
    SHOW "PM1 status after reset: "
    mov ax, 1
    out dx, ax
    in ax, dx
    movzx eax, ax
    SHOW "PM1 status, TMR_STS written back: "
    mov dx, 0x602
    mov ax, 0xffff
    out dx, ax
    in ax, dx
    movzx eax, ax
    SHOW "PM1 enable, all ones written: "
    xor eax, eax
    out dx, ax
    mov dx, 0x604
    in ax, dx
    movzx eax, ax
    SHOW "PM1 control: "
    mov al, 0xf1                      // ACPI_ENABLE through the APM port (the FADT's SMI_CMD)
    out 0xb2, al
    in ax, dx
    movzx eax, ax
    SHOW "PM1 control after ACPI_ENABLE: "
    in al, 0xb2
    movzx eax, al
    SHOW "APM command port: "
    mov dx, 0xafe0
    in eax, dx
    SHOW "GPE0 status and enable: "
    mov dx, 0x608
    in eax, dx
    mov esi, eax
    mov ecx, 1000
spin:
    loop spin
    in eax, dx
    mov edi, eax
    xor eax, eax
    cmp edi, esi
    setne al
    SHOW "the PM timer runs: "
    mov eax, edi
    shr eax, 24
    SHOW "PM timer bits 31:24: "

    // The timer-overflow SCI: IRQ 9, level, through the I/O APIC to vector 0x49.
    mov al, 0xff
    out 0x21, al
    out 0xa1, al
    mov dword ptr [{APIC + 0xf0:#x}], 0x1ff
    mov dword ptr [{IO:#x}], 0x10 + 2 * 9
    mov dword ptr [{IO + 0x10:#x}], {LEVEL_TRIGGERED:#x} + 0x49
    mov dx, 0x600
    mov ax, 1
    out dx, ax                        // TMR_STS clear: the next one comes at bit 23's change
    mov dx, 0x602
    out dx, ax                        // TMR_EN
    sti
wait_sci:
    hlt
    cmp dword ptr [scis], 0
    je wait_sci
    cli
    mov eax, dword ptr [scis]
    SHOW "SCIs: "
    mov eax, dword ptr [status_seen]
    SHOW "PM1 status in the handler: "
    PRINT "powering off"
    call print_nl
    mov dx, 0x604
    mov ax, 0x2001                    // SLP_EN, SLP_TYP 0: soft-off (S5)
    out dx, ax
    cli                               // QEMU carries the request out a little later
off:
    hlt
    jmp off

sci_handler:
    inc dword ptr [scis]
    mov dx, 0x600
    in ax, dx
    movzx eax, ax
    mov dword ptr [status_seen], eax
    mov ax, 1
    out dx, ax                        // clear TMR_STS: SCI drops
    mov dx, 0x602
    xor eax, eax
    out dx, ax                        // and no more timer SCIs
    mov dword ptr [{APIC + 0xb0:#x}], 0
    ret

    .balign 4
scis: .long 0
status_seen: .long 0
%include "kernel_bss.inc"
"""
ACPI_EXPECTED = b"""PM1 status after reset: 0x00000001
PM1 status, TMR_STS written back: 0x00000000
PM1 enable, all ones written: 0x0000ffff
PM1 control: 0x00000000
PM1 control after ACPI_ENABLE: 0x00000001
APM command port: 0x000000f1
GPE0 status and enable: 0x00000000
the PM timer runs: 0x00000001
PM timer bits 31:24: 0x00000000
SCIs: 0x00000001
PM1 status in the handler: 0x00000001
powering off
"""

DEBUGCON_GUEST = """%include "kernel.inc"
kmain:
    in al, 0xe9
    cmp al, 0xe9
    jne absent
    mov esi, message
next:
    lodsb
    test al, al
    jz done
    out 0xe9, al
    jmp next
absent:
    PRINT "no debug console"
done:
    EXIT EXIT_OK
message: .asciz "hello from port 0xe9\\n"
%include "kernel_bss.inc"
"""


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, bytes]:
    tmp = tmp_path_factory.mktemp("acpi")
    return {"acpi": build_kernel(tmp, "acpi", ACPI_GUEST), "debugcon": build_kernel(tmp, "debugcon", DEBUGCON_GUEST)}


@pytest.mark.parametrize("mode", DEVICE_GUEST_MODES)
def test_the_guest_sees_the_acpi_registers_and_powers_off(mode, images):
    result, out = run_kernel(images["acpi"], mode)
    assert out.decode() == ACPI_EXPECTED.decode()
    assert result.kind is StopKind.POWEROFF and result.status == 0, result.message
    assert "ACPI poweroff (S5" in result.message


@pytest.mark.qemu
def test_qemu_agrees(images, tmp_path):
    out, status = run_kernel_in_qemu(images["acpi"], tmp_path, qemu_testdev_command)
    assert out.decode() == ACPI_EXPECTED.decode() and status == 0


def test_suspend_to_ram_stops_with_a_reason():
    board = Board(serial_output=lambda data: None)
    board.port_bus.write(0x604, 2, 0x2400)        # SLP_TYP 1 (S3) | SLP_EN
    assert board.sleep_request == "S3" and board.stop_requested
    other = Board(serial_output=lambda data: None)
    other.port_bus.write(0x604, 2, 0x1C00)        # SLP_TYP 7 without SLP_EN: nothing
    assert other.sleep_request is None and other.port_bus.read(0x604, 2) == 0x1C00


@pytest.mark.parametrize("mode", ["native", "vtx-ept"])
def test_debug_console(mode, images):
    out = bytearray()
    vm = VM(load_image(images["debugcon"], ram_size=128 << 20), mode=mode, serial_output=out.extend,
            devices={"debugcon": True}, timeout=30)
    assert vm.run().kind is StopKind.EXIT
    assert bytes(out) == b"hello from port 0xe9\n"
    result, plain = run_kernel(images["debugcon"], mode)        # off by default, as on QEMU
    assert plain == b"no debug console"


@pytest.mark.qemu
def test_debug_console_as_qemu_has_it(images, tmp_path):
    if qemu_binary("i386") is None:
        pytest.skip("qemu-system-i386 is not on PATH")
    kernel, log = tmp_path / "k.elf", tmp_path / "debugcon.txt"
    kernel.write_bytes(images["debugcon"])
    command = qemu_testdev_command(str(kernel))
    # pc-testdev's byte window covers 0xe9 too; as on this board, the debug console wins there.
    subprocess.run([*command, "-debugcon", f"file:{log}"], stdin=subprocess.DEVNULL, capture_output=True,
                   timeout=60, check=False)
    assert log.read_bytes() == b"hello from port 0xe9\n"


@pytest.mark.parametrize("convention", ["qemu", "guest"])
def test_poweroff_through_the_cli_exits_0(images, tmp_path, convention):
    kernel = tmp_path / "acpi.elf"
    kernel.write_bytes(images["acpi"])
    proc = run_cli("run", str(kernel), "--exit-status", convention)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode() == ACPI_EXPECTED.decode()
    assert b"vmm: powered off: ACPI poweroff (S5, through PM1a_CNT)" in proc.stderr
