"""The GDB remote protocol's framing: ``$data#cs`` packets, ``+``/``-`` acknowledgements,
``}`` escapes, and the ``^C`` byte, over one TCP connection.

Nothing here knows what a packet means (that is :mod:`vmm.trace.gdbstub`); a packet is
bytes in, bytes out, and a malformed one is dropped or answered as the GDB manual says
("Remote Protocol: Overview"), never an exception to the caller but :class:`Closed`.
"""
from __future__ import annotations

import logging
import select
import socket
import threading

log = logging.getLogger("vmm.gdb")

PACKET_SIZE = 0x4000          # what qSupported offers: the largest packet gdb may send us
MAX_INPUT = 0x40000           # a "packet" longer than this without '#' is garbage: dropped
HEX_DIGITS = frozenset(b"0123456789abcdefABCDEF")
ESCAPE = 0x7D                 # '}': the next byte is XOR 0x20
ESCAPE_XOR = 0x20
INTERRUPT_BYTE = 0x03         # ^C
PACKET_START, ACK, NACK = ord("$"), ord("+"), ord("-")
RECV_SIZE = 4096


def checksum(data: bytes) -> int:
    return sum(data) & 0xFF


def escape(data: bytes) -> bytes:
    """Escape ``#$}*`` (``*`` too: gdb reads it as run-length encoding in our replies)."""
    out = bytearray()
    for b in data:
        if b in b"#$}*":
            out += bytes((ESCAPE, b ^ ESCAPE_XOR))
        else:
            out.append(b)
    return bytes(out)


def unescape(data: bytes) -> bytes:
    out = bytearray()
    it = iter(data)
    for b in it:
        if b == ESCAPE:
            nxt = next(it, None)
            if nxt is None:
                break
            out.append(nxt ^ ESCAPE_XOR)
        else:
            out.append(b)
    return bytes(out)


def frame(data: bytes) -> bytes:
    body = escape(data)
    return b"$" + body + b"#%02x" % checksum(body)


class Closed(Exception):
    """gdb went away."""


class _Interrupt:
    """The ^C byte, as read_packet returns it."""


INTERRUPT = _Interrupt()


class Link:
    """One gdb connection: packet framing, acks, and the bytes read while the guest runs."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buf = bytearray()
        self.lock = threading.Lock()
        self.ack = True
        self.closed = False
        self.last_sent = b""

    def receive(self, timeout: float | None) -> bool:
        """Read what is there into the buffer; False on timeout. Raises Closed."""
        if self.closed:
            raise Closed()
        if timeout is not None:
            ready, _, _ = select.select([self.sock], [], [], timeout)
            if not ready:
                return False
        try:
            data = self.sock.recv(RECV_SIZE)
        except (ConnectionError, OSError) as err:
            self.closed = True
            raise Closed() from err
        if not data:
            self.closed = True
            raise Closed()
        with self.lock:
            self.buf += data
        return True

    def send_raw(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError as err:
            self.closed = True
            raise Closed() from err

    def send(self, payload: bytes) -> None:
        packet = frame(payload)
        self.last_sent = packet
        log.debug("-> %r", payload[:200])
        self.send_raw(packet)

    def read_packet(self) -> bytes | _Interrupt:
        """The next packet's payload (bytes, unescaped), or INTERRUPT. Raises Closed."""
        while True:
            with self.lock:
                got = self._parse()
            if got is not None:
                return got
            self.receive(None)

    def _parse(self) -> bytes | _Interrupt | None:
        """The first complete packet or ^C in the buffer, consumed; None until one is there."""
        buf = self.buf
        while buf:
            c = buf[0]
            if c == INTERRUPT_BYTE:
                del buf[0]
                return INTERRUPT
            if c != PACKET_START:
                self._skip_between_packets(c)
                continue
            end = buf.find(b"#")
            if end < 0:
                if len(buf) > MAX_INPUT:
                    log.warning("gdb: dropping %d bytes of unterminated packet", len(buf))
                    del buf[:]
                return None
            if len(buf) < end + 3:
                return None
            payload = self._take_packet(end)
            if payload is not None:
                return payload
        return None

    def _skip_between_packets(self, c: int) -> None:
        """An acknowledgement (a nack resends what we sent last), or noise: skipped to what
        can start a packet."""
        buf = self.buf
        if c == ACK:
            del buf[0]
        elif c == NACK:
            del buf[0]
            if self.ack and self.last_sent:
                log.debug("nack: resending")
                self.send_raw(self.last_sent)
        else:
            skip = next((i for i, b in enumerate(buf) if b in b"$+-\x03"), len(buf))
            del buf[:skip]

    def _take_packet(self, end: int) -> bytes | None:
        """Consume ``$body#cs`` (``#`` at ``end``): the unescaped body, acknowledged, or None
        for a packet refused (bad checksum) or cut short (a lost ``#``)."""
        buf = self.buf
        body = bytes(buf[1:end])
        cs_text = bytes(buf[end + 1:end + 3])
        del buf[:end + 3]
        if b"$" in body:            # a lost '#': restart at the last '$'
            restart = body.rfind(b"$")
            log.warning("gdb: malformed packet %r", body[:60])
            buf[:0] = body[restart:] + b"#" + cs_text
            return None
        if not (HEX_DIGITS.issuperset(cs_text) and int(cs_text, 16) == checksum(body)):
            log.warning("gdb: bad checksum on %r", body[:60])
            if self.ack:
                self.send_raw(b"-")
            return None
        if self.ack:
            self.send_raw(b"+")
        payload = unescape(body)
        log.debug("<- %r", payload[:200])
        return payload

    def take_interrupt(self) -> bool:
        """While the guest runs: True if gdb sent ^C (consumed)."""
        with self.lock:
            at = self.buf.find(b"\x03")
            if at < 0:
                return False
            del self.buf[at]
            return True


class BadPacket(Exception):
    """A packet whose arguments do not parse: answered E01."""


def hex_int(text: bytes) -> int:
    if not text or not HEX_DIGITS.issuperset(text):
        raise BadPacket(text[:40])
    return int(text, 16)


def hex_bytes(text: bytes) -> bytes:
    try:
        return bytes.fromhex(text.decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        raise BadPacket(text[:40]) from None
