"""Boot sectors: 512 bytes ending in 0x55 0xAA, loaded at 0x7c00 and entered in real mode.

What SeaBIOS does after reading the first sector of the boot disk (``src/boot.c``,
``boot_disk`` then ``call_boot_entry``), and what a probe sector measured under the
installed ``qemu-system-i386`` 7.2 / SeaBIOS 1.16.2 booting from the first IDE disk:

* the sector is copied to 0000:7c00; SeaBIOS refuses a disk whose sector lacks the
  0x55 0xAA signature at offset 510 ("Boot failed: not a bootable disk"), so do we;
* entry ``CS:IP`` = 0000:7c00 (SeaBIOS canonicalises 07c0:0000 to it), real mode
  (``CR0`` = 0x10: ET only);
* ``DL`` = 0x80 (first hard disk), ``AX`` = 0xAA55 (SeaBIOS: "Set the magic number in ax
  and the boot drive in dl"), every other GPR 0 (the ``bregs`` are zeroed);
* ``DS`` = ``ES`` = ``SS`` = 0, ``SP`` = 0x6f04 (SeaBIOS's stack: measured, not a
  contract; a boot sector should set up its own), ``FLAGS`` = 0x202 (``IF`` = 1).

``LoadedImage.registers`` carries the two values SeaBIOS sets on purpose, ``EAX`` =
0xAA55 and ``EDX`` = 0x80; segments, stack and flags are the engine's choice
(:data:`SEABIOS_ENTRY_STATE` records what SeaBIOS leaves, for a VM that wants to mimic it).
The board has SeaBIOS's IVT and tables but no BIOS services (:mod:`vmm.firmware`):
``INT 10h``/``13h``/... return with nothing done and a one-line notice. ``IF`` stays 0.
"""
from __future__ import annotations

from .plan import ImageError, LoadedImage, ram_below_4g

BOOT_ADDRESS = 0x7C00
SECTOR_SIZE = 512
SIGNATURE = b"\x55\xaa"
BOOT_DRIVE = 0x80
#: What SeaBIOS's call_boot_entry() sets on purpose: the magic in AX, the drive in DL.
REGISTERS = {"eax": 0xAA55, "edx": BOOT_DRIVE}
#: The whole state SeaBIOS leaves, measured under QEMU 7.2 / SeaBIOS 1.16.2 (reference only).
SEABIOS_ENTRY_STATE = {
    "eax": 0xAA55, "ebx": 0, "ecx": 0, "edx": BOOT_DRIVE, "esi": 0, "edi": 0, "ebp": 0,
    "esp": 0x6F04, "eflags": 0x202, "cr0": 0x10, "cs": 0, "ds": 0, "es": 0, "ss": 0,
}


def load(data: bytes, *, src: str, path: str | None, ram_size: int) -> LoadedImage:
    if len(data) != SECTOR_SIZE:
        raise ImageError(f"{src}: a boot sector must be exactly {SECTOR_SIZE} bytes "
                         f"(this file has {len(data)})")
    if data[510:512] != SIGNATURE:
        raise ImageError(f"{src}: boot sector lacks the 0x55 0xAA signature at offset 510 "
                         f"(found {data[510]:#04x} {data[511]:#04x})")
    if ram_below_4g(ram_size) < BOOT_ADDRESS + SECTOR_SIZE:
        raise ImageError(f"{src}: guest RAM ({ram_size:#x} bytes) does not reach "
                         f"{BOOT_ADDRESS + SECTOR_SIZE:#x}, the end of the boot sector")
    return LoadedImage(kind="bootsector", path=path, chunks=[(BOOT_ADDRESS, data)], entry=BOOT_ADDRESS,
                       registers=dict(REGISTERS), real_mode=True, symbols={},
                       notes=[f"boot sector {src!r} at 0x7c00-0x7dff",
                              "real mode, CS:IP = 0000:7c00, DL = 0x80 (first hard disk), AX = 0xaa55"])
