"""Image loading: which loader an image needs, and the plan it hands to the engine.

A loader never touches the engine. It reads an image (a file or bytes), checks it
against the board (QEMU's ``pc`` machine: :mod:`vmm.loader.plan`), and returns a
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
never into the VGA window and option ROMs 0xa0000-0xeffff: that range is not RAM on a PC,
and QEMU silently loses or misplaces bytes written there. The BIOS area 0xf0000-0xfffff
is shadow RAM while QEMU loads ``-kernel`` images and takes their bytes; so it does here.

Every failure is an :class:`ImageError` whose message is one line naming the file and
the problem, fit to show a user as is. Any byte string gives either a
:class:`LoadedImage` or an :class:`ImageError`, never another exception.
"""
from __future__ import annotations

import os
from collections.abc import Sequence

from . import bootsector, flat, multiboot
from .plan import (
    FOUR_GIB,
    LOW_HOLE_END,
    LOW_HOLE_START,
    PAGE,
    ImageError,
    LoadedImage,
    check_placement,
    hex_range,
    ram_above_4g,
    ram_below_4g,
    read_file,
)

KINDS = ("auto", "multiboot", "flat", "bootsector")

# The plan's names stay importable from here, where the loaders' users have always found them.
__all__ = ["KINDS", "load_image", "FOUR_GIB", "LOW_HOLE_END", "LOW_HOLE_START", "PAGE", "ImageError",
           "LoadedImage", "check_placement", "hex_range", "ram_above_4g", "ram_below_4g", "read_file"]


def _read_source(data_or_path) -> tuple[bytes, str | None]:
    if isinstance(data_or_path, (bytes, bytearray, memoryview)):
        return bytes(data_or_path), None
    if isinstance(data_or_path, (str, os.PathLike)):
        path = os.fspath(data_or_path)
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        return read_file(path, "image"), path
    raise TypeError(f"load_image() needs bytes or a path, not {type(data_or_path).__name__}")


def _looks_like_bootsector(data: bytes) -> bool:
    return len(data) == 512 and data[510:512] == b"\x55\xaa"


def load_image(data_or_path: bytes | str | os.PathLike, *, ram_size: int, kind: str = "auto",
               cmdline: str | None = None, modules: Sequence[str] = (), load_address: int | None = None,
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
    if isinstance(ram_size, bool) or not isinstance(ram_size, int) or ram_size <= 0:
        raise ValueError(f"ram_size must be a positive number of bytes, not {ram_size!r}")
    data, path = _read_source(data_or_path)
    src = path if path is not None else (image_name or "image")
    module_list = list(modules or ())

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
        if cmdline is not None or module_list:
            raise ImageError(f"{src}: a command line and modules apply to Multiboot kernels only, "
                             f"not to a {kind} image")
    if kind != "flat" and load_address is not None:
        raise ImageError(f"{src}: --load-address applies to flat images only, not to a {kind} image")

    if kind == "multiboot":
        name = image_name if image_name is not None else (path if path is not None else "image")
        return multiboot.load(data, src=src, path=path, ram_size=ram_size, cmdline=cmdline,
                              modules=module_list, image_name=name)
    if kind == "flat":
        return flat.load(data, src=src, path=path, ram_size=ram_size, load_address=load_address)
    return bootsector.load(data, src=src, path=path, ram_size=ram_size)
