"""Port 0x92 (system control port A): A20 reads enabled, as firmware leaves it; a rising
bit 0 resets the machine. QEMU (``-no-reboot``) ends there; vmm stops with RESET."""
from __future__ import annotations

import subprocess
import textwrap

import pytest

from tools.machines import qemu_binary, qemu_command
from vmm.build.guests import build_guest
from vmm.loader.image import load_image
from vmm.vm import VM, StopKind

MODES = ("native", "trap", "bt", "vtx", "vtx-ept")

GUEST = """%include "kernel.inc"
kmain:
    xor eax, eax
    in al, 0x92
    PRINT "port 0x92: "
    call print_hex
    call print_nl
    mov al, 0x02
    out 0x92, al                    // bit 0 stays clear: no reset
    PRINT "A20 written again, still running\\n"
    mov al, 0x03
    out 0x92, al                    // bit 0 rises: fast reset
    PRINT "not reached\\n"
    EXIT EXIT_OK
%include "kernel_bss.inc"
"""
EXPECTED = b"port 0x92: 0x00000002\nA20 written again, still running\n"


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("port92") / "port92.s"
    path.write_text(textwrap.dedent(GUEST))
    return build_guest(str(path), use_cache=False).elf


@pytest.mark.parametrize("mode", MODES)
def test_fast_reset(mode, image):
    out = bytearray()
    vm = VM(load_image(image, ram_size=128 << 20), mode=mode, ram_size=128 << 20, serial_output=out.extend,
            timeout=30)
    result = vm.run()
    assert result.kind is StopKind.RESET, result.message
    assert "reset through port 0x92" in result.message
    assert bytes(out) == EXPECTED


@pytest.mark.qemu
def test_qemu_agrees(image, tmp_path):
    if qemu_binary("i386") is None:
        pytest.skip("qemu-system-i386 is not on PATH")
    kernel = tmp_path / "port92.elf"
    kernel.write_bytes(image)
    proc = subprocess.run(qemu_command(str(kernel)), stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
    assert proc.stdout == EXPECTED and proc.returncode == 0   # -no-reboot: the reset ends QEMU
