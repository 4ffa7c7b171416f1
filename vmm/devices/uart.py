"""16550A UART (COM1 at 0x3f8), the guest's console.

Register map (offset from the base port; National Semiconductor PC16550D
datasheet, table II):

    +0  RBR (read) / THR (write)        DLL when LCR.DLAB = 1
    +1  IER                             DLM when LCR.DLAB = 1
    +2  IIR (read) / FCR (write)
    +3  LCR    +4  MCR    +5  LSR    +6  MSR    +7  SCR

Transmission is instantaneous (LSR.THRE and LSR.TEMT always read 1), LSR.DR
is set while a received byte is waiting.  Loopback (MCR bit 4) is modelled,
because probing drivers (Linux's 8250) test with it.

Interrupts, as QEMU's ``serial.c`` raises them on IRQ 4 (``irq(level)``): IIR
reports the highest-priority source enabled in IER -- received data available
(0x04, IER bit 0), transmitter holding register empty (0x02, IER bit 1), modem
status (0x00, IER bit 3) -- or 0x01 for none, with bits 7:6 set while FCR has
the FIFOs enabled; the line is high while IIR reports one. THRE is pending
after every byte sent (sending is instantaneous) and when IER's THRE bit is
set while THR is empty; reading IIR while it reports THRE, or writing THR,
clears it. As on QEMU, and unlike a PC's wiring, MCR.OUT2 does not gate the
line. While RDA interrupts are enabled and input may still come, the UART is a
clocked device polling its input every ``RX_POLL`` instructions of virtual
time, so a guest waiting in HLT gets its interrupt. Left out: the receive FIFO's
trigger levels and character timeout (data interrupts as soon as a byte is
there), line-status interrupts (no errors happen), overrun.

Input is a host-side stream (a byte string, a binary file, or a
:class:`ByteSource` such as vmm.console's stream of a pipe or terminal) from
which one byte at a time is "received" into RBR when the guest looks at LSR or
RBR, so reading never blocks: a file with a file descriptor is polled with
``select`` first, a ByteSource answers at once from what has arrived.
"""

from __future__ import annotations

import io
import os
import select
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO, Protocol, cast

COM1_BASE = 0x3F8

# Register offsets.
RBR = THR = DLL = 0
IER = DLM = 1
IIR = FCR = 2
LCR = 3
MCR = 4
LSR = 5
MSR = 6
SCR = 7

IER_WRITABLE = 0x0F

IIR_NO_INTERRUPT = 0x01
IIR_FIFO_ENABLED = 0xC0
IIR_MSI, IIR_THRI, IIR_RDI = 0x00, 0x02, 0x04
IER_RDI, IER_THRI, IER_RLSI, IER_MSI = 0x01, 0x02, 0x04, 0x08
RX_POLL = 1193        # instructions of virtual time (1 ms) between looks at the input

FCR_FIFO_ENABLE = 0x01
FCR_CLEAR_RX = 0x02

LCR_DLAB = 0x80

MCR_DTR = 0x01
MCR_RTS = 0x02
MCR_OUT1 = 0x04
MCR_OUT2 = 0x08
MCR_LOOP = 0x10
MCR_WRITABLE = 0x1F

LSR_DR = 0x01      # data ready
LSR_THRE = 0x20    # transmitter holding register empty
LSR_TEMT = 0x40    # transmitter empty

MSR_CTS = 0x10
MSR_DSR = 0x20
MSR_RI = 0x40
MSR_DCD = 0x80
MSR_DELTA_MASK = 0x0F

# QEMU's serial_reset(): DCD, DSR and CTS asserted (a terminal is attached),
# divisor 12 (9600 baud from the 1.8432 MHz clock).
MSR_RESET = MSR_DCD | MSR_DSR | MSR_CTS
DIVISOR_RESET = 12


class ByteSource(Protocol):
    """Input that arrives while the guest runs: one byte, b"" once it has ended, None
    when nothing has arrived yet. Never blocks."""

    def poll_byte(self) -> bytes | None: ...


@dataclass(frozen=True)
class UartState:
    """Everything a guest can observe of the UART, and the transcript so far.

    IIR and LSR are not stored: they are computed from the rest (IIR from IER, ``rx``,
    ``thr_pending`` and the modem deltas; THRE/TEMT always set; DR while ``rx`` holds a
    byte). The host-side input
    stream is I/O, not state: a restored UART reads from the stream it is given, unless
    the saved one had already ended (``input_ended``).
    """

    divisor: int
    ier: int
    fcr: int
    lcr: int
    mcr: int
    scr: int
    msr_delta: int
    rx: tuple[int, ...]
    transcript: bytes
    input_ended: bool
    thr_pending: bool = False


class Uart16550:
    """A polled 16550A.  ``transcript`` holds every byte sent to ``output``."""

    io_max_size = 1  # byte-wide registers: the bus splits wider accesses

    def __init__(self, output: Callable[[bytes], None],
                 input: bytes | BinaryIO | ByteSource | None = None,
                 base: int = COM1_BASE, irq: Callable[[bool], None] | None = None) -> None:
        self.base = base
        self.irq = irq or (lambda level: None)
        self.thr_pending = False
        self.now = 0
        self.output = output
        self.transcript = bytearray()
        self._source: BinaryIO | ByteSource | None
        if isinstance(input, (bytes, bytearray, memoryview)):
            self._source = io.BytesIO(bytes(input))
        else:
            self._source = input
        self._rx: deque[int] = deque()
        self.divisor = DIVISOR_RESET
        self.ier = 0
        self.fcr = 0
        self.lcr = 0
        self.mcr = 0
        self.scr = 0
        self._msr_delta = 0
        self._input_ended = False

    # -- saved state ---------------------------------------------------------------
    def save_state(self) -> UartState:
        return UartState(self.divisor, self.ier, self.fcr, self.lcr, self.mcr, self.scr,
                         self._msr_delta, tuple(self._rx), bytes(self.transcript), self._input_ended,
                         self.thr_pending)

    def load_state(self, state: UartState) -> None:
        self.divisor, self.ier, self.fcr = state.divisor, state.ier, state.fcr
        self.lcr, self.mcr, self.scr = state.lcr, state.mcr, state.scr
        self._msr_delta = state.msr_delta
        self._rx = deque(state.rx)
        self.transcript = bytearray(state.transcript)
        self._input_ended = state.input_ended
        self.thr_pending = state.thr_pending
        if state.input_ended:
            self._source = None

    # -- receive side ------------------------------------------------------------

    def _receive(self) -> None:
        """Move one byte from the host stream into RBR if RBR is empty."""
        if self._rx or self._source is None or self.mcr & MCR_LOOP:
            return
        byte = _read_one_byte_nonblocking(self._source)
        if byte is None:
            return
        if byte == b"":
            self._source = None  # end of input
            self._input_ended = True
            return
        self._rx.append(byte[0])

    @property
    def data_ready(self) -> bool:
        self._receive()
        return bool(self._rx)

    # -- guest side --------------------------------------------------------------

    def io_read(self, port: int, size: int) -> int:
        value = self._read(port)
        self._update_irq()
        return value

    def io_write(self, port: int, size: int, value: int) -> None:
        self._write(port, value)
        self._update_irq()

    # -- interrupts ------------------------------------------------------------------
    def interrupt_id(self) -> int:
        """IIR's low bits: the highest-priority pending source the guest enabled."""
        if self.ier & IER_RDI and self._rx:
            return IIR_RDI
        if self.ier & IER_THRI and self.thr_pending:
            return IIR_THRI
        if self.ier & IER_MSI and self._msr_delta & MSR_DELTA_MASK:
            return IIR_MSI
        return IIR_NO_INTERRUPT

    def _update_irq(self) -> None:
        self.irq(self.interrupt_id() != IIR_NO_INTERRUPT)

    def next_event(self) -> int | None:
        """While RDA interrupts are on and input may still arrive: the next look at it."""
        if self.ier & IER_RDI and not self._rx and self._source is not None and not self.mcr & MCR_LOOP:
            return self.now + RX_POLL
        return None

    def advance(self, now: int) -> None:
        self.now = now
        if self.ier & IER_RDI:
            self._receive()
            self._update_irq()

    def _read(self, port: int) -> int:
        reg = (port - self.base) & 7
        dlab = self.lcr & LCR_DLAB
        if reg == RBR:
            if dlab:
                return self.divisor & 0xFF
            self._receive()
            return self._rx.popleft() if self._rx else 0
        if reg == IER:
            return (self.divisor >> 8) if dlab else self.ier
        if reg == IIR:
            fifo = IIR_FIFO_ENABLED if self.fcr & FCR_FIFO_ENABLE else 0
            self._receive()
            iir = self.interrupt_id()
            if iir == IIR_THRI:
                self.thr_pending = False      # reading IIR acknowledges THRE
            return iir | fifo
        if reg == LCR:
            return self.lcr
        if reg == MCR:
            return self.mcr
        if reg == LSR:
            return LSR_THRE | LSR_TEMT | (LSR_DR if self.data_ready else 0)
        if reg == MSR:
            return self._read_msr()
        return self.scr

    def _write(self, port: int, value: int) -> None:
        reg = (port - self.base) & 7
        value &= 0xFF
        dlab = self.lcr & LCR_DLAB
        if reg == THR:
            if dlab:
                self.divisor = (self.divisor & 0xFF00) | value
            else:
                self._transmit(value)
        elif reg == IER:
            if dlab:
                self.divisor = (self.divisor & 0x00FF) | (value << 8)
            else:
                if value & IER_THRI and not self.ier & IER_THRI:
                    self.thr_pending = True   # THR is always empty here
                self.ier = value & IER_WRITABLE
        elif reg == FCR:
            if value & FCR_CLEAR_RX or (value ^ self.fcr) & FCR_FIFO_ENABLE:
                self._rx.clear()              # QEMU: switching the FIFOs on or off empties them
            self.fcr = value
        elif reg == LCR:
            self.lcr = value
        elif reg == MCR:
            self._write_mcr(value & MCR_WRITABLE)
        elif reg == SCR:
            self.scr = value
        # LSR and MSR are read-only.

    # -- helpers -------------------------------------------------------------------

    def _transmit(self, byte: int) -> None:
        self.thr_pending = True               # sent at once: THR is empty again
        if self.mcr & MCR_LOOP:
            self._rx.append(byte)  # the line is looped back, nothing leaves
            return
        data = bytes((byte,))
        self.transcript += data
        self.output(data)

    def _modem_inputs(self) -> int:
        """CTS/DSR/RI/DCD: the attached terminal, or MCR's outputs in loopback."""
        if self.mcr & MCR_LOOP:
            m = self.mcr
            return ((MSR_CTS if m & MCR_RTS else 0) | (MSR_DSR if m & MCR_DTR else 0)
                    | (MSR_RI if m & MCR_OUT1 else 0) | (MSR_DCD if m & MCR_OUT2 else 0))
        return MSR_RESET

    def _write_mcr(self, value: int) -> None:
        before = self._modem_inputs()
        self.mcr = value
        changed = before ^ self._modem_inputs()
        # Delta bits: DCTS, DDSR, TERI (trailing edge of RI only), DDCD.
        delta = (changed >> 4) & 0b1011
        if changed & MSR_RI and before & MSR_RI:
            delta |= 0b0100
        self._msr_delta |= delta

    def _read_msr(self) -> int:
        value = self._modem_inputs() | (self._msr_delta & MSR_DELTA_MASK)
        self._msr_delta = 0
        return value


def _read_one_byte_nonblocking(source: BinaryIO | ByteSource) -> bytes | None:
    """One byte, b"" at end of stream, or None if nothing has arrived yet."""
    poll = getattr(source, "poll_byte", None)   # a ByteSource (cheaper than a Protocol isinstance)
    if poll is not None:
        return poll()
    stream = cast(BinaryIO, source)
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        fd = None
    if fd is None:
        return stream.read(1)
    ready, _, _ = select.select([fd], [], [], 0)
    if not ready:
        return None
    return os.read(fd, 1)
