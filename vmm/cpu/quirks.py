"""Unicorn's x86 exception state, found by probing, and the fix for its escalation quirk.

Unicorn never delivers exceptions through the guest IDT: it reports the vector to
``UC_HOOK_INTR`` and leaves delivery to us. Three facts it does not report, and which we
need, live in QEMU's ``CPUX86State`` inside the saved context:

* ``error_code``: the error code of #GP/#TS/#NP/#SS (the hook gets the vector only);
* ``exception_is_int``: 1 for INT n / INT3 / INTO (software interrupts, trap-like, which
  must pass the gate-DPL check), 0 for faults;
* ``old_exception``: QEMU's record of the exception being delivered. A real IDT delivery
  clears it; Unicorn never performs one, so it stays set and the *next* contributory fault
  or #PF is reported as #DF (8), the one after that as a triple fault (unicorn issues
  #578, #1883). :func:`clear_pending_exception` writes -1 back after every handled event.

The offsets are not hard-coded: :func:`probe_offsets` runs three tiny programs in scratch
engines at start-up and finds each field by diffing the saved context bytes.
"""
from __future__ import annotations

import ctypes
import struct
from dataclasses import dataclass
from functools import lru_cache

from unicorn import UC_ARCH_X86, UC_HOOK_INTR, UC_MODE_32, Uc

from ..x86 import Vector

# Machine code of the probes (assembled once by hand so the probe needs no assembler):
#   mov ds, word [0x2000]             -> #GP(SEL & 0xfffc): GDT limit is 0 (SEL stored at 0x2000,
#                                        not in a register, so only error_code holds it)
#   int 0x80                          -> software interrupt
#   xor ecx, ecx ; div ecx            -> #DE
_LOAD_DS = bytes.fromhex("8e1d00200000")
_SEL_AT = 0x2000
_INT80 = bytes.fromhex("cd80")
_DIVZERO = bytes.fromhex("31c9f7f1")
_BASE = 0x1000
_SELECTOR_A, _SELECTOR_B = 0x1234, 0x2008   # two selectors whose #GP error codes tell the field apart
_NO_EXCEPTION = -1                           # QEMU's old_exception when nothing is pending


@dataclass(frozen=True)
class ExceptionFields:
    """Byte offsets of QEMU exception fields inside a saved Unicorn x86 context."""

    error_code: int
    is_int: int
    old_exception: int


def _run_probe(code: bytes, selector: int = 0) -> tuple[tuple[int, ...], tuple[int, ...]]:
    uc = Uc(UC_ARCH_X86, UC_MODE_32)
    uc.mem_map(0, 0x10000)
    uc.mem_write(_BASE, code)
    uc.mem_write(_SEL_AT, struct.pack("<H", selector))
    clean = bytes(uc.context_save())
    uc.hook_add(UC_HOOK_INTR, lambda u, vector, data: u.emu_stop())
    uc.emu_start(_BASE, _BASE + len(code))
    after = bytes(uc.context_save())
    n = len(clean) // 4
    return struct.unpack_from(f"<{n}i", clean), struct.unpack_from(f"<{n}i", after)


def _single(name: str, found: list[int]) -> int:
    if len(found) != 1:
        raise RuntimeError(f"cannot locate QEMU's {name} in the Unicorn context (candidates {found}); "
                           "this Unicorn build differs from the one vmm was written for")
    return found[0] * 4


@lru_cache(maxsize=1)
def probe_offsets() -> ExceptionFields:
    """Find the fields by running probes that set them to distinct, known values."""
    gp_clean, gp1 = _run_probe(_LOAD_DS, _SELECTOR_A)   # #GP, error code _SELECTOR_A
    _, gp2 = _run_probe(_LOAD_DS, _SELECTOR_B)          # #GP, error code _SELECTOR_B
    _, soft = _run_probe(_INT80)
    _, de = _run_probe(_DIVZERO)
    idx = range(len(gp1))
    error_code = _single("error_code", [i for i in idx if gp1[i] == _SELECTOR_A and gp2[i] == _SELECTOR_B])
    is_int = _single("exception_is_int", [i for i in idx if soft[i] == 1 and de[i] == 0 and gp1[i] == 0])
    old = _single("old_exception", [i for i in idx if gp_clean[i] == _NO_EXCEPTION and de[i] == Vector.DE
                                    and gp1[i] == Vector.GP and soft[i] == _NO_EXCEPTION])
    return ExceptionFields(error_code, is_int, old)


def _context_int(ctx, offset: int) -> int:
    return struct.unpack_from("<i", bytes(ctx), offset)[0]


def read_exception_info(uc: Uc) -> tuple[int, bool]:
    """(error code, is software interrupt) of the exception Unicorn just reported."""
    fields = probe_offsets()
    ctx = uc.context_save()
    raw = bytes(ctx)
    return (struct.unpack_from("<I", raw, fields.error_code)[0],
            struct.unpack_from("<i", raw, fields.is_int)[0] != 0)


def clear_pending_exception(uc: Uc) -> None:
    """Forget the exception Unicorn reported, so the next one keeps its true vector.

    Call after every exception handled outside Unicorn (delivered by the VMM, or turned
    into a VM exit). Without it the second #DE/#GP/#PF in a row arrives as #DF (8).
    """
    fields = probe_offsets()
    ctx = uc.context_save()
    base = ctypes.cast(ctx.context, ctypes.c_void_p).value
    ctypes.memmove(base + fields.old_exception, struct.pack("<i", _NO_EXCEPTION), 4)
    uc.context_restore(ctx)
