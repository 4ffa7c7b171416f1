"""Differential check: every built-in guest under QEMU against its golden transcript.

QEMU is the reference machine: each guest's ``guests/<name>.expected`` holds exactly the
bytes QEMU's serial port printed, and the catalog records QEMU's exit status. Our own
engine must reproduce both.

To regenerate the transcripts after changing a guest (review the diff before committing!):

    VMM_UPDATE_GOLDEN=1 python -m pytest tests/test_qemu_guests.py -q
"""
from __future__ import annotations

import os
import subprocess
import textwrap

import pytest

from tools.machines import STATUS_ONLY_GUESTS, qemu_binary, qemu_command
from vmm.build.guests import build_guest, list_guests

QEMU = qemu_binary("i386")
UPDATE = os.environ.get("VMM_UPDATE_GOLDEN") == "1"
TIMEOUT = 30

pytestmark = [
    pytest.mark.qemu,
    pytest.mark.skipif(QEMU is None, reason="qemu-system-i386 is not on PATH "
                       "(Debian/Ubuntu: apt-get install qemu-system-x86)"),
]


def run_qemu(elf: bytes, tmp_path) -> tuple[bytes, int, bytes]:
    """Boot ``elf``; return (serial bytes, exit status, stderr)."""
    kernel = tmp_path / "guest.elf"
    kernel.write_bytes(elf)
    try:
        proc = subprocess.run(qemu_command(str(kernel)), check=False, stdin=subprocess.DEVNULL,
                              capture_output=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"qemu did not exit within {TIMEOUT} s; serial so far:\n"
                    f"{(e.stdout or b'').decode(errors='replace')}")
    return proc.stdout, proc.returncode, proc.stderr


STATUS_ONLY = STATUS_ONLY_GUESTS  # shared with tools/qemu_diff.py


@pytest.mark.parametrize("guest", [g for g in list_guests() if g.name not in STATUS_ONLY],
                         ids=lambda g: g.name)
def test_guest_matches_golden_transcript(guest, tmp_path):
    built = build_guest(guest.name)
    out, status, err = run_qemu(built.elf, tmp_path)
    if UPDATE and status == guest.exit_status:
        guest.expected_path.write_bytes(out)
    assert guest.expected_path.is_file(), f"no golden transcript {guest.expected_path}"
    # Compare as text first for a readable diff, then the exact bytes.
    assert out.decode("latin-1") == guest.expected_output().decode("latin-1"), err.decode(errors="replace")
    assert out == guest.expected_output()
    assert status == guest.exit_status, f"qemu exit status {status}, stderr: {err!r}"


@pytest.mark.parametrize("guest", [g for g in list_guests() if g.name in STATUS_ONLY],
                         ids=lambda g: f"{g.name}-status-only")
def test_guest_boots_and_exits_under_qemu(guest, tmp_path):
    """Transcript not compared (see STATUS_ONLY); the exit status is."""
    out, status, err = run_qemu(build_guest(guest.name).elf, tmp_path)
    assert status == guest.exit_status, (f"qemu exit status {status} ({STATUS_ONLY[guest.name]}: "
                                         f"output not compared), serial:\n{out.decode('latin-1')}\n"
                                         f"stderr: {err!r}")


def test_default_handler_reports_and_fails(tmp_path):
    """An exception nobody handles: the runtime prints the frame and exits with EXIT_FAIL."""
    src = tmp_path / "crash.s"
    src.write_text(textwrap.dedent("""\
        %include "kernel.inc"
        kmain:
            PRINT "about to fault\\n"
        crash_site:
            mov eax, 0x0ff8
            mov ss, eax                 // selector beyond the GDT limit: #GP(0x0ff8)
            PRINT "not reached\\n"
            ret
        %include "kernel_bss.inc"
        """))
    built = build_guest(str(src), use_cache=False)
    out, status, _err = run_qemu(built.elf, tmp_path)
    eip = built.symbols["crash_site"] + 5  # after the 5-byte mov eax, imm32
    assert out == (b"about to fault\n\n*** unhandled vector 13 (#GP) error=0x00000ff8 "
                   b"EIP=0x%08x CS=0x0008\n" % eip)
    assert status == (0x7F << 1) | 1
