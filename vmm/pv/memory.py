"""A PV domain's memory: machine frames, the p2m/m2p tables, and direct paging.

The domain's pseudo-physical frame ``pfn`` lives at machine frame ``pfn + offset``: the
translation is deliberately not the identity, so a guest that forgot to translate (put
a pseudo-physical address in a page-table entry) is caught at once. The guest finds its
machine frames in ``start_info.mfn_list`` (the p2m table) and writes machine addresses
into its page tables, which are the page tables the CPU walks ("direct paging").

The guest cannot write its page tables: every change is a ``mmu_update`` (or
``update_va_mapping``) that this module validates before anything is written:

* the entry's own frame and every frame the new entry maps must be the domain's
  (else ``-EPERM``); a 4 MiB entry (PS) must own all 1024 frames it covers;
* a 4 KiB entry may not map a page-table frame writable (``-EINVAL``, Xen's type rule);
* a frame that becomes part of the active tree (``NEW_BASEPTR``, a PDE pointing at it,
  a pin) is validated entry by entry first (``-EINVAL`` if any entry fails).

Page-table frames are the frames of the active tree (the base table and the tables its
present 4 KiB PDEs point at) plus pinned tables. Departure from Xen, documented: a frame
that *becomes* a page table while an older entry maps it writable is accepted, and the
MMU (the TLB-fill hook) serves page-table frames read-only whatever the entries say, so
the CPU can still never write one. Xen would refuse to make such a frame a page table.
"""
from __future__ import annotations

import struct

from ..x86 import PTE
from ..x86.paging import ENTRIES_32, ENTRY_SIZE_32, LARGE_PAGE_32, LARGE_PAGE_MASK_32, PAGE_SHIFT, PAGE_SIZE
from .abi import Errno

# PAGE_SHIFT and PAGE_SIZE are re-exported for vmm/modes/pv.py (its owner moves to vmm.x86).
__all__ = ["ENTRIES", "L1", "L2", "PAGE_SHIFT", "PAGE_SIZE", "DomainMemory", "HypercallError"]

ENTRIES = ENTRIES_32                # entries of a 32-bit page table or directory
LARGE_FRAMES = LARGE_PAGE_32 // PAGE_SIZE   # frames under one 4 MiB PDE
L1, L2 = 1, 2                       # Xen's table levels: a page table, a page directory


class HypercallError(Exception):
    """A hypercall fails with ``-errno``; nothing it would have changed is changed."""

    def __init__(self, errno: Errno, why: str = ""):
        super().__init__(f"-{errno.name}{': ' + why if why else ''}")
        self.errno = errno


class DomainMemory:
    """Ownership, p2m/m2p and page-table validation for one domain.

    ``read``/``write`` access machine memory (the engine's host-physical space).
    """

    def __init__(self, read, write, machine_base: int, nr_pages: int):
        self.read, self.write = read, write
        self.offset = machine_base >> PAGE_SHIFT      # mfn = pfn + offset
        self.nr_pages = nr_pages
        self.max_pages = nr_pages
        self.released: set[int] = set()               # mfns given back (decrease_reservation)
        self.extra_mappable: set[int] = set()         # e.g. the shared-info frame
        self.m2p = {}                                 # mfn -> pfn where changed (MMU_MACHPHYS_UPDATE)
        self.base: int | None = None                  # mfn of the active page directory
        self.pinned: dict[int, int] = {}              # mfn -> level (L1 or L2)
        self.pt_frames: frozenset[int] = frozenset()  # every frame that is a page table now
        self.l2_frames: frozenset[int] = frozenset()
        self.validations = 0                          # tables validated entry by entry

    # -- ownership -------------------------------------------------------------------------
    def pfn_to_mfn(self, pfn: int) -> int:
        return pfn + self.offset

    def mfn_to_pfn(self, mfn: int) -> int:
        return self.m2p.get(mfn, mfn - self.offset)

    def owns(self, mfn: int) -> bool:
        """The domain's RAM, less the frames it gave back."""
        return 0 <= mfn - self.offset < self.max_pages and mfn not in self.released

    def mappable(self, mfn: int) -> bool:
        return self.owns(mfn) or mfn in self.extra_mappable

    def current_pages(self) -> int:
        return self.max_pages - len(self.released)

    # -- entries -----------------------------------------------------------------------------
    def check_entry(self, value: int, type_rule: bool = True) -> None:
        """An entry the domain may write anywhere a page-table entry goes; ``type_rule``:
        also refuse a writable mapping of a page-table frame (entries of L1 tables)."""
        if not value & PTE.P:
            return  # not-present entries are the guest's to use as it likes
        mfn = value >> PAGE_SHIFT
        if value & PTE.PS:
            first = (value & LARGE_PAGE_MASK_32) >> PAGE_SHIFT
            if not all(self.owns(first + i) for i in range(LARGE_FRAMES)):
                raise HypercallError(Errno.EPERM, f"4 MiB page at machine {first << PAGE_SHIFT:#x} not the domain's")
            return
        if not self.mappable(mfn):
            raise HypercallError(Errno.EPERM, f"machine frame {mfn:#x} is not the domain's")
        if type_rule and value & PTE.RW and mfn in self.pt_frames:
            raise HypercallError(Errno.EINVAL, f"frame {mfn:#x} is a page table: no writable mapping")

    def table(self, mfn: int) -> tuple[int, ...]:
        return struct.unpack(f"<{ENTRIES}I", self.read(mfn << PAGE_SHIFT, PAGE_SIZE))

    def validate_table(self, mfn: int, level: int, seen: set[int] | None = None) -> None:
        """Every present entry of a table about to be used by the MMU (Xen: get_page_type)."""
        if not self.owns(mfn):
            raise HypercallError(Errno.EPERM, f"table frame {mfn:#x} is not the domain's")
        self.validations += 1
        saved, self.pt_frames = self.pt_frames, frozenset()  # type rule applies to new entries only
        try:
            for value in self.table(mfn):
                if value & PTE.P:
                    try:
                        self.check_entry(value)
                    except HypercallError as err:
                        raise HypercallError(Errno.EINVAL, f"table {mfn:#x}: {err}") from None
        finally:
            self.pt_frames = saved
        if level == L2:
            seen = set() if seen is None else seen
            for value in self.table(mfn):
                l1 = value >> PAGE_SHIFT
                if value & PTE.P and not value & PTE.PS and l1 not in seen and l1 not in self.pt_frames:
                    seen.add(l1)
                    self.validate_table(l1, L1, seen)

    def update(self, machine_ptr: int, value: int) -> None:
        """MMU_NORMAL_PT_UPDATE: validate, write, and keep the page-table set current."""
        if machine_ptr & (ENTRY_SIZE_32 - 1):
            raise HypercallError(Errno.EINVAL, f"entry address {machine_ptr:#x} not aligned")
        frame = machine_ptr >> PAGE_SHIFT
        if not self.owns(frame):
            raise HypercallError(Errno.EPERM, f"entry at machine {machine_ptr:#x} is not in the domain's memory")
        # In a page directory the W bit of an entry covers the 4 MiB it maps, not the L1
        # frame it names; a frame not yet a page table is a plain page until it becomes
        # one (validated then, as Xen types a page when it is first used as a table).
        self.check_entry(value, type_rule=frame in self.pt_frames and frame not in self.l2_frames)
        new_table = None
        if frame in self.l2_frames and value & PTE.P and not value & PTE.PS:
            l1 = value >> PAGE_SHIFT
            if l1 not in self.pt_frames:
                self.validate_table(l1, L1)
                new_table = l1
        self.write(machine_ptr, struct.pack("<I", value))
        if frame in self.l2_frames or new_table is not None:
            self.recompute()

    # -- the active tree -----------------------------------------------------------------------
    def new_baseptr(self, mfn: int) -> None:
        if mfn != self.base and mfn not in self.pinned:
            self.validate_table(mfn, L2)
        self.base = mfn
        self.recompute()

    def pin(self, mfn: int, level: int) -> None:
        if mfn in self.pinned:
            raise HypercallError(Errno.EINVAL, f"frame {mfn:#x} already pinned")
        self.validate_table(mfn, level)
        self.pinned[mfn] = level
        self.recompute()

    def unpin(self, mfn: int) -> None:
        if self.pinned.pop(mfn, None) is None:
            raise HypercallError(Errno.EINVAL, f"frame {mfn:#x} is not pinned")
        self.recompute()

    def recompute(self) -> None:
        l2 = {m for m, lvl in self.pinned.items() if lvl == L2}
        if self.base is not None:
            l2.add(self.base)
        frames = set(l2) | {m for m, lvl in self.pinned.items() if lvl == L1}
        for table in l2:
            for value in self.table(table):
                if value & PTE.P and not value & PTE.PS:
                    frames.add(value >> PAGE_SHIFT)
        self.l2_frames = frozenset(l2)
        self.pt_frames = frozenset(frames)

    # -- reservations --------------------------------------------------------------------------------
    def release(self, mfn: int) -> None:
        if not self.owns(mfn):
            raise HypercallError(Errno.EINVAL, f"frame {mfn:#x} is not the domain's")
        if mfn in self.pt_frames:
            raise HypercallError(Errno.EBUSY, f"frame {mfn:#x} is a page table")
        self.released.add(mfn)

    def reclaim(self) -> int | None:
        """A frame given back earlier, or None when the domain is at its maximum."""
        if not self.released:
            return None
        mfn = min(self.released)
        self.released.discard(mfn)
        self.write(mfn << PAGE_SHIFT, bytes(PAGE_SIZE))  # scrubbed, as Xen hands frames out
        return mfn
