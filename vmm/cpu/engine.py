"""The engine: one Unicorn x86-32 CPU, its hooks multiplexed to a narrow Python interface.

This is the only module that drives ``emu_start``. It installs one hook of each kind
and forwards every event to a :class:`VcpuOps` object (the VM), which
decides policy. Python exceptions raised inside a hook are captured, emulation is
stopped, and the exception is re-raised from :meth:`Engine.run`, so a bug never
disappears inside a C callback.

Hot path: no per-instruction or per-block hook. Events arrive only where the guest does
something the VMM must see: an exception or software interrupt (``UC_HOOK_INTR``), an
undefined opcode, IN/OUT/CPUID, a TLB miss (``UC_HOOK_TLB_FILL`` with
``UC_TLB_VIRTUAL``: the fill callback *is* the MMU), and MMIO.
"""
from __future__ import annotations

import ctypes
import enum
import struct
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

from unicorn import (
    UC_ARCH_X86,
    UC_ERR_EXCEPTION,
    UC_ERR_FETCH_UNMAPPED,
    UC_ERR_READ_UNMAPPED,
    UC_ERR_WRITE_UNMAPPED,
    UC_HOOK_CODE,
    UC_HOOK_INSN,
    UC_HOOK_INSN_INVALID,
    UC_HOOK_INTR,
    UC_HOOK_TLB_FILL,
    UC_MEM_FETCH,
    UC_MEM_WRITE,
    UC_MODE_32,
    UC_PROT_ALL,
    UC_PROT_EXEC,
    UC_PROT_READ,
    UC_PROT_WRITE,
    UC_TLB_VIRTUAL,
    Uc,
    UcError,
)
from unicorn import x86_const as X
from unicorn.unicorn_const import UC_CTL_IO_WRITE, UC_CTL_TLB_FLUSH
from unicorn.unicorn_py3.unicorn import uclib as _uclib

from ..x86 import Vector
from . import quirks, segcache
from .cpuid import CPU_MODEL
from .iocheck import HF_IOBPT, IoPermission
from .regs import UC_REG, UC_TABLE

MEMBUF_SIZE = 64
"""Bytes of the reusable read buffer: larger reads allocate their own."""

PAGE = 0x1000
SCRATCH_PAGE = 0xFFFFF000  # host page outside guest RAM, see the TLB-fill hook
STAND_IN_PAGE = 0xFFFFD000  # a descriptor page the VMM's own segment loads never fault on (fill hook)
TRAMPOLINE_HOST = 0xFFFFE000    # the VMM's IRET trampoline (Engine.iret_to), host side
TRAMPOLINE_LINEAR = 0xFFFFE000  # ... and where it sits in every guest's linear space
TRAMPOLINE_STACK = 0x800        # offset of its stack frame in that page
INTERCEPT_HOST = 1 << 40
"""Host pages of the engine's intercepts (a VMCB-like page, then QEMU's 8 KiB MSR permission
bitmap): far above the 36-bit physical address width, so no guest mapping can reach them."""
MSRPM_SIZE = 0x2000
TSS_LINEAR = 1 << 44
"""The TR base the engine holds while the VMM keeps the guest's (:meth:`Engine.virtualize_tr`):
beyond every 32-bit linear address, so each access the engine makes to the TSS misses the
TLB into the fill hook, which hands it to the VMM."""
TSS_WINDOW = 1 << 32

ACCESS_READ, ACCESS_WRITE, ACCESS_FETCH = "read", "write", "fetch"
_ACCESS = {UC_MEM_WRITE: ACCESS_WRITE, UC_MEM_FETCH: ACCESS_FETCH}


# Page permissions for Fill, so modes need not import unicorn.
PROT_READ, PROT_WRITE, PROT_EXEC = UC_PROT_READ, UC_PROT_WRITE, UC_PROT_EXEC


class GuestMemoryError(Exception):
    """The VMM touched host-physical memory that is not there (a guest pointed a page
    table, a stack or a jump outside its RAM and devices): the VM stops with it."""

    def __init__(self, address: int, size: int, access: str):
        super().__init__(f"{access} of {size} bytes at physical {address:#010x}, outside the guest's RAM "
                         f"and devices")
        self.address, self.size, self.access = address, size, access



_TR_PRESENT, _TR_BUSY, _TR_TYPE_SHIFT = 0x8000, 0x0200, 8
_TR_TSS32 = 0x9 << _TR_TYPE_SHIFT


def engine_tr_flags(flags: int) -> int:
    """TR's cache as the engine must hold it: QEMU's TCG keeps a TSS's type there without
    its busy bit, and its stack switch for a call gate to an inner ring stops the whole
    process (``cpu_abort``) unless that cache is present with type 1 or 9. So the busy bit
    goes, and a TR never loaded (after reset: flags 0) reads as a present 32-bit TSS, as
    a reset processor's TR is; the guest's own view of TR is unchanged."""
    if not flags & _TR_PRESENT or (flags >> _TR_TYPE_SHIFT) & 0x5 != 0x1:
        return (flags & ~0xFF00) | _TR_PRESENT | _TR_TSS32
    return flags & ~_TR_BUSY

class EngineError(Exception):
    """Unicorn stopped for a reason the VMM has no model for: the VM stops with it."""


class Stop(enum.Enum):
    """Why one call of :meth:`Engine.run` returned."""

    SLICE_DONE = "instruction slice completed"
    HALT = "HLT"
    FAULT = "fault raised by the MMU"          # see Engine.pending_fault
    REQUESTED = "stop requested by a handler"  # see Engine.stop_reason
    TIMEOUT = "wall-clock budget exhausted"
    UNMAPPED = "access to unbacked host memory"


@dataclass
class Fault:
    """A fault raised from the TLB-fill callback, delivered after emulation stops."""

    vector: int | None    # None: no fault for the guest, the VMM stopped the run (see ``then``)
    error_code: int | None
    address: int  # CR2 for #PF; the faulting linear address in any case
    access: str
    exited: bool = False  # a VM exit already took it (its handler queued the injection)
    then: Callable[[], None] | None = None  # the VMM's work once emulation stopped; then the instruction reruns


@dataclass
class Fill:
    """The MMU's answer to a TLB miss: host-physical page and Unicorn permissions."""

    host_page: int
    perms: int


class VcpuOps(Protocol):
    """What the engine calls back into. Implemented by the VM; every call is synchronous."""

    def on_interrupt(self, vector: int, error_code: int, software: bool) -> None: ...
    def on_invalid_opcode(self) -> None: ...
    def on_tlb_fill(self, vaddr: int, access: str) -> Fill | Fault: ...
    def on_port_in(self, port: int, size: int) -> int: ...
    def on_port_out(self, port: int, size: int, value: int) -> None: ...
    def on_cpuid(self) -> bool: ...
    def on_rdtsc(self) -> bool: ...
    def on_code_site(self, address: int) -> None: ...
    def on_intercept(self, exit_code: int, info: int) -> None: ...
    def on_task_state_access(self) -> None: ...


_REG_MASK = {name: 0xFFFF for name in ("cs", "ss", "ds", "es", "fs", "gs")}


class Engine:
    """A 32-bit x86 CPU with host-physical memory, driven by a :class:`VcpuOps`."""

    def __init__(self, ops: VcpuOps):
        self.ops = ops
        self.uc = Uc(UC_ARCH_X86, UC_MODE_32)
        self.uc.ctl_set_cpu_model(CPU_MODEL)  # QEMU's qemu32: its CPUID, CR4 and EFER bits
        quirks.probe_offsets()  # fail at start-up, not at the first exception
        self.uc.ctl_set_tlb_mode(UC_TLB_VIRTUAL)
        # Exits mode with an empty list: without it Unicorn translates the `until`
        # address when it stops, through our TLB hook, and turns a plain HLT into
        # UC_ERR_EXCEPTION (measured here).
        self.uc.ctl_exits_enabled(True)
        self.uc.ctl_set_exits([])
        self._error: BaseException | None = None
        self._running = False
        self._fault: Fault | None = None        # first MMU fault of the current run
        self.pending_fault: Fault | None = None  # the fault that ended the last run
        self.uc.mem_map(SCRATCH_PAGE, PAGE, UC_PROT_READ)
        self.uc.mem_map(STAND_IN_PAGE, PAGE, UC_PROT_READ)
        self._halted = quirks.halted_flag(self.uc)  # QEMU's CPUState.halted (the CPU exists by now)
        self._counter = quirks.instruction_counter(self.uc)
        self._hflags = quirks.hflags_word(self.uc)
        self._hflags2 = quirks.hflags2_word(self.uc)
        self._counter_at_event = -1   # emu_counter when the interrupt hook last ran
        self.executed = 0             # guest instructions the last counted run executed
        self.stop_reason: str | None = None
        self._init_fast_regs()
        self._thunks: list = []
        self._counting = False
        self._hlt_emulated = False   # a handler emulated HLT in this run (end_run_halted)
        self.trampoline: int | None = None
        self._pending_iret: dict | None = None
        self._segment_load: tuple[str, int] | None = None   # (register, selector) the VMM is loading
        self._tr_base: int | None = None   # the guest's TR base, once the VMM keeps it (virtualize_tr)
        self.io_permission: IoPermission | None = None   # check_io_permission
        self._in_exception_hook = False   # inside the UC_HOOK_INTR handler (set_reg: EIP)
        self._install_hooks()

    # -- memory --------------------------------------------------------------------------
    def map_ram(self, base: int, size: int) -> None:
        self.uc.mem_map(base, size, UC_PROT_ALL)

    def map_mmio(self, base: int, size: int, read, write) -> None:
        """``read(offset, size) -> int`` and ``write(offset, size, value)``."""
        self.uc.mmio_map(base, size, lambda uc, off, sz, data: read(off, sz), None,
                         lambda uc, off, sz, val, data: write(off, sz, val), None)

    def read_phys(self, addr: int, size: int) -> bytes:
        buf = self._membuf if size <= MEMBUF_SIZE else ctypes.create_string_buffer(size)
        if self._mem_read(self._handle, addr, buf, size):
            return bytes(self._slow_read(addr, size))
        return buf.raw[:size]

    def read_u64(self, addr: int) -> int:
        """One 8-byte little-endian read (paging-structure entries: the walk hot path)."""
        if self._mem_read(self._handle, addr, self._pu64, 8):
            return int.from_bytes(self._slow_read(addr, 8), "little")
        return self._u64.value

    def _slow_read(self, addr: int, size: int) -> bytes:
        try:
            return self.uc.mem_read(addr, size)
        except UcError:
            raise GuestMemoryError(addr, size, "read") from None

    def write_phys(self, addr: int, data: bytes) -> None:
        try:
            self.uc.mem_write(addr, bytes(data))
        except UcError:
            raise GuestMemoryError(addr, len(data), "write") from None

    def flush_tlb(self) -> None:
        """Drop every cached translation (CR3 load, INVLPG, INVEPT, VM entry without VPID)."""
        self.uc.ctl(UC_CTL_TLB_FLUSH, UC_CTL_IO_WRITE)

    # -- registers -----------------------------------------------------------------------
    # The binding's reg_read/reg_write cost ~2 us each (generic dispatch); calling the C
    # functions directly with a reused buffer costs ~0.65 us. Exits touch several
    # registers, so this is most of an exit's budget.
    def _init_fast_regs(self) -> None:
        self._handle = self.uc._uch
        self._buf = ctypes.c_uint64()
        self._pbuf = ctypes.byref(self._buf)
        self._read = _uclib.uc_reg_read
        self._write = _uclib.uc_reg_write
        self._write_batch = _uclib.uc_reg_write_batch
        self._mem_read = _uclib.uc_mem_read
        self._membuf = ctypes.create_string_buffer(MEMBUF_SIZE)
        self._u64 = ctypes.c_uint64()
        self._pu64 = ctypes.cast(ctypes.pointer(self._u64), self._mem_read.argtypes[2])
        self._batch_ids: dict = {}
        self._regs_keep: list = []
        self._batch_vals = (ctypes.c_uint64 * 4)()
        self._batch_ptrs = (ctypes.c_void_p * 4)(*(ctypes.addressof(self._batch_vals) + 8 * i for i in range(4)))

    def reg(self, name: str) -> int:
        if self._read(self._handle, UC_REG[name], self._pbuf):
            return self.uc.reg_read(UC_REG[name])  # let the binding raise its error
        # Unicorn stores only 16 bits for a segment register: the rest of the shared
        # buffer is whatever the previous read left there.
        return self._buf.value & _REG_MASK.get(name, 0xFFFFFFFF)

    def set_regs4(self, names: tuple[str, str, str, str], values) -> None:
        """Write four general registers in one C call (CPUID's EAX..EDX: the exit hot path)."""
        ids = self._batch_ids.get(names)
        if ids is None:
            ids = self._batch_ids[names] = (ctypes.c_int * 4)(*(UC_REG[n] for n in names))
        vals = self._batch_vals
        for i, v in enumerate(values):
            vals[i] = v & 0xFFFFFFFF
        err = self._write_batch(self._handle, ids, self._batch_ptrs, 4)
        if err:
            raise UcError(err)

    def set_reg(self, name: str, value: int) -> None:
        # A fresh buffer: a segment load re-enters Python (the TLB-fill hook reads the
        # GDT) and QEMU reads the value again after that, so it must not be shared.
        buf = ctypes.c_uint64(value & 0xFFFFFFFF)
        segment = name in _REG_MASK
        if segment:
            self._segment_load = (name, value & 0xFFFF)  # its fills must not be refused (fill hook)
        try:
            if name == "eip" and self._in_exception_hook:
                err = self._write_eip_outside_a_block(buf)
            else:
                err = self._write(self._handle, UC_REG[name], ctypes.byref(buf))
        finally:
            if segment:
                self._segment_load = None
        if err:
            raise UcError(err)

    def _write_eip_outside_a_block(self, buf) -> int:
        """EIP written from the exception hook, which runs between translation blocks.

        ``uc_reg_write`` of the PC also sets Unicorn's ``skip_sync_pc_on_exit``, meant for
        a write from inside a block, and only the exit check inside a block clears it; the
        exception path never does. Left set, every later ``emu_stop`` of the same run
        (an APIC store that replans, say) leaves EIP where it was last synced, so the run
        resumes at an earlier store and replays the instructions in between (measured: a
        self-IPI delivered twice in ``trap``). ``uc_reg_write_batch`` ends the block
        the same way without that flag."""
        ids = (ctypes.c_int * 1)(UC_REG["eip"])
        ptrs = (ctypes.c_void_p * 1)(ctypes.addressof(buf))
        return self._write_batch(self._handle, ids, ptrs, 1)

    # -- the interrupt shadow (SDM vol. 3 §6.8.3) --------------------------------------------
    def interrupt_shadow(self) -> bool:
        """True between an STI that set IF (or a MOV SS / POP SS) and the end of the next
        instruction: no interrupt may be delivered at this boundary."""
        return bool(self._hflags.value & quirks.HF_INHIBIT_IRQ)

    def set_interrupt_shadow(self, blocked: bool) -> None:
        """Open or close the shadow: an STI the VMM emulated, a VM entry that loads
        blocking by STI / MOV SS, or an event delivered (delivery ends the shadow)."""
        if blocked:
            self._hflags.value |= quirks.HF_INHIBIT_IRQ
        else:
            self._hflags.value &= ~quirks.HF_INHIBIT_IRQ

    def cpl(self) -> int:
        """The current privilege level as QEMU keeps it (``hflags``): SS.DPL in protected
        mode, 3 in virtual-8086 mode, 0 in real mode."""
        return self._hflags.value & segcache.HF_CPL_MASK

    def code_bits(self) -> int:
        """16 or 32: the default operand and address size of the code running now (CS.D,
        which QEMU keeps in ``hflags`` as HF_CS32; 16 in real mode)."""
        return 32 if self._hflags.value & quirks.HF_CS32 else 16

    def nmi_blocked(self) -> bool:
        """True from the delivery of an NMI until the next IRET (SDM vol. 3 §6.7.1): the
        engine's own IRET ends it, also one the guest executes natively."""
        return bool(self._hflags2.value & quirks.HF2_NMI)

    def set_nmi_blocked(self, blocked: bool) -> None:
        if blocked:
            self._hflags2.value |= quirks.HF2_NMI
        else:
            self._hflags2.value &= ~quirks.HF2_NMI

    def table(self, name: str) -> tuple[int, int, int]:
        """(selector, base, limit) of GDTR, IDTR, LDTR or TR (TR as the guest loaded it)."""
        sel, base, limit, _flags = self.uc.reg_read(UC_TABLE[name])
        if name == "tr" and self._tr_base is not None:
            base = self._tr_base
        return sel, base, limit

    def set_table(self, name: str, base: int, limit: int, selector: int = 0, flags: int = 0) -> None:
        if name == "tr":
            flags = engine_tr_flags(flags)
        self.uc.reg_write(UC_TABLE[name], (selector, base, limit, flags))
        if name == "tr" and self._tr_base is not None:
            self._tr_base = base
            segcache.set_tr_base(self.uc, TSS_LINEAR)

    def set_tr(self, selector: int, base: int, limit: int, flags: int) -> None:
        """Load TR (LTR, a task switch): ``flags`` is the descriptor's high dword."""
        self.set_table("tr", base, limit, selector, flags)

    def tr_flags(self) -> int:
        return self.uc.reg_read(UC_TABLE["tr"])[3]

    # -- the hidden segment state (a task switch loads it whole: vmm.cpu.segcache) ---------------
    def load_segment(self, name: str, selector: int, base: int, limit: int, flags: int) -> None:
        """Load segment register ``name`` with this hidden part, in any ring (no checks:
        the caller made the SDM's)."""
        segcache.load_segment(self.uc, name, selector, base, limit, flags)

    def segment_cache(self, name: str) -> tuple[int, int, int, int]:
        """(selector, base, limit, flags) of a segment register's hidden part."""
        return segcache.read_segment(self.uc, name)

    @property
    def tr_virtualized(self) -> bool:
        return self._tr_base is not None

    def virtualize_tr(self) -> None:
        """Keep the guest's TR base in the VMM and give the engine :data:`TSS_LINEAR`.

        The engine reads the TSS only in a far CALL or JMP to a TSS or task gate, an IRET
        with NT, and a call through a call gate to an inner ring: each then misses the
        TLB at that base, and the fill hook hands it to ``ops.on_task_state_access`` with
        EIP at the instruction (:class:`Fault` ``then``). LTR, which would load a base, is
        intercepted (``ops.on_intercept`` with QEMU's TR-write exit code) for the VMM to
        carry out. Nothing else changes: no guest access can reach a base above 4 GiB."""
        selector, base, limit, flags = self.uc.reg_read(UC_TABLE["tr"])
        self.uc.reg_write(UC_TABLE["tr"], (selector, base, limit, engine_tr_flags(flags)))
        self._tr_base = base
        segcache.set_tr_base(self.uc, TSS_LINEAR)
        self._intercept(general=1 << (quirks.SVM_EXIT_TR_WRITE - quirks.SVM_EXIT_INTR))

    def check_io_permission(self, permitted) -> None:
        """Refuse IN/OUT/INS/OUTS that the I/O permission bitmap forbids at CPL > IOPL or in
        virtual-8086 mode, with #GP(0) at the instruction (:mod:`vmm.cpu.iocheck`);
        ``permitted(port, size)`` reads the guest's bitmap."""
        self.io_permission = IoPermission(self, permitted)
        self._hflags.value |= HF_IOBPT
        self.uc.ctl_flush_tb()   # hflags is part of a translated block's key

    def restore_tr_base(self, base: int) -> None:
        """After a snapshot's CPU context is put back (its TR base is the engine's window)."""
        if self._tr_base is not None:
            self._tr_base = base
            segcache.set_tr_base(self.uc, TSS_LINEAR)

    # -- hooks ---------------------------------------------------------------------------
    def _guard(self, fn, *args, default=None):
        if self._error is not None:
            return default
        try:
            return fn(*args)
        except BaseException as exc:  # re-raised from run(); never lost inside C
            self._error = exc
            self.uc.emu_stop()
            return default

    def _stand_in_descriptor(self, vaddr: int) -> int:
        """A host page for a descriptor-table fill the mode could not answer, while the VMM
        loads a segment register: it holds, where the selector points, a flat descriptor
        the load accepts (code for CS, writable data otherwise, DPL = RPL), so that QEMU
        does not raise an exception across the VMM's frames. The VM then stops with the
        error recorded."""
        page = bytearray(PAGE)
        if self._segment_load is not None:
            name, selector = self._segment_load
            table = "ldtr" if selector & 4 else "gdtr"
            _, base, _ = self.table(table)
            slot = (base + (selector & 0xFFF8)) & 0xFFFFFFFF
            if slot & ~0xFFF == vaddr & ~0xFFF and slot & 0xFFF <= PAGE - 8:
                access = (0x9B if name == "cs" else 0x93) | (selector & 3) << 5
                struct.pack_into("<Q", page, slot & 0xFFF, 0x00CF00000000FFFF | access << 40)
        self.uc.mem_write(STAND_IN_PAGE, bytes(page))
        return STAND_IN_PAGE

    def _install_hooks(self) -> None:
        uc = self.uc

        def intr(uc, vector, _):
            if self._fault is not None:
                # A TLB fill refused in this run, raised by QEMU and reported here instead of
                # ending emulation (measured under shadow paging with #PF not intercepted):
                # end the run; run() reports the refused fill as Stop.FAULT, as usual.
                quirks.clear_pending_exception(uc)
                self.uc.emu_stop()
                return

            # The instruction that raised it is counted as executed (it was, or the VMM
            # emulates it, or the event it raised is delivered), also if the run ends here.
            self._counter_at_event = self._counter.value

            def handle():
                error_code, software = quirks.read_exception_info(uc)
                self._in_exception_hook = True   # EIP written here goes through set_reg's batch write
                try:
                    if vector >= quirks.SVM_EXCEPTION_BASE:
                        # An intercept (intercept_cpu_checks): EIP is at the instruction.
                        self.ops.on_intercept(vector - quirks.SVM_EXCEPTION_BASE, error_code)
                    elif vector == Vector.DB and self.io_permission is not None and self.io_permission.take_refusal():
                        self.ops.on_interrupt(Vector.GP, 0, False)   # the refused port access's #GP(0)
                    else:
                        self.ops.on_interrupt(vector, error_code, software)
                finally:
                    self._in_exception_hook = False
                quirks.clear_pending_exception(uc)
                if self.io_permission is not None:
                    self._hflags.value |= HF_IOBPT   # a guest MOV to DR7 recomputes it
            self._guard(handle)

        def invalid(uc, _):
            self._guard(self.ops.on_invalid_opcode)
            return True  # handled: we delivered #UD or stopped

        def fill(uc, vaddr, access, entry, _):
            vmm_access = self._segment_load is not None or not self._running
            if self._fault is not None and not vmm_access:
                return False  # the first fault of this run is the one to deliver
            if vaddr >= TSS_WINDOW and self._tr_base is not None and not vmm_access:
                # the engine reached for the TSS (virtualize_tr): the VMM takes the instruction
                self._fault = Fault(None, None, vaddr, _ACCESS.get(access, ACCESS_READ),
                                    then=self.ops.on_task_state_access)
                return False
            if self.trampoline is not None and vaddr & ~0xFFF == TRAMPOLINE_LINEAR:
                entry.paddr, entry.perms = TRAMPOLINE_HOST, UC_PROT_ALL
                return True
            answer = self._guard(self.ops.on_tlb_fill, vaddr, _ACCESS.get(access, ACCESS_READ))
            if isinstance(answer, Fill):
                entry.paddr = answer.host_page
                entry.perms = answer.perms
                return True
            if vmm_access:
                # A segment load by reg_write (event delivery) reads the GDT through the
                # softmmu; refusing that fill would make QEMU raise an exception with a
                # longjmp across the Python frames that called reg_write (outside
                # emu_start: into nowhere; inside a hook: over the hook's frames, which
                # corrupts the interpreter). Delivery reads every descriptor through the
                # walker first, so this is a VMM bug: answer a read-only zero page and
                # stop the VM with it.
                if self._error is None:
                    self._error = EngineError(f"internal: MMU fault at {vaddr:#x} during a segment load by "
                                              "the VMM")
                entry.paddr, entry.perms = self._stand_in_descriptor(vaddr), UC_PROT_READ
                return True
            if isinstance(answer, Fault):
                self._fault = answer
            return False

        def port_in(uc, port, size, _):
            check = self.io_permission
            if check is not None and not self._guard(check.allows, port, size, default=True):
                return check.held_value(size)
            return self._guard(self.ops.on_port_in, port, size, default=0xFFFFFFFF)

        def port_out(uc, port, size, value, _):
            check = self.io_permission
            if check is not None and not self._guard(check.allows, port, size, default=True):
                return
            self._guard(self.ops.on_port_out, port, size, value)

        def cpuid(handle, key):
            # 1 skips Unicorn's own CPUID: the handler has written EAX..EDX itself.
            # The hottest exit: a bare C thunk, _guard inlined.
            if self._error is not None:
                return 0
            try:
                return 1 if self.ops.on_cpuid() else 0
            except BaseException as exc:
                self._error = exc
                self.uc.emu_stop()
                return 0

        def rdtsc(uc, _):
            return 1 if self._guard(self.ops.on_rdtsc, default=False) else 0

        self._site_callback = lambda uc, address, size, _: self._guard(self.ops.on_code_site, address)

        uc.hook_add(UC_HOOK_INTR, intr)
        uc.hook_add(UC_HOOK_INSN_INVALID, invalid)
        quirks.keep_code_writes_detected(uc)
        uc.hook_add(UC_HOOK_TLB_FILL, fill)
        uc.hook_add(UC_HOOK_INSN, port_in, None, 1, 0, X.UC_X86_INS_IN)
        uc.hook_add(UC_HOOK_INSN, port_out, None, 1, 0, X.UC_X86_INS_OUT)
        self._add_insn_hook(X.UC_X86_INS_CPUID, cpuid)
        self._add_insn_hook(X.UC_X86_INS_RDTSC, lambda handle, key: rdtsc(self.uc, None))

    def _add_insn_hook(self, insn: int, callback) -> None:
        """Register ``callback(handle, key) -> int`` as a bare C thunk for CPUID or RDTSC.

        The 2.1.4 Python binding has no table entry for RDTSC (the C library hooks it like
        CPUID) and wraps every callback in an extra Python frame; the exit hot path uses
        the C signature directly, via the binding's own registration call.
        """
        from unicorn.unicorn_py3.arch.intel import HOOK_INSN_CPUID_CFUNC

        thunk = HOOK_INSN_CPUID_CFUNC(callback)
        self._thunks.append(thunk)  # keep it alive as long as the engine
        self.uc._Uc__do_hook_add(UC_HOOK_INSN, thunk, 1, 0, ctypes.c_int(insn))

    def hook_code_site(self, address: int) -> int:
        """Call ``ops.on_code_site(address)`` before an instruction that starts at ``address``.

        A code hook bounded to one address costs nothing anywhere else: Unicorn compiles it
        into the translated block of that address only.
        Writing EIP in the callback skips or redirects the instruction.
        """
        return self.uc.hook_add(UC_HOOK_CODE, self._site_callback, None, address, address)

    def add_breakpoint(self, address: int, callback, *, retranslate: bool = True) -> int:
        """Call ``callback(address)`` before the instruction at ``address`` executes.

        ``retranslate=False`` for a hook armed before the guest has run: nothing is
        translated yet, and dropping the cache of an address makes Unicorn fill its TLB
        entry for a fetch, which a mode watching code fetches would take as code run."""
        handle = self.uc.hook_add(UC_HOOK_CODE, lambda uc, a, size, _: self._guard(callback, a),
                                  None, address, address)
        if retranslate:   # code hooks are compiled into translated blocks: retranslate the one holding it
            self.uc.ctl_remove_cache(address, address + 1)
        return handle

    def add_instruction_hook(self, callback) -> int:
        """``callback(address, size)`` before *every* instruction: the tracer only (this is
        the one per-instruction Python hook, and it caps the engine at a few M instr/s).
        Registered as a bare C thunk, without the binding's wrapper frame."""
        # The binding's prototype turns the engine handle into a ctypes pointer object on
        # every call; plain integers are cheaper, and this runs once per instruction.
        code_hook = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint32, ctypes.c_void_p)

        def thunk(handle, address, size, data):
            if self._error is not None:
                return
            try:
                callback(address, size)
            except BaseException as exc:
                self._error = exc
                self.uc.emu_stop()

        cthunk = code_hook(thunk)
        self._thunks.append(cthunk)
        return self.uc._Uc__do_hook_add(UC_HOOK_CODE, cthunk, 1, 0)

    def add_raw_instruction_hook(self, thunk) -> int:
        """Like :meth:`add_instruction_hook`, but ``thunk(handle, address, size, data)`` is
        called from C directly, one Python frame less: it must catch its own exceptions
        and hand them to :meth:`fail`."""
        code_hook = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint32, ctypes.c_void_p)
        cthunk = code_hook(thunk)
        self._thunks.append(cthunk)
        return self.uc._Uc__do_hook_add(UC_HOOK_CODE, cthunk, 1, 0)

    def fail(self, exc: BaseException) -> None:
        """A hook failed: stop emulation and re-raise ``exc`` from :meth:`run`."""
        if self._error is None:
            self._error = exc
        self.uc.emu_stop()

    def read_regs_thunk(self, ids, values):
        """A zero-argument function that reads the registers named by ``ids`` (a ctypes int
        array) into ``values`` (a ctypes uint64 array) in one C call: the tracer's hot path."""
        ptrs = (ctypes.c_void_p * len(values))(*(ctypes.addressof(values) + 8 * i for i in range(len(values))))
        self._regs_keep.append((ids, values, ptrs))
        # Plain-address prototype: the binding's argtypes convert the arrays on every call,
        # which costs more than the read itself.
        batch = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                                 ctypes.c_int)(("uc_reg_read_batch", _uclib))
        handle, a_ids, a_ptrs, n = self.uc._uch.value, ctypes.addressof(ids), ctypes.addressof(ptrs), len(values)
        call = lambda: batch(handle, a_ids, a_ptrs, n)  # noqa: E731
        call.parts = (batch, handle, a_ids, a_ptrs, n)  # for callers that inline the call
        return call

    def read_raw(self, addr: int, size: int) -> bytes:
        """Host-physical bytes, no error raised (b"" when unmapped)."""
        buf = self._membuf
        if size > MEMBUF_SIZE or self._mem_read(self._handle, addr, buf, size):
            return b""
        return buf.raw[:size]

    def remove_hook(self, handle: int) -> None:
        self.uc.hook_del(handle)

    # -- model-specific registers ---------------------------------------------------------
    def msr(self, index: int) -> int:
        with self._no_intercepts():
            return self.uc.msr_read(index)

    def set_msr(self, index: int, value: int) -> None:
        with self._no_intercepts():
            self.uc.msr_write(index, value)

    @contextmanager
    def _no_intercepts(self):
        """Unicorn's MSR access runs QEMU's RDMSR/WRMSR helpers, intercept check included:
        outside a run an intercept there would unwind into nowhere."""
        intercepting = self._hflags.value & quirks.HF_GUEST
        self._hflags.value &= ~quirks.HF_GUEST
        try:
            yield
        finally:
            self._hflags.value |= intercepting

    def intercept_cpu_checks(self) -> None:
        """Report MOV to CR4 and every RDMSR/WRMSR to ``ops.on_intercept`` before the engine
        executes them (:func:`vmm.cpu.quirks.probe_intercepts`), so that the VMM makes the
        checks QEMU 5 leaves out (reserved CR4 bits, MSRs qemu32 does not have) where it
        does not otherwise stand between the guest and the CPU. Costs nothing elsewhere:
        only these instructions call out."""
        self.uc.mem_map(INTERCEPT_HOST, PAGE + MSRPM_SIZE, UC_PROT_READ)
        self.uc.mem_write(INTERCEPT_HOST + quirks.VMCB_MSRPM_BASE, struct.pack("<Q", INTERCEPT_HOST + PAGE))
        self.uc.mem_write(INTERCEPT_HOST + PAGE, b"\xff" * MSRPM_SIZE)   # every MSR, read and write
        env = quirks.env_address(self.uc)
        ctypes.c_uint64.from_address(env + quirks.probe_intercepts().vm_vmcb).value = INTERCEPT_HOST
        self._intercept(general=1 << (quirks.SVM_EXIT_MSR - quirks.SVM_EXIT_INTR), cr_write=1 << 4)

    def _intercept(self, general: int = 0, cr_write: int = 0) -> None:
        """Add these bits to QEMU's SVM intercepts (``intercept``, ``intercept_cr_write``)."""
        fields = quirks.probe_intercepts()
        env = quirks.env_address(self.uc)
        ctypes.c_uint64.from_address(env + fields.intercept).value |= general
        ctypes.c_uint16.from_address(env + fields.intercept_cr_write).value |= cr_write
        self._hflags.value |= quirks.HF_GUEST
        self.uc.ctl_flush_tb()   # hflags is part of a translated block's key

    # -- running -------------------------------------------------------------------------
    @property
    def vmm_access(self) -> bool:
        """True while the VMM itself loads a segment register (a TLB fill it causes must
        be answered: a refusal would raise the exception across the VMM's own frames)."""
        return self._segment_load is not None

    @property
    def running(self) -> bool:
        """True inside ``emu_start`` (hooks), where host memory cannot be mapped."""
        return self._running

    def end_run(self) -> None:
        """Called from a handler: end the current run after this instruction, with no
        reason to report (the run loop looks again: replans timers, delivers events)."""
        self.uc.emu_stop()

    def end_run_halted(self) -> None:
        """Called from a handler that emulated HLT (EIP already past it): end the run as
        the engine's own HLT ends it, so the run loop halts the VM."""
        self._hlt_emulated = True
        self.uc.emu_stop()

    def request_stop(self, reason: str) -> None:
        """Called from a handler: stop after the current instruction."""
        self.stop_reason = reason
        self.uc.emu_stop()

    def run(self, count: int = 0, timeout_s: float | None = None) -> Stop:
        """Run from the current EIP until an event that needs the VMM.

        ``count`` > 0 bounds the run to that many instructions (Unicorn's counter: about
        10x slower per instruction, so the VM asks for it only when a timer or an
        instruction budget needs it). ``timeout_s`` bounds wall-clock time.
        """
        self._error = None
        self._fault = self.pending_fault = None
        self.stop_reason = None
        self._hlt_emulated = False
        self._counter_at_event = -1
        self.executed = 0
        begin = self.reg("eip")  # UC_MODE_32 sets EIP = begin, also in real mode
        if self.io_permission is not None:
            self._hflags.value |= HF_IOBPT   # a guest MOV to DR7 recomputes it
        if bool(count) != self._counting:
            # Unicorn adds its instruction-count hook to blocks as it translates them and
            # does not flush those translated before: a counted run over code translated
            # in a free run would overshoot its count (measured: a 1-instruction step
            # ran 3). Switching between free and counted runs drops the translations.
            self.uc.ctl_flush_tb()
            self._counting = bool(count)
        timeout_us = int(timeout_s * 1e6) if timeout_s else 0
        started = time.perf_counter()
        self._running = True
        try:
            self.uc.emu_start(begin, 0, timeout=timeout_us, count=count)
        except UcError as err:
            if self._error is not None:
                raise self._error from err
            if err.errno == UC_ERR_EXCEPTION and self._fault is not None:
                self.pending_fault = self._fault
                return Stop.FAULT
            if err.errno in (UC_ERR_READ_UNMAPPED, UC_ERR_WRITE_UNMAPPED, UC_ERR_FETCH_UNMAPPED):
                self.stop_reason = str(err)
                return Stop.UNMAPPED
            raise EngineError(f"{err} at EIP {self.reg('eip'):#010x}") from err
        finally:
            self._running = False
            fault, self._fault = self._fault, None
            halted = bool(self._halted.value)
            self.executed = self._executed(count, halted)
        if self._error is not None:
            raise self._error
        if fault is not None:
            self.pending_fault = fault
            return Stop.FAULT
        if self._pending_iret is not None:
            frame, self._pending_iret = self._pending_iret, None
            self.iret_to(**frame)
            if self.stop_reason is None:
                return Stop.SLICE_DONE
        if self.stop_reason is not None:
            return Stop.REQUESTED
        if timeout_s and time.perf_counter() - started >= timeout_s:
            return Stop.TIMEOUT
        if halted or self._hlt_emulated:  # the engine's halted state, not a byte 0xF4 before EIP
            return Stop.HALT
        return Stop.SLICE_DONE

    def executed_so_far(self) -> int:
        """Guest instructions the current counted run has executed before the one whose
        hook is running (0 between runs and in a free run, which has no counter)."""
        if not (self._running and self._counting):
            return 0
        return max(self._counter.value - 1, 0)

    def _executed(self, count: int, halted: bool) -> int:
        """Guest instructions a counted run executed, from Unicorn's counter of those it
        began: its count hook runs before each instruction, so a run that ends between
        instructions (budget spent, a hook's stop, a refused TLB fill, a breakpoint) has
        begun one more than it executed. A run that ends in HLT, or in the interrupt
        hook of the last instruction begun, executed that one too."""
        if not count:
            return 0
        begun = self._counter.value
        if halted or self._hlt_emulated or begun == self._counter_at_event:
            return min(begun, count)
        return min(max(begun - 1, 0), count)

    def enter_ring(self, cpl: int, cs: int, ss: int) -> None:
        """Load CS and SS of a more privileged ring, as interrupt delivery does.

        Unicorn's ``reg_write`` refuses a selector whose RPL/DPL differs from the current
        CPL (it checks like MOV to SS). QEMU derives CPL from the SS descriptor cache, and
        a segment load with CR0.PE clear is a real-mode load whose cache has DPL 0. So:
        clear PE, load SS (CPL becomes 0), set PE again, then load CS and SS through the
        normal checks. Only ring 0 is reachable this way; modes that run a guest kernel in
        ring 1 enter it with IRET from a ring-0 trampoline instead (:meth:`iret_to`).
        """
        if cpl != 0:
            raise ValueError("enter_ring reaches ring 0 only; use iret_to for rings 1-3")
        cr0 = self.reg("cr0")
        self.set_reg("cr0", cr0 & ~1)
        self.set_reg("ss", 0)
        self.set_reg("cr0", cr0)
        self.set_reg("cs", cs)
        self.set_reg("ss", ss)

    def iret_soon(self, **frame) -> None:
        """:meth:`iret_to`, from wherever the VMM is: now between runs, or, inside a hook
        (where ``emu_start`` cannot be re-entered), as soon as the current run stops,
        which it is asked to do before the next guest instruction."""
        if not self._running:
            self.iret_to(**frame)
            return
        self._pending_iret = frame
        self.uc.emu_stop()

    def iret_to(self, *, eip: int, cs: int, eflags: int, esp: int, ss: int, vmm_cs: int, vmm_ss: int) -> None:
        """Enter any ring (a deprivileged kernel's ring 1 above all) the way the CPU allows:
        a 32-bit IRET executed at CPL 0 from the VMM's trampoline page.

        ``reg_write`` cannot load a less privileged CS/SS pair (see :meth:`enter_ring`),
        so the engine first reaches CPL 0 with the VMM's own ring-0 descriptors
        ``vmm_cs``/``vmm_ss`` (a VMM that deprivileges its guest owns the GDT the CPU uses
        and reserves entries for itself, as Xen does), pushes an IRET frame on a stack in
        the trampoline page, and runs the one IRET there. The trampoline occupies the
        linear page TRAMPOLINE_LINEAR, which the TLB-fill hook serves before asking the
        mode: the top of the linear address space is the VMM's, as in Xen's 32-bit PV.
        """
        if self.trampoline is None:
            self.uc.mem_map(TRAMPOLINE_HOST, PAGE, UC_PROT_ALL)
            self.uc.mem_write(TRAMPOLINE_HOST, b"\xcf")  # IRETD
            self.trampoline = TRAMPOLINE_HOST
        self.enter_ring(0, vmm_cs, vmm_ss)
        frame = struct.pack("<IIIII", eip, cs, eflags, esp, ss)
        self.uc.mem_write(TRAMPOLINE_HOST + TRAMPOLINE_STACK, frame)
        self.set_reg("esp", TRAMPOLINE_LINEAR + TRAMPOLINE_STACK)
        self.set_reg("eip", TRAMPOLINE_LINEAR)
        if not self._counting:
            self.uc.ctl_flush_tb()
            self._counting = True
        self._running = True
        try:
            self.uc.emu_start(TRAMPOLINE_LINEAR, 0, count=1)
        finally:
            self._running = False
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        if self.reg("eip") != eip or self.reg("cs") != cs:
            raise EngineError(f"IRET to {cs:#06x}:{eip:#010x} did not land (CS {self.reg('cs'):#06x}, "
                              f"EIP {self.reg('eip'):#010x}): check the descriptors")

    # -- debugger support (the gdb stub) -------------------------------------------------
    def flush_translations(self) -> None:
        """Drop Unicorn's translated blocks: code written from outside the guest, a
        breakpoint placed, or a single step ahead."""
        self.uc.ctl_flush_tb()

    def add_memory_watch(self, begin: int, end: int, *, reads: bool, writes: bool, callback) -> list[int]:
        """Call ``callback(is_write, address, size)`` for every guest data access whose first
        byte lies in host-physical ``[begin, end]`` (no per-instruction hook); the hook handles,
        each for :meth:`remove_hook`."""
        from unicorn import UC_HOOK_MEM_READ, UC_HOOK_MEM_WRITE, UC_MEM_WRITE

        def hook(uc, access, address, size, value, data):
            callback(access == UC_MEM_WRITE, address, size)
        kinds = ((UC_HOOK_MEM_READ,) if reads else ()) + ((UC_HOOK_MEM_WRITE,) if writes else ())
        return [self.uc.hook_add(kind, hook, None, begin, end) for kind in kinds]
