"""The machine state at a Multiboot kernel's first instruction, as ``qemu-system-i386 -kernel`` leaves it.

QEMU's Multiboot option ROM (``pc-bios/optionrom/multiboot.S``) switches to protected mode
with its own five-entry GDT, copies the kernel, the memory map and the information
structure into RAM, and jumps to the entry through ECX. Read with gdb through QEMU 7.2's
stub (``-s -S``, a breakpoint on the entry, ``monitor info registers`` for the hidden
parts) on the default ``pc`` board:

* ``EAX`` = 0x2BADB002, ``EBX`` = 0x9500 (the information structure), ``ECX`` = the entry
  (the option ROM's ``jmp *%ecx``), ``ESP`` = 0x6F08 (SeaBIOS's stack, left in place);
* ``EFLAGS`` = 0x6 (PF and the fixed bit 1; IF = 0);
* ``CR0`` = 0x11 (PE | ET), ``CR4`` = 0; paging off;
* ``GDTR`` = 0xC02B8 / 0x27, in the option ROM: null, flat 32-bit code (0x08), flat 32-bit
  data (0x10, accessed), 16-bit code (0x18), 16-bit data (0x20), all base 0;
* ``CS`` = 0x08 (cache ``00cf9a00``: base 0, limit 4 GiB), ``DS`` = ``ES`` = ``FS`` =
  ``GS`` = ``SS`` = 0x10 (cache ``00cf9300``);
* ``IDTR`` = 0 / 0x3FF: still the real-mode interrupt vector table.

``EDX`` and ``EDI`` are what the option ROM's memory-size loop left (they change with the
RAM size); the Multiboot specification leaves them undefined, and so do we (0).

The segment caches are not written directly: the GDT is placed in guest memory at QEMU's
address and the selectors are loaded through it (:func:`boot_gdt`), so the caches are what
the descriptors say, as on the CPU. The table is written again after the loads, so guest
memory holds exactly the option ROM's bytes (the code descriptor's accessed bit clear).
"""
from __future__ import annotations

import struct

MULTIBOOT_ESP = 0x6F08
MULTIBOOT_EFLAGS = 0x6
MULTIBOOT_CR0 = 0x11        # PE | ET
MULTIBOOT_CR4 = 0

#: QEMU's option-ROM GDT: its address, and the descriptors it holds.
BOOT_GDT_ADDRESS = 0xC02B8
BOOT_GDT = (
    0x0000000000000000,     # null
    0x00CF9A000000FFFF,     # 0x08: code, 32-bit, base 0, limit 4 GiB, execute/read
    0x00CF93000000FFFF,     # 0x10: data, 32-bit, base 0, limit 4 GiB, read/write, accessed
    0x00009E000000FFFF,     # 0x18: code, 16-bit, limit 64 KiB, conforming
    0x000092000000FFFF,     # 0x20: data, 16-bit, limit 64 KiB
)
BOOT_CS, BOOT_DS = 0x08, 0x10
DATA_SEGMENTS = ("ds", "es", "fs", "gs", "ss")

#: IDTR at entry: the real-mode interrupt vector table, 256 four-byte vectors at 0.
IVT_BASE, IVT_LIMIT = 0, 0x3FF


def boot_gdt() -> tuple[int, bytes]:
    """Where QEMU's boot GDT lives and its bytes (GDTR limit = ``len(bytes) - 1``)."""
    return BOOT_GDT_ADDRESS, b"".join(struct.pack("<Q", d) for d in BOOT_GDT)


def multiboot_registers(entry: int, mbi: int, magic: int) -> dict[str, int]:
    """The general registers and EFLAGS at the entry point."""
    return {"eax": magic, "ebx": mbi, "ecx": entry, "esp": MULTIBOOT_ESP, "eflags": MULTIBOOT_EFLAGS}


def load_protected_mode_state(engine, write_guest) -> None:
    """Protected mode as the option ROM leaves it: its GDT in guest memory (through
    ``write_guest``), CR0/CR4, the selectors loaded through that GDT, IDTR on the IVT."""
    address, gdt = boot_gdt()
    write_guest(address, gdt)
    engine.set_table("gdtr", address, len(gdt) - 1)
    engine.set_reg("cr0", MULTIBOOT_CR0)
    engine.set_reg("cr4", MULTIBOOT_CR4)
    engine.set_reg("cs", BOOT_CS)
    for seg in DATA_SEGMENTS:
        engine.set_reg(seg, BOOT_DS)
    engine.set_table("idtr", IVT_BASE, IVT_LIMIT)
    # Loading CS through the engine sets the descriptor's accessed bit; QEMU's far jump
    # leaves its code descriptor as the option ROM wrote it, and the guest may read it.
    write_guest(address, gdt)
