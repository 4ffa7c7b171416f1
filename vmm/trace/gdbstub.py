"""A GDB remote-serial-protocol stub for one VM: debug the guest with a real ``gdb``.

    >>> result = serve_gdb(vm, port=1234)          # then, elsewhere:
    $ gdb -ex "set architecture i386" -ex "target remote 127.0.0.1:1234" guest.elf

The stub speaks the protocol of the GDB manual ("Remote Protocol", all-stop, one
thread) for an i386 target over TCP: packets ``$data#cs``, ``+``/``-`` acknowledgements
and ``QStartNoAckMode``, ``}`` escapes both ways, ``^C`` while the guest runs. What
gdb sees:

- registers: the ``org.gnu.gdb.i386.core`` feature of gdb's own ``32bit-core.xml``
  (eax..edi, eip, eflags, the six selectors, then st0-st7 and the x87 control words,
  which gdb requires of that feature: they read as zeros, writes are ignored);
- memory: guest-linear, as the guest sees it at CPL0 (:meth:`VM.read_linear`); an
  address that does not translate answers ``E14`` (#PF's vector);
- breakpoints ``Z0``/``Z1``: :meth:`VM.break_at` (a code hook bounded to one address,
  no byte of guest code is changed); single steps: :meth:`VM.step`;
- watchpoints ``Z2``/``Z3``/``Z4`` (write / read / access): a Unicorn memory hook
  bounded to the watched bytes, no per-instruction hook (see :class:`_Watches`);
- ``monitor`` commands (``qRcmd``): ``help``, ``stat`` (the exit statistics of
  ``vmm run --stat``), ``state``, ``walk``;
- the end of the guest: ``W`` with the exit status ``vmm run`` would return when it
  leaves through isa-debug-exit, else an ``O`` line with the reason and ``X`` with a
  signal (triple fault SIGSEGV, halt SIGTERM, instruction budget SIGXCPU, wall-clock
  budget SIGALRM, anything else SIGABRT).

The VM runs in the thread that called :func:`serve_gdb`; while it runs, a helper thread
watches the socket for gdb's interrupt (``^C``) and stops the engine.
"""
from __future__ import annotations

import io
import logging
import os
import select
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

from ..vm import StopKind, VmResult

log = logging.getLogger("vmm.gdb")

__all__ = ["GdbStub", "serve_gdb", "target_xml", "REGISTERS", "PACKET_SIZE"]

PACKET_SIZE = 0x4000          # what qSupported offers: the largest packet gdb may send us
MAX_INPUT = 0x40000           # a "packet" longer than this without '#' is garbage: dropped
THREAD_ID = 1
_HEX_DIGITS = frozenset(b"0123456789abcdefABCDEF")

# gdb's signal numbers (include/gdb/signals.def), which is what T/X/S/C carry.
SIGINT, SIGTRAP, SIGABRT, SIGSEGV, SIGALRM, SIGTERM, SIGXCPU = 2, 5, 6, 11, 14, 15, 24
STOP_SIGNALS = {
    StopKind.TRIPLE_FAULT: SIGSEGV,
    StopKind.HALTED: SIGTERM,
    StopKind.BUDGET: SIGXCPU,
    StopKind.TIMEOUT: SIGALRM,
    StopKind.ERROR: SIGABRT,
    StopKind.ENTRY_FAILED: SIGABRT,
}

INTERRUPT_REASON = "interrupted from gdb (^C)"
WATCH_REASON = "gdb watchpoint"

# (name, bits, type) in target-description order: the g packet is this order.
REGISTERS: tuple[tuple[str, int, str], ...] = (
    ("eax", 32, "int32"), ("ecx", 32, "int32"), ("edx", 32, "int32"), ("ebx", 32, "int32"),
    ("esp", 32, "data_ptr"), ("ebp", 32, "data_ptr"), ("esi", 32, "int32"), ("edi", 32, "int32"),
    ("eip", 32, "code_ptr"), ("eflags", 32, "i386_eflags"),
    ("cs", 32, "int32"), ("ss", 32, "int32"), ("ds", 32, "int32"),
    ("es", 32, "int32"), ("fs", 32, "int32"), ("gs", 32, "int32"),
    *((f"st{i}", 80, "i387_ext") for i in range(8)),
    *((name, 32, "int") for name in ("fctrl", "fstat", "ftag", "fiseg", "fioff", "foseg", "fooff", "fop")),
)
ENGINE_REGISTERS = 16         # the first 16 are the vCPU's; the x87 ones read as zeros
_EFLAGS_FIELDS = (("CF", 0), ("", 1), ("PF", 2), ("AF", 4), ("ZF", 6), ("SF", 7), ("TF", 8), ("IF", 9),
                  ("DF", 10), ("OF", 11), ("NT", 14), ("RF", 16), ("VM", 17), ("AC", 18), ("VIF", 19),
                  ("VIP", 20), ("ID", 21))


def target_xml() -> str:
    """The target description: i386, one feature as gdb's ``features/i386/32bit-core.xml``."""
    fields = "\n".join(f'    <field name="{n}" start="{b}" end="{b}"/>' for n, b in _EFLAGS_FIELDS)
    regs = []
    for name, bits, typ in REGISTERS:
        group = ' group="float"' if typ == "int" else ""
        regs.append(f'  <reg name="{name}" bitsize="{bits}" type="{typ}"{group}/>')
    return ('<?xml version="1.0"?>\n'
            '<!DOCTYPE target SYSTEM "gdb-target.dtd">\n'
            '<target version="1.0">\n'
            '<architecture>i386</architecture>\n'
            '<feature name="org.gnu.gdb.i386.core">\n'
            '  <flags id="i386_eflags" size="4">\n'
            f'{fields}\n'
            '  </flags>\n'
            + "\n".join(regs) + "\n"
            '</feature>\n'
            '</target>\n')


# -- framing ---------------------------------------------------------------------------------
def checksum(data: bytes) -> int:
    return sum(data) & 0xFF


def escape(data: bytes) -> bytes:
    """Escape ``#$}*`` (``*`` too: gdb reads it as run-length encoding in our replies)."""
    out = bytearray()
    for b in data:
        if b in b"#$}*":
            out += bytes((0x7D, b ^ 0x20))
        else:
            out.append(b)
    return bytes(out)


def unescape(data: bytes) -> bytes:
    out = bytearray()
    it = iter(data)
    for b in it:
        if b == 0x7D:
            nxt = next(it, None)
            if nxt is None:
                break
            out.append(nxt ^ 0x20)
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


class _Link:
    """One gdb connection: packet framing, acks, and the bytes read while the guest runs."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buf = bytearray()
        self.lock = threading.Lock()
        self.ack = True
        self.closed = False
        self.last_sent = b""

    def _recv(self, timeout: float | None) -> bool:
        """Read what is there into the buffer; False on timeout. Raises Closed."""
        if self.closed:
            raise Closed()
        if timeout is not None:
            ready, _, _ = select.select([self.sock], [], [], timeout)
            if not ready:
                return False
        try:
            data = self.sock.recv(4096)
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

    def read_packet(self):
        """The next packet's payload (bytes, unescaped), or INTERRUPT. Raises Closed."""
        while True:
            with self.lock:
                got = self._parse()
            if got is not None:
                return got
            self._recv(None)

    def _parse(self):
        buf = self.buf
        while buf:
            c = buf[0]
            if c == 0x03:
                del buf[0]
                return INTERRUPT
            if c == ord("+"):
                del buf[0]
                continue
            if c == ord("-"):
                del buf[0]
                if self.ack and self.last_sent:
                    log.debug("nack: resending")
                    self.send_raw(self.last_sent)
                continue
            if c != ord("$"):           # noise between packets: skip to what can start one
                skip = next((i for i, b in enumerate(buf) if b in b"$+-\x03"), len(buf))
                del buf[:skip]
                continue
            end = buf.find(b"#")
            if end < 0:
                if len(buf) > MAX_INPUT:
                    log.warning("gdb: dropping %d bytes of unterminated packet", len(buf))
                    del buf[:]
                return None
            if len(buf) < end + 3:
                return None
            body = bytes(buf[1:end])
            cs_text = bytes(buf[end + 1:end + 3])
            del buf[:end + 3]
            if b"$" in body:            # a lost '#': restart at the last '$'
                restart = body.rfind(b"$")
                log.warning("gdb: malformed packet %r", body[:60])
                buf[:0] = body[restart:] + b"#" + cs_text
                continue
            ok = _HEX_DIGITS.issuperset(cs_text) and int(cs_text, 16) == checksum(body)
            if not ok:
                log.warning("gdb: bad checksum on %r", body[:60])
                if self.ack:
                    self.send_raw(b"-")
                continue
            if self.ack:
                self.send_raw(b"+")
            payload = unescape(body)
            log.debug("<- %r", payload[:200])
            return payload
        return None

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


def _hex_int(text: bytes) -> int:
    if not text or not _HEX_DIGITS.issuperset(text):
        raise BadPacket(text[:40])
    return int(text, 16)


def _hex_bytes(text: bytes) -> bytes:
    try:
        return bytes.fromhex(text.decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        raise BadPacket(text[:40]) from None


# -- watchpoints -------------------------------------------------------------------------------
@dataclass
class _Watch:
    kind: str                          # "write" | "read" | "access" (Z2 | Z3 | Z4)
    linear: int
    length: int
    pieces: list[tuple[int, int]]      # (host-physical, length), one per page
    hooks: list[int] = field(default_factory=list)


_WATCH_KINDS = {2: "write", 3: "read", 4: "access"}
_STOP_KEY = {"write": "watch", "read": "rwatch", "access": "awatch"}


class _Watches:
    """Watchpoints as Unicorn memory hooks bounded to the watched bytes.

    Unicorn calls a memory hook with the *host-physical* address of the access (the page
    our TLB-fill hook answered), so a watchpoint is placed on the host-physical bytes the
    linear address translates to when gdb inserts it (an alias mapping of the same page
    triggers it too; a later remapping of the linear address does not move it). Only
    accesses by guest instructions are seen, not the VMM's own (event delivery, emulated
    instructions, page walks).

    Stopping the engine from a memory hook ends the run with the instruction *aborted
    after its memory access*: the store is done, registers and EIP are as before the
    instruction (measured here on unicorn 2.1.4; an ``inc [x]`` would run twice). So the
    hook saves the bytes each watched store overwrites; after the stop the stub puts
    them back and single-steps that instruction with the hooks disarmed, and reports the
    watchpoint after it, as x86 debug registers do (a trap after the access).
    """

    def __init__(self, vm):
        self.vm = vm
        self.active: dict[tuple[str, int, int], _Watch] = {}
        self.armed = True
        self.hit: tuple[_Watch, int] | None = None     # the watch, EIP of the access
        self.undo: list[tuple[int, bytes]] = []        # (host-physical, old bytes) per watched store

    def insert(self, kind: str, linear: int, length: int) -> bool:
        from unicorn import UC_HOOK_MEM_READ, UC_HOOK_MEM_WRITE

        key = (kind, linear, length)
        if key in self.active:
            return True
        if length <= 0 or length > 0x1000:
            return False
        pieces = []
        address, left = linear, length
        while left:
            chunk = min(left, 0x1000 - (address & 0xFFF))
            try:
                phys = self.vm.mode.translate(address & 0xFFFFFFFF, write=False, user=False, set_ad=False)
            except Exception:  # not mapped now: gdb falls back or reports it
                return False
            pieces.append((phys, chunk))
            address += chunk
            left -= chunk
        w = _Watch(kind, linear, length, pieces)
        uc = self.vm.engine.uc
        types = {"write": (UC_HOOK_MEM_WRITE,), "read": (UC_HOOK_MEM_READ,),
                 "access": (UC_HOOK_MEM_READ, UC_HOOK_MEM_WRITE)}[kind]
        for phys, chunk in pieces:
            for htype in types:
                # An access is reported by its first byte: begin early enough for a wide
                # access that starts before the watched bytes and overlaps them.
                w.hooks.append(uc.hook_add(htype, self._on_access, (w, phys, chunk),
                                           max(0, phys - 15), phys + chunk - 1))
        self.active[key] = w
        return True

    def remove(self, kind: str, linear: int, length: int) -> bool:
        w = self.active.pop((kind, linear, length), None)
        if w is None:
            return False
        for h in w.hooks:
            try:
                self.vm.engine.remove_hook(h)
            except Exception:
                log.exception("gdb: removing a watchpoint hook")
        return True

    def clear(self) -> None:
        for key in list(self.active):
            self.remove(*key)

    def _on_access(self, uc, access, address, size, value, data) -> None:
        try:
            from unicorn import UC_MEM_WRITE
            from unicorn.x86_const import UC_X86_REG_EIP

            w, phys, chunk = data
            if not self.armed or not (address < phys + chunk and address + size > phys):
                return
            if access == UC_MEM_WRITE:
                self.undo.append((address, self.vm.engine.read_phys(address, size)))
            if self.hit is None:
                self.hit = (w, uc.reg_read(UC_X86_REG_EIP))
                self.vm.engine.request_stop(WATCH_REASON)
        except Exception:  # never raise into Unicorn
            log.exception("gdb: watchpoint hook")

    def take_hit(self):
        hit, undo = self.hit, self.undo
        self.hit, self.undo = None, []
        return hit, undo


# -- the stub --------------------------------------------------------------------------------
class GdbStub:
    """The protocol for one VM. :meth:`serve` one connected socket; :attr:`result` is the
    VM's last result (None until the guest has run)."""

    def __init__(self, vm, *, symbols: dict[str, int] | None = None):
        self.vm = vm
        self.symbols = dict(symbols if symbols is not None else getattr(vm.image, "symbols", {}) or {})
        self._by_address = sorted((a, n) for n, a in self.symbols.items())
        self.result: VmResult | None = None
        self.link: _Link | None = None
        self.watches = _Watches(vm)
        self._breakpoints: dict[int, set[str]] = {}      # address -> {"sw", "hw"} gdb inserted
        self._preexisting = set(vm.breakpoints)           # the VM's own: never removed by gdb
        self._stop_reply = b"T%02xthread:%x;" % (SIGTRAP, THREAD_ID)
        self._done = False
        self._detach = False
        self._ended = False               # the guest exited or stopped for good
        self._interrupt = threading.Event()
        self._wall = 0.0

    # -- serving ------------------------------------------------------------------------------
    def serve(self, sock: socket.socket) -> VmResult:
        """Serve one gdb connection until the guest ends or gdb kills or detaches."""
        self.link = _Link(sock)
        try:
            while not self._done:
                try:
                    packet = self.link.read_packet()
                except Closed:
                    log.info("gdb: connection closed")
                    if self.result is None or not self._ended:
                        self.result = self._synthetic(StopKind.ERROR, "gdb connection closed")
                    break
                if packet is INTERRUPT:
                    continue            # not running: nothing to interrupt
                try:
                    reply = self.handle(packet)
                except BadPacket as bad:
                    log.warning("gdb: malformed packet %r (%s)", packet[:60], bad)
                    reply = b"E01"
                except Closed:
                    raise
                except Exception:
                    log.exception("gdb: packet %r", packet[:60])
                    reply = b"E01"
                if reply is not None:
                    self.link.send(reply)
        except Closed:
            log.info("gdb: connection lost")
            if not self._ended and not self._done:
                self.result = self._synthetic(StopKind.ERROR, "gdb connection closed")
        finally:
            self.watches.clear()
            for address in list(self._breakpoints):
                self._remove_vm_breakpoint(address)
            self._breakpoints.clear()
            self._close()
        if self._detach:
            self.result = self._run_to_end()
        if self.result is None:
            self.result = self._synthetic(StopKind.ERROR, "gdb ended the session before the guest ran")
        return self.result

    def _close(self) -> None:
        if self.link is None:
            return
        try:
            self.link.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        try:
            self.link.sock.close()
        except OSError:
            pass

    # -- dispatch --------------------------------------------------------------------------
    def handle(self, packet: bytes) -> bytes | None:
        """The reply to one packet (None: no reply)."""
        if not packet:
            return b""
        head = packet[:1]
        if packet.startswith(b"qSupported"):
            return (b"PacketSize=%x;qXfer:features:read+;QStartNoAckMode+;vContSupported+;"
                    b"swbreak+;hwbreak+" % PACKET_SIZE)
        if packet == b"QStartNoAckMode":
            self.link.send(b"OK")           # acknowledged by gdb in ack mode still
            self.link.ack = False
            return None
        if packet.startswith(b"qXfer:features:read:"):
            return self._xfer_features(packet[len(b"qXfer:features:read:"):])
        if packet == b"?":
            return self._stop_reply
        if packet == b"g":
            return self._read_all_registers()
        if head == b"G":
            return self._write_all_registers(packet[1:])
        if head == b"p":
            return self._read_register(_hex_int(packet[1:]))
        if head == b"P":
            number, _, value = packet[1:].partition(b"=")
            return self._write_register(_hex_int(number), _hex_bytes(value))
        if head == b"m":
            address, _, length = packet[1:].partition(b",")
            return self._read_memory(_hex_int(address), _hex_int(length))
        if head == b"M":
            spec, _, data = packet[1:].partition(b":")
            address, _, length = spec.partition(b",")
            data = _hex_bytes(data)
            if len(data) != _hex_int(length):
                raise BadPacket(b"length")
            return self._write_memory(_hex_int(address), data)
        if head == b"X":
            spec, sep, data = packet[1:].partition(b":")
            address, _, length = spec.partition(b",")
            if not sep or len(data) != _hex_int(length):
                raise BadPacket(b"length")
            return self._write_memory(_hex_int(address), data) if data else b"OK"
        if head in (b"c", b"s", b"C", b"S"):
            return self._resume(packet)
        if packet == b"vCont?":
            return b"vCont;c;C;s;S"
        if packet.startswith(b"vCont;"):
            return self._vcont(packet[6:])
        if head in (b"Z", b"z"):
            return self._breakpoint(packet)
        if packet == b"k" or packet.startswith(b"vKill"):
            log.info("gdb: kill")
            self.result = self._synthetic(StopKind.ERROR, "killed from gdb", keep_last=True)
            self._done = True
            return b"OK" if packet.startswith(b"vKill") else None
        if head == b"D":
            log.info("gdb: detach: the guest runs on to its end")
            self._detach = True
            self._done = True
            return b"OK"
        if packet.startswith(b"qAttached"):
            return b"1"
        if packet == b"qC":
            return b"QC%x" % THREAD_ID
        if packet == b"qfThreadInfo":
            return b"m%x" % THREAD_ID
        if packet == b"qsThreadInfo":
            return b"l"
        if head == b"H" or head == b"T":
            return b"OK"
        if packet.startswith(b"qRcmd,"):
            return self._monitor(_hex_bytes(packet[6:]).decode("utf-8", "replace"))
        return b""

    # -- registers ---------------------------------------------------------------------------
    def _reg_bytes(self, number: int) -> bytes:
        name, bits, _ = REGISTERS[number]
        if number < ENGINE_REGISTERS:
            return self.vm.engine.reg(name).to_bytes(4, "little")
        return bytes(bits // 8)

    def _read_all_registers(self) -> bytes:
        return b"".join(self._reg_bytes(n) for n in range(len(REGISTERS))).hex().encode()

    def _read_register(self, number: int) -> bytes:
        if not 0 <= number < len(REGISTERS):
            return b"E00"
        return self._reg_bytes(number).hex().encode()

    def _set_engine_register(self, number: int, value: bytes) -> None:
        name, bits, _ = REGISTERS[number]
        if len(value) != bits // 8:
            raise BadPacket(b"register size")
        if number >= ENGINE_REGISTERS:
            return                                  # x87 state is not modelled: ignored
        v = int.from_bytes(value, "little")
        if self.vm.engine.reg(name) != v:
            self.vm.engine.set_reg(name, v)

    def _write_register(self, number: int, value: bytes) -> bytes:
        if not 0 <= number < len(REGISTERS):
            return b"E00"
        try:
            self._set_engine_register(number, value)
        except BadPacket:
            raise
        except Exception as err:  # e.g. a selector the CPU refuses
            log.warning("gdb: writing %s: %s", REGISTERS[number][0], err)
            return b"E01"
        return b"OK"

    def _write_all_registers(self, text: bytes) -> bytes:
        data = _hex_bytes(text)
        offset, failed = 0, False
        for number, (_, bits, _) in enumerate(REGISTERS):
            size = bits // 8
            if offset + size > len(data):
                break
            try:
                self._set_engine_register(number, data[offset:offset + size])
            except Exception as err:
                log.warning("gdb: writing %s: %s", REGISTERS[number][0], err)
                failed = True
            offset += size
        return b"E01" if failed else b"OK"

    # -- memory ---------------------------------------------------------------------------
    def _read_memory(self, address: int, length: int) -> bytes:
        length = min(length, PACKET_SIZE // 2 - 8)
        out = b""
        while len(out) < length:
            at = (address + len(out)) & 0xFFFFFFFF
            chunk = min(length - len(out), 0x1000 - (at & 0xFFF))
            try:
                out += self.vm.read_linear(at, chunk)
            except Exception:
                break                   # unmapped: a short read, or E14 if nothing
        if not out and length:
            return b"E14"
        return out.hex().encode()

    def _write_memory(self, address: int, data: bytes) -> bytes:
        done = 0
        try:
            while done < len(data):
                at = (address + done) & 0xFFFFFFFF
                chunk = min(len(data) - done, 0x1000 - (at & 0xFFF))
                piece = data[done:done + chunk]
                try:
                    self.vm.write_linear(at, piece)
                except Exception:
                    # A read-only page (code, CR0.WP): a debugger writes anyway, as QEMU's
                    # gdbstub does, through the read translation.
                    phys = self.vm.mode.translate(at, write=False, user=False, set_ad=False)
                    self.vm.engine.write_phys(phys, piece)
                done += chunk
        except Exception:
            return b"E14"
        finally:
            if done:
                self._flush_translations()
        return b"OK"

    def _flush_translations(self) -> None:
        """Drop Unicorn's translated blocks: code written, a breakpoint placed, or a step
        ahead (a block translated without the instruction counter runs past a step)."""
        try:
            self.vm.engine.uc.ctl_flush_tb()
        except Exception:
            log.exception("gdb: flushing translated blocks")

    # -- breakpoints and watchpoints ---------------------------------------------------------
    def _breakpoint(self, packet: bytes) -> bytes:
        insert = packet[:1] == b"Z"
        parts = packet[1:].split(b";")[0].split(b",")
        if len(parts) < 3:
            raise BadPacket(b"Z")
        kind, address, length = _hex_int(parts[0]), _hex_int(parts[1]) & 0xFFFFFFFF, _hex_int(parts[2])
        if kind in (0, 1):
            tag = "sw" if kind == 0 else "hw"
            tags = self._breakpoints.setdefault(address, set())
            if insert:
                if not tags and address not in self._preexisting:
                    self.vm.break_at(address)
                    self._flush_translations()
                tags.add(tag)
            else:
                tags.discard(tag)
                if not tags:
                    del self._breakpoints[address]
                    self._remove_vm_breakpoint(address)
            return b"OK"
        if kind in _WATCH_KINDS:
            if insert:
                if not self.watches.insert(_WATCH_KINDS[kind], address, length):
                    return b"E14"
                self._flush_translations()
            else:
                self.watches.remove(_WATCH_KINDS[kind], address, length)
            return b"OK"
        return b""

    def _remove_vm_breakpoint(self, address: int) -> None:
        if address not in self._preexisting:
            self.vm.remove_breakpoint(address)

    # -- running --------------------------------------------------------------------------
    def _resume(self, packet: bytes) -> bytes | None:
        head, rest = packet[:1], packet[1:]
        if head in (b"C", b"S"):
            _, _, rest = rest.partition(b";")       # the signal: nothing to deliver it to
        if rest:
            self.vm.engine.set_reg("eip", _hex_int(rest))
        return self._go(step=head in (b"s", b"S"))

    def _vcont(self, actions: bytes) -> bytes | None:
        for action in actions.split(b";"):
            verb, _, thread = action.partition(b":")
            if thread and thread not in (b"-1", b"0", b"%x" % THREAD_ID, b"p1.1", b"p1.-1"):
                continue
            if verb[:1] in (b"c", b"C"):
                return self._go(step=False)
            if verb[:1] in (b"s", b"S"):
                return self._go(step=True)
            if verb[:1] == b"t":
                return b"OK"
            raise BadPacket(action)
        return b"E01"

    def _go(self, step: bool) -> bytes | None:
        """Run or step the VM, with ^C watched for; the stop reply (or W / X)."""
        if self._ended:
            return self._stop_reply
        self._interrupt.clear()
        self._flush_translations()
        result = self._run_watched(step)
        hit, undo = self.watches.take_hit()
        if result.kind is StopKind.ERROR and result.message == WATCH_REASON:
            result = self._finish_watch(result, hit, undo)
            if result.kind is StopKind.BREAKPOINT and hit is not None:
                w = hit[0]
                return self._stopped(result, b"T%02x%s:%x;thread:%x;" % (
                    SIGTRAP, _STOP_KEY[w.kind].encode(), w.linear, THREAD_ID))
        if result.kind is StopKind.ERROR and result.message == INTERRUPT_REASON:
            return self._stopped(result, b"T%02xthread:%x;" % (SIGINT, THREAD_ID))
        if result.kind is StopKind.BREAKPOINT:
            extra = b""
            if not step:
                tags = self._breakpoints.get(result.eip & 0xFFFFFFFF, set())
                extra = b"hwbreak:;" if tags == {"hw"} else b"swbreak:;"
            return self._stopped(result, b"T%02x%sthread:%x;" % (SIGTRAP, extra, THREAD_ID))
        return self._ended_with(result)

    def _run_watched(self, step: bool) -> VmResult:
        """vm.run() / vm.step() in this thread; a helper thread turns ^C into a stop."""
        done = threading.Event()
        watcher = threading.Thread(target=self._watch_socket, args=(done,), name="gdb-interrupt", daemon=True)
        watcher.start()
        started = time.perf_counter()
        try:
            result = self.vm.step() if step else self.vm.run()
        except Exception as err:  # a bug in a handler: the VM cannot go on
            log.exception("gdb: the VM raised")
            result = self._synthetic(StopKind.ERROR, f"the VMM raised {type(err).__name__}: {err}")
        finally:
            self._wall += time.perf_counter() - started
            done.set()
            watcher.join()
        if self._interrupt.is_set() and result.kind is StopKind.BREAKPOINT and step:
            self._interrupt.clear()     # the step ended by itself: ^C arrived late
        return result

    def _watch_socket(self, done: threading.Event) -> None:
        link = self.link
        while not done.is_set():
            if not self._interrupt.is_set():
                try:
                    if link._recv(0.05) and link.take_interrupt():
                        self._interrupt.set()
                except Closed:
                    log.info("gdb: connection lost while the guest runs: stopping it")
                    self._interrupt.set()
                except Exception:
                    log.exception("gdb: reading while the guest runs")
                    return
            if self._interrupt.is_set():
                # The VM's run loop clears a stop request between two engine runs: repeat it.
                self.vm.engine.request_stop(INTERRUPT_REASON)
                done.wait(0.05)

    def _finish_watch(self, result: VmResult, hit, undo) -> VmResult:
        """The engine stopped in a watchpoint hook: complete the instruction once."""
        eng = self.vm.engine
        if hit is None or eng.reg("eip") != hit[1]:
            return self._as_step(result)     # the instruction did complete
        for address, old in reversed(undo):
            eng.write_phys(address, old)
        self.watches.armed = False
        try:
            self._flush_translations()
            return self.vm.step()
        except Exception as err:
            log.exception("gdb: stepping a watched access")
            return self._synthetic(StopKind.ERROR, f"the VMM raised {type(err).__name__}: {err}")
        finally:
            self.watches.armed = True

    def _as_step(self, result: VmResult) -> VmResult:
        return VmResult(StopKind.BREAKPOINT, "watchpoint", result.eip, result.exit_status, result.instructions,
                        result.virtual_time, result.wall_seconds, result.exits, result.exit_seconds, result.memory)

    def _stopped(self, result: VmResult, reply: bytes) -> bytes:
        self.result = result
        self._stop_reply = reply
        return reply

    def _ended_with(self, result: VmResult) -> bytes | None:
        """The guest is gone: W (isa-debug-exit) or O + X; then stop serving."""
        self.result = result
        self._ended = True
        self._done = True
        if result.kind is StopKind.EXIT:
            reply = b"W%02x" % (result.status & 0xFF)
        else:
            self._console(f"vmm: {result.kind.value}: {result.message} "
                          f"(EIP {result.eip:#010x}{self._where(result.eip)})\n")
            reply = b"X%02x" % STOP_SIGNALS.get(result.kind, SIGABRT)
        self._stop_reply = reply
        return reply

    def _run_to_end(self) -> VmResult:
        if self._ended:
            return self.result
        self._flush_translations()
        try:
            return self.vm.run()
        except Exception as err:
            log.exception("gdb: the VM raised after detach")
            return self._synthetic(StopKind.ERROR, f"the VMM raised {type(err).__name__}: {err}")

    def _synthetic(self, kind: StopKind, message: str, keep_last: bool = False) -> VmResult:
        """A result for a session gdb ended (no run of the VM returned one)."""
        if keep_last and self._ended and self.result is not None:
            return self.result
        vm = self.vm
        try:
            eip = vm.engine.reg("eip")
            memory = vm.mode.memory_counters()
        except Exception:
            eip, memory = 0, {}
        return VmResult(kind, message, eip, vm.board.exit_status, None, vm.now, self._wall,
                        Counter(vm.exits), Counter(vm.exit_seconds), memory)

    # -- console, symbols ----------------------------------------------------------------------
    def _console(self, text: str) -> None:
        """Text on gdb's console: O packets (only while gdb waits for a stop or a monitor reply)."""
        data = text.encode("utf-8", "replace")
        step = (PACKET_SIZE - 16) // 2
        for i in range(0, len(data), step):
            self.link.send(b"O" + data[i:i + step].hex().encode())

    def _where(self, address: int) -> str:
        import bisect

        i = bisect.bisect_right(self._by_address, (address, "\U0010ffff")) - 1
        if i < 0:
            return ""
        base, name = self._by_address[i]
        off = address - base
        if off > 0x10000:
            return ""
        return f" <{name}+{off}>" if off else f" <{name}>"

    # -- target description -------------------------------------------------------------------
    def _xfer_features(self, args: bytes) -> bytes:
        annex, _, span = args.partition(b":")
        if annex != b"target.xml":
            return b"E00"
        offset, _, length = span.partition(b",")
        offset, length = _hex_int(offset), _hex_int(length)
        data = target_xml().encode()
        piece = data[offset:offset + length]
        return (b"l" if offset + length >= len(data) else b"m") + piece

    # -- monitor commands ---------------------------------------------------------------------
    MONITOR_HELP = ("monitor commands of the vmm gdb stub:\n"
                    "  help             this text\n"
                    "  stat             VM exits (events, in native) by reason so far, as `vmm run --stat`\n"
                    "  state            control registers and segments (gdb's i386 registers lack CRn)\n"
                    "  walk ADDR [read|write|fetch] [user]\n"
                    "                   how a guest-linear address translates now, step by step\n")

    def _monitor(self, command: str) -> bytes:
        words = command.split()
        verb = words[0].lower() if words else "help"
        try:
            if verb == "help":
                text = self.MONITOR_HELP
            elif verb in ("stat", "stats"):
                text = self.stat_text()
            elif verb == "state":
                text = self.vm.dump_state().replace("  ", "\n") + "\n" + self._tables()
            elif verb == "walk" and len(words) >= 2:
                from .walk import explain

                access = words[2] if len(words) > 2 and words[2] in ("read", "write", "fetch") else "read"
                address = self._address(words[1])
                text = "\n".join(explain(self.vm, address, access, "user" in words[2:])) + "\n"
            else:
                text = f"unknown monitor command {command!r}\n" + self.MONITOR_HELP
        except ValueError as err:
            text = f"monitor {command}: {err}\n"
        except Exception as err:
            log.exception("gdb: monitor %r", command)
            text = f"monitor {command}: {type(err).__name__}: {err}\n"
        self._console(text)
        return b"OK"

    def _address(self, word: str) -> int:
        if word in self.symbols:
            return self.symbols[word]
        try:
            return int(word, 0) & 0xFFFFFFFF
        except ValueError:
            raise ValueError(f"{word!r} is neither a number nor a symbol") from None

    def _tables(self) -> str:
        eng = self.vm.engine
        lines = []
        for name in ("gdtr", "idtr", "ldtr", "tr"):
            sel, base, limit = eng.table(name)
            lines.append(f"{name}: selector {sel:#06x} base {base:#010x} limit {limit:#x}")
        return "\n".join(lines) + "\n"

    def stat_text(self) -> str:
        """The exit statistics so far, the tables of ``vmm run --stat`` as plain text."""
        from rich.console import Console

        from ..cost.stats import exit_stats, render, render_memory

        vm = self.vm
        rows = exit_stats(vm.exits, vm.exit_seconds)
        mode = vm.mode.name
        guest = os.path.basename(vm.image.path) if getattr(vm.image, "path", None) else "guest"
        label = "exits" if mode != "native" else "events"
        out = io.StringIO()
        console = Console(file=out, width=100, color_system=None, force_terminal=False, no_color=True,
                          highlight=False, emoji=False)
        console.print(render(rows, f"{guest} in {mode}: {sum(r.count for r in rows)} {label}, "
                                   f"{self._wall:.3f} s wall"))
        memory = vm.mode.memory_counters()
        if memory:
            console.print(render_memory(memory, f"memory virtualization ({mode})"))
        return "\n".join(line.rstrip() for line in out.getvalue().splitlines()) + "\n"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        import ipaddress

        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve_gdb(vm, host: str = "127.0.0.1", port: int = 1234, *,
              on_listen: Callable[[int], None] | None = None,
              symbols: dict[str, int] | None = None) -> VmResult:
    """Listen on ``host:port`` (port 0: any free port), accept one gdb connection, serve
    it until the guest exits or stops, or gdb kills (``k``) or detaches (``D``: the guest
    then runs on to its end), and return the VM's last result.

    ``on_listen(port)`` is called once the socket listens. The default host is the
    loopback interface: anyone who can connect controls the guest and reads its memory,
    so another address must be passed explicitly (it is logged as a warning).
    """
    if not _is_loopback(host):
        log.warning("gdb stub listening on %s: not loopback, anyone who reaches it controls the guest", host)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    server = socket.socket(family, socket.SOCK_STREAM)
    try:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind((host, port))
        server.listen(1)
        bound = server.getsockname()[1]
        log.info("gdb stub listening on %s:%d", host, bound)
        if on_listen is not None:
            on_listen(bound)
        conn, peer = server.accept()
    finally:
        server.close()
    log.info("gdb connected from %s:%d", peer[0], peer[1])
    try:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass
    return GdbStub(vm, symbols=symbols).serve(conn)
