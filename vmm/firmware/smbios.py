"""SMBIOS as QEMU's ``pc`` gives it (hw/smbios/smbios.c) and SeaBIOS installs it.

QEMU 7.2's ``pc`` uses the 32-bit (2.8) entry point (``_SM_``/``_DMI_``, 31 bytes);
SeaBIOS (src/fw/biostables.c ``copy_smbios``/``smbios_romfile_setup``) puts it and the
structure table, which is small, in the F-segment, one after the other. The structures,
with QEMU's defaults for a machine given no ``-smbios`` option:

* type 0, BIOS: vendor, version and date strings of QEMU 7.2's SeaBIOS build (which a
  guest reads as the firmware's name), start segment 0xe800, characteristics "not
  supported", the targeted-content-distribution extension bit, release 0.0;
* type 1, system: ``QEMU``, the machine's description and version, no UUID,
  wake-up by power switch;
* type 3, chassis: ``QEMU``, type other, states safe, security unknown;
* type 4, processor: ``CPU 0``, CPUID.1's EAX and EDX as its ID, 2000 MHz, populated
  and enabled, one core and thread;
* type 16, memory array: system memory, multi-bit ECC, capacity = RAM, one device;
* type 17, memory device: ``DIMM 0``, RAM's size in MiB, DIMM, RAM, "other" detail;
* type 19, array mapped address: 0 to RAM - 1 KiB (in KiB);
* type 32, boot information: no errors; type 127, end of table.

RAM here is below 3.5 GiB (the board's limit), so one DIMM and one mapped range, as
QEMU gives such a machine.
"""
from __future__ import annotations

from .layout import Heap, Structure, checksum, pack

BIOS_VENDOR = b"SeaBIOS"
BIOS_VERSION = b"1.16.2-debian-1.16.2-1"
BIOS_DATE = b"04/01/2014"
MANUFACTURER = b"QEMU"
PRODUCT = b"Standard PC (i440FX + PIIX, 1996)"
MACHINE_VERSION = b"pc-i440fx-7.2"
BIOS_START_SEGMENT = 0xE800
BIOS_CHARACTERISTICS_NOT_SUPPORTED = 1 << 3
BIOS_EXTENSION_2_TARGETED_CONTENT = 1 << 2
WAKE_UP_POWER_SWITCH = 6
CHASSIS_OTHER, STATE_SAFE, SECURITY_UNKNOWN = 1, 3, 2
CPU_SPEED_MHZ = 2000
CPU_POPULATED_ENABLED = 0x41
PROCESSOR_CENTRAL, FAMILY_OTHER, UPGRADE_OTHER = 3, 1, 1
CHARACTERISTICS_UNKNOWN = 2
NO_CACHE = 0xFFFF
NO_ERROR_INFO = 0xFFFE
LOCATION_OTHER, USE_SYSTEM_MEMORY, ECC_MULTI_BIT = 1, 3, 6
FORM_DIMM, TYPE_RAM, DETAIL_OTHER = 0x09, 0x07, 0x0002
UNKNOWN_WIDTH = 0xFFFF
MEMORY_ARRAY_HANDLE = 0x1000
ENTRY_POINT_SIZE = 31
SMBIOS_MAJOR, SMBIOS_MINOR = 2, 8


def structure(kind: int, handle: int, fields: bytes, strings: tuple[bytes, ...] = ()) -> bytes:
    """Formatted area (type, length, handle, fields), then the strings, double-NUL ended."""
    text = b"".join(s + b"\0" for s in strings) + b"\0" if strings else b"\0\0"
    return pack("BBH", kind, 4 + len(fields), handle) + fields + text


def structures(ram_below_4g: int, cpu_signature: int, cpu_features: int) -> list[bytes]:
    ram_kib = ram_below_4g >> 10
    return [
        structure(0, 0x0000, pack("BBHBBQBBBBBB", 1, 2, BIOS_START_SEGMENT, 3, 0,
                                  BIOS_CHARACTERISTICS_NOT_SUPPORTED, 0, BIOS_EXTENSION_2_TARGETED_CONTENT,
                                  0, 0, 0xFF, 0xFF),
                  (BIOS_VENDOR, BIOS_VERSION, BIOS_DATE)),
        structure(1, 0x0100, pack("BBBB16sBBB", 1, 2, 3, 0, bytes(16), WAKE_UP_POWER_SWITCH, 0, 0),
                  (MANUFACTURER, PRODUCT, MACHINE_VERSION)),
        structure(3, 0x0300, pack("BBBBBBBBBIBBBBB", 1, CHASSIS_OTHER, 2, 0, 0, STATE_SAFE, STATE_SAFE,
                                  STATE_SAFE, SECURITY_UNKNOWN, 0, 0, 0, 0, 0, 0)[:18],
                  (MANUFACTURER, MACHINE_VERSION)),
        structure(4, 0x0400, pack("BBBBIIBBHHHBBHHHBBBBBBHH", 1, PROCESSOR_CENTRAL, FAMILY_OTHER, 2,
                                  cpu_signature, cpu_features, 3, 0, 0, CPU_SPEED_MHZ, CPU_SPEED_MHZ,
                                  CPU_POPULATED_ENABLED, UPGRADE_OTHER, NO_CACHE, NO_CACHE, NO_CACHE,
                                  0, 0, 0, 1, 1, 1, CHARACTERISTICS_UNKNOWN, FAMILY_OTHER),
                  (b"CPU 0", MANUFACTURER, MACHINE_VERSION)),
        structure(16, MEMORY_ARRAY_HANDLE, pack("BBBIHHQ", LOCATION_OTHER, USE_SYSTEM_MEMORY, ECC_MULTI_BIT,
                                                ram_kib, NO_ERROR_INFO, 1, 0)),
        structure(17, 0x1100, pack("HHHHHBBBBBHHBBBBBIHHHH", MEMORY_ARRAY_HANDLE, NO_ERROR_INFO,
                                   UNKNOWN_WIDTH, UNKNOWN_WIDTH, ram_below_4g >> 20, FORM_DIMM, 0, 1, 0,
                                   TYPE_RAM, DETAIL_OTHER, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0),
                  (b"DIMM 0", MANUFACTURER)),
        structure(19, 0x1300, pack("IIHBQQ", 0, ram_kib - 1, MEMORY_ARRAY_HANDLE, 1, 0, 0)),
        structure(32, 0x2000, bytes(7)),
        structure(127, 0x7F00, b""),
    ]


def entry_point(table_address: int, items: list[bytes]) -> bytes:
    table_length = sum(len(s) for s in items)
    largest = max(len(s) for s in items)
    intermediate = b"_DMI_" + pack("BHIHB", 0, table_length, table_address, len(items),
                                   SMBIOS_MAJOR << 4 | SMBIOS_MINOR)
    intermediate = intermediate[:5] + bytes([checksum(intermediate)]) + intermediate[6:]
    head = b"_SM_" + pack("BBBBHB5s", 0, ENTRY_POINT_SIZE, SMBIOS_MAJOR, SMBIOS_MINOR, largest, 0, bytes(5))
    whole = head + intermediate
    return whole[:4] + bytes([checksum(whole)]) + whole[5:]


def build(fseg: Heap, ram_below_4g: int, cpu_signature: int, cpu_features: int) -> list[Structure]:
    items = structures(ram_below_4g, cpu_signature, cpu_features)
    ep_at = fseg.reserve(ENTRY_POINT_SIZE)
    table = b"".join(items)
    table_at = fseg.reserve(len(table))
    return [fseg.place("SMBIOS entry point", ep_at, entry_point(table_at, items)),
            fseg.place("SMBIOS structure table", table_at, table)]
