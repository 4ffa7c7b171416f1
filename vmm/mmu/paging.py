"""Guest paging walkers: what the MMU does on a TLB miss, one paging-structure read at a time.

One walker (:class:`GuestWalker`) with one loop over levels, parameterised by the paging
format (:class:`PagingFormat`), chosen from CR0.PG, CR4.PAE and EFER.LME/LMA by
:func:`paging_format` (SDM vol. 3 §4.1). ``MAXPHYADDR`` (M below) is 36 unless the walker
is built with another value.

32-bit paging (§4.3), 4-byte entries, CR3 bits 31:12 locate the page directory::

    linear  31:22 PDE index | 21:12 PTE index | 11:0 offset   (4 MiB page: 21:0 offset)
    PDE/PTE bit 0 P        bit 1 R/W      bit 2 U/S     bit 3 PWT    bit 4 PCD
            bit 5 A        bit 6 D (leaf) bit 7 PS (PDE, honoured when CR4.PSE=1;
            PAT in a PTE)  bit 8 G (leaf) bits 11:9 ignored
            bits 31:12 page table / 4 KiB frame
    4 MiB PDE: bits 31:22 frame 31:22, bits (M-20):13 frame (M-1):32 (PSE-36),
            bit 12 PAT, bits 21:(M-19) reserved (-> #PF with RSVD)

PAE paging (§4.4), 8-byte entries; CR3 bits 31:5 locate a 4-entry PDPT whose entries
behave like registers (loaded at MOV CR3 on hardware: pass them as ``pdptes=``, or let
the walker read them each walk under the tag "PDPTE", as QEMU does)::

    linear  31:30 PDPTE | 29:21 PDE | 20:12 PTE | 11:0 offset  (2 MiB page: 20:0 offset)
    PDPTE   bit 0 P, bits 3/4 PWT/PCD, bits (M-1):12 page directory;
            reserved: bits 2:1, 8:5, 63:M (no R/W, U/S, A or XD here)
    PDE/PTE bits 0-8 as above (PS in a PDE: 2 MiB page, always honoured);
            bits (M-1):12 table / frame (2 MiB: (M-1):21, bit 12 PAT, 20:13 reserved);
            bits 62:M reserved; bit 63 XD if EFER.NXE=1, else reserved

4-level paging (§4.5, IA-32e), 8-byte entries, CR3 bits 51:12 locate the PML4::

    linear  47:39 PML4E | 38:30 PDPTE | 29:21 PDE | 20:12 PTE | 11:0 offset
    PML4E   bits 0-5 as above, bit 7 PS reserved
    PDPTE   PS=1: 1 GiB page, frame (M-1):30, bit 12 PAT, bits 29:13 reserved
    PDE     PS=1: 2 MiB page, frame (M-1):21, bit 12 PAT, bits 20:13 reserved
    all     bits 51:M reserved, bits 62:52 ignored, bit 63 XD if EFER.NXE=1 else reserved

Access rights (§4.6): U/S and R/W are ANDed over all levels (not the PAE PDPTEs); XD is
ORed. A user-mode access needs a user-mode address (U/S=1 everywhere); a user write
needs R/W=1; a supervisor write needs R/W=1 only when CR0.WP=1. Fetches fault on XD=1
when EFER.NXE=1 (PAE and 4-level only). SMEP (CR4.SMEP): a supervisor fetch from a
user-mode address faults. SMAP (CR4.SMAP): a supervisor data access to a user-mode
address faults unless EFLAGS.AC=1 (``ac=True``; implicit supervisor accesses, such as
descriptor-table reads at CPL3, must pass ``ac=False``).

Order of checks, as the processor does them: each entry as it is read (P=0: not-present
fault; a reserved bit set: RSVD fault), then the rights of the whole translation.

#PF error code (§4.7): bit 0 P (0 not present, 1 protection or reserved bit), bit 1 W/R
(the access was a write), bit 2 U/S (user-mode access), bit 3 RSVD, bit 4 I/D (an
instruction fetch, reported only when CR4.SMEP=1 or when PAE/4-level paging runs with
EFER.NXE=1). CR2 is the linear address.

Accessed and dirty flags (§4.8): when the access succeeds (and ``set_ad``), A is set in
every entry used (not in PAE PDPTEs) and D in the leaf for a write. Each update is
written as *value-as-read | flags*, only if that differs from the value read.

Every paging-structure read goes through :meth:`GuestWalker.read_entry` with the level
name ("PML4E", "PDPTE", "PDE", "PTE"), every A/D update through
:meth:`GuestWalker.write_entry`; a walk may be given another ``memory`` object with
those two methods (the 2-D walker translates each guest table address through EPT
there, see :mod:`vmm.mmu.nested`). Reads are counted per walker (``references`` and
``counts`` by level) and reported to the optional ``refs(level, address)`` callback, so a
walk's cost is the number of entries it read.

Not modelled: 5-level paging (CR4.LA57), protection keys (CR4.PKE), the canonical-address
check of 4-level paging (a non-canonical address is a #GP, which is the caller's), PAT
and memory types, global pages (the TLB is not here), CET shadow-stack accesses.

The entry and error-code bits are :class:`vmm.x86.PTE` and :class:`vmm.x86.PFError`.
"""
from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from ..x86 import CR0, CR4, EFER, PTE, GiB, KiB, MiB, PFError, bits
from ..x86.paging import (
    ADDRESS_MASK_32,
    ADDRESS_MASK_64,
    CR3_PD_MASK_32,
    CR3_PDPT_MASK_PAE,
    CR3_PML4_MASK,
    ENTRY_SIZE_32,
    ENTRY_SIZE_64,
    LARGE_PAGE_MASK_32,
    MAXPHYADDR,
    PAGE_MASK,
    PAGE_SHIFT,
    PAGE_SIZE,
    PDE_SHIFT_32,
    PDE_SHIFT_64,
    PDPTE_SHIFT,
    PML4E_SHIFT,
    PSE36_SHIFT,
    PTE_NAMES,
    PTE_SHIFT,
)

ENTRY_BIT_NAMES = PTE_NAMES

# Old spellings, still imported by vmm/modes and vmm/trace (their owners move to vmm.x86).
CR0_PG = CR0.PG

# Module names for the walk (a lookup on an enum class costs more than the test it serves).
_P, _RW, _US, _A, _D, _PS, _XD = PTE.P, PTE.RW, PTE.US, PTE.A, PTE.D, PTE.PS, PTE.XD
_PG, _WP = CR0.PG, CR0.WP
_PSE, _PAE, _SMEP, _SMAP = CR4.PSE, CR4.PAE, CR4.SMEP, CR4.SMAP
_LONG_MODE, _NXE = EFER.LME | EFER.LMA, EFER.NXE
_ERR_P, _ERR_WR, _ERR_US, _ERR_RSVD, _ERR_ID = PFError.P, PFError.WR, PFError.US, PFError.RSVD, PFError.ID

PSE36_ADDRESS_BITS = bits(20, PSE36_SHIFT)
"""The bits of a 4 MiB PDE that may hold physical-address bits 39:32 (PSE-36)."""
PSE36_ADDRESS_SHIFT = 32


class PageFault(Exception):
    """A guest page fault: CR2 (the linear address) and the SDM error code."""

    def __init__(self, address: int, error_code: int):
        super().__init__(f"#PF at {address:#010x} error code {error_code:#x} ({describe_error_code(error_code)})")
        self.address = address
        self.error_code = error_code


def describe_error_code(code: int) -> str:
    parts = ["protection" if code & _ERR_P else "not present", "write" if code & _ERR_WR else "read",
             "user" if code & _ERR_US else "supervisor"]
    if code & _ERR_RSVD:
        parts.append("reserved bit")
    if code & _ERR_ID:
        parts.append("instruction fetch")
    return ", ".join(parts)


@dataclass
class Translation:
    """The result of a walk: the guest-physical address and the rights of the mapping.

    ``writable``, ``executable`` and ``readable`` are the rights of the translation for
    the privilege of this access (CR0.WP, NX, SMEP, SMAP and AC taken into account);
    ``user`` is U/S ANDed over the levels. ``entries`` lists the entries used, top level
    first, as ``(level name, physical address, value as read)``.
    """

    linear: int
    physical: int
    writable: bool
    user: bool
    dirty: bool
    page_size: int
    entries: list[tuple[str, int, int]] = field(default_factory=list)
    executable: bool = True
    readable: bool = True
    format: str = "32-bit"

    @property
    def level_names(self) -> tuple[str, ...]:
        return tuple(name for name, _, _ in self.entries)


# -- paging formats --------------------------------------------------------------------------
@dataclass(frozen=True)
class Level:
    name: str
    shift: int          # lowest linear-address bit of this level's index
    index_bits: int
    large: int = 0      # page size an entry with PS=1 maps here (0: PS is not a page size)
    register: bool = False  # PAE PDPTE: no rights, no A flag
    index_mask: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "index_mask", (1 << self.index_bits) - 1)


@dataclass(frozen=True)
class PagingFormat:
    name: str
    entry_size: int
    levels: tuple[Level, ...]
    cr3_mask: int
    nx: bool            # has an XD bit (PAE, 4-level)
    linear_mask: int = ADDRESS_MASK_32

    @property
    def level_names(self) -> tuple[str, ...]:
        return tuple(level.name for level in self.levels)


PAGING_32 = PagingFormat("32-bit", ENTRY_SIZE_32,
                         (Level("PDE", PDE_SHIFT_32, 10, large=4 * MiB), Level("PTE", PTE_SHIFT, 10)),
                         cr3_mask=CR3_PD_MASK_32, nx=False)
PAGING_PAE = PagingFormat("PAE", ENTRY_SIZE_64,
                          (Level("PDPTE", PDPTE_SHIFT, 2, register=True), Level("PDE", PDE_SHIFT_64, 9, large=2 * MiB),
                           Level("PTE", PTE_SHIFT, 9)),
                          cr3_mask=CR3_PDPT_MASK_PAE, nx=True)
PAGING_4LEVEL = PagingFormat("4-level", ENTRY_SIZE_64,
                             (Level("PML4E", PML4E_SHIFT, 9), Level("PDPTE", PDPTE_SHIFT, 9, large=GiB),
                              Level("PDE", PDE_SHIFT_64, 9, large=2 * MiB), Level("PTE", PTE_SHIFT, 9)),
                             cr3_mask=CR3_PML4_MASK, nx=True, linear_mask=ADDRESS_MASK_64)
FORMATS = {f.name: f for f in (PAGING_32, PAGING_PAE, PAGING_4LEVEL)}


def paging_format(cr0: int, cr4: int, efer: int = 0) -> PagingFormat | None:
    """The paging format in use (SDM §4.1.1), or None when CR0.PG = 0.

    CR4.PAE = 0: 32-bit; CR4.PAE = 1 and IA32_EFER.LME = 0: PAE; LME = 1 (so LMA = 1
    once paging is on): 4-level. LA57 (5-level) is not modelled.
    """
    if not cr0 & _PG:
        return None
    if not cr4 & _PAE:
        return PAGING_32
    if efer & _LONG_MODE:
        return PAGING_4LEVEL
    return PAGING_PAE


class EntryMemory(Protocol):
    def read_entry(self, physical_address: int, size: int, level_name: str) -> int: ...

    def write_entry(self, physical_address: int, size: int, level_name: str, value: int) -> None: ...


_Leaf = tuple[list[tuple[str, int, int]], int, int, bool, bool, bool]
"""What the descent through the levels found: (entries read, frame, page size, R/W and U/S
ANDed over the levels, XD ORed). A plain tuple: it is built on every walk."""


class GuestWalker:
    """The guest page walker for all three formats (see the module docstring).

    ``read(physical_address, size) -> int`` and ``write(physical_address, size, value)``
    reach the memory the tables live in (guest-physical in ``native``; host-physical when
    a :class:`~vmm.mmu.nested.NestedWalker` hands them EPT-translated addresses).
    """

    def __init__(self, read: Callable[[int, int], int], write: Callable[[int, int, int], None], *,
                 maxphyaddr: int = MAXPHYADDR, refs: Callable[[str, int], None] | None = None):
        self.read = read
        self.write = write
        self.maxphyaddr = maxphyaddr
        self.refs = refs
        self.references = 0
        self.counts: Counter[str] = Counter()
        self._masks: dict[tuple[str, bool], tuple[tuple[int, int], ...]] = {}
        self._address_mask = bits(maxphyaddr - 1, PAGE_SHIFT)

    # -- the one place paging structures are read and written ---------------------------------
    def read_entry(self, physical_address: int, size: int, level_name: str) -> int:
        self.references += 1
        self.counts[level_name] += 1
        if self.refs is not None:
            self.refs(level_name, physical_address)
        return self.read(physical_address, size)

    def write_entry(self, physical_address: int, size: int, level_name: str, value: int) -> None:
        self.write(physical_address, size, value)

    # -- reserved bits --------------------------------------------------------------------------
    def reserved_masks(self, fmt: PagingFormat, nxe: bool) -> tuple[tuple[int, int], ...]:
        """Per level: (reserved bits of a present entry that references a table or a 4 KiB
        page, reserved bits of a present entry that maps a large page)."""
        key = (fmt.name, nxe)
        masks = self._masks.get(key)
        if masks is None:
            masks = self._masks[key] = self._compute_masks(fmt, nxe)
        return masks

    def _compute_masks(self, fmt: PagingFormat, nxe: bool) -> tuple[tuple[int, int], ...]:
        m = self.maxphyaddr
        if fmt is PAGING_32:
            # PSE-36: bits (M-20):13 hold address bits (M-1):32, bits 21:(M-19) are reserved.
            return ((0, bits(21, min(m, 40) - 19)), (0, 0))
        xd = 0 if nxe else _XD
        large_2m = bits(20, 13)   # a 2 MiB leaf: bit 12 is PAT, 20:13 must be 0
        if fmt is PAGING_PAE:
            high = bits(62, m) | xd
            return ((bits(2, 1) | bits(8, 5) | bits(63, m), 0),   # the PDPTE registers
                    (high, high | large_2m),
                    (high, 0))
        high = bits(51, m) | xd
        large_1g = bits(29, 13)
        return ((high | _PS, 0), (high, high | large_1g), (high, high | large_2m), (high, 0))

    def _large_frame(self, fmt: PagingFormat, value: int, page: int) -> int:
        if fmt is PAGING_32:   # 4 MiB: bits 31:22, and PSE-36's address bits 39:32 from bits 20:13
            high = (value & PSE36_ADDRESS_BITS) >> PSE36_SHIFT
            return (value & LARGE_PAGE_MASK_32) | high << PSE36_ADDRESS_SHIFT
        return value & self._address_mask & ~(page - 1)

    # -- PAE PDPTE registers ----------------------------------------------------------------
    def load_pdptes(self, cr3: int, memory: EntryMemory | None = None) -> tuple[int, int, int, int]:
        """Read the four PAE PDPTEs as MOV to CR3 does (tagged "PDPTE"). Check them with
        :func:`pdpte_reserved` (hardware raises #GP on a reserved bit)."""
        mem = self if memory is None else memory
        base = cr3 & PAGING_PAE.cr3_mask
        size = PAGING_PAE.entry_size
        return tuple(mem.read_entry(base + size * i, size, "PDPTE") for i in range(4))  # type: ignore[return-value]

    def pdpte_reserved(self, value: int) -> int:
        """The reserved bits set in a present PAE PDPTE (0 if none or not present)."""
        return value & self.reserved_masks(PAGING_PAE, False)[0][0] if value & _P else 0

    # -- the walk -----------------------------------------------------------------------------
    def walk(self, cr0: int, cr3: int, cr4: int, linear: int, *, write: bool, user: bool,
             fetch: bool = False, set_ad: bool = True, efer: int = 0, ac: bool = False,
             pdptes: tuple[int, ...] | None = None, memory: EntryMemory | None = None) -> Translation:
        """Translate ``linear`` for one access; raise :class:`PageFault` if it faults.

        ``write``/``fetch`` give the access type (neither: a data read), ``user`` its
        privilege (CPL3, not an implicit supervisor access), ``ac`` EFLAGS.AC for SMAP.
        With CR0.PG = 0 the address is returned unchanged (no entries, all rights).
        """
        if write and fetch:
            raise ValueError("an access is a read, a write or a fetch")
        fmt = paging_format(cr0, cr4, efer)
        if fmt is None:
            linear &= ADDRESS_MASK_32
            return Translation(linear, linear, True, True, True, 4 * KiB, [], format="none")
        mem = self if memory is None else memory
        nxe = fmt.nx and bool(efer & _NXE)
        smep = bool(cr4 & _SMEP)
        linear &= fmt.linear_mask
        # The error code's access bits; I/D only where the processor reports it (§4.7).
        access = (_ERR_WR if write else 0) | (_ERR_US if user else 0) | (_ERR_ID if fetch and (smep or nxe) else 0)
        entries, frame, page, rw, us, xd = self._descend(fmt, mem, cr3, cr4, linear, nxe, access, pdptes)

        readable, writable, executable = _rights(rw, us, xd, cr0, cr4, user=user, ac=ac, smep=smep)
        if not (executable if fetch else writable if write else readable):
            raise PageFault(linear, access | _ERR_P)

        leaf_value = entries[-1][2]
        if set_ad:
            leaf_value = self._set_accessed(fmt, mem, entries, write)
        return Translation(linear, frame | (linear & (page - 1)), writable, us, bool(leaf_value & _D),
                           page, entries, executable=executable, readable=readable, format=fmt.name)

    def _descend(self, fmt: PagingFormat, mem: EntryMemory, cr3: int, cr4: int, linear: int, nxe: bool,
                 access: int, pdptes: tuple[int, ...] | None) -> _Leaf:
        """Read one entry per level, top first, checking each as it is read (P, then
        reserved bits), until a leaf: a PTE, or a directory entry with PS = 1 where PS
        maps a page (always in PAE/4-level; with CR4.PSE in 32-bit paging)."""
        masks = self.reserved_masks(fmt, nxe)
        size = fmt.entry_size
        pse = fmt is not PAGING_32 or bool(cr4 & _PSE)
        frame_mask = PAGE_MASK if fmt is PAGING_32 else self._address_mask
        table = cr3 & fmt.cr3_mask
        anded = _RW | _US      # R/W and U/S of every level but the PAE PDPTE registers, ANDed
        ored = 0               # every entry ORed: its XD bit is the translation's
        entries: list[tuple[str, int, int]] = []
        for level, (table_reserved, large_reserved) in zip(fmt.levels, masks, strict=False):
            index = (linear >> level.shift) & level.index_mask
            addr = table + index * size
            if level.register and pdptes is not None:
                value = pdptes[index]
            else:
                value = mem.read_entry(addr, size, level.name)
            entries.append((level.name, addr, value))
            if not value & _P:
                raise PageFault(linear, access)
            page = level.large if pse and value & _PS else 0   # 0: the entry references a table
            if value & (large_reserved if page else table_reserved):
                raise PageFault(linear, access | _ERR_P | _ERR_RSVD)
            if not level.register:
                anded &= value
            ored |= value
            if page:
                return (entries, self._large_frame(fmt, value, page), page, bool(anded & _RW), bool(anded & _US),
                        nxe and bool(ored & _XD))
            table = value & frame_mask
        return entries, table, PAGE_SIZE, bool(anded & _RW), bool(anded & _US), nxe and bool(ored & _XD)

    @staticmethod
    def _set_accessed(fmt: PagingFormat, mem: EntryMemory, entries: list[tuple[str, int, int]],
                      write: bool) -> int:
        """Set A in every entry used (not the PAE PDPTE registers) and D in the leaf for
        a write, each as *value-as-read | flags* and only if that changes it (§4.8).
        Returns the leaf's value afterwards."""
        last = len(entries) - 1
        leaf_value = entries[last][2]
        levels, size = fmt.levels, fmt.entry_size
        for i, (name, addr, value) in enumerate(entries):
            if levels[i].register:
                continue
            new = value | _A
            if write and i == last:
                new |= _D
            if new != value:
                mem.write_entry(addr, size, name, new)
                if i == last:
                    leaf_value = new
        return leaf_value


def _rights(rw: bool, us: bool, xd: bool, cr0: int, cr4: int, *, user: bool, ac: bool,
            smep: bool) -> tuple[bool, bool, bool]:
    """(readable, writable, executable) of a translation for the privilege of this access,
    from R/W and U/S ANDed and XD ORed over the levels (§4.6: CR0.WP, SMEP, SMAP with
    EFLAGS.AC)."""
    if user:
        return us, us and rw, us and not xd
    smap_blocks = bool(cr4 & _SMAP) and us and not ac
    return not smap_blocks, not smap_blocks and (rw or not cr0 & _WP), not xd and not (smep and us)


# -- compatibility: the walker native mode has used since the 2-level days ---------------------
LEVEL_NAMES_32 = PAGING_32.level_names


class Walker32(GuestWalker):
    """:class:`GuestWalker` over 32-bit accessors ``read32(pa)`` / ``write32(pa, value)``.

    Kept for :mod:`vmm.modes.native`; it walks every format (8-byte entries are read as
    two dwords), choosing it from CR0/CR4 and ``efer``.
    """

    levels = 2

    def __init__(self, read32: Callable[[int], int], write32: Callable[[int, int], None], **kwargs):
        self.read32 = read32
        self.write32 = write32

        def read(pa: int, size: int) -> int:
            if size == ENTRY_SIZE_32:
                return read32(pa)
            return read32(pa) | read32(pa + 4) << 32

        def write(pa: int, size: int, value: int) -> None:
            write32(pa, value & 0xFFFFFFFF)
            if size == ENTRY_SIZE_64:
                write32(pa + 4, value >> 32 & 0xFFFFFFFF)

        super().__init__(read, write, **kwargs)


def phys_reader(read_bytes: Callable[[int, int], bytes]) -> Callable[[int], int]:
    """Adapt a ``read(addr, size) -> bytes`` function to the walker's ``read32``."""
    return lambda addr: struct.unpack("<I", read_bytes(addr, 4))[0]


def phys_writer(write_bytes: Callable[[int, bytes], None]) -> Callable[[int, int], None]:
    return lambda addr, value: write_bytes(addr, struct.pack("<I", value & 0xFFFFFFFF))


def memory_reader(read_bytes: Callable[[int, int], bytes]) -> Callable[[int, int], int]:
    """Adapt ``read(addr, size) -> bytes`` to the walkers' ``read(addr, size) -> int``."""
    return lambda addr, size: int.from_bytes(read_bytes(addr, size), "little")


def memory_writer(write_bytes: Callable[[int, bytes], None]) -> Callable[[int, int, int], None]:
    """Adapt ``write(addr, data)`` to the walkers' ``write(addr, size, value)``."""
    return lambda addr, size, value: write_bytes(addr, (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little"))
