"""The board's interrupt lines: global system interrupts 0-23, as QEMU's ``gsi_handler``.

GSI n < 16 is ISA IRQ n: it reaches the 8259A pair (which latches a rising edge) and
the I/O APIC (pin n, except GSI 0, the PIT's, which the I/O APIC sees on pin 2; the
firmware's MADT says so with an interrupt source override). GSIs 16-23 (PCI INTx,
pc-testdev's upper lines) reach the I/O APIC only. A device drives a level
(``set_level``) or, for an edge source such as the PIT, a pulse (``pulse``).

``changed`` records that a line went up since the VMM last looked (``take_changed``):
a port or MMIO access that raised an interrupt ends the run, so the interrupt is taken
after that instruction rather than at the next time slice.
"""
from __future__ import annotations

from .ioapic import IoApic, isa_pin
from .pic import PicPair

ISA_IRQS = 16
GSIS = 24


class Gsi:
    def __init__(self, pic: PicPair, ioapic: IoApic):
        self.pic, self.ioapic = pic, ioapic
        self.levels = 0          # bit n: GSI n is high
        self.changed = False

    def set_level(self, gsi: int, level: bool) -> None:
        if not 0 <= gsi < GSIS:
            return
        bit = 1 << gsi
        rising = level and not self.levels & bit
        self.levels = self.levels | bit if level else self.levels & ~bit
        if gsi < ISA_IRQS and rising:
            self.pic.raise_irq(gsi)     # edge-triggered 8259A: a rising edge latches IRR
        self.ioapic.set_pin(isa_pin(gsi), bool(level))
        if rising:
            self.changed = True

    def pulse(self, gsi: int) -> None:
        self.set_level(gsi, True)
        self.set_level(gsi, False)

    def take_changed(self) -> bool:
        changed, self.changed = self.changed, False
        return changed
