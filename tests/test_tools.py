"""The command-line helpers in tools/: each run for real, as a user runs it.

The suite runner is fed tiny Multiboot guests assembled here, each printing a SUMMARY
line and leaving through isa-debug-exit with one of the verdict codes (or hanging, or
triple-faulting), so every verdict it can give is seen under QEMU and under vmm.
"""
from __future__ import annotations

import gzip
import json
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tools.machines import qemu_binary, qemu_command
from vmm.build.guests import build_guest

TOOLS = Path(__file__).resolve().parent.parent / "tools"
SCRIPTS = ("qemu_diff.py", "suite_runner.py", "mkinitramfs.py", "bench_vs_qemu.py")

needs_qemu = [pytest.mark.qemu,
              pytest.mark.skipif(qemu_binary("i386") is None, reason="qemu-system-i386 is not on PATH")]


def run_tool(script: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TOOLS / script), *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, check=False)


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_tool_explains_itself(script):
    proc = run_tool(script, "--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"usage: {script}")
    assert "Examples:" in proc.stdout


def test_qemu_tests_share_the_reference_board():
    """The golden transcripts' board: the one qemu_diff boots, nothing more."""
    command = qemu_command("guest.elf")
    assert command[1:] == ["-kernel", "guest.elf", "-serial", "stdio",
                           "-device", "isa-debug-exit,iobase=0xf4,iosize=0x4",
                           "-display", "none", "-no-reboot", "-nodefaults"]


# -- qemu_diff ---------------------------------------------------------------------------

class TestQemuDiff:
    pytestmark = needs_qemu

    def test_a_guest_matches_in_every_mode_that_shows_qemus_machine(self):
        proc = run_tool("qemu_diff.py", "hello", "--modes", "native,vtx-ept")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        rows = [line.split() for line in proc.stdout.splitlines()[2:]]
        assert [r[:3] + r[5:6] for r in rows] == [["hello", "qemu-system-i386", "1", "reference"],
                                                  ["hello", "native", "1", "match"],
                                                  ["hello", "vtx-ept", "1", "match"]]

    def test_a_difference_is_shown_and_fails(self):
        """trap runs the kernel at CPL 1, which hello prints: the transcripts part at line 4."""
        proc = run_tool("qemu_diff.py", "hello", "--modes", "trap")
        assert proc.returncode == 1
        assert "DIFF" in proc.stdout
        assert "line 4: QEMU 'running at CPL 0 with CS=0x0008" in proc.stdout
        assert "hello/trap" in proc.stderr

    def test_status_only_guests_compare_statuses(self):
        proc = run_tool("qemu_diff.py", "exits", "--modes", "native")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "status only: prints the CPU's own CPUID answers" in proc.stdout

    def test_an_image_file(self, tmp_path):
        """A triple fault is one outcome in both, though QEMU exits 0 and vmm 1."""
        image = tmp_path / "crash.elf"
        image.write_bytes(build_guest(str(write_source(tmp_path, "crash", CRASH)), use_cache=False).elf)
        proc = run_tool("qemu_diff.py", image, "--modes", "native,bt")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert proc.stdout.count(" match      both stopped by a triple fault") == 2
        assert f"{image}  qemu-system-i386  0 " in proc.stdout    # a triple fault under -no-reboot

    def test_a_guest_vmm_stops_never_matches(self, tmp_path):
        """Both exit 1, but vmm stopped the guest at a page table QEMU reads from a device: a difference."""
        image = tmp_path / "stray.elf"
        image.write_bytes(build_guest(str(write_source(tmp_path, "stray", STRAY)), use_cache=False).elf)
        proc = run_tool("qemu_diff.py", image, "--modes", "native", "--status-only")
        assert proc.returncode == 1
        assert "DIFF       vmm stopped it: stopped by the VMM: read of 4 bytes at physical" in proc.stdout

    def test_an_unknown_guest_is_bad_input(self):
        proc = run_tool("qemu_diff.py", "no-such-guest")
        assert proc.returncode == 2
        assert "no-such-guest" in proc.stderr


# -- suite_runner ------------------------------------------------------------------------

def suite_test(summary: str, exit_value: int) -> str:
    return f"""\
%include "kernel.inc"
kmain:
    PRINT "running\\n"
    PRINT "SUMMARY: {summary}\\n"
    EXIT {exit_value}
%include "kernel_bss.inc"
"""


HANG = """\
%include "kernel.inc"
kmain:
    PRINT "SUMMARY: 1 tests\\n"
    cli
spin:
    jmp spin
%include "kernel_bss.inc"
"""

CRASH = """\
%include "kernel.inc"
kmain:
    PRINT "about to triple fault\\n"
    LIDT_M null_idtr                // no IDT at all: #UD -> #GP -> #DF -> shutdown
    ud2
null_idtr:
    .word 0
    .long 0
%include "kernel_bss.inc"
"""

GARBLE = """\
%include "kernel.inc"
kmain:
    PRINT "ok\\n"
    mov al, 0xff                    // not text: the table shows '?' for it
    call putc
    mov al, 0x01
    call putc
    PRINT "=end\\n"
    EXIT 2
%include "kernel_bss.inc"
"""

STRAY = """\
%include "kernel.inc"
kmain:
    // QEMU reads the table from the APIC registers (not present: a #PF, handled); vmm stops
    PRINT "a page table in the local APIC's page\\n"
    SET_HANDLER 14, pf_handler
    mov dword ptr [pd], 0x83
    mov dword ptr [pd + 4], 0xfee00003
    lea eax, [pd]
    mov cr3, eax
    mov eax, cr4
    or eax, 0x10
    mov cr4, eax
    mov eax, cr0
    or eax, 0x80000000
    mov cr0, eax
    mov eax, dword ptr [0x400000]
    ret
pf_handler:
    PRINT "SUMMARY: 1 tests\\n"
    EXIT 0
.align 4096
pd:
    .space 4096
%include "kernel_bss.inc"
"""

#: name -> source; isa-debug-exit value 0 is status 1 (PASS), 38 is 77 (SKIP), 1 is 3 (FAIL).
SUITE = {
    "passes": suite_test("3 tests", 0),
    "skips": suite_test("2 tests, 2 skipped", 38),
    "fails": suite_test("4 tests, 1 unexpected failures", 1),
    "crashes": CRASH,
    "garbles": GARBLE,
}


def write_source(directory: Path, name: str, source: str) -> Path:
    path = directory / f"{name}.s"
    path.write_text(source)
    return path


@pytest.fixture(scope="module")
def suite(tmp_path_factory) -> Path:
    """A directory of built images, as a suite's build leaves them (plus a non-test file)."""
    sources = tmp_path_factory.mktemp("src")
    images = tmp_path_factory.mktemp("suite")
    for name, source in {**SUITE, "hangs": HANG, "strays": STRAY}.items():
        built = build_guest(str(write_source(sources, name, source)), use_cache=False)
        (images / f"{name}.flat").write_bytes(built.elf)
    (images / "README").write_text("not a test\n")
    return images


class TestSuiteRunner:
    pytestmark = needs_qemu

    def test_every_verdict_under_qemu_and_vmm(self, suite, tmp_path):
        out_json, out_md = tmp_path / "r.json", tmp_path / "r.md"
        only = [arg for name in SUITE for arg in ("--only", name)]
        proc = run_tool("suite_runner.py", suite, "--modes", "native,bt", "--timeout", "60", *only,
                        "--json", out_json, "--markdown", out_md)
        assert proc.returncode == 0, proc.stdout + proc.stderr   # every mode agrees with QEMU
        results = json.loads(out_json.read_text())
        assert results["columns"] == ["qemu", "native", "bt"]
        assert sorted(results["tests"]) == ["crashes", "fails", "garbles", "passes", "skips"]
        for column in results["columns"]:
            cell = {t: (r[column]["verdict"], r[column]["summary"]) for t, r in results["tests"].items()}
            assert cell["passes"] == ("PASS", "3 tests")
            assert cell["skips"] == ("SKIP", "2 tests, 2 skipped")
            assert cell["fails"] == ("FAIL", "4 tests, 1 unexpected failures")
            assert cell["crashes"][0] == "FAIL"
            assert cell["garbles"] == ("FAIL", "no SUMMARY, exit status 5: ??=end")
        assert results["tests"]["crashes"]["qemu"]["summary"] == "no SUMMARY, exit status 0: about to triple fault"
        assert results["tests"]["crashes"]["native"]["summary"].startswith("triple fault: triple fault at EIP")
        table = proc.stdout.splitlines()
        assert table[0].split() == ["test", "qemu", "native", "bt"]
        assert "PASS (3 tests)" in next(line for line in table if line.startswith("passes"))
        assert table[-1].count("1 PASS, 3 FAIL, 1 SKIP") == 3
        markdown = out_md.read_text().splitlines()
        assert markdown[0] == "| test | qemu | native | bt |"
        assert "| passes | PASS (3 tests) | PASS (3 tests) | PASS (3 tests) |" in markdown

    def test_a_hang_is_a_timeout(self, suite):
        proc = run_tool("suite_runner.py", suite, "--only", "hangs", "--timeout", "3")
        assert proc.returncode == 0, proc.stdout + proc.stderr   # QEMU timed out too
        row = next(line for line in proc.stdout.splitlines() if line.startswith("hangs"))
        assert row.split() == ["hangs", "TIMEOUT", "(1", "tests)", "TIMEOUT", "(1", "tests)"]

    def test_a_guest_vmm_stops_fails_though_its_status_is_a_pass(self, suite):
        """vmm exits 1 when it stops a guest, as QEMU does when the guest passes."""
        proc = run_tool("suite_runner.py", suite, "--only", "strays", "--modes", "native,trap")
        assert proc.returncode == 1
        row = next(line for line in proc.stdout.splitlines() if line.startswith("strays"))
        assert row.startswith("strays  PASS (1 tests)  FAIL (stopped by the VMM: read of 4 bytes at physical")
        assert row.count("FAIL (stopped by the VMM: read of 4 bytes at physical") == 2
        assert "strays/native, strays/trap" in proc.stderr

    def test_without_qemu_a_failure_fails_the_run(self, suite):
        proc = run_tool("suite_runner.py", suite, "--no-qemu", "--only", "passes", "--only", "fails")
        assert proc.returncode == 1
        assert proc.stdout.splitlines()[0].split() == ["test", "native"]
        assert "fails/native" in proc.stderr

    def test_an_empty_directory_is_bad_input(self, tmp_path):
        proc = run_tool("suite_runner.py", tmp_path)
        assert proc.returncode == 2
        assert "no *.flat files" in proc.stderr


# -- mkinitramfs -------------------------------------------------------------------------

def parse_newc(archive: bytes) -> dict[str, dict]:
    """A reader of the newc format written apart from the tool's own: a 110-byte header
    ("070701" and 13 eight-digit hex fields), the NUL-terminated name and the data, each
    padded to 4 bytes. Returns name -> fields + data."""
    fields = ("ino", "mode", "uid", "gid", "nlink", "mtime", "filesize", "devmajor", "devminor",
              "rdevmajor", "rdevminor", "namesize", "check")
    entries, offset = {}, 0
    while True:
        assert archive[offset:offset + 6] == b"070701", f"bad magic at {offset}"
        header = {f: int(archive[offset + 6 + 8 * i:offset + 14 + 8 * i], 16) for i, f in enumerate(fields)}
        name_end = offset + 110 + header["namesize"]
        assert archive[name_end - 1] == 0, "names are NUL-terminated"
        name = archive[offset + 110:name_end - 1].decode()
        data = (name_end + 3) & ~3
        assert data % 4 == 0
        header["data"] = archive[data:data + header["filesize"]]
        offset = (data + header["filesize"] + 3) & ~3
        if name == "TRAILER!!!":
            assert offset == len(archive)
            return entries
        entries[name] = header


@pytest.fixture
def initramfs_inputs(tmp_path) -> dict[str, Path]:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "motd").write_text("hello\n")
    (root / "etc" / "motd").chmod(0o644)
    (root / "lib").symlink_to("usr/lib")
    init = tmp_path / "init.sh"
    init.write_text("#!/bin/sh\nexec /bin/sh\n")
    busybox = tmp_path / "busybox"
    busybox.write_bytes(b"\x7fELF not really busybox")
    extra = tmp_path / "extra.conf"
    extra.write_bytes(b"x" * 5)     # a size that needs padding
    return {"root": root, "init": init, "busybox": busybox, "extra": extra}


def build_initramfs(inputs: dict[str, Path], output: Path, *more: str) -> subprocess.CompletedProcess:
    return run_tool("mkinitramfs.py", "-o", output, "--root", inputs["root"], "--init", inputs["init"],
                    "--busybox", inputs["busybox"], "--applets", "sh,mount,ls",
                    "--file", f"{inputs['extra']}:/etc/extra.conf", "--symlink", "/sbin/init:/init",
                    "--dir", "/proc", "--node", "/dev/null:c:1:3", *more)


def test_initramfs_holds_what_was_asked(initramfs_inputs, tmp_path):
    output = tmp_path / "initrd.gz"
    proc = build_initramfs(initramfs_inputs, output)
    assert proc.returncode == 0, proc.stderr
    entries = parse_newc(gzip.decompress(output.read_bytes()))
    assert sorted(entries) == ["bin", "bin/busybox", "bin/ls", "bin/mount", "bin/sh", "dev", "dev/console",
                               "dev/null", "dev/ttyS0", "etc", "etc/extra.conf", "etc/motd", "init", "lib",
                               "proc", "sbin", "sbin/init"]
    init = entries["init"]
    assert init["mode"] == stat.S_IFREG | 0o755 and init["data"] == b"#!/bin/sh\nexec /bin/sh\n"
    assert entries["etc/motd"]["mode"] == stat.S_IFREG | 0o644
    assert entries["etc/extra.conf"]["data"] == b"xxxxx"
    assert entries["bin/sh"]["mode"] == stat.S_IFLNK | 0o777 and entries["bin/sh"]["data"] == b"busybox"
    assert entries["lib"]["data"] == b"usr/lib" and stat.S_ISLNK(entries["lib"]["mode"])
    assert entries["sbin/init"]["data"] == b"/init"
    assert stat.S_ISDIR(entries["proc"]["mode"]) and stat.S_ISDIR(entries["bin"]["mode"])
    console, tty, null = entries["dev/console"], entries["dev/ttyS0"], entries["dev/null"]
    assert stat.S_ISCHR(console["mode"]) and (console["rdevmajor"], console["rdevminor"]) == (5, 1)
    assert stat.S_ISCHR(tty["mode"]) and (tty["rdevmajor"], tty["rdevminor"]) == (4, 64)
    assert (null["rdevmajor"], null["rdevminor"]) == (1, 3)
    assert all(e["uid"] == e["gid"] == e["mtime"] == 0 for e in entries.values())
    assert len({e["ino"] for e in entries.values()}) == len(entries)


def test_initramfs_is_reproducible_and_lists_itself(initramfs_inputs, tmp_path):
    first, second, bare = tmp_path / "a.gz", tmp_path / "b.gz", tmp_path / "c.cpio"
    assert build_initramfs(initramfs_inputs, first).returncode == 0
    assert build_initramfs(initramfs_inputs, second).returncode == 0
    assert first.read_bytes() == second.read_bytes()
    assert build_initramfs(initramfs_inputs, bare, "--no-gzip", "--no-default-nodes").returncode == 0
    assert "dev/console" not in parse_newc(bare.read_bytes())
    listing = run_tool("mkinitramfs.py", "--list", first)
    assert listing.returncode == 0, listing.stderr
    assert "lrwxrwxrwx         7 bin/sh -> busybox" in listing.stdout.splitlines()
    assert "crw-------       5,1 dev/console" in listing.stdout.splitlines()


@pytest.mark.skipif(shutil.which("cpio") is None, reason="cpio is not installed")
def test_cpio_reads_the_initramfs(initramfs_inputs, tmp_path):
    output = tmp_path / "initrd.cpio"
    assert build_initramfs(initramfs_inputs, output, "--no-gzip").returncode == 0
    names = subprocess.run(["cpio", "-t", "--quiet"], input=output.read_bytes(), capture_output=True,
                           check=True, timeout=30).stdout.decode().split()
    assert sorted(names) == sorted(parse_newc(output.read_bytes()))
    extracted = tmp_path / "out"
    extracted.mkdir()
    subprocess.run(["cpio", "-i", "--quiet", "--no-absolute-filenames", "--nonmatching", "dev/*"],
                   input=output.read_bytes(), cwd=extracted, capture_output=True, check=True, timeout=30)
    assert (extracted / "init").read_text() == "#!/bin/sh\nexec /bin/sh\n"
    assert (extracted / "bin" / "sh").is_symlink() and (extracted / "bin" / "sh").readlink() == Path("busybox")


@pytest.mark.parametrize("bad, message", [
    (("--file", "nocolon"), "expected A:B"),
    (("--node", "/dev/x:z:1:1"), "c (character) or b (block)"),
    (("--symlink", "/../etc:x"), "bad path"),
    (("--applets", "sh"), "--applets goes with --busybox"),
])
def test_initramfs_refuses_bad_specifications(tmp_path, bad, message):
    proc = run_tool("mkinitramfs.py", "-o", tmp_path / "x.gz", *bad)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert not (tmp_path / "x.gz").exists()


# -- bench_vs_qemu -----------------------------------------------------------------------

@pytest.mark.qemu
@pytest.mark.skipif(qemu_binary("i386") is None, reason="qemu-system-i386 is not on PATH")
def test_bench_vs_qemu_smoke(tmp_path):
    """One repetition of hello: the table and the JSON records, not the numbers."""
    out = tmp_path / "times.json"
    proc = run_tool("bench_vs_qemu.py", "hello", "-n", "1", "--modes", "native", "--json", out)
    assert proc.returncode == 0, proc.stderr
    records = json.loads(out.read_text())
    assert [(r["target"], r["machine"], r["runs"], r["statuses"]) for r in records] == [
        ("hello", "qemu", 1, [1]), ("hello", "native", 1, [1])]
    assert records[1]["status_matches_qemu"] and records[1]["ratio_to_qemu"] > 0
    assert proc.stdout.splitlines()[3].split()[:3] == ["hello", "native", "1"]
    assert proc.stdout.splitlines()[3].split()[5].endswith("x")
