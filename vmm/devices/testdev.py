"""pc-testdev: QEMU's ISA test device, which kvm-unit-tests' x86 tests drive.

QEMU adds it with ``-device pc-testdev``; the board here always has it, as it always has
isa-debug-exit, so that an image run under ``qemu-system-i386 -device pc-testdev ...``
finds the same machine. What a guest sees (QEMU's ``hw/misc/pc-testdev.c``):

* ports 0xe0-0xe3: a 32-bit data register, read and written at any width and offset
  (the bytes at ``port & 3``);
* ports 0xe4-0xe7: "flush page", a 4-byte write of a guest-physical address. QEMU drops
  and restores its host mapping of that page (which matters to KVM's page tables); a
  TCG guest sees nothing, and here it is only counted;
* ports 0xe8-0xeb: the same data register, one byte per port;
* ports 0x2000-0x2017: interrupt lines. A byte written to 0x2000 + n sets GSI n's
  level (nonzero: high), on the board's lines (vmm.devices.gsi): lines 0-15 reach the
  8259A pair, which latches a rising edge (the request stays pending when the line drops
  again), and the I/O APIC; lines 16-23 the I/O APIC only;
* MMIO 0xff000000-0xff00ffff: 64 KiB that read back what was written (the "iomem"
  kvm-unit-tests' ``emulator`` test runs instructions against), little-endian, any size.

Accesses of a size the region does not take (a flush that is not 4 bytes, an IRQ write
wider than a byte) are ignored, and such reads return all ones, as QEMU's invalid-size
accesses do.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

DATA_PORT = 0xE0
FLUSH_PORT = 0xE4
DATA_BYTE_PORT = 0xE8
PORT_WIDTH = 4
IRQ_PORT = 0x2000
IRQ_LINES = 24
IOMEM_BASE = 0xFF000000
IOMEM_SIZE = 0x10000
_U32 = 0xFFFFFFFF


@dataclass(frozen=True)
class TestdevState:
    data: int
    levels: int           # bit n: IRQ line n is high
    iomem: bytes
    flushes: int


class _DataRegister:
    """One register, two windows: 0xe0-0xe3 at any width, 0xe8-0xeb a byte per port."""

    def __init__(self, owner: PcTestdev, base: int, max_size: int):
        self.owner, self.base, self.io_max_size = owner, base, max_size

    def io_read(self, port: int, size: int) -> int:
        shift = 8 * ((port - self.base) & 3)
        return (self.owner.data >> shift) & ((1 << 8 * size) - 1)

    def io_write(self, port: int, size: int, value: int) -> None:
        shift = 8 * ((port - self.base) & 3)
        mask = (((1 << 8 * size) - 1) << shift) & _U32
        self.owner.data = (self.owner.data & ~mask) | ((value << shift) & mask)


class PcTestdev:
    """``drive(n, high)`` sets the level of the board's interrupt line (GSI) ``n``."""

    def __init__(self, drive: Callable[[int, bool], None]):
        self.drive = drive
        self.data = 0
        self.levels = 0
        self.iomem = bytearray(IOMEM_SIZE)
        self.flushes = 0
        self.data_port = _DataRegister(self, DATA_PORT, PORT_WIDTH)
        self.data_byte_port = _DataRegister(self, DATA_BYTE_PORT, 1)
        self.irq_port = _IrqLines(self)
        self.flush_port = _FlushPort(self)

    def save_state(self) -> TestdevState:
        iomem = bytes(self.iomem).rstrip(b"\0")   # most guests never touch it
        return TestdevState(self.data, self.levels, iomem, self.flushes)

    def load_state(self, state: TestdevState) -> None:
        self.data, self.levels, self.flushes = state.data, state.levels, state.flushes
        self.iomem[:] = state.iomem.ljust(IOMEM_SIZE, b"\0")

    def set_line(self, line: int, high: bool) -> None:
        bit = 1 << line
        self.levels = self.levels | bit if high else self.levels & ~bit
        self.drive(line, high)

    # -- the iomem window (MMIO) ----------------------------------------------------------
    def mmio_read(self, offset: int, size: int) -> int:
        return int.from_bytes(self.iomem[offset:offset + size], "little")

    def mmio_write(self, offset: int, size: int, value: int) -> None:
        piece = (value & ((1 << 8 * size) - 1)).to_bytes(size, "little")
        end = min(offset + size, IOMEM_SIZE)
        self.iomem[offset:end] = piece[:end - offset]


class _WriteOnly:
    io_max_size = 4   # a wider access is one access of the wrong size, not four bytes

    def __init__(self, owner: PcTestdev):
        self.owner = owner

    def io_read(self, port: int, size: int) -> int:
        return (1 << 8 * size) - 1


class _IrqLines(_WriteOnly):
    def io_write(self, port: int, size: int, value: int) -> None:
        if size == 1:
            self.owner.set_line(port - IRQ_PORT, bool(value & 0xFF))


class _FlushPort(_WriteOnly):
    def io_write(self, port: int, size: int, value: int) -> None:
        if size != PORT_WIDTH or port != FLUSH_PORT:
            return
        self.owner.flushes += 1
