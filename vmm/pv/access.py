"""Guest pointers, as a hypercall handler sees them: ``copy_from_guest`` / ``copy_to_guest``.

A hypercall argument that is an address is a guest-virtual address. It is translated
through the guest's own page tables (supervisor access, as the guest kernel would make
it) and must land in a frame the domain may map; the VMM's area, an unmapped page, a
read-only page for a write, a page-table frame for a write: all give ``-EFAULT``, never
a Python exception and never a touch of memory the domain does not own.
"""
from __future__ import annotations

import struct

from ..mmu.paging import PageFault
from ..x86 import MiB
from ..x86.paging import PAGE_OFFSET_MASK, PAGE_SHIFT, PAGE_SIZE
from .abi import HYPERVISOR_VIRT_START, Errno
from .memory import HypercallError

MAX_COPY = MiB  # no hypercall argument is larger; a bigger count is a guest error


class GuestAccess:
    """``walk(linear, write, user)`` is the mode's guest walk (returns a Translation)."""

    def __init__(self, walk, mem, engine):
        self.walk, self.mem, self.engine = walk, mem, engine

    def machine(self, linear: int, write: bool) -> int:
        if not 0 <= linear < HYPERVISOR_VIRT_START:
            raise HypercallError(Errno.EFAULT, f"guest pointer {linear:#x} is not guest memory")
        try:
            t = self.walk(linear, write, False)
        except PageFault:
            raise HypercallError(Errno.EFAULT, f"guest pointer {linear:#x} is not mapped") from None
        frame = t.physical >> PAGE_SHIFT
        if not self.mem.mappable(frame) or (write and (not t.writable or frame in self.mem.pt_frames)):
            raise HypercallError(Errno.EFAULT, f"guest pointer {linear:#x} is not "
                                 f"{'writable' if write else 'readable'} guest memory")
        return t.physical

    def _pieces(self, linear: int, size: int, write: bool):
        if size > MAX_COPY:
            raise HypercallError(Errno.EINVAL, f"{size} bytes is more than a hypercall moves")
        out = []
        while size > 0:
            chunk = min(size, PAGE_SIZE - (linear & PAGE_OFFSET_MASK))
            out.append((self.machine(linear, write), chunk))
            linear, size = linear + chunk, size - chunk
        return out

    def read(self, linear: int, size: int) -> bytes:
        return b"".join(self.engine.read_phys(m, n) for m, n in self._pieces(linear, size, False))

    def write(self, linear: int, data: bytes) -> None:
        pieces = self._pieces(linear, len(data), True)  # all checked before any byte is written
        done = 0
        for m, n in pieces:
            self.engine.write_phys(m, data[done:done + n])
            done += n

    def u32(self, linear: int) -> int:
        return struct.unpack("<I", self.read(linear, 4))[0]

    def put_u32(self, linear: int, value: int) -> None:
        self.write(linear, struct.pack("<I", value & 0xFFFFFFFF))
