"""Shadow paging: the page tables the MMU really walks while the guest believes its own
are in use (VMware's and pre-EPT KVM's memory virtualization).

For each guest CR3 the VMM keeps a shadow page directory in host memory, a 2-level
32-bit table mapping guest-linear pages straight to host-physical frames. Entries are
filled lazily: a TLB miss that finds no shadow entry is a page fault the guest never
sees (a *hidden* fault: the VMM walks the guest's tables, and fills the shadow entry);
if the guest's own tables say the page is absent or forbidden, it is a *true* fault and
is injected into the guest.

Consistency. Every guest page-table frame a walk went through is *write-protected*:
the shadow maps it read-only. A guest write to one is intercepted (a #PF exit): every
shadow entry derived from that frame is zapped, and the frame is left writable until
the next walk through it protects it again, so a guest filling a table in a loop pays
one exit per walk in between, not one per entry. The shadow therefore never holds a
translation the guest's tables no longer give. CR3 loads switch shadow roots (kept per
guest CR3); INVLPG drops one entry; a change of paging mode (CR0.PG/WP, CR4.PSE/PAE)
drops them all.

Shadow entries (4 bytes, like a guest's): P, R/W (only when the guest allows the write,
the guest PTE is already dirty, and the frame is not a protected page table), U/S.
Guest 4 MiB pages are shadowed with 4 KiB entries. NX is not shadowed (32-bit format).
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from ..x86 import PTE, PFError
from ..x86.paging import ENTRY_SIZE_32, INDEX_MASK_32, PAGE_MASK, PDE_SHIFT_32, PTE_SHIFT

P, RW, US = PTE.P, PTE.RW, PTE.US


def pde_offset(linear: int) -> int:
    """Byte offset of the entry for ``linear`` in a 32-bit page directory (bits 31:22)."""
    return (linear >> PDE_SHIFT_32) * ENTRY_SIZE_32


def pte_offset(linear: int) -> int:
    """Byte offset of the entry for ``linear`` in a 32-bit page table (bits 21:12)."""
    return ((linear >> PTE_SHIFT) & INDEX_MASK_32) * ENTRY_SIZE_32


@dataclass
class ShadowCounters:
    hidden_faults: int = 0
    true_faults: int = 0
    pte_write_intercepts: int = 0
    cr3_switches: int = 0
    invlpg: int = 0
    resets: int = 0
    pages_built: int = 0
    pages_dropped: int = 0
    entries_zapped: int = 0
    references: Counter = field(default_factory=Counter)  # shadow-table reads by level


class ShadowPaging:
    """Shadow tables in host memory (``host``: a :class:`~vmm.mmu.hostmem.HostPages`)."""

    def __init__(self, host, p2m: Callable[[int], int] = lambda gpa: gpa,
                 flush_tlb: Callable[[], None] = lambda: None):
        self.host = host
        self.p2m = p2m
        self.flush_tlb = flush_tlb  # the hardware TLB may still hold an entry we downgrade
        self.roots: dict[int, int] = {}            # guest CR3 page -> shadow page directory
        self.tables: dict[int, dict[int, int]] = {}  # shadow PD -> {PDE index: shadow PT}
        self.root: int | None = None
        self.guest_cr3: int | None = None
        self.derived: dict[int, set[tuple[int, int]]] = {}  # guest table frame -> {(root, linear page)}
        self.rmap: dict[int, set[tuple[int, int]]] = {}     # target guest frame -> {(root, linear page)}
        self.protected: set[int] = set()                    # guest table frames mapped read-only
        self.counters = ShadowCounters()

    # -- the hardware side: a TLB miss walks the shadow tables -----------------------------------
    def lookup(self, linear: int, write: bool, user: bool) -> tuple[int, bool] | None:
        """(host page, writable) if the shadow allows this access; None is a shadow #PF."""
        if self.root is None:
            return None
        refs = self.counters.references
        pde = self.host.read32(self.root + pde_offset(linear))
        refs["shadow PDE"] += 1
        if not pde & P:
            return None
        pte = self.host.read32((pde & PAGE_MASK) + pte_offset(linear))
        refs["shadow PTE"] += 1
        if not pte & P or (write and not pte & RW) or (user and not pte & US):
            return None
        return pte & PAGE_MASK, bool(pte & RW)

    def fault_error_code(self, linear: int, write: bool, user: bool) -> int:
        """The #PF error code the shadow walk produces (what the exit reports)."""
        present = False
        if self.root is not None:
            pde = self.host.read32(self.root + pde_offset(linear))
            if pde & P:
                present = bool(self.host.read32((pde & PAGE_MASK) + pte_offset(linear)) & P)
        return (PFError.P if present else 0) | (PFError.WR if write else 0) | (PFError.US if user else 0)

    # -- the VMM side -------------------------------------------------------------------------
    def activate(self, guest_cr3: int) -> None:
        """CR3 load: switch to (or build) the shadow root for this guest CR3."""
        page = guest_cr3 & PAGE_MASK
        self.counters.cr3_switches += 1
        root = self.roots.get(page)
        if root is None:
            root = self.roots[page] = self.host.alloc()
            self.tables[root] = {}
            self.counters.pages_built += 1
        self.root, self.guest_cr3 = root, page

    def is_protected(self, frame: int) -> bool:
        return frame & PAGE_MASK in self.protected

    def sync(self, linear: int, write: bool, translation) -> tuple[int, bool]:
        """Install the shadow entry for ``linear`` from a successful guest walk."""
        lp = linear & PAGE_MASK
        root = self.root
        target = translation.physical & PAGE_MASK
        table_frames = {addr & PAGE_MASK for _, addr, _ in translation.entries}
        if write:
            # The guest writes a table this very walk went through (a self-mapped page
            # directory): let the write through; the next walk protects the frame again.
            table_frames.discard(target)
        for frame in table_frames:
            if frame not in self.protected:
                self._protect(frame)
            self.derived.setdefault(frame, set()).add((root, lp))
        writable = translation.writable and (translation.dirty or write) and target not in self.protected
        host_page = self.p2m(target)
        pts = self.tables[root]
        index = linear >> PDE_SHIFT_32
        pt = pts.get(index)
        if pt is None:
            pt = pts[index] = self.host.alloc()
            self.counters.pages_built += 1
            self.host.write32(root + pde_offset(linear), pt | P | RW | US)
        self.host.write32(pt + pte_offset(linear),
                          host_page | P | (RW if writable else 0) | (US if translation.user else 0))
        self.rmap.setdefault(target, set()).add((root, lp))
        self.counters.hidden_faults += 1
        return host_page, writable

    def _protect(self, frame: int) -> None:
        """A guest page-table frame: drop write access from every shadow entry mapping it."""
        self.protected.add(frame)
        for root, lp in self.rmap.get(frame, ()):
            addr = self._pte_address(root, lp)
            if addr is not None:
                pte = self.host.read32(addr)
                if pte & RW:
                    self.host.write32(addr, pte & ~RW)
                    self.flush_tlb()

    def guest_table_written(self, frame: int) -> None:
        """The guest writes one of its page-table frames: zap what was derived from it
        and let the write through (the next walk using the frame protects it again)."""
        frame &= PAGE_MASK
        self.counters.pte_write_intercepts += 1
        self.protected.discard(frame)
        zapped = False
        for root, lp in self.derived.pop(frame, ()):
            zapped |= self._zap(root, lp)
        if zapped:
            self.flush_tlb()

    def invalidate(self, linear: int) -> None:
        """INVLPG: drop the current root's entry for this page."""
        self.counters.invlpg += 1
        if self.root is not None:
            self._zap(self.root, linear & PAGE_MASK)

    def reset(self) -> None:
        """A paging-mode change: every shadow table is dropped and rebuilt on demand."""
        self.counters.resets += 1
        for root, pts in self.tables.items():
            for pt in pts.values():
                self.host.free(pt)
                self.counters.pages_dropped += 1
            self.host.free(root)
            self.counters.pages_dropped += 1
        self.roots.clear()
        self.tables.clear()
        self.derived.clear()
        self.rmap.clear()
        self.protected.clear()
        self.root = None
        if self.guest_cr3 is not None:
            self.activate(self.guest_cr3)
            self.counters.cr3_switches -= 1  # rebuilding the root is not a guest CR3 load

    def _pte_address(self, root: int, lp: int) -> int | None:
        pt = self.tables.get(root, {}).get(lp >> PDE_SHIFT_32)
        return None if pt is None else pt + pte_offset(lp)

    def _zap(self, root: int, lp: int) -> bool:
        addr = self._pte_address(root, lp)
        if addr is not None and self.host.read32(addr) & P:
            self.host.write32(addr, 0)
            self.counters.entries_zapped += 1
            return True
        return False
