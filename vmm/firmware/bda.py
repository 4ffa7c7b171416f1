"""The BIOS data area (0x400-0x4ff) and the EBDA, as SeaBIOS leaves them on QEMU's ``pc``.

SeaBIOS's ``bda_init`` (src/post.c) zeroes the BDA, puts the EBDA at segment 0x9fc0 and
writes its size (1 KiB) in its first byte, and sets base memory (0x413) to the KiB below
it, 639; the device set-up code then fills in what it found. With ``-nodefaults`` and
``-serial stdio`` that is: COM1 at 0x3f8 with a timeout of 10 (``serial_setup``), no
parallel port; the equipment word (0x410) with the FPU bit, the PS/2 mouse bit (QEMU's
i8042 always has one) and one serial port in bits 9-11, no video bits (no VGA card);
the keyboard buffer empty at 0x1e-0x3e with the 101-key flag (``kbd_init``); the hard
disk control byte 0xc0 (``disk_control_byte``, ATA set-up); and the timer tick count
(0x46c) SeaBIOS derives from the RTC's time of day at boot (``clock_setup``). Every
value was read back from QEMU 7.2's memory after a ``-kernel`` boot.
"""
from __future__ import annotations

from .layout import EBDA_BASE, EBDA_SEGMENT, EBDA_SIZE_KIB, Structure, pack

BDA_BASE, BDA_SIZE = 0x400, 0x100
COM1 = 0x3F8                  # the board's UART (vmm.devices.uart)
COM_TIMEOUT = 0x0A
EQUIPMENT_FPU = 1 << 1
EQUIPMENT_PS2_MOUSE = 1 << 2
EQUIPMENT_SERIAL_SHIFT = 9
KBD_BUFFER_START, KBD_BUFFER_END = 0x1E, 0x3E
KBD_FLAG1_101 = 0x10
DISK_CONTROL_BYTE = 0xC0
EBDA_BYTES = 1024

# BDA offsets (SeaBIOS's struct bios_data_area_s)
COM_PORTS, EBDA_SEG, EQUIPMENT, MEM_SIZE_KB = 0x00, 0x0E, 0x10, 0x13
KBD_HEAD, KBD_TAIL, TIMER_COUNTER, DISK_CONTROL = 0x1A, 0x1C, 0x6C, 0x76
COM_TIMEOUTS, KBD_START, KBD_END, KBD_FLAG1 = 0x7C, 0x80, 0x82, 0x96

# SeaBIOS's timer arithmetic (src/hw/timer.c ticks_from_ms, src/std/bda.h)
PMTIMER_HZ, PMTIMER_TO_PIT, PIT_TICK_INTERVAL = 3579545, 3, 65536
TICKS_PER_DAY = 1573040


def ticks_from_ms(ms: int) -> int:
    """SeaBIOS's ``ticks_from_ms``: timer interrupts (18.2 Hz) in ``ms`` milliseconds."""
    t = -(-ms * PMTIMER_HZ // PIT_TICK_INTERVAL)
    return -(-t // (1000 * PMTIMER_TO_PIT))


def boot_ticks(hours: int, minutes: int, seconds: int) -> int:
    """The tick count ``clock_setup`` stores from the RTC's time of day."""
    return ticks_from_ms(((hours * 60 + minutes) * 60 + seconds) * 1000) % TICKS_PER_DAY


def bda(time_of_day: tuple[int, int, int]) -> Structure:
    data = bytearray(BDA_SIZE)

    def put(offset: int, fmt: str, value: int) -> None:
        raw = pack(fmt, value)
        data[offset:offset + len(raw)] = raw

    put(COM_PORTS, "H", COM1)
    put(EBDA_SEG, "H", EBDA_SEGMENT)
    put(EQUIPMENT, "H", EQUIPMENT_FPU | EQUIPMENT_PS2_MOUSE | 1 << EQUIPMENT_SERIAL_SHIFT)
    put(MEM_SIZE_KB, "H", EBDA_BASE // 1024)
    put(KBD_HEAD, "H", KBD_BUFFER_START)
    put(KBD_TAIL, "H", KBD_BUFFER_START)
    put(TIMER_COUNTER, "I", boot_ticks(*time_of_day))
    put(DISK_CONTROL, "B", DISK_CONTROL_BYTE)
    put(COM_TIMEOUTS, "B", COM_TIMEOUT)
    put(KBD_START, "H", KBD_BUFFER_START)
    put(KBD_END, "H", KBD_BUFFER_END)
    put(KBD_FLAG1, "B", KBD_FLAG1_101)
    return Structure("BIOS data area", BDA_BASE, bytes(data))


def ebda() -> Structure:
    """The EBDA: its size in KiB in byte 0, the rest zero (SeaBIOS keeps nothing a guest reads there)."""
    return Structure("EBDA", EBDA_BASE, bytes([EBDA_SIZE_KIB]) + bytes(EBDA_BYTES - 1))
