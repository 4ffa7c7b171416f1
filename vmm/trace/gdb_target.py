"""What gdb sees of the target: an i386 with gdb's own register layout, one thread, and
the signals its stops carry.

The layout is the ``org.gnu.gdb.i386.core`` feature of gdb's ``features/i386/32bit-core.xml``
(eax..edi, eip, eflags, the six selectors, then st0-st7 and the x87 control words, which
gdb requires of that feature: they read as zeros, writes are ignored). The ``g`` packet
and ``p``/``P`` register numbers follow :data:`REGISTERS`.
"""
from __future__ import annotations

from ..vm import StopKind

THREAD_ID = 1

# gdb's signal numbers (include/gdb/signals.def), which is what T/X/S/C carry.
SIGINT, SIGTRAP, SIGABRT, SIGSEGV, SIGALRM, SIGTERM, SIGXCPU = 2, 5, 6, 11, 14, 15, 24
STOP_SIGNALS = {
    StopKind.TRIPLE_FAULT: SIGSEGV,
    StopKind.HALTED: SIGTERM,
    StopKind.BUDGET: SIGXCPU,
    StopKind.TIMEOUT: SIGALRM,
    StopKind.ERROR: SIGABRT,
    StopKind.ENTRY_FAILED: SIGABRT,
}

# (name, bits, type) in target-description order: the g packet is this order.
REGISTERS: tuple[tuple[str, int, str], ...] = (
    ("eax", 32, "int32"), ("ecx", 32, "int32"), ("edx", 32, "int32"), ("ebx", 32, "int32"),
    ("esp", 32, "data_ptr"), ("ebp", 32, "data_ptr"), ("esi", 32, "int32"), ("edi", 32, "int32"),
    ("eip", 32, "code_ptr"), ("eflags", 32, "i386_eflags"),
    ("cs", 32, "int32"), ("ss", 32, "int32"), ("ds", 32, "int32"),
    ("es", 32, "int32"), ("fs", 32, "int32"), ("gs", 32, "int32"),
    *((f"st{i}", 80, "i387_ext") for i in range(8)),
    *((name, 32, "int") for name in ("fctrl", "fstat", "ftag", "fiseg", "fioff", "foseg", "fooff", "fop")),
)
ENGINE_REGISTERS = 16         # the first 16 are the vCPU's; the x87 ones read as zeros
_EFLAGS_FIELDS = (("CF", 0), ("", 1), ("PF", 2), ("AF", 4), ("ZF", 6), ("SF", 7), ("TF", 8), ("IF", 9),
                  ("DF", 10), ("OF", 11), ("NT", 14), ("RF", 16), ("VM", 17), ("AC", 18), ("VIF", 19),
                  ("VIP", 20), ("ID", 21))


def target_xml() -> str:
    """The target description: i386, one feature as gdb's ``features/i386/32bit-core.xml``."""
    fields = "\n".join(f'    <field name="{n}" start="{b}" end="{b}"/>' for n, b in _EFLAGS_FIELDS)
    regs = []
    for name, bits, typ in REGISTERS:
        group = ' group="float"' if typ == "int" else ""
        regs.append(f'  <reg name="{name}" bitsize="{bits}" type="{typ}"{group}/>')
    return ('<?xml version="1.0"?>\n'
            '<!DOCTYPE target SYSTEM "gdb-target.dtd">\n'
            '<target version="1.0">\n'
            '<architecture>i386</architecture>\n'
            '<feature name="org.gnu.gdb.i386.core">\n'
            '  <flags id="i386_eflags" size="4">\n'
            f'{fields}\n'
            '  </flags>\n'
            + "\n".join(regs) + "\n"
            '</feature>\n'
            '</target>\n')
