"""QEMU's ``pci-testdev`` (1b36:0005): the PCI device kvm-unit-tests times its MMIO and
port-I/O exits against.

Two regions, as QEMU's ``hw/misc/pci-testdev.c`` lays them out: BAR0 4 KiB of MMIO and
BAR1 256 ports, both byte-wide. Six tests exist, three per region: "no-eventfd",
"wildcard-eventfd" and "datamatch-eventfd" ("mmio-..." and "portio-..."). Writing a
test's number to byte 0 of a region selects it; the region then reads as the test's
header (test number, width 1, the offset it counts accesses at, the data byte that
matches, the count, the name), and each write of the test's width to that offset
(carrying the data byte, for the data-matching tests) counts one. With no test selected
reads are 0. Test ``i``'s offset is the region's size (2048 or 128) plus ``i``.

The two eventfd tests register an eventfd on that offset (1 byte; the data byte too for
"datamatch"), and QEMU, TCG included, hands a matching access to the eventfd before the
device sees it: such an access is not counted, here as there (nothing listens on the
eventfd, so nothing else happens). Only an access the eventfd does not match (another
size, say) reaches the device's count.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

VENDOR, DEVICE = 0x1B36, 0x0005
MMIO_SIZE = 4096                 # IOTEST_MEMSIZE * 2
PORT_COUNT = 256                 # IOTEST_IOSIZE * 2
_TESTS = ("no-eventfd", "wildcard-eventfd", "datamatch-eventfd")
_REGIONS = (("mmio", MMIO_SIZE // 2), ("portio", PORT_COUNT // 2))
DATA_MATCH, NO_MATCH = 0xFA, 0xCE
_WIDTH = 1
_HEADER = struct.Struct("<BBxxIBxxxI")   # test, width, offset, data, count; the name follows


@dataclass(frozen=True)
class PciTestdevState:
    current: int | None
    counts: tuple[int, ...]


class PciTestdev:
    """Both regions' behaviour; :attr:`mmio` and :attr:`ports` are what the buses map."""

    def __init__(self) -> None:
        self.current: int | None = None
        self.counts = [0] * (len(_TESTS) * len(_REGIONS))
        self.mmio = _Region(self, 0)
        self.ports = _Region(self, 1)

    def save_state(self) -> PciTestdevState:
        return PciTestdevState(self.current, tuple(self.counts))

    def load_state(self, state: PciTestdevState) -> None:
        self.current, self.counts = state.current, list(state.counts)

    @staticmethod
    def _offset(test: int) -> int:
        return _REGIONS[test // len(_TESTS)][1] + test * _WIDTH

    def _header(self, test: int) -> bytes:
        matching = _TESTS[test % len(_TESTS)] != "wildcard-eventfd"
        name = f"{_REGIONS[test // len(_TESTS)][0]}-{_TESTS[test % len(_TESTS)]}".encode() + b"\0"
        return _HEADER.pack(test, _WIDTH, self._offset(test), DATA_MATCH if matching else NO_MATCH,
                            self.counts[test]) + name

    def eventfd_takes(self, region: int, offset: int, size: int, value: int) -> bool:
        """Whether the current test's eventfd consumes this access (checked, as QEMU does,
        before the access is split into bytes)."""
        test = self.current
        if test is None or test // len(_TESTS) != region or _TESTS[test % len(_TESTS)] == "no-eventfd":
            return False
        if offset != self._offset(test) or size != _WIDTH:
            return False
        return _TESTS[test % len(_TESTS)] == "wildcard-eventfd" or value == DATA_MATCH

    def read(self, offset: int) -> int:
        if self.current is None:
            return 0
        header = self._header(self.current)
        return header[offset] if offset + 1 < len(header) else 0

    def write(self, region: int, offset: int, size: int, value: int) -> None:
        if offset == 0:
            self.current = None
            if value < len(_TESTS):
                self.current = region * len(_TESTS) + value
            return
        test = self.current
        if test is None or offset != self._offset(test):
            return
        matching = _TESTS[test % len(_TESTS)] != "wildcard-eventfd"
        if matching and (size != _WIDTH or value != DATA_MATCH):
            return
        self.counts[test] += 1


class _Region:
    """One BAR's view of the device. Its registers are bytes: a wider access is split
    into bytes, as QEMU splits it (``max_access_size`` 1)."""

    def __init__(self, device: PciTestdev, region: int):
        self.device, self.region = device, region
        self.base = 0   # the port region's first port (set when the board maps it)

    def mmio_read(self, offset: int, size: int) -> int:
        return sum(self.device.read(offset + i) << 8 * i for i in range(size))   # byte by byte, as QEMU splits

    def mmio_write(self, offset: int, size: int, value: int) -> None:
        if self.device.eventfd_takes(self.region, offset, size, value):
            return
        for i in range(size):
            self.device.write(self.region, offset + i, 1, (value >> 8 * i) & 0xFF)

    def io_read(self, port: int, size: int) -> int:
        return self.mmio_read(port - self.base, size)

    def io_write(self, port: int, size: int, value: int) -> None:
        self.mmio_write(port - self.base, size, value)
