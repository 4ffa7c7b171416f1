"""The two-dimensional page walk: guest paging under EPT (SDM vol. 3 §29.3.2;
Bhargava et al., ASPLOS 2008).

With EPT on, the guest's CR3 and every address in its paging-structure entries are
guest-physical. Translating a guest-linear address therefore:

1. for each guest level: translates the guest-physical address of the guest entry
   through EPT (m EPT entries, tagged (guest level, EPT level)), then reads the guest
   entry itself from host memory (tagged (guest level, None));
2. checks the guest rights (guest #PF), sets the guest A/D flags (each update is a data
   write to the guest table: it needs EPT write permission unless EPT A/D flags are on,
   in which case step 1 already treated every guest table access as a write);
3. translates the final guest-physical address through EPT for the access itself
   (tagged ("data", EPT level)).

A cold walk of an n-level guest table under an m-level EPT reads n(m+1) + m =
(n+1)(m+1) - 1 entries: 24 for 4-level paging on 4-level EPT, 14 for 32-bit paging.
With PAE paging the four PDPTEs are registers (loaded by :meth:`NestedWalker.load_pdptes`
as MOV to CR3 does under EPT); when they are passed as ``pdptes=`` a PAE walk is a
2-level walk (14 references).

Page-walk cache (``pwc=True``): remembers the EPT translation of each guest
paging-structure page, keyed by (EPTP, guest-physical page), so a later walk through the
same guest tables costs only the n guest reads plus the m references of the data
translation. :meth:`NestedWalker.flush` drops it (what INVEPT does); the mode must call it
whenever the EPT tables lose a mapping or a right. Final (data) translations are not
cached: that is the TLB's job.

A/D order: guest A/D flags are set once the guest translation succeeded, before the
final EPT translation, so an EPT violation on the data leaves them set, as on hardware.
Faults: guest page faults propagate as :class:`~vmm.mmu.paging.PageFault`, EPT
violations as :class:`~vmm.mmu.ept.EptViolation` (``linear`` set, qualification bit 8 =
0 for a guest table access, 1 for the data access; ``tag`` names the guest level or
"data"), misconfigurations as :class:`~vmm.mmu.ept.EptMisconfiguration`. The references
of the walk so far are in ``last_references`` in every case.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from ..x86 import CR0, CR4, EPT_LEVEL_NAMES, EPT_LEVEL_SHIFTS, EPT_MEMTYPE_MASK, EPT_MEMTYPE_SHIFT, EPT_RWX, EPTE, PTE
from ..x86.ept import EPT_ENTRY_SIZE, EPT_INDEX_MASK, RESERVED_MEMORY_TYPES, EptViolationQualification
from ..x86.paging import (
    ADDRESS_MASK_32,
    CR3_PD_MASK_32,
    ENTRY_SIZE_32,
    ENTRY_SIZE_64,
    INDEX_MASK_32,
    PAE_PDPTES,
    PAGE_MASK,
    PAGE_OFFSET_MASK,
    PAGE_SHIFT,
    PDE_SHIFT_32,
    PTE_SHIFT,
)
from .ept import EptMisconfiguration, Eptp, EptTranslation, EptViolation, EptWalker
from .paging import PAGING_PAE, GuestWalker, Translation, paging_format

RefKey = tuple[str, str | None]


@dataclass
class NestedTranslation:
    """A completed 2-D translation. Rights are the guest's (for this access's privilege)
    ANDed with EPT's; ``page_size`` is the smaller of the two page sizes (what a TLB
    entry may cover); ``references`` counts the entries read by this walk."""

    linear: int
    guest_physical: int
    host_physical: int
    readable: bool
    writable: bool
    executable: bool
    user: bool
    dirty: bool
    page_size: int
    guest: Translation
    ept: EptTranslation
    references: Counter = field(default_factory=Counter)

    @property
    def reference_count(self) -> int:
        return sum(self.references.values())


class _EptBackedTables:
    """The ``memory`` a guest walk uses under EPT: guest table addresses are translated
    (or found in the page-walk cache), then the entry is read from host memory."""

    def __init__(self, nested: NestedWalker, eptp: Eptp, linear: int, refs: Counter):
        self.nested = nested
        self.eptp = eptp
        self.linear = linear
        self.refs = refs
        self.pages: dict[int, EptTranslation] = {}

    def _page(self, gpa: int, level: str) -> EptTranslation:
        return self.nested._table_translation(self.eptp, gpa, level, self.linear, self.refs, self.pages)

    def read_entry(self, gpa: int, size: int, level: str) -> int:
        t = self._page(gpa, level)
        self.nested._count(self.refs, (level, None))
        return self.nested.guest.read(_host_address(t, gpa), size)

    def write_entry(self, gpa: int, size: int, level: str, value: int) -> None:
        t = self.pages.get(gpa >> PAGE_SHIFT) or self._page(gpa, level)
        if not t.writable:
            q = EptViolationQualification(write=True, readable=t.readable, writable=t.writable,
                                          executable=t.executable, linear_valid=True, translated=False)
            raise EptViolation(gpa, self.linear, q, [], level)
        self.nested.guest.write(_host_address(t, gpa), size, value)


def _host_address(t: EptTranslation, gpa: int) -> int:
    """The host-physical address of ``gpa`` in the page ``t`` translated."""
    return (t.host_physical & ~PAGE_OFFSET_MASK) | (gpa & PAGE_OFFSET_MASK)


class NestedWalker:
    """Guest paging under EPT. ``guest``: a :class:`GuestWalker` whose ``read``/``write``
    reach host-physical memory (or a zero-argument factory returning one); ``ept``: the
    :class:`EptWalker` over the same host memory."""

    def __init__(self, guest: GuestWalker | Callable[[], GuestWalker], ept: EptWalker, *, pwc: bool = False):
        self.guest = guest if isinstance(guest, GuestWalker) else guest()
        self.ept = ept
        self.pwc_enabled = pwc
        self.pwc: dict[tuple[int, int], EptTranslation] = {}
        self.pwc_hits = 0
        self.pwc_misses = 0
        self.flushes = 0
        self.walks = 0
        self.fast_walks = 0                    # walks done by fast_walk_32: FAST_WALK_REFERENCES each
        self.ept_memo: dict[int, tuple[int, int]] = {}  # fast_walk_32's memo: gpa page -> (hpa page, rwx)
        self.ept_memo_eptp: int | None = None
        self.counts: Counter = Counter()       # full walks: (guest level | "data", EPT level | None)
        self.last_references: Counter = Counter()

    @property
    def references(self) -> int:
        return sum(self.counts.values())

    def flush(self) -> None:
        """INVEPT: forget the cached EPT translations of guest paging-structure pages."""
        self.pwc.clear()
        self.ept_memo.clear()
        self.flushes += 1

    def ept_changed(self) -> None:
        """The EPT tables were edited: drop the emulator's memo (not a hardware flush)."""
        self.ept_memo.clear()

    # -- internals --------------------------------------------------------------------------
    def _count(self, refs: Counter, key: RefKey, n: int = 1) -> None:
        refs[key] += n
        self.counts[key] += n

    def _ept(self, eptp: Eptp, gpa: int, access: str, refs: Counter, *, linear: int | None,
             guest_paging_structure: bool, tag: str) -> EptTranslation:
        try:
            t = self.ept.translate(eptp, gpa, access, linear=linear,
                                   guest_paging_structure=guest_paging_structure, tag=tag)
        except (EptViolation, EptMisconfiguration) as e:
            for name, _, _ in getattr(e, "entries", ()):
                self._count(refs, (tag, name))
            raise
        for name, _, _ in t.entries:
            self._count(refs, (tag, name))
        return t

    def _table_translation(self, eptp: Eptp, gpa: int, level: str, linear: int, refs: Counter,
                           pages: dict[int, EptTranslation]) -> EptTranslation:
        key = (eptp.encode(), gpa >> PAGE_SHIFT)
        if self.pwc_enabled:
            hit = self.pwc.get(key)
            if hit is not None:
                self.pwc_hits += 1
                pages[gpa >> PAGE_SHIFT] = hit
                return hit
            self.pwc_misses += 1
        t = self._ept(eptp, gpa, "read", refs, linear=linear, guest_paging_structure=True, tag=level)
        pages[gpa >> PAGE_SHIFT] = t
        if self.pwc_enabled:
            self.pwc[key] = t
        return t

    # -- the walk ---------------------------------------------------------------------------
    def walk(self, cr0: int, cr3: int, cr4: int, linear: int, *, eptp: int | Eptp, write: bool, user: bool,
             fetch: bool = False, set_ad: bool = True, efer: int = 0, ac: bool = False,
             pdptes: tuple[int, ...] | None = None) -> NestedTranslation:
        """Translate guest-linear ``linear`` to host-physical (see the module docstring)."""
        if not isinstance(eptp, Eptp):
            eptp = Eptp.decode(eptp, self.ept.maxphyaddr)
        self.walks += 1
        refs: Counter = Counter()
        self.last_references = refs
        fmt = paging_format(cr0, cr4, efer)
        linear &= ADDRESS_MASK_32 if fmt is None else fmt.linear_mask
        memory = _EptBackedTables(self, eptp, linear, refs)
        for_guest = self.guest.walk(cr0, cr3, cr4, linear, write=write, user=user, fetch=fetch, set_ad=set_ad,
                                    efer=efer, ac=ac, pdptes=pdptes, memory=memory)
        access = "fetch" if fetch else "write" if write else "read"
        data = self._ept(eptp, for_guest.physical, access, refs, linear=for_guest.linear,
                         guest_paging_structure=False, tag="data")
        return NestedTranslation(
            linear=for_guest.linear, guest_physical=for_guest.physical, host_physical=data.host_physical,
            readable=for_guest.readable and data.readable, writable=for_guest.writable and data.writable,
            executable=for_guest.executable and data.executable, user=for_guest.user, dirty=for_guest.dirty,
            page_size=min(for_guest.page_size, data.page_size), guest=for_guest, ept=data, references=refs)

    def load_pdptes(self, cr3: int, *, eptp: int | Eptp) -> tuple[int, int, int, int]:
        """MOV to CR3 with PAE paging under EPT: the four PDPTEs are read through EPT as
        data reads (not as guest paging-structure accesses, so never needing W) and an
        EPT violation there has no valid guest-linear address (qualification bit 7 = 0)."""
        if not isinstance(eptp, Eptp):
            eptp = Eptp.decode(eptp, self.ept.maxphyaddr)
        refs: Counter = Counter()
        self.last_references = refs
        base = cr3 & PAGING_PAE.cr3_mask
        t = self._ept(eptp, base, "read", refs, linear=None, guest_paging_structure=False, tag="PDPTE")
        hpa = t.host_physical
        self._count(refs, ("PDPTE", None), PAE_PDPTES)
        return tuple(self.guest.read(hpa + ENTRY_SIZE_64 * i, ENTRY_SIZE_64) for i in range(PAE_PDPTES))  # type: ignore[return-value]


# -- the fast path ---------------------------------------------------------------------------
_EPT_STEPS = tuple(zip(EPT_LEVEL_NAMES, EPT_LEVEL_SHIFTS, strict=True))

# Plain ints for the straight-line walk (no attribute lookups on the hot path).
_P, _RW, _US, _A, _D, _PS = PTE.P, PTE.RW, PTE.US, PTE.A, PTE.D, PTE.PS
_PRESENT_ACCESSED = _P | _A
_EPT_R, _EPT_W, _EPT_X, _EPT_LARGE = EPTE.R, EPTE.W, EPTE.X, EPTE.LARGE
_WP = CR0.WP
_UNUSUAL_CR4 = CR4.PSE | CR4.SMEP | CR4.SMAP   # 4 MiB pages possible, or SMEP/SMAP rights to apply


def fast_walk_32(nested: NestedWalker, eptp: Eptp, cr0: int, cr3: int, cr4: int, linear: int,
                 write: bool, user: bool, fetch: bool):
    """The common case of a 2-D walk, straight-line: 32-bit guest paging with 4 KiB pages
    whose A (and D) flags are already set, under 4-level EPT of 4 KiB pages without A/D
    flags, every right granted. Reads and counts exactly what :meth:`NestedWalker.walk`
    would (2 guest entries, 3 x 4 EPT entries), without its generality; returns
    ``(host_physical, writable, executable)`` or None, having changed nothing, whenever
    anything is unusual (a fault, a large page, a flag to set), so that the caller runs
    the full walk and gets the exact outcome. A successful fast walk always reads
    :data:`FAST_WALK_REFERENCES`; it is counted in ``nested.fast_walks``.
    """
    if eptp.ad or nested.pwc_enabled or cr4 & _UNUSUAL_CR4:
        return None
    read64 = nested.ept.read64
    reserved = nested.ept._reserved
    address_mask = nested.ept._address_mask
    pml4 = eptp.pml4

    memo = nested.ept_memo
    if nested.ept_memo_eptp != eptp.pml4:
        memo.clear()
        nested.ept_memo_eptp = eptp.pml4

    def ept(gpa: int, need: int):
        hit = memo.get(gpa >> PAGE_SHIFT)
        if hit is not None:
            return (hit[0] | (gpa & PAGE_OFFSET_MASK), hit[1]) if not need & ~hit[1] else None
        table, combined = pml4, EPT_RWX
        for level, (_name, shift) in enumerate(_EPT_STEPS):
            value = read64(table + ((gpa >> shift) & EPT_INDEX_MASK) * EPT_ENTRY_SIZE)
            rwx = value & EPT_RWX
            if not rwx or (rwx & _EPT_W and not rwx & _EPT_R) or value & reserved[(level, False)] \
                    or (level and value & _EPT_LARGE):
                return None
            combined &= rwx
            table = value & address_mask
        if (value & EPT_MEMTYPE_MASK) >> EPT_MEMTYPE_SHIFT in RESERVED_MEMORY_TYPES:
            return None
        memo[gpa >> PAGE_SHIFT] = (table, combined)
        if need & ~combined:
            return None
        return table | (gpa & PAGE_OFFSET_MASK), combined

    gread = nested.guest.read
    pde_gpa = (cr3 & CR3_PD_MASK_32) | (linear >> PDE_SHIFT_32) * ENTRY_SIZE_32
    t = ept(pde_gpa, _EPT_R)
    if t is None:
        return None
    pde = gread(t[0], 4)
    if pde & (_P | _PS) != _P or not pde & _A:  # not present, a 4 MiB page, or A to set
        return None
    pte_gpa = (pde & PAGE_MASK) | ((linear >> PTE_SHIFT) & INDEX_MASK_32) * ENTRY_SIZE_32
    t = ept(pte_gpa, _EPT_R)
    if t is None:
        return None
    pte = gread(t[0], 4)
    if pte & _PRESENT_ACCESSED != _PRESENT_ACCESSED or (write and not pte & _D):
        return None
    user_ok = pde & pte & _US
    write_ok = pde & pte & _RW
    if user and not user_ok:
        return None
    writable = bool(write_ok) or (not user and not cr0 & _WP)
    if write and not writable:
        return None
    data = ept((pte & PAGE_MASK) | (linear & PAGE_OFFSET_MASK), _EPT_X if fetch else _EPT_W if write else _EPT_R)
    if data is None:
        return None
    nested.fast_walks += 1
    return data[0], writable and bool(data[1] & _EPT_W), bool(data[1] & _EPT_X)


FAST_WALK_REFERENCES = Counter({(tag, name): 1 for tag in ("PDE", "PTE", "data") for name, _ in _EPT_STEPS})
FAST_WALK_REFERENCES.update({("PDE", None): 1, ("PTE", None): 1})
