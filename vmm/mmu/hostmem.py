"""VMM-private host memory for paging structures (shadow page tables, EPT).

The structures live in host-physical memory like a real hypervisor's, outside guest
RAM, so the "hardware" walk reads them and counts each reference. Pages are handed out
zeroed from chunks mapped on demand.
"""
from __future__ import annotations

import struct
from collections.abc import Callable

from ..x86 import MiB
from ..x86.paging import PAGE_SIZE

CHUNK = MiB


class HostPages:
    """A page allocator over ``map_chunk(size) -> host-physical address``."""

    def __init__(self, map_chunk: Callable[[int], int], read: Callable[[int, int], bytes],
                 write: Callable[[int, bytes], None], read_u64: Callable[[int], int] | None = None):
        self._map_chunk = map_chunk
        self.read = read
        self.write = write
        if read_u64 is not None:
            self.read64 = read_u64
        self._free: list[int] = []
        self._next = 0
        self._end = 0
        self.allocated = 0

    def alloc(self) -> int:
        if self._free:
            page = self._free.pop()
            self.write(page, bytes(PAGE_SIZE))
        else:
            if self._next >= self._end:
                self._next = self._map_chunk(CHUNK)
                self._end = self._next + CHUNK
            page, self._next = self._next, self._next + PAGE_SIZE
        self.allocated += 1
        return page

    def free(self, page: int) -> None:
        self._free.append(page)
        self.allocated -= 1

    def read32(self, addr: int) -> int:
        return struct.unpack("<I", self.read(addr, 4))[0]

    def write32(self, addr: int, value: int) -> None:
        self.write(addr, struct.pack("<I", value & 0xFFFFFFFF))

    def read64(self, addr: int) -> int:
        return int.from_bytes(self.read(addr, 8), "little")

    def write64(self, addr: int, value: int) -> None:
        self.write(addr, struct.pack("<Q", value & 0xFFFFFFFFFFFFFFFF))
