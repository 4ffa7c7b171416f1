"""``native``: the guest kernel at CPL0 with no VMM in the way.

The engine executes privileged instructions itself; the "exits" here are the events a
bare machine would see: exceptions delivered through the guest IDT, port I/O reaching
the board, HLT waiting for an interrupt, and TLB misses walked through the guest's own
page tables (a one-dimensional walk, :class:`~vmm.modes.memory.GuestPaging`). They are
counted so the other modes compare against it. Everything here is the
:class:`~vmm.modes.hypervisor.Hypervisor` defaults: the bare machine.
"""
from __future__ import annotations

from .hypervisor import Hypervisor
from .memory import GuestPaging


class NativeMode(Hypervisor):
    name = "native"

    def __init__(self, vm):
        super().__init__(vm)
        self.mmu = GuestPaging(vm, self.pages)
        self.walker = self.mmu.walker   # the walk references the cost model counts (RunObserver)
