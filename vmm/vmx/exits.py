"""The one typed value where the engine and a mode meet (DESIGN §2)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .exit_reasons import ExitReason


@dataclass(slots=True)
class VmExit:
    """A modeled event: SDM reason, qualification, addresses, instruction length.

    ``info`` carries reason-specific decoded fields (port, size and direction for I/O;
    vector and error code for exceptions) so handlers need not re-decode.
    """

    reason: ExitReason
    qualification: int = 0
    guest_linear: int | None = None
    guest_physical: int | None = None
    instruction_length: int = 0
    info: dict[str, Any] = field(default_factory=dict)


class UnexpectedExit(Exception):
    """A mode's exit table has no handler for this reason: the VM stops with a dump."""

    def __init__(self, exit: VmExit, mode: str):
        super().__init__(f"mode {mode!r} has no handler for exit reason "
                         f"{exit.reason.value} ({exit.reason.name}), qualification {exit.qualification:#x}")
        self.exit = exit
