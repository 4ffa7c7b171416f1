"""The plan a loader hands to the engine, the board's RAM layout, and the loaders' errors.

Every loader (:mod:`~vmm.loader.multiboot`, :mod:`~vmm.loader.flat`,
:mod:`~vmm.loader.bootsector`, :mod:`~vmm.loader.xen`) builds on this module and on
nothing else of the package, so that :mod:`vmm.loader.image`, which picks one of them,
sits above them all.
"""
from __future__ import annotations

from dataclasses import dataclass, field

#: The legacy PC hole: VGA window 0xa0000-0xbffff, option ROMs 0xc0000-0xeffff, BIOS.
LOW_HOLE_START, LOW_HOLE_END = 0xA0000, 0x100000
#: The BIOS area 0xf0000-0xfffff is shadow RAM while QEMU's option ROMs run: ``-kernel``
#: writes an image's bytes there (an ELF whose first segment holds its headers just below
#: 1 MiB), and so may we. The VGA window and the option ROMs below it take no image.
BIOS_AREA_START = 0xF0000
#: i440FX: RAM of this size or more is split, 3 GiB below 4 GiB and the rest above.
PCI_HOLE_SPLIT_THRESHOLD = 0xE0000000
PCI_HOLE_LOWMEM = 0xC0000000
FOUR_GIB = 1 << 32
PAGE = 0x1000


class ImageError(Exception):
    """One-line, user-facing: names the file and the problem."""

    def __init__(self, message: str):
        # One line, whatever the file name holds.
        super().__init__(" ".join(str(message).splitlines()))


@dataclass
class LoadedImage:
    """What to write where, and how the vCPU starts. Produced by :func:`load_image`."""

    kind: str                       # "multiboot" | "flat" | "bootsector"
    path: str | None
    chunks: list[tuple[int, bytes]]  # guest-physical address, bytes (bss as explicit zeroes)
    entry: int
    registers: dict[str, int]       # initial register values, e.g. {"eax": 0x2BADB002, "ebx": mbi}
    real_mode: bool                 # True for boot sectors (CS:IP = 0:0x7c00, DL = 0x80)
    symbols: dict[str, int] = field(default_factory=dict)   # from .symtab when present
    notes: list[str] = field(default_factory=list)          # what was loaded where

    def memory_span(self) -> tuple[int, int]:
        """Lowest and one-past-highest guest-physical address written by the chunks."""
        if not self.chunks:
            return (0, 0)
        return (min(a for a, _ in self.chunks), max(a + len(b) for a, b in self.chunks))


def ram_below_4g(ram_size: int) -> int:
    """Bytes of RAM mapped from guest-physical 0 (QEMU ``pc``: below_4g_mem_size)."""
    return PCI_HOLE_LOWMEM if ram_size >= PCI_HOLE_SPLIT_THRESHOLD else ram_size


def ram_above_4g(ram_size: int) -> int:
    """Bytes of RAM mapped from 4 GiB (QEMU ``pc``: above_4g_mem_size)."""
    return ram_size - ram_below_4g(ram_size)


def hex_range(start: int, end: int) -> str:
    """``0xSTART-0xLAST`` for the half-open range [start, end)."""
    return f"{start:#x}-{max(end - 1, start):#x}"


def check_placement(src: str, what: str, start: int, end: int, ram_size: int) -> None:
    """Refuse [start, end) unless it lies in RAM below 4 GiB and outside the VGA window and
    option-ROM area (the BIOS area above them takes images, as under QEMU)."""
    ram_end = ram_below_4g(ram_size)
    if start < 0 or end > ram_end:
        raise ImageError(f"{src}: {what} at {hex_range(start, end)} lies outside guest RAM "
                         f"({hex_range(0, ram_end)})")
    if start < BIOS_AREA_START and end > LOW_HOLE_START and end > start:
        raise ImageError(f"{src}: {what} at {hex_range(start, end)} overlaps the legacy "
                         f"VGA/option-ROM hole {hex_range(LOW_HOLE_START, BIOS_AREA_START)}, which is not RAM")


def read_file(path: str, what: str) -> bytes:
    """Read a whole file, turning every OS error into a one-line :class:`ImageError`."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise ImageError(f"{path}: {what} file not found") from None
    except IsADirectoryError:
        raise ImageError(f"{path}: {what} path is a directory, not a file") from None
    except PermissionError:
        raise ImageError(f"{path}: {what} file is not readable (permission denied)") from None
    except (OSError, ValueError) as e:  # ValueError: embedded NUL in the path
        reason = getattr(e, "strerror", None) or str(e)
        raise ImageError(f"{path}: cannot read {what} file ({reason})") from None
