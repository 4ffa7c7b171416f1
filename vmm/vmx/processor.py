"""VMX non-root operation: what the processor does with each guest event, per the VMCS.

This is the "hardware" half of the VT-x modes, a component the hypervisor
(:mod:`vmm.modes.vtx`, the exit handlers) holds as ``cpu``. For every event the engine reports, the controls
decide, as SDM vol. 3 ch. 26 says, between

* a **VM exit**: the exit-information fields are filled (reason, qualification,
  instruction length, interruption information, guest-linear address), the exit table
  runs, and a **VM entry** follows (event injection, preemption-timer reload); and
* **no exit**: the instruction behaves as on bare hardware, except where VMX changes
  its result without an exit (reads of CR0/CR4 bits owned by the host return the read
  shadow; RDTSC adds the TSC offset).

Sensitive instructions that Unicorn cannot hook by type are found in the guest's code
pages (:mod:`vmm.vmx.sites`).
"""
from __future__ import annotations

from capstone.x86 import X86_OP_MEM, X86_OP_REG

from ..cpu.delivery import BP, HAS_ERROR_CODE, OF, PF, UD, Event, TripleFault, take_nmi
from ..cpu.faultaddr import effective_address
from ..cpu.regs import IF
from ..x86 import CR0, EFLAGS, ControlRegister, Vector
from .bitmaps import BITMAP_SIZE, VmxBitmaps
from .controls import ExitControls, PinBased, PrimaryProcBased, SecondaryProcBased
from .exit_reasons import ExitReason
from .exits import (
    IN,
    OUT,
    CpuidExit,
    CrAccessExit,
    DescriptorTableExit,
    DrAccessExit,
    ExceptionExit,
    Exit,
    ExternalInterruptExit,
    InstructionExit,
    IoExit,
    MsrExit,
)
from .qualification import CrAccess, CrAccessType, InterruptionInfo, InterruptionType, IoInstruction, MovDr
from .sites import CodeSites
from .vmcs import CR3_TARGET_SLOTS, Field, Vmcs

GPRS = ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi")  # SDM GPR numbering
GPR_INDEX = {name: i for i, name in enumerate(GPRS)}
CR0_TS = CR0.TS
U32_MASK, WORD_MASK = 0xFFFFFFFF, 0xFFFF
WORD_GPRS = frozenset({"ax", "cx", "dx", "bx", "sp", "bp", "si", "di"})  #: the 16-bit halves of the GPRs
# Instruction encodings the processor recognises at an exit (what the hardware decodes)
INT3, INTO = b"\xcc", b"\xce"
VMCALL = b"\x0f\x01\xc1"
OPERAND_SIZE_PREFIX = 0x66
IO_IMMEDIATE_OPCODES = frozenset({0xE4, 0xE5, 0xE6, 0xE7})   # IN/OUT with an imm8 port
IO_STRING_OPCODES = frozenset({0x6C, 0x6D, 0x6E, 0x6F})      # INS/OUTS
PREEMPTION_TIMER_RATE = 5  # IA32_VMX_MISC[4:0]: the timer counts down once per 2^5 TSC ticks
KVM_ENOSYS = 1000          # KVM's hypercall error for an unknown number
CPUID_LENGTH = RDTSC_LENGTH = 2   # 0F A2, 0F 31
_ACTIVATE_SECONDARY = PrimaryProcBased.ACTIVATE_SECONDARY_CONTROLS._value_
_ENABLE_VPID = SecondaryProcBased.ENABLE_VPID._value_
_BITMAP_FIELDS = (Field.IO_BITMAP_A, Field.IO_BITMAP_B, Field.MSR_BITMAP)   # VmxBitmaps.IO_A, IO_B, MSR
# Exits with nothing to qualify, shared by every occurrence (they are immutable); the engine
# completes both instructions itself.
_CPUID_EXIT = CpuidExit(length=CPUID_LENGTH, hooked=True)
RDTSC_EXIT = InstructionExit(reason=ExitReason.RDTSC, length=RDTSC_LENGTH, hooked=True)


def exits_for_exception(vmcs, vector: int, error_code: int) -> bool:
    """Exception bitmap, with the #PF error-code mask/match rule (SDM §25.6.3)."""
    bit = bool(vmcs.read(Field.EXCEPTION_BITMAP) >> vector & 1)
    if vector != PF:
        return bit
    match = error_code & vmcs.read(Field.PAGE_FAULT_ERROR_CODE_MASK) == vmcs.read(Field.PAGE_FAULT_ERROR_CODE_MATCH)
    return bit if match else not bit

BLOCKING_BY_STI = 1 << 0      # guest interruptibility state (SDM §24.4.2, table 24-3)
BLOCKING_BY_MOV_SS = 1 << 1

# Guest-state fields backed by the engine while the guest runs.
LIVE_REGISTERS = {
    Field.GUEST_CR0: "cr0", Field.GUEST_CR3: "cr3", Field.GUEST_CR4: "cr4",
    Field.GUEST_RIP: "eip", Field.GUEST_RSP: "esp", Field.GUEST_RFLAGS: "eflags",
    Field.GUEST_DR7: "dr7",
}
LIVE_SELECTORS = {
    Field.GUEST_ES_SELECTOR: "es", Field.GUEST_CS_SELECTOR: "cs", Field.GUEST_SS_SELECTOR: "ss",
    Field.GUEST_DS_SELECTOR: "ds", Field.GUEST_FS_SELECTOR: "fs", Field.GUEST_GS_SELECTOR: "gs",
}
LIVE_TABLES = {
    Field.GUEST_GDTR_BASE: ("gdtr", 1), Field.GUEST_GDTR_LIMIT: ("gdtr", 2),
    Field.GUEST_IDTR_BASE: ("idtr", 1), Field.GUEST_IDTR_LIMIT: ("idtr", 2),
    Field.GUEST_TR_SELECTOR: ("tr", 0), Field.GUEST_LDTR_SELECTOR: ("ldtr", 0),
}


class LiveVmcs(Vmcs):
    """A VMCS whose guest register fields are the engine's registers while ``live``."""

    def __init__(self, engine):
        super().__init__()
        self.engine = engine
        self.live = False

    def read(self, encoding):
        if self.live:
            name = LIVE_REGISTERS.get(encoding) or LIVE_SELECTORS.get(encoding)
            if name:
                return self.engine.reg(name)
            if encoding == Field.GUEST_INTERRUPTIBILITY_INFO:
                return self._interruptibility()
            table = LIVE_TABLES.get(encoding)
            if table:
                return self.engine.table(table[0])[table[1]]
        return super().read(encoding)

    def write(self, encoding, value):
        if self.live and encoding in LIVE_REGISTERS:
            self.engine.set_reg(LIVE_REGISTERS[encoding], value)
            return
        if self.live and encoding == Field.GUEST_INTERRUPTIBILITY_INFO:
            self.engine.set_interrupt_shadow(bool(value & (BLOCKING_BY_STI | BLOCKING_BY_MOV_SS)))
        super().write(encoding, value)

    def _interruptibility(self) -> int:
        """Blocking by STI / MOV SS (SDM §24.4.2), from the engine's one shadow flag: an
        STI shadow has IF set (STI set it); a shadow with IF clear is a MOV SS one. Bits
        2 and up (SMI, NMI blocking) are the stored ones."""
        stored = super().read(Field.GUEST_INTERRUPTIBILITY_INFO) & ~(BLOCKING_BY_STI | BLOCKING_BY_MOV_SS)
        if not self.engine.interrupt_shadow():
            return stored
        return stored | (BLOCKING_BY_STI if self.engine.reg("eflags") & IF else BLOCKING_BY_MOV_SS)

    def capture(self) -> None:
        """Copy the live guest state into the store (on stop, for dumps)."""
        for field in (*LIVE_REGISTERS, *LIVE_SELECTORS, *LIVE_TABLES):
            value = self.read(field)
            self.live = False
            self._store(field, False, value)
            self.live = True


CPL0_ONLY = frozenset({"mov", "clts", "rdmsr", "wrmsr", "invlpg", "invd", "wbinvd",
                       "lgdt", "lidt", "lldt", "ltr"})
"""The site instructions that #GP at CPL > 0 (MOV here is MOV to or from CRn/DRn)."""


class VmxProcessor:
    """The processor in VMX non-root operation, for a VT-x hypervisor that *has* one.

    It owns what the hardware owns: the VMCS (live while the guest runs), the I/O and MSR
    bitmaps, the IDT-vectoring state of an event being delivered, the preemption-timer
    start, and the sites where the guest's sensitive instructions are. For every engine
    event it decides, from the controls, between a VM exit (exit-information fields,
    ``VM.dispatch`` to the hypervisor's exit table, VM entry) and what the instruction
    does with no exit. ``hypervisor`` answers the few things that are its own: where a
    port write goes when OUT does not exit (``io_direct``) and whether it holds an
    interrupt back for the interrupt window (``queued_irq``).
    """

    def __init__(self, vm, hypervisor, sites: CodeSites):
        self.vm = vm
        self.hv = hypervisor
        self.vmcs = LiveVmcs(vm.engine)
        self.sites = sites
        self.bitmaps = VmxBitmaps(self._sync_bitmap)
        self._io_decode: dict[int, tuple[int, bool, bool]] = {}
        self._vectoring: tuple[InterruptionInfo, int] | None = None
        self._delivering: tuple[InterruptionInfo, int] | None = None
        self.inject_cr2: int | None = None  # CR2 to load with the #PF the next VM entry injects
        self._timer_start = 0
        self.injected = 0
        self.tlb_flushes = 0

    def _sync_bitmap(self, which: int, data: bytes) -> None:
        address = self.vmcs.read(_BITMAP_FIELDS[which])
        if address:
            self.vm.engine.write_phys(address, data)

    def allocate_bitmaps(self) -> None:
        """Give the bitmaps host pages outside the guest and point the VMCS at them."""
        for field in _BITMAP_FIELDS:
            self.vmcs.write(field, self.vm.host_alloc(BITMAP_SIZE))
        self.bitmaps.publish()

    def flush_on_entry(self, deferred: bool) -> None:
        """Without VPID every VM entry starts with an empty TLB (SDM §28.3.3.1). (Flushing
        inside a TLB fill is safe: QEMU's own MOV CR3 helper flushes mid-block.)"""
        if self.vmcs.vpid_enabled():
            return
        self.tlb_flushes += 1
        self.vm.engine.flush_tlb()

    # -- controls ---------------------------------------------------------------------------
    # (flag._value_: an int AND with an IntFlag goes through enum machinery, ~1 us; these
    # checks run on every exit.)
    def pin(self, flag: PinBased) -> bool:
        return bool(self.vmcs.peek(Field.PIN_BASED_VM_EXEC_CONTROL) & flag._value_)

    def primary(self, flag: PrimaryProcBased) -> bool:
        return bool(self.vmcs.peek(Field.CPU_BASED_VM_EXEC_CONTROL) & flag._value_)

    def secondary(self, flag: SecondaryProcBased) -> bool:
        return (bool(self.vmcs.peek(Field.CPU_BASED_VM_EXEC_CONTROL) & _ACTIVATE_SECONDARY)
                and bool(self.vmcs.peek(Field.SECONDARY_VM_EXEC_CONTROL) & flag._value_))

    def set_primary(self, flag: PrimaryProcBased, on: bool) -> None:
        value = self.vmcs.read(Field.CPU_BASED_VM_EXEC_CONTROL)
        self.vmcs.write(Field.CPU_BASED_VM_EXEC_CONTROL, value | flag if on else value & ~flag)

    # -- the exit itself ---------------------------------------------------------------------
    def vmexit(self, exit: Exit, *, intr_info: InterruptionInfo | None = None,
               intr_error: int | None = None, defer_entry: bool = False):
        """Fill the exit-information fields, run the handler, then enter the guest again.

        ``defer_entry``: the exit happened inside a TLB fill (a shadow page fault); the
        VM entry's side effects wait until emulation stops."""
        vectoring = self._vectoring
        assert exit.reason is not None, "a VM exit has an SDM reason"
        self.vmcs.record_exit(exit.reason, exit.qualification, exit.length, exit.linear or 0,
                              intr_info.encode() if intr_info else 0, intr_error or 0,
                              vectoring[0].encode() if vectoring else 0, vectoring[1] if vectoring else 0)
        self._vectoring = None
        if exit.gpa is not None:
            self.vmcs.set_exit_info(Field.GUEST_PHYSICAL_ADDRESS, exit.gpa)
        result = self.vm.dispatch(exit)
        if defer_entry:
            self.flush_on_entry(deferred=True)
        else:
            self.vm_entry()
        return result

    def vm_entry(self) -> None:
        """VM entry after an exit: deliver the event the handler injected, if any."""
        self.flush_on_entry(deferred=False)
        self._timer_start = self.vm.now
        if not self.vmcs.peek(Field.VM_ENTRY_INTR_INFO_FIELD) >> 31:
            return
        info = self.vmcs.peek(Field.VM_ENTRY_INTR_INFO_FIELD)
        self.vmcs.write(Field.VM_ENTRY_INTR_INFO_FIELD, 0)  # the processor clears valid
        intr = InterruptionInfo.decode(info)
        kind = {InterruptionType.EXTERNAL_INTERRUPT: "external", InterruptionType.NMI: "nmi",
                InterruptionType.SOFTWARE_INTERRUPT: "software",
                InterruptionType.SOFTWARE_EXCEPTION: "software",
                InterruptionType.PRIVILEGED_SOFTWARE_EXCEPTION: "software"}.get(intr.type, "exception")
        if kind == "software":  # the frame returns past the instruction
            eng = self.vm.engine
            eng.set_reg("eip", eng.reg("eip") + self.vmcs.read(Field.VM_ENTRY_INSTRUCTION_LEN))
        error = self.vmcs.read(Field.VM_ENTRY_EXCEPTION_ERROR_CODE) if intr.error_code_valid else None
        cr2 = self.inject_cr2
        self.inject_cr2 = None
        self.injected += 1
        self.deliver_as_hardware(Event(intr.vector, kind, error, cr2), intr)

    def deliver_as_hardware(self, event: Event, intr: InterruptionInfo) -> None:
        """Deliver through the guest IDT; a fault on the way that the exception bitmap
        intercepts becomes a VM exit with IDT-vectoring information (SDM §28.2.4)."""
        self._delivering = (intr, event.error_code or 0)
        try:
            self.vm.inject(event)
        finally:
            self._delivering = None

    def vectoring_exit(self, exit: Exit) -> None:
        """A VM exit in the middle of delivering an event (a task gate's task switch):
        the event goes in the IDT-vectoring fields."""
        self._vectoring = self._delivering
        self._delivering = None
        self.vmexit(exit)

    def intercept_nested_fault(self, vector: int, error_code: int, cr2: int | None) -> bool:
        """Called by event delivery for a fault raised while delivering another event."""
        if self._delivering is None or not exits_for_exception(self.vmcs, vector, error_code):
            return False
        self._vectoring = self._delivering
        self._delivering = None
        self._exception_exit(vector, error_code, InterruptionType.HARDWARE_EXCEPTION, 0, cr2)
        return True

    # -- engine events --------------------------------------------------------------------------
    def on_exception(self, vector: int, error_code: int, software: bool) -> None:
        eng = self.vm.engine
        if software:
            opcode = self.vm.read_code(eng.reg("eip") - 1, 1)
            if vector == BP and opcode == INT3 or vector == OF and opcode == INTO:
                # INT3 / INTO are software exceptions: they consult the exception bitmap.
                if exits_for_exception(self.vmcs, vector, 0):
                    eng.set_reg("eip", eng.reg("eip") - 1)  # the exit reports the instruction
                    self._exception_exit(vector, 0, InterruptionType.SOFTWARE_EXCEPTION, 1, None)
                    return
            self.vm.inject(Event(vector, "software"))  # INT n never exits
            return
        self.hardware_exception(vector, error_code, None)

    def on_fault(self, fault) -> None:
        if fault.exited:  # the #PF exit already ran inside the TLB fill; this is its VM entry
            self.inject_cr2 = fault.address
            self.vm_entry()
            return
        self.hardware_exception(fault.vector, fault.error_code or 0, fault.address)

    def hardware_exception(self, vector: int, error_code: int, cr2: int | None) -> None:
        if exits_for_exception(self.vmcs, vector, error_code):
            self._exception_exit(vector, error_code, InterruptionType.HARDWARE_EXCEPTION, 0, cr2)
        else:
            code = error_code if vector in HAS_ERROR_CODE else None
            self.deliver_as_hardware(Event(vector, "exception", code, cr2),
                                     InterruptionInfo.exception(vector, code is not None))

    def _exception_exit(self, vector, error_code, itype, length, cr2) -> None:
        has_code = itype is InterruptionType.HARDWARE_EXCEPTION and vector in HAS_ERROR_CODE
        self.vmexit(ExceptionExit(qualification=cr2 or 0 if vector == PF else 0, length=length,
                                  linear=cr2 if vector == PF else None, vector=vector, error_code=error_code,
                                  software=itype is InterruptionType.SOFTWARE_EXCEPTION, cr2=cr2),
                    intr_info=InterruptionInfo(vector, itype, error_code_valid=has_code),
                    intr_error=error_code if has_code else None)

    def on_invalid_opcode(self) -> None:
        eng = self.vm.engine
        eip = eng.reg("eip")
        if self.vm.read_code(eip, len(VMCALL)) == VMCALL:
            self.vmexit(InstructionExit(reason=ExitReason.VMCALL, length=3))
            return
        self.hardware_exception(UD, 0, None)

    def on_triple_fault(self, fault: TripleFault) -> None:
        self.vmcs.set_exit_info(Field.VM_EXIT_REASON, int(ExitReason.TRIPLE_FAULT))
        self.vm.exits[ExitReason.TRIPLE_FAULT] += 1

    def on_cpuid(self) -> bool:
        # CPUID always exits (SDM §26.1.2): the lean path, with nothing to qualify.
        self.vmcs.record_exit(ExitReason.CPUID, 0, CPUID_LENGTH, 0, 0, 0, 0, 0)
        self.vm.dispatch(_CPUID_EXIT)
        self.vm_entry()
        return True

    def on_rdtsc(self) -> bool:
        if self.primary(PrimaryProcBased.RDTSC_EXITING):
            self.vmexit(RDTSC_EXIT)
        else:
            offset = self.vmcs.read(Field.TSC_OFFSET) if self.primary(PrimaryProcBased.USE_TSC_OFFSETTING) else 0
            self.write_edx_eax(self.vm.guest_tsc() + offset)
        return True

    def write_edx_eax(self, value: int) -> None:
        eng = self.vm.engine
        eng.set_reg("eax", value & U32_MASK)
        eng.set_reg("edx", (value >> 32) & U32_MASK)

    def on_halt(self) -> None:
        if self.primary(PrimaryProcBased.HLT_EXITING):
            eng = self.vm.engine
            eng.set_reg("eip", eng.reg("eip") - 1)  # HLT exits before it executes
            self.vmexit(InstructionExit(reason=ExitReason.HLT, length=1))
        elif self.primary(PrimaryProcBased.INTERRUPT_WINDOW_EXITING) and self.vm.engine.reg("eflags") & IF:
            pass   # the window exit wakes the processor from HLT (SDM §26.7.5): the next poll takes it
        else:
            self.vm.halt()

    def _io_exits(self, port: int, size: int) -> bool:
        if self.primary(PrimaryProcBased.USE_IO_BITMAPS):
            return self.bitmaps.io_exits(port, size)
        return self.primary(PrimaryProcBased.UNCONDITIONAL_IO_EXITING)

    def _io_qualification(self, port: int, size: int, direction_in: bool) -> tuple[int, int]:
        eip = self.vm.engine.reg("eip")
        decoded = self._io_decode.get(eip)
        if decoded is None:
            code = self.vm.read_code(eip, 3)
            prefix = 1 if code[:1] == bytes([OPERAND_SIZE_PREFIX]) else 0
            opcode = code[prefix] if len(code) > prefix else 0
            immediate = opcode in IO_IMMEDIATE_OPCODES
            string = opcode in IO_STRING_OPCODES
            decoded = self._io_decode[eip] = (prefix + (2 if immediate else 1), immediate, string)
        length, immediate, string = decoded
        q = IoInstruction(port, size, direction_in, string=string, immediate=immediate).encode()
        return q, length

    def on_port_in(self, port: int, size: int) -> int:
        if not self._io_exits(port, size):
            return self.vm.board.port_bus.read(port, size)
        q, length = self._io_qualification(port, size, True)
        return self.vmexit(IoExit(qualification=q, length=length, hooked=True, port=port, size=size, direction=IN))

    def on_port_out(self, port: int, size: int, value: int) -> None:
        if not self._io_exits(port, size):
            self.hv.io_direct(port, size, value)
            return
        q, length = self._io_qualification(port, size, False)
        self.vmexit(IoExit(qualification=q, length=length, hooked=True, port=port, size=size, direction=OUT,
                           value=value))

    def next_deadline(self) -> int | None:
        if self.pin(PinBased.PREEMPTION_TIMER):
            return self._timer_start + (self.vmcs.read(Field.VMX_PREEMPTION_TIMER_VALUE) << PREEMPTION_TIMER_RATE)
        return None

    def on_slice_end(self) -> None:
        deadline = self.next_deadline()
        if deadline is not None and self.vm.now >= deadline:
            self.vmexit(InstructionExit(reason=ExitReason.PREEMPTION_TIMER))

    def poll_interrupts(self) -> bool:
        """External interrupts and the interrupt window (SDM §26.2, §26.7.5): both need
        IF=1 and no blocking by STI or MOV SS at this boundary."""
        board = self.vm.board
        nmi_waits = self._poll_nmi()
        if self.pin(PinBased.EXTERNAL_INTERRUPT_EXITING):
            if board.interrupt_pending() and self.hv.queued_irq is None and not self.hv.awaiting_window:
                info = None
                if self.vmcs.read(Field.VM_EXIT_CONTROLS) & ExitControls.ACK_INTERRUPT_ON_EXIT:
                    vector = board.acknowledge_interrupt()
                    info = InterruptionInfo(vector, InterruptionType.EXTERNAL_INTERRUPT)
                self.vmexit(ExternalInterruptExit(vector=None if info is None else info.vector), intr_info=info)
        elif board.interrupt_pending() and self._window_open():
            self.deliver_as_hardware(Event(board.acknowledge_interrupt(), "external"),
                                     InterruptionInfo(0, InterruptionType.EXTERNAL_INTERRUPT))
        # Asked again: a delivery (or an exit's handler) may have cleared IF.
        open_window = self._window_open()
        if self.primary(PrimaryProcBased.INTERRUPT_WINDOW_EXITING) and open_window:
            self.vmexit(InstructionExit(reason=ExitReason.INTERRUPT_WINDOW))
        waiting = self.primary(PrimaryProcBased.INTERRUPT_WINDOW_EXITING) or board.interrupt_pending()
        return nmi_waits or bool(waiting and not open_window)

    def _window_open(self) -> bool:
        """IF=1 and no blocking by STI or MOV SS at this boundary: an external interrupt
        (or an interrupt-window exit) may happen now."""
        eng = self.vm.engine
        return bool(eng.reg("eflags") & IF) and not eng.interrupt_shadow()

    def _poll_nmi(self) -> bool:
        """A pending NMI: a VM exit with NMI exiting (SDM §25.2), else delivered through the
        guest IDT; blocked until the IRET of an NMI handler, and in a MOV SS shadow. True if
        it still waits."""
        nmi = take_nmi(self.vm.board, self.vm.engine)
        if nmi is not True:
            return nmi is False
        info = InterruptionInfo(Vector.NMI, InterruptionType.NMI)
        if self.pin(PinBased.NMI_EXITING):
            self.vmexit(ExceptionExit(vector=Vector.NMI, error_code=None), intr_info=info)
        else:
            self.deliver_as_hardware(Event(Vector.NMI, "nmi"), info)
        return False

    # -- code sites: the instructions Unicorn executes without telling us -----------------------
    def on_code_site(self, address: int) -> None:
        insn = self.sites.decode(address)
        if insn is None:
            return
        handler = self._site_handlers.get(insn.mnemonic)
        if handler is not None and not (insn.mnemonic in CPL0_ONLY and self._cpl()):
            handler(self, insn)

    def _cpl(self) -> int:
        """The guest's CPL. A privileged instruction at CPL > 0 raises #GP(0) before any
        VM exit (SDM vol. 3 §26.1.1): the engine, left to run it, raises that #GP itself."""
        eng = self.vm.engine
        if not eng.reg("cr0") & CR0.PE:
            return 0
        return 3 if eng.reg("eflags") & EFLAGS.VM else eng.reg("cs") & 3

    def _gpr(self, insn, operand) -> str:
        return insn.reg_name(operand.reg)

    def _site_mov_cr(self, insn) -> None:
        a, b = insn.operands
        to_cr = insn.reg_name(a.reg).startswith("cr")
        cr_name, gpr = (insn.reg_name(a.reg), insn.reg_name(b.reg)) if to_cr else \
            (insn.reg_name(b.reg), insn.reg_name(a.reg))
        cr = int(cr_name[2:])
        eng, vmcs = self.vm.engine, self.vmcs
        access = CrAccessType.MOV_TO_CR if to_cr else CrAccessType.MOV_FROM_CR
        q = CrAccess(cr, access, GPR_INDEX.get(gpr, 0)).encode()
        if cr in (0, 4):
            mask = vmcs.read(Field.CR0_GUEST_HOST_MASK if cr == 0 else Field.CR4_GUEST_HOST_MASK)
            shadow = vmcs.read(Field.CR0_READ_SHADOW if cr == 0 else Field.CR4_READ_SHADOW)
            if not mask:
                return  # nothing owned by the host: the instruction runs natively
            if to_cr:
                value = eng.reg(gpr)
                if (value ^ shadow) & mask:
                    self.vmexit(CrAccessExit(qualification=q, length=insn.size, cr=cr, gpr=gpr))
                    return
                value = (value & ~mask) | (eng.reg(cr_name) & mask)
                eng.set_reg(cr_name, value | CR0.ET if cr == 0 else value)  # CR0.ET is fixed 1
            else:
                eng.set_reg(gpr, (eng.reg(cr_name) & ~mask) | (shadow & mask))
            self.skip_instruction(insn.size)
        elif cr == ControlRegister.CR3:
            if to_cr and self.primary(PrimaryProcBased.CR3_LOAD_EXITING):
                targets = [vmcs.read(Field.CR3_TARGET_VALUE0 + 2 * i)
                           for i in range(min(CR3_TARGET_SLOTS, vmcs.read(Field.CR3_TARGET_COUNT)))]
                if eng.reg(gpr) not in targets:
                    self.vmexit(CrAccessExit(qualification=q, length=insn.size, cr=3, gpr=gpr))
            elif not to_cr and self.primary(PrimaryProcBased.CR3_STORE_EXITING):
                self.vmexit(CrAccessExit(qualification=q, length=insn.size, cr=3, gpr=gpr))

    def _site_clts(self, insn) -> None:
        mask, shadow = self.vmcs.read(Field.CR0_GUEST_HOST_MASK), self.vmcs.read(Field.CR0_READ_SHADOW)
        if mask & CR0_TS and shadow & CR0_TS:
            self.vmexit(CrAccessExit(qualification=CrAccess(0, CrAccessType.CLTS).encode(), length=insn.size, cr=0))
        elif mask & CR0_TS:
            self.skip_instruction(insn.size)  # TS owned by the host and shadow clear: no effect

    def _site_smsw(self, insn) -> None:
        mask = self.vmcs.read(Field.CR0_GUEST_HOST_MASK)
        op = insn.operands[0]
        if mask and op.type == X86_OP_REG:  # register destination: shadowed bits come from the shadow
            eng = self.vm.engine
            value = (eng.reg("cr0") & ~mask) | (self.vmcs.read(Field.CR0_READ_SHADOW) & mask)
            name = insn.reg_name(op.reg)
            word = name in WORD_GPRS
            full = "e" + name if word else name
            eng.set_reg(full, (eng.reg(full) & ~WORD_MASK) | (value & WORD_MASK) if word else value)
            self.skip_instruction(insn.size)

    def _site_mov_dr(self, insn) -> None:
        if not self.primary(PrimaryProcBased.MOV_DR_EXITING):
            return
        a, b = insn.operands
        to_dr = insn.reg_name(a.reg).startswith("dr")
        dr_name, gpr = (insn.reg_name(a.reg), insn.reg_name(b.reg)) if to_dr else \
            (insn.reg_name(b.reg), insn.reg_name(a.reg))
        q = MovDr(int(dr_name[2:]), not to_dr, GPR_INDEX.get(gpr, 0)).encode()
        self.vmexit(DrAccessExit(qualification=q, length=insn.size, dr=dr_name, gpr=gpr, to_dr=to_dr))

    def _msr_exits(self, msr: int, write: bool) -> bool:
        if not self.primary(PrimaryProcBased.USE_MSR_BITMAPS):
            return True
        return self.bitmaps.msr_exits(msr, write)

    def _site_rdmsr(self, insn) -> None:
        msr = self.vm.engine.reg("ecx")
        if self._msr_exits(msr, False):
            self.vmexit(MsrExit(reason=ExitReason.MSR_READ, length=insn.size, msr=msr))

    def _site_wrmsr(self, insn) -> None:
        msr = self.vm.engine.reg("ecx")
        if self._msr_exits(msr, True):
            self.vmexit(MsrExit(reason=ExitReason.MSR_WRITE, length=insn.size, msr=msr))

    def _site_invlpg(self, insn) -> None:
        if self.primary(PrimaryProcBased.INVLPG_EXITING):
            linear = self.effective_address(insn)
            self.vmexit(InstructionExit(reason=ExitReason.INVLPG, qualification=linear,
                                        length=insn.size, linear=linear))

    def _site_descriptor_table(self, insn) -> None:
        if self.secondary(SecondaryProcBased.DESCRIPTOR_TABLE_EXITING):
            reason = ExitReason.GDTR_IDTR if insn.mnemonic in ("sgdt", "sidt", "lgdt", "lidt") \
                else ExitReason.LDTR_TR
            op = insn.operands[0]
            displacement = op.mem.disp & U32_MASK if op.type == X86_OP_MEM else 0
            self.vmexit(DescriptorTableExit(reason=reason, qualification=displacement, length=insn.size,
                                            mnemonic=insn.mnemonic))

    @staticmethod
    def _site_always(reason: ExitReason):
        def handler(self, insn):
            self.vmexit(InstructionExit(reason=reason, length=insn.size))
        return handler

    def _site_rdpmc(self, insn) -> None:
        if self.primary(PrimaryProcBased.RDPMC_EXITING):
            self.vmexit(InstructionExit(reason=ExitReason.RDPMC, length=insn.size))

    def _site_wbinvd(self, insn) -> None:
        if self.secondary(SecondaryProcBased.WBINVD_EXITING):
            self.vmexit(InstructionExit(reason=ExitReason.WBINVD, length=insn.size))

    _site_handlers = {
        "mov": None,  # filled below: only MOV to/from CRn or DRn reach a site
        "clts": _site_clts, "smsw": _site_smsw, "rdmsr": _site_rdmsr, "wrmsr": _site_wrmsr,
        "invlpg": _site_invlpg, "invd": _site_always(ExitReason.INVD), "wbinvd": _site_wbinvd,
        "rdpmc": _site_rdpmc,
    }
    _site_handlers.update(dict.fromkeys(("sgdt", "sidt", "lgdt", "lidt", "sldt", "str", "lldt", "ltr"),
                                        _site_descriptor_table))

    def _site_mov(self, insn) -> None:
        names = [insn.reg_name(op.reg) for op in insn.operands if op.type == X86_OP_REG]
        if any(n.startswith("cr") for n in names):
            self._site_mov_cr(insn)
        elif any(n.startswith("dr") for n in names):
            self._site_mov_dr(insn)

    _site_handlers["mov"] = _site_mov
    del _site_always

    # -- helpers for handlers -------------------------------------------------------------------
    def skip_instruction(self, length: int) -> None:
        eng = self.vm.engine
        eng.set_reg("eip", eng.reg("eip") + length)

    def effective_address(self, insn) -> int:
        for op in insn.operands:
            if op.type == X86_OP_MEM:
                return effective_address(insn, op, self.vm.engine.reg)
        return 0


__all__ = ["VmxProcessor", "LiveVmcs", "KVM_ENOSYS", "exits_for_exception"]
