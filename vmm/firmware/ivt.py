"""The real-mode interrupt vector table SeaBIOS leaves, and what stands behind each vector.

SeaBIOS's ``ivt_init`` (src/post.c) points every vector at ``entry_iret_official``
(an IRET at F000:FF53), IRQ 0-7's vectors (08h-0Fh) at a handler that sends the master
8259 an EOI and IRQ 8-15's (70h-77h) at one that sends both an EOI, the BIOS services at
their entry points, and clears 60h-66h (for user programs) and 79h; the device set-up then
installs the timer (08h), keyboard (09h), floppy (0Eh), RTC (70h), mouse (74h), FPU (75h)
and disk (76h) interrupt handlers, and the diskette parameter table pointer (1Eh). Every
vector here holds what it holds under QEMU 7.2 (read back from its memory), and behind
each address is code of the board's own:

* the IRET, and the hardware-interrupt handlers SeaBIOS uses by default: an EOI to the
  master PIC (and for 70h-77h to the slave first), then IRET. So an exception or an
  interrupt nobody hooked returns, as under SeaBIOS (a fault returns to the faulting
  instruction and takes it again, as it does there);
* the timer handler (08h) counts ticks in the BDA (0x46c) with SeaBIOS's midnight
  roll-over and flag (0x470), calls INT 1Ch and sends the EOI;
* INT 11h and 12h, which only read the BDA, are answered: AX = the equipment word
  (0x410) and the base memory size in KiB (0x413);
* every other BIOS service (video 10h, disk 13h, serial 14h, system 15h, keyboard 16h,
  printer 17h, 18h, bootstrap 19h, time 1Ah, print screen 05h, floppy 40h) is an IRET
  that returns with nothing done. The VMM watches those one-byte stubs with code hooks
  bounded to their addresses (Unicorn compiles such a hook into the translated block of
  that address only, so nothing else pays for it): the first call of each service and
  function (vector and AH) prints one line, ``vmm: INT 10h AH=0Eh from 0000:7C12: no
  BIOS service here; returned with nothing done``. A stub the guest has overwritten, or
  code at that address run in protected mode, is not reported.
"""
from __future__ import annotations

import struct
from collections.abc import Callable
from functools import cache

from ..cpu.engine import GuestMemoryError
from .layout import BIOS_SEGMENT, Structure

IVT_BASE, VECTORS = 0, 256
IRET = 0xCF
INT_IMM8 = 0xCD
IRET_OFFICIAL = 0xFF53
HWPIC1, HWPIC2 = 0xD42E, 0xD437
DISKETTE_PARAMS = 0x601C
# SeaBIOS 1.16.2's entry points (the IBM-compatible fixed ones where there is one)
SERVICES = {0x05: 0xFF54, 0x10: 0xF065, 0x13: 0xE3FE, 0x14: 0xE739, 0x15: 0xF859, 0x16: 0xE82E,
            0x17: 0xEFD2, 0x18: 0xD453, 0x19: 0xE6F2, 0x1A: 0xFE6E, 0x40: 0xEC59}
ANSWERED = {0x11: (0xF84D, 0x410), 0x12: (0xF841, 0x413)}     # vector: (entry, BDA word it returns)
NMI_ENTRY = 0xE2C3
TIMER = (0x08, 0xFEA5)
MASTER_IRQ_ENTRIES = {0x09: 0xE987, 0x0E: 0xEF57}                # keyboard, floppy: EOI only
SLAVE_IRQ_ENTRIES = {0x70: 0xD413, 0x74: 0xD41C, 0x75: 0xD425, 0x76: 0xD40A}
MASTER_VECTORS, SLAVE_VECTORS = range(0x08, 0x10), range(0x70, 0x78)
CLEARED = (*range(0x60, 0x67), 0x79)
DISKETTE_VECTOR = 0x1E
# SeaBIOS's diskette_param_table2's first 11 bytes (the classic 1.44 MB table)
DISKETTE_TABLE = bytes([0xAF, 0x02, 0x25, 0x02, 0x12, 0x1B, 0xFF, 0x6C, 0xF6, 0x0F, 0x08])

EOI_MASTER = "push ax\nmov al, 0x20\nout 0x20, al\npop ax\niret"
EOI_SLAVE = "push ax\nmov al, 0x20\nout 0xa0, al\nout 0x20, al\npop ax\niret"
# SeaBIOS's handle_08: count, from TICKS_PER_DAY (0x1800b0) on roll over to 0 and count the
# roll-over in 0x470, INT 1Ch, EOI.
TIMER_HANDLER = """
    push ds
    push ax
    xor ax, ax
    mov ds, ax
    add word ptr [0x46c], 1
    adc word ptr [0x46e], 0
    cmp word ptr [0x46e], 0x18
    jb counted
    ja midnight
    cmp word ptr [0x46c], 0xb0
    jb counted
midnight:
    mov word ptr [0x46c], 0
    mov word ptr [0x46e], 0
    inc byte ptr [0x470]
counted:
    int 0x1c
    mov al, 0x20
    out 0x20, al
    pop ax
    pop ds
    iret
"""
BDA_WORD = "push ds\nxor ax, ax\nmov ds, ax\nmov ax, word ptr [{:#x}]\npop ds\niret"


@cache
def _assemble(source: str, address: int) -> bytes:
    from keystone import KS_ARCH_X86, KS_MODE_16, Ks

    return bytes(Ks(KS_ARCH_X86, KS_MODE_16).asm(source, address & 0xFFFF)[0])


def vectors() -> list[tuple[int, int]]:
    """(segment, offset) of every vector, as SeaBIOS leaves them."""
    table = [(BIOS_SEGMENT, IRET_OFFICIAL)] * VECTORS
    for v in MASTER_VECTORS:
        table[v] = (BIOS_SEGMENT, HWPIC1)
    for v in SLAVE_VECTORS:
        table[v] = (BIOS_SEGMENT, HWPIC2)
    entries = {**SERVICES, **{v: e for v, (e, _) in ANSWERED.items()}, 0x02: NMI_ENTRY, TIMER[0]: TIMER[1],
               **MASTER_IRQ_ENTRIES, **SLAVE_IRQ_ENTRIES, DISKETTE_VECTOR: DISKETTE_PARAMS}
    for v, offset in entries.items():
        table[v] = (BIOS_SEGMENT, offset)
    for v in CLEARED:
        table[v] = (0, 0)
    return table


def linear(offset: int) -> int:
    return (BIOS_SEGMENT << 4) + offset


def build() -> list[Structure]:
    ivt = b"".join(struct.pack("<HH", off, seg) for seg, off in vectors())
    code: list[tuple[str, int, bytes]] = [("IRET", IRET_OFFICIAL, bytes([IRET])), ("NMI", NMI_ENTRY, bytes([IRET])),
                                          ("IRQ 0-7", HWPIC1, _assemble(EOI_MASTER, HWPIC1)),
                                          ("IRQ 8-15", HWPIC2, _assemble(EOI_SLAVE, HWPIC2)),
                                          ("INT 08h", TIMER[1], _assemble(TIMER_HANDLER, TIMER[1])),
                                          ("diskette parameters", DISKETTE_PARAMS, DISKETTE_TABLE)]
    code += [(f"INT {v:02X}h", e, _assemble(EOI_MASTER, e)) for v, e in MASTER_IRQ_ENTRIES.items()]
    code += [(f"INT {v:02X}h", e, _assemble(EOI_SLAVE, e)) for v, e in SLAVE_IRQ_ENTRIES.items()]
    code += [(f"INT {v:02X}h", e, _assemble(BDA_WORD.format(word), e)) for v, (e, word) in ANSWERED.items()]
    code += [(f"INT {v:02X}h", e, bytes([IRET])) for v, e in SERVICES.items()]
    return [Structure("real-mode IVT", IVT_BASE, ivt)] + \
        [Structure(f"BIOS {name} handler", linear(off), data) for name, off, data in code]


class ServiceWatch:
    """The one-line notice for a BIOS service that is not there: once per vector and AH."""

    def __init__(self, engine, notice: Callable[[str], None]):
        self.engine, self.notice = engine, notice
        self.reported: set[tuple[int, int]] = set()
        self.lines: list[str] = []

    def arm(self) -> None:
        for vector, offset in SERVICES.items():
            self.engine.add_breakpoint(linear(offset), lambda _a, v=vector, o=offset: self.called(v, o),
                                       retranslate=False)   # armed before the guest runs

    def called(self, vector: int, offset: int) -> None:
        eng = self.engine
        if eng.reg("cr0") & 1 or eng.read_phys(linear(offset), 1)[0] != IRET:
            return                      # protected-mode code there, or the guest's own bytes
        ah = eng.reg("eax") >> 8 & 0xFF
        if (vector, ah) in self.reported:
            return
        self.reported.add((vector, ah))
        line = (f"vmm: INT {vector:02X}h AH={ah:02X}h from {self.caller(vector)}: no BIOS service here; "
                f"returned with nothing done")
        self.lines.append(line)
        self.notice(line)

    def caller(self, vector: int) -> str:
        """CS:IP of the INT that called, from the IRET frame on the stack (the return
        address, if no INT imm8 for this vector ends there; "?" if the stack is not RAM)."""
        eng = self.engine
        ss, sp = eng.reg("ss"), eng.reg("esp") & 0xFFFF
        try:
            ip, cs = struct.unpack("<HH", eng.read_phys((ss << 4) + sp, 4))
            if eng.read_phys((cs << 4) + ((ip - 2) & 0xFFFF), 2) == bytes([INT_IMM8, vector]):
                ip = (ip - 2) & 0xFFFF
        except GuestMemoryError:
            return "?"
        return f"{cs:04X}:{ip:04X}"
