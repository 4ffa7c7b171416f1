"""trap mode: a ring-1 kernel whose privileged instructions trap and are emulated, and
the sensitive instructions that do not trap (Popek & Goldberg's condition failing)."""
from __future__ import annotations

import difflib

import pytest

from vmm.build.guests import build_guest, list_guests
from vmm.loader.image import load_image
from vmm.modes.trap import SHADOW_GDT, VMM_IDT, VMM_TSS_SEL
from vmm.vm import StopKind

from conftest import IDT_DATA, LOAD_IDT, make_vm, run_cli, set_gate

EXIT = "mov al, 0; out 0xf4, al"


def run(src, **kw):
    vm, log = make_vm("mov esp, 0x180000\n" + src, mode="trap", **kw)
    result = vm.run()
    assert result.kind is StopKind.EXIT, result.message
    return vm, result


def traps(result) -> dict:
    return dict(result.events.get("traps", {}))


def test_the_kernel_runs_in_ring_1_with_ring_0_descriptors_compressed():
    vm, result = run(f"mov esi, cs; mov ebx, ss; mov ecx, ds; {EXIT}")
    eng = vm.engine
    assert (eng.reg("esi"), eng.reg("ebx"), eng.reg("ecx")) == (0x09, 0x11, 0x10)
    assert eng.table("gdtr")[1] == SHADOW_GDT


def test_cli_sti_change_the_virtual_if_and_pushf_shows_the_real_one():
    vm, result = run(f"""
        sti
        cli
        pushfd
        pop esi
        {EXIT}""")
    assert vm.mode.vif is False                       # the guest's CLI took effect, virtually
    assert vm.engine.reg("esi") & 0x200               # PUSHF: the real IF, still 1
    assert traps(result) == {"sti": 1, "cli": 1, "out": 1}


def test_popf_at_cpl1_neither_traps_nor_changes_the_virtual_if():
    vm, result = run(f"""
        cli
        pushfd
        or dword ptr [esp], 0x200
        popfd
        {EXIT}""")
    assert vm.mode.vif is False
    assert "popfd" not in traps(result)


def test_lgdt_sgdt_the_guest_table_and_the_shadow():
    vm, result = run(f"""
        .byte 0x0f, 0x01, 0x15      # lgdt [gdtr]
        .long gdtr
        .byte 0x0f, 0x01, 0x05      # sgdt [buf]
        .long buf
        mov esi, dword ptr [buf + 2]
        {EXIT}
    gdtr: .word 23
          .long gdt
    buf:  .long 0, 0
    .align 8
    gdt:  .long 0, 0
          .long 0x0000ffff, 0x00cf9a00
          .long 0x0000ffff, 0x00cf9200
    """)
    mode = vm.mode
    base = mode.virtual_tables["gdtr"][1]
    assert mode.virtual_tables["gdtr"][2] == 23
    assert vm.engine.reg("esi") == SHADOW_GDT                   # SGDT: the VMM's table
    shadow = vm.engine.read_phys(mode.vmm_area + 8, 16)
    code_hi = int.from_bytes(shadow[4:8], "little")
    assert (code_hi >> 13) & 3 == 1 and (code_hi >> 8) & 1      # DPL 0 -> 1, accessed
    guest_hi = int.from_bytes(vm.read_linear(base + 12, 4), "little")
    assert (guest_hi >> 13) & 3 == 0                             # the guest's own table is untouched
    assert traps(result)["lgdt"] == 1


def test_sidt_and_str_reveal_the_vmm():
    vm, _ = run(f"""
        {LOAD_IDT}
        .byte 0x0f, 0x01, 0x0d      # sidt [buf]
        .long buf
        mov esi, dword ptr [buf + 2]
        str edi
        {EXIT}
    buf: .long 0, 0
    {IDT_DATA}""")
    assert vm.engine.reg("esi") == VMM_IDT
    assert vm.engine.reg("edi") & 0xFFFF == VMM_TSS_SEL


def test_control_registers_msrs_and_ports_are_emulated():
    vm, result = run(f"""
        mov eax, cr0
        mov ebx, eax
        or eax, 2               # MP
        mov cr0, eax
        mov ecx, cr0
        smsw edx
        mov ecx, 0x174
        mov eax, 0x1234
        xor edx, edx
        wrmsr
        xor eax, eax
        rdmsr
        mov esi, eax
        mov dx, 0x70
        mov al, 0x0f
        out dx, al
        mov eax, cr0
        mov edi, eax
        {EXIT}""")
    eng = vm.engine
    assert eng.reg("esi") == 0x1234                            # WRMSR then RDMSR, emulated
    assert eng.reg("edi") == vm.mode.vcr0 == 0x13             # MOV from CR0: the virtual CR0
    assert eng.reg("cr0") & 0x20                                # the real one has NE: SMSW shows it
    t = traps(result)
    assert t["mov cr0, r"] == 1 and t["mov r, cr0"] == 3 and t["wrmsr"] == 1 and t["rdmsr"] == 1
    assert t["out"] == 2


def test_exceptions_reach_the_guest_with_the_virtual_cs_and_iret_restores_the_virtual_if():
    vm, result = run(f"""
        {set_gate(0, "handler")}
        {LOAD_IDT}
        sti
        xor ecx, ecx
        mov eax, 1
        div ecx
        pushfd
        pop edi
        {EXIT}
    handler:
        mov esi, [esp + 4]      # the CS the frame holds
        mov ebx, [esp + 8]      # EFLAGS: the virtual IF
        mov ecx, 1
        iretd
    {IDT_DATA}""")
    eng = vm.engine
    assert eng.reg("esi") == 0x08          # what bare hardware pushes, not the real 0x09
    assert eng.reg("ebx") & 0x200           # IF=1 at the fault
    assert vm.mode.vif is True              # the trapped IRET restored it
    assert traps(result)["iretd"] == 1
    assert eng.reg("cs") == 0x09


def test_the_vmm_area_is_read_only_to_the_guest():
    vm, log = make_vm(f"""
        mov esp, 0x180000
        {set_gate(14, "pf")}
        {LOAD_IDT}
        mov dword ptr [{SHADOW_GDT:#x}], 0
        hlt
    pf:
        mov eax, cr2
        mov ebx, [esp]
        {EXIT}
    {IDT_DATA}""", mode="trap")
    result = vm.run()
    assert result.kind is StopKind.EXIT, result.message
    assert vm.engine.reg("eax") == SHADOW_GDT and vm.engine.reg("ebx") == 3   # present, write


def test_a_boot_sector_cannot_be_deprivileged():
    image = load_image(b"\xf4" + bytes(509) + b"\x55\xaa", ram_size=1 << 20, kind="bootsector")
    with pytest.raises(ValueError, match="real mode"):
        make_vm(image, mode="trap")


# -- the built-in guests ---------------------------------------------------------------------------
SELECTOR_WORDS = ("CPL", "CS=", "SS=", "TR=", "str=")


@pytest.mark.parametrize("name", [g.name for g in list_guests() if g.expected_path.exists()])
def test_builtin_guest_transcript_in_trap(name):
    info = next(g for g in list_guests() if g.name == name)
    vm, _ = make_vm(load_image(build_guest(name).elf, ram_size=128 << 20, image_name=name), mode="trap")
    result = vm.run()
    assert result.kind is StopKind.EXIT, result.message
    trap_golden = info.expected_path.with_suffix(".trap.expected")
    expected = trap_golden if trap_golden.exists() else info.expected_path
    assert bytes(vm.serial) == expected.read_bytes()
    if name == "popek":
        assert result.exit_status == 3
        return
    assert result.exit_status == info.exit_status
    # Where trap differs from bare hardware, it is only in lines that print a selector or
    # the CPL: reading CS/SS/TR does not trap.
    native = info.expected_path.read_text().splitlines()
    for line in difflib.unified_diff(native, bytes(vm.serial).decode().splitlines(), lineterm="", n=0):
        if line.startswith(("+", "-")) and not line.startswith(("+++", "---")):
            assert any(w in line for w in SELECTOR_WORDS), line


def test_popek_in_trap_names_the_offending_instructions():
    r = run_cli("run", "popek", "--mode", "trap")
    assert r.returncode == 3
    last = r.stdout.decode().splitlines()[-1]
    assert last == ("virtualizability: fails for PUSHF, POPF, SGDT, SIDT, STR, SMSW, PUSH CS, MOV from CS, LAR, "
                    "MOV SS, far CALL, far JMP, far RET")


def test_stat_prints_the_traps_by_instruction():
    r = run_cli("run", "pmode", "--mode", "trap", "--stat")
    out = r.stderr.decode()   # --stat goes to stderr, apart from the guest's console
    assert r.returncode == 1
    assert "traps (trap):" in out and "iretd" in out and "lgdt" in out


def test_leaving_protected_mode_stops_with_a_reason():
    """A ring-1 kernel cannot be given real mode back: clearing CR0.PE stops the VM with
    a line that says so (it used to run on at real mode's privilege and stop on a read
    of the VMM's own tables)."""
    vm, _ = make_vm("mov eax, cr0\nand eax, 0xfffffffe\nmov cr0, eax\n" + EXIT, mode="trap")
    result = vm.run()
    assert result.kind is StopKind.ERROR
    assert "trap mode cannot run real mode: the guest cleared CR0.PE" in result.message
