"""The VMX I/O and MSR bitmaps (SDM vol. 3 §25.6.4, §25.6.9), their layout in one place.

The hypervisor sets and clears intercepts here; the processor asks here whether an
access exits. Both sides read the same bytes, which are also copied to the host pages
the VMCS fields IO_BITMAP_A/B and MSR_BITMAP point at (what a real processor reads).

Layout:

* I/O bitmap A covers ports 0000-7FFF, bitmap B 8000-FFFF, one bit per port;
* the 4-KiB MSR bitmap holds four 1-KiB quarters: read-low (MSRs 00000000-00001FFF),
  read-high (C0000000-C0001FFF), write-low, write-high. An MSR outside both ranges
  always exits.
"""
from __future__ import annotations

from collections.abc import Callable

BITMAP_SIZE = 0x1000
IO_PORTS_PER_BITMAP = 0x8000
IO_PORT_LIMIT = 0x10000
MSR_LOW_END = 0x1FFF
MSR_HIGH_BASE, MSR_HIGH_END = 0xC0000000, 0xC0001FFF
MSR_INDEX_MASK = 0x1FFF
MSR_READ_LOW, MSR_READ_HIGH, MSR_WRITE_LOW, MSR_WRITE_HIGH = 0x000, 0x400, 0x800, 0xC00
BITS_PER_BYTE_SHIFT, BIT_IN_BYTE = 3, 7


class VmxBitmaps:
    """The three bitmap pages; ``sync(which, data)`` copies a changed page to host memory
    (which: 0 = I/O A, 1 = I/O B, 2 = MSR)."""

    IO_A, IO_B, MSR = 0, 1, 2

    def __init__(self, sync: Callable[[int, bytes], None]):
        self.io = (bytearray(BITMAP_SIZE), bytearray(BITMAP_SIZE))
        self.msr = bytearray(b"\xff" * BITMAP_SIZE)  # every RDMSR/WRMSR exits until the VMM says otherwise
        self._sync = sync

    def publish(self) -> None:
        """Copy all three pages to host memory (after the VMCS points at them)."""
        self._sync(self.IO_A, bytes(self.io[0]))
        self._sync(self.IO_B, bytes(self.io[1]))
        self._sync(self.MSR, bytes(self.msr))

    # -- I/O ------------------------------------------------------------------------------------
    def set_io(self, port: int, on: bool = True) -> None:
        which = 0 if port < IO_PORTS_PER_BITMAP else 1
        _set_bit(self.io[which], port & (IO_PORTS_PER_BITMAP - 1), on)
        self._sync(which, bytes(self.io[which]))

    def io_exits(self, port: int, size: int) -> bool:
        """An access of ``size`` bytes at ``port`` exits if any port it touches is set;
        one wrapping past FFFF always exits."""
        for p in range(port, min(port + size, IO_PORT_LIMIT)):
            bitmap = self.io[0 if p < IO_PORTS_PER_BITMAP else 1]
            index = p & (IO_PORTS_PER_BITMAP - 1)
            if bitmap[index >> BITS_PER_BYTE_SHIFT] >> (index & BIT_IN_BYTE) & 1:
                return True
        return port + size > IO_PORT_LIMIT

    # -- MSRs -----------------------------------------------------------------------------------
    @staticmethod
    def _msr_quarters(msr: int) -> tuple[int, int] | None:
        """(read quarter, write quarter) of ``msr``, or None outside both ranges."""
        if msr <= MSR_LOW_END:
            return MSR_READ_LOW, MSR_WRITE_LOW
        if MSR_HIGH_BASE <= msr <= MSR_HIGH_END:
            return MSR_READ_HIGH, MSR_WRITE_HIGH
        return None

    def set_msr(self, msr: int, *, read: bool, write: bool) -> None:
        quarters = self._msr_quarters(msr)
        if quarters is None:
            return  # outside both ranges every RDMSR/WRMSR exits
        for base, on in zip(quarters, (read, write), strict=True):
            _set_bit(self.msr, base * 8 + (msr & MSR_INDEX_MASK), on)
        self._sync(self.MSR, bytes(self.msr))

    def msr_exits(self, msr: int, write: bool) -> bool:
        quarters = self._msr_quarters(msr)
        if quarters is None:
            return True
        index = quarters[write] * 8 + (msr & MSR_INDEX_MASK)
        return bool(self.msr[index >> BITS_PER_BYTE_SHIFT] >> (index & BIT_IN_BYTE) & 1)


def _set_bit(bitmap: bytearray, bit: int, on: bool) -> None:
    byte, mask = bit >> BITS_PER_BYTE_SHIFT, 1 << (bit & BIT_IN_BYTE)
    bitmap[byte] = bitmap[byte] | mask if on else bitmap[byte] & ~mask
