"""The wired board: what a guest and the engine see together."""

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmm.devices import MAX_RAM_SIZE, Board, LocalApic, Pit8254

MiB = 1024 * 1024
APIC = 0xFEE00000


@pytest.fixture
def out():
    return []


@pytest.fixture
def board(out):
    return Board(serial_output=out.append)


def init_pic(board, base=0x20):
    for port, value in ((0x20, 0x11), (0x21, base), (0x21, 0x04), (0x21, 0x01),
                        (0xA0, 0x11), (0xA1, base + 8), (0xA1, 0x02), (0xA1, 0x01)):
        board.port_bus.write(port, 1, value)


@pytest.mark.parametrize("bad", [0, -4096, 4095, 4097, 128 * MiB + 1,
                                 MAX_RAM_SIZE + 4096, 4 * 1024 * MiB, True, 4096.0])
def test_ram_size_validation(bad):
    with pytest.raises(ValueError, match="ram_size"):
        Board(ram_size=bad, serial_output=lambda data: None)


def test_largest_and_smallest_ram_sizes_are_accepted():
    assert Board(ram_size=MAX_RAM_SIZE, serial_output=lambda d: None).ram_size == 3 << 30
    assert Board(ram_size=4096, serial_output=lambda d: None).ram_size == 4096


def test_port_map(board):
    assert board.port_bus.ranges() == [
        (0x20, 0x21, "pic-master"), (0x40, 0x43, "pit"), (0x60, 0x60, "i8042-data"), (0x61, 0x61, "port61"),
        (0x64, 0x64, "i8042"),
        (0x70, 0x71, "cmos"), (0x92, 0x92, "port92"), (0xA0, 0xA1, "pic-slave"), (0xB2, 0xB3, "apm"),
        (0xE0, 0xE3, "pc-testdev"), (0xE4, 0xE7, "pc-testdev-flush-page"), (0xE8, 0xEB, "pc-testdev-byte"),
        (0xF4, 0xF7, "debug-exit"),
        (0x3B4, 0x3B5, "vga"), (0x3BA, 0x3BA, "vga"), (0x3C0, 0x3CF, "vga"), (0x3D4, 0x3D5, "vga"),
        (0x3DA, 0x3DA, "vga"), (0x3F8, 0x3FF, "com1"), (0x510, 0x511, "fw_cfg"),
        (0x600, 0x60B, "acpi-pm"), (0xCF8, 0xCFF, "pci"), (0x2000, 0x2017, "pc-testdev-irq-line"),
        (0xAFE0, 0xAFE3, "acpi-gpe0"),
    ]
    assert board.mmio_bus.regions() == [(0xFEC00000, 0x1000, "ioapic"), (0xFED00000, 0x1000, "hpet"),
                                        (APIC, 0x1000, "lapic"),
                                        (0xFF000000, 0x10000, "pc-testdev-iomem")]
    assert board.clocked == [board.pit, board.lapic, board.acpi, board.uart, board.cmos, board.i8042, board.hpet]
    assert isinstance(board.pit, Pit8254) and isinstance(board.lapic, LocalApic)


def test_unclaimed_port_and_address(board):
    assert board.port_bus.read(0x80, 1) == 0xFF
    board.port_bus.write(0x80, 1, 0x42)          # POST code port: nobody there
    assert board.mmio_bus.read(APIC + 0x1000, 4) == 0xFFFFFFFF
    assert board.port_bus.unknown[(0x80, "w")] == 1
    assert board.mmio_bus.unknown[(APIC + 0x1000, "r")] == 1


def test_serial_console(board, out):
    for byte in b"ok":
        board.port_bus.write(0x3F8, 1, byte)
    assert b"".join(out) == b"ok"
    assert board.uart.transcript == bytearray(b"ok")
    assert board.port_bus.accesses["com1"] == 2


def test_serial_input():
    board = Board(serial_output=lambda d: None, serial_input=b"y")
    assert board.port_bus.read(0x3FD, 1) & 0x01
    assert board.port_bus.read(0x3F8, 1) == ord("y")


def test_default_serial_output_is_stdout(capfdbinary):
    board = Board()
    board.port_bus.write(0x3F8, 1, ord("Q"))
    assert capfdbinary.readouterr().out == b"Q"


def test_debug_exit_stops_with_qemu_status(board):
    assert board.exit_status is None and not board.stop_requested
    board.port_bus.write(0xF4, 4, 0x10)
    assert board.exit_status == 0x21
    assert board.stop_requested
    board.port_bus.write(0xF4, 1, 0x00)
    assert board.exit_status == 0x21          # the first exit stands


def test_cmos_and_fwcfg_know_ram_size():
    board = Board(ram_size=1024 * MiB, serial_output=lambda d: None)
    board.port_bus.write(0x70, 1, 0x34)
    lo = board.port_bus.read(0x71, 1)
    board.port_bus.write(0x70, 1, 0x35)
    assert lo | board.port_bus.read(0x71, 1) << 8 == 0x3F00
    board.port_bus.write(0x510, 2, 0x03)
    raw = bytes(board.port_bus.read(0x511, 1) for _ in range(8))
    assert struct.unpack("<Q", raw)[0] == 1024 * MiB


def test_pit_timer_interrupt_end_to_end(board):
    """A guest's 100 Hz tick: PIC at 0x20, PIT mode 2, divisor 11932."""
    init_pic(board)
    board.port_bus.write(0x21, 1, 0xFE)          # only IRQ0
    board.advance(50)
    board.port_bus.write(0x43, 1, 0x34)
    board.port_bus.write(0x40, 1, 11932 & 0xFF)
    board.port_bus.write(0x40, 1, 11932 >> 8)
    assert not board.interrupt_pending()
    assert board.next_event() == 50 + 11932
    board.advance(board.next_event())
    assert board.interrupt_pending()
    assert board.acknowledge_interrupt() == 0x20
    assert not board.interrupt_pending()
    board.port_bus.write(0x20, 1, 0x20)          # EOI
    board.advance(board.next_event())
    assert board.now == 50 + 2 * 11932
    assert board.acknowledge_interrupt() == 0x20


def test_masked_pit_irq_is_not_pending(board):
    init_pic(board)
    board.port_bus.write(0x21, 1, 0xFF)
    board.advance(65536)                      # reset-state PIT fires
    assert board.pit.irq0_edges == 1
    assert not board.interrupt_pending()


def test_apic_timer_end_to_end(board):
    init_pic(board)
    board.port_bus.write(0x21, 1, 0xFF)
    board.mmio_bus.write(APIC + 0xF0, 4, 0x1FF)   # software enable
    board.mmio_bus.write(APIC + 0x3E0, 4, 0xB)    # divide by 1
    board.mmio_bus.write(APIC + 0x320, 4, (1 << 17) | 0xEC)
    board.mmio_bus.write(APIC + 0x380, 4, 1000)
    assert board.next_event() == 1000         # earlier than the PIT's 65536
    board.advance(1000)
    assert board.interrupt_pending()
    assert board.acknowledge_interrupt() == 0xEC
    board.mmio_bus.write(APIC + 0xB0, 4, 0)
    assert board.next_event() == 2000


def test_pic_goes_before_apic_like_qemu(board):
    init_pic(board)
    board.mmio_bus.write(APIC + 0xF0, 4, 0x1FF)
    board.lapic.accept_interrupt(0xF0)
    board.pic.raise_irq(1)
    assert board.acknowledge_interrupt() == 0x21
    assert board.acknowledge_interrupt() == 0xF0


def test_masked_lint0_cuts_the_pic_off(board):
    init_pic(board)
    board.mmio_bus.write(APIC + 0x350, 4, 1 << 16)
    board.pic.raise_irq(1)
    assert not board.interrupt_pending()
    assert board.acknowledge_interrupt() == 0xFF      # APIC spurious vector
    board.mmio_bus.write(APIC + 0x350, 4, 0x700)
    assert board.interrupt_pending()
    assert board.acknowledge_interrupt() == 0x21


def test_spurious_from_pic_when_nothing_pending(board):
    init_pic(board)
    assert not board.interrupt_pending()
    assert board.acknowledge_interrupt() == 0x27


def test_next_event_and_advance_cover_all_clocked_devices(board):
    assert board.next_event() == 65536        # reset PIT, APIC timer idle
    board.mmio_bus.write(APIC + 0x320, 4, 0x40)   # unmask the APIC timer
    board.mmio_bus.write(APIC + 0x3E0, 4, 0xB)
    board.mmio_bus.write(APIC + 0x380, 4, 70000)
    assert board.next_event() == 65536
    board.advance(65536)
    assert board.next_event() == 70000
    board.advance(70000)
    assert board.lapic.timer_expirations == 1
    assert board.pit.now == board.lapic.now == board.now == 70000


accesses = st.lists(st.tuples(
    st.sampled_from(["in", "out", "read", "write", "advance"]),
    st.one_of(st.integers(0, 0xFFFF), st.sampled_from(
        [0x20, 0x21, 0xA0, 0xA1, 0x40, 0x41, 0x42, 0x43, 0x61, 0x70, 0x71,
         0xF4, 0x3F8, 0x3FA, 0x3FB, 0x3FC, 0x3FD, 0x510, 0x511])),
    st.integers(0, 0xFFF),
    st.sampled_from([0, 1, 2, 3, 4, 8]),
    st.integers(0, 2**64 - 1),
), max_size=60)


@settings(max_examples=200, deadline=None)
@given(accesses)
def test_no_guest_access_sequence_raises(ops):
    board = Board(serial_output=lambda d: None, serial_input=b"abc")
    now = 0
    for op, port, offset, size, value in ops:
        if op == "in":
            assert 0 <= board.port_bus.read(port, size) <= 0xFFFFFFFF
        elif op == "out":
            board.port_bus.write(port, size, value)
        elif op == "read":
            assert board.mmio_bus.read(APIC + offset, size) >= 0
        elif op == "write":
            board.mmio_bus.write(APIC + offset, size, value)
        else:
            now += offset
            board.advance(now)
        board.interrupt_pending()
        event = board.next_event()
        assert event is None or event > board.now
    assert 0 <= board.acknowledge_interrupt() <= 0xFF


def test_devices_do_not_import_unicorn():
    import pathlib
    import re

    import vmm.devices
    for path in pathlib.Path(vmm.devices.__file__).parent.glob("*.py"):
        assert not re.search(r"^\s*(import|from)\s+unicorn", path.read_text(), re.M), path
