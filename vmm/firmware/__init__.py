"""The firmware tables SeaBIOS leaves a QEMU ``pc`` guest booted with ``-kernel``.

The board has no BIOS code to run; what a guest reads of one is written into RAM before
the image is loaded (docs/firmware.md): the BIOS data area and EBDA (:mod:`.bda`), the
real-mode IVT and the handlers behind it (:mod:`.ivt`), the ACPI tables (:mod:`.acpi`),
the MP tables (:mod:`.mptable`), SMBIOS (:mod:`.smbios`), and the fixed bytes at the top
of the F-segment (the reset-vector jump, the BIOS date, the model byte). Each lands where
SeaBIOS puts it (:mod:`.layout`), with the values QEMU 7.2 and its SeaBIOS give.

:func:`install` writes them and returns a :class:`Firmware` naming what it wrote. The
image is written afterwards and wins where the two overlap (an ELF's headers in the
F-segment); each such overlap is noted on the image (``LoadedImage.notes``), never
refused. A guest may overwrite any of it; nothing the VMM does depends on what it reads
back, except the service notice, which checks the stub is still its own.
"""
from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field

from ..cpu.cpuid import cpuid
from ..devices.cmos import RTC_HOURS, RTC_MINUTES, RTC_SECONDS
from ..devices.hpet import CAPABILITIES as HPET_CAPABILITIES
from ..devices.lapic import APIC_VERSION_VALUE
from ..loader.plan import ram_below_4g
from . import acpi, bda, ivt, mptable, smbios
from .layout import (
    FSEG_END,
    FSEG_TABLES,
    HIGH_TABLES_SIZE,
    Heap,
    Structure,
)

RESET_JUMP = bytes([0xEA, 0x5B, 0xE0, 0x00, 0xF0])   # jmp far F000:E05B, at F000:FFF0
RESET_VECTOR = 0xFFFF0
BIOS_DATE = b"06/23/99"                                # F000:FFF5, SeaBIOS's fixed date
MODEL_BYTE = (0xFFFFE, 0xFC)                           # PC/AT


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _bcd(value: int) -> int:
    return (value >> 4) * 10 + (value & 0xF)


def structures(board) -> list[Structure]:
    """Everything the firmware leaves in memory for ``board``, in SeaBIOS's order."""
    low_top = ram_below_4g(board.ram_size)
    eax, _ebx, _ecx, edx = cpuid(1)
    ram = board.cmos.ram
    time_of_day = (_bcd(ram[RTC_HOURS]), _bcd(ram[RTC_MINUTES]), _bcd(ram[RTC_SECONDS]))
    fseg = Heap(FSEG_TABLES, FSEG_END)
    high = Heap(low_top - HIGH_TABLES_SIZE, low_top)
    hpet = HPET_CAPABILITIES & 0xFFFFFFFF if board.devices["hpet"] else None
    out = [bda.bda(time_of_day), bda.ebda(), *ivt.build()]
    out += acpi.build(high, fseg, hpet)
    out += smbios.build(fseg, low_top, eax, edx)
    out += mptable.build(fseg, eax, edx, APIC_VERSION_VALUE & 0xFF, board.pci.functions)
    out += [Structure("reset vector", RESET_VECTOR, RESET_JUMP),
            Structure("BIOS date", RESET_VECTOR + len(RESET_JUMP), BIOS_DATE),
            Structure("model byte", MODEL_BYTE[0], bytes([MODEL_BYTE[1]]))]
    return out


@dataclass
class Firmware:
    """What :func:`install` wrote, and the watch on the missing BIOS services."""

    structures: list[Structure]
    services: ivt.ServiceWatch
    notes: list[str] = field(default_factory=list)


def overlaps(placed: list[Structure], chunks) -> list[str]:
    """One note per firmware structure an image chunk writes over."""
    notes = []
    for s in placed:
        for address, data in chunks:
            if address < s.end and s.address < address + len(data):
                notes.append(f"the image overwrites the firmware's {s.name} at {s.address:#x}-{s.end - 1:#x}")
                break
    return notes


def install(board, engine, write: Callable[[int, bytes], None], image,
            notice: Callable[[str], None] = _stderr) -> Firmware:
    """Write the firmware's structures with ``write`` (the mode's guest-physical writer),
    note where ``image``'s chunks will overwrite them, and arm the service notice."""
    placed = structures(board)
    for s in placed:
        write(s.address, s.data)
    notes = overlaps(placed, image.chunks)
    image.notes.extend(n for n in notes if n not in image.notes)   # one image may boot many VMs
    watch = ivt.ServiceWatch(engine, notice)
    watch.arm()
    return Firmware(placed, watch, notes)
