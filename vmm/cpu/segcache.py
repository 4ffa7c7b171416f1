"""The engine's hidden segment state, written directly: what a task switch loads.

A task switch loads all six segment registers from the new TSS, in whatever ring the
new task runs (SDM vol. 3 §7.3). Unicorn's register write loads a segment the way MOV
does (RPL and DPL must equal the current CPL), so no ring but the current one can be
entered that way. QEMU keeps each register's hidden part in ``CPUX86State.segs[]``
(``SegmentCache``: selector, base, limit, and the descriptor's high dword as flags) and
derives CPL, CS.D, SS.B and ADDSEG in ``hflags`` from them in
``cpu_x86_load_seg_cache``. :func:`load_segment` does what that function does, once the
VMM has made the checks the SDM lists for the switch.

TR is one more ``SegmentCache``, after the six segment registers and LDTR. The VMM
keeps the guest's TR base itself and gives the engine one above 4 GiB
(:meth:`vmm.cpu.engine.Engine.virtualize_tr`); Unicorn's register write keeps 32 bits
of a base, so :func:`set_tr_base` writes it here.
"""
from __future__ import annotations

import ctypes
import struct
from functools import lru_cache

from unicorn import UC_ARCH_X86, UC_MODE_32, Uc
from unicorn.x86_const import UC_X86_REG_CR0, UC_X86_REG_DS, UC_X86_REG_EFLAGS, UC_X86_REG_TR

from . import quirks

SEGMENT_CACHE = struct.Struct("<I4xQII")     # selector, base, limit, flags (64-bit target_ulong)
SEGMENT_INDEX = {"es": 0, "cs": 1, "ss": 2, "ds": 3, "fs": 4, "gs": 5}   # QEMU's R_ES..R_GS
_TR_INDEX = 7                 # after segs[0..5] and LDTR
_SCAN = 0x800                 # bytes of CPUX86State searched (the caches follow the registers)
_PROBE_TR = (0x1238, 0x12345000, 0x6789, 0x8B00)
_PROBE_DS = 0x1234            # a real-mode load: base = selector * 16

# hflags bits cpu_x86_load_seg_cache maintains (QEMU's HF_*_MASK)
HF_CPL_MASK = 3
HF_CS32 = 1 << 4
HF_SS32 = 1 << 5
HF_ADDSEG = 1 << 6
_DESC_B = 1 << 22             # D/B in the descriptor's high dword
_DESC_DPL_SHIFT = 13
_CR0_PE = 1
_EFLAGS_VM = 1 << 17


@lru_cache(maxsize=1)
def probe_segments() -> int:
    """Offset of ``segs[0]`` in CPUX86State: found from TR written through Unicorn (an
    unmistakable selector, base, limit and flags), and checked against a real-mode DS
    load, which must land in ``segs[R_DS]``."""
    uc = Uc(UC_ARCH_X86, UC_MODE_32)
    uc.mem_map(0, 0x10000)
    uc.reg_write(UC_X86_REG_TR, _PROBE_TR)
    env = quirks.env_address(uc)
    raw = ctypes.string_at(env, _SCAN)
    found = [o for o in range(0, _SCAN - SEGMENT_CACHE.size, 4) if SEGMENT_CACHE.unpack_from(raw, o) == _PROBE_TR]
    if len(found) != 1:
        raise RuntimeError(f"cannot locate QEMU's TR segment cache (candidates {found}); this Unicorn build "
                           "differs from the one vmm was written for")
    segs = found[0] - _TR_INDEX * SEGMENT_CACHE.size
    uc.reg_write(UC_X86_REG_CR0, 0)
    uc.reg_write(UC_X86_REG_DS, _PROBE_DS)
    ds = SEGMENT_CACHE.unpack_from(ctypes.string_at(env + segs + SEGMENT_INDEX["ds"] * SEGMENT_CACHE.size,
                                                    SEGMENT_CACHE.size))
    if ds[:2] != (_PROBE_DS, _PROBE_DS << 4):
        raise RuntimeError("cannot locate QEMU's segment caches before TR; this Unicorn build differs from "
                           "the one vmm was written for")
    return segs


def _cache(uc: Uc, index: int) -> int:
    return quirks.env_address(uc) + probe_segments() + index * SEGMENT_CACHE.size


def set_tr_base(uc: Uc, base: int) -> None:
    """TR's hidden base, all 64 bits of it."""
    ctypes.c_uint64.from_address(_cache(uc, _TR_INDEX) + 8).value = base


def load_segment(uc: Uc, name: str, selector: int, base: int, limit: int, flags: int) -> None:
    """Load segment register ``name`` with this hidden state as QEMU's
    ``cpu_x86_load_seg_cache`` does, ``hflags`` included (protected mode, no long mode)."""
    index = SEGMENT_INDEX[name]
    ctypes.memmove(_cache(uc, index), SEGMENT_CACHE.pack(selector & 0xFFFF, base, limit, flags), SEGMENT_CACHE.size)
    hflags = quirks.hflags_word(uc)
    value = hflags.value
    if name == "cs":
        value = (value & ~HF_CS32) | (HF_CS32 if flags & _DESC_B else 0)
    if name == "ss":
        value = (value & ~HF_CPL_MASK) | (flags >> _DESC_DPL_SHIFT) & HF_CPL_MASK
    ss_flags = _read(uc, SEGMENT_INDEX["ss"])[3]
    value = (value & ~(HF_SS32 | HF_ADDSEG)) | (HF_SS32 if ss_flags & _DESC_B else 0)
    if not _protected_32(uc, value):
        value |= HF_ADDSEG
    elif any(_read(uc, SEGMENT_INDEX[s])[1] for s in ("ds", "es", "ss")):
        value |= HF_ADDSEG
    hflags.value = value


def read_segment(uc: Uc, name: str) -> tuple[int, int, int, int]:
    """(selector, base, limit, flags) of a segment register's hidden part."""
    return _read(uc, SEGMENT_INDEX[name])


def _read(uc: Uc, index: int) -> tuple[int, int, int, int]:
    return SEGMENT_CACHE.unpack(ctypes.string_at(_cache(uc, index), SEGMENT_CACHE.size))


def _protected_32(uc: Uc, hflags: int) -> bool:
    return bool(uc.reg_read(UC_X86_REG_CR0) & _CR0_PE) and not uc.reg_read(UC_X86_REG_EFLAGS) & _EFLAGS_VM \
        and bool(hflags & HF_CS32)
