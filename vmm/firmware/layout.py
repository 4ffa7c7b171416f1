"""Where SeaBIOS leaves its tables on QEMU's ``pc``, and the byte-level helpers they share.

SeaBIOS has two heaps for tables a guest must find. The F-segment heap (``malloc_fseg``)
holds what a guest finds by scanning 0xe0000-0xfffff on 16-byte boundaries: the ACPI
RSDP, the SMBIOS entry point (with the structure table when it is small), the MP floating
pointer and configuration table. It begins after the BIOS's own code and data, so its
address is a property of the SeaBIOS build: :data:`FSEG_TABLES` is where QEMU 7.2's
SeaBIOS 1.16.2 begins handing it out, measured from a ``-kernel`` guest's memory. The
high heap (``malloc_high``) is the top 128 KiB of RAM below 4 GiB, which the e820 map
reserves (:mod:`vmm.loader.multiboot`); QEMU's table loader puts its ACPI tables at its
start. Allocations in both are made in SeaBIOS's order and alignment (:class:`Heap`), so a
table lands where it lands under QEMU whenever the tables before it have QEMU's sizes.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field

FSEG_START, FSEG_END = 0xF0000, 0x100000
FSEG_TABLES = 0xF59D0          # SeaBIOS 1.16.2 (QEMU 7.2): the first address malloc_fseg returns
FSEG_ALIGN = 16                # MALLOC_MIN_ALIGN, and where a scan looks
HIGH_TABLES_SIZE = 128 << 10   # the reserved top of low RAM (e820), SeaBIOS's ZoneHigh for tables
EBDA_SEGMENT = 0x9FC0          # 639 KiB: SeaBIOS's EBDA_SEGMENT_START
EBDA_SIZE_KIB = 1              # EBDA_SIZE_START
EBDA_BASE = EBDA_SEGMENT << 4
BIOS_SEGMENT = 0xF000


def checksum(data: bytes) -> int:
    """The byte that makes ``data`` (with a zero in its checksum field) sum to 0 mod 256."""
    return -sum(data) & 0xFF


def with_checksum(data: bytes, offset: int) -> bytes:
    """``data`` with its checksum byte at ``offset`` filled in."""
    out = bytearray(data)
    out[offset] = 0
    out[offset] = checksum(bytes(out))
    return bytes(out)


def pack(fmt: str, *values) -> bytes:
    return struct.pack("<" + fmt, *values)


@dataclass(frozen=True)
class Structure:
    """One firmware structure: its name (for notes), guest-physical address and bytes."""

    name: str
    address: int
    data: bytes

    @property
    def end(self) -> int:
        return self.address + len(self.data)


@dataclass
class Heap:
    """A bump allocator with SeaBIOS's rule: each block starts at its alignment."""

    next: int
    limit: int
    placed: list[Structure] = field(default_factory=list)

    def reserve(self, size: int, align: int = FSEG_ALIGN) -> int:
        address = -(-self.next // align) * align
        if address + size > self.limit:
            raise ValueError(f"firmware tables overflow their area at {address:#x}")
        self.next = address + size
        return address

    def place(self, name: str, address: int, data: bytes) -> Structure:
        s = Structure(name, address, bytes(data))
        self.placed.append(s)
        return s
