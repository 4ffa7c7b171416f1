"""``vtx``: the guest kernel at CPL0 in VMX non-root operation, a KVM-like hypervisor above.

The processor side (which event exits, with what qualification) is
:class:`vmm.vmx.nonroot.VmxNonRoot`; this module is the hypervisor: the VMCS it sets
up, the one exit table, and a handler per exit reason doing what KVM's
``kvm_vmx_exit_handlers`` would. Guest memory goes through shadow page tables
(:mod:`vmm.mmu.shadow`): #PF, CR3-load and INVLPG exits keep them in step with the
guest's own tables, as KVM did before EPT.

The guest-state area of the VMCS is *live* while the guest runs: its register fields
read and write the engine directly (KVM caches them in ``vcpu->arch.regs`` likewise),
so an exit costs no copying. At launch the VMCS is the source: the VM-entry checks read
it and the engine is loaded from it.
"""
from __future__ import annotations

import struct

from ..cpu.cpuid import host_cpuid
from ..cpu.delivery import GP, PF, UD, Descriptor, combine_events
from ..cpu.engine import PROT_EXEC, PROT_READ, PROT_WRITE, Fault, Fill
from ..mmu.hostmem import HostPages
from ..mmu.paging import CR0_PG, PageFault
from ..mmu.shadow import ShadowPaging
from ..cpu.regs import CR0_TS, IF, debug_register
from ..vmx import entry
from ..vmx.controls import (ENTRY_DEFAULT1, EXIT_DEFAULT1, PINBASED_DEFAULT1, PROCBASED_DEFAULT1,
                            ExitControls, PinBased, PrimaryProcBased, SecondaryProcBased, capability_msrs)
from ..vmx.exit_reasons import ExitReason
from ..vmx.exits import (RESUME, CrAccessExit, DescriptorTableExit, DrAccessExit, ExceptionExit, Exit,
                         ExternalInterruptExit, MsrExit, Outcome, ShadowPageFault, Value)
from ..vmx.nonroot import KVM_ENOSYS, VmxNonRoot, exits_for_exception
from ..vmx.qualification import CrAccess, CrAccessType, InterruptionInfo, InterruptionType
from ..vmx.vmcs import Field, Vmcs
from .native import NativeMode
from .shadowed import ShadowMmu, shadow_counters
from .sites import CodeSites

PAGE_MASK = 0xFFFFF000
PAGING_CR0_BITS = (1 << 31) | (1 << 16) | 1   # PG, WP, PE: the shadow is rebuilt when they change
PAGING_CR4_BITS = (1 << 4) | (1 << 5) | (1 << 7)  # PSE, PAE, PGE
CPUID_OUTPUTS = ("eax", "ebx", "ecx", "edx")
_ACTIVATE_SECONDARY = PrimaryProcBased.ACTIVATE_SECONDARY_CONTROLS._value_
_ENABLE_VPID = SecondaryProcBased.ENABLE_VPID._value_
HYPERVISOR_SIGNATURE = b"VMMLabPython"   # CPUID 0x4000_0000 EBX, ECX, EDX
HYPERVISOR_MAX_LEAF = 0x40000001
SUBLEAF_LEAVES = frozenset({4, 7, 0xB, 0xD, 0xF, 0x10, 0x12, 0x14, 0x17, 0x18})  # ECX selects a subleaf

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

# The exceptions KVM intercepts with shadow paging: #PF (shadow faults), #UD (emulation),
# #AC (split-lock detection) and #MC.
DEFAULT_EXCEPTION_BITMAP = (1 << PF) | (1 << 6) | (1 << 17) | (1 << 18)
# CR0/CR4 bits the hypervisor owns (KVM without EPT: paging-related bits and caching).
DEFAULT_CR0_MASK = (1 << 31) | (1 << 16) | (1 << 30) | (1 << 29) | (1 << 5)  # PG WP CD NW NE
DEFAULT_CR4_MASK = (1 << 4) | (1 << 5) | (1 << 7) | (1 << 13)               # PSE PAE PGE VMXE

# MSRs the hypervisor models (KVM's emulated set, trimmed to a 32-bit guest).
IA32_TSC, IA32_APIC_BASE, IA32_FEATURE_CONTROL = 0x10, 0x1B, 0x3A
IA32_SYSENTER_CS, IA32_SYSENTER_ESP, IA32_SYSENTER_EIP = 0x174, 0x175, 0x176
IA32_MISC_ENABLE, IA32_PAT, IA32_MTRRCAP, IA32_EFER = 0x1A0, 0x277, 0xFE, 0xC0000080
PASSTHROUGH_MSRS = (IA32_SYSENTER_CS, IA32_SYSENTER_ESP, IA32_SYSENTER_EIP, IA32_EFER)


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
            table = LIVE_TABLES.get(encoding)
            if table:
                return self.engine.table(table[0])[table[1]]
        return super().read(encoding)

    def write(self, encoding, value):
        if self.live and encoding in LIVE_REGISTERS:
            self.engine.set_reg(LIVE_REGISTERS[encoding], value)
            return
        super().write(encoding, value)

    def capture(self) -> None:
        """Copy the live guest state into the store (on stop, for dumps)."""
        for field in (*LIVE_REGISTERS, *LIVE_SELECTORS, *LIVE_TABLES):
            value = self.read(field)
            self.live = False
            self._store(field, False, value)
            self.live = True


class VtxMode(VmxNonRoot, ShadowMmu, NativeMode):
    name = "vtx"

    def __init__(self, vm):
        NativeMode.__init__(self, vm)
        self.vmcs = LiveVmcs(vm.engine)
        self.sites = CodeSites(vm.engine, vm.read_code)
        self.code_watchers.append(self.sites)
        self.io_bitmaps = (bytearray(0x1000), bytearray(0x1000))
        self.msr_bitmap = bytearray(0x1000)
        self._io_decode: dict[int, tuple[int, bool, bool]] = {}
        self._vectoring = None
        self._delivering = None
        self._inject_cr2 = None
        self._timer_start = 0
        self.injected = 0
        self.queued_irq: int | None = None
        self.msrs: dict[int, int] = {IA32_PAT: 0x0007040600070406, IA32_MISC_ENABLE: 1}
        self.delivery.intercept = self.intercept_nested_fault
        host_cpuid()  # read once now, not inside the first CPUID exit
        self.host_pages = HostPages(vm.host_alloc, vm.engine.read_phys, vm.engine.write_phys, vm.engine.read_u64)
        self.shadow = ShadowPaging(self.host_pages, flush_tlb=self.request_flush)
        self.tlb_flushes = 0
        self._set_up_vmcs()
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
        }

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
        v.write(Field.VIRTUAL_PROCESSOR_ID, 1)  # VPID on, as KVM enables it: no TLB flush per entry
        v.write(Field.EXCEPTION_BITMAP, DEFAULT_EXCEPTION_BITMAP)
        v.write(Field.CR0_GUEST_HOST_MASK, DEFAULT_CR0_MASK)
        v.write(Field.CR4_GUEST_HOST_MASK, DEFAULT_CR4_MASK)
        v.write(Field.VMCS_LINK_POINTER, 0xFFFFFFFFFFFFFFFF)
        # Bitmaps live in host memory outside the guest; the VMM keeps a copy it reads.
        for field, bitmap in ((Field.IO_BITMAP_A, self.io_bitmaps[0]), (Field.IO_BITMAP_B, self.io_bitmaps[1]),
                              (Field.MSR_BITMAP, self.msr_bitmap)):
            v.write(field, self.vm.host_alloc(0x1000))
        self.msr_bitmap[:] = b"\xff" * 0x1000  # every RDMSR/WRMSR exits until the VMM says otherwise
        self._sync_bitmap(Field.MSR_BITMAP, self.msr_bitmap)

    def set_io_intercept(self, port: int, on: bool = True) -> None:
        bitmap = self.io_bitmaps[0 if port < 0x8000 else 1]
        bit = port & 0x7FFF
        bitmap[bit >> 3] = bitmap[bit >> 3] | (1 << (bit & 7)) if on else bitmap[bit >> 3] & ~(1 << (bit & 7))
        self._sync_bitmap(Field.IO_BITMAP_A if port < 0x8000 else Field.IO_BITMAP_B, bitmap)

    def set_msr_intercept(self, msr: int, *, read: bool, write: bool) -> None:
        if msr <= 0x1FFF:
            bases = (0, 0x800)
        elif 0xC0000000 <= msr <= 0xC0001FFF:
            bases = (0x400, 0xC00)
        else:
            return  # outside both ranges every RDMSR/WRMSR exits
        index = msr & 0x1FFF
        for base, on in zip(bases, (read, write)):
            byte = base + (index >> 3)
            self.msr_bitmap[byte] = (self.msr_bitmap[byte] | (1 << (index & 7)) if on
                                     else self.msr_bitmap[byte] & ~(1 << (index & 7)))
        self._sync_bitmap(Field.MSR_BITMAP, self.msr_bitmap)

    def _sync_bitmap(self, field: Field, bitmap: bytearray) -> None:
        self.vm.engine.write_phys(self.vmcs.read(field), bytes(bitmap))

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
        if eng.reg("cr0") & CR0_PG:
            self.shadow.activate(eng.reg("cr3"))
        v.live = True
        v.launched = True
        self.vm_entry()
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

    # -- memory: shadow paging ----------------------------------------------------------------
    def tlb_fill(self, vaddr: int, access: str) -> Fill | Fault:
        """A TLB miss walks the shadow tables; a miss there is a #PF VM exit, handled
        synchronously (the hidden fault costs an exit but no stop of the engine)."""
        self.tlb_fills += 1
        eng = self.vm.engine
        page = vaddr & PAGE_MASK
        if not eng.reg("cr0") & CR0_PG:  # guest paging off: the VMM's identity map
            return self.fill(page, page, PROT_READ | PROT_WRITE | PROT_EXEC, access)
        if self.shadow.root is None:
            self.shadow.activate(eng.reg("cr3"))
        write, user = access == "write", self._user_access(vaddr)
        hit = self.shadow.lookup(vaddr, write, user)
        if hit is not None:
            host_page, writable = hit
            return self.fill(page, host_page, PROT_READ | PROT_EXEC | (PROT_WRITE if writable else 0), access)
        if not eng.running or eng.vmm_access:
            # The VMM's own access (a segment load while it delivers an event reads the
            # GDT through the MMU): fill the shadow from the guest's tables as KVM's
            # software walk would; there is no guest instruction to fault.
            try:
                t = self.walk(vaddr, write, user)
            except PageFault as pf:
                self.shadow.counters.true_faults += 1
                return Fault(PF, pf.error_code, vaddr, access)
            return self._shadow_fill(vaddr, write, access, t)
        error = self.shadow.fault_error_code(vaddr, write, user)
        if not exits_for_exception(self.vmcs, PF, error):
            # A hypervisor that lets this #PF through under shadow paging: the guest sees its
            # own faults; a miss its tables would satisfy (a hidden fault) can never be
            # filled, so the VM stops with why (KVM forces the #PF intercept without EPT).
            try:
                self.walk(vaddr, write, user, set_ad=False)
            except PageFault as pf:
                return Fault(PF, pf.error_code, vaddr, access)
            self.vm.stop_guest(f"shadow paging needs #PF exits: EXCEPTION_BITMAP and PAGE_FAULT_ERROR_CODE_"
                               f"MASK/MATCH let a hidden fault (error code {error:#x}) at {vaddr:#010x} "
                               f"through to the guest, and the shadow tables cannot be filled")
        return self.vmexit(ShadowPageFault(qualification=vaddr, linear=vaddr, vector=PF, error_code=error,
                                           access=access, write=write, user=user),
                           intr_info=InterruptionInfo.exception(PF, True), intr_error=error, defer_entry=True)

    def shadow_page_fault(self, exit: ShadowPageFault) -> Outcome:
        """KVM's FNAME(page_fault): walk the guest's tables; fill the shadow (hidden
        fault) or reflect the guest's own #PF (true fault)."""
        vaddr = exit.linear
        try:
            t = self.walk(vaddr, exit.write, exit.user)
        except PageFault as pf:
            self.shadow.counters.true_faults += 1
            self.inject_exception(PF, pf.error_code)
            self._inject_cr2 = vaddr
            return Value(Fault(PF, pf.error_code, vaddr, exit.access, exited=True))
        return Value(self._shadow_fill(vaddr, exit.write, exit.access, t))

    def _shadow_fill(self, vaddr: int, write: bool, access: str, t) -> Fill:
        """Install the shadow entry for a successful guest walk and answer the fill."""
        target = t.physical & PAGE_MASK
        if write and self.shadow.is_protected(target):
            self.shadow.guest_table_written(target)
        host_page, writable = self.shadow.sync(vaddr, write, t)
        perms = PROT_READ | PROT_EXEC | (PROT_WRITE if writable else 0)
        return self.fill(vaddr & PAGE_MASK, host_page, perms, access)

    def on_fault(self, fault) -> None:
        if fault.exited:  # the #PF exit already ran; this is its VM entry, injecting it
            self._inject_cr2 = fault.address
            self.vm_entry()
            return
        super().on_fault(fault)

    def request_flush(self) -> None:
        """Flush Unicorn's TLB now. Safe inside the TLB-fill hook (QEMU's own MOV CR3
        helper flushes in the middle of a translation block); stopping emulation there
        instead would abort and restart the faulting instruction."""
        self.vm.engine.flush_tlb()

    def flush_on_entry(self, deferred: bool) -> None:
        """Without VPID every VM entry starts with an empty TLB (SDM §28.3.3.1)."""
        v = self.vmcs._values  # every entry passes here: plain dict reads
        if (v.get(Field.CPU_BASED_VM_EXEC_CONTROL, 0) & _ACTIVATE_SECONDARY
                and v.get(Field.SECONDARY_VM_EXEC_CONTROL, 0) & _ENABLE_VPID
                and v.get(Field.VIRTUAL_PROCESSOR_ID, 0)):
            return
        self.tlb_flushes += 1
        if deferred:
            self.request_flush()
        else:
            self.vm.engine.flush_tlb()

    def memory_counters(self) -> dict[str, int]:
        return {**shadow_counters(self.shadow, "injected"), "TLB flushes on VM entry": self.tlb_flushes}

    # -- exit handlers: the hypervisor ------------------------------------------------------
    def skip(self, exit: Exit) -> Outcome:
        """KVM's skip_emulated_instruction; hooked exits (CPUID, I/O, RDTSC) are completed
        by the engine itself."""
        if not exit.hooked:
            self.skip_instruction(exit.length)
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
        if leaf == 0x40000000:
            ebx, ecx, edx = struct.unpack("<III", HYPERVISOR_SIGNATURE)
            return HYPERVISOR_MAX_LEAF, ebx, ecx, edx
        if leaf == 0x40000001:
            return 0, 0, 0, 0
        host = host_cpuid()
        basic_max = host[0][0]
        if leaf in host:
            eax, ebx, ecx, edx = host[leaf]
        elif leaf < 0x80000000 and leaf > basic_max:
            eax, ebx, ecx, edx = host[basic_max]  # as Intel: the highest basic leaf
        else:
            eax = ebx = ecx = edx = 0
        if leaf == 1:
            ecx |= 1 << 31       # hypervisor present
            ecx &= ~(1 << 5)     # no VMX for the guest: this model does not nest
        return eax, ebx, ecx, edx

    def handle_hlt(self, exit: Exit) -> Outcome:
        self.skip(exit)
        self.vm.halt()
        return RESUME

    def handle_invlpg(self, exit: Exit) -> Outcome:
        self.shadow.invalidate(exit.qualification)
        self.vm.engine.flush_tlb()
        return self.skip(exit)

    def handle_rdpmc(self, exit: Exit) -> Outcome:
        self.write_edx_eax(0)
        return self.skip(exit)

    def handle_rdtsc(self, exit: Exit) -> Outcome:
        offset = self.vmcs.read(Field.TSC_OFFSET) if self.primary(PrimaryProcBased.USE_TSC_OFFSETTING) else 0
        self.write_edx_eax((self.vm.guest_tsc() + offset) & 0xFFFFFFFFFFFFFFFF)
        return RESUME

    def handle_vmcall(self, exit: Exit) -> Outcome:
        """KVM's hypercall ABI: number in EAX, result in EAX; none defined here yet."""
        self.vm.engine.set_reg("eax", -KVM_ENOSYS & 0xFFFFFFFF)
        return self.skip(exit)

    def handle_preemption_timer(self, exit: Exit) -> Outcome:
        return RESUME

    def handle_cr_access(self, exit: CrAccessExit) -> Outcome:
        q = CrAccess.decode(exit.qualification)
        eng, v = self.vm.engine, self.vmcs
        gpr = exit.gpr
        if q.access is CrAccessType.MOV_TO_CR:
            value = eng.reg(gpr)
            if q.cr == 0:
                old = eng.reg("cr0")
                eng.set_reg("cr0", value)
                v.write(Field.CR0_READ_SHADOW, value)
                if (old ^ value) & PAGING_CR0_BITS:
                    self.paging_mode_changed()
            elif q.cr == 4:
                old = eng.reg("cr4")
                eng.set_reg("cr4", value)
                v.write(Field.CR4_READ_SHADOW, value)
                if (old ^ value) & PAGING_CR4_BITS:
                    self.paging_mode_changed()
            elif q.cr == 3:
                eng.set_reg("cr3", value)
                self.guest_cr3_loaded(value)
        elif q.access is CrAccessType.MOV_FROM_CR:
            eng.set_reg(gpr, eng.reg(f"cr{q.cr}"))
        elif q.access is CrAccessType.CLTS:
            eng.set_reg("cr0", eng.reg("cr0") & ~CR0_TS)
            v.write(Field.CR0_READ_SHADOW, v.read(Field.CR0_READ_SHADOW) & ~CR0_TS)
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
        self.write_edx_eax(value)
        return self.skip(exit)

    def handle_wrmsr(self, exit: MsrExit) -> Outcome:
        eng = self.vm.engine
        if not self.write_msr(exit.msr, (eng.reg("edx") << 32) | eng.reg("eax")):
            self.inject_exception(GP, 0)
            return RESUME
        return self.skip(exit)

    def read_msr(self, msr: int) -> int | None:
        if msr in PASSTHROUGH_MSRS:
            return self.vm.engine.msr(msr)
        if msr == IA32_APIC_BASE:
            return self.vm.board.lapic.read_apic_base()
        if msr == IA32_TSC:
            return self.vm.guest_tsc()
        if msr == IA32_FEATURE_CONTROL:
            return 1  # locked, VMX off: the guest cannot enable VMX
        if msr == IA32_MTRRCAP:
            return 0
        if msr in capability_msrs():
            return None  # no nested VMX
        return self.msrs.get(msr)

    def write_msr(self, msr: int, value: int) -> bool:
        if msr in PASSTHROUGH_MSRS:
            self.vm.engine.set_msr(msr, value)
        elif msr == IA32_APIC_BASE:
            self.vm.board.lapic.write_apic_base(value)
        elif msr in self.msrs:
            self.msrs[msr] = value
        else:
            return False
        return True

    def handle_descriptor_table(self, exit: DescriptorTableExit) -> Outcome:
        """Accounted, then executed by the engine itself: leaving EIP at the instruction
        lets it run natively, which is exactly what emulating it would do."""
        return RESUME

    def inject_exception(self, vector: int, error_code: int | None = None) -> None:
        info = InterruptionInfo.exception(vector, error_code is not None)
        self.vmcs.write(Field.VM_ENTRY_INTR_INFO_FIELD, info.encode())
        self.vmcs.write(Field.VM_ENTRY_EXCEPTION_ERROR_CODE, error_code or 0)

    def handle_exception(self, exit: ExceptionExit | ShadowPageFault) -> Outcome:
        """A shadow page fault is the VMM's own business; anything else is reflected.

        Reflect the exception into the guest; if the exit interrupted the delivery of
        another event (IDT-vectoring information), combine the two as the SDM's
        Table 6-5 does (contributory on contributory, or on #PF, becomes #DF)."""
        if type(exit) is ShadowPageFault:
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
                    from ..cpu.delivery import TripleFault
                    raise TripleFault(self.vm.engine.reg("eip"), ["(reflected)", f"vector {first.vector}",
                                                                 f"vector {vector}"])
                if combined != vector:
                    vector, error = combined, 0
        if vector == PF:
            self._inject_cr2 = exit.cr2
        if intr.type is InterruptionType.SOFTWARE_EXCEPTION:
            v.write(Field.VM_ENTRY_INTR_INFO_FIELD, InterruptionInfo(vector, intr.type).encode())
            v.write(Field.VM_ENTRY_INSTRUCTION_LEN, exit.length)
        else:
            self.inject_exception(vector, error)
        return RESUME

    def handle_external_interrupt(self, exit: ExternalInterruptExit) -> Outcome:
        """The interrupt is the guest's (its board raised it): inject it now if the guest
        can take it, else ask for an interrupt-window exit."""
        v = self.vmcs
        intr = v.read(Field.VM_EXIT_INTR_INFO)
        vector = InterruptionInfo.decode(intr).vector if intr >> 31 else self.vm.board.acknowledge_interrupt()
        if self.vm.engine.reg("eflags") & IF and self.queued_irq is None:
            v.write(Field.VM_ENTRY_INTR_INFO_FIELD,
                    InterruptionInfo(vector, InterruptionType.EXTERNAL_INTERRUPT).encode())
        else:
            self.queued_irq = vector
            self.set_primary(PrimaryProcBased.INTERRUPT_WINDOW_EXITING, True)
        return RESUME

    def handle_interrupt_window(self, exit: Exit) -> Outcome:
        self.set_primary(PrimaryProcBased.INTERRUPT_WINDOW_EXITING, False)
        if self.queued_irq is not None:
            self.vmcs.write(Field.VM_ENTRY_INTR_INFO_FIELD,
                            InterruptionInfo(self.queued_irq, InterruptionType.EXTERNAL_INTERRUPT).encode())
            self.queued_irq = None
        return RESUME
