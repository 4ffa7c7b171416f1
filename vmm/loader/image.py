"""Image loading: the plan a loader hands to the engine, its errors, and the dispatcher.

A loader never touches the engine. It reads an image (a file or bytes), checks it
against the board (``DESIGN.md`` section 6: QEMU's ``pc`` machine), and returns a
:class:`LoadedImage`: which bytes go to which guest-physical addresses, where execution
starts, the initial register values and whether the vCPU starts in real mode. The
engine applies that plan to guest RAM (assumed zero-filled at reset: gaps between
chunks are not written) and sets the registers.

Three kinds of image (``kind=``):

``multiboot``
    Multiboot v1 kernels, ELF32 or "a.out kludge" (header flag 16), loaded as
    ``qemu-system-i386 -kernel`` loads them (:mod:`vmm.loader.multiboot`).
``flat``
    A raw 32-bit binary loaded at ``load_address`` and entered there in flat protected
    mode (:mod:`vmm.loader.flat`).
``bootsector``
    A 512-byte sector ending in 0x55 0xAA, loaded at 0x7c00 and entered in real mode as
    SeaBIOS enters it (:mod:`vmm.loader.bootsector`).

``kind="auto"`` decides by content: an ELF (by its magic) must be a Multiboot kernel; a
file of exactly 512 bytes ending in 0x55 0xAA is a boot sector; any other file holding a
valid Multiboot header (magic and checksum) is a Multiboot kernel (a.out kludge);
anything else is refused with a hint to pass ``--kind flat --load-address ADDR``.

Guest-physical RAM follows QEMU's ``pc`` (i440FX) machine: with ``ram_size`` below
3.5 GiB all of it sits at 0; from 3.5 GiB up, 3 GiB sit below 4 GiB and the rest at
4 GiB (``hw/i386/pc_piix.c``, ``gigabyte_align``). Images load into RAM below 4 GiB,
never into the legacy hole 0xa0000-0xfffff (VGA window, option ROMs, BIOS): that range
is not RAM on a PC, and QEMU silently loses or misplaces bytes written there.

Every failure is an :class:`ImageError` whose message is one line naming the file and
the problem, fit to show a user as is. Any byte string gives either a
:class:`LoadedImage` or an :class:`ImageError`, never another exception.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

KINDS = ("auto", "multiboot", "flat", "bootsector")

#: The legacy PC hole: VGA window 0xa0000-0xbffff, option ROMs 0xc0000-0xeffff, BIOS.
LOW_HOLE_START, LOW_HOLE_END = 0xA0000, 0x100000
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
    """Refuse [start, end) unless it lies in RAM below 4 GiB and outside the legacy hole."""
    ram_end = ram_below_4g(ram_size)
    if start < 0 or end > ram_end:
        raise ImageError(f"{src}: {what} at {hex_range(start, end)} lies outside guest RAM "
                         f"({hex_range(0, ram_end)})")
    if start < LOW_HOLE_END and end > LOW_HOLE_START and end > start:
        raise ImageError(f"{src}: {what} at {hex_range(start, end)} overlaps the legacy "
                         f"VGA/BIOS hole {hex_range(LOW_HOLE_START, LOW_HOLE_END)}, which is not RAM")


def _read_source(data_or_path) -> tuple[bytes, str | None]:
    if isinstance(data_or_path, (bytes, bytearray, memoryview)):
        return bytes(data_or_path), None
    if isinstance(data_or_path, (str, os.PathLike)):
        path = os.fspath(data_or_path)
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        return read_file(path, "image"), path
    raise TypeError(f"load_image() needs bytes or a path, not {type(data_or_path).__name__}")


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


def _looks_like_bootsector(data: bytes) -> bool:
    return len(data) == 512 and data[510:512] == b"\x55\xaa"


def load_image(data_or_path: bytes | str | os.PathLike, *, ram_size: int, kind: str = "auto",
               cmdline: str | None = None, modules: list[str] = (), load_address: int | None = None,
               image_name: str | None = None) -> LoadedImage:
    """Read and check an image, and return the plan that loads it into a guest.

    ``data_or_path``: the image bytes or a path to it. ``ram_size``: guest RAM in bytes.
    ``kind``: ``"auto"`` (detect), ``"multiboot"``, ``"flat"`` or ``"bootsector"``.
    ``cmdline``, ``modules`` (each ``"path [args]"``, as in QEMU's ``-initrd``) and
    ``image_name`` (the first word of the Multiboot command line; defaults to the path
    as given, like QEMU's ``-kernel`` argument, or ``"image"`` for bytes) apply to
    Multiboot kernels only; ``load_address`` to flat binaries only.

    Raises :class:`ImageError` for every problem with the image or the options.
    """
    from . import bootsector, flat, multiboot

    if isinstance(ram_size, bool) or not isinstance(ram_size, int) or ram_size <= 0:
        raise ValueError(f"ram_size must be a positive number of bytes, not {ram_size!r}")
    data, path = _read_source(data_or_path)
    src = path if path is not None else (image_name or "image")
    modules = list(modules or ())

    if kind not in KINDS:
        raise ImageError(f"{src}: unknown image kind {kind!r} (expected one of {', '.join(KINDS)})")
    if not data:
        raise ImageError(f"{src}: file is empty")

    if kind == "auto":
        if data[:4] == b"\x7fELF":
            kind = "multiboot"
        elif _looks_like_bootsector(data):
            kind = "bootsector"
        elif multiboot.find_header(data) is not None or multiboot.find_bad_checksum(data) is not None:
            kind = "multiboot"
        else:
            raise ImageError(f"{src}: unrecognised image (not an ELF, no Multiboot header, not a "
                             f"512-byte boot sector); to load it as a raw binary pass "
                             f"--kind flat and --load-address ADDR")

    if kind != "multiboot":
        if cmdline is not None or modules:
            raise ImageError(f"{src}: a command line and modules apply to Multiboot kernels only, "
                             f"not to a {kind} image")
    if kind != "flat" and load_address is not None:
        raise ImageError(f"{src}: --load-address applies to flat images only, not to a {kind} image")

    if kind == "multiboot":
        name = image_name if image_name is not None else (path if path is not None else "image")
        return multiboot.load(data, src=src, path=path, ram_size=ram_size, cmdline=cmdline,
                              modules=modules, image_name=name)
    if kind == "flat":
        return flat.load(data, src=src, path=path, ram_size=ram_size, load_address=load_address)
    return bootsector.load(data, src=src, path=path, ram_size=ram_size)
