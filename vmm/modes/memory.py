"""MMU strategies: how a mode answers the engine's TLB misses. A mode *has* one.

* :class:`GuestPaging`: the guest's own tables, walked one-dimensionally on each miss
  (``native``; the walk the hardware makes);
* :class:`ShadowMmu`: shadow page tables kept by the VMM from the guest's (``trap``,
  ``bt``, ``vtx``); a shadow miss is a hidden page fault the VMM handles in place, or,
  under VT-x, a #PF VM exit (the hypervisor passes ``on_miss``);
* EPT's two-dimensional walk (:class:`vmm.modes.vtx_ept.EptMmu`) and Xen's direct
  paging (:class:`vmm.modes.pv.DirectPaging`) live beside the modes that use them.

Every strategy answers ``tlb_fill``, ``walk``, ``translate``, ``map_guest_ram``,
``write_guest``, the paging-state changes (``guest_cr3_loaded``, ``paging_mode_changed``,
``guest_invlpg``) and ``memory_counters``. The last step of every fill is the code-page
policy of :class:`CodePages`, which the watchers of code (the VT-x site scanner, the
binary translator, the tracer's decode cache) subscribe to.
"""
from __future__ import annotations

from collections.abc import Callable

from ..cpu.delivery import PF
from ..cpu.engine import ACCESS_FETCH, ACCESS_WRITE, PROT_EXEC, PROT_READ, PROT_WRITE, Fault, Fill, GuestMemoryError
from ..mmu.hostmem import HostPages
from ..mmu.paging import PageFault, Translation, Walker32, phys_reader, phys_writer
from ..mmu.shadow import ShadowPaging
from ..x86 import CR0, CR4, PAGE_MASK, PAGE_SIZE, GiB
from ..x86.segments import USER_RING

ALL = PROT_READ | PROT_WRITE | PROT_EXEC
ADDRESS_MASK = 0xFFFFFFFF
# The unassigned device's window: one host-physical alias of the whole 32-bit guest-physical
# space, above 4 GiB where neither guest RAM nor the VMM's own memory is, so that a fill
# for an unassigned guest page is answered with the window's page at the same offset and
# the device sees the guest-physical address itself.
UNASSIGNED_BASE = 4 * GiB
UNASSIGNED_SIZE = 4 * GiB
ZERO_CODE_PAGE = UNASSIGNED_BASE + UNASSIGNED_SIZE  # what a fetch from unassigned memory reads
VMM_UNASSIGNED_BASE = 4 * UNASSIGNED_SIZE   # the same device for the VMM's own accesses (no exits)
UNASSIGNED_READS = "unassigned-memory reads (0 returned)"
UNASSIGNED_WRITES = "unassigned-memory writes (dropped)"
PAGING_CR0_BITS = CR0.PG | CR0.WP | CR0.PE       # the shadow is rebuilt when they change
PAGING_CR4_BITS = CR4.PSE | CR4.PAE | CR4.PGE
DESCRIPTOR_TABLES = ("gdtr", "ldtr", "idtr", "tr")


def unassigned_host(gpa: int) -> int:
    """Where the VMM's own access to an unassigned guest-physical address goes (its walk
    for an emulated instruction's operand, an event delivery's IDT or stack): the
    unassigned device's second window, so it reads 0 and drops writes, counted, as the
    guest's access to the same address does, and is never taken for the guest's own
    access (in vtx-ept that would be an EPT violation)."""
    return VMM_UNASSIGNED_BASE + (gpa & (UNASSIGNED_SIZE - 1))


def is_unassigned_host(host: int) -> bool:
    """Whether a host-physical address is the unassigned device's (either window, or the
    zero page fetches read): no memory is there, only the device's answers."""
    return UNASSIGNED_BASE <= host < ZERO_CODE_PAGE + PAGE_SIZE or \
        VMM_UNASSIGNED_BASE <= host < VMM_UNASSIGNED_BASE + UNASSIGNED_SIZE


class UnassignedMemory:
    """Guest-physical addresses with neither RAM nor a device behind them, as on QEMU's PC
    (its ``unassigned_mem_ops``): a read returns 0, a write is dropped, the guest goes on.

    VMM-private memory (shadow and EPT tables, VMX bitmaps, the VMCS) is not
    guest-physical either: a guest page pointing at it reaches this device, never the
    VMM's data. Data accesses go through an MMIO window (:data:`UNASSIGNED_BASE` plus the
    guest-physical address), so only accesses to unassigned memory call into the VMM;
    instruction fetches read a shared page of zeros (Unicorn fetches from RAM only).
    ``emulate(gpa, size, value)``, when set, takes each access instead (``vtx-ept``: an
    EPT violation the hypervisor emulates); it returns the value a read sees. The VMM's
    own accesses use a second window (:func:`unassigned_host`) that ``emulate`` never
    sees. Both count per access the device sees (a VMM read may be split into several).
    """

    def __init__(self, engine):
        self.reads = 0
        self.writes = 0
        self.emulate: Callable[[int, int, int | None], int | None] | None = None
        engine.map_mmio(UNASSIGNED_BASE, UNASSIGNED_SIZE, self._load, self._store)
        engine.map_mmio(VMM_UNASSIGNED_BASE, UNASSIGNED_SIZE, self.read, self.write)
        engine.map_ram(ZERO_CODE_PAGE, PAGE_SIZE)

    def _load(self, gpa: int, size: int) -> int:
        emulate = self.emulate
        if emulate is not None:
            return emulate(gpa, size, None) or 0
        return self.read(gpa, size)

    def _store(self, gpa: int, size: int, value: int) -> None:
        emulate = self.emulate
        if emulate is not None:
            emulate(gpa, size, value)
        else:
            self.write(gpa, size, value)

    def read(self, gpa: int, size: int) -> int:
        """A load from unassigned memory: 0."""
        self.reads += 1
        return 0

    def write(self, gpa: int, size: int, value: int) -> None:
        """A store to unassigned memory: dropped."""
        self.writes += 1

    def read_bytes(self, gpa: int, size: int) -> bytes:
        """The VMM's own read on the guest's behalf (a page-table walk): zeros."""
        self.reads += 1
        return bytes(size)

    @staticmethod
    def fill(guest_page: int, perms: int, access: str) -> Fill:
        """The TLB entry of an unassigned guest page."""
        if access == ACCESS_FETCH:
            return Fill(ZERO_CODE_PAGE, PROT_READ | PROT_EXEC)
        return Fill(UNASSIGNED_BASE + (guest_page & (UNASSIGNED_SIZE - 1)), perms & (PROT_READ | PROT_WRITE))

    def counters(self) -> dict[str, int]:
        return {UNASSIGNED_READS: self.reads, UNASSIGNED_WRITES: self.writes}


class CodePages:
    """The last step of a TLB fill: the code-page policy for whoever watches code.

    Watchers (objects with ``fetch(linear_page, page)`` and ``written(page)``) learn of
    each code page when it is first fetched; a code page is then mapped without write
    permission, so a write to it comes back as a fill, is reported, and maps the page
    writable but not executable until the next fetch (self-modifying code, and code and
    data sharing a page, keep working). A page that is neither RAM nor a device (VMM
    memory included: it is not guest-physical) is the unassigned device's
    (:class:`UnassignedMemory`).
    """

    def __init__(self, vm, is_guest_physical: Callable[[int], bool]):
        self.vm = vm
        self.ram_size = vm.ram_size
        self.is_guest_physical = is_guest_physical
        self.watchers: list = []
        self.frames: set[int] = set()
        self.unassigned = UnassignedMemory(vm.engine)

    def fill(self, linear_page: int, guest_page: int, perms: int, access: str) -> Fill:
        if guest_page >= self.ram_size and not self.is_guest_physical(guest_page):
            return self.unassigned.fill(guest_page, perms, access)
        watchers = self.watchers
        if not watchers:
            return Fill(guest_page, perms)
        if access == ACCESS_FETCH:
            for w in watchers:
                w.fetch(linear_page, guest_page)
            self.frames.add(guest_page)
            return Fill(guest_page, perms & ~PROT_WRITE)
        if guest_page in self.frames:
            if access == ACCESS_WRITE:
                self.frames.discard(guest_page)
                for w in watchers:
                    w.written(guest_page)
                return Fill(guest_page, perms & ~PROT_EXEC)
            return Fill(guest_page, perms & ~PROT_WRITE)
        # Not yet code: mapped without execute, so that its first fetch still comes here
        # and the watchers scan it (a page read or written before it runs is no exception).
        return Fill(guest_page, perms & ~PROT_EXEC)


def user_access(engine, vaddr: int) -> bool:
    """Whether a TLB miss is a CPL-3 access. The fill hook does not say which MMU index
    asked, so a user-mode fill that lands on the GDT/LDT/IDT/TSS page is treated as the
    implicit supervisor access it is (a segment load reads the GDT). Virtual-8086 code
    runs at CPL 3 too."""
    if engine.cpl() != USER_RING:   # CS.RPL, or virtual-8086 mode
        return False
    page = vaddr & PAGE_MASK
    for table in DESCRIPTOR_TABLES:
        _, base, limit = engine.table(table)
        if base & PAGE_MASK <= page <= (base + limit) & PAGE_MASK:
            return False
    return True


def fill_publishing_walks(vm, walker, fill: Callable[[int, str], Fill | Fault], vaddr: int,
                          access: str) -> Fill | Fault:
    """Answer a TLB miss with ``fill`` and, when anyone listens on the bus's ``walk``
    topic, tell them how many paging-structure references the walk made (the walker
    counts them; with nobody listening this costs one truth test)."""
    walks = vm.bus.walk
    if not walks:
        return fill(vaddr, access)
    before = walker.references
    answer = fill(vaddr, access)
    for observe in walks:
        observe(vaddr, walker.references - before)
    return answer


class GuestPaging:
    """The guest's own page tables, in its own RAM: a one-dimensional walk per TLB miss.

    ``guest_cr0`` is the CR0 the guest believes it has (trap mode keeps it virtual)."""

    name = "guest paging"

    def __init__(self, vm, pages: CodePages, guest_cr0: Callable[[], int] | None = None):
        self.vm = vm
        self.pages = pages
        self.ram_size = vm.ram_size
        eng = vm.engine
        self.guest_cr0 = guest_cr0 or (lambda: eng.reg("cr0"))
        # The guest's page tables are read (and A/D bits written) only inside its RAM: a
        # CR3 or PDE pointing at unassigned memory (VMM memory included) reads 0 there,
        # as the hardware's walk would, and its A/D writes are dropped.
        self.walker = Walker32(phys_reader(self.read_guest_phys), phys_writer(self.write_guest_phys))
        self.tlb_fills = 0

    def _unassigned(self, address: int, size: int, access: str) -> bool:
        """Whether [address, address + size) lies past RAM in unassigned memory; a table
        in a device page stops the VM."""
        if address + size <= self.ram_size:
            return False
        if address >= self.ram_size and not self.pages.is_guest_physical(address & PAGE_MASK):
            return True
        raise GuestMemoryError(address, size, access)

    def read_guest_phys(self, address: int, size: int) -> bytes:
        if self._unassigned(address, size, "read"):
            return self.pages.unassigned.read_bytes(address, size)
        return self.vm.engine.read_phys(address, size)

    def write_guest_phys(self, address: int, data: bytes) -> None:
        if self._unassigned(address, len(data), "write"):
            self.pages.unassigned.write(address, len(data), int.from_bytes(data, "little"))
            return
        self.vm.engine.write_phys(address, data)

    def map_guest_ram(self) -> None:
        """All of the guest's RAM, at host-physical = guest-physical."""
        self.vm.engine.map_ram(0, self.vm.ram_size)

    def write_guest(self, gpa: int, data: bytes) -> None:
        self.vm.engine.write_phys(gpa, data)

    def read_guest(self, gpa: int, size: int) -> bytes:
        return self.vm.engine.read_phys(gpa, size)

    def walk(self, linear: int, write: bool, user: bool, set_ad: bool = True) -> Translation | None:
        """The guest's own translation, or None with paging off; raises PageFault."""
        cr0 = self.guest_cr0()
        if not cr0 & CR0.PG:
            return None
        eng = self.vm.engine
        return self.walker.walk(cr0, eng.reg("cr3"), eng.reg("cr4"), linear, write=write, user=user, set_ad=set_ad)

    def translate(self, linear: int, write: bool, user: bool, set_ad: bool = True) -> int:
        """Guest-linear to guest-physical (== host-physical here); raises PageFault."""
        t = self.walk(linear, write, user, set_ad)
        physical = linear & ADDRESS_MASK if t is None else t.physical
        if not self.pages.is_guest_physical(physical & PAGE_MASK):
            return unassigned_host(physical)
        return physical

    def tlb_fill(self, vaddr: int, access: str) -> Fill | Fault:
        return fill_publishing_walks(self.vm, self.walker, self._fill, vaddr, access)

    def _fill(self, vaddr: int, access: str) -> Fill | Fault:
        self.tlb_fills += 1
        write = access == ACCESS_WRITE
        try:
            t = self.walk(vaddr, write, user_access(self.vm.engine, vaddr))
        except PageFault as pf:
            return Fault(PF, pf.error_code, pf.address, access)
        page = vaddr & PAGE_MASK
        if t is None:
            return self.pages.fill(page, page, ALL, access)
        perms = PROT_READ | PROT_EXEC
        if t.writable and (t.dirty or write):
            perms |= PROT_WRITE  # clean pages stay read-only so the first write sets D
        return self.pages.fill(page, t.physical & PAGE_MASK, perms, access)

    # the hardware walks the tables the guest wrote: nothing to keep in step
    def guest_cr3_loaded(self, value: int) -> None:
        self.vm.engine.flush_tlb()

    def paging_mode_changed(self) -> None:
        self.vm.engine.flush_tlb()

    def guest_invlpg(self, linear: int) -> None:
        self.vm.engine.flush_tlb()

    def memory_counters(self) -> dict[str, int]:
        return {"TLB fills (guest walks)": self.tlb_fills, **self.pages.unassigned.counters()}


class ShadowMmu:
    """TLB fills through shadow page tables the VMM keeps from the guest's.

    This is the pre-EPT arrangement VMware and Xen (for HVM) used: a TLB miss walks the
    shadow; a miss there is a "hidden" page fault the VMM takes itself (walk the guest's
    tables, install the shadow entry, resume) unless the guest's own tables fault too,
    in which case the #PF is the guest's. Guest page-table pages are write-protected in
    the shadow, so a write to one reaches the VMM and zaps what was derived from it.
    ``on_miss(vaddr, write, user, access)``, when given, takes a shadow miss instead of
    the in-place walk (VT-x: a #PF VM exit). ``true_faults`` names what the VMM does
    with the guest's own faults, for the statistics ("delivered" or "injected").
    """

    name = "shadow paging"

    def __init__(self, vm, pages: CodePages, guest: GuestPaging, *, true_faults: str = "delivered",
                 on_miss: Callable[[int, bool, bool, str], Fill | Fault] | None = None):
        eng = vm.engine
        self.vm = vm
        self.pages = pages
        self.guest = guest
        self.walker = guest.walker
        self.host_pages = HostPages(vm.host_alloc, eng.read_phys, eng.write_phys, eng.read_u64)
        self.shadow = ShadowPaging(self.host_pages, flush_tlb=eng.flush_tlb)
        self.on_miss = on_miss
        self.true_fault_label = true_faults
        self.tlb_fills = 0
        self.map_guest_ram = guest.map_guest_ram
        self.write_guest = guest.write_guest
        self.read_guest = guest.read_guest
        self.walk = guest.walk
        self.translate = guest.translate

    def tlb_fill(self, vaddr: int, access: str, user: bool | None = None) -> Fill | Fault:
        """``user``: the privilege of the access when the caller knows it (the engine's
        fill hook does not say: it is taken from CS then)."""
        self.tlb_fills += 1
        page = vaddr & PAGE_MASK
        if not self.guest.guest_cr0() & CR0.PG:  # guest paging off: the VMM's identity map
            return self.pages.fill(page, page, ALL, access)
        shadow = self.shadow
        if shadow.root is None:
            shadow.activate(self.vm.engine.reg("cr3"))
        write = access == ACCESS_WRITE
        if user is None:
            user = user_access(self.vm.engine, vaddr)
        hit = shadow.lookup(vaddr, write, user)
        if hit is None:
            if self.on_miss is not None:
                return self.on_miss(vaddr, write, user, access)
            return self.hidden_fault(vaddr, write, user, access)
        host_page, writable = hit
        return self.pages.fill(page, host_page, PROT_READ | PROT_EXEC | (PROT_WRITE if writable else 0), access)

    def hidden_fault(self, vaddr: int, write: bool, user: bool, access: str) -> Fill | Fault:
        """Walk the guest's tables: fill the shadow, or return the guest's own #PF."""
        try:
            t = self.walk(vaddr, write, user)
        except PageFault as pf:
            self.shadow.counters.true_faults += 1
            return Fault(PF, pf.error_code, vaddr, access)
        assert t is not None, "a shadow miss happens only with guest paging on"
        return self.sync(vaddr, write, access, t)

    def sync(self, vaddr: int, write: bool, access: str, t: Translation) -> Fill:
        """Install the shadow entry for a successful guest walk and answer the fill."""
        target = t.physical & PAGE_MASK
        if write and self.shadow.is_protected(target):
            self.shadow.guest_table_written(target)
        host_page, writable = self.shadow.sync(vaddr, write, t)
        perms = PROT_READ | PROT_EXEC | (PROT_WRITE if writable else 0)
        return self.pages.fill(vaddr & PAGE_MASK, host_page, perms, access)

    # -- what the VMM does when the guest changes its paging state ----------------------------
    def guest_cr3_loaded(self, value: int) -> None:
        if self.guest.guest_cr0() & CR0.PG or self.shadow.root is not None:
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
        """The shadow-paging statistics of ``vmm run --stat``."""
        c = self.shadow.counters
        return {
            "hidden page faults (shadow filled)": c.hidden_faults,
            f"true page faults ({self.true_fault_label})": c.true_faults,
            "guest page-table writes intercepted": c.pte_write_intercepts,
            "CR3 switches": c.cr3_switches,
            "INVLPG": c.invlpg,
            "shadow resets (paging-mode changes)": c.resets,
            "shadow pages built": c.pages_built,
            "shadow pages dropped": c.pages_dropped,
            "shadow entries zapped": c.entries_zapped,
            "shadow-table references": sum(c.references.values()),
            **self.pages.unassigned.counters(),
        }
