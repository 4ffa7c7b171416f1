"""Emulating a deprivileged kernel's privileged instructions against its virtual CPU.

``trap`` mode asks :meth:`Emulator.trapped` what its ring-1 kernel's #GP is and, through
``VM.dispatch``, has :meth:`Emulator.execute` carry it out: the instruction at EIP is
decoded (capstone) and, if it is one a ring-0 kernel may execute,
applied to the virtual state the VMM keeps (virtual IF, CR0, GDTR, IDTR, TR, LDTR) or to
the real machine where the VMM lets the guest own it (CR2-CR4, debug registers, MSRs,
ports), then EIP moves past it. Anything else raises :class:`NotEmulated` and the #GP
is the guest's. Segments are taken as flat (base 0), as every guest here uses them.
"""
from __future__ import annotations

import struct
from functools import lru_cache

from capstone import CS_ARCH_X86, CS_MODE_32, Cs
from capstone.x86 import X86_OP_IMM, X86_OP_MEM, X86_OP_REG

from ..cpu.cpuid import cr4_reserved
from ..cpu.delivery import GP, PF, Descriptor
from ..cpu.faultaddr import effective_address
from ..cpu.regs import CR0_TS, IF, debug_register
from ..mmu.paging import PageFault
from ..vmx.exits import DECLINE, RESUME, Outcome, Reflect, TrappedInstruction
from ..x86.opcodes import OPERAND_SIZE_PREFIX
from ..x86.registers import ControlRegister
from .memory import PAGING_CR4_BITS

_WIDE = {"ax": "eax", "bx": "ebx", "cx": "ecx", "dx": "edx", "si": "esi", "di": "edi", "sp": "esp", "bp": "ebp",
         "al": "eax", "bl": "ebx", "cl": "ecx", "dl": "edx"}
_HIGH = {"ah": "eax", "bh": "ebx", "ch": "ecx", "dh": "edx"}
IOPL = 3 << 12


class NotEmulated(Exception):
    """The #GP is not a privileged instruction a ring-0 kernel could execute: reflect it."""


class GuestFault(Exception):
    """Emulating the instruction raises an exception in the guest (e.g. #GP(selector))."""

    def __init__(self, vector: int, error_code: int | None = 0):
        super().__init__(vector)
        self.vector, self.error_code = vector, error_code


@lru_cache(maxsize=1)
def decoder() -> Cs:
    cs = Cs(CS_ARCH_X86, CS_MODE_32)
    cs.detail = True
    return cs


class Emulator:
    """The privileged half of the x86 instruction set, for :class:`~vmm.modes.trap.TrapMode`."""

    def __init__(self, mode):
        self.mode = mode
        self.eng = mode.vm.engine
        self._cache: dict[tuple[int, bytes], object] = {}

    # -- operands ----------------------------------------------------------------------------
    def reg(self, name: str) -> int:
        if name in _WIDE:
            value = self.eng.reg(_WIDE[name])
            return value & (0xFF if name.endswith("l") else 0xFFFF)
        if name in _HIGH:
            return (self.eng.reg(_HIGH[name]) >> 8) & 0xFF
        return self.eng.reg(name)

    def set_reg(self, name: str, value: int) -> None:
        if name in _WIDE:
            mask = 0xFF if name.endswith("l") else 0xFFFF
            full = _WIDE[name]
            self.eng.set_reg(full, (self.eng.reg(full) & ~mask) | (value & mask))
        else:
            self.eng.set_reg(name, value)

    def address(self, insn, op) -> int:
        return effective_address(insn, op, self.eng.reg)

    def read(self, insn, op, size: int | None = None) -> int:
        size = size or op.size
        if op.type == X86_OP_REG:
            return self.reg(insn.reg_name(op.reg))
        if op.type == X86_OP_IMM:
            return op.imm & ((1 << (8 * size)) - 1)
        data = self.mode.read_guest(self.address(insn, op), size)
        return int.from_bytes(data, "little")

    def pop(self, n: int) -> list[int]:
        esp = self.eng.reg("esp")
        values = list(struct.unpack(f"<{n}I", self.mode.read_guest(esp, 4 * n)))
        return values

    # -- the instruction ---------------------------------------------------------------------
    def decode(self, eip: int):
        code = self.mode.vm.read_code(eip)
        key = (eip, code)
        insn = self._cache.get(key)
        if insn is None:
            insn = next(decoder().disasm(code, eip, 1), None)
            if insn is None:
                raise NotEmulated("undecodable")
            self._cache[key] = insn
        return insn

    def trapped(self, error_code: int) -> TrappedInstruction | None:
        """The #GP at EIP as a trapped privileged instruction, or None if it is not one
        this emulator knows (the #GP is then the guest's)."""
        try:
            insn = self.decode(self.eng.reg("eip"))
        except NotEmulated:
            return None
        name = insn.mnemonic
        if getattr(self, "op_" + name.replace(" ", "_"), None) is None:
            return None
        return TrappedInstruction(name=_mov_label(insn) if name == "mov" else name, error_code=error_code, insn=insn)

    def execute(self, insn, error_code: int) -> Outcome:
        """Apply ``insn`` (at EIP) to the virtual state and move EIP past it."""
        eip = self.eng.reg("eip")
        name = insn.mnemonic
        if self.eng.interrupt_shadow():
            # This instruction is the one an STI shadows: the shadow ends with it (the
            # engine clears it only after an instruction it completes itself).
            self.eng.set_interrupt_shadow(False)
        try:
            advance = getattr(self, "op_" + name.replace(" ", "_"))(insn, error_code)
        except NotEmulated:
            return DECLINE
        except GuestFault as fault:
            return Reflect(fault.vector, fault.error_code, label=name + " (faulted)")
        except PageFault as pf:
            return Reflect(PF, pf.error_code, pf.address, label="#PF while emulating")
        if advance is not False:
            self.eng.set_reg("eip", (eip + insn.size) & 0xFFFFFFFF)
        return RESUME

    # -- interrupt flag, halt ----------------------------------------------------------------
    def op_cli(self, insn, _):
        self.mode.vif = False

    def op_sti(self, insn, _):
        """STI that sets IF opens the shadow: no interrupt until the next instruction ends
        (the engine's own flag, which it clears after that instruction as for a native STI)."""
        if not self.mode.vif:
            self.eng.set_interrupt_shadow(True)
        self.mode.vif = True

    def op_hlt(self, insn, _):
        """Stop the run past the HLT: the run loop then halts the VM as for a native HLT
        (sleep to the next interrupt, which is delivered before the guest goes on)."""
        self.eng.set_reg("eip", (self.eng.reg("eip") + insn.size) & 0xFFFFFFFF)
        self.eng.end_run_halted()
        return False

    # -- descriptor tables -------------------------------------------------------------------
    def _pseudo_descriptor(self, insn) -> tuple[int, int]:
        op = insn.operands[0]
        if op.type != X86_OP_MEM:
            raise NotEmulated(insn.mnemonic)
        limit, base = struct.unpack("<HI", self.mode.read_guest(self.address(insn, op), 6))
        if insn.prefix[2] == OPERAND_SIZE_PREFIX:
            base &= 0xFFFFFF  # a 16-bit operand size loads a 24-bit base
        return base, limit

    def op_lgdt(self, insn, _):
        self.mode.load_gdt(*self._pseudo_descriptor(insn))

    def op_lidt(self, insn, _):
        base, limit = self._pseudo_descriptor(insn)
        self.mode.virtual_tables["idtr"] = (0, base, limit)

    def _system_segment(self, insn, types: tuple[int, ...]) -> tuple[int, Descriptor | None]:
        selector = self.read(insn, insn.operands[0], 2) & 0xFFFF
        if selector & 0xFFFC == 0:
            return selector, None
        d = self.mode.guest_descriptor(selector)
        if selector & 4 or d is None or not d.system or d.access & 0xF not in types:
            raise GuestFault(GP, selector & 0xFFFC)
        if not d.present:
            raise GuestFault(11, selector & 0xFFFC)
        return selector, d

    def op_ltr(self, insn, _):
        selector, d = self._system_segment(insn, (9,))
        if d is None:
            raise GuestFault(GP, 0)
        _, base, _ = self.mode.virtual_tables["gdtr"]
        slot = base + (selector & 0xFFF8) + 5
        self.mode.write_guest_linear(slot, bytes([self.mode.read_guest(slot, 1)[0] | 2]))  # busy, as LTR does
        self.mode.virtual_tables["tr"] = (selector, d.base, d.limit)
        self.mode.gdt_dirty = True

    def op_lldt(self, insn, _):
        selector, d = self._system_segment(insn, (2,))
        self.mode.virtual_tables["ldtr"] = (selector, d.base, d.limit) if d else (0, 0, 0)
        self.eng.set_table("ldtr", d.base if d else 0, d.limit if d else 0, selector, 0x8200 if d else 0)

    # -- control and debug registers -----------------------------------------------------------
    def op_mov(self, insn, _):
        dst, src = insn.operands
        dst_name = insn.reg_name(dst.reg) if dst.type == X86_OP_REG else ""
        src_name = insn.reg_name(src.reg) if src.type == X86_OP_REG else ""
        if dst_name.startswith("cr"):
            self.write_cr(int(dst_name[2:]), self.reg(src_name))
        elif src_name.startswith("cr"):
            n = int(src_name[2:])
            if n not in (0, 2, 3, 4):
                raise GuestFault(6, None)  # CR1, CR5-CR7 do not exist: #UD
            self.eng.set_reg(dst_name, self.mode.vcr0 if n == 0 else self.eng.reg(src_name))
        elif dst_name.startswith("dr"):
            self.eng.set_reg(self._dr(dst_name), self.reg(src_name))
        elif src_name.startswith("dr"):
            self.eng.set_reg(dst_name, self.eng.reg(self._dr(src_name)))
        elif dst_name == "ss":
            self.load_ss(self.read(insn, src, 2) & 0xFFFF)
        else:
            raise NotEmulated("mov")

    def _dr(self, name: str) -> str:
        dr = debug_register(name, self.eng.reg("cr4"))
        if dr is None:
            raise GuestFault(6, None)
        return dr

    def write_cr(self, n: int, value: int) -> None:
        m = self.mode
        if n == ControlRegister.CR0:
            m.set_cr0(value)
        elif n == ControlRegister.CR3:
            self.eng.set_reg("cr3", value)
            m.guest_cr3_loaded(value)
        elif n == ControlRegister.CR4:
            if cr4_reserved(value):
                raise GuestFault(GP, 0)
            old = self.eng.reg("cr4")
            self.eng.set_reg("cr4", value)
            if (old ^ value) & PAGING_CR4_BITS:
                m.paging_mode_changed()
        elif n == ControlRegister.CR2:
            self.eng.set_reg("cr2", value)
        else:
            raise GuestFault(6, None)

    def op_clts(self, insn, _):
        self.mode.set_cr0(self.mode.vcr0 & ~CR0_TS)

    def op_lmsw(self, insn, _):
        value = self.read(insn, insn.operands[0], 2)
        cr0 = self.mode.vcr0
        self.mode.set_cr0((cr0 & ~0xE) | (value & 0xF) | (cr0 & 1))  # LMSW cannot clear PE

    def op_invlpg(self, insn, _):
        self.mode.guest_invlpg(self.address(insn, insn.operands[0]))

    def op_wbinvd(self, insn, _):
        pass

    op_invd = op_wbinvd

    # -- MSRs --------------------------------------------------------------------------------
    def op_rdmsr(self, insn, _):
        if not self.mode.msrs.rdmsr():   # the CPU model's table (vmm.cpu.msrs)
            raise GuestFault(GP, 0)

    def op_wrmsr(self, insn, _):
        if not self.mode.msrs.wrmsr():
            raise GuestFault(GP, 0)

    # -- ports -------------------------------------------------------------------------------
    def op_in(self, insn, _):
        dst, port_op = insn.operands
        port = self.read(insn, port_op, 2) & 0xFFFF
        value = self.mode.vm.board.port_bus.read(port, dst.size)
        self.set_reg(insn.reg_name(dst.reg), value)

    def op_out(self, insn, _):
        port_op, src = insn.operands
        port = self.read(insn, port_op, 2) & 0xFFFF
        self.mode.io_direct(port, src.size, self.reg(insn.reg_name(src.reg)))

    # -- returns to RPL 0 and SS loads: what ring 1 may not do itself --------------------------
    def load_ss(self, selector: int) -> None:
        d = self.mode.guest_descriptor(selector)
        if selector & 0xFFFC == 0 or d is None or not d.writable_data or d.dpl != selector & 3:
            raise GuestFault(GP, selector & 0xFFFC)
        self.eng.set_reg("ss", self.mode.real_selector(selector))

    def op_pop(self, insn, _):
        op = insn.operands[0]
        if op.type != X86_OP_REG or insn.reg_name(op.reg) != "ss":
            raise NotEmulated("pop")
        (selector,) = self.pop(1)
        self.load_ss(selector & 0xFFFF)
        self.eng.set_reg("esp", (self.eng.reg("esp") + 4) & 0xFFFFFFFF)

    def _code_target(self, selector: int) -> int:
        d = self.mode.guest_descriptor(selector)
        if selector & 0xFFFC == 0 or d is None or not d.code or d.dpl != selector & 3:
            raise GuestFault(GP, selector & 0xFFFC)
        return self.mode.real_selector(selector)

    def op_retf(self, insn, _):
        eip, cs = self.pop(2)
        if cs & 3 != 0:
            raise NotEmulated("retf")  # an outer-ring return faulted for its own reasons
        extra = self.read(insn, insn.operands[0], 2) if insn.operands else 0
        self.eng.set_reg("cs", self._code_target(cs & 0xFFFF))
        self.eng.set_reg("esp", (self.eng.reg("esp") + 8 + extra) & 0xFFFFFFFF)
        self.eng.set_reg("eip", eip)
        return False

    def op_iretd(self, insn, _):
        """An IRET through a frame the VMM built (CS with RPL 0): return within the
        guest kernel, restoring the virtual IF the hardware IRET would have restored."""
        eip, cs, eflags = self.pop(3)
        if cs & 3 != 0:
            raise NotEmulated("iretd")
        self.eng.set_reg("cs", self._code_target(cs & 0xFFFF))
        self.eng.set_reg("esp", (self.eng.reg("esp") + 12) & 0xFFFFFFFF)
        self.mode.vif = bool(eflags & IF)
        self.eng.set_nmi_blocked(False)   # an IRET ends NMI blocking (SDM vol. 3 §6.7.1)
        self.eng.set_reg("eflags", (eflags & ~IOPL) | IF | 2)
        self.eng.set_reg("eip", eip)
        return False

    op_iret = op_iretd


def _mov_label(insn) -> str:
    """"mov cr3, r" / "mov r, cr0" / "mov dr7, r" / "mov ss": statistics by what moved."""
    names = [insn.reg_name(op.reg) if op.type == X86_OP_REG else "m" for op in insn.operands]
    special = [n for n in names if n[:2] in ("cr", "dr") or n == "ss"]
    if not special:
        return "mov"
    s = special[0]
    return f"mov {s}, r" if names[0] == s else f"mov r, {s}"
