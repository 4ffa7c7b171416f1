"""Register names for the 32-bit vCPU, and the Unicorn constants behind them.

The architectural bits of these registers (EFLAGS, CR0, CR4, ...) are named in
:mod:`vmm.x86.registers`.
"""
from __future__ import annotations

from unicorn import x86_const as X

from ..x86 import CR0, CR4, EFLAGS, IOPL_SHIFT

GPRS = ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi")
SEGMENTS = ("es", "cs", "ss", "ds", "fs", "gs")
CONTROL = ("cr0", "cr2", "cr3", "cr4")

UC_REG = {name: getattr(X, f"UC_X86_REG_{name.upper()}") for name in
          GPRS + SEGMENTS + CONTROL + ("eip", "eflags", "dr0", "dr1", "dr2", "dr3", "dr6", "dr7")}
UC_TABLE = {"gdtr": X.UC_X86_REG_GDTR, "idtr": X.UC_X86_REG_IDTR,
            "ldtr": X.UC_X86_REG_LDTR, "tr": X.UC_X86_REG_TR}

# Old spellings, still imported by vmm/modes and vmm/vmx (their owners move to vmm.x86:
# EFLAGS.IF, CR0.PG, ...). The EFLAGS letters that were also vector names (PF, OF, DF)
# are gone: they are EFLAGS.PF/OF/DF now, and Vector.PF/OF/DF are the vectors.
IF, VM = EFLAGS.IF, EFLAGS.VM
CR0_PE, CR0_TS, CR0_ET, CR0_WP, CR0_PG = CR0.PE, CR0.TS, CR0.ET, CR0.WP, CR0.PG
CR4_PSE = CR4.PSE
__all__ = ["CONTROL", "CR0_ET", "CR0_PE", "CR0_PG", "CR0_TS", "CR0_WP", "CR4_PSE", "GPRS", "IF", "IOPL_SHIFT",
           "SEGMENTS", "UC_REG", "UC_TABLE", "VM", "debug_register"]

_ALIASED_DEBUG_REGISTERS = {"dr4": "dr6", "dr5": "dr7"}


def debug_register(name: str, cr4: int) -> str | None:
    """The engine register a MOV DRn names: DR4/DR5 alias DR6/DR7 while CR4.DE = 0 and
    raise #UD with CR4.DE = 1 (SDM vol. 3 §18.2.2); None means #UD."""
    if name in _ALIASED_DEBUG_REGISTERS:
        return None if cr4 & CR4.DE else _ALIASED_DEBUG_REGISTERS[name]
    return name if name in UC_REG else None
