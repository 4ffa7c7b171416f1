"""The board: every device of our QEMU-pc-like machine, wired and mapped.

    ports 0x20-0x21, 0xa0-0xa1   8259A pair (PicPair)
          0x40-0x43, 0x61        8254 PIT, port B (Pit8254), OUT0 -> IRQ0
          0x60, 0x64             i8042 keyboard controller, PS/2 keyboard (IRQ 1) and mouse (IRQ 12)
          0x70-0x71              CMOS / RTC (running in virtual time), IRQ 8
          0xf4-0xf7              isa-debug-exit
          0x92                   system control port A (fast A20, fast reset)
          0xb2-0xb3              APM control and status (ACPI enable/disable)
          0x600-0x60b            ACPI PM1 event/control, PM timer (PIIX4 PM; SCI on IRQ 9)
          0xafe0-0xafe3          ACPI GPE0 status/enable
          0x3f8-0x3ff            COM1 16550A, IRQ 4
          0x3b4-0x3b5, 0x3ba, 0x3c0-0x3cf, 0x3d4-0x3d5, 0x3da
                                 VGA registers (CRTC, sequencer, graphics, attribute, DAC;
                                 vmm.devices.vga); its text buffer is RAM at 0xb8000
          0x510-0x511            fw_cfg
          0xcf8-0xcff            PCI configuration (i440FX, PIIX3, PIIX4 PM; vmm.devices.pci),
                                 0xcf9 the PIIX3 reset control register
          0xe0-0xeb, 0x2000-0x2017  pc-testdev (data register, flush page, IRQ lines)
          0xe9                   debug console (isa-debugcon: bytes to the console output)
          0xc000-0xc0ff          pci-testdev's ports (with --device pci-testdev)
    MMIO  0xfebff000-0xfebfffff  pci-testdev's MMIO (with --device pci-testdev)
          0xfec00000-0xfec00fff  I/O APIC (24 pins; ISA IRQ n on pin n, the PIT's IRQ 0 on pin 2)
          0xfed00000-0xfed003ff  HPET (main counter, three timers, legacy replacement routing)
          0xfee00000-0xfee00fff  local APIC
          0xff000000-0xff00ffff  pc-testdev's iomem

Devices that can be left out or added (``devices``, the CLI's ``--device NAME=on|off``):
``hpet``, ``pc-testdev`` and ``vga`` (on, as on QEMU's pc), ``pci-testdev`` (off, as under
``-nodefaults``; kvm-unit-tests adds it), ``debugcon`` (off, as QEMU without
``-debugcon``; with it, port 0xe9 is the debug console's, not pc-testdev's byte window's).

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

from .acpipm import APM_CNT, APM_STS, GPE0_BASE, GPE0_LEN, PM_BASE, PM_LAST, AcpiPm, AcpiPmState
from .bus import MmioBus, PortBus
from .cmos import CMOS_DATA, CMOS_INDEX, Cmos, CmosState
from .debugcon import DEBUGCON_PORT, DebugCon
from .debugexit import DEBUG_EXIT_IOSIZE, DEBUG_EXIT_PORT, DebugExit, DebugExitState
from .fwcfg import FW_CFG_PORT_DATA, FW_CFG_PORT_SEL, FwCfg, FwCfgState
from .gsi import Gsi
from .hpet import HPET_BASE, HPET_SIZE, Hpet, HpetState
from .i8042 import DATA_PORT as KBD_DATA_PORT
from .i8042 import I8042, I8042State
from .i8042 import STATUS_PORT as KBD_STATUS_PORT
from .ioapic import IOAPIC_BASE, IOAPIC_SIZE, IoApic, IoApicState, isa_pin
from .lapic import APIC_DEFAULT_BASE, APIC_PAGE_SIZE, LocalApic, LocalApicState
from .pci import (
    CONFIG_ADDRESS,
    CONFIG_PORTS_LAST,
    SCI_IRQ,
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
KEYBOARD_IRQ = 1
COM1_IRQ = 4
RTC_IRQ = 8
OPTIONAL_DEVICES = {"hpet": True, "pc-testdev": True, "pci-testdev": False, "debugcon": False, "vga": True}
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


def _without(first: int, last: int, port: int | None) -> list[tuple[int, int]]:
    """The range first..last with ``port`` taken out (as one or two ranges)."""
    if port is None or not first <= port <= last:
        return [(first, last)]
    return [(a, b) for a, b in ((first, port - 1), (port + 1, last)) if a <= b]


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
    ioapic: IoApicState
    gsi_levels: int
    acpi: AcpiPmState
    sleep_request: str | None
    i8042: I8042State
    reset_source: str
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
                 devices: dict[str, bool] | None = None,
                 keyboard_input: bytes | BinaryIO | ByteSource | None = None) -> None:
        """``serial_output`` defaults to the host's stdout (written through); ``devices``
        switches optional devices on or off (:data:`OPTIONAL_DEVICES`); ``keyboard_input``
        is typed on the PS/2 keyboard."""
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
        # SeaBIOS's vector bases (its IVT's IRQ handlers are at 08h-0Fh and 70h-77h), so a
        # real-mode guest's interrupts reach the handlers the firmware tables installed.
        self.pic.master.vector_base, self.pic.slave.vector_base = 0x08, 0x70
        self.lapic = LocalApic()
        self.ioapic = IoApic(deliver=self.lapic.accept_message, nmi=self._latch_nmi)
        self.lapic.on_level_eoi = self.ioapic.end_of_interrupt
        self.gsi = Gsi(self.pic, self.ioapic)
        self.pit = Pit8254(irq=self._pit_output)
        self.cmos = Cmos(ram_size, clock=lambda: self.now, irq=self._rtc_irq)
        self.debug_exit = DebugExit(on_exit=self._on_debug_exit)
        self.uart = Uart16550(output=serial_output or _write_stdout, input=serial_input,
                              irq=lambda level: self.gsi.set_level(COM1_IRQ, level))
        self.debugcon = DebugCon(output=serial_output or _write_stdout)
        self.fwcfg = FwCfg(ram_size)
        self.testdev = PcTestdev(drive=self.gsi.set_level)
        # The VM gives the HPET a clock that sees the current run.
        self.hpet = Hpet(clock=lambda: self.now, interrupt=self._hpet_interrupt)
        self.reset_requested = False
        self.reset_source = ""
        self.sleep_request: str | None = None     # "S5", "S4", "S3": the guest asked for it
        self.port92 = Port92(on_reset=lambda: self._on_reset("port 0x92 (fast reset)"))
        self.i8042 = I8042(irq=self.gsi.set_level, input=keyboard_input,
                           on_reset=lambda: self._on_reset("the keyboard controller's reset line"))
        self.acpi = AcpiPm(clock=lambda: self.now, sci=lambda level: self.gsi.set_level(SCI_IRQ, level),
                           on_sleep=self._on_sleep)
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
        self.port_bus.register(KBD_DATA_PORT, KBD_DATA_PORT, self.i8042, "i8042-data")
        self.port_bus.register(KBD_STATUS_PORT, KBD_STATUS_PORT, self.i8042, "i8042")
        self.port_bus.register(APM_CNT, APM_STS, self.acpi, "apm")
        self.port_bus.register(PM_BASE, PM_LAST, self.acpi, "acpi-pm")
        self.port_bus.register(GPE0_BASE, GPE0_BASE + GPE0_LEN - 1, self.acpi, "acpi-gpe0")
        self.mmio_bus = MmioBus()
        self.mmio_bus.register(APIC_DEFAULT_BASE, APIC_PAGE_SIZE, self.lapic, "lapic")
        self.mmio_bus.register(IOAPIC_BASE, IOAPIC_SIZE, self.ioapic, "ioapic")
        if self.devices["pc-testdev"]:
            self._register_testdev()
            self.mmio_bus.register(IOMEM_BASE, IOMEM_SIZE, self.testdev, "pc-testdev-iomem")
        if self.devices["debugcon"]:
            self.port_bus.register(DEBUGCON_PORT, DEBUGCON_PORT, self.debugcon, "debugcon")
        if self.devices["vga"]:
            for first, last in VGA_PORT_RANGES:
                self.port_bus.register(first, last, self.vga, "vga")
        if self.devices["hpet"]:
            self.mmio_bus.register(HPET_BASE, HPET_SIZE, self.hpet, "hpet")
        self.pci_testdev = PciTestdev()
        self.pci = PciHost(self._pci_functions(), on_reset=lambda: self._on_reset("port 0xcf9 (reset control)"))
        self.port_bus.register(CONFIG_ADDRESS, CONFIG_PORTS_LAST, self.pci, "pci")
        if self.devices["pci-testdev"]:
            function = self.pci.functions[PCI_TESTDEV_SLOT]
            ports = function.bar_address(1)
            self.pci_testdev.ports.base = ports
            self.port_bus.register(ports, ports + PCI_TESTDEV_PORTS - 1, self.pci_testdev.ports, "pci-testdev-portio")
            self.mmio_bus.register(function.bar_address(0), PCI_TESTDEV_MMIO_SIZE, self.pci_testdev.mmio,
                                   "pci-testdev-mmio")

        self.clocked: list = [self.pit, self.lapic, self.acpi, self.uart, self.cmos, self.i8042]
        if self.devices["hpet"]:
            self.clocked.append(self.hpet)

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
        for first, end in _without(DATA_BYTE_PORT, DATA_BYTE_PORT + last,
                                   DEBUGCON_PORT if self.devices["debugcon"] else None):
            self.port_bus.register(first, end, t.data_byte_port, "pc-testdev-byte")
        self.port_bus.register(IRQ_PORT, IRQ_PORT + IRQ_LINES - 1, t.irq_port, "pc-testdev-irq-line")

    # -- saved state ---------------------------------------------------------------------

    def save_state(self) -> BoardState:
        return BoardState(self.ram_size, self.now, self.exit_status, self.stop_requested,
                          self.pic.save_state(), self.pit.save_state(), self.cmos.save_state(),
                          self.debug_exit.save_state(), self.uart.save_state(), self.fwcfg.save_state(),
                          self.lapic.save_state(), self.testdev.save_state(), self.hpet.save_state(),
                          self.ioapic.save_state(), self.gsi.levels, self.acpi.save_state(), self.sleep_request,
                          self.i8042.save_state(), self.reset_source,
                          self.port92.save_state(), self.pci.save_state(),
                          self.pci_testdev.save_state(),
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
        self.ioapic.load_state(state.ioapic)
        self.gsi.levels = state.gsi_levels
        self.acpi.load_state(state.acpi)
        self.sleep_request = state.sleep_request
        self.i8042.load_state(state.i8042)
        self.reset_source = state.reset_source
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

    def _on_reset(self, source: str) -> None:
        self.reset_requested = True
        self.reset_source = self.reset_source or source
        self.stop_requested = True

    def _on_sleep(self, state: str) -> None:
        self.sleep_request = state
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
        """Like :meth:`next_event`, ignoring timers whose interrupt cannot reach the CPU.

        A PIT tick with IRQ0 masked at the 8259 (or the 8259 not listened to) and at the
        I/O APIC cannot interrupt, so the VM need not stop for it. The PIT keeps counting
        in virtual time either way.
        """
        times = []
        pit_next = self.pit.next_event()
        if pit_next is not None and not self.hpet_legacy and self.reachable(PIT_IRQ):
            times.append(pit_next)
        apic_next = self.lapic.next_event()
        if apic_next is not None:
            times.append(apic_next)
        for device, irq in ((self.acpi, SCI_IRQ), (self.uart, COM1_IRQ), (self.cmos, RTC_IRQ),
                            (self.i8042, KEYBOARD_IRQ)):
            when = device.next_event()
            if when is not None and self.reachable(irq):
                times.append(when)
        if self.devices["hpet"]:
            for n, deadline in enumerate(self.hpet.deadlines):
                if deadline is not None and self.reachable(self.hpet.route(n)):
                    times.append(deadline)
        return min(times, default=None)

    def reachable(self, gsi: int) -> bool:
        """Can an interrupt on ``gsi`` reach the CPU: unmasked at the 8259A pair (which
        the local APIC listens to through LINT0), or at the I/O APIC (with the local APIC
        on)?"""
        if gsi < 16 and gsi != 2 and self.lapic.accepts_pic_interrupts():
            master, slave = self.pic.master.imr, self.pic.slave.imr
            if gsi < 8 and not master >> gsi & 1:
                return True
            if gsi >= 8 and not master & 4 and not slave >> (gsi - 8) & 1:
                return True
        return self.ioapic.unmasked(isa_pin(gsi)) and self.lapic.globally_enabled

    @property
    def hpet_legacy(self) -> bool:
        """The HPET's legacy replacement route is on: the PIT's and RTC's outputs are
        disconnected (QEMU's ``pit_enabled`` line and RTC IRQ forwarding)."""
        return self.devices["hpet"] and self.hpet.legacy

    def _pit_output(self, level: int) -> None:
        if not self.hpet_legacy:
            self.gsi.pulse(PIT_IRQ)

    def _rtc_irq(self, level: bool) -> None:
        if not self.hpet_legacy:
            self.gsi.set_level(RTC_IRQ, level)

    def _hpet_interrupt(self, gsi: int, level: bool, asserted: bool) -> None:
        if level:
            self.gsi.set_level(gsi, asserted)
        elif asserted:
            self.gsi.pulse(gsi)

    def _latch_nmi(self) -> None:
        self.lapic.nmi_pending = True

    # Ports and MMIO whose writes can change when the next interrupt comes.
    TIMING_PORTS = frozenset({MASTER_COMMAND, MASTER_DATA, SLAVE_COMMAND, SLAVE_DATA,
                              PIT_BASE, PIT_BASE + 1, PIT_BASE + 2, PIT_COMMAND,
                              *range(IRQ_PORT, IRQ_PORT + IRQ_LINES)})   # pc-testdev's lines

    def advance(self, now: int) -> None:
        self.now = now
        for device in self.clocked:
            device.advance(now)
        self.gsi.changed = False   # the run loop looks for interrupts next in any case

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
