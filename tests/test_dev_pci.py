"""PCI configuration space (0xcf8/0xcfc) and pci-testdev, against QEMU's pc after SeaBIOS.

Two guests: one walks bus 0 and dumps all 256 configuration bytes of every function it
finds; the other sizes a BAR, writes read-only and writable registers, reads the data
port a word and a byte at a time, reads absent functions, another bus and a disabled
address (all ones), and, on the test-device board, drives pci-testdev's port and MMIO
tests. Both run on QEMU's reference board (``qemu_command``) and on the test-device
board (``testdev_command``: pci-testdev at 00:02.0), and vmm's board with and without
``--device pci-testdev`` must print what QEMU prints, byte for byte.
"""
from __future__ import annotations

import pytest

from conftest import DEVICE_GUEST_MODES, SHOW_MACRO, build_kernel, run_kernel_in_qemu
from tools.machines import qemu_command
from tools.machines import testdev_command as board_with_test_devices
from vmm.devices.board import Board, board_devices
from vmm.loader import load_image
from vmm.vm import VM, StopKind

RAM = 128 << 20
DUMP = """%include "kernel.inc"
{show}
// pci_read: EAX = bus/dev/fn/reg address (bit 31 set) -> EAX the dword
pci_read:
    push edx
    mov dx, 0xcf8
    out dx, eax
    mov dx, 0xcfc
    in eax, dx
    pop edx
    ret
kmain:
    xor ebx, ebx                    // ebx = dev << 11 | fn << 8
scan:
    mov eax, ebx
    or eax, 0x80000000
    call pci_read
    cmp ax, 0xffff
    je next
    mov eax, ebx
    shr eax, 8
    SHOW "function "
    xor esi, esi
dump:
    mov eax, ebx
    or eax, 0x80000000
    or eax, esi
    call pci_read
    call print_hex
    PRINT " "
    add esi, 4
    test esi, 0x1f
    jnz same_line
    call print_nl
same_line:
    cmp esi, 0x100
    jb dump
next:
    add ebx, 0x100
    cmp ebx, 0x10000
    jb scan
    EXIT EXIT_OK
%include "kernel_bss.inc"
"""
OPS = """%include "kernel.inc"
{show}
%define PCI_ADDR 0xcf8
%define PCI_DATA 0xcfc
// cfg_read: EAX = address (bit 31, dev << 11, fn << 8, reg) -> EAX the dword
cfg_read:
    push edx
    mov dx, PCI_ADDR
    out dx, eax
    mov dx, PCI_DATA
    in eax, dx
    pop edx
    ret
// cfg_write: EAX = address, ECX = the dword
cfg_write:
    push edx
    mov dx, PCI_ADDR
    out dx, eax
    mov dx, PCI_DATA
    mov eax, ecx
    out dx, eax
    pop edx
    ret
// show_name: EDX = port of a pci-testdev header's name; prints it
show_name:
    push eax
show_name_loop:
    in al, dx
    test al, al
    jz show_name_done
    call putc
    inc edx
    jmp show_name_loop
show_name_done:
    call print_nl
    pop eax
    ret

kmain:
    mov eax, 0x80000000
    call cfg_read
    SHOW "00.0 vendor/device: "
    mov dx, PCI_ADDR
    in eax, dx
    SHOW "0xcf8 reads back: "
    // the IDE function's BAR4: size it, then put it back
    mov eax, 0x80000920
    call cfg_read
    mov esi, eax
    SHOW "01.1 BAR4: "
    mov eax, 0x80000920
    mov ecx, 0xffffffff
    call cfg_write
    mov eax, 0x80000920
    call cfg_read
    SHOW "01.1 BAR4 after writing all ones: "
    mov eax, 0x80000920
    mov ecx, esi
    call cfg_write
    mov eax, 0x80000920
    call cfg_read
    SHOW "01.1 BAR4 restored: "
    // read-only and writable registers
    mov eax, 0x80000000
    mov ecx, 0x12345678
    call cfg_write
    mov eax, 0x80000000
    call cfg_read
    SHOW "00.0 vendor/device after a write: "
    mov eax, 0x8000083c
    mov ecx, 0xffffff05
    call cfg_write
    mov eax, 0x8000083c
    call cfg_read
    SHOW "01.0 interrupt line/pin after writing 0x05: "
    mov eax, 0x80000860
    call cfg_read
    SHOW "01.0 PIRQ routing: "
    // byte and word reads of the data port
    mov eax, 0x80000008
    mov dx, PCI_ADDR
    out dx, eax
    mov dx, 0xcfe
    xor eax, eax
    in ax, dx
    SHOW "00.0 class (word at 0xcfe): "
    mov dx, 0xcfb
    xor eax, eax
    in al, dx
    SHOW "byte port 0xcfb: "
    // absent functions, another bus, the enable bit clear
    mov eax, 0x80002800
    call cfg_read
    SHOW "00:05.0 (absent): "
    mov eax, 0x80010000
    call cfg_read
    SHOW "01:00.0 (no bus 1): "
    mov eax, 0x00000000
    call cfg_read
    SHOW "enable bit clear: "
%ifdef TESTDEV
    mov eax, 0x80001000
    call cfg_read
    SHOW "02.0: "
    mov eax, 0x80001014
    call cfg_read
    and eax, 0xfffc
    mov ebx, eax                    // the ports
    mov eax, 0x80001010
    call cfg_read
    and eax, 0xfffffff0
    mov edi, eax                    // the MMIO
    // port I/O: select test 0 of the port region, read its header, count two matches
    mov edx, ebx
    xor eax, eax
    out dx, al
    lea edx, [ebx + 16]
    PRINT "port test: "
    call show_name
    lea edx, [ebx + 4]
    in al, dx
    movzx eax, al
    SHOW "  offset low byte: "
    lea edx, [ebx + 0x83]
    mov al, 0xfa
    out dx, al
    out dx, al
    mov al, 0x11
    out dx, al                      // not the data byte: not counted
    lea edx, [ebx + 12]
    in al, dx
    movzx eax, al
    SHOW "  count: "
    // select the wildcard test: any byte counts
    mov edx, ebx
    mov al, 1
    out dx, al
    lea edx, [ebx + 16]
    PRINT "port test: "
    call show_name
    lea edx, [ebx + 0x84]
    mov al, 0x11
    out dx, al
    lea edx, [ebx + 12]
    in al, dx
    movzx eax, al
    SHOW "  count: "
    // MMIO: test 2 of the memory region
    mov byte ptr [edi], 2
    PRINT "mmio test: "
    mov esi, edi
    add esi, 16
mmio_name:
    mov al, byte ptr [esi]
    test al, al
    jz mmio_name_done
    call putc
    inc esi
    jmp mmio_name
mmio_name_done:
    call print_nl
    mov byte ptr [edi + 0x802], 0xfa
    mov byte ptr [edi + 0x802], 0xfa
    mov eax, dword ptr [edi + 12]
    SHOW "  count: "
    mov eax, dword ptr [edi + 4]
    SHOW "  offset (a dword read): "
%endif
    EXIT EXIT_OK
%include "kernel_bss.inc"
"""
RESET = """%include "kernel.inc"
kmain:
    PRINT "writing 0x02 to 0xcf9 (no reset bit)\\n"
    mov dx, 0xcf9
    mov al, 0x02
    out dx, al
    in al, dx
    cmp al, 0x02
    jne bad
    PRINT "writing 0x06 to 0xcf9\\n"
    mov al, 0x06
    out dx, al
    cli
    hlt
bad:
    PRINT "0xcf9 did not read back\\n"
    EXIT EXIT_FAIL
%include "kernel_bss.inc"
"""
BOARDS = {"reference": (qemu_command, None, ""), "testdev": (board_with_test_devices, {"pci-testdev": True}, "%define TESTDEV\n")}


def run(image: bytes, mode: str, devices):
    out = bytearray()
    vm = VM(load_image(image, ram_size=RAM), mode=mode, ram_size=RAM, serial_output=out.extend, timeout=30,
            devices=devices)
    return vm.run(), bytes(out)


@pytest.fixture(scope="module", params=sorted(BOARDS))
def board(request, tmp_path_factory):
    """(board name, vmm devices, {guest: (image, QEMU's output)})."""
    command, devices, define = BOARDS[request.param]
    tmp = tmp_path_factory.mktemp(f"pci-{request.param}")
    guests = {}
    for name, source in (("dump", DUMP), ("ops", OPS)):
        image = build_kernel(tmp, name, define + source.replace("{show}", SHOW_MACRO))
        out, status = run_kernel_in_qemu(image, tmp, command)
        assert status == 1, out
        guests[name] = (image, out)
    return request.param, devices, guests


@pytest.mark.qemu
@pytest.mark.parametrize("guest", ["dump", "ops"])
@pytest.mark.parametrize("mode", DEVICE_GUEST_MODES)
def test_configuration_space_matches_qemu(board, guest, mode):
    name, devices, guests = board
    image, expected = guests[guest]
    result, out = run(image, mode, devices)
    assert result.kind is StopKind.EXIT, result.message
    assert out == expected
    if guest == "dump":
        assert out.count(b"function ") == (5 if name == "testdev" else 4)


@pytest.mark.qemu
@pytest.mark.parametrize("mode", DEVICE_GUEST_MODES)
def test_reset_control_register_resets(mode, tmp_path):
    image = build_kernel(tmp_path, "cf9", RESET)
    expected, status = run_kernel_in_qemu(image, tmp_path, qemu_command)
    assert status == 0   # -no-reboot: QEMU ends at the reset
    result, out = run(image, mode, None)
    assert result.kind is StopKind.RESET, result.message
    assert out == expected == b"writing 0x02 to 0xcf9 (no reset bit)\nwriting 0x06 to 0xcf9\n"


def test_devices_are_switched_by_name():
    assert board_devices() == {"hpet": True, "pc-testdev": True, "pci-testdev": False, "debugcon": False,
                               "vga": True}
    board = Board(ram_size=RAM, devices={"hpet": False, "pci-testdev": True})
    names = {name for _, _, name in board.mmio_bus.regions()}
    assert "hpet" not in names and "pci-testdev-mmio" in names
    assert board.port_bus.find(0xC000).name == "pci-testdev-portio"
    with pytest.raises(ValueError, match="unknown device 'virtio'"):
        Board(ram_size=RAM, devices={"virtio": True})


def test_a_state_for_another_board_is_refused():
    state = Board(ram_size=RAM, devices={"pci-testdev": True}).save_state()
    with pytest.raises(ValueError, match="devices"):
        Board(ram_size=RAM).load_state(state)
