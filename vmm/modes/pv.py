"""``pv``: Xen-style paravirtualization (x86_32 ABI) with the guest kernel in ring 1.

The guest is built for it (the pv flavour of guests/include/pvops.inc, or any kernel
that follows README's "The PV boot protocol"): instead of privileged instructions it
makes hypercalls (``int 0x82`` through the hypercall page, :mod:`vmm.pv.hypercalls`),
its page tables hold machine frames and change only through validated ``mmu_update``
(:mod:`vmm.pv.memory`), and it receives exceptions and events through bounce frames
(:mod:`vmm.pv.bounce`). The CPU's GDT, the shared-info page and the IRET trampoline live
in the VMM's linear area (0xFFC00000 and up), which every address space shares and
the guest cannot write (the shared-info page excepted).

Port I/O stays IN/OUT: it reaches the board through the engine's port hooks (Unicorn
does not raise #GP for IN/OUT at CPL 1) and is counted as "emulated I/O", what Xen's
``emulate_privileged_op`` does for a domain with I/O privilege.
"""
from __future__ import annotations

import struct
import time

from ..cpu.delivery import GP, PF, Event, vector_name
from ..cpu.engine import ACCESS_WRITE, PROT_EXEC, PROT_READ, PROT_WRITE, Fault, Fill, GuestMemoryError
from ..cpu.regs import CR0_ET, CR0_PE, CR0_PG, CR0_WP, CR4_PSE, IF, IOPL_SHIFT, VM
from ..devices.debugexit import DEBUG_EXIT_PORT
from ..mmu.paging import PageFault, Walker32, phys_reader, phys_writer
from ..pv import abi, builder, hypercalls
from ..pv.access import GuestAccess
from ..pv.bounce import BounceDelivery, DomainCrash
from ..pv.events import SharedInfo
from ..pv.memory import PAGE_SHIFT, DomainMemory, HypercallError
from ..vmx.exit_reasons import ExitReason
from ..vmx.exits import RESUME, ExceptionExit, Hypercall, Outcome, StopVm
from ..x86 import (
    CODE_RING0,
    CODE_RING3,
    DATA_RING0,
    DATA_RING3,
    EFLAGS,
    MSR,
    PAGE_MASK,
    PAGE_OFFSET_MASK,
    PAGE_SIZE,
    PAT_POWER_ON,
    SYSENTER_MSRS,
    Access,
    PFError,
    flat_descriptor,
)
from ..x86.segments import ACCESS_DPL_SHIFT, ACCESS_TYPE_MASK, SELECTOR_RPL_MASK, USER_RING
from .hypervisor import Hypervisor
from .memory import CodePages, fill_publishing_walks

MACHINE_BASE = 0x10000000          # machine frame = pseudo-physical frame + 0x10000
HOST_MEMORY_BASE = 0xE0000000      # where the VMM's own host memory starts (vmm.vm.HOST_MEMORY_BASE)
IOPL = 3 << IOPL_SHIFT
IA32_PAT = MSR.PAT
RING1 = 1 << ACCESS_DPL_SHIFT       # an access byte's DPL field, at ring 1
U32_MASK, SELECTOR_BITS = 0xFFFFFFFF, 0xFFFF
ACCESS_BYTE_SHIFT = 8               # a descriptor's access byte: bits 15:8 of its high dword
# SCHEDOP_shutdown reason -> isa-debug-exit value, so that `vmm run` exits as QEMU would
# had the guest written that value to port 0xf4: poweroff = EXIT_OK (status 1).
SHUTDOWN_EXIT_VALUE = {abi.Shutdown.poweroff: 0, abi.Shutdown.reboot: 1, abi.Shutdown.suspend: 2,
                       abi.Shutdown.crash: 0x7F, abi.Shutdown.watchdog: 0x7F}
_clock = time.perf_counter
HYPERCALL_ARGUMENTS = ("ebx", "ecx", "edx", "esi", "edi")  # the x86_32 hypercall ABI


def _descriptor(access: int) -> bytes:
    """A flat 4 GiB descriptor (G, D) with the accessed bit already set: the CPU never
    needs to write the read-only GDT page."""
    return struct.pack("<Q", flat_descriptor(access | Access.ACCESSED))


class DirectPaging:
    """Xen's direct paging, as an MMU strategy: the guest's page tables hold machine
    frames, the walker reads machine memory (only the domain's: every table was
    validated before the MMU used it), and the VMM's linear area (GDT, shared info) is
    answered before the guest's tables are asked."""

    name = "direct paging"

    def __init__(self, vm, pages: CodePages, events):
        self.vm = vm
        self.engine = vm.engine
        self.pages = pages
        self.events = events
        self.walker = Walker32(phys_reader(self._read_machine), phys_writer(self._write_machine))
        self.tlb_fills = 0
        self.mem: DomainMemory | None = None

    def map_guest_ram(self) -> None:
        vm, eng = self.vm, self.engine
        if MACHINE_BASE + vm.ram_size > HOST_MEMORY_BASE:
            raise ValueError(f"pv mode gives a domain at most {(HOST_MEMORY_BASE - MACHINE_BASE) >> 20} MiB")
        eng.map_ram(MACHINE_BASE, vm.ram_size)
        self.mem = DomainMemory(eng.read_phys, eng.write_phys, MACHINE_BASE, vm.ram_size >> PAGE_SHIFT)
        self.gdt_host = vm.host_alloc(abi.GDT_SIZE)
        self.shared_host = vm.host_alloc(PAGE_SIZE)
        self.mem.extra_mappable.add(self.shared_host >> PAGE_SHIFT)

    def _domain_range(self, address: int, size: int, access: str) -> None:
        assert self.mem is not None, "map_guest_ram() made the domain's memory"
        if not self.mem.owns(address >> PAGE_SHIFT) or not self.mem.owns((address + size - 1) >> PAGE_SHIFT):
            raise GuestMemoryError(address, size, access)

    def _read_machine(self, address: int, size: int) -> bytes:
        self._domain_range(address, size, "read")
        return self.engine.read_phys(address, size)

    def _write_machine(self, address: int, data: bytes) -> None:
        self._domain_range(address, len(data), "write")
        self.engine.write_phys(address, data)

    def is_guest_physical(self, page: int) -> bool:
        """Machine pages the domain may reach: its own RAM and the shared-info page."""
        assert self.mem is not None, "map_guest_ram() made the domain's memory"
        return self.mem.mappable(page >> PAGE_SHIFT)

    def write_guest(self, gpa: int, data: bytes) -> None:
        self.engine.write_phys(MACHINE_BASE + gpa, data)

    def read_guest(self, gpa: int, size: int) -> bytes:
        return self.engine.read_phys(MACHINE_BASE + gpa, size)

    def _vmm_page(self, linear: int) -> tuple[int, int] | None:
        """(host page, permissions) of a page in the VMM's linear area the guest may see."""
        page = linear & PAGE_MASK
        if abi.GDT_VIRT <= page < abi.GDT_VIRT + abi.GDT_SIZE:
            return self.gdt_host + page - abi.GDT_VIRT, PROT_READ
        if page == abi.SHARED_INFO_VIRT:
            return self.shared_host, PROT_READ | PROT_WRITE
        return None

    def tlb_fill(self, vaddr: int, access: str):
        return fill_publishing_walks(self.vm, self.walker, self._fill, vaddr, access)

    def _fill(self, vaddr: int, access: str):
        assert self.mem is not None, "map_guest_ram() made the domain's memory"
        self.tlb_fills += 1
        eng = self.engine
        user = (eng.reg("cs") & SELECTOR_RPL_MASK == USER_RING
                and not abi.GDT_VIRT <= vaddr < abi.GDT_VIRT + abi.GDT_SIZE)
        write = access == ACCESS_WRITE
        w = PFError.WR if write else 0
        u = PFError.US if user else 0
        if vaddr >= abi.HYPERVISOR_VIRT_START:
            vmm = self._vmm_page(vaddr)
            if vmm is None or user or (write and not vmm[1] & PROT_WRITE):
                return Fault(PF, (PFError.P if vmm is not None else 0) | w | u, vaddr, access)
            return Fill(vmm[0], vmm[1])
        try:
            t = self.walk(vaddr, write, user)
        except PageFault as pf:
            return Fault(PF, pf.error_code, pf.address, access)
        if t is None:  # paging off: only before the builder's tables are loaded (VM._load)
            if vaddr >= self.vm.ram_size:
                return Fault(PF, w | u, vaddr, access)
            return Fill(MACHINE_BASE + (vaddr & PAGE_MASK), PROT_READ | PROT_WRITE | PROT_EXEC)
        frame = t.physical >> PAGE_SHIFT
        if not self.mem.mappable(frame):
            return Fault(PF, PFError.P | w | u, vaddr, access)
        protected = frame in self.mem.pt_frames
        if write and protected:
            self.events.add("pv", "writes to page-table frames refused")
            return Fault(PF, PFError.P | PFError.WR | u, vaddr, access)
        perms = PROT_READ | PROT_EXEC
        if t.writable and (t.dirty or write) and not protected:
            perms |= PROT_WRITE
        return self.pages.fill(vaddr & PAGE_MASK, t.physical & PAGE_MASK, perms, access)

    def walk(self, linear: int, write: bool, user: bool, set_ad: bool = True):
        """The guest's tables, paging being always on once the builder has run (CR0.PG is
        cleared only for the instant of a ring change through the trampoline)."""
        assert self.mem is not None, "map_guest_ram() made the domain's memory"
        if self.mem.base is None:
            return None  # VM._load, before the domain is built: pseudo-physical
        eng = self.engine
        return self.walker.walk(eng.reg("cr0") | CR0_PG, eng.reg("cr3"), eng.reg("cr4"), linear,
                                write=write, user=user, set_ad=set_ad)

    def translate(self, linear: int, write: bool, user: bool, set_ad: bool = True) -> int:
        vmm = self._vmm_page(linear) if linear >= abi.HYPERVISOR_VIRT_START else None
        if vmm is not None:
            return vmm[0] + (linear & PAGE_OFFSET_MASK)
        t = self.walk(linear, write, user, set_ad)
        return MACHINE_BASE + linear if t is None else t.physical

    # the guest's tables change only through mmu_update, which flushes what it must
    def guest_cr3_loaded(self, value: int) -> None:
        self.engine.flush_tlb()

    def paging_mode_changed(self) -> None:
        self.engine.flush_tlb()

    def guest_invlpg(self, linear: int) -> None:
        self.engine.flush_tlb()

    def memory_counters(self) -> dict[str, int]:
        assert self.mem is not None, "map_guest_ram() made the domain's memory"
        return {"TLB fills (direct-paging walks)": self.tlb_fills,
                "page-table frames": len(self.mem.pt_frames),
                "page tables validated": self.mem.validations}


class PvMode(Hypervisor):
    name = "pv"

    def __init__(self, vm, hypercall_page: int | None = None):
        super().__init__(vm)
        self.engine = vm.engine
        self.mmu = DirectPaging(vm, self.pages, self.events)
        self.walker = self.mmu.walker   # the walk references the cost model counts (RunObserver)
        self.delivery = BounceDelivery(self)
        self.exit_table[ExitReason.EXCEPTION_NMI] = self.exception
        self.exit_table[Hypercall] = self.hypercall
        self.traps: dict[int, tuple[int, int, int]] = {}
        self.kernel_stack: tuple[int, int] | None = None
        self.callbacks = None
        self.debugregs = {n: 0 for n in (0, 1, 2, 3, 6, 7)}
        self.domain_msrs = dict.fromkeys(SYSENTER_MSRS, 0)
        self.domain_msrs[IA32_PAT] = PAT_POWER_ON
        self.hypercall_page_override = hypercall_page
        self._pending: tuple[int, int, int, int, int] | None = None  # a ring change to make outside emulation
        self._blocked = False
        self._guest_gdt_entries = 0

    # -- memory: the direct-paging strategy's ------------------------------------------
    def map_guest_ram(self) -> None:
        mmu = self.mmu
        mmu.map_guest_ram()
        self.mem, self.gdt_host, self.shared_host = mmu.mem, mmu.gdt_host, mmu.shared_host
        self.shared = SharedInfo(self.engine, self.shared_host)
        self.access = GuestAccess(lambda linear, write, user: mmu.walk(linear, write, user, set_ad=False),
                                  self.mem, self.engine)

    def is_guest_physical(self, page: int) -> bool:
        return self.mmu.is_guest_physical(page)

    # -- boot ----------------------------------------------------------------------------------
    def boot(self, image) -> None:
        """The domain builder, then the PV entry state (README, "The PV boot protocol")."""
        from ..loader.xen import XenImage

        if not isinstance(image, XenImage):
            raise ValueError("pv mode boots Xen PV kernels (an ELF with Xen notes, e.g. a guest "
                             "built with the pv flavour), not a " + image.kind + " image")
        if self.hypercall_page_override is not None:
            image.hypercall_page = self.hypercall_page_override
        state = builder.build(self.mem, image, self.shared_host)
        eng = self.vm.engine
        reserved = {abi.HYPERVISOR_CS: CODE_RING0, abi.HYPERVISOR_DS: DATA_RING0,
                    abi.FLAT_RING1_CS: CODE_RING0 | RING1, abi.FLAT_RING1_DS: DATA_RING0 | RING1,
                    abi.FLAT_RING3_CS: CODE_RING3, abi.FLAT_RING3_DS: DATA_RING3}
        for selector, access in reserved.items():
            eng.write_phys(self.gdt_host + (selector & ~7), _descriptor(access))
        eng.set_table("gdtr", abi.GDT_VIRT, abi.GDT_SIZE - 1)
        eng.set_table("idtr", 0, 0)
        eng.set_reg("cr4", CR4_PSE)
        eng.set_reg("cr3", state.cr3)
        eng.set_reg("cr0", CR0_PE | CR0_ET | CR0_WP | CR0_PG)
        self._enter(image.entry, abi.FLAT_KERNEL_CS, EFLAGS.IF | EFLAGS.FIXED, state.stack_top, abi.FLAT_KERNEL_DS)
        for seg in ("ds", "es", "fs", "gs"):
            eng.set_reg(seg, abi.FLAT_KERNEL_DS)
        for reg in ("eax", "ebx", "ecx", "edx", "edi", "ebp"):
            eng.set_reg(reg, 0)
        eng.set_reg("esi", state.start_info)
        self.boot_state = state

    def _enter(self, eip: int, cs: int, eflags: int, esp: int, ss: int) -> None:
        """A ring change through the engine's IRET trampoline (paging off meanwhile: the
        trampoline reaches ring 0 by clearing CR0.PE, which must not happen with PG set)."""
        eng = self.vm.engine
        cr0 = eng.reg("cr0")
        if cr0 & CR0_PG:
            eng.set_reg("cr0", cr0 & ~CR0_PG)
        try:
            eng.iret_to(eip=eip, cs=cs, eflags=eflags, esp=esp, ss=ss,
                        vmm_cs=abi.HYPERVISOR_CS, vmm_ss=abi.HYPERVISOR_DS)
        except Exception as err:  # noqa: BLE001 - whatever the engine says, the guest pays
            # Unicorn looks up the code at the target right after the IRET: an unmapped
            # target fails there, after landing; the fault is taken on the next run.
            if eng.reg("cs") != cs or eng.reg("eip") != eip:
                if cr0 & CR0_PG:
                    eng.set_reg("cr0", cr0)
                self.vm.stop_guest(f"domain crashed: cannot enter {cs:#06x}:{eip:#010x} ({err})")
        if cr0 & CR0_PG:
            eng.set_reg("cr0", cr0)

    def transfer(self, eip: int, cs: int, eflags: int, esp: int, ss: int) -> None:
        """Continue the guest at CS:EIP with SS:ESP, changing ring if needed."""
        eng = self.vm.engine
        if cs == eng.reg("cs") and ss == eng.reg("ss"):
            eng.set_reg("eip", eip)
            eng.set_reg("esp", esp)
            eng.set_reg("eflags", eflags)
            return
        if eng.running:  # inside a hook: finish it, make the change before the next run
            self._pending = (eip, cs, eflags, esp, ss)
            self._stop_soon()
        else:
            self._enter(eip, cs, eflags, esp, ss)

    def _stop_soon(self) -> None:
        """End the current engine run after this hook, without a stop reason."""
        self.vm.engine.end_run()

    # -- events from the engine ------------------------------------------------------------
    def on_exception(self, vector: int, error_code: int, software: bool) -> None:
        eng = self.vm.engine
        if software and vector == abi.SYSCALL_VECTOR and eng.reg("cs") & SELECTOR_RPL_MASK == USER_RING:
            entry = self.traps.get(vector)
            if entry is not None and entry[0] & abi.TI_DPL_MASK == USER_RING:
                # Xen x86_32 gives int 0x80 a DPL-3 gate straight to the guest's handler:
                # no VMM entry, hence no exit here; only the delivery itself.
                self.events.add("pv", "int 0x80 direct to the guest")
                self.vm.inject(Event(vector, "software"))
                return
        if software and vector == abi.HYPERCALL_VECTOR and eng.reg("cs") & 3 == abi.GUEST_KERNEL_RPL:
            nr = eng.reg("eax")
            self.vm.dispatch(Hypercall(number=nr, name=abi.HYPERCALL_NAMES.get(nr, f"unknown ({nr})"),
                                       args=tuple(eng.reg(r) for r in HYPERCALL_ARGUMENTS)))
            return
        super().on_exception(vector, error_code, software)

    def on_port_in(self, port: int, size: int) -> int:
        self.events.add("pv", "emulated I/O")
        return super().on_port_in(port, size)

    def on_port_out(self, port: int, size: int, value: int) -> None:
        self.events.add("pv", "emulated I/O")
        super().on_port_out(port, size, value)

    def exception(self, exit: ExceptionExit) -> Outcome:
        eng = self.vm.engine
        vector, software = exit.vector, exit.software
        cpl = eng.reg("cs") & 3
        try:
            if vector == GP and not software and cpl == abi.GUEST_KERNEL_RPL and self._emulate_msr():
                pass
            elif software and vector not in (3, 4):  # INT n (INT3 and INTO are traps of their own)
                entry = self.traps.get(vector)
                if entry is None or entry[0] & abi.TI_DPL_MASK < cpl:
                    eng.set_reg("eip", eng.reg("eip") - 2)  # #GP points at the INT n
                    self.events.add("bounce frames", "#GP")
                    self.vm.inject(Event(GP, "exception", vector * 8 + 2))
                else:
                    self.events.add("bounce frames", f"int {vector:#x}")
                    self.vm.inject(Event(vector, "software"))
            else:
                self.events.add("bounce frames", vector_name(vector))
                self.vm.inject(Event(vector, "exception", exit.error_code, exit.cr2))
        except DomainCrash as crash:
            return StopVm(f"domain crashed: {crash}")
        return RESUME

    def _emulate_msr(self) -> bool:
        """RDMSR/WRMSR fault in ring 1; like Xen's emulate_privileged_op, the VMM emulates
        the SYSENTER MSRs and PAT (the domain's own copies, never the real ones); any other MSR
        stays a #GP for the guest."""
        eng = self.vm.engine
        eip = eng.reg("eip")
        code = self.vm.read_code(eip, 2)
        if code not in (b"\x0f\x30", b"\x0f\x32"):
            return False
        msr = eng.reg("ecx")
        if msr not in self.domain_msrs:
            return False
        if code == b"\x0f\x30":
            self.domain_msrs[msr] = eng.reg("edx") << 32 | eng.reg("eax")
            self.events.add("pv", "emulated WRMSR")
        else:
            eng.set_reg("eax", self.domain_msrs[msr] & U32_MASK)
            eng.set_reg("edx", self.domain_msrs[msr] >> 32)
            self.events.add("pv", "emulated RDMSR")
        eng.set_reg("eip", eip + 2)
        return True

    # -- hypercalls ------------------------------------------------------------------------------
    def hypercall(self, exit: Hypercall) -> Outcome:
        """One hypercall, by number from the ABI's table (:mod:`vmm.pv.hypercalls`); the
        result goes to EAX, a failure as -errno."""
        handler = hypercalls.HANDLERS.get(exit.number)
        try:
            if handler is None:
                raise HypercallError(abi.Errno.ENOSYS, f"hypercall {exit.number}")
            result = handler(self, *exit.args)
        except HypercallError as err:
            self.events.add("hypercall errors", f"{exit.name}: -{err.errno.name}")
            self.last_error = str(err)
            result = abi.neg(err.errno)
        except DomainCrash as crash:
            return StopVm(f"domain crashed: {crash}")
        if result is not None:
            self.vm.engine.set_reg("eax", result)
        return RESUME

    def hypercall_iret(self):
        """HYPERVISOR_iret: pop EAX, EIP, CS, EFLAGS (and ESP, SS to ring 3) off the guest
        stack; IF in the popped EFLAGS becomes the event mask."""
        eng = self.vm.engine
        esp = eng.reg("esp")
        eax, eip, cs, eflags = struct.unpack("<IIII", self.access.read(esp, 16))
        cs &= SELECTOR_BITS
        if cs & SELECTOR_RPL_MASK == USER_RING:
            esp, ss = struct.unpack("<II", self.access.read(esp + 16, 8))
        elif cs & 3 == abi.GUEST_KERNEL_RPL:
            esp, ss = esp + 16, eng.reg("ss")
        else:
            raise HypercallError(abi.Errno.EINVAL, f"iret to ring 0 (CS {cs:#x})")
        self.shared.set_mask(not eflags & IF)
        eng.set_reg("eax", eax)
        self.transfer(eip, cs, (eflags & ~(IOPL | VM)) | IF | EFLAGS.FIXED, esp, ss & SELECTOR_BITS)
        if not eflags & IF or self.shared.upcall_pending:
            self.kick()
        return None

    def block(self) -> None:
        """SCHEDOP_block: enable events and sleep until one is pending."""
        self.shared.set_mask(False)
        if not self.shared.upcall_pending:
            self._blocked = True
        self._stop_soon()

    def kick(self) -> None:
        """An event may have become deliverable: let poll_interrupts look at once."""
        if self.vm.engine.running:
            self._stop_soon()

    def shutdown(self, reason: abi.Shutdown) -> None:
        self.events.add("pv", f"shutdown ({reason.name})")
        self.io_direct(DEBUG_EXIT_PORT, 4, SHUTDOWN_EXIT_VALUE[reason])

    # -- GDT -------------------------------------------------------------------------------------
    def check_descriptor(self, index: int, lo: int, hi: int) -> tuple[int, int]:
        """Xen's check_descriptor: code and data only, never DPL 0 (raised to 1)."""
        if not hi & Access.P << ACCESS_BYTE_SHIFT:
            return lo, hi
        if not hi & Access.S << ACCESS_BYTE_SHIFT:
            raise HypercallError(abi.Errno.EINVAL, f"GDT entry {index}: system descriptor "
                                 f"(type {hi >> ACCESS_BYTE_SHIFT & ACCESS_TYPE_MASK}) not allowed")
        if not hi & Access.DPL << ACCESS_BYTE_SHIFT:
            hi |= abi.GUEST_KERNEL_RPL << (ACCESS_DPL_SHIFT + ACCESS_BYTE_SHIFT)
        return lo, hi | Access.ACCESSED << ACCESS_BYTE_SHIFT

    def load_gdt(self, descriptors, raised: int = 0) -> None:
        """Install validated guest descriptors below the VMM's reserved entries."""
        if raised:
            self.events.add("pv", "GDT DPL 0 raised to 1", raised)
        eng = self.vm.engine
        raw = b"".join(struct.pack("<II", lo, hi) for lo, hi in descriptors)
        eng.write_phys(self.gdt_host, raw + bytes(max(0, 8 * self._guest_gdt_entries - len(raw))))
        self._guest_gdt_entries = len(descriptors)

    # -- interrupts and events -------------------------------------------------------------------
    def poll_interrupts(self) -> bool:
        """Finish a ring change, wake a blocked vCPU, turn a timer tick into VIRQ_TIMER,
        and upcall when an event is pending with events enabled."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            self._enter(*pending)
        board, shared = self.vm.board, self.shared
        if self._blocked:
            self._blocked = False
            if not shared.upcall_pending:
                self.vm.halt()  # the real IF is always 1: waits for the next device event
        waiting = False
        if board.interrupt_pending():
            if shared.masked:
                waiting = True
            else:
                vector = board.acknowledge_interrupt()
                port = shared.virq_port.get(abi.VIRQ_TIMER)
                if port is not None and vector == board.pic.master.vector_base:
                    shared.raise_port(port)
                else:
                    self.events.add("pv", "interrupts with no event channel")
        if shared.upcall_pending:
            if shared.masked:
                return True
            started = _clock()
            try:
                self.vm.inject(Event(0, "upcall"))
            except DomainCrash as crash:
                self.vm.stop_guest(f"domain crashed: {crash}")
            self.events.timed("bounce frames", "event upcall", started)
            if self._pending is not None:
                pending, self._pending = self._pending, None
                self._enter(*pending)
        return waiting or board.interrupt_pending()
