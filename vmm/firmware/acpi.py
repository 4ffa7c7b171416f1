"""ACPI tables as QEMU's ``pc`` (i440FX) builds them and SeaBIOS installs them.

QEMU writes the tables (hw/i386/acpi-build.c ``acpi_build``, the common parts in
hw/acpi/aml-build.c) into one fw_cfg blob, ``etc/acpi/tables``, in this order: FACS,
DSDT, FACP, APIC (the MADT), HPET (when the HPET is on), WAET, RSDT; SeaBIOS's table
loader (src/fw/romfile_loader.c) copies the blob to the start of its high heap, 64-byte
aligned, patches the pointers, and copies the RSDP into the F-segment. So the FACS and
the DSDT sit where QEMU's do; the later tables follow the DSDT, which here is a minimal
one (below), so they sit lower than QEMU's by the difference of the two DSDTs' lengths.

What QEMU's ``pc`` reports, and so do these:

* **RSDP** revision 0 (ACPI 1.0: 20 bytes, no XSDT), OEM ``BOCHS``; every table's
  header says OEM ``BOCHS``/``BXPC    `` revision 1, creator ``BXPC`` revision 1.
* **FACP** revision 1 (116 bytes): a revision-1 FADT ends at ``Flags``, so QEMU's
  ``pc`` has no RESET_REG there (its reset through 0xcf9 is not described in ACPI).
  SCI_INT 9, SMI_CMD 0xb2 with ACPI enable/disable values 0xf1/0xf0, PM1a_EVT_BLK
  0x600 (4 bytes), PM1a_CNT_BLK 0x604 (2), PM_TMR_BLK 0x608 (4), GPE0_BLK 0xafe0 (4),
  C2/C3 latencies 0xfff (not supported), the RTC century index 0x32, and the flags
  WBINVD, PROC_C1, SLP_BUTTON, RTC_S4, USE_PLATFORM_CLOCK (hw/acpi/aml-build.c
  ``build_fadt``; hw/i386/acpi-build.c ``acpi_get_pm_info``).
* **APIC** (``build_madt``, hw/i386/acpi-common.c): local APIC address 0xfee00000 with
  PCAT_COMPAT; the local APIC of CPU 0; the I/O APIC, ID 0, at 0xfec00000, GSI base 0;
  the source overrides IRQ 0 -> GSI 2 (edge) and IRQ 5, 9, 10, 11 (the PCI interrupt
  lines) active-high level; a local APIC NMI on LINT1 for every processor.
* **HPET** (``build_hpet``): the event timer block ID the HPET's capability register
  reads (0x8086a201), its registers in memory space at 0xfed00000, HPET number 0.
* **WAET** (``build_waet``): "the ACPI PM timer is good" (one read is enough).
* **DSDT**: only the sleep states QEMU defines in ``\\``: ``_S3_`` {1, 1, 0, 0},
  ``_S4_`` {2, 2, 0, 0} and ``_S5_`` {0, 0, 0, 0}, encoded as QEMU's AML encodes them.
  QEMU's PCI and ISA device tree (``\\_SB.PCI0``, interrupt links, the HPET and RTC
  devices, hot-plug methods) is left out.
"""
from __future__ import annotations

from .layout import Heap, Structure, pack, with_checksum

OEM_ID = b"BOCHS "
OEM_TABLE_ID = b"BXPC    "
OEM_REVISION = 1
CREATOR_ID = b"BXPC"
CREATOR_REVISION = 1
TABLE_REVISION = 1
HEADER_SIZE = 36
CHECKSUM_OFFSET = 9
RSDP_CHECKSUM_OFFSET = 8
BLOB_ALIGN = 64                 # the FACS must be 64-byte aligned; QEMU's loader asks it of the blob

# The board's ACPI hardware (hw/acpi/piix4.c, hw/i386/acpi-build.c; vmm.devices.pci has the PM base)
SCI_INT = 9
SMI_CMD = 0xB2
ACPI_ENABLE, ACPI_DISABLE = 0xF1, 0xF0
PM_BASE = 0x600
PM1A_EVT_BLK, PM1_EVT_LEN = PM_BASE, 4
PM1A_CNT_BLK, PM1_CNT_LEN = PM_BASE + 4, 2
PM_TMR_BLK, PM_TMR_LEN = PM_BASE + 8, 4
GPE0_BLK, GPE0_BLK_LEN = 0xAFE0, 4
LATENCY_NOT_SUPPORTED = 0xFFF
RTC_CENTURY = 0x32
FADT_FLAGS = (1 << 0) | (1 << 2) | (1 << 5) | (1 << 7) | (1 << 15)   # WBINVD PROC_C1 SLP_BUTTON RTC_S4 PLATFORM_CLOCK
INT_MODEL_APIC = 1              # the ACPI 1.0 INT_MODEL byte (reserved later); QEMU writes 1

LAPIC_BASE = 0xFEE00000
IOAPIC_BASE = 0xFEC00000        # QEMU's IO_APIC_DEFAULT_ADDRESS, where the board's I/O APIC sits
IOAPIC_ID = 0
MADT_PCAT_COMPAT = 1
PCI_IRQS = (5, 9, 10, 11)       # the PIIX's PCI interrupt lines: level, active high (flags 0x0d)
MPS_INTI_LEVEL_HIGH = 0x0D
NMI_LINT = 1
ALL_PROCESSORS = 0xFF

HPET_BASE = 0xFED00000
WAET_PM_TIMER_GOOD = 1 << 1

# Sleep packages: SLP_TYPa, SLP_TYPb and two reserved zeros (acpi-build.c build_dsdt)
SLEEP_STATES = ((b"_S3_", (1, 1)), (b"_S4_", (2, 2)), (b"_S5_", (0, 0)))


def table(signature: bytes, body: bytes, revision: int = TABLE_REVISION) -> bytes:
    """An ACPI table: the 36-byte header QEMU writes (``acpi_table_begin``), body, checksum."""
    header = signature + pack("IBB", HEADER_SIZE + len(body), revision, 0) + OEM_ID + OEM_TABLE_ID \
        + pack("I", OEM_REVISION) + CREATOR_ID + pack("I", CREATOR_REVISION)
    return with_checksum(header + body, CHECKSUM_OFFSET)


# -- AML (ACPI spec 6.x §20): just what the sleep-state packages need -------------------
NAME_OP, PACKAGE_OP, SCOPE_OP, BYTE_PREFIX = 0x08, 0x12, 0x10, 0x0A
ROOT_CHAR, NULL_NAME = 0x5C, 0x00
PKG_LENGTH_ONE_BYTE = 0x3F


def pkg_length(content: int) -> bytes:
    """PkgLength for ``content`` bytes that follow it (the length counts itself)."""
    if content + 1 <= PKG_LENGTH_ONE_BYTE:
        return bytes([content + 1])
    total = content + 2
    return bytes([0x40 | (total & 0xF), total >> 4])


def aml_integer(value: int) -> bytes:
    """ZeroOp/OneOp for 0 and 1, a BytePrefix constant otherwise (as QEMU's ``aml_int``)."""
    return bytes([value]) if value in (0, 1) else bytes([BYTE_PREFIX, value])


def aml_package(values: tuple[int, ...]) -> bytes:
    body = bytes([len(values)]) + b"".join(aml_integer(v) for v in values)
    return bytes([PACKAGE_OP]) + pkg_length(len(body)) + body


def dsdt() -> bytes:
    names = b"".join(bytes([NAME_OP]) + name + aml_package((a, b, 0, 0)) for name, (a, b) in SLEEP_STATES)
    scope = bytes([ROOT_CHAR, NULL_NAME]) + names
    return table(b"DSDT", bytes([SCOPE_OP]) + pkg_length(len(scope)) + scope)


def facs() -> bytes:
    """The FACS has no header checksum: signature, length 64, the rest zero (``build_facs``)."""
    return b"FACS" + pack("I", 64) + bytes(56)


def facp(facs_address: int, dsdt_address: int) -> bytes:
    body = pack("IIBBHIBBBB", facs_address, dsdt_address, INT_MODEL_APIC, 0, SCI_INT, SMI_CMD,
                ACPI_ENABLE, ACPI_DISABLE, 0, 0)
    body += pack("IIIIIIII", PM1A_EVT_BLK, 0, PM1A_CNT_BLK, 0, 0, PM_TMR_BLK, GPE0_BLK, 0)
    body += pack("BBBBBBBB", PM1_EVT_LEN, PM1_CNT_LEN, 0, PM_TMR_LEN, GPE0_BLK_LEN, 0, 0, 0)
    body += pack("HHHHBBBBBHBI", LATENCY_NOT_SUPPORTED, LATENCY_NOT_SUPPORTED, 0, 0, 0, 0, 0, 0,
                 RTC_CENTURY, 0, 0, FADT_FLAGS)
    return table(b"FACP", body)


def madt() -> bytes:
    entries = pack("BBBBI", 0, 8, 0, 0, 1)                                   # processor local APIC, enabled
    entries += pack("BBBBII", 1, 12, IOAPIC_ID, 0, IOAPIC_BASE, 0)          # I/O APIC, GSI base 0
    entries += pack("BBBBIH", 2, 10, 0, 0, 2, 0)                             # ISA IRQ 0 -> GSI 2
    for irq in PCI_IRQS:
        entries += pack("BBBBIH", 2, 10, 0, irq, irq, MPS_INTI_LEVEL_HIGH)
    entries += pack("BBBHB", 4, 6, ALL_PROCESSORS, 0, NMI_LINT)              # local APIC NMI, LINT1
    return table(b"APIC", pack("II", LAPIC_BASE, MADT_PCAT_COMPAT) + entries)


def hpet(capabilities: int) -> bytes:
    """``capabilities``: the low dword of the HPET's capability register, its event timer block ID."""
    gas = pack("BBBBQ", 0, 0, 0, 0, HPET_BASE)     # system memory; QEMU leaves width and access 0
    return table(b"HPET", pack("I", capabilities) + gas + pack("BHB", 0, 0, 0))


def waet() -> bytes:
    return table(b"WAET", pack("I", WAET_PM_TIMER_GOOD))


def rsdt(addresses: list[int]) -> bytes:
    return table(b"RSDT", b"".join(pack("I", a) for a in addresses))


def rsdp(rsdt_address: int) -> bytes:
    return with_checksum(b"RSD PTR " + pack("B", 0) + OEM_ID + pack("BI", 0, rsdt_address), RSDP_CHECKSUM_OFFSET)


def blob(base: int, hpet_capabilities: int | None) -> list[tuple[str, int, bytes]]:
    """QEMU's ``etc/acpi/tables`` laid out from ``base``: (name, address, bytes), in order."""
    listed = ["FACP", "APIC"] + (["HPET"] if hpet_capabilities is not None else []) + ["WAET"]
    the_facs, the_dsdt = facs(), dsdt()
    at = {"FACS": base, "DSDT": base + len(the_facs)}
    tables = {"FACS": the_facs, "DSDT": the_dsdt, "FACP": facp(at["FACS"], at["DSDT"]), "APIC": madt(),
              "WAET": waet()}
    if hpet_capabilities is not None:
        tables["HPET"] = hpet(hpet_capabilities)
    cursor = at["DSDT"] + len(the_dsdt)
    for name in listed:
        at[name] = cursor
        cursor += len(tables[name])
    tables["RSDT"] = rsdt([at[name] for name in listed])
    at["RSDT"] = cursor
    return [(name, at[name], tables[name]) for name in ("FACS", "DSDT", *listed, "RSDT")]


def build(high: Heap, fseg: Heap, hpet_capabilities: int | None) -> list[Structure]:
    """The blob at the start of the high heap (64-byte aligned), the RSDP in the F-segment."""
    size = sum(len(data) for _, _, data in blob(0, hpet_capabilities))
    base = high.reserve(size, BLOB_ALIGN)
    out = [high.place(f"ACPI {name}", address, data) for name, address, data in blob(base, hpet_capabilities)]
    rsdt_address = out[-1].address
    pointer = rsdp(rsdt_address)
    out.append(fseg.place("ACPI RSDP", fseg.reserve(len(pointer)), pointer))
    return out
