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


def run_raw_unicorn(code: bytes, base: int = LOAD_ADDRESS, hooks=()) -> float:
    """Seconds for plain Unicorn (no VMM) to run ``code`` at ``base`` until its OUT.

    ``hooks``: ``(insn, callback)`` pairs added as UC_HOOK_INSN before the run.
    """
    import time

    from unicorn import UC_ARCH_X86, UC_HOOK_INSN, UC_MODE_32, Uc
    from unicorn import x86_const as X

    uc = Uc(UC_ARCH_X86, UC_MODE_32)
    uc.mem_map(0, 16 << 20)
    uc.mem_write(base, code)
    for insn, callback in hooks:
        uc.hook_add(UC_HOOK_INSN, callback, None, 1, 0, insn)
    uc.hook_add(UC_HOOK_INSN, lambda uc, port, size, value, data: uc.emu_stop(), None, 1, 0, X.UC_X86_INS_OUT)
    start = time.perf_counter()
    uc.emu_start(base, 0)
    return time.perf_counter() - start
