"""``trap``: trap-and-emulate with ring deprivileging, and where x86 breaks it.

The guest kernel runs unmodified in ring 1. The VMM owns what the CPU uses: a shadow
GDT (the guest's descriptors with DPL 0 turned into DPL 1, plus the VMM's own), its own
IDT and TSS, and shadow page tables (:class:`vmm.modes.memory.ShadowMmu`). The guest's CPU state
that ring 1 may not touch is virtual: IF, CR0, GDTR, IDTR, TR, LDTR.

Every privileged instruction of the kernel (CLI, STI, HLT, LGDT, LIDT, LTR, LLDT, MOV
CR/DR, INVLPG, RDMSR/WRMSR, IN/OUT, CLTS, LMSW, WBINVD...) raises #GP at CPL 1; the VMM
decodes it and applies it to the virtual state (:mod:`vmm.modes.privileged`), which is
Popek and Goldberg's construction. The VMM also fixes up the two places where ring 1
itself faults on what ring 0 may do: ``mov ss`` with an RPL-0 selector, and a far RET or
IRET to RPL 0 (the frames the VMM builds name the guest's virtual CS, RPL 0, so that the
guest's handlers see what bare hardware would push, and its IRET traps and restores
the virtual IF).

What it cannot fix is the point of the mode: the sensitive instructions that do not
trap (Robin & Irvine). PUSHF shows the real IF (always 1: the VMM keeps interrupts on),
POPF silently keeps it, SGDT/SIDT/STR show the VMM's tables, SMSW the real CR0, and CS
and SS read RPL 1. The ``popek`` guest lists them; the other guests print their
selectors where a ring-1 kernel shows through (``guests/*.trap.expected``).

The top 256 KiB of the linear address space are the VMM's (shadow GDT, IDT, TSS, the
IRET trampoline), read-only to the guest, as the top of Xen's 32-bit address space is.
"""
from __future__ import annotations

import struct
import time

from ..cpu.delivery import GP, PF, Descriptor, EventDelivery
from ..cpu.engine import ACCESS_WRITE, PROT_READ, Fault, Fill, GuestMemoryError
from ..cpu.tasks import TaskSwitcher
from ..mmu.paging import PageFault
from ..vmx.exits import DECLINE, Outcome, TrappedInstruction
from ..x86 import CR0, EFLAGS, PAGE_MASK, PAGE_OFFSET_MASK, PAGE_SIZE, PFError
from ..x86.segments import USER_RING
from .hypervisor import Hypervisor
from .memory import PAGING_CR0_BITS, GuestPaging, ShadowMmu
from .privileged import Emulator

VMM_LINEAR = 0xFFFC0000       # the VMM's part of every address space (up to the trampoline)
VMM_END = 0xFFFE0000
SHADOW_GDT = VMM_LINEAR       # 64 KiB: any guest GDT fits, and the VMM's own slots
VMM_IDT = VMM_LINEAR + 0x10000
VMM_TSS = VMM_LINEAR + 0x11000
VMM_AREA_SIZE = 0x12000
VMM_CS, VMM_SS, VMM_TSS_SEL = 0xFFE8, 0xFFF0, 0xFFF8
IOPL = EFLAGS.IOPL
IF = EFLAGS.IF
CR0_NE = CR0.NE   # the VMM runs with native FPU error reporting: SMSW shows it


def _descriptor(base: int, limit: int, access: int, flags: int) -> int:
    lo = (limit & 0xFFFF) | ((base & 0xFFFF) << 16)
    hi = ((base >> 16) & 0xFF) | (access << 8) | (((limit >> 16) & 0xF) << 16) | (flags << 20) | (base & 0xFF000000)
    return lo | (hi << 32)


def compress(descriptor: int) -> int:
    """A guest descriptor as the shadow GDT holds it: code and data segments of DPL 0
    become DPL 1 (ring compression); every segment is marked accessed, so the CPU never
    writes the read-only shadow."""
    hi = descriptor >> 32
    if hi & (1 << 12):  # S = 1: code or data
        if (hi >> 13) & 3 == 0:
            hi |= 1 << 13
        hi |= 1 << 8  # accessed
    return (descriptor & 0xFFFFFFFF) | (hi << 32)


class TrapDelivery(EventDelivery):
    """Event delivery in the guest's virtual terms: its own IDT, GDT and TSS, CPL 0 for
    its ring-1 kernel, the virtual IF and RPL-0 selectors in the frame."""

    def __init__(self, mode: TrapMode):
        eng = mode.vm.engine
        super().__init__(eng, lambda linear, write: mode.translate(linear, write, user=False),
                         lambda cr2: eng.set_reg("cr2", cr2))
        self.mode = mode

    def table(self, name):
        return self.mode.virtual_tables[name]

    def cpl(self):
        return self.mode.virtual_cpl()

    def saved_state(self):
        m, eng = self.mode, self.engine
        return m.virtual_eflags(), m.virtual_selector(eng.reg("cs")), m.virtual_selector(eng.reg("ss"))

    def enter(self, *, cpl, new_cpl, cs, ss, esp, eflags, eip):
        m = self.mode
        if new_cpl == 0:
            m.vif = bool(eflags & IF)
        real = (eflags & ~IOPL) | IF
        if new_cpl != cpl:
            m.enter_ring(eip=eip, cs=m.real_selector(cs), eflags=real, esp=esp, ss=m.real_selector(ss))
            return
        eng = self.engine
        eng.set_reg("cs", m.real_selector(cs))
        eng.set_reg("esp", esp)
        eng.set_reg("eflags", real)
        eng.set_reg("eip", eip)


class TrapMode(Hypervisor):
    name = "trap"

    def __init__(self, vm):
        super().__init__(vm)
        self.vcr0 = 0
        self.mmu = ShadowMmu(vm, self.pages, GuestPaging(vm, self.pages, guest_cr0=lambda: self.vcr0))
        self.vmm_area = vm.host_alloc(VMM_AREA_SIZE)
        self.vif = False
        self.virtual_tables = {"gdtr": (0, 0, 0), "idtr": (0, 0, 0), "tr": (0, 0, 0), "ldtr": (0, 0, 0)}
        self.delivery = TrapDelivery(self)
        self.tasks = TaskSwitcher(self.delivery, self.load_cr3)   # its I/O bitmap is the guest's TSS's
        self.check_io_permission()
        self.emulator = Emulator(self)
        self.gdt_frames: set[int] = set()
        self.gdt_dirty = False                     # the guest wrote its GDT: rebuild at the next trap
        self._restore_limit: int | None = None     # GDTR limit to restore after a deferred ring entry
        self.code_watchers.append(self)  # guest GDT pages are traced through the same policy
        self.exit_table[TrappedInstruction] = self.emulate

    # -- boot: the Multiboot state, moved to ring 1 ------------------------------------------
    def boot(self, image) -> None:
        eng = self.vm.engine
        if image.real_mode:
            raise ValueError("trap mode runs protected-mode guests (Multiboot, flat); a boot sector "
                             "starts in real mode, which has no rings to deprivilege")
        self.vcr0 = eng.reg("cr0")
        eng.set_reg("cr0", self.vcr0 | CR0_NE)
        self.vif = bool(eng.reg("eflags") & IF)
        _, base, limit = eng.table("gdtr")
        self.load_gdt(base, limit)
        self.virtual_tables["idtr"] = (0, *eng.table("idtr")[1:])
        self._write_vmm(VMM_TSS - VMM_LINEAR, struct.pack("<26I", *([0] * 25 + [104 << 16])))
        eng.set_table("idtr", VMM_IDT, 0x7FF)
        eng.set_table("tr", VMM_TSS, 103, VMM_TSS_SEL, 0x8B00)
        segs = {s: eng.reg(s) for s in ("ds", "es", "fs", "gs")}
        self.enter_ring(eip=eng.reg("eip"), cs=self.real_selector(eng.reg("cs")), eflags=eng.reg("eflags") | IF,
                        esp=eng.reg("esp"), ss=self.real_selector(eng.reg("ss")))
        for seg, value in segs.items():
            eng.set_reg(seg, value)

    def enter_ring(self, **frame) -> None:
        """Enter the guest's ring through the engine's IRET trampoline. The VMM's ring-0
        descriptors lie beyond the guest's GDT limit: the limit covers them for the
        trampoline's IRET only, and is the guest's again when the guest runs."""
        eng = self.vm.engine
        limit = self.virtual_tables["gdtr"][2]
        eng.set_table("gdtr", SHADOW_GDT, 0xFFFF)
        eng.iret_soon(vmm_cs=VMM_CS, vmm_ss=VMM_SS, **frame)
        if not eng.running:
            eng.set_table("gdtr", SHADOW_GDT, limit)
        else:
            self._restore_limit = limit

    # -- the virtual CPU ---------------------------------------------------------------------
    def real_cpl(self) -> int:
        return self.vm.engine.reg("cs") & 3

    def virtual_cpl(self) -> int:
        cpl = self.real_cpl()
        return 0 if cpl == 1 else cpl

    @staticmethod
    def virtual_selector(selector: int) -> int:
        return selector & ~3 if selector & 3 == 1 else selector

    @staticmethod
    def real_selector(selector: int) -> int:
        return selector | 1 if selector & 3 == 0 and selector & ~3 else selector

    def virtual_eflags(self) -> int:
        real = self.vm.engine.reg("eflags") & ~IOPL
        return (real & ~IF) | (IF if self.virtual_if() else 0)

    def virtual_if(self) -> bool:
        """The virtual IF in the kernel; user code cannot change IF, and the VMM assumes
        its kernel returned to user mode with interrupts on (an IRET to ring 3 does not
        trap, so the VMM cannot see the IF it restores)."""
        return self.vif if self.real_cpl() != USER_RING else True

    def interrupts_enabled(self) -> bool:
        """The virtual IF, outside an STI or MOV SS shadow."""
        return self.virtual_if() and not self.vm.engine.interrupt_shadow()

    def guest_cr0(self) -> int:
        return self.vcr0

    def set_cr0(self, value: int) -> None:
        value |= CR0.ET  # fixed 1
        if self.vcr0 & CR0.PE and not value & CR0.PE:
            # A deprivileged kernel cannot be given real mode back: there is no ring 1 in it,
            # and the engine would run it at real mode's privilege, with the VMM's tables.
            self.vm.stop_guest("trap mode cannot run real mode: the guest cleared CR0.PE; "
                               "native, bt and vtx-ept run it")
        old, self.vcr0 = self.vcr0, value
        self.vm.engine.set_reg("cr0", value | CR0_NE)
        if (old ^ value) & PAGING_CR0_BITS:
            self.mmu.paging_mode_changed()

    # the paging-state changes the emulator applies (the shadow follows them)
    def guest_cr3_loaded(self, value: int) -> None:
        self.mmu.guest_cr3_loaded(value)

    def paging_mode_changed(self) -> None:
        self.mmu.paging_mode_changed()

    def guest_invlpg(self, linear: int) -> None:
        self.mmu.guest_invlpg(linear)

    # -- descriptor tables -----------------------------------------------------------------------
    def load_gdt(self, base: int, limit: int) -> None:
        """LGDT: remember the guest's table, build the shadow from it, load the shadow."""
        self.virtual_tables["gdtr"] = (0, base, limit)
        self.rebuild_gdt()
        self.vm.engine.set_table("gdtr", SHADOW_GDT, limit)

    def rebuild_gdt(self) -> None:
        _, base, limit = self.virtual_tables["gdtr"]
        size = min(limit + 1, 0x10000)
        raw = bytearray()
        while len(raw) < size:  # page by page: an unmapped part reads as not-present descriptors
            chunk = min(size - len(raw), PAGE_SIZE - ((base + len(raw)) & PAGE_OFFSET_MASK))
            try:
                raw += self.read_guest((base + len(raw)) & 0xFFFFFFFF, chunk)
            except (PageFault, GuestMemoryError):
                raw += bytes(chunk)
        raw += bytes(-len(raw) % 8)
        for i in range(0, len(raw), 8):
            struct.pack_into("<Q", raw, i, compress(struct.unpack_from("<Q", raw, i)[0]))
        self._write_vmm(0, bytes(raw))
        vmm = struct.pack("<QQ", _descriptor(0, 0xFFFFF, 0x9B, 0xC), _descriptor(0, 0xFFFFF, 0x93, 0xC))
        self._write_vmm(VMM_CS, vmm)
        frames = set()
        for offset in range(0, size, PAGE_SIZE):
            try:
                frames.add(self.translate((base + offset) & 0xFFFFFFFF, False, False, set_ad=False) & PAGE_MASK)
            except (PageFault, GuestMemoryError):
                pass
        # The guest's GDT pages are mapped read-only (the code-page policy of CodePages.fill)
        # so that a store to one reaches the VMM, which rebuilds the shadow at its next trap.
        self.gdt_frames = frames
        self.pages.frames |= frames
        self.vm.engine.flush_tlb()

    def read_guest(self, linear: int, size: int) -> bytes:
        return self.vm.read_linear(linear, size)

    def guest_descriptor(self, selector: int) -> Descriptor | None:
        _, base, limit = self.virtual_tables["ldtr" if selector & 4 else "gdtr"]
        index = selector & 0xFFF8
        if index + 7 > limit:
            return None
        lo, hi = struct.unpack("<II", self.read_guest(base + index, 8))
        return Descriptor.parse(lo, hi)

    def write_guest_linear(self, linear: int, data: bytes) -> None:
        self.vm.write_linear(linear, data)


    def _write_vmm(self, offset: int, data: bytes) -> None:
        self.vm.engine.write_phys(self.vmm_area + offset, data)

    # -- code watchers interface: writes to the guest's GDT ----------------------------------------
    def fetch(self, linear_page: int, page: int) -> None:
        pass

    def written(self, page: int) -> None:
        if page in self.gdt_frames:
            self.gdt_dirty = True

    # -- memory ----------------------------------------------------------------------------------
    def tlb_fill(self, vaddr: int, access: str) -> Fill | Fault:
        if VMM_LINEAR <= vaddr < VMM_END:
            if access == ACCESS_WRITE:  # readable (the CPU reads its tables there), never writable
                user = PFError.US if self.real_cpl() == USER_RING else 0
                return Fault(PF, PFError.P | PFError.WR | user, vaddr, access)
            return Fill(self.vmm_area + (vaddr & PAGE_MASK) - VMM_LINEAR, PROT_READ)
        return self.mmu.tlb_fill(vaddr, access)

    # -- traps ---------------------------------------------------------------------------------
    def on_slice_end(self) -> None:
        self._settle()

    def _settle(self) -> None:
        if self._restore_limit is not None:
            self.vm.engine.set_table("gdtr", SHADOW_GDT, self._restore_limit)
            self._restore_limit = None
        if self.gdt_dirty:
            self.gdt_dirty = False
            self.rebuild_gdt()

    def on_exception(self, vector: int, error_code: int, software: bool) -> None:
        self._settle()
        if vector == GP and not software and self.real_cpl() == 1:
            trapped = self.emulator.trapped(error_code)
            if trapped is not None and self.vm.dispatch(trapped) is not DECLINE:
                return
        super().on_exception(vector, error_code, software)

    def emulate(self, exit: TrappedInstruction) -> Outcome:
        """The #GP of a privileged instruction: apply it to the virtual CPU."""
        return self.emulator.execute(exit.insn, exit.error_code)

    def on_port_in(self, port: int, size: int) -> int:
        started = time.perf_counter()
        try:
            return super().on_port_in(port, size)
        finally:
            self.events.timed("traps", "in", started)

    def on_port_out(self, port: int, size: int, value: int) -> None:
        started = time.perf_counter()
        super().on_port_out(port, size, value)
        self.events.timed("traps", "out", started)

    def poll_interrupts(self) -> bool:
        self._settle()
        return super().poll_interrupts()

    def stopped(self) -> None:
        self._settle()
