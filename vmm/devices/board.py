"""The board: every device of our QEMU-pc-like machine, wired and mapped.

    ports 0x20-0x21, 0xa0-0xa1   8259A pair (PicPair)
          0x40-0x43, 0x61        8254 PIT, port B (Pit8254), OUT0 -> IRQ0
          0x70-0x71              CMOS / RTC
          0xf4-0xf7              isa-debug-exit
          0x92                   system control port A (fast A20, fast reset)
          0x3f8-0x3ff            COM1 16550A
          0x3b4-0x3b5, 0x3ba, 0x3c0-0x3cf, 0x3d4-0x3d5, 0x3da
                                 VGA registers (CRTC, sequencer, graphics, attribute, DAC;
                                 vmm.devices.vga); its text buffer is RAM at 0xb8000
          0x510-0x511            fw_cfg
          0xcf8-0xcff            PCI configuration (i440FX, PIIX3, PIIX4 PM; vmm.devices.pci),
                                 0xcf9 the PIIX3 reset control register
          0xe0-0xeb, 0x2000-0x2017  pc-testdev (data register, flush page, IRQ lines)
          0xc000-0xc0ff          pci-testdev's ports (with --device pci-testdev)
    MMIO  0xfebff000-0xfebfffff  pci-testdev's MMIO (with --device pci-testdev)
          0xfed00000-0xfed003ff  HPET (main counter; timers do not interrupt yet)
          0xfee00000-0xfee00fff  local APIC
          0xff000000-0xff00ffff  pc-testdev's iomem

Devices that can be left out or added (``devices``, the CLI's ``--device NAME=on|off``):
``hpet``, ``pc-testdev`` and ``vga`` (on, as on QEMU's pc), ``pci-testdev`` (off, as under
``-nodefaults``; kvm-unit-tests adds it).

The engine dispatches I/O and MMIO exits to ``port_bus`` / ``mmio_bus``, keeps
virtual time (guest instructions) running until ``next_event()`` and then calls
``advance(now)``, which it also calls before dispatching an access so that
counters read by the guest are exact.  Between instructions, with EFLAGS.IF
set, it asks ``interrupt_pending()`` and takes the vector from
``acknowledge_interrupt()``.  ``stop_requested`` / ``exit_status`` report a
guest's isa-debug-exit write.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

from .bus import MmioBus, PortBus
from .cmos import CMOS_DATA, CMOS_INDEX, Cmos, CmosState
from .debugexit import DEBUG_EXIT_IOSIZE, DEBUG_EXIT_PORT, DebugExit, DebugExitState
from .fwcfg import FW_CFG_PORT_DATA, FW_CFG_PORT_SEL, FwCfg, FwCfgState
from .hpet import HPET_BASE, HPET_SIZE, Hpet, HpetState
from .lapic import APIC_DEFAULT_BASE, APIC_PAGE_SIZE, LocalApic, LocalApicState
from .pci import (
    CONFIG_ADDRESS,
    CONFIG_PORTS_LAST,
    Bar,
    PciFunction,
    PciHost,
    PciState,
    firmware_bars,
    i440fx,
    piix3_ide,
    piix3_isa,
    piix4_pm,
)
from .pcitestdev import DEVICE as PCI_TESTDEV_DEVICE
from .pcitestdev import MMIO_SIZE as PCI_TESTDEV_MMIO_SIZE
from .pcitestdev import PORT_COUNT as PCI_TESTDEV_PORTS
from .pcitestdev import VENDOR as PCI_TESTDEV_VENDOR
from .pcitestdev import PciTestdev, PciTestdevState
from .pic import MASTER_COMMAND, MASTER_DATA, SLAVE_COMMAND, SLAVE_DATA, PicPair, PicPairState
from .pit import PIT_BASE, PIT_COMMAND, SYSTEM_CONTROL_B, Pit8254, PitState
from .port92 import PORT92, Port92, Port92State
from .testdev import (
    DATA_BYTE_PORT,
    DATA_PORT,
    FLUSH_PORT,
    IOMEM_BASE,
    IOMEM_SIZE,
    IRQ_LINES,
    IRQ_PORT,
    PORT_WIDTH,
    PcTestdev,
    TestdevState,
)
from .uart import COM1_BASE, ByteSource, Uart16550, UartState
from .vga import VGA_PORT_RANGES, Vga, VgaState

PAGE_SIZE = 4096
DEFAULT_RAM_SIZE = 128 * 1024 * 1024
# RAM is one block from address 0 and must end below the PCI hole (QEMU's pc
# puts it at 3 GiB when RAM is that large) and the local APIC at 0xfee00000.
MAX_RAM_SIZE = 3 * 1024 * 1024 * 1024
PIT_IRQ = 0
OPTIONAL_DEVICES = {"hpet": True, "pc-testdev": True, "pci-testdev": False, "vga": True}
"""The devices a board may be built with or without, and whether it has them by default."""
PCI_TESTDEV_SLOT = (2, 0)
PCI_CLASS_OTHERS = 0x00FF00


def board_devices(chosen: dict[str, bool] | None = None) -> dict[str, bool]:
    """The optional devices, with ``chosen`` over the defaults; ValueError names an
    unknown one."""
    devices = dict(OPTIONAL_DEVICES)
    for name, on in (chosen or {}).items():
        if name not in devices:
            raise ValueError(f"unknown device {name!r}; the devices that can be switched: "
                             f"{', '.join(sorted(OPTIONAL_DEVICES))}")
        devices[name] = bool(on)
    return devices


def check_ram_size(ram_size: int) -> None:
    """Raise ValueError unless ``ram_size`` is usable for this board."""
    if isinstance(ram_size, bool) or not isinstance(ram_size, int):
        raise ValueError(f"ram_size must be an int number of bytes, got {ram_size!r}")
    if ram_size <= 0 or ram_size % PAGE_SIZE:
        raise ValueError(
            f"ram_size must be a positive multiple of 4 KiB, got {ram_size:#x}")
    if ram_size > MAX_RAM_SIZE:
        raise ValueError(
            f"ram_size {ram_size:#x} exceeds 3 GiB: guest RAM must end below the "
            f"PCI hole and the local APIC at {APIC_DEFAULT_BASE:#x}")


def _write_stdout(data: bytes) -> None:
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


@dataclass(frozen=True)
class BoardState:
    """Every device's state, the board's virtual time and the guest's exit status.

    The wiring (which device answers which port, IRQ lines, the serial output) is not
    state: a board built for the same RAM size has the same, and ``load_state`` puts
    this state into it.
    """

    ram_size: int
    now: int
    exit_status: int | None
    stop_requested: bool
    pic: PicPairState
    pit: PitState
    cmos: CmosState
    debug_exit: DebugExitState
    uart: UartState
    fwcfg: FwCfgState
    lapic: LocalApicState
    testdev: TestdevState
    hpet: HpetState
    port92: Port92State
    pci: PciState
    pci_testdev: PciTestdevState
    devices: tuple[tuple[str, bool], ...]
    reset_requested: bool
    port_counters: tuple
    mmio_counters: tuple
    vga: VgaState


class Board:
    def __init__(self, ram_size: int = DEFAULT_RAM_SIZE,
                 serial_output: Callable[[bytes], None] | None = None,
                 serial_input: bytes | BinaryIO | ByteSource | None = None,
                 devices: dict[str, bool] | None = None) -> None:
        """``serial_output`` defaults to the host's stdout (written through); ``devices``
        switches optional devices on or off (:data:`OPTIONAL_DEVICES`)."""
        check_ram_size(ram_size)
        self.ram_size = ram_size
        self.devices = board_devices(devices)
        self.exit_status: int | None = None
        self.stop_requested = False
        self._acknowledged_by_apic = False   # the last INTA was the local APIC's
        self.now = 0

        self.pic = PicPair()
        # What firmware leaves behind: both 8259s masked. A guest unmasks what it has
        # programmed; until it does, no timer can interrupt it, and the VM runs free
        # (no instruction counting) instead of counting ticks nobody will see.
        self.pic.master.imr = self.pic.slave.imr = 0xFF
        self.pit = Pit8254(irq=self.pic.line(PIT_IRQ))
        self.cmos = Cmos(ram_size)
        self.debug_exit = DebugExit(on_exit=self._on_debug_exit)
        self.uart = Uart16550(output=serial_output or _write_stdout, input=serial_input)
        self.fwcfg = FwCfg(ram_size)
        self.lapic = LocalApic()
        self.testdev = PcTestdev(raise_irq=self.pic.raise_irq)
        self.hpet = Hpet(clock=lambda: self.now)   # the VM gives it a clock that sees the current run
        self.reset_requested = False
        self.port92 = Port92(on_reset=self._on_reset)
        self.vga = Vga()

        self.port_bus = PortBus()
        self.port_bus.register(MASTER_COMMAND, MASTER_DATA, self.pic, "pic-master")
        self.port_bus.register(SLAVE_COMMAND, SLAVE_DATA, self.pic, "pic-slave")
        self.port_bus.register(PIT_BASE, PIT_COMMAND, self.pit, "pit")
        self.port_bus.register(SYSTEM_CONTROL_B, SYSTEM_CONTROL_B, self.pit, "port61")
        self.port_bus.register(CMOS_INDEX, CMOS_DATA, self.cmos, "cmos")
        self.port_bus.register(DEBUG_EXIT_PORT, DEBUG_EXIT_PORT + DEBUG_EXIT_IOSIZE - 1,
                               self.debug_exit, "debug-exit")
        self.port_bus.register(COM1_BASE, COM1_BASE + 7, self.uart, "com1")
        self.port_bus.register(FW_CFG_PORT_SEL, FW_CFG_PORT_DATA, self.fwcfg, "fw_cfg")
        self.port_bus.register(PORT92, PORT92, self.port92, "port92")
        self.mmio_bus = MmioBus()
        self.mmio_bus.register(APIC_DEFAULT_BASE, APIC_PAGE_SIZE, self.lapic, "lapic")
        if self.devices["pc-testdev"]:
            self._register_testdev()
            self.mmio_bus.register(IOMEM_BASE, IOMEM_SIZE, self.testdev, "pc-testdev-iomem")
        if self.devices["vga"]:
            for first, last in VGA_PORT_RANGES:
                self.port_bus.register(first, last, self.vga, "vga")
        if self.devices["hpet"]:
            self.mmio_bus.register(HPET_BASE, HPET_SIZE, self.hpet, "hpet")
        self.pci_testdev = PciTestdev()
        self.pci = PciHost(self._pci_functions(), on_reset=self._on_reset)
        self.port_bus.register(CONFIG_ADDRESS, CONFIG_PORTS_LAST, self.pci, "pci")
        if self.devices["pci-testdev"]:
            function = self.pci.functions[PCI_TESTDEV_SLOT]
            ports = function.bar_address(1)
            self.pci_testdev.ports.base = ports
            self.port_bus.register(ports, ports + PCI_TESTDEV_PORTS - 1, self.pci_testdev.ports, "pci-testdev-portio")
            self.mmio_bus.register(function.bar_address(0), PCI_TESTDEV_MMIO_SIZE, self.pci_testdev.mmio,
                                   "pci-testdev-mmio")

        self.clocked: list = [self.pit, self.lapic]

    def _pci_functions(self) -> dict[tuple[int, int], PciFunction]:
        """Bus 0, as QEMU's pc has it, with its BARs where SeaBIOS puts them."""
        functions = {(0, 0): i440fx(), (1, 0): piix3_isa(), (1, 1): piix3_ide(), (1, 3): piix4_pm()}
        if self.devices["pci-testdev"]:
            functions[PCI_TESTDEV_SLOT] = PciFunction(
                "pci-testdev", PCI_TESTDEV_VENDOR, PCI_TESTDEV_DEVICE, PCI_CLASS_OTHERS,
                bars=(Bar(0, PCI_TESTDEV_MMIO_SIZE, io=False), Bar(1, PCI_TESTDEV_PORTS, io=True)))
        firmware_bars([functions[slot] for slot in sorted(functions)])
        return functions

    def _register_testdev(self) -> None:
        t, last = self.testdev, PORT_WIDTH - 1
        self.port_bus.register(DATA_PORT, DATA_PORT + last, t.data_port, "pc-testdev")
        self.port_bus.register(FLUSH_PORT, FLUSH_PORT + last, t.flush_port, "pc-testdev-flush-page")
        self.port_bus.register(DATA_BYTE_PORT, DATA_BYTE_PORT + last, t.data_byte_port, "pc-testdev-byte")
        self.port_bus.register(IRQ_PORT, IRQ_PORT + IRQ_LINES - 1, t.irq_port, "pc-testdev-irq-line")

    # -- saved state ---------------------------------------------------------------------

    def save_state(self) -> BoardState:
        return BoardState(self.ram_size, self.now, self.exit_status, self.stop_requested,
                          self.pic.save_state(), self.pit.save_state(), self.cmos.save_state(),
                          self.debug_exit.save_state(), self.uart.save_state(), self.fwcfg.save_state(),
                          self.lapic.save_state(), self.testdev.save_state(), self.hpet.save_state(),
                          self.port92.save_state(), self.pci.save_state(), self.pci_testdev.save_state(),
                          tuple(sorted(self.devices.items())), self.reset_requested,
                          self.port_bus.save_counters(), self.mmio_bus.save_counters(), self.vga.save_state())

    def load_state(self, state: BoardState) -> None:
        if state.ram_size != self.ram_size:
            raise ValueError(f"board state is for {state.ram_size:#x} bytes of RAM, this board has "
                             f"{self.ram_size:#x}")
        self.now, self.exit_status, self.stop_requested = state.now, state.exit_status, state.stop_requested
        self.pic.load_state(state.pic)
        self.pit.load_state(state.pit)
        self.cmos.load_state(state.cmos)
        self.debug_exit.load_state(state.debug_exit)
        self.uart.load_state(state.uart)
        self.fwcfg.load_state(state.fwcfg)
        self.lapic.load_state(state.lapic)
        self.testdev.load_state(state.testdev)
        self.hpet.load_state(state.hpet)
        if dict(state.devices) != self.devices:
            raise ValueError(f"board state is for a board with devices {dict(state.devices)}, this one has "
                             f"{self.devices}")
        self.port92.load_state(state.port92)
        self.pci.load_state(state.pci)
        self.pci_testdev.load_state(state.pci_testdev)
        self.vga.load_state(state.vga)
        self.reset_requested = state.reset_requested
        self.port_bus.load_counters(state.port_counters)
        self.mmio_bus.load_counters(state.mmio_counters)

    def _on_reset(self) -> None:
        self.reset_requested = True
        self.stop_requested = True

    def _on_debug_exit(self, status: int) -> None:
        if self.exit_status is None:      # QEMU is gone after the first write
            self.exit_status = status
        self.stop_requested = True

    # -- virtual time ------------------------------------------------------------------

    def next_event(self) -> int | None:
        """Earliest virtual time at which a clocked device wants to interrupt."""
        times = [t for t in (device.next_event() for device in self.clocked) if t is not None]
        return min(times, default=None)

    def next_deliverable_event(self) -> int | None:
        """Like :meth:`next_event`, ignoring timers whose interrupt is masked.

        A PIT tick with IRQ0 masked at the 8259 (or the 8259 not listened to) cannot
        reach the CPU, so the VM need not stop for it. The PIT keeps counting in
        virtual time either way.
        """
        times = []
        pit_next = self.pit.next_event()
        if pit_next is not None and not self.pic.master.imr & (1 << PIT_IRQ) \
                and self.lapic.accepts_pic_interrupts():
            times.append(pit_next)
        apic_next = self.lapic.next_event()
        if apic_next is not None:
            times.append(apic_next)
        return min(times, default=None)

    # Ports and MMIO whose writes can change when the next interrupt comes.
    TIMING_PORTS = frozenset({MASTER_COMMAND, MASTER_DATA, SLAVE_COMMAND, SLAVE_DATA,
                              PIT_BASE, PIT_BASE + 1, PIT_BASE + 2, PIT_COMMAND,
                              *range(IRQ_PORT, IRQ_PORT + IRQ_LINES)})   # pc-testdev's lines

    def advance(self, now: int) -> None:
        self.now = now
        for device in self.clocked:
            device.advance(now)

    # -- interrupts ----------------------------------------------------------------------

    def _pic_wins(self) -> bool:
        return self.lapic.accepts_pic_interrupts() and self.pic.has_pending()

    def interrupt_pending(self) -> bool:
        """Is INTR asserted: an APIC vector above PPR, or the 8259A via LINT0?"""
        return self._pic_wins() or self.lapic.has_pending()

    def acknowledge_interrupt(self) -> int:
        """The INTA cycle: the vector the CPU should take.

        Order as QEMU's ``apic_get_interrupt``: the APIC is asked first but
        lets a pending 8259A interrupt on LINT0 (ExtINT, which ignores the
        processor priority) go before its own; otherwise its highest IRR
        vector.  With nothing pending, the spurious vector of the controller
        the CPU would be listening to.
        """
        self._acknowledged_by_apic = False
        if self._pic_wins():
            return self.pic.acknowledge()
        if self.lapic.has_pending() or not self.lapic.accepts_pic_interrupts():
            self._acknowledged_by_apic = True
            return self.lapic.acknowledge()
        return self.pic.acknowledge()

    def nmi_pending(self) -> bool:
        """Is an NMI latched for the CPU (the local APIC's; LINT1 is not wired)?"""
        return self.lapic.nmi_pending

    def acknowledge_nmi(self) -> None:
        self.lapic.nmi_pending = False

    def unacknowledge_interrupt(self, vector: int) -> bool:
        """Give the last acknowledged interrupt back to its controller, if the local APIC
        answered that INTA (see :meth:`LocalApic.unacknowledge`); False otherwise (the
        8259A's acknowledge is not undone: the caller holds that vector itself)."""
        if not self._acknowledged_by_apic:
            return False
        self._acknowledged_by_apic = False
        return self.lapic.unacknowledge(vector)
