"""The engine's own CPUID answers, read once from a scratch CPU.

A hypervisor passes most CPUID leaves through from the real processor and edits a
few (the hypervisor bit, the 0x4000_0000 range). Our "real processor" is Unicorn's
emulated one, so its answers are read by executing CPUID in a scratch engine.
"""
from __future__ import annotations

from functools import lru_cache

from unicorn import UC_ARCH_X86, UC_MODE_32, Uc
from unicorn import x86_const as X

from ..x86.cpuid import BASIC_RANGE_LIMIT, Leaf

_CPUID = b"\x0f\xa2"
_SCRATCH = 0x1000          # where the scratch engine keeps its one instruction
_SCRATCH_MAP = 0x2000


def _query(uc: Uc, leaf: int, subleaf: int = 0) -> tuple[int, int, int, int]:
    uc.reg_write(X.UC_X86_REG_EAX, leaf)
    uc.reg_write(X.UC_X86_REG_ECX, subleaf)
    uc.emu_start(_SCRATCH, _SCRATCH + len(_CPUID))
    return tuple(uc.reg_read(r) for r in (X.UC_X86_REG_EAX, X.UC_X86_REG_EBX,
                                          X.UC_X86_REG_ECX, X.UC_X86_REG_EDX))


@lru_cache(maxsize=1)
def host_cpuid() -> dict[int, tuple[int, int, int, int]]:
    """Leaf -> (EAX, EBX, ECX, EDX) for the basic and extended ranges (subleaf 0)."""
    uc = Uc(UC_ARCH_X86, UC_MODE_32)
    uc.mem_map(0, _SCRATCH_MAP)
    uc.mem_write(_SCRATCH, _CPUID)
    leaves = {}
    for base in (Leaf.VENDOR, Leaf.EXTENDED):
        top = _query(uc, base)[0]
        for leaf in range(base, min(top, base + BASIC_RANGE_LIMIT) + 1):
            leaves[leaf] = _query(uc, leaf)
    return leaves
