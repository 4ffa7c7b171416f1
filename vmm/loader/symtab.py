"""ELF32 symbol tables: the names gdb breakpoints and ``vmm walk --at`` resolve.

Multiboot and Xen PV kernels read their ``.symtab`` the same way. Like QEMU, a loader
that finds a malformed table loses only the symbols: the image still loads, with a note.
"""
from __future__ import annotations

import struct

SHT_SYMTAB = 2
SHN_UNDEF, SHN_LORESERVE, SHN_ABS = 0, 0xFF00, 0xFFF1
STT_NOTYPE, STT_OBJECT, STT_FUNC = 0, 1, 2
STB_LOCAL = 0
SHDR_SIZE = 40      # Elf32_Shdr
SYM_SIZE = 16       # Elf32_Sym
NAMED_TYPES = (STT_NOTYPE, STT_OBJECT, STT_FUNC)


class _Unreadable(Exception):
    """A table that cannot be read: its note says which."""


def parse_symbols(data: bytes, shoff: int, shentsize: int, shnum: int) -> tuple[dict[str, int], str | None]:
    """Named NOTYPE/OBJECT/FUNC symbols of every SHT_SYMTAB (a global wins over a local of
    the same name), and a note when a table was unreadable (then no symbol at all)."""
    if shnum == 0 or shoff == 0:
        return {}, None
    if shentsize != SHDR_SIZE or shoff + SHDR_SIZE * shnum > len(data):
        return {}, "section headers unreadable: symbols ignored"
    shdrs = [struct.unpack_from("<10I", data, shoff + SHDR_SIZE * i) for i in range(shnum)]
    symbols: dict[str, int] = {}
    local: dict[str, int] = {}
    try:
        for sh in shdrs:
            if sh[1] == SHT_SYMTAB:
                _read_table(data, sh, shdrs, symbols, local)
    except _Unreadable as err:
        return {}, str(err)
    for name, value in local.items():
        symbols.setdefault(name, value)
    return symbols, None


def _read_table(data: bytes, sh: tuple[int, ...], shdrs: list[tuple[int, ...]], symbols: dict[str, int],
                local: dict[str, int]) -> None:
    _, _, _, _, off, size, link, _, _, entsize = sh
    if entsize not in (0, SYM_SIZE) or off + size > len(data) or link >= len(shdrs):
        raise _Unreadable("symbol table unreadable: symbols ignored")
    str_off, str_size = shdrs[link][4], shdrs[link][5]
    if str_off + str_size > len(data):
        raise _Unreadable("symbol string table unreadable: symbols ignored")
    strtab = data[str_off:str_off + str_size]
    for k in range(size // SYM_SIZE):
        st_name, st_value, _size, st_info, _other, st_shndx = struct.unpack_from(
            "<IIIBBH", data, off + SYM_SIZE * k)
        name = _symbol_name(strtab, st_name, st_info, st_shndx)
        if name:
            table = local if st_info >> 4 == STB_LOCAL else symbols
            table.setdefault(name, st_value)


def _symbol_name(strtab: bytes, st_name: int, st_info: int, st_shndx: int) -> str | None:
    """The name of a symbol worth keeping (defined, named, of a named type), else None."""
    if st_shndx == SHN_UNDEF or (st_info & 0xF) not in NAMED_TYPES:
        return None
    if st_shndx >= SHN_LORESERVE and st_shndx != SHN_ABS:
        return None
    if not 0 < st_name < len(strtab):
        return None
    end = strtab.find(b"\0", st_name)
    return strtab[st_name:end if end != -1 else len(strtab)].decode("utf-8", "replace") or None
