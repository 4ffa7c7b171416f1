"""The I/O permission check of IN, OUT, INS and OUTS, which Unicorn leaves out.

In protected mode, at CPL > IOPL and in virtual-8086 mode, a port access is allowed
only if the I/O permission bitmap in the TSS clears every bit of the ports it touches;
otherwise the instruction raises #GP(0) before it reads or writes anything (SDM vol. 1
§19.5.2). Unicorn's translator skips the check (``gen_check_io`` returns at once), so
ring-3 port I/O was never refused.

The VMM decides in the engine's port hook, which runs inside the instruction with EIP
synced to it (``mode.io_permitted``: the bitmap of the guest's own TSS). Refusing
precisely is the hard part: a hook cannot raise an exception, and the rest of the
translated block would run after it. QEMU's I/O breakpoints give the way out. With
``HF_IOBPT`` in ``hflags`` the translator follows each port access with
``helper_bpt_io``, which raises #DB at once, EIP past the instruction, if DR7 arms an
I/O breakpoint on the port. So a refused access leaves EAX as it was (IN) or goes
nowhere (OUT), arms breakpoint 0 on its port for that one access, and the #DB that
follows is turned back into the instruction's #GP(0) with EIP, ECX, ESI, EDI, DR0, DR6
and DR7 as they were. ``HF_IOBPT`` is a translation flag: the engine sets it once and
again wherever the guest's own MOV to DR7 may have cleared it (QEMU recomputes it from
the guest's DR7). One difference from hardware remains: QEMU's INS stores a zero to its
destination before the port is read, so a refused INS leaves zeros where it would have
stored (the hardware leaves the destination untouched).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..x86 import EFLAGS, IOPL_SHIFT

HF_IOBPT = 1 << 24                   # QEMU's HF_IOBPT_MASK: an I/O breakpoint may be armed
IOPL_MASK = 3
DR7_L0 = 1 << 0
DR7_IO_RW0 = 2 << 16                 # R/W0 = 10b: break on I/O reads and writes (CR4.DE)
_SAVED = ("eip", "ecx", "esi", "edi", "dr0", "dr6", "dr7")
_MASKS = {1: 0xFF, 2: 0xFFFF, 4: 0xFFFFFFFF}


@dataclass(frozen=True)
class Refusal:
    """The registers a refused access's instruction gets back."""

    registers: tuple[tuple[str, int], ...]


class IoPermission:
    """The check, for an engine whose ``ops`` answer ``io_permitted(port, size)``."""

    def __init__(self, engine, permitted: Callable[[int, int], bool]):
        self.engine = engine
        self.permitted = permitted
        self.pending: Refusal | None = None

    def applies(self) -> bool:
        """Protected mode at CPL > IOPL, or virtual-8086 mode (where the check is made
        whatever IOPL says, and without the CPL test)."""
        eng = self.engine
        flags = eng.reg("eflags")
        return bool(flags & EFLAGS.VM) or eng.cpl() > (flags >> IOPL_SHIFT) & IOPL_MASK

    def allows(self, port: int, size: int) -> bool:
        """Called from the port hook: True lets the access go on; False refuses it and
        arms the breakpoint that ends the instruction (:meth:`take_refusal`)."""
        if not self.applies() or self.permitted(port, size):
            return True
        eng = self.engine
        self.pending = Refusal(tuple((name, eng.reg(name)) for name in _SAVED))
        eng.set_reg("dr0", port)
        eng.set_reg("dr7", DR7_L0 | DR7_IO_RW0)
        return False

    def held_value(self, size: int) -> int:
        """What a refused IN reads: the register's own bits, so it stays as it was."""
        return self.engine.reg("eax") & _MASKS.get(size, _MASKS[4])

    def take_refusal(self) -> bool:
        """Called for a #DB: True if it is the armed breakpoint of a refused access, now
        undone (the caller raises #GP(0) at the instruction)."""
        refusal, self.pending = self.pending, None
        if refusal is None:
            return False
        for name, value in refusal.registers:
            self.engine.set_reg(name, value)
        return True


__all__ = ["HF_IOBPT", "IoPermission"]
