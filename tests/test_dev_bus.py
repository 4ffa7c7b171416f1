"""Port and MMIO buses: routing, overlap detection, unclaimed addresses."""

import pytest
from hypothesis import given, strategies as st

from vmm.devices import BusConflictError, MmioBus, PortBus


class Recorder:
    """A device that remembers its accesses and answers with a fixed value."""

    def __init__(self, answer=0x12345678, io_max_size=None):
        self.answer = answer
        self.log = []
        if io_max_size is not None:
            self.io_max_size = io_max_size

    def io_read(self, port, size):
        self.log.append(("r", port, size))
        return self.answer

    def io_write(self, port, size, value):
        self.log.append(("w", port, size, value))

    def mmio_read(self, offset, size):
        self.log.append(("r", offset, size))
        return self.answer

    def mmio_write(self, offset, size, value):
        self.log.append(("w", offset, size, value))


def test_port_routes_absolute_port_and_counts_by_name():
    bus, dev = PortBus(), Recorder()
    bus.register(0x3F8, 0x3FF, dev, "com1")
    assert bus.read(0x3FD, 1) == 0x78          # masked to the access size
    bus.write(0x3F8, 1, 0x41)
    assert dev.log == [("r", 0x3FD, 1), ("w", 0x3F8, 1, 0x41)]
    assert bus.accesses["com1"] == 2
    assert not bus.unknown


@pytest.mark.parametrize("size, ones", [(1, 0xFF), (2, 0xFFFF), (4, 0xFFFFFFFF)])
def test_unclaimed_port_reads_all_ones_and_is_counted(size, ones):
    bus = PortBus()
    assert bus.read(0x80, size) == ones
    bus.write(0x80, size, 0)
    bus.write(0x80, size, 0)
    assert bus.unknown[(0x80, "r")] == 1
    assert bus.unknown[(0x80, "w")] == 2
    assert not bus.accesses


def test_write_value_is_masked_to_access_size():
    bus, dev = PortBus(), Recorder()
    bus.register(0x10, 0x10, dev, "d")
    bus.write(0x10, 1, 0x1FF)
    assert dev.log == [("w", 0x10, 1, 0xFF)]


def test_wide_access_to_byte_device_is_split_little_endian():
    bus = PortBus()
    low, high = Recorder(answer=0x34, io_max_size=1), Recorder(answer=0x12, io_max_size=1)
    bus.register(0x20, 0x20, low, "low")
    bus.register(0x21, 0x21, high, "high")
    assert bus.read(0x20, 2) == 0x1234
    bus.write(0x20, 2, 0xBBAA)
    assert low.log == [("r", 0x20, 1), ("w", 0x20, 1, 0xAA)]
    assert high.log == [("r", 0x21, 1), ("w", 0x21, 1, 0xBB)]


def test_split_piece_falling_off_a_device_reads_ones():
    bus, dev = PortBus(), Recorder(answer=0x5A, io_max_size=1)
    bus.register(0x61, 0x61, dev, "port61")
    assert bus.read(0x61, 2) == 0xFF5A
    assert bus.unknown[(0x62, "r")] == 1


def test_odd_access_sizes_never_raise():
    bus, dev = PortBus(), Recorder()
    bus.register(0x10, 0x13, dev, "d")
    assert bus.read(0x10, 3) == 0x12345678     # rounded up to a dword
    assert bus.read(0x99, 0) == 0xFF
    bus.write(0x10, 7, 1)
    assert dev.log[-1] == ("w", 0x10, 4, 1)


def test_port_overlap_error_names_both_devices():
    bus = PortBus()
    bus.register(0x40, 0x43, object(), "pit")
    with pytest.raises(BusConflictError, match="'uart'.*'pit'"):
        bus.register(0x43, 0x44, object(), "uart")


def test_port_range_validation():
    bus = PortBus()
    with pytest.raises(ValueError):
        bus.register(5, 4, object(), "backwards")
    with pytest.raises(ValueError):
        bus.register(0xFFFF, 0x10000, object(), "too-high")


port_ranges = st.tuples(st.integers(0, 0x200), st.integers(0, 0x40)).map(
    lambda t: (t[0], t[0] + t[1]))


@given(port_ranges, port_ranges)
def test_port_overlap_detected_exactly_when_ranges_intersect(a, b):
    bus = PortBus()
    bus.register(a[0], a[1], object(), "a")
    intersect = a[0] <= b[1] and b[0] <= a[1]
    if intersect:
        with pytest.raises(BusConflictError):
            bus.register(b[0], b[1], object(), "b")
        assert bus.ranges() == [(a[0], a[1], "a")]
    else:
        bus.register(b[0], b[1], object(), "b")
        assert sorted(bus.ranges()) == sorted([(a[0], a[1], "a"), (b[0], b[1], "b")])


@given(port_ranges, st.integers(0, 0x260))
def test_port_lookup_matches_range(r, port):
    bus = PortBus()
    bus.register(r[0], r[1], Recorder(), "d")
    bus.read(port, 1)
    claimed = r[0] <= port <= r[1]
    assert bus.accesses["d"] == (1 if claimed else 0)
    assert bus.unknown[(port, "r")] == (0 if claimed else 1)


def test_mmio_routes_offsets_and_lists_regions():
    bus, dev = MmioBus(), Recorder(answer=0xCAFEBABE)
    bus.register(0xFEE00000, 0x1000, dev, "lapic")
    assert bus.regions() == [(0xFEE00000, 0x1000, "lapic")]
    assert bus.find(0xFEE00FFF) == (0xFEE00000, 0x1000, dev)
    assert bus.find(0xFEE01000) is None
    assert bus.read(0xFEE00030, 4) == 0xCAFEBABE
    bus.write(0xFEE000B0, 4, 0)
    assert dev.log == [("r", 0x30, 4), ("w", 0xB0, 4, 0)]
    assert bus.accesses["lapic"] == 2


@pytest.mark.parametrize("size, ones", [(1, 0xFF), (2, 0xFFFF), (4, 0xFFFFFFFF),
                                        (8, 0xFFFFFFFFFFFFFFFF)])
def test_mmio_unmapped_reads_ones_counted(size, ones):
    bus = MmioBus()
    bus.register(0x1000, 0x1000, Recorder(), "d")
    assert bus.read(0x2000, size) == ones
    bus.write(0xFFF, size, 1)
    assert bus.unknown == {(0x2000, "r"): 1, (0xFFF, "w"): 1}


mmio_regions = st.tuples(st.integers(0, 0x10000), st.integers(1, 0x2000))


@given(mmio_regions, mmio_regions)
def test_mmio_overlap_detected_exactly_when_regions_intersect(a, b):
    bus = MmioBus()
    bus.register(a[0], a[1], object(), "a")
    intersect = a[0] < b[0] + b[1] and b[0] < a[0] + a[1]
    if intersect:
        with pytest.raises(BusConflictError, match="'b'.*'a'"):
            bus.register(b[0], b[1], object(), "b")
    else:
        bus.register(b[0], b[1], object(), "b")
        assert len(bus.regions()) == 2


def test_mmio_bad_region():
    with pytest.raises(ValueError):
        MmioBus().register(0x1000, 0, object(), "empty")
