"""Port I/O and MMIO buses: range maps from guest addresses to devices.

Both buses follow the ISA/PC convention that nothing on the bus answers for an
unclaimed address: reads float to all ones, writes vanish.  Such accesses are
counted (``bus.unknown``) so a run can report what the guest poked at, but never
raise: a guest must not be able to crash the VMM.  Only host-side
misconfiguration (two devices claiming the same address) raises.

Access sizes.  A port device may declare ``io_max_size`` (default 4).  When a
guest access is wider, the bus splits it into little-endian pieces at
consecutive ports, as QEMU does for devices whose registers are one byte wide
(``impl.max_access_size = 1``): ``outw 0x20`` writes 0x20 and then 0x21.  Each
piece is routed (and counted) on its own, so a piece may land on a neighbour or
on nothing.
"""

from __future__ import annotations

import bisect
from collections import Counter
from typing import Any, NamedTuple

PORT_SPACE_LAST = 0xFFFF
VALID_PORT_SIZES = (1, 2, 4)
VALID_MMIO_SIZES = (1, 2, 4, 8)


class BusConflictError(ValueError):
    """Two devices were registered over the same addresses (a host-side bug)."""


def all_ones(size: int) -> int:
    """The value an undriven bus reads as for an access of ``size`` bytes."""
    return (1 << (8 * size)) - 1


class PortRange(NamedTuple):
    first: int
    last: int
    device: Any
    name: str


class PortBus:
    """The 64 KiB x86 I/O port space.

    Devices implement ``io_read(port, size) -> int`` and
    ``io_write(port, size, value)`` and receive the absolute port number.
    ``accesses`` counts handled accesses per device name; ``unknown`` counts
    unclaimed ones per ``(port, "r" | "w")``.
    """

    def __init__(self) -> None:
        self._ranges: list[PortRange] = []
        self._by_port: dict[int, PortRange] = {}
        self.accesses: Counter = Counter()
        self.unknown: Counter = Counter()

    # -- saved state: the access statistics (the map itself is wiring) -------

    def save_counters(self) -> tuple[tuple, tuple]:
        return tuple(self.accesses.items()), tuple(self.unknown.items())

    def load_counters(self, saved: tuple[tuple, tuple]) -> None:
        self.accesses, self.unknown = Counter(dict(saved[0])), Counter(dict(saved[1]))

    # -- host side -----------------------------------------------------------

    def register(self, first: int, last: int, device: Any, name: str) -> None:
        """Claim ports ``first..last`` (inclusive) for ``device``."""
        if not (0 <= first <= last <= PORT_SPACE_LAST):
            raise ValueError(
                f"bad port range {first:#x}-{last:#x} for {name!r}: "
                f"need 0 <= first <= last <= {PORT_SPACE_LAST:#x}")
        for other in self._ranges:
            if first <= other.last and other.first <= last:
                raise BusConflictError(
                    f"ports {first:#x}-{last:#x} for {name!r} overlap "
                    f"{other.first:#x}-{other.last:#x} held by {other.name!r}")
        entry = PortRange(first, last, device, name)
        self._ranges.append(entry)
        self._ranges.sort()
        for port in range(first, last + 1):
            self._by_port[port] = entry

    def ranges(self) -> list[tuple[int, int, str]]:
        """Registered ``(first, last, name)`` triples in port order."""
        return [(r.first, r.last, r.name) for r in self._ranges]

    def find(self, port: int) -> PortRange | None:
        return self._by_port.get(port)

    # -- guest side ----------------------------------------------------------

    def read(self, port: int, size: int) -> int:
        size = _sanitize_size(size, VALID_PORT_SIZES)
        port &= PORT_SPACE_LAST
        entry = self._by_port.get(port)
        if entry is None:
            self.unknown[(port, "r")] += 1
            return all_ones(size)
        piece = getattr(entry.device, "io_max_size", 4)
        if size <= piece:
            self.accesses[entry.name] += 1
            return entry.device.io_read(port, size) & all_ones(size)
        value = 0
        for i in range(0, size, piece):
            value |= self.read((port + i) & PORT_SPACE_LAST, piece) << (8 * i)
        return value

    def write(self, port: int, size: int, value: int) -> None:
        size = _sanitize_size(size, VALID_PORT_SIZES)
        port &= PORT_SPACE_LAST
        value &= all_ones(size)
        entry = self._by_port.get(port)
        if entry is None:
            self.unknown[(port, "w")] += 1
            return
        piece = getattr(entry.device, "io_max_size", 4)
        if size <= piece:
            self.accesses[entry.name] += 1
            entry.device.io_write(port, size, value)
            return
        for i in range(0, size, piece):
            self.write((port + i) & PORT_SPACE_LAST, piece,
                       (value >> (8 * i)) & all_ones(piece))


class MmioRegion(NamedTuple):
    base: int
    length: int
    device: Any
    name: str


class MmioBus:
    """Guest-physical regions backed by device callbacks instead of RAM.

    Devices implement ``mmio_read(offset, size)`` and
    ``mmio_write(offset, size, value)`` with ``offset`` from their base.  The
    engine maps each of ``regions()`` with Unicorn's ``mmio_map`` and forwards
    the callbacks to ``read`` / ``write`` here.
    """

    def __init__(self) -> None:
        self._regions: list[MmioRegion] = []
        self._bases: list[int] = []
        self.accesses: Counter = Counter()
        self.unknown: Counter = Counter()

    def save_counters(self) -> tuple[tuple, tuple]:
        return tuple(self.accesses.items()), tuple(self.unknown.items())

    def load_counters(self, saved: tuple[tuple, tuple]) -> None:
        self.accesses, self.unknown = Counter(dict(saved[0])), Counter(dict(saved[1]))

    def register(self, base: int, length: int, device: Any, name: str) -> None:
        if base < 0 or length <= 0:
            raise ValueError(
                f"bad MMIO region base={base:#x} length={length:#x} for {name!r}")
        for other in self._regions:
            if base < other.base + other.length and other.base < base + length:
                raise BusConflictError(
                    f"MMIO {base:#x}+{length:#x} for {name!r} overlaps "
                    f"{other.base:#x}+{other.length:#x} held by {other.name!r}")
        self._regions.append(MmioRegion(base, length, device, name))
        self._regions.sort()
        self._bases = [r.base for r in self._regions]

    def regions(self) -> list[tuple[int, int, str]]:
        """Registered ``(base, length, name)`` triples in address order."""
        return [(r.base, r.length, r.name) for r in self._regions]

    def _lookup(self, addr: int) -> MmioRegion | None:
        i = bisect.bisect_right(self._bases, addr) - 1
        if i >= 0:
            region = self._regions[i]
            if addr < region.base + region.length:
                return region
        return None

    def find(self, addr: int) -> tuple[int, int, Any] | None:
        region = self._lookup(addr)
        return None if region is None else (region.base, region.length, region.device)

    def read(self, addr: int, size: int) -> int:
        size = _sanitize_size(size, VALID_MMIO_SIZES)
        region = self._lookup(addr)
        if region is None:
            self.unknown[(addr, "r")] += 1
            return all_ones(size)
        self.accesses[region.name] += 1
        return region.device.mmio_read(addr - region.base, size) & all_ones(size)

    def write(self, addr: int, size: int, value: int) -> None:
        size = _sanitize_size(size, VALID_MMIO_SIZES)
        region = self._lookup(addr)
        if region is None:
            self.unknown[(addr, "w")] += 1
            return
        self.accesses[region.name] += 1
        region.device.mmio_write(addr - region.base, size, value & all_ones(size))


def _sanitize_size(size: int, valid: tuple[int, ...]) -> int:
    """Round a nonsensical access size up to the next valid one (never raise)."""
    for candidate in valid:
        if size <= candidate:
            return candidate
    return valid[-1]
