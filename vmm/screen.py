"""The VGA text screen: the 80x25 page a guest wrote at 0xB8000, as text, a PNG or a live terminal view.

The page is read from guest RAM (``mode.read_guest``) when it is rendered, never on the
guest's stores, so drawing costs the guest nothing: a guest that only writes video memory
runs at full speed. The page starts at the CRTC start address (a cell index, wrapping in
the 32 KiB text window), the cursor is the CRTC cursor location; each cell is a character
byte and an attribute byte (foreground colour in bits 0-3, background in bits 4-6; the
blink bit 7 is shown as a plain background).

Characters are code page 437, the VGA's ROM font. As text they become Unicode: 0x20-0x7e
are ASCII; 0x01-0x1f and 0x7f are CP437's graphic glyphs (smileys, arrows, the house),
not control characters, so a dump never carries a control code; 0x80-0xff are CP437's
letters, box-drawing and symbols (0xff is a no-break space); 0x00, an empty cell, is a
space. A text dump is UTF-8, one line per row, trailing spaces removed.

The live view (:class:`LiveScreen`) is refreshed where the VMM has control anyway: on the
guest's port accesses (each is already an exit to Python, and a kernel that prints moves
the cursor or writes the serial port) and when the run stops, at most every
:data:`REFRESH_SECONDS`; nothing is added per instruction or per block. A guest that
writes video memory and nothing else for a long time is shown when it stops.
"""
from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import BinaryIO

COLUMNS, ROWS = 80, 25
CELL_BYTES = 2
PAGE_BYTES = COLUMNS * ROWS * CELL_BYTES          # 4000: what QEMU's ``pmemsave 0xb8000 4000`` saves
TEXT_BASE = 0xB8000
TEXT_WINDOW = 0x8000                              # the colour text window, 0xb8000-0xbffff
REFRESH_SECONDS = 0.05

#: CP437's glyphs for 0x01-0x1f (the ROM font draws them; they are not control codes here).
_LOW_GLYPHS = "☺☻♥♦♣♠•◘○◙♂♀♪♫☼►◄↕‼¶§▬↨↑↓→←∟↔▲▼"
CP437 = " " + _LOW_GLYPHS + bytes(range(0x20, 0x7F)).decode("ascii") + "⌂" + bytes(range(0x80, 0x100)).decode("cp437")
"""Unicode for each of the 256 character bytes."""

#: The 16 text colours of the standard palette (attribute palette entry -> DAC entry ->
#: 8-bit RGB), used where no board is at hand.
VGA_COLOURS = ((0, 0, 0), (0, 0, 170), (0, 170, 0), (0, 170, 170), (170, 0, 0), (170, 0, 170), (170, 85, 0),
               (170, 170, 170), (85, 85, 85), (85, 85, 255), (85, 255, 85), (85, 255, 255), (255, 85, 85),
               (255, 85, 255), (255, 255, 85), (255, 255, 255))
#: VGA colour index -> ANSI colour number (VGA counts blue first, ANSI red first).
_ANSI = (0, 4, 2, 6, 1, 5, 3, 7)


def page_text(cells: bytes) -> str:
    """``cells`` (character, attribute pairs, 80 per row) as text: one line per row, trailing
    spaces removed, each line ending in a newline."""
    rows = [cells[r * COLUMNS * CELL_BYTES:(r + 1) * COLUMNS * CELL_BYTES] for r in range(len(cells) // (COLUMNS * 2))]
    return "".join("".join(CP437[c] for c in row[::CELL_BYTES]).rstrip(" ") + "\n" for row in rows)


class Screen:
    """The text page of ``vga`` (a :class:`vmm.devices.vga.Vga`) in the memory ``read(gpa, size)`` reads."""

    def __init__(self, vga, read: Callable[[int, int], bytes]):
        self.vga, self.read = vga, read

    @classmethod
    def of(cls, vm) -> Screen:
        return cls(vm.board.vga, vm.mode.read_guest)

    def cells(self) -> bytes:
        """The 4000 bytes of the page the CRTC shows."""
        offset = self.vga.start_address * CELL_BYTES % TEXT_WINDOW
        first = self.read(TEXT_BASE + offset, min(PAGE_BYTES, TEXT_WINDOW - offset))
        return first + (self.read(TEXT_BASE, PAGE_BYTES - len(first)) if len(first) < PAGE_BYTES else b"")

    def cursor(self) -> tuple[int, int] | None:
        """(row, column) of the cursor on the page, or None when it is off the page or disabled."""
        cell = self.vga.cursor_location - self.vga.start_address
        if not self.vga.cursor_enabled or not 0 <= cell < COLUMNS * ROWS:
            return None
        return divmod(cell, COLUMNS)

    def text(self) -> str:
        return page_text(self.cells())

    def colour(self, index: int) -> tuple[int, int, int]:
        """8-bit RGB of text colour ``index``: the attribute palette entry, then the DAC's 6-bit entry."""
        dac = self.vga.ar[index & 0x0F] & 0x3F
        return tuple(v * 255 // 63 for v in self.vga.palette[dac * 3:dac * 3 + 3])  # type: ignore[return-value]

    def dump(self, path: str) -> None:
        """Write the page to ``path``: a PNG if the name ends in .png, UTF-8 text otherwise."""
        if path.lower().endswith(".png"):
            self.png().save(path)
            return
        with open(path, "w", encoding="utf-8") as f:
            f.write(self.text())

    def png(self, cell_width: int = 9, cell_height: int = 16):
        """The page drawn with its colours, 9x16 pixels a cell as on the VGA (Pillow's default font)."""
        from PIL import Image, ImageDraw, ImageFont

        try:
            font = ImageFont.load_default(size=cell_height - 2)
        except TypeError:   # a Pillow without FreeType: its bitmap font
            font = ImageFont.load_default()
        cells = self.cells()
        image = Image.new("RGB", (COLUMNS * cell_width, ROWS * cell_height))
        draw = ImageDraw.Draw(image)
        cursor = self.cursor()
        for i in range(COLUMNS * ROWS):
            row, col = divmod(i, COLUMNS)
            char, attr = cells[2 * i], cells[2 * i + 1]
            fg, bg = self.colour(attr & 0x0F), self.colour(attr >> 4 & 0x07)
            x, y = col * cell_width, row * cell_height
            draw.rectangle((x, y, x + cell_width - 1, y + cell_height - 1), fill=bg)
            if char not in (0x00, 0x20, 0xFF):
                draw.text((x, y), CP437[char], fill=fg, font=font)
            if cursor == (row, col):
                start, end = self.vga.cursor_scanlines
                draw.rectangle((x, y + min(start, cell_height - 1), x + cell_width - 1,
                                y + min(max(start, end), cell_height - 1)), fill=fg)
        return image

    def ansi_rows(self) -> list[str]:
        """The page as 25 terminal lines with ANSI colours, the cursor cell in reverse video."""
        cells, cursor = self.cells(), self.cursor()
        lines = []
        for row in range(ROWS):
            out, last = [], None
            for col in range(COLUMNS):
                char, attr = cells[(row * COLUMNS + col) * 2], cells[(row * COLUMNS + col) * 2 + 1]
                fg, bg = attr & 0x0F, attr >> 4 & 0x07
                style = (fg, bg, cursor == (row, col))
                if style != last:
                    code = f"{90 if fg & 8 else 30}{_ANSI[fg & 7]};4{_ANSI[bg]}" + (";7" if style[2] else "")
                    out.append(f"\x1b[0;{code}m")
                    last = style
                out.append(CP437[char] if char != 0xFF else " ")
            lines.append("".join(out) + "\x1b[0m")
        return lines


class LiveScreen:
    """The guest's screen drawn live at the top of a terminal, its serial output scrolling below.

    The terminal's scroll region (DECSTBM) keeps rows 1-27 for the screen (a title, 25
    rows, a rule) and lets the serial console scroll in the rows under it; each refresh
    saves the cursor, redraws the rows that changed and restores it, so serial output goes
    on where it was. When the view starts, what the terminal showed is scrolled into its
    history and the serial output so far (``transcript()``, the UART's) is written again
    in the region, so no line is lost under the screen. The region is reset when the run
    ends, and the last screen stays. ``always``: draw from the start (``--display text``);
    otherwise only once the guest has written something to the page (``--display`` left
    to its default).
    """

    TOP = ROWS + 2

    def __init__(self, screen: Screen, stream: BinaryIO, fd: int, always: bool,
                 transcript: Callable[[], bytes] = bytes):
        self.screen, self.stream, self.fd, self.transcript = screen, stream, fd, transcript
        self.active = False
        self.always = always
        self._boot_page = screen.cells()
        self._drawn: list[str] = []
        self._next = 0.0
        size = os.get_terminal_size(fd)
        self.fits = size.columns >= COLUMNS and size.lines >= self.TOP + 3
        self.lines = size.lines

    def _write(self, text: str) -> None:
        self.stream.write(text.encode("utf-8", "replace"))
        self.stream.flush()

    def refresh(self, *_ignored, force: bool = False) -> None:
        """Redraw if the page changed, at most every REFRESH_SECONDS unless ``force``."""
        now = time.perf_counter()
        if not force and now < self._next:
            return
        self._next = now + REFRESH_SECONDS
        if not self.active:
            if not self.fits or not (self.always or self.screen.cells() != self._boot_page):
                return
            self._start()
        rows = ["\x1b[0;1m vmm: VGA text screen (80x25) ".ljust(COLUMNS + 6, "─") + "\x1b[0m",
                *self.screen.ansi_rows(), "─" * COLUMNS]
        changed = [(i, row) for i, row in enumerate(rows) if i >= len(self._drawn) or self._drawn[i] != row]
        if changed:
            self._write("\x1b7" + "".join(f"\x1b[{i + 1};1H{row}\x1b[K" for i, row in changed) + "\x1b8")
            self._drawn = rows

    def _start(self) -> None:
        """Scroll what the terminal shows into its history, keep the top rows for the screen,
        and write the serial output's last lines again below them."""
        self.active = True
        self._write(f"\x1b[{self.lines};1H" + "\n" * self.lines + f"\x1b[{self.TOP + 1};{self.lines}r"
                    f"\x1b[{self.TOP + 1};1H")
        self.stream.write(b"\n".join(self.transcript().split(b"\n")[-(self.lines - self.TOP):]))
        self.stream.flush()

    def close(self) -> None:
        self.refresh(force=True)
        if self.active:   # the whole terminal scrolls again; the serial output goes on where it is
            self._write("\x1b7\x1b[r\x1b8")


def attach(vm, display: str | None, stream: BinaryIO | None = None) -> LiveScreen | None:
    """The live view the options ask for: ``display`` ``text`` or None (the default: shown
    once the guest writes to the screen) on a terminal; ``none`` or no terminal, none.
    Refreshed on the VM's port accesses and at its stop (see the module docstring)."""
    stream = stream or sys.stdout.buffer
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):   # a stream in memory: no terminal
        return None
    if display == "none" or not vm.board.devices.get("vga") or not os.isatty(fd):
        return None
    live = LiveScreen(Screen.of(vm), stream, fd, always=display == "text",
                      transcript=lambda: bytes(vm.board.uart.transcript))
    vm.bus.subscribe("port", live.refresh)
    vm.bus.subscribe("stop", lambda result: live.refresh(force=True))
    return live
