"""A virtual machine: memory, board, one vCPU, a mode, and the run loop.

The engine reports events; the mode's processor turns each into a typed exit
(:mod:`vmm.vmx.exits`) and :meth:`VM.dispatch` runs the mode's handler for it, counts it
once, publishes it on the event bus (:mod:`vmm.bus`) and carries out the handler's
outcome (docs/ARCHITECTURE.md follows one of each kind through). Virtual time is counted in guest instructions so a run
is deterministic: the engine runs free (no counter, full speed) unless a timer is armed
or an instruction budget is set, and then in slices that end at the next timer deadline.
A slice cut short by an event is charged the instructions it executed (the engine reads
Unicorn's own counter), so ``--max-instructions N`` stops after exactly N.
"""
from __future__ import annotations

import enum
import sys
import time
import weakref
from collections import Counter
from dataclasses import dataclass, field
from typing import NoReturn

from .bus import EventBus
from .cpu import realmode
from .cpu.delivery import PF, Event, TripleFault
from .cpu.engine import Engine, EngineError, Fault, Fill, GuestMemoryError, Stop
from .cpu.faultaddr import precise_fault_address
from .cpu.realmode import NoFirmware
from .devices.board import Board
from .firmware import install as install_firmware
from .loader.entry import load_protected_mode_state
from .loader.image import LoadedImage
from .mmu.paging import PageFault
from .modes.memory import UNASSIGNED_SIZE, is_unassigned_host
from .vmx.exits import DECLINE, RESUME, Decline, Exit, Outcome, Reflect, Retry, StopVm, UnexpectedExit, Value
from .x86 import CR0, EFLAGS, PAGE_MASK, PAGE_OFFSET_MASK, PAGE_SIZE

_clock = time.perf_counter
# While an interrupt waits for IF=1 (or for an STI / MOV SS shadow to end), the loop steps
# the guest one instruction at a time: hardware takes the interrupt at the first boundary
# that allows it, and ``sti; nop; cli`` opens the window for exactly one boundary. Only the
# waiting costs this (VT-x's interrupt-window exiting, modelled as stepping).
INTERRUPT_WINDOW_SLICE = 1
SLICE_QUANTUM = 4096          # longest counted slice: how long the VMM may go without looking at the clock
TSC_PER_INSTRUCTION = 1000    # TSC ticks per guest instruction: with one PIT clock per instruction, the
                              # TSC runs 1000x the PIT's 1.193182 MHz, as a ~1.19 GHz processor's would
HOST_MEMORY_BASE = 0xE0000000  # VMM-private host memory (VMX bitmaps, EPT tables), not guest RAM
BOOT_SECTOR_STACK = 0x7C00        # SS:SP a BIOS leaves a boot sector: just below it
REAL_MODE_IVT_LIMIT = 0x3FF       # 256 four-byte vectors at 0



def _stdout_write(data: bytes) -> None:
    """The default serial console: the process's standard output, as bytes."""
    sys.stdout.buffer.write(data)

class StopKind(enum.Enum):
    EXIT = "guest exit"                 # isa-debug-exit: status in VmResult.exit_status
    TRIPLE_FAULT = "triple fault"
    HALTED = "halted"                   # HLT with nothing left to wake it
    BUDGET = "instruction budget exhausted"
    TIMEOUT = "wall-clock budget exhausted"
    ERROR = "stopped by the VMM"        # the guest did something the VM cannot continue from
    ENTRY_FAILED = "VM-entry failure"   # VT-x: invalid VMCS controls or guest state
    BREAKPOINT = "breakpoint"           # stopped before an instruction the user asked for
    INTERRUPTED = "interrupted"         # VM.interrupt (SIGINT, the console's quit key); run() raises VmInterrupted
    RESET = "reset"                     # a jump to the reset vector, and no firmware to run
    POWEROFF = "powered off"            # ACPI soft-off (S5, or S4) through PM1a_CNT; status 0, as QEMU


@dataclass
class VmResult:
    kind: StopKind
    message: str
    eip: int
    exit_status: int | None = None
    instructions: int | None = None    # exact, when the whole run was counted (--max-instructions)
    virtual_time: int = 0              # guest instructions counted while a timer was armed
    wall_seconds: float = 0.0
    exits: Counter = field(default_factory=Counter)
    exit_seconds: Counter = field(default_factory=Counter)
    memory: dict = field(default_factory=dict)   # the mode's memory-virtualization counters
    events: dict = field(default_factory=dict)   # the mode's own events: category -> Counter(name)
    event_seconds: dict = field(default_factory=dict)  # handler time, same keys
    serial: bytes = b""   # the console's output, where the caller kept it (the bench workloads)

    @property
    def status(self) -> int:
        """Process exit status: the guest's own through isa-debug-exit, 0 for an ACPI
        poweroff (QEMU's), else 1."""
        if self.exit_status is not None:
            return self.exit_status
        return 0 if self.kind is StopKind.POWEROFF else 1


class VmInterrupted(KeyboardInterrupt):
    """Raised by :meth:`VM.run` for an INTERRUPTED stop, once the stop is published (the
    bus's "stop" subscribers, a trace's final record, have seen ``result``): an interrupt
    ends the caller's work too, as Python's own KeyboardInterrupt does."""

    def __init__(self, result: VmResult):
        super().__init__(result.message)
        self.result = result


#: Every VM of the process, for :func:`interrupt_all`.
_LIVE: weakref.WeakSet = weakref.WeakSet()


def interrupt_all(reason: str) -> bool:
    """:meth:`VM.interrupt` every VM of the process (from any thread). True if one of them
    was inside the engine, whose run then ends by itself with INTERRUPTED."""
    while True:
        try:
            vms = list(_LIVE)
            break
        except RuntimeError:   # another thread made or dropped a VM during the copy
            continue
    inside = False
    for vm in vms:
        vm.interrupt(reason)
        inside = inside or vm.engine.running
    return inside


class _Stopped(Exception):
    def __init__(self, kind: StopKind, message: str):
        super().__init__(message)
        self.kind, self.message = kind, message


class VM:
    """One guest. ``mode`` is a name from :mod:`vmm.modes`."""

    def __init__(self, image: LoadedImage, *, mode: str = "native", ram_size: int = 128 << 20,
                 serial_output=None, serial_input=None, max_instructions: int | None = None,
                 timeout: float | None = None, mode_options: dict | None = None,
                 devices: dict[str, bool] | None = None, keyboard_input=None):
        from .modes import get_mode

        self.image = image
        self.ram_size = ram_size
        self.max_instructions = max_instructions
        self.timeout = timeout
        self.board = Board(ram_size=ram_size,
                           serial_output=serial_output or _stdout_write,
                           serial_input=serial_input, devices=devices, keyboard_input=keyboard_input)
        self.engine = Engine(self)
        self.board.hpet.clock = self.virtual_time   # reads see the instructions of the current run
        self.board.acpi.clock = self.board.cmos.clock = self.virtual_time
        self.bus = EventBus(self.engine)   # what happens in this VM, for whoever subscribes
        for base, length, _name in self.board.mmio_bus.regions():
            self.engine.map_mmio(base, length,
                                 lambda off, size, b=base: self.on_mmio(b + off, size, None),
                                 lambda off, size, value, b=base: self.on_mmio(b + off, size, value))
        self._host_next = HOST_MEMORY_BASE
        self._breakpoint_hit: int | None = None
        self._breakpoints: dict[int, int] = {}
        self._stepping_over: int | None = None
        self._launched = False
        self._counted_slice = False
        self.tsc_reads = 0
        self.tsc_offset = 0      # WRMSR to IA32_TIME_STAMP_COUNTER moves it (set_tsc)
        self.tsc_last = -1       # the last value read: the TSC never goes backwards
        self.clock_read = False  # the guest reads the TSC: every run is counted from then on
        self.exits: Counter = Counter()          # exits (events, in native) by reason
        self.exit_seconds: Counter = Counter()   # handler wall time by reason (float seconds)
        self.now = 0  # virtual time in guest instructions
        self._interrupt: str | None = None   # why VM.interrupt was called
        _LIVE.add(self)
        self.mode = get_mode(mode)(self, **(mode_options or {}))
        # What each engine event becomes is the processor's to decide: the mode itself,
        # or, for a guest in VMX non-root operation, the VMX processor it holds.
        self.processor = self.mode.processor
        self.mode.map_guest_ram()
        self._load(image)

    def host_alloc(self, size: int) -> int:
        """Map ``size`` bytes of VMM-private host memory; returns its host-physical address."""
        size = (size + PAGE_OFFSET_MASK) & PAGE_MASK
        address = self._host_next
        self.engine.map_ram(address, size)
        self._host_next += size
        return address

    def guest_tsc(self) -> int:
        """The time-stamp counter: virtual time (guest instructions, those of the current
        run included) in TSC ticks, plus the guest's offset; deterministic, strictly
        increasing per read. A read in a free run ends it, and every later run is
        counted, so that the next read sees the instructions run in between."""
        self.tsc_reads += 1
        tsc = self.virtual_time() * TSC_PER_INSTRUCTION + self.tsc_offset
        self.tsc_last = max(tsc, self.tsc_last + 1) & ((1 << 64) - 1)
        return self.tsc_last

    def virtual_time(self) -> int:
        """Guest instructions so far, those of the current run included: the time every
        clock the guest reads derives from (TSC, HPET). A read in a free run ends it, and
        every later run is counted, so that the next read sees the instructions between."""
        eng = self.engine
        if not self.clock_read:
            self.clock_read = True
            if eng.running and not self._counted_slice:
                eng.end_run()
        return self.now + eng.executed_so_far()

    def set_tsc(self, value: int) -> None:
        """WRMSR to IA32_TIME_STAMP_COUNTER: the TSC reads ``value`` now and runs on from it."""
        eng = self.engine
        self.tsc_offset = value - (self.now + eng.executed_so_far()) * TSC_PER_INSTRUCTION
        self.tsc_last = (value & ((1 << 64) - 1)) - 1

    # -- boot ----------------------------------------------------------------------------
    def _load(self, image: LoadedImage) -> None:
        # SeaBIOS's tables first, so the image's bytes win where they overlap; a PV domain has no BIOS.
        self.firmware = None if self.mode.name == "pv" else install_firmware(self.board, self.engine,
                                                                             self.mode.write_guest, image)
        for addr, data in image.chunks:
            self.mode.write_guest(addr, data)
        eng = self.engine
        if image.real_mode:
            eng.set_reg("cr0", CR0.ET)
            for seg in ("ds", "es", "ss", "fs", "gs"):
                eng.set_reg(seg, 0)
            eng.set_reg("cs", 0)
            eng.set_reg("esp", BOOT_SECTOR_STACK)
            eng.set_table("idtr", 0, REAL_MODE_IVT_LIMIT)
        else:
            # Protected mode, flat, IF=0, as QEMU's Multiboot option ROM leaves it (its GDT
            # at its address); the guest loads its own before reloading a selector.
            load_protected_mode_state(eng, self.mode.write_guest)
        eng.set_reg("eflags", EFLAGS.FIXED)
        for name, value in image.registers.items():
            eng.set_reg(name, value)
        eng.set_reg("eip", image.entry)
        self.mode.boot(image)
        realmode.install(eng, image.real_mode, image.chunks)   # IP wrap, reset with no firmware

    # -- VcpuOps: what the engine calls; the processor decides what each event becomes ----
    def on_interrupt(self, vector: int, error_code: int, software: bool) -> None:
        self.processor.on_exception(vector, error_code, software)

    def on_invalid_opcode(self) -> None:
        self.processor.on_invalid_opcode()

    def on_tlb_fill(self, vaddr: int, access: str) -> Fill | Fault:
        answer = self.mode.tlb_fill(vaddr, access)
        subs = self.bus.fill
        if subs:
            for observe in subs:
                observe(vaddr, access, answer)
        return answer

    def on_port_in(self, port: int, size: int) -> int:
        subs = self.bus.port
        if subs:
            for observe in subs:
                observe(port, size, None)
        return self.processor.on_port_in(port, size)

    def on_port_out(self, port: int, size: int, value: int) -> None:
        subs = self.bus.port
        if subs:
            for observe in subs:
                observe(port, size, value)
        self.processor.on_port_out(port, size, value)

    def on_mmio(self, address: int, size: int, value: int | None) -> int | None:
        """A device-page access (the engine's MMIO callbacks): the mode decides what it is."""
        subs = self.bus.mmio
        if subs:
            for observe in subs:
                observe(address, size, value)
        return self.mode.on_mmio(address, size, value)

    def on_cpuid(self) -> bool:
        return self.processor.on_cpuid()

    def on_rdtsc(self) -> bool:
        return self.processor.on_rdtsc()

    def on_code_site(self, address: int) -> None:
        self.processor.on_code_site(address)

    def on_intercept(self, exit_code: int, info: int) -> None:
        self.mode.on_intercept(exit_code, info)   # only a mode that asked the engine for them

    def on_task_state_access(self) -> None:
        self.mode.on_task_state_access()          # only a mode that models task switching

    # -- the exit table: the one place exits are counted and outcomes interpreted ----------
    def dispatch(self, exit: Exit):
        """Run the mode's handler for ``exit``, count the exit once, time the handler, and
        carry out the :class:`~vmm.vmx.exits.Outcome` it returns. Returns the value for
        the instruction (``Value``), a :class:`Fault` that stops the run (``Retry``,
        inside a TLB fill), ``DECLINE``, or None."""
        mode = self.mode
        reason = exit.reason   # (Exit.key, inlined: this is every exit's path)
        handler = mode.exit_table.get(reason if reason is not None else type(exit))
        if handler is None:
            if reason is not None:
                self.exits[reason] += 1
            raise UnexpectedExit(exit, mode.name)
        bus = self.bus
        if bus.exit:
            for observe in bus.exit:
                observe(exit)
        category = exit.category
        outcome = None
        started = _clock()
        if category is None:
            self.exits[reason] += 1
            try:
                outcome = handler(exit)
            finally:
                self.exit_seconds[reason] += _clock() - started  # type: ignore[assignment]  # typeshed: Counter holds ints; these are float seconds
                if bus.handled:
                    value = outcome.value if isinstance(outcome, Value) else None
                    for observe in bus.handled:
                        observe(exit, value, getattr(mode, "vmcs", None))
        else:
            outcome = handler(exit)
            if outcome is not DECLINE:
                label = getattr(exit, "name", category)  # software entries are named
                if isinstance(outcome, Reflect):
                    label = outcome.label or f"{label} (faulted)"
                mode.events.add(category, label, seconds=_clock() - started)
        if outcome is RESUME:
            return None
        return self._carry_out(outcome)

    def _carry_out(self, outcome: Outcome):
        if isinstance(outcome, Value):
            return outcome.value
        if isinstance(outcome, Retry):
            if not self.engine.running:
                outcome.prepare()
                return None
            return Fault(None, None, 0, outcome.what, then=outcome.prepare)
        if isinstance(outcome, StopVm):
            raise _Stopped(StopKind.ERROR, outcome.reason)
        if isinstance(outcome, Reflect):
            self.mode.reflect(outcome.vector, outcome.error_code, outcome.cr2)
            return None
        if isinstance(outcome, Decline):
            return outcome
        raise TypeError(f"an exit handler returned {outcome!r}, not an Outcome")

    # -- event delivery ---------------------------------------------------------------------
    def inject(self, event: Event) -> None:
        """Deliver an event into the guest (VT-x: VM-entry event injection)."""
        subs = self.bus.inject
        if subs:
            for observe in subs:
                observe(event)
        self.mode.delivery.deliver(event)

    def stop_guest(self, message: str) -> NoReturn:
        """Stop the VM now, with a reason (called after emulation stopped)."""
        raise _Stopped(StopKind.ERROR, message)

    def request_stop(self, reason: str) -> None:
        self.engine.request_stop(reason)

    def interrupt(self, reason: str = "SIGINT") -> None:
        """Stop the run from any thread: a free run without exits is inside ``emu_start``,
        where no Python runs, so the engine is told to stop and the run loop ends with
        INTERRUPTED when it returns. A VM not running stops as soon as it runs. Safe to repeat
        (a caller racing the loop into ``emu_start`` calls again until the run has ended)."""
        if self._interrupt is None:
            self._interrupt = reason
        if self.engine.running:
            self.engine.end_run()

    def break_at(self, address: int) -> None:
        """Stop the run before the instruction at ``address`` (linear) executes."""
        if address in self._breakpoints:
            return

        def hit(a: int) -> None:
            if self._stepping_over == a:
                return
            self._breakpoint_hit = a
            self.engine.request_stop(f"breakpoint at {a:#010x}")
        self._breakpoints[address] = self.engine.add_breakpoint(address, hit)

    def remove_breakpoint(self, address: int) -> bool:
        handle = self._breakpoints.pop(address, None)
        if handle is not None:
            self.engine.remove_hook(handle)
        return handle is not None

    @property
    def breakpoints(self) -> list[int]:
        return sorted(self._breakpoints)

    def step(self) -> VmResult:
        """Execute one guest instruction, with whatever exits and events it causes.

        Returns a result of kind BREAKPOINT ("step") when the VM can go on, or the reason
        it stopped. A breakpoint at the current EIP does not stop its own step.
        """
        return self.run(single_step=True)

    def read_linear(self, address: int, size: int, *, debug: bool = False) -> bytes:
        """Guest memory as the guest sees it at CPL0 (raises PageFault if unmapped).
        Unassigned guest-physical memory reads 0, counted, as the guest's own read would;
        ``debug`` (a debugger's or the tracer's read, which is nobody's access) raises
        GuestMemoryError there instead, as QEMU's gdbstub reports an error."""
        out = b""
        while len(out) < size:
            chunk = min(size - len(out), PAGE_SIZE - (address & PAGE_OFFSET_MASK))
            out += self.engine.read_phys(self._debug_checked(address, False, chunk, debug), chunk)
            address += chunk
        return out

    def write_linear(self, address: int, data: bytes, *, debug: bool = False) -> None:
        done = 0
        while done < len(data):
            chunk = min(len(data) - done, PAGE_SIZE - ((address + done) & PAGE_OFFSET_MASK))
            self.engine.write_phys(self._debug_checked(address + done, True, chunk, debug), data[done:done + chunk])
            done += chunk

    def _debug_checked(self, linear: int, write: bool, size: int, debug: bool) -> int:
        host = self.mode.translate(linear, write=write, user=False, set_ad=False)
        if debug and is_unassigned_host(host):
            raise GuestMemoryError(host & (UNASSIGNED_SIZE - 1), size, "write" if write else "read")
        return host

    def replan(self) -> bool:
        """The guest reprogrammed a timer or interrupt controller: end the run (after this
        instruction) so the run loop delivers an interrupt that became deliverable and
        recomputes when the next can arrive. A counted slice is charged only what it ran,
        so ending it early costs no virtual time. True if the run was asked to stop."""
        if self.engine.running:
            self.engine.end_run()
            return True
        return False

    # -- running -------------------------------------------------------------------------
    def run(self, single_step: bool = False) -> VmResult:
        """Run (or go on running, after a breakpoint or a step) until the VM stops."""
        started = time.perf_counter()
        self._breakpoint_hit = None
        try:
            if not self._launched:
                self._launched = True
                failure = self.mode.launch()
                if failure is not None:
                    return self._result(StopKind.ENTRY_FAILED, failure, started)
            eip = self.engine.reg("eip")
            if single_step or eip in self._breakpoints:
                self._stepping_over = eip  # the breakpoint we stand on does not fire again
                try:
                    self._loop(started, single_step=True)
                finally:
                    self._stepping_over = None
                if single_step:
                    return self._result(StopKind.BREAKPOINT, f"step to {self.engine.reg('eip'):#010x}", started)
            self._loop(started)
        except _Stopped as stop:
            if stop.kind is StopKind.ERROR and self.board.exit_status is not None:
                return self._result(StopKind.EXIT, "guest exit", started)  # ran past its exit write
            result = self._result(stop.kind, stop.message, started)
            if stop.kind is StopKind.INTERRUPTED:
                raise VmInterrupted(result) from None
            return result
        except KeyboardInterrupt as interrupt:   # Python's own SIGINT handler, between slices or in a hook
            if isinstance(interrupt, VmInterrupted):
                raise
            raise VmInterrupted(self._result(StopKind.INTERRUPTED, f"{self._interrupt or 'SIGINT'} at EIP "
                                             f"{self.engine.reg('eip'):#010x}", started)) from None
        except NoFirmware as nf:
            return self._result(StopKind.RESET if nf.reset else StopKind.ERROR, str(nf), started)
        except TripleFault as tf:
            if self.board.exit_status is not None:   # the rest of the exit's block faulted: the guest had exited
                return self._result(StopKind.EXIT, "guest exit", started)
            self.processor.on_triple_fault(tf)
            return self._result(StopKind.TRIPLE_FAULT, str(tf), started)
        except UnexpectedExit as ue:
            return self._result(StopKind.ERROR, f"{ue}\n{self.dump_state()}", started)
        except EngineError as err:
            return self._result(StopKind.ERROR, f"the engine stopped: {err}\n{self.dump_state()}", started)
        except GuestMemoryError as err:
            if self.board.exit_status is not None:
                return self._result(StopKind.EXIT, "guest exit", started)
            return self._result(StopKind.ERROR, f"{err} at EIP {self.engine.reg('eip'):#010x}", started)
        return self._result(StopKind.EXIT, "guest exit", started)

    def _result(self, kind: StopKind, message: str, started: float) -> VmResult:
        self.mode.stopped()
        exact = self.max_instructions is not None
        events, event_seconds = self.mode.events.snapshot()
        result = VmResult(kind, message, self.engine.reg("eip"), self.board.exit_status,
                          self.now if exact else None, self.now, time.perf_counter() - started,
                          Counter(self.exits), Counter(self.exit_seconds), self.mode.memory_counters(),
                          events, event_seconds)
        if kind is not StopKind.BREAKPOINT:
            for observe in self.bus.stop:
                observe(result)
        return result

    def _loop(self, started: float, single_step: bool = False) -> None:
        eng, board = self.engine, self.board
        while True:
            if self._interrupt is not None:
                raise _Stopped(StopKind.INTERRUPTED, f"{self._interrupt} at EIP {eng.reg('eip'):#010x}")
            if board.exit_status is not None:
                if single_step:
                    raise _Stopped(StopKind.EXIT, "guest exit")
                return
            self._stop_if_reset()
            # A run that stopped inside a device store left the store to be replayed (its
            # instruction restarts): finish that instruction first, so that an interrupt the
            # store made deliverable is taken after it, not before it (and the store not again).
            replay = self.mode.devices.replay_pending
            waiting = False if replay else self.processor.poll_interrupts()
            count = 1 if single_step or replay else self._slice(waiting)
            remaining = None
            if self.timeout is not None:
                remaining = self.timeout - (time.perf_counter() - started)
                if remaining <= 0:
                    raise _Stopped(StopKind.TIMEOUT, f"stopped after {self.timeout:g} s of wall-clock time "
                                   f"(--timeout) at EIP {eng.reg('eip'):#010x}")
            self._counted_slice = bool(count)
            stop = eng.run(count, remaining)
            if count:
                self.now += eng.executed
                board.advance(self.now)
            if self._interrupt is not None:
                continue   # the engine stopped for VM.interrupt: the check above ends the run
            self._after(stop)
            if single_step and board.exit_status is None:
                return
            if self.max_instructions is not None and self.now >= self.max_instructions:
                raise _Stopped(StopKind.BUDGET, f"stopped after {self.now} instructions (--max-instructions) "
                               f"at EIP {eng.reg('eip'):#010x}")

    def _slice(self, irq_waiting: bool) -> int:
        """Instructions to run before the VMM must look again (0: run free)."""
        limits = []
        if self.max_instructions is not None:
            limits.append(self.max_instructions - self.now)
        for nxt in (self.board.next_deliverable_event(), self.processor.next_deadline()):
            if nxt is not None:
                limits.append(nxt - self.now)
        if irq_waiting:
            limits.append(INTERRUPT_WINDOW_SLICE)
        if self.clock_read:
            limits.append(SLICE_QUANTUM)
        return max(1, min(min(limits), SLICE_QUANTUM)) if limits else 0

    def _after(self, stop: Stop) -> None:
        eng = self.engine
        if stop is Stop.FAULT:
            fault = eng.pending_fault
            assert fault is not None, "a FAULT stop always leaves its fault"
            if fault.then is not None:  # the VMM's own work, which had to wait for the run to stop
                fault.then()
                return
            if fault.vector == PF:
                fault.address = self._precise_cr2(fault)
            self.processor.on_fault(fault)
        elif stop is Stop.HALT:
            self.processor.on_halt()
        elif stop is Stop.SLICE_DONE:
            self.processor.on_slice_end()
        elif stop is Stop.REQUESTED:
            if self._breakpoint_hit is not None:
                raise _Stopped(StopKind.BREAKPOINT, eng.stop_reason or "breakpoint")
            if self.board.exit_status is None and eng.stop_reason:
                raise _Stopped(StopKind.ERROR, eng.stop_reason)
        elif stop is Stop.TIMEOUT:
            raise _Stopped(StopKind.TIMEOUT, f"stopped after {self.timeout:g} s of wall-clock time "
                           f"(--timeout) at EIP {eng.reg('eip'):#010x}")
        elif stop is Stop.UNMAPPED and self.board.exit_status is None:
            # (After the guest's exit write, Unicorn may still run the rest of the
            # translated block: whatever those instructions touch, the guest has exited.)
            raise _Stopped(StopKind.ERROR, f"guest accessed memory outside its RAM and devices "
                           f"({eng.stop_reason}) at EIP {eng.reg('eip'):#010x}")

    def read_code(self, linear: int, size: int = 15) -> bytes:
        """Up to ``size`` bytes of code at ``linear``, stopping at an unmapped page."""
        out = b""
        while len(out) < size:
            chunk = min(size - len(out), PAGE_SIZE - (linear & PAGE_OFFSET_MASK))
            try:
                phys = self.mode.translate(linear, write=False, user=False, set_ad=False)
            except PageFault:
                break
            out += self.engine.read_phys(phys, chunk)
            linear += chunk
        return out

    def _precise_cr2(self, fault) -> int:
        eng = self.engine
        eip = eng.reg("eip")
        bits = 32 if eng.reg("cr0") & CR0.PE else 16
        return precise_fault_address(fault.address, fault.access, eip, self.read_code(eip), eng.reg, bits)

    def _stop_if_reset(self) -> None:
        """A reset the guest asked for (port 0x92, 0xcf9) ends the VM before anything else:
        no firmware is there to run after it. So does an ACPI sleep request: soft-off (S5,
        S4) is a poweroff, as on QEMU; suspend-to-RAM (S3) stops the VM too, since nothing
        here would resume it."""
        board = self.board
        if board.reset_requested:
            raise _Stopped(StopKind.RESET, f"reset through {board.reset_source} before EIP "
                           f"{self.engine.reg('eip'):#010x}, and no firmware to run")
        if board.sleep_request == "S3":
            raise _Stopped(StopKind.HALTED, f"suspended to RAM (ACPI S3, through PM1a_CNT) before EIP "
                           f"{self.engine.reg('eip'):#010x}; this board does not resume from S3")
        if board.sleep_request is not None:
            raise _Stopped(StopKind.POWEROFF, f"ACPI poweroff ({board.sleep_request}, through PM1a_CNT) "
                           f"before EIP {self.engine.reg('eip'):#010x}")

    def halt(self) -> None:
        """HLT: sleep until the next interrupt, skipping virtual time to the next timer."""
        self._stop_if_reset()   # a HLT right after the reset, in the same block, never sleeps
        enabled = self.mode.interrupts_enabled()
        if self.board.interrupt_pending() and enabled:
            return
        if not enabled:
            raise _Stopped(StopKind.HALTED, f"guest halted with interrupts disabled at EIP "
                           f"{self.engine.reg('eip') - 1:#010x}")
        nxt = self.board.next_deliverable_event()
        if nxt is None:
            raise _Stopped(StopKind.HALTED, f"guest halted at EIP {self.engine.reg('eip') - 1:#010x} "
                           "waiting for an interrupt that no device will raise")
        self.now = max(self.now, nxt)
        self.board.advance(self.now)

    def dump_state(self) -> str:
        eng = self.engine
        names = ("eax", "ebx", "ecx", "edx", "esi", "edi", "ebp", "esp", "eip", "eflags",
                 "cr0", "cr2", "cr3", "cr4", "cs", "ss", "ds")
        return "  ".join(f"{n}={eng.reg(n):#x}" for n in names)
