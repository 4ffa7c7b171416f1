"""The PIIX4's ACPI registers: PM1 event and control, the PM timer, GPE0 and the APM port.

Where QEMU's ``pc`` has them after SeaBIOS (hw/acpi/core.c, hw/acpi/piix4.c; the PIIX4
PM function's PMBA is 0x601, and the firmware's FADT gives the same blocks):

    0x600  PM1_STS   16-bit, write 1 to clear: TMR_STS (0), GBL_STS (5), PWRBTN_STS (8),
                     RTC_STS (10), WAK_STS (15)
    0x602  PM1_EN    16-bit: TMR_EN (0), GBL_EN (5), PWRBTN_EN (8), RTC_EN (10)
    0x604  PM1_CNT   16-bit: SCI_EN (0), SLP_TYP (12:10), SLP_EN (13, write-only)
    0x608  PM_TMR    32-bit read: a 24-bit counter at 3.579545 MHz
    0xafe0 GPE0_STS  16-bit, write 1 to clear, and 0xafe2 GPE0_EN
    0xb2   APM_CNT   ACPI_ENABLE (0xf1) sets SCI_EN, ACPI_DISABLE (0xf0) clears it (the
                     FADT's SMI_CMD: an OS switches to ACPI mode through it); 0xb3 APM_STS
                     is a scratch byte

The PM timer derives from virtual time (guest instructions at the PIT's 1.193182 MHz),
so it reads about 3 ticks per instruction, the same in every mode. TMR_STS is set when
bit 23 of the counter changes, as QEMU computes it: its first overflow time is 0, so the
first read after reset finds TMR_STS set (QEMU's guests see 0x0001 in PM1_STS).

SCI (IRQ 9, level-triggered through the board's lines) is asserted while a status bit
and its enable are both set: PM1's timer, global-lock, power-button and RTC bits, or any
GPE0 bit. SLP_EN with SLP_TYP asks for a sleep state as QEMU's PIIX4 reads it: 0 is
soft-off (S5), 2 is S4 (also off), 1 is suspend-to-RAM (S3); ``on_sleep`` gets "S5",
"S4" or "S3". The PMBA register is not followed: the block stays at 0x600.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .pit import clock_ticks, first_instruction

PM_BASE = 0x600
PM1_STS, PM1_EN, PM1_CNT, PM_TMR = PM_BASE, PM_BASE + 2, PM_BASE + 4, PM_BASE + 8
PM_LAST = PM_TMR + 3
GPE0_BASE, GPE0_LEN = 0xAFE0, 4
APM_CNT, APM_STS = 0xB2, 0xB3
ACPI_ENABLE, ACPI_DISABLE = 0xF1, 0xF0
PM_TIMER_HZ = 3_579_545
TIMER_MASK = 0xFFFFFF
TIMER_OVERFLOW_BIT = 1 << 23

TMR_STS, GBL_STS, PWRBTN_STS, RTC_STS, WAK_STS = 1 << 0, 1 << 5, 1 << 8, 1 << 10, 1 << 15
STS_WRITABLE = TMR_STS | GBL_STS | PWRBTN_STS | 1 << 9 | RTC_STS | WAK_STS | 1 << 4 | 1 << 14
SCI_SOURCES = TMR_STS | GBL_STS | PWRBTN_STS | RTC_STS
EN_WRITABLE = 0xFFFF               # QEMU keeps every bit written
SCI_EN = 1 << 0
SLP_TYP_SHIFT, SLP_TYP_MASK = 10, 7
SLP_EN = 1 << 13
SLEEP_STATES = {0: "S5", 1: "S3", 2: "S4"}   # QEMU's PIIX4: s4_val = 2, and its DSDT's _S3/_S5


@dataclass(frozen=True)
class AcpiPmState:
    status: int
    enable: int
    control: int
    overflow_tick: int
    gpe_status: int
    gpe_enable: int
    apm_command: int
    apm_status: int


class AcpiPm:
    """``clock()`` is the virtual time of an access (the VM's, which sees the current run);
    ``sci(level)`` drives IRQ 9; ``on_sleep(state)`` is a sleep request."""

    def __init__(self, clock: Callable[[], int], sci: Callable[[bool], None] | None = None,
                 on_sleep: Callable[[str], None] | None = None):
        self.clock = clock
        self.sci = sci or (lambda level: None)
        self.on_sleep = on_sleep or (lambda state: None)
        self.status = 0
        self.enable = 0
        self.control = 0
        self.overflow_tick = 0      # the PM-timer tick at which TMR_STS is next set
        self.gpe_status = 0
        self.gpe_enable = 0
        self.apm_command = 0
        self.apm_status = 0
        self.now = 0
        self.sleeps: list[str] = []

    def save_state(self) -> AcpiPmState:
        return AcpiPmState(self.status, self.enable, self.control, self.overflow_tick, self.gpe_status,
                           self.gpe_enable, self.apm_command, self.apm_status)

    def load_state(self, state: AcpiPmState) -> None:
        self.status, self.enable, self.control = state.status, state.enable, state.control
        self.overflow_tick, self.gpe_status, self.gpe_enable = state.overflow_tick, state.gpe_status, state.gpe_enable
        self.apm_command, self.apm_status = state.apm_command, state.apm_status

    # -- the timer and the status bits ------------------------------------------------------
    def timer(self, at: int | None = None) -> int:
        return clock_ticks(self.clock() if at is None else at, PM_TIMER_HZ) & TIMER_MASK

    def _settle(self, at: int) -> None:
        """Set TMR_STS if the counter's bit 23 changed since it was last cleared."""
        tick = clock_ticks(at, PM_TIMER_HZ)
        if tick >= self.overflow_tick:
            self.status |= TMR_STS
            self.overflow_tick = (tick | (TIMER_OVERFLOW_BIT - 1)) + 1

    def raise_status(self, bits: int) -> None:
        """A source sets PM1 status bits (the RTC alarm: RTC_STS; a power button)."""
        self.status |= bits
        self._update_sci()

    def _update_sci(self) -> None:
        pending = self.status & self.enable & SCI_SOURCES or self.gpe_status & self.gpe_enable
        self.sci(bool(pending))

    # -- a clocked device while TMR_EN is set (the timer's overflow interrupts) --------------
    def next_event(self) -> int | None:
        if not self.enable & TMR_STS or self.status & TMR_STS:
            return None
        return first_instruction(self.overflow_tick, PM_TIMER_HZ)

    def advance(self, now: int) -> None:
        self.now = now
        if self.enable & TMR_STS and not self.status & TMR_STS:
            self._settle(now)
            self._update_sci()

    # -- ports ------------------------------------------------------------------------------
    def _read16(self, register: int) -> int:
        if register == PM1_STS:
            self._settle(self.clock())
            return self.status
        if register == PM1_EN:
            return self.enable
        if register == PM1_CNT:
            return self.control
        if register == GPE0_BASE:
            return self.gpe_status
        if register == GPE0_BASE + 2:
            return self.gpe_enable
        return 0

    def io_read(self, port: int, size: int) -> int:
        if port in (APM_CNT, APM_STS):
            return self.apm_command if port == APM_CNT else self.apm_status
        if PM_TMR <= port <= PM_LAST:
            return (self.timer() >> 8 * (port - PM_TMR)) & ((1 << 8 * size) - 1)
        register, shift = port & ~1, 8 * (port & 1)
        value = self._read16(register) >> shift
        if size > 2 - (port & 1):
            value |= self._read16(register + 2) << (16 - shift)
        return value & ((1 << 8 * size) - 1)

    def io_write(self, port: int, size: int, value: int) -> None:
        if port == APM_CNT:
            self._apm_command(value & 0xFF)
            return
        if port == APM_STS:
            self.apm_status = value & 0xFF
            return
        if PM_TMR <= port <= PM_LAST:
            return                                  # read-only
        register, shift = port & ~1, 8 * (port & 1)
        mask = (((1 << 8 * size) - 1) << shift) & 0xFFFF
        self._write16(register, (value << shift) & mask, mask)
        if size == 4 and not port & 1:
            self._write16(register + 2, value >> 16, 0xFFFF)

    def _write16(self, register: int, value: int, mask: int) -> None:
        if register == PM1_STS:
            self._settle(self.clock())
            self.status &= ~(value & STS_WRITABLE)
        elif register == PM1_EN:
            self.enable = (self.enable & ~mask) | (value & EN_WRITABLE & mask)
        elif register == PM1_CNT:
            self._write_control((self.control & ~mask) | (value & mask))
        elif register == GPE0_BASE:
            self.gpe_status &= ~value
        elif register == GPE0_BASE + 2:
            self.gpe_enable = (self.gpe_enable & ~mask) | (value & mask)
        self._update_sci()

    def _write_control(self, value: int) -> None:
        self.control = value & ~SLP_EN
        if value & SLP_EN:
            state = SLEEP_STATES.get((value >> SLP_TYP_SHIFT) & SLP_TYP_MASK)
            if state is not None:
                self.sleeps.append(state)
                self.on_sleep(state)

    def _apm_command(self, command: int) -> None:
        self.apm_command = command
        if command == ACPI_ENABLE:
            self.control |= SCI_EN
        elif command == ACPI_DISABLE:
            self.control &= ~SCI_EN
