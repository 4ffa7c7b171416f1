"""The 82093AA I/O APIC at 0xfec00000, as QEMU's ``ioapic`` (version 0x20) answers a guest.

Registers through the index/window pair: IOREGSEL at +0x00 (the low byte selects), IOWIN
at +0x10 (32-bit), and version 0x20's EOI register at +0x40. Register 0 is the ID (bits
27:24), 1 the version (0x20, 23 as the highest redirection entry), 2 the arbitration ID,
0x10 + 2n and 0x11 + 2n the low and high halves of redirection entry n (24 pins).

Pins. The board wires ISA IRQ n to pin n, except the PIT's IRQ 0, which goes to pin 2
(QEMU's pc does the same, and its MADT says so with an interrupt source override);
PCI INTx lines and pc-testdev's upper lines reach pins 16-23. Every source drives a
level: an edge source (the PIT, the RTC in edge mode) pulses it.

Delivery (82093AA datasheet §3.2.4; SDM vol. 3A §11.11): an unmasked edge-triggered
entry sends its vector on each rising edge; a level-triggered one sends it while the pin
is asserted and Remote IRR is clear, sets Remote IRR, and waits for the local APIC's EOI
of that vector (broadcast to :meth:`end_of_interrupt`, or written to the EOI register),
after which a still-asserted pin sends again. Destination: physical APIC ID or the
broadcast 0xff, or a logical mask matched against the local APIC's LDR; fixed and
lowest-priority are the same with one CPU. NMI mode latches an NMI; INIT, SMI and ExtINT
are counted in ``ignored`` (no CPU model for them, and QEMU's pin 0 carries no 8259).
As in QEMU's ``ioapic.c``: an edge on a masked pin is lost; a level request waits in IRR
until its entry is unmasked; every write to a redirection entry sends what is waiting;
the polarity bit is stored but not applied; window accesses other than 32-bit read 0 and
are dropped; the registers repeat every 256 bytes of the page.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

IOAPIC_BASE = 0xFEC00000
IOAPIC_SIZE = 0x1000
IOAPIC_ID = 0                  # QEMU's pc: the I/O APIC's ID is 0 (its MADT and MP table agree)
PINS = 24
VERSION = 0x20 | (PINS - 1) << 16
REG_SELECT, REG_WINDOW, REG_EOI = 0x00, 0x10, 0x40
IOAPICID, IOAPICVER, IOAPICARB, IOREDTBL = 0x00, 0x01, 0x02, 0x10

VECTOR_MASK = 0xFF
DELIVERY_MODE_SHIFT = 8
DEST_LOGICAL = 1 << 11
DELIVERY_STATUS = 1 << 12
POLARITY_LOW = 1 << 13
REMOTE_IRR = 1 << 14
LEVEL_TRIGGERED = 1 << 15
MASKED = 1 << 16
DEST_SHIFT = 56
READ_ONLY = DELIVERY_STATUS | REMOTE_IRR
ENTRY_RESET = MASKED
DM_FIXED, DM_LOWEST, DM_SMI, DM_NMI, DM_INIT, DM_EXTINT = 0, 1, 2, 4, 5, 7
ISA_PIN = {0: 2}               # ISA IRQ -> pin where it is not the identity


def isa_pin(irq: int) -> int:
    """The I/O APIC pin an ISA IRQ reaches on this board (QEMU's pc wiring)."""
    return ISA_PIN.get(irq, irq)


@dataclass(frozen=True)
class IoApicState:
    id: int
    select: int
    entries: tuple[int, ...]
    irr: int
    delivered: int
    ignored: int


class IoApic:
    """``deliver(vector, level, dest, logical)`` puts a fixed interrupt into the local APIC
    (True if it was accepted); ``nmi()`` latches an NMI there."""

    def __init__(self, deliver: Callable[[int, bool, int, bool], bool], nmi: Callable[[], None]):
        self.deliver, self.nmi = deliver, nmi
        self.id = IOAPIC_ID
        self.select = 0
        self.entries = [ENTRY_RESET] * PINS
        self.irr = 0              # bit n: pin n requests (a level pin while asserted)
        self.delivered = 0
        self.ignored = 0

    def save_state(self) -> IoApicState:
        return IoApicState(self.id, self.select, tuple(self.entries), self.irr, self.delivered, self.ignored)

    def load_state(self, state: IoApicState) -> None:
        if len(state.entries) != PINS:
            raise ValueError(f"I/O APIC state has {len(state.entries)} entries, not {PINS}")
        self.id, self.select, self.entries = state.id, state.select, list(state.entries)
        self.irr, self.delivered, self.ignored = state.irr, state.delivered, state.ignored

    # -- the pins ------------------------------------------------------------------------
    def set_pin(self, pin: int, level: bool) -> None:
        """A source drives ``pin`` to ``level``. Like QEMU, the polarity bit is stored but
        the board's lines are active high whatever it says."""
        if not 0 <= pin < PINS:
            return
        bit, entry = 1 << pin, self.entries[pin]
        if entry & LEVEL_TRIGGERED:
            if not level:
                self.irr &= ~bit
                return
            self.irr |= bit
            if not entry & REMOTE_IRR:
                self.service()
        elif level and not entry & MASKED:   # the 82093AA ignores edges on a masked pin
            self.irr |= bit
            self.service()

    def pulse(self, pin: int) -> None:
        """An edge source's interrupt: the pin goes up and down again."""
        self.set_pin(pin, True)
        self.set_pin(pin, False)

    def unmasked(self, pin: int) -> bool:
        return 0 <= pin < PINS and not self.entries[pin] & MASKED

    def service(self) -> None:
        """Send every unmasked request: an edge one once, a level one unless its Remote IRR
        says the last is still in service."""
        for pin in range(PINS):
            bit = 1 << pin
            entry = self.entries[pin]
            if not self.irr & bit or entry & MASKED:
                continue
            level = bool(entry & LEVEL_TRIGGERED)
            if level:
                if entry & REMOTE_IRR:
                    continue
                self.entries[pin] = entry | REMOTE_IRR
            else:
                self.irr &= ~bit
            self._send(entry, level)

    def _send(self, entry: int, level: bool) -> None:
        mode = (entry >> DELIVERY_MODE_SHIFT) & 7
        if mode == DM_NMI:
            self.nmi()
        elif mode in (DM_FIXED, DM_LOWEST):
            if not self.deliver(entry & VECTOR_MASK, level, entry >> DEST_SHIFT, bool(entry & DEST_LOGICAL)):
                return
        else:
            self.ignored += 1
            return
        self.delivered += 1

    def end_of_interrupt(self, vector: int) -> None:
        """The local APIC's EOI of a level-triggered ``vector`` (or a write to the EOI
        register): Remote IRR clears, and an entry whose pin is still asserted sends again."""
        for pin, entry in enumerate(self.entries):
            if entry & VECTOR_MASK == vector & VECTOR_MASK and entry & LEVEL_TRIGGERED and entry & REMOTE_IRR:
                self.entries[pin] = entry & ~REMOTE_IRR
                if not entry & MASKED and self.irr >> pin & 1:
                    self.service()

    # -- registers -----------------------------------------------------------------------
    def read_register(self, index: int) -> int:
        if index in (IOAPICID, IOAPICARB):
            return (self.id & 0xF) << 24
        if index == IOAPICVER:
            return VERSION
        pin, high = divmod(index - IOREDTBL, 2)
        if index >= IOREDTBL and pin < PINS:
            return (self.entries[pin] >> (32 * high)) & 0xFFFFFFFF
        return 0

    def write_register(self, index: int, value: int) -> None:
        if index == IOAPICID:
            self.id = (value >> 24) & 0xF
            return
        pin, high = divmod(index - IOREDTBL, 2)
        if index < IOREDTBL or pin >= PINS:
            return
        old = self.entries[pin]
        if high:
            new = (old & 0xFFFFFFFF) | value << 32
        else:
            new = (old & ~0xFFFFFFFF) | value
        new = (new & ~READ_ONLY) | (old & READ_ONLY)
        if not new & LEVEL_TRIGGERED:
            new &= ~REMOTE_IRR          # an edge entry has no Remote IRR (Linux relies on it)
        self.entries[pin] = new
        self.service()

    def mmio_read(self, offset: int, size: int) -> int:
        offset &= 0xFF
        if offset == REG_SELECT:
            return self.select
        if offset == REG_WINDOW and size == 4:
            return self.read_register(self.select)
        return 0

    def mmio_write(self, offset: int, size: int, value: int) -> None:
        offset &= 0xFF
        if offset == REG_SELECT:
            self.select = value & 0xFF
        elif offset == REG_WINDOW and size == 4:
            self.write_register(self.select, value & 0xFFFFFFFF)
        elif offset == REG_EOI and size == 4:
            self.end_of_interrupt(value & VECTOR_MASK)
