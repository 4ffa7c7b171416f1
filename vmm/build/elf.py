"""Write ELF32 executables that QEMU's ``-kernel`` and our loader both accept.

A built-in guest is assembled as one flat blob whose first bytes hold the Multiboot
header; this module wraps such blobs in the smallest valid ELF32 file: an ELF header,
one PT_LOAD program header per segment, and section headers for ``.text``/``.bss`` plus
a ``.symtab`` so that gdb can set breakpoints on the guest's labels.

Layout of the file produced::

    ELF header (52) | program headers (32 each) | segment data, 4 KiB aligned |
    .symtab | .strtab | .shstrtab | section headers (40 each)
"""
from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

ELFCLASS32, ELFDATA2LSB, EV_CURRENT = 1, 1, 1
ET_EXEC, EM_386 = 2, 3
PT_LOAD, PT_NOTE = 1, 4
PF_X, PF_W, PF_R = 1, 2, 4
SHT_NULL, SHT_PROGBITS, SHT_SYMTAB, SHT_STRTAB, SHT_NOBITS = 0, 1, 2, 3, 8
SHF_WRITE, SHF_ALLOC, SHF_EXECINSTR = 1, 2, 4
STB_GLOBAL, STT_NOTYPE, STT_FUNC = 1, 0, 2
PAGE = 0x1000


@dataclass
class Segment:
    """One loadable segment: ``data`` at ``paddr`` (== vaddr), then zeroes up to ``memsz``."""

    paddr: int
    data: bytes
    memsz: int | None = None
    flags: int = PF_R | PF_W | PF_X
    vaddr: int | None = None

    @property
    def size_in_memory(self) -> int:
        return max(len(self.data), self.memsz or 0)


def _align(n: int, a: int) -> int:
    return (n + a - 1) & ~(a - 1)


class _StrTab:
    def __init__(self) -> None:
        self.data = bytearray(b"\0")

    def add(self, s: str) -> int:
        off = len(self.data)
        self.data += s.encode() + b"\0"
        return off


def write_elf32(segments: list[Segment], entry: int, symbols: dict[str, int] | None = None,
                notes: Sequence[tuple[int, int]] = (), load_headers: bool = False) -> bytes:
    """Return the bytes of an i386 ET_EXEC ELF holding ``segments``, entering at ``entry``.

    ``symbols`` (name -> address) go into ``.symtab`` as global symbols of the section that
    contains them, so debuggers can resolve labels. ``notes`` lists ``(address, size)``
    ranges of ELF notes inside the segments' file bytes (a PV kernel's Xen notes), each
    described by a PT_NOTE program header after the PT_LOAD ones. ``load_headers`` adds a
    first, read-only PT_LOAD from file offset 0 holding the ELF and program headers, one
    page below the first segment: what ``ld -Ttext ADDR`` without a linker script makes.
    """
    if not segments:
        raise ValueError("an ELF image needs at least one segment")
    symbols = symbols or {}
    nseg = len(segments) + bool(load_headers)
    nphdr = nseg + len(notes)
    phoff = 52
    offset = _align(phoff + 32 * nphdr, PAGE)
    placed: list[tuple[Segment, int]] = []
    for seg in segments:
        # p_offset must be congruent to p_vaddr modulo the page size.
        vaddr = seg.paddr if seg.vaddr is None else seg.vaddr
        offset += (vaddr - offset) % PAGE
        placed.append((seg, offset))
        offset += len(seg.data)

    shstr, strtab = _StrTab(), _StrTab()
    # Sections: null, one per segment, .symtab, .strtab, .shstrtab
    sections: list[tuple] = [(0, SHT_NULL, 0, 0, 0, 0, 0, 0, 0, 0)]
    for i, (seg, off) in enumerate(placed):
        vaddr = seg.paddr if seg.vaddr is None else seg.vaddr
        name_off = shstr.add(".text" if i == 0 else f".data{i}")
        flags = SHF_ALLOC | (SHF_EXECINSTR if seg.flags & PF_X else 0) | (SHF_WRITE if seg.flags & PF_W else 0)
        sections.append((name_off, SHT_PROGBITS, flags, vaddr, off, len(seg.data), 0, 0, 16, 0))
        bss = seg.size_in_memory - len(seg.data)
        if bss:
            name_off = shstr.add(".bss" if i == 0 else f".bss{i}")
            sections.append((name_off, SHT_NOBITS, SHF_ALLOC | SHF_WRITE, vaddr + len(seg.data),
                             off + len(seg.data), bss, 0, 0, 16, 0))

    def section_of(addr: int) -> int:
        for idx, s in enumerate(sections[1:], start=1):
            if s[3] <= addr < s[3] + max(s[5], 1):
                return idx
        return 0xFFF1  # SHN_ABS

    symtab = bytearray(16)  # the null symbol
    for name, addr in sorted(symbols.items(), key=lambda kv: (kv[1], kv[0])):
        symtab += struct.pack("<IIIBBH", strtab.add(name), addr & 0xFFFFFFFF, 0,
                              (STB_GLOBAL << 4) | STT_NOTYPE, 0, section_of(addr))
    symtab_off = offset
    strtab_off = symtab_off + len(symtab)
    nsec_before = len(sections)
    sections.append((shstr.add(".symtab"), SHT_SYMTAB, 0, 0, symtab_off, len(symtab),
                     nsec_before + 1, 1, 4, 16))
    sections.append((shstr.add(".strtab"), SHT_STRTAB, 0, 0, strtab_off, len(strtab.data), 0, 0, 1, 0))
    shstr_name = shstr.add(".shstrtab")
    shstr_off = strtab_off + len(strtab.data)
    sections.append((shstr_name, SHT_STRTAB, 0, 0, shstr_off, len(shstr.data), 0, 0, 1, 0))
    shoff = _align(shstr_off + len(shstr.data), 4)

    out = bytearray(shoff + 40 * len(sections))
    ident = b"\x7fELF" + bytes([ELFCLASS32, ELFDATA2LSB, EV_CURRENT]) + bytes(9)
    struct.pack_into("<16sHHIIIIIHHHHHH", out, 0, ident, ET_EXEC, EM_386, EV_CURRENT, entry,
                     phoff, shoff, 0, 52, 32, nphdr, 40, len(sections), len(sections) - 1)
    first = 0
    if load_headers:
        base = ((segments[0].paddr if segments[0].vaddr is None else segments[0].vaddr) & ~(PAGE - 1)) - PAGE
        size = phoff + 32 * nphdr
        struct.pack_into("<IIIIIIII", out, phoff, PT_LOAD, 0, base, base, size, size, PF_R, PAGE)
        first = 1
    for i, (seg, off) in enumerate(placed, start=first):
        vaddr = seg.paddr if seg.vaddr is None else seg.vaddr
        struct.pack_into("<IIIIIIII", out, phoff + 32 * i, PT_LOAD, off, vaddr, seg.paddr,
                         len(seg.data), seg.size_in_memory, seg.flags, PAGE)
        out[off:off + len(seg.data)] = seg.data
    for i, (address, size) in enumerate(notes):
        for seg, off in placed:
            vaddr = seg.paddr if seg.vaddr is None else seg.vaddr
            if vaddr <= address and address + size <= vaddr + len(seg.data):
                struct.pack_into("<IIIIIIII", out, phoff + 32 * (nseg + i), PT_NOTE, off + address - vaddr,
                                 address, address, size, size, PF_R, 4)
                break
        else:
            raise ValueError(f"note at {address:#x} ({size} bytes) lies outside the segments' file bytes")
    out[symtab_off:symtab_off + len(symtab)] = symtab
    out[strtab_off:strtab_off + len(strtab.data)] = strtab.data
    out[shstr_off:shstr_off + len(shstr.data)] = shstr.data
    for i, s in enumerate(sections):
        struct.pack_into("<IIIIIIIIII", out, shoff + 40 * i, *s)
    return bytes(out)


MULTIBOOT_MAGIC = 0x1BADB002


def multiboot_header(flags: int = 0x00000003) -> bytes:
    """The 12-byte Multiboot v1 header: magic, flags, checksum (flags: page-align, mem info)."""
    return struct.pack("<III", MULTIBOOT_MAGIC, flags, (-(MULTIBOOT_MAGIC + flags)) & 0xFFFFFFFF)
