"""Xen PV kernels: an ELF32 image that names its needs in Xen ELF notes.

A PV kernel is not entered by a boot loader but built into a domain by the hypervisor's
domain builder (README, "The PV boot protocol"). The image says how, in notes of type
``XEN_ELFNOTE_*`` with the name ``"Xen"`` (``xen/include/public/elfnote.h``), found in
PT_NOTE program headers:

====================  ===  ==========================================================
note                  n    meaning here
====================  ===  ==========================================================
ENTRY                 1    virtual entry point (default: ``e_entry``)
HYPERCALL_PAGE        2    virtual address of a page the builder fills with stubs
VIRT_BASE             3    virtual address of pseudo-physical 0 (default 0)
PADDR_OFFSET          4    accepted; segments load at ``p_vaddr - VIRT_BASE``
XEN_VERSION           5    must start with ``xen-3.0`` when present
GUEST_OS, LOADER      6,8  informational strings
====================  ===  ==========================================================

Segments are loaded at pseudo-physical ``p_vaddr - VIRT_BASE`` (zero fill up to
``p_memsz``); an optional module follows the image, page-aligned. Any byte string gives a
:class:`XenImage` or an :class:`~vmm.loader.image.ImageError`, never another exception.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field

from ..pv import abi
from .plan import PAGE, ImageError, LoadedImage, check_placement, read_file
from .symtab import parse_symbols  # the same .symtab reader as Multiboot: gdb breakpoints on PV guests

ELF_MAGIC = b"\x7fELF"
ELFCLASS32, ELFDATA2LSB = 1, 1
ET_EXEC, EM_386 = 2, 3
ELF32_EHDR_SIZE, ELF32_PHDR_SIZE = 52, 32
PT_LOAD, PT_NOTE = 1, 4
MAX_SEGMENTS = 64


@dataclass
class XenImage(LoadedImage):
    """A loaded PV kernel: the plan, plus what its notes and the user asked for."""

    xen_notes: dict[int, int | bytes] = field(default_factory=dict)
    virt_base: int = 0
    hypercall_page: int | None = None       # virtual address, from XEN_ELFNOTE_HYPERCALL_PAGE
    cmdline: bytes = b""
    module: tuple[int, int] | None = None  # pseudo-physical start, length

    def image_end(self) -> int:
        """One past the highest pseudo-physical byte of the image and module."""
        return self.memory_span()[1]


def _notes(data: bytes, offset: int, size: int, src: str) -> dict[int, int | bytes]:
    found: dict[int, int | bytes] = {}
    end = offset + size
    if end > len(data):
        raise ImageError(f"{src}: PT_NOTE at file offset {offset:#x} runs past the end of the file")
    while offset + 12 <= end:
        namesz, descsz, kind = struct.unpack_from("<III", data, offset)
        name_at = offset + 12
        desc_at = name_at + ((namesz + 3) & ~3)
        offset = desc_at + ((descsz + 3) & ~3)
        if offset > end:
            raise ImageError(f"{src}: truncated ELF note (type {kind})")
        if data[name_at:name_at + namesz].rstrip(b"\0") != b"Xen":
            continue
        desc = data[desc_at:desc_at + descsz]
        if kind in (abi.XEN_ELFNOTE_GUEST_OS, abi.XEN_ELFNOTE_XEN_VERSION, abi.XEN_ELFNOTE_LOADER,
                    abi.XEN_ELFNOTE_FEATURES, abi.XEN_ELFNOTE_PAE_MODE):
            found[kind] = desc.rstrip(b"\0")
        elif descsz in (4, 8):
            found[kind] = int.from_bytes(desc, "little")
        else:
            raise ImageError(f"{src}: Xen note {kind} has a {descsz}-byte value (expected 4 or 8)")
    return found


def load_xen(data_or_path, *, ram_size: int, cmdline: str | None = None, modules=(),
             image_name: str | None = None) -> XenImage:
    """Read a PV kernel and return its loading plan; raises ImageError."""
    if isinstance(data_or_path, (bytes, bytearray, memoryview)):
        data, path = bytes(data_or_path), None
    else:
        path = str(data_or_path)
        data = read_file(path, "image")
    src = path or image_name or "image"
    e_entry, phdrs = _program_headers(data, src)
    notes = _all_notes(data, phdrs, src)
    virt_base = _number(notes, abi.XEN_ELFNOTE_VIRT_BASE) or 0
    chunks = _segments(data, phdrs, virt_base, src, ram_size)
    note_entry = _number(notes, abi.XEN_ELFNOTE_ENTRY)
    entry = e_entry if note_entry is None else note_entry
    lo, hi = min(a for a, _ in chunks), max(a + len(b) for a, b in chunks)
    if not lo <= entry - virt_base < hi:
        raise ImageError(f"{src}: entry {entry:#x} lies outside the loaded segments")
    page = _number(notes, abi.XEN_ELFNOTE_HYPERCALL_PAGE)
    if page is not None and (page & (PAGE - 1) or not lo <= page - virt_base < hi):
        raise ImageError(f"{src}: hypercall page {page:#x} is not a page inside the image")
    line = (cmdline or "").encode()
    if len(line) >= abi.MAX_GUEST_CMDLINE:
        raise ImageError(f"{src}: command line longer than {abi.MAX_GUEST_CMDLINE - 1} bytes")
    module = _module(list(modules or ()), hi, src, ram_size)
    if module is not None:
        chunks.append(module)
    e_shoff, = struct.unpack_from("<I", data, 32)
    e_shentsize, e_shnum = struct.unpack_from("<HH", data, 46)
    symbols, _ = parse_symbols(data, e_shoff, e_shentsize, e_shnum)
    notes_text = [f"Xen PV kernel {src!r}: virt base {virt_base:#x}, entry {entry:#x}"
                  + (f", hypercall page {page:#x}" if page is not None else ", no hypercall page")]
    return XenImage(kind="xen", path=path, chunks=chunks, entry=entry, registers={}, real_mode=False,
                    symbols=symbols, notes=notes_text, xen_notes=notes, virt_base=virt_base, hypercall_page=page,
                    cmdline=line, module=(module[0], len(module[1])) if module is not None else None)


def _number(notes: dict[int, int | bytes], kind: int) -> int | None:
    """A numeric note (only the string notes are bytes), or None when absent."""
    value = notes.get(kind)
    return value if isinstance(value, int) else None


def _program_headers(data: bytes, src: str) -> tuple[int, list[tuple[int, ...]]]:
    """``e_entry`` and the program headers of an ELF32 little-endian i386 executable."""
    if len(data) < ELF32_EHDR_SIZE or data[:4] != ELF_MAGIC:
        raise ImageError(f"{src}: a PV kernel must be an ELF file (no ELF magic)")
    if data[4] != ELFCLASS32 or data[5] != ELFDATA2LSB:
        raise ImageError(f"{src}: not a 32-bit little-endian ELF (x86_32 PV kernels only)")
    e_type, e_machine, _v, e_entry, e_phoff, _sh, _fl, _eh, e_phentsize, e_phnum = \
        struct.unpack_from("<HHIIIIIHHH", data, 16)
    if e_machine != EM_386 or e_type != ET_EXEC:
        raise ImageError(f"{src}: not an i386 executable (e_machine {e_machine}, e_type {e_type})")
    if (e_phentsize != ELF32_PHDR_SIZE or not 0 < e_phnum <= MAX_SEGMENTS
            or e_phoff + ELF32_PHDR_SIZE * e_phnum > len(data)):
        raise ImageError(f"{src}: bad program header table ({e_phnum} entries of {e_phentsize} bytes)")
    return e_entry, [struct.unpack_from("<IIIIIIII", data, e_phoff + ELF32_PHDR_SIZE * i)
                     for i in range(e_phnum)]


def _all_notes(data: bytes, phdrs: list[tuple[int, ...]], src: str) -> dict[int, int | bytes]:
    """The Xen notes of every PT_NOTE, refused when there is none or the ABI is not xen-3.0."""
    notes: dict[int, int | bytes] = {}
    for p_type, off, _va, _pa, filesz, *_ in phdrs:
        if p_type == PT_NOTE:
            notes.update(_notes(data, off, filesz, src))
    if not notes:
        raise ImageError(f"{src}: no Xen ELF notes (XEN_ELFNOTE_*): not a PV kernel; "
                         "boot it in another mode, or build it with the pv flavour")
    version = notes.get(abi.XEN_ELFNOTE_XEN_VERSION)
    if isinstance(version, bytes) and not version.startswith(b"xen-3.0"):
        raise ImageError(f"{src}: XEN_ELFNOTE_XEN_VERSION {version!r}: only the xen-3.0 ABI is offered")
    return notes


def _segments(data: bytes, phdrs: list[tuple[int, ...]], virt_base: int, src: str,
              ram_size: int) -> list[tuple[int, bytes]]:
    """Each non-empty PT_LOAD at pseudo-physical ``p_vaddr - VIRT_BASE``, then its zero fill."""
    chunks: list[tuple[int, bytes]] = []
    for p_type, off, vaddr, _pa, filesz, memsz, _f, _a in phdrs:
        if p_type != PT_LOAD or not memsz:
            continue
        if filesz > memsz or off + filesz > len(data):
            raise ImageError(f"{src}: segment at {vaddr:#x} has bad sizes (file {filesz}, memory {memsz})")
        start = vaddr - virt_base
        check_placement(src, f"segment at virtual {vaddr:#x}", start, start + memsz, ram_size)
        chunks.append((start, data[off:off + filesz]))
        if memsz > filesz:
            chunks.append((start + filesz, bytes(memsz - filesz)))
    if not chunks:
        raise ImageError(f"{src}: no loadable segment")
    return chunks


def _module(modules: list[str], image_end: int, src: str, ram_size: int) -> tuple[int, bytes] | None:
    """The one module a PV kernel may take (start_info.mod_start), page-aligned after the image."""
    if len(modules) > 1:
        raise ImageError(f"{src}: a PV kernel takes one module (start_info.mod_start), not {len(modules)}")
    if not modules:
        return None
    blob = read_file(modules[0].split()[0], "module")
    start = (image_end + PAGE - 1) & ~(PAGE - 1)
    check_placement(src, "module", start, start + len(blob), ram_size)
    return start, blob


def xen_note(kind: int, desc: int | bytes) -> bytes:
    """One ELF note named "Xen" (a number is stored as 4 bytes): for building PV images."""
    if isinstance(desc, int):
        desc = struct.pack("<I", desc)
    pad = lambda b: b + bytes(-len(b) % 4)  # noqa: E731
    return struct.pack("<III", 4, len(desc), kind) + b"Xen\0" + pad(desc)
