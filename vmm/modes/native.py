"""``native``: the guest kernel at CPL0 with no VMM in the way.

The engine executes privileged instructions itself; the "exits" here are the events a
bare machine would see: exceptions delivered through the guest IDT, port I/O reaching
the board, HLT waiting for an interrupt, and TLB misses walked through the guest's own
page tables (a one-dimensional walk). They are counted so other modes compare against it.

Every mode answers the same engine events (the ``on_*`` methods below); the other modes
subclass this one and change what an event becomes.
"""
from __future__ import annotations

from ..cost.events import EventCounters
from ..cpu.delivery import UD, Event, EventDelivery
from ..cpu.engine import PROT_EXEC, PROT_READ, PROT_WRITE, Fault, Fill, GuestMemoryError
from ..cpu.regs import IF
from ..mmu.paging import CR0_PG, PageFault, Translation, Walker32, phys_reader, phys_writer
from ..vmx.exit_reasons import ExitReason
from ..vmx.exits import (IN, OUT, RESUME, ExceptionExit, Exit, ExternalInterruptExit, InstructionExit, IoExit,
                         Outcome, Value)

PAGE_MASK = ~0xFFF & 0xFFFFFFFF
# Local-APIC registers whose write changes when the next timer interrupt comes: SVR
# (software enable), LVT timer, initial count, divide configuration.
APIC_TIMER_REGISTERS = frozenset({0x0F0, 0x320, 0x380, 0x3E0})
UNBACKED_PAGE = 0xDFFFF000  # below the VMM's host memory (0xE0000000), above any guest RAM: never mapped
ALL = PROT_READ | PROT_WRITE | PROT_EXEC
HLT_EXIT = InstructionExit(reason=ExitReason.HLT, length=1)


class NativeMode:
    name = "native"

    def __init__(self, vm):
        self.vm = vm
        eng = vm.engine
        self.ram_size = vm.ram_size
        self.device_ranges = [(base, base + length) for base, length, _ in vm.board.mmio_bus.regions()]
        # The guest's page tables are read (and A/D bits written) only inside its RAM: a
        # CR3 or PDE pointing elsewhere stops the VM instead of reaching VMM memory.
        self.walker = Walker32(phys_reader(self.read_guest_phys), phys_writer(self.write_guest_phys))
        self.delivery = EventDelivery(eng, lambda linear, write: self.translate(linear, write, user=False),
                                      lambda cr2: eng.set_reg("cr2", cr2))
        self.tlb_fills = 0
        self.events = EventCounters()   # the mode's own events (traps, callouts, hypercalls)
        self._replayed_store: tuple[int, int, int] | None = None
        self.code_watchers: list = []   # objects with fetch(linear_page, page) and written(page)
        self.code_frames: set[int] = set()
        self.exit_table = {
            ExitReason.EXCEPTION_NMI: self.exception,
            ExitReason.EXTERNAL_INTERRUPT: self.external_interrupt,
            ExitReason.IO_INSTRUCTION: self.io,
            ExitReason.HLT: self.hlt,
        }

    # -- the guest's physical memory: its RAM and its devices, nothing of the VMM's ------------
    def is_guest_physical(self, page: int) -> bool:
        if page < self.ram_size:
            return True
        return any(lo <= page < hi for lo, hi in self.device_ranges)

    def read_guest_phys(self, address: int, size: int) -> bytes:
        if address + size > self.ram_size:
            raise GuestMemoryError(address, size, "read")
        return self.vm.engine.read_phys(address, size)

    def write_guest_phys(self, address: int, data: bytes) -> None:
        if address + len(data) > self.ram_size:
            raise GuestMemoryError(address, len(data), "write")
        self.vm.engine.write_phys(address, data)

    # -- engine events ----------------------------------------------------------------------
    def on_exception(self, vector: int, error_code: int, software: bool) -> None:
        self.vm.dispatch(ExceptionExit(vector=vector, error_code=error_code, software=software))

    def on_invalid_opcode(self) -> None:
        self.on_exception(UD, 0, False)

    def on_fault(self, fault: Fault) -> None:
        self.vm.dispatch(ExceptionExit(linear=fault.address, vector=fault.vector, error_code=fault.error_code,
                                       cr2=fault.address, access=fault.access))

    def reflect(self, vector: int, error_code: int | None, cr2: int | None = None) -> None:
        """Deliver an exception the VMM found while handling an exit (an emulated
        instruction's fault), as the exception exit the guest raising it would be."""
        self.vm.dispatch(ExceptionExit(linear=cr2, vector=vector, error_code=error_code or 0, cr2=cr2,
                                       access=None if cr2 is None else "read"))

    def on_port_in(self, port: int, size: int) -> int:
        return self.vm.dispatch(IoExit(port=port, size=size, direction=IN))

    def on_port_out(self, port: int, size: int, value: int) -> None:
        self.vm.dispatch(IoExit(port=port, size=size, direction=OUT, value=value))

    def on_cpuid(self) -> bool:
        return False  # the engine's own CPUID answers

    def on_rdtsc(self) -> bool:
        return False

    def on_code_site(self, address: int) -> None:
        pass

    def on_halt(self) -> None:
        self.vm.dispatch(HLT_EXIT)

    def on_slice_end(self) -> None:
        pass

    def memory_counters(self) -> dict[str, int]:
        """Counts of the mode's memory-virtualization events, for statistics."""
        return {"TLB fills (guest walks)": self.tlb_fills}

    def on_triple_fault(self, fault) -> None:
        pass

    # -- guest-physical memory ----------------------------------------------------------------
    def map_guest_ram(self) -> None:
        """Give the guest its RAM: here all of it, at host-physical = guest-physical."""
        self.vm.engine.map_ram(0, self.vm.ram_size)

    def write_guest(self, gpa: int, data: bytes) -> None:
        """The loader's writes into guest-physical memory."""
        self.vm.engine.write_phys(gpa, data)

    def on_mmio(self, address: int, size: int, value: int | None) -> int | None:
        """An access to a device page (the local APIC): straight to the board. Counted by
        register (a TPR write is the 32-bit stand-in for Adams & Agesen's cr8wr)."""
        if value is None:
            self.events.add("mmio", f"read {address:#010x}")
            return self.vm.board.mmio_bus.read(address, size)
        self.mmio_write(address, size, value)
        return None

    def replayed_store(self, address: int, size: int, value: int | None) -> bool:
        """True (once) for Unicorn's replay of the store that ended the last run."""
        replay = self._replayed_store is not None and self._replayed_store == (address, size, value)
        self._replayed_store = None
        return replay

    def mmio_write(self, address: int, size: int, value: int) -> None:
        """A device store. One that reprograms the APIC timer ends a free run so the run
        loop replans (VM.replan). Stopping inside an MMIO callback makes Unicorn execute
        the store again when the run resumes (measured: it restarts the instruction), so
        that replay is recognised and absorbed, never written twice."""
        if self.replayed_store(address, size, value):
            return
        self.events.add("mmio", f"write {address:#010x}")
        self.vm.board.mmio_bus.write(address, size, value)
        if address & 0xFFF in APIC_TIMER_REGISTERS and self.vm.replan():
            self._replayed_store = (address, size, value)

    def boot(self, image) -> None:
        """The image is loaded and the boot state (Multiboot's) set: a mode that boots its
        guests differently (pv: ring 1, paging on, start-info page) changes it here."""

    def launch(self) -> str | None:
        """Start the guest; a mode with entry checks returns their failure report."""
        return None

    def stopped(self) -> None:
        """The VM stopped: settle any state the mode keeps live."""

    def interrupts_enabled(self) -> bool:
        """The guest's EFLAGS.IF (a deprivileged guest's is virtual)."""
        return bool(self.vm.engine.reg("eflags") & IF)

    def poll_interrupts(self) -> bool:
        """Deliver a pending interrupt if the guest accepts one; True if one still waits."""
        board = self.vm.board
        if not board.interrupt_pending():
            return False
        if self.interrupts_enabled():
            self.vm.dispatch(ExternalInterruptExit(vector=board.acknowledge_interrupt()))
            return board.interrupt_pending()
        return True

    def next_deadline(self) -> int | None:
        """Virtual time at which the mode itself needs control (VMX preemption timer)."""
        return None

    # -- handlers -------------------------------------------------------------------------
    def exception(self, exit: ExceptionExit) -> Outcome:
        kind = "software" if exit.software else "exception"
        self.vm.inject(Event(exit.vector, kind, exit.error_code, exit.cr2))
        return RESUME

    def external_interrupt(self, exit: ExternalInterruptExit) -> Outcome:
        self.vm.inject(Event(exit.vector, "external"))
        return RESUME

    def hlt(self, exit: Exit) -> Outcome:
        self.vm.halt()
        return RESUME

    def io(self, exit: IoExit) -> Outcome:
        if exit.direction == IN:
            return Value(self.vm.board.port_bus.read(exit.port, exit.size))
        self.io_direct(exit.port, exit.size, exit.value)
        return RESUME

    def io_direct(self, port: int, size: int, value: int) -> None:
        """A port write reaching the board (what OUT does on the bare machine)."""
        self.vm.board.port_bus.write(port, size, value)
        if self.vm.board.exit_status is not None:
            self.vm.request_stop("guest exit")
        elif port in self.vm.board.TIMING_PORTS:
            self.vm.replan()

    # -- memory ---------------------------------------------------------------------------
    def walk(self, linear: int, write: bool, user: bool, set_ad: bool = True) -> Translation | None:
        """The guest's own translation, or None with paging off; raises PageFault."""
        eng = self.vm.engine
        cr0 = eng.reg("cr0")
        if not cr0 & CR0_PG:
            return None
        return self.walker.walk(cr0, eng.reg("cr3"), eng.reg("cr4"), linear, write=write,
                                user=user, set_ad=set_ad)

    def translate(self, linear: int, write: bool, user: bool, set_ad: bool = True) -> int:
        """Guest-linear to guest-physical (== host-physical in native); raises PageFault."""
        t = self.walk(linear, write, user, set_ad)
        physical = linear & 0xFFFFFFFF if t is None else t.physical
        if not self.is_guest_physical(physical & PAGE_MASK):
            raise GuestMemoryError(physical, 1, "write" if write else "read")
        return physical

    def tlb_fill(self, vaddr: int, access: str) -> Fill | Fault:
        self.tlb_fills += 1
        write = access == "write"
        try:
            t = self.walk(vaddr, write, self._user_access(vaddr))
        except PageFault as pf:
            return Fault(14, pf.error_code, pf.address, access)
        if t is None:
            return self.fill(vaddr & PAGE_MASK, vaddr & PAGE_MASK, ALL, access)
        perms = PROT_READ | PROT_EXEC
        if t.writable and (t.dirty or write):
            perms |= PROT_WRITE  # clean pages stay read-only so the first write sets D
        return self.fill(vaddr & PAGE_MASK, t.physical & PAGE_MASK, perms, access)

    def fill(self, linear_page: int, guest_page: int, perms: int, access: str) -> Fill:
        """Last step of a TLB fill: the code-page policy for whoever watches code.

        Watchers (the sensitive-site scanner of the VT-x modes, the tracer's decode cache)
        learn of each code page when it is first fetched; a code page is then mapped
        without write permission, so a write to it comes back as a fill, is reported, and
        maps the page writable but not executable until the next fetch (self-modifying
        code, and code and data sharing a page, keep working).
        """
        if guest_page >= self.ram_size and not self.is_guest_physical(guest_page) \
                and self.vm.engine.read_raw(guest_page, 1):
            # VMM memory (VMX bitmaps, shadow tables, the trampoline) is never the guest's:
            # map a page with nothing behind it, so that the access (if the guest really
            # makes it) stops the VM as one outside its RAM and devices does.
            guest_page = UNBACKED_PAGE
        watchers = self.code_watchers
        if not watchers:
            return Fill(guest_page, perms)
        if access == "fetch":
            for w in watchers:
                w.fetch(linear_page, guest_page)
            self.code_frames.add(guest_page)
            return Fill(guest_page, perms & ~PROT_WRITE)
        if guest_page in self.code_frames:
            if access == "write":
                self.code_frames.discard(guest_page)
                for w in watchers:
                    w.written(guest_page)
                return Fill(guest_page, perms & ~PROT_EXEC)
            return Fill(guest_page, perms & ~PROT_WRITE)
        return Fill(guest_page, perms)

    def _user_access(self, vaddr: int) -> bool:
        eng = self.vm.engine
        return bool(eng.reg("cr0") & 1) and eng.reg("cs") & 3 == 3 and not self._descriptor_table_page(vaddr)

    def _descriptor_table_page(self, vaddr: int) -> bool:
        """Implicit supervisor accesses made at CPL3 (a segment load reads the GDT).

        The TLB-fill hook does not say which MMU index asked, so a user-mode fill that
        lands on the GDT/LDT/IDT/TSS page is treated as the supervisor access it is.
        """
        page = vaddr & PAGE_MASK
        for table in ("gdtr", "ldtr", "idtr", "tr"):
            _, base, limit = self.vm.engine.table(table)
            if base & PAGE_MASK <= page <= (base + limit) & PAGE_MASK:
                return True
        return False
