"""pc-testdev, the test device kvm-unit-tests drives: its data register through both
windows, its iomem, its interrupt lines. One guest prints what it reads; its output must
be QEMU's (``-device pc-testdev``) byte for byte in every mode that boots it."""
from __future__ import annotations

from conftest import SHOW_MACRO
from vmm.devices import Board
from vmm.devices.testdev import IOMEM_BASE

GUEST = f"""%include "kernel.inc"
{SHOW_MACRO}
kmain:
    mov dx, 0xe0
    mov eax, 0x11223344
    out dx, eax
    in eax, dx
    SHOW "data register: "
    xor eax, eax
    mov dx, 0xe9
    in al, dx
    SHOW "byte window, port 0xe9: "
    xor eax, eax
    mov dx, 0xe2
    in ax, dx
    SHOW "word at port 0xe2: "
    mov dx, 0xe8
    mov eax, 0x55667788
    out dx, eax                     // the byte window takes it as four byte writes
    mov dx, 0xe0
    in eax, dx
    SHOW "after a dword through the byte window: "
    mov dword ptr [{IOMEM_BASE:#x}], 0xdeadbeef
    mov word ptr [{IOMEM_BASE + 2:#x}], 0x1234
    mov eax, dword ptr [{IOMEM_BASE:#x}]
    SHOW "iomem: "
    mov edi, {IOMEM_BASE + 0x2fc:#x}   // across offset 0x300 (an APIC register's offset)
    mov ecx, 16
    mov dx, 0xe0
    cld
    rep insb byte ptr es:[edi], dx
    mov eax, dword ptr [{IOMEM_BASE + 0x308:#x}]
    SHOW "rep insb into iomem: "
    SET_HANDLER IRQ_BASE + 11, irq11_handler
    PIC_REMAP 0xfb, 0xf7        // the cascade and IRQ 11
    mov dx, 0x200b
    mov eax, 1
    out dx, eax                     // a dword: the wrong size, ignored
    sti
    jmp dword_window
dword_window:
    cli
    PRINT "a dword write raised nothing\\n"
    mov dx, 0x200b
    sti
    mov al, 1
    out dx, al                      // IRQ11 high (the handler lowers it)
    jmp irq_window                  // taken here: QEMU's TCG, like the engine, looks for an
irq_window:                         // interrupt where a translated block ends
    cli
    PRINT "done\\n"
    EXIT EXIT_OK

irq11_handler:
    PRINT "irq11\\n"
    mov dx, 0x200b
    mov al, 0
    out dx, al                      // the line low before the EOI (firmware makes IRQ11 level-triggered)
    OUTB_IMM PIC2_CMD, PIC_EOI
    OUTB_IMM PIC1_CMD, PIC_EOI
    ret

%include "kernel_bss.inc"
"""

EXPECTED = b"""data register: 0x11223344
byte window, port 0xe9: 0x00000033
word at port 0xe2: 0x00001122
after a dword through the byte window: 0x55667788
iomem: 0x1234beef
rep insb into iomem: 0x88888888
a dword write raised nothing
irq11
done
"""


def test_state_survives_save_and_load():
    board = Board()
    t = board.testdev
    board.port_bus.write(0xE0, 4, 0xCAFEF00D)
    board.mmio_bus.write(IOMEM_BASE + 0x10, 4, 0x01020304)
    board.port_bus.write(0x2003, 1, 1)
    other = Board()
    other.load_state(board.save_state())
    assert other.port_bus.read(0xE0, 4) == 0xCAFEF00D
    assert other.mmio_bus.read(IOMEM_BASE + 0x10, 4) == 0x01020304
    assert other.testdev.levels == t.levels == 1 << 3
