"""16550A UART as a polling guest driver sees it."""

import io
import os

from hypothesis import given, strategies as st

from vmm.devices import PortBus, Uart16550

COM1 = 0x3F8
THR = RBR = DLL = COM1
IER = DLM = COM1 + 1
IIR = FCR = COM1 + 2
LCR, MCR, LSR, MSR, SCR = COM1 + 3, COM1 + 4, COM1 + 5, COM1 + 6, COM1 + 7


def make(input=None):
    out = []
    uart = Uart16550(output=out.append, input=input)
    bus = PortBus()
    bus.register(COM1, COM1 + 7, uart, "com1")
    return uart, bus, out


def test_thr_writes_reach_output_and_transcript():
    uart, bus, out = make()
    for byte in b"hi\n":
        assert bus.read(LSR, 1) & 0x20          # THRE: ready to send
        bus.write(THR, 1, byte)
    assert b"".join(out) == b"hi\n"
    assert uart.transcript == bytearray(b"hi\n")


def test_lsr_transmitter_always_empty():
    _, bus, _ = make()
    assert bus.read(LSR, 1) == 0x60


def test_received_bytes_set_data_ready_in_order():
    _, bus, _ = make(input=b"ab")
    assert bus.read(LSR, 1) == 0x61
    assert bus.read(RBR, 1) == ord("a")
    assert bus.read(LSR, 1) & 0x01
    assert bus.read(RBR, 1) == ord("b")
    assert bus.read(LSR, 1) == 0x60             # drained
    assert bus.read(RBR, 1) == 0


def test_no_input_never_ready():
    _, bus, _ = make()
    assert not bus.read(LSR, 1) & 0x01


def test_divisor_latch_round_trip_and_dlab_off_restores_thr():
    uart, bus, out = make()
    bus.write(LCR, 1, 0x80)                     # DLAB
    bus.write(DLL, 1, 0x01)                     # 115200 baud
    bus.write(DLM, 1, 0x00)
    assert bus.read(DLL, 1) == 0x01 and bus.read(DLM, 1) == 0x00
    assert uart.divisor == 1
    bus.write(LCR, 1, 0x03)                     # 8N1, DLAB off
    assert bus.read(LCR, 1) == 0x03
    bus.write(THR, 1, ord("x"))
    bus.write(IER, 1, 0x00)
    assert out == [b"x"]
    assert uart.divisor == 1                    # THR/IER writes did not touch it


def test_divisor_reset_value_is_qemus():
    _, bus, _ = make()
    bus.write(LCR, 1, 0x80)
    assert bus.read(DLL, 1) | bus.read(DLM, 1) << 8 == 12


@given(st.integers(0, 0xFFFF))
def test_divisor_latch_any_value(divisor):
    _, bus, _ = make()
    bus.write(LCR, 1, 0x83)
    bus.write(DLL, 1, divisor & 0xFF)
    bus.write(DLM, 1, divisor >> 8)
    assert bus.read(DLL, 1) | bus.read(DLM, 1) << 8 == divisor


@given(st.integers(0, 0xFF))
def test_scratch_and_lcr_round_trip(value):
    _, bus, _ = make()
    bus.write(SCR, 1, value)
    assert bus.read(SCR, 1) == value
    bus.write(LCR, 1, value)
    assert bus.read(LCR, 1) == value


@given(st.integers(0, 0xFF))
def test_ier_and_mcr_keep_only_defined_bits(value):
    _, bus, _ = make()
    bus.write(IER, 1, value)
    assert bus.read(IER, 1) == value & 0x0F
    bus.write(MCR, 1, value)
    assert bus.read(MCR, 1) == value & 0x1F


def test_iir_reports_no_interrupt_and_fifo_state():
    _, bus, _ = make()
    assert bus.read(IIR, 1) == 0x01
    bus.write(FCR, 1, 0x07)
    assert bus.read(IIR, 1) == 0xC1


def test_msr_shows_attached_terminal():
    _, bus, _ = make()
    assert bus.read(MSR, 1) == 0xB0             # DCD, DSR, CTS


def test_loopback_returns_written_bytes_and_mirrors_modem_lines():
    uart, bus, out = make(input=b"Z")
    bus.write(MCR, 1, 0x10)                     # loopback, all outputs off
    assert bus.read(MSR, 1) & 0xF0 == 0
    bus.write(THR, 1, 0xAE)
    assert bus.read(LSR, 1) & 0x01
    assert bus.read(RBR, 1) == 0xAE             # the host input is not visible
    assert out == [] and uart.transcript == bytearray()
    bus.write(MCR, 1, 0x1F)                     # DTR RTS OUT1 OUT2
    assert bus.read(MSR, 1) == 0xF0 | 0x0B      # lines plus DCTS, DDSR, DDCD
    assert bus.read(MSR, 1) == 0xF0             # deltas clear on read
    bus.write(MCR, 1, 0x00)
    assert bus.read(RBR, 1) == ord("Z")         # back on the line


def test_fifo_clear_keeps_unreceived_host_input():
    _, bus, _ = make(input=b"12")
    assert bus.read(LSR, 1) & 0x01              # "1" received into RBR
    bus.write(FCR, 1, 0x03)
    assert bus.read(RBR, 1) == ord("2")


def test_binary_file_input():
    _, bus, _ = make(input=io.BytesIO(b"ok"))
    assert bus.read(RBR, 1) == ord("o")
    assert bus.read(RBR, 1) == ord("k")
    assert not bus.read(LSR, 1) & 0x01


def test_pipe_input_is_polled_without_blocking():
    read_fd, write_fd = os.pipe()
    with os.fdopen(read_fd, "rb", buffering=0) as reader:
        _, bus, _ = make(input=reader)
        assert not bus.read(LSR, 1) & 0x01      # nothing yet: must not block
        os.write(write_fd, b"q")
        assert bus.read(LSR, 1) & 0x01
        assert bus.read(RBR, 1) == ord("q")
        os.close(write_fd)
        assert not bus.read(LSR, 1) & 0x01      # EOF


def test_read_only_registers_ignore_writes():
    _, bus, _ = make()
    bus.write(LSR, 1, 0x00)
    bus.write(MSR, 1, 0x00)
    assert bus.read(LSR, 1) == 0x60
    assert bus.read(MSR, 1) == 0xB0


def test_word_access_is_split_into_registers():
    uart, bus, out = make()
    bus.write(THR, 2, 0x0541)                   # 'A' to THR, 0x05 to IER
    assert out == [b"A"]
    assert bus.read(IER, 1) == 0x05
