"""EPT (2008) as the MMU strategy of ``vtx-ept``: the guest owns its page tables.

No CR3, INVLPG or #PF exits any more: a TLB miss walks the guest's tables *and* EPT,
two-dimensionally (:mod:`vmm.mmu.nested`), every reference counted by (guest level,
EPT level). The EPT tables live in host memory and start empty; the hypervisor fills
them on EPT violations, as KVM's TDP MMU does: guest RAM is backed lazily (a host frame
is allocated and mapped the first time the guest touches the page; the p2m is the
identity, guest RAM occupying host addresses 0..RAM), and a device page gets an entry
that is deliberately misconfigured (write without read), so every access to it is an
EPT-misconfiguration exit that the VMM emulates on the board, as KVM does for MMIO.

VPID: with it (the default), VM entries keep the TLB; without it (``--control
ENABLE_VPID=off``) every VM entry flushes it and the 2-D walks show the price.
``page_walk_cache``: remembers the EPT translation of guest page-table pages.
"""
from __future__ import annotations

from collections import Counter

from ..cpu.cpuid import CR4_RESERVED
from ..cpu.delivery import PF
from ..cpu.engine import ACCESS_FETCH, PROT_EXEC, PROT_READ, PROT_WRITE, Fault, Fill
from ..mmu.ept import EptBuilder, EptMisconfiguration, EptViolation, EptWalker
from ..mmu.hostmem import HostPages
from ..mmu.nested import FAST_WALK_REFERENCES, NestedWalker, fast_walk_32
from ..mmu.paging import GuestWalker, PageFault
from ..vmx.controls import PrimaryProcBased, SecondaryProcBased
from ..vmx.exit_reasons import ExitReason
from ..vmx.exits import RESUME, EptViolationExit, Outcome, Retry, Value
from ..vmx.qualification import EptViolation as EptQualification
from ..vmx.vmcs import Field
from ..x86 import CR0, CR4, PAGE_MASK, PAGE_SIZE, KiB, PFError
from ..x86.paging import ENTRY_SIZE_64
from .memory import ADDRESS_MASK, CodePages, unassigned_host, user_access

CR0_PG = CR0.PG
CR4_VMXE = CR4.VMXE
BACKING_CHUNK = 64 * KiB
WALK_ATTEMPTS = 8  # each EPT violation maps one more page; a walk needs at most 5


class EptMmu:
    """Two-dimensional walks: the guest's tables, each reference translated by EPT.

    ``cpu`` is the VMX processor: the EPT pointer is its VMCS field, and a walk that EPT
    cannot map is its VM exit (EPT_VIOLATION), which the hypervisor's table hands to
    :meth:`handle_violation` (KVM's ``tdp_page_fault``: the MMU's own business)."""

    name = "EPT"

    def __init__(self, vm, pages: CodePages, cpu, page_walk_cache: bool = False):
        self.vm, self.pages, self.cpu = vm, pages, cpu
        eng = vm.engine
        self.host_pages = host = HostPages(vm.host_alloc, eng.read_phys, eng.write_phys, eng.read_u64)

        def ept_write64(hpa: int, value: int) -> None:  # every EPT edit passes here
            host.write64(hpa, value)
            walker = getattr(self, "nested", None)  # absent while the EPT is first built, below
            if walker is not None:
                walker.ept_changed()

        self.nested: NestedWalker
        self.ept_builder = EptBuilder(host.read64, ept_write64, host.alloc)
        self.ept = EptWalker(host.read64, ept_write64)

        def guest_read(pa: int, size: int) -> int:
            if size == ENTRY_SIZE_64:
                return eng.read_u64(pa)
            return int.from_bytes(eng.read_phys(pa, size), "little")  # may be the last bytes of RAM

        def guest_write(pa: int, size: int, value: int) -> None:
            eng.write_phys(pa, value.to_bytes(size, "little"))

        self.nested = NestedWalker(GuestWalker(guest_read, guest_write), self.ept, pwc=page_walk_cache)
        # The VMM's own walks (event delivery, decoding) are software: not counted.
        self._software = NestedWalker(GuestWalker(guest_read, guest_write), EptWalker(host.read64, host.write64))
        self.backed: set[int] = set()          # guest pages the guest or loader touched
        self.backed_chunks: set[int] = set()   # host memory allocated, BACKING_CHUNK each
        self.invepts = 0
        self.invvpids = 0
        self.walk_refs: Counter = Counter()
        self.walks_2d = 0
        self.tlb_fills = 0
        pages.unassigned.emulate = self.emulate_unassigned

    def configure(self, v) -> None:
        """The VMCS of a hypervisor with EPT: the EPT pointer, EPT and unrestricted guest on,
        no CR3, INVLPG or #PF exits, and only the caching bits of CR0 (and CR4.VMXE) owned."""
        v.write(Field.EPT_POINTER, self.ept_builder.eptp(ad=False))
        v.write(Field.SECONDARY_VM_EXEC_CONTROL, v.read(Field.SECONDARY_VM_EXEC_CONTROL)
                | SecondaryProcBased.ENABLE_EPT | SecondaryProcBased.UNRESTRICTED_GUEST)
        primary = v.read(Field.CPU_BASED_VM_EXEC_CONTROL) & ~int(
            PrimaryProcBased.CR3_LOAD_EXITING | PrimaryProcBased.CR3_STORE_EXITING | PrimaryProcBased.INVLPG_EXITING)
        v.write(Field.CPU_BASED_VM_EXEC_CONTROL, primary)
        v.write(Field.EXCEPTION_BITMAP, v.read(Field.EXCEPTION_BITMAP) & ~(1 << PF))
        v.write(Field.CR0_GUEST_HOST_MASK, CR0.CD | CR0.NW)   # paging is the guest's own
        v.write(Field.CR4_GUEST_HOST_MASK, CR4_VMXE | CR4_RESERVED)  # a reserved bit set: #GP

    # -- guest RAM: backed lazily -------------------------------------------------------------
    def map_guest_ram(self) -> None:
        """Nothing up front: host frames are allocated when EPT first maps them."""

    def back(self, gpa: int) -> int:
        """Allocate the host frames of the guest RAM chunk holding ``gpa`` (zeroed);
        returns the page's host address. Host memory is allocated a chunk (64 KiB) at a
        time, as a host kernel would back guest memory with larger pages; EPT entries are
        still created page by page, on each page's first EPT violation."""
        chunk = gpa & ~(BACKING_CHUNK - 1)
        if chunk not in self.backed_chunks:
            self.vm.engine.map_ram(chunk, min(BACKING_CHUNK, self.vm.ram_size - chunk))
            self.backed_chunks.add(chunk)
        page = gpa & PAGE_MASK
        self.backed.add(page)
        return page

    def is_backed(self, gpa: int) -> bool:
        return gpa & ~(BACKING_CHUNK - 1) in self.backed_chunks

    def write_guest(self, gpa: int, data: bytes) -> None:
        end = gpa + len(data)
        for page in range(gpa & PAGE_MASK, end, PAGE_SIZE):
            self.back(page)
        self.vm.engine.write_phys(gpa, data)

    def read_guest(self, gpa: int, size: int) -> bytes:
        """Guest RAM never touched has no host frames yet: it reads as the zeroes it holds."""
        out = bytearray()
        while len(out) < size:
            at = gpa + len(out)
            chunk = min(size - len(out), BACKING_CHUNK - (at & (BACKING_CHUNK - 1)))
            out += self.vm.engine.read_phys(at, chunk) if self.is_backed(at) else bytes(chunk)
        return bytes(out)

    def eptp_in_use(self, stop: bool = True) -> int:
        """The EPT pointer the processor walks with. It took the VMCS field at VM entry;
        a VMWRITE of an invalid value mid-run (which the next VM entry would refuse) stops
        the guest when it next misses the TLB, and the VMM's own accesses keep the last
        valid pointer, as the processor keeps the one it entered with."""
        raw = self.cpu.vmcs.peek(Field.EPT_POINTER)
        if raw == self._eptp_valid:
            return raw
        try:
            self.ept._eptp(raw)
        except ValueError as err:
            eng = self.vm.engine
            if stop and eng.running and not eng.vmm_access and self._eptp_valid is not None:
                self.vm.stop_guest(f"{err} (EPT_POINTER {raw:#x} written while the guest ran)")
            if self._eptp_valid is None:
                raise
            return self._eptp_valid
        self._eptp_valid = raw
        return raw

    _eptp_valid: int | None = None

    def is_ram(self, gpa: int) -> bool:
        return 0 <= gpa < self.vm.ram_size

    # -- the hardware: TLB misses walk guest tables and EPT ---------------------------------------
    def tlb_fill(self, vaddr: int, access: str) -> Fill | Fault:
        self.tlb_fills += 1
        eng = self.vm.engine
        cr0 = eng.reg("cr0")
        write, fetch = access == "write", access == "fetch"
        user = user_access(eng, vaddr)
        eptp = self.eptp_in_use()
        for _ in range(WALK_ATTEMPTS):
            try:
                if cr0 & CR0_PG:
                    cr3, cr4 = eng.reg("cr3"), eng.reg("cr4")
                    fast = fast_walk_32(self.nested, self.ept._eptp(eptp), cr0, cr3, cr4, vaddr, write, user, fetch)
                    if fast is not None:
                        host, w, x = fast
                    else:
                        t = self.nested.walk(cr0, cr3, cr4, vaddr, eptp=eptp, write=write, user=user, fetch=fetch)
                        self.walk_refs.update(t.references)
                        host, w, x = t.host_physical, t.writable, t.executable
                else:  # guest paging off: the linear address is guest-physical, EPT alone
                    self.nested.last_references = Counter()
                    e = self.ept.translate(eptp, vaddr, access, linear=vaddr, tag="data")
                    self.walk_refs.update(("data", name) for name, _, _ in e.entries)
                    host, w, x = e.host_physical, e.writable, e.executable
                self.walks_2d += 1
                perms = PROT_READ | (PROT_WRITE if w else 0) | (PROT_EXEC if x else 0)
                return self.pages.fill(vaddr & PAGE_MASK, host & PAGE_MASK, perms, access)
            except PageFault as pf:
                self.walk_refs.update(self.nested.last_references)
                return Fault(PF, pf.error_code, pf.address, access)  # the guest's own #PF
            except EptViolation as v:
                self.walk_refs.update(self.nested.last_references)
                if self.is_unassigned(v.gpa):
                    return self.unassigned_fill(v, vaddr, access, write, user)
                stop = self.cpu.vmexit(EptViolationExit(qualification=v.exit_qualification, linear=v.linear, gpa=v.gpa),
                                   defer_entry=True)
                if stop is not None:
                    return stop  # a Retry: the run stops, the page is backed, the access runs again
            except EptMisconfiguration as m:
                self.walk_refs.update(self.nested.last_references)
                if not self.vm.board.mmio_bus.find(m.gpa):
                    self.vm.stop_guest(f"EPT misconfiguration at guest-physical {m.gpa:#010x} "
                                       f"(a RAM page: the VMM's EPT is wrong, not the guest)")
                # A device page: map the host MMIO region; each access is then an
                # EPT-misconfiguration exit (see on_mmio).
                return Fill(m.gpa & PAGE_MASK, PROT_READ | PROT_WRITE)
        self.vm.stop_guest(f"EPT violations at {vaddr:#010x} do not converge: the EPT pointer "
                           f"{eptp:#x} does not name the tables the VMM maps guest memory into")
        raise AssertionError("VM.stop_guest returns only by raising")  # (the VM is untyped here)

    def translate(self, linear: int, write: bool, user: bool, set_ad: bool = True) -> int:
        """The VMM's software walk (delivery, decoding): guest tables and EPT, uncounted;
        guest RAM it touches is backed on the way."""
        eng = self.vm.engine
        eptp = self.eptp_in_use(stop=False)
        for _ in range(WALK_ATTEMPTS):
            try:
                cr0 = eng.reg("cr0")
                if not cr0 & CR0_PG:
                    gpa = linear & ADDRESS_MASK
                    return self._software.ept.translate(eptp, gpa, "write" if write else "read").host_physical
                return self._software.walk(cr0, eng.reg("cr3"), eng.reg("cr4"), linear, eptp=eptp, write=write,
                                           user=user, set_ad=set_ad).host_physical
            except EptViolation as v:
                if self.is_unassigned(v.gpa):
                    return unassigned_host(v.gpa)
                if not self.is_ram(v.gpa):
                    return v.gpa   # a device page: the board's, at its guest-physical address
                self.map_ram_page(v.gpa)
            except EptMisconfiguration as m:
                return m.gpa
        raise RuntimeError(f"EPT did not converge for {linear:#x}")

    # -- unassigned guest-physical memory: an EPT violation on every access ---------------------
    def is_unassigned(self, gpa: int) -> bool:
        return not self.is_ram(gpa) and not self.vm.board.mmio_bus.find(gpa)

    def unassigned_fill(self, v: EptViolation, vaddr: int, access: str, write: bool, user: bool) -> Fill | Fault:
        """A walk that met unassigned memory. Its EPT entry stays absent, so each data
        access to the page is its own EPT violation (made by the unassigned device,
        :meth:`emulate_unassigned`); a fetch, or a guest paging-structure entry read
        there, is one violation now: the fetch reads zeros, the entry reads 0 (not
        present), which is the guest's own #PF."""
        page = v.gpa & PAGE_MASK
        if v.tag == "data" and access != ACCESS_FETCH:
            return self.pages.unassigned.fill(page, PROT_READ | PROT_WRITE, access)
        self.cpu.vmexit(EptViolationExit(qualification=v.exit_qualification, linear=v.linear, gpa=v.gpa),
                        defer_entry=True)
        if v.tag == "data":
            return self.pages.unassigned.fill(page, PROT_READ | PROT_EXEC, access)
        error = (PFError.WR if write else 0) | (PFError.US if user else 0)
        return Fault(PF, int(error), vaddr, access)

    def emulate_unassigned(self, gpa: int, size: int, value: int | None) -> int | None:
        """A data access reaching the unassigned device: the EPT violation it is."""
        q = EptQualification(read=value is None, write=value is not None)
        return self.cpu.vmexit(EptViolationExit(qualification=q.encode(), gpa=gpa), defer_entry=True)

    def map_ram_page(self, gpa: int) -> None:
        page = self.back(gpa)
        self.ept_builder.map(page, page, PAGE_SIZE, True, True, True)

    # -- exit handlers ------------------------------------------------------------------------
    def handle_violation(self, exit: EptViolationExit) -> Outcome:
        """KVM's tdp_page_fault: back and map guest RAM; give a device page its MMIO
        (misconfigured) entry; anything else is outside the guest: stop."""
        gpa = exit.gpa
        assert gpa is not None, "an EPT violation always reports its guest-physical address"
        if self.is_ram(gpa):
            if not self.is_backed(gpa):
                # Unicorn cannot map host memory while it emulates: the run stops, the
                # frame is backed and mapped, the faulting instruction runs again.
                return Retry(lambda: self.map_ram_page(gpa), "backing")
            self.map_ram_page(gpa)
            return RESUME
        if self.vm.board.mmio_bus.find(gpa):
            self.ept_builder.map_mmio_marker(gpa)
            return RESUME
        # Unassigned memory (QEMU's unassigned_mem_ops): a write is dropped, a read is 0.
        unassigned = self.pages.unassigned
        if EptQualification.decode(exit.qualification).write:
            unassigned.write(gpa, 0, 0)
            return RESUME
        return Value(unassigned.read(gpa, 0))

    def invept(self, single_context: bool = False) -> None:
        """INVEPT: drop cached EPT-derived translations. This model has one EPTP, so the
        single-context and all-context types flush the same things."""
        self.invepts += 1
        self.nested.flush()
        self.vm.engine.flush_tlb()

    def invvpid(self, vpid: int | None = None) -> None:
        """INVVPID: drop the translations tagged with this VPID (the model's one vCPU:
        the whole TLB). The walk caches are EPT's, so INVEPT's, not touched here."""
        self.invvpids += 1
        self.vm.engine.flush_tlb()

    # the guest's paging changes: its tables are walked as they are, nothing to keep in step
    def guest_cr3_loaded(self, value: int) -> None:
        self.vm.engine.flush_tlb()

    def paging_mode_changed(self) -> None:
        self.vm.engine.flush_tlb()

    def guest_invlpg(self, linear: int) -> None:
        self.vm.engine.flush_tlb()

    def references(self) -> Counter:
        """Every paging-structure read of every 2-D walk, by (guest level, EPT level)."""
        refs = Counter(self.walk_refs)
        for key, n in FAST_WALK_REFERENCES.items():
            refs[key] += n * self.nested.fast_walks
        return refs

    def memory_counters(self) -> dict[str, int]:
        r = self.references()
        guest = sum(n for (level, ept), n in r.items() if ept is None)
        ept_tables = sum(n for (level, ept), n in r.items() if ept is not None and level != "data")
        ept_data = sum(n for (level, ept), n in r.items() if ept is not None and level == "data")
        return {
            "TLB misses (2-D walks)": self.walks_2d,
            "walk references": guest + ept_tables + ept_data,
            "  guest page-table entries": guest,
            "  EPT entries translating guest tables": ept_tables,
            "  EPT entries translating the data page": ept_data,
            "EPT violations (pages mapped)": self.vm.exits[ExitReason.EPT_VIOLATION],   # counted once, as exits
            "guest RAM pages backed": len(self.backed),
            "EPT misconfigurations (MMIO accesses)": self.vm.exits[ExitReason.EPT_MISCONFIG],
            "page-walk cache hits": self.nested.pwc_hits,
            "INVEPT": self.invepts,
            "INVVPID": self.invvpids,
            **self.pages.unassigned.counters(),
        }
