"""Flat binaries: raw bytes loaded at ``load_address`` and entered there.

There is no header to read, so the user says where the bytes go (``--kind flat
--load-address ADDR``); the entry point is ``load_address``. The vCPU starts in 32-bit
flat protected mode, in the same state as a Multiboot kernel (see
:mod:`vmm.loader.multiboot`: ``CS`` = 0x08 flat code, ``DS`` = ``ES`` = ``FS`` = ``GS`` =
``SS`` = 0x10 flat data, ``CR0`` = PE | ET, paging off, ``IF`` = 0) but with no boot
information: no register is defined (``registers`` is empty) and the image must set up its
own stack. The bytes must lie in guest RAM below 4 GiB and outside the VGA window and
option ROMs 0xa0000-0xeffff (the BIOS area above them is loadable).
"""
from __future__ import annotations

from .plan import ImageError, LoadedImage, check_placement, hex_range, ram_below_4g


def load(data: bytes, *, src: str, path: str | None, ram_size: int, load_address: int | None) -> LoadedImage:
    if load_address is None:
        raise ImageError(f"{src}: a flat image needs a load address (--load-address ADDR)")
    if isinstance(load_address, bool) or not isinstance(load_address, int) or load_address < 0:
        raise ImageError(f"{src}: load address {load_address!r} is not a non-negative integer")
    ram_end = ram_below_4g(ram_size)
    if len(data) > ram_end:
        raise ImageError(f"{src}: flat image of {len(data)} bytes is larger than guest RAM "
                         f"({ram_end} bytes below 4 GiB)")
    end = load_address + len(data)
    check_placement(src, f"flat image ({len(data)} bytes)", load_address, end, ram_size)
    return LoadedImage(kind="flat", path=path, chunks=[(load_address, data)], entry=load_address,
                       registers={}, real_mode=False, symbols={},
                       notes=[f"flat binary {src!r}: {hex_range(load_address, end)} ({len(data)} bytes)",
                              f"entry {load_address:#x}, 32-bit flat protected mode, no boot information"])
