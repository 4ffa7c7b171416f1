"""Hardware task switching (SDM vol. 3 §7.3), carried out by the VMM.

Four things switch tasks: a far CALL or JMP to a TSS descriptor or a task gate, an IRET
with EFLAGS.NT set (back to the task whose selector is in the TSS's previous-task link),
and an interrupt or exception whose IDT entry is a task gate. Unicorn's own task switch
cannot be used (with paging on, a far call to a TSS switches the task and then restarts
the call), and under VT-x every task switch is a VM exit the hypervisor carries out, so
the VMM does all of them here, one step per step of the SDM's list:

1. the checks that fault in the old task: the new TSS descriptor (present, a 32-bit
   TSS, limit >= 0x67, available, or busy for IRET), and every page the switch touches;
2. the commit: the old TSS's busy bit cleared (JMP, IRET), the old task's state saved
   (EIP, EFLAGS with NT cleared for IRET, the general and segment registers), the
   previous-task link and NT set (CALL, task gate), the new busy bit set, TR loaded,
   CR0.TS set;
3. the new task's state loaded (CR3, LDTR, EFLAGS, EIP, the registers, the six segment
   registers), each segment checked as Table 7-1 says: a fault here is raised in the
   context of the new task, as the processor does;
4. for an exception with an error code, the error code pushed on the new task's stack.

The engine's TR base is not the guest's (:meth:`vmm.cpu.engine.Engine.virtualize_tr`):
every access the engine itself makes to the TSS, which only task switches, IRET with
NT and call gates to an inner ring make, reaches the VMM instead.
"""
from __future__ import annotations

import struct
from collections.abc import Callable

from ..x86 import CR0, EFLAGS, Access, Descriptor, SystemType, Vector
from ..x86.paging import PAGE_OFFSET_MASK, PAGE_SIZE
from ..x86.segments import (
    DESCRIPTOR_SIZE,
    SELECTOR_INDEX_MASK,
    SELECTOR_MASK,
    SELECTOR_RPL_MASK,
    SELECTOR_TI,
    TaskSource,
)
from .delivery import HAS_ERROR_CODE, DeliveryFault

# -- the 32-bit TSS (Figure 7-2) ------------------------------------------------------------------
TSS_LINK = 0x00
TSS_CR3 = 0x1C
TSS_EIP = 0x20
TSS_EFLAGS = 0x24
TSS_GPRS = 0x28                  # EAX, ECX, EDX, EBX, ESP, EBP, ESI, EDI
TSS_SEGMENTS = 0x48              # ES, CS, SS, DS, FS, GS, one per dword
TSS_LDT = 0x60
TSS_IOMAP = 0x66                 # the I/O permission bitmap's offset from the TSS base
TSS32_MIN_LIMIT = 0x67           # a 32-bit TSS is at least 104 bytes
GPRS = ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi")
SEGMENTS = ("es", "cs", "ss", "ds", "fs", "gs")
_TYPE_BYTE = 5                   # the access byte of a descriptor: its type and P
_BUSY = 0x2                      # type 9 (available) <-> 0xB (busy)
_TSS32_TYPE_BITS = 0xD           # the type without its busy bit
_DR7_LOCAL = 0x55                # L0..L3: cleared by every task switch
_VM86_FLAGS = (Access.P | Access.S | Access.RW | Access.ACCESSED | Access.DPL) << 8   # QEMU's load_seg_vm
_VM86_LIMIT = 0xFFFF
_VM86_SHIFT = 4
SELECTOR_MASK_16 = 0xFFFF


_TASK_TARGETS = frozenset({SystemType.TSS32_AVAILABLE, SystemType.TSS32_BUSY, SystemType.TASK_GATE,
                           SystemType.TSS16_AVAILABLE, SystemType.TSS16_BUSY})


def pushed_error_code(event) -> int | None:
    """The error code a task gate's switch pushes on the new task's stack: an exception's
    that has one (SDM Table 6-1), never a software or external interrupt's."""
    if event.kind == "exception" and event.vector in HAS_ERROR_CODE:
        return event.error_code or 0
    return None


class TaskSwitcher:
    """Switch tasks on the engine's vCPU.

    ``delivery`` gives guest memory as delivery sees it (supervisor, linear; a page
    fault is a :class:`DeliveryFault`) and the descriptor tables; ``load_cr3`` loads the
    new task's CR3 as the mode loads any (the MMU strategy must hear of it).
    """

    def __init__(self, delivery, load_cr3: Callable[[int], None]):
        self.delivery = delivery
        self.engine = delivery.engine
        self.load_cr3 = load_cr3
        self.switches = 0

    # -- guest memory and descriptors ----------------------------------------------------------
    def _read(self, linear: int, size: int) -> bytes:
        return self.delivery._read(linear, size)

    def _write(self, linear: int, data: bytes) -> None:
        """Write ``data``; every page is translated before any byte is written."""
        pieces, offset = [], 0
        while offset < len(data):
            chunk = min(len(data) - offset, PAGE_SIZE - ((linear + offset) & PAGE_OFFSET_MASK))
            pieces.append((self.delivery._translate(linear + offset, True), data[offset:offset + chunk]))
            offset += chunk
        for phys, piece in pieces:
            self.engine.write_phys(phys, piece)

    def _slot(self, selector: int, vector: int, error: int) -> tuple[int, int, int]:
        """(linear address, low dword, high dword) of the descriptor ``selector`` names;
        ``vector(error)`` if it lies outside its table."""
        _, base, limit = self.delivery.table("ldtr" if selector & SELECTOR_TI else "gdtr")
        index = selector & SELECTOR_INDEX_MASK
        if index + DESCRIPTOR_SIZE - 1 > limit:
            raise DeliveryFault(vector, error)
        lo, hi = struct.unpack("<II", self._read(base + index, DESCRIPTOR_SIZE))
        return base + index, lo, hi

    def _set_busy(self, selector: int, busy: bool) -> None:
        _, base, _ = self.delivery.table("gdtr")
        address = base + (selector & SELECTOR_INDEX_MASK) + _TYPE_BYTE
        value = self._read(address, 1)[0]
        self._write(address, bytes([value | _BUSY if busy else value & ~_BUSY]))

    # -- what names the new task -------------------------------------------------------------------
    def far_target(self, selector: int) -> int | None:
        """The TSS selector a far JMP or CALL to ``selector`` switches to, after the checks
        made before any switch (SDM vol. 3 §25.4.2: also before a VM exit): the DPL of the
        TSS descriptor or task gate against CPL and RPL, the gate present. None if the
        selector names neither (a code segment or call gate: not a task switch)."""
        _, lo, hi = self._slot(selector, Vector.GP, selector & SELECTOR_MASK)
        desc = Descriptor.parse(lo, hi)
        kind = desc.access & 0xF if desc.system else None
        if kind not in _TASK_TARGETS:
            return None
        if desc.dpl < max(self.delivery.cpl(), selector & SELECTOR_RPL_MASK):
            raise DeliveryFault(Vector.GP, selector & SELECTOR_MASK)
        if kind != SystemType.TASK_GATE:
            return selector
        if not desc.present:
            raise DeliveryFault(Vector.NP, selector & SELECTOR_MASK)
        return lo >> 16

    def back_link(self) -> int:
        """IRET with NT set: the task in the current TSS's previous-task link."""
        _, tss_base, _ = self.delivery.table("tr")
        return struct.unpack("<H", self._read(tss_base + TSS_LINK, 2))[0]

    def load_tr(self, selector: int) -> None:
        """LTR (at CPL 0; the instruction checked that): an available TSS in the GDT,
        present; marked busy, then loaded."""
        error = selector & SELECTOR_MASK
        if error == 0:
            raise DeliveryFault(Vector.GP, 0)
        if selector & SELECTOR_TI:
            raise DeliveryFault(Vector.GP, error)
        _, lo, hi = self._slot(selector, Vector.GP, error)
        desc = Descriptor.parse(lo, hi)
        if not desc.system or desc.access & 0xF not in (SystemType.TSS32_AVAILABLE, SystemType.TSS16_AVAILABLE):
            raise DeliveryFault(Vector.GP, error)
        if not desc.present:
            raise DeliveryFault(Vector.NP, error)
        self._set_busy(selector, True)
        self.engine.set_tr(selector, desc.base, desc.limit, hi | _BUSY << 8)

    def switch(self, selector: int, source: TaskSource, return_eip: int, *, error_code: int | None = None,
               ext: int = 0) -> None:
        """Switch to the task whose TSS ``selector`` names (SDM §7.3, steps 1-4 above).
        ``return_eip`` is what the old task's TSS keeps as its EIP; ``error_code`` is
        pushed on the new task's stack (an exception through a task gate)."""
        eng = self.engine
        error = (selector & SELECTOR_MASK) | ext
        if selector & SELECTOR_TI:
            raise DeliveryFault(Vector.TS if source is TaskSource.IRET else Vector.GP, error)
        address, lo, hi = self._slot(selector, Vector.TS if source is TaskSource.IRET else Vector.GP, error)
        desc = Descriptor.parse(lo, hi)
        kind = desc.access & 0xF if desc.system else None
        wanted = SystemType.TSS32_BUSY if source is TaskSource.IRET else SystemType.TSS32_AVAILABLE
        if kind in (SystemType.TSS16_AVAILABLE, SystemType.TSS16_BUSY):
            raise DeliveryFault(Vector.GP, error)   # 16-bit TSSs are not modelled: refused as the 80286's
        if kind != wanted:
            raise DeliveryFault(Vector.TS if source is TaskSource.IRET else Vector.GP, error)
        if not desc.present:
            raise DeliveryFault(Vector.NP, error)
        if desc.limit < TSS32_MIN_LIMIT:
            raise DeliveryFault(Vector.TS, error)

        # 1. Everything the switch reads or writes is reachable, before anything changes.
        new = self._read(desc.base, TSS32_MIN_LIMIT + 1)
        old_selector, old_base, _ = self.delivery.table("tr")
        self._write(old_base + TSS_EIP, self._read(old_base + TSS_EIP, TSS_LDT - TSS_EIP))

        # 2. Commit: from here on a fault belongs to the new task.
        eflags = eng.reg("eflags")
        if source in (TaskSource.JMP, TaskSource.IRET):
            self._set_busy(old_selector, False)
        if source is TaskSource.IRET:
            eflags &= ~EFLAGS.NT
        state = struct.pack("<10I", return_eip, eflags, *(eng.reg(r) for r in GPRS))
        state += b"".join(struct.pack("<I", eng.reg(s)) for s in SEGMENTS)
        self._write(old_base + TSS_EIP, state)
        new_eflags = struct.unpack_from("<I", new, TSS_EFLAGS)[0]
        if source in (TaskSource.CALL, TaskSource.TASK_GATE):
            self._write(desc.base + TSS_LINK, struct.pack("<H", old_selector))
            new_eflags |= EFLAGS.NT
        if source is not TaskSource.IRET:
            self._set_busy(selector, True)
        eng.set_tr(selector, desc.base, desc.limit, hi | _BUSY << 8)
        eng.set_reg("cr0", eng.reg("cr0") | CR0.TS)
        self.switches += 1

        # 3. The new task's state.
        if eng.reg("cr0") & CR0.PG:
            self.load_cr3(struct.unpack_from("<I", new, TSS_CR3)[0])
        eng.set_reg("eflags", new_eflags | EFLAGS.FIXED)
        eng.set_reg("eip", struct.unpack_from("<I", new, TSS_EIP)[0])
        for i, name in enumerate(GPRS):
            eng.set_reg(name, struct.unpack_from("<I", new, TSS_GPRS + 4 * i)[0])
        selectors = {s: struct.unpack_from("<H", new, TSS_SEGMENTS + 4 * i)[0] for i, s in enumerate(SEGMENTS)}
        eng.set_reg("dr7", eng.reg("dr7") & ~_DR7_LOCAL)
        self._load_ldt(struct.unpack_from("<H", new, TSS_LDT)[0], ext)
        if new_eflags & EFLAGS.VM:
            for name, value in selectors.items():
                eng.load_segment(name, value, value << _VM86_SHIFT, _VM86_LIMIT, _VM86_FLAGS)
        else:
            self._load_segments(selectors, ext)
        if eng.reg("eip") > self._limit("cs"):
            raise DeliveryFault(Vector.GP, ext)

        # 4. The error code of an exception that came through a task gate.
        if error_code is not None:
            esp = (eng.reg("esp") - 4) & 0xFFFFFFFF
            self._write((self._base("ss") + esp) & 0xFFFFFFFF, struct.pack("<I", error_code))
            eng.set_reg("esp", esp)

    # -- the I/O permission bitmap (SDM vol. 1 §19.5.2) ---------------------------------------------
    def io_permitted(self, port: int, size: int) -> bool:
        """Whether the current TSS's I/O permission bitmap allows ``size`` bytes at
        ``port``, as QEMU's ``check_io`` reads it: a 32-bit TSS of at least 104 bytes, the
        bitmap's offset at 0x66, the two bytes holding the port's bits within the TSS
        limit, and every bit of the ports touched clear."""
        _, base, limit = self.delivery.table("tr")
        if limit < TSS32_MIN_LIMIT:
            return False
        if self.engine.tr_virtualized:
            flags = self.engine.tr_flags() >> 8
            if not flags & Access.P or flags & _TSS32_TYPE_BITS != SystemType.TSS32_AVAILABLE:
                return False
        try:
            offset = struct.unpack("<H", self._read(base + TSS_IOMAP, 2))[0] + (port >> 3)
            if offset + 1 > limit:
                return False
            bits = struct.unpack("<H", self._read(base + offset, 2))[0]
        except DeliveryFault:
            return False   # an unmapped bitmap refuses (QEMU would fault; nothing is written either way)
        return not (bits >> (port & 7)) & ((1 << size) - 1)

    # -- loading the new task's segments (Table 7-1) ----------------------------------------------
    def _load_ldt(self, selector: int, ext: int) -> None:
        eng = self.engine
        if selector & SELECTOR_MASK == 0:
            eng.set_table("ldtr", 0, 0, selector & SELECTOR_MASK, 0)
            return
        error = (selector & SELECTOR_MASK) | ext
        if selector & SELECTOR_TI:
            raise DeliveryFault(Vector.TS, error)
        _, lo, hi = self._slot(selector, Vector.TS, error)
        desc = Descriptor.parse(lo, hi)
        if not desc.system or desc.access & 0xF != SystemType.LDT or not desc.present:
            raise DeliveryFault(Vector.TS, error)
        eng.set_table("ldtr", desc.base, desc.limit, selector, hi)

    def _load_segments(self, selectors: dict[str, int], ext: int) -> None:
        """CS and SS first (they set CPL), then the data segments; each as Table 7-1 checks it."""
        eng = self.engine
        cpl = selectors["cs"] & SELECTOR_RPL_MASK
        for name in ("cs", "ss", "ds", "es", "fs", "gs"):
            selector = selectors[name]
            error = (selector & SELECTOR_MASK) | ext
            if selector & SELECTOR_MASK == 0 and selector & SELECTOR_TI == 0:
                if name in ("cs", "ss"):
                    raise DeliveryFault(Vector.TS, error)
                eng.load_segment(name, selector, 0, 0, 0)   # a null selector: usable until used
                continue
            _, lo, hi = self._slot(selector, Vector.TS, error)
            desc = Descriptor.parse(lo, hi)
            rpl = selector & SELECTOR_RPL_MASK
            if name == "cs":
                ok = desc.code and (desc.dpl <= rpl if desc.conforming else desc.dpl == rpl)
            elif name == "ss":
                ok = desc.writable_data and desc.dpl == cpl and rpl == cpl
            else:
                readable = not desc.system and (not desc.code or bool(desc.access & Access.RW))
                ok = readable and (desc.conforming or (desc.dpl >= cpl and desc.dpl >= rpl))
            if not ok:
                raise DeliveryFault(Vector.TS, error)
            if not desc.present:
                raise DeliveryFault(Vector.SS if name == "ss" else Vector.NP, error)
            eng.load_segment(name, selector, desc.base, desc.limit, hi)

    def _base(self, name: str) -> int:
        return self.engine.segment_cache(name)[1]

    def _limit(self, name: str) -> int:
        return self.engine.segment_cache(name)[2]


__all__ = ["TaskSource", "TaskSwitcher", "far_operand", "pushed_error_code"]


# -- the instructions that reach the VMM -------------------------------------------------------------
_FAR_POINTER = {"ljmp": TaskSource.JMP, "lcall": TaskSource.CALL}   # EA / 9A: ptr16:32 in the instruction
_GROUP5 = 0xFF
_GROUP5_FAR = {3: TaskSource.CALL, 5: TaskSource.JMP}                # FF /3, FF /5: m16:32
_MODRM_REG_SHIFT = 3
_MODRM_REG_MASK = 7
_OPERAND_SIZE_PREFIX = 0x66
_PREFIX_OPERAND_SLOT = 2        # capstone's insn.prefix: [lock/rep, segment, operand size, address size]


def far_operand(insn, read_u16: Callable[[int], int],
                address: Callable[[object], int]) -> tuple[int, TaskSource] | None:
    """(selector, source) of a far JMP or CALL, or None for any other instruction. A
    direct one holds the selector; an indirect one points at an offset (2 or 4 bytes)
    and the selector after it: ``address(insn)`` is that operand's linear address,
    ``read_u16`` reads the selector."""
    if insn.mnemonic in _FAR_POINTER:
        return insn.operands[0].imm & SELECTOR_MASK_16, _FAR_POINTER[insn.mnemonic]
    reg = (insn.modrm >> _MODRM_REG_SHIFT) & _MODRM_REG_MASK
    if insn.opcode[0] == _GROUP5 and reg in _GROUP5_FAR:
        offset = 2 if insn.prefix[_PREFIX_OPERAND_SLOT] == _OPERAND_SIZE_PREFIX else 4
        return read_u16(address(insn) + offset), _GROUP5_FAR[reg]
    return None
