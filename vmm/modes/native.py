"""``native``: the guest kernel at CPL0 with no VMM in the way.

The engine executes privileged instructions itself; the "exits" here are the events a
bare machine would see: exceptions delivered through the guest IDT, port I/O reaching
the board, HLT waiting for an interrupt, and TLB misses walked through the guest's own
page tables (a one-dimensional walk). They are counted so other modes compare against it.
"""
from __future__ import annotations

from ..cpu.delivery import Event, EventDelivery
from ..cpu.engine import PROT_EXEC, PROT_READ, PROT_WRITE, Fault, Fill
from ..mmu.paging import CR0_PG, PageFault, Walker32, phys_reader, phys_writer
from ..vmx.exit_reasons import ExitReason
from ..vmx.exits import VmExit

PAGE_MASK = ~0xFFF & 0xFFFFFFFF


class NativeMode:
    name = "native"

    def __init__(self, vm):
        self.vm = vm
        eng = vm.engine
        self.walker = Walker32(phys_reader(eng.read_phys), phys_writer(eng.write_phys))
        self.delivery = EventDelivery(eng, lambda linear, write: self.translate(linear, write, user=False),
                                      lambda cr2: eng.set_reg("cr2", cr2))
        self.tlb_fills = 0
        self.exit_table = {
            ExitReason.EXCEPTION_NMI: self.exception,
            ExitReason.EXTERNAL_INTERRUPT: self.external_interrupt,
            ExitReason.IO_INSTRUCTION: self.io,
            ExitReason.CPUID: lambda exit: False,  # the engine's own CPUID answers
            ExitReason.HLT: lambda exit: vm.halt(),
        }

    # -- handlers -------------------------------------------------------------------------
    def exception(self, exit: VmExit) -> None:
        info = exit.info
        kind = "software" if info.get("software") else "exception"
        self.vm.inject(Event(info["vector"], kind, info.get("error_code"), info.get("cr2")))

    def external_interrupt(self, exit: VmExit) -> None:
        self.vm.inject(Event(exit.info["vector"], "external"))

    def io(self, exit: VmExit):
        info, bus = exit.info, self.vm.board.port_bus
        if info["direction"] == "in":
            return bus.read(info["port"], info["size"])
        bus.write(info["port"], info["size"], info["value"])
        if self.vm.board.exit_status is not None:
            self.vm.request_stop("guest exit")
        elif info["port"] in self.vm.board.TIMING_PORTS:
            self.vm.replan()
        return None

    # -- memory ---------------------------------------------------------------------------
    def translate(self, linear: int, write: bool, user: bool, set_ad: bool = True) -> int:
        """Guest-linear to guest-physical (== host-physical in native); raises PageFault."""
        eng = self.vm.engine
        cr0 = eng.reg("cr0")
        if not cr0 & CR0_PG:
            return linear & 0xFFFFFFFF
        return self.walker.walk(cr0, eng.reg("cr3"), eng.reg("cr4"), linear, write=write,
                                user=user, set_ad=set_ad).physical

    def tlb_fill(self, vaddr: int, access: str) -> Fill | Fault:
        self.tlb_fills += 1
        eng = self.vm.engine
        cr0 = eng.reg("cr0")
        write = access == "write"
        if not cr0 & CR0_PG:
            return Fill(vaddr & PAGE_MASK, PROT_READ | PROT_WRITE | PROT_EXEC)
        user = bool(cr0 & 1) and eng.reg("cs") & 3 == 3 and not self._descriptor_table_page(vaddr)
        try:
            t = self.walker.walk(cr0, eng.reg("cr3"), eng.reg("cr4"), vaddr, write=write, user=user,
                                 fetch=access == "fetch")
        except PageFault as pf:
            return Fault(14, pf.error_code, pf.address, access)
        perms = PROT_READ | PROT_EXEC
        if t.writable and (t.dirty or write):
            perms |= PROT_WRITE  # clean pages stay read-only so the first write sets D
        return Fill(t.physical & PAGE_MASK, perms)

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
