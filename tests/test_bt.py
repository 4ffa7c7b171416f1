"""bt mode: kernel code translated page by page, callouts instead of traps, shadow
paging, and self-modifying code invalidating translations."""
from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from vmm.build.guests import build_guest, list_guests
from vmm.loader.image import load_image
from vmm.modes.privileged import decoder
from vmm.modes.translator import callout_kind, candidates
from vmm.vm import StopKind

from conftest import make_vm, run_cli

EXIT = "mov al, 0; out 0xf4, al"


def run(src):
    vm, _ = make_vm("mov esp, 0x180000\n" + src, mode="bt")
    result = vm.run()
    assert result.kind is StopKind.EXIT, result.message
    return vm, result


def test_sensitive_instructions_become_callouts_and_behave_as_at_cpl0():
    vm, result = run(f"""
        cli
        pushfd
        pop esi
        mov edi, cs
        call f
        mov eax, cr0
        {EXIT}
    f:  ret""")
    callouts = result.events["callouts"]
    assert callouts["cli"] == 1 and callouts["pushfd"] == 1 and callouts["mov r, cs"] == 1
    assert callouts["ret"] == 1 and callouts["mov r, cr0"] == 1
    assert vm.engine.reg("edi") == 0x08            # CPL 0: what trap mode cannot give
    assert not vm.engine.reg("esi") & 0x200
    assert result.events["translation"]["pages translated"] >= 1


def test_cr3_and_invlpg_callouts_drive_the_shadow_page_tables():
    # Identity-map the first 4 MiB with one PSE page, turn paging on, remap, INVLPG.
    vm, result = run(f"""
        mov edi, 0x200000
        mov dword ptr [edi], 0x00000083      # 4 MiB page at 0, present, writable
        mov eax, cr4
        or eax, 0x10                        # PSE
        mov cr4, eax
        mov cr3, edi
        mov eax, cr0
        or eax, 0x80000000
        mov cr0, eax
        mov eax, dword ptr [0x100]
        invlpg [0x100]
        mov cr3, edi
        {EXIT}""")
    c = result.events["callouts"]
    assert c["mov cr3, r"] == 2 and c["mov cr0, r"] == 1 and c["mov cr4, r"] == 1 and c["invlpg"] == 1
    assert result.memory["CR3 switches"] >= 2 and result.memory["INVLPG"] == 1
    assert result.memory["hidden page faults (shadow filled)"] > 0


def test_self_modifying_code_invalidates_the_translation():
    info = next(g for g in list_guests() if g.name == "smc")
    vm, _ = make_vm(load_image(build_guest("smc").elf, ram_size=128 << 20, image_name="smc"), mode="bt")
    result = vm.run()
    assert bytes(vm.serial) == info.expected_path.read_bytes()
    t = result.events["translation"]
    # Three immediate patches and one body rewrite, each seen at the next fetch.
    assert t["self-modifying code: retranslations"] == 4
    assert t["self-modifying code: blocks invalidated"] == 4


@pytest.mark.parametrize("name", [g.name for g in list_guests() if g.expected_path.exists()])
def test_builtin_guest_has_the_same_transcript_in_bt(name):
    info = next(g for g in list_guests() if g.name == name)
    vm, _ = make_vm(load_image(build_guest(name).elf, ram_size=128 << 20, image_name=name), mode="bt")
    result = vm.run()
    assert result.kind is StopKind.EXIT, result.message
    assert bytes(vm.serial) == info.expected_path.read_bytes()
    assert result.exit_status == info.exit_status


def test_user_code_runs_directly():
    vm, _ = make_vm(load_image(build_guest("user").elf, ram_size=128 << 20, image_name="user"), mode="bt")
    counted = []
    vm.bus.subscribe("event", lambda category, name, n: category == "callouts"
                     and counted.append(vm.engine.reg("cs") & 3))
    assert vm.run().kind is StopKind.EXIT
    assert counted and set(counted) == {0}          # every callout was taken in ring 0


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(st.binary(min_size=64, max_size=64))
def test_no_callout_instruction_escapes_the_candidate_scan(page):
    found = set(candidates(page))
    dis = decoder()
    for offset in range(len(page)):
        insn = next(dis.disasm(page[offset:offset + 15], offset, 1), None)
        if insn is not None and callout_kind(insn) is not None:
            assert offset in found, (insn.mnemonic, insn.op_str, page[offset:offset + 4].hex())


def test_stat_prints_callouts_and_translation_counters():
    r = run_cli("run", "smc", "--mode", "bt", "--stat")
    out = r.stderr.decode()   # --stat goes to stderr, apart from the guest's console
    assert r.returncode == 1
    assert "callouts (bt)" in out and "ret" in out
    assert "translation (bt)" in out and "self-modifying code" in out


def test_task_priority_writes_are_patched_not_mmio():
    # 32-bit kernels raise the TPR by a store to the local APIC page; the translator
    # patches it (as VMware and VirtualBox did): the VMM updates the APIC model itself.
    vm, result = run(f"""
        mov esi, 5
    l:  mov dword ptr [0xfee00080], esi
        dec esi
        jnz l
        mov eax, dword ptr [0xfee00080]
        mov edi, eax
        {EXIT}""")
    c = result.events["callouts"]
    assert c["mov tpr, r"] == 5 and c["mov r, tpr"] == 1
    assert vm.engine.reg("edi") == 1                      # the last value written
    assert vm.board.mmio_bus.accesses["lapic"] == 6       # each access reached the model once
