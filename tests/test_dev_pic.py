"""8259A pair driven through its ports, as a guest kernel programs it."""

import pytest

from vmm.devices import PicPair, PortBus


@pytest.fixture
def pic():
    return PicPair()


@pytest.fixture
def bus(pic):
    bus = PortBus()
    bus.register(0x20, 0x21, pic, "pic-master")
    bus.register(0xA0, 0xA1, pic, "pic-slave")
    return bus


def init_linux_style(bus, master_base=0x20, slave_base=0x28, icw4=0x01):
    """The classic remap: ICW1 edge+ICW4, ICW2 base, ICW3 cascade, ICW4 8086."""
    bus.write(0x20, 1, 0x11)
    bus.write(0x21, 1, master_base)
    bus.write(0x21, 1, 0x04)          # slave on IR2
    bus.write(0x21, 1, icw4)
    bus.write(0xA0, 1, 0x11)
    bus.write(0xA1, 1, slave_base)
    bus.write(0xA1, 1, 0x02)          # cascade identity 2
    bus.write(0xA1, 1, icw4)


def read_isr(bus, command_port):
    bus.write(command_port, 1, 0x0B)  # OCW3: read ISR
    return bus.read(command_port, 1)


def read_irr(bus, command_port):
    bus.write(command_port, 1, 0x0A)  # OCW3: read IRR
    return bus.read(command_port, 1)


def test_reset_state_is_qemus(pic, bus):
    assert bus.read(0x21, 1) == 0 and bus.read(0xA1, 1) == 0      # nothing masked
    assert not pic.has_pending()
    pic.raise_irq(1)
    assert pic.acknowledge() == 0x01                            # vector base 0


def test_icw_sequence_sets_vector_bases(pic, bus):
    init_linux_style(bus)
    pic.raise_irq(1)
    assert pic.has_pending()
    assert pic.acknowledge() == 0x21
    pic.raise_irq(14)
    assert not pic.has_pending()              # IR2 ranks below in-service IRQ1
    bus.write(0x20, 1, 0x20)                  # EOI
    assert pic.acknowledge() == 0x28 + 6


def test_icw2_low_bits_are_ignored(pic, bus):
    init_linux_style(bus, master_base=0x27)
    pic.raise_irq(0)
    assert pic.acknowledge() == 0x20


def test_single_mode_skips_icw3(pic, bus):
    bus.write(0x20, 1, 0x13)          # ICW1: single, ICW4 needed
    bus.write(0x21, 1, 0x40)          # ICW2
    bus.write(0x21, 1, 0x01)          # ICW4 (no ICW3 in single mode)
    bus.write(0x21, 1, 0xFE)          # now OCW1
    assert bus.read(0x21, 1) == 0xFE
    pic.raise_irq(0)
    assert pic.acknowledge() == 0x40


def test_without_icw4_init_ends_after_icw3(pic, bus):
    bus.write(0x20, 1, 0x10)
    bus.write(0x21, 1, 0x08)
    bus.write(0x21, 1, 0x04)
    bus.write(0x21, 1, 0xAA)          # OCW1, not ICW4
    assert bus.read(0x21, 1) == 0xAA


def test_acknowledge_moves_irr_to_isr_and_eoi_clears(pic, bus):
    init_linux_style(bus)
    pic.raise_irq(3)
    assert read_irr(bus, 0x20) == 0x08
    assert pic.acknowledge() == 0x23
    assert read_irr(bus, 0x20) == 0
    assert read_isr(bus, 0x20) == 0x08
    bus.write(0x20, 1, 0x20)          # OCW2 non-specific EOI
    assert read_isr(bus, 0x20) == 0


def test_masked_irq_is_not_pending_until_unmasked(pic, bus):
    init_linux_style(bus)
    bus.write(0x21, 1, 0xFF)
    pic.raise_irq(0)
    assert not pic.has_pending()
    assert read_irr(bus, 0x20) == 0x01    # still requested, just masked
    bus.write(0x21, 1, 0xFE)
    assert pic.has_pending()
    assert pic.acknowledge() == 0x20


def test_masking_the_cascade_hides_slave_irqs(pic, bus):
    init_linux_style(bus)
    bus.write(0x21, 1, 0x04)
    pic.raise_irq(12)
    assert not pic.has_pending()
    bus.write(0x21, 1, 0x00)
    assert pic.has_pending()


def test_fixed_priority_and_nesting(pic, bus):
    init_linux_style(bus)
    pic.raise_irq(3)
    pic.raise_irq(1)
    assert pic.acknowledge() == 0x21          # IRQ1 beats IRQ3
    assert not pic.has_pending()              # IRQ3 lower than in-service IRQ1
    pic.raise_irq(0)
    assert pic.has_pending()                  # IRQ0 nests above IRQ1
    assert pic.acknowledge() == 0x20
    assert read_isr(bus, 0x20) == 0x03
    bus.write(0x20, 1, 0x20)                  # EOI clears the highest: IRQ0
    assert read_isr(bus, 0x20) == 0x02
    bus.write(0x20, 1, 0x20)
    assert pic.acknowledge() == 0x23


def test_specific_eoi(pic, bus):
    init_linux_style(bus)
    pic.raise_irq(1)
    pic.acknowledge()
    pic.raise_irq(0)
    pic.acknowledge()
    bus.write(0x20, 1, 0x60 | 1)             # specific EOI for level 1
    assert read_isr(bus, 0x20) == 0x01


def test_rotating_eoi_acts_as_plain_eoi(pic, bus):
    init_linux_style(bus)
    pic.raise_irq(5)
    pic.acknowledge()
    bus.write(0x20, 1, 0xA0)                  # rotate on non-specific EOI
    assert read_isr(bus, 0x20) == 0
    pic.raise_irq(0)
    pic.raise_irq(7)
    assert pic.acknowledge() == 0x20          # no rotation: IRQ0 still first


def test_slave_irq_goes_through_cascade(pic, bus):
    init_linux_style(bus)
    pic.raise_irq(12)
    assert read_irr(bus, 0x20) == 0x04        # cascade input seen on master IR2
    assert pic.has_pending()
    assert pic.acknowledge() == 0x2C
    assert read_isr(bus, 0xA0) == 0x10
    assert read_isr(bus, 0x20) == 0x04
    bus.write(0xA0, 1, 0x20)
    bus.write(0x20, 1, 0x20)
    assert read_isr(bus, 0xA0) == 0 and read_isr(bus, 0x20) == 0


def test_master_irq_above_cascade_beats_slave(pic, bus):
    init_linux_style(bus)
    pic.raise_irq(8)
    pic.raise_irq(1)
    assert pic.acknowledge() == 0x21
    bus.write(0x20, 1, 0x20)
    assert pic.acknowledge() == 0x28


def test_spurious_irq7_when_nothing_pending(pic, bus):
    init_linux_style(bus)
    assert pic.acknowledge() == 0x27
    assert read_isr(bus, 0x20) == 0
    assert pic.spurious == 1


def test_withdrawn_request_gives_spurious(pic, bus):
    init_linux_style(bus)
    pic.raise_irq(4)
    pic.lower_irq(4)
    assert not pic.has_pending()
    assert pic.acknowledge() == 0x27


def test_auto_eoi_leaves_isr_clear(pic, bus):
    init_linux_style(bus, icw4=0x03)
    pic.raise_irq(2 + 4)
    assert pic.acknowledge() == 0x26
    assert read_isr(bus, 0x20) == 0
    pic.raise_irq(7)
    assert pic.has_pending()                  # nothing in service blocks it


def test_icw1_clears_mask_and_state(pic, bus):
    init_linux_style(bus)
    bus.write(0x21, 1, 0xFF)
    pic.raise_irq(1)
    init_linux_style(bus)
    assert bus.read(0x21, 1) == 0
    assert not pic.has_pending()              # edge forgotten, as QEMU does


def test_poll_command_acknowledges(pic, bus):
    init_linux_style(bus)
    pic.raise_irq(5)
    bus.write(0x20, 1, 0x0C)                  # OCW3 poll
    assert bus.read(0x20, 1) == 0x85
    assert read_isr(bus, 0x20) == 0x20
    bus.write(0x20, 1, 0x0C)
    assert bus.read(0x21, 1) == 0x00          # nothing left: 0


def test_special_mask_mode_lets_lower_levels_in(pic, bus):
    init_linux_style(bus)
    pic.raise_irq(1)
    pic.acknowledge()                         # IRQ1 in service
    pic.raise_irq(4)
    assert not pic.has_pending()
    bus.write(0x21, 1, 0x02)                  # mask the in-service level
    bus.write(0x20, 1, 0x68)                  # OCW3: set special mask mode
    assert pic.has_pending()
    assert pic.acknowledge() == 0x24
    bus.write(0x20, 1, 0x48)                  # reset special mask mode
    pic.raise_irq(6)
    assert not pic.has_pending()


def test_word_write_to_command_port_splits(pic, bus):
    bus.write(0x20, 2, 0x2011)               # ICW1 to 0x20, ICW2 = 0x20 to 0x21
    bus.write(0x21, 1, 0x04)
    bus.write(0x21, 1, 0x01)
    pic.raise_irq(0)
    assert pic.acknowledge() == 0x20


def test_line_callable(pic):
    line = pic.line(3)
    line(1)
    assert pic.has_pending()
    line(0)
    assert not pic.has_pending()


def test_bad_irq_number_is_a_host_error(pic):
    with pytest.raises(ValueError):
        pic.raise_irq(16)
