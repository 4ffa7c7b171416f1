"""A kernel written in C the way the tutorials write one (guests/c), built here with gcc and ld,
must leave on vmm's screen what it leaves on QEMU's.

The kernel (VGA text with a hardware cursor and scrolling, GDT, IDT, int3, the PICs
remapped and ten PIT ticks at 100 Hz, paging with a higher-half alias and a page fault that
maps what it touched, a first-fit heap) draws a deterministic screen, prints a marker on
COM1 and halts with interrupts off. QEMU's screen is ``pmemsave 0xb8000 4000`` after the
marker (tools.machines.qemu_screen); vmm's is ``vmm run --screendump`` through the CLI, in
each mode, and the bytes of the page (characters and attributes) in process.
"""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from conftest import DEVICE_GUEST_MODES, run_cli
from tools.machines import REPO, qemu_binary, qemu_screen
from vmm.loader import load_image
from vmm.screen import Screen, page_text
from vmm.vm import VM, StopKind

SOURCES = REPO / "guests" / "c"
#: The tutorials' flags: 32-bit, no hosted library or start files, no PIC, no stack
#: protector (nothing to call on a smashed stack); warnings are errors.
CFLAGS = ("-m32", "-ffreestanding", "-nostdlib", "-fno-pic", "-fno-stack-protector", "-O2", "-Wall", "-Wextra",
          "-Werror", "-fno-asynchronous-unwind-tables")
MARKER = b"c-kernel: done\n"
RAM = 128 << 20


def build_c_kernel(out_dir, defines: tuple[str, ...] = ()) -> bytes:
    """guests/c built into ``out_dir``: boot.S and kernel.c with gcc (``-D`` each of
    ``defines``), linked by ld with linker.ld."""
    for tool in ("gcc", "ld"):
        if shutil.which(tool) is None:
            if os.environ.get("CI"):
                pytest.fail(f"{tool} is not installed: .ci/run installs it (gcc, binutils)")
            pytest.skip(f"{tool} is not installed here; the C kernel cannot be built (CI installs it)")
    objects = []
    for source in ("boot.S", "kernel.c"):
        obj = out_dir / f"{source}.o"
        subprocess.run(["gcc", *CFLAGS, *(f"-D{d}" for d in defines), "-c", str(SOURCES / source), "-o", str(obj)], check=True,
                       capture_output=True, timeout=120)
        objects.append(str(obj))
    elf = out_dir / "kernel.elf"
    subprocess.run(["ld", "-m", "elf_i386", "-T", str(SOURCES / "linker.ld"), "-o", str(elf), *objects],
                   check=True, capture_output=True, timeout=120)
    return elf.read_bytes()


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    return built_kernel(tmp_path_factory, "c-kernel")


@pytest.fixture(scope="module")
def qemu(kernel, tmp_path_factory):
    return screen_in_qemu(kernel, tmp_path_factory)


def built_kernel(tmp_path_factory, name: str, defines: tuple[str, ...] = ()):
    """The kernel built in a fresh directory; a build error fails the test with gcc's words."""
    out = tmp_path_factory.mktemp(name)
    try:
        build_c_kernel(out, defines)
    except subprocess.CalledProcessError as err:
        pytest.fail(f"{' '.join(err.cmd)}:\n{err.stderr.decode()}")
    return out / "kernel.elf"


def screen_in_qemu(kernel, tmp_path_factory):
    if qemu_binary("i386") is None:
        pytest.skip("qemu-system-i386 is not on PATH")
    return qemu_screen(str(kernel), MARKER, workdir=tmp_path_factory.mktemp("qemu"))


def test_the_kernel_draws_what_it_teaches(qemu):
    """QEMU's screen itself: every step reported, ten ticks, the heap's reuse, the scroll."""
    text = page_text(qemu.cells)
    for line in ("       int3 twice: 2 breakpoints handled", "       ticks: 10 (the timer keeps running)",
                 "       page fault at 0x00c00010, error 0x00000002: mapped, read back 0x12345678",
                 "       <- written through 0xc00b8000", "       kfree(b); kmalloc(64) = heap+64 (b's block, split)",
                 "       all freed: 1 free block(s)", "scroll line 6 of 6", "kernel: halted"):
        assert f"\n{line}\n" in f"\n{text}", text
    assert "unexpected" not in text
    assert qemu.serial == MARKER


@pytest.mark.parametrize("mode", DEVICE_GUEST_MODES)
def test_screendump_is_qemus_screen(kernel, qemu, mode, tmp_path):
    dump = tmp_path / "screen.txt"
    proc = run_cli("run", str(kernel), "--mode", mode, "--screendump", str(dump))
    assert proc.stdout == qemu.serial, proc.stderr
    assert b"vmm: halted: guest halted with interrupts disabled" in proc.stderr
    assert dump.read_text(encoding="utf-8") == page_text(qemu.cells)


@pytest.mark.parametrize("mode", ["native", "vtx-ept"])
def test_page_bytes_and_cursor_are_qemus(kernel, qemu, mode):
    """Attributes too (the colours of the headings and the alias text), and the cursor."""
    out = bytearray()
    vm = VM(load_image(kernel.read_bytes(), ram_size=RAM), mode=mode, ram_size=RAM, serial_output=out.extend,
            timeout=60)
    result = vm.run()
    assert result.kind is StopKind.HALTED, result.message
    screen = Screen.of(vm)
    assert screen.cells() == qemu.cells
    last = page_text(qemu.cells).splitlines()[-1]
    assert screen.cursor() == (24, len(last))


def test_the_readme_shows_what_the_kernel_prints(kernel, tmp_path):
    """README's screendump example (made by hand: it needs gcc) is the kernel's real screen."""
    readme = (REPO / "README.md").read_text()
    block = readme.split("$ head -13 screen.txt\n", 1)[1].split("```", 1)[0]
    dump = tmp_path / "screen.txt"
    proc = run_cli("run", str(kernel), "--screendump", str(dump))
    assert proc.stdout == MARKER
    assert dump.read_text(encoding="utf-8").splitlines()[:13] == block.splitlines()


# -- the same kernel with its timer through the I/O APIC (-DTIMER_IOAPIC) ---------------------------

@pytest.fixture(scope="module")
def ioapic_kernel(tmp_path_factory):
    return built_kernel(tmp_path_factory, "c-kernel-ioapic", ("TIMER_IOAPIC",))


@pytest.fixture(scope="module")
def ioapic_qemu(ioapic_kernel, tmp_path_factory):
    return screen_in_qemu(ioapic_kernel, tmp_path_factory)


@pytest.mark.parametrize("mode", DEVICE_GUEST_MODES)
def test_the_timer_through_the_io_apic_is_qemus_screen(ioapic_kernel, ioapic_qemu, mode, tmp_path):
    """The 8259s masked, the PIT's IRQ0 on I/O APIC pin 2 to the local APIC: ten ticks all
    the same, and the same screen as QEMU's."""
    text = page_text(ioapic_qemu.cells)
    assert "       ticks: 10 (the timer keeps running)" in text.splitlines()
    assert "I/O APIC pin 2 -> vector 0x20" in text
    dump = tmp_path / "screen.txt"
    proc = run_cli("run", str(ioapic_kernel), "--mode", mode, "--screendump", str(dump))
    assert proc.stdout == ioapic_qemu.serial, proc.stderr
    assert dump.read_text(encoding="utf-8") == text
