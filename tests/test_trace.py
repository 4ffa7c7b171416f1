"""The instruction tracer: golden traces, formats, filters, and what it shows inline."""
from __future__ import annotations

import io
import json
from pathlib import Path

from vmm.build.guests import build_guest
from vmm.loader.image import load_image
from vmm.trace.tracer import Tracer
from vmm.vm import VM

from conftest import assemble, make_vm, run_cli

GOLDEN = Path(__file__).parent / "golden" / "hello_vtx_trace.jsonl"


def trace(name_or_src, mode="native", fmt="jsonl", **options):
    if isinstance(name_or_src, str) and "\n" not in name_or_src and " " not in name_or_src:
        image = load_image(build_guest(name_or_src).elf, ram_size=128 << 20)
        vm = VM(image, mode=mode, serial_output=lambda b: None, timeout=60)
    else:
        vm, _ = make_vm(name_or_src, mode=mode)
    out = io.StringIO()
    Tracer(vm, out, fmt, **options)
    result = vm.run()
    return out.getvalue(), result


def events(text):
    return [json.loads(line) for line in text.splitlines()]


def test_golden_trace_of_hello_in_vtx():
    """The first 400 events of `vmm trace hello --mode vtx --format jsonl` (regenerate
    tests/golden/hello_vtx_trace.jsonl when the guest or the tracer changes on purpose)."""
    proc = run_cli("trace", "hello", "--mode", "vtx", "--format", "jsonl")
    assert proc.returncode == 1
    got = proc.stdout.decode().splitlines()[:400]
    assert got == GOLDEN.read_text().splitlines()
    kinds = {e["type"] for e in map(json.loads, got)}
    assert {"insn", "exit"} <= kinds


def test_text_format_shows_the_same_events():
    jsonl, _ = trace("hello", mode="vtx")
    text, _ = trace("hello", mode="vtx", fmt="text")
    evs = events(jsonl)
    lines = text.splitlines()
    assert len(lines) == len(evs)
    for event, line in zip(evs[:300], lines):
        if event["type"] == "insn":
            assert line.split()[0] == str(event["n"]) and int(line.split()[1], 16) == event["eip"]
            assert event["asm"] in line
        elif event["type"] == "exit":
            assert f"VM exit {event['reason']} {event['name']}" in line


def test_changed_registers_and_deterministic():
    src = "mov eax, 5; mov ebx, eax; add ebx, 1; mov al, 0; out 0xf4, al"
    first, _ = trace(src)
    second, _ = trace(src)
    assert first == second
    insns = [e for e in events(first) if e["type"] == "insn"]
    assert insns[0]["asm"] == "mov eax, 5" and insns[0]["changed"] == {"eax": 5}
    assert insns[1]["changed"] == {"ebx": 5}
    assert insns[2]["changed"]["ebx"] == 6 and "eflags" in insns[2]["changed"]
    assert insns[0]["bytes"] == assemble("mov eax, 5").hex(" ")


def test_exits_are_inline_after_their_instruction_with_decoded_qualification():
    evs = events(trace("mov dx, 0x3f8; mov al, 0x41; out dx, al; mov al, 0; out 0xf4, al", mode="vtx")[0])
    i = next(i for i, e in enumerate(evs) if e["type"] == "exit")
    assert evs[i - 1]["type"] == "insn" and evs[i - 1]["asm"] == "out dx, al"
    assert evs[i]["name"] == "IO_INSTRUCTION" and evs[i]["decoded"] == "OUT dx, 1 byte, port 0x3f8"
    assert evs[i]["n"] == evs[i - 1]["n"] and evs[i]["length"] == 1


def test_injected_events_and_walks():
    out, _ = trace("paging", mode="native", walks=True)
    evs = events(out)
    injects = [e for e in evs if e["type"] == "inject"]
    assert [e["vector"] for e in injects if e["vector"] == 14] == [14, 14, 14]
    assert injects[0]["cr2"] == 0x40000000 and injects[0]["error_code"] == 2
    walks = [e for e in evs if e["type"] == "walk"]
    assert any("fault" in w for w in walks) and any(w.get("perms") for w in walks)


def test_filters():
    out, _ = trace("hello", start=10, count=5)
    insns = [e for e in events(out) if e["type"] == "insn"]
    assert [e["n"] for e in insns] == [10, 11, 12, 13, 14]
    out, _ = trace("user", ring="user")
    insns = [e for e in events(out) if e["type"] == "insn"]
    assert insns and all(e["ring"] == 3 for e in insns)
    image = build_guest("hello")
    lo = image.symbols["kmain"] if "kmain" in image.symbols else image.entry
    out, _ = trace("hello", address_range=(lo, lo + 0x20))
    insns = [e for e in events(out) if e["type"] == "insn"]
    assert insns and all(lo <= e["eip"] < lo + 0x20 for e in insns)
    out, _ = trace("hello", mode="vtx", exits_only=True)
    kinds = {e["type"] for e in events(out)}
    assert "insn" not in kinds and "exit" in kinds


def test_code_written_during_the_trace_is_decoded_again():
    src = """
        mov esp, 0x180000
        call patch
        mov dword ptr [patch], 0x90c3c031     # 31 c0 (xor eax, eax), c3 (ret)
        call patch
        mov al, 0
        out 0xf4, al
    patch:
        nop; nop; nop; ret
    """
    evs = events(trace(src)[0])
    patch = assemble(src).index(b"\x90\x90\x90\xc3") + 0x100000
    at_patch = [e["asm"] for e in evs if e["type"] == "insn" and e["eip"] == patch]
    assert at_patch == ["nop", "xor eax, eax"]


def test_cli_trace_text_and_stat(tmp_path):
    out = tmp_path / "t.jsonl"
    proc = run_cli("trace", "timer", "--mode", "vtx", "--exits-only", "--format", "jsonl", "-o", str(out), "--stat")
    assert proc.returncode == 1 and b"tick 10" in proc.stderr  # the guest's console goes to stderr
    assert b"EXTERNAL_INTERRUPT" in proc.stderr and not proc.stdout  # --stat: standard error too
    evs = [json.loads(line) for line in out.read_text().splitlines()]
    assert sum(e["type"] == "exit" and e["name"] == "EXTERNAL_INTERRUPT" for e in evs) == 10
    assert evs[-1]["type"] == "stop"


def test_mode_events_appear_where_they_happen():
    # trap: each emulated privileged instruction follows the instruction that trapped;
    # bt: translations and callouts; both as their own event type in JSON lines.
    for mode, category, name in (("trap", "traps", "lgdt"), ("bt", "callouts", "lgdt")):
        vm = VM(load_image(build_guest("hello").elf, ram_size=16 << 20), mode=mode, ram_size=16 << 20,
                serial_output=lambda data: None)
        out = io.StringIO()
        Tracer(vm, out, "jsonl")
        vm.run()
        lines = [json.loads(line) for line in out.getvalue().splitlines()]
        events = [e for e in lines if e["type"] == "event"]
        assert any(e["category"] == category and e["name"] == name for e in events), mode
        first = next(i for i, e in enumerate(lines) if e["type"] == "event" and e["name"] == name)
        previous = next(e for e in reversed(lines[:first]) if e["type"] == "insn")
        assert previous["asm"].startswith("lgdt")
