"""HPET at 0xfed00000: the main counter and the registers QEMU's ``hpet`` device has.

What a guest sees, as QEMU's ``hw/timer/hpet.c`` (3 timers, 100 MHz):

* 0x000 capabilities: revision 1, 3 timers, 64-bit counter, legacy replacement capable,
  vendor 0x8086, period 10 ns (10,000,000 fs) in the upper half;
* 0x010 configuration: ENABLE_CNF (bit 0) starts and stops the main counter, LEG_RT_CNF
  (bit 1) is stored;
* 0x020 interrupt status: write 1 to clear;
* 0x0f0 main counter: runs at 100 MHz of virtual time while enabled, holds its value while
  disabled, and is writable then;
* 0x100 + 0x20 n, n < 3: timer n's configuration (periodic- and 64-bit-capable, routable
  to IRQ 2), comparator (all ones after reset), FSB route.

Virtual time is guest instructions, one per PIT clock (1.193182 MHz), so the counter
advances 100,000,000 / 1,193,182 ticks (about 84) per instruction, the same in every mode.
The timers' registers read back what was written, but a timer does not interrupt yet:
the board has no I/O APIC to route one to, and no guest here needs it so far. That is
the part still missing, and it is said here so that nobody relies on it.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .pit import PIT_INPUT_HZ

HPET_BASE = 0xFED00000
HPET_SIZE = 0x1000     # QEMU decodes 0x400 bytes; the rest of the page reads 0 there too
HPET_HZ = 100_000_000
PERIOD_FS = 10_000_000
TIMERS = 3
CAPABILITIES = (PERIOD_FS << 32) | 0x8086A001 | (TIMERS - 1) << 8
REG_CAPABILITIES, REG_CONFIG, REG_STATUS, REG_COUNTER = 0x000, 0x010, 0x020, 0x0F0
TIMER_BASE, TIMER_STRIDE = 0x100, 0x20
TIMER_CONFIG, TIMER_COMPARATOR, TIMER_FSB = 0x00, 0x08, 0x10
ENABLE_CNF, LEG_RT_CNF = 1, 2
CONFIG_WRITABLE = ENABLE_CNF | LEG_RT_CNF
TN_PERIODIC_CAP, TN_SIZE_CAP = 1 << 4, 1 << 5
TN_ROUTE_CAP_IRQ2 = 0x4 << 32
TN_WRITABLE = 0x7F4E              # INT_TYPE, INT_ENB, TYPE, VAL_SET, 32MODE, INT_ROUTE, FSB_EN
TIMER_RESET = TN_PERIODIC_CAP | TN_SIZE_CAP | TN_ROUTE_CAP_IRQ2
U64 = (1 << 64) - 1


def ticks(instructions: int) -> int:
    """Main-counter ticks in ``instructions`` of virtual time."""
    return instructions * HPET_HZ // PIT_INPUT_HZ


@dataclass(frozen=True)
class HpetState:
    config: int
    status: int
    counter: int          # the counter's value at ``since`` (while enabled) or its held value
    since: int            # virtual time the counter last started or was written
    timers: tuple[tuple[int, int, int], ...]


class Hpet:
    """``clock()`` is the virtual time (guest instructions) of a read; the VM gives one that
    sees the instructions of the current run."""

    def __init__(self, clock: Callable[[], int]):
        self.clock = clock
        self.config = 0
        self.status = 0
        self.counter = 0
        self.since = 0
        self.timers = [[TIMER_RESET, U64, 0] for _ in range(TIMERS)]

    def save_state(self) -> HpetState:
        return HpetState(self.config, self.status, self.counter, self.since,
                         tuple(tuple(t) for t in self.timers))   # type: ignore[misc]

    def load_state(self, state: HpetState) -> None:
        self.config, self.status, self.counter, self.since = state.config, state.status, state.counter, state.since
        self.timers = [list(t) for t in state.timers]

    def main_counter(self) -> int:
        if not self.config & ENABLE_CNF:
            return self.counter
        return (self.counter + ticks(self.clock()) - ticks(self.since)) & U64

    def _register(self, offset: int) -> int:
        if offset == REG_CAPABILITIES:
            return CAPABILITIES
        if offset == REG_CONFIG:
            return self.config
        if offset == REG_STATUS:
            return self.status
        if offset == REG_COUNTER:
            return self.main_counter()
        timer, field = divmod(offset - TIMER_BASE, TIMER_STRIDE)
        if offset >= TIMER_BASE and timer < TIMERS and field in (TIMER_CONFIG, TIMER_COMPARATOR, TIMER_FSB):
            return self.timers[timer][field // 8]
        return 0

    def _write_register(self, offset: int, value: int, mask: int) -> None:
        if offset == REG_CONFIG:
            old = self.config
            now_counter = self.main_counter()
            self.config = (old & ~(CONFIG_WRITABLE & mask)) | (value & CONFIG_WRITABLE & mask)
            if (old ^ self.config) & ENABLE_CNF:
                self.counter, self.since = now_counter, self.clock()   # starts or holds here
        elif offset == REG_STATUS:
            self.status &= ~(value & mask)
        elif offset == REG_COUNTER:
            if not self.config & ENABLE_CNF:       # writable only while the counter is stopped
                self.counter = (self.counter & ~mask) | (value & mask)
        elif offset >= TIMER_BASE:
            timer, field = divmod(offset - TIMER_BASE, TIMER_STRIDE)
            if timer >= TIMERS or field not in (TIMER_CONFIG, TIMER_COMPARATOR, TIMER_FSB):
                return
            regs, slot = self.timers[timer], field // 8
            writable = (TN_WRITABLE if field == TIMER_CONFIG else U64) & mask
            regs[slot] = (regs[slot] & ~writable) | (value & writable)

    # -- the MMIO window: 4- and 8-byte accesses to 8-byte registers --------------------------
    def mmio_read(self, offset: int, size: int) -> int:
        base, shift = offset & ~7, 8 * (offset & 7)
        return (self._register(base) >> shift) & ((1 << 8 * size) - 1)

    def mmio_write(self, offset: int, size: int, value: int) -> None:
        base, shift = offset & ~7, 8 * (offset & 7)
        mask = (((1 << 8 * size) - 1) << shift) & U64
        self._write_register(base, (value << shift) & mask, mask)
