"""The person at the keyboard: Ctrl-C, bytes typed to the guest's serial port, and the
terminal as the guest's console.

* :func:`interruptible`: SIGINT stops any run within a fraction of a second. A free run
  without exits is inside Unicorn's ``emu_start``, where Python's own signal handler
  cannot run until it returns, so the C-level handler's wakeup byte (``signal.set_wakeup_fd``)
  wakes a watcher thread that calls :meth:`vmm.vm.VM.interrupt`; the run loop then ends
  with INTERRUPTED and :meth:`~vmm.vm.VM.run` raises :class:`~vmm.vm.VmInterrupted`.
* :class:`InputStream`: the bytes of a pipe or terminal as they arrive. A reader thread
  fills a queue; the UART takes one byte from it whenever the guest looks at LSR or RBR,
  so the run loop never blocks on input and its time budget always applies.
* :class:`Console`: a terminal in raw mode, as QEMU's ``-nographic`` stdio: keys go to the
  guest (Ctrl-C included), its output comes back, and Ctrl-A starts an escape (Ctrl-A x
  quits, Ctrl-A h lists the keys, Ctrl-A Ctrl-A sends Ctrl-A). The terminal's settings
  are restored however the run ends.
"""
from __future__ import annotations

import _thread
import contextlib
import gc
import os
import select
import signal
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterator

#: The status of a run that SIGINT (or the console's quit key) ended: 128 + SIGINT, as a shell reports it.
EXIT_INTERRUPTED = 128 + signal.SIGINT
#: How often a requested stop is repeated: a request can race the run loop into ``emu_start``,
#: where it is lost; the next one lands (a stop within half a second needs a few tries at most).
POKE_SECONDS = 0.05
ESCAPE = 0x01          # Ctrl-A, QEMU's escape character
#: Ctrl-A h, in QEMU's words (the terminal's output processing turns each "\n" into CR LF).
ESCAPE_HELP = b"\nC-a h    print this help\nC-a x    quit\nC-a C-a  send C-a to the guest\n"


#: Signals that end a run (SIGTERM and SIGHUP only while a :class:`Console` holds the terminal).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
#: The last of them received: the command's status is 128 + it.
received: signal.Signals | None = None


def exit_status() -> int:
    """128 + the signal that ended the command (SIGINT for the console's quit key)."""
    return 128 + (received or signal.SIGINT)


def _interrupt_vms(reason: str) -> bool:
    # Never an import here: a signal can land while vmm.vm is half imported (or the
    # watcher thread would wait on the main thread's import lock); no VM exists before.
    interrupt_all = getattr(sys.modules.get("vmm.vm"), "interrupt_all", None)
    return interrupt_all(reason) if interrupt_all is not None else False


def _on_sigint(signum, frame) -> None:
    """Python's half of SIGINT (main thread, between bytecodes). Inside the engine (a hook)
    the run is told to stop and ends by itself, its stop published; anywhere else the
    interrupt is Python's usual KeyboardInterrupt, which :meth:`VM.run` also turns into
    an INTERRUPTED stop between slices."""
    _stop_signal(signum, frame)


def _in_gc_callback(frame) -> bool:
    """Whether ``frame`` runs inside a garbage-collector callback (hypothesis installs
    one): an exception raised there is printed as "Exception ignored" and dropped."""
    codes = {getattr(callback, "__code__", None) for callback in gc.callbacks}
    while frame is not None:
        if frame.f_code in codes:
            return True
        frame = frame.f_back
    return False


def _stop_signal(signum: int, frame=None) -> None:
    global received
    received = signal.Signals(signum)
    if _interrupt_vms(received.name):
        return
    if _in_gc_callback(frame):
        # Raise it again once the collection is over: the same handler, outside the callback.
        threading.Timer(0.01, _thread.interrupt_main, (signum,)).start()
        return
    raise KeyboardInterrupt


def _watch(read_fd: int) -> None:
    """The watcher thread: wakes on the wakeup fd, and after a SIGINT tells every VM to
    stop every POKE_SECONDS until the fd is closed (the command has ended)."""
    interrupted: signal.Signals | None = None
    while True:
        ready, _, _ = select.select([read_fd], [], [], POKE_SECONDS if interrupted else None)
        if ready:
            try:
                data = os.read(read_fd, 64)
            except OSError:
                return
            if not data:
                return
            interrupted = interrupted or next((signal.Signals(n) for n in data if n in STOP_SIGNALS), None)
        if interrupted:
            _interrupt_vms(interrupted.name)


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """SIGINT handling for one command (main thread only; elsewhere Python's default)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    previous_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    previous = signal.signal(signal.SIGINT, _on_sigint)
    watcher = threading.Thread(target=_watch, args=(read_fd,), name="vmm-sigint", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        signal.set_wakeup_fd(previous_fd)
        os.close(write_fd)    # the watcher sees end of file and returns
        watcher.join(1.0)
        os.close(read_fd)


class InputStream:
    """The bytes of ``fd`` as they arrive, for the UART (:meth:`poll_byte` never blocks).

    ``feed``, when given, sees each chunk read and returns the bytes the guest gets (the
    console's escape keys are taken out there).
    """

    def __init__(self, fd: int, feed: Callable[[bytes], bytes] | None = None):
        self._fd = fd
        self._feed = feed
        self._queue: deque[int] = deque()
        self._ended = False
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._read, name="vmm-serial-input", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._closed.is_set():
            try:
                ready, _, _ = select.select([self._fd], [], [], POKE_SECONDS)
                data = os.read(self._fd, 4096) if ready else None
            except OSError:
                data = b""
            if data is None:
                continue
            if not data:
                break
            self._queue.extend(self._feed(data) if self._feed is not None else data)
        self._ended = True

    def poll_byte(self) -> bytes | None:
        """One byte, b"" once the input has ended, None if nothing has arrived yet."""
        ended = self._ended   # read first: every byte queued before the end is in the queue now
        if self._queue:
            return bytes((self._queue.popleft(),))
        return b"" if ended else None

    def close(self) -> None:
        self._closed.set()
        self._thread.join(1.0)


class Console:
    """The terminal on ``fd`` as the guest's serial line, while the ``with`` block runs.

    ``quit(reason)`` is called (from the reader thread) for Ctrl-A x; ``output`` writes to
    the terminal (the escape help goes there).
    """

    def __init__(self, fd: int, output: Callable[[bytes], None], quit: Callable[[str], object]):
        self.fd, self.output, self.quit = fd, output, quit
        self._escaped = False
        self._saved: list | None = None
        self.input: InputStream | None = None
        self._quitting = threading.Event()
        self._signals: dict[int, object] = {}

    def __enter__(self) -> Console:
        import termios

        self._saved = termios.tcgetattr(self.fd)
        termios.tcsetattr(self.fd, termios.TCSADRAIN, raw_attributes(self._saved))
        # A signal that would end the process while the terminal is raw ends the run instead,
        # so that the settings are restored on the way out.
        for signum in (signal.SIGTERM, signal.SIGHUP):
            self._signals[signum] = signal.signal(signum, self._on_signal)
        self.input = InputStream(self.fd, self._keys)
        return self

    def __exit__(self, *exc) -> None:
        import termios

        self._quitting.set()
        if self.input is not None:
            self.input.close()
        for signum, handler in self._signals.items():
            signal.signal(signum, handler)   # type: ignore[arg-type]  # what signal.signal returned
        if self._saved is not None:
            termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved)

    def _on_signal(self, signum, frame) -> None:
        _stop_signal(signum)

    def _keys(self, data: bytes) -> bytes:
        """The escape keys, as QEMU's multiplexer reads them; the rest goes to the guest."""
        out = bytearray()
        for byte in data:
            if not self._escaped:
                if byte == ESCAPE:
                    self._escaped = True
                else:
                    out.append(byte)
                continue
            self._escaped = False
            if byte == ESCAPE:
                out.append(byte)
            elif byte in b"hH?":
                self.output(ESCAPE_HELP)
            elif byte in b"xX":
                self.output(b"\n")   # what follows (the stop's line) starts a line of its own
                threading.Thread(target=self._quit, name="vmm-console-quit", daemon=True).start()
            # any other key after the escape is dropped, as in QEMU
        return bytes(out)

    def _quit(self) -> None:
        while not self._quitting.is_set():
            self.quit("quit from the console (Ctrl-A x)")
            self._quitting.wait(POKE_SECONDS)


def raw_attributes(attrs: list) -> list:
    """``attrs`` (termios.tcgetattr) as QEMU's stdio character device sets them with
    ``-nographic``: no echo, no line editing, no signals from keys (Ctrl-C goes to the
    guest), 8-bit input; output processing stays on, so the guest's "\\n" starts a line."""
    import termios

    iflag, oflag, cflag, lflag, ispeed, ospeed, cc = attrs
    iflag &= ~(termios.IGNBRK | termios.BRKINT | termios.PARMRK | termios.ISTRIP | termios.INLCR
               | termios.IGNCR | termios.ICRNL | termios.IXON)
    oflag |= termios.OPOST
    lflag &= ~(termios.ECHO | termios.ECHONL | termios.ICANON | termios.IEXTEN | termios.ISIG)
    cflag = (cflag & ~(termios.CSIZE | termios.PARENB)) | termios.CS8
    cc = list(cc)
    cc[termios.VMIN], cc[termios.VTIME] = 1, 0
    return [iflag, oflag, cflag, lflag, ispeed, ospeed, cc]
