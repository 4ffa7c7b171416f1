"""``vtx`` and ``vtx-ept``: the guest kernel at CPL0 in VMX non-root operation, a KVM-like
hypervisor above.

The hypervisor *has* the processor side (:class:`vmm.vmx.processor.VmxProcessor`: the
VMCS, which event exits and with what qualification); this module is the hypervisor:
the VMCS it sets up, the one exit table, and a handler per exit reason doing what KVM's
``kvm_vmx_exit_handlers`` would. Guest memory goes through the MMU strategy chosen for
it: shadow page tables (:class:`vmm.modes.memory.ShadowMmu`), kept in step with the
guest's own by #PF, CR3-load and INVLPG exits as KVM did before EPT; or, in
``vtx-ept``, EPT (:class:`vmm.modes.vtx_ept.EptMmu`).

The guest-state area of the VMCS is *live* while the guest runs: its register fields
read and write the engine directly (KVM caches them in ``vcpu->arch.regs`` likewise),
so an exit costs no copying. At launch the VMCS is the source: the VM-entry checks read
it and the engine is loaded from it.
"""
from __future__ import annotations

import struct

from ..cpu import cpuid as cpu_model
from ..cpu.delivery import GP, HAS_ERROR_CODE, PF, UD, DeliveryFault, Descriptor, Event, TripleFault, combine_events
from ..cpu.engine import Fault, Fill
from ..cpu.regs import debug_register
from ..cpu.tasks import pushed_error_code
from ..mmu.paging import PageFault
from ..vmx import entry
from ..vmx.controls import (
    ENTRY_DEFAULT1,
    EXIT_DEFAULT1,
    PINBASED_DEFAULT1,
    PROCBASED_DEFAULT1,
    ExitControls,
    PinBased,
    PrimaryProcBased,
    SecondaryProcBased,
)
from ..vmx.exit_reasons import ExitReason
from ..vmx.exits import (
    RESUME,
    CrAccessExit,
    DescriptorTableExit,
    DrAccessExit,
    EptMisconfigExit,
    ExceptionExit,
    Exit,
    ExternalInterruptExit,
    MsrExit,
    Outcome,
    ShadowPageFault,
    TaskSwitchExit,
    Value,
)
from ..vmx.processor import (
    BLOCKING_BY_MOV_SS,
    BLOCKING_BY_STI,
    KVM_ENOSYS,
    LIVE_REGISTERS,
    LIVE_SELECTORS,
    LIVE_TABLES,
    VmxProcessor,
    exits_for_exception,
)
from ..vmx.qualification import CrAccess, CrAccessType, InterruptionInfo, InterruptionType, TaskSwitch, TaskSwitchSource
from ..vmx.sites import CodeSites
from ..vmx.vmcs import Field
from ..x86 import CR0, CR4, EFLAGS, ControlRegister, Vector
from ..x86.segments import TaskSource
from .hypervisor import Hypervisor
from .memory import PAGING_CR0_BITS, PAGING_CR4_BITS, GuestPaging, ShadowMmu

CPUID_OUTPUTS = ("eax", "ebx", "ecx", "edx")
SUBLEAF_LEAVES = frozenset({4, 7, 0xB, 0xD, 0xF, 0x10, 0x12, 0x14, 0x17, 0x18})  # ECX selects a subleaf
VMCS_LINK_POINTER_NONE = 0xFFFFFFFFFFFFFFFF
VPID = 1                                 # this model's one vCPU's tag
U64_MASK = (1 << 64) - 1
U32_MASK = 0xFFFFFFFF

# The exceptions KVM intercepts with shadow paging: #PF (shadow faults), #UD (emulation),
# #AC (split-lock detection) and #MC.
DEFAULT_EXCEPTION_BITMAP = (1 << Vector.PF) | (1 << Vector.UD) | (1 << Vector.AC) | (1 << Vector.MC)
# CR0/CR4 bits the hypervisor owns (KVM without EPT: paging-related bits and caching).
DEFAULT_CR0_MASK = CR0.PG | CR0.WP | CR0.CD | CR0.NW | CR0.NE
DEFAULT_CR4_MASK = CR4.PSE | CR4.PAE | CR4.PGE | CR4.VMXE | cpu_model.CR4_RESERVED
# (the reserved bits are host-owned: a MOV to CR4 that sets one exits, and is #GP(0))



class VtxMode(Hypervisor):
    """The VT-x hypervisor. It *has* a VMX processor (``cpu``, which owns the VMCS and
    decides what exits) and an MMU strategy: shadow paging (``vtx``), or EPT's 2-D walks
    (``vtx-ept``, ``ept=True``)."""

    name = "vtx"

    def __init__(self, vm, *, ept: bool = False, page_walk_cache: bool = False):
        super().__init__(vm)
        self.name = "vtx-ept" if ept else "vtx"
        self.sites = CodeSites(vm.engine, vm.read_code)
        self.code_watchers.append(self.sites)
        self.cpu = self.processor = VmxProcessor(vm, self, self.sites)
        self.vmcs = self.cpu.vmcs
        self.queued_irq: int | None = None   # an 8259A interrupt held back for the interrupt window
        self.awaiting_window = False          # the guest's APIC holds an interrupt for the window
        self.delivery.intercept = self.cpu.intercept_nested_fault
        self.model_task_switching()
        self._set_up_vmcs()
        self.ept = ept
        self.exit_table = {
            ExitReason.EXCEPTION_NMI: self.handle_exception,
            ExitReason.EXTERNAL_INTERRUPT: self.handle_external_interrupt,
            ExitReason.INTERRUPT_WINDOW: self.handle_interrupt_window,
            ExitReason.CPUID: self.handle_cpuid,
            ExitReason.HLT: self.handle_hlt,
            ExitReason.INVD: self.handle_skip,
            ExitReason.INVLPG: self.handle_invlpg,
            ExitReason.RDPMC: self.handle_rdpmc,
            ExitReason.RDTSC: self.handle_rdtsc,
            ExitReason.VMCALL: self.handle_vmcall,
            ExitReason.CR_ACCESS: self.handle_cr_access,
            ExitReason.DR_ACCESS: self.handle_dr_access,
            ExitReason.IO_INSTRUCTION: self.io,
            ExitReason.MSR_READ: self.handle_rdmsr,
            ExitReason.MSR_WRITE: self.handle_wrmsr,
            ExitReason.GDTR_IDTR: self.handle_descriptor_table,
            ExitReason.LDTR_TR: self.handle_descriptor_table,
            ExitReason.PREEMPTION_TIMER: self.handle_preemption_timer,
            ExitReason.WBINVD: self.handle_skip,
            ExitReason.TASK_SWITCH: self.handle_task_switch,
        }
        if ept:
            from .vtx_ept import EptMmu
            self.mmu = EptMmu(vm, self.pages, self.cpu, page_walk_cache=page_walk_cache)
            self.mmu.configure(self.vmcs)
            self.exit_table[ExitReason.EPT_VIOLATION] = self.mmu.handle_violation
            self.exit_table[ExitReason.EPT_MISCONFIG] = self.handle_ept_misconfig
        else:
            self.mmu = ShadowMmu(vm, self.pages, GuestPaging(vm, self.pages), true_faults="injected",
                                 on_miss=self.shadow_miss)

    # -- the VMCS a KVM-like hypervisor writes ----------------------------------------------
    def _set_up_vmcs(self) -> None:
        v = self.vmcs
        v.write(Field.PIN_BASED_VM_EXEC_CONTROL, PINBASED_DEFAULT1 | PinBased.EXTERNAL_INTERRUPT_EXITING
                | PinBased.NMI_EXITING)
        v.write(Field.CPU_BASED_VM_EXEC_CONTROL, PROCBASED_DEFAULT1 | PrimaryProcBased.HLT_EXITING
                | PrimaryProcBased.INVLPG_EXITING | PrimaryProcBased.CR3_LOAD_EXITING
                | PrimaryProcBased.CR3_STORE_EXITING | PrimaryProcBased.MOV_DR_EXITING
                | PrimaryProcBased.UNCONDITIONAL_IO_EXITING | PrimaryProcBased.USE_MSR_BITMAPS
                | PrimaryProcBased.RDPMC_EXITING | PrimaryProcBased.ACTIVATE_SECONDARY_CONTROLS)
        v.write(Field.SECONDARY_VM_EXEC_CONTROL, SecondaryProcBased.DESCRIPTOR_TABLE_EXITING
                | SecondaryProcBased.WBINVD_EXITING | SecondaryProcBased.ENABLE_VPID)
        v.write(Field.VM_EXIT_CONTROLS, EXIT_DEFAULT1 | ExitControls.ACK_INTERRUPT_ON_EXIT)
        v.write(Field.VM_ENTRY_CONTROLS, ENTRY_DEFAULT1)
        v.write(Field.VIRTUAL_PROCESSOR_ID, VPID)  # VPID on, as KVM enables it: no TLB flush per entry
        v.write(Field.EXCEPTION_BITMAP, DEFAULT_EXCEPTION_BITMAP)
        v.write(Field.CR0_GUEST_HOST_MASK, DEFAULT_CR0_MASK)
        v.write(Field.CR4_GUEST_HOST_MASK, DEFAULT_CR4_MASK)
        v.write(Field.VMCS_LINK_POINTER, VMCS_LINK_POINTER_NONE)
        self.cpu.allocate_bitmaps()   # in host memory outside the guest

    def set_io_intercept(self, port: int, on: bool = True) -> None:
        self.cpu.bitmaps.set_io(port, on)

    def set_msr_intercept(self, msr: int, *, read: bool, write: bool) -> None:
        self.cpu.bitmaps.set_msr(msr, read=read, write=write)

    # -- VMLAUNCH ---------------------------------------------------------------------------
    def launch(self) -> str | None:
        """Copy the boot state into the guest-state area, run the VM-entry checks, load
        the engine from the VMCS. Returns the failure report, or None."""
        v, eng = self.vmcs, self.vm.engine
        for field in (*LIVE_REGISTERS, *LIVE_SELECTORS, *LIVE_TABLES):
            if field not in v:
                v.live = True
                value = v.read(field)
                v.live = False
                v.write(field, value)
        for shadow, guest in ((Field.CR0_READ_SHADOW, Field.GUEST_CR0), (Field.CR4_READ_SHADOW, Field.GUEST_CR4)):
            if shadow not in v:
                v.write(shadow, v.read(guest))
        problems = self.entry_checks()
        if problems:
            v.set_exit_info(Field.VM_EXIT_REASON, entry.ENTRY_FAILURE_REASON)
            return entry.entry_failure_report(problems, v)
        for field, name in LIVE_REGISTERS.items():
            eng.set_reg(name, v.read(field))
        if eng.reg("cr0") & CR0.PG:
            self.mmu.guest_cr3_loaded(eng.reg("cr3"))
        v.live = True
        v.launched = True
        self.cpu.vm_entry()
        return None

    def entry_checks(self) -> list[str]:
        return entry.check_controls(self.vmcs) + entry.check_guest_state(self.vmcs, self._code_descriptor)

    def _code_descriptor(self, selector: int):
        base, limit = self.vmcs.read(Field.GUEST_GDTR_BASE), self.vmcs.read(Field.GUEST_GDTR_LIMIT)
        index = selector & 0xFFF8
        if index + 7 > limit:
            return None
        lo, hi = struct.unpack("<II", self.vm.engine.read_phys(base + index, 8))
        d = Descriptor.parse(lo, hi)
        return d.code, d.present

    def stopped(self) -> None:
        self.vmcs.capture()

    # -- memory: shadow paging's #PF exits ------------------------------------------------------
    def shadow_miss(self, vaddr: int, write: bool, user: bool, access: str) -> Fill | Fault:
        """A miss in the shadow tables: a #PF VM exit, handled synchronously inside the TLB
        fill (the hidden fault costs an exit but no stop of the engine)."""
        eng, mmu = self.vm.engine, self.mmu
        if not eng.running or eng.vmm_access:
            # The VMM's own access (a segment load while it delivers an event reads the
            # GDT through the MMU): fill the shadow from the guest's tables as KVM's
            # software walk would; there is no guest instruction to fault.
            return mmu.hidden_fault(vaddr, write, user, access)
        error = mmu.shadow.fault_error_code(vaddr, write, user)
        if not exits_for_exception(self.vmcs, PF, error):
            # A hypervisor that lets this #PF through under shadow paging: the guest sees its
            # own faults; a miss its tables would satisfy (a hidden fault) can never be
            # filled, so the VM stops with why (KVM forces the #PF intercept without EPT).
            try:
                mmu.walk(vaddr, write, user, set_ad=False)
            except PageFault as pf:
                return Fault(PF, pf.error_code, vaddr, access)
            self.vm.stop_guest(f"shadow paging needs #PF exits: EXCEPTION_BITMAP and PAGE_FAULT_ERROR_CODE_"
                               f"MASK/MATCH let a hidden fault (error code {error:#x}) at {vaddr:#010x} "
                               f"through to the guest, and the shadow tables cannot be filled")
        return self.cpu.vmexit(ShadowPageFault(qualification=vaddr, linear=vaddr, vector=PF, error_code=error,
                                               access=access, write=write, user=user),
                               intr_info=InterruptionInfo.exception(PF, True), intr_error=error, defer_entry=True)

    def shadow_page_fault(self, exit: ShadowPageFault) -> Outcome:
        """KVM's FNAME(page_fault): walk the guest's tables; fill the shadow (hidden
        fault) or reflect the guest's own #PF (true fault)."""
        vaddr, mmu = exit.linear, self.mmu
        assert vaddr is not None, "a shadow page fault always has its linear address"
        try:
            t = mmu.walk(vaddr, exit.write, exit.user)
        except PageFault as pf:
            mmu.shadow.counters.true_faults += 1
            self.inject_exception(PF, pf.error_code)
            self.cpu.inject_cr2 = vaddr
            return Value(Fault(PF, pf.error_code, vaddr, exit.access, exited=True))
        return Value(mmu.sync(vaddr, exit.write, exit.access, t))

    def on_mmio(self, address: int, size: int, value: int | None) -> int | None:
        if not self.ept:
            return self.devices.mmio(address, size, value)
        if value is not None and self.devices.replayed_store(address, size, value):
            return None  # Unicorn's replay of a store already emulated (DeviceAccess.mmio_write)
        return self.cpu.vmexit(EptMisconfigExit(gpa=address, address=address, size=size, value=value),
                               defer_entry=True)

    def handle_ept_misconfig(self, exit: EptMisconfigExit) -> Outcome:
        """KVM's MMIO path: emulate the access on the device model."""
        if exit.value is None:
            return Value(self.vm.board.mmio_bus.read(exit.address, exit.size))
        self.devices.mmio_write(exit.address, exit.size, exit.value)
        return RESUME

    def invept(self, single_context: bool = False) -> None:
        """INVEPT (vtx-ept): drop cached EPT-derived translations."""
        self.mmu.invept(single_context)

    def invvpid(self, vpid: int | None = None) -> None:
        """INVVPID (vtx-ept): drop the translations tagged with this VPID."""
        self.mmu.invvpid(vpid)

    def memory_counters(self) -> dict[str, int]:
        return {**self.mmu.memory_counters(), "TLB flushes on VM entry": self.cpu.tlb_flushes}

    # -- exit handlers: the hypervisor ------------------------------------------------------
    def skip(self, exit: Exit) -> Outcome:
        """KVM's skip_emulated_instruction; hooked exits (CPUID, I/O, RDTSC) are completed
        by the engine itself."""
        if not exit.hooked:
            self.cpu.skip_instruction(exit.length)
        return RESUME

    def handle_skip(self, exit: Exit) -> Outcome:
        return self.skip(exit)

    def handle_cpuid(self, exit: Exit) -> Outcome:
        eng = self.vm.engine
        leaf = eng.reg("eax")
        subleaf = eng.reg("ecx") if leaf in SUBLEAF_LEAVES else 0
        eng.set_regs4(CPUID_OUTPUTS, self.cpuid(leaf, subleaf))
        return RESUME

    def cpuid(self, leaf: int, subleaf: int = 0) -> tuple[int, int, int, int]:
        """The CPU model's leaf (:mod:`vmm.cpu.cpuid`): no VMX for the guest (this model
        does not nest), the hypervisor bit and leaf present."""
        return cpu_model.cpuid(leaf, subleaf)

    def handle_hlt(self, exit: Exit) -> Outcome:
        """Past the HLT; an interrupt this VMM holds for the window wakes it at once (the
        HLT's own shadow is over), as KVM's halt returns when an interrupt is injectable."""
        self.skip(exit)
        if (self.queued_irq is not None or self.awaiting_window) and self.vm.engine.reg("eflags") & EFLAGS.IF:
            return self.handle_interrupt_window(exit)
        self.vm.halt()
        return RESUME

    def handle_invlpg(self, exit: Exit) -> Outcome:
        self.mmu.guest_invlpg(exit.qualification)
        return self.skip(exit)

    def handle_rdpmc(self, exit: Exit) -> Outcome:
        self.cpu.write_edx_eax(0)
        return self.skip(exit)

    def handle_rdtsc(self, exit: Exit) -> Outcome:
        offset = self.vmcs.read(Field.TSC_OFFSET) if self.cpu.primary(PrimaryProcBased.USE_TSC_OFFSETTING) else 0
        self.cpu.write_edx_eax((self.vm.guest_tsc() + offset) & U64_MASK)
        return RESUME

    def handle_vmcall(self, exit: Exit) -> Outcome:
        """KVM's hypercall ABI: number in EAX, result in EAX; none defined here yet."""
        self.vm.engine.set_reg("eax", -KVM_ENOSYS & U32_MASK)
        return self.skip(exit)

    def handle_preemption_timer(self, exit: Exit) -> Outcome:
        return RESUME

    def handle_cr_access(self, exit: CrAccessExit) -> Outcome:
        q = CrAccess.decode(exit.qualification)
        eng, v = self.vm.engine, self.vmcs
        gpr = exit.gpr
        if q.access is CrAccessType.MOV_TO_CR:
            value = eng.reg(gpr)
            if q.cr == ControlRegister.CR0:
                value |= CR0.ET  # fixed 1
                old = eng.reg("cr0")
                eng.set_reg("cr0", value)
                v.write(Field.CR0_READ_SHADOW, value)
                if (old ^ value) & PAGING_CR0_BITS:
                    self.mmu.paging_mode_changed()
            elif q.cr == ControlRegister.CR4:
                if cpu_model.cr4_reserved(value):
                    self.inject_exception(GP, 0)
                    return RESUME
                old = eng.reg("cr4")
                eng.set_reg("cr4", value)
                v.write(Field.CR4_READ_SHADOW, value)
                if (old ^ value) & PAGING_CR4_BITS:
                    self.mmu.paging_mode_changed()
            elif q.cr == ControlRegister.CR3:
                eng.set_reg("cr3", value)
                self.mmu.guest_cr3_loaded(value)
        elif q.access is CrAccessType.MOV_FROM_CR:
            eng.set_reg(gpr, eng.reg(f"cr{q.cr}"))
        elif q.access is CrAccessType.CLTS:
            eng.set_reg("cr0", eng.reg("cr0") & ~CR0.TS)
            v.write(Field.CR0_READ_SHADOW, v.read(Field.CR0_READ_SHADOW) & ~CR0.TS)
        return self.skip(exit)

    def handle_dr_access(self, exit: DrAccessExit) -> Outcome:
        eng = self.vm.engine
        dr = debug_register(exit.dr, eng.reg("cr4"))
        if dr is None:
            self.inject_exception(UD)  # DR4/DR5 with CR4.DE set
            return RESUME
        if exit.to_dr:
            eng.set_reg(dr, eng.reg(exit.gpr))
        else:
            eng.set_reg(exit.gpr, eng.reg(dr))
        return self.skip(exit)

    def handle_rdmsr(self, exit: MsrExit) -> Outcome:
        value = self.read_msr(exit.msr)
        if value is None:
            self.inject_exception(GP, 0)
            return RESUME
        self.cpu.write_edx_eax(value)
        return self.skip(exit)

    def handle_wrmsr(self, exit: MsrExit) -> Outcome:
        eng = self.vm.engine
        if not self.write_msr(exit.msr, (eng.reg("edx") << 32) | eng.reg("eax")):
            self.inject_exception(GP, 0)
            return RESUME
        return self.skip(exit)

    def read_msr(self, msr: int) -> int | None:
        """RDMSR as the guest's CPU answers it (:mod:`vmm.cpu.msrs`); None is #GP(0)."""
        return self.msrs.read(msr)

    def write_msr(self, msr: int, value: int) -> bool:
        """WRMSR as the guest's CPU takes it (:mod:`vmm.cpu.msrs`); False is #GP(0)."""
        return self.msrs.write(msr, value)

    def handle_descriptor_table(self, exit: DescriptorTableExit) -> Outcome:
        """Accounted, then executed by the engine itself: leaving EIP at the instruction
        lets it run natively, which is exactly what emulating it would do."""
        return RESUME

    # -- task switches: each one a VM exit, carried out by the hypervisor ------------------------
    def task_switch(self, selector: int, source: TaskSource, length: int) -> None:
        self.cpu.vmexit(TaskSwitchExit(qualification=TaskSwitch(selector, TaskSwitchSource(source)).encode(),
                                       length=length, selector=selector, source=source))

    def task_gate(self, selector: int, event: Event, ext: int) -> None:
        code = pushed_error_code(event)
        self.cpu.vectoring_exit(TaskSwitchExit(
            qualification=TaskSwitch(selector, TaskSwitchSource.TASK_GATE).encode(), selector=selector,
            source=TaskSource.TASK_GATE, error_code=code, ext=ext))

    def raise_fault(self, vector: int, error_code: int, cr2: int | None) -> None:
        self.cpu.hardware_exception(vector, error_code, cr2)

    def handle_task_switch(self, exit: TaskSwitchExit) -> Outcome:
        """KVM's handle_task_switch: the task switch the guest attempted, emulated (a fault
        it raises is injected, in the context of whichever task it belongs to)."""
        eng = self.vm.engine
        try:
            self.tasks.switch(exit.selector, TaskSource(exit.source), (eng.reg("eip") + exit.length) & U32_MASK,
                              error_code=exit.error_code, ext=exit.ext)
        except DeliveryFault as fault:
            if fault.vector == PF:
                self.cpu.inject_cr2 = fault.cr2
            self.inject_exception(fault.vector, fault.error_code if fault.vector in HAS_ERROR_CODE else None)
        return RESUME

    def inject_exception(self, vector: int, error_code: int | None = None) -> None:
        info = InterruptionInfo.exception(vector, error_code is not None)
        if vector == Vector.NMI:
            info = InterruptionInfo(vector, InterruptionType.NMI)   # an NMI exit is reflected as an NMI
        self.vmcs.write(Field.VM_ENTRY_INTR_INFO_FIELD, info.encode())
        self.vmcs.write(Field.VM_ENTRY_EXCEPTION_ERROR_CODE, error_code or 0)

    def handle_exception(self, exit: ExceptionExit | ShadowPageFault) -> Outcome:
        """A shadow page fault is the VMM's own business; anything else is reflected.

        Reflect the exception into the guest; if the exit interrupted the delivery of
        another event (IDT-vectoring information), combine the two as the SDM's
        Table 6-5 does (contributory on contributory, or on #PF, becomes #DF)."""
        if isinstance(exit, ShadowPageFault):
            return self.shadow_page_fault(exit)
        v = self.vmcs
        intr = InterruptionInfo.decode(v.read(Field.VM_EXIT_INTR_INFO))
        vector, error = intr.vector, v.read(Field.VM_EXIT_INTR_ERROR_CODE) if intr.error_code_valid else None
        vectoring = v.read(Field.IDT_VECTORING_INFO_FIELD)
        if vectoring >> 31:
            first = InterruptionInfo.decode(vectoring)
            if first.type in (InterruptionType.HARDWARE_EXCEPTION, InterruptionType.NMI):
                combined = combine_events(first.vector, vector)
                if combined is None:
                    raise TripleFault(self.vm.engine.reg("eip"), ["(reflected)", f"vector {first.vector}",
                                                                 f"vector {vector}"])
                if combined != vector:
                    vector, error = combined, 0
        if vector == PF:
            self.cpu.inject_cr2 = exit.cr2
        if intr.type is InterruptionType.SOFTWARE_EXCEPTION:
            v.write(Field.VM_ENTRY_INTR_INFO_FIELD, InterruptionInfo(vector, intr.type).encode())
            v.write(Field.VM_ENTRY_INSTRUCTION_LEN, exit.length)
        else:
            self.inject_exception(vector, error)
        return RESUME

    def handle_external_interrupt(self, exit: ExternalInterruptExit) -> Outcome:
        """The interrupt is the guest's (its board raised it): inject it now if the guest
        can take it, else ask for an interrupt-window exit. Until then an APIC interrupt
        goes back to the guest's APIC (KVM keeps it in its virtual APIC's IRR), so that the
        window takes the highest one pending then; an 8259A vector is held here."""
        v, board = self.vmcs, self.vm.board
        intr = v.read(Field.VM_EXIT_INTR_INFO)
        vector = InterruptionInfo.decode(intr).vector if intr >> 31 else board.acknowledge_interrupt()
        if self.can_take_interrupt() and self.queued_irq is None:
            v.write(Field.VM_ENTRY_INTR_INFO_FIELD,
                    InterruptionInfo(vector, InterruptionType.EXTERNAL_INTERRUPT).encode())
            return RESUME
        if board.unacknowledge_interrupt(vector):
            self.awaiting_window = True
        else:
            self.queued_irq = vector
        self.cpu.set_primary(PrimaryProcBased.INTERRUPT_WINDOW_EXITING, True)
        return RESUME

    def can_take_interrupt(self) -> bool:
        """Guest RFLAGS.IF set and no blocking by STI or MOV SS (interruptibility state)."""
        blocked = self.vmcs.read(Field.GUEST_INTERRUPTIBILITY_INFO) & (BLOCKING_BY_STI | BLOCKING_BY_MOV_SS)
        return bool(self.vm.engine.reg("eflags") & EFLAGS.IF) and not blocked

    def handle_interrupt_window(self, exit: Exit) -> Outcome:
        self.cpu.set_primary(PrimaryProcBased.INTERRUPT_WINDOW_EXITING, False)
        vector = self.queued_irq
        self.queued_irq = None
        if vector is None and self.awaiting_window and self.vm.board.interrupt_pending():
            vector = self.vm.board.acknowledge_interrupt()
        self.awaiting_window = False
        if vector is not None:
            self.vmcs.write(Field.VM_ENTRY_INTR_INFO_FIELD,
                            InterruptionInfo(vector, InterruptionType.EXTERNAL_INTERRUPT).encode())
        return RESUME
