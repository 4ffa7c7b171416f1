"""Extended page tables (SDM vol. 3 §29.3, "The Extended Page Table Mechanism").

EPT translates guest-physical addresses (GPA) to host-physical addresses (HPA) through a
4-level table in host memory, located by the EPT pointer (a VM-execution control field).

EPTP (:class:`Eptp`)::

    bits 2:0   memory type for the paging structures: 0 UC or 6 WB
    bits 5:3   page-walk length - 1 (3: four levels; 5-level EPT is not modelled)
    bit 6      enable accessed and dirty flags for EPT
    bits 11:7  reserved here (bit 7 is the supervisor-shadow-stack control, not modelled)
    bits (N-1):12  physical address of the EPT PML4 table; bits 63:N reserved

EPT entries (8 bytes; "present" when any of bits 2:0 is set)::

    bit 0 R   read          bit 1 W  write        bit 2 X  execute (supervisor fetches
    bits 5:3  memory type (leaf: 0 UC, 1 WC, 4 WT, 5 WP, 6 WB; 2, 3, 7 -> misconfiguration)
    bit 6     ignore PAT (leaf)
    bit 7     large page: in an EPT PDPTE maps 1 GiB, in an EPT PDE 2 MiB; reserved in a
              PML4E; ignored in a PTE
    bit 8     accessed (EPTP bit 6)     bit 9  dirty (leaf, EPTP bit 6)
    bit 10    user-mode execute (mode-based execute control; ignored here)
    bits (N-1):12  next table or frame (1 GiB: (N-1):30, 2 MiB: (N-1):21)
    reserved: bits 51:N everywhere; bits 7:3 in a PML4E; bits 6:3 in a PDPTE/PDE that
              references a table; bits 29:12 in a 1 GiB leaf; bits 20:12 in a 2 MiB leaf
    bit 63    suppress #VE (ignored here)

Walk (:class:`EptWalker`): each entry is checked as it is read: not present -> EPT
violation; W without R (write-only, write+execute) or a reserved bit -> EPT
misconfiguration; on the leaf, memory type 2, 3 or 7 -> misconfiguration. Once the walk
completes, the access must be allowed by the AND of the R/W/X bits of every entry used,
else EPT violation (§29.3.3.2). Execute-only translations (X without R) are supported,
as on the processors that report it in IA32_VMX_EPT_VPID_CAP bit 0.

Exit qualification of an EPT violation (SDM Table 28-7, built with
:class:`vmm.x86.EptViolationQualification`): bits 0/1/2 read/write/fetch; bits 3/4/5
the AND of bits 0/1/2 of the entries walked (all 0 when the walk met a not-present
entry); bit 7 guest-linear address valid; bit 8 (when bit 7) 1 for an access to the
translated address, 0 for an access to a guest paging-structure entry.

Accessed and dirty flags (EPTP bit 6, §29.3.5): once a translation succeeds, A is set in
every EPT entry used, and D in the leaf for a write. With these flags enabled the
processor treats its accesses to *guest paging-structure entries* as writes (§29.3.3.2):
they need W, set D, and a violation reports both bits 0 and 1. Without them such
accesses are reads; the guest's own A/D updates are then separate data writes (the
nested walker checks them). A/D updates are written as value-as-read | flags, only when
that changes the entry.

Caching and INVEPT: nothing here caches. :class:`EptBuilder` edits the tables in host
memory in place; whoever caches translations (the engine's TLB, the nested walker's
page-walk cache) must be flushed by the mode when the guest hypervisor would execute
INVEPT, i.e. after any change that removes or reduces a mapping. Adding a mapping or a
permission needs no INVEPT: the processor re-walks on the violation.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from ..x86 import EPT_LEVEL_NAMES, EPT_LEVEL_SHIFTS, EPT_MEMTYPE_MASK, EPT_MEMTYPE_SHIFT, EPT_RWX, EPTE, bits
from ..x86.ept import (
    EPT_ENTRIES,
    EPT_ENTRY_SIZE,
    EPT_INDEX_MASK,
    EPT_LARGE_LEVELS,
    EPT_LEVELS,
    EPT_PAGE_SIZES,
    EPTE_NAMES,
    EPTP_AD,
    EPTP_MEMTYPE_MASK,
    EPTP_WALK_MASK,
    EPTP_WALK_SHIFT,
    RESERVED_MEMORY_TYPES,
    EptLevel,
    EptViolationQualification,
    MemoryType,
)
from ..x86.paging import MAXPHYADDR, PAGE_OFFSET_MASK, PAGE_SHIFT, PAGE_SIZE

ENTRY_BIT_NAMES = EPTE_NAMES
MEMORY_TYPE_NAMES = {t.value: t.name for t in MemoryType}

# Plain locals for the walk loop (a class attribute lookup per entry costs more than the test).
_R, _W, _X, _LARGE, _A, _D = EPTE.R, EPTE.W, EPTE.X, EPTE.LARGE, EPTE.A, EPTE.D
_IGNORE_PAT = EPTE.IGNORE_PAT
_PML4E, _LEAF = EptLevel.PML4E, EptLevel.PTE

_ALL_64 = bits(63, 0)
_MEMTYPE_MAX = EPT_MEMTYPE_MASK >> EPT_MEMTYPE_SHIFT
_LEVEL_OF_SIZE: dict[int, int] = {size: level for level, size in EPT_PAGE_SIZES.items()}
_LARGE_SIZES = (EPT_PAGE_SIZES[EptLevel.PDPTE], EPT_PAGE_SIZES[EptLevel.PDE])   # largest first

# Reserved bits below bit 12, by what the entry is (Tables 29-1 .. 29-6).
_PML4E_RESERVED = bits(7, 3)                      # memory type, IPAT and PS in a PML4E
_TABLE_RESERVED = bits(6, 3)                      # a PDPTE/PDE that references a table
# a large leaf: the frame bits below its page size
_LARGE_RESERVED: dict[int, int] = {EptLevel.PDPTE: bits(29, 12), EptLevel.PDE: bits(20, 12)}

ACCESSES = ("read", "write", "fetch")
_NEED = {"read": _R, "write": _W, "fetch": _X}


@dataclass(frozen=True)
class Eptp:
    """The EPT pointer. ``decode`` keeps any reserved bits so :meth:`problems` sees them."""

    pml4: int
    memory_type: int = MemoryType.WB
    walk_length: int = EPT_LEVELS
    ad: bool = False
    reserved: int = 0

    def encode(self) -> int:
        return ((self.memory_type & EPTP_MEMTYPE_MASK) | ((self.walk_length - 1) << EPTP_WALK_SHIFT & EPTP_WALK_MASK)
                | (EPTP_AD if self.ad else 0) | self.pml4 | self.reserved)

    @classmethod
    def decode(cls, value: int, maxphyaddr: int = MAXPHYADDR) -> Eptp:
        address = bits(maxphyaddr - 1, PAGE_SHIFT)
        known = EPTP_MEMTYPE_MASK | EPTP_WALK_MASK | EPTP_AD | address
        return cls(pml4=value & address, memory_type=value & EPTP_MEMTYPE_MASK,
                   walk_length=((value & EPTP_WALK_MASK) >> EPTP_WALK_SHIFT) + 1,
                   ad=bool(value & EPTP_AD), reserved=value & ~known & _ALL_64)

    def problems(self, maxphyaddr: int = MAXPHYADDR) -> list[str]:
        """Why VM entry would refuse this EPTP (SDM §27.2.1.1); empty when valid."""
        out = []
        if self.memory_type not in (MemoryType.UC, MemoryType.WB):
            out.append(f"memory type {self.memory_type} is neither UC (0) nor WB (6)")
        if self.walk_length != EPT_LEVELS:
            out.append(f"page-walk length {self.walk_length} is not 4")
        if self.reserved:
            out.append(f"reserved bits {self.reserved:#x} set")
        if self.pml4 & PAGE_OFFSET_MASK or self.pml4 >> maxphyaddr:
            out.append(f"PML4 address {self.pml4:#x} is not a page below 2^{maxphyaddr}")
        return out

    @property
    def valid(self) -> bool:
        return not self.problems()

    def describe(self) -> str:
        mt = MEMORY_TYPE_NAMES.get(self.memory_type, str(self.memory_type))
        return f"EPTP PML4 {self.pml4:#x}, {mt}, {self.walk_length}-level{', A/D' if self.ad else ''}"


@dataclass
class EptTranslation:
    """A successful EPT translation. ``readable``/``writable``/``executable`` are the AND
    of the R/W/X bits of the entries used; ``entries`` the entries as read,
    ``(EPT level name, host-physical address, value)``."""

    host_physical: int
    readable: bool
    writable: bool
    executable: bool
    memory_type: int
    page_size: int
    entries: list[tuple[str, int, int]] = field(default_factory=list)
    gpa: int = 0
    ignore_pat: bool = False

    def allows(self, access: str) -> bool:
        return {"read": self.readable, "write": self.writable, "fetch": self.executable}[access]


class EptViolation(Exception):
    """An EPT violation (exit reason 48): the GPA, the guest-linear address (or None) and
    the qualification (:class:`vmm.x86.EptViolationQualification`)."""

    def __init__(self, gpa: int, linear: int | None, qualification: EptViolationQualification,
                 entries: list[tuple[str, int, int]] | None = None, tag: str = "data"):
        super().__init__(f"EPT violation at GPA {gpa:#x}"
                         + (f" (linear {linear:#x})" if linear is not None else "")
                         + f": {qualification.describe()}")
        self.gpa = gpa
        self.linear = linear
        self.qualification = qualification
        self.entries = entries or []
        self.tag = tag

    @property
    def exit_qualification(self) -> int:
        return self.qualification.encode()


class EptMisconfiguration(Exception):
    """An EPT misconfiguration (exit reason 49): the GPA whose translation met it."""

    def __init__(self, gpa: int, reason: str = "", entries: list[tuple[str, int, int]] | None = None,
                 tag: str = "data"):
        super().__init__(f"EPT misconfiguration at GPA {gpa:#x}" + (f": {reason}" if reason else ""))
        self.gpa = gpa
        self.reason = reason
        self.entries = entries or []
        self.tag = tag


def entry_reserved(value: int, level: int, maxphyaddr: int = MAXPHYADDR) -> int:
    """Reserved bits set in a present EPT entry at ``level`` (0 PML4E .. 3 PTE)."""
    mask = bits(51, maxphyaddr)
    if level == EptLevel.PML4E:
        mask |= _PML4E_RESERVED
    elif level in EPT_LARGE_LEVELS:
        mask |= _LARGE_RESERVED[level] if value & _LARGE else _TABLE_RESERVED
    return value & mask


class EptWalker:
    """Walks EPT tables in host memory: ``read64(hpa)``, ``write64(hpa, value)``.

    Every entry read is counted in ``references`` and ``counts[(tag, EPT level name)]``
    and reported to ``refs(tag, level_name, hpa)`` if given; ``tag`` says what the
    translation was for ("data", or the guest level name of a guest table access).
    """

    def __init__(self, read64: Callable[[int], int], write64: Callable[[int, int], None], *,
                 maxphyaddr: int = MAXPHYADDR, execute_only: bool = True,
                 refs: Callable[[str, str, int], None] | None = None):
        self.read64 = read64
        self.write64 = write64
        self.maxphyaddr = maxphyaddr
        self.execute_only = execute_only
        self.refs = refs
        self.references = 0
        self.counts: Counter[tuple[str, str]] = Counter()
        self._address_mask = bits(maxphyaddr - 1, PAGE_SHIFT)
        self._eptps: dict[int, Eptp] = {}
        # reserved-bit masks by (level, large page), as entry_reserved computes them
        ones = _ALL_64
        self._reserved = {(level, large): entry_reserved(ones if large else ones & ~_LARGE, level, maxphyaddr)
                          | (_LARGE & entry_reserved(ones, level, maxphyaddr) if level == EptLevel.PML4E else 0)
                          for level in range(EPT_LEVELS) for large in (False, True)}

    def _eptp(self, raw: int) -> Eptp:
        """Decode and check an EPTP once (it changes only when the VMM writes it)."""
        eptp = self._eptps.get(raw)
        if eptp is None:
            eptp = Eptp.decode(raw, self.maxphyaddr)
            problems = eptp.problems(self.maxphyaddr)
            if problems:
                raise ValueError("invalid EPTP: " + "; ".join(problems))
            self._eptps[raw] = eptp
        return eptp

    def read_entry(self, hpa: int, level_name: str, tag: str) -> int:
        self.references += 1
        self.counts[(tag, level_name)] += 1
        if self.refs is not None:
            self.refs(tag, level_name, hpa)
        return self.read64(hpa)

    def translate(self, eptp: int | Eptp, gpa: int, access: str, *, linear: int | None = None,
                  guest_paging_structure: bool = False, tag: str = "data") -> EptTranslation:
        """Translate ``gpa`` for an access ("read", "write" or "fetch").

        ``linear``: the guest-linear address whose translation caused this access (sets
        qualification bit 7); ``guest_paging_structure``: the access is to a guest
        paging-structure entry (qualification bit 8 = 0; treated as a write when EPT A/D
        flags are enabled). Raises :class:`EptViolation` or :class:`EptMisconfiguration`;
        raises ValueError for an EPTP VM entry would have refused.
        """
        if access not in _NEED:
            raise ValueError(f"access {access!r} is not one of {ACCESSES}")
        if isinstance(eptp, Eptp):
            problems = eptp.problems(self.maxphyaddr)
            if problems:
                raise ValueError("invalid EPTP: " + "; ".join(problems))
        else:
            eptp = self._eptp(eptp)
        as_write = access == "write" or (guest_paging_structure and eptp.ad)
        need = _W if as_write else _NEED[access]

        table = eptp.pml4
        combined: int = EPT_RWX
        entries: list[tuple[str, int, int]] = []
        counts, refs, read64 = self.counts, self.refs, self.read64
        for level, name in enumerate(EPT_LEVEL_NAMES):
            addr = table + ((gpa >> EPT_LEVEL_SHIFTS[level]) & EPT_INDEX_MASK) * EPT_ENTRY_SIZE
            self.references += 1                  # read_entry, inlined: the 2-D walk hot path
            counts[(tag, name)] += 1
            if refs is not None:
                refs(tag, name, addr)
            value = read64(addr)
            entries.append((name, addr, value))
            rwx = value & EPT_RWX
            if not rwx:
                combined = 0
                break
            if rwx & _W and not rwx & _R:
                raise EptMisconfiguration(gpa, f"{name} {value:#x}: write without read", entries, tag)
            if rwx == _X and not self.execute_only:
                raise EptMisconfiguration(gpa, f"{name} {value:#x}: execute-only not supported", entries, tag)
            reserved = value & self._reserved[(level, bool(value & _LARGE) and level in EPT_LARGE_LEVELS)]
            if reserved:
                raise EptMisconfiguration(gpa, f"{name} {value:#x}: reserved bits {reserved:#x}", entries, tag)
            combined &= rwx
            if level == _LEAF or (level in EPT_LARGE_LEVELS and value & _LARGE):
                memory_type = (value & EPT_MEMTYPE_MASK) >> EPT_MEMTYPE_SHIFT
                if memory_type in RESERVED_MEMORY_TYPES:
                    raise EptMisconfiguration(gpa, f"{name} {value:#x}: reserved memory type {memory_type}",
                                              entries, tag)
                page = EPT_PAGE_SIZES[level]
                frame = value & self._address_mask & ~(page - 1)
                break
            table = value & self._address_mask

        if not combined or need & ~combined:
            q = EptViolationQualification(
                read=access == "read", write=as_write, fetch=access == "fetch",
                readable=bool(combined & _R), writable=bool(combined & _W),
                executable=bool(combined & _X), linear_valid=linear is not None,
                translated=linear is not None and not guest_paging_structure)
            raise EptViolation(gpa, linear, q, entries, tag)

        if eptp.ad:
            last = len(entries) - 1
            for i, (_name, addr, value) in enumerate(entries):
                new = value | _A
                if i == last and as_write:
                    new |= _D
                if new != value:
                    self.write64(addr, new)
        leaf = entries[-1][2]
        return EptTranslation(frame | (gpa & (page - 1)), bool(combined & _R), bool(combined & _W),
                              bool(combined & _X), memory_type, page, entries, gpa=gpa,
                              ignore_pat=bool(leaf & _IGNORE_PAT))


class EptBuilder:
    """Creates and edits EPT tables in host memory (what a hypervisor's EPT code does).

    ``alloc_page() -> hpa`` returns a fresh 4 KiB host page (the builder zeroes it).
    Intermediate entries are created with R/W/X all set (rights are decided by the
    leaves); a large page met on the way to a smaller mapping is split into 512
    entries with the same rights and memory type. Tables left empty are not freed.
    Nothing is cached: after a change that removes or reduces rights, the mode must do
    what INVEPT does (flush the TLB and any page-walk cache).
    """

    def __init__(self, read64: Callable[[int], int], write64: Callable[[int, int], None],
                 alloc_page: Callable[[], int], *, root: int | None = None, maxphyaddr: int = MAXPHYADDR):
        self.read64 = read64
        self.write64 = write64
        self.alloc_page = alloc_page
        self.maxphyaddr = maxphyaddr
        self._address_mask = bits(maxphyaddr - 1, PAGE_SHIFT)
        self.tables = 0
        self.root = self._new_table() if root is None else root

    def eptp(self, *, memory_type: int = MemoryType.WB, ad: bool = False) -> int:
        return Eptp(self.root, memory_type, EPT_LEVELS, ad).encode()

    def _new_table(self) -> int:
        page = self.alloc_page()
        if page & PAGE_OFFSET_MASK:
            raise ValueError(f"alloc_page returned {page:#x}, not page aligned")
        for i in range(EPT_ENTRIES):
            self.write64(page + EPT_ENTRY_SIZE * i, 0)
        self.tables += 1
        return page

    @staticmethod
    def leaf_value(hpa: int, size: int, r: bool, w: bool, x: bool, memory_type: int = MemoryType.WB,
                   ignore_pat: bool = False) -> int:
        return (hpa | (_R if r else 0) | (_W if w else 0) | (_X if x else 0)
                | memory_type << EPT_MEMTYPE_SHIFT | (EPTE.IGNORE_PAT if ignore_pat else 0)
                | (_LARGE if size != PAGE_SIZE else 0))

    def _split(self, entry_addr: int, value: int, level: int) -> int:
        """Replace the large leaf at ``entry_addr`` (level 1 or 2) by a table of 512
        smaller leaves with the same attributes; returns the new table."""
        table = self._new_table()
        child = EPT_PAGE_SIZES[level + 1]
        attrs = value & (EPT_RWX | EPT_MEMTYPE_MASK | EPTE.IGNORE_PAT | _A | _D)
        base = value & self._address_mask & ~(EPT_PAGE_SIZES[level] - 1)
        large = _LARGE if level + 1 < EptLevel.PTE else 0
        for i in range(EPT_ENTRIES):
            self.write64(table + EPT_ENTRY_SIZE * i, base + i * child | attrs | large)
        self.write64(entry_addr, table | EPT_RWX)
        return table

    def _entry_address(self, gpa: int, level: int, create: bool) -> int | None:
        """Address of the entry for ``gpa`` at ``level``, creating tables (and splitting
        large pages) on the way when ``create``; None if absent and not ``create``."""
        table = self.root
        for lvl in range(level):
            addr = table + ((gpa >> EPT_LEVEL_SHIFTS[lvl]) & EPT_INDEX_MASK) * EPT_ENTRY_SIZE
            value = self.read64(addr)
            if not value & EPT_RWX:
                if not create:
                    return None
                table = self._new_table()
                self.write64(addr, table | EPT_RWX)
            elif lvl in EPT_LARGE_LEVELS and value & _LARGE:
                if not create:
                    return None
                table = self._split(addr, value, lvl)
            else:
                table = value & self._address_mask
        return table + ((gpa >> EPT_LEVEL_SHIFTS[level]) & EPT_INDEX_MASK) * EPT_ENTRY_SIZE

    def map(self, gpa: int, hpa: int, size: int = PAGE_SIZE, r: bool = True, w: bool = True, x: bool = True,
            memory_type: int = MemoryType.WB, ignore_pat: bool = False) -> None:
        """Map ``gpa`` -> ``hpa`` with one leaf of ``size`` (4 KiB, 2 MiB or 1 GiB),
        replacing whatever mapped that range."""
        level = _LEVEL_OF_SIZE.get(size)
        if level is None:
            raise ValueError(f"EPT page size {size:#x} is not 4 KiB, 2 MiB or 1 GiB")
        if gpa & (size - 1) or hpa & (size - 1):
            raise ValueError(f"GPA {gpa:#x} / HPA {hpa:#x} not aligned to {size:#x}")
        if w and not r:
            raise ValueError("write without read is an EPT misconfiguration")
        if memory_type in RESERVED_MEMORY_TYPES or not 0 <= memory_type <= _MEMTYPE_MAX:
            raise ValueError(f"memory type {memory_type} is reserved")
        addr = self._entry_address(gpa, level, create=True)
        self.write64(addr, self.leaf_value(hpa, size, r, w, x, memory_type, ignore_pat))

    def map_mmio_marker(self, gpa: int) -> None:
        """KVM's MMIO trick: a deliberately misconfigured leaf (write without read) for a
        device page, so that every access to it exits with EPT misconfiguration."""
        addr = self._entry_address(gpa, 3, create=True)
        self.write64(addr, (gpa & ~PAGE_OFFSET_MASK & self._address_mask) | _W)

    def map_range(self, gpa: int, hpa: int, length: int, r: bool = True, w: bool = True, x: bool = True,
                  memory_type: int = MemoryType.WB, large: bool = True) -> None:
        """Map ``length`` bytes, with the largest pages alignment allows when ``large``."""
        end = gpa + length
        while gpa < end:
            for size in (_LARGE_SIZES if large else ()) + (PAGE_SIZE,):
                if not gpa & (size - 1) and not hpa & (size - 1) and gpa + size <= end:
                    break
            self.map(gpa, hpa, size, r, w, x, memory_type)
            gpa += size
            hpa += size

    def lookup(self, gpa: int) -> tuple[str, int, int] | None:
        """The leaf mapping ``gpa``: (EPT level name, entry address, value), or None."""
        table = self.root
        for level in range(EPT_LEVELS):
            addr = table + ((gpa >> EPT_LEVEL_SHIFTS[level]) & EPT_INDEX_MASK) * EPT_ENTRY_SIZE
            value = self.read64(addr)
            if not value & EPT_RWX:
                return None
            if level == _LEAF or (level in EPT_LARGE_LEVELS and value & _LARGE):
                return EPT_LEVEL_NAMES[level], addr, value
            table = value & self._address_mask
        return None

    def _leaf_for_edit(self, gpa: int, size: int | None) -> tuple[int, int] | None:
        found = self.lookup(gpa)
        if found is None:
            return None
        name, addr, value = found
        level = EPT_LEVEL_NAMES.index(name)
        if size is not None and size < EPT_PAGE_SIZES[level]:
            target = _LEVEL_OF_SIZE.get(size)
            if target is None:
                raise ValueError(f"EPT page size {size:#x} is not 4 KiB or 2 MiB")
            addr = self._entry_address(gpa, target, create=True)
            return addr, self.read64(addr)
        return addr, value

    def unmap(self, gpa: int, size: int | None = None) -> bool:
        """Remove the leaf mapping ``gpa`` (the whole large page, unless ``size`` asks
        for a smaller piece, which splits it). False if nothing was mapped."""
        found = self._leaf_for_edit(gpa, size)
        if found is None:
            return False
        self.write64(found[0], 0)
        return True

    def protect(self, gpa: int, r: bool, w: bool, x: bool, size: int | None = None) -> bool:
        """Change the R/W/X bits of the leaf mapping ``gpa`` (splitting as for unmap).
        All three clear makes the entry not present. False if nothing was mapped."""
        if w and not r:
            raise ValueError("write without read is an EPT misconfiguration")
        found = self._leaf_for_edit(gpa, size)
        if found is None:
            return False
        addr, value = found
        self.write64(addr, value & ~EPT_RWX | (_R if r else 0) | (_W if w else 0) | (_X if x else 0))
        return True
