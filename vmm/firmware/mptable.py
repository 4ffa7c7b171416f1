"""The MultiProcessor Specification 1.4 tables SeaBIOS builds (src/fw/mptable.c).

A floating pointer (``_MP_``) in the F-segment, the configuration table (``PCMP``, OEM
``BOCHSCPU``, product ``0.1``) right after it, and these entries, in SeaBIOS's order:

* one processor: local APIC ID 0, the APIC version byte the local APIC's version
  register reads, enabled and bootstrap, CPUID.1's signature (EAX) and feature flags
  (EDX);
* bus 0 ``PCI`` (there are PCI devices), bus 1 ``ISA``;
* the I/O APIC: ID 0, version 0x11, enabled, at 0xfec00000;
* an I/O interrupt for the first function of each bus-0 device per interrupt pin it
  uses (source IRQ ``device << 2 | pin - 1``, active high, to the pin named by its
  interrupt line register), then ISA IRQs 0-15 except the PCI ones (5, 9, 10, 11) to the
  same I/O APIC pin, except IRQ 0, which goes to pin 2 (QEMU's ``etc/irq0-override``),
  and IRQ 2, which then has no entry;
* local interrupts: ExtINT on LINT0 of APIC 0, NMI on LINT1 of every APIC.
"""
from __future__ import annotations

from .acpi import IOAPIC_BASE, IOAPIC_ID, LAPIC_BASE, PCI_IRQS
from .layout import Heap, Structure, pack, with_checksum

SPEC_REVISION = 4               # MPS 1.4
OEM_ID, PRODUCT_ID = b"BOCHSCPU", b"0.1         "
IOAPIC_VERSION = 0x11
CPU_ENABLED, CPU_BSP = 1, 2
PCI_BUS, ISA_BUS = 0, 1
INT, NMI, EXTINT = 0, 1, 3
ACTIVE_HIGH, CONFORMS = 1, 0
ALL_APICS = 0xFF
IRQ0_PIN = 2
CASCADE_IRQ = 2
ISA_IRQS = 16
INTERRUPT_LINE, INTERRUPT_PIN = 0x3C, 0x3D


def pci_interrupts(functions: dict[tuple[int, int], object]) -> list[bytes]:
    """SeaBIOS's loop over bus 0: one entry per device and pin, from configuration space."""
    out, seen = [], set()
    for dev, fn in sorted(functions):
        function = functions[(dev, fn)]
        pin = function.read(INTERRUPT_PIN, 1)          # type: ignore[attr-defined]
        if not pin or (dev, pin) in seen:
            continue
        seen.add((dev, pin))
        irq = function.read(INTERRUPT_LINE, 1)         # type: ignore[attr-defined]
        out.append(pack("BBHBBBB", 3, INT, ACTIVE_HIGH, PCI_BUS, dev << 2 | (pin - 1), IOAPIC_ID, irq))
    return out


def entries(cpu_signature: int, cpu_features: int, apic_version: int,
            functions: dict[tuple[int, int], object]) -> list[bytes]:
    out = [pack("BBBBII8x", 0, 0, apic_version, CPU_ENABLED | CPU_BSP, cpu_signature, cpu_features),
           pack("BB6s", 1, PCI_BUS, b"PCI   "), pack("BB6s", 1, ISA_BUS, b"ISA   "),
           pack("BBBBI", 2, IOAPIC_ID, IOAPIC_VERSION, 1, IOAPIC_BASE)]
    out += pci_interrupts(functions)
    for irq in range(ISA_IRQS):
        if irq in PCI_IRQS or irq == CASCADE_IRQ:
            continue
        out.append(pack("BBHBBBB", 3, INT, CONFORMS, ISA_BUS, irq, IOAPIC_ID, IRQ0_PIN if irq == 0 else irq))
    out.append(pack("BBHBBBB", 4, EXTINT, CONFORMS, ISA_BUS, 0, 0, 0))
    out.append(pack("BBHBBBB", 4, NMI, CONFORMS, ISA_BUS, 0, ALL_APICS, 1))
    return out


def build(fseg: Heap, cpu_signature: int, cpu_features: int, apic_version: int,
          functions: dict[tuple[int, int], object]) -> list[Structure]:
    items = entries(cpu_signature, cpu_features, apic_version, functions)
    body = b"".join(items)
    length = 44 + len(body)
    floating_at = fseg.reserve(16 + length)
    config_at = floating_at + 16
    config = b"PCMP" + pack("HBB", length, SPEC_REVISION, 0) + OEM_ID + PRODUCT_ID \
        + pack("IHHIHBB", 0, 0, len(items), LAPIC_BASE, 0, 0, 0) + body
    floating = b"_MP_" + pack("IBBB5x", config_at, 1, SPEC_REVISION, 0)
    return [fseg.place("MP floating pointer", floating_at, with_checksum(floating, 10)),
            fseg.place("MP configuration table", config_at, with_checksum(config, 7))]
