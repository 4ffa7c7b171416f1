"""The person at the keyboard: Ctrl-C stops any run (exit status 130, one line, outputs
finished), ``--serial-input -`` streams a pipe under the time budget, and a terminal is
the guest's console in raw mode (QEMU's -nographic keys). Each test runs the real ``vmm``."""
from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import termios
import time

import pytest

from conftest import assemble
from vmm.console import ESCAPE_HELP, EXIT_INTERRUPTED

FLAT = ("--kind", "flat", "--load-address", "0x100000")
#: What the issue allows between SIGINT and the end of the run.
STOP_BOUND = 0.5
#: Prints R, then runs forever with no exit at all (a free run inside emu_start).
SPIN = """
    mov dx, 0x3f8
    mov al, 0x52
    out dx, al
spin:
    jmp spin
"""
#: Echoes every byte the UART receives, polling LSR.DR.
ECHO = """
top:
    mov dx, 0x3fd
wait:
    in al, dx
    test al, 1
    jz wait
    mov dx, 0x3f8
    in al, dx
    out dx, al
    jmp top
"""


@pytest.fixture
def guest(tmp_path):
    def write(name: str, src: str) -> str:
        path = tmp_path / f"{name}.bin"
        path.write_bytes(assemble(src))
        return str(path)
    return write


def _vmm(*args: str, **popen) -> subprocess.Popen:
    popen.setdefault("stdout", subprocess.PIPE)
    popen.setdefault("stderr", subprocess.PIPE)
    popen.setdefault("stdin", subprocess.DEVNULL)
    return subprocess.Popen([sys.executable, "-m", "vmm.cli", *args], **popen)


def _read_until(fd: int, wanted: bytes, seconds: float = 30) -> bytes:
    """Bytes from ``fd`` until ``wanted`` shows (or the time is up: the caller's assert says so)."""
    got = b""
    deadline = time.monotonic() + seconds
    while wanted not in got and (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            break
        try:
            chunk = os.read(fd, 4096)
        except OSError:   # a pty's master reads EIO once the other side has gone
            break
        if not chunk:
            break
        got += chunk
    return got


def _interrupt(proc: subprocess.Popen) -> tuple[float, bytes]:
    """SIGINT ``proc``; how long it took to exit, and its standard error."""
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    return time.monotonic() - sent, proc.stderr.read()


def _one_interrupted_line(stderr: bytes, before: bytes = b"") -> None:
    err = stderr.decode(errors="replace")
    assert "Traceback" not in err and "Aborted" not in err, err
    assert err.startswith(before.decode()), err
    rest = err[len(before):]
    assert rest.count("\n") == 1 and rest.startswith("vmm: interrupted: SIGINT at EIP 0x"), err


# -- user 3: Ctrl-C ---------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["native", "vtx-ept", "trap", "vtx"])
def test_ctrl_c_stops_a_run_without_exits(guest, mode):
    proc = _vmm("run", guest("spin", SPIN), *FLAT, "--mode", mode, "--timeout", "0")
    assert proc.stdout.read(1) == b"R"   # the guest runs, now in its loop
    time.sleep(0.3)
    took, err = _interrupt(proc)
    assert proc.returncode == EXIT_INTERRUPTED == 130
    assert took < STOP_BOUND, f"{took:.3f} s"
    _one_interrupted_line(err)


@pytest.mark.parametrize("mode, extra", [("native", ()), ("vtx-ept", ("--exits-only",))])
def test_ctrl_c_leaves_a_trace_that_ends_in_its_final_record(guest, tmp_path, mode, extra):
    out = tmp_path / "trace.jsonl"
    proc = _vmm("trace", guest("spin", SPIN), *FLAT, "--mode", mode, "--timeout", "0", "--format", "jsonl",
                "-o", str(out), *extra)
    assert proc.stderr.read(1) == b"R"   # (trace puts the guest's console on standard error)
    time.sleep(0.3)
    took, err = _interrupt(proc)
    assert proc.returncode == 130 and took < STOP_BOUND, (proc.returncode, took)
    _one_interrupted_line(err)
    lines = out.read_text().splitlines()
    records = [json.loads(line) for line in lines]   # every line whole
    assert records[-1]["type"] == "stop" and records[-1]["kind"] == "interrupted", records[-1]
    assert sum(r["type"] == "stop" for r in records) == 1


def test_ctrl_c_during_fuzz_leaves_no_in_flight_file(tmp_path):
    save = tmp_path / "findings"
    proc = _vmm("fuzz", "--harness", "instructions", "--mode", "native", "--cases", "100000", "--save", str(save))
    inflight = save / "inflight.json"
    deadline = time.monotonic() + 60
    while not inflight.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert inflight.exists(), "the fuzzer never started a run"
    time.sleep(0.3)
    took, err = _interrupt(proc)
    assert proc.returncode == 130 and took < STOP_BOUND, (proc.returncode, took, err)
    text = err.decode()
    assert "Traceback" not in text and text.splitlines()[-1].startswith("vmm: interrupted"), text
    assert not inflight.exists()
    assert list(save.iterdir()) == []   # no half-written reproducer either


def test_vm_interrupt_from_another_thread_ends_the_run(guest):
    """The API under the CLI: VM.interrupt from any thread; run() publishes the stop, then raises."""
    import threading

    from conftest import FLAT_BASE, RAM
    from vmm.loader.image import load_image
    from vmm.vm import VM, StopKind, VmInterrupted

    for mode in ("native", "vtx-ept"):
        vm = VM(load_image(assemble(SPIN), ram_size=RAM, kind="flat", load_address=FLAT_BASE), mode=mode,
                ram_size=RAM, serial_output=lambda data: None)
        stops = []
        vm.bus.subscribe("stop", stops.append)
        threading.Timer(0.3, vm.interrupt).start()
        started = time.monotonic()
        with pytest.raises(VmInterrupted) as raised:
            vm.run()
        assert time.monotonic() - started < 0.3 + STOP_BOUND
        assert raised.value.result.kind is StopKind.INTERRUPTED
        assert [s.kind for s in stops] == [StopKind.INTERRUPTED]
        assert raised.value.result.eip == FLAT_BASE + len(assemble(SPIN)) - 2   # at its jmp


# -- user 6: --serial-input - streams ---------------------------------------------------

@pytest.mark.parametrize("mode", ["native", "vtx-ept"])
def test_serial_input_from_a_pipe_streams_and_the_timeout_applies(guest, mode):
    proc = _vmm("run", guest("echo", ECHO), *FLAT, "--mode", mode, "--serial-input", "-", "--timeout", "3",
                stdin=subprocess.PIPE)
    started = time.monotonic()
    try:
        proc.stdin.write(b"ping\n")
        proc.stdin.flush()
        echoed = _read_until(proc.stdout.fileno(), b"ping\n", seconds=20)
        assert echoed == b"ping\n"           # the guest had it while the pipe stayed open
        proc.stdin.write(b"pong")
        proc.stdin.flush()
        assert _read_until(proc.stdout.fileno(), b"pong", seconds=20) == b"pong"
        proc.wait(timeout=30)                # the pipe is still open: only the time budget ends it
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdin.close()
    elapsed = time.monotonic() - started
    err = proc.stderr.read().decode()
    assert "wall-clock budget exhausted" in err and "Traceback" not in err, err
    assert 3 <= elapsed < 20, elapsed


def test_serial_input_from_a_file_is_read_before_boot(guest, tmp_path):
    """A regular file is all there: the guest reads it the same way every run."""
    data = tmp_path / "in.txt"
    data.write_bytes(b"abc\x01xyz")
    proc = subprocess.run([sys.executable, "-m", "vmm.cli", "run", guest("echo", ECHO), *FLAT, "--serial-input",
                           str(data), "--max-instructions", "20000"], capture_output=True, timeout=60)
    assert proc.stdout == b"abc\x01xyz"   # no escape keys outside a terminal
    assert b"instruction budget" in proc.stderr


# -- user 7: the terminal as the console ------------------------------------------------

def _console(guest_path: str, mode: str):
    master, slave = os.openpty()
    before = termios.tcgetattr(slave)
    proc = _vmm("run", guest_path, *FLAT, "--mode", mode, "--timeout", "60",
                stdin=slave, stdout=slave, stderr=subprocess.PIPE)
    return proc, master, slave, before


def _wait_for_raw_mode(slave: int, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while termios.tcgetattr(slave)[3] & termios.ICANON:
        assert proc.poll() is None and time.monotonic() < deadline, "the terminal never went raw"
        time.sleep(0.02)


@pytest.mark.parametrize("mode", ["native", "vtx-ept"])
def test_console_is_raw_echoes_and_quits_with_ctrl_a_x(guest, mode):
    proc, master, slave, before = _console(guest("echo", ECHO), mode)
    try:
        _wait_for_raw_mode(slave, proc)       # (keys typed before would be line-edited)
        os.write(master, b"abc")              # no newline: only a raw terminal passes it on now
        got = _read_until(master, b"abc", seconds=20)
        assert got == b"abc"                  # once: the terminal does not echo, the guest does
        os.write(master, b"\x03")             # Ctrl-C is a key for the guest, not SIGINT
        assert _read_until(master, b"\x03", seconds=20) == b"\x03"
        os.write(master, b"\x01h")            # help
        shown = _read_until(master, b"to the guest\r\n", seconds=20)
        assert shown == ESCAPE_HELP.replace(b"\n", b"\r\n")   # raw input, cooked output (OPOST), as QEMU
        os.write(master, b"\x01\x01")         # a literal Ctrl-A reaches the guest
        assert _read_until(master, b"\x01", seconds=20) == b"\x01"
        sent = time.monotonic()
        os.write(master, b"\x01x")            # quit
        proc.wait(timeout=30)
        took = time.monotonic() - sent
        assert proc.returncode == 130 and took < STOP_BOUND, (proc.returncode, took)
        err = proc.stderr.read().decode()
        assert "Traceback" not in err and err.count("\n") == 1, err
        assert err.startswith("vmm: interrupted: quit from the console (Ctrl-A x)"), err
        assert termios.tcgetattr(slave) == before   # the terminal as it was
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
        os.close(slave)


def test_console_terminal_restored_when_the_guest_exits_and_on_sigterm(guest):
    proc, master, slave, before = _console(guest("hello", "mov dx, 0xf4\nmov eax, 0\nout dx, eax\n"), "native")
    try:
        proc.wait(timeout=60)
        assert proc.returncode == 1           # isa-debug-exit (0 << 1) | 1
        assert termios.tcgetattr(slave) == before
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
        os.close(slave)
    proc, master, slave, before = _console(guest("spin", SPIN), "native")
    try:
        assert _read_until(master, b"R", seconds=30).endswith(b"R")
        assert termios.tcgetattr(slave) != before   # raw while the guest runs
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        assert proc.returncode == 128 + signal.SIGTERM
        assert termios.tcgetattr(slave) == before
        assert b"Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
        os.close(slave)


def test_console_keys_as_qemu_reads_them():
    """The escape state machine alone (QEMU's mux: unknown keys after C-a are dropped)."""
    from vmm.console import Console

    shown, quits = [], []
    console = Console(-1, shown.append, quits.append)
    assert console._keys(b"ab\x01\x01c") == b"ab\x01c"   # (Ctrl-A x starts a thread that calls quit: not here)
    assert console._keys(b"\x01") == b"" and console._keys(b"h") == b"" and shown == [ESCAPE_HELP]
    assert console._keys(b"\x01zq") == b"q"


def test_run_help_names_the_console_and_status_130():
    proc = subprocess.run([sys.executable, "-m", "vmm.cli", "run", "--help"], capture_output=True, timeout=60)
    text = " ".join(proc.stdout.decode().split())
    assert "Ctrl-A x" in text and "130" in text


def test_the_readme_echo_guest_is_this_one():
    """The README's console example builds its guest with printf: the same bytes as ECHO."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("## Typing to a guest", 1)[1].split("\n## ", 1)[0]
    escaped = re.search(r"printf '([^']*)' > echo.bin", section).group(1)
    assert bytes(int(h, 16) for h in re.findall(r"\\x([0-9a-f]{2})", escaped)) == assemble(ECHO)
    assert "Ctrl-A x" in section and "130" in readme.split("## Exit statuses", 1)[1]


def test_no_console_when_the_output_is_captured(guest):
    """A terminal on standard input only (a script or a test capturing the output) stays cooked."""
    master, slave = os.openpty()
    before = termios.tcgetattr(slave)
    proc = _vmm("run", guest("spin", SPIN), *FLAT, "--timeout", "60", stdin=slave)
    try:
        assert proc.stdout.read(1) == b"R"
        time.sleep(0.2)
        assert termios.tcgetattr(slave) == before
        _took, err = _interrupt(proc)
        assert proc.returncode == 130
        _one_interrupted_line(err)
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
        os.close(slave)


ECHO_MULTIBOOT = """
%include "kernel.inc"
kmain:
    PRINT "echo\\n"
echo_wait:
    mov dx, 0x3fd
    in al, dx
    test al, 1
    jz echo_wait
    mov dx, 0x3f8
    in al, dx
    out dx, al
    jmp echo_wait
%include "kernel_bss.inc"
"""
QEMU = "qemu-system-i386"


def _console_session(cmd: list[str], cwd) -> tuple[bytes, int, bool]:
    """Type the same keys to ``cmd`` on a pty: what the guest echoed, the status, and
    whether the terminal came back as it was."""
    master, slave = os.openpty()
    before = termios.tcgetattr(slave)
    proc = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=subprocess.PIPE, cwd=cwd)
    try:
        assert b"echo\r\n" in _read_until(master, b"echo\r\n", seconds=60)
        _wait_for_raw_mode(slave, proc)
        echoed = b""
        for keys, guest_gets in ((b"abc", b"abc"), (b"\x01\x01", b"\x01"), (b"x\x03", b"x\x03")):
            os.write(master, keys)
            echoed += _read_until(master, guest_gets, seconds=20)
        os.write(master, b"\x01x")
        proc.wait(timeout=30)
        return echoed, proc.returncode, termios.tcgetattr(slave) == before
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
        os.close(slave)


@pytest.mark.skipif(shutil.which(QEMU) is None, reason="qemu-system-i386 is not on PATH")
def test_console_keys_match_qemu_nographic(tmp_path):
    """The same Multiboot echo guest, the same keys, under QEMU -nographic and vmm run: the
    guest gets the same bytes (raw, Ctrl-C included, Ctrl-A Ctrl-A as one Ctrl-A), Ctrl-A x
    ends both, both give the terminal back. (QEMU's status for Ctrl-A x is 0; vmm's is 130.)"""
    from vmm.build.guests import build_guest

    source = tmp_path / "echo.s"
    source.write_text(ECHO_MULTIBOOT)
    elf = build_guest(str(source), use_cache=False).write_elf(tmp_path / "echo.elf")
    qemu = _console_session([QEMU, "-kernel", str(elf), "-nographic", "-no-reboot", "-nodefaults", "-display",
                             "none", "-serial", "mon:stdio", "-device", "isa-debug-exit,iobase=0xf4,iosize=0x4"],
                            tmp_path)
    for mode in ("native", "vtx"):
        ours = _console_session([sys.executable, "-m", "vmm.cli", "run", str(elf), "--mode", mode, "--timeout",
                                 "0"], tmp_path)
        assert ours[0] == qemu[0] == b"abc\x01x\x03"
        assert qemu[1:] == (0, True) and ours[1:] == (130, True)


def test_a_sigint_inside_a_gc_callback_is_raised_again_after_it():
    # hypothesis (vmm fuzz) installs a gc callback; a KeyboardInterrupt raised inside one is
    # printed as "Exception ignored" and lost, so the handler defers it to after the callback.
    import gc
    import sys

    from vmm import console

    seen = []

    def callback(phase, info):
        if phase == "start":
            seen.append(console._in_gc_callback(sys._getframe()))
    gc.callbacks.append(callback)
    try:
        gc.collect()
    finally:
        gc.callbacks.remove(callback)
    assert seen and all(seen)
    assert not console._in_gc_callback(sys._getframe())
