"""Register names for the 32-bit vCPU, and the Unicorn constants behind them."""
from __future__ import annotations

from unicorn import x86_const as X

GPRS = ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi")
SEGMENTS = ("es", "cs", "ss", "ds", "fs", "gs")
CONTROL = ("cr0", "cr2", "cr3", "cr4")

UC_REG = {name: getattr(X, f"UC_X86_REG_{name.upper()}") for name in
          GPRS + SEGMENTS + CONTROL + ("eip", "eflags", "dr0", "dr1", "dr2", "dr3", "dr6", "dr7")}
UC_TABLE = {"gdtr": X.UC_X86_REG_GDTR, "idtr": X.UC_X86_REG_IDTR,
            "ldtr": X.UC_X86_REG_LDTR, "tr": X.UC_X86_REG_TR}

# EFLAGS bits (SDM vol. 1 §3.4.3)
CF, PF, AF, ZF, SF, TF, IF, DF, OF = 1 << 0, 1 << 2, 1 << 4, 1 << 6, 1 << 7, 1 << 8, 1 << 9, 1 << 10, 1 << 11
IOPL_SHIFT, NT, RF, VM, AC = 12, 1 << 14, 1 << 16, 1 << 17, 1 << 18

# CR0 / CR4 bits (SDM vol. 3 §2.5)
CR0_PE, CR0_MP, CR0_EM, CR0_TS, CR0_ET, CR0_NE = 1, 2, 4, 8, 0x10, 0x20
CR0_WP, CR0_AM, CR0_NW, CR0_CD, CR0_PG = 1 << 16, 1 << 18, 1 << 29, 1 << 30, 1 << 31
CR4_VME, CR4_PVI, CR4_TSD, CR4_DE, CR4_PSE, CR4_PAE, CR4_MCE, CR4_PGE = (1 << i for i in range(8))
CR4_SMEP, CR4_SMAP = 1 << 20, 1 << 21


def debug_register(name: str, cr4: int) -> str | None:
    """The engine register a MOV DRn names: DR4/DR5 alias DR6/DR7 while CR4.DE = 0 and
    raise #UD with CR4.DE = 1 (SDM vol. 3 §18.2.2); None means #UD."""
    if name in ("dr4", "dr5"):
        return None if cr4 & CR4_DE else ("dr6" if name == "dr4" else "dr7")
    return name if name in UC_REG else None
