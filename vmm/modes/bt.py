"""``bt``: binary translation, as VMware's VMM did it before VT-x.

The guest kernel runs at CPL 0 from the translation cache of
:mod:`vmm.modes.translator`: each privileged or sensitive instruction, and each indirect
branch, is a *callout* into the VMM instead of a trap. A callout is cheap compared with
a trap or a VM exit (Adams & Agesen measured ~35 cycles for a translated CR8 write
against thousands for a VM exit); that is BT's advantage, and the indirect branches,
which native code runs for free, are its cost.

What a callout does depends on the instruction. Most are accounted and then executed
as the translation would: the kernel really is at CPL 0 here, so POPF, SGDT, PUSH CS...
give the right answers (BT fixes the sensitive instructions that trap-and-emulate
cannot). The ones that change what the VMM maintains are emulated by the VMM: MOV to
CR3 switches shadow page tables, MOV to CR0/CR4 that changes the paging mode resets
them, INVLPG drops a shadow entry. Memory goes through shadow paging
(:class:`vmm.modes.memory.ShadowMmu`). User code (CPL 3) runs directly: its callout hooks return
at once.
"""
from __future__ import annotations

from capstone.x86 import X86_OP_MEM, X86_OP_REG

from ..cpu.cpuid import CR0_ET, cr4_reserved
from ..cpu.delivery import GP
from ..cpu.engine import ACCESS_FETCH
from ..mmu.paging import PageFault
from ..vmx.exits import RESUME, Callout, Outcome, Reflect
from .hypervisor import Hypervisor
from .memory import PAGING_CR0_BITS, PAGING_CR4_BITS, GuestPaging, ShadowMmu
from .privileged import Emulator, decoder
from .translator import APIC_TPR, Translator, callout_kind, tpr_operand


def callout_name(insn) -> str:
    """How the statistics name a callout: the mnemonic, with the register that matters."""
    m = insn.mnemonic
    if m == "mov":
        names = [insn.reg_name(op.reg) if op.type == X86_OP_REG else "m" for op in insn.operands]
        special = next((n for n in names if n[:2] in ("cr", "dr") or n in ("cs", "ss", "ds", "es", "fs", "gs")), "")
        return f"mov {special}, r" if names[0] == special else f"mov r, {special}"
    if m in ("push", "pop"):
        return f"{m} {insn.op_str}"
    if m in ("call", "jmp") and callout_kind(insn) == "indirect":
        return f"{m} (indirect)"
    if m in ("call", "jmp", "ljmp", "lcall"):
        return f"{m.lstrip('l')} far"
    return m


def _tpr_name(insn) -> str:
    return "mov tpr, r" if insn.operands[0].type == X86_OP_MEM else "mov r, tpr"


class BtMode(Hypervisor):
    name = "bt"

    def __init__(self, vm):
        super().__init__(vm)
        eng = vm.engine
        self.mmu = ShadowMmu(vm, self.pages, GuestPaging(vm, self.pages))
        self.model_task_switching()
        self.translator = Translator(vm.read_code, eng.hook_code_site, eng.remove_hook, self.events)
        self.code_watchers.append(self)
        self._fetch_address: int | None = None
        self.operands = Emulator(self)  # effective addresses of INVLPG operands
        self.exit_table[Callout] = self.callout

    def boot(self, image) -> None:
        if image.real_mode:
            raise ValueError("bt mode translates protected-mode kernels (Multiboot, flat); a boot sector "
                             "starts in real mode")

    # -- the translation cache follows the code pages the CPU fetches -------------------------------
    def tlb_fill(self, vaddr, access):
        if access == ACCESS_FETCH:
            self._fetch_address = vaddr
        return self.mmu.tlb_fill(vaddr, access)

    def fetch(self, linear_page: int, physical_page: int) -> None:
        entry, self._fetch_address = self._fetch_address, None
        self.translator.fetch(linear_page, physical_page, entry)

    def written(self, physical_page: int) -> None:
        self.translator.written(physical_page)

    # -- callouts ----------------------------------------------------------------------------------
    def on_code_site(self, address: int) -> None:
        if self.vm.engine.reg("cs") & 3:
            return  # user code runs directly
        insn = self.translator.decoded.get(address)
        if insn is None:
            insn = next(decoder().disasm(self.vm.read_code(address), address, 1), None)
            if insn is None:
                return
        name = _tpr_name(insn) if tpr_operand(insn) is not None else callout_name(insn)
        self.vm.dispatch(Callout(address=address, name=name, insn=insn))

    def callout(self, exit: Callout) -> Outcome:
        """Account the callout; the few instructions whose effect the VMM maintains (and a
        patched TPR access) are performed here and skipped, the rest then run as they are."""
        insn, eng = exit.insn, self.vm.engine
        if tpr_operand(insn) is not None:
            if self._patched_tpr(insn):
                eng.set_reg("eip", (exit.address + insn.size) & 0xFFFFFFFF)
            return RESUME
        emulate = _EMULATED.get(exit.name)
        if emulate is not None:
            fault = emulate(self, insn)
            if fault is not None:
                return fault
            eng.set_reg("eip", (exit.address + insn.size) & 0xFFFFFFFF)
        return RESUME

    def _write_cr(self, insn) -> Reflect | None:
        eng = self.vm.engine
        cr, gpr = (insn.reg_name(op.reg) for op in insn.operands)
        value = eng.reg(gpr)
        if cr == "cr4" and cr4_reserved(value):
            return Reflect(GP, 0, label="mov cr4, r (reserved bit)")
        if cr == "cr0":
            value |= CR0_ET  # fixed 1
        old = eng.reg(cr)
        eng.set_reg(cr, value)
        if cr == "cr3":
            self.mmu.guest_cr3_loaded(value)
        elif (cr == "cr0" and (old ^ value) & PAGING_CR0_BITS) or (cr == "cr4" and (old ^ value) & PAGING_CR4_BITS):
            self.mmu.paging_mode_changed()
        return None

    def _patched_tpr(self, insn) -> bool:
        """A task-priority access, patched as VMware and VirtualBox patched 32-bit kernels'
        TPR instructions: the VMM performs it on the APIC model directly, no MMIO access.
        False (the instruction runs as it is) if the guest does not map the APIC there."""
        try:
            if self.translate(APIC_TPR, True, False) != APIC_TPR:
                return False
        except PageFault:
            return False
        dst, src = insn.operands
        if dst.type == X86_OP_MEM:
            self.devices.mmio_write(APIC_TPR, dst.size, self.operands.read(insn, src, dst.size), store=False)
        else:
            self.events.add("mmio", f"read {APIC_TPR:#010x}")
            self.operands.set_reg(insn.reg_name(dst.reg), self.vm.board.mmio_bus.read(APIC_TPR, src.size))
        return True

    def _invlpg(self, insn) -> None:
        self.mmu.guest_invlpg(self.operands.address(insn, insn.operands[0]))
        return None

    def _rdmsr(self, insn) -> Reflect | None:
        """RDMSR from the CPU model's table (:mod:`vmm.cpu.msrs`): the engine's own knows
        long-mode MSRs qemu32 lacks, and its APIC_BASE is not the board's local APIC."""
        return None if self.msrs.rdmsr() else Reflect(GP, 0, label="rdmsr (no such MSR)")

    def _wrmsr(self, insn) -> Reflect | None:
        return None if self.msrs.wrmsr() else Reflect(GP, 0, label="wrmsr (no such MSR)")


_EMULATED = {
    "mov cr0, r": BtMode._write_cr, "mov cr3, r": BtMode._write_cr, "mov cr4, r": BtMode._write_cr,
    "invlpg": BtMode._invlpg, "rdmsr": BtMode._rdmsr, "wrmsr": BtMode._wrmsr,
}
