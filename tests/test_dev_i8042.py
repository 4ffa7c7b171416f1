"""The i8042 keyboard controller and its PS/2 devices as a guest probes them (the values
QEMU's pc answers after SeaBIOS, compared with QEMU itself), keys typed on the keyboard
arriving as scancodes on IRQ 1, and the controller's reset line."""
from __future__ import annotations

import pytest

from conftest import DEVICE_GUEST_MODES, SHOW_MACRO, build_kernel, run_kernel, run_kernel_in_qemu
from tools.machines import qemu_command
from vmm.devices.i8042 import scancodes
from vmm.loader import load_image
from vmm.vm import VM, StopKind

PROBE = f'''%include "kernel.inc"
{SHOW_MACRO}
%macro KCMD 1
    mov al, %1
    out 0x64, al
%endmacro
kmain:
    xor eax, eax
    in al, 0x64
    SHOW "status: "
    KCMD 0x20
    xor eax, eax
    in al, 0x64
    SHOW "status after 0x20: "
    in al, 0x60
    SHOW "command byte: "
    KCMD 0xd0
    xor eax, eax
    in al, 0x60
    SHOW "output port: "
    KCMD 0xc0
    xor eax, eax
    in al, 0x60
    SHOW "input port: "
    KCMD 0xaa
    xor eax, eax
    in al, 0x60
    SHOW "self test: "
    xor eax, eax
    in al, 0x64
    SHOW "status: "
    KCMD 0xab
    xor eax, eax
    in al, 0x60
    SHOW "kbd test: "
    KCMD 0xa9
    xor eax, eax
    in al, 0x60
    SHOW "aux test: "
    mov al, 0xf2
    out 0x60, al
    xor eax, eax
    in al, 0x60
    SHOW "id1: "
    xor eax, eax
    in al, 0x64
    SHOW "status: "
    xor eax, eax
    in al, 0x60
    SHOW "id2: "
    xor eax, eax
    in al, 0x60
    SHOW "id3: "
    xor eax, eax
    in al, 0x64
    SHOW "status empty: "
    xor eax, eax
    in al, 0x60
    SHOW "empty read: "
    mov al, 0xee
    out 0x60, al
    xor eax, eax
    in al, 0x60
    SHOW "echo: "
    mov al, 0xff
    out 0x60, al
    xor eax, eax
    in al, 0x60
    SHOW "reset1: "
    xor eax, eax
    in al, 0x60
    SHOW "reset2: "
    KCMD 0xd4
    mov al, 0xf2
    out 0x60, al
    xor eax, eax
    in al, 0x64
    SHOW "status aux: "
    in al, 0x60
    SHOW "aux1: "
    xor eax, eax
    in al, 0x60
    SHOW "aux2: "
    mov al, 0x99
    out 0x60, al
    xor eax, eax
    in al, 0x60
    SHOW "unknown kbd cmd: "
    KCMD 0x60
    mov al, 0x65
    out 0x60, al
    KCMD 0x20
    xor eax, eax
    in al, 0x60
    SHOW "command byte written: "
    KCMD 0xd2
    mov al, 0x1e
    out 0x60, al
    xor eax, eax
    in al, 0x64
    SHOW "status d2: "
    in al, 0x60
    SHOW "d2 byte: "
    KCMD 0xd3
    mov al, 0x1e
    out 0x60, al
    xor eax, eax
    in al, 0x64
    SHOW "status d3: "
    in al, 0x60
    SHOW "d3 byte: "
    EXIT EXIT_OK
%include "kernel_bss.inc"
'''
PROBE_EXPECTED = b"""status: 0x0000001c
status after 0x20: 0x0000001d
command byte: 0x00000061
output port: 0x000000cf
input port: 0x00000080
self test: 0x00000055
status: 0x0000001c
kbd test: 0x00000000
aux test: 0x00000000
id1: 0x000000fa
status: 0x0000001d
id2: 0x000000ab
id3: 0x00000041
status empty: 0x0000001c
empty read: 0x00000041
echo: 0x000000ee
reset1: 0x000000fa
reset2: 0x000000aa
status aux: 0x0000003d
aux1: 0x000000fa
aux2: 0x00000000
unknown kbd cmd: 0x000000fe
command byte written: 0x00000065
status d2: 0x0000001d
d2 byte: 0x0000001e
status d3: 0x0000003d
d3 byte: 0x0000001e
"""

TYPING = f"""%include "kernel.inc"
{SHOW_MACRO}
kmain:
    SET_HANDLER IRQ_BASE + 1, kbd_handler
    PIC_REMAP 0xfd, 0xff        // IRQ 1 only
wait_keys:
    cmp dword ptr [count], 8
    jae got_keys
    sti
    hlt
    cli
    jmp wait_keys
got_keys:
    mov eax, dword ptr [codes]
    SHOW "scancodes 0-3: "
    mov eax, dword ptr [codes + 4]
    SHOW "scancodes 4-7: "
    mov al, 0xfe                    // pulse the reset line
    out 0x64, al
    PRINT "still running after the reset"
    EXIT EXIT_FAIL

kbd_handler:
    in al, 0x60
    mov ecx, dword ptr [count]
    mov byte ptr [codes + ecx], al
    inc dword ptr [count]
    OUTB_IMM PIC1_CMD, PIC_EOI
    ret

    .balign 4
count: .long 0
codes: .long 0, 0, 0
%include "kernel_bss.inc"
"""


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, bytes]:
    tmp = tmp_path_factory.mktemp("i8042")
    return {"probe": build_kernel(tmp, "probe", PROBE), "typing": build_kernel(tmp, "typing", TYPING)}


@pytest.mark.parametrize("mode", DEVICE_GUEST_MODES)
def test_the_controller_answers_as_qemus(mode, images):
    result, out = run_kernel(images["probe"], mode)
    assert result.kind is StopKind.EXIT, result.message
    assert out.decode() == PROBE_EXPECTED.decode()


@pytest.mark.qemu
def test_qemu_agrees(images, tmp_path):
    out, status = run_kernel_in_qemu(images["probe"], tmp_path, qemu_command)
    assert out.decode() == PROBE_EXPECTED.decode() and status == 1


@pytest.mark.parametrize("mode", ["native", "vtx-ept"])
def test_typed_keys_arrive_as_set_1_scancodes_and_0xfe_resets(mode, images):
    out = bytearray()
    vm = VM(load_image(images["typing"], ram_size=128 << 20), mode=mode, serial_output=out.extend,
            keyboard_input=b"Hi\n", timeout=30)
    result = vm.run()
    # H: shift down, h down, h up, shift up; i down, up; Enter down, up.
    assert out.decode() == "scancodes 0-3: 0xaaa3232a\nscancodes 4-7: 0x9c1c9717\n"
    assert result.kind is StopKind.RESET and "keyboard controller" in result.message


def test_scancode_sets():
    assert scancodes("a", translated=True) == [0x1E, 0x9E]
    assert scancodes("a", translated=False) == [0x1C, 0xF0, 0x1C]
    assert scancodes("A", translated=False) == [0x12, 0x1C, 0xF0, 0x1C, 0xF0, 0x12]
    assert scancodes("\u00e9", translated=True) == []
