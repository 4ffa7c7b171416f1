"""Xen's ``create_bounce_frame``: delivering an exception, a software interrupt or an
event upcall into a PV guest through its virtual trap table.

The guest has no IDT the CPU reads; it registered handlers with ``set_trap_table``
(vector -> flags, ring-1 CS, address) and its kernel stack with ``stack_switch``. To
deliver, the VMM does what an interrupt gate would, in software:

* from ring 3, switch to the kernel stack and push the user SS and ESP;
* push EFLAGS with IF = the inverse of ``evtchn_upcall_mask`` (the virtual IF), CS with
  the saved upcall mask in bits 16-23 (x86_32 Xen), EIP and, for #DF/#TS/#NP/#SS/#GP/#PF/
  #AC, the error code; a #PF's address goes to ``vcpu_info.arch.cr2``;
* mask events if the entry asks for it (``TI_CLEAR_EVENTS``: an interrupt gate);
* enter the handler at CS:EIP in ring 1.

A frame that cannot be written (the kernel stack unmapped or read-only) or a vector
without a handler crashes the domain, as in Xen: the VM stops with the reason.
"""
from __future__ import annotations

import struct

from ..cpu.delivery import Event
from ..x86 import EFLAGS, HAS_ERROR_CODE, Vector, vector_name
from ..x86.paging import ADDRESS_MASK_32
from ..x86.segments import SELECTOR_RPL_MASK, USER_RING
from . import abi
from .memory import HypercallError

_CLEARED_ON_DELIVERY = EFLAGS.TF | EFLAGS.NT | EFLAGS.RF | EFLAGS.VM
_SLOT = 4                                   # a 32-bit stack slot
_UPCALL_MASK_SHIFT = 16                     # saved upcall mask in bits 23:16 of the pushed CS


class DomainCrash(Exception):
    """The domain cannot go on (Xen's ``domain_crash``)."""


class BounceDelivery:
    """``vm.inject(event)`` in pv mode: ``pv`` is the :class:`vmm.modes.pv.PvMode`."""

    def __init__(self, pv):
        self.pv = pv
        self.delivered = 0

    def deliver(self, event: Event) -> None:
        pv = self.pv
        if event.kind == "upcall":
            target = pv.callbacks[0] if pv.callbacks else None
            flags = abi.TI_CLEAR_EVENTS
            if target is None or not target[1]:
                raise DomainCrash("event upcall with no callback (set_callbacks)")
            cs, address = target
        else:
            entry = pv.traps.get(event.vector)
            if entry is None:
                raise DomainCrash(f"{vector_name(event.vector)} at EIP {pv.engine.reg('eip'):#010x} "
                                  "with no handler in the trap table")
            flags, cs, address = entry
        eng = pv.engine
        eflags, eip, esp = eng.reg("eflags"), eng.reg("eip"), eng.reg("esp")
        cur_cs, cur_ss = eng.reg("cs"), eng.reg("ss")
        masked = pv.shared.masked
        virtual_flags = (eflags & ~EFLAGS.IF) | (0 if masked else EFLAGS.IF)
        frame = [virtual_flags, cur_cs | int(masked) << _UPCALL_MASK_SHIFT, eip]
        if cur_cs & SELECTOR_RPL_MASK == USER_RING:
            ss, top = pv.kernel_stack or (None, None)
            if not top:
                raise DomainCrash(f"{vector_name(event.vector)} from ring 3 with no kernel stack (stack_switch)")
            frame = [cur_ss, esp] + frame
        else:
            ss, top = cur_ss, esp
        if event.kind == "exception" and event.vector in HAS_ERROR_CODE:
            frame.append(event.error_code or 0)
        top = (top - _SLOT * len(frame)) & ADDRESS_MASK_32
        try:
            pv.access.write(top, struct.pack(f"<{len(frame)}I", *reversed(frame)))
        except HypercallError as err:
            raise DomainCrash(f"cannot write the bounce frame for {vector_name(event.vector)} "
                              f"at {top:#010x} ({err})") from None
        if event.vector == Vector.PF and event.cr2 is not None and event.kind == "exception":
            pv.shared.set_cr2(event.cr2)
            eng.set_reg("cr2", event.cr2)
        if flags & abi.TI_CLEAR_EVENTS:
            pv.shared.set_mask(True)
        self.delivered += 1
        pv.transfer(address, cs, (eflags & ~_CLEARED_ON_DELIVERY) | EFLAGS.IF, top, ss)
