"""The VGA text console: registers against QEMU's VGA, the text page against QEMU's screen.

Three guests of our own. ``REGISTERS`` reads every register a text-mode guest may touch
(CRTC, sequencer, graphics, attribute controller, DAC, misc output, input status) as
SeaBIOS leaves them, then writes each through its quirks (index masks, the CR0-CR7 lock,
the attribute flip-flop and the input-status read that resets it, the DAC's three-byte
entries, the monochrome ports in colour mode and the colour ports in mono mode) and
prints every answer: vmm must print what QEMU (``-vga std``) prints. ``DRAW`` clears the
text page, writes coloured text and CP437 glyphs at 0xB8000 and moves the cursor through
the CRTC (a byte at a time and with one 16-bit OUT, as QEMU splits it); it ends either
through isa-debug-exit or with ``cli; hlt``, after a marker on the serial port. QEMU's
screen is its ``pmemsave 0xb8000 4000`` (tools.machines.qemu_screen); vmm's is
``--screendump`` and the bytes of its page.
"""
from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import subprocess
import sys
import termios

import pytest

from conftest import DEVICE_GUEST_MODES, SHOW_MACRO, build_kernel, run_cli, run_kernel_in_qemu
from tools.machines import qemu_binary, qemu_command, qemu_screen, vmm_environment
from vmm.devices.board import Board
from vmm.devices.vga import Vga
from vmm.loader import load_image
from vmm.screen import CP437, PAGE_BYTES, Screen, page_text
from vmm.vm import VM, StopKind

RAM = 128 << 20
MARKER = b"vga: drawn\n"

REGISTERS = """%include "kernel.inc"
{show}
// inb: DX = port -> EAX the byte; outb: DX = port, AL = byte
%macro INB 1
    mov dx, %1
    in al, dx
    movzx eax, al
%endmacro
%macro OUTB 2
    mov dx, %1
    mov al, %2
    out dx, al
%endmacro
// dump_indexed: EDX = index port (data at EDX + 1), ECX = count; prints each register
dump_indexed:
    push ebx
    xor ebx, ebx
dump_indexed_loop:
    mov al, bl
    out dx, al
    inc edx
    in al, dx
    dec edx
    movzx eax, al
    call print_hex
    PRINT " "
    inc ebx
    cmp ebx, ecx
    jb dump_indexed_loop
    call print_nl
    pop ebx
    ret
// fill_indexed: EDX = index port, ECX = count, AH = value written to each register
fill_indexed:
    push ebx
    xor ebx, ebx
fill_indexed_loop:
    mov al, bl
    out dx, al
    inc edx
    mov al, ah
    out dx, al
    dec edx
    inc ebx
    cmp ebx, ecx
    jb fill_indexed_loop
    pop ebx
    ret
// dump_attributes: ECX = count; the attribute controller's registers through 0x3c1
dump_attributes:
    push ebx
    xor ebx, ebx
dump_attributes_loop:
    INB 0x3da
    call print_hex
    PRINT "/"
    mov dx, 0x3c0
    mov al, bl
    or al, 0x20
    out dx, al
    INB 0x3c1
    call print_hex
    PRINT " "
    inc ebx
    cmp ebx, ecx
    jb dump_attributes_loop
    call print_nl
    pop ebx
    ret
// dump_dac: ECX = bytes to read from DAC entry 0 on
dump_dac:
    OUTB 0x3c7, 0
dump_dac_loop:
    INB 0x3c9
    call print_hex
    PRINT " "
    dec ecx
    jnz dump_dac_loop
    call print_nl
    ret
kmain:
    // The indexes and states SeaBIOS leaves selected, before anything is written.
    INB 0x3d4
    SHOW "crtc index "
    INB 0x3c4
    SHOW "sequencer index "
    INB 0x3ce
    SHOW "graphics index "
    INB 0x3c0
    SHOW "attribute index (flip-flop as left) "
    INB 0x3c7
    SHOW "dac state "
    INB 0x3c8
    SHOW "dac write index "
    INB 0x3da
    SHOW "input status 1 "
    INB 0x3c0
    SHOW "attribute index (after 0x3da) "
    INB 0x3cc
    SHOW "misc output "
    INB 0x3c2
    SHOW "input status 0 "
    INB 0x3ca
    SHOW "feature control "
    INB 0x3c6
    SHOW "pel mask "
    INB 0x3c3
    SHOW "0x3c3 "
    INB 0x3cd
    SHOW "0x3cd "
    INB 0x3b4
    SHOW "mono crtc index (colour mode) "
    INB 0x3ba
    SHOW "mono input status (colour mode) "
    // SeaBIOS left its cursor after its banner: put it at 0, then dump mode 3.
    OUTB 0x3d4, 0x0e
    OUTB 0x3d5, 0
    OUTB 0x3d4, 0x0f
    OUTB 0x3d5, 0
    PRINT "crtc: "
    mov edx, 0x3d4
    mov ecx, 0x19
    call dump_indexed
    PRINT "sequencer: "
    mov edx, 0x3c4
    mov ecx, 8
    call dump_indexed
    PRINT "graphics: "
    mov edx, 0x3ce
    mov ecx, 16
    call dump_indexed
    PRINT "attributes: "
    mov ecx, 0x16
    call dump_attributes
    PRINT "dac: "
    mov ecx, 768
    call dump_dac
    // Writes: the masks of the sequencer and graphics registers, the index masks.
    mov edx, 0x3c4
    mov ecx, 8
    mov ah, 0xff
    call fill_indexed
    PRINT "sequencer all ones: "
    mov edx, 0x3c4
    mov ecx, 8
    call dump_indexed
    OUTB 0x3c4, 0xfa
    INB 0x3c4
    SHOW "sequencer index 0xfa reads "
    mov edx, 0x3ce
    mov ecx, 16
    mov ah, 0xff
    call fill_indexed
    PRINT "graphics all ones: "
    mov edx, 0x3ce
    mov ecx, 16
    call dump_indexed
    OUTB 0x3ce, 0xf3
    INB 0x3ce
    SHOW "graphics index 0xf3 reads "
    // The CRTC: every index stores a byte; CR11 bit 7 locks CR0-CR7 but CR7 bit 4.
    OUTB 0x3d4, 0xc3
    OUTB 0x3d5, 0x5a
    INB 0x3d5
    SHOW "crtc 0xc3 "
    INB 0x3d4
    SHOW "crtc index "
    OUTB 0x3d4, 0x11
    OUTB 0x3d5, 0x8e
    OUTB 0x3d4, 0x01
    OUTB 0x3d5, 0x33
    INB 0x3d5
    SHOW "locked crtc 1 "
    OUTB 0x3d4, 0x07
    OUTB 0x3d5, 0x00
    INB 0x3d5
    SHOW "locked crtc 7 "
    OUTB 0x3d4, 0x11
    OUTB 0x3d5, 0x0e
    OUTB 0x3d4, 0x01
    OUTB 0x3d5, 0x33
    INB 0x3d5
    SHOW "unlocked crtc 1 "
    // Start address and cursor, the second with one 16-bit OUT (index, then data).
    OUTB 0x3d4, 0x0c
    OUTB 0x3d5, 0x01
    OUTB 0x3d4, 0x0d
    OUTB 0x3d5, 0x40
    mov dx, 0x3d4
    mov ax, 0x120e
    out dx, ax
    mov ax, 0x340f
    out dx, ax
    mov edx, 0x3d4
    mov ecx, 0x10
    PRINT "crtc: "
    call dump_indexed
    // The attribute controller: index, data, index, data; 0x3da puts it back to index.
    INB 0x3da
    OUTB 0x3c0, 0x03
    OUTB 0x3c0, 0xff
    OUTB 0x3c0, 0x10
    OUTB 0x3c0, 0xff
    OUTB 0x3c0, 0x11
    OUTB 0x3c0, 0xff
    OUTB 0x3c0, 0x12
    OUTB 0x3c0, 0xff
    OUTB 0x3c0, 0x13
    OUTB 0x3c0, 0xff
    OUTB 0x3c0, 0x14
    OUTB 0x3c0, 0xff
    OUTB 0x3c0, 0x15
    OUTB 0x3c0, 0xff
    OUTB 0x3c0, 0x05
    INB 0x3c0
    SHOW "attribute flip-flop on data: "
    INB 0x3da
    INB 0x3c0
    SHOW "attribute index after 0x3da: "
    OUTB 0x3c0, 0xff
    INB 0x3c0
    SHOW "attribute index written 0xff: "
    PRINT "attributes: "
    mov ecx, 0x18
    call dump_attributes
    // The DAC: three bytes an entry, the indexes advance by themselves (not past 255:
    // QEMU's would run off its palette there).
    OUTB 0x3c8, 0xfc
    mov ecx, 9
    mov bl, 0x11
dac_write:
    OUTB 0x3c9, bl
    add bl, 0x07
    dec ecx
    jnz dac_write
    INB 0x3c8
    SHOW "dac write index "
    INB 0x3c7
    SHOW "dac state (written) "
    OUTB 0x3c7, 0xfc
    INB 0x3c7
    SHOW "dac state (read) "
    mov ecx, 12
    PRINT "dac from 0xfc: "
dac_read:
    INB 0x3c9
    call print_hex
    PRINT " "
    dec ecx
    jnz dac_read
    call print_nl
    INB 0x3c8
    SHOW "dac write index "
    // Feature control: written at 0x3da, read at 0x3ca; input status toggles per read.
    OUTB 0x3da, 0xff
    INB 0x3ca
    SHOW "feature control "
    INB 0x3da
    SHOW "input status 1 "
    INB 0x3da
    SHOW "input status 1 "
    // Monochrome: misc output bit 0 clear moves the CRTC to 0x3b4 and shuts 0x3d4.
    OUTB 0x3c2, 0xff
    INB 0x3cc
    SHOW "misc output written 0xff "
    OUTB 0x3c2, 0x66
    OUTB 0x3b4, 0x0a
    INB 0x3b4
    SHOW "mono crtc index "
    INB 0x3b5
    SHOW "mono crtc data "
    INB 0x3d4
    SHOW "colour crtc index (mono mode) "
    INB 0x3da
    SHOW "colour input status (mono mode) "
    INB 0x3ba
    SHOW "mono input status "
    OUTB 0x3d4, 0x0b
    OUTB 0x3c2, 0x67
    INB 0x3d4
    SHOW "colour crtc index "
    EXIT EXIT_OK
%include "kernel_bss.inc"
"""

DRAW = """%include "kernel.inc"
{show}
// vga_write: ESI = bytes, ECX = how many, EDI = first cell's address, AH = attribute
vga_write:
    mov al, byte ptr [esi]
    mov word ptr [edi], ax
    inc esi
    add edi, 2
    dec ecx
    jnz vga_write
    ret
kmain:
    mov edi, 0xb8000
    mov ecx, 2000
clear:
    mov word ptr [edi], 0x0720
    add edi, 2
    dec ecx
    jnz clear
    mov esi, hello
    mov ecx, 31
    mov edi, 0xb8000
    mov ah, 0x1f
    call vga_write
    mov esi, glyphs
    mov ecx, 12
    mov edi, 0xb8000 + 3*160 + 10*2
    mov ah, 0x4e
    call vga_write
    mov esi, edge
    mov ecx, 8
    mov edi, 0xb8000 + 24*160 + 72*2
    mov ah, 0x0a
    call vga_write
    // the cursor after the glyphs: row 3, column 22 = cell 262 = 0x106
    mov dx, 0x3d4
    mov al, 0x0e
    out dx, al
    mov dx, 0x3d5
    mov al, 0x01
    out dx, al
    mov dx, 0x3d4
    mov ax, 0x060f
    out dx, ax
    mov dx, 0x3d4
    mov al, 0x0e
    out dx, al
    mov dx, 0x3d5
    in al, dx
    movzx eax, al
    shl eax, 8
    mov ebx, eax
    mov dx, 0x3d4
    mov al, 0x0f
    out dx, al
    mov dx, 0x3d5
    in al, dx
    movzx eax, al
    or eax, ebx
    SHOW "cursor "
    PRINT "vga: drawn\\n"
    {ending}
hello:
    .ascii "Hello from the VGA text console"
glyphs:
    .byte 0x01, 0x03, 0x7f, 0xdb, 0xb0, 0xc9, 0xcd, 0xbb, 0xe0, 0xe1, 0x00, 0xff
edge:
    .ascii "last row"
%include "kernel_bss.inc"
"""
EXIT_ENDING = "EXIT EXIT_OK"
HALT_ENDING = """cli
    hlt
    jmp kmain"""

#: What the page says, as --screendump writes it (glyph 0x00 is a space, 0xff a no-break space).
DRAWN_TEXT = ("Hello from the VGA text console\n\n\n" + " " * 10 + "☺♥⌂█░╔═╗αß \u00a0\n" + "\n" * 20
              + " " * 72 + "last row\n")
DRAWN_CURSOR = (3, 22)


@pytest.fixture(scope="module")
def registers_image(tmp_path_factory):
    return build_kernel(tmp_path_factory.mktemp("vga"), "vga_registers", REGISTERS.format(show=SHOW_MACRO))


@pytest.fixture(scope="module")
def draw_images(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("vga")
    return {ending: build_kernel(tmp, f"vga_draw_{ending}", DRAW.format(show=SHOW_MACRO, ending=text))
            for ending, text in (("exit", EXIT_ENDING), ("halt", HALT_ENDING))}


def run_vm(image: bytes, mode: str, **vm_args):
    out = bytearray()
    vm = VM(load_image(image, ram_size=RAM), mode=mode, ram_size=RAM, serial_output=out.extend, timeout=30,
            **vm_args)
    return vm, vm.run(), bytes(out)


def qemu_with_vga(kernel: str) -> list[str]:
    return [*qemu_command(kernel), "-vga", "std"]


@pytest.fixture(scope="module")
def qemu_registers(registers_image, tmp_path_factory):
    out, status = run_kernel_in_qemu(registers_image, tmp_path_factory.mktemp("qemu"), qemu_with_vga)
    assert status == 1, out
    return out


@pytest.fixture(scope="module")
def qemu_drawn(draw_images, tmp_path_factory):
    if qemu_binary("i386") is None:
        pytest.skip("qemu-system-i386 is not on PATH")
    tmp = tmp_path_factory.mktemp("qemu")
    kernel = tmp / "draw.elf"
    kernel.write_bytes(draw_images["halt"])
    return qemu_screen(str(kernel), MARKER, workdir=tmp)


@pytest.mark.parametrize("mode", DEVICE_GUEST_MODES)
def test_registers_answer_as_qemus_vga(registers_image, qemu_registers, mode):
    _, result, out = run_vm(registers_image, mode)
    assert result.kind is StopKind.EXIT and result.status == 1, result.message
    assert b"crtc 0xc3 0x0000005a" in out and b"mono crtc index 0x0000000a" in out, out
    assert out == qemu_registers


def test_without_vga_the_ports_float(registers_image):
    _, result, out = run_vm(registers_image, "native", devices={"vga": False})
    assert result.status == 1
    assert b"misc output 0x000000ff" in out and b"crtc 0xc3 0x000000ff" in out


@pytest.mark.parametrize("mode", DEVICE_GUEST_MODES)
def test_drawn_page_and_cursor(draw_images, mode):
    vm, result, out = run_vm(draw_images["exit"], mode)
    assert result.kind is StopKind.EXIT and result.status == 1, result.message
    assert out == b"cursor 0x00000106\n" + MARKER
    screen = Screen.of(vm)
    assert screen.text() == DRAWN_TEXT
    assert screen.cursor() == DRAWN_CURSOR
    cells = screen.cells()
    assert cells[0:2] == b"H\x1f" and cells[3 * 160 + 20:3 * 160 + 22] == b"\x01\x4e"


@pytest.mark.parametrize("mode", DEVICE_GUEST_MODES)
def test_halted_guest_ends_and_its_screen_is_qemus(draw_images, qemu_drawn, mode, tmp_path):
    """``cli; hlt`` with nothing to wake it ends the vmm run; the page is QEMU's, byte for byte."""
    assert qemu_drawn.serial == b"cursor 0x00000106\n" + MARKER
    assert page_text(qemu_drawn.cells) == DRAWN_TEXT
    vm, result, out = run_vm(draw_images["halt"], mode)
    assert result.kind is StopKind.HALTED, result.message
    assert out == qemu_drawn.serial
    assert Screen.of(vm).cells() == qemu_drawn.cells


def test_screendump_through_the_cli(draw_images, qemu_drawn, tmp_path):
    image = tmp_path / "draw.elf"
    image.write_bytes(draw_images["halt"])
    dump = tmp_path / "screen.txt"
    proc = run_cli("run", str(image), "--mode", "vtx-ept", "--screendump", str(dump))
    assert proc.returncode == 1, proc.stderr
    assert b"halted with interrupts disabled" in proc.stderr
    assert dump.read_text(encoding="utf-8") == page_text(qemu_drawn.cells) == DRAWN_TEXT
    png = tmp_path / "screen.png"
    proc = run_cli("run", str(image), "--screendump", str(png), "--display", "none")
    assert proc.returncode == 1, proc.stderr
    from PIL import Image
    with Image.open(png) as picture:
        assert picture.size == (720, 400)
        assert picture.getpixel((1, 1)) == (0, 0, 170)            # row 0's blue background
        assert picture.getpixel((1, 24 * 16 + 1)) == (0, 0, 0)    # the last row's black


def test_screendump_when_the_budget_runs_out(draw_images, tmp_path):
    """Written whatever ended the run: here the instruction budget, halfway through clearing."""
    image = tmp_path / "draw.elf"
    image.write_bytes(draw_images["exit"])
    dump = tmp_path / "screen.txt"
    proc = run_cli("run", str(image), "--max-instructions", "3000", "--screendump", str(dump))
    assert b"instruction budget exhausted" in proc.stderr
    lines = dump.read_text(encoding="utf-8").split("\n")
    assert len(lines) == 26 and lines[-1] == "" and all(line == "" for line in lines)


def test_display_text_without_a_terminal_prints_the_last_screen(draw_images, tmp_path):
    image = tmp_path / "draw.elf"
    image.write_bytes(draw_images["exit"])
    proc = run_cli("run", str(image), "--display", "text")
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout == b"cursor 0x00000106\n" + MARKER + DRAWN_TEXT.encode()
    proc = run_cli("run", str(image))   # the default without a terminal: the serial console only
    assert proc.stdout == b"cursor 0x00000106\n" + MARKER


def test_screen_options_refuse_bad_input(draw_images, tmp_path):
    image = tmp_path / "draw.elf"
    image.write_bytes(draw_images["exit"])
    proc = run_cli("run", str(image), "--screendump", str(tmp_path / "missing" / "s.txt"))
    assert proc.returncode == 2 and proc.stderr.startswith(b"vmm: error: --screendump"), proc.stderr
    proc = run_cli("run", str(image), "--device", "vga=off", "--screendump", str(tmp_path / "s.txt"))
    assert proc.returncode == 2 and b"needs the VGA" in proc.stderr, proc.stderr
    proc = run_cli("run", str(image), "--display", "gtk")
    assert proc.returncode == 2 and b"'gtk' is not one of" in proc.stderr


def run_on_a_terminal(*args: str) -> bytes:
    """What ``vmm run ARGS`` writes to a 100x40 terminal (a pty on its standard output)."""
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 100, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", "vmm.cli", "run", *args], stdin=subprocess.DEVNULL,
                            stdout=terminal, stderr=subprocess.PIPE, env=vmm_environment())
    os.close(terminal)
    shown = b""
    while True:
        ready, _, _ = select.select([controller], [], [], 60)
        try:
            chunk = os.read(controller, 65536) if ready else b""
        except OSError:   # the pty's other end closed
            chunk = b""
        if not chunk:
            break
        shown += chunk
    os.close(controller)
    assert proc.wait(timeout=60) == 1, proc.stderr.read()
    return shown


def test_a_serial_guest_on_a_terminal_shows_no_screen():
    shown = run_on_a_terminal("hello")
    assert shown.startswith(b"Hello from the vmm 'hello' guest!\r\n") and b"\x1b[" not in shown


@pytest.mark.parametrize("display", [(), ("--display", "text")], ids=["default", "text"])
def test_live_display_on_a_terminal(draw_images, tmp_path, display):
    """On a terminal (a pty here) the default shows the screen once the guest draws (here when
    it stops: it draws faster than a refresh), --display text from the start: the top rows
    hold it, the serial console scrolls in the region below (the lines printed before the
    view started written again there), and the region is given back at the end."""
    image = tmp_path / "draw.elf"
    image.write_bytes(draw_images["exit"])
    shown = run_on_a_terminal(str(image), *display)
    assert b"\x1b[28;40r" in shown and shown.endswith(b"\x1b7\x1b[r\x1b8")
    assert b"Hello from the VGA text console" in shown and "☺♥⌂█░╔═╗αß".encode() in shown
    terminal = Terminal(40, 100)
    terminal.feed(shown.decode("utf-8"))
    lines = terminal.lines()
    assert lines[1] == "Hello from the VGA text console" and lines[4] == " " * 10 + "☺♥⌂█░╔═╗αß"
    assert lines[25] == " " * 72 + "last row" and lines[26] == "─" * 80
    assert "cursor 0x00000106" in lines[27:] and "vga: drawn" in lines[27:], lines


class Terminal:
    """Just enough of a VT100 to replay what vmm wrote: printing, CR/LF (scrolling inside the
    scroll region), CUP, DECSTBM, DECSC/DECRC, EL; colours are dropped."""

    def __init__(self, rows: int, columns: int):
        self.rows, self.columns = rows, columns
        self.screen = [[" "] * columns for _ in range(rows)]
        self.row = self.col = 0
        self.top, self.bottom = 0, rows - 1
        self.saved = (0, 0)

    def feed(self, text: str) -> None:
        import re
        for token in re.findall(r"\x1b\[[0-9;]*[A-Za-z]|\x1b[78]|.", text, flags=re.S):
            self._token(token)

    def _token(self, token: str) -> None:
        if token == "\x1b7":
            self.saved = (self.row, self.col)
        elif token == "\x1b8":
            self.row, self.col = self.saved
        elif token.startswith("\x1b["):
            args = [int(a) for a in token[2:-1].split(";") if a]
            if token.endswith("H"):
                self.row, self.col = (args or [1])[0] - 1, (args[1:] or [1])[0] - 1
            elif token.endswith("r"):
                self.top, self.bottom = (args[0] - 1, args[1] - 1) if args else (0, self.rows - 1)
                self.row = self.col = 0
            elif token.endswith("K"):
                self.screen[self.row][self.col:] = [" "] * (self.columns - self.col)
        elif token == "\r":
            self.col = 0
        elif token == "\n":
            if self.row == self.bottom:
                del self.screen[self.top]
                self.screen.insert(self.bottom, [" "] * self.columns)
            else:
                self.row += 1
        elif self.col < self.columns:
            self.screen[self.row][self.col] = token
            self.col += 1

    def lines(self) -> list[str]:
        return ["".join(line).rstrip() for line in self.screen]


def fake_screen(cells: bytes, **registers) -> Screen:
    vga = Vga()
    for index, value in registers.items():
        vga.cr[int(index[2:], 16)] = value
    memory = bytearray(0x8000)
    memory[:len(cells)] = cells

    def read(address: int, size: int) -> bytes:
        return bytes(memory[address - 0xB8000:address - 0xB8000 + size])
    return Screen(vga, read)


def test_start_address_scrolls_and_wraps_in_the_window():
    rows = b"".join(bytes([ord("a") + r, 0x07]) * 80 for r in range(26))
    screen = fake_screen(rows, cr0c=0x00, cr0d=80, cr0e=0x00, cr0f=80)
    assert screen.text().split("\n")[0] == "b" * 80 and screen.text().split("\n")[24] == "z" * 80
    assert screen.cursor() == (0, 0)
    wrapped = fake_screen(b"", cr0c=0x3f, cr0d=0xff)      # cell 0x3fff: the page wraps to 0xb8000
    assert len(wrapped.cells()) == PAGE_BYTES
    off = fake_screen(b"", cr0a=0x2d)                      # the cursor's disable bit
    assert off.cursor() is None


def test_every_character_byte_has_one_printable_character():
    assert len(CP437) == 256 and len(set(CP437[1:])) == 255
    assert all(c.isprintable() or c == "\u00a0" for c in CP437)
    assert CP437[0] == " " and CP437[0x41] == "A" and CP437[0xb0] == "░" and CP437[0x01] == "☺"


def test_vga_state_is_saved_and_restored():
    board = Board(serial_output=lambda data: None)
    for port, value in ((0x3D4, 0x0E), (0x3D5, 0x07), (0x3C8, 0x05), (0x3C9, 0x3F), (0x3C0, 0x01)):
        board.port_bus.write(port, 1, value)
    saved = board.save_state()
    other = Board(serial_output=lambda data: None)
    other.load_state(saved)
    assert other.vga.save_state() == board.vga.save_state()
    # The flip-flop SeaBIOS left on data: 0x01 went to palette entry 0, and 0x3c0 reads the index again.
    assert other.vga.cursor_location == 0x0700 and other.vga.ar[0] == 0x01
    assert other.port_bus.read(0x3C0, 1) == 0x20 and (other.vga.dac_write_index, other.vga.dac_sub_index) == (5, 1)
