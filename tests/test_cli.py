"""The command line: bad input gives one line and status 2; runs give the guest's status."""
from __future__ import annotations

import struct

import pytest

from vmm.build.guests import build_guest

from conftest import assemble, run_cli


@pytest.fixture(scope="module")
def hello_elf() -> bytes:
    return build_guest("hello").elf


def _one_line_error(proc, fragment: str) -> None:
    err = proc.stderr.decode()
    assert proc.returncode == 2, err
    assert "Traceback" not in err
    assert err.count("\n") == 1 and err.startswith("vmm: error: "), err
    assert fragment in err, err


def test_missing_file(tmp_path):
    _one_line_error(run_cli("run", str(tmp_path / "nope.elf")), "image file not found")


def test_not_an_elf(tmp_path):
    path = tmp_path / "junk.bin"
    path.write_bytes(b"definitely not an image" * 20)
    _one_line_error(run_cli("run", str(path)), "unrecognised image")


def test_truncated_elf(tmp_path, hello_elf):
    path = tmp_path / "cut.elf"
    path.write_bytes(hello_elf[:4200])  # headers intact, segment data cut short
    _one_line_error(run_cli("run", str(path)), "truncated")


def test_elf_without_multiboot_header(tmp_path, hello_elf):
    data = bytearray(hello_elf)
    at = data.find(struct.pack("<I", 0x1BADB002))
    data[at:at + 4] = bytes(4)
    path = tmp_path / "nomb.elf"
    path.write_bytes(bytes(data))
    _one_line_error(run_cli("run", str(path)), "no Multiboot header")


def test_segment_outside_guest_ram(tmp_path, hello_elf):
    data = bytearray(hello_elf)
    phoff = struct.unpack_from("<I", data, 28)[0]
    struct.pack_into("<II", data, phoff + 8, 0x7F000000, 0x7F000000)  # p_vaddr, p_paddr
    path = tmp_path / "far.elf"
    path.write_bytes(bytes(data))
    _one_line_error(run_cli("run", str(path)), "outside guest RAM")


def test_image_larger_than_ram(tmp_path):
    path = tmp_path / "big.bin"
    path.write_bytes(bytes(3 << 20))
    _one_line_error(run_cli("run", str(path), "--kind", "flat", "--load-address", "0x100000", "--ram", "2"),
                    "larger than guest RAM")


def test_unknown_guest_for_build(tmp_path):
    _one_line_error(run_cli("build", "nosuchguest", "-o", str(tmp_path / "x.elf")), "no built-in guest")


def test_run_builtin_guest_prints_serial_and_exits_with_its_status():
    proc = run_cli("run", "hello")
    assert proc.returncode == 1  # the guest writes 0 to isa-debug-exit: (0 << 1) | 1
    assert proc.stdout.startswith(b"Hello from the vmm 'hello' guest!")
    assert proc.stderr == b""


def test_run_reports_stop_reason(tmp_path):
    path = tmp_path / "spin.bin"
    path.write_bytes(assemble("spin: jmp spin"))
    proc = run_cli("run", str(path), "--kind", "flat", "--load-address", "0x100000",
                   "--max-instructions", "5000")
    assert proc.returncode == 1
    assert b"instruction budget exhausted" in proc.stderr and b"Traceback" not in proc.stderr


def test_build_writes_an_elf_that_boots(tmp_path):
    out = tmp_path / "hello.elf"
    proc = run_cli("build", "hello", "-o", str(out))
    assert proc.returncode == 0
    assert out.read_bytes()[:4] == b"\x7fELF"
    assert run_cli("run", str(out)).returncode == 1


def test_guests_lists_every_builtin():
    proc = run_cli("guests")
    assert proc.returncode == 0
    for name in ("hello", "pmode", "paging", "user", "timer"):
        assert name.encode() in proc.stdout


def test_help_explains_options():
    proc = run_cli("run", "--help")
    assert proc.returncode == 0
    for option in (b"--mode", b"--max-instructions", b"--timeout", b"--cmdline", b"--module"):
        assert option in proc.stdout


def test_build_a_pv_kernel_and_boot_it_from_the_file(tmp_path):
    elf = tmp_path / "hello-pv.elf"
    assert run_cli("build", "hello", "--flavour", "pv", "-o", str(elf)).returncode == 0
    booted = run_cli("run", str(elf), "--mode", "pv")
    assert booted.returncode == 1 and booted.stdout.startswith(b"Hello from the vmm 'hello' guest!")
    wrong = run_cli("run", str(elf))
    assert wrong.returncode == 2 and b"is a Xen PV kernel" in wrong.stderr and b"--mode pv" in wrong.stderr
