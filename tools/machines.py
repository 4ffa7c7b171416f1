"""The two machines the tools compare, and how one run of either is started and timed.

QEMU is the reference. Its board for the built-in guests is the one the golden
transcripts were recorded on (``tests/test_qemu_guests.py`` uses :func:`qemu_command`);
an external test suite's images get the board such suites expect (:func:`testdev_command`).
vmm is started as ``python -m vmm.cli run`` from this checkout, so a tool measures the
code beside it, not whatever ``vmm`` happens to be installed.

Nothing here imports ``vmm``: a run is a separate process, which is what makes a hung
guest killable and a wall time comparable with QEMU's.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

#: The guest-visible exit port both boards share (isa-debug-exit: status ``(value << 1) | 1``).
DEBUG_EXIT_DEVICE = "isa-debug-exit,iobase=0xf4,iosize=0x4"

#: QEMU system emulators by guest width.
QEMU_BINARIES = {"i386": "qemu-system-i386", "x86_64": "qemu-system-x86_64"}

#: vmm's modes, in the order its documentation teaches them.
VMM_MODES = ("native", "trap", "bt", "pv", "vtx", "vtx-ept")

#: vmm prints ``vmm: <stop kind>: <message>`` on stderr when the guest did not exit by itself.
VMM_STOP_PREFIX = "vmm: "
VMM_TIMEOUT_KIND = "wall-clock budget exhausted"
PYTHON_TRACEBACK = "Traceback (most recent call last):"

#: Seconds a process may outlive its own timeout before it is killed from outside.
GRACE_SECONDS = 5.0

#: Built-in guests whose golden transcript is vmm's native mode's, not QEMU's: under QEMU they
#: must still boot and exit with the catalog's status, but their output is not compared.
STATUS_ONLY_GUESTS = {
    "exits": "prints the CPU's own CPUID answers",  # vendor leaves, max leaf, boot CR4 differ
}

ELF_MAGIC = b"\x7fELF"
ELF_CLASS_OFFSET = 4
ELFCLASS64 = 2


def qemu_binary(arch: str = "i386") -> str | None:
    """The path of ``qemu-system-<arch>``, or None when it is not installed."""
    return shutil.which(QEMU_BINARIES[arch])


def qemu_command(kernel: str, arch: str = "i386") -> list[str]:
    """The reference run of a built-in guest or any Multiboot image.

    ``-nodefaults`` drops the VGA card, NIC and default monitor/serial; the explicit
    ``-serial stdio`` still creates COM1 at 0x3f8 and sends it to our stdout.
    ``-no-reboot`` turns a triple fault into an exit instead of a reboot loop.
    """
    return [qemu_binary(arch) or QEMU_BINARIES[arch], "-kernel", kernel, "-serial", "stdio",
            "-device", DEBUG_EXIT_DEVICE,
            "-display", "none", "-no-reboot", "-nodefaults"]


def testdev_command(kernel: str, arch: str = "i386") -> list[str]:
    """The board an external unit-test suite's ``.flat`` images expect under QEMU TCG:
    its test devices (``pc-testdev``, ``pci-testdev``), the exit port, one CPU, serial on
    stdout."""
    return [qemu_binary(arch) or QEMU_BINARIES[arch], "-nodefaults", "-no-reboot",
            "-device", "pc-testdev", "-device", DEBUG_EXIT_DEVICE, "-device", "pci-testdev",
            "-display", "none", "-serial", "stdio", "-machine", "accel=tcg",
            "-kernel", kernel, "-smp", "1"]


def vmm_command(*args: str) -> list[str]:
    """``vmm ARGS...`` run from this checkout (see :func:`vmm_environment`)."""
    return [sys.executable, "-m", "vmm.cli", *args]


TESTDEV_DEVICES = ("--device", "pci-testdev")
"""The board options that make vmm's board :func:`testdev_command`'s (pc-testdev is always there)."""


def vmm_run_command(image: str, mode: str, timeout: float, testdev: bool = False) -> list[str]:
    """``vmm run IMAGE --mode MODE`` with vmm's own wall-clock limit (``testdev``: on the
    test-device board)."""
    return vmm_command("run", image, "--mode", mode, "--timeout", f"{timeout:g}",
                       *(TESTDEV_DEVICES if testdev else ()))


def vmm_environment() -> dict[str, str]:
    """The environment of a vmm child: this checkout first on the import path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return env


def is_elf64(path: str | Path) -> bool:
    """True for a 64-bit ELF file (QEMU boots it with ``qemu-system-x86_64``)."""
    with open(path, "rb") as f:
        head = f.read(ELF_CLASS_OFFSET + 1)
    return head[:len(ELF_MAGIC)] == ELF_MAGIC and head[ELF_CLASS_OFFSET] == ELFCLASS64


def choose_arch(image: str | Path, choice: str = "auto") -> str:
    """Which ``qemu-system-*`` boots ``image``: ``choice`` itself, or with ``auto`` x86_64
    for a 64-bit ELF and i386 otherwise (a Multiboot kernel that enters long mode by
    itself is an ELF32: name x86_64 for it). Raises ValueError when QEMU is missing."""
    arch = choice if choice != "auto" else ("x86_64" if is_elf64(image) else "i386")
    if qemu_binary(arch) is None:
        raise ValueError(f"qemu-system-{arch} is not on PATH")
    return arch


@dataclass(frozen=True)
class Run:
    """One finished (or killed) process: what it printed, how it ended, how long it took."""

    command: tuple[str, ...]
    stdout: bytes
    stderr: bytes
    status: int | None          # None when it was killed for running too long
    seconds: float              # whole-process wall time, start to reap

    @property
    def timed_out(self) -> bool:
        return self.status is None

    def vmm_stop(self) -> str | None:
        """vmm's reason for stopping a guest that did not exit by itself, if it printed one,
        or the exception that ended vmm itself (Python exits 1 then, as a passing guest does)."""
        lines = self.stderr.decode(errors="replace").splitlines()
        if PYTHON_TRACEBACK in lines:
            return f"vmm crashed: {next((line for line in reversed(lines) if line.strip()), '')}"
        for line in lines:
            if line.startswith(VMM_STOP_PREFIX) and not line.startswith(VMM_STOP_PREFIX + "error:"):
                return line[len(VMM_STOP_PREFIX):]
        return None

    @property
    def vmm_timed_out(self) -> bool:
        """The process was killed, or vmm stopped the guest at its own wall-clock limit."""
        stop = self.vmm_stop()
        return self.timed_out or (stop is not None and stop.startswith(VMM_TIMEOUT_KIND))


def run_process(command: list[str], *, timeout: float, env: dict[str, str] | None = None) -> Run:
    """Run ``command`` with no stdin; kill its whole process group after ``timeout`` s."""
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
        status: int | None = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        status = None
    return Run(tuple(command), out, err, status, time.perf_counter() - start)


def run_qemu(kernel: str, *, arch: str = "i386", timeout: float, testdev: bool = False) -> Run:
    """Boot ``kernel`` under QEMU on the reference board (or the test-device board)."""
    command = testdev_command(kernel, arch) if testdev else qemu_command(kernel, arch)
    return run_process(command, timeout=timeout)


def run_vmm(image: str, mode: str, *, timeout: float, testdev: bool = False) -> Run:
    """Boot ``image`` under ``vmm run --mode MODE``; vmm stops it at ``timeout`` s itself,
    and the process is killed if it outlives that by :data:`GRACE_SECONDS`."""
    return run_process(vmm_run_command(image, mode, timeout, testdev), timeout=timeout + GRACE_SECONDS,
                       env=vmm_environment())


def build_guest_image(name: str, output: str | Path, flavour: str = "native") -> None:
    """``vmm build NAME -o OUTPUT``; raises ValueError with vmm's message when it fails."""
    proc = subprocess.run(vmm_command("build", name, "-o", str(output), "--flavour", flavour),
                          check=False, capture_output=True, env=vmm_environment(), timeout=300)
    if proc.returncode != 0:
        message = proc.stderr.decode(errors="replace").strip() or f"vmm build exited {proc.returncode}"
        raise ValueError(message)


def parse_modes(text: str) -> list[str]:
    """``native,bt`` -> ["native", "bt"]; ``all`` -> every mode. Raises ValueError."""
    modes = list(VMM_MODES) if text == "all" else [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in modes if m not in VMM_MODES]
    if unknown or not modes:
        raise ValueError(f"unknown mode(s) {', '.join(unknown) or text!r}; choose from {', '.join(VMM_MODES)}")
    return modes


def modes_or_usage_error(tool: str, text: str) -> list[str] | None:
    """:func:`parse_modes`, or None after printing the one-line error a tool exits 2 with."""
    try:
        return parse_modes(text)
    except ValueError as err:
        print(f"{tool}: {err}", file=sys.stderr)
        return None


def format_table(header: list[str], rows: list[list[str]]) -> str:
    """A plain, aligned text table (first column left-aligned, like the rest)."""
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows, strict=True)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
             for line in [header, ["-" * w for w in widths], *rows]]
    return "\n".join(lines)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """The same table in GitHub Markdown (``|`` in cells escaped)."""
    def cells(line: list[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in line) + " |"
    return "\n".join([cells(header), "|" + "---|" * len(header), *(cells(r) for r in rows)])


#: QEMU's text page: 80x25 cells of character and attribute at 0xb8000.
VGA_TEXT_BASE, VGA_TEXT_BYTES = 0xB8000, 4000


@dataclass(frozen=True)
class QemuScreen:
    """What QEMU showed: the serial output up to the guest's marker and the text page's bytes."""

    serial: bytes
    cells: bytes


def qemu_screen(kernel: str, marker: bytes, *, workdir: str | Path, timeout: float = 60,
                arch: str = "i386") -> QemuScreen:
    """Boot ``kernel`` on the reference board with a VGA (``-vga std``, which ``-nodefaults``
    leaves out), wait for ``marker`` on its serial port (the guest prints it once it has
    finished drawing, then halts), save the text page with QMP's ``pmemsave`` (the
    monitor's ``pmemsave 0xb8000 4000 FILE``) and quit QEMU. Raises TimeoutError when the
    marker does not come and RuntimeError when QEMU ends first."""
    import json
    import select
    import socket
    import tempfile

    workdir = Path(workdir)
    dump = workdir / "screen.bin"
    # A socket's path must be short (108 bytes): its own folder under the system's temp.
    sockets = tempfile.TemporaryDirectory(prefix="vmm-qmp-")
    qmp_path = Path(sockets.name) / "qmp"
    command = [*qemu_command(kernel, arch), "-vga", "std", "-qmp", f"unix:{qmp_path},server=on,wait=off"]
    proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    serial = b""
    deadline = time.monotonic() + timeout
    try:
        assert proc.stdout is not None
        while marker not in serial:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {marker!r} on QEMU's serial port within {timeout:g} s: {serial!r}")
            ready, _, _ = select.select([proc.stdout], [], [], left)
            chunk = os.read(proc.stdout.fileno(), 4096) if ready else b""
            if ready and not chunk:
                raise RuntimeError(f"QEMU ended before {marker!r}: {serial!r} {proc.stderr.read()!r}")  # type: ignore[union-attr]
            serial += chunk
        with socket.socket(socket.AF_UNIX) as qmp:
            qmp.settimeout(max(1.0, deadline - time.monotonic()))
            qmp.connect(str(qmp_path))
            replies = qmp.makefile("rb")
            replies.readline()                                   # the greeting
            for request in ({"execute": "qmp_capabilities"},
                            {"execute": "pmemsave", "arguments": {"val": VGA_TEXT_BASE, "size": VGA_TEXT_BYTES,
                                                                  "filename": str(dump)}}):
                qmp.sendall(json.dumps(request).encode() + b"\n")
                while True:                                      # skip asynchronous events
                    reply = json.loads(replies.readline())
                    if "return" in reply or "error" in reply:
                        break
                if "error" in reply:
                    raise RuntimeError(f"QMP {request['execute']}: {reply['error']}")
            qmp.sendall(b'{"execute": "quit"}\n')
        proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        return QemuScreen(serial, dump.read_bytes())
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        sockets.cleanup()
