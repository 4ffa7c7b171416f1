"""The HPET's registers and main counter as a guest reads them, against QEMU's ``hpet``
(on by default in its ``pc`` machine); plus the counter's rate in virtual time."""
from __future__ import annotations

from conftest import SHOW_MACRO
from vmm.devices import Board
from vmm.devices.hpet import HPET_BASE, ticks

B = HPET_BASE

GUEST = f"""%include "kernel.inc"
{SHOW_MACRO}
kmain:
    mov eax, dword ptr [{B:#x}]
    SHOW "capabilities, low: "
    mov eax, dword ptr [{B + 4:#x}]
    SHOW "capabilities, high (period in fs): "
    mov eax, dword ptr [{B + 0x10:#x}]
    SHOW "configuration after reset: "
    mov dword ptr [{B + 0xf0:#x}], 0x1234     // stopped: the counter is writable
    mov dword ptr [{B + 0xf4:#x}], 0
    mov eax, dword ptr [{B + 0xf0:#x}]
    SHOW "counter written while stopped: "
    mov ecx, 1000
spin1:
    loop spin1
    mov eax, dword ptr [{B + 0xf0:#x}]
    SHOW "still, after a delay: "
    mov dword ptr [{B + 0x10:#x}], 1          // ENABLE_CNF
    mov esi, dword ptr [{B + 0xf0:#x}]
    mov ecx, 1000
spin2:
    loop spin2
    mov edi, dword ptr [{B + 0xf0:#x}]
    xor eax, eax
    cmp edi, esi
    seta al
    SHOW "running: a later read is larger: "
    mov dword ptr [{B + 0x10:#x}], 0          // stopped again
    mov esi, dword ptr [{B + 0xf0:#x}]
    mov edi, dword ptr [{B + 0xf0:#x}]
    mov eax, edi
    sub eax, esi
    SHOW "stopped: two reads differ by "
    mov eax, dword ptr [{B + 0x100:#x}]
    SHOW "timer 0 configuration: "
    mov eax, dword ptr [{B + 0x104:#x}]
    SHOW "timer 0 interrupt routing capability: "
    mov eax, dword ptr [{B + 0x10c:#x}]
    SHOW "timer 0 comparator, high: "
    mov dword ptr [{B + 0x100:#x}], 0xffffffff
    mov eax, dword ptr [{B + 0x100:#x}]
    SHOW "timer 0 configuration, all ones written: "
    movzx eax, byte ptr [{B:#x}]
    SHOW "a byte read (not a size the HPET takes): "
    movzx eax, word ptr [{B + 4:#x}]
    SHOW "a word read: "
    mov dword ptr [{B + 0x10:#x}], 1
    mov byte ptr [{B + 0x10:#x}], 0
    mov eax, dword ptr [{B + 0x10:#x}]
    SHOW "configuration after a byte write of 0: "
    mov dword ptr [{B + 0x10:#x}], 0
    EXIT EXIT_OK
%include "kernel_bss.inc"
"""

EXPECTED = b"""capabilities, low: 0x8086a201
capabilities, high (period in fs): 0x00989680
configuration after reset: 0x00000000
counter written while stopped: 0x00001234
still, after a delay: 0x00001234
running: a later read is larger: 0x00000001
stopped: two reads differ by 0x00000000
timer 0 configuration: 0x00000030
timer 0 interrupt routing capability: 0x00000004
timer 0 comparator, high: 0xffffffff
timer 0 configuration, all ones written: 0x00007f7e
a byte read (not a size the HPET takes): 0x00000000
a word read: 0x00000000
configuration after a byte write of 0: 0x00000001
"""


def test_the_counter_runs_at_100_mhz_of_virtual_time():
    """One instruction is one PIT clock (1.193182 MHz): 10**6 instructions are 838 ms,
    83,809,511 ticks of 10 ns; the counter holds its value while disabled."""
    now = [0]
    board = Board()
    board.hpet.clock = lambda: now[0]
    board.mmio_bus.write(HPET_BASE + 0x10, 4, 1)
    now[0] = 10 ** 6
    assert board.mmio_bus.read(HPET_BASE + 0xF0, 8) == ticks(10 ** 6) == 83_809_511
    board.mmio_bus.write(HPET_BASE + 0x10, 4, 0)
    now[0] = 2 * 10 ** 6
    assert board.mmio_bus.read(HPET_BASE + 0xF0, 8) == 83_809_511
    other = Board()
    other.hpet.clock = lambda: now[0]
    other.load_state(board.save_state())
    assert other.mmio_bus.read(HPET_BASE + 0xF0, 8) == 83_809_511
