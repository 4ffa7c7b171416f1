"""The emulated board: port and MMIO buses and the PC devices on them.

Pure Python, no engine: devices see guest accesses as calls and time as the
virtual instruction count the engine hands to ``advance``. Each device declares its
state as a frozen dataclass of plain data (``UartState``, ``PitState``, ...), which its
``save_state()`` returns and ``load_state()`` takes; ``Board.save_state()`` gathers them
with the board's virtual time into a ``BoardState``.
"""

from .board import DEFAULT_RAM_SIZE, MAX_RAM_SIZE, Board, BoardState, check_ram_size
from .bus import BusConflictError, MmioBus, PortBus
from .cmos import Cmos, CmosState
from .debugexit import DebugExit, DebugExitState
from .fwcfg import FwCfg, FwCfgState
from .lapic import LocalApic, LocalApicState
from .pic import I8259State, PicPair, PicPairState
from .pit import INSTRUCTIONS_PER_PIT_CLOCK, Pit8254, PitChannelState, PitState
from .uart import Uart16550, UartState

__all__ = [
    "Board", "BoardState", "BusConflictError", "Cmos", "CmosState", "DEFAULT_RAM_SIZE", "DebugExit",
    "DebugExitState", "FwCfg", "FwCfgState", "I8259State", "INSTRUCTIONS_PER_PIT_CLOCK", "LocalApic",
    "LocalApicState", "MAX_RAM_SIZE", "MmioBus", "PicPair", "PicPairState", "Pit8254", "PitChannelState",
    "PitState", "PortBus", "Uart16550", "UartState", "check_ram_size",
]
