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
:class:`vmm.vmx.qualification.EptViolation`): bits 0/1/2 read/write/fetch; bits 3/4/5
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
from dataclasses import dataclass, field
from typing import Callable

from ..vmx.qualification import EptViolation as EptViolationQualification

# -- entry bits ------------------------------------------------------------------------------
EPT_R, EPT_W, EPT_X = 1, 2, 4
EPT_RWX = 7
EPT_MEMTYPE_SHIFT = 3
EPT_MEMTYPE_MASK = 7 << EPT_MEMTYPE_SHIFT
EPT_IGNORE_PAT = 1 << 6
EPT_LARGE = 1 << 7
EPT_A = 1 << 8
EPT_D = 1 << 9
EPT_USER_X = 1 << 10
EPT_SUPPRESS_VE = 1 << 63

ENTRY_BIT_NAMES = {EPT_R: "R", EPT_W: "W", EPT_X: "X", EPT_IGNORE_PAT: "IPAT", EPT_LARGE: "PS",
                   EPT_A: "A", EPT_D: "D", EPT_USER_X: "XU", EPT_SUPPRESS_VE: "SVE"}

# -- memory types (SDM §11.3) ----------------------------------------------------------------
MT_UC, MT_WC, MT_WT, MT_WP, MT_WB = 0, 1, 4, 5, 6
MEMORY_TYPE_NAMES = {MT_UC: "UC", MT_WC: "WC", MT_WT: "WT", MT_WP: "WP", MT_WB: "WB"}
RESERVED_MEMORY_TYPES = (2, 3, 7)

# -- EPTP ------------------------------------------------------------------------------------
EPTP_MEMTYPE_MASK = 7
EPTP_WALK_SHIFT = 3
EPTP_WALK_MASK = 7 << EPTP_WALK_SHIFT
EPTP_AD = 1 << 6

EPT_LEVEL_NAMES = ("EPT PML4E", "EPT PDPTE", "EPT PDE", "EPT PTE")
EPT_LEVEL_SHIFTS = (39, 30, 21, 12)
EPT_PAGE_SIZES = {1: 1 << 30, 2: 1 << 21, 3: 1 << 12}   # level index -> page size of a leaf there

MAXPHYADDR = 36
ACCESSES = ("read", "write", "fetch")
_NEED = {"read": EPT_R, "write": EPT_W, "fetch": EPT_X}


def _bits(hi: int, lo: int) -> int:
    return ((1 << (hi + 1)) - 1) & ~((1 << lo) - 1) if hi >= lo else 0


@dataclass(frozen=True)
class Eptp:
    """The EPT pointer. ``decode`` keeps any reserved bits so :meth:`problems` sees them."""

    pml4: int
    memory_type: int = MT_WB
    walk_length: int = 4
    ad: bool = False
    reserved: int = 0

    def encode(self) -> int:
        return ((self.memory_type & 7) | ((self.walk_length - 1) & 7) << EPTP_WALK_SHIFT
                | (EPTP_AD if self.ad else 0) | self.pml4 | self.reserved)

    @classmethod
    def decode(cls, value: int, maxphyaddr: int = MAXPHYADDR) -> "Eptp":
        address = _bits(maxphyaddr - 1, 12)
        known = EPTP_MEMTYPE_MASK | EPTP_WALK_MASK | EPTP_AD | address
        return cls(pml4=value & address, memory_type=value & EPTP_MEMTYPE_MASK,
                   walk_length=((value & EPTP_WALK_MASK) >> EPTP_WALK_SHIFT) + 1,
                   ad=bool(value & EPTP_AD), reserved=value & ~known & ((1 << 64) - 1))

    def problems(self, maxphyaddr: int = MAXPHYADDR) -> list[str]:
        """Why VM entry would refuse this EPTP (SDM §27.2.1.1); empty when valid."""
        out = []
        if self.memory_type not in (MT_UC, MT_WB):
            out.append(f"memory type {self.memory_type} is neither UC (0) nor WB (6)")
        if self.walk_length != 4:
            out.append(f"page-walk length {self.walk_length} is not 4")
        if self.reserved:
            out.append(f"reserved bits {self.reserved:#x} set")
        if self.pml4 & 0xFFF or self.pml4 >> maxphyaddr:
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
    the qualification (:class:`vmm.vmx.qualification.EptViolation`)."""

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
    mask = _bits(51, maxphyaddr)
    if level == 0:
        mask |= _bits(7, 3)
    elif level in (1, 2):
        if value & EPT_LARGE:
            mask |= _bits(29, 12) if level == 1 else _bits(20, 12)
        else:
            mask |= _bits(6, 3)
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
        self._address_mask = _bits(maxphyaddr - 1, 12)
        self._eptps: dict[int, Eptp] = {}
        # reserved-bit masks by (level, large page), as entry_reserved computes them
        ones = _bits(63, 0)
        self._reserved = {(level, large): entry_reserved(ones if large else ones & ~EPT_LARGE, level, maxphyaddr)
                          | (EPT_LARGE & entry_reserved(ones, level, maxphyaddr) if level == 0 else 0)
                          for level in range(4) for large in (False, True)}

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
        need = EPT_W if as_write else _NEED[access]

        table = eptp.pml4
        combined = EPT_RWX
        entries: list[tuple[str, int, int]] = []
        counts, refs, read64 = self.counts, self.refs, self.read64
        for level, name in enumerate(EPT_LEVEL_NAMES):
            addr = table + ((gpa >> EPT_LEVEL_SHIFTS[level]) & 0x1FF) * 8
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
            if rwx & EPT_W and not rwx & EPT_R:
                raise EptMisconfiguration(gpa, f"{name} {value:#x}: write without read", entries, tag)
            if rwx == EPT_X and not self.execute_only:
                raise EptMisconfiguration(gpa, f"{name} {value:#x}: execute-only not supported", entries, tag)
            reserved = value & self._reserved[(level, bool(value & EPT_LARGE) and level in (1, 2))]
            if reserved:
                raise EptMisconfiguration(gpa, f"{name} {value:#x}: reserved bits {reserved:#x}", entries, tag)
            combined &= rwx
            if level == 3 or (level in (1, 2) and value & EPT_LARGE):
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
                readable=bool(combined & EPT_R), writable=bool(combined & EPT_W),
                executable=bool(combined & EPT_X), linear_valid=linear is not None,
                translated=linear is not None and not guest_paging_structure)
            raise EptViolation(gpa, linear, q, entries, tag)

        if eptp.ad:
            last = len(entries) - 1
            for i, (name, addr, value) in enumerate(entries):
                new = value | EPT_A
                if i == last and as_write:
                    new |= EPT_D
                if new != value:
                    self.write64(addr, new)
        leaf = entries[-1][2]
        return EptTranslation(frame | (gpa & (page - 1)), bool(combined & EPT_R), bool(combined & EPT_W),
                              bool(combined & EPT_X), memory_type, page, entries, gpa=gpa,
                              ignore_pat=bool(leaf & EPT_IGNORE_PAT))


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
        self._address_mask = _bits(maxphyaddr - 1, 12)
        self.tables = 0
        self.root = self._new_table() if root is None else root

    def eptp(self, *, memory_type: int = MT_WB, ad: bool = False) -> int:
        return Eptp(self.root, memory_type, 4, ad).encode()

    def _new_table(self) -> int:
        page = self.alloc_page()
        if page & 0xFFF:
            raise ValueError(f"alloc_page returned {page:#x}, not page aligned")
        for i in range(512):
            self.write64(page + 8 * i, 0)
        self.tables += 1
        return page

    @staticmethod
    def leaf_value(hpa: int, size: int, r: bool, w: bool, x: bool, memory_type: int = MT_WB,
                   ignore_pat: bool = False) -> int:
        return (hpa | (EPT_R if r else 0) | (EPT_W if w else 0) | (EPT_X if x else 0)
                | memory_type << EPT_MEMTYPE_SHIFT | (EPT_IGNORE_PAT if ignore_pat else 0)
                | (EPT_LARGE if size != 4096 else 0))

    def _split(self, entry_addr: int, value: int, level: int) -> int:
        """Replace the large leaf at ``entry_addr`` (level 1 or 2) by a table of 512
        smaller leaves with the same attributes; returns the new table."""
        table = self._new_table()
        child = EPT_PAGE_SIZES[level + 1]
        attrs = value & (EPT_RWX | EPT_MEMTYPE_MASK | EPT_IGNORE_PAT | EPT_A | EPT_D)
        base = value & self._address_mask & ~(EPT_PAGE_SIZES[level] - 1)
        large = EPT_LARGE if level + 1 < 3 else 0
        for i in range(512):
            self.write64(table + 8 * i, base + i * child | attrs | large)
        self.write64(entry_addr, table | EPT_RWX)
        return table

    def _entry_address(self, gpa: int, level: int, create: bool) -> int | None:
        """Address of the entry for ``gpa`` at ``level``, creating tables (and splitting
        large pages) on the way when ``create``; None if absent and not ``create``."""
        table = self.root
        for lvl in range(level):
            addr = table + ((gpa >> EPT_LEVEL_SHIFTS[lvl]) & 0x1FF) * 8
            value = self.read64(addr)
            if not value & EPT_RWX:
                if not create:
                    return None
                table = self._new_table()
                self.write64(addr, table | EPT_RWX)
            elif lvl in (1, 2) and value & EPT_LARGE:
                if not create:
                    return None
                table = self._split(addr, value, lvl)
            else:
                table = value & self._address_mask
        return table + ((gpa >> EPT_LEVEL_SHIFTS[level]) & 0x1FF) * 8

    def map(self, gpa: int, hpa: int, size: int = 4096, r: bool = True, w: bool = True, x: bool = True,
            memory_type: int = MT_WB, ignore_pat: bool = False) -> None:
        """Map ``gpa`` -> ``hpa`` with one leaf of ``size`` (4 KiB, 2 MiB or 1 GiB),
        replacing whatever mapped that range."""
        level = {4096: 3, 1 << 21: 2, 1 << 30: 1}.get(size)
        if level is None:
            raise ValueError(f"EPT page size {size:#x} is not 4 KiB, 2 MiB or 1 GiB")
        if gpa & (size - 1) or hpa & (size - 1):
            raise ValueError(f"GPA {gpa:#x} / HPA {hpa:#x} not aligned to {size:#x}")
        if w and not r:
            raise ValueError("write without read is an EPT misconfiguration")
        if memory_type in RESERVED_MEMORY_TYPES or not 0 <= memory_type < 8:
            raise ValueError(f"memory type {memory_type} is reserved")
        addr = self._entry_address(gpa, level, create=True)
        self.write64(addr, self.leaf_value(hpa, size, r, w, x, memory_type, ignore_pat))

    def map_mmio_marker(self, gpa: int) -> None:
        """KVM's MMIO trick: a deliberately misconfigured leaf (write without read) for a
        device page, so that every access to it exits with EPT misconfiguration."""
        addr = self._entry_address(gpa, 3, create=True)
        self.write64(addr, (gpa & ~0xFFF & self._address_mask) | EPT_W)

    def map_range(self, gpa: int, hpa: int, length: int, r: bool = True, w: bool = True, x: bool = True,
                  memory_type: int = MT_WB, large: bool = True) -> None:
        """Map ``length`` bytes, with the largest pages alignment allows when ``large``."""
        end = gpa + length
        while gpa < end:
            for size in ((1 << 30, 1 << 21) if large else ()) + (4096,):
                if not gpa & (size - 1) and not hpa & (size - 1) and gpa + size <= end:
                    break
            self.map(gpa, hpa, size, r, w, x, memory_type)
            gpa += size
            hpa += size

    def lookup(self, gpa: int) -> tuple[str, int, int] | None:
        """The leaf mapping ``gpa``: (EPT level name, entry address, value), or None."""
        table = self.root
        for level in range(4):
            addr = table + ((gpa >> EPT_LEVEL_SHIFTS[level]) & 0x1FF) * 8
            value = self.read64(addr)
            if not value & EPT_RWX:
                return None
            if level == 3 or (level in (1, 2) and value & EPT_LARGE):
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
            target = {4096: 3, 1 << 21: 2}.get(size)
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
        self.write64(addr, value & ~EPT_RWX | (EPT_R if r else 0) | (EPT_W if w else 0) | (EPT_X if x else 0))
        return True
