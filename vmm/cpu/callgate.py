"""A far CALL through a call gate to a more privileged ring, carried out by the VMM.

The engine's TR base is not the guest's (:meth:`vmm.cpu.engine.Engine.virtualize_tr`),
so the one step of such a call that reads the TSS (the inner ring's SS:ESP) reaches the
VMM, which then performs the whole call as the SDM's CALL pseudocode says
("CALL-GATE-TO-MORE-PRIVILEGE"):

1. the gate (GDT or LDT): DPL >= CPL and >= the selector's RPL, else #GP(selector);
   present, else #NP(selector);
2. its code segment: not null (#GP(0)), a code segment with DPL <= CPL, else
   #GP(code selector); present, else #NP(code selector);
3. the new stack from the TSS slot for the code segment's DPL, checked as for an
   interrupt (#TS, #SS);
4. on the new stack: the old SS and ESP, the gate's parameter count of dwords copied
   from the old stack, the old CS and the return EIP; every page is translated before
   any is written, so a fault leaves the guest as it was;
5. CS:EIP from the gate, at the code segment's DPL, and SS:ESP the new stack.

A call to the same ring through a gate, a JMP through a gate, and the far RET that comes
back out never read the TSS: the engine carries those out itself. A 16-bit call gate is
refused with #GP(selector) here (the 16-bit forms of the frame are not modelled).
"""
from __future__ import annotations

import struct

from ..x86 import Descriptor, SystemType, Vector
from ..x86.segments import SELECTOR_MASK, SELECTOR_RPL_MASK, Gate
from .delivery import DeliveryFault

PARAM_COUNT_MASK = 0x1F
_SLOT = 4


def call_through_gate(switcher, selector: int, return_eip: int) -> None:
    """CALL to ``selector``, a call gate whose code segment is more privileged.
    ``switcher`` is the mode's :class:`~vmm.cpu.tasks.TaskSwitcher` (guest memory,
    descriptor tables, the engine); raises :class:`DeliveryFault` for the guest."""
    delivery, eng = switcher.delivery, switcher.engine
    error = selector & SELECTOR_MASK
    _, lo, hi = switcher._slot(selector, Vector.GP, error)
    gate = Gate.parse(lo, hi)
    cpl = delivery.cpl()
    if gate.type != SystemType.CALL_GATE32 or gate.dpl < max(cpl, selector & SELECTOR_RPL_MASK):
        raise DeliveryFault(Vector.GP, error)
    if not gate.present:
        raise DeliveryFault(Vector.NP, error)
    code_selector = gate.selector
    if code_selector & SELECTOR_MASK == 0:
        raise DeliveryFault(Vector.GP, 0)
    code_error = code_selector & SELECTOR_MASK
    _, code_lo, code_hi = switcher._slot(code_selector, Vector.GP, code_error)
    code = Descriptor.parse(code_lo, code_hi)
    if not code.code or code.dpl > cpl:
        raise DeliveryFault(Vector.GP, code_error)
    if not code.present:
        raise DeliveryFault(Vector.NP, code_error)
    new_cpl = code.dpl
    new_ss, new_esp, stack = delivery._inner_stack(new_cpl, 0)
    old_ss, old_esp = eng.reg("ss"), eng.reg("esp")
    old_stack = eng.segment_cache("ss")[1]
    count = hi & PARAM_COUNT_MASK
    params = [struct.unpack("<I", switcher._read((old_stack + old_esp + _SLOT * i) & 0xFFFFFFFF, _SLOT))[0]
              for i in range(count)]
    frame = [old_ss, old_esp, *reversed(params), eng.reg("cs"), return_eip]
    top = delivery._push(stack, new_esp, frame)
    _, ss_lo, ss_hi = switcher._slot(new_ss, Vector.TS, new_ss & SELECTOR_MASK)
    eng.load_segment("cs", (code_selector & SELECTOR_MASK) | new_cpl, code.base, code.limit, code_hi)
    eng.load_segment("ss", new_ss, stack.base, stack.limit, ss_hi)
    eng.set_reg("esp", top)
    eng.set_reg("eip", gate.offset)
