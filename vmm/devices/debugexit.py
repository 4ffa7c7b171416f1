"""isa-debug-exit: the port a test guest writes to end the VM with a status.

QEMU's ``-device isa-debug-exit,iobase=0xf4,iosize=0x04`` exits the emulator
with status ``(value << 1) | 1`` on any write to its ports, so a guest can
never produce status 0 and a clean shutdown is distinguishable from a guest
verdict.  (The process exit code QEMU shows is that status truncated to
8 bits by the OS; ``on_exit`` receives the untruncated value.)  Reads return 0.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

DEBUG_EXIT_PORT = 0xF4
DEBUG_EXIT_IOSIZE = 4


def exit_status(value: int) -> int:
    """The status QEMU's isa-debug-exit reports for a written ``value``."""
    return (value << 1) | 1


@dataclass(frozen=True)
class DebugExitState:
    writes: int


class DebugExit:
    def __init__(self, on_exit: Callable[[int], None],
                 base: int = DEBUG_EXIT_PORT) -> None:
        self.base = base
        self.on_exit = on_exit
        self.writes = 0

    def save_state(self) -> DebugExitState:
        return DebugExitState(self.writes)

    def load_state(self, state: DebugExitState) -> None:
        self.writes = state.writes

    def io_read(self, port: int, size: int) -> int:
        return 0

    def io_write(self, port: int, size: int, value: int) -> None:
        self.writes += 1
        self.on_exit(exit_status(value))
