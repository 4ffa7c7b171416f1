"""Intel 8254 programmable interval timer (ports 0x40-0x43) and port 0x61.

Time is virtual: the PIT's 1.193182 MHz input clock ticks once every
``INSTRUCTIONS_PER_PIT_CLOCK`` guest instructions.  Nothing is stored per
tick; every counter value, OUT level and interrupt time is computed from the
clock at which the channel started counting (as QEMU's i8254 does), so a run
is deterministic and costs nothing between guest accesses.

Channel 0 drives IRQ0 through the ``irq`` callable, called with 1 at each
rising edge of OUT0 (the 8259A is edge triggered; the line is never lowered
here).  Channels 1 and 2 count the same way but drive no interrupt; channel 2's
GATE and OUT are reachable through port 0x61 as on the PC/AT, which is what
TSC-calibration loops poll.

Modelled: modes 0-5 (6 and 7 alias 2 and 3), binary and BCD counting, LSB /
MSB / LSB-then-MSB access, the counter-latch command, the read-back command
(count and status), GATE on channel 2.  Simplifications, all shared with
QEMU: a new count written in modes 2/3 takes effect at once rather than at the
end of the current period; the count loads on the write, not on the next CLK
edge; mode 3 with an odd count is approximated by QEMU's formula; an OUT edge
caused by reprogramming (rather than by counting) raises no IRQ.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

# One guest instruction per PIT input clock.  Virtual time must not depend on
# the host (deterministic runs, identical counts in every mode), and this is
# the simplest rate that keeps PIT arithmetic exact: a guest that asks for
# 100 Hz writes the divisor 11932 (1193182 / 100) and gets IRQ0 every 11932
# guest instructions, i.e. it behaves as if the CPU ran at 1.19 MIPS.
INSTRUCTIONS_PER_PIT_CLOCK = 1
PIT_INPUT_HZ = 1_193_182


def clock_ticks(instructions: int, hz: int) -> int:
    """Ticks of an ``hz`` clock in ``instructions`` of virtual time (one instruction per PIT
    input clock): how every other clock of the board (HPET, PM timer, RTC) derives its count."""
    return instructions * hz // PIT_INPUT_HZ


def first_instruction(tick: int, hz: int) -> int:
    """The first virtual time at which ``clock_ticks(time, hz) >= tick``: when that clock's
    event ``tick`` comes."""
    return -(-tick * PIT_INPUT_HZ // hz)

PIT_BASE = 0x40
PIT_COMMAND = 0x43          # mode/command register (write only)
SYSTEM_CONTROL_B = 0x61     # PC/AT "port B": speaker, GATE2, OUT2, refresh

# Control word fields (8254 datasheet, "Control Word Format").
CW_SELECT_SHIFT = 6         # SC1 SC0: channel 0-2, 3 = read-back
SELECT_READ_BACK = 3
CW_ACCESS_SHIFT = 4         # RW1 RW0
ACCESS_LATCH = 0            # counter latch command
ACCESS_LSB = 1
ACCESS_MSB = 2
ACCESS_LSB_MSB = 3
CW_MODE_SHIFT = 1           # M2 M1 M0
CW_BCD = 0x01

# Read-back command (SC = 11): bits 5 and 4 are active low.
RB_NOT_COUNT = 0x20
RB_NOT_STATUS = 0x10

# Status byte returned after a read-back with STATUS selected.
STATUS_OUT = 0x80
STATUS_NULL_COUNT = 0x40

# Port 0x61 bits.
PORT61_GATE2 = 0x01
PORT61_SPEAKER_DATA = 0x02
PORT61_WRITABLE = 0x0F
PORT61_REFRESH = 0x10       # toggles with every DRAM refresh request
PORT61_OUT2 = 0x20
# The refresh request comes every 15.085 us, i.e. every 18 PIT clocks.
REFRESH_PERIOD_CLOCKS = 18

PERIODIC_MODES = (2, 3)
GATE_TRIGGERED_MODES = (1, 5)


def _to_bcd(value: int) -> int:
    return int(str(value % 10000), 16)


def _from_bcd(value: int) -> int:
    return sum(((value >> (4 * i)) & 0xF) * 10 ** i for i in range(4))


@dataclass(frozen=True)
class PitChannelState:
    """One channel: its programming, where it is in its access sequence (LSB/MSB
    phase, latches) and the clock at which it started counting."""

    gate: bool
    mode: int
    access: int
    bcd: bool
    reload: int
    loaded: bool
    triggered: bool
    start: int | None
    paused_elapsed: int
    held_count: int
    lsb_pending: int | None
    read_msb_next: bool
    latched: tuple[int, ...]
    status: int | None


@dataclass(frozen=True)
class PitState:
    """The three channels, port 0x61 and the virtual time up to which IRQ0 was fired."""

    channels: tuple[PitChannelState, ...]
    now: int
    speaker_data: bool
    port61_low_bits: int
    irq0_edges: int
    fired_through: int


class PitChannel:
    """One 16-bit down counter.  Times are in PIT clocks."""

    def __init__(self, index: int, gate: bool) -> None:
        self.index = index
        self.gate = gate
        self.mode = 3
        self.access = ACCESS_LSB_MSB
        self.bcd = False
        self.reload = 0x10000        # N: the count register, 0 already expanded
        self.loaded = False          # False between control word and count
        self.triggered = False       # modes 1/5: a GATE rising edge arrived
        self.start: int | None = None  # clock at which counting (re)started
        self.paused_elapsed = 0      # elapsed clocks while not counting
        self.held_count = 0          # what a null-count channel reads as
        self._lsb_pending: int | None = None
        self._read_msb_next = False
        self._latched: list[int] = []
        self._status: int | None = None

    def save_state(self) -> PitChannelState:
        return PitChannelState(self.gate, self.mode, self.access, self.bcd, self.reload, self.loaded,
                               self.triggered, self.start, self.paused_elapsed, self.held_count,
                               self._lsb_pending, self._read_msb_next, tuple(self._latched), self._status)

    def load_state(self, state: PitChannelState) -> None:
        self.gate, self.mode, self.access, self.bcd = state.gate, state.mode, state.access, state.bcd
        self.reload, self.loaded, self.triggered = state.reload, state.loaded, state.triggered
        self.start, self.paused_elapsed, self.held_count = state.start, state.paused_elapsed, state.held_count
        self._lsb_pending, self._read_msb_next = state.lsb_pending, state.read_msb_next
        self._latched = list(state.latched)
        self._status = state.status

    # -- the counter as a function of time ---------------------------------------

    def reset(self, clock: int) -> None:
        """QEMU's reset state: mode 3, count 65536, counting if GATE is high."""
        self.mode, self.access, self.bcd = 3, ACCESS_LSB_MSB, False
        self._load(0x10000, clock)

    @property
    def modulus(self) -> int:
        return 10000 if self.bcd else 0x10000

    def _running(self) -> bool:
        return self.loaded and (self.mode not in GATE_TRIGGERED_MODES or self.triggered)

    def _elapsed(self, clock: int) -> int:
        return clock - self.start if self.start is not None else self.paused_elapsed

    def count(self, clock: int) -> int:
        """The counting element as a guest would read it (binary or BCD)."""
        if not self.loaded:
            value = self.held_count
        elif not self._running():
            value = self.reload % self.modulus
        else:
            n, d = self.reload, self._elapsed(clock)
            if self.mode == 2:
                value = n - d % n
            elif self.mode == 3:
                value = n - (2 * d) % n
            else:
                value = n - d
            value %= self.modulus
        return _to_bcd(value) if self.bcd else value

    def out(self, clock: int) -> bool:
        """The OUT pin level."""
        if not self.loaded:
            return self.mode != 0          # after a control word: low in mode 0
        if self.mode in PERIODIC_MODES and not self.gate:
            return True                    # GATE low forces OUT high
        if not self._running():
            return True                    # modes 1/5 waiting for a trigger
        n, d = self.reload, self._elapsed(clock)
        if self.mode in (0, 1):
            return d >= n
        if self.mode == 2:
            return d % n != n - 1          # low for the one clock at count 1
        if self.mode == 3:
            return d % n < (n + 1) // 2    # high for the first half-period
        return d != n                      # modes 4/5: low for one clock at 0

    def next_rising_edge(self, after: int) -> int | None:
        """First clock > ``after`` at which OUT rises while counting, or None."""
        if self.start is None or not self._running():
            return None
        n, start = self.reload, self.start
        if self.mode in PERIODIC_MODES:
            k = max(1, (after - start) // n + 1)
            return start + k * n
        edge = start + n + (1 if self.mode in (4, 5) else 0)
        return edge if edge > after else None

    # -- programming -----------------------------------------------------------------

    def _load(self, n: int, clock: int) -> None:
        self.reload = n
        self.loaded = True
        self.paused_elapsed = 0
        if self.mode in GATE_TRIGGERED_MODES:
            self.triggered = False
            self.start = None
        else:
            self.start = clock if self.gate else None

    def set_gate(self, level: bool, clock: int) -> None:
        if level == self.gate:
            return
        self.gate = level
        if not self.loaded:
            return
        if level:
            if self.mode in (0, 4):
                self.start = clock - self.paused_elapsed   # resume
            else:
                self.start = clock                          # (re)trigger
                self.paused_elapsed = 0
                self.triggered = True
        elif self.mode in (0, 2, 3, 4) and self.start is not None:
            self.paused_elapsed = clock - self.start        # GATE low stops counting
            self.start = None

    def write_control(self, control: int, clock: int) -> None:
        access = (control >> CW_ACCESS_SHIFT) & 3
        if access == ACCESS_LATCH:
            self.latch_count(clock)
            return
        self.held_count = self.count(clock)
        mode = (control >> CW_MODE_SHIFT) & 7
        self.mode = mode - 4 if mode >= 6 else mode
        self.access = access
        self.bcd = bool(control & CW_BCD)
        self.loaded = False
        self.start = None
        self._lsb_pending = None
        self._read_msb_next = False
        self._latched.clear()
        self._status = None

    def write_count(self, value: int, clock: int) -> None:
        if self.access == ACCESS_LSB:
            raw = value
        elif self.access == ACCESS_MSB:
            raw = value << 8
        elif self._lsb_pending is None:
            self._lsb_pending = value
            return
        else:
            raw = self._lsb_pending | (value << 8)
            self._lsb_pending = None
        n = _from_bcd(raw) if self.bcd else raw
        self._load(n or self.modulus, clock)

    def latch_count(self, clock: int) -> None:
        """Counter latch command; ignored while an earlier latch is unread."""
        if self._latched:
            return
        value = self.count(clock)
        lo, hi = value & 0xFF, (value >> 8) & 0xFF
        self._latched = {ACCESS_LSB: [lo], ACCESS_MSB: [hi]}.get(self.access, [lo, hi])

    def latch_status(self, clock: int) -> None:
        if self._status is not None:
            return
        null_count = not self._running()
        self._status = ((STATUS_OUT if self.out(clock) else 0)
                        | (STATUS_NULL_COUNT if null_count else 0)
                        | (self.access << CW_ACCESS_SHIFT)
                        | (self.mode << CW_MODE_SHIFT)
                        | (CW_BCD if self.bcd else 0))

    def read(self, clock: int) -> int:
        if self._status is not None:
            status, self._status = self._status, None
            return status
        if self._latched:
            return self._latched.pop(0)
        value = self.count(clock)
        if self.access == ACCESS_MSB:
            return (value >> 8) & 0xFF
        if self.access == ACCESS_LSB_MSB:
            msb, self._read_msb_next = self._read_msb_next, not self._read_msb_next
            if msb:
                return (value >> 8) & 0xFF
        return value & 0xFF


class Pit8254:
    """The PC's 8254: three channels, channel 0 on IRQ0; also serves port 0x61.

    A clocked device: ``next_event()`` is the virtual time of the next IRQ0
    edge, ``advance(now)`` fires the edges due by ``now`` and moves the PIT's
    notion of the present, which is also the time at which guest reads of the
    counters are evaluated (the engine advances the board before dispatching
    an access).  Several edges falling between two ``advance`` calls reach the
    PIC as one pulse, since its IRR holds one bit per line; ``irq0_edges``
    counts them all.
    """

    io_max_size = 1

    def __init__(self, irq: Callable[[int], None] | None = None) -> None:
        self.irq = irq
        self.now = 0
        self.channels = [PitChannel(0, gate=True), PitChannel(1, gate=True),
                         PitChannel(2, gate=False)]
        for channel in self.channels:
            channel.reset(0)
        self.speaker_data = False
        self.port61_low_bits = 0
        self.irq0_edges = 0
        self._fired_through = 0   # PIT clock up to which IRQ0 edges were fired

    @property
    def clock(self) -> int:
        return self.now // INSTRUCTIONS_PER_PIT_CLOCK

    # -- saved state ------------------------------------------------------------------------
    def save_state(self) -> PitState:
        return PitState(tuple(c.save_state() for c in self.channels), self.now, self.speaker_data,
                        self.port61_low_bits, self.irq0_edges, self._fired_through)

    def load_state(self, state: PitState) -> None:
        for channel, saved in zip(self.channels, state.channels, strict=True):
            channel.load_state(saved)
        self.now, self.speaker_data = state.now, state.speaker_data
        self.port61_low_bits, self.irq0_edges = state.port61_low_bits, state.irq0_edges
        self._fired_through = state.fired_through

    # -- clocked-device interface ---------------------------------------------------------

    def next_event(self) -> int | None:
        edge = self.channels[0].next_rising_edge(self._fired_through)
        return None if edge is None else edge * INSTRUCTIONS_PER_PIT_CLOCK

    def advance(self, now: int) -> None:
        if now < self.now:
            raise ValueError(f"virtual time went backwards: {now} < {self.now}")
        self.now = now
        clock = self.clock
        channel = self.channels[0]
        edge = channel.next_rising_edge(self._fired_through)
        if edge is not None and edge <= clock:
            periodic = channel.mode in PERIODIC_MODES
            self.irq0_edges += (clock - edge) // channel.reload + 1 if periodic else 1
            if self.irq is not None:
                self.irq(1)
        self._fired_through = clock

    # -- guest side -----------------------------------------------------------------------

    def io_read(self, port: int, size: int) -> int:
        if port == SYSTEM_CONTROL_B:
            return self._read_port61()
        index = port - PIT_BASE
        if 0 <= index <= 2:
            return self.channels[index].read(self.clock)
        return 0xFF    # the command register is write-only; the bus floats

    def io_write(self, port: int, size: int, value: int) -> None:
        value &= 0xFF
        if port == SYSTEM_CONTROL_B:
            self.port61_low_bits = value & PORT61_WRITABLE
            self.speaker_data = bool(value & PORT61_SPEAKER_DATA)
            self.channels[2].set_gate(bool(value & PORT61_GATE2), self.clock)
            return
        index = port - PIT_BASE
        if 0 <= index <= 2:
            self.channels[index].write_count(value, self.clock)
        elif port == PIT_COMMAND:
            self._write_command(value)

    def _write_command(self, value: int) -> None:
        select = value >> CW_SELECT_SHIFT
        if select != SELECT_READ_BACK:
            self.channels[select].write_control(value, self.clock)
            return
        for channel in self.channels:
            if value & (2 << channel.index):
                if not value & RB_NOT_COUNT:
                    channel.latch_count(self.clock)
                if not value & RB_NOT_STATUS:
                    channel.latch_status(self.clock)

    def _read_port61(self) -> int:
        refresh = (self.clock // REFRESH_PERIOD_CLOCKS) & 1
        return (self.port61_low_bits
                | (PORT61_REFRESH if refresh else 0)
                | (PORT61_OUT2 if self.channels[2].out(self.clock) else 0))
