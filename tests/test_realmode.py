"""Real mode: IP wraps, a reset is a reset, a BIOS call returns.

Boot sectors run in every mode that runs real-mode code (``native``; ``vtx-ept``, whose
unrestricted guest allows it). The IP wrap is compared with QEMU booting the same sector
from a disk (SeaBIOS loads it at 0x7c00); a reset has no QEMU counterpart (QEMU reruns its
BIOS), so the stop itself is the check. The IVT and its stubs are tests/test_firmware.py's.
"""
from __future__ import annotations

import subprocess

import pytest

from conftest import assemble
from tools.machines import DEBUG_EXIT_DEVICE, qemu_binary
from vmm.loader.image import load_image
from vmm.vm import VM, StopKind

QEMU = qemu_binary("i386")
RAM = 16 << 20
REAL_MODE_MODES = ("native", "vtx-ept")

#: Three NOPs end at 1000:FFFF; the next instruction is at 1000:0000 (exit 0x11), not at
#: linear 0x20000 = 2000:0000 (exit 0x22).
WRAP = """
    xor ax, ax
    mov ds, ax
    mov ax, 0x1000
    mov es, ax
    mov byte ptr es:[0xFFFD], 0x90
    mov byte ptr es:[0xFFFE], 0x90
    mov byte ptr es:[0xFFFF], 0x90
    mov word ptr es:[0x0000], 0x11b0
    mov word ptr es:[0x0002], 0xf4e6
    mov ax, 0x2000
    mov es, ax
    mov word ptr es:[0x0000], 0x22b0
    mov word ptr es:[0x0002], 0xf4e6
    ljmp 0x1000:0xfffd
"""


def sector(src: str) -> bytes:
    code = assemble(src, 0x7C00, bits=16)
    return code + bytes(510 - len(code)) + b"\x55\xaa"


def boot(src: str, mode: str):
    vm = VM(load_image(sector(src), ram_size=RAM), mode=mode, ram_size=RAM,
            serial_output=lambda _b: None, timeout=10)
    return vm.run()


@pytest.mark.parametrize("mode", REAL_MODE_MODES)
def test_ip_wraps_at_0xffff(mode):
    result = boot(WRAP, mode)
    assert (result.kind, result.exit_status) == (StopKind.EXIT, 0x11 << 1 | 1), result.message


@pytest.mark.qemu
@pytest.mark.skipif(QEMU is None, reason="qemu-system-i386 is not on PATH")
def test_ip_wrap_matches_qemu(tmp_path):
    disk = tmp_path / "boot.bin"
    disk.write_bytes(sector(WRAP))
    proc = subprocess.run([QEMU, "-drive", f"file={disk},format=raw,if=ide", "-device", DEBUG_EXIT_DEVICE,
                           "-display", "none", "-nodefaults", "-no-reboot"],
                          stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
    assert proc.returncode == boot(WRAP, "native").exit_status


@pytest.mark.parametrize("mode", REAL_MODE_MODES)
def test_far_jump_to_the_reset_vector_is_a_reset(mode):
    result = boot("ljmp 0xf000:0xfff0", mode)
    assert result.kind is StopKind.RESET, result.message
    assert "reset vector F000:FFF0" in result.message and "no firmware" in result.message


@pytest.mark.parametrize("mode", REAL_MODE_MODES)
def test_int_through_a_bios_vector_returns(mode):
    """The firmware's IVT sends INT 10h to a stub that returns; the guest goes on."""
    src = "xor ax, ax\nmov ds, ax\nmov ss, ax\nmov sp, 0x7000\nint 0x10\nmov al, 0x2a\nout 0xf4, al\nhlt"
    result = boot(src, mode)
    assert (result.kind, result.exit_status) == (StopKind.EXIT, 0x2A << 1 | 1), result.message


@pytest.mark.parametrize("mode", REAL_MODE_MODES)
def test_a_vector_the_guest_cleared_is_taken_as_the_cpu_takes_it(mode):
    """A vector set to 0000:0000 runs the code at 0000:0000, here the guest's own."""
    src = """
        xor ax, ax
        mov ds, ax
        mov ss, ax
        mov sp, 0x7000
        mov dword ptr [0x10*4], 0
        mov dword ptr [0], 0xf4e633b0
        int 0x10
        hlt
    """
    result = boot(src, mode)
    assert (result.kind, result.exit_status) == (StopKind.EXIT, 0x33 << 1 | 1), result.message


@pytest.mark.parametrize("mode", REAL_MODE_MODES)
def test_installed_vector_still_runs(mode):
    """A vector the guest installed is delivered to the guest's handler."""
    src = """
        xor ax, ax
        mov ds, ax
        mov ss, ax
        mov sp, 0x7000
        mov word ptr [0x10*4], handler
        mov word ptr [0x10*4+2], 0
        int 0x10
        mov al, 0x21
        out 0xf4, al
        hlt
    handler:
        iret
    """
    result = boot(src, mode)
    assert (result.kind, result.exit_status) == (StopKind.EXIT, 0x21 << 1 | 1), result.message


def test_protected_mode_code_at_linear_0xffff0_is_no_reset():
    """Only real mode reboots through F000:FFF0: flat protected-mode code runs through it."""
    code = b"\x90" * 0xF0 + bytes(assemble("mov al, 0x33; out 0xf4, al", 0xFFFF0))
    vm = VM(load_image(code, ram_size=RAM, kind="flat", load_address=0xFFF00), ram_size=RAM,
            serial_output=lambda _b: None, timeout=10)
    result = vm.run()
    assert (result.kind, result.exit_status) == (StopKind.EXIT, 0x33 << 1 | 1), result.message


@pytest.mark.parametrize("mode", REAL_MODE_MODES)
def test_16_bit_code_is_decoded_as_16_bit(mode):
    """SMSW AX in real mode writes AX only (SDM: SMSW r16). vtx-ept, which answers SMSW
    from the CR0 read shadow at its code site, once decoded the site as 32-bit code,
    read it as SMSW EAX and cleared EAX's upper half."""
    result = boot("mov eax, 0x5a5a0000\n    smsw ax\n    shr eax, 16\n    out 0xf4, al", mode)
    assert result.kind is StopKind.EXIT, result.message
    assert result.status == (0x5A << 1) | 1


def _smc_sector() -> bytes:
    """A loop that copies routine A or B (alternately) byte by byte into a buffer on its
    own code page, runs it, and sums what each run returned in AL: 1, 2, 1, 2, 1, 2."""
    loop = assemble("""
    xor ax, ax
    mov ds, ax
    mov ss, ax
    mov sp, 0x7000
    xor bx, bx
again:
    mov si, 0x7d40
    test bx, 1
    jz pick
    mov si, 0x7d60
pick:
    mov di, 0x7d80
    mov cx, 16
copy:
    mov al, [si]
    mov [di], al
    inc si
    inc di
    loop copy
    jmp 0x7d80
""", 0x7C00, bits=16)
    again = 0x7C00 + len(assemble("xor ax, ax\nmov ds, ax\nmov ss, ax\nmov sp, 0x7000\nxor bx, bx", 0x7C00, bits=16))
    tail = assemble(f"""
    mov [0x6000 + bx], al
    inc bx
    cmp bx, 6
    jae done
    jmp {again:#x}
done:
    mov al, [0x6000]
    add al, [0x6001]
    add al, [0x6002]
    add al, [0x6003]
    add al, [0x6004]
    add al, [0x6005]
    out 0xf4, al
""", 0x7DA0, bits=16)
    image = bytearray(0x200)
    image[:len(loop)] = loop
    image[0x140:0x148] = bytes.fromhex("eb029090b0019090")   # A: jmp +2; nop; nop; mov al, 1; (falls on)
    image[0x160:0x168] = bytes.fromhex("e80200eb03b002c3")   # B: call +2; jmp +3; mov al, 2; ret
    image[0x180:0x1A0] = b"\x90" * 32                        # the buffer, then the tail
    image[0x1A0:0x1A0 + len(tail)] = tail
    image[0x1FE:] = b"\x55\xaa"
    return bytes(image)


@pytest.mark.parametrize("mode", REAL_MODE_MODES)
def test_code_rewritten_on_its_own_page_runs_as_written(mode):
    """Each run executes the routine just copied, never the one before (the VMM's
    code-page policy once made Unicorn stop noticing the copy's later stores:
    vmm.cpu.quirks.keep_code_writes_detected)."""
    vm = VM(load_image(_smc_sector(), ram_size=RAM, kind="bootsector"), mode=mode, ram_size=RAM,
            serial_output=lambda _b: None, timeout=10)
    result = vm.run()
    assert result.kind is StopKind.EXIT, result.message
    assert result.status == (9 << 1) | 1
