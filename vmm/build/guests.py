"""The built-in guest kernels: catalog, build, cache.

Each guest is ``guests/<name>.s`` (assembled by :mod:`vmm.build.asm` with the includes
of ``guests/include``) plus its golden serial transcript ``guests/<name>.expected``.
Images are Multiboot v1 ELF32 files loaded at 1 MiB with the Multiboot header first::

    >>> from vmm.build.guests import list_guests, build_guest
    >>> [g.name for g in list_guests()]
    ['hello', 'pmode', 'paging', 'user', 'timer', 'exits', 'popek', 'smc', 'nanobench', 'macrobench']
    >>> g = build_guest("hello")
    >>> hex(g.entry), hex(g.load_address), len(g.flat) >= len(g.elf) // 4
    ('0x10000c', '0x100000', True)

Builds are cached under ``guests/.build/`` (an installed package: the user's cache
folder, ``$XDG_CACHE_HOME/vmm/guests``): the key is a hash of the guest source, every
include file, the flavour and the build tool sources, so a cached image is used only
when nothing it was made from has changed.

``guests/`` at the top of the repository is the one copy of the sources. A wheel ships
it as ``vmm/guests/`` (pyproject.toml maps the package ``vmm.guests`` onto that folder),
so an installed ``vmm`` boots the same guests as a checkout.

``python -m vmm.build.guests`` lists the catalog; ``python -m vmm.build.guests NAME -o
FILE`` writes an image (try ``qemu-system-i386 -kernel FILE -serial stdio ...``).
"""
from __future__ import annotations

import hashlib
import inspect
import json
import os
import re
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from . import asm, elf

__all__ = ["GuestInfo", "BuiltGuest", "list_guests", "get_guest", "build_guest",
           "guest_source_dir", "LOAD_ADDRESS", "FLAVOURS"]

LOAD_ADDRESS = 0x00100000
#: Flavours the pvops layer implements today (guests/include/pvops.inc).
FLAVOURS = ("native", "pv")
_CACHE_FORMAT = 1


def _packaged_dir() -> Path:
    """Where a wheel puts the guest sources: ``vmm/guests/`` inside the installed package."""
    return Path(__file__).resolve().parents[1] / "guests"


def guest_source_dir() -> Path:
    """The guest sources: ``vmm/guests/`` of an installed package, else the ``guests/``
    folder at the repository root (next to ``vmm/``) of a checkout."""
    packaged = _packaged_dir()
    if (packaged / "include").is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "guests"


def _include_dir() -> Path:
    return guest_source_dir() / "include"


def _cache_dir() -> Path:
    """``guests/.build`` of a checkout; the user's cache folder for an installed package,
    whose site-packages folder is nobody's to write in."""
    source = guest_source_dir()
    if source != _packaged_dir():
        return source / ".build"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "vmm" / "guests"


def exit_status(value: int) -> int:
    """The exit status of QEMU after ``out 0xf4`` of ``value`` (isa-debug-exit)."""
    return ((value << 1) | 1) & 0xFF


@dataclass(frozen=True)
class GuestInfo:
    """One catalog entry: ``exit_status`` is the expected process exit status of
    ``qemu-system-i386`` (isa-debug-exit: ``(value << 1) | 1``)."""

    name: str
    description: str
    exit_status: int
    expected_path: Path

    @property
    def expected_status(self) -> int:
        """Alias of :attr:`exit_status`."""
        return self.exit_status

    @property
    def source_path(self) -> Path:
        return guest_source_dir() / f"{self.name}.s"

    def expected_output(self) -> bytes:
        """The golden serial transcript (exact bytes)."""
        return self.expected_path.read_bytes()


@dataclass(frozen=True)
class BuiltGuest:
    """An assembled guest. ``flat`` is the memory image from ``load_address`` to the end
    of the zero-filled area; ``elf`` stores it without the trailing zeroes."""

    name: str
    flavour: str
    elf: bytes
    symbols: dict[str, int]
    entry: int
    load_address: int
    flat: bytes
    cache_path: Path | None = field(default=None, compare=False)

    def write_elf(self, path) -> Path:
        p = Path(path)
        p.write_bytes(self.elf)
        return p


_DESCRIPTIONS = [
    ("hello", "boot, print over the 16550 UART, exit through isa-debug-exit", 0),
    ("pmode", "own GDT and IDT; #DE, #BP, #UD, #GP handlers that recover and continue", 0),
    ("paging", "2-level paging: identity + higher half, demand #PF, INVLPG, CR3 reload, PSE", 0),
    ("user", "ring-3 tasks via IRET, int 0x80 system calls (DPL-3 trap gate), #GP from cli", 0),
    ("timer", "8259 PIC remap, PIT mode 2 at 100 Hz, 10 IRQ0 ticks with sti;hlt and EOI", 0),
    ("exits", "one of each VM-exit-causing operation (CPUID, I/O, MSR, CR, INVLPG, RDTSC, DR, "
              "SGDT/STR, #BP/#UD, VMCALL, HLT + IRQ0) and what it returned", 0),
    ("popek", "Popek & Goldberg: each sensitive-but-unprivileged x86 instruction (PUSHF, POPF, "
              "SGDT, SMSW, LAR, far CALL, INT n...) checked against its CPL-0 result", 0),
    ("smc", "self-modifying code: a function patched in place and called again (bt invalidates "
            "its translations)", 0),
    ("nanobench", "nanobenchmarks (Adams & Agesen: syscall, in, cr8wr, callret, pgfault, divzero, "
                  "ptemod; kvm-unit-tests vmexit rows), one loop picked by the command line", 0),
    ("macrobench", "macro workloads (forkwait, compute, iobound, tlbmiss), one loop picked by the "
                   "command line", 0),
]


def list_guests() -> list[GuestInfo]:
    """The built-in guests, in teaching order."""
    d = guest_source_dir()
    return [GuestInfo(n, desc, exit_status(v), d / f"{n}.expected") for n, desc, v in _DESCRIPTIONS]


def get_guest(name: str) -> GuestInfo:
    for g in list_guests():
        if g.name == name:
            return g
    raise KeyError(f"no built-in guest {name!r} (have: {', '.join(g.name for g in list_guests())})")


# --------------------------------------------------------------------------------------

def _source_key(source: Path, flavour: str) -> str:
    """Hash of everything an image is made from."""
    h = hashlib.sha256()

    def add(tag: str, data: bytes) -> None:
        h.update(tag.encode() + b"\0" + len(data).to_bytes(8, "little") + data)

    add("format", str(_CACHE_FORMAT).encode())
    add("flavour", flavour.encode())
    add("source", source.read_bytes())
    inc = _include_dir()
    for p in sorted(inc.rglob("*")) if inc.is_dir() else []:
        if p.is_file():
            add("include:" + p.relative_to(inc).as_posix(), p.read_bytes())
    for mod in (asm, elf):
        add("tool:" + mod.__name__, Path(inspect.getfile(mod)).read_bytes())
    add("tool:guests", Path(__file__).read_bytes())
    try:
        import keystone
        add("keystone", str(getattr(keystone, "__version__", "")).encode())
    except ImportError:  # pragma: no cover - keystone is a dependency
        pass
    return h.hexdigest()


_memo: dict[tuple[str, str, str], BuiltGuest] = {}


def _flat_from_elf(data: bytes) -> tuple[int, bytes]:
    """(load address, memory image) of a single-PT_LOAD ELF written by :mod:`elf`."""
    phoff, = struct.unpack_from("<I", data, 28)
    _t, off, vaddr, paddr, filesz, memsz, _f, _a = struct.unpack_from("<IIIIIIII", data, phoff)
    return paddr, data[off:off + filesz] + bytes(memsz - filesz)


def _check_image(flat: bytes, name: str) -> None:
    magic, flags, checksum = struct.unpack_from("<III", flat, 0)
    if magic != elf.MULTIBOOT_MAGIC or (magic + flags + checksum) & 0xFFFFFFFF:
        raise asm.AsmError(f"guest {name}: no valid Multiboot header at the start of the image "
                           "(%include \"kernel.inc\" first)")


def build_guest(name: str, flavour: str = "native", *, use_cache: bool = True) -> BuiltGuest:
    """Assemble ``guests/<name>.s`` for ``flavour`` (cached; see module docstring).

    ``name`` may also be a path to a ``.s`` file outside the catalog. Raises
    :class:`vmm.build.asm.AsmError` on source errors.
    """
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", flavour):
        raise ValueError(f"bad flavour name {flavour!r}")
    source = Path(name) if name.endswith(".s") else guest_source_dir() / f"{name}.s"
    if not source.is_file():
        raise KeyError(f"no guest source {source}")
    gname = source.stem
    key = _source_key(source, flavour)
    memo_key = (str(source.resolve()), flavour, key)
    if use_cache and memo_key in _memo:
        return _memo[memo_key]

    cache = _cache_dir()
    elf_path = cache / f"{gname}-{flavour}-{key[:20]}.elf"
    meta_path = elf_path.with_suffix(".json")
    if use_cache and elf_path.is_file() and meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
            if meta.get("key") == key:
                data = elf_path.read_bytes()
                load, flat = _flat_from_elf(data)
                built = BuiltGuest(gname, flavour, data, dict(meta["symbols"]), meta["entry"],
                                   load, flat, elf_path)
                _memo[memo_key] = built
                return built
        except (OSError, ValueError, KeyError, struct.error):
            pass  # unreadable cache entry: rebuild

    out = asm.assemble_file(source, LOAD_ADDRESS, include_dirs=[_include_dir()],
                            defines={f"FLAVOUR_{flavour.upper()}": "1"})
    flat = out.code
    _check_image(flat, gname)
    if "_start" not in out.symbols:
        raise asm.AsmError(f"guest {gname}: no _start label", str(source))
    entry = out.symbols["_start"]
    stored = flat.rstrip(b"\0")  # the zero-filled tail becomes p_memsz - p_filesz
    notes = []
    if "xen_notes" in out.symbols:  # the pv flavour's Xen ELF notes (guests/include/xen.inc)
        notes = [(out.symbols["xen_notes"], out.symbols["xen_notes_end"] - out.symbols["xen_notes"])]
    data = elf.write_elf32([elf.Segment(LOAD_ADDRESS, stored, memsz=len(flat))], entry, out.symbols, notes)
    built = BuiltGuest(gname, flavour, data, dict(out.symbols), entry, LOAD_ADDRESS, flat)

    if use_cache:
        try:
            cache.mkdir(parents=True, exist_ok=True)
            for old in cache.glob(f"{gname}-{flavour}-*"):
                old.unlink(missing_ok=True)  # stale builds of this guest
            _atomic_write(elf_path, data)
            _atomic_write(meta_path, json.dumps({"key": key, "entry": entry,
                                                 "symbols": out.symbols}, indent=0).encode())
            built = BuiltGuest(gname, flavour, data, dict(out.symbols), entry, LOAD_ADDRESS, flat,
                               elf_path)
        except OSError:
            pass  # read-only checkout: still return the build
        _memo[memo_key] = built
    return built


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m vmm.build.guests", description=__doc__.split("\n")[0])
    ap.add_argument("name", nargs="?", help="guest to build (omit to list the catalog)")
    ap.add_argument("-o", "--output", help="write the ELF image here")
    ap.add_argument("--flavour", default="native")
    ap.add_argument("--symbols", action="store_true", help="print the symbol table")
    args = ap.parse_args(argv)
    if not args.name:
        for g in list_guests():
            print(f"{g.name:8} exit {g.exit_status:3}  {g.description}")
        return 0
    try:
        built = build_guest(args.name, args.flavour)
    except asm.AsmError as e:
        print(f"error: {e}")
        return 1
    print(f"{built.name} ({built.flavour}): entry {built.entry:#x}, {len(built.flat)} bytes in memory, "
          f"ELF {len(built.elf)} bytes")
    if args.symbols:
        for sym, addr in sorted(built.symbols.items(), key=lambda kv: kv[1]):
            print(f"  {addr:08x} {sym}")
    if args.output:
        built.write_elf(args.output)
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
