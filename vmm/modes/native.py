"""``native``: the guest kernel at CPL0 with no VMM in the way.

The engine executes privileged instructions itself; the "exits" here are the events a
bare machine would see: exceptions delivered through the guest IDT, port I/O reaching
the board, HLT waiting for an interrupt, and TLB misses walked through the guest's own
page tables (a one-dimensional walk, :class:`~vmm.modes.memory.GuestPaging`). They are
counted so the other modes compare against it. Everything here is the
:class:`~vmm.modes.hypervisor.Hypervisor` defaults: the bare machine.

Two instructions the engine gets wrong are completed here, as part of the CPU rather
than as exits: MOV to CR4 (QEMU 5 stores reserved bits, such as LA57 or UMIP on a CPU
without them, instead of raising #GP) and RDMSR/WRMSR (QEMU 5 implements the long-mode
MSRs, FS_BASE among them, on a 32-bit CPU, and keeps IA32_APIC_BASE away from the
board's local APIC). The engine reports both before it executes them
(:meth:`~vmm.cpu.engine.Engine.intercept_cpu_checks`); they run against the CPU model's
CR4 bits and MSR table (:mod:`vmm.cpu.msrs`), as in every other mode.
"""
from __future__ import annotations

from ..cpu import cpuid as cpu_model
from ..cpu import quirks
from ..cpu.engine import EngineError
from ..x86 import Vector
from .hypervisor import Hypervisor
from .memory import GuestPaging
from .privileged import decoder


class NativeMode(Hypervisor):
    name = "native"

    def __init__(self, vm):
        super().__init__(vm)
        self.mmu = GuestPaging(vm, self.pages)
        self.walker = self.mmu.walker   # the walk references the cost model counts (RunObserver)
        vm.engine.intercept_cpu_checks()
        self.model_task_switching()

    def on_intercept(self, exit_code: int, info: int) -> None:
        """MOV to CR4 (exit code 0x14) or RDMSR/WRMSR (0x7C, ``info`` 1 for WRMSR), with
        EIP at the instruction: carried out, or #GP(0) raised, as the CPU model says."""
        eng = self.vm.engine
        eng.set_interrupt_shadow(False)   # the instruction after an STI ends its shadow
        if exit_code == quirks.SVM_EXIT_TR_WRITE:
            return super().on_intercept(exit_code, info)
        eip = eng.reg("eip")
        insn = next(decoder().disasm(self.vm.read_code(eip), eip, 1))
        if exit_code == quirks.SVM_EXIT_WRITE_CR4:
            value = eng.reg(insn.reg_name(insn.operands[1].reg))
            if cpu_model.cr4_reserved(value):
                return self.reflect(Vector.GP, 0)
            eng.set_reg("cr4", value)
        elif exit_code == quirks.SVM_EXIT_MSR:
            if not (self.msrs.wrmsr() if info else self.msrs.rdmsr()):
                return self.reflect(Vector.GP, 0)
        else:
            raise EngineError(f"internal: unexpected engine intercept {exit_code:#x}")
        eng.set_reg("eip", eip + insn.size)
        return None
