"""What the CLI reports, and that it reports it in time: the tracer at an instruction the
engine cannot size, bench figures independent of the iteration count, labels that fit the
mode, gdb watchpoints on unmapped addresses, and README examples that match the code."""
from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from capstone import CS_ARCH_X86, CS_MODE_32, Cs

from conftest import FLAT_BASE, IDT_DATA, LOAD_IDT, assemble, make_vm, set_gate
from vmm.trace.tracer import Tracer
from vmm.vm import StopKind

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


@pytest.mark.parametrize("mode", ALL_MODES)
@pytest.mark.parametrize("code", ["mov eax, 1; ud2", "again: nop; jmp again"])
def test_vmm_trace_keeps_to_the_timeout(mode, code, tmp_path):
    """`vmm trace` at an unhandled ud2 (a triple fault) or a guest that never stops: done
    within the --timeout plus start-up, with its final record."""
    from conftest import run_cli
    image = tmp_path / "guest.bin"
    image.write_bytes(assemble(code))
    started = time.monotonic()
    proc = run_cli("trace", str(image), "--kind", "flat", "--load-address", hex(FLAT_BASE), "--mode", mode,
                   "--timeout", "3", "--format", "jsonl", "--count", "50", timeout=120)
    assert time.monotonic() - started < 30
    assert proc.stdout, proc.stderr.decode()
    last = json.loads(proc.stdout.decode().splitlines()[-1])
    assert last["type"] == "stop" and last["kind"] in (StopKind.TRIPLE_FAULT.value, StopKind.TIMEOUT.value), last


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


# -- gdb: a watchpoint on a linear address the guest has not mapped yet ----------------------
PD, PT_LOW, PT_HIGH, FRAME, LATE = 0x200000, 0x201000, 0x202000, 0x300000, 0x40000000
LATE_MAPPING = f"""
    mov edi, {PT_LOW}               # identity-map the low 4 MiB
    xor eax, eax
fill:
    mov edx, eax
    or edx, 3
    mov dword ptr [edi], edx
    add edi, 4
    add eax, 0x1000
    cmp eax, 0x400000
    jb fill
    mov dword ptr [{PD}], {PT_LOW} + 3
    mov eax, {PD}
    mov cr3, eax
    mov eax, cr0
    or eax, 0x80000000
    mov cr0, eax
    mov dword ptr [{PD} + {LATE >> 22} * 4], {PT_HIGH} + 3   # now map {LATE:#x}
    mov dword ptr [{PT_HIGH}], {FRAME} + 3
    mov dword ptr [{LATE}], 0x1234
    nop
    mov al, 2
    out 0xf4, al
"""


@pytest.mark.skipif(shutil.which("gdb") is None, reason="gdb is not on PATH")
@pytest.mark.parametrize("mode", ALL_MODES)
def test_gdb_watchpoint_on_an_unmapped_address_fires_once_mapped(mode, tmp_path):
    """`watch *(int *)0x40000000` before the guest maps that address: accepted (debug
    registers take any linear address), and it fires after the store once the page is
    mapped, through `vmm run --gdb`."""
    image = tmp_path / "late.bin"
    image.write_bytes(assemble(LATE_MAPPING))
    vmm = subprocess.Popen([sys.executable, "-m", "vmm.cli", "run", str(image), "--kind", "flat",
                            "--load-address", hex(FLAT_BASE), "--mode", mode, "--gdb", "127.0.0.1:0",
                            "--wait"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert vmm.stderr is not None
        listening = vmm.stderr.readline().decode()     # vmm: waiting for gdb on 127.0.0.1:PORT
        port = int(listening.rsplit(":", 1)[1])
        gdb = subprocess.run(["gdb", "-batch", "-nx", "-ex", "set architecture i386",
                              "-ex", f"target remote 127.0.0.1:{port}", "-ex", f"watch *(int *){LATE:#x}",
                              "-ex", "continue", "-ex", "info registers eip", "-ex", "delete", "-ex", "continue"],
                             capture_output=True, text=True, timeout=120)
        out = gdb.stdout + gdb.stderr
        vmm.wait(timeout=60)
    finally:
        vmm.kill()
    code = list(Cs(CS_ARCH_X86, CS_MODE_32).disasm(assemble(LATE_MAPPING), FLAT_BASE))
    after_store = next(i for i in code if i.mnemonic == "nop").address
    assert "Could not insert" not in out, out
    assert f"Hardware watchpoint 1: *(int *){LATE:#x}" in out, out
    assert "New value = 4660" in out, out
    assert re.search(rf"eip\s+{after_store:#x}", out), out
    assert vmm.returncode == 5, listening     # isa-debug-exit: (2 << 1) | 1



# -- labels that fit the mode ------------------------------------------------------------------
def _jsonl(proc):
    assert proc.returncode == 1, proc.stderr.decode()[-2000:]
    return [json.loads(line) for line in proc.stdout.decode().splitlines()]


@pytest.mark.parametrize("mode", ALL_MODES)
def test_stat_goes_to_stderr_named_for_the_mode(mode, tmp_path):
    """The tables leave the guest's console (stdout) alone; only the VT-x modes speak of VM
    exits; tables with nothing in them are left out."""
    from conftest import run_cli
    plain = run_cli("run", "hello", "--mode", mode)
    stat_json = tmp_path / "stat.json"
    proc = run_cli("run", "hello", "--mode", mode, "--stat", "--stat-json", str(stat_json))
    assert proc.returncode == plain.returncode == 1
    assert proc.stdout == plain.stdout          # the console only
    err = proc.stderr.decode()
    stats = json.loads(stat_json.read_text())
    io = next(e["count"] for e in stats["exits"] if e["name"] == "IO_INSTRUCTION")
    if mode in ("vtx", "vtx-ept"):
        assert "exit reason" in err and re.search(rf"│\s*30 │ IO_INSTRUCTION\s*│\s*{io} │", err), err
    else:
        assert "exit reason" not in err and "IO_INSTRUCTION" not in err, err
        assert re.search(rf"│ port I/O\s*│\s*{io} │", err), err
        # The software VMMs see each access twice (board, VMM entry): the table says so.
        said = re.sub(r"\s+", " ", err)
        assert ("the same accesses entered the VMM" in said) == (mode in ("trap", "bt", "pv")), err
    memory = stats["memory"]
    assert ("memory virtualization" in err) == any(memory.values()), err
    for name, value in memory.items():
        assert (f"│ {name} " in err) == bool(value), (name, err)


def test_port_io_reads_the_same_in_every_mode_and_is_counted_once():
    """One wording of a port access in every mode (the SDM's I/O qualification), one trace
    record per access, as many as --stat counts."""
    from conftest import run_cli
    decoded = {}
    for mode in ALL_MODES:
        proc = run_cli("trace", "hello", "--mode", mode, "--format", "jsonl", "--exits-only")
        evs = _jsonl(proc)
        io = [e for e in evs if e["type"] == "exit" and e["name"] == "IO_INSTRUCTION"]
        decoded[mode] = [e["decoded"] for e in io]
        others = [e for e in evs if e["type"] == "event" and e["name"] in ("in", "out")]
        assert not others, others[:3]
        text = run_cli("trace", "hello", "--mode", mode, "--exits-only").stdout.decode()
        if mode in ("vtx", "vtx-ept"):
            assert text.count("VM exit 30 IO_INSTRUCTION: ") == len(io)
        else:
            assert "VM exit" not in text and text.count("-> port I/O: ") == len(io), text[:2000]
    assert len({tuple(d) for d in decoded.values()}) == 1, {m: d[:3] for m, d in decoded.items()}
    assert decoded["native"][0].startswith(("OUT dx, 1 byte, port 0x3f", "IN dx, 1 byte, port 0x3f"))


@pytest.mark.parametrize("mode", ["native", "vtx"])
def test_ring_filter_applies_to_events(mode):
    from conftest import run_cli
    evs = _jsonl(run_cli("trace", "user", "--mode", mode, "--format", "jsonl", "--ring", "user"))
    insns = {e["n"]: e for e in evs if e["type"] == "insn"}
    assert insns and all(e["ring"] == 3 for e in insns.values())
    events = [e for e in evs if e["type"] not in ("insn", "stop")]
    assert events, "the user guest's ring-3 code makes system calls"
    assert all(e["n"] in insns for e in events), [e for e in events if e["n"] not in insns][:3]
    everything = _jsonl(run_cli("trace", "user", "--mode", mode, "--format", "jsonl"))
    assert len([e for e in everything if e["type"] not in ("insn", "stop")]) > len(events)


def test_a_trace_window_that_ends_early_says_so():
    from conftest import run_cli
    evs = _jsonl(run_cli("trace", "hello", "--format", "jsonl", "--from", "3", "--count", "5"))
    assert [e["n"] for e in evs if e["type"] == "insn"] == [3, 4, 5, 6, 7]
    window, stop = evs[-2:]
    assert window["type"] == "window" and (window["first"], window["last"]) == (3, 7)
    assert window["instructions"] > 8 and stop["type"] == "stop"
    text = run_cli("trace", "hello", "--count", "5").stdout.decode().splitlines()
    assert text[-2].startswith("  -> trace window ends after instruction 4"), text[-3:]
    whole = _jsonl(run_cli("trace", "hello", "--format", "jsonl"))
    assert not [e for e in whole if e["type"] == "window"]


# -- README and docs examples: what they show is what the code prints ------------------------
DOC_EXAMPLES = Path(__file__).resolve().parent.parent / "tools" / "doc_examples.py"


def _doc_examples(*args):
    return subprocess.run([sys.executable, str(DOC_EXAMPLES), *args], capture_output=True, text=True, timeout=1800)


def test_doc_examples_check_and_write(tmp_path):
    """A drifted figure is found by --check and put right by --write; elisions ("...")
    and what is only text (a qemu command, an example marked skip) are left alone."""
    doc = tmp_path / "doc.md"
    doc.write_text("""Some text.

```
$ vmm run hello --mode native --stat
Hello from the vmm 'hello' guest!
...
│ port I/O │   999 │ 100.0 │      1.00 ms │ 4.4 us │
...
$ qemu-system-i386 -kernel hello.elf
anything at all
```

<!-- doc-examples: skip -->
```
$ vmm run no-such-image.elf
what the text says
```
""")
    proc = _doc_examples("--check", str(doc))
    assert proc.returncode == 1 and "the output differs" in proc.stdout and "999" in proc.stdout, proc.stdout
    assert _doc_examples("--write", str(doc)).returncode == 0
    text = doc.read_text()
    stat_json = tmp_path / "stat.json"
    subprocess.run([sys.executable, "-m", "vmm.cli", "run", "hello", "--stat-json", str(stat_json)], capture_output=True)
    io = json.loads(stat_json.read_text())["exits"][0]["count"]
    assert re.search(rf"│ port I/O │\s+{io} │", text), text
    assert "...\n" in text and "anything at all" in text and "what the text says" in text
    assert text.count("Hello from the vmm") == 1
    check = _doc_examples("--check", str(doc))
    assert check.returncode == 0, check.stdout


@pytest.mark.slow
def test_readme_and_docs_examples_match_the_code():
    proc = _doc_examples("--check")
    assert proc.returncode == 0, proc.stdout[-6000:]
