"""The VGA registers a text-mode guest touches, as QEMU's VGA (``hw/display/vga.c``) answers them.

The text buffer itself is not here: it is guest RAM at 0xb8000 (the board maps all RAM from
0, the VGA window included), so a guest's stores land in memory at full speed, with no
callback; :mod:`vmm.screen` reads the page from guest memory when it renders. This module
holds what a guest reaches through ports, each as ``vga_ioport_read/write`` handle it:

* CRTC index/data at 0x3d4/0x3d5: cursor start/end (0x0a/0x0b), start address
  (0x0c/0x0d), cursor location (0x0e/0x0f) and the rest of the 256 registers, which store
  what is written. CR0-CR7 are write-protected while CR11 bit 7 is set (bit 4 of CR7 stays
  writable).
* 0x3b4/0x3b5 and 0x3ba, the monochrome aliases, are decoded as QEMU decodes them: only
  while the miscellaneous output register's I/O-address bit (bit 0) is clear; in the colour
  mode a guest finds here they read 0xff and drop writes, and the 0x3dx ports do the same
  while the bit is clear.
* Miscellaneous output: written at 0x3c2, read at 0x3cc (bit 4 cannot be set).
* Input status 1 at 0x3da: each read toggles the vertical-retrace and display-enable bits
  (QEMU's "dumb" retrace), so a loop waiting for a retrace edge ends, and resets the
  attribute controller's flip-flop. Input status 0 (0x3c2 read) and the feature control
  register (0x3ca read, 0x3da write) as QEMU keeps them.
* Attribute controller at 0x3c0 (index, then data, alternating) and 0x3c1 (data read);
  sequencer 0x3c4/0x3c5 and graphics controller 0x3ce/0x3cf with QEMU's masks of the bits
  that exist; the DAC at 0x3c7 (read index, and the DAC state on a read), 0x3c8 (write
  index) and 0x3c9 (three bytes per entry, read or written in turn). The DAC indexes wrap
  from 255 to 0 (QEMU's are wider and run past its 256-entry palette there, into other
  state: no guest can rely on that). The other ports of 0x3c0-0x3cf read 0 and ignore writes (QEMU's default).

The reset state is what SeaBIOS's VGA BIOS leaves on QEMU's ``pc`` with ``-vga std`` when it
boots a ``-kernel`` guest: mode 3 (80x25 colour text), its register tables, the 64-entry
EGA palette in the DAC. One difference: SeaBIOS has printed its banner and left the cursor
at row 2; this board has no BIOS, so the screen is empty and the cursor at 0.
"""
from __future__ import annotations

from dataclasses import dataclass

# Ports (Linux's and QEMU's VGA_* names).
VGA_CRT_IM, VGA_CRT_DM = 0x3B4, 0x3B5      # CRTC index/data, monochrome
VGA_IS1_RM = 0x3BA                          # input status 1, monochrome
VGA_ATT_W, VGA_ATT_R = 0x3C0, 0x3C1         # attribute controller index/data write, data read
VGA_MIS_W = 0x3C2                           # misc output write; input status 0 read
VGA_SEQ_I, VGA_SEQ_D = 0x3C4, 0x3C5
VGA_PEL_IR, VGA_PEL_IW, VGA_PEL_D = 0x3C7, 0x3C8, 0x3C9
VGA_FTC_R = 0x3CA                           # feature control read
VGA_MIS_R = 0x3CC                           # misc output read
VGA_GFX_I, VGA_GFX_D = 0x3CE, 0x3CF
VGA_CRT_IC, VGA_CRT_DC = 0x3D4, 0x3D5       # CRTC index/data, colour
VGA_IS1_RC = 0x3DA                          # input status 1, colour

#: The port ranges the board registers, as QEMU's ``vga_portio_list``.
VGA_PORT_RANGES = ((VGA_CRT_IM, VGA_CRT_DM), (VGA_IS1_RM, VGA_IS1_RM), (VGA_ATT_W, VGA_GFX_D),
                   (VGA_CRT_IC, VGA_CRT_DC), (VGA_IS1_RC, VGA_IS1_RC))

VGA_MIS_COLOR = 0x01                        # misc output bit 0: I/O at 0x3dx (colour)
ST01_DISP_ENABLE, ST01_V_RETRACE = 0x01, 0x08

# CRTC registers.
CRTC_OVERFLOW = 0x07
CRTC_CURSOR_START, CRTC_CURSOR_END = 0x0A, 0x0B
CRTC_START_HI, CRTC_START_LO = 0x0C, 0x0D
CRTC_CURSOR_HI, CRTC_CURSOR_LO = 0x0E, 0x0F
CRTC_V_SYNC_END = 0x11
CR11_LOCK_CR0_CR7 = 0x80
CURSOR_DISABLE = 0x20                       # cursor start bit 5

# Attribute controller registers.
ATC_PALETTEF, ATC_MODE, ATC_OVERSCAN, ATC_PLANE_ENABLE, ATC_PEL, ATC_COLOR_PAGE = 0x0F, 0x10, 0x11, 0x12, 0x13, 0x14
ATT_REGISTERS = 0x15                        # VGA_ATT_C: indexes at or above read 0

#: Bits that exist, by register (QEMU's ``sr_mask`` and ``gr_mask``).
SR_MASK = (0x03, 0x3D, 0x0F, 0x3F, 0x0E, 0x00, 0x00, 0xFF)
GR_MASK = (0x0F, 0x0F, 0x0F, 0x1F, 0x03, 0x7B, 0x0F, 0x0F, 0xFF) + (0x00,) * 7

# Mode 3 as SeaBIOS's stdvga_set_mode programs it (vgasrc/stdvgamodes.c: sequ_03, crtc_03,
# actl_01, grdc_01, misc 0x67, palette2), and the indexes it leaves selected.
MODE3_MISC = 0x67
MODE3_SEQ = (0x03, 0x00, 0x03, 0x00, 0x02, 0x00, 0x00, 0x00)
MODE3_CRTC = (0x5F, 0x4F, 0x50, 0x82, 0x55, 0x81, 0xBF, 0x1F, 0x00, 0x4F, 0x0D, 0x0E, 0x00, 0x00, 0x00, 0x00,
              0x9C, 0x8E, 0x8F, 0x28, 0x1F, 0x96, 0xB9, 0xA3, 0xFF)
MODE3_ATT = (0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x14, 0x07, 0x38, 0x39, 0x3A, 0x3B, 0x3C, 0x3D, 0x3E, 0x3F,
             0x0C, 0x00, 0x0F, 0x08, 0x00)
MODE3_GFX = (0x00, 0x00, 0x00, 0x00, 0x00, 0x10, 0x0E, 0x0F, 0xFF) + (0x00,) * 7
RESET_CRTC_INDEX, RESET_GFX_INDEX, RESET_ATT_INDEX = 0x0F, 0x05, 0x20
DAC_ENTRIES = 256
EGA_COLOURS = 64


def ega_palette() -> bytes:
    """The DAC's 64 EGA colours (6-bit RGB), entry bits rgbRGB: a primary bit adds 0x2a,
    a secondary bit 0x15 (SeaBIOS's ``palette2``); the other 192 entries are black."""
    out = bytearray()
    for i in range(EGA_COLOURS):
        for primary, secondary in ((2, 5), (1, 4), (0, 3)):
            out.append(0x2A * (i >> primary & 1) + 0x15 * (i >> secondary & 1))
    return bytes(out).ljust(DAC_ENTRIES * 3, b"\0")


@dataclass(frozen=True)
class VgaState:
    msr: int
    st00: int
    st01: int
    fcr: int
    cr_index: int
    cr: bytes
    sr_index: int
    sr: bytes
    gr_index: int
    gr: bytes
    ar_index: int
    ar_flip_flop: int
    ar: bytes
    dac_state: int
    dac_read_index: int
    dac_write_index: int
    dac_sub_index: int
    dac_cache: bytes
    palette: bytes


class Vga:
    """The registers of QEMU's VGA (one byte per port; wider accesses are split by the bus)."""

    io_max_size = 1

    def __init__(self) -> None:
        self.msr = MODE3_MISC
        self.st00 = self.st01 = self.fcr = 0
        self.cr_index = RESET_CRTC_INDEX
        self.cr = bytearray(256)
        self.cr[:len(MODE3_CRTC)] = bytes(MODE3_CRTC)
        self.sr_index, self.sr = 0, bytearray(MODE3_SEQ)
        self.gr_index, self.gr = RESET_GFX_INDEX, bytearray(MODE3_GFX)
        self.ar_index, self.ar_flip_flop, self.ar = RESET_ATT_INDEX, 1, bytearray(MODE3_ATT)
        self.dac_state = self.dac_read_index = self.dac_write_index = self.dac_sub_index = 0
        self.dac_cache = bytearray(3)
        self.palette = bytearray(ega_palette())

    # -- what the screen shows ---------------------------------------------------------
    @property
    def start_address(self) -> int:
        """The character cell the screen's first row starts at (CRTC 0x0c:0x0d)."""
        return self.cr[CRTC_START_HI] << 8 | self.cr[CRTC_START_LO]

    @property
    def cursor_location(self) -> int:
        """The character cell the cursor is on (CRTC 0x0e:0x0f), counted from the buffer's start."""
        return self.cr[CRTC_CURSOR_HI] << 8 | self.cr[CRTC_CURSOR_LO]

    @property
    def cursor_enabled(self) -> bool:
        """False while the cursor start register's disable bit is set."""
        return not self.cr[CRTC_CURSOR_START] & CURSOR_DISABLE

    @property
    def cursor_scanlines(self) -> tuple[int, int]:
        """The cursor's first and last scan line in the character cell."""
        return self.cr[CRTC_CURSOR_START] & 0x1F, self.cr[CRTC_CURSOR_END] & 0x1F

    # -- ports --------------------------------------------------------------------------
    def _invalid(self, port: int) -> bool:
        """QEMU's ``vga_ioport_invalid``: the mono ports in colour mode and the reverse."""
        if self.msr & VGA_MIS_COLOR:
            return 0x3B0 <= port <= 0x3BF
        return 0x3D0 <= port <= 0x3DF

    def io_read(self, port: int, size: int) -> int:
        if self._invalid(port):
            return 0xFF
        if port == VGA_ATT_W:
            return self.ar_index if self.ar_flip_flop == 0 else 0
        if port == VGA_ATT_R:
            index = self.ar_index & 0x1F
            return self.ar[index] if index < ATT_REGISTERS else 0
        if port == VGA_PEL_D:
            value = self.palette[self.dac_read_index * 3 + self.dac_sub_index]
            self.dac_sub_index += 1
            if self.dac_sub_index == 3:
                self.dac_sub_index = 0
                self.dac_read_index = (self.dac_read_index + 1) % DAC_ENTRIES
            return value
        if port in (VGA_IS1_RM, VGA_IS1_RC):
            self.st01 ^= ST01_V_RETRACE | ST01_DISP_ENABLE   # just toggle, to end polling loops
            self.ar_flip_flop = 0
            return self.st01
        simple = {VGA_MIS_W: self.st00, VGA_SEQ_I: self.sr_index, VGA_SEQ_D: self.sr[self.sr_index],
                  VGA_PEL_IR: self.dac_state, VGA_PEL_IW: self.dac_write_index, VGA_FTC_R: self.fcr,
                  VGA_MIS_R: self.msr, VGA_GFX_I: self.gr_index, VGA_GFX_D: self.gr[self.gr_index],
                  VGA_CRT_IM: self.cr_index, VGA_CRT_IC: self.cr_index,
                  VGA_CRT_DM: self.cr[self.cr_index], VGA_CRT_DC: self.cr[self.cr_index]}
        return simple.get(port, 0)

    def io_write(self, port: int, size: int, value: int) -> None:
        value &= 0xFF
        if self._invalid(port):
            return
        if port == VGA_ATT_W:
            self._attribute_write(value)
        elif port == VGA_MIS_W:
            self.msr = value & ~0x10
        elif port == VGA_SEQ_I:
            self.sr_index = value & 7
        elif port == VGA_SEQ_D:
            self.sr[self.sr_index] = value & SR_MASK[self.sr_index]
        elif port == VGA_PEL_IR:
            self.dac_read_index, self.dac_sub_index, self.dac_state = value, 0, 3
        elif port == VGA_PEL_IW:
            self.dac_write_index, self.dac_sub_index, self.dac_state = value, 0, 0
        elif port == VGA_PEL_D:
            self.dac_cache[self.dac_sub_index] = value
            self.dac_sub_index += 1
            if self.dac_sub_index == 3:
                at = self.dac_write_index * 3
                self.palette[at:at + 3] = self.dac_cache
                self.dac_sub_index = 0
                self.dac_write_index = (self.dac_write_index + 1) % DAC_ENTRIES
        elif port == VGA_GFX_I:
            self.gr_index = value & 0x0F
        elif port == VGA_GFX_D:
            self.gr[self.gr_index] = value & GR_MASK[self.gr_index]
        elif port in (VGA_CRT_IM, VGA_CRT_IC):
            self.cr_index = value
        elif port in (VGA_CRT_DM, VGA_CRT_DC):
            self._crtc_write(value)
        elif port in (VGA_IS1_RM, VGA_IS1_RC):
            self.fcr = value & 0x10

    def _attribute_write(self, value: int) -> None:
        """0x3c0 alternates: an index (with the palette-address-source bit), then its data."""
        if self.ar_flip_flop == 0:
            self.ar_index = value & 0x3F
        else:
            index = self.ar_index & 0x1F
            if index <= ATC_PALETTEF:
                self.ar[index] = value & 0x3F
            elif index == ATC_MODE:
                self.ar[index] = value & ~0x10
            elif index == ATC_OVERSCAN:
                self.ar[index] = value
            elif index == ATC_PLANE_ENABLE:
                self.ar[index] = value & ~0xC0
            elif index in (ATC_PEL, ATC_COLOR_PAGE):
                self.ar[index] = value & ~0xF0
        self.ar_flip_flop ^= 1

    def _crtc_write(self, value: int) -> None:
        index = self.cr_index
        if self.cr[CRTC_V_SYNC_END] & CR11_LOCK_CR0_CR7 and index <= CRTC_OVERFLOW:
            if index == CRTC_OVERFLOW:   # bit 4 of CR7 is always writable
                self.cr[index] = (self.cr[index] & ~0x10) | (value & 0x10)
            return
        self.cr[index] = value

    # -- saved state --------------------------------------------------------------------
    def save_state(self) -> VgaState:
        return VgaState(self.msr, self.st00, self.st01, self.fcr, self.cr_index, bytes(self.cr),
                        self.sr_index, bytes(self.sr), self.gr_index, bytes(self.gr), self.ar_index,
                        self.ar_flip_flop, bytes(self.ar), self.dac_state, self.dac_read_index,
                        self.dac_write_index, self.dac_sub_index, bytes(self.dac_cache), bytes(self.palette))

    def load_state(self, state: VgaState) -> None:
        self.msr, self.st00, self.st01, self.fcr = state.msr, state.st00, state.st01, state.fcr
        self.cr_index, self.cr = state.cr_index, bytearray(state.cr)
        self.sr_index, self.sr = state.sr_index, bytearray(state.sr)
        self.gr_index, self.gr = state.gr_index, bytearray(state.gr)
        self.ar_index, self.ar_flip_flop, self.ar = state.ar_index, state.ar_flip_flop, bytearray(state.ar)
        self.dac_state, self.dac_read_index = state.dac_state, state.dac_read_index
        self.dac_write_index, self.dac_sub_index = state.dac_write_index, state.dac_sub_index
        self.dac_cache, self.palette = bytearray(state.dac_cache), bytearray(state.palette)
