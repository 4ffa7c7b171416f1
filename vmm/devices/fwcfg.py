"""QEMU's fw_cfg, traditional I/O interface: selector 0x510, data 0x511.

A guest writes a 16-bit key to the selector, then reads the item one byte at a
time from the data port; each selector write rewinds to offset 0.  Reads past
the end of an item, or of a key with no item, return 0 (QEMU's
``fw_cfg_read``).  The item set is the minimum a probing guest expects: the
"QEMU" signature, an interface ID without DMA, RAM size, CPU counts and an
empty file directory.

QEMU registers both ports as one region with these rules, which are followed
here: a 16-bit write to either port selects, a byte write is a (read-only,
ignored) data write, a byte read from either port reads data.  Other sizes are
invalid there and read as all ones here, like an empty port.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

FW_CFG_PORT_SEL = 0x510
FW_CFG_PORT_DATA = 0x511

FW_CFG_SIGNATURE = 0x00
FW_CFG_ID = 0x01
FW_CFG_RAM_SIZE = 0x03
FW_CFG_NB_CPUS = 0x05
FW_CFG_MAX_CPUS = 0x0F
FW_CFG_FILE_DIR = 0x19

FW_CFG_VERSION_TRADITIONAL = 0x01   # bit 1 (FW_CFG_VERSION_DMA) clear: no DMA


@dataclass(frozen=True)
class FwCfgState:
    """The selected item and the read position in it; and the items themselves, which
    a fresh board derives from the same RAM size (saved so a restore can check that)."""

    selector: int
    offset: int
    items: tuple[tuple[int, bytes], ...]


class FwCfg:
    def __init__(self, ram_size: int, cpus: int = 1) -> None:
        self.items: dict[int, bytes] = {
            FW_CFG_SIGNATURE: b"QEMU",
            FW_CFG_ID: struct.pack("<I", FW_CFG_VERSION_TRADITIONAL),
            FW_CFG_RAM_SIZE: struct.pack("<Q", ram_size),
            FW_CFG_NB_CPUS: struct.pack("<H", cpus),
            FW_CFG_MAX_CPUS: struct.pack("<H", cpus),
            FW_CFG_FILE_DIR: struct.pack(">I", 0),   # big-endian file count
        }
        self.selector = 0
        self.offset = 0

    def save_state(self) -> FwCfgState:
        return FwCfgState(self.selector, self.offset, tuple(self.items.items()))

    def load_state(self, state: FwCfgState) -> None:
        self.selector, self.offset = state.selector, state.offset
        self.items = dict(state.items)

    def select(self, key: int) -> None:
        self.selector = key & 0xFFFF
        self.offset = 0

    def read_byte(self) -> int:
        item = self.items.get(self.selector, b"")
        if self.offset >= len(item):
            return 0
        value = item[self.offset]
        self.offset += 1
        return value

    def io_read(self, port: int, size: int) -> int:
        if size != 1:
            return (1 << (8 * size)) - 1
        return self.read_byte()

    def io_write(self, port: int, size: int, value: int) -> None:
        if size == 2:
            self.select(value)
        # Byte writes are data writes, which QEMU ignores since 2.4.
