"""PCI configuration space: QEMU's ``pc`` machine (i440FX) as a guest finds it after SeaBIOS.

Configuration mechanism #1: a dword write to 0xCF8 selects bus, device, function and
register (bit 31 enables), and 0xCFC-0xCFF read and write that register's bytes. A
function nobody implements reads all ones (a master abort), and so does any access with
the enable bit clear; writes there vanish. Byte port 0xCF9 is the PIIX3's reset control
register: a write with bit 2 set resets the machine, as QEMU's does (Linux's
``reboot=pci``).

Bus 0 holds what ``qemu-system-i386 -nodefaults`` has, each function's configuration
registers as SeaBIOS leaves them before it starts a ``-kernel`` guest (the values were
read from QEMU 7.2 with a guest that dumps every function, ``tests/test_dev_pci.py``):

=====  =============================  ==============================================
00.0   i440FX host bridge 8086:1237    PAM registers (0x59-0x5F), SMRAM (0x72)
01.0   PIIX3 ISA bridge 8086:7000      multi-function; PIRQA-D routed to IRQ 10, 10, 11, 11
01.1   PIIX3 IDE 8086:7010             BAR4: the bus-master registers (16 I/O ports)
01.3   PIIX4 power management 8086:7113  PM base 0x600 (0x40), SCI on IRQ 9, SMBus 0x700
02.0   pci-testdev 1b36:0005           only with ``--device pci-testdev``: 4 KiB MMIO, 256 ports
=====  =============================  ==============================================

SeaBIOS assigns BARs as its ``pci_region`` allocator does: I/O from 0xC000 up and memory
from 0xFEC00000 down, largest first (:func:`firmware_bars`). A guest may size a BAR (write
all ones, read back the size mask) and move it; the registers follow, but a moved BAR's
device stays where the firmware put it (the buses are wired once).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

CONFIG_ADDRESS = 0xCF8
RESET_CONTROL = 0xCF9
CONFIG_DATA = 0xCFC
CONFIG_PORTS_LAST = 0xCFF
CONFIG_SIZE = 256
ENABLE = 1 << 31
_BUS_SHIFT, _DEVICE_SHIFT, _FUNCTION_SHIFT = 16, 11, 8
_REGISTER_MASK = 0xFC
RESET_BIT = 0x04                       # RCR bit 2: reset the CPU (and the system, bit 1)
RESET_TYPE = 0x02                      # RCR bit 1: the only bit a write keeps
ALL_ONES = 0xFFFFFFFF

# -- the standard header (type 0) -------------------------------------------------------------
VENDOR_ID, DEVICE_ID, COMMAND, STATUS = 0x00, 0x02, 0x04, 0x06
REVISION, CLASS_PROG = 0x08, 0x09
HEADER_TYPE = 0x0E
BAR0 = 0x10
SUBSYSTEM_VENDOR, SUBSYSTEM_ID = 0x2C, 0x2E
INTERRUPT_LINE, INTERRUPT_PIN = 0x3C, 0x3D
MULTI_FUNCTION = 0x80
COMMAND_IO, COMMAND_MEMORY, COMMAND_MASTER, COMMAND_SERR, COMMAND_INTX_DISABLE = 0x1, 0x2, 0x4, 0x100, 0x400
COMMAND_WRITABLE = COMMAND_IO | COMMAND_MEMORY | COMMAND_MASTER | COMMAND_SERR | COMMAND_INTX_DISABLE
FIRMWARE_COMMAND = COMMAND_IO | COMMAND_MEMORY | COMMAND_SERR   # what SeaBIOS enables on each
STATUS_DEVSEL_MEDIUM, STATUS_FAST_BACK_TO_BACK = 0x0200, 0x0080
BAR_IO = 0x1
QEMU_SUBSYSTEM = (0x1AF4, 0x1100)      # QEMU gives every function this subsystem ID

FIRMWARE_IO_BASE = 0xC000
FIRMWARE_MEMORY_TOP = 0xFEC00000


@dataclass(frozen=True)
class Bar:
    index: int
    size: int
    io: bool


class PciFunction:
    """One function's 256 configuration bytes and which of their bits a write may change."""

    def __init__(self, name: str, vendor: int, device: int, class_code: int, revision: int = 0,
                 *, header_type: int = 0, status: int = 0, bars: tuple[Bar, ...] = (),
                 registers: dict[int, int] | None = None, writable: dict[int, int] | None = None,
                 interrupt_pin: int = 0):
        self.name = name
        self.config = bytearray(CONFIG_SIZE)
        self.wmask = bytearray(CONFIG_SIZE)
        self.bars = {bar.index: bar for bar in bars}
        self._put(VENDOR_ID, 2, vendor)
        self._put(DEVICE_ID, 2, device)
        self._put(STATUS, 2, status)
        self._put(REVISION, 1, revision)
        self._put(CLASS_PROG, 3, class_code)
        self._put(HEADER_TYPE, 1, header_type)
        self._put(SUBSYSTEM_VENDOR, 2, QEMU_SUBSYSTEM[0])
        self._put(SUBSYSTEM_ID, 2, QEMU_SUBSYSTEM[1])
        self._put(INTERRUPT_PIN, 1, interrupt_pin)
        self._mask(COMMAND, 2, COMMAND_WRITABLE)
        self._mask(INTERRUPT_LINE, 1, 0xFF)
        for bar in bars:
            self._mask(BAR0 + 4 * bar.index, 4, ~(bar.size - 1) & ALL_ONES & ~(0x3 if bar.io else 0xF))
            self._put(BAR0 + 4 * bar.index, 4, BAR_IO if bar.io else 0)
        for offset, value in (registers or {}).items():
            self.config[offset] = value
        for offset, mask in (writable or {}).items():
            self.wmask[offset] = mask

    def _put(self, offset: int, size: int, value: int) -> None:
        self.config[offset:offset + size] = (value & ((1 << 8 * size) - 1)).to_bytes(size, "little")

    def _mask(self, offset: int, size: int, mask: int) -> None:
        self.wmask[offset:offset + size] = (mask & ((1 << 8 * size) - 1)).to_bytes(size, "little")

    def read(self, offset: int, size: int) -> int:
        return int.from_bytes(self.config[offset:offset + size], "little")

    def write(self, offset: int, size: int, value: int) -> None:
        for i in range(size):
            byte = (value >> 8 * i) & 0xFF
            mask = self.wmask[offset + i]
            self.config[offset + i] = (self.config[offset + i] & ~mask) | (byte & mask)

    def bar_address(self, index: int) -> int:
        bar = self.bars[index]
        return self.read(BAR0 + 4 * index, 4) & ~(0x3 if bar.io else 0xF) & ALL_ONES

    def set_bar(self, index: int, address: int) -> None:
        bar = self.bars[index]
        self._put(BAR0 + 4 * index, 4, address | (BAR_IO if bar.io else 0))


def i440fx() -> PciFunction:
    pam = {0x59: 0x10, **dict.fromkeys(range(0x5A, 0x5F), 0x11), 0x5F: 0x33}   # as SeaBIOS leaves them
    return PciFunction("i440fx", 0x8086, 0x1237, 0x060000, 0x02,
                       registers={0x57: 0x10, **pam, 0x72: 0x0A},
                       writable={**dict.fromkeys(range(0x59, 0x60), 0xFF), 0x72: 0xFF})


PIRQ_ROUTE = (10, 10, 11, 11)          # PIRQA-D -> ISA IRQ, as SeaBIOS programs the PIIX3


def piix3_isa() -> PciFunction:
    regs = {0x4C: 0x4D, 0x4E: 0x03, **{0x60 + i: irq for i, irq in enumerate(PIRQ_ROUTE)},
            0x69: 0x02, 0x70: 0x80, 0x76: 0x0C, 0x77: 0x0C, 0x78: 0x02, 0xA0: 0x08, 0xA8: 0x0F}
    return PciFunction("piix3-isa", 0x8086, 0x7000, 0x060100, header_type=MULTI_FUNCTION,
                       status=STATUS_DEVSEL_MEDIUM, registers=regs,
                       writable={0x4C: 0xFF, 0x4E: 0xFF, 0x60: 0x8F, 0x61: 0x8F, 0x62: 0x8F, 0x63: 0x8F})


def piix3_ide() -> PciFunction:
    return PciFunction("piix3-ide", 0x8086, 0x7010, 0x010180,
                       status=STATUS_DEVSEL_MEDIUM | STATUS_FAST_BACK_TO_BACK, bars=(Bar(4, 16, io=True),),
                       registers={0x41: 0x80, 0x43: 0x80}, writable={0x40: 0xFF, 0x41: 0xFF, 0x42: 0xFF, 0x43: 0xFF})


PM_BASE = 0x600
SMBUS_BASE = 0x700
SCI_IRQ = 9


def piix4_pm() -> PciFunction:
    regs = {0x40: PM_BASE & 0xFF | BAR_IO, 0x41: PM_BASE >> 8, 0x5B: 0x02, 0x5F: 0x10, 0x63: 0x60, 0x67: 0x08,
            0x80: 0x01, 0x90: SMBUS_BASE & 0xFF | BAR_IO, 0x91: SMBUS_BASE >> 8, 0xD2: 0x09,
            INTERRUPT_LINE: SCI_IRQ}
    return PciFunction("piix4-pm", 0x8086, 0x7113, 0x068000, 0x03,
                       status=STATUS_DEVSEL_MEDIUM | STATUS_FAST_BACK_TO_BACK, registers=regs, interrupt_pin=1,
                       writable={0x40: 0xC0, 0x41: 0xFF, 0x80: 0x01, 0x90: 0xF0, 0x91: 0xFF, 0xD2: 0x0F})


def firmware_bars(functions: list[PciFunction]) -> None:
    """Assign every BAR as SeaBIOS's allocator does: I/O from 0xC000 upward, memory from
    0xFEC00000 downward, each kind largest first (ties in bus order), every BAR
    aligned to its size; then enable I/O and memory decoding and SERR."""
    bars = [(f, bar) for f in functions for bar in f.bars.values()]
    io_next = FIRMWARE_IO_BASE
    for f, bar in sorted((b for b in bars if b[1].io), key=lambda b: -b[1].size):
        io_next = (io_next + bar.size - 1) & ~(bar.size - 1)
        f.set_bar(bar.index, io_next)
        io_next += bar.size
    mem_top = FIRMWARE_MEMORY_TOP
    for f, bar in sorted((b for b in bars if not b[1].io), key=lambda b: -b[1].size):
        mem_top = (mem_top - bar.size) & ~(bar.size - 1)
        f.set_bar(bar.index, mem_top)
    for f in functions:
        f.write(COMMAND, 2, FIRMWARE_COMMAND)


@dataclass(frozen=True)
class PciState:
    address: int
    reset_control: int
    configs: tuple[bytes, ...]


class PciHost:
    """The i440FX's configuration mechanism, bus 0, and the PIIX3 reset control register."""

    def __init__(self, functions: dict[tuple[int, int], PciFunction], on_reset: Callable[[], None]):
        self.functions = functions           # (device, function) -> PciFunction
        self.on_reset = on_reset
        self.address = 0
        self.reset_control = 0

    def save_state(self) -> PciState:
        return PciState(self.address, self.reset_control,
                        tuple(bytes(f.config) for _, f in sorted(self.functions.items())))

    def load_state(self, state: PciState) -> None:
        if len(state.configs) != len(self.functions):
            raise ValueError(f"PCI state has {len(state.configs)} functions, this board {len(self.functions)}")
        self.address, self.reset_control = state.address, state.reset_control
        for (_, f), config in zip(sorted(self.functions.items()), state.configs, strict=True):
            f.config[:] = config

    def _selected(self) -> tuple[PciFunction, int] | None:
        a = self.address
        if not a & ENABLE or (a >> _BUS_SHIFT) & 0xFF:
            return None
        f = self.functions.get(((a >> _DEVICE_SHIFT) & 0x1F, (a >> _FUNCTION_SHIFT) & 0x7))
        return (f, a & _REGISTER_MASK) if f is not None else None

    def io_read(self, port: int, size: int) -> int:
        if port == RESET_CONTROL and size == 1:
            return self.reset_control
        if port < CONFIG_DATA:
            return self.address   # QEMU's address register reads back whole at any offset and size
        selected = self._selected()
        if selected is None:
            return ALL_ONES
        f, register = selected
        offset = register + (port - CONFIG_DATA)
        return f.read(offset, min(size, CONFIG_SIZE - offset))

    def io_write(self, port: int, size: int, value: int) -> None:
        if port == CONFIG_ADDRESS and size == 4:
            self.address = value & ~0x3 & ALL_ONES
            return
        if port == RESET_CONTROL and size == 1:
            if value & RESET_BIT:
                self.on_reset()
                return
            self.reset_control = value & RESET_TYPE
            return
        if port < CONFIG_DATA:
            return
        selected = self._selected()
        if selected is not None:
            f, register = selected
            offset = register + (port - CONFIG_DATA)
            f.write(offset, min(size, CONFIG_SIZE - offset), value)


__all__ = ["PciFunction", "PciHost", "firmware_bars", "i440fx", "piix3_ide", "piix3_isa", "piix4_pm"]
