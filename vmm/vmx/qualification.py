"""Exit qualifications and interruption-information words, encoded and decoded.

Layouts follow the Intel SDM vol. 3 §28.2.1 ("Exit Qualification for ..." tables) and
§25.9.2 / §25.9.3 / §25.8.3 (interruption information). Every class is a dataclass with
``encode() -> int``, ``decode(int) -> cls`` (a classmethod, ignoring bits the class does
not model) and ``describe() -> str`` for traces.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass

from ..x86.ept import EptViolationQualification
from ..x86.segments import TaskSource

GPR_NAMES = ("EAX", "ECX", "EDX", "EBX", "ESP", "EBP", "ESI", "EDI",
             "R8", "R9", "R10", "R11", "R12", "R13", "R14", "R15")
"""General-purpose register numbering of qualification bits 11:8 (SDM Table 28-3)."""

EXCEPTION_MNEMONICS = {
    0: "#DE", 1: "#DB", 2: "NMI", 3: "#BP", 4: "#OF", 5: "#BR", 6: "#UD", 7: "#NM",
    8: "#DF", 9: "CSO", 10: "#TS", 11: "#NP", 12: "#SS", 13: "#GP", 14: "#PF",
    16: "#MF", 17: "#AC", 18: "#MC", 19: "#XM", 20: "#VE", 21: "#CP",
}


def _field(value: int, lo: int, width: int) -> int:
    return (value >> lo) & ((1 << width) - 1)


def _check(name: str, value: int, width: int) -> int:
    value = int(value)
    if not 0 <= value < (1 << width):
        raise ValueError(f"{name}={value:#x} does not fit in {width} bits")
    return value


# --- control-register access (SDM Table 28-3) --------------------------------------
class CrAccessType(enum.IntEnum):
    MOV_TO_CR = 0
    MOV_FROM_CR = 1
    CLTS = 2
    LMSW = 3


@dataclass(frozen=True)
class CrAccess:
    """bits 3:0 CR number; 5:4 access type; 6 LMSW operand type (1 = memory);
    11:8 GPR (MOV CR); 31:16 LMSW source data."""

    cr: int
    access: CrAccessType
    gpr: int = 0
    lmsw_memory: bool = False
    lmsw_source: int = 0

    def encode(self) -> int:
        return (_check("cr", self.cr, 4)
                | _check("access", self.access, 2) << 4
                | int(bool(self.lmsw_memory)) << 6
                | _check("gpr", self.gpr, 4) << 8
                | _check("lmsw_source", self.lmsw_source, 16) << 16)

    @classmethod
    def decode(cls, q: int) -> CrAccess:
        return cls(cr=_field(q, 0, 4), access=CrAccessType(_field(q, 4, 2)), gpr=_field(q, 8, 4),
                   lmsw_memory=bool(_field(q, 6, 1)), lmsw_source=_field(q, 16, 16))

    def describe(self) -> str:
        if self.access is CrAccessType.MOV_TO_CR:
            return f"MOV to CR{self.cr} from {GPR_NAMES[self.gpr]}"
        if self.access is CrAccessType.MOV_FROM_CR:
            return f"MOV from CR{self.cr} to {GPR_NAMES[self.gpr]}"
        if self.access is CrAccessType.CLTS:
            return "CLTS"
        return f"LMSW {self.lmsw_source:#06x} ({'memory' if self.lmsw_memory else 'register'} operand)"


# --- I/O instruction (SDM Table 28-5) ----------------------------------------------
_IO_SIZE_CODES = {0: 1, 1: 2, 3: 4}


@dataclass(frozen=True)
class IoInstruction:
    """bits 2:0 size - 1 (0, 1, 3); 3 direction (1 = IN); 4 string; 5 REP;
    6 operand encoding (1 = immediate port); 31:16 port."""

    port: int
    size: int
    direction_in: bool
    string: bool = False
    rep: bool = False
    immediate: bool = False

    def encode(self) -> int:
        if self.size not in (1, 2, 4):
            raise ValueError(f"I/O size {self.size} is not 1, 2 or 4")
        return ((self.size - 1)
                | int(bool(self.direction_in)) << 3
                | int(bool(self.string)) << 4
                | int(bool(self.rep)) << 5
                | int(bool(self.immediate)) << 6
                | _check("port", self.port, 16) << 16)

    @classmethod
    def decode(cls, q: int) -> IoInstruction:
        code = _field(q, 0, 3)
        if code not in _IO_SIZE_CODES:
            raise ValueError(f"I/O qualification {q:#x}: size code {code} is not defined")
        return cls(port=_field(q, 16, 16), size=_IO_SIZE_CODES[code], direction_in=bool(_field(q, 3, 1)),
                   string=bool(_field(q, 4, 1)), rep=bool(_field(q, 5, 1)), immediate=bool(_field(q, 6, 1)))

    def describe(self) -> str:
        op = "IN" if self.direction_in else "OUT"
        if self.string:
            op += "S"
        if self.rep:
            op = "REP " + op
        unit = "byte" if self.size == 1 else "bytes"
        return f"{op} {'imm8' if self.immediate else 'dx'}, {self.size} {unit}, port {self.port:#x}"


# --- EPT violation (SDM Table 28-7) ------------------------------------------------
# One layout for the whole project: the vocabulary's (bits 0-2 the access, 3-5 the
# entry's R/W/X, 7 linear address valid, 8 translated, 12 NMI unblocking).
EptViolation = EptViolationQualification


# --- debug exceptions (SDM Table 28-1) ---------------------------------------------
@dataclass(frozen=True)
class DebugException:
    """bits 3:0 B0-B3 (breakpoint conditions met); 13 BD (debug-register access
    detected); 14 BS (single step)."""

    breakpoints: int = 0
    bd: bool = False
    bs: bool = False

    def encode(self) -> int:
        return _check("breakpoints", self.breakpoints, 4) | int(bool(self.bd)) << 13 | int(bool(self.bs)) << 14

    @classmethod
    def decode(cls, q: int) -> DebugException:
        return cls(breakpoints=_field(q, 0, 4), bd=bool(_field(q, 13, 1)), bs=bool(_field(q, 14, 1)))

    def describe(self) -> str:
        parts = [f"B{i}" for i in range(4) if self.breakpoints >> i & 1]
        parts += [n for n, on in (("BD", self.bd), ("BS", self.bs)) if on]
        return "debug exception: " + (" ".join(parts) or "none")


# --- INVLPG (SDM §28.2.1: the linear-address operand) -------------------------------
@dataclass(frozen=True)
class Invlpg:
    linear: int
    width: int = 32

    def encode(self) -> int:
        return _check("linear", self.linear, self.width)

    @classmethod
    def decode(cls, q: int, width: int = 32) -> Invlpg:
        return cls(linear=_field(q, 0, width), width=width)

    def describe(self) -> str:
        return f"INVLPG {self.linear:#x}"


# --- task switch (SDM Table 28-2) ---------------------------------------------------
TaskSwitchSource = TaskSource
"""The qualification's source field (bits 31:30): the vocabulary's TaskSource."""


@dataclass(frozen=True)
class TaskSwitch:
    """bits 15:0 selector of the new TSS; 31:30 source of the switch."""

    selector: int
    source: TaskSwitchSource

    def encode(self) -> int:
        return _check("selector", self.selector, 16) | _check("source", self.source, 2) << 30

    @classmethod
    def decode(cls, q: int) -> TaskSwitch:
        return cls(selector=_field(q, 0, 16), source=TaskSwitchSource(_field(q, 30, 2)))

    def describe(self) -> str:
        how = "task gate in IDT" if self.source is TaskSwitchSource.TASK_GATE else self.source.name
        return f"task switch to TSS selector {self.selector:#06x} via {how}"


# --- MOV DR (SDM Table 28-4) --------------------------------------------------------
@dataclass(frozen=True)
class MovDr:
    """bits 2:0 DR number; 4 direction (1 = MOV from DR); 11:8 GPR."""

    dr: int
    from_dr: bool
    gpr: int = 0

    def encode(self) -> int:
        return _check("dr", self.dr, 3) | int(bool(self.from_dr)) << 4 | _check("gpr", self.gpr, 4) << 8

    @classmethod
    def decode(cls, q: int) -> MovDr:
        return cls(dr=_field(q, 0, 3), from_dr=bool(_field(q, 4, 1)), gpr=_field(q, 8, 4))

    def describe(self) -> str:
        if self.from_dr:
            return f"MOV from DR{self.dr} to {GPR_NAMES[self.gpr]}"
        return f"MOV to DR{self.dr} from {GPR_NAMES[self.gpr]}"


# --- interruption information (SDM §25.8.3, §25.9.2, §25.9.3) -----------------------
class InterruptionType(enum.IntEnum):
    EXTERNAL_INTERRUPT = 0
    RESERVED = 1
    NMI = 2
    HARDWARE_EXCEPTION = 3
    SOFTWARE_INTERRUPT = 4
    PRIVILEGED_SOFTWARE_EXCEPTION = 5
    SOFTWARE_EXCEPTION = 6
    OTHER_EVENT = 7


_TYPE_TEXT = {
    InterruptionType.EXTERNAL_INTERRUPT: "external interrupt",
    InterruptionType.RESERVED: "reserved type",
    InterruptionType.NMI: "NMI",
    InterruptionType.HARDWARE_EXCEPTION: "hardware exception",
    InterruptionType.SOFTWARE_INTERRUPT: "software interrupt",
    InterruptionType.PRIVILEGED_SOFTWARE_EXCEPTION: "privileged software exception",
    InterruptionType.SOFTWARE_EXCEPTION: "software exception",
    InterruptionType.OTHER_EVENT: "other event",
}

INTR_INFO_VALID = 1 << 31


@dataclass(frozen=True)
class InterruptionInfo:
    """VM-exit interruption information (0x4404), IDT-vectoring information (0x4408)
    and VM-entry interruption information (0x4016): bits 7:0 vector; 10:8 type;
    11 error code valid (deliver error code, on entry); 12 NMI unblocking due to IRET
    (exit forms only); 31 valid."""

    vector: int
    type: InterruptionType
    error_code_valid: bool = False
    nmi_unblocking: bool = False
    valid: bool = True

    def encode(self) -> int:
        return (_check("vector", self.vector, 8)
                | _check("type", self.type, 3) << 8
                | int(bool(self.error_code_valid)) << 11
                | int(bool(self.nmi_unblocking)) << 12
                | int(bool(self.valid)) << 31)

    @classmethod
    def decode(cls, q: int) -> InterruptionInfo:
        return cls(vector=_field(q, 0, 8), type=InterruptionType(_field(q, 8, 3)),
                   error_code_valid=bool(_field(q, 11, 1)), nmi_unblocking=bool(_field(q, 12, 1)),
                   valid=bool(_field(q, 31, 1)))

    @classmethod
    def exception(cls, vector: int, error_code: bool = False) -> InterruptionInfo:
        return cls(vector, InterruptionType.HARDWARE_EXCEPTION, error_code_valid=error_code)

    def describe(self) -> str:
        if not self.valid:
            return "no event (invalid)"
        name = (EXCEPTION_MNEMONICS.get(self.vector, f"vector {self.vector:#x}")
                if self.type in (InterruptionType.HARDWARE_EXCEPTION, InterruptionType.SOFTWARE_EXCEPTION,
                                 InterruptionType.PRIVILEGED_SOFTWARE_EXCEPTION, InterruptionType.NMI)
                else f"vector {self.vector:#x}")
        text = f"{name} ({_TYPE_TEXT[self.type]})"
        if self.error_code_valid:
            text += ", error code"
        if self.nmi_unblocking:
            text += ", NMI unblocking"
        return text


QUALIFICATION_TYPES = (CrAccess, IoInstruction, EptViolation, DebugException, Invlpg,
                       TaskSwitch, MovDr, InterruptionInfo)
