"""Image loaders: Multiboot v1 (ELF32 / a.out kludge), flat binaries, boot sectors.

``load_image`` returns a :class:`LoadedImage`, a plan (chunks, entry, registers, mode)
that the engine applies; nothing here touches the engine.
"""
from .image import KINDS, load_image
from .multiboot import E820Entry, e820_map, mem_upper_kb
from .plan import ImageError, LoadedImage, ram_above_4g, ram_below_4g

__all__ = ["KINDS", "ImageError", "LoadedImage", "load_image", "ram_below_4g", "ram_above_4g",
           "E820Entry", "e820_map", "mem_upper_kb"]
