"""Port 0x92 (system control port A): A20 reads enabled, as firmware leaves it; a rising
bit 0 resets the machine. QEMU (``-no-reboot``) ends there; vmm stops with RESET."""
from __future__ import annotations

import pytest

from conftest import DEVICE_GUEST_MODES, build_kernel, run_kernel, run_kernel_in_qemu
from tools.machines import qemu_command
from vmm.vm import StopKind

MODES = DEVICE_GUEST_MODES

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
    cli
    hlt                             // in the same block: the reset comes first
    PRINT "not reached\\n"
    EXIT EXIT_OK
%include "kernel_bss.inc"
"""
EXPECTED = b"port 0x92: 0x00000002\nA20 written again, still running\n"


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> bytes:
    return build_kernel(tmp_path_factory.mktemp("port92"), "port92", GUEST)


@pytest.mark.parametrize("mode", MODES)
def test_fast_reset(mode, image):
    result, out = run_kernel(image, mode)
    assert result.kind is StopKind.RESET, result.message
    assert "reset through port 0x92" in result.message
    assert out == EXPECTED


@pytest.mark.qemu
def test_qemu_agrees(image, tmp_path):
    out, status = run_kernel_in_qemu(image, tmp_path, qemu_command)
    assert out == EXPECTED and status == 0   # -no-reboot: the reset ends QEMU
