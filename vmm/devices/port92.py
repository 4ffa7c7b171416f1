"""Port 0x92, the PS/2 "system control port A": the fast A20 gate and the fast reset.

As QEMU's ``port92``: a read returns the last byte written; a write whose bit 0 rises asks
for a system reset (``on_reset``); bit 1 is the A20 gate. The board starts with A20
enabled (0x02), as SeaBIOS leaves it before it boots a ``-kernel`` guest. The gate's state
reads back, but addresses are never wrapped at 1 MiB: A20 masking is not modelled, which
only a guest that depends on the 8086 wrap-around would notice.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

PORT92 = 0x92
FAST_RESET = 0x01
A20_ENABLE = 0x02


@dataclass(frozen=True)
class Port92State:
    value: int


class Port92:
    io_max_size = 1

    def __init__(self, on_reset: Callable[[], None]):
        self.on_reset = on_reset
        self.value = A20_ENABLE

    def save_state(self) -> Port92State:
        return Port92State(self.value)

    def load_state(self, state: Port92State) -> None:
        self.value = state.value

    def io_read(self, port: int, size: int) -> int:
        return self.value

    def io_write(self, port: int, size: int, value: int) -> None:
        old, self.value = self.value, value & 0xFF
        if self.value & FAST_RESET and not old & FAST_RESET:
            self.on_reset()
