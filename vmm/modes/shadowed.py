"""Shadow paging for the software VMMs (``trap``, ``bt``): the guest's page tables are
never the ones the MMU uses; the VMM keeps shadow tables (:mod:`vmm.mmu.shadow`) in its
own memory and fills them on demand.

This is the pre-VT-x arrangement VMware and Xen (for HVM) used: a TLB miss walks the
shadow; a miss there is a "hidden" page fault the VMM takes itself (walk the guest's
tables, install the shadow entry, resume) unless the guest's own tables fault too, in
which case the #PF is the guest's and is delivered to it. Guest page-table pages are
write-protected in the shadow, so a write to one reaches the VMM and zaps what was
derived from it. Here it all happens synchronously in the TLB-fill hook; ``vtx`` does
the same work from #PF / CR3 / INVLPG VM exits.

The mixin expects a :class:`~vmm.modes.native.NativeMode` subclass and ``guest_cr0()``.
"""
from __future__ import annotations

from ..cpu.delivery import PF
from ..cpu.engine import PROT_EXEC, PROT_READ, PROT_WRITE, Fault, Fill
from ..mmu.hostmem import HostPages
from ..mmu.paging import CR0_PG, PageFault
from ..mmu.shadow import ShadowPaging

PAGE_MASK = 0xFFFFF000
PAGING_CR0_BITS = (1 << 31) | (1 << 16) | 1       # PG, WP, PE: the shadow is rebuilt when they change
PAGING_CR4_BITS = (1 << 4) | (1 << 5) | (1 << 7)  # PSE, PAE, PGE


class ShadowMmu:
    """TLB fills through shadow page tables, hidden faults handled in place."""

    def init_shadow(self) -> None:
        vm = self.vm
        self.host_pages = HostPages(vm.host_alloc, vm.engine.read_phys, vm.engine.write_phys, vm.engine.read_u64)
        self.shadow = ShadowPaging(self.host_pages, flush_tlb=vm.engine.flush_tlb)

    def guest_cr0(self) -> int:
        return self.vm.engine.reg("cr0")

    def tlb_fill(self, vaddr: int, access: str) -> Fill | Fault:
        self.tlb_fills += 1
        page = vaddr & PAGE_MASK
        if not self.guest_cr0() & CR0_PG:  # guest paging off: the VMM's identity map
            return self.fill(page, page, PROT_READ | PROT_WRITE | PROT_EXEC, access)
        if self.shadow.root is None:
            self.shadow.activate(self.vm.engine.reg("cr3"))
        write, user = access == "write", self._user_access(vaddr)
        hit = self.shadow.lookup(vaddr, write, user)
        if hit is None:
            try:
                t = self.walk(vaddr, write, user)
            except PageFault as pf:
                self.shadow.counters.true_faults += 1
                return Fault(PF, pf.error_code, vaddr, access)
            target = t.physical & PAGE_MASK
            if write and self.shadow.is_protected(target):
                self.shadow.guest_table_written(target)
            hit = self.shadow.sync(vaddr, write, t)
        host_page, writable = hit
        return self.fill(page, host_page, PROT_READ | PROT_EXEC | (PROT_WRITE if writable else 0), access)

    def walk(self, linear: int, write: bool, user: bool, set_ad: bool = True):
        eng = self.vm.engine
        cr0 = self.guest_cr0()
        if not cr0 & CR0_PG:
            return None
        return self.walker.walk(cr0, eng.reg("cr3"), eng.reg("cr4"), linear, write=write, user=user, set_ad=set_ad)

    # -- what the VMM does when the guest changes its paging state ----------------------------
    def guest_cr3_loaded(self, value: int) -> None:
        if self.guest_cr0() & CR0_PG or self.shadow.root is not None:
            self.shadow.activate(value)
        self.vm.engine.flush_tlb()

    def paging_mode_changed(self) -> None:
        self.shadow.reset()
        if self.shadow.root is None:
            self.shadow.activate(self.vm.engine.reg("cr3"))
        self.vm.engine.flush_tlb()

    def guest_invlpg(self, linear: int) -> None:
        self.shadow.invalidate(linear)
        self.vm.engine.flush_tlb()

    def memory_counters(self) -> dict[str, int]:
        return shadow_counters(self.shadow, "delivered")


def shadow_counters(shadow, true_faults: str) -> dict[str, int]:
    """The shadow-paging statistics of ``vmm run --stat`` (``true_faults``: what the VMM
    did with the guest's own faults, "delivered" or "injected")."""
    c = shadow.counters
    return {
        "hidden page faults (shadow filled)": c.hidden_faults,
        f"true page faults ({true_faults})": c.true_faults,
        "guest page-table writes intercepted": c.pte_write_intercepts,
        "CR3 switches": c.cr3_switches,
        "INVLPG": c.invlpg,
        "shadow resets (paging-mode changes)": c.resets,
        "shadow pages built": c.pages_built,
        "shadow pages dropped": c.pages_dropped,
        "shadow entries zapped": c.entries_zapped,
        "shadow-table references": sum(c.references.values()),
    }
