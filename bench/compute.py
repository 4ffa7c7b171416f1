"""A compute-bound guest loop, shared by the engine benchmarks.

The loop body is four instructions (ADD, XOR, DEC, JNZ) run ``iterations`` times, so the
guest's instruction count is known exactly: 4 * iterations + the few around it.
"""
from __future__ import annotations

from keystone import KS_ARCH_X86, KS_MODE_32, Ks

LOAD_ADDRESS = 0x100000
DEBUG_EXIT_PORT = 0xF4


def compute_loop(iterations: int) -> tuple[bytes, int]:
    """Flat 32-bit code at LOAD_ADDRESS; returns (code, instructions executed before HLT/exit)."""
    src = f"""
        mov ecx, {iterations}
        xor eax, eax
    spin:
        add eax, ecx
        xor ebx, eax
        dec ecx
        jnz spin
        mov al, 0
        out {DEBUG_EXIT_PORT}, al
        hlt
    """
    code = bytes(Ks(KS_ARCH_X86, KS_MODE_32).asm(src, LOAD_ADDRESS)[0])
    return code, 2 + 4 * iterations + 2
