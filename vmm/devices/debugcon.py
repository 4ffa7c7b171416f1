"""The debug console at port 0xe9 (Bochs's "port e9 hack", QEMU's ``isa-debugcon``).

A byte written to 0xe9 goes to the console output (the same stream as COM1's), with no
setup at all: the easiest way for a small kernel to print. A read returns 0xe9, which is
how a guest detects the device (QEMU's ``readback`` value). Wider accesses are split into
bytes by the bus, one character each, as QEMU's byte-wide device sees them.

QEMU's ``pc`` adds it only with ``-debugcon``; this board has it unless ``--device
debugcon=off`` (a guest that reads 0xe9 then sees 0xff, as under QEMU without it).
"""
from __future__ import annotations

from collections.abc import Callable

DEBUGCON_PORT = 0xE9
READBACK = 0xE9


class DebugCon:
    io_max_size = 1

    def __init__(self, output: Callable[[bytes], None]):
        self.output = output
        self.written = 0

    def io_read(self, port: int, size: int) -> int:
        return READBACK

    def io_write(self, port: int, size: int, value: int) -> None:
        self.written += 1
        self.output(bytes([value & 0xFF]))
