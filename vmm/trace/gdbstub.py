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

import bisect
import logging
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable

from ..vm import StopKind, VmResult
from .gdb_access import GuestAccess
from .gdb_monitor import HELP as MONITOR_HELP
from .gdb_monitor import Monitor
from .gdb_packets import PACKET_SIZE, BadPacket, Closed, Link, checksum, hex_bytes, hex_int
from .gdb_target import REGISTERS, SIGABRT, SIGINT, SIGTRAP, STOP_SIGNALS, THREAD_ID, target_xml
from .gdb_watch import STOP_KEY, WATCH_KINDS, WATCH_REASON, Watches

log = logging.getLogger("vmm.gdb")

__all__ = ["GdbStub", "serve_gdb", "target_xml", "checksum", "REGISTERS", "PACKET_SIZE", "MONITOR_HELP"]

INTERRUPT_REASON = "interrupted from gdb (^C)"
ATTACH_REASON = "gdb attached to the running guest"
#: How often the accepting thread looks for gdb, and repeats its stop request, while the guest runs.
ATTACH_POLL_S = 0.05
LINEAR_MASK = 0xFFFFFFFF
#: The O packet's text is hex: two characters a byte, and room for the framing.
CONSOLE_CHUNK = (PACKET_SIZE - 16) // 2
#: An m reply is hex too, with room for the framing.
MAX_READ = PACKET_SIZE // 2 - 8
#: A symbol further below an address than this does not name it.
SYMBOL_REACH = 0x10000


class GdbStub:
    """The protocol for one VM. :meth:`serve` one connected socket; :attr:`result` is the
    VM's last result (None until the guest has run)."""

    def __init__(self, vm, *, symbols: dict[str, int] | None = None):
        self.vm = vm
        self.symbols = dict(symbols if symbols is not None else getattr(vm.image, "symbols", {}) or {})
        self._by_address = sorted((a, n) for n, a in self.symbols.items())
        self.result: VmResult | None = None
        self.link: Link | None = None
        self.access = GuestAccess(vm)
        self.watches = Watches(vm)
        self.monitor = Monitor(vm, self.symbols, lambda: self._wall)
        self._breakpoints: dict[int, set[str]] = {}      # address -> {"sw", "hw"} gdb inserted
        self._preexisting = set(vm.breakpoints)           # the VM's own: never removed by gdb
        self._stop_reply = b"T%02xthread:%x;" % (SIGTRAP, THREAD_ID)
        self._done = False
        self._detach = False
        self._ended = False               # the guest exited or stopped for good
        self._interrupt = threading.Event()
        self._wall = 0.0
        # The packets, by type: a whole packet, a prefix, or the first letter (in that order).
        self._by_packet: dict[bytes, Callable[[bytes], bytes | None]] = {
            b"QStartNoAckMode": self._no_ack_mode, b"?": lambda p: self._stop_reply,
            b"g": lambda p: self.access.read_all_registers(), b"vCont?": lambda p: b"vCont;c;C;s;S",
            b"k": self._kill, b"qC": lambda p: b"QC%x" % THREAD_ID,
            b"qfThreadInfo": lambda p: b"m%x" % THREAD_ID, b"qsThreadInfo": lambda p: b"l",
        }
        self._by_prefix: tuple[tuple[bytes, Callable[[bytes], bytes | None]], ...] = (
            (b"qSupported", self._supported), (b"qXfer:features:read:", self._xfer_features),
            (b"vCont;", self._vcont), (b"vKill", self._kill), (b"qAttached", lambda p: b"1"),
            (b"qRcmd,", self._monitor),
        )
        self._by_letter: dict[bytes, Callable[[bytes], bytes | None]] = {
            b"G": self._write_all_registers, b"p": self._read_register, b"P": self._write_register,
            b"m": self._read_memory, b"M": self._write_memory_hex, b"X": self._write_memory_binary,
            b"c": self._resume, b"s": self._resume, b"C": self._resume, b"S": self._resume,
            b"Z": self._breakpoint, b"z": self._breakpoint, b"D": self._detach_packet,
            b"H": lambda p: b"OK", b"T": lambda p: b"OK",
        }

    @property
    def connection(self) -> Link:
        if self.link is None:
            raise Closed()
        return self.link

    # -- serving ------------------------------------------------------------------------------
    def serve(self, sock: socket.socket) -> VmResult:
        """Serve one gdb connection until the guest ends or gdb kills or detaches."""
        self.link = Link(sock)
        try:
            self._serve_packets(self.link)
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

    def _serve_packets(self, link: Link) -> None:
        while not self._done:
            try:
                packet = link.read_packet()
            except Closed:
                log.info("gdb: connection closed")
                if self.result is None or not self._ended:
                    self.result = self._synthetic(StopKind.ERROR, "gdb connection closed")
                return
            if not isinstance(packet, bytes):
                continue            # ^C, not running: nothing to interrupt
            reply = self._answer(packet)
            if reply is not None:
                link.send(reply)

    def _answer(self, packet: bytes) -> bytes | None:
        try:
            return self.handle(packet)
        except BadPacket as bad:
            log.warning("gdb: malformed packet %r (%s)", packet[:60], bad)
        except Closed:
            raise
        except Exception:
            log.exception("gdb: packet %r", packet[:60])
        return b"E01"

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
        """The reply to one packet (None: no reply; empty: a packet we do not support)."""
        if not packet:
            return b""
        handler = self._by_packet.get(packet)
        if handler is None:
            handler = next((h for prefix, h in self._by_prefix if packet.startswith(prefix)), None)
        if handler is None:
            handler = self._by_letter.get(packet[:1])
        return handler(packet) if handler is not None else b""

    def _supported(self, packet: bytes) -> bytes:
        return (b"PacketSize=%x;qXfer:features:read+;QStartNoAckMode+;vContSupported+;"
                b"swbreak+;hwbreak+" % PACKET_SIZE)

    def _no_ack_mode(self, packet: bytes) -> None:
        self.connection.send(b"OK")           # acknowledged by gdb in ack mode still
        self.connection.ack = False

    def _kill(self, packet: bytes) -> bytes | None:
        log.info("gdb: kill")
        self.result = self._synthetic(StopKind.ERROR, "killed from gdb", keep_last=True)
        self._done = True
        return b"OK" if packet.startswith(b"vKill") else None

    def _detach_packet(self, packet: bytes) -> bytes:
        log.info("gdb: detach: the guest runs on to its end")
        self._detach = True
        self._done = True
        return b"OK"

    # -- registers and memory: parsed here, done by GuestAccess ----------------------------
    def _read_register(self, packet: bytes) -> bytes:
        return self.access.read_register(hex_int(packet[1:]))

    def _write_register(self, packet: bytes) -> bytes:
        number, _, value = packet[1:].partition(b"=")
        return self.access.write_register(hex_int(number), hex_bytes(value))

    def _write_all_registers(self, packet: bytes) -> bytes:
        return self.access.write_all_registers(hex_bytes(packet[1:]))

    def _read_memory(self, packet: bytes) -> bytes:
        address, _, length = packet[1:].partition(b",")
        return self.access.read_memory(hex_int(address), min(hex_int(length), MAX_READ))

    def _write_memory_hex(self, packet: bytes) -> bytes:
        spec, _, data_text = packet[1:].partition(b":")
        address, _, length = spec.partition(b",")
        data = hex_bytes(data_text)
        if len(data) != hex_int(length):
            raise BadPacket(b"length")
        return self.access.write_memory(hex_int(address), data)

    def _write_memory_binary(self, packet: bytes) -> bytes:
        spec, sep, data = packet[1:].partition(b":")
        address, _, length = spec.partition(b",")
        if not sep or len(data) != hex_int(length):
            raise BadPacket(b"length")
        return self.access.write_memory(hex_int(address), data) if data else b"OK"

    # -- breakpoints and watchpoints ---------------------------------------------------------
    def _breakpoint(self, packet: bytes) -> bytes:
        insert = packet[:1] == b"Z"
        parts = packet[1:].split(b";")[0].split(b",")
        if len(parts) < 3:
            raise BadPacket(b"Z")
        kind, address, length = hex_int(parts[0]), hex_int(parts[1]) & LINEAR_MASK, hex_int(parts[2])
        if kind in (0, 1):
            self._code_breakpoint(insert, "sw" if kind == 0 else "hw", address)
            return b"OK"
        if kind in WATCH_KINDS:
            return self._watchpoint(insert, WATCH_KINDS[kind], address, length)
        return b""

    def _code_breakpoint(self, insert: bool, tag: str, address: int) -> None:
        tags = self._breakpoints.setdefault(address, set())
        if insert:
            if not tags and address not in self._preexisting:
                self.vm.break_at(address)
                self.access.flush_translations()
            tags.add(tag)
            return
        tags.discard(tag)
        if not tags:
            del self._breakpoints[address]
            self._remove_vm_breakpoint(address)

    def _watchpoint(self, insert: bool, kind: str, address: int, length: int) -> bytes:
        if not insert:
            self.watches.remove(kind, address, length)
            return b"OK"
        if not self.watches.insert(kind, address, length):
            return b"E14"
        self.access.flush_translations()
        return b"OK"

    def _remove_vm_breakpoint(self, address: int) -> None:
        if address not in self._preexisting:
            self.vm.remove_breakpoint(address)

    # -- running --------------------------------------------------------------------------
    def _resume(self, packet: bytes) -> bytes | None:
        head, rest = packet[:1], packet[1:]
        if head in (b"C", b"S"):
            _, _, rest = rest.partition(b";")       # the signal: nothing to deliver it to
        if rest:
            self.vm.engine.set_reg("eip", hex_int(rest))
        return self._go(step=head in (b"s", b"S"))

    def _vcont(self, packet: bytes) -> bytes | None:
        for action in packet[len(b"vCont;"):].split(b";"):
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
        self.access.flush_translations()
        result = self._run_watched(step)
        hit, undo = self.watches.take_hit()
        if result.kind is StopKind.ERROR and result.message == WATCH_REASON:
            result = self._finish_watch(result, hit, undo)
            if result.kind is StopKind.BREAKPOINT and hit is not None:
                w = hit[0]
                return self._stopped(result, b"T%02x%s:%x;thread:%x;" % (
                    SIGTRAP, STOP_KEY[w.kind].encode(), w.linear, THREAD_ID))
        if result.kind is StopKind.ERROR and result.message == INTERRUPT_REASON:
            return self._stopped(result, b"T%02xthread:%x;" % (SIGINT, THREAD_ID))
        if result.kind is StopKind.BREAKPOINT:
            return self._stopped(result, b"T%02x%sthread:%x;" % (SIGTRAP, self._break_kind(result, step),
                                                                  THREAD_ID))
        return self._ended_with(result)

    def _break_kind(self, result: VmResult, step: bool) -> bytes:
        """The stop reason a breakpoint stop names (none after a step)."""
        if step:
            return b""
        tags = self._breakpoints.get(result.eip & LINEAR_MASK, set())
        return b"hwbreak:;" if tags == {"hw"} else b"swbreak:;"

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
        link = self.connection
        while not done.is_set():
            if not self._interrupt.is_set():
                try:
                    if link.receive(0.05) and link.take_interrupt():
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
            self.access.flush_translations()
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
        if self._ended and self.result is not None:
            return self.result
        self.access.flush_translations()
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
        for i in range(0, len(data), CONSOLE_CHUNK):
            self.connection.send(b"O" + data[i:i + CONSOLE_CHUNK].hex().encode())

    def _where(self, address: int) -> str:
        i = bisect.bisect_right(self._by_address, (address, "\U0010ffff")) - 1
        if i < 0:
            return ""
        base, name = self._by_address[i]
        off = address - base
        if off > SYMBOL_REACH:
            return ""
        return f" <{name}+{off}>" if off else f" <{name}>"

    # -- target description, monitor ----------------------------------------------------------
    def _xfer_features(self, packet: bytes) -> bytes:
        annex, _, span = packet[len(b"qXfer:features:read:"):].partition(b":")
        if annex != b"target.xml":
            return b"E00"
        offset_text, _, length_text = span.partition(b",")
        offset, length = hex_int(offset_text), hex_int(length_text)
        data = target_xml().encode()
        piece = data[offset:offset + length]
        return (b"l" if offset + length >= len(data) else b"m") + piece

    def _monitor(self, packet: bytes) -> bytes:
        self._console(self.monitor.run(hex_bytes(packet[len(b"qRcmd,"):]).decode("utf-8", "replace")))
        return b"OK"

    def stat_text(self) -> str:
        """The exit statistics so far, the tables of ``vmm run --stat`` as plain text."""
        return self.monitor.stat_text()


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
              symbols: dict[str, int] | None = None, wait: bool = True) -> VmResult:
    """Listen on ``host:port`` (port 0: any free port), accept one gdb connection, serve
    it until the guest exits or stops, or gdb kills (``k``) or detaches (``D``: the guest
    then runs on to its end), and return the VM's last result.

    ``wait`` (QEMU's ``-S``): accept gdb before the first instruction. Without it the
    guest runs at once, as under QEMU's ``-s`` alone, and gdb attaches whenever it
    connects: a helper thread accepts the connection and stops the engine where the
    guest is, and the session starts there. A guest that ends before gdb comes ends the
    run as without a debugger.

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
        if wait:
            conn, peer = server.accept()
        else:
            accepted = _run_until_attached(vm, server)
            if isinstance(accepted, VmResult):
                return accepted
            conn, peer = accepted
            vm.timeout = None  # from here on the debugger decides how long the guest runs
    finally:
        server.close()
    log.info("gdb connected from %s:%d", peer[0], peer[1])
    try:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass
    return GdbStub(vm, symbols=symbols).serve(conn)


def _run_until_attached(vm, server: socket.socket):
    """Run the guest while a helper thread waits for gdb; the accepted (socket, peer), or
    the VM's result when the guest stopped by itself first."""
    finished = threading.Event()
    accepted: list[tuple[socket.socket, tuple]] = []

    def accept() -> None:
        server.settimeout(ATTACH_POLL_S)
        while not finished.is_set():
            try:
                accepted.append(server.accept())
                break
            except TimeoutError:
                continue
            except OSError:
                return
        while not finished.is_set():
            # The VM's run loop clears a stop request between two engine runs: repeat it.
            vm.engine.request_stop(ATTACH_REASON)
            finished.wait(ATTACH_POLL_S)

    watcher = threading.Thread(target=accept, name="gdb-attach", daemon=True)
    watcher.start()
    try:
        result = vm.run()
    finally:
        finished.set()
        watcher.join()
    if accepted and result.kind is StopKind.ERROR and result.message == ATTACH_REASON:
        conn, peer = accepted[0]
        conn.settimeout(None)
        return conn, peer
    for conn, _peer in accepted:
        conn.close()   # gdb came as the guest ended: it finds the connection closed
    return result
