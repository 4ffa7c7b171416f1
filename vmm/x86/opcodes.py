"""Instruction-encoding numbers the decoders and the binary translator's scanners use
(SDM vol. 2 §2.1 "Instruction Format for Protected Mode, Real-Address Mode, and
Virtual-8086 Mode", §2.1.5 "Addressing-Mode Encoding of ModR/M and SIB Bytes", and
Appendix A "Opcode Map").
"""
from __future__ import annotations

MAX_INSTRUCTION_LENGTH = 15
"""No instruction is longer than 15 bytes, prefixes included (vol. 2 §2.3.11)."""

PREFIX_GROUPS = 4
"""Legacy prefixes come in four groups, at most one from each (vol. 2 §2.1.1): a scanner
looking back from an opcode need not look more than four bytes."""

OPERAND_SIZE_PREFIX = 0x66
"""Group 3 prefix: the other operand size (16 bits in a 32-bit code segment)."""

TWO_BYTE_ESCAPE = 0x0F
"""The first byte of every two-byte opcode (Table A-3)."""

GROUP5_OPCODE = 0xFF
"""Group 5: INC, DEC, near/far CALL, near/far JMP and PUSH Ev, told apart by ModRM.reg
(Table A-6)."""

MODRM_MOD_RM_MASK = 0xC7
"""ModRM bits 7:6 (mod) and 2:0 (r/m), without the reg field."""

MODRM_DISP32 = 0x05
"""mod = 00, r/m = 101: a disp32 with no base register (Table 2-2)."""
