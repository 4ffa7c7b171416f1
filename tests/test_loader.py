"""Image loader: Multiboot v1 (ELF32 and a.out kludge), flat binaries, boot sectors.

Golden values come from QEMU 7.2 / SeaBIOS 1.16.2 (probe kernels dumping what they were
handed); ``test_matches_qemu`` re-checks them against the installed qemu-system-i386.
"""
from __future__ import annotations

import os
import shutil
import struct
import subprocess

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import vmm.loader.plan as plan_mod
from vmm.build.elf import PF_R, PF_W, PF_X, Segment, multiboot_header, write_elf32
from vmm.loader import ImageError, LoadedImage, e820_map, load_image, mem_upper_kb
from vmm.loader.image import LOW_HOLE_START, ram_below_4g
from vmm.loader.multiboot import BOOTLOADER_NAME
from vmm.loader.plan import BIOS_AREA_START

MiB = 1 << 20
MB_MAGIC = 0x1BADB002


# --------------------------------------------------------------------------- helpers

class Mem:
    """Guest-physical memory as the engine would fill it from a plan (zero elsewhere)."""

    def __init__(self, chunks):
        self.chunks = sorted(chunks, key=lambda c: c[0])
        for (a, b), (c, d) in zip(self.chunks, self.chunks[1:]):
            assert a + len(b) <= c, f"chunks overlap at {c:#x}"

    def read(self, addr: int, n: int) -> bytes:
        out = bytearray(n)
        for a, b in self.chunks:
            lo, hi = max(a, addr), min(a + len(b), addr + n)
            if lo < hi:
                out[lo - addr:hi - addr] = b[lo - a:hi - a]
        return bytes(out)

    def u32(self, addr: int) -> int:
        return struct.unpack("<I", self.read(addr, 4))[0]

    def cstr(self, addr: int, limit: int = 4096) -> bytes:
        raw = self.read(addr, limit)
        assert b"\0" in raw, f"no NUL within {limit} bytes of {addr:#x}"
        return raw.split(b"\0", 1)[0]

    def written(self, addr: int) -> bool:
        return any(a <= addr < a + len(b) for a, b in self.chunks)


def decode_mbi(mem: Mem, addr: int) -> dict:
    """The Multiboot info structure, decoded from guest memory by the spec's offsets."""
    f = struct.unpack("<22I", mem.read(addr, 88))
    info = dict(flags=f[0], mem_lower=f[1], mem_upper=f[2], boot_device=f[3], cmdline_addr=f[4],
                mods_count=f[5], mods_addr=f[6], mmap_length=f[11], mmap_addr=f[12],
                boot_loader_name_addr=f[16], raw=f)
    info["cmdline"] = mem.cstr(f[4])
    info["boot_loader_name"] = mem.cstr(f[16])
    mmap, off = [], 0
    while off < info["mmap_length"]:
        size, base, length, typ = struct.unpack("<IQQI", mem.read(f[12] + off, 24))
        mmap.append((size, base, length, typ))
        off += size + 4
    info["mmap"] = mmap
    mods = []
    for k in range(info["mods_count"]):
        start, end, string, reserved = struct.unpack("<4I", mem.read(f[6] + 16 * k, 16))
        mods.append(dict(start=start, end=end, string=mem.cstr(string), string_addr=string,
                         reserved=reserved, data=mem.read(start, end - start)))
    info["mods"] = mods
    return info


def mb_elf(segments, entry, flags=0x3, symbols=None, header_in=0):
    """An ELF whose segment ``header_in`` starts with a Multiboot header."""
    segs = list(segments)
    s = segs[header_in]
    segs[header_in] = Segment(s.paddr, multiboot_header(flags) + s.data, s.memsz, s.flags, s.vaddr)
    return write_elf32(segs, entry, symbols)


def simple_kernel(**kw):
    code = b"\xf4" * 16   # hlt
    return mb_elf([Segment(0x100000, code)], entry=0x10000C, **kw)


def aout_image(offset=8, load_addr=0x200000, header_addr=None, load_end=0, bss_end=0,
               entry=None, body=b"\x90" * 40, flags=0x10003, tail=b""):
    """A non-ELF file with an a.out-kludge Multiboot header at ``offset``."""
    header_addr = load_addr + offset if header_addr is None else header_addr
    entry = load_addr + offset + 32 if entry is None else entry
    hdr = struct.pack("<8I", MB_MAGIC, flags, (-(MB_MAGIC + flags)) & 0xFFFFFFFF,
                      header_addr, load_addr, load_end, bss_end, entry)
    return b"\xeb\xfe" + b"\0" * (offset - 2) + hdr + body + tail


def with_u32(data: bytes, off: int, value: int) -> bytes:
    b = bytearray(data)
    struct.pack_into("<I", b, off, value & 0xFFFFFFFF)
    return bytes(b)


def with_u16(data: bytes, off: int, value: int) -> bytes:
    b = bytearray(data)
    struct.pack_into("<H", b, off, value)
    return bytes(b)


def phdr_offset(elf: bytes, i: int) -> int:
    return struct.unpack_from("<I", elf, 28)[0] + 32 * i


def chunk_at(img: LoadedImage, addr: int) -> bytes:
    for a, b in img.chunks:
        if a == addr:
            return b
    raise AssertionError(f"no chunk at {addr:#x}: {[hex(a) for a, _ in img.chunks]}")


def check_error(exc_info, *fragments, source=None):
    msg = str(exc_info.value)
    assert "\n" not in msg
    for frag in fragments:
        assert frag in msg, f"{frag!r} not in {msg!r}"
    if source is not None:
        assert msg.startswith(f"{source}: "), msg


# Measured under qemu-system-i386 7.2.22 -M pc, SeaBIOS 1.16.2 (see vmm/loader/multiboot.py).
QEMU_E820 = {
    2 * MiB: [(0, 0x9FC00, 1), (0x9FC00, 0x400, 2), (0xF0000, 0x10000, 2), (0x100000, 0xE0000, 1),
              (0x1E0000, 0x20000, 2), (0xFFFC0000, 0x40000, 2)],
    128 * MiB: [(0, 0x9FC00, 1), (0x9FC00, 0x400, 2), (0xF0000, 0x10000, 2), (0x100000, 0x7EE0000, 1),
                (0x7FE0000, 0x20000, 2), (0xFFFC0000, 0x40000, 2)],
    3584 * MiB: [(0, 0x9FC00, 1), (0x9FC00, 0x400, 2), (0xF0000, 0x10000, 2), (0x100000, 0xBFEE0000, 1),
                 (0xBFFE0000, 0x20000, 2), (0xFFFC0000, 0x40000, 2), (0x100000000, 0x20000000, 1)],
}
QEMU_MEM_UPPER = {2 * MiB: 896, 16 * MiB: 15232, 32 * MiB: 31616, 128 * MiB: 129920,
                  129 * MiB: 130944, 1000 * MiB: 1022848, 3 << 30: 3144576,
                  3584 * MiB: 3144576, 4 << 30: 3144576}


# --------------------------------------------------------------------------- Multiboot ELF

def test_elf_segments_entry_registers_symbols():
    code = bytes(range(64))
    data = b"DATA" * 8
    elf = mb_elf([Segment(0x100000, code, flags=PF_R | PF_X), Segment(0x104000, data, flags=PF_R | PF_W)],
                 entry=0x10000C, symbols={"start": 0x10000C, "table": 0x104000})
    img = load_image(elf, ram_size=32 * MiB, image_name="k.elf")
    assert img.kind == "multiboot" and img.path is None and not img.real_mode
    assert img.entry == 0x10000C
    # QEMU's option ROM: the magic, the info structure, ECX = the entry it jumps through,
    # SeaBIOS's stack, EFLAGS with IF clear (tests/test_boot_entry.py measures them).
    assert img.registers == {"eax": 0x2BADB002, "ebx": 0x9500, "ecx": 0x10000C, "esp": 0x6F08, "eflags": 0x6}
    assert chunk_at(img, 0x100000) == multiboot_header(3) + code
    assert chunk_at(img, 0x104000) == data
    assert img.symbols == {"start": 0x10000C, "table": 0x104000}
    assert any("0x100000" in n for n in img.notes)


def test_bss_is_zeroed_explicitly():
    elf = mb_elf([Segment(0x100000, b"\xaa" * 100, memsz=0x3000)], entry=0x10000C)
    img = load_image(elf, ram_size=32 * MiB)
    data = chunk_at(img, 0x100000)
    assert data == multiboot_header(3) + b"\xaa" * 100
    bss = chunk_at(img, 0x100000 + len(data))
    assert len(bss) == 0x3000 - len(data) and bss == bytes(len(bss))
    # Bss counts as loaded: the info area starts on the next page after it.
    info = decode_mbi(Mem(img.chunks), img.registers["ebx"])
    assert info["mods_addr"] == 0x103000


def test_bss_overrunning_another_segment_is_truncated_like_qemu():
    elf = mb_elf([Segment(0x100000, b"\x11" * 0x100, memsz=0x2000), Segment(0x101000, b"\x22" * 0x10)],
                 entry=0x10000C)
    img = load_image(elf, ram_size=32 * MiB)
    mem = Mem(img.chunks)          # asserts no overlap
    assert mem.read(0x101000, 0x10) == b"\x22" * 0x10
    assert not mem.written(0x100000 + 12 + 0x100)   # truncated to the file bytes
    assert any("QEMU's rule" in n for n in img.notes)


def test_entry_translated_when_vaddr_differs_from_paddr():
    seg = Segment(0x100000, b"\x90" * 64, flags=PF_R | PF_X, vaddr=0xC0100000)
    elf = mb_elf([seg], entry=0xC010000C)
    img = load_image(elf, ram_size=32 * MiB)
    assert img.entry == 0x10000C
    assert chunk_at(img, 0x100000)[:12] == multiboot_header(3)


def test_entry_not_translated_for_non_executable_segment():
    seg = Segment(0x100000, b"\x90" * 64, flags=PF_R | PF_W, vaddr=0xC0100000)
    elf = mb_elf([seg], entry=0xC010000C)
    with pytest.raises(ImageError) as e:
        load_image(elf, ram_size=32 * MiB, image_name="k")
    check_error(e, "entry point 0xc010000c is outside every loaded segment", source="k")


def test_info_structure_fields_128m():
    img = load_image(simple_kernel(), ram_size=128 * MiB, image_name="kernel.elf", cmdline="console=ttyS0 x=1")
    mem = Mem(img.chunks)
    assert img.registers["ebx"] == 0x9500
    info = decode_mbi(mem, 0x9500)
    assert info["flags"] == 0x24F
    assert info["mem_lower"] == 639
    assert info["mem_upper"] == 129920                    # not 128*1024 - 1024 = 130048
    assert info["boot_device"] == 0x8000FFFF
    assert info["cmdline"] == b"kernel.elf console=ttyS0 x=1"
    assert info["boot_loader_name"] == b"vmm"
    assert info["mods_count"] == 0 and info["mods_addr"] == 0x101000
    assert info["mmap_addr"] == 0x9000 and info["mmap_length"] == 6 * 24
    assert [(b, l, t) for _, b, l, t in info["mmap"]] == QEMU_E820[128 * MiB]
    assert all(size == 20 for size, *_ in info["mmap"])
    # Layout: strings right after the (empty) module table, loader name at QEMU's offset.
    assert info["cmdline_addr"] == 0x101000
    assert info["boot_loader_name_addr"] == 0x101000 + len("kernel.elf") + 1 + len("console=ttyS0 x=1") + 1
    # Unused fields are zero.
    assert all(info["raw"][k] == 0 for k in (7, 8, 9, 10, 13, 14, 15, 17, 18, 19, 20, 21))


def test_cmdline_without_arguments_keeps_qemus_trailing_space(tmp_path, monkeypatch):
    (tmp_path / "k.elf").write_bytes(simple_kernel())
    monkeypatch.chdir(tmp_path)
    img = load_image("k.elf", ram_size=32 * MiB)
    assert img.path == "k.elf"
    assert decode_mbi(Mem(img.chunks), 0x9500)["cmdline"] == b"k.elf "
    img = load_image(simple_kernel(), ram_size=32 * MiB)
    assert decode_mbi(Mem(img.chunks), 0x9500)["cmdline"] == b"image "
    img = load_image(simple_kernel(), ram_size=32 * MiB, image_name="guest", cmdline="a  b")
    assert decode_mbi(Mem(img.chunks), 0x9500)["cmdline"] == b"guest a  b"


@pytest.mark.parametrize("ram", sorted(QEMU_E820))
def test_e820_map_matches_qemu(ram):
    assert [(e.base, e.length, e.type) for e in e820_map(ram)] == QEMU_E820[ram]
    info = decode_mbi(Mem(load_image(simple_kernel(), ram_size=ram).chunks), 0x9500)
    assert [(b, l, t) for _, b, l, t in info["mmap"]] == QEMU_E820[ram]
    assert info["mmap_length"] == 24 * len(QEMU_E820[ram])


@pytest.mark.parametrize("ram", sorted(QEMU_MEM_UPPER))
def test_mem_upper_matches_qemu(ram):
    assert mem_upper_kb(ram) == QEMU_MEM_UPPER[ram]


def test_modules_layout_matches_qemu(tmp_path, monkeypatch):
    # Same kernel span and module files as the QEMU probe run (-initrd "mod1.bin a1 a2,mod2.bin").
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mod1.bin").write_bytes(b"hello\n")
    mod2 = bytes((i * 7) & 0xFF for i in range(5000))
    (tmp_path / "mod2.bin").write_bytes(mod2)
    elf = mb_elf([Segment(0x100000, b"\xf4" * 0x100, memsz=0x9000)], entry=0x10000C)
    img = load_image(elf, ram_size=32 * MiB, image_name="probe.elf", cmdline="hello world  x",
                     modules=["mod1.bin a1 a2", "mod2.bin"])
    info = decode_mbi(Mem(img.chunks), img.registers["ebx"])
    assert info["mem_upper"] == 31616
    assert info["mods_count"] == 2 and info["mods_addr"] == 0x109000
    m1, m2 = info["mods"]
    assert (m1["start"], m1["end"], m1["string_addr"]) == (0x10A000, 0x10A006, 0x109020)
    assert (m2["start"], m2["end"], m2["string_addr"]) == (0x10B000, 0x10C388, 0x10902F)
    assert m1["string"] == b"mod1.bin a1 a2" and m2["string"] == b"mod2.bin"
    assert m1["data"] == b"hello\n" and m2["data"] == mod2
    assert m1["reserved"] == m2["reserved"] == 0
    assert info["cmdline_addr"] == 0x109038 and info["cmdline"] == b"probe.elf hello world  x"
    assert info["boot_loader_name_addr"] == 0x109051


def test_module_page_alignment_is_relative_to_the_image():
    elf = mb_elf([Segment(0x100000, b"\x90" * 0x20)], entry=0x10000C)
    img = load_image(elf, ram_size=32 * MiB, modules=[__file__ + " arg", __file__])
    mods = decode_mbi(Mem(img.chunks), 0x9500)["mods"]
    size = os.path.getsize(__file__)
    assert mods[0]["start"] == 0x102000 and mods[0]["end"] == 0x102000 + size
    assert mods[1]["start"] == (mods[0]["end"] + 0xFFF) & ~0xFFF
    assert mods[0]["string"] == (__file__ + " arg").encode()
    assert mods[0]["data"] == open(__file__, "rb").read()


def test_ram_split_above_3_5g_loads_below_4g():
    img = load_image(simple_kernel(), ram_size=4 << 30)
    info = decode_mbi(Mem(img.chunks), 0x9500)
    assert info["mmap"][-1][1:] == (1 << 32, 1 << 30, 1)
    assert info["mem_upper"] == 3144576


def test_video_flag_is_accepted_with_a_note_like_qemu():
    img = load_image(simple_kernel(flags=0x7), ram_size=32 * MiB)
    assert any("video" in n for n in img.notes)


def test_header_search_limit_is_qemus():
    body = b"\x90" * 64
    # Header at 8140: found (QEMU scans offsets below 8192 - 48).
    img = load_image(aout_image(offset=8140, body=body), ram_size=32 * MiB)
    assert img.entry == 0x200000 + 8140 + 32
    with pytest.raises(ImageError) as e:
        load_image(aout_image(offset=8144, body=body), ram_size=32 * MiB, kind="multiboot", image_name="k")
    check_error(e, "no Multiboot header in the first 8 KiB", source="k")


# --------------------------------------------------------------------------- a.out kludge

def test_aout_kludge_whole_file_and_bss():
    body = bytes(range(200))
    raw = aout_image(offset=8, load_addr=0x200000, bss_end=0x203000, body=body)
    img = load_image(raw, ram_size=32 * MiB)
    assert img.kind == "multiboot" and img.entry == 0x200028
    assert chunk_at(img, 0x200000) == raw
    bss = chunk_at(img, 0x200000 + len(raw))
    assert len(bss) == 0x3000 - len(raw) and not any(bss)
    assert decode_mbi(Mem(img.chunks), 0x9500)["mods_addr"] == 0x203000


def test_aout_kludge_load_end_and_text_offset():
    # header_addr - load_addr = 4 < offset 16: the file is loaded from offset 12.
    raw = aout_image(offset=16, load_addr=0x300000, header_addr=0x300004, load_end=0x300040,
                     entry=0x300004)
    img = load_image(raw, ram_size=32 * MiB)
    assert chunk_at(img, 0x300000) == raw[12:12 + 0x40]
    assert img.entry == 0x300004


def test_aout_kludge_on_an_elf_wins_like_qemu():
    elf = simple_kernel()
    off = elf.find(struct.pack("<I", MB_MAGIC))
    flags = 0x10003
    b = bytearray(elf)
    struct.pack_into("<8I", b, off, MB_MAGIC, flags, (-(MB_MAGIC + flags)) & 0xFFFFFFFF,
                     0x400000 + off, 0x400000, 0, 0, 0x400000 + off)
    img = load_image(bytes(b), ram_size=32 * MiB)
    assert img.entry == 0x400000 + off
    assert chunk_at(img, 0x400000) == bytes(b)
    assert any("flag 16 is set" in n for n in img.notes)


# --------------------------------------------------------------------------- flat, boot sector, detection

def test_flat_binary():
    img = load_image(b"\xf4" * 100, ram_size=8 * MiB, kind="flat", load_address=0x200000, image_name="f")
    assert img.kind == "flat" and img.entry == 0x200000 and not img.real_mode
    assert img.chunks == [(0x200000, b"\xf4" * 100)] and img.registers == {}


def test_boot_sector(tmp_path):
    sector = b"\xfa\xf4".ljust(510, b"\0") + b"\x55\xaa"
    p = tmp_path / "boot.img"
    p.write_bytes(sector)
    img = load_image(p, ram_size=8 * MiB)
    assert img.kind == "bootsector" and img.real_mode and img.path == str(p)
    assert img.chunks == [(0x7C00, sector)] and img.entry == 0x7C00
    assert img.registers == {"eax": 0xAA55, "edx": 0x80}


def test_auto_detection():
    assert load_image(simple_kernel(), ram_size=8 * MiB).kind == "multiboot"
    assert load_image(aout_image(), ram_size=8 * MiB).kind == "multiboot"
    assert load_image(bytes(510) + b"\x55\xaa", ram_size=8 * MiB).kind == "bootsector"
    for raw in (bytes(512), b"\x90" * 1000, bytes(511) + b"\xaa"):
        with pytest.raises(ImageError) as e:
            load_image(raw, ram_size=8 * MiB, image_name="blob")
        check_error(e, "unrecognised image", "--kind flat", "--load-address", source="blob")


# --------------------------------------------------------------------------- errors

def test_file_errors(tmp_path, monkeypatch):
    missing = tmp_path / "nope.elf"
    with pytest.raises(ImageError) as e:
        load_image(missing, ram_size=8 * MiB)
    check_error(e, "file not found", source=str(missing))
    with pytest.raises(ImageError) as e:
        load_image(str(tmp_path), ram_size=8 * MiB)
    check_error(e, "is a directory", source=str(tmp_path))
    (tmp_path / "empty").write_bytes(b"")
    with pytest.raises(ImageError) as e:
        load_image(tmp_path / "empty", ram_size=8 * MiB)
    check_error(e, "file is empty")

    def unreadable(*a, **k):
        raise OSError(5, "Input/output error")
    monkeypatch.setattr(plan_mod, "open", unreadable, raising=False)
    with pytest.raises(ImageError) as e:
        load_image(tmp_path / "x.elf", ram_size=8 * MiB)
    check_error(e, "cannot read image file (Input/output error)")


def elf_error(raw, *fragments, ram=32 * MiB, **kw):
    with pytest.raises(ImageError) as e:
        load_image(raw, ram_size=ram, image_name="k.elf", **kw)
    check_error(e, *fragments, source="k.elf")


def test_elf_header_errors():
    elf = simple_kernel()
    elf_error(elf[:40], "truncated ELF header (40 bytes, need 52)")
    elf_error(elf[:4] + b"\x02" + elf[5:], "64-bit ELF")
    elf_error(elf[:4] + b"\x07" + elf[5:], "bad ELF class 7")
    elf_error(elf[:5] + b"\x02" + elf[6:], "not little-endian")
    elf_error(with_u16(elf, 18, 62), "ELF machine 62 (x86-64) is not i386")
    elf_error(with_u16(elf, 18, 40), "ELF machine 40 (ARM) is not i386")
    elf_error(with_u16(elf, 16, 3), "ELF type 3 (ET_DYN) is not an executable (ET_EXEC)")
    elf_error(with_u16(elf, 16, 1), "ELF type 1 (ET_REL)")
    elf_error(with_u16(elf, 44, 0), "no program headers")
    elf_error(with_u16(elf, 42, 56), "bad ELF program header size 56")
    elf_error(with_u32(elf, 28, len(elf) - 16), "truncated ELF", "program headers")


def test_truncated_segment_data():
    elf = mb_elf([Segment(0x100000, b"\x90" * 0x3000)], entry=0x10000C)
    off = struct.unpack_from("<I", elf, phdr_offset(elf, 0) + 4)[0]
    elf_error(elf[:off + 0x1000], "truncated ELF: segment 0 data", "runs past the end of the file")


def test_filesz_larger_than_memsz():
    elf = simple_kernel()
    elf_error(with_u32(elf, phdr_offset(elf, 0) + 20, 4), "file size", "larger than its memory size")


def test_no_pt_load():
    elf = simple_kernel()
    elf_error(with_u32(elf, phdr_offset(elf, 0), 4), "no loadable (PT_LOAD) segment")


def test_multiboot_header_errors():
    plain = write_elf32([Segment(0x100000, b"\x90" * 64)], entry=0x100000)
    elf_error(plain, "no Multiboot header in the first 8 KiB")
    elf = simple_kernel()
    off = elf.find(struct.pack("<I", MB_MAGIC))
    elf_error(with_u32(elf, off + 8, 0x12345678), f"Multiboot header at offset {off:#x} has a bad checksum")
    flags = 0x3 | 1 << 3 | 1 << 9
    bad = with_u32(with_u32(elf, off + 4, flags), off + 8, -(MB_MAGIC + flags))
    elf_error(bad, "require unsupported features (bit 3, 9)")
    # Optional bits 17-31 are ignored.
    flags = 0x3 | 1 << 20
    ok = with_u32(with_u32(elf, off + 4, flags), off + 8, -(MB_MAGIC + flags))
    assert load_image(ok, ram_size=32 * MiB).entry == 0x10000C
    # Not an ELF, header without flag 16.
    raw = b"\0" * 16 + multiboot_header(3) + b"\x90" * 64
    elf_error(raw, "not an ELF file", "flag 16 clear")
    # Bad checksum in a non-ELF file: auto detection reports it.
    elf_error(b"\0" * 8 + struct.pack("<III", MB_MAGIC, 0x10003, 0) + b"\0" * 100, "bad checksum")


def test_placement_errors():
    ram = 32 * MiB
    k = lambda segs, entry: mb_elf(segs, entry)  # noqa: E731
    elf_error(k([Segment(0x4000000, b"\x90" * 64)], 0x400000C), "segment 0 at 0x4000000-", "outside guest RAM (0x0-0x1ffffff)")
    elf_error(k([Segment(ram - 0x100, b"\x90" * 0x40, memsz=0x1000)], ram - 0xF4),
              "zero-filled (bss) part of segment 0", "outside guest RAM")
    elf_error(k([Segment(0xA0000, b"\x90" * 64)], 0xA000C), "overlaps the legacy VGA/option-ROM hole 0xa0000-0xeffff")
    elf_error(k([Segment(0xE8000, b"\x90" * 0x10000)], 0xE800C), "legacy VGA/option-ROM hole")
    elf_error(k([Segment(0x10000, b"\x90" * 64), Segment(0x100000, b"\x90" * 64)], 0x1000C),
              "across the legacy VGA/option-ROM hole")
    elf_error(k([Segment(0x100000, b"\x90" * 0x2000), Segment(0x101000, b"\x90" * 0x100)], 0x10000C),
              "ELF segments 0 (0x100000-0x10200b) and 1 (0x101000-0x1010ff) overlap")
    elf_error(k([Segment(0x100000, b"\x90" * 64), Segment(0x100000 + ram, b"\x90" * 64)], 0x10000C),
              "larger than guest RAM")
    elf_error(k([Segment(0x100000, b"\x90" * 64)], 0x200000), "entry point 0x200000 is outside every loaded segment")


def test_low_memory_kernel_is_allowed_and_bounded():
    img = load_image(mb_elf([Segment(0x10000, b"\x90" * 64)], 0x1000C), ram_size=32 * MiB)
    assert decode_mbi(Mem(img.chunks), 0x9500)["mods_addr"] == 0x11000
    # A module too big for the 0x9558-0xa0000 region.
    elf_error(mb_elf([Segment(0x10000, b"\x90" * 64)], 0x1000C), "modules do not fit in guest RAM",
              modules=[__file__] * 200)


def test_module_errors(tmp_path):
    big = tmp_path / "big.bin"
    big.write_bytes(bytes(20 * MiB))
    elf_error(simple_kernel(), "modules do not fit in guest RAM", "big.bin", ram=16 * MiB, modules=[str(big)])
    with pytest.raises(ImageError) as e:
        load_image(simple_kernel(), ram_size=16 * MiB, modules=[str(tmp_path / "none.bin") + " x"])
    check_error(e, "module file not found", source=str(tmp_path / "none.bin"))
    elf_error(simple_kernel(), "has no file name", modules=[" arg"])


def test_aout_errors():
    elf_error(aout_image(header_addr=0x1FF000), "header_addr 0x1ff000 is below load_addr 0x200000")
    elf_error(aout_image(offset=8, header_addr=0x200100), "more than the header's file offset 0x8")
    elf_error(aout_image(load_end=0x100000), "load_end_addr 0x100000 is below load_addr")
    elf_error(aout_image(load_end=0x200010, bss_end=0x200008), "bss_end_addr 0x200008 is below")
    elf_error(aout_image(load_end=0x300000), "truncated: the Multiboot header asks for 0x100000 bytes")
    elf_error(aout_image(load_addr=0xFFFFFF00, header_addr=0xFFFFFF08, load_end=0),
              "outside guest RAM")
    flags = 0x10003
    short = b"\0" * 8 + struct.pack("<III", MB_MAGIC, flags, (-(MB_MAGIC + flags)) & 0xFFFFFFFF) + b"\0" * 8
    elf_error(short, "truncated Multiboot header at offset 0x8")


def test_option_errors():
    elf_error(simple_kernel(), "needs at least 2 MiB", ram=1 * MiB)
    elf_error(simple_kernel(), "command line contains a NUL byte", cmdline="a\0b")
    elf_error(simple_kernel(), "--load-address applies to flat images only", load_address=0x1000)
    elf_error(simple_kernel(), "unknown image kind 'elf'", kind="elf")
    elf_error(b"\x90" * 10, "apply to Multiboot kernels only", kind="flat", load_address=0x1000, cmdline="x")
    elf_error(b"\x90" * 10, "needs a load address (--load-address ADDR)", kind="flat")
    elf_error(b"\x90" * 10, "not a non-negative integer", kind="flat", load_address=-4)
    elf_error(b"\x90" * (9 * MiB), "larger than guest RAM", ram=8 * MiB, kind="flat", load_address=0)
    elf_error(b"\x90" * 0x100, "outside guest RAM", ram=8 * MiB, kind="flat", load_address=8 * MiB - 0x80)
    elf_error(b"\x90" * 0x100, "legacy VGA/option-ROM hole", ram=8 * MiB, kind="flat", load_address=0x9FF80)
    elf_error(bytes(600), "exactly 512 bytes (this file has 600)", kind="bootsector")
    elf_error(bytes(512), "lacks the 0x55 0xAA signature", kind="bootsector")
    with pytest.raises(ValueError):
        load_image(simple_kernel(), ram_size=0)


# --------------------------------------------------------------------------- fuzzing

RAMS = st.sampled_from([2 * MiB, 16 * MiB, 64 * MiB])


def check_plan(img: LoadedImage, ram: int) -> None:
    assert isinstance(img, LoadedImage)
    mem = Mem(img.chunks)                     # no overlapping chunks
    end = ram_below_4g(ram)
    for a, b in img.chunks:
        assert 0 <= a and a + len(b) <= end
        if img.kind != "bootsector":
            assert a + len(b) <= LOW_HOLE_START or a >= BIOS_AREA_START
    assert mem.written(img.entry)


def outcome(raw: bytes, ram: int, **kw):
    try:
        img = load_image(raw, ram_size=ram, image_name="fuzz", **kw)
    except ImageError as e:
        assert "\n" not in str(e) and str(e).startswith("fuzz: ")
        return None
    check_plan(img, ram)
    return img


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=st.binary(min_size=0, max_size=9000), ram=RAMS,
       kind=st.sampled_from(["auto", "multiboot", "bootsector"]))
def test_fuzz_random_bytes(raw, ram, kind):
    outcome(raw, ram, kind=kind)


@settings(max_examples=100, deadline=None)
@given(raw=st.binary(min_size=1, max_size=4000), ram=RAMS, addr=st.integers(0, 80 * MiB))
def test_fuzz_flat(raw, ram, addr):
    outcome(raw, ram, kind="flat", load_address=addr)


def _bases():
    two = mb_elf([Segment(0x100000, b"\x90" * 0x300, memsz=0x2000, flags=PF_R | PF_X),
                  Segment(0x103000, b"D" * 0x80, memsz=0x400, flags=PF_R | PF_W)],
                 entry=0x10000C, symbols={"start": 0x10000C, "data": 0x103000})
    virt = mb_elf([Segment(0x100000, b"\x90" * 0x100, flags=PF_R | PF_X, vaddr=0xC0100000)], entry=0xC010000C)
    return [simple_kernel(), two, virt, aout_image(bss_end=0x204000),
            bytes(510) + b"\x55\xaa"]


BASES = _bases()


def _interesting_offsets(raw: bytes) -> list[int]:
    offs = list(range(0, 52, 2))
    if raw[:4] == b"\x7fELF":
        phoff, = struct.unpack_from("<I", raw, 28)
        phnum, = struct.unpack_from("<H", raw, 44)
        offs += [phoff + 32 * i + 4 * f for i in range(phnum) for f in range(8)]
        shoff, = struct.unpack_from("<I", raw, 32)
        offs += [shoff + k for k in range(0, 40 * 6, 4) if shoff + k + 4 <= len(raw)]
    mh = raw.find(struct.pack("<I", MB_MAGIC))
    if mh >= 0:
        offs += [mh + 4 * k for k in range(8)]
    return [o for o in offs if o + 4 <= len(raw)]


@pytest.mark.slow
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), ram=RAMS)
def test_fuzz_mutated_images(data, ram):
    raw = bytearray(data.draw(st.sampled_from(BASES)))
    offsets = _interesting_offsets(bytes(raw))
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["field", "byte", "truncate", "insert"]))
        if op == "field" and offsets:
            off = data.draw(st.sampled_from(offsets))
            value = data.draw(st.one_of(st.integers(0, 0xFFFFFFFF),
                                        st.sampled_from([0, 1, 2, 3, 32, 0x1000, 0x9000, 0xA0000, 0x100000,
                                                         0x7FFFFFFF, 0xFFFFFFFF, len(raw)])))
            if off + 4 <= len(raw):
                struct.pack_into("<I", raw, off, value)
        elif op == "byte" and raw:
            raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
        elif op == "truncate":
            del raw[data.draw(st.integers(0, len(raw))):]
        elif op == "insert":
            pos = data.draw(st.integers(0, len(raw)))
            raw[pos:pos] = data.draw(st.binary(min_size=1, max_size=16))
    # Keep the Multiboot checksum valid half of the time so the deeper checks run.
    mh = bytes(raw).find(struct.pack("<I", MB_MAGIC))
    if mh >= 0 and mh % 4 == 0 and mh + 12 <= len(raw) and data.draw(st.booleans()):
        flags, = struct.unpack_from("<I", raw, mh + 4)
        struct.pack_into("<I", raw, mh + 8, (-(MB_MAGIC + flags)) & 0xFFFFFFFF)
    outcome(bytes(raw), ram)


# --------------------------------------------------------------------------- against QEMU

PROBE_ASM = """
 mov [{d}], eax
 mov [{d4}], ebx
 mov esp, {stack}
 mov esi, {d}
 mov ecx, 8
 mov al, 0x52
 call dump
 mov esi, [{d4}]
 mov ecx, 88
 mov al, 0x49
 call dump
 mov ebx, [{d4}]
 mov esi, [ebx+48]
 mov ecx, [ebx+44]
 mov al, 0x4d
 call dump
 mov ebx, [{d4}]
 mov esi, [ebx+16]
 mov ecx, 128
 mov al, 0x43
 call dump
 mov ebx, [{d4}]
 mov esi, [ebx+24]
 mov ecx, [ebx+20]
 shl ecx, 4
 mov al, 0x4f
 call dump
 mov dx, 0xf4
 mov al, 0
 out dx, al
 hlt
putc:
 push edx
 mov dx, 0x3f8
 out dx, al
 pop edx
 ret
hexnib:
 and al, 15
 cmp al, 10
 jb hn1
 add al, 0x57
 jmp putc
hn1:
 add al, 0x30
 jmp putc
dump:
 call putc
 test ecx, ecx
 jz dd
dl1:
 mov al, [esi]
 mov ah, al
 shr al, 4
 call hexnib
 mov al, ah
 call hexnib
 inc esi
 dec ecx
 jnz dl1
dd:
 mov al, 10
 call putc
 ret
"""


def probe_kernel(aout: bool = False) -> bytes:
    """A Multiboot kernel that prints EAX, EBX, the info structure, memory map, command
    line and module records in hex on COM1, then exits through isa-debug-exit. ELF, or a
    flat file with an a.out-kludge header (flag 16) when ``aout``."""
    from keystone import KS_ARCH_X86, KS_MODE_32, Ks
    base = 0x200000 if aout else 0x100000
    code_at = base + (32 if aout else 12)
    enc, _ = Ks(KS_ARCH_X86, KS_MODE_32).asm(
        PROBE_ASM.format(d=base + 0x2000, d4=base + 0x2004, stack=base + 0x8000), code_at)
    if aout:
        flags = 0x10003
        hdr = struct.pack("<8I", MB_MAGIC, flags, (-(MB_MAGIC + flags)) & 0xFFFFFFFF,
                          base, base, 0, base + 0x9000, code_at)
        return hdr + bytes(enc)
    return write_elf32([Segment(base, multiboot_header(3) + bytes(enc), memsz=0x9000)], entry=code_at)


@pytest.mark.qemu
@pytest.mark.skipif(shutil.which("qemu-system-i386") is None, reason="qemu-system-i386 not installed")
@pytest.mark.parametrize("ram_mib,cmdline,modules,aout", [
    (32, "hello world  x", ["mod1.bin a1 a2", "mod2.bin"], False),
    (129, None, [], False),
    (3584, "x", ["mod2.bin"], False),
    (16, "aout", ["mod1.bin"], True),
])
def test_matches_qemu(tmp_path, monkeypatch, ram_mib, cmdline, modules, aout):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "probe.elf").write_bytes(probe_kernel(aout))
    (tmp_path / "mod1.bin").write_bytes(b"hello\n")
    (tmp_path / "mod2.bin").write_bytes(bytes((i * 13) & 0xFF for i in range(5000)))
    args = ["qemu-system-i386", "-M", "pc", "-display", "none", "-serial", "file:out.txt",
            "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04", "-m", f"{ram_mib}M", "-kernel", "probe.elf"]
    if cmdline is not None:
        args += ["-append", cmdline]
    if modules:
        args += ["-initrd", ",".join(modules)]
    subprocess.run(args, timeout=120, capture_output=True)
    lines = {l[0]: bytes.fromhex(l[1:].strip()) for l in open("out.txt") if l.strip()}

    img = load_image("probe.elf", ram_size=ram_mib * MiB, cmdline=cmdline, modules=modules)
    assert img.entry == (0x200020 if aout else 0x10000C)
    mem = Mem(img.chunks)
    eax, ebx = struct.unpack("<II", lines["R"])
    assert (eax, ebx) == (img.registers["eax"], img.registers["ebx"])
    assert lines["I"] == mem.read(ebx, 88)                     # every field, pointers included
    info = decode_mbi(mem, ebx)
    assert lines["M"] == mem.read(info["mmap_addr"], info["mmap_length"])
    assert lines["C"].split(b"\0")[0] == info["cmdline"]
    assert lines.get("O", b"") == mem.read(info["mods_addr"], 16 * info["mods_count"])


# --------------------------------------------------------------------------- odd ELF shapes

def test_empty_segment_counts_for_the_block_like_qemu():
    # Below the data: the block starts there, and the info area follows the block.
    elf = mb_elf([Segment(0x100000, b""), Segment(0x100800, b"\x90" * 0x100)], entry=0x10080C, header_in=1)
    img = load_image(elf, ram_size=32 * MiB)
    assert decode_mbi(Mem(img.chunks), 0x9500)["mods_addr"] == 0x101000
    # Above every loaded byte: QEMU fails ("Error while fetching elf kernel from rom").
    elf = mb_elf([Segment(0x100000, b"\x90" * 0x100), Segment(0x300000, b"")], entry=0x10000C)
    elf_error(elf, "empty ELF segment 1 at 0x300000", "Error while fetching elf kernel from rom")


def test_only_empty_segments():
    elf = mb_elf([Segment(0x100000, b"\x90" * 0x100)], entry=0x10000C)
    ph = phdr_offset(elf, 0)
    elf_error(with_u32(with_u32(elf, ph + 16, 0), ph + 20, 0), "every loadable segment of the image is empty")


def _many_segments(n):
    """n PT_LOAD segments plus one leading non-load header that holds the Multiboot header
    (so that it sits in the first 8 KiB despite the big program header table)."""
    segs = [Segment(0x100000 + 0x1000 * i, b"\x90" * 16, memsz=0x800) for i in range(n + 1)]
    elf = bytearray(write_elf32(segs, 0x101000))
    struct.pack_into("<III", elf, 52, MB_MAGIC, 3, (-(MB_MAGIC + 3)) & 0xFFFFFFFF)
    return bytes(elf)


def test_segment_count_limit():
    img = load_image(_many_segments(1024), ram_size=32 * MiB)
    assert len(img.chunks) == 2 * 1024 + 3
    elf_error(_many_segments(1025), "ELF has 1025 loadable segments; at most 1024 are supported")


def test_bad_section_headers_only_lose_symbols():
    elf = mb_elf([Segment(0x100000, b"\x90" * 0x40)], entry=0x10000C, symbols={"start": 0x10000C})
    assert load_image(elf, ram_size=32 * MiB).symbols == {"start": 0x10000C}
    img = load_image(with_u32(elf, 32, len(elf) + 0x100), ram_size=32 * MiB)
    assert img.symbols == {} and any("symbols ignored" in n for n in img.notes)
    assert img.entry == 0x10000C


# -- what QEMU's -kernel takes: images over the info area, headers in the BIOS area ------------

def _qemu_memory(tmp_path, elf, entry, ranges, append=None):
    boot_entry = pytest.importorskip("test_boot_entry")
    if boot_entry.QEMU is None or boot_entry.GDB is None:
        pytest.skip("needs qemu-system-i386 and gdb")
    return boot_entry.qemu_memory_at_entry(tmp_path, elf, entry, ranges, append)


def _hlt_kernel(base: int, size: int, **elf_args) -> tuple[bytes, int]:
    """A Multiboot ELF at ``base``: header, ``hlt; jmp`` at the entry, 0xcc up to ``size``."""
    entry = base + 12
    body = multiboot_header(3) + b"\xf4\xeb\xfd"
    return write_elf32([Segment(base, body + b"\xcc" * (size - len(body)))], entry, **elf_args), entry


@pytest.mark.qemu
@pytest.mark.parametrize("size", [0x2000, 0x100], ids=["covers-info", "info-tail-over-it"])
def test_image_over_the_info_area_loads_as_under_qemu(tmp_path, size):
    """An image at 0x8000 over 0x9000-0x9557: the block written after the info structure
    wins there (its bytes, its command line, its zero padding), EBX stays 0x9500."""
    elf, entry = _hlt_kernel(0x8000, size)
    img = load_image(elf, ram_size=128 * MiB, cmdline="hi", image_name=str(tmp_path / "kernel.elf"))
    assert img.registers["ebx"] == 0x9500
    ranges = [(0x8FF0, 0x10), (0x9000, 0x600), (0xA000, 0x40)]
    # The boot loader name is ours ("vmm", BOOTLOADER_NAME), QEMU's is "qemu": the one
    # string that differs by design, in the same place.
    name = BOOTLOADER_NAME.encode() + b"\0"
    ours = [Mem(img.chunks).read(a, n).replace(name + bytes(5 - len(name)), b"qemu\0") for a, n in ranges]
    assert ours == _qemu_memory(tmp_path, elf, entry, ranges, append="hi")


def test_image_over_the_info_area_runs(tmp_path):
    """kvm-unit-tests' realmode shape: a kernel from 0x4000 across 0x9000 boots and runs."""
    code = multiboot_header(3) + b"\xb0\x07\xe6\xf4"       # mov al, 7; out 0xf4, al
    elf = write_elf32([Segment(0x4000, code + b"\x90" * (0x8000 - len(code)))], 0x400C)
    from vmm.vm import VM, StopKind
    for mode in ("native", "vtx"):
        vm = VM(load_image(elf, ram_size=32 * MiB), mode=mode, ram_size=32 * MiB,
                serial_output=lambda _b: None, timeout=20)
        result = vm.run()
        assert (result.kind, result.exit_status) == (StopKind.EXIT, 7 << 1 | 1), (mode, result.message)


@pytest.mark.qemu
def test_elf_headers_in_a_first_segment_below_1mib_load(tmp_path):
    """``ld -Ttext 0x100000`` without a script: a first PT_LOAD at 0xff000 holds the ELF
    headers. QEMU writes it into the BIOS area and boots; so do we, with the same bytes."""
    elf, entry = _hlt_kernel(0x100000, 0x40, load_headers=True)
    phdr = struct.unpack_from("<8I", elf, 52)
    assert phdr[:4] == (1, 0, 0xFF000, 0xFF000)   # PT_LOAD from file offset 0 at 0xff000
    img = load_image(elf, ram_size=128 * MiB, image_name=str(tmp_path / "kernel.elf"))
    ranges = [(0xFF000, 0x80), (0x100000, 0x40), (0x101000, 0x20)]
    ours = [Mem(img.chunks).read(a, n) for a, n in ranges]
    assert ours[0][:4] == b"\x7fELF"
    assert ours == _qemu_memory(tmp_path, elf, entry, ranges)


def test_bios_area_loads_and_the_option_rom_area_does_not():
    flat = b"\x90" * 0x100
    img = load_image(flat, ram_size=8 * MiB, kind="flat", load_address=0xF0000)
    assert img.chunks == [(0xF0000, flat)]
    elf_error(flat, "legacy VGA/option-ROM hole 0xa0000-0xeffff", ram=8 * MiB, kind="flat",
              load_address=0xEFF80)
