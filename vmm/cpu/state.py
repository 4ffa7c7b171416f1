"""The vCPU's state as plain data: everything Unicorn holds for one VM, to save and restore.

Two parts:

* **The CPU**: Unicorn's saved context (``uc_context_save``) is QEMU's ``CPUX86State``
  copied byte for byte: general registers, EIP, EFLAGS, the segment registers *with their
  hidden descriptor caches* (base, limit, attributes, which the register API does not
  show), CR0-CR4, DR0-DR7, GDTR/IDTR/LDTR/TR, the MSRs QEMU keeps (EFER, SYSENTER, PAT,
  ...), the x87/SSE state, and QEMU's exception bookkeeping (see :mod:`.quirks`). The
  bytes are portable to another process running the same Unicorn build: measured, two
  processes that run a guest to the same point save identical bytes except in the
  context's header (:func:`context_header_size`), whose memory-snapshot fields hold host
  pointers; only the CPU part after it is saved, and a restore writes it behind the
  restoring engine's own header. A readable copy of the architectural registers is saved beside the bytes and checked
  after a restore, so a context that does not carry over says so instead of running.
* **Memory**: every region mapped in the engine except device (MMIO) pages: guest RAM and
  the VMM's private host memory (VMX bitmaps, shadow and EPT tables, the PV machine frames,
  the IRET trampoline), page by page, all-zero pages left out.

Not saved, because it is a cache the engine refills: the translated-code cache and the
softmmu TLB (its entries hold host pointers). :func:`restore_cpu` flushes both, and a VM
that is saved flushes its TLB as well (see :mod:`vmm.snapshot`), so both continue alike.
"""
from __future__ import annotations

import ctypes
import struct
from dataclasses import dataclass

from unicorn import Uc, UcError
from unicorn import x86_const as X

from ..x86 import MSR, PAGE_SIZE, SYSENTER_MSRS
from . import quirks
from .engine import INTERCEPT_HOST
from .regs import CONTROL, GPRS, SEGMENTS, UC_TABLE

PAGE = PAGE_SIZE
WINDOW = 0x100000            # memory is read a MiB at a time; zero windows are skipped whole
_ZERO_PAGE = bytes(PAGE)
_ZERO_WINDOW = bytes(WINDOW)
DEBUG_REGISTERS = ("dr0", "dr1", "dr2", "dr3", "dr6", "dr7")
X87_SSE = {"fpcw": X.UC_X86_REG_FPCW, "fpsw": X.UC_X86_REG_FPSW, "fptag": X.UC_X86_REG_FPTAG,
           "mxcsr": X.UC_X86_REG_MXCSR}
# MSRs a 32-bit guest here can reach (checked after a restore; the context carries them all).
CHECKED_MSRS = tuple(int(msr) for msr in (*SYSENTER_MSRS, MSR.EFER))


class CpuStateError(ValueError):
    """A saved CPU state that cannot be put into this engine (one line)."""


@dataclass(frozen=True)
class MemoryRegion:
    """One mapped region: its pages that are not all zero, as (offset, bytes)."""

    base: int
    size: int
    perms: int
    pages: tuple[tuple[int, bytes], ...]


@dataclass(frozen=True)
class CpuState:
    context: bytes                                 # CPUX86State as Unicorn copies it
    registers: tuple[tuple[str, int], ...]         # readable copy, checked after restore
    tables: tuple[tuple[str, tuple[int, int, int]], ...]   # GDTR/IDTR/LDTR/TR (selector, base, limit)
    msrs: tuple[tuple[int, int], ...]
    trampoline: int | None                         # the engine's IRET trampoline page, if mapped
    memory: tuple[MemoryRegion, ...]


def context_header_size(uc: Uc) -> int:
    """Bytes of Unicorn's ``uc_context`` header before the copy of ``CPUX86State``.

    The header starts with the size of the CPU part (a ``size_t``) and goes on with
    fields for memory snapshots (a snapshot level, a pointer to the last RAM block) that
    a CPU-only context never uses and that hold host-process values: they are neither
    saved nor restored."""
    raw = bytes(uc.context_save())
    cpu_size = struct.unpack_from("<Q", raw, 0)[0]
    if not 0 < cpu_size < len(raw):
        raise RuntimeError(f"cannot read the Unicorn context header (CPU part {cpu_size} of {len(raw)} "
                           "bytes); this Unicorn build differs from the one vmm was written for")
    return len(raw) - cpu_size


def _cpu_context(uc: Uc) -> bytes:
    return bytes(uc.context_save())[context_header_size(uc):]


def _registers(engine) -> tuple[tuple[str, int], ...]:
    names = GPRS + SEGMENTS + CONTROL + DEBUG_REGISTERS + ("eip", "eflags")
    values = [(name, engine.reg(name)) for name in names]
    values += [(name, engine.uc.reg_read(reg)) for name, reg in X87_SSE.items()]
    return tuple(values)


def _msrs(engine) -> tuple[tuple[int, int], ...]:
    return tuple((index, engine.msr(index)) for index in CHECKED_MSRS)


def _regions(engine, devices: list[tuple[int, int]]) -> list[tuple[int, int, int]]:
    """(base, size, perms) of every mapped region that is not a device's, nor the engine's
    intercept pages (:meth:`Engine.intercept_cpu_checks` makes them again)."""
    out = []
    for begin, end, perms in engine.uc.mem_regions():
        if begin >= INTERCEPT_HOST or any(base <= begin < base + length for base, length in devices):
            continue
        out.append((begin, end - begin + 1, perms))
    return sorted(out)


def _read_pages(engine, base: int, size: int) -> tuple[tuple[int, bytes], ...]:
    pages = []
    for window in range(0, size, WINDOW):
        length = min(WINDOW, size - window)
        data = bytes(engine.uc.mem_read(base + window, length))
        if data == _ZERO_WINDOW[:length]:
            continue
        for offset in range(0, length, PAGE):
            page = data[offset:offset + PAGE]
            if page != _ZERO_PAGE[:len(page)]:
                pages.append((window + offset, page))
    return tuple(pages)


def capture_cpu(engine, devices: list[tuple[int, int]]) -> CpuState:
    """The engine's CPU and memory; ``devices`` are (base, length) of MMIO regions to skip."""
    context = _cpu_context(engine.uc)
    tables = tuple((name, engine.table(name)) for name in UC_TABLE)
    memory = tuple(MemoryRegion(base, size, perms, _read_pages(engine, base, size))
                   for base, size, perms in _regions(engine, devices))
    return CpuState(context, _registers(engine), tables, _msrs(engine), engine.trampoline, memory)


def _missing(base: int, size: int, mapped: list[tuple[int, int, int]]) -> list[tuple[int, int]]:
    """Parts of [base, base + size) not covered by ``mapped`` regions."""
    pieces, cursor, end = [], base, base + size
    for start, length, _ in mapped:
        stop = start + length
        if stop <= cursor or start >= end:
            continue
        if start > cursor:
            pieces.append((cursor, start - cursor))
        cursor = max(cursor, stop)
    if cursor < end:
        pieces.append((cursor, end - cursor))
    return pieces


def restore_cpu(engine, state: CpuState, devices: list[tuple[int, int]]) -> None:
    """Put ``state`` into ``engine`` (a fresh VM's, built for the same image and mode).

    Regions the saved engine had mapped and this one lacks are mapped; every page of
    every region ends up as saved (pages left out of the snapshot are zero)."""
    mapped = _regions(engine, devices)
    for region in state.memory:
        for base, size in _missing(region.base, region.size, mapped):
            engine.uc.mem_map(base, size, region.perms)
    for base, size, _ in mapped:
        if _missing(base, size, [(r.base, r.size, r.perms) for r in state.memory]):
            raise CpuStateError(f"memory at {base:#x}+{size:#x} is mapped here but not in the saved state")
    for region in state.memory:
        for offset, page in _read_pages(engine, region.base, region.size):
            engine.uc.mem_write(region.base + offset, _ZERO_PAGE[:len(page)])
        for offset, page in region.pages:
            engine.uc.mem_write(region.base + offset, page)
    engine.trampoline = state.trampoline
    context = engine.uc.context_save()          # this process's header, the saved CPU after it
    header = context_header_size(engine.uc)
    if context.size - header != len(state.context):
        raise CpuStateError(f"saved CPU context has {len(state.context)} bytes, this Unicorn's has "
                            f"{context.size - header}")
    buffer = ctypes.cast(context.context, ctypes.c_void_p).value
    if buffer is None:
        raise CpuStateError("Unicorn gave no context buffer")
    ctypes.memmove(buffer + header, state.context, len(state.context))
    engine.uc.context_restore(context)
    engine.restore_tr_base(dict(state.tables)["tr"][1])   # the context holds the engine's TSS window
    flush_caches(engine)
    _check(engine, state)


def flush_caches(engine) -> None:
    """Drop the softmmu TLB and the translated code: both are refilled from the state.

    The TLB is also given the size a new engine's has (:func:`quirks.reset_tlb_size`):
    QEMU grows it with use and a flush keeps the size, so without this a VM that has run
    would go on missing less often than one restored into a new engine."""
    quirks.reset_tlb_size(engine.uc, engine.flush_tlb)
    engine.uc.ctl_flush_tb()


def _check(engine, state: CpuState) -> None:
    for name, value in _registers(engine):
        if dict(state.registers).get(name) != value:
            raise CpuStateError(f"restored {name} reads {value:#x}, saved {dict(state.registers).get(name)!r}")
    for name, value in ((n, engine.table(n)) for n in UC_TABLE):
        if dict(state.tables)[name] != value:
            raise CpuStateError(f"restored {name} reads {value}, saved {dict(state.tables)[name]}")
    try:
        msrs = _msrs(engine)
    except UcError as err:
        raise CpuStateError(f"reading MSRs after restore: {err}") from None
    if msrs != state.msrs:
        raise CpuStateError(f"restored MSRs {msrs} differ from the saved {state.msrs}")
