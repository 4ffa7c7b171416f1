"""MC146818 RTC and CMOS RAM at 0x70 (index) / 0x71 (data).

Bit 7 of the index written to 0x70 is the PC's NMI-disable gate, not part of
the index; it is kept in ``nmi_disabled`` for whoever models NMIs.

The clock is frozen at a fixed date (``RTC_DATE``, stored BCD with the 24-hour
format selected in status B) so runs are deterministic: the RTC registers are
plain bytes the clock never updates, UIP never reads as set, and writes to them
are kept as written (as on the real chip, changing status B's format bits
does not convert them).  No alarm, periodic or update interrupts.

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

import datetime
from dataclasses import dataclass

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
STATUS_B_24H = 0x02          # 24-hour mode; DM (bit 2) = 0 selects BCD
STATUS_B_RESET = STATUS_B_24H
STATUS_D_VRT = 0x80          # valid RAM and time: the battery is good

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
    """The 128 bytes of RTC registers and CMOS RAM, and the index register."""

    ram: bytes
    index: int
    nmi_disabled: bool


class Cmos:
    io_max_size = 1

    def __init__(self, ram_size: int, cpus: int = 1,
                 date: datetime.datetime = RTC_DATE) -> None:
        self.ram = bytearray(CMOS_SIZE)
        self.index = 0
        self.nmi_disabled = False
        when = date
        self.ram[RTC_SECONDS] = bcd(when.second)
        self.ram[RTC_MINUTES] = bcd(when.minute)
        self.ram[RTC_HOURS] = bcd(when.hour)
        self.ram[RTC_DAY_OF_WEEK] = when.isoweekday() % 7 + 1   # 1 = Sunday
        self.ram[RTC_DAY_OF_MONTH] = bcd(when.day)
        self.ram[RTC_MONTH] = bcd(when.month)
        self.ram[RTC_YEAR] = bcd(when.year % 100)
        self.ram[CMOS_CENTURY] = self.ram[CMOS_PS2_CENTURY] = bcd(when.year // 100)
        self.ram[RTC_STATUS_A] = STATUS_A_RESET
        self.ram[RTC_STATUS_B] = STATUS_B_RESET
        self.ram[RTC_STATUS_C] = 0
        self.ram[RTC_STATUS_D] = STATUS_D_VRT
        self.ram[CMOS_EQUIPMENT] = EQUIPMENT_FPU | EQUIPMENT_PS2_MOUSE
        for index, value in memory_size_bytes(ram_size, cpus=cpus).items():
            self.ram[index] = value

    def save_state(self) -> CmosState:
        return CmosState(bytes(self.ram), self.index, self.nmi_disabled)

    def load_state(self, state: CmosState) -> None:
        if len(state.ram) != CMOS_SIZE:
            raise ValueError(f"CMOS state has {len(state.ram)} bytes, not {CMOS_SIZE}")
        self.ram[:] = state.ram
        self.index, self.nmi_disabled = state.index, state.nmi_disabled

    def io_read(self, port: int, size: int) -> int:
        if port == CMOS_INDEX:
            return 0xFF               # the index register is write-only
        value = self.ram[self.index]
        if self.index == RTC_STATUS_C:
            self.ram[RTC_STATUS_C] = 0   # reading C acknowledges its flags
        return value

    def io_write(self, port: int, size: int, value: int) -> None:
        value &= 0xFF
        if port == CMOS_INDEX:
            self.index = value & INDEX_MASK
            self.nmi_disabled = bool(value & NMI_DISABLE)
            return
        if self.index in (RTC_STATUS_C, RTC_STATUS_D):
            return                        # read-only
        if self.index == RTC_STATUS_A:
            value &= ~STATUS_A_UIP        # UIP is read-only
        self.ram[self.index] = value
