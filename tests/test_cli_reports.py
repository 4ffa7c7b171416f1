"""What the CLI reports, and that it reports it in time: the tracer at an instruction the
engine cannot size, bench figures independent of the iteration count, labels that fit the
mode, gdb watchpoints on unmapped addresses, and README examples that match the code."""
from __future__ import annotations

import io
import json
import time

import pytest

from vmm.trace.tracer import Tracer

from conftest import IDT_DATA, LOAD_IDT, make_vm, set_gate

ALL_MODES = ("native", "trap", "bt", "vtx", "vtx-ept")

UD2_GUEST = "mov esp, 0x200000\n" + LOAD_IDT + set_gate(6, "ud") + """
    ud2
    mov al, 0
    out 0xf4, al
ud:
    add dword ptr [esp], 2      # step over the ud2
    iretd
""" + IDT_DATA


@pytest.mark.parametrize("mode", ALL_MODES)
def test_trace_through_ud2_is_quick_and_decodes_it(mode):
    """Unicorn reports an instruction size of 0xf1f1f1f1 at a ud2; the tracer bounds it by
    the 15-byte limit instead of reading that much guest memory."""
    vm, _ = make_vm(UD2_GUEST, mode=mode, timeout=20)
    out = io.StringIO()
    Tracer(vm, out, "jsonl")
    started = time.monotonic()
    result = vm.run()
    assert time.monotonic() - started < 10
    assert result.kind.name == "EXIT", result.message
    insns = [e for e in map(json.loads, out.getvalue().splitlines()) if e["type"] == "insn"]
    ud2 = [e for e in insns if e["asm"] == "ud2"]
    assert ud2 and ud2[0]["bytes"] == "0f 0b"
    assert insns[-1]["asm"] == "out 0xf4, al"


def _bench_rows(tmp_path, n):
    from conftest import run_cli
    out = tmp_path / f"n{n}"
    proc = run_cli("bench", "-w", "cpuid,in", "-m", ",".join(ALL_MODES), "-n", str(n), "-o", str(out),
                   timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    data = json.loads((out / "bench.json").read_text())
    return {(r["workload"], r["mode"]): r for r in data["rows"]}


def test_bench_figures_do_not_depend_on_the_digits_of_n(tmp_path):
    """-n 40 runs 40 and 80 iterations, -n 50 runs 50 and 100: one more digit in one run of
    the second pair. Both pairs must give the same counts per iteration (every workload
    loop here does the same events each pass), so the same cycles and overheads."""
    forty, fifty = _bench_rows(tmp_path, 40), _bench_rows(tmp_path, 50)
    assert forty.keys() == fifty.keys() and len(forty) == 2 * len(ALL_MODES)
    for key, row in forty.items():
        other = fifty[key]
        assert row["error"] is None and other["error"] is None, key
        assert row["measurement"]["per_iteration"] == other["measurement"]["per_iteration"], key
        assert row["cycles_per_iteration"] == other["cycles_per_iteration"], key
        assert row["overhead"] == other["overhead"], key
