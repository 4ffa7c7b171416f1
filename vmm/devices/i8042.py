"""The i8042 keyboard controller at 0x60 (data) / 0x64 (status, command), with a PS/2
keyboard and mouse behind it, as QEMU's ``pckbd.c`` and ``ps2.c`` answer after SeaBIOS.

What a guest sees (values measured under QEMU's ``pc``):

* status 0x1c (system flag, last write a command, not inhibited), | 0x01 while a byte
  waits in the output buffer, | 0x20 when that byte is the mouse's;
* the command byte 0x61 (translation to scancode set 1, mouse port disabled, keyboard
  interrupt on): read with 0x20, written with 0x60;
* controller commands: 0xaa self-test (0x55), 0xab / 0xa9 port tests (0x00), 0xad / 0xae
  and 0xa7 / 0xa8 disable and enable the ports, 0xc0 input port (0x80), 0xd0 / 0xd1 the
  output port (0xcf; bit 1 is the A20 gate, which reads back; bit 0 low resets the
  machine), 0xdd / 0xdf A20 off / on, 0xd2 / 0xd3 a byte "from" the keyboard / mouse,
  0xd4 the next data byte to the mouse, 0xf0-0xff pulse the output port (0xfe: reset);
* keyboard commands on the data port: 0xff reset (0xfa, 0xaa), 0xf2 identify (0xfa, 0xab,
  0x41 translated / 0x83), 0xee echo, 0xf4 / 0xf5 enable / disable scanning, 0xed LEDs
  and 0xf3 typematic rate (0xfa for the command and for its argument), 0xf0 scancode set
  (0xfa; argument 0 answers the set), 0xf6 defaults; anything else 0xfe (resend);
* mouse commands after 0xd4: 0xff reset (0xfa, 0xaa, 0x00), 0xf2 (0xfa, 0x00), 0xe9
  status (0xfa and three bytes), the rest 0xfa (an argument-taking command's argument too);
* IRQ 1 while the keyboard's byte waits and the command byte enables it, IRQ 12 likewise
  for the mouse (levels, through the board's lines); reading the data port with the
  buffer empty returns the last byte again.

Keys: ``input`` (bytes, a file or a ByteSource, like the UART's) is typed on the keyboard:
each character becomes its make and break codes (with shift around upper case and
symbols), in set 1 when the command byte translates, else set 2, while the keyboard is
enabled; Enter is "\\r" or "\\n". Characters without a key are dropped. The controller
looks at the input when the guest reads the status or data port, and as a clocked device
(every ``POLL`` instructions) while the keyboard interrupt is on.
"""
from __future__ import annotations

import io
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

from .uart import ByteSource, _read_one_byte_nonblocking

DATA_PORT, STATUS_PORT = 0x60, 0x64
STATUS_BASE = 0x1C
OBF, AUX_OBF = 0x01, 0x20
CTR_KBD_INT, CTR_AUX_INT, CTR_KBD_DISABLE, CTR_AUX_DISABLE, CTR_XLATE = 0x01, 0x02, 0x10, 0x20, 0x40
CTR_RESET = CTR_XLATE | CTR_AUX_DISABLE | CTR_KBD_INT        # 0x61, as SeaBIOS leaves it
OUTPORT_RESET, OUTPORT_A20 = 0x01, 0x02
OUTPORT_VALUE = 0xCF
INPORT_VALUE = 0x80
ACK, RESEND, BAT_OK, ECHO = 0xFA, 0xFE, 0xAA, 0xEE
POLL = 11932          # instructions (10 ms of virtual time) between looks at the input

# Keys: character -> (set 1 make code, set 2 make code, shifted).
_KEYS: dict[str, tuple[int, int, bool]] = {}


def _row(chars: str, set1: list[int], set2: list[int], shifted: str = "") -> None:
    for i, ch in enumerate(chars):
        _KEYS[ch] = (set1[i], set2[i], False)
        if shifted:
            _KEYS[shifted[i]] = (set1[i], set2[i], True)


_row("1234567890-=", list(range(0x02, 0x0E)),
     [0x16, 0x1E, 0x26, 0x25, 0x2E, 0x36, 0x3D, 0x3E, 0x46, 0x45, 0x4E, 0x55], "!@#$%^&*()_+")
_row("qwertyuiop[]", list(range(0x10, 0x1C)),
     [0x15, 0x1D, 0x24, 0x2D, 0x2C, 0x35, 0x3C, 0x43, 0x44, 0x4D, 0x54, 0x5B], "QWERTYUIOP{}")
_row("asdfghjkl;'`", list(range(0x1E, 0x2A)),
     [0x1C, 0x1B, 0x23, 0x2B, 0x34, 0x33, 0x3B, 0x42, 0x4B, 0x4C, 0x52, 0x0E], 'ASDFGHJKL:"~')
_row("\\zxcvbnm,./", list(range(0x2B, 0x36)),
     [0x5D, 0x1A, 0x22, 0x21, 0x2A, 0x32, 0x31, 0x3A, 0x41, 0x49, 0x4A], "|ZXCVBNM<>?")
_row(" \t\x1b\x08\r\n", [0x39, 0x0F, 0x01, 0x0E, 0x1C, 0x1C], [0x29, 0x0D, 0x76, 0x66, 0x5A, 0x5A])
SHIFT = (0x2A, 0x12)       # left shift, set 1 / set 2
BREAK1, BREAK2 = 0x80, 0xF0


def scancodes(ch: str, translated: bool) -> list[int]:
    """The bytes a keyboard sends for typing ``ch`` (make and break, shift around it)."""
    key = _KEYS.get(ch)
    if key is None:
        return []
    set1, set2, shifted = key
    if translated:
        codes = [set1, set1 | BREAK1]
        return [SHIFT[0], *codes, SHIFT[0] | BREAK1] if shifted else codes
    codes = [set2, BREAK2, set2]
    return [SHIFT[1], *codes, BREAK2, SHIFT[1]] if shifted else codes


@dataclass(frozen=True)
class I8042State:
    ctr: int
    outport: int
    queue: tuple[tuple[int, bool], ...]
    last: int
    pending_command: int | None
    kbd_command: int | None
    aux_command: int | None
    kbd_enabled: bool
    scancode_set: int
    input_ended: bool


class I8042:
    """``irq(line, level)`` drives IRQ 1 (keyboard) or 12 (mouse); ``on_reset()`` is the
    controller's reset line."""

    def __init__(self, irq: Callable[[int, bool], None] | None = None, on_reset: Callable[[], None] | None = None,
                 input: bytes | BinaryIO | ByteSource | None = None):
        self.irq = irq or (lambda line, level: None)
        self.on_reset = on_reset or (lambda: None)
        self._source: BinaryIO | ByteSource | None = io.BytesIO(bytes(input)) \
            if isinstance(input, (bytes, bytearray)) else input
        self.ctr = CTR_RESET
        self.outport = OUTPORT_VALUE
        self.queue: deque[tuple[int, bool]] = deque()   # (byte, from the mouse)
        self.last = 0
        self.pending_command: int | None = None          # a controller command awaiting its data byte
        self.kbd_command: int | None = None              # a keyboard command awaiting its argument
        self.aux_command: int | None = None
        self.kbd_enabled = True
        self.scancode_set = 2
        self.input_ended = False
        self.now = 0

    def save_state(self) -> I8042State:
        return I8042State(self.ctr, self.outport, tuple(self.queue), self.last, self.pending_command,
                          self.kbd_command, self.aux_command, self.kbd_enabled, self.scancode_set,
                          self.input_ended)

    def load_state(self, state: I8042State) -> None:
        self.ctr, self.outport, self.queue = state.ctr, state.outport, deque(state.queue)
        self.last, self.pending_command = state.last, state.pending_command
        self.kbd_command, self.aux_command = state.kbd_command, state.aux_command
        self.kbd_enabled, self.scancode_set = state.kbd_enabled, state.scancode_set
        self.input_ended = state.input_ended
        if state.input_ended:
            self._source = None

    @property
    def a20(self) -> bool:
        return bool(self.outport & OUTPORT_A20)

    # -- the output buffer and the interrupt lines ------------------------------------------
    def _put(self, *data: int, aux: bool = False) -> None:
        self.queue.extend((b & 0xFF, aux) for b in data)

    def _update_irq(self) -> None:
        head = self.queue[0] if self.queue else None
        self.irq(1, head is not None and not head[1] and bool(self.ctr & CTR_KBD_INT))
        self.irq(12, head is not None and head[1] and bool(self.ctr & CTR_AUX_INT))

    def _type(self) -> None:
        """Take one character of input onto the keyboard, if it may send now."""
        if self.queue or self._source is None or not self.kbd_enabled or self.ctr & CTR_KBD_DISABLE:
            return
        byte = _read_one_byte_nonblocking(self._source)
        if byte is None:
            return
        if byte == b"":
            self._source, self.input_ended = None, True
            return
        self._put(*scancodes(chr(byte[0]), bool(self.ctr & CTR_XLATE)))

    def next_event(self) -> int | None:
        if self._source is not None and self.ctr & CTR_KBD_INT and not self.queue:
            return self.now + POLL
        return None

    def advance(self, now: int) -> None:
        self.now = now
        if self._source is not None and self.ctr & CTR_KBD_INT:
            self._type()
            self._update_irq()

    # -- ports ------------------------------------------------------------------------------
    def io_read(self, port: int, size: int) -> int:
        self._type()
        if port == STATUS_PORT:
            status = STATUS_BASE
            if self.queue:
                status |= OBF | (AUX_OBF if self.queue[0][1] else 0)
            return status
        if self.queue:
            self.last = self.queue.popleft()[0]
        self.irq(1, False)           # the buffer empties, then takes the next byte: a new edge
        self.irq(12, False)
        self._update_irq()
        return self.last

    def io_write(self, port: int, size: int, value: int) -> None:
        value &= 0xFF
        if port == STATUS_PORT:
            self._command(value)
        elif self.pending_command is not None:
            command, self.pending_command = self.pending_command, None
            self._command_data(command, value)
        else:
            self._keyboard(value)
        self._update_irq()

    def _command(self, command: int) -> None:
        simple = {0xAA: (0x55,), 0xAB: (0x00,), 0xA9: (0x00,), 0xC0: (INPORT_VALUE,)}
        if command in simple:
            self._put(*simple[command])
        elif command == 0x20:
            self._put(self.ctr)
        elif command == 0xD0:
            self._put(self.outport)
        elif command in (0x60, 0xD1, 0xD2, 0xD3, 0xD4):
            self.pending_command = command
        elif command in (0xAD, 0xAE):
            self.ctr = self.ctr | CTR_KBD_DISABLE if command == 0xAD else self.ctr & ~CTR_KBD_DISABLE
        elif command in (0xA7, 0xA8):
            self.ctr = self.ctr | CTR_AUX_DISABLE if command == 0xA7 else self.ctr & ~CTR_AUX_DISABLE
        elif command in (0xDD, 0xDF):
            self.outport = self.outport | OUTPORT_A20 if command == 0xDF else self.outport & ~OUTPORT_A20
        elif command >= 0xF0 and not command & OUTPORT_RESET:
            self.on_reset()          # pulse output bit 0 low: the reset line

    def _command_data(self, command: int, value: int) -> None:
        if command == 0x60:
            self.ctr = value
        elif command == 0xD1:
            self.outport = value
            if not value & OUTPORT_RESET:
                self.on_reset()
        elif command in (0xD2, 0xD3):
            self._put(value, aux=command == 0xD3)
        else:
            self._mouse(value)

    def _keyboard(self, value: int) -> None:
        if self.kbd_command is not None:
            command, self.kbd_command = self.kbd_command, None
            if command == 0xF0 and value == 0:
                self._put(ACK, self.scancode_set)
                return
            if command == 0xF0 and value in (1, 2, 3):
                self.scancode_set = value
            self._put(ACK)
            return
        if value == 0xFF:
            self.kbd_enabled, self.scancode_set = True, 2
            self._put(ACK, BAT_OK)
        elif value == 0xF2:
            self._put(ACK, 0xAB, 0x41 if self.ctr & CTR_XLATE else 0x83)
        elif value == 0xEE:
            self._put(ECHO)
        elif value in (0xED, 0xF3, 0xF0):
            self.kbd_command = value
            self._put(ACK)
        elif value in (0xF4, 0xF5, 0xF6):
            self.kbd_enabled = value != 0xF5
            self._put(ACK)
        else:
            self._put(RESEND)

    def _mouse(self, value: int) -> None:
        if self.aux_command is not None:
            self.aux_command = None
            self._put(ACK, aux=True)
        elif value == 0xFF:
            self._put(ACK, BAT_OK, 0x00, aux=True)
        elif value == 0xF2:
            self._put(ACK, 0x00, aux=True)
        elif value == 0xE9:
            self._put(ACK, 0x00, 0x02, 0x64, aux=True)
        else:
            if value in (0xE8, 0xF3):
                self.aux_command = value
            self._put(ACK, aux=True)
