"""The hypercall handlers, one per Xen number (``HANDLERS``).

Each is ``handler(pv, ebx, ecx, edx, esi, edi) -> EAX`` with ``pv`` the
:class:`vmm.modes.pv.PvMode`; failures raise :class:`HypercallError` and become ``-errno``
in EAX. A handler validates everything before it changes anything, so a failed call
leaves the domain as it was (for batches: the entries before the failing one are done,
and ``success_count`` says how many, as in Xen).
"""
from __future__ import annotations

import struct
from collections.abc import Callable

from ..x86 import PTE, Access
from ..x86.paging import (
    ADDRESS_MASK_32,
    ENTRY_SIZE_32,
    INDEX_MASK_32,
    PAGE_MASK,
    PAGE_OFFSET_MASK,
    PAGE_SHIFT,
    PAGE_SIZE,
    PDE_SHIFT_32,
    PTE_SHIFT,
)
from ..x86.segments import DESCRIPTOR_SIZE, SELECTOR_RPL_MASK
from . import abi
from .abi import Errno
from .memory import HypercallError

DOMIDS_SELF = (abi.DOMID_SELF, 0)  # the one domain: its own id is 0
MAX_TRAP_ENTRIES = 256 + 1  # one per vector, and the terminating entry with address 0
_MMU_CMD_MASK = 3            # mmu_update: the command is in the low two bits of ptr
_WORD = 4                    # the guest's lists (frame lists, extents) are of 32-bit words
_BREAKPOINT_REGISTERS = 4    # DR0..DR3 hold breakpoint addresses
_DESCRIPTORS_PER_PAGE = PAGE_SIZE // DESCRIPTOR_SIZE
_DESCRIPTOR_DPL = Access.DPL << 8   # bits 14:13 of a descriptor's high dword
MAX_BATCH = 1 << 16  # entries per mmu_update / mmuext_op / reservation (Xen preempts instead)


def _batch(count: int) -> int:
    if count > MAX_BATCH:
        raise HypercallError(Errno.EINVAL, f"{count} entries in one call (at most {MAX_BATCH})")
    return count


def set_trap_table(pv, table, *_):
    """Register the virtual IDT: ``trap_info`` entries up to one with address 0."""
    if table == 0:
        pv.traps.clear()
        return 0
    entries, raw, at = {}, b"", table
    for _ in range(MAX_TRAP_ENTRIES):
        while len(raw) < abi.TRAP_INFO_SIZE:  # a page at a time: the list may end anywhere, and
            if at > ADDRESS_MASK_32:                 # an entry may straddle two pages
                raise HypercallError(Errno.EFAULT, "trap table runs past the top of the address space")
            raw += pv.access.read(at, PAGE_SIZE - (at & PAGE_OFFSET_MASK))
            at = (at | PAGE_OFFSET_MASK) + 1
        vector, flags, cs, address = struct.unpack_from(abi.TRAP_INFO_FORMAT, raw)
        raw = raw[abi.TRAP_INFO_SIZE:]
        if address == 0:
            break
        if cs & SELECTOR_RPL_MASK == 0:
            cs |= abi.GUEST_KERNEL_RPL  # Xen's fixup_guest_code_selector
        if cs & SELECTOR_RPL_MASK != abi.GUEST_KERNEL_RPL:
            raise HypercallError(Errno.EINVAL, f"vector {vector}: handler selector {cs:#x} is not ring 1")
        entries[vector] = (flags, cs, address)
    else:
        raise HypercallError(Errno.EINVAL, "trap table has no terminating entry")
    pv.traps.update(entries)
    return 0


def mmu_update(pv, reqs, count, done_ptr, domid, *_):
    if domid not in DOMIDS_SELF:
        raise HypercallError(Errno.ESRCH, f"domain {domid:#x}")
    if done_ptr:
        pv.access.machine(done_ptr, True)  # checked before any entry is written
    done, error = 0, None
    try:
        for i in range(_batch(count)):
            ptr, val = struct.unpack("<II", pv.access.read(reqs + i * abi.MMU_UPDATE_SIZE, 8))
            cmd, ptr = ptr & _MMU_CMD_MASK, ptr & ~_MMU_CMD_MASK
            if cmd == abi.MMU_NORMAL_PT_UPDATE:
                pv.mem.update(ptr, val)
            elif cmd == abi.MMU_MACHPHYS_UPDATE:
                mfn = ptr >> PAGE_SHIFT
                if not pv.mem.owns(mfn):
                    raise HypercallError(Errno.EPERM, f"machine frame {mfn:#x} is not the domain's")
                pv.mem.m2p[mfn] = val
            else:
                raise HypercallError(Errno.ENOSYS, f"mmu_update command {cmd}")
            done += 1
            pv.events.add("pv", "mmu_update entries")
    except HypercallError as err:
        error = err
    if done:
        pv.engine.flush_tlb()
    if done_ptr:
        pv.access.put_u32(done_ptr, done)
    if error is not None:
        raise error
    return 0


def update_va_mapping(pv, va, val, flags, *_):
    """Change the PTE that maps ``va`` in the current tables (it needs a 4 KiB page table)."""
    if va >= abi.HYPERVISOR_VIRT_START:
        raise HypercallError(Errno.EINVAL, f"{va:#x} is in the VMM's area")
    pde_at = (pv.mem.base << PAGE_SHIFT) + ENTRY_SIZE_32 * (va >> PDE_SHIFT_32)
    pde = struct.unpack("<I", pv.engine.read_phys(pde_at, ENTRY_SIZE_32))[0]
    if not pde & PTE.P or pde & PTE.PS:
        raise HypercallError(Errno.EINVAL, f"no page table maps {va:#x}")
    if flags & abi.UVMF_FLUSHTYPE_MASK == abi.UVMF_FLUSHTYPE_MASK:
        raise HypercallError(Errno.EINVAL, f"flags {flags:#x}: no such flush type")
    pv.mem.update((pde & PAGE_MASK) + ENTRY_SIZE_32 * ((va >> PTE_SHIFT) & INDEX_MASK_32), val)
    pv.events.add("pv", "mmu_update entries")
    pv.engine.flush_tlb()  # UVMF_NONE included: Unicorn's TLB has no single-page flush
    return 0


def mmuext_op(pv, ops, count, done_ptr, domid, *_):
    if domid not in DOMIDS_SELF:
        raise HypercallError(Errno.ESRCH, f"domain {domid:#x}")
    if done_ptr:
        pv.access.machine(done_ptr, True)
    done, error = 0, None
    try:
        for i in range(_batch(count)):
            cmd, arg1, _arg2 = struct.unpack("<III", pv.access.read(ops + i * abi.MMUEXT_OP_SIZE, 12))
            if cmd == abi.MmuExt.NEW_BASEPTR:
                pv.mem.new_baseptr(arg1)
                pv.engine.set_reg("cr3", arg1 << PAGE_SHIFT)
            elif cmd in (abi.MmuExt.PIN_L1_TABLE, abi.MmuExt.PIN_L2_TABLE):
                pv.mem.pin(arg1, 1 if cmd == abi.MmuExt.PIN_L1_TABLE else 2)
            elif cmd == abi.MmuExt.UNPIN_TABLE:
                if arg1 == pv.mem.base:
                    raise HypercallError(Errno.EBUSY, "the active page directory cannot be unpinned")
                pv.mem.unpin(arg1)
            elif cmd in (abi.MmuExt.INVLPG_LOCAL, abi.MmuExt.INVLPG_ALL):
                if arg1 >= abi.HYPERVISOR_VIRT_START:
                    raise HypercallError(Errno.EINVAL, f"invlpg {arg1:#x} in the VMM's area")
            elif cmd not in (abi.MmuExt.TLB_FLUSH_LOCAL, abi.MmuExt.TLB_FLUSH_ALL):
                raise HypercallError(Errno.ENOSYS, f"mmuext_op command {cmd}")
            pv.engine.flush_tlb()
            pv.events.add("pv", f"mmuext {abi.MmuExt(cmd).name}")
            done += 1
    except HypercallError as err:
        error = err
    if done_ptr:
        pv.access.put_u32(done_ptr, done)
    if error is not None:
        raise error
    return 0


def set_gdt(pv, frame_list, entries, *_):
    if entries > abi.FIRST_RESERVED_GDT_ENTRY:
        raise HypercallError(Errno.EINVAL, f"{entries} GDT entries: the VMM's start at {abi.FIRST_RESERVED_GDT_ENTRY}")
    frames = [pv.access.u32(frame_list + _WORD * i) for i in range(-(-entries // _DESCRIPTORS_PER_PAGE))]
    raw = b""
    for i, mfn in enumerate(frames):
        if not pv.mem.owns(mfn):
            raise HypercallError(Errno.EPERM, f"GDT frame {mfn:#x} is not the domain's")
        raw += pv.engine.read_phys(mfn << PAGE_SHIFT, min(PAGE_SIZE, DESCRIPTOR_SIZE * entries - PAGE_SIZE * i))
    originals = [struct.unpack_from("<II", raw, DESCRIPTOR_SIZE * i) for i in range(entries)]
    checked = [pv.check_descriptor(i, lo, hi) for i, (lo, hi) in enumerate(originals)]
    raised = sum(1 for (_, a), (_, b) in zip(originals, checked, strict=True) if (a ^ b) & _DESCRIPTOR_DPL)
    pv.load_gdt(checked, raised)
    return 0


def stack_switch(pv, ss, esp, *_):
    if ss & SELECTOR_RPL_MASK == 0:
        ss |= abi.GUEST_KERNEL_RPL
    if ss & SELECTOR_RPL_MASK != abi.GUEST_KERNEL_RPL:
        raise HypercallError(Errno.EINVAL, f"kernel stack selector {ss:#x} is not ring 1")
    pv.kernel_stack = (ss, esp)
    return 0


def set_callbacks(pv, event_cs, event_eip, failsafe_cs, failsafe_eip, *_):
    for cs in (event_cs, failsafe_cs):
        if cs & SELECTOR_RPL_MASK not in (0, abi.GUEST_KERNEL_RPL):
            raise HypercallError(Errno.EINVAL, f"callback selector {cs:#x} is not ring 1")
    pv.callbacks = ((event_cs | abi.GUEST_KERNEL_RPL, event_eip), (failsafe_cs | abi.GUEST_KERNEL_RPL, failsafe_eip))
    return 0


def set_debugreg(pv, reg, value, *_):
    if reg not in pv.debugregs:
        raise HypercallError(Errno.EINVAL, f"debug register {reg}")
    if reg < _BREAKPOINT_REGISTERS and value >= abi.HYPERVISOR_VIRT_START:
        raise HypercallError(Errno.EPERM, f"breakpoint at {value:#x} in the VMM's area")
    pv.debugregs[reg] = value
    return 0


def get_debugreg(pv, reg, *_):
    if reg not in pv.debugregs:
        raise HypercallError(Errno.EINVAL, f"debug register {reg}")
    return pv.debugregs[reg]


def memory_op(pv, cmd, arg, *_):
    if cmd in (abi.XENMEM_current_reservation, abi.XENMEM_maximum_reservation):
        domid = struct.unpack("<H", pv.access.read(arg, 2))[0]
        if domid not in DOMIDS_SELF:
            raise HypercallError(Errno.ESRCH, f"domain {domid:#x}")
        return pv.mem.current_pages() if cmd == abi.XENMEM_current_reservation else pv.mem.max_pages
    if cmd not in (abi.XENMEM_increase_reservation, abi.XENMEM_decrease_reservation):
        raise HypercallError(Errno.ENOSYS, f"memory_op command {cmd}")
    start, nr, order, _flags, domid = struct.unpack(abi.RESERVATION_FORMAT, pv.access.read(arg, abi.RESERVATION_SIZE))
    if domid not in DOMIDS_SELF:
        raise HypercallError(Errno.ESRCH, f"domain {domid:#x}")
    if order != 0:
        raise HypercallError(Errno.EINVAL, f"extent order {order}: single pages only")
    done = 0
    for i in range(_batch(nr)):
        slot = start + _WORD * i
        if cmd == abi.XENMEM_decrease_reservation:
            mfn = pv.access.u32(slot)
            try:
                pv.mem.release(mfn)
            except HypercallError:
                break  # Xen returns the number of extents done
        else:
            pv.access.machine(slot, True)
            mfn = pv.mem.reclaim()
            if mfn is None:
                break
            pv.access.put_u32(slot, mfn)
        done += 1
    pv.engine.flush_tlb()  # a released frame must not stay reachable through the TLB
    return done


def xen_version(pv, cmd, arg, *_):
    if cmd == abi.XENVER_version:
        return abi.XEN_VERSION[0] << 16 | abi.XEN_VERSION[1]
    if cmd == abi.XENVER_extraversion:
        pv.access.write(arg, abi.XEN_EXTRAVERSION.ljust(abi.XEN_EXTRAVERSION_LEN, b"\0"))
    elif cmd == abi.XENVER_capabilities:
        pv.access.write(arg, abi.XEN_CAPABILITIES.ljust(abi.XEN_CAPABILITIES_LEN, b"\0"))
    elif cmd == abi.XENVER_platform_parameters:
        pv.access.put_u32(arg, abi.HYPERVISOR_VIRT_START)
    elif cmd == abi.XENVER_get_features:
        pv.access.u32(arg)                 # submap_idx
        pv.access.put_u32(arg + 4, 0)      # no optional features offered
    elif cmd == abi.XENVER_pagesize:
        return PAGE_SIZE
    else:
        raise HypercallError(Errno.ENOSYS, f"xen_version command {cmd}")
    return 0


def console_io(pv, cmd, count, buffer, *_):
    if cmd == abi.CONSOLEIO_write:
        data = pv.access.read(buffer, count)
        pv.vm.board.uart.output(data)
        return 0
    if cmd == abi.CONSOLEIO_read:
        if count:
            pv.access.machine(buffer, True)
        return 0  # no console input in the lab: 0 bytes read
    raise HypercallError(Errno.ENOSYS, f"console_io command {cmd}")


def iret(pv, *_):
    return pv.hypercall_iret()


def sched_op(pv, cmd, arg, *_):
    if cmd == abi.SCHEDOP_yield:
        return 0
    if cmd == abi.SCHEDOP_block:
        pv.block()
        return 0
    if cmd == abi.SCHEDOP_shutdown:
        reason = pv.access.u32(arg)
        if reason not in abi.Shutdown.__members__.values():
            raise HypercallError(Errno.EINVAL, f"shutdown reason {reason}")
        pv.shutdown(abi.Shutdown(reason))
        return 0
    raise HypercallError(Errno.ENOSYS, f"sched_op command {cmd}")


def event_channel_op(pv, cmd, arg, *_):
    shared = pv.shared
    if cmd == abi.EVTCHNOP_bind_virq:
        virq, vcpu = struct.unpack("<II", pv.access.read(arg, 8))
        pv.access.machine(arg + 8, True)
        if virq != abi.VIRQ_TIMER or vcpu != 0:
            raise HypercallError(Errno.EINVAL, f"virq {virq} on vcpu {vcpu}")
        if virq in shared.virq_port:
            raise HypercallError(Errno.EEXIST, f"virq {virq} already bound")
        port = _alloc(shared, f"virq {virq}")
        shared.virq_port[virq] = port
        pv.access.put_u32(arg + 8, port)
        return 0
    if cmd == abi.EVTCHNOP_alloc_unbound:
        dom, remote = struct.unpack("<HH", pv.access.read(arg, 4))
        pv.access.machine(arg + 4, True)
        if dom not in DOMIDS_SELF or remote not in DOMIDS_SELF:
            raise HypercallError(Errno.ESRCH, f"domain {dom:#x} or {remote:#x}")
        pv.access.put_u32(arg + 4, _alloc(shared, "unbound"))
        return 0
    port = pv.access.u32(arg)
    if port not in shared.ports:
        raise HypercallError(Errno.EINVAL, f"port {port} is not open")
    if cmd == abi.EVTCHNOP_send:
        if shared.ports[port] != "unbound":
            raise HypercallError(Errno.EINVAL, f"port {port} is a {shared.ports[port]} port")
        shared.raise_port(port)  # the remote end is this domain: a loop back
        pv.kick()
    elif cmd == abi.EVTCHNOP_unmask:
        shared.unmask(port)
        pv.kick()
    elif cmd == abi.EVTCHNOP_close:
        shared.close(port)
    else:
        raise HypercallError(Errno.ENOSYS, f"event_channel_op command {cmd}")
    return 0


def _alloc(shared, kind: str) -> int:
    port = shared.alloc_port(kind)
    if port is None:
        raise HypercallError(Errno.ENOSPC, "no free event channel")
    return port


HANDLERS: dict[int, Callable[..., int | None]] = {
    abi.Hypercall.set_trap_table: set_trap_table,
    abi.Hypercall.mmu_update: mmu_update,
    abi.Hypercall.set_gdt: set_gdt,
    abi.Hypercall.stack_switch: stack_switch,
    abi.Hypercall.set_callbacks: set_callbacks,
    abi.Hypercall.set_debugreg: set_debugreg,
    abi.Hypercall.get_debugreg: get_debugreg,
    abi.Hypercall.memory_op: memory_op,
    abi.Hypercall.update_va_mapping: update_va_mapping,
    abi.Hypercall.xen_version: xen_version,
    abi.Hypercall.console_io: console_io,
    abi.Hypercall.iret: iret,
    abi.Hypercall.mmuext_op: mmuext_op,
    abi.Hypercall.sched_op: sched_op,
    abi.Hypercall.event_channel_op: event_channel_op,
}
