#!/usr/bin/env python3
"""Build an initramfs (a gzip-compressed cpio "newc" archive) in pure Python.

A Linux kernel unpacks its initramfs into the root file system and runs ``/init``. This
tool writes one from any mix of:

  --root DIR             a directory tree, copied as / (files, directories, symlinks)
  --file SRC:DEST        one host file at DEST (repeatable)
  --init FILE            the program or script the kernel runs first, at /init, mode 0755
  --symlink LINK:TARGET  a symbolic link (repeatable), e.g. /bin/sh:busybox
  --busybox FILE         a static busybox at /bin/busybox, and with --applets a link
                         /bin/APPLET -> busybox for each comma-separated applet
  --dir PATH             an empty directory (repeatable), e.g. /proc
  --node PATH:TYPE:MAJOR:MINOR
                         a device node, TYPE c (character) or b (block), e.g.
                         /dev/null:c:1:3 (repeatable)

/dev/console (c 5 1) and /dev/ttyS0 (c 4 64) are always added, unless --no-default-nodes:
the kernel opens /dev/console for init's stdin/stdout before any devtmpfs is mounted.
Parent directories are created as needed. Every entry belongs to root (uid and gid 0)
and carries --mtime (default 0), and entries are written in path order, so the same
inputs give the same bytes.

``--list ARCHIVE`` prints the entries of an existing newc archive (gzip or not), like
``cpio -t``, with mode, size and link target.

Examples:
  tools/mkinitramfs.py -o initrd.gz --busybox busybox --applets sh,mount,ls,cat \\
      --init init.sh --dir /proc --dir /sys
  tools/mkinitramfs.py -o initrd.gz --root rootfs/ --file vmlinux.config:/etc/config
  tools/mkinitramfs.py --list initrd.gz
"""
from __future__ import annotations

import argparse
import gzip
import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

NEWC_MAGIC = b"070701"
#: The newc header: magic then 13 eight-digit hex fields.
NEWC_FIELDS = ("ino", "mode", "uid", "gid", "nlink", "mtime", "filesize",
               "devmajor", "devminor", "rdevmajor", "rdevminor", "namesize", "check")
NEWC_FIELD_WIDTH = 8
NEWC_HEADER_SIZE = len(NEWC_MAGIC) + NEWC_FIELD_WIDTH * len(NEWC_FIELDS)
NEWC_ALIGN = 4
TRAILER = "TRAILER!!!"
GZIP_MAGIC = b"\x1f\x8b"

MODE_DIR = stat.S_IFDIR | 0o755
MODE_EXECUTABLE = stat.S_IFREG | 0o755
MODE_SYMLINK = stat.S_IFLNK | 0o777
MODE_NODE = 0o600
NODE_TYPES = {"c": stat.S_IFCHR, "b": stat.S_IFBLK}

#: The nodes the kernel needs before user space can make its own (Linux devices.txt).
DEFAULT_NODES = (("/dev/console", "c", 5, 1), ("/dev/ttyS0", "c", 4, 64))


@dataclass(frozen=True)
class Entry:
    """One archive member: its path inside the archive (no leading /), mode and payload."""

    path: str
    mode: int
    data: bytes = b""           # file contents, or a symlink's target
    rdev: tuple[int, int] = (0, 0)

    @property
    def kind(self) -> str:
        return {stat.S_IFDIR: "d", stat.S_IFREG: "-", stat.S_IFLNK: "l",
                stat.S_IFCHR: "c", stat.S_IFBLK: "b"}.get(stat.S_IFMT(self.mode), "?")


def archive_path(path: str) -> str:
    """``/bin/sh`` -> ``bin/sh``; refuses paths that climb out of the root."""
    parts = PurePosixPath("/", path).parts[1:]
    if not parts or ".." in parts:
        raise ValueError(f"bad path in the archive: {path!r}")
    return "/".join(parts)


class Tree:
    """The archive being assembled: path -> entry; a later entry replaces an earlier one."""

    def __init__(self) -> None:
        self.entries: dict[str, Entry] = {}

    def add(self, entry: Entry) -> None:
        parent = PurePosixPath(entry.path).parent
        while str(parent) != ".":
            existing = self.entries.get(str(parent))
            if existing is not None and existing.kind != "d":
                raise ValueError(f"{parent} is not a directory, cannot hold {entry.path}")
            self.entries.setdefault(str(parent), Entry(str(parent), MODE_DIR))
            parent = parent.parent
        self.entries[entry.path] = entry

    def add_file(self, source: Path, dest: str, mode: int | None = None) -> None:
        permissions = mode if mode is not None else stat.S_IMODE(source.stat().st_mode)
        self.add(Entry(archive_path(dest), stat.S_IFREG | permissions, source.read_bytes()))

    def add_symlink(self, link: str, target: str) -> None:
        self.add(Entry(archive_path(link), MODE_SYMLINK, target.encode()))

    def add_dir(self, path: str) -> None:
        self.add(Entry(archive_path(path), MODE_DIR))

    def add_node(self, path: str, kind: str, major: int, minor: int) -> None:
        if kind not in NODE_TYPES:
            raise ValueError(f"device node type {kind!r}: c (character) or b (block)")
        self.add(Entry(archive_path(path), NODE_TYPES[kind] | MODE_NODE, rdev=(major, minor)))

    def add_root(self, root: Path) -> None:
        """Everything under ``root``, as /; symlinks kept as links, other special files refused."""
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in [*dirnames, *sorted(filenames)]:
                source = Path(dirpath, name)
                dest = source.relative_to(root).as_posix()
                if source.is_symlink():
                    self.add_symlink(dest, os.readlink(source))
                elif source.is_dir():
                    self.add(Entry(archive_path(dest), stat.S_IFDIR | stat.S_IMODE(source.stat().st_mode)))
                elif source.is_file():
                    self.add_file(source, dest)
                else:
                    raise ValueError(f"{source}: not a file, directory or symlink (use --node)")


def newc_member(entry: Entry, ino: int, mtime: int) -> bytes:
    """One header + name + data, each padded to 4 bytes, as the kernel's unpacker reads them."""
    name = entry.path.encode() + b"\0"
    values = {"ino": ino, "mode": entry.mode, "uid": 0, "gid": 0,
              "nlink": 2 if entry.kind == "d" else 1, "mtime": mtime, "filesize": len(entry.data),
              "devmajor": 0, "devminor": 0, "rdevmajor": entry.rdev[0], "rdevminor": entry.rdev[1],
              "namesize": len(name), "check": 0}
    header = NEWC_MAGIC + b"".join(b"%08X" % values[f] for f in NEWC_FIELDS)
    return _pad(header + name) + _pad(entry.data)


def _pad(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % NEWC_ALIGN)


def write_newc(entries: list[Entry], mtime: int = 0) -> bytes:
    """The archive: members in the given order, then the trailer."""
    members = [newc_member(e, ino, mtime) for ino, e in enumerate(entries, start=1)]
    return b"".join(members) + newc_member(Entry(TRAILER, 0), 0, 0)


def read_newc(archive: bytes) -> list[Entry]:
    """The entries of a newc archive (gunzipped first if it is gzip), without the trailer."""
    if archive[:len(GZIP_MAGIC)] == GZIP_MAGIC:
        archive = gzip.decompress(archive)
    entries: list[Entry] = []
    offset = 0
    while True:
        if archive[offset:offset + len(NEWC_MAGIC)] != NEWC_MAGIC:
            raise ValueError(f"no newc header at offset {offset}")
        fields = {f: int(archive[offset + len(NEWC_MAGIC) + i * NEWC_FIELD_WIDTH:][:NEWC_FIELD_WIDTH], 16)
                  for i, f in enumerate(NEWC_FIELDS)}
        name_start = offset + NEWC_HEADER_SIZE
        name = archive[name_start:name_start + fields["namesize"] - 1].decode()
        data_start = name_start + fields["namesize"] + (-(NEWC_HEADER_SIZE + fields["namesize"]) % NEWC_ALIGN)
        data = archive[data_start:data_start + fields["filesize"]]
        offset = data_start + fields["filesize"] + (-fields["filesize"] % NEWC_ALIGN)
        if name == TRAILER:
            return entries
        entries.append(Entry(name, fields["mode"], data, (fields["rdevmajor"], fields["rdevminor"])))


def _pair(text: str, what: str) -> tuple[str, str]:
    left, sep, right = text.partition(":")
    if not sep or not left or not right:
        raise ValueError(f"{what} {text!r}: expected A:B")
    return left, right


def build(args: argparse.Namespace) -> bytes:
    tree = Tree()
    if args.root:
        tree.add_root(args.root)
    for spec in args.file:
        source, dest = _pair(spec, "--file")
        tree.add_file(Path(source), dest)
    if args.busybox:
        tree.add_file(args.busybox, "/bin/busybox", mode=0o755)
        for applet in filter(None, (a.strip() for a in args.applets.split(","))):
            tree.add_symlink(f"/bin/{applet}", "busybox")
    elif args.applets:
        raise ValueError("--applets goes with --busybox FILE")
    for spec in args.symlink:
        tree.add_symlink(*_pair(spec, "--symlink"))
    for path in args.dir:
        tree.add_dir(path)
    nodes = [] if args.no_default_nodes else list(DEFAULT_NODES)
    for spec in args.node:
        path, _, rest = spec.partition(":")
        try:
            kind, major, minor = rest.split(":")
            nodes.append((path, kind, int(major, 0), int(minor, 0)))
        except ValueError:
            raise ValueError(f"--node {spec!r}: expected PATH:TYPE:MAJOR:MINOR, e.g. /dev/null:c:1:3") from None
    for node in nodes:
        tree.add_node(*node)
    if args.init:
        tree.add_file(args.init, "/init", mode=0o755)
    entries = [tree.entries[p] for p in sorted(tree.entries)]
    archive = write_newc(entries, mtime=args.mtime)
    return archive if args.no_gzip else gzip.compress(archive, mtime=0)


def listing(archive: bytes) -> str:
    lines = []
    for e in read_newc(archive):
        size = f"{e.rdev[0]},{e.rdev[1]}" if e.kind in "cb" else str(len(e.data))
        target = f" -> {e.data.decode()}" if e.kind == "l" else ""
        lines.append(f"{stat.filemode(e.mode)} {size:>9} {e.path}{target}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="mkinitramfs.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-o", "--output", type=Path, metavar="FILE", help="where to write the archive")
    parser.add_argument("--list", type=Path, metavar="ARCHIVE", help="print an archive's entries instead")
    parser.add_argument("--root", type=Path, metavar="DIR", help="a directory tree to copy as /")
    parser.add_argument("--file", action="append", default=[], metavar="SRC:DEST")
    parser.add_argument("--init", type=Path, metavar="FILE", help="installed as /init, mode 0755")
    parser.add_argument("--symlink", action="append", default=[], metavar="LINK:TARGET")
    parser.add_argument("--busybox", type=Path, metavar="FILE", help="installed as /bin/busybox")
    parser.add_argument("--applets", default="", metavar="A,B,...",
                        help="with --busybox: links /bin/A -> busybox, ...")
    parser.add_argument("--dir", action="append", default=[], metavar="PATH")
    parser.add_argument("--node", action="append", default=[], metavar="PATH:TYPE:MAJOR:MINOR")
    parser.add_argument("--no-default-nodes", action="store_true",
                        help="leave out /dev/console and /dev/ttyS0")
    parser.add_argument("--mtime", type=int, default=0, metavar="SECONDS",
                        help="every entry's modification time (default: 0)")
    parser.add_argument("--no-gzip", action="store_true", help="write the bare cpio archive")
    args = parser.parse_args(argv)
    if (args.output is None) == (args.list is None):
        parser.error("give -o FILE to build an archive, or --list ARCHIVE to read one")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.list:
            print(listing(args.list.read_bytes()))
            return 0
        archive = build(args)
    except (OSError, ValueError) as err:
        print(f"mkinitramfs: {err}", file=sys.stderr)
        return 2
    args.output.write_bytes(archive)
    return 0


if __name__ == "__main__":
    sys.exit(main())
