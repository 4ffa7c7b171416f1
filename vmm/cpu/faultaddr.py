"""The exact faulting address (CR2) of a page fault seen through the TLB-fill hook.

Unicorn's ``UC_HOOK_TLB_FILL`` hands the VMM the page-aligned address of a TLB miss, not
the byte the instruction touched, but the SDM puts the exact linear address in CR2
(vol. 3 §4.7) and guests print it. We recover it from the faulting instruction, decoded
once with capstone: the effective address of an explicit memory operand, else the
implicit ones (stack for PUSH/CALL/POP/RET/IRET, ESI/EDI for string instructions), and
take the first that lies in the faulting page. An access that crosses into the faulting
page from the page below faults at the page's first byte, which is the fallback.
"""
from __future__ import annotations

from functools import lru_cache

from capstone import CS_ARCH_X86, CS_MODE_16, CS_MODE_32, Cs
from capstone.x86 import X86_OP_MEM

from ..x86.paging import ADDRESS_MASK_32, PAGE_MASK

# Legacy prefixes, by the capstone prefix-array slot that holds them (SDM vol. 2 §2.1.1).
OPERAND_SIZE_PREFIX, OPERAND_SIZE_SLOT = 0x66, 2
ADDRESS_SIZE_PREFIX, ADDRESS_SIZE_SLOT = 0x67, 3
_MASK_16 = 0xFFFF
_CODE_32 = 32              # the default code size the decoder is built for


@lru_cache(maxsize=2)
def _decoder(bits: int) -> Cs:
    cs = Cs(CS_ARCH_X86, CS_MODE_32 if bits == _CODE_32 else CS_MODE_16)
    cs.detail = True
    return cs


_WIDE = {"ax": "eax", "bx": "ebx", "cx": "ecx", "dx": "edx", "si": "esi", "di": "edi", "sp": "esp", "bp": "ebp"}


def register16(reg, name: str) -> int:
    """A 16-bit register operand (LTR AX), read through its 32-bit register."""
    return reg(_WIDE.get(name, name)) & _MASK_16


def _address_register(reg, name: str) -> int:
    """A base or index register: 32-bit, or the low half of one (a 0x67 prefix makes
    the address 16-bit: [bx+si], [di]...); segment and other registers count 0."""
    if name in _WIDE:
        return reg(_WIDE[name]) & _MASK_16
    try:
        return reg(name)
    except KeyError:
        return 0


def effective_address(insn, op, reg) -> int:
    """The offset a capstone memory operand addresses (segment base not added: every
    guest here uses flat segments); ``reg(name)`` reads a 32-bit register."""
    m = op.mem
    ea = m.disp
    if m.base:
        ea += _address_register(reg, insn.reg_name(m.base))
    if m.index:
        ea += _address_register(reg, insn.reg_name(m.index)) * m.scale
    if insn.prefix[ADDRESS_SIZE_SLOT] == ADDRESS_SIZE_PREFIX:
        ea &= _MASK_16
    return ea & ADDRESS_MASK_32


def _candidates(insn, reg) -> list[int]:
    out = [effective_address(insn, op, reg) for op in insn.operands if op.type == X86_OP_MEM]
    esp = reg("esp")
    size = 2 if insn.prefix[OPERAND_SIZE_SLOT] == OPERAND_SIZE_PREFIX else 4
    m = insn.mnemonic
    if m.startswith(("push", "call", "int", "enter")):
        out += [esp - size, esp - 2 * size, esp - 3 * size]
    if m.startswith(("pop", "ret", "iret", "leave")):
        out += [esp, reg("ebp")]
    if m.startswith(("movs", "stos", "lods", "cmps", "scas", "ins", "outs")) or m.startswith("rep"):
        out += [reg("edi"), reg("esi")]
    return [a & ADDRESS_MASK_32 for a in out]


def precise_fault_address(page: int, access: str, eip: int, code: bytes, reg, bits: int = 32) -> int:
    """The linear address for CR2, given the faulting ``page`` and the code at ``eip``.

    ``code`` holds up to 15 bytes at EIP (already fetched: a data fault means the
    instruction was decoded); ``reg(name)`` reads a register.
    """
    page &= PAGE_MASK
    if access == "fetch":
        return eip if eip & PAGE_MASK == page else page
    for insn in _decoder(bits).disasm(code, eip, 1):
        for addr in _candidates(insn, reg):
            if addr & PAGE_MASK == page:
                return addr
    return page
