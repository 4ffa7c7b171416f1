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

Timers interrupt as QEMU's do: a timer with Tn_INT_ENB_CNF set, while the counter runs,
fires when the main counter reaches its comparator (at once if the comparator is already
behind it, by less than half the counter's range in 32-bit mode); a periodic timer then
adds its period to the comparator (a comparator write in periodic mode sets the period,
and also the comparator when Tn_VAL_SET_CNF is set). An edge-triggered timer pulses its
line; a level-triggered one sets its bit in the interrupt status register and holds the
line until the guest writes that bit back. The line is Tn_INT_ROUTE_CNF's I/O APIC input
(QEMU's pc offers only input 2), or, with LEG_RT_CNF, IRQ 0 for timer 0 and IRQ 8 for
timer 1, which then replace the PIT's and the RTC's (the board disconnects those). Left
out: FSB (MSI) delivery (not offered in the capabilities) and the extra interrupt a 32-bit
one-shot timer gives when the counter wraps.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .pit import clock_ticks, first_instruction

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
TN_LEVEL, TN_INT_ENB, TN_PERIODIC, TN_VAL_SET, TN_32BIT = 1 << 1, 1 << 2, 1 << 3, 1 << 6, 1 << 8
TN_ROUTE_SHIFT, TN_ROUTE_MASK = 9, 0x1F
TN_PERIODIC_CAP, TN_SIZE_CAP = 1 << 4, 1 << 5
TN_ROUTE_CAP_IRQ2 = 0x4 << 32
TN_WRITABLE = 0x7F4E              # INT_TYPE, INT_ENB, TYPE, VAL_SET, 32MODE, INT_ROUTE, FSB_EN
TIMER_RESET = TN_PERIODIC_CAP | TN_SIZE_CAP | TN_ROUTE_CAP_IRQ2
U64 = (1 << 64) - 1
U32 = (1 << 32) - 1
LEGACY_ROUTES = {0: 0, 1: 8}     # LEG_RT_CNF: timer -> ISA IRQ


def ticks(instructions: int) -> int:
    """Main-counter ticks in ``instructions`` of virtual time."""
    return clock_ticks(instructions, HPET_HZ)


@dataclass(frozen=True)
class HpetState:
    config: int
    status: int
    counter: int          # the counter's value at ``since`` (while enabled) or its held value
    since: int            # virtual time the counter last started or was written
    timers: tuple[tuple[int, int, int], ...]
    periods: tuple[int, ...] = (0,) * TIMERS
    deadlines: tuple[int | None, ...] = (None,) * TIMERS
    fired: int = 0


class Hpet:
    """``clock()`` is the virtual time (guest instructions) of a read; the VM gives one that
    sees the instructions of the current run. ``interrupt(gsi, level, asserted)`` drives
    the line a timer is routed to (the board's)."""

    def __init__(self, clock: Callable[[], int],
                 interrupt: Callable[[int, bool, bool], None] | None = None):
        self.clock = clock
        self.interrupt = interrupt or (lambda gsi, level, asserted: None)
        self.config = 0
        self.status = 0
        self.counter = 0
        self.since = 0
        self.now = 0
        self.timers = [[TIMER_RESET, U64, 0] for _ in range(TIMERS)]
        self.periods = [0] * TIMERS
        self.deadlines: list[int | None] = [None] * TIMERS
        self.fired = 0

    def save_state(self) -> HpetState:
        return HpetState(self.config, self.status, self.counter, self.since,
                         tuple(tuple(t) for t in self.timers),   # type: ignore[misc]
                         tuple(self.periods), tuple(self.deadlines), self.fired)

    def load_state(self, state: HpetState) -> None:
        self.config, self.status, self.counter, self.since = state.config, state.status, state.counter, state.since
        self.timers = [list(t) for t in state.timers]
        self.periods, self.deadlines, self.fired = list(state.periods), list(state.deadlines), state.fired

    @property
    def legacy(self) -> bool:
        """LEG_RT_CNF: timers 0 and 1 stand in for the PIT's and the RTC's interrupts."""
        return bool(self.config & LEG_RT_CNF)

    def main_counter(self, at: int | None = None) -> int:
        if not self.config & ENABLE_CNF:
            return self.counter
        return (self.counter + ticks(self.clock() if at is None else at) - ticks(self.since)) & U64

    # -- timers (a clocked device of the board) ----------------------------------------------
    def route(self, n: int) -> int:
        if self.legacy and n in LEGACY_ROUTES:
            return LEGACY_ROUTES[n]
        return (self.timers[n][0] >> TN_ROUTE_SHIFT) & TN_ROUTE_MASK

    def armed(self, n: int) -> bool:
        return bool(self.config & ENABLE_CNF and self.timers[n][0] & TN_INT_ENB)

    def next_event(self) -> int | None:
        return min((d for d in self.deadlines if d is not None), default=None)

    def advance(self, now: int) -> None:
        self.now = max(self.now, now)
        for n, deadline in enumerate(self.deadlines):
            if deadline is not None and deadline <= self.now:
                self._fire(n, deadline)

    def _fire(self, n: int, at: int) -> None:
        regs = self.timers[n]
        self.fired += 1
        if regs[0] & TN_PERIODIC and self.periods[n]:
            current, wide = self.main_counter(self.now), not regs[0] & TN_32BIT
            while _behind(current, regs[1], wide):
                regs[1] = (regs[1] + self.periods[n]) & (U64 if wide else U32)
        level = bool(regs[0] & TN_LEVEL)
        if level:
            self.status |= 1 << n
        self.interrupt(self.route(n), level, True)
        self.deadlines[n] = None
        if regs[0] & TN_PERIODIC and self.periods[n]:
            self._arm(n, self.now)

    def _arm(self, n: int, at: int) -> None:
        """Compute when timer ``n`` next fires, from virtual time ``at``."""
        if not self.armed(n):
            self.deadlines[n] = None
            return
        regs = self.timers[n]
        current = self.main_counter(at)
        if regs[0] & TN_32BIT:
            diff = (regs[1] - current) & U32
            diff = 0 if diff >= 1 << 31 else diff
        else:
            diff = max(regs[1] - current, 0)
        target = ticks(at) + diff
        self.deadlines[n] = max(at, first_instruction(target, HPET_HZ))

    def _rearm_all(self, at: int) -> None:
        for n in range(TIMERS):
            self._arm(n, at)

    def _lower(self, n: int) -> None:
        self.status &= ~(1 << n)
        self.interrupt(self.route(n), True, False)

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
        at = self.clock()
        if offset == REG_CONFIG:
            self._write_config(value, mask, at)
        elif offset == REG_STATUS:
            for n in range(TIMERS):
                if value & mask & self.status & (1 << n):
                    self._lower(n)
        elif offset == REG_COUNTER:
            if not self.config & ENABLE_CNF:       # writable only while the counter is stopped
                self.counter = (self.counter & ~mask) | (value & mask)
        elif offset >= TIMER_BASE:
            timer, field = divmod(offset - TIMER_BASE, TIMER_STRIDE)
            if timer >= TIMERS or field not in (TIMER_CONFIG, TIMER_COMPARATOR, TIMER_FSB):
                return
            if field == TIMER_CONFIG:
                self._write_timer_config(timer, value, mask, at)
            elif field == TIMER_COMPARATOR:
                self._write_comparator(timer, value, mask, at)
            else:
                regs = self.timers[timer]
                regs[2] = (regs[2] & ~mask) | (value & mask)

    def _write_config(self, value: int, mask: int, at: int) -> None:
        old = self.config
        now_counter = self.main_counter(at)
        self.config = (old & ~(CONFIG_WRITABLE & mask)) | (value & CONFIG_WRITABLE & mask)
        if (old ^ self.config) & ENABLE_CNF:
            self.counter, self.since = now_counter, at   # starts or holds here
            if not self.config & ENABLE_CNF:
                for n in range(TIMERS):
                    self._lower(n)
        if (old ^ self.config) & LEG_RT_CNF:
            for n in LEGACY_ROUTES:                 # the old route's line goes down
                self.interrupt(LEGACY_ROUTES[n] if old & LEG_RT_CNF else
                               (self.timers[n][0] >> TN_ROUTE_SHIFT) & TN_ROUTE_MASK, True, False)
        self._rearm_all(at)

    def _write_timer_config(self, n: int, value: int, mask: int, at: int) -> None:
        regs = self.timers[n]
        old = regs[0]
        writable = TN_WRITABLE & mask
        regs[0] = (old & ~writable) | (value & writable)
        if regs[0] & TN_32BIT:
            regs[1] &= U32
            self.periods[n] &= U32
        if old & TN_INT_ENB and not regs[0] & TN_INT_ENB:
            self._lower(n)
        self._arm(n, at)

    def _write_comparator(self, n: int, value: int, mask: int, at: int) -> None:
        regs = self.timers[n]
        if regs[0] & TN_32BIT:
            mask &= U32
            value &= U32
        periodic = bool(regs[0] & TN_PERIODIC)
        if not periodic or regs[0] & TN_VAL_SET:
            regs[1] = (regs[1] & ~mask) | (value & mask)
        if periodic:
            limit = (U32 if regs[0] & TN_32BIT else U64) >> 1
            self.periods[n] = ((self.periods[n] & ~mask) | (value & mask)) & limit
        regs[0] &= ~TN_VAL_SET
        self._arm(n, at)

    # -- the MMIO window: 4- and 8-byte accesses to 8-byte registers (narrower ones: nothing) --------------------------
    def mmio_read(self, offset: int, size: int) -> int:
        if size < 4:
            return 0                  # QEMU's HPET takes 4- and 8-byte accesses only: others read 0
        base, shift = offset & ~7, 8 * (offset & 7)
        return (self._register(base) >> shift) & ((1 << 8 * size) - 1)

    def mmio_write(self, offset: int, size: int, value: int) -> None:
        if size < 4:
            return                    # and are dropped
        base, shift = offset & ~7, 8 * (offset & 7)
        mask = (((1 << 8 * size) - 1) << shift) & U64
        self._write_register(base, (value << shift) & mask, mask)


def _behind(current: int, comparator: int, wide: bool) -> bool:
    """Has the counter reached or passed the comparator (modulo the counter's width)?"""
    bits = 64 if wide else 32
    return ((current - comparator) & ((1 << bits) - 1)) < 1 << (bits - 1)
