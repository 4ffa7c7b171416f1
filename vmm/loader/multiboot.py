"""Multiboot v1 kernels, loaded the way ``qemu-system-i386 -M pc -kernel`` loads them.

Sources read (QEMU 7.2 / master, SeaBIOS 1.16) and checked by running probe kernels under
the installed ``qemu-system-i386`` 7.2.22 with SeaBIOS 1.16.2 (``-M pc``, TCG, 1 vCPU):

* ``hw/i386/multiboot.c`` (``load_multiboot``): header search, a.out kludge, layout of the
  info structure, command lines and modules;
* ``include/hw/elf_ops.h`` (``load_elf``): which ELF segments load where, and the entry;
* ``pc-bios/optionrom/multiboot.S``: ``mem_lower``/``mem_upper``/memory map, and the
  machine state at the kernel's entry;
* SeaBIOS ``src/fw/paravirt.c`` (``qemu_preinit``) and ``src/malloc.c``
  (``malloc_preinit``/``malloc_prepboot``): the e820 map.

Header
    Magic 0x1BADB002, flags, checksum (magic + flags + checksum = 0 mod 2^32), at a
    4-byte aligned offset. QEMU scans offsets 0, 4, ... below 8192 - 48 = 8144 (room for a
    full 48-byte header) and takes the first magic whose checksum holds; we do the same.
    Flag bits: 0 (page-align modules) and 1 (memory info) are always honoured; 2 (video
    mode) QEMU accepts with a warning ("multiboot knows VBE. we don't") and so do we (a
    note; no VBE/framebuffer info is passed); 16 selects the a.out kludge. QEMU refuses no
    bit; we refuse the undefined required bits 3-15 as the Multiboot spec says a loader
    must (a deliberate, documented divergence: such a kernel asks for something nobody
    provides). Bits 17-31 are optional and ignored.

Loading (flag 16 clear): the file must be an ELF32 little-endian i386 ``ET_EXEC``.
    Each ``PT_LOAD`` segment is loaded at its **physical** address ``p_paddr``: ``p_filesz``
    bytes from the file, then zeroes up to ``p_memsz`` (``p_filesz > p_memsz`` is refused,
    as QEMU does). QEMU's rule for a zero-fill (bss) part that overlaps another segment:
    the segment is truncated to its file size (the "packed ROM" convention); we do the
    same and say so in the notes. Segments that still overlap are refused (QEMU: "rom:
    requested regions overlap"). Entry: ``e_entry``, except when a ``PF_X`` segment with
    ``p_vaddr != p_paddr`` holds it in ``[p_vaddr, p_vaddr + p_filesz)``: then
    ``e_entry - p_vaddr + p_paddr`` (the last such segment wins, as in QEMU).
Loading (flag 16 set, "a.out kludge", ELF or not): the header's ``header_addr``,
    ``load_addr``, ``load_end_addr`` (0: to the end of the file), ``bss_end_addr`` (0: no
    bss) and ``entry_addr`` place the file bytes from offset
    ``header_offset - (header_addr - load_addr)``; QEMU's sanity checks are applied.

QEMU treats the kernel as one block from its lowest to its highest loaded address
(``load_multiboot`` copies ``[elf_low, elf_high)`` and the option ROM writes all of it,
gaps included). So the whole block, not only each segment, must stay clear of the VGA
window and option ROMs 0xa0000-0xeffff; QEMU does not check, it silently loses the bytes
or clobbers its own option ROM (seen with probe kernels). We refuse those images instead.
The BIOS area 0xf0000-0xfffff is shadow RAM while the option ROM runs and takes the
image's bytes (measured: ``ld -Ttext 0x100000`` without a script puts the ELF headers in a
first ``PT_LOAD`` at 0xff000; QEMU writes them there and boots the kernel); so do we.
Empty ``PT_LOAD`` segments count for the block's
bounds, as in QEMU's ``load_elf``: one below the others moves the block's start (and so
the page alignment of what follows it); one above every loaded byte makes QEMU fail
("Error while fetching elf kernel from rom", seen with a probe kernel), and us too.

The info area 0x9000-0x9557 does not bound the block. The option ROM writes the memory
map and the info structure first, then the whole ``mb_buf`` (the block, its page-aligned
zero padding, the info tail and the modules) over them: an image that covers the area
(kvm-unit-tests' ``realmode`` lives at 0x4000-...) finds its own bytes there and EBX still
0x9500 (measured: a kernel at 0x8000-0x9fff reads its own bytes at 0x9000 and 0x9500; one
at 0x8000-0x80ff finds its command line at 0x9000 and zeroes at 0x9500). We write the
same: the info chunks keep only their parts outside the block.

So the block, then the info strings and modules that follow it, must fit in
``[0, 0xa0000)`` or ``[0xf0000, RAM below 4 GiB)``.
Our own limits, beyond QEMU's: at least 2 MiB of RAM; at most 1024 ``PT_LOAD``
segments (QEMU's bss rule compares every pair); the entry must lie in a loaded segment
(QEMU jumps anywhere). A malformed symbol table only loses the symbols, as in QEMU.
Each segment's zero fill is its own chunk of zero bytes, after the file bytes' chunk.

Multiboot information (``EBX``), placed exactly where QEMU places it:

* ``0x9000`` (``MULTIBOOT_STRUCT_ADDR``): the memory map, 24-byte entries
  ``size=20, base_addr (u64), length (u64), type``; ``mmap_addr`` = 0x9000.
* ``0x9500`` (``ADDR_MBI``): the 88-byte info structure. ``flags`` = 0x24F: mem (0),
  boot_device (1) = 0x8000FFFF, cmdline (2), mods (3), mmap (6), boot_loader_name (9).
  ``mem_lower`` = 639 (INT 12h: 640 KiB minus SeaBIOS's 1 KiB EBDA), ``mem_upper`` = the
  KiB of usable RAM contiguous from 1 MiB in the e820 map, i.e. (RAM below 4 GiB - 1 MiB -
  128 KiB) / 1024, not ram/1024 - 1024.
* After the kernel, at ``X = low + align_up(high - low, 4096)`` (page alignment is
  relative to the kernel's lowest address, as in QEMU): the module records (16 bytes
  each: ``mod_start``, ``mod_end`` (exclusive), ``string``, 0), then the command lines:
  each module's string (its ``"path args"`` text, as given), then the kernel's
  ``"<image name> <cmdline>"`` (always with the space, so ``"name "`` when there is no
  command line), then the boot loader name ``"vmm"`` (QEMU says ``"qemu"``) at
  ``X + 16 * n + len(name) + 1 + len(cmdline) + 1 + (len(",".join(modules)) + 1 if n)``,
  QEMU's reservation. ``mods_addr`` = X even with no module.
* Modules: the first at ``low + align_up(end of those strings - low, 4096)``, each next
  one page aligned (relative to ``low``) after the previous one's end.

e820 map (what SeaBIOS reports for QEMU ``pc`` with ``ram_size`` bytes; confirmed with
probe kernels for 2 MiB ... 4 GiB)::

    0x0000000000000000  0x9fc00         usable    (conventional memory below the EBDA)
    0x000000000009fc00  0x400           reserved  (EBDA, 1 KiB)
    0x00000000000f0000  0x10000         reserved  (BIOS)
    0x0000000000100000  low - 1M - 128K usable    (low = RAM below 4 GiB)
    low - 0x20000       0x20000         reserved  (SeaBIOS ZoneHigh: 256 KiB reserved by
                                                   malloc_preinit, unused pages given back
                                                   in malloc_prepboot; 128 KiB stay)
    0x00000000fffc0000  0x40000         reserved  (BIOS ROM at the top of 4 GiB)
    0x0000000100000000  ram - low       usable    (only when ram >= 3.5 GiB: low = 3 GiB)

The 128 KiB SeaBIOS keeps at the top of low RAM hold its ACPI/SMBIOS tables, so the
figure depends on the machine's configuration; it was measured for the default ``pc``
machine with one vCPU, the board this project models.

Machine state at the kernel's entry (``pc-bios/optionrom/multiboot.S``; Multiboot spec
section 3.2), what a kernel may rely on:

* ``EAX`` = 0x2BADB002, ``EBX`` = 0x9500 (physical address of the info structure);
* protected mode, paging off: ``CR0`` = PE | ET (0x11), ``CR4`` = 0;
* ``CS`` = 0x08: flat 32-bit code, base 0, limit 4 GiB, DPL 0; ``DS`` = ``ES`` = ``FS`` =
  ``GS`` = ``SS`` = 0x10: flat 32-bit read/write data, base 0, limit 4 GiB (QEMU's GDT has
  five entries: null, code32, data32, code16 0x18, data16 0x20, and lives in the option
  ROM at 0xc0000-0xeffff; the kernel must load its own GDT before reloading a selector);
* ``EFLAGS``: IF = 0, VM = 0 (other bits undefined);
* undefined by the specification, the kernel must set them up: ``ESP``, the IDT, the
  other GPRs, the PIC/PIT (as SeaBIOS left them); A20 is enabled.

Kernels rely on more than the specification promises (a stack, for one), so vmm leaves
exactly what QEMU 7.2 leaves, measured at the entry breakpoint (:mod:`vmm.loader.entry`):
``ECX`` = entry, ``ESP`` = 0x6f08, ``EFLAGS`` = 0x6, the GDT at 0xc02b8 (limit 0x27),
``IDTR`` = 0 / 0x3ff.

``LoadedImage.registers`` carries the general registers and EFLAGS of that state; the
rest (GDT, selectors, CR0/CR4, IDTR) is :mod:`vmm.loader.entry`'s, applied by the engine
(``real_mode`` = False).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from .entry import multiboot_registers
from .plan import (
    BIOS_AREA_START,
    FOUR_GIB,
    LOW_HOLE_END,
    LOW_HOLE_START,
    PAGE,
    ImageError,
    LoadedImage,
    check_placement,
    hex_range,
    ram_above_4g,
    ram_below_4g,
    read_file,
)
from .symtab import parse_symbols

MULTIBOOT_HEADER_MAGIC = 0x1BADB002
MULTIBOOT_BOOTLOADER_MAGIC = 0x2BADB002
#: QEMU scans 4-byte aligned offsets below this (8192 minus a full 48-byte header).
HEADER_SEARCH_LIMIT = 8192 - 48

# Header flags (Multiboot spec 3.1.2).
MBH_PAGE_ALIGN = 1 << 0
MBH_MEMORY_INFO = 1 << 1
MBH_VIDEO_MODE = 1 << 2
MBH_AOUT_KLUDGE = 1 << 16
MBH_REQUIRED_MASK = 0xFFFF
MBH_SUPPORTED_REQUIRED = MBH_PAGE_ALIGN | MBH_MEMORY_INFO | MBH_VIDEO_MODE

# Info flags (Multiboot spec 3.3), the set QEMU passes.
MBI_FLAG_MEMORY = 1 << 0
MBI_FLAG_BOOT_DEVICE = 1 << 1
MBI_FLAG_CMDLINE = 1 << 2
MBI_FLAG_MODS = 1 << 3
MBI_FLAG_MMAP = 1 << 6
MBI_FLAG_BOOT_LOADER_NAME = 1 << 9
MBI_FLAGS = (MBI_FLAG_MEMORY | MBI_FLAG_BOOT_DEVICE | MBI_FLAG_CMDLINE | MBI_FLAG_MODS
             | MBI_FLAG_MMAP | MBI_FLAG_BOOT_LOADER_NAME)

# Offsets in the 88-byte info structure (hw/i386/multiboot.c).
MBI_FLAGS_OFF, MBI_MEM_LOWER, MBI_MEM_UPPER, MBI_BOOT_DEVICE = 0, 4, 8, 12
MBI_CMDLINE, MBI_MODS_COUNT, MBI_MODS_ADDR = 16, 20, 24
MBI_MMAP_LENGTH, MBI_MMAP_ADDR, MBI_BOOT_LOADER_NAME = 44, 48, 64
MBI_SIZE = 88
MB_MOD_SIZE = 16

MULTIBOOT_STRUCT_ADDR = 0x9000
MMAP_ADDR = MULTIBOOT_STRUCT_ADDR          # ADDR_E820_MAP
MBI_ADDR = MULTIBOOT_STRUCT_ADDR + 0x500   # ADDR_MBI
INFO_AREA_START, INFO_AREA_END = MULTIBOOT_STRUCT_ADDR, MBI_ADDR + MBI_SIZE
BOOT_DEVICE = 0x8000FFFF
BOOTLOADER_NAME = "vmm"

# e820 (SeaBIOS on QEMU pc).
E820_RAM, E820_RESERVED = 1, 2
EBDA_BASE = 0x9FC00
BIOS_AREA_BASE = 0xF0000
SEABIOS_HIGH_RESERVED = 0x20000
BIOS_ROM_BASE = 0xFFFC0000
MEM_LOWER_KB = EBDA_BASE // 1024          # 639
MIN_RAM = 2 << 20

# ELF constants.
ELF_MAGIC = b"\x7fELF"
ELFCLASS32, ELFCLASS64, ELFDATA2LSB = 1, 2, 1
ET_EXEC, EM_386, EM_X86_64 = 2, 3, 62
PT_LOAD, PF_X = 1, 1
_ET_NAMES = {0: "ET_NONE", 1: "ET_REL", 2: "ET_EXEC", 3: "ET_DYN", 4: "ET_CORE"}
_EM_NAMES = {0: "none", 3: "i386", 8: "MIPS", 20: "PowerPC", 40: "ARM", 62: "x86-64",
             183: "AArch64", 243: "RISC-V"}

M32 = 0xFFFFFFFF
#: The bss-overlap rule compares every pair of segments: keep crafted files from taking minutes.
MAX_LOAD_SEGMENTS = 1024


def _align_up(n: int, a: int = PAGE) -> int:
    return (n + a - 1) & ~(a - 1)


@dataclass(frozen=True)
class E820Entry:
    base: int
    length: int
    type: int

    @property
    def end(self) -> int:
        return self.base + self.length

    def pack(self) -> bytes:
        """The Multiboot memory-map entry: size (20), base_addr, length, type."""
        return struct.pack("<IQQI", 20, self.base, self.length, self.type)


def e820_map(ram_size: int) -> list[E820Entry]:
    """The e820 map SeaBIOS reports to a QEMU ``pc`` guest with ``ram_size`` bytes of RAM,
    in SeaBIOS's order (see the module docstring for sources)."""
    low = ram_below_4g(ram_size)
    high = ram_above_4g(ram_size)
    top = low - SEABIOS_HIGH_RESERVED
    entries = [
        E820Entry(0, EBDA_BASE, E820_RAM),
        E820Entry(EBDA_BASE, LOW_HOLE_START - EBDA_BASE, E820_RESERVED),
        E820Entry(BIOS_AREA_BASE, LOW_HOLE_END - BIOS_AREA_BASE, E820_RESERVED),
        E820Entry(LOW_HOLE_END, top - LOW_HOLE_END, E820_RAM),
        E820Entry(top, SEABIOS_HIGH_RESERVED, E820_RESERVED),
        E820Entry(BIOS_ROM_BASE, FOUR_GIB - BIOS_ROM_BASE, E820_RESERVED),
    ]
    if high:
        entries.append(E820Entry(FOUR_GIB, high, E820_RAM))
    return entries


def mem_upper_kb(ram_size: int) -> int:
    """KiB of usable RAM contiguous from 1 MiB, as multiboot.S derives it from the e820 map."""
    end = LOW_HOLE_END
    changed = True
    entries = e820_map(ram_size)
    while changed:
        changed = False
        for e in entries:
            if e.type == E820_RAM and e.base < FOUR_GIB and e.base <= end < e.end:
                end, changed = e.end, True
    return (end - LOW_HOLE_END) >> 10


@dataclass(frozen=True)
class MultibootHeader:
    offset: int
    flags: int
    checksum: int
    # The a.out kludge's address fields (read with flag 16): header_addr, load_addr,
    # load_end_addr, bss_end_addr, entry_addr; None when the file is too short to hold them.
    addresses: tuple[int, int, int, int, int] | None = None


def _aligned_magic_offsets(data: bytes):
    magic = struct.pack("<I", MULTIBOOT_HEADER_MAGIC)
    limit = min(len(data), HEADER_SEARCH_LIMIT)
    i = data.find(magic, 0, limit + 3)
    while i != -1 and i < limit:
        if i % 4 == 0 and i + 12 <= len(data):
            yield i
        i = data.find(magic, i + 1, limit + 3)


def find_header(data: bytes) -> MultibootHeader | None:
    """The first valid Multiboot header QEMU would find, or None."""
    for i in _aligned_magic_offsets(data):
        magic, flags, checksum = struct.unpack_from("<III", data, i)
        if (magic + flags + checksum) & M32 == 0:
            fields = struct.unpack_from("<5I", data, i + 12) if i + 32 <= len(data) else None
            return MultibootHeader(i, flags, checksum, fields)
    return None


def find_bad_checksum(data: bytes) -> tuple[int, int, int] | None:
    """(offset, flags, checksum) of the first aligned magic whose checksum fails, if any."""
    for i in _aligned_magic_offsets(data):
        magic, flags, checksum = struct.unpack_from("<III", data, i)
        if (magic + flags + checksum) & M32:
            return i, flags, checksum
    return None


@dataclass
class _Segment:
    index: int
    paddr: int
    data: bytes
    memsz: int
    vaddr: int
    flags: int = 0

    @property
    def end(self) -> int:
        return self.paddr + self.memsz


def _u32s(data: bytes, off: int, n: int):
    return struct.unpack_from(f"<{n}I", data, off)


def _check_elf_header(data: bytes, src: str) -> None:
    """Refuse anything but a complete ELF32 little-endian i386 ET_EXEC header."""
    if len(data) < 52:
        raise ImageError(f"{src}: truncated ELF header ({len(data)} bytes, need 52)")
    ei_class, ei_data = data[4], data[5]
    e_type, e_machine = struct.unpack_from("<HH", data, 16)
    if ei_class == ELFCLASS64:
        raise ImageError(f"{src}: 64-bit ELF (ELFCLASS64); Multiboot v1 needs a 32-bit i386 "
                         f"kernel (QEMU: \"Cannot load x86-64 image, give a 32bit one.\")")
    if ei_class != ELFCLASS32:
        raise ImageError(f"{src}: bad ELF class {ei_class} (need ELFCLASS32)")
    if ei_data != ELFDATA2LSB:
        raise ImageError(f"{src}: ELF data encoding {ei_data} is not little-endian (ELFDATA2LSB)")
    if e_machine != EM_386:
        name = _EM_NAMES.get(e_machine, "unknown")
        raise ImageError(f"{src}: ELF machine {e_machine} ({name}) is not i386 (EM_386)")
    if e_type != ET_EXEC:
        name = _ET_NAMES.get(e_type, "unknown")
        raise ImageError(f"{src}: ELF type {e_type} ({name}) is not an executable (ET_EXEC)")


def _parse_elf(data: bytes, src: str) -> tuple[list[_Segment], int, dict[str, int], list[str]]:
    """Check an ELF32 i386 executable and return its PT_LOAD segments, entry, symbols, notes."""
    notes: list[str] = []
    _check_elf_header(data, src)
    (e_entry, e_phoff, e_shoff) = _u32s(data, 24, 3)
    e_phentsize, e_phnum, e_shentsize, e_shnum, e_shstrndx = struct.unpack_from("<HHHHH", data, 42)
    if e_phnum == 0:
        raise ImageError(f"{src}: ELF has no program headers, so no loadable segment")
    if e_phentsize != 32:
        raise ImageError(f"{src}: bad ELF program header size {e_phentsize} (need 32)")
    if e_phoff + 32 * e_phnum > len(data):
        raise ImageError(f"{src}: truncated ELF: {e_phnum} program headers at offset {e_phoff:#x} "
                         f"run past the end of the file ({len(data)} bytes)")

    phdrs = [_u32s(data, e_phoff + 32 * i, 8) for i in range(e_phnum)]
    loads = [(i, ph) for i, ph in enumerate(phdrs) if ph[0] == PT_LOAD]
    if not loads:
        raise ImageError(f"{src}: ELF has no loadable (PT_LOAD) segment")
    if len(loads) > MAX_LOAD_SEGMENTS:
        raise ImageError(f"{src}: ELF has {len(loads)} loadable segments; at most "
                         f"{MAX_LOAD_SEGMENTS} are supported")

    entry = e_entry
    segments: list[_Segment] = []
    for i, (_type, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, p_flags, _align) in loads:
        if p_filesz > p_memsz:
            raise ImageError(f"{src}: ELF segment {i} has a file size ({p_filesz:#x}) larger than "
                             f"its memory size ({p_memsz:#x})")
        if p_filesz and p_offset + p_filesz > len(data):
            raise ImageError(f"{src}: truncated ELF: segment {i} data at offset {p_offset:#x} "
                             f"(+{p_filesz:#x}) runs past the end of the file ({len(data)} bytes)")
        memsz = p_memsz
        if memsz > p_filesz:
            # QEMU (elf_ops.h): a zero-fill part overlapping another segment means the
            # "packed ROM" convention; load only the file bytes.
            zs, ze = (p_paddr + p_filesz) & M32, (p_paddr + p_memsz) & M32
            for j, other in loads:
                if j != i:
                    os_, oe = other[3], (other[3] + other[5]) & M32
                    if not (os_ >= ze or zs >= oe):
                        memsz = p_filesz
                        notes.append(f"segment {i}: its zero-fill "
                                     f"{hex_range(p_paddr + p_filesz, p_paddr + p_memsz)} "
                                     f"overlaps segment {j}, so only its {p_filesz:#x} file bytes "
                                     f"are loaded (QEMU's rule)")
                        break
        if (p_vaddr != p_paddr and p_vaddr <= e_entry < p_vaddr + p_filesz and p_flags & PF_X):
            entry = (e_entry - p_vaddr + p_paddr) & M32
        segments.append(_Segment(i, p_paddr, data[p_offset:p_offset + p_filesz], memsz, p_vaddr, p_flags))
    if entry != e_entry:
        notes.append(f"entry {e_entry:#x} is a virtual address; translated to physical {entry:#x}")

    symbols, sym_note = parse_symbols(data, e_shoff, e_shentsize, e_shnum)
    if sym_note:
        notes.append(sym_note)
    return segments, entry, symbols, notes


def _aout(data: bytes, src: str, hdr: MultibootHeader) -> tuple[list[_Segment], int, list[str]]:
    """The a.out kludge (flag 16): place the file by the header's address fields, with
    QEMU's checks (hw/i386/multiboot.c)."""
    if hdr.addresses is None:
        raise ImageError(f"{src}: truncated Multiboot header at offset {hdr.offset:#x}: flag 16 "
                         f"needs the address fields, which run past the end of the file")
    header_addr, load_addr, load_end, bss_end, entry = hdr.addresses
    if header_addr < load_addr:
        raise ImageError(f"{src}: Multiboot header_addr {header_addr:#x} is below load_addr "
                         f"{load_addr:#x} (QEMU: \"invalid load_addr address\")")
    if header_addr - load_addr > hdr.offset:
        raise ImageError(f"{src}: Multiboot header_addr {header_addr:#x} - load_addr {load_addr:#x} "
                         f"is more than the header's file offset {hdr.offset:#x} "
                         f"(QEMU: \"invalid header_addr address\")")
    text_offset = hdr.offset - (header_addr - load_addr)
    if load_end:
        if load_end < load_addr:
            raise ImageError(f"{src}: Multiboot load_end_addr {load_end:#x} is below load_addr "
                             f"{load_addr:#x} (QEMU: \"invalid load_end_addr address\")")
        load_size = load_end - load_addr
    else:
        load_size = len(data) - text_offset
    if load_size > M32 - load_addr:
        raise ImageError(f"{src}: Multiboot kernel at {load_addr:#x} (+{load_size:#x} bytes) does "
                         f"not fit in the 32-bit address space")
    if bss_end:
        if bss_end < load_addr + load_size:
            raise ImageError(f"{src}: Multiboot bss_end_addr {bss_end:#x} is below the end of the "
                             f"loaded bytes {load_addr + load_size:#x} (QEMU: \"invalid bss_end_addr address\")")
        kernel_size = bss_end - load_addr
    else:
        kernel_size = load_size
    if text_offset + load_size > len(data):
        raise ImageError(f"{src}: truncated: the Multiboot header asks for {load_size:#x} bytes from "
                         f"file offset {text_offset:#x}, but the file has {len(data)} bytes")
    if kernel_size == 0:
        raise ImageError(f"{src}: the Multiboot header describes an empty kernel "
                         f"(load_end_addr = bss_end_addr = load_addr)")
    seg = _Segment(0, load_addr, data[text_offset:text_offset + load_size], kernel_size, load_addr)
    notes = [f"a.out kludge (flag 16): file offset {text_offset:#x} (+{load_size:#x}) loaded at "
             f"{load_addr:#x}, header at file offset {hdr.offset:#x}"]
    if data[:4] == ELF_MAGIC:
        notes.append("the file is an ELF, but flag 16 is set: its header addresses win (as in QEMU)")
    return [seg], entry, notes


def _encode(text: str, what: str, src: str) -> bytes:
    raw = text.encode("utf-8", "surrogateescape")
    if b"\0" in raw:
        raise ImageError(f"{src}: {what} contains a NUL byte")
    return raw


@dataclass
class _Kernel:
    """The kernel's part of the plan: its segments as QEMU copies them, and where it starts."""

    fmt: str                    # "ELF" or "a.out kludge"
    segments: list[_Segment]    # every PT_LOAD, empty ones included: they bound the block
    entry: int
    symbols: dict[str, int]

    @property
    def loaded(self) -> list[_Segment]:
        return [s for s in self.segments if s.memsz]

    @property
    def low(self) -> int:
        return min(s.paddr for s in self.segments)

    @property
    def high(self) -> int:
        return max(s.end for s in self.segments)

    def what(self, s: _Segment) -> str:
        return f"segment {s.index}" if self.fmt == "ELF" else "kernel"


@dataclass(frozen=True)
class _Module:
    text: str       # "path args", as given
    string: bytes   # its encoding, the module's command line
    body: bytes     # the file


@dataclass
class _InfoTail:
    """What follows the kernel, at ``X`` (hw/i386/multiboot.c): module records, then strings."""

    addr: int                         # X, mods_addr
    data: bytearray
    cmdline_addr: int                 # the kernel's "<image name> <cmdline>"
    cmdline: bytes
    loader_addr: int                  # the boot loader name
    modules: list[tuple[int, bytes]]  # where each module's file goes


def load(data: bytes, *, src: str, path: str | None, ram_size: int, cmdline: str | None,
         modules: list[str], image_name: str) -> LoadedImage:
    """Load a Multiboot kernel: see the module docstring for every rule."""
    hdr, notes = _checked_header(data, src, ram_size)
    kernel = _kernel(data, src, hdr, notes)
    _check_block(kernel, src, ram_size)
    tail = _info_tail(kernel, src, _region_end(kernel.low, ram_size), image_name, cmdline, modules)
    mmap = e820_map(ram_size)
    mmap_b = b"".join(e.pack() for e in mmap)
    kernel_chunks, segment_notes = _kernel_chunks(kernel)
    notes += segment_notes
    blob = (kernel.low, _blob_end(kernel, tail))
    # The option ROM writes the memory map and the info structure, then the whole block
    # over them: where the block covers them, the kernel's bytes (or its zero padding) win.
    mbi = _info_structure(ram_size, tail, len(mmap_b))
    chunks = _outside(MMAP_ADDR, mmap_b, *blob) + _outside(MBI_ADDR, mbi, *blob)
    if blob[0] < INFO_AREA_END and blob[1] > INFO_AREA_START:
        notes.append(f"the image's block {hex_range(*blob)} covers the Multiboot info area "
                     f"{hex_range(INFO_AREA_START, INFO_AREA_END)}: its bytes win there, EBX still "
                     f"{MBI_ADDR:#x} (as under QEMU)")
    chunks += kernel_chunks
    chunks.append((tail.addr, bytes(tail.data)))
    chunks.extend(tail.modules)

    notes.append(f"entry {kernel.entry:#x}; EAX = {MULTIBOOT_BOOTLOADER_MAGIC:#x}, EBX = {MBI_ADDR:#x}")
    notes.append(f"memory map at {MMAP_ADDR:#x} ({len(mmap)} e820 entries), info structure at "
                 f"{MBI_ADDR:#x}: mem_lower {MEM_LOWER_KB} KiB, mem_upper {mem_upper_kb(ram_size)} KiB")
    notes.append(f"command line at {tail.cmdline_addr:#x}: {tail.cmdline.decode('utf-8', 'replace')!r}; "
                 f"boot loader name at {tail.loader_addr:#x}")
    for k, (start, body) in enumerate(tail.modules):
        notes.append(f"module {k} at {hex_range(start, start + len(body)) if body else hex(start)}: "
                     f"{modules[k]!r} ({len(body)} bytes)")
    return LoadedImage(kind="multiboot", path=path, chunks=chunks, entry=kernel.entry,
                       registers=multiboot_registers(kernel.entry, MBI_ADDR, MULTIBOOT_BOOTLOADER_MAGIC),
                       real_mode=False, symbols=kernel.symbols,
                       notes=[f"Multiboot {kernel.fmt} kernel {src!r}"] + notes)


def _checked_header(data: bytes, src: str, ram_size: int) -> tuple[MultibootHeader, list[str]]:
    """The header QEMU would find, refused when it asks for what nobody provides; its notes."""
    hdr = find_header(data)
    if data[:4] == ELF_MAGIC and not (hdr is not None and hdr.flags & MBH_AOUT_KLUDGE):
        _check_elf_header(data, src)  # a wrong ELF says more than a missing header
    if hdr is None:
        raise _no_header(data, src)
    notes: list[str] = [f"Multiboot header at file offset {hdr.offset:#x}, flags {hdr.flags:#x}"]
    unknown = hdr.flags & MBH_REQUIRED_MASK & ~MBH_SUPPORTED_REQUIRED
    if unknown:
        bits = ", ".join(str(b) for b in range(16) if unknown >> b & 1)
        raise ImageError(f"{src}: Multiboot header flags {hdr.flags:#x} require unsupported "
                         f"features (bit {bits}); known required bits are 0, 1 and 2")
    if hdr.flags & MBH_VIDEO_MODE:
        notes.append("flag 2 (video mode) requested: ignored, no VBE/framebuffer information is "
                     "passed (QEMU: \"multiboot knows VBE. we don't\")")
    if ram_size < MIN_RAM:
        raise ImageError(f"{src}: a Multiboot kernel needs at least 2 MiB of guest RAM "
                         f"(have {ram_size:#x} bytes)")
    return hdr, notes


def _no_header(data: bytes, src: str) -> ImageError:
    bad = find_bad_checksum(data)
    if bad is not None:
        off, flags, checksum = bad
        want = (-(MULTIBOOT_HEADER_MAGIC + flags)) & M32
        return ImageError(f"{src}: Multiboot header at offset {off:#x} has a bad checksum "
                          f"({checksum:#010x}; flags {flags:#x} need {want:#010x})")
    return ImageError(f"{src}: no Multiboot header in the first 8 KiB (magic 0x1BADB002 with "
                      f"a valid checksum, 4-byte aligned, at an offset below {HEADER_SEARCH_LIMIT})")


def _kernel(data: bytes, src: str, hdr: MultibootHeader, notes: list[str]) -> _Kernel:
    """The segments and entry, from the a.out kludge fields (flag 16) or the ELF headers."""
    if hdr.flags & MBH_AOUT_KLUDGE:
        segments, entry, more = _aout(data, src, hdr)
        kernel = _Kernel("a.out kludge", segments, entry, {})
    else:
        if data[:4] != ELF_MAGIC:
            raise ImageError(f"{src}: not an ELF file, and its Multiboot header has no load "
                             f"addresses (flag 16 clear), so it cannot be placed")
        segments, entry, symbols, more = _parse_elf(data, src)
        kernel = _Kernel("ELF", segments, entry, symbols)
    notes += more
    return kernel


def _check_block(kernel: _Kernel, src: str, ram_size: int) -> None:
    """Refuse a kernel whose block QEMU would misplace, or whose entry lies outside it."""
    low, high = kernel.low, kernel.high
    ram_end = ram_below_4g(ram_size)
    if high - low > ram_end:
        raise ImageError(f"{src}: image spans {hex_range(low, high)} ({high - low:#x} bytes), "
                         f"larger than guest RAM ({ram_end:#x} bytes below 4 GiB)")
    loaded = kernel.loaded
    if not loaded:
        raise ImageError(f"{src}: every loadable segment of the image is empty")
    if high > max(s.end for s in loaded):
        empty = next(s for s in kernel.segments if not s.memsz and s.paddr == high)
        raise ImageError(f"{src}: empty ELF segment {empty.index} at {high:#x} lies past the last "
                         f"loaded byte (QEMU refuses it: \"Error while fetching elf kernel from rom\")")
    _check_segments(kernel, src, ram_size)
    if low < BIOS_AREA_START and high > LOW_HOLE_START:
        raise ImageError(f"{src}: image spans {hex_range(low, high)}, across the legacy VGA/option-ROM "
                         f"hole {hex_range(LOW_HOLE_START, BIOS_AREA_START)} (QEMU copies a Multiboot "
                         f"kernel as one block from its lowest to its highest address)")
    if not any(s.paddr <= kernel.entry < s.end for s in loaded):
        raise ImageError(f"{src}: entry point {kernel.entry:#x} is outside every loaded segment")


def _check_segments(kernel: _Kernel, src: str, ram_size: int) -> None:
    """Each segment's file bytes and zero fill in RAM, and no two segments overlapping."""
    loaded = kernel.loaded
    for s in loaded:
        what = kernel.what(s)
        file_end = s.paddr + len(s.data)
        if s.data:
            check_placement(src, what, s.paddr, file_end, ram_size)
        if s.memsz > len(s.data):
            check_placement(src, f"zero-filled (bss) part of {what}", file_end, s.end, ram_size)
    ordered = sorted(loaded, key=lambda s: (s.paddr, s.end))
    for a, b in zip(ordered, ordered[1:], strict=False):
        if b.paddr < a.end:
            raise ImageError(f"{src}: ELF segments {a.index} ({hex_range(a.paddr, a.end)}) and "
                             f"{b.index} ({hex_range(b.paddr, b.end)}) overlap")


def _region_end(low: int, ram_size: int) -> int:
    """The end of the RAM range the whole block (kernel, info, modules) must stay inside."""
    if low >= BIOS_AREA_START:
        return ram_below_4g(ram_size)
    return LOW_HOLE_START


def _read_modules(modules: list[str], src: str) -> list[_Module]:
    out = []
    for m in modules:
        string = _encode(m, "a module string", src)
        mpath = m.split(" ", 1)[0]
        if not mpath:
            raise ImageError(f"{src}: module {m!r} has no file name")
        out.append(_Module(m, string, read_file(mpath, "module")))
    return out


def _info_tail(kernel: _Kernel, src: str, region_end: int, image_name: str, cmdline: str | None,
               modules: list[str]) -> _InfoTail:
    """Lay out the module records and strings after the kernel, and the modules after them,
    at QEMU's addresses (see the module docstring)."""
    name_b = _encode(image_name, "the image name", src)
    cmd_b = _encode(cmdline if cmdline is not None else "", "the command line", src)
    mods = _read_modules(modules, src)
    n = len(mods)
    # QEMU reserves room for the raw -initrd option text (commas inside a name doubled).
    initrd_len = len(",".join(m.replace(",", ",,") for m in modules).encode("utf-8", "surrogateescape"))
    cmdline_len = len(name_b) + 1 + len(cmd_b) + 1 + (initrd_len + 1 if n else 0)
    loader_b = BOOTLOADER_NAME.encode()

    info_off = _align_up(kernel.high - kernel.low)  # offset_mbinfo
    x = kernel.low + info_off                       # module records
    loader_addr = x + MB_MOD_SIZE * n + cmdline_len
    tail = bytearray(MB_MOD_SIZE * n + cmdline_len + len(loader_b) + 1)
    if x + len(tail) > region_end:
        raise ImageError(f"{src}: the Multiboot info after the image would end at "
                         f"{x + len(tail):#x}, past the end of its RAM region ({region_end:#x})")
    buf_size = _align_up(info_off + len(tail))      # mb_buf_size
    str_off, placed = _place_modules(tail, x, kernel.low, buf_size, mods, src, region_end)
    kcmd = name_b + b" " + cmd_b
    tail[str_off:str_off + len(kcmd)] = kcmd
    tail[loader_addr - x:loader_addr - x + len(loader_b)] = loader_b
    return _InfoTail(x, tail, x + str_off, kcmd, loader_addr, placed)


def _place_modules(tail: bytearray, x: int, low: int, buf_size: int, mods: list[_Module], src: str,
                   region_end: int) -> tuple[int, list[tuple[int, bytes]]]:
    """Write each module's record and string into ``tail``; return the offset of the next
    string and where each module's file goes (page aligned relative to ``low``)."""
    str_off = MB_MOD_SIZE * len(mods)
    placed: list[tuple[int, bytes]] = []
    for k, mod in enumerate(mods):
        s_addr = x + str_off
        tail[str_off:str_off + len(mod.string)] = mod.string
        str_off += len(mod.string) + 1
        start = low + buf_size
        buf_size = _align_up(buf_size + len(mod.body))
        if start + len(mod.body) > region_end:
            raise ImageError(f"{src}: modules do not fit in guest RAM: module {k} "
                             f"({mod.text.split(' ', 1)[0]}, {len(mod.body)} bytes) would end at "
                             f"{start + len(mod.body):#x}, RAM region ends at {region_end:#x}")
        struct.pack_into("<4I", tail, MB_MOD_SIZE * k, start, start + len(mod.body), s_addr, 0)
        placed.append((start, mod.body))
    return str_off, placed


def _info_structure(ram_size: int, tail: _InfoTail, mmap_length: int) -> bytes:
    """The 88-byte Multiboot information structure at ``MBI_ADDR``."""
    mbi = bytearray(MBI_SIZE)
    for offset, value in ((MBI_FLAGS_OFF, MBI_FLAGS), (MBI_MEM_LOWER, MEM_LOWER_KB),
                          (MBI_MEM_UPPER, mem_upper_kb(ram_size)), (MBI_BOOT_DEVICE, BOOT_DEVICE),
                          (MBI_CMDLINE, tail.cmdline_addr), (MBI_MODS_COUNT, len(tail.modules)),
                          (MBI_MODS_ADDR, tail.addr), (MBI_MMAP_LENGTH, mmap_length),
                          (MBI_MMAP_ADDR, MMAP_ADDR), (MBI_BOOT_LOADER_NAME, tail.loader_addr)):
        struct.pack_into("<I", mbi, offset, value)
    return bytes(mbi)


def _blob_end(kernel: _Kernel, tail: _InfoTail) -> int:
    """The end of QEMU's ``mb_buf``: kernel, info tail and modules, each end page aligned
    relative to the kernel's lowest address."""
    ends = [kernel.high, tail.addr + len(tail.data)] + [start + len(body) for start, body in tail.modules]
    return kernel.low + _align_up(max(ends) - kernel.low)


def _outside(start: int, data: bytes, lo: int, hi: int) -> list[tuple[int, bytes]]:
    """The parts of the chunk ``data`` at ``start`` that lie outside [lo, hi)."""
    end = start + len(data)
    parts = []
    if start < lo:
        parts.append((start, data[:min(end, lo) - start]))
    if end > hi:
        first = max(start, hi)
        parts.append((first, data[first - start:]))
    return [p for p in parts if p[1]]


def _kernel_chunks(kernel: _Kernel) -> tuple[list[tuple[int, bytes]], list[str]]:
    """Each segment's file bytes, then its zero fill as its own chunk, by address; a note each."""
    chunks: list[tuple[int, bytes]] = []
    notes: list[str] = []
    for s in sorted(kernel.loaded, key=lambda s: s.paddr):
        bss = s.memsz - len(s.data)
        if s.data:
            chunks.append((s.paddr, s.data))
        if bss:
            chunks.append((s.paddr + len(s.data), bytes(bss)))
        virt = f" (virtual {s.vaddr:#x})" if s.vaddr != s.paddr else ""
        notes.append(f"{kernel.what(s)}: {hex_range(s.paddr, s.end)}{virt}, {len(s.data):#x} bytes from the file"
                     + (f", {bss:#x} zeroed" if bss else ""))
    return chunks, notes
