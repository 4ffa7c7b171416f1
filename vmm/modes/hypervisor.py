"""What every mode is built from: a VMM above one vCPU, and the bare machine's answers.

A mode is a :class:`Hypervisor` that *has* the parts it needs, chosen when it is made:

* ``mmu``: an MMU strategy (:mod:`vmm.modes.memory`): the guest's own tables, shadow
  tables, EPT, or PV direct paging;
* ``devices``: :class:`DeviceAccess`, the board's ports and device pages;
* ``delivery``: how an event enters the guest (its IDT; trap's virtual one; PV's
  bounce frames);
* ``events``: the mode's own event counts (traps, callouts, hypercalls...);
* ``exit_table``: the handler of each exit (keyed by SDM reason, or by exit type for a
  software VMM's own entries), run by ``VM.dispatch``;
* ``processor``: what decides what each engine event becomes. The mode itself, unless
  its guest runs in VMX non-root operation, where that is the VMX processor
  (:class:`vmm.vmx.processor.VmxProcessor`).

The defaults here are what the bare machine does with each event (exceptions through
the guest's IDT, port I/O on the board, HLT waits for an interrupt); a mode states
only where it differs. No mode derives from another.
"""
from __future__ import annotations

from capstone.x86 import X86_OP_MEM, X86_OP_REG

from ..cpu import cpuid as cpu_model
from ..cpu import quirks
from ..cpu.callgate import call_through_gate
from ..cpu.delivery import UD, DeliveryFault, Event, EventDelivery, take_nmi
from ..cpu.engine import EngineError, Fault, Fill
from ..cpu.faultaddr import effective_address, register16
from ..cpu.msrs import MsrFile
from ..cpu.tasks import TaskSource, TaskSwitcher, far_operand, pushed_error_code
from ..stats.events import EventCounters
from ..vmx.exit_reasons import ExitReason
from ..vmx.exits import (
    IN,
    OUT,
    RESUME,
    ExceptionExit,
    Exit,
    ExternalInterruptExit,
    InstructionExit,
    IoExit,
    Outcome,
    Value,
)
from ..x86 import EFLAGS, IOPL_SHIFT, PAGE_MASK, Vector
from .memory import CodePages

CPUID_OUTPUTS = ("eax", "ebx", "ecx", "edx")

# Local-APIC registers whose write changes which interrupt comes next, or when: TPR, EOI
# (uncovers the next in-service vector), SVR (software enable), ICR low (an IPI, to
# itself too), the LVT entries (timer, thermal, performance, LINT0/1, error: masking and
# unmasking), initial count, divide configuration. A write ends the run, so the interrupt
# it makes deliverable is taken at the next instruction boundary.
APIC_EVENT_REGISTERS = frozenset({0x080, 0x0B0, 0x0F0, 0x300, 0x320, 0x330, 0x340, 0x350, 0x360, 0x370,
                                  0x380, 0x3E0})
HLT_EXIT = InstructionExit(reason=ExitReason.HLT, length=1)


class DeviceAccess:
    """The board's ports and device pages, as the guest's accesses reach them."""

    def __init__(self, vm, events: EventCounters):
        self.vm = vm
        self.events = events
        self._replayed_store: tuple[int, int, int] | None = None

    def port_write(self, port: int, size: int, value: int) -> None:
        """A port write reaching the board (what OUT does on the bare machine)."""
        board = self.vm.board
        board.port_bus.write(port, size, value)
        if board.exit_status is not None:
            self.vm.request_stop("guest exit")
        elif board.reset_requested or board.sleep_request or port in board.TIMING_PORTS \
                or board.gsi.take_changed():
            self.vm.replan()   # (the run loop reports the reset, or takes the interrupt raised)

    def mmio(self, address: int, size: int, value: int | None) -> int | None:
        """An access to a device page (the local APIC): straight to the board. Counted by
        register (a TPR write is the 32-bit stand-in for Adams & Agesen's cr8wr)."""
        if value is None:
            self.events.add("mmio", f"read {address:#010x}")
            return self.vm.board.mmio_bus.read(address, size)
        self.mmio_write(address, size, value)
        return None

    @property
    def replay_pending(self) -> bool:
        """The last run stopped inside a device store, which Unicorn will execute again."""
        return self._replayed_store is not None

    def replayed_store(self, address: int, size: int, value: int | None) -> bool:
        """True (once) for Unicorn's replay of the store that ended the last run."""
        replay = self._replayed_store is not None and self._replayed_store == (address, size, value)
        self._replayed_store = None
        return replay

    def mmio_write(self, address: int, size: int, value: int, *, store: bool = True) -> None:
        """A device store. One that changes which interrupt comes next (APIC_EVENT_REGISTERS)
        ends the run so the run loop delivers it or replans (VM.replan). Stopping inside an
        MMIO callback makes Unicorn execute the store again when the run resumes (measured:
        it restarts the instruction), so that replay is recognised and absorbed, never
        written twice; ``store=False``: the VMM performs the access itself (a patched TPR
        instruction), no store of the engine's will be replayed."""
        if store and self.replayed_store(address, size, value):
            return
        self.events.add("mmio", f"write {address:#010x}")
        board = self.vm.board
        board.mmio_bus.write(address, size, value)
        if (self._event_register(address) or board.gsi.take_changed()) and self.vm.replan() and store:
            self._replayed_store = (address, size, value)

    def _event_register(self, address: int) -> bool:
        """A register whose write can change the next interrupt: a local-APIC event
        register (an offset alone is not enough: other devices have registers at those
        offsets too), or any of the I/O APIC's and the HPET's."""
        board = self.vm.board
        found = board.mmio_bus.find(address)
        if found is None:
            return False
        device = found[2]
        if device is board.lapic:
            return address - found[0] in APIC_EVENT_REGISTERS
        return device is board.ioapic or device is board.hpet


class Hypervisor:
    """The parts every mode has, and the bare machine's answer to each event."""

    name = "hypervisor"

    def __init__(self, vm):
        self.vm = vm
        eng = vm.engine
        self.ram_size = vm.ram_size
        self.device_ranges = [(base, base + length) for base, length, _ in vm.board.mmio_bus.regions()]
        self.events = EventCounters(vm.bus.event)
        self.devices = DeviceAccess(vm, self.events)
        self.pages = CodePages(vm, self.is_guest_physical)
        self.code_watchers = self.pages.watchers     # objects with fetch(linear_page, page) and written(page)
        self.delivery = EventDelivery(eng, lambda linear, write: self.translate(linear, write, user=False),
                                      lambda cr2: eng.set_reg("cr2", cr2))
        self.processor = self
        self.mmu = None  # set by the mode
        self.tasks = TaskSwitcher(self.delivery, self.load_cr3)
        self.msrs = MsrFile(vm)   # the CPU model's MSRs, however a mode reaches them
        self.exit_table = {
            ExitReason.EXCEPTION_NMI: self.exception,
            ExitReason.EXTERNAL_INTERRUPT: self.external_interrupt,
            ExitReason.IO_INSTRUCTION: self.io,
            ExitReason.HLT: self.hlt,
        }

    # -- memory: the MMU strategy's ----------------------------------------------------------
    def is_guest_physical(self, page: int) -> bool:
        """The guest's physical memory: its RAM and its devices, nothing of the VMM's."""
        if page < self.ram_size:
            return True
        return any(lo <= page < hi for lo, hi in self.device_ranges)

    def tlb_fill(self, vaddr: int, access: str) -> Fill | Fault:
        return self.mmu.tlb_fill(vaddr, access)

    @property
    def tlb_fills(self) -> int:
        return self.mmu.tlb_fills

    def walk(self, linear: int, write: bool, user: bool, set_ad: bool = True):
        return self.mmu.walk(linear, write, user, set_ad)

    def translate(self, linear: int, write: bool, user: bool, set_ad: bool = True) -> int:
        """Guest-linear to host-physical, as the VMM's own accesses see it; raises PageFault."""
        return self.mmu.translate(linear, write, user, set_ad)

    def map_guest_ram(self) -> None:
        self.mmu.map_guest_ram()

    def write_guest(self, gpa: int, data: bytes) -> None:
        """The loader's writes into guest-physical memory."""
        self.mmu.write_guest(gpa, data)

    def read_guest(self, gpa: int, size: int) -> bytes:
        """Guest-physical RAM as the VMM's devices read it (the VGA text buffer), no access of the guest's."""
        return self.mmu.read_guest(gpa, size)

    def memory_counters(self) -> dict[str, int]:
        """Counts of the mode's memory-virtualization events, for statistics."""
        return self.mmu.memory_counters()

    def on_mmio(self, address: int, size: int, value: int | None) -> int | None:
        return self.devices.mmio(address, size, value)

    def io_direct(self, port: int, size: int, value: int) -> None:
        self.devices.port_write(port, size, value)

    # -- engine events: the bare machine's ------------------------------------------------------
    def on_exception(self, vector: int, error_code: int, software: bool) -> None:
        self.vm.dispatch(ExceptionExit(vector=vector, error_code=error_code, software=software))

    def on_invalid_opcode(self) -> None:
        self.on_exception(UD, 0, False)

    def on_fault(self, fault: Fault) -> None:
        assert fault.vector is not None, "the run loop carries out the VMM's own stops first"
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
        """The CPU model's leaf (:mod:`vmm.cpu.cpuid`), as every mode answers it."""
        eng = self.vm.engine
        eng.set_regs4(CPUID_OUTPUTS, cpu_model.cpuid(eng.reg("eax"), eng.reg("ecx")))
        return True

    def on_rdtsc(self) -> bool:
        """RDTSC reads virtual time (the engine's own TSC follows the host's clock)."""
        tsc, eng = self.vm.guest_tsc(), self.vm.engine
        eng.set_reg("eax", tsc & 0xFFFFFFFF)
        eng.set_reg("edx", tsc >> 32)
        return True

    def on_code_site(self, address: int) -> None:
        pass

    def on_halt(self) -> None:
        self.vm.dispatch(HLT_EXIT)

    def on_slice_end(self) -> None:
        pass

    def on_triple_fault(self, fault) -> None:
        pass

    def next_deadline(self) -> int | None:
        """Virtual time at which the mode itself needs control (VMX preemption timer)."""
        return None

    def interrupts_enabled(self) -> bool:
        """The guest's EFLAGS.IF (a deprivileged guest's is virtual), outside the shadow of
        an STI or MOV SS: an interrupt is taken only at a boundary that allows it."""
        eng = self.vm.engine
        return bool(eng.reg("eflags") & EFLAGS.IF) and not eng.interrupt_shadow()

    def poll_interrupts(self) -> bool:
        """Deliver a pending NMI or interrupt if the guest accepts one; True if one still
        waits (an NMI waits for the IRET of the NMI handler, an interrupt for IF)."""
        board = self.vm.board
        nmi = take_nmi(board, self.vm.engine)
        if nmi is False:
            return True
        if nmi:
            self.vm.inject(Event(Vector.NMI, "nmi"))
        if not board.interrupt_pending():
            return False
        if self.interrupts_enabled():
            self.vm.dispatch(ExternalInterruptExit(vector=board.acknowledge_interrupt()))
            return board.interrupt_pending()
        return True

    # -- tasks: LTR, task switches (vmm.cpu.tasks) -----------------------------------------------
    def model_task_switching(self) -> None:
        """For a mode whose guest's TSS is the one the CPU uses: the VMM keeps TR's base
        and carries out LTR and every task switch (:meth:`Engine.virtualize_tr`)."""
        self.vm.engine.virtualize_tr()
        self.delivery.task_gate = self.task_gate
        self.check_io_permission()

    def check_io_permission(self) -> None:
        """Refuse ring-3 (CPL > IOPL) and virtual-8086 port I/O that the guest's I/O
        permission bitmap forbids, with #GP(0) (:mod:`vmm.cpu.iocheck`)."""
        self.vm.engine.check_io_permission(self.io_permitted)

    def io_permitted(self, port: int, size: int) -> bool:
        """The engine found CPL > IOPL (or virtual-8086 mode); the guest's own view decides
        (a deprivileged kernel's CPL and IOPL are virtual)."""
        eflags = self.vm.engine.reg("eflags")
        if not eflags & EFLAGS.VM and self.delivery.cpl() <= self.guest_iopl():
            return True
        return self.tasks.io_permitted(port, size)

    def guest_iopl(self) -> int:
        return (self.vm.engine.reg("eflags") & EFLAGS.IOPL) >> IOPL_SHIFT

    def load_cr3(self, value: int) -> None:
        """A CR3 load the VMM makes for the guest (a task switch's): the MMU hears of it."""
        self.vm.engine.set_reg("cr3", value)
        self.mmu.guest_cr3_loaded(value)

    def on_intercept(self, exit_code: int, info: int) -> None:
        """An instruction the engine reports before it executes it: here LTR."""
        if exit_code != quirks.SVM_EXIT_TR_WRITE:
            raise EngineError(f"internal: unexpected engine intercept {exit_code:#x}")
        eng = self.vm.engine
        eip = eng.reg("eip")
        insn = self.instruction_at(eip)
        op = insn.operands[0]
        try:
            selector = register16(eng.reg, insn.reg_name(op.reg)) if op.type == X86_OP_REG else self._read_u16(
                effective_address(insn, op, eng.reg))
            self.tasks.load_tr(selector & 0xFFFF)
        except DeliveryFault as fault:
            return self.raise_fault(fault.vector, fault.error_code, fault.cr2)
        eng.set_reg("eip", eip + insn.size)
        return None

    def on_task_state_access(self) -> None:
        """The engine reached for the TSS, EIP at the instruction: a far JMP or CALL to a
        TSS or task gate, or an IRET with NT, is a task switch."""
        eng = self.vm.engine
        insn = self.instruction_at(eng.reg("eip"))
        try:
            if insn.mnemonic in ("iret", "iretd"):
                request: tuple[int | None, TaskSource] | None = (self.tasks.back_link(), TaskSource.IRET)
            else:
                far = far_operand(insn, self._read_u16, self._memory_operand)
                request = None if far is None else (self.tasks.far_target(far[0]), far[1])
                if far is not None and request is not None and request[0] is None and far[1] is TaskSource.CALL:
                    # Not a task: a call gate to an inner ring, which read the TSS for its stack.
                    call_through_gate(self.tasks, far[0], (eng.reg("eip") + insn.size) & 0xFFFFFFFF)
                    return None
        except DeliveryFault as fault:
            return self.raise_fault(fault.vector, fault.error_code, fault.cr2)
        if request is None or request[0] is None:
            raise EngineError(f"the TSS was read by {insn.mnemonic} {insn.op_str} at {insn.address:#010x}, "
                              "which the VMM does not model")
        return self.task_switch(request[0], request[1], insn.size)

    def task_switch(self, selector: int, source: TaskSource, length: int) -> None:
        """Switch tasks for the ``length``-byte instruction at EIP (far JMP/CALL, IRET)."""
        eng = self.vm.engine
        try:
            self.tasks.switch(selector, source, (eng.reg("eip") + length) & 0xFFFFFFFF)
        except DeliveryFault as fault:
            self.raise_fault(fault.vector, fault.error_code, fault.cr2)

    def raise_fault(self, vector: int, error_code: int, cr2: int | None) -> None:
        """A fault the instruction the VMM carries out raises, as the guest's own."""
        self.reflect(vector, error_code, cr2)

    def task_gate(self, selector: int, event: Event, ext: int) -> None:
        """An event whose IDT entry is a task gate (inside delivery: a fault escalates)."""
        code = pushed_error_code(event)
        self.tasks.switch(selector, TaskSource.TASK_GATE, self.vm.engine.reg("eip"), error_code=code, ext=ext)

    def instruction_at(self, eip: int):
        from .privileged import decoder
        linear = (self.vm.engine.segment_cache("cs")[1] + eip) & 0xFFFFFFFF
        return next(decoder().disasm(self.vm.read_code(linear), eip, 1))

    def _read_u16(self, linear: int) -> int:
        return int.from_bytes(self.tasks._read(linear, 2), "little")

    def _memory_operand(self, insn) -> int:
        op = next(o for o in insn.operands if o.type == X86_OP_MEM)
        return effective_address(insn, op, self.vm.engine.reg)

    # -- life cycle ----------------------------------------------------------------------------
    def boot(self, image) -> None:
        """The image is loaded and the boot state (Multiboot's) set: a mode that boots its
        guests differently (pv: ring 1, paging on, start-info page) changes it here."""

    def launch(self) -> str | None:
        """Start the guest; a mode with entry checks returns their failure report."""
        return None

    def stopped(self) -> None:
        """The VM stopped: settle any state the mode keeps live."""

    # -- handlers: the bare machine's ------------------------------------------------------------
    def exception(self, exit: ExceptionExit) -> Outcome:
        kind = "software" if exit.software else "exception"
        self.vm.inject(Event(exit.vector, kind, exit.error_code, exit.cr2))
        return RESUME

    def external_interrupt(self, exit: ExternalInterruptExit) -> Outcome:
        assert exit.vector is not None, "the bare machine acknowledges the interrupt before the exit"
        self.vm.inject(Event(exit.vector, "external"))
        return RESUME

    def hlt(self, exit: Exit) -> Outcome:
        self.vm.halt()
        return RESUME

    def io(self, exit: IoExit) -> Outcome:
        if exit.direction == IN:
            return Value(self.vm.board.port_bus.read(exit.port, exit.size))
        self.devices.port_write(exit.port, exit.size, exit.value)
        return RESUME


__all__ = ["Hypervisor", "DeviceAccess", "PAGE_MASK"]
