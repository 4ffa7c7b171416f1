"""Hostile input on the host side: malformed images, bad arguments, files that cannot be read,
outputs that cannot be written. Each must give one clear line, exit status 2, and leave
nothing half-written. (tests/test_cli.py has the first cases: missing file, not an ELF,
truncated segment data, no Multiboot header, segment outside RAM, image larger than RAM.)"""
from __future__ import annotations

import os
import struct

import pytest

from conftest import one_line_error as _one_line_error
from conftest import run_cli
from conftest import usage_error as _usage_error
from vmm.build.elf import Segment, multiboot_header, write_elf32

MB = 0x100000


def _kernel(segments, entry=MB + 12) -> bytes:
    first = segments[0]
    segments = [Segment(first.paddr, multiboot_header(3) + first.data, first.memsz, first.flags)] + segments[1:]
    return write_elf32(segments, entry)


def _write(tmp_path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


IMAGES = {
    # name: (image bytes, run options, fragment of the error)
    "zero-length file": (b"", (), "file is empty"),
    "truncated ELF header": (b"\x7fELF\x01\x01\x01" + bytes(20), (), "truncated ELF header"),
    "overlapping segments": (_kernel([Segment(MB, b"\xf4" * 0x2000), Segment(MB + 0x1000, b"\x90" * 0x100)]),
                             (), "overlap"),
    "huge memsz": (_kernel([Segment(MB, b"\xf4" * 16, memsz=0xFFFFF000)]), (), "guest RAM"),
    "entry outside memory": (_kernel([Segment(MB, b"\xf4" * 16)], entry=0x7000000), (),
                             "outside every loaded segment"),
    "segment beyond RAM": (_kernel([Segment(MB, b"\xf4" * 16), Segment(0x9000000, b"\x90" * 16)]), ("--ram", "16"),
                           "guest RAM"),
    "boot sector without signature": (bytes(512), ("--kind", "bootsector"), "signature"),
    "flat image without load address": (b"\x90" * 64, ("--kind", "flat"), "needs a load address"),
    "flat image in the VGA hole": (b"\x90" * 64, ("--kind", "flat", "--load-address", "0xb8000"), "legacy"),
}


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_malformed_image_gives_one_line(tmp_path, name):
    data, options, fragment = IMAGES[name]
    _one_line_error(run_cli("run", _write(tmp_path, "image.bin", data), *options), fragment)


def test_directory_instead_of_a_file(tmp_path):
    _one_line_error(run_cli("run", str(tmp_path)), "is a directory")


def test_directory_as_module(tmp_path):
    image = _write(tmp_path, "k.elf", _kernel([Segment(MB, b"\xf4" * 16)]))
    _one_line_error(run_cli("run", image, "--module", str(tmp_path)), "is a directory")


def test_file_that_fails_to_read():
    # Readable by name, unreadable in content for every user (root included): a read of
    # /proc/self/mem at offset 0 fails with EIO.
    _one_line_error(run_cli("run", "/proc/self/mem"), "cannot read image file")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file(tmp_path):
    path = _write(tmp_path, "secret.elf", _kernel([Segment(MB, b"\xf4" * 16)]))
    os.chmod(path, 0)
    try:
        _one_line_error(run_cli("run", path), "permission denied")
    finally:
        os.chmod(path, 0o600)


@pytest.mark.parametrize("args, fragment", [
    (("run", "hello", "--ram", "0"), "--ram"),
    (("run", "hello", "--ram", "lots"), "--ram"),
    (("run", "hello", "--mode", "kvm"), "--mode"),
    (("run", "hello", "--timeout", "soon"), "--timeout"),
    (("run", "hello", "--max-instructions", "many"), "--max-instructions"),
    (("run", "x.bin", "--kind", "flat", "--load-address", "somewhere"), "--load-address"),
    (("run", "hello", "--kind", "exe"), "--kind"),
    (("run", "hello", "--no-such-option"), "--no-such-option"),
    (("run",), "IMAGE_OR_GUEST"),
])
def test_bad_arguments_are_usage_errors(args, fragment):
    _usage_error(run_cli(*args), fragment)


@pytest.mark.parametrize("args, fragment", [
    (("run", "hello", "--vmcs", "GUEST_CR0=0x80000000"), "VT-x mode"),
    (("run", "hello", "--mode", "vtx", "--vmcs", "NO_SUCH_FIELD=1"), "no such VMCS field"),
    (("run", "hello", "--mode", "vtx", "--vmcs", "VM_EXIT_REASON=1"), "read-only"),
    (("run", "hello", "--mode", "vtx", "--vmcs", "GUEST_CR0"), "expected NAME=VALUE"),
    (("run", "hello", "--mode", "vtx", "--control", "HLT_EXITING=maybe"), "on or off"),
    (("run", "hello", "--wait"), "--wait goes with --gdb"),
    (("run", "hello", "--page-walk-cache"), "vtx-ept"),
])
def test_inconsistent_options_give_one_line(args, fragment):
    _one_line_error(run_cli(*args), fragment)


def test_command_line_for_a_flat_image(tmp_path):
    path = _write(tmp_path, "blob.bin", b"\xf4" * 16)
    _one_line_error(run_cli("run", path, "--kind", "flat", "--load-address", "0x100000", "--cmdline", "x"),
                    "Multiboot kernels only")


def test_stat_json_to_an_unwritable_path_leaves_nothing(tmp_path):
    target = tmp_path / "missing-dir" / "stats.json"
    proc = run_cli("run", "hello", "--stat-json", str(target))
    _one_line_error(proc, "cannot write")
    assert not (tmp_path / "missing-dir").exists()
    assert list(tmp_path.iterdir()) == []


def test_stat_json_to_a_read_only_directory_leaves_nothing(tmp_path):
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        # root writes anywhere: make the target a directory instead, which nobody can replace
        target = tmp_path / "stats.json"
        target.mkdir()
        _usage_error(run_cli("run", "hello", "--stat-json", str(target)), "directory")
        assert list(target.iterdir()) == []
        return
    os.chmod(tmp_path, 0o500)
    try:
        _one_line_error(run_cli("run", "hello", "--stat-json", str(tmp_path / "stats.json")), "cannot write")
        assert list(tmp_path.iterdir()) == []
    finally:
        os.chmod(tmp_path, 0o700)


def test_build_to_an_unwritable_path_leaves_nothing(tmp_path):
    target = tmp_path / "no" / "hello.elf"
    _one_line_error(run_cli("build", "hello", "-o", str(target)), "cannot write")
    assert list(tmp_path.iterdir()) == []


def test_trace_to_an_unwritable_path_is_one_line(tmp_path):
    _one_line_error(run_cli("trace", "hello", "-o", str(tmp_path / "no" / "t.txt"), "--count", "3"),
                    "cannot write")


def test_serial_input_that_is_a_directory(tmp_path):
    _usage_error(run_cli("run", "hello", "--serial-input", str(tmp_path)), "--serial-input")


def test_elf_with_a_huge_program_header_count(tmp_path):
    data = bytearray(_kernel([Segment(MB, b"\xf4" * 16)]))
    struct.pack_into("<H", data, 44, 0xFFFF)          # e_phnum
    _one_line_error(run_cli("run", _write(tmp_path, "many.elf", bytes(data))), "truncated")


def test_fuzz_save_into_a_file_is_refused(tmp_path):
    path = _write(tmp_path, "not-a-dir", b"x")
    proc = run_cli("fuzz", "--harness", "vmcs", "--cases", "1", "--save", path)
    assert proc.returncode == 2, proc.stderr.decode()
    assert open(path, "rb").read() == b"x"
