"""Delivering exceptions and interrupts into the guest: the VMM's job, since Unicorn never
uses the guest IDT (it reports the vector and stops). It is VT-x's VM-entry event
injection, and the `vtx` mode reuses it as such.

Protected mode (SDM vol. 3 §6.12): the IDT entry for the vector must lie within IDTR's
limit and be a present 32-bit interrupt or trap gate; a software interrupt (INT n, INT3,
INTO) also needs gate DPL >= CPL. The gate's code segment decides the new CPL; a
change of privilege switches to the stack that the TSS names for that ring and pushes
the old SS:ESP first. Then EFLAGS, CS, EIP and, for #DF/#TS/#NP/#SS/#GP/#PF/#AC, the
error code. An interrupt gate also clears IF. TF, NT, RF and VM are always cleared.

Real mode (§20.1.4): the IVT entry is offset:segment; FLAGS, CS, IP are pushed.

A fault while delivering is handled as the SDM's Table 6-5 says: contributory on
contributory, or contributory/#PF on #PF, becomes #DF; any of those during #DF is a
triple fault, which stops the VM (:class:`TripleFault`), never the VMM.
"""
from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from ..mmu.paging import PageFault
from ..x86 import CONTRIBUTORY, CR0, EFLAGS, HAS_ERROR_CODE, Descriptor, Gate, SystemType, Vector, vector_name
from ..x86.paging import ADDRESS_MASK_32, PAGE_OFFSET_MASK, PAGE_SIZE
from ..x86.segments import (
    DESCRIPTOR_SIZE,
    GATE_SIZE,
    IVT_ENTRY_SIZE,
    SELECTOR_INDEX_MASK,
    SELECTOR_MASK,
    SELECTOR_RPL_MASK,
    SELECTOR_TI,
    TSS32_SS_OFFSET,
    tss32_stack_slot,
)

# Old spellings, still imported by vmm/modes, vmm/vmx and vmm/vm.py (their owners move to
# vmm.x86.Vector); the vocabulary's names are re-exported for them too.
BP, GP, OF, PF, UD = Vector.BP, Vector.GP, Vector.OF, Vector.PF, Vector.UD
__all__ = ["BP", "GP", "HAS_ERROR_CODE", "OF", "PF", "UD", "DeliveryFault", "Descriptor", "Event", "EventDelivery",
           "TripleFault", "combine_events", "vector_name"]

GATES_32 = (SystemType.INTERRUPT_GATE32, SystemType.TRAP_GATE32)
"""The gate types delivery itself carries out (16-bit gates are not modelled); a task
gate is a task switch (:attr:`EventDelivery.task_gate`)."""

_CLEARED_ON_DELIVERY = EFLAGS.TF | EFLAGS.NT | EFLAGS.RF | EFLAGS.VM
_CLEARED_REAL_MODE = EFLAGS.IF | EFLAGS.TF | EFLAGS.AC
_IDT_ERROR_IDT = 2        # error-code bit 1: the selector indexes the IDT (§6.13)
_SEGMENT_LIMIT_16 = 0xFFFF
_SLOT = 4                 # a 32-bit stack slot
_REAL_MODE_FRAME = 6      # FLAGS, CS, IP: three 16-bit words
_REAL_MODE_SEGMENT_SHIFT = 4   # real-mode linear = segment * 16 + offset


def combine_events(first: int, second: int) -> int | None:
    """SDM Table 6-5, for ``second`` raised while delivering ``first``: the vector to
    deliver next (#DF, or ``second`` handled serially), or None for a triple fault."""
    serious = second in CONTRIBUTORY or second == Vector.PF
    if first == Vector.DF and serious:
        return None
    if (first in CONTRIBUTORY and second in CONTRIBUTORY) or (first == Vector.PF and serious):
        return Vector.DF
    return second


_INT_N, _INT3, _INTO = 0xCD, 0xCC, 0xCE
_SIZE_PREFIXES = frozenset({0x66, 0x67})


def take_nmi(board, engine) -> bool | None:
    """The NMI rule the bare machine and VMX non-root operation share (SDM vol. 3 §6.7.1):
    None if no NMI is pending; False if one waits (blocked until the IRET of an NMI
    handler, or at a boundary inside a MOV SS / STI shadow); True if one was acknowledged
    now, for the caller to deliver (or turn into a VM exit)."""
    if not board.nmi_pending():
        return None
    if engine.nmi_blocked() or engine.interrupt_shadow():
        return False
    board.acknowledge_nmi()
    return True


class DeliveryFault(Exception):
    """A fault raised while delivering another event."""

    def __init__(self, vector: int, error_code: int = 0, cr2: int | None = None):
        super().__init__(f"{vector_name(vector)} ({error_code:#x}) during event delivery")
        self.vector, self.error_code, self.cr2 = vector, error_code, cr2


class TripleFault(Exception):
    """The processor would shut down: the VM stops with this reason."""

    def __init__(self, eip: int, history: list[str]):
        super().__init__(f"triple fault at EIP {eip:#010x} ({' -> '.join(history)})")
        self.eip = eip
        self.history = history


@dataclass
class Event:
    """An event to deliver. ``kind``: "exception", "external" (an IRQ), "nmi", or "software"."""

    vector: int
    kind: str = "exception"
    error_code: int | None = None
    cr2: int | None = None


class EventDelivery:
    """Pushes the frame and loads CS:EIP as the processor's delivery microcode would.

    ``translate(linear, write)`` maps a supervisor access to a guest-physical address or
    raises :class:`PageFault`; ``set_cr2`` records CR2 for #PF.
    """

    def __init__(self, engine, translate: Callable[[int, bool], int], set_cr2: Callable[[int], None]):
        self.engine = engine
        self.translate = translate
        self.set_cr2 = set_cr2
        self.intercept = None
        self.delivered = 0
        self.task_gate: Callable[[int, Event, int], None] | None = None
        """``task_gate(tss_selector, event, ext)`` switches tasks for an IDT task gate
        (vmm.cpu.tasks); without it a task gate is refused as a 32-bit gate of a wrong type."""

    # -- guest memory as the CPU sees it during delivery (supervisor, linear) -----------
    def _read(self, linear: int, size: int) -> bytes:
        out = b""
        while size:
            chunk = min(size, PAGE_SIZE - (linear & PAGE_OFFSET_MASK))
            out += self.engine.read_phys(self._translate(linear, False), chunk)
            linear, size = linear + chunk, size - chunk
        return out

    def _translate(self, linear: int, write: bool) -> int:
        try:
            return self.translate(linear, write)
        except PageFault as pf:
            raise DeliveryFault(Vector.PF, pf.error_code, pf.address) from None

    def _u32(self, linear: int) -> int:
        return struct.unpack("<I", self._read(linear, _SLOT))[0]

    def descriptor(self, selector: int, ext: int) -> Descriptor:
        """Read a GDT/LDT descriptor; #GP(selector) if outside the table."""
        table = "ldtr" if selector & SELECTOR_TI else "gdtr"
        _, base, limit = self.table(table)
        index = selector & SELECTOR_INDEX_MASK
        if index + DESCRIPTOR_SIZE - 1 > limit:
            raise DeliveryFault(Vector.GP, (selector & SELECTOR_MASK) | ext)
        lo, hi = struct.unpack("<II", self._read(base + index, DESCRIPTOR_SIZE))
        return Descriptor.parse(lo, hi)

    # -- the processor state delivery reads and writes ------------------------------------
    # A VMM that runs its guest kernel deprivileged (``trap``) overrides these four: the
    # guest's own tables and privilege level are virtual there, and the frame it sees
    # must hold the values it would see on bare hardware.
    def table(self, name: str) -> tuple[int, int, int]:
        """(selector, base, limit) of GDTR, LDTR, IDTR or TR as the guest defined it."""
        return self.engine.table(name)

    def cpl(self) -> int:
        return self.engine.reg("cs") & SELECTOR_RPL_MASK

    def saved_state(self) -> tuple[int, int, int]:
        """(EFLAGS, CS, SS) to push in the frame."""
        eng = self.engine
        return eng.reg("eflags"), eng.reg("cs"), eng.reg("ss")

    def enter(self, *, cpl: int, new_cpl: int, cs: int, ss: int | None, esp: int, eflags: int,
              eip: int) -> None:
        """Load the handler's state; ``ss`` is None when the stack did not switch."""
        eng = self.engine
        if new_cpl != cpl:
            eng.enter_ring(new_cpl, cs, ss)
        else:
            eng.set_reg("cs", cs)
        eng.set_reg("esp", esp)
        eng.set_reg("eflags", eflags)
        eng.set_reg("eip", eip)

    # -- entry points --------------------------------------------------------------------
    def deliver(self, event: Event) -> None:
        """Deliver ``event``, escalating faults during delivery to #DF and triple fault.

        ``intercept(vector, error_code, cr2)``, when set, sees each such fault first; if
        it returns True the fault became something else (a VM exit) and delivery ends.
        """
        current = event
        history = [vector_name(event.vector)]
        while True:
            try:
                if self.engine.reg("cr0") & CR0.PE:
                    self._protected(current)
                else:
                    self._real(current)
                self.engine.set_interrupt_shadow(False)   # the handler's first instruction is not in it
                if current.kind == "nmi":
                    self.engine.set_nmi_blocked(True)     # until the handler's IRET
                self.delivered += 1
                return
            except DeliveryFault as fault:
                history.append(vector_name(fault.vector))
                if self.intercept is not None and self.intercept(fault.vector, fault.error_code, fault.cr2):
                    return
                if current.kind == "software":
                    self._back_to_instruction(current.vector)
                nxt = combine_events(current.vector, fault.vector)
                if nxt is None:
                    raise TripleFault(self.engine.reg("eip"), history) from None
                if nxt == Vector.DF:
                    current = Event(Vector.DF, "exception", 0)
                    history.append("#DF")
                else:
                    current = Event(nxt, "exception", fault.error_code, fault.cr2)

    def _back_to_instruction(self, vector: int) -> None:
        """A fault while delivering INT n / INT3 / INTO is the instruction's fault: its frame
        points at the instruction, which runs again after the handler (kvm-unit-tests
        ``eventinj`` "NP exception" counts on it). The engine reports EIP past it; the
        bytes before EIP tell how far: CD n (n = the vector), or CC / CE for INT3 / INTO,
        each after an optional operand- or address-size prefix."""
        eng = self.engine
        eip = eng.reg("eip")
        try:
            before = self._read(eip - 3, 3)
        except DeliveryFault:
            return
        if before[1] == _INT_N and before[2] == vector:
            length = 2
        elif (before[2], vector) in ((_INT3, Vector.BP), (_INTO, Vector.OF)):
            length = 1
        else:
            return
        if before[2 - length] in _SIZE_PREFIXES:
            length += 1
        eng.set_reg("eip", (eip - length) & 0xFFFFFFFF)

    # -- protected mode, one step per check of SDM §6.12.1 ----------------------------------
    def _protected(self, ev: Event) -> None:
        software = ev.kind == "software"
        ext = 0 if software else 1    # error-code bit 0: an event external to the program
        cpl = self.cpl()
        gate = self._gate(ev.vector, cpl, software, ext)
        if gate.type == SystemType.TASK_GATE:
            if ev.vector == Vector.PF and ev.cr2 is not None:
                self.set_cr2(ev.cr2)
            assert self.task_gate is not None, "_gate accepts task gates only with a task switcher"
            self.task_gate(gate.selector, ev, ext)
            return
        new_cpl = self._handler_cpl(gate.selector, cpl, ext)
        eflags, cs, ss = self.saved_state()
        eip, esp = self.engine.reg("eip"), self.engine.reg("esp")
        frame = [eflags, cs, eip]
        switched = new_cpl < cpl
        if switched:
            new_ss, new_esp, stack = self._inner_stack(new_cpl, ext)
            frame = [ss, esp, *frame]
        else:
            new_ss, new_esp, stack = ss, esp, self.descriptor(ss, ext)
        if ev.vector in HAS_ERROR_CODE and ev.kind == "exception":
            frame.append(ev.error_code or 0)
        top = self._push(stack, new_esp, frame)

        if ev.vector == Vector.PF and ev.cr2 is not None:
            self.set_cr2(ev.cr2)
        new_flags = eflags & ~_CLEARED_ON_DELIVERY
        if gate.type == SystemType.INTERRUPT_GATE32:
            new_flags &= ~EFLAGS.IF
        self.enter(cpl=cpl, new_cpl=new_cpl, cs=(gate.selector & SELECTOR_MASK) | new_cpl,
                   ss=new_ss if switched else None, esp=top, eflags=new_flags, eip=gate.offset)

    def _gate(self, vector: int, cpl: int, software: bool, ext: int) -> Gate:
        """The IDT gate for ``vector``: within IDTR's limit, a 32-bit interrupt or trap
        gate or a task gate, DPL >= CPL for INT n/INT3/INTO, present; #GP or #NP(vector) otherwise."""
        _, idt_base, idt_limit = self.table("idtr")
        offset = vector * GATE_SIZE
        gate_error = offset + _IDT_ERROR_IDT + ext
        if offset + GATE_SIZE - 1 > idt_limit:
            raise DeliveryFault(Vector.GP, gate_error)
        gate = Gate.parse(*struct.unpack("<II", self._read(idt_base + offset, GATE_SIZE)))
        if gate.type not in GATES_32 and (gate.type != SystemType.TASK_GATE or self.task_gate is None):
            raise DeliveryFault(Vector.GP, gate_error)
        if software and gate.dpl < cpl:
            raise DeliveryFault(Vector.GP, offset + _IDT_ERROR_IDT)
        if not gate.present:
            raise DeliveryFault(Vector.NP, gate_error)
        return gate

    def _handler_cpl(self, selector: int, cpl: int, ext: int) -> int:
        """Check the gate's code segment (not null, code, DPL <= CPL, present) and return
        the handler's CPL: the CPL for a conforming segment, else its DPL."""
        if selector & SELECTOR_MASK == 0:
            raise DeliveryFault(Vector.GP, ext)
        code = self.descriptor(selector, ext)
        error = (selector & SELECTOR_MASK) | ext
        if not code.code or code.dpl > cpl:
            raise DeliveryFault(Vector.GP, error)
        if not code.present:
            raise DeliveryFault(Vector.NP, error)
        return cpl if code.conforming else code.dpl

    def _inner_stack(self, new_cpl: int, ext: int) -> tuple[int, int, Descriptor]:
        """SS:ESP for ring ``new_cpl`` from the 32-bit TSS, and the stack segment, checked
        as §6.12.1 says (#TS for a bad TSS slot or SS, #SS for a not-present SS)."""
        tss_selector, tss_base, tss_limit = self.table("tr")
        slot = tss32_stack_slot(new_cpl)
        if slot + TSS32_SS_OFFSET + 1 > tss_limit:
            raise DeliveryFault(Vector.TS, (tss_selector & SELECTOR_MASK) | ext)
        new_esp = self._u32(tss_base + slot)
        new_ss = struct.unpack("<H", self._read(tss_base + slot + TSS32_SS_OFFSET, 2))[0]
        error = (new_ss & SELECTOR_MASK) | ext
        stack = self.descriptor(new_ss, ext) if new_ss & SELECTOR_MASK else None
        if (stack is None or new_ss & SELECTOR_RPL_MASK != new_cpl or stack.dpl != new_cpl
                or not stack.writable_data):
            raise DeliveryFault(Vector.TS, error)
        if not stack.present:
            raise DeliveryFault(Vector.SS, error)
        return new_ss, new_esp, stack

    def _push(self, stack: Descriptor, esp: int, frame: list[int]) -> int:
        """Push ``frame`` (first item deepest) below ``esp``; returns the new ESP. Every
        slot is translated before any is written, so a fault leaves the guest untouched."""
        top = (esp - _SLOT * len(frame)) & ADDRESS_MASK_32
        slots = [self._translate((stack.base + top + _SLOT * i) & ADDRESS_MASK_32, True)
                 for i in range(len(frame))]
        for phys, value in zip(slots, reversed(frame), strict=True):
            self.engine.write_phys(phys, struct.pack("<I", value & 0xFFFFFFFF))
        return top

    # -- real mode -------------------------------------------------------------------------
    def _real(self, ev: Event) -> None:
        eng = self.engine
        _, ivt_base, ivt_limit = eng.table("idtr")
        if ev.vector * IVT_ENTRY_SIZE + IVT_ENTRY_SIZE - 1 > ivt_limit:
            raise DeliveryFault(Vector.GP, 0)
        ip, seg = struct.unpack("<HH", eng.read_phys(ivt_base + ev.vector * IVT_ENTRY_SIZE, IVT_ENTRY_SIZE))
        flags, cs, eip = eng.reg("eflags"), eng.reg("cs"), eng.reg("eip")
        sp = (eng.reg("esp") - _REAL_MODE_FRAME) & _SEGMENT_LIMIT_16
        eng.write_phys((eng.reg("ss") << _REAL_MODE_SEGMENT_SHIFT) + sp,
                       struct.pack("<HHH", eip & _SEGMENT_LIMIT_16, cs, flags & _SEGMENT_LIMIT_16))
        eng.set_reg("esp", (eng.reg("esp") & ~_SEGMENT_LIMIT_16 & ADDRESS_MASK_32) | sp)
        eng.set_reg("eflags", flags & ~_CLEARED_REAL_MODE)
        eng.set_reg("cs", seg)
        eng.set_reg("eip", ip)
