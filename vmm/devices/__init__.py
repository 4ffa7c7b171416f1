"""The emulated board: port and MMIO buses and the PC devices on them.

Pure Python, no engine: devices see guest accesses as calls and time as the
virtual instruction count the engine hands to ``advance``.
"""

from .board import DEFAULT_RAM_SIZE, MAX_RAM_SIZE, Board, check_ram_size
from .bus import BusConflictError, MmioBus, PortBus
from .cmos import Cmos
from .debugexit import DebugExit
from .fwcfg import FwCfg
from .lapic import LocalApic
from .pic import PicPair
from .pit import INSTRUCTIONS_PER_PIT_CLOCK, Pit8254
from .uart import Uart16550

__all__ = [
    "Board", "BusConflictError", "Cmos", "DEFAULT_RAM_SIZE", "DebugExit", "FwCfg",
    "INSTRUCTIONS_PER_PIT_CLOCK", "LocalApic", "MAX_RAM_SIZE", "MmioBus",
    "PicPair", "Pit8254", "PortBus", "Uart16550", "check_ram_size",
]
