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

Whether the last run ended in HLT is not in the context at all: Unicorn ends ``emu_start``
after HLT with EIP past it and no status, and only QEMU's ``CPUState.halted`` (outside
``CPUX86State``) says so. :func:`probe_cpu_state` finds the engine's ``CPUState`` (the
engine handle points to it, and its ``env_ptr`` to the registers a context saves) and the
``halted`` field in it, by running a HLT and a NOP in a scratch engine and diffing the bytes.
"""
from __future__ import annotations

import ctypes
import os
import struct
from dataclasses import dataclass
from functools import lru_cache

from unicorn import UC_ARCH_X86, UC_HOOK_INTR, UC_HOOK_MEM_FETCH_UNMAPPED, UC_MODE_32, Uc
from unicorn.x86_const import UC_X86_REG_CR0 as X86_REG_CR0
from unicorn.x86_const import UC_X86_REG_CR4 as X86_REG_CR4
from unicorn.x86_const import UC_X86_REG_EAX as X86_REG_EAX
from unicorn.x86_const import UC_X86_REG_EBX as X86_REG_EBX
from unicorn.x86_const import UC_X86_REG_ECX as X86_REG_ECX
from unicorn.x86_const import UC_X86_REG_EIP as X86_REG_EIP
from unicorn.x86_const import UC_X86_REG_ESP as X86_REG_ESP

from ..x86 import PAGE_SIZE, Vector

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
    ``exception_is_int`` goes back to 0 too: Unicorn sets EIP to ``exception_next_eip``
    before its interrupt hook whenever that flag is set, and an engine intercept
    (``cpu_vmexit``) sets neither, so after any INT n the next intercept arrived with the
    EIP of the instruction after that INT.
    """
    fields = probe_offsets()
    ctx = uc.context_save()
    base = ctypes.cast(ctx.context, ctypes.c_void_p).value
    assert base, "Unicorn returned a context without storage"
    ctypes.memmove(base + fields.old_exception, struct.pack("<i", _NO_EXCEPTION), 4)
    ctypes.memmove(base + fields.is_int, struct.pack("<i", 0), 4)
    uc.context_restore(ctx)


# -- CPUState.halted ---------------------------------------------------------------------------
_CONTEXT_HEADER = 40       # bytes of Unicorn's uc_context before the saved CPUX86State
_KEY_BYTES = 64            # saved general registers that identify the engine's CPUX86State
_HANDLE_SCAN = 0x4000      # bytes of the engine handle searched for the CPUState pointer
_ENV_PTR_SCAN = 0x800      # bytes of CPUState searched for env_ptr (it precedes tb_jmp_cache)
_ENV_DISTANCE = 0x20000    # env follows CPUState inside X86CPU, well within this
_HLT_PROBE = bytes.fromhex("90f4")   # nop ; hlt
_POINTER = struct.Struct("<Q")


@dataclass(frozen=True)
class CpuStateFields:
    """Where QEMU's ``CPUState`` of an engine is, and its ``halted`` field."""

    cpu_pointer: int   # offset of ``uc_struct.cpu`` in the engine handle
    env_offset: int    # ``CPUX86State`` (what a context saves) relative to CPUState
    halted: int        # offset of ``CPUState.halted``


def _handle_address(uc: Uc) -> int:
    address = ctypes.cast(uc._uch, ctypes.c_void_p).value
    assert address, "Unicorn engine without a handle"
    return address


def _read_process(fd: int, address: int, size: int) -> bytes | None:
    """Our own memory through /proc/self/mem: an unmapped address reads as None, not SIGSEGV."""
    try:
        return os.pread(fd, size, address)
    except (OSError, OverflowError):
        return None


def _find_cpu_state(uc: Uc) -> tuple[int, int]:
    """(offset of the CPUState pointer in the handle, env - CPUState): the pointer whose
    ``env_ptr`` points to memory holding the registers a saved context holds."""
    handle = _handle_address(uc)
    key = bytes(uc.context_save())[_CONTEXT_HEADER:_CONTEXT_HEADER + _KEY_BYTES]
    found = []
    fd = os.open("/proc/self/mem", os.O_RDONLY)
    try:
        blob = _read_process(fd, handle, _HANDLE_SCAN) or b""
        for at in range(0, len(blob) - 7, 8):
            cpu = _POINTER.unpack_from(blob, at)[0]
            state = _read_process(fd, cpu, _ENV_PTR_SCAN) if cpu > PAGE_SIZE else None
            for k in range(0, len(state or b"") - 7, 8):
                env = _POINTER.unpack_from(state, k)[0]  # type: ignore[arg-type]
                if 0 < env - cpu < _ENV_DISTANCE and _read_process(fd, env, _KEY_BYTES) == key:
                    found.append((at, cpu, env - cpu))
    finally:
        os.close(fd)
    # The handle may hold the CPU pointer more than once (uc_struct.cpu, and a copy further
    # on, e.g. in the TCG context, present in some processes and not in others): all must be
    # the one CPU; the first field, uc_struct.cpu, is the one every engine has.
    if not found or len({(cpu, env) for _, cpu, env in found}) != 1:
        raise RuntimeError(f"cannot locate QEMU's CPUState behind the Unicorn handle (candidates {found}); "
                           "this Unicorn build differs from the one vmm was written for")
    at, _, env_offset = min(found)
    return at, env_offset


def _state_words(uc: Uc, cpu_pointer: int, size: int) -> tuple[int, ...]:
    cpu = ctypes.c_uint64.from_address(_handle_address(uc) + cpu_pointer).value
    return struct.unpack(f"<{size // 4}I", ctypes.string_at(cpu, size))


@lru_cache(maxsize=1)
def probe_cpu_state() -> CpuStateFields:
    """Find ``CPUState.halted``: 1 after a run that ended in HLT, 0 after one that did not."""
    uc = Uc(UC_ARCH_X86, UC_MODE_32)
    uc.mem_map(0, 0x10000)
    uc.mem_write(_BASE, _HLT_PROBE)
    for reg, value in ((X86_REG_EAX, 0x13579BDF), (X86_REG_EBX, 0x2468ACE0), (X86_REG_ECX, 0x0F1E2D3C)):
        uc.reg_write(reg, value)   # registers no other engine holds: the key for env_ptr
    cpu_pointer, env_offset = _find_cpu_state(uc)
    size = env_offset & ~3
    runs = []
    for begin, count in ((_BASE, 1), (_BASE + 1, 0), (_BASE, 1)):  # nop; hlt; nop
        uc.emu_start(begin, _BASE + len(_HLT_PROBE), count=count)
        runs.append(_state_words(uc, cpu_pointer, size))
    nop1, hlt, nop2 = runs
    halted = _single("CPUState.halted", [i for i in range(len(hlt)) if hlt[i] == 1 and nop1[i] == nop2[i] == 0])
    return CpuStateFields(cpu_pointer, env_offset, halted)


_COUNTS = (5, 7)   # two instruction budgets whose counters tell the field apart


# -- the interrupt shadow ------------------------------------------------------------------------
# STI (with IF clear) and MOV SS / POP SS block interrupts until the next instruction ends
# (SDM vol. 3 §6.8.3). QEMU records that in ``CPUX86State.hflags`` (HF_INHIBIT_IRQ) and
# clears it at the end of the next instruction; Unicorn keeps it across runs but reports it
# nowhere. The run loop delivers interrupts itself, so it needs the flag.
HF_INHIBIT_IRQ = 1 << 3
HF_CS32 = 1 << 4          # CS.D: 32-bit code (QEMU's HF_CS32_MASK, next to HF_INHIBIT_IRQ)
_STI_PROBE = bytes.fromhex("fb909090")   # sti ; nop ; nop ; nop  (IF starts clear)
_HFLAGS_SCAN = 0x400   # bytes of CPUX86State searched (hflags follows the general registers)


@lru_cache(maxsize=1)
def probe_hflags() -> int:
    """Offset of ``hflags`` in CPUX86State: the word that has HF_INHIBIT_IRQ after STI
    and loses exactly that bit after the next instruction."""
    uc = Uc(UC_ARCH_X86, UC_MODE_32)
    uc.mem_map(0, 0x10000)
    uc.mem_write(_BASE, _STI_PROBE)
    env = env_address(uc)
    n = _HFLAGS_SCAN // 4
    runs = []
    for begin in (_BASE, _BASE + 1, _BASE + 2):   # sti ; nop ; nop, one per run
        uc.emu_start(begin, _BASE + len(_STI_PROBE), count=1)
        runs.append(struct.unpack(f"<{n}I", ctypes.string_at(env, _HFLAGS_SCAN)))
    sti, nop1, nop2 = runs
    return _single("hflags", [i for i in range(n) if sti[i] & HF_INHIBIT_IRQ
                              and nop1[i] == nop2[i] == sti[i] & ~HF_INHIBIT_IRQ])


HF2_NMI = 1 << 2          # hflags2: an NMI handler is running (NMIs blocked until IRET)
_IRET_PROBE = bytes.fromhex("cf90")   # iret ; nop


@lru_cache(maxsize=1)
def probe_hflags2() -> int:
    """Offset of ``hflags2``, the word after ``hflags``: checked by setting its NMI bit
    in a scratch engine and watching an IRET clear exactly that bit (QEMU's IRET helpers
    end NMI blocking, which is all the VMM needs from them)."""
    offset = probe_hflags() + 4
    uc = Uc(UC_ARCH_X86, UC_MODE_32)
    uc.mem_map(0, 0x10000)
    uc.mem_write(_BASE, _IRET_PROBE)
    uc.reg_write(X86_REG_CR0, 0)   # real mode: IRET needs no descriptor (32-bit operands: CS.D is set)
    uc.mem_write(0x8000, struct.pack("<III", _BASE + 1, 0, 0x2))   # the frame: EIP, CS, EFLAGS
    uc.reg_write(X86_REG_ESP, 0x8000)
    word = ctypes.c_uint32.from_address(env_address(uc) + offset)
    before = word.value
    word.value = before | HF2_NMI
    uc.emu_start(_BASE, _BASE + len(_IRET_PROBE), count=1)
    if word.value != before & ~HF2_NMI:
        raise RuntimeError("cannot locate QEMU's hflags2 (NMI blocking) after hflags; this Unicorn build "
                           "differs from the one vmm was written for")
    return offset


def hflags2_word(uc: Uc) -> ctypes.c_uint32:
    """The engine's ``CPUX86State.hflags2``, live."""
    return ctypes.c_uint32.from_address(env_address(uc) + probe_hflags2())


def hflags_word(uc: Uc) -> ctypes.c_uint32:
    """The engine's ``CPUX86State.hflags``, live."""
    return ctypes.c_uint32.from_address(env_address(uc) + probe_hflags())


@lru_cache(maxsize=1)
def probe_counter_offset() -> int:
    """Offset of Unicorn's ``emu_counter`` in the engine handle: the instructions a
    counted ``emu_start`` has begun (its count hook runs before each one), next to
    ``emu_count``, the budget. After a run of the full budget it reads budget + 1."""
    uc = Uc(UC_ARCH_X86, UC_MODE_32)
    uc.mem_map(0, 0x10000)
    uc.mem_write(_BASE, b"\x90" * 16)
    seen = []
    for count in _COUNTS:
        uc.emu_start(_BASE, 0, count=count)
        n = _HANDLE_SCAN // 8
        seen.append(struct.unpack(f"<{n}Q", ctypes.string_at(_handle_address(uc), _HANDLE_SCAN)))
    runs = list(zip(seen, _COUNTS, strict=True))
    index = _single("emu_counter", [i for i in range(len(seen[0]) - 1)
                                    if all(words[i] == c + 1 and words[i + 1] == c for words, c in runs)])
    return index * 2   # _single gives bytes of 4-byte words; these words are 8 bytes


def instruction_counter(uc: Uc) -> ctypes.c_size_t:
    """The engine's ``emu_counter``, live (reset by every ``emu_start``)."""
    return ctypes.c_size_t.from_address(_handle_address(uc) + probe_counter_offset())


def halted_flag(uc: Uc) -> ctypes.c_uint32:
    """The engine's ``CPUState.halted``, live: nonzero from a HLT until the next ``emu_start``.

    Unicorn creates the CPU lazily: call this after the engine's first memory mapping."""
    fields = probe_cpu_state()
    cpu = ctypes.c_uint64.from_address(_handle_address(uc) + fields.cpu_pointer).value
    if not cpu:
        raise RuntimeError("the Unicorn engine has no CPU yet: map memory before asking for its state")
    return ctypes.c_uint32.from_address(cpu + fields.halted)


# -- the CPU checks Unicorn leaves out, through QEMU's SVM intercepts ------------------------------
# QEMU 5's MOV to CR4 stores any value (no reserved-bit #GP) and its WRMSR knows long-mode
# MSRs a qemu32 CPU does not have. Where the VMM does not stand between the guest and the
# CPU (native), it still needs those two instructions. QEMU's SVM model offers a hook for
# exactly them: with ``HF_GUEST`` in ``hflags``, ``helper_write_crN`` checks
# ``intercept_cr_write`` and ``helper_rdmsr``/``helper_wrmsr`` check ``intercept`` (and,
# for MSR numbers in its three ranges, the MSR permission bitmap the VMCB points to).
# ``cpu_vmexit`` then rewinds EIP to the instruction and reports vector
# ``SVM_EXCEPTION_BASE + exit code`` (error code: EXITINFO1, 1 for WRMSR) to UC_HOOK_INTR
# without touching guest memory: Unicorn hooks every exception, so QEMU's own world switch
# (``do_vmexit``) never runs. These fields follow ``old_exception`` in CPUX86State:
# ``vm_vmcb``, ``tsc_offset``, ``intercept``, ``intercept_cr_read``, ``intercept_cr_write``.
HF_GUEST = 1 << 21
SVM_EXCEPTION_BASE = 0x100     # QEMU's EXCP_VMEXIT
SVM_EXIT_WRITE_CR4 = 0x14
SVM_EXIT_MSR = 0x7C
SVM_EXIT_TR_WRITE = 0x6D       # LTR
SVM_EXIT_INTR = 0x60           # bit 0 of ``intercept``
VMCB_MSRPM_BASE = 0x48         # offsetof(struct vmcb, control.msrpm_base_pa)
_MOV_CR4_EAX = bytes.fromhex("0f22e0")


@dataclass(frozen=True)
class InterceptFields:
    """Offsets in CPUX86State of QEMU's SVM intercept state."""

    vm_vmcb: int
    intercept: int
    intercept_cr_write: int


@lru_cache(maxsize=1)
def probe_intercepts() -> InterceptFields:
    """Place the fields after ``old_exception`` as QEMU declares them, and check them: a
    MOV to CR4 with its write intercepted must report the intercept at the instruction
    and leave CR4 as it was."""
    old = probe_offsets().old_exception - _CONTEXT_HEADER   # the context holds CPUX86State after a header
    vm_vmcb = (old + 4 + 7) & ~7
    fields = InterceptFields(vm_vmcb, vm_vmcb + 16, vm_vmcb + 26)
    uc = Uc(UC_ARCH_X86, UC_MODE_32)
    uc.mem_map(0, 0x10000)
    uc.mem_write(_BASE, _MOV_CR4_EAX)
    uc.reg_write(X86_REG_EAX, 1 << 5)
    cr4 = uc.reg_read(X86_REG_CR4)
    env = env_address(uc)
    ctypes.c_uint16.from_address(env + fields.intercept_cr_write).value = 1 << 4
    hflags_word(uc).value |= HF_GUEST
    seen: list[tuple[int, int]] = []

    def report(u, vector, data):
        seen.append((vector, u.reg_read(X86_REG_EIP)))
        u.emu_stop()
    uc.hook_add(UC_HOOK_INTR, report)
    uc.emu_start(_BASE, _BASE + len(_MOV_CR4_EAX))
    if seen != [(SVM_EXCEPTION_BASE + SVM_EXIT_WRITE_CR4, _BASE)] or uc.reg_read(X86_REG_CR4) != cr4:
        raise RuntimeError("cannot locate QEMU's SVM intercept fields after old_exception; this Unicorn "
                           "build differs from the one vmm was written for")
    return fields


# -- self-modifying code on a page that keeps other code ----------------------------------------
# QEMU notices a store into translated code through TLB_NOTDIRTY on the store's TLB entry.
# Unicorn's notdirty_write clears that flag after the first such store whenever the entry
# is not executable (it takes a non-executable entry to mean that no code runs from the
# page), although other translated blocks of the page may remain: later stores into them
# then go unnoticed, and the stale blocks run. The VMM's code-page policy
# (:class:`vmm.modes.memory.CodePages`) maps a written code page writable and not
# executable, so a guest that writes code into a page it also runs (kvm-unit-tests'
# ``realmode`` copies each test into a buffer beside its harness) ran the previous
# test's code. Unicorn skips that shortcut for any address a memory hook covers; a hook
# on fetches from unmapped memory covers every address and never runs (every fetch is
# answered by the TLB-fill hook), so it restores QEMU's detection at no cost.


def keep_code_writes_detected(uc: Uc) -> None:
    """Make every store into translated code invalidate it (see above)."""
    uc.hook_add(UC_HOOK_MEM_FETCH_UNMAPPED, lambda *_args: False, None, 1, 0)


# -- the softmmu TLB's size ---------------------------------------------------------------
# QEMU sizes each MMU index's TLB by use: a flush that finds it more than 70% used in the
# current window doubles it, and only a wall-clock window (100 ms) lets it shrink. The size
# is not state a snapshot holds, and a flush does not reset it, so a VM that has run a while
# misses less often than a new engine whose TLB holds the same (no) entries. The fast
# descriptors (``CPUTLBDescFast``: mask, table) sit just before ``CPUX86State``; the
# descriptors (``CPUTLBDesc``: large_page_addr, large_page_mask, window_begin_ns,
# window_max_entries, n_used_entries, ...) before those.
_TLB_SCAN = 0x2000          # bytes before env searched for the TLB descriptors
_TLB_WINDOW_MAX = 3         # word of CPUTLBDesc: window_max_entries
_CLOCK_SLACK_NS = 60 * 10 ** 9


@dataclass(frozen=True)
class TlbFields:
    """Where a new engine's TLB descriptors are, relative to ``CPUX86State``, and its size."""

    fast: tuple[int, ...]    # offsets of CPUTLBDescFast.mask, one per MMU index
    desc: tuple[int, ...]    # offsets of CPUTLBDesc, one per MMU index
    mask: int                # CPUTLBDescFast.mask of a new engine


def env_address(uc: Uc) -> int:
    fields = probe_cpu_state()
    cpu = ctypes.c_uint64.from_address(_handle_address(uc) + fields.cpu_pointer).value
    if not cpu:
        raise RuntimeError("the Unicorn engine has no CPU yet: map memory before asking for its state")
    return cpu + fields.env_offset


@lru_cache(maxsize=1)
def probe_tlb() -> TlbFields:
    """Find the TLB descriptors of a new engine: the fast ones are (mask, table) pairs with
    one mask, the last words before env but padding; the slow ones start with two all-ones
    words (no large page) and the window's start, a wall-clock time of now."""
    import time

    uc = Uc(UC_ARCH_X86, UC_MODE_32)
    uc.mem_map(0, 0x10000)
    now = time.clock_gettime_ns(time.CLOCK_REALTIME)
    env = env_address(uc)
    n = _TLB_SCAN // 8
    words = struct.unpack(f"<{n}Q", ctypes.string_at(env - _TLB_SCAN, _TLB_SCAN))
    ones = (1 << 64) - 1
    desc = [i for i in range(n - 2) if words[i] == words[i + 1] == ones and abs(words[i + 2] - now) < _CLOCK_SLACK_NS]
    if not desc:
        raise RuntimeError("cannot locate QEMU's TLB descriptors; this Unicorn build differs from the one vmm "
                           "was written for")
    modes = len(desc)
    last = desc[-1]
    def pairs(i: int) -> bool:   # `modes` (mask, table) pairs from word i, one nonzero mask
        mask = words[i]
        return bool(mask) and not mask & 0x3F and all(
            words[i + 2 * k] == mask and words[i + 2 * k + 1] > PAGE_SIZE for k in range(modes))

    fast = [i for i in range(last, n - 2 * modes + 1) if pairs(i)]
    if len(fast) != 1:
        raise RuntimeError(f"cannot locate QEMU's fast TLB descriptors (candidates {fast}); this Unicorn build "
                           "differs from the one vmm was written for")
    start = fast[0]
    return TlbFields(tuple((start + 2 * k - n) * 8 for k in range(modes)), tuple((i - n) * 8 for i in desc),
                     words[start])


def reset_tlb_size(uc: Uc, flush) -> None:
    """Give an engine's TLB the size a new engine's has, and forget its use; ``flush()``
    flushes the TLB. A TLB smaller than that (QEMU shrinks one little used for a while) is
    grown by QEMU itself: a flush that finds the window's use high doubles it. A larger one
    only has its mask shrunk, after the flush: the larger table whose start it then indexes
    stays allocated until QEMU next resizes it (and frees it as its own)."""
    fields = probe_tlb()
    env = env_address(uc)
    for _ in range(64):
        small = [desc for fast, desc in zip(fields.fast, fields.desc, strict=True)
                 if ctypes.c_uint64.from_address(env + fast).value < fields.mask]
        for desc in small:
            ctypes.c_uint64.from_address(env + desc + 8 * _TLB_WINDOW_MAX).value = 1 << 32
        flush()
        if not small:
            break
    for fast, desc in zip(fields.fast, fields.desc, strict=True):
        mask = ctypes.c_uint64.from_address(env + fast)
        mask.value = min(mask.value, fields.mask)
        ctypes.c_uint64.from_address(env + desc + 8 * _TLB_WINDOW_MAX).value = 0
