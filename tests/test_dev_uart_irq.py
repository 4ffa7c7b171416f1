"""COM1's interrupts on IRQ 4, as an interrupt-driven serial driver uses them: THRE when
IER enables it and after each byte sent, received data (with input fed from the host,
and a guest waiting in HLT), IIR's priority and acknowledgement, loopback. The same image
and the same input run in every mode and under QEMU; the output must be the same."""
from __future__ import annotations

import subprocess

import pytest

from conftest import DEVICE_GUEST_MODES, SHOW_MACRO, build_kernel
from tools.machines import qemu_binary, qemu_command
from vmm.loader import load_image
from vmm.vm import VM, StopKind

INPUT = b"abc"

GUEST = f"""%include "kernel.inc"
{SHOW_MACRO}
kmain:
    SET_HANDLER IRQ_BASE + 4, com_handler
    PIC_REMAP 0xef, 0xff        // IRQ 4 only
    mov dx, 0x3fa
    xor eax, eax
    out dx, al                      // FCR: FIFOs off (one byte, one interrupt)
    in al, dx
    movzx eax, al
    SHOW "IIR with IER clear: "

    // THRE: enabling it with THR empty interrupts at once.
    sti
    mov dx, 0x3f9
    mov al, 0x02
    out dx, al
    jmp thre_window
thre_window:
    nop
    cli
    mov dx, 0x3f9
    xor eax, eax
    out dx, al
    mov eax, dword ptr [count]
    SHOW "interrupts after IER.THRE: "
    mov eax, dword ptr [log]
    SHOW "IIR in the handler: "
    mov dx, 0x3fa
    in al, dx
    movzx eax, al
    SHOW "IIR after that: "

    // Received data: the host's input, one interrupt per byte, the guest halted between.
    mov dword ptr [count], 0
    mov dx, 0x3f9
    mov al, 0x01
    out dx, al
wait_rx:
    cmp dword ptr [received], 3
    jae got_rx
    sti
    hlt
    cli
    jmp wait_rx
got_rx:
    mov dx, 0x3f9
    xor eax, eax
    out dx, al
    mov eax, dword ptr [count]
    SHOW "data interrupts: "
    mov eax, dword ptr [log]
    SHOW "IIR in the first: "
    mov eax, dword ptr [chars]
    SHOW "bytes received: "

    // Loopback: a byte sent comes back as received data; RDA goes before THRE.
    mov dword ptr [count], 0
    mov dword ptr [received], 0
    mov dx, 0x3fc
    mov al, 0x18                    // LOOP | OUT2
    out dx, al
    mov dx, 0x3f9
    mov al, 0x03                    // RDA and THRE
    out dx, al
    mov dx, 0x3f8
    mov al, 0x7a
    out dx, al
    sti
    nop
    nop
    cli
    mov dx, 0x3f9
    xor eax, eax
    out dx, al
    mov dx, 0x3fc
    mov al, 0x03                    // DTR | RTS, loopback off
    out dx, al
    mov eax, dword ptr [log]
    SHOW "loopback, first IIR: "
    mov eax, dword ptr [log + 4]
    SHOW "loopback, second IIR: "
    mov eax, dword ptr [chars]
    and eax, 0xff
    SHOW "loopback byte: "
    EXIT EXIT_OK

// The driver's interrupt routine: IIR until "none", data read as it comes.
com_handler:
    mov dx, 0x3fa
    in al, dx
    test al, 1
    jnz com_done
    movzx eax, al
    mov ecx, dword ptr [count]
    cmp ecx, 8
    jae com_count
    mov dword ptr [log + ecx*4], eax
com_count:
    inc dword ptr [count]
    and al, 0x0e
    cmp al, 0x04
    jne com_handler
    mov dx, 0x3f8
    in al, dx
    mov ecx, dword ptr [received]
    mov byte ptr [chars + ecx], al
    inc dword ptr [received]
    jmp com_handler
com_done:
    OUTB_IMM PIC1_CMD, PIC_EOI
    ret

    .balign 4
count: .long 0
received: .long 0
chars: .long 0, 0
log: .long 0, 0, 0, 0, 0, 0, 0, 0
%include "kernel_bss.inc"
"""
EXPECTED = b"""IIR with IER clear: 0x00000001
interrupts after IER.THRE: 0x00000001
IIR in the handler: 0x00000002
IIR after that: 0x00000001
data interrupts: 0x00000003
IIR in the first: 0x00000004
bytes received: 0x00636261
loopback, first IIR: 0x00000004
loopback, second IIR: 0x00000002
loopback byte: 0x0000007a
"""


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> bytes:
    return build_kernel(tmp_path_factory.mktemp("uart"), "uart_irq", GUEST)


@pytest.mark.parametrize("mode", DEVICE_GUEST_MODES)
def test_interrupt_driven_serial(mode, image):
    out = bytearray()
    vm = VM(load_image(image, ram_size=128 << 20), mode=mode, serial_output=out.extend,
            serial_input=INPUT, timeout=30)
    result = vm.run()
    assert result.kind is StopKind.EXIT, result.message
    assert out.decode() == EXPECTED.decode()


@pytest.mark.qemu
def test_qemu_agrees(image, tmp_path):
    if qemu_binary("i386") is None:
        pytest.skip("qemu-system-i386 is not on PATH")
    kernel = tmp_path / "uart.elf"
    kernel.write_bytes(image)
    # QEMU reads its stdin as soon as it starts, into a FIFO the guest's FCR write empties:
    # the input goes in once the guest waits for it (after the THRE part), as a typist's would.
    proc = subprocess.Popen(qemu_command(str(kernel)), stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        head = b""
        while b"IIR after that" not in head:
            line = proc.stdout.readline()
            assert line, f"QEMU stopped early: {head!r}"
            head += line
        proc.stdin.write(INPUT)
        proc.stdin.flush()
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert (head + rest).decode() == EXPECTED.decode() and proc.returncode == 1
