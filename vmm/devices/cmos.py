"""MC146818 RTC and CMOS RAM at 0x70 (index) / 0x71 (data), its interrupt on IRQ 8.

Bit 7 of the index written to 0x70 is the PC's NMI-disable gate, not part of
the index; it is kept in ``nmi_disabled`` for whoever models NMIs.

The clock runs in virtual time (guest instructions, one per PIT clock), from a fixed
date (``RTC_DATE``), so runs are deterministic and the same in every mode: one second
of the RTC is 1,193,182 instructions. The time registers read the current time in the
format status B selects (BCD or binary, 12- or 24-hour); a write to one sets that field
of the running clock. Status B's SET bit stops the updates until it is cleared, and the
clock then runs on from the time written.

As QEMU's ``mc146818rtc.c`` does, and as the s3 and rtc tests of KVM's suite and Linux's
``mach_get_cmos_time`` expect:

* status A's UIP is set during the last 244 us of every second (292 instructions);
* at each second's update, status C gets UF (update-ended) and, when the time matches
  the alarm registers (a value with bits 7:6 set matches anything), AF; the periodic
  rate (status A bits 3:0) sets PF at 32768 >> (rate - 1) Hz while status B's PIE is
  set; IRQF and IRQ 8 go up when a flag comes whose enable (PIE, AIE, UIE) is set;
  reading status C clears it and lowers the line;
* the divider bits of status A are stored but a reset divider chain does not hold the
  clock.
The memory-size bytes follow QEMU's ``pc_cmos_init`` (hw/i386/pc.c), which
firmware and boot loaders read:

    0x15/0x16  base memory in KiB, min(RAM, 640 KiB)
    0x17/0x18  extended memory above 1 MiB in KiB, capped at 0xffff
    0x30/0x31  the same again
    0x34/0x35  memory between 16 MiB and 4 GiB in 64 KiB units, capped at 0xffff
    0x5b-0x5d  memory above 4 GiB in 64 KiB units (always 0 here: RAM <= 3 GiB)
    0x5f       number of CPUs - 1
"""

from __future__ import annotations

import calendar
import datetime
from collections.abc import Callable
from dataclasses import dataclass

from .pit import PIT_INPUT_HZ, clock_ticks, first_instruction

CMOS_INDEX = 0x70
CMOS_DATA = 0x71
CMOS_SIZE = 128
INDEX_MASK = 0x7F
NMI_DISABLE = 0x80

KiB = 1024
MiB = 1024 * KiB

# RTC registers.
RTC_SECONDS = 0x00
RTC_SECONDS_ALARM = 0x01
RTC_MINUTES = 0x02
RTC_MINUTES_ALARM = 0x03
RTC_HOURS = 0x04
RTC_HOURS_ALARM = 0x05
RTC_DAY_OF_WEEK = 0x06
RTC_DAY_OF_MONTH = 0x07
RTC_MONTH = 0x08
RTC_YEAR = 0x09
RTC_STATUS_A = 0x0A
RTC_STATUS_B = 0x0B
RTC_STATUS_C = 0x0C
RTC_STATUS_D = 0x0D

STATUS_A_UIP = 0x80
STATUS_A_RESET = 0x26        # 32.768 kHz time base, 1024 Hz rate (QEMU's reset)
STATUS_A_RATE = 0x0F
STATUS_B_SET, STATUS_B_PIE, STATUS_B_AIE, STATUS_B_UIE = 0x80, 0x40, 0x20, 0x10
STATUS_B_BINARY = 0x04       # DM: binary, not BCD
STATUS_B_24H = 0x02          # 24-hour mode; DM (bit 2) = 0 selects BCD
STATUS_B_RESET = STATUS_B_24H
STATUS_C_IRQF, STATUS_C_PF, STATUS_C_AF, STATUS_C_UF = 0x80, 0x40, 0x20, 0x10
STATUS_D_VRT = 0x80          # valid RAM and time: the battery is good
ALARM_DONT_CARE = 0xC0
HOUR_PM = 0x80
RTC_HZ = 32768
UIP_HOLD = -(-8 * PIT_INPUT_HZ // RTC_HZ)   # 244 us (8 RTC ticks), rounded up: 292 instructions
TIME_REGISTERS = (0x00, 0x02, 0x04, 0x06, 0x07, 0x08, 0x09, 0x32)  # and the century byte
SECONDS_PER_DAY = 86400
CLOCKED_REGISTERS = frozenset({*TIME_REGISTERS, RTC_SECONDS_ALARM, RTC_MINUTES_ALARM, RTC_HOURS_ALARM,
                               RTC_STATUS_A, RTC_STATUS_B, RTC_STATUS_C})

# PC CMOS layout.
CMOS_EQUIPMENT = 0x14
EQUIPMENT_FPU = 0x02
EQUIPMENT_PS2_MOUSE = 0x04
CMOS_BASE_MEM_LO, CMOS_BASE_MEM_HI = 0x15, 0x16
CMOS_EXT_MEM_LO, CMOS_EXT_MEM_HI = 0x17, 0x18
CMOS_EXT_MEM2_LO, CMOS_EXT_MEM2_HI = 0x30, 0x31
CMOS_CENTURY = 0x32          # IBM century byte
CMOS_MEM_16M_LO, CMOS_MEM_16M_HI = 0x34, 0x35
CMOS_PS2_CENTURY = 0x37
CMOS_MEM_4G = (0x5B, 0x5C, 0x5D)
CMOS_CPU_COUNT_MINUS_1 = 0x5F

RTC_DATE = datetime.datetime(2026, 1, 1, 0, 0, 0)


def bcd(value: int) -> int:
    return ((value // 10) << 4) | (value % 10)


def from_bcd(value: int) -> int:
    return (value >> 4) * 10 + (value & 0x0F)


def periodic_ticks(rate: int) -> int:
    """32.768 kHz ticks between periodic interrupts for status A's rate (0: off);
    rates 1 and 2 are 256 and 128 Hz, as on the chip."""
    if rate == 0:
        return 0
    return 1 << (rate + 6) if rate < 3 else 1 << (rate - 1)




def memory_size_bytes(ram_size: int, above_4g: int = 0, cpus: int = 1) -> dict[int, int]:
    """The CMOS bytes QEMU's pc_cmos_init writes for this much RAM."""
    below_4g = ram_size
    base_kib = min(below_4g // KiB, 640)
    ext_kib = min((below_4g - 1 * MiB) // KiB, 0xFFFF) if below_4g > 1 * MiB else 0
    above_16m = min((below_4g - 16 * MiB) // (64 * KiB), 0xFFFF) if below_4g > 16 * MiB else 0
    high = above_4g // (64 * KiB)
    values = {
        CMOS_BASE_MEM_LO: base_kib, CMOS_BASE_MEM_HI: base_kib >> 8,
        CMOS_EXT_MEM_LO: ext_kib, CMOS_EXT_MEM_HI: ext_kib >> 8,
        CMOS_EXT_MEM2_LO: ext_kib, CMOS_EXT_MEM2_HI: ext_kib >> 8,
        CMOS_MEM_16M_LO: above_16m, CMOS_MEM_16M_HI: above_16m >> 8,
        CMOS_MEM_4G[0]: high, CMOS_MEM_4G[1]: high >> 8, CMOS_MEM_4G[2]: high >> 16,
        CMOS_CPU_COUNT_MINUS_1: cpus - 1,
    }
    return {index: value & 0xFF for index, value in values.items()}


@dataclass(frozen=True)
class CmosState:
    """The 128 bytes of RTC registers and CMOS RAM, the index register, and the clock:
    ``seconds`` (since 1970) at virtual time ``anchor``, updates held while ``held``."""

    ram: bytes
    index: int
    nmi_disabled: bool
    seconds: int = 0
    anchor: int = 0
    held: bool = False
    settled: int = 0


class Cmos:
    """``clock()`` is the virtual time of an access (the VM's sees the current run);
    ``irq(level)`` drives IRQ 8."""

    io_max_size = 1

    def __init__(self, ram_size: int, cpus: int = 1,
                 date: datetime.datetime = RTC_DATE, clock: Callable[[], int] | None = None,
                 irq: Callable[[bool], None] | None = None) -> None:
        self.ram = bytearray(CMOS_SIZE)
        self.index = 0
        self.nmi_disabled = False
        self.now = 0
        self.clock: Callable[[], int] = clock or (lambda: self.now)
        self.irq = irq or (lambda level: None)
        self.seconds = calendar.timegm(date.timetuple())
        self.anchor = 0               # virtual time at which the clock read ``seconds`` exactly
        self.held = False             # status B's SET: no updates
        self.settled = 0              # virtual time up to which status C's flags are computed
        self._next_alarm: int | None = None
        self.ram[RTC_STATUS_A] = STATUS_A_RESET
        self.ram[RTC_STATUS_B] = STATUS_B_RESET
        self.ram[RTC_STATUS_C] = 0
        self.ram[RTC_STATUS_D] = STATUS_D_VRT
        self.ram[CMOS_EQUIPMENT] = EQUIPMENT_FPU | EQUIPMENT_PS2_MOUSE
        for index, value in memory_size_bytes(ram_size, cpus=cpus).items():
            self.ram[index] = value
        self._store_time(self.seconds)

    def save_state(self) -> CmosState:
        return CmosState(bytes(self.ram), self.index, self.nmi_disabled, self.seconds, self.anchor, self.held,
                         self.settled)

    def load_state(self, state: CmosState) -> None:
        if len(state.ram) != CMOS_SIZE:
            raise ValueError(f"CMOS state has {len(state.ram)} bytes, not {CMOS_SIZE}")
        self.ram[:] = state.ram
        self.index, self.nmi_disabled = state.index, state.nmi_disabled
        self.seconds, self.anchor, self.held, self.settled = state.seconds, state.anchor, state.held, state.settled
        self._next_alarm = None

    # -- the clock --------------------------------------------------------------------------
    def current_seconds(self, at: int) -> int:
        if self.held:
            return self.seconds
        return self.seconds + (at - self.anchor) // PIT_INPUT_HZ

    def _update_in_progress(self, at: int) -> bool:
        return not self.held and (at - self.anchor) % PIT_INPUT_HZ >= PIT_INPUT_HZ - UIP_HOLD

    def _encode(self, value: int) -> int:
        return value if self.ram[RTC_STATUS_B] & STATUS_B_BINARY else bcd(value)

    def _decode(self, value: int) -> int:
        return value if self.ram[RTC_STATUS_B] & STATUS_B_BINARY else from_bcd(value)

    def _encode_hour(self, hour: int) -> int:
        if self.ram[RTC_STATUS_B] & STATUS_B_24H:
            return self._encode(hour)
        return self._encode(hour % 12 or 12) | (HOUR_PM if hour >= 12 else 0)

    def _decode_hour(self, value: int) -> int:
        if self.ram[RTC_STATUS_B] & STATUS_B_24H:
            return self._decode(value)
        hour = self._decode(value & ~HOUR_PM) % 12
        return hour + 12 if value & HOUR_PM else hour

    def _store_time(self, seconds: int) -> None:
        """Write the time registers for ``seconds`` since 1970, in status B's format."""
        when = datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)
        ram = self.ram
        ram[RTC_SECONDS], ram[RTC_MINUTES] = self._encode(when.second), self._encode(when.minute)
        ram[RTC_HOURS] = self._encode_hour(when.hour)
        ram[RTC_DAY_OF_WEEK] = self._encode(when.isoweekday() % 7 + 1)   # 1 = Sunday
        ram[RTC_DAY_OF_MONTH], ram[RTC_MONTH] = self._encode(when.day), self._encode(when.month)
        ram[RTC_YEAR] = self._encode(when.year % 100)
        ram[CMOS_CENTURY] = ram[CMOS_PS2_CENTURY] = self._encode(when.year // 100)

    def _set_field(self, index: int, value: int, at: int) -> None:
        """The guest wrote a time register: that field of the running clock changes."""
        self._store_time(self.current_seconds(at))
        self.ram[index] = value
        ram = self.ram
        try:
            year = self._decode(ram[CMOS_CENTURY]) * 100 + self._decode(ram[RTC_YEAR])
            when = datetime.datetime(year, self._decode(ram[RTC_MONTH]), self._decode(ram[RTC_DAY_OF_MONTH]),
                                     self._decode_hour(ram[RTC_HOURS]), self._decode(ram[RTC_MINUTES]),
                                     self._decode(ram[RTC_SECONDS]))
        except ValueError:
            return                    # not a date (yet): the register keeps the byte, the clock its time
        phase = 0 if self.held else (at - self.anchor) % PIT_INPUT_HZ
        self.seconds, self.anchor = calendar.timegm(when.timetuple()), at - phase
        self._next_alarm = None

    # -- status C's flags and IRQ 8 ----------------------------------------------------------
    def _alarm_matches(self, seconds: int) -> bool:
        when = datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)
        for index, value, hour in ((RTC_SECONDS_ALARM, when.second, False), (RTC_MINUTES_ALARM, when.minute, False),
                                   (RTC_HOURS_ALARM, when.hour, True)):
            alarm = self.ram[index]
            if alarm & ALARM_DONT_CARE == ALARM_DONT_CARE:
                continue
            if (self._decode_hour(alarm) if hour else self._decode(alarm)) != value:
                return False
        return True

    def _alarm_between(self, first: int, last: int) -> bool:
        """Does an update in the seconds first..last (inclusive) match the alarm?"""
        if last - first >= SECONDS_PER_DAY:
            last = first + SECONDS_PER_DAY - 1
        return any(self._alarm_matches(t) for t in range(first, last + 1))

    def _settle(self, at: int) -> None:
        """Set status C's flags for what happened in (settled, at]; raise IRQ 8 for a new
        flag whose interrupt is enabled."""
        before, self.settled = self.settled, max(self.settled, at)
        if at <= before:
            return
        flags = 0
        if not self.held:
            first = self.current_seconds(before) + 1
            last = self.current_seconds(at)
            if last >= first:
                flags |= STATUS_C_UF
                if self._alarm_between(first, last):
                    flags |= STATUS_C_AF
        period = periodic_ticks(self.ram[RTC_STATUS_A] & STATUS_A_RATE)
        if period and self.ram[RTC_STATUS_B] & STATUS_B_PIE \
                and clock_ticks(at, RTC_HZ) // period > clock_ticks(before, RTC_HZ) // period:
            flags |= STATUS_C_PF
        self._raise(flags)

    def _raise(self, flags: int) -> None:
        new = flags & ~self.ram[RTC_STATUS_C]
        self.ram[RTC_STATUS_C] |= flags
        if new & self.ram[RTC_STATUS_B] & (STATUS_B_PIE | STATUS_B_AIE | STATUS_B_UIE):
            self.ram[RTC_STATUS_C] |= STATUS_C_IRQF
            self.irq(True)

    # -- a clocked device of the board (only while an RTC interrupt is enabled) ---------------
    def next_event(self) -> int | None:
        enabled = self.ram[RTC_STATUS_B]
        times = []
        period = periodic_ticks(self.ram[RTC_STATUS_A] & STATUS_A_RATE)
        if enabled & STATUS_B_PIE and period:
            times.append(first_instruction((clock_ticks(self.settled, RTC_HZ) // period + 1) * period, RTC_HZ))
        if not self.held and enabled & (STATUS_B_UIE | STATUS_B_AIE):
            next_second = self.anchor + (self.current_seconds(self.settled) - self.seconds + 1) * PIT_INPUT_HZ
            if enabled & STATUS_B_UIE:
                times.append(next_second)
            else:
                times.append(self._alarm_time(next_second))
        return min(times, default=None)

    def _alarm_time(self, next_second: int) -> int:
        """When the next update that matches the alarm comes (within a day; else in a day)."""
        if self._next_alarm is None or self._next_alarm < next_second:
            seconds = self.current_seconds(next_second)
            for k in range(SECONDS_PER_DAY):
                if self._alarm_matches(seconds + k):
                    break
            self._next_alarm = next_second + k * PIT_INPUT_HZ
        return self._next_alarm

    def advance(self, now: int) -> None:
        self.now = now
        self._settle(now)

    # -- ports ----------------------------------------------------------------------------
    def io_read(self, port: int, size: int) -> int:
        if port == CMOS_INDEX:
            return 0xFF               # the index register is write-only
        index = self.index
        if index not in CLOCKED_REGISTERS:
            return self.ram[index]    # plain CMOS bytes: no need to see the clock
        at = self.clock()
        if index in TIME_REGISTERS:
            self._store_time(self.current_seconds(at))
        elif index == RTC_STATUS_A:
            uip = STATUS_A_UIP if self._update_in_progress(at) else 0
            return (self.ram[RTC_STATUS_A] & ~STATUS_A_UIP) | uip
        elif index == RTC_STATUS_C:
            self._settle(at)
            value = self.ram[RTC_STATUS_C]
            self.ram[RTC_STATUS_C] = 0   # reading C acknowledges its flags
            self.irq(False)
            return value
        return self.ram[index]

    def io_write(self, port: int, size: int, value: int) -> None:
        value &= 0xFF
        if port == CMOS_INDEX:
            self.index = value & INDEX_MASK
            self.nmi_disabled = bool(value & NMI_DISABLE)
            return
        index = self.index
        if index in (RTC_STATUS_C, RTC_STATUS_D):
            return                        # read-only
        if index not in CLOCKED_REGISTERS:
            self.ram[index] = value
            return
        at = self.clock()
        if index in TIME_REGISTERS:
            self._set_field(index, value, at)
            return
        self._settle(at)
        if index == RTC_STATUS_A:
            value &= ~STATUS_A_UIP        # UIP is read-only
        elif index == RTC_STATUS_B:
            self._write_status_b(value, at)
            return
        self.ram[index] = value
        if index in (RTC_SECONDS_ALARM, RTC_MINUTES_ALARM, RTC_HOURS_ALARM):
            self._next_alarm = None

    def _write_status_b(self, value: int, at: int) -> None:
        current = self.current_seconds(at)
        if value & STATUS_B_SET and not self.held:
            self.seconds, self.held = current, True          # updates stop here
        elif self.held and not value & STATUS_B_SET:
            self.held, self.anchor = False, at               # and run on from the time held
        self.ram[RTC_STATUS_B] = value
        self._store_time(self.seconds if self.held else current)
        self._next_alarm = None
        # An enable set while its flag is up interrupts (QEMU: IRQF follows C & B).
        if self.ram[RTC_STATUS_C] & value & (STATUS_B_PIE | STATUS_B_AIE | STATUS_B_UIE) \
                and not self.ram[RTC_STATUS_C] & STATUS_C_IRQF:
            self.ram[RTC_STATUS_C] |= STATUS_C_IRQF
            self.irq(True)
