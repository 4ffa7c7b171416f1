"""Typed exits and the one handler contract: where the processor side meets the VMM.

Every event that reaches the VMM is one frozen value here, its payload in named
fields. The VT-x exits carry their SDM reason (:class:`ExitReason`) and the
exit-information fields a VMCS would hold (qualification, instruction length,
guest-linear and guest-physical address). The software VMMs' own entries (a ``pv``
hypercall, a ``bt`` callout, a privileged instruction ``trap`` emulates after its #GP)
have no SDM reason: they name a statistics category and an event within it instead.

A handler takes one exit and returns one :class:`Outcome`; the run loop's
``VM.dispatch`` counts the exit (once), times the handler, publishes both, and
interprets the outcome. Nothing else does any of the three.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from .exit_reasons import ExitReason

IN, OUT = "in", "out"


@dataclass(frozen=True, slots=True, kw_only=True)
class Exit:
    """An event the VMM handles. ``reason`` is None for a software VMM's own entries,
    which are counted by ``category`` and ``name`` instead of by SDM reason."""

    reason: ExitReason | None = None
    qualification: int = 0
    length: int = 0                 # VM-exit instruction length
    linear: int | None = None       # guest-linear address
    gpa: int | None = None          # guest-physical address
    hooked: bool = False            # the engine completes the instruction itself (CPUID, IN/OUT, RDTSC)

    category: ClassVar[str | None] = None
    _HEADER: ClassVar[frozenset[str]] = frozenset({"reason", "qualification", "length", "linear", "gpa", "hooked"})

    @property
    def key(self) -> Any:
        """What a mode's exit table is keyed by: the SDM reason, or the exit's type."""
        return self.reason if self.reason is not None else type(self)

    def payload(self) -> dict[str, Any]:
        """The reason-specific fields (what the tracer prints as ``info``), unset ones left out."""
        out = {}
        for f in fields(self):
            if f.name not in self._HEADER and f.repr:
                value = getattr(self, f.name)
                if value is not None:
                    out[f.name] = value
        return out


# -- VT-x exits (SDM vol. 3 appendix C) ------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class ExceptionExit(Exit):
    """EXCEPTION_NMI: an exception the exception bitmap intercepts (or, outside VT-x, the
    exception or software interrupt the guest raised)."""

    reason: ExitReason | None = ExitReason.EXCEPTION_NMI
    vector: int
    error_code: int | None = 0
    software: bool = False
    cr2: int | None = None
    access: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ShadowPageFault(Exit):
    """EXCEPTION_NMI for a #PF under shadow paging that the shadow tables missed: hidden
    (the guest's tables map it: fill the shadow) or true (the guest's own fault)."""

    reason: ExitReason | None = ExitReason.EXCEPTION_NMI
    vector: int
    error_code: int
    access: str
    write: bool
    user: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class ExternalInterruptExit(Exit):
    reason: ExitReason | None = ExitReason.EXTERNAL_INTERRUPT
    vector: int | None = None       # None: not acknowledged on exit, the handler asks the board


@dataclass(frozen=True, slots=True, kw_only=True)
class IoExit(Exit):
    reason: ExitReason | None = ExitReason.IO_INSTRUCTION
    port: int
    size: int
    direction: str                  # IN or OUT
    value: int | None = None        # OUT only


@dataclass(frozen=True, slots=True, kw_only=True)
class CpuidExit(Exit):
    reason: ExitReason | None = ExitReason.CPUID


@dataclass(frozen=True, slots=True, kw_only=True)
class InstructionExit(Exit):
    """An exit whose reason says everything: HLT, INVD, INVLPG (address in ``linear``),
    RDPMC, RDTSC, VMCALL, WBINVD, and the window and timer exits."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CrAccessExit(Exit):
    reason: ExitReason | None = ExitReason.CR_ACCESS
    cr: int
    gpr: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class DrAccessExit(Exit):
    reason: ExitReason | None = ExitReason.DR_ACCESS
    dr: str
    gpr: str
    to_dr: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class MsrExit(Exit):
    """MSR_READ or MSR_WRITE (ECX at the time of the exit)."""

    msr: int


@dataclass(frozen=True, slots=True, kw_only=True)
class DescriptorTableExit(Exit):
    """GDTR_IDTR or LDTR_TR: the instruction by mnemonic, its displacement as qualification."""

    mnemonic: str


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskSwitchExit(Exit):
    """TASK_SWITCH: every task switch in VMX non-root operation exits (SDM vol. 3
    §25.4.2). The new TSS's selector and what started the switch (the qualification's
    fields), and, for an exception that came through a task gate, its error code (also in
    the IDT-vectoring fields) and EXT."""

    reason: ExitReason | None = ExitReason.TASK_SWITCH
    selector: int
    source: int                     # vmm.cpu.tasks.TaskSource: CALL, IRET, JMP, TASK_GATE
    error_code: int | None = None
    ext: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class EptViolationExit(Exit):
    """EPT_VIOLATION: ``gpa`` is the guest-physical address the walk could not map."""

    reason: ExitReason | None = ExitReason.EPT_VIOLATION


@dataclass(frozen=True, slots=True, kw_only=True)
class EptMisconfigExit(Exit):
    """EPT_MISCONFIG: an access to a device page (its EPT entry is misconfigured on purpose)."""

    reason: ExitReason | None = ExitReason.EPT_MISCONFIG
    address: int
    size: int
    value: int | None = None        # a store's value; None for a load


# -- a software VMM's own entries ----------------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class Hypercall(Exit):
    """``pv``: ``int 0x82`` from the guest kernel; number in EAX, arguments in EBX..EDI."""

    category: ClassVar[str] = "hypercalls"
    number: int
    name: str
    args: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Callout(Exit):
    """``bt``: a translated sensitive instruction calling into the VMM."""

    category: ClassVar[str] = "callouts"
    address: int
    name: str
    insn: Any = field(default=None, repr=False, compare=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class TrappedInstruction(Exit):
    """``trap``: a privileged instruction of the ring-1 kernel that raised #GP."""

    category: ClassVar[str] = "traps"
    name: str
    error_code: int = 0
    insn: Any = field(default=None, repr=False, compare=False)


# -- outcomes: what a handler asks the run loop to do ------------------------------------------------
class Outcome:
    """The one thing a handler returns."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class Resume(Outcome):
    """Done: the guest goes on (after the VM entry, in VT-x)."""


RESUME = Resume()


@dataclass(frozen=True, slots=True)
class Value(Outcome):
    """Done, with the instruction's result: the value an IN or an MMIO load reads, or the
    TLB-fill answer of a shadow page fault."""

    value: Any


@dataclass(frozen=True, slots=True)
class Retry(Outcome):
    """The instruction cannot complete until the VMM maps memory, which Unicorn does not
    allow while it emulates: the run stops, ``prepare()`` maps, the instruction runs again."""

    prepare: Callable[[], None]
    what: str = ""


@dataclass(frozen=True, slots=True)
class Reflect(Outcome):
    """The emulated instruction raised an exception in the guest: deliver it instead.
    ``label`` names the event in the statistics (default: "<name> (faulted)")."""

    vector: int
    error_code: int | None = 0
    cr2: int | None = None
    label: str | None = None


@dataclass(frozen=True, slots=True)
class Decline(Outcome):
    """Not this table's event after all (a #GP that is no privileged instruction the VMM
    emulates): uncounted, the caller delivers the original exception."""


DECLINE = Decline()


@dataclass(frozen=True, slots=True)
class StopVm(Outcome):
    """The VM cannot go on: stop it with this reason."""

    reason: str


class UnexpectedExit(Exception):
    """A mode's exit table has no handler for this exit: the VM stops with a dump."""

    def __init__(self, exit: Exit, mode: str):
        what = (f"exit reason {exit.reason.value} ({exit.reason.name})" if exit.reason is not None
                else type(exit).__name__)
        super().__init__(f"mode {mode!r} has no handler for {what}, qualification {exit.qualification:#x}")
        self.exit = exit
