"""Guest paging walkers: what the MMU does on a TLB miss, one paging-structure read at a time.

32-bit paging (SDM vol. 3 §4.3): CR3 bits 31:12 locate the page directory; a linear
address splits into directory index (31:22), table index (21:12) and offset (11:0).

PDE / PTE bits (4 bytes each)::

    bit 0  P     present            bit 5  A    accessed
    bit 1  R/W   writable           bit 6  D    dirty (PTE, or PDE with PS=1)
    bit 2  U/S   user               bit 7  PS   4 MiB page (PDE, when CR4.PSE=1)
    bit 3  PWT   bit 4 PCD          bit 8  G    global (PTE / 4 MiB PDE, CR4.PGE)
    bits 31:12  frame (PTE, or page table for a PDE); 4 MiB PDE: bits 31:22 frame

Access rights (§4.6): a user-mode access needs U/S=1 at every level; a write needs R/W=1
at every level, for supervisor accesses only when CR0.WP=1. The walker sets A on every
entry it uses and D on the leaf for writes, as the processor does.

#PF error code (§4.7): bit 0 P (0: not present, 1: protection), bit 1 W/R, bit 2 U/S,
bit 3 RSVD, bit 4 I/D (only with NX or SMEP, so never for 32-bit paging here).

Every read is reported to ``refs`` as (tag, physical address) so the cost model and the
tracer can attribute it (DESIGN §4).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Callable

P, RW, US, PWT, PCD, A, D, PS, G = 1, 2, 4, 8, 0x10, 0x20, 0x40, 0x80, 0x100

PF_P, PF_WR, PF_US, PF_RSVD, PF_ID = 1, 2, 4, 8, 16

CR0_WP, CR0_PG = 1 << 16, 1 << 31
CR4_PSE = 1 << 4


class PageFault(Exception):
    """A guest page fault: CR2 (the linear address) and the SDM error code."""

    def __init__(self, address: int, error_code: int):
        super().__init__(f"#PF at {address:#010x} error code {error_code:#x}")
        self.address = address
        self.error_code = error_code


@dataclass
class Translation:
    """The result of a walk: the guest-physical address and the rights of the mapping."""

    linear: int
    physical: int
    writable: bool       # for this access's privilege (CR0.WP taken into account)
    user: bool
    dirty: bool
    page_size: int
    entries: list[tuple[str, int, int]] = field(default_factory=list)  # (level, phys addr, value)


# Tags for references, read by the cost model: "guest L2" is the page directory.
LEVEL_NAMES_32 = ("PDE", "PTE")


class Walker32:
    """The two-level 32-bit walker over guest-physical memory.

    ``read32(gpa)`` and ``write32(gpa, value)`` access guest-physical memory (in
    ``vtx-ept`` they will themselves go through EPT; here they are plain reads).
    """

    levels = 2

    def __init__(self, read32: Callable[[int], int], write32: Callable[[int, int], None]):
        self.read32 = read32
        self.write32 = write32
        self.references = 0

    def walk(self, cr0: int, cr3: int, cr4: int, linear: int, *, write: bool, user: bool,
             fetch: bool = False, set_ad: bool = True) -> Translation:
        linear &= 0xFFFFFFFF
        table = cr3 & 0xFFFFF000
        shift = 22
        entries: list[tuple[str, int, int]] = []
        user_ok, write_ok = True, True
        used: list[tuple[int, int]] = []
        for level in range(self.levels):
            addr = table + ((linear >> shift) & 0x3FF) * 4
            value = self.read32(addr)
            self.references += 1
            entries.append((LEVEL_NAMES_32[level], addr, value))
            if not value & P:
                raise PageFault(linear, _error(False, write, user))
            user_ok &= bool(value & US)
            write_ok &= bool(value & RW)
            used.append((addr, value))
            leaf = level == self.levels - 1 or (value & PS and cr4 & CR4_PSE)
            if leaf:
                size = 1 << shift
                frame = value & ~(size - 1) & 0xFFFFFFFF
                if level == 0 and value & PS:
                    frame = value & 0xFFC00000
                break
            table = value & 0xFFFFF000
            shift = 12
        if user and not user_ok:
            raise PageFault(linear, _error(True, write, user))
        writable = write_ok or (not user and not cr0 & CR0_WP)
        if write and not writable:
            raise PageFault(linear, _error(True, write, user))
        if set_ad:
            for i, (addr, value) in enumerate(used):
                new = value | A
                if i == len(used) - 1 and write:
                    new |= D
                if new != value:
                    self.write32(addr, new)
                    used[i] = (addr, new)
        dirty = bool(used[-1][1] & D)
        return Translation(linear, frame | (linear & (size - 1)), writable, user_ok, dirty, size, entries)


def _error(present: bool, write: bool, user: bool) -> int:
    return (PF_P if present else 0) | (PF_WR if write else 0) | (PF_US if user else 0)


def phys_reader(read_bytes: Callable[[int, int], bytes]) -> Callable[[int], int]:
    """Adapt a ``read(addr, size) -> bytes`` function to the walker's ``read32``."""
    return lambda addr: struct.unpack("<I", read_bytes(addr, 4))[0]


def phys_writer(write_bytes: Callable[[int, bytes], None]) -> Callable[[int, int], None]:
    return lambda addr, value: write_bytes(addr, struct.pack("<I", value & 0xFFFFFFFF))
