"""The machine state at a Multiboot kernel's entry, against QEMU's own.

A tiny Multiboot guest stores what it finds at its entry point (general registers, EFLAGS
through a push on the stack it was given, CR0, CR4, selectors, GDTR, IDTR) and exits. QEMU
runs it under gdb (``-s -S``): the registers at the entry breakpoint, the hidden segment
caches from ``monitor info registers`` and the guest's save area at its exit are the
reference; vmm must give the same in every mode that boots Multiboot kernels.
"""
from __future__ import annotations

import re
import shutil
import socket
import struct
import subprocess

import pytest

from tools.machines import qemu_binary
from vmm.build.asm import assemble
from vmm.build.elf import Segment, multiboot_header, write_elf32
from vmm.loader.image import load_image
from vmm.vm import VM, StopKind

QEMU = qemu_binary("i386")
GDB = shutil.which("gdb")
_skip = pytest.mark.skipif(QEMU is None or GDB is None, reason="needs qemu-system-i386 and gdb")


def needs_qemu(test):
    """A differential test against QEMU under gdb (``-m qemu``), skipped without them."""
    return pytest.mark.qemu(_skip(test))

BASE = 0x100000
RAM = 128 << 20
SAVE_WORDS = 16
ENTRY_MODES = ("native", "trap", "bt", "vtx", "vtx-ept")   # pv boots through its own protocol

GUEST = f"""
entry:
    mov dword ptr [save + 0], eax
    mov dword ptr [save + 4], ebx
    mov dword ptr [save + 8], ecx
    mov dword ptr [save + 12], esp
    pushfd
    pop eax
    mov dword ptr [save + 16], eax
    mov eax, cr0
    mov dword ptr [save + 20], eax
    mov eax, cr4
    mov dword ptr [save + 24], eax
    xor eax, eax
    mov eax, cs
    mov dword ptr [save + 28], eax
    mov eax, ds
    mov dword ptr [save + 32], eax
    mov eax, ss
    mov dword ptr [save + 36], eax
    .byte 0x0f, 0x01, 0x05
    .long save + 40
    .byte 0x0f, 0x01, 0x0d
    .long save + 48
done:
    mov al, 0
    out 0xf4, al
    hlt
.align 4
save:
    .space {4 * SAVE_WORDS}
"""


def _guest() -> tuple[bytes, dict[str, int]]:
    header = multiboot_header()
    code = assemble(GUEST, BASE + len(header))
    body = header + code.code
    return write_elf32([Segment(BASE, body)], BASE + len(header), code.symbols), code.symbols


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _qemu(tmp_path, elf: bytes, symbols: dict[str, int], at_entry: str = "info registers") -> str:
    """gdb's transcript: registers at the entry, QEMU's full state, the save area at ``done``."""
    kernel = tmp_path / "entry.elf"
    kernel.write_bytes(elf)
    port = _free_port()
    qemu = subprocess.Popen([QEMU, "-kernel", str(kernel), "-display", "none", "-nodefaults",
                             "-no-reboot", "-m", str(RAM >> 20), "-gdb", f"tcp:127.0.0.1:{port}", "-S"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        gdb = subprocess.run(
            [GDB, "-nx", "-batch", "-ex", "set architecture i386",
             "-ex", f"target remote 127.0.0.1:{port}",
             "-ex", f"break *{symbols['entry']:#x}", "-ex", f"break *{symbols['done']:#x}",
             "-ex", "continue", "-ex", at_entry, "-ex", "monitor info registers", "-ex", "continue",
             "-ex", f"x/{SAVE_WORDS}wx {symbols['save']:#x}", "-ex", "kill"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=60,
            stdin=subprocess.DEVNULL)
    finally:
        qemu.kill()
        qemu.wait()
    return gdb.stdout


def qemu_memory_at_entry(tmp_path, elf: bytes, entry: int, ranges: list[tuple[int, int]],
                         append: str | None = None) -> list[bytes]:
    """Guest memory ``[(address, length), ...]`` (lengths multiples of 4) at the entry of
    ``elf`` booted by ``qemu-system-i386 -kernel`` (``-append``), read with gdb."""
    kernel = tmp_path / "kernel.elf"
    kernel.write_bytes(elf)
    port = _free_port()
    extra = ["-append", append] if append is not None else []
    qemu = subprocess.Popen([QEMU, "-kernel", str(kernel), *extra, "-display", "none", "-nodefaults",
                             "-no-reboot", "-m", str(RAM >> 20), "-gdb", f"tcp:127.0.0.1:{port}", "-S"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    dumps = [a for addr, n in ranges for a in ("-ex", "echo @@\\n", "-ex", f"x/{n // 4}wx {addr:#x}")]
    try:
        gdb = subprocess.run([GDB, "-nx", "-batch", "-ex", "set architecture i386",
                              "-ex", f"target remote 127.0.0.1:{port}", "-ex", f"break *{entry:#x}",
                              "-ex", "continue", *dumps, "-ex", "kill"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=60,
                             stdin=subprocess.DEVNULL)
    finally:
        qemu.kill()
        qemu.wait()
    parts = gdb.stdout.split("@@\n")[1:]
    assert len(parts) == len(ranges), gdb.stdout
    out = []
    for part, (_addr, n) in zip(parts, ranges, strict=True):
        words = [int(w, 16) for line in part.splitlines() if ":" in line
                 for w in re.findall(r"0x([0-9a-f]{8})\b", line.split(":", 1)[1])]
        out.append(struct.pack(f"<{n // 4}I", *words[:n // 4]))
    return out


def _qemu_state(transcript: str) -> dict[str, object]:
    state: dict[str, object] = {}
    for name in ("EAX", "EBX", "ECX", "ESP", "EFL", "CR0", "CR4"):
        state[name.lower()] = int(re.search(rf"\b{name}=([0-9a-f]+)", transcript).group(1), 16)
    for seg in ("CS", "DS", "ES", "FS", "GS", "SS"):
        sel, base, limit, flags = re.search(rf"^{seg} +=([0-9a-f]+) ([0-9a-f]+) ([0-9a-f]+) ([0-9a-f]+)",
                                            transcript, re.M).groups()
        state[seg.lower()] = tuple(int(v, 16) for v in (sel, base, limit, flags))
    for table in ("GDT", "IDT"):
        base, limit = re.search(rf"^{table}= +([0-9a-f]+) ([0-9a-f]+)", transcript, re.M).groups()
        state[table.lower()] = (int(base, 16), int(limit, 16))
    words = re.findall(r"0x([0-9a-f]{8})\b", transcript.split("Breakpoint 2, ", 1)[1].split("\n", 1)[1])
    state["save"] = [int(w, 16) for w in words[-SAVE_WORDS:]]
    return state


def _cache(descriptor: int, selector: int) -> tuple[int, int, int, int]:
    """What the CPU loads into a segment's hidden part from its descriptor, in QEMU's
    ``info registers`` notation: selector, base, limit (scaled by G), flags word."""
    lo, hi = descriptor & 0xFFFFFFFF, descriptor >> 32
    base = (lo >> 16) | (hi & 0xFF) << 16 | (hi & 0xFF000000)
    limit = (lo & 0xFFFF) | (hi & 0xF0000)
    if hi & 1 << 23:
        limit = limit << 12 | 0xFFF
    return selector, base, limit, hi & 0x00FFFF00


def _vmm_entry(image, mode: str = "native") -> dict[str, object]:
    vm = VM(image, mode=mode, ram_size=RAM, serial_output=lambda _b: None, timeout=20)
    eng = vm.engine
    state: dict[str, object] = {name: eng.reg(name) for name in ("eax", "ebx", "ecx", "esp", "cr0", "cr4")}
    state["efl"] = eng.reg("eflags")
    _, gdt_base, gdt_limit = eng.table("gdtr")
    for seg in ("cs", "ds", "es", "fs", "gs", "ss"):
        sel = eng.reg(seg)
        raw = struct.unpack("<Q", eng.read_phys(gdt_base + (sel & ~7), 8))[0]
        state[seg] = _cache(raw, sel)
    state["gdt"] = (gdt_base, gdt_limit)
    state["idt"] = eng.table("idtr")[1:]
    return state


def _vmm_save(image, symbols, mode: str) -> list[int]:
    vm = VM(image, mode=mode, ram_size=RAM, serial_output=lambda _b: None, timeout=20)
    result = vm.run()
    assert result.kind is StopKind.EXIT and result.exit_status == 1, (mode, result.kind, result.message)
    return list(struct.unpack(f"<{SAVE_WORDS}I", vm.engine.read_phys(symbols["save"], 4 * SAVE_WORDS)))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    elf, symbols = _guest()
    transcript = _qemu(tmp_path_factory.mktemp("qemu"), elf, symbols)
    assert "Breakpoint 2, " in transcript, transcript
    return _qemu_state(transcript)


@needs_qemu
def test_entry_registers_and_caches_match_qemu(reference):
    elf, _ = _guest()
    ours = _vmm_entry(load_image(elf, ram_size=RAM))
    for key in ("eax", "ebx", "ecx", "esp", "efl", "cr0", "cr4", "cs", "ds", "es", "fs", "gs", "ss",
                "gdt", "idt"):
        assert ours[key] == reference[key], (key, ours[key], reference[key])


#: Save-area words a deprivileged guest sees as they really are, not as virtualized: PUSHF
#: (IF), MOV from CS/SS (RPL 1), SGDT/SIDT (the VMM's tables) run unprivileged in ``trap``
#: mode without trapping (Popek and Goldberg's sensitive instructions; tests/test_trap.py).
UNTRAPPED_WORDS = {4, 7, 9, 10, 11, 12, 13}


@needs_qemu
@pytest.mark.parametrize("mode", ENTRY_MODES)
def test_guest_sees_qemu_entry_state(reference, mode):
    """What the guest itself reads at its entry (a push included: the stack is usable)."""
    elf, symbols = _guest()
    ours = _vmm_save(load_image(elf, ram_size=RAM), symbols, mode)
    skip = UNTRAPPED_WORDS if mode == "trap" else set()
    assert [w for i, w in enumerate(ours) if i not in skip] == \
        [w for i, w in enumerate(reference["save"]) if i not in skip]


@needs_qemu
def test_boot_gdt_in_guest_memory_is_qemus(tmp_path):
    """The option ROM's GDT bytes, read from guest memory through GDTR, as QEMU has them."""
    elf, symbols = _guest()
    image = load_image(elf, ram_size=RAM)
    vm = VM(image, ram_size=RAM, serial_output=lambda _b: None, timeout=20)
    _, base, limit = vm.engine.table("gdtr")
    ours = vm.engine.read_phys(base, limit + 1)
    transcript = _qemu(tmp_path, elf, symbols, f"x/{(limit + 1) // 4}wx {base:#x}")
    at_entry = transcript.split("Breakpoint 1, ", 1)[1].split("CPU#0", 1)[0].split("\n", 1)[1]
    words = re.findall(r"0x([0-9a-f]{8})\b", at_entry)
    assert struct.pack(f"<{len(words)}I", *(int(w, 16) for w in words)) == ours
