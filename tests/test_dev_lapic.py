"""Local APIC through its MMIO page: registers, timer, priority, IPIs."""

import pytest

from vmm.devices import LocalApic, MmioBus

BASE = 0xFEE00000
ID, VERSION, TPR, APR, PPR, EOI = 0x20, 0x30, 0x80, 0x90, 0xA0, 0xB0
LDR, DFR, SVR, ISR0, TMR0, IRR0, ESR = 0xD0, 0xE0, 0xF0, 0x100, 0x180, 0x200, 0x280
ICR_LOW, ICR_HIGH = 0x300, 0x310
LVT_TIMER, LVT_LINT0, LVT_LINT1, LVT_ERROR = 0x320, 0x350, 0x360, 0x370
INITIAL, CURRENT, DIVIDE = 0x380, 0x390, 0x3E0

MASKED = 1 << 16
PERIODIC = 1 << 17


@pytest.fixture
def apic():
    return LocalApic()


@pytest.fixture
def mmio(apic):
    bus = MmioBus()
    bus.register(BASE, 0x1000, apic, "lapic")
    return bus


def rd(mmio, reg):
    return mmio.read(BASE + reg, 4)


def wr(mmio, reg, value):
    mmio.write(BASE + reg, 4, value)


def enable(mmio, spurious=0xFF):
    wr(mmio, SVR, 0x100 | spurious)


def test_reset_values(apic, mmio):
    assert rd(mmio, ID) == 0
    assert rd(mmio, VERSION) == 0x00050014
    assert rd(mmio, SVR) == 0xFF
    assert rd(mmio, DFR) == 0xFFFFFFFF
    assert rd(mmio, LVT_TIMER) == MASKED
    assert rd(mmio, LVT_LINT0) == 0x700       # ExtINT, unmasked (QEMU's BSP)
    assert rd(mmio, LVT_LINT1) == MASKED
    assert rd(mmio, LVT_ERROR) == MASKED
    assert rd(mmio, TPR) == 0 and rd(mmio, PPR) == 0
    assert apic.read_apic_base() == 0xFEE00900


def test_register_round_trips(mmio):
    wr(mmio, ID, 0x05000000)
    assert rd(mmio, ID) == 0x05000000
    wr(mmio, TPR, 0x1_23)
    assert rd(mmio, TPR) == 0x23
    wr(mmio, LDR, 0x01ABCDEF)
    assert rd(mmio, LDR) == 0x01000000
    wr(mmio, DFR, 0x0FFFFFFF)
    assert rd(mmio, DFR) == 0x0FFFFFFF
    wr(mmio, SVR, 0xFFFF)
    assert rd(mmio, SVR) == 0x1FF
    wr(mmio, ICR_HIGH, 0xFFFFFFFF)
    assert rd(mmio, ICR_HIGH) == 0xFF000000
    wr(mmio, LVT_LINT1, 0xFFFFFFFF)
    assert rd(mmio, LVT_LINT1) == 0x1A7FF
    wr(mmio, LVT_TIMER, 0xFFFFFFFF)
    assert rd(mmio, LVT_TIMER) == 0x700FF


def test_read_only_registers_ignore_writes(mmio):
    wr(mmio, VERSION, 0)
    wr(mmio, PPR, 0xFF)
    wr(mmio, IRR0 + 0x70, 0xFFFFFFFF)
    assert rd(mmio, VERSION) == 0x00050014
    assert rd(mmio, PPR) == 0
    assert rd(mmio, IRR0 + 0x70) == 0


@pytest.mark.parametrize("config, divisor", [
    (0x0, 2), (0x1, 4), (0x2, 8), (0x3, 16), (0x8, 32), (0x9, 64), (0xA, 128), (0xB, 1),
])
def test_divide_configuration(apic, mmio, config, divisor):
    wr(mmio, DIVIDE, config)
    assert rd(mmio, DIVIDE) == config
    assert apic.divisor == divisor


def test_timer_one_shot(apic, mmio):
    enable(mmio)
    wr(mmio, DIVIDE, 0x3)                     # divide by 16
    wr(mmio, LVT_TIMER, 0x40)                 # one-shot, vector 0x40, unmasked
    apic.advance(100)
    wr(mmio, INITIAL, 1000)
    assert rd(mmio, INITIAL) == 1000
    assert apic.next_event() == 100 + 16000
    apic.advance(100 + 1600)
    assert rd(mmio, CURRENT) == 900
    apic.advance(100 + 16000 - 1)
    assert rd(mmio, CURRENT) == 1
    assert not apic.has_pending()
    apic.advance(100 + 16000)
    assert rd(mmio, CURRENT) == 0
    assert apic.has_pending()
    assert rd(mmio, IRR0 + 0x20) == 1         # vector 0x40 = bank 2, bit 0
    assert apic.acknowledge() == 0x40
    assert rd(mmio, ISR0 + 0x20) == 1 and rd(mmio, IRR0 + 0x20) == 0
    assert apic.next_event() is None
    wr(mmio, EOI, 0)
    assert rd(mmio, ISR0 + 0x20) == 0


def test_timer_periodic(apic, mmio):
    enable(mmio)
    wr(mmio, DIVIDE, 0xB)                     # divide by 1
    wr(mmio, LVT_TIMER, PERIODIC | 0x30)
    wr(mmio, INITIAL, 500)
    for n in (1, 2, 3):
        assert apic.next_event() == 500 * n
        apic.advance(500 * n)
        assert rd(mmio, CURRENT) == 500       # reloaded
        assert apic.acknowledge() == 0x30
        wr(mmio, EOI, 0)
    apic.advance(1500 + 250)
    assert rd(mmio, CURRENT) == 250
    apic.advance(5000)                        # seven periods at once
    assert apic.timer_expirations == 3 + 7
    assert apic.next_event() == 5500


def test_timer_masked_counts_but_does_not_interrupt(apic, mmio):
    enable(mmio)
    wr(mmio, DIVIDE, 0xB)
    wr(mmio, LVT_TIMER, MASKED | 0x40)
    wr(mmio, INITIAL, 10)
    assert apic.next_event() is None          # no interrupt to wait for
    apic.advance(10)
    assert apic.timer_expirations == 1
    assert rd(mmio, CURRENT) == 0
    assert rd(mmio, IRR0 + 0x20) == 0


def test_unmasking_a_running_timer_restores_its_event(apic, mmio):
    wr(mmio, DIVIDE, 0xB)
    wr(mmio, LVT_TIMER, MASKED | 0x40)
    wr(mmio, INITIAL, 100)
    apic.advance(30)
    wr(mmio, LVT_TIMER, 0x40)
    assert apic.next_event() == 100


def test_writing_zero_initial_count_stops_timer(apic, mmio):
    wr(mmio, INITIAL, 10)
    wr(mmio, INITIAL, 0)
    assert apic.next_event() is None
    assert rd(mmio, CURRENT) == 0


def test_divide_change_keeps_current_count(apic, mmio):
    wr(mmio, LVT_TIMER, 0x40)
    wr(mmio, DIVIDE, 0xB)
    wr(mmio, INITIAL, 100)
    apic.advance(40)
    wr(mmio, DIVIDE, 0x0)                     # now divide by 2
    assert rd(mmio, CURRENT) == 60
    assert apic.next_event() == 40 + 120


def test_timer_interrupt_callable():
    seen = []
    apic = LocalApic(interrupt=seen.append)
    apic.write_register(LVT_TIMER, 0x99)
    apic.write_register(DIVIDE, 0xB)
    apic.write_register(INITIAL, 7)
    apic.advance(7)
    assert seen == [0x99]
    assert apic.irr == 0


def test_highest_vector_first_and_tpr_blocks_lower_classes(apic, mmio):
    enable(mmio)
    apic.accept_interrupt(0x41)
    apic.accept_interrupt(0x83)
    assert apic.acknowledge() == 0x83
    assert rd(mmio, PPR) == 0x80              # in-service class
    assert not apic.has_pending()             # 0x41 is below class 8
    wr(mmio, EOI, 0)
    assert rd(mmio, PPR) == 0
    wr(mmio, TPR, 0x50)
    assert rd(mmio, PPR) == 0x50
    assert not apic.has_pending()             # class 4 <= TPR class 5
    wr(mmio, TPR, 0x30)
    assert apic.acknowledge() == 0x41


def test_software_disabled_apic_delivers_nothing(apic, mmio):
    apic.accept_interrupt(0x50)
    assert not apic.has_pending()             # SVR bit 8 clear at reset
    assert apic.acknowledge() == 0xFF         # spurious vector
    enable(mmio, spurious=0xEF)
    assert apic.has_pending()
    assert apic.acknowledge() == 0x50
    assert apic.acknowledge() == 0xEF         # nothing left: spurious


def test_irr_isr_banks(apic, mmio):
    enable(mmio)
    apic.accept_interrupt(0x21)
    apic.accept_interrupt(0xFF)
    assert rd(mmio, IRR0 + 0x10) == 1 << 1
    assert rd(mmio, IRR0 + 0x70) == 1 << 31
    apic.acknowledge()
    assert rd(mmio, ISR0 + 0x70) == 1 << 31
    assert rd(mmio, TMR0 + 0x70) == 0


def test_self_ipi_fixed_sets_irr(apic, mmio):
    enable(mmio)
    wr(mmio, ICR_LOW, (1 << 18) | 0x60)       # shorthand self, fixed, vector 0x60
    assert apic.acknowledge() == 0x60
    assert rd(mmio, ICR_LOW) == (1 << 18) | 0x60   # delivery status idle
    assert apic.ipis[("fixed", "delivered")] == 1


def test_physical_ipi_to_own_id_and_to_others(apic, mmio):
    enable(mmio)
    wr(mmio, ICR_HIGH, 0 << 24)
    wr(mmio, ICR_LOW, 0x61)                   # physical destination 0 = us
    wr(mmio, ICR_HIGH, 3 << 24)
    wr(mmio, ICR_LOW, 0x62)                   # APIC 3 does not exist
    wr(mmio, ICR_LOW, (3 << 18) | 0x63)       # all excluding self
    assert apic.acknowledge() == 0x61
    assert not apic.has_pending()
    assert apic.ipis[("fixed", "no-target")] == 2


def test_logical_flat_ipi(apic, mmio):
    enable(mmio)
    wr(mmio, LDR, 0x02000000)
    wr(mmio, ICR_HIGH, 0x06000000)
    wr(mmio, ICR_LOW, (1 << 11) | 0x70)
    assert apic.acknowledge() == 0x70


def test_init_and_startup_ipis_are_counted(apic, mmio):
    wr(mmio, ICR_HIGH, 1 << 24)
    wr(mmio, ICR_LOW, 0x0000C500)             # INIT assert
    wr(mmio, ICR_LOW, 0x00000608)             # STARTUP at 0x8000
    assert apic.ipis[("init", "no-target")] == 1
    assert apic.ipis[("startup", "no-target")] == 1
    assert apic.irr == 0


def test_esr_reports_illegal_vector_after_write(apic, mmio):
    wr(mmio, ICR_LOW, (1 << 18) | 0x05)       # vector < 16
    assert rd(mmio, ESR) == 0                 # not visible until ESR is written
    wr(mmio, ESR, 0)
    assert rd(mmio, ESR) == 0x20              # send illegal vector
    wr(mmio, ESR, 0)
    assert rd(mmio, ESR) == 0
    apic.accept_interrupt(0x03)
    wr(mmio, ESR, 0)
    assert rd(mmio, ESR) == 0x40              # receive illegal vector
    assert apic.irr == 0


def test_reserved_register_reads_zero_and_logs_error(mmio):
    assert rd(mmio, 0x2F0 + 0x100) == 0       # 0x3f0 is reserved
    wr(mmio, 0x040, 0x1234)
    wr(mmio, ESR, 0)
    assert rd(mmio, ESR) == 0x80              # illegal register address


def test_sub_dword_accesses_read_zero_and_are_dropped(mmio):
    assert mmio.read(BASE + VERSION, 1) == 0
    assert mmio.read(BASE + VERSION, 2) == 0
    mmio.write(BASE + TPR, 1, 0x40)
    assert rd(mmio, TPR) == 0


def test_dword_inside_a_register_slot_hits_that_register(mmio):
    assert mmio.read(BASE + VERSION + 4, 4) == 0x00050014
    mmio.write(BASE + TPR + 8, 4, 0x20)
    assert rd(mmio, TPR) == 0x20


def test_qword_access_splits_into_dwords(mmio):
    assert mmio.read(BASE + VERSION, 8) == 0x00050014_00050014
    mmio.write(BASE + TPR, 8, 0x00000010_00000020)
    assert rd(mmio, TPR) == 0x10             # the high half lands last


def test_apic_base_msr(apic):
    apic.write_apic_base(0xFEE00000 | (1 << 11))
    assert apic.read_apic_base() == 0xFEE00900   # BSP is read-only
    apic.write_apic_base(0xFED00000 | (1 << 11))
    assert apic.base_address == 0xFED00000
    apic.write_apic_base(0xFEE00000)          # clear EN: APIC off
    assert not apic.globally_enabled
    assert not apic.software_enabled
    apic.write_apic_base(0xFEE00000 | (1 << 11))
    assert apic.globally_enabled              # EN set again: on again (SDM, KVM)
    assert not apic.software_enabled          # SVR stays as the disable left it


def test_globally_disabled_apic_passes_pic_and_blocks_own(apic, mmio):
    enable(mmio)
    wr(mmio, LVT_LINT0, MASKED)
    assert not apic.accepts_pic_interrupts()
    apic.accept_interrupt(0x40)
    apic.write_apic_base(0xFEE00000)
    assert apic.accepts_pic_interrupts()
    assert not apic.has_pending()
