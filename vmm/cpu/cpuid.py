"""The engine's own CPUID answers, read once from a scratch CPU.

A hypervisor passes most CPUID leaves through from the real processor and edits a
few (the hypervisor bit, the 0x4000_0000 range). Our "real processor" is Unicorn's
emulated one, so its answers are read by executing CPUID in a scratch engine.
"""
from __future__ import annotations

from functools import lru_cache

from unicorn import UC_ARCH_X86, UC_MODE_32, Uc
from unicorn import x86_const as X

_CPUID = b"\x0f\xa2"


def _query(uc: Uc, leaf: int, subleaf: int = 0) -> tuple[int, int, int, int]:
    uc.reg_write(X.UC_X86_REG_EAX, leaf)
    uc.reg_write(X.UC_X86_REG_ECX, subleaf)
    uc.emu_start(0x1000, 0x1000 + len(_CPUID))
    return tuple(uc.reg_read(r) for r in (X.UC_X86_REG_EAX, X.UC_X86_REG_EBX,
                                          X.UC_X86_REG_ECX, X.UC_X86_REG_EDX))


@lru_cache(maxsize=1)
def host_cpuid() -> dict[int, tuple[int, int, int, int]]:
    """Leaf -> (EAX, EBX, ECX, EDX) for the basic and extended ranges (subleaf 0)."""
    uc = Uc(UC_ARCH_X86, UC_MODE_32)
    uc.mem_map(0, 0x2000)
    uc.mem_write(0x1000, _CPUID)
    leaves = {}
    for base in (0, 0x80000000):
        top = _query(uc, base)[0]
        for leaf in range(base, min(top, base + 0x40) + 1):
            leaves[leaf] = _query(uc, leaf)
    return leaves
