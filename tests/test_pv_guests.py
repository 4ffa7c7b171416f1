"""Every built-in guest, pv flavour, in pv mode: its transcript against the checked-in
``guests/NAME.pv.expected``, and against the native golden transcript.

A PV kernel honestly differs from the native one in a few ways, and the second test
proves those are the only differences:

* its code is laid out differently (hypercalls are longer than the instructions they
  replace), so printed addresses move: each data address in the pv transcript must name
  the same symbol + offset of the pv build as the native address does in the native
  build (higher-half aliases and machine addresses, frame + 0x10000000, included); a
  code address the same label (pvops expansions between it and the label differ);
* its kernel runs in ring 1: selectors 0x08/0x10 become 0x09/0x11, "CPL 0" "CPL 1";
* per guest, lines listed in HONEST below (no Multiboot magic under the PV protocol; the
  sensitive-but-unprivileged instructions popek and exits run raw, e.g. SGDT shows the
  VMM's GDT).
"""
from __future__ import annotations

import re

import pytest

from vmm.build.guests import build_guest, get_guest, guest_source_dir, list_guests
from vmm.loader.xen import load_xen
from vmm.modes.pv import MACHINE_BASE
from vmm.vm import StopKind, VM

PV_GUESTS = [g.name for g in list_guests() if (guest_source_dir() / f"{g.name}.pv.expected").is_file()]
HONEST = {
    "hello": [r"^multiboot magic", r"^running at CPL 1 with"],
    "exits": [r"^sgdt limit="],
    "popek": [r": WRONG \(", r"^popek: \d+ of 20", r"^virtualizability: fails for"],
}
STATUS = {"popek": 3}  # popek exits with 1 (status 3) when an instruction misbehaved
SELECTORS = {0x0008: 0x0009, 0x0010: 0x0011}
_HEX = re.compile(r"0x[0-9a-f]+")


def run_pv(name: str):
    out = bytearray()
    vm = VM(load_xen(build_guest(name, "pv").elf, ram_size=128 << 20), mode="pv",
            serial_output=out.extend, timeout=60)
    return vm.run(), bytes(out)


def test_the_assigned_guests_all_have_pv_transcripts():
    assert {"hello", "pmode", "paging", "user", "timer", "exits", "popek"} <= set(PV_GUESTS)


@pytest.mark.parametrize("name", PV_GUESTS)
def test_pv_transcript(name):
    result, out = run_pv(name)
    expected = (guest_source_dir() / f"{name}.pv.expected").read_bytes()
    assert out.decode("latin-1") == expected.decode("latin-1"), result.message
    assert result.kind is StopKind.EXIT
    assert result.status == STATUS.get(name, get_guest(name).exit_status)
    assert result.events["hypercalls"]["set_trap_table"] >= 1


class Symbolizer:
    """Address -> (symbol, offset) with the symbols both builds share."""

    def __init__(self, symbols: dict[str, int], common: set[str], machine: bool):
        self.table = sorted((addr, name) for name, addr in symbols.items() if name in common)
        self.code_end = symbols["kernel_bss"]
        self.lo, self.hi = self.table[0][0], max(a for a, _ in self.table) + 0x10000
        self.machine = machine

    def in_code(self, value: int) -> bool:
        return value & 0x0FFFFFFF < self.code_end

    def __call__(self, value: int):
        address, alias = value & 0x0FFFFFFF, value & 0xF0000000  # higher-half, PSE aliases
        if self.machine and alias == MACHINE_BASE:
            alias = 0  # a machine address (pseudo-physical + MACHINE_BASE) in a pv page-table entry
        if not self.lo <= address < self.hi:
            return None
        best = max((a, n) for a, n in self.table if a <= address)
        return best[1], address - best[0], alias


def _same(native: int, pv: int, sym_n: Symbolizer, sym_p: Symbolizer) -> bool:
    if native == pv or SELECTORS.get(native) == pv:
        return True
    a, b = sym_n(native), sym_p(pv)
    if a is None or b is None:
        return False
    # Data: same symbol, same offset. Code: same label, and the offset may differ when
    # pvops macros (longer under pv) lie between the label and the printed EIP.
    return a == b or (a[0] == b[0] and a[2] == b[2] and sym_n.in_code(native) and sym_p.in_code(pv))


@pytest.mark.parametrize("name", PV_GUESTS)
def test_pv_differs_from_native_only_where_it_must(name):
    native = get_guest(name).expected_output().decode("latin-1").splitlines()
    pv = (guest_source_dir() / f"{name}.pv.expected").read_bytes().decode("latin-1").splitlines()
    nb, pb = build_guest(name), build_guest(name, "pv")
    common = set(nb.symbols) & set(pb.symbols)
    sym_n, sym_p = Symbolizer(nb.symbols, common, False), Symbolizer(pb.symbols, common, True)
    honest = [re.compile(p) for p in HONEST.get(name, [])]
    extra = [line for line in pv[len(native):]]
    assert all(any(p.search(line) for p in honest) for line in extra), extra
    unexplained = []
    for n_line, p_line in zip(native, pv):
        if n_line == p_line or any(p.search(p_line) for p in honest):
            continue
        n_hex, p_hex = _HEX.findall(n_line), _HEX.findall(p_line)
        if (_HEX.sub("#", n_line) != _HEX.sub("#", p_line) or len(n_hex) != len(p_hex)
                or not all(_same(int(a, 16), int(b, 16), sym_n, sym_p) for a, b in zip(n_hex, p_hex))):
            unexplained.append((n_line, p_line))
    assert not unexplained


def test_cli_stat_prints_the_hypercall_table(cli):
    proc = cli("run", "hello", "--mode", "pv", "--stat")
    out, stat = proc.stdout.decode(), proc.stderr.decode()   # the console; --stat on stderr
    assert proc.returncode == 1, proc.stderr
    assert "running at CPL 1 with CS=0x0009 DS=0x0011" in out
    table = stat[stat.index("hypercalls (pv)"):]
    for name in ("set_trap_table", "set_gdt", "stack_switch", "set_callbacks", "event_channel_op"):
        assert re.search(rf"{name}\s*│\s*1\s*│", table), name
    assert "emulated I/O" in stat


def test_cli_refuses_a_native_image_in_pv_mode(cli, tmp_path):
    image = tmp_path / "hello.elf"
    image.write_bytes(build_guest("hello").elf)
    proc = cli("run", str(image), "--mode", "pv")
    assert proc.returncode == 2 and b"no Xen ELF notes" in proc.stderr
