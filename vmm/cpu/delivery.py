"""Delivering exceptions and interrupts into the guest: the VMM's job, since Unicorn never
uses the guest IDT (DESIGN §3). It is VT-x's VM-entry event injection, and the `vtx`
mode reuses it as such.

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
from dataclasses import dataclass
from typing import Callable

from ..mmu.paging import PageFault
from .regs import AC, IF, NT, RF, TF, VM

DE, DB, NMI, BP, OF, BR, UD, NM, DF, TS, NP, SS, GP, PF, MF, AC_VEC, MC, XM = (
    0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 14, 16, 17, 18, 19)
VECTOR_NAMES = {0: "#DE", 1: "#DB", 2: "NMI", 3: "#BP", 4: "#OF", 5: "#BR", 6: "#UD", 7: "#NM",
                8: "#DF", 9: "CSO", 10: "#TS", 11: "#NP", 12: "#SS", 13: "#GP", 14: "#PF",
                16: "#MF", 17: "#AC", 18: "#MC", 19: "#XM", 20: "#VE", 21: "#CP"}
HAS_ERROR_CODE = frozenset({DF, TS, NP, SS, GP, PF, AC_VEC, 21})
CONTRIBUTORY = frozenset({DE, TS, NP, SS, GP})

GATE_INT32, GATE_TRAP32 = 0xE, 0xF


def vector_name(vector: int) -> str:
    return VECTOR_NAMES.get(vector, f"vector {vector:#x}")


def combine_events(first: int, second: int) -> int | None:
    """SDM Table 6-5, for ``second`` raised while delivering ``first``: the vector to
    deliver next (#DF, or ``second`` handled serially), or None for a triple fault."""
    serious = second in CONTRIBUTORY or second == PF
    if first == DF and serious:
        return None
    if (first in CONTRIBUTORY and second in CONTRIBUTORY) or (first == PF and serious):
        return DF
    return second


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
    """An event to deliver. ``kind``: "exception", "external" (an IRQ), or "software"."""

    vector: int
    kind: str = "exception"
    error_code: int | None = None
    cr2: int | None = None


@dataclass
class Descriptor:
    base: int
    limit: int
    access: int  # bits 8..15 of the high dword: type, S, DPL, P
    flags: int   # bits 20..23: AVL, L, D/B, G

    @classmethod
    def parse(cls, lo: int, hi: int) -> "Descriptor":
        base = (lo >> 16) | ((hi & 0xFF) << 16) | (hi & 0xFF000000)
        limit = (lo & 0xFFFF) | (hi & 0xF0000)
        flags = (hi >> 20) & 0xF
        if flags & 0x8:
            limit = (limit << 12) | 0xFFF
        return cls(base, limit, (hi >> 8) & 0xFF, flags)

    present = property(lambda self: bool(self.access & 0x80))
    dpl = property(lambda self: (self.access >> 5) & 3)
    system = property(lambda self: not self.access & 0x10)
    code = property(lambda self: not self.system and bool(self.access & 0x8))
    conforming = property(lambda self: self.code and bool(self.access & 0x4))
    writable_data = property(lambda self: not self.system and not self.code and bool(self.access & 0x2))


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

    # -- guest memory as the CPU sees it during delivery (supervisor, linear) -----------
    def _read(self, linear: int, size: int) -> bytes:
        out = b""
        while size:
            chunk = min(size, 0x1000 - (linear & 0xFFF))
            try:
                phys = self.translate(linear, False)
            except PageFault as pf:
                raise DeliveryFault(PF, pf.error_code, pf.address) from None
            out += self.engine.read_phys(phys, chunk)
            linear, size = linear + chunk, size - chunk
        return out

    def _u32(self, linear: int) -> int:
        return struct.unpack("<I", self._read(linear, 4))[0]

    def descriptor(self, selector: int, ext: int) -> Descriptor:
        """Read a GDT/LDT descriptor; #GP(selector) if outside the table."""
        table = "ldtr" if selector & 4 else "gdtr"
        _, base, limit = self.table(table)
        index = selector & 0xFFF8
        if index + 7 > limit:
            raise DeliveryFault(GP, (selector & 0xFFFC) | ext)
        lo, hi = struct.unpack("<II", self._read(base + index, 8))
        return Descriptor.parse(lo, hi)

    # -- the processor state delivery reads and writes ------------------------------------
    # A VMM that runs its guest kernel deprivileged (``trap``) overrides these four: the
    # guest's own tables and privilege level are virtual there, and the frame it sees
    # must hold the values it would see on bare hardware.
    def table(self, name: str) -> tuple[int, int, int]:
        """(selector, base, limit) of GDTR, LDTR, IDTR or TR as the guest defined it."""
        return self.engine.table(name)

    def cpl(self) -> int:
        return self.engine.reg("cs") & 3

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
                if self.engine.reg("cr0") & 1:
                    self._protected(current)
                else:
                    self._real(current)
                self.delivered += 1
                return
            except DeliveryFault as fault:
                history.append(vector_name(fault.vector))
                if self.intercept is not None and self.intercept(fault.vector, fault.error_code, fault.cr2):
                    return
                nxt = combine_events(current.vector, fault.vector)
                if nxt is None:
                    raise TripleFault(self.engine.reg("eip"), history) from None
                if nxt == DF:
                    current = Event(DF, "exception", 0)
                    history.append("#DF")
                else:
                    current = Event(nxt, "exception", fault.error_code, fault.cr2)

    def _protected(self, ev: Event) -> None:
        eng = self.engine
        software = ev.kind == "software"
        ext = 0 if software else 1
        cpl = self.cpl()
        _, idt_base, idt_limit = self.table("idtr")
        gate_error = ev.vector * 8 + 2 + ext
        if ev.vector * 8 + 7 > idt_limit:
            raise DeliveryFault(GP, gate_error)
        lo, hi = struct.unpack("<II", self._read(idt_base + ev.vector * 8, 8))
        gate_type, gate_dpl, present = (hi >> 8) & 0x1F, (hi >> 13) & 3, bool(hi & 0x8000)
        if gate_type not in (GATE_INT32, GATE_TRAP32):
            raise DeliveryFault(GP, gate_error)  # task gates and 16-bit gates: not modelled
        if software and gate_dpl < cpl:
            raise DeliveryFault(GP, ev.vector * 8 + 2)
        if not present:
            raise DeliveryFault(NP, gate_error)
        selector = lo >> 16
        offset = (hi & 0xFFFF0000) | (lo & 0xFFFF)
        if selector & 0xFFFC == 0:
            raise DeliveryFault(GP, ext)
        code = self.descriptor(selector, ext)
        if not code.code or code.dpl > cpl:
            raise DeliveryFault(GP, (selector & 0xFFFC) | ext)
        if not code.present:
            raise DeliveryFault(NP, (selector & 0xFFFC) | ext)
        new_cpl = cpl if code.conforming else code.dpl

        eflags, cs, ss = self.saved_state()
        eip, esp = eng.reg("eip"), eng.reg("esp")
        frame = [eflags, cs, eip]
        switched = new_cpl < cpl
        if switched:
            tss_selector, tss_base, tss_limit = self.table("tr")
            slot = 4 + 8 * new_cpl
            if slot + 5 > tss_limit:
                raise DeliveryFault(TS, (tss_selector & 0xFFFC) | ext)
            new_esp = self._u32(tss_base + slot)
            new_ss = struct.unpack("<H", self._read(tss_base + slot + 4, 2))[0]
            stack = self.descriptor(new_ss, ext) if new_ss & 0xFFFC else None
            if (stack is None or new_ss & 3 != new_cpl or stack.dpl != new_cpl
                    or not stack.writable_data):
                raise DeliveryFault(TS, (new_ss & 0xFFFC) | ext)
            if not stack.present:
                raise DeliveryFault(SS, (new_ss & 0xFFFC) | ext)
            frame = [ss, esp] + frame
        else:
            new_ss, new_esp = ss, esp
            stack = self.descriptor(ss, ext)
        if ev.vector in HAS_ERROR_CODE and not software and ev.kind == "exception":
            frame.append(ev.error_code or 0)
        # Translate every slot before writing any, so a fault leaves the guest untouched.
        top = (new_esp - 4 * len(frame)) & 0xFFFFFFFF
        slots = []
        for i in range(len(frame)):
            linear = (stack.base + top + 4 * i) & 0xFFFFFFFF
            try:
                slots.append(self.translate(linear, True))
            except PageFault as pf:
                raise DeliveryFault(PF, pf.error_code, pf.address) from None
        for phys, value in zip(slots, reversed(frame)):
            eng.write_phys(phys, struct.pack("<I", value & 0xFFFFFFFF))

        if ev.vector == PF and ev.cr2 is not None:
            self.set_cr2(ev.cr2)
        new_flags = eflags & ~(TF | NT | RF | VM)
        if gate_type == GATE_INT32:
            new_flags &= ~IF
        self.enter(cpl=cpl, new_cpl=new_cpl, cs=(selector & 0xFFFC) | new_cpl, ss=new_ss if switched else None,
                   esp=top, eflags=new_flags, eip=offset)

    def _real(self, ev: Event) -> None:
        eng = self.engine
        _, ivt_base, ivt_limit = eng.table("idtr")
        if ev.vector * 4 + 3 > ivt_limit:
            raise DeliveryFault(GP, 0)
        ip, seg = struct.unpack("<HH", eng.read_phys(ivt_base + ev.vector * 4, 4))
        flags, cs, eip = eng.reg("eflags"), eng.reg("cs"), eng.reg("eip")
        sp = (eng.reg("esp") - 6) & 0xFFFF
        eng.write_phys((eng.reg("ss") << 4) + sp, struct.pack("<HHH", eip & 0xFFFF, cs, flags & 0xFFFF))
        eng.set_reg("esp", (eng.reg("esp") & 0xFFFF0000) | sp)
        eng.set_reg("eflags", flags & ~(IF | TF | AC))
        eng.set_reg("cs", seg)
        eng.set_reg("eip", ip)
