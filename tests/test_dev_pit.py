"""8254 PIT in virtual time: IRQ0 timing, counter reads, port 0x61."""

import pytest

from vmm.devices import INSTRUCTIONS_PER_PIT_CLOCK, PicPair, Pit8254, PortBus


class Pulses:
    def __init__(self):
        self.levels = []

    def __call__(self, level):
        self.levels.append(level)


@pytest.fixture
def pulses():
    return Pulses()


@pytest.fixture
def pit(pulses):
    return Pit8254(irq=pulses)


@pytest.fixture
def bus(pit):
    bus = PortBus()
    bus.register(0x40, 0x43, pit, "pit")
    bus.register(0x61, 0x61, pit, "port61")
    return bus


def program(bus, control, count=None, channel=0):
    bus.write(0x43, 1, control)
    if count is not None:
        bus.write(0x40 + channel, 1, count & 0xFF)
        bus.write(0x40 + channel, 1, count >> 8)


def read_count(bus, channel=0):
    bus.write(0x43, 1, channel << 6)          # counter latch command
    lo = bus.read(0x40 + channel, 1)
    return lo | bus.read(0x40 + channel, 1) << 8


def read_status(bus, channel=0):
    bus.write(0x43, 1, 0xC0 | 0x20 | (2 << channel))   # read-back: status only
    return bus.read(0x40 + channel, 1)


def test_one_instruction_per_pit_clock():
    assert INSTRUCTIONS_PER_PIT_CLOCK == 1


def test_reset_state_runs_mode3_at_65536(pit, pulses):
    """As QEMU's pit_reset: channel 0 already ticks at 18.2 Hz."""
    assert pit.next_event() == 65536
    pit.advance(65536)
    assert pulses.levels == [1]


def test_mode2_periodic_irq0_reaches_pic_with_vector_base():
    pic = PicPair()
    pit = Pit8254(irq=pic.line(0))
    bus = PortBus()
    bus.register(0x20, 0x21, pic, "pic")
    bus.register(0x40, 0x43, pit, "pit")
    for port, value in ((0x20, 0x11), (0x21, 0x20), (0x21, 0x04), (0x21, 0x01),
                        (0x21, 0xFE)):
        bus.write(port, 1, value)
    pit.advance(1000)
    program(bus, 0x34, 11932)                 # channel 0, lo/hi, mode 2: 100 Hz
    assert pit.next_event() == 1000 + 11932
    pit.advance(1000 + 11931)
    assert not pic.has_pending()
    pit.advance(1000 + 11932)
    assert pic.has_pending()
    assert pic.acknowledge() == 0x20
    bus.write(0x20, 1, 0x20)
    assert pit.next_event() == 1000 + 2 * 11932
    pit.advance(1000 + 2 * 11932)
    assert pic.acknowledge() == 0x20


def test_mode2_count_and_out(pit, bus):
    program(bus, 0x34, 100)
    assert read_count(bus) == 100
    pit.advance(30)
    assert read_count(bus) == 70
    assert read_status(bus) & 0x80            # OUT high
    pit.advance(99)
    assert read_count(bus) == 1
    assert not read_status(bus) & 0x80        # OUT low for the clock at count 1
    pit.advance(100)
    assert read_count(bus) == 100             # reloaded
    assert read_status(bus) & 0x80


def test_several_periods_in_one_advance_are_counted(pit, bus, pulses):
    program(bus, 0x34, 10)
    pit.advance(35)
    assert pit.irq0_edges == 3
    assert pulses.levels == [1]               # one pulse: IRR holds one bit
    assert pit.next_event() == 40


def test_mode0_is_one_shot(pit, bus, pulses):
    program(bus, 0x30, 500)                   # mode 0, lo/hi
    assert not read_status(bus) & 0x80        # OUT low after programming
    assert pit.next_event() == 500
    pit.advance(500)
    assert pulses.levels == [1]
    assert read_status(bus) & 0x80            # OUT high at terminal count
    assert pit.next_event() is None
    pit.advance(10_000)
    assert pulses.levels == [1]
    assert read_count(bus) == (500 - 10_000) % 0x10000   # keeps counting, wraps


def test_mode3_square_wave(pit, bus, pulses):
    program(bus, 0x36, 1000)                  # mode 3
    pit.advance(499)
    assert read_status(bus) & 0x80            # high for the first half
    pit.advance(500)
    assert not read_status(bus) & 0x80        # low for the second
    assert read_count(bus) == 1000            # decrements by two: 1000 - 1000 % 1000
    pit.advance(1000)
    assert pulses.levels == [1]
    assert read_status(bus) & 0x80
    assert pit.next_event() == 2000


def test_divisor_zero_means_65536(pit, bus):
    program(bus, 0x34, 0)
    assert pit.next_event() == 65536
    assert read_count(bus) == 0               # 65536 reads as 0


def test_lobyte_only_and_hibyte_only_access(pit, bus):
    bus.write(0x43, 1, 0x14)                  # lobyte only, mode 2
    bus.write(0x40, 1, 0x80)
    assert pit.next_event() == 0x80
    assert bus.read(0x40, 1) == 0x80
    bus.write(0x43, 1, 0x24)                  # hibyte only, mode 2
    bus.write(0x40, 1, 0x02)
    assert pit.next_event() == pit.now + 0x200
    assert bus.read(0x40, 1) == 0x02


def test_live_lohi_reads_alternate(pit, bus):
    program(bus, 0x34, 0x1234)
    assert bus.read(0x40, 1) == 0x34
    assert bus.read(0x40, 1) == 0x12


def test_latch_holds_value_until_read(pit, bus):
    program(bus, 0x34, 1000)
    pit.advance(100)
    bus.write(0x43, 1, 0x00)                  # latch channel 0
    pit.advance(400)
    bus.write(0x43, 1, 0x00)                  # second latch ignored until read
    lo = bus.read(0x40, 1)
    hi = bus.read(0x40, 1)
    assert lo | hi << 8 == 900
    assert read_count(bus) == 600             # next latch is fresh


def test_read_back_status_and_count(pit, bus):
    program(bus, 0x34, 1000)
    pit.advance(10)
    bus.write(0x43, 1, 0xC0 | 0x02)           # read-back count and status, ch0
    status = bus.read(0x40, 1)
    assert status == 0x80 | (3 << 4) | (2 << 1)   # OUT high, lo/hi, mode 2
    assert bus.read(0x40, 1) | bus.read(0x40, 1) << 8 == 990


def test_null_count_between_control_word_and_count(pit, bus):
    bus.write(0x43, 1, 0x34)
    assert read_status(bus) & 0x40
    assert pit.next_event() is None           # nothing counts without a count
    bus.write(0x40, 1, 0x10)
    bus.write(0x40, 1, 0x00)
    assert not read_status(bus) & 0x40


def test_bcd_counting(pit, bus):
    program(bus, 0x35, 0x1000)                # mode 2, BCD: 1000 decimal
    assert pit.next_event() == 1000
    pit.advance(1)
    assert read_count(bus) == 0x0999


def test_modes_6_and_7_alias_2_and_3(pit, bus):
    program(bus, 0x3C, 50)                    # mode 6
    assert read_status(bus) & 0x0E == 2 << 1
    assert pit.next_event() == 50


def test_mode4_software_strobe(pit, bus, pulses):
    program(bus, 0x38, 20)                    # mode 4
    assert pit.next_event() == 21             # OUT pulses low at 0, rises after
    pit.advance(20)
    assert not read_status(bus) & 0x80
    pit.advance(21)
    assert pulses.levels == [1]
    assert pit.next_event() is None


def test_channel2_gate_and_out_through_port61(pit, bus):
    assert bus.read(0x61, 1) & 0x01 == 0      # gate 2 low at reset
    program(bus, 0xB0, 1000, channel=2)       # channel 2, lo/hi, mode 0
    pit.advance(5000)
    assert read_count(bus, 2) == 1000         # gate low: not counting
    bus.write(0x61, 1, 0x01)                  # raise GATE2
    assert bus.read(0x61, 1) & 0x21 == 0x01   # OUT2 low while counting
    pit.advance(5999)
    assert not bus.read(0x61, 1) & 0x20
    pit.advance(6000)
    assert bus.read(0x61, 1) & 0x20           # terminal count: OUT2 high


def test_gate_low_pauses_mode0(pit, bus):
    program(bus, 0xB0, 1000, channel=2)
    bus.write(0x61, 1, 0x01)
    pit.advance(300)
    bus.write(0x61, 1, 0x00)
    pit.advance(900)
    assert read_count(bus, 2) == 700
    bus.write(0x61, 1, 0x01)
    pit.advance(1000)
    assert read_count(bus, 2) == 600


def test_port61_refresh_bit_toggles_with_time(pit, bus):
    first = bus.read(0x61, 1) & 0x10
    pit.advance(18)
    assert bus.read(0x61, 1) & 0x10 != first
    bus.write(0x61, 1, 0x03)
    assert bus.read(0x61, 1) & 0x0F == 0x03


def test_command_port_reads_float(bus):
    assert bus.read(0x43, 1) == 0xFF


def test_time_must_not_go_backwards(pit):
    pit.advance(10)
    with pytest.raises(ValueError):
        pit.advance(5)
