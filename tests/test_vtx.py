"""The vtx mode: each VM exit from a real guest, its SDM reason, qualification and
instruction length; the same guest with the control cleared takes no exit."""
from __future__ import annotations

import struct

import pytest

from vmm.build.guests import build_guest, list_guests
from vmm.loader.image import load_image
from vmm.vm import StopKind
from vmm.vmx.controls import PrimaryProcBased
from vmm.vmx.exit_reasons import ExitReason as R
from vmm.vmx.qualification import (CrAccess, CrAccessType, InterruptionInfo, InterruptionType,
                                   IoInstruction, MovDr)
from vmm.vmx.tuning import apply_controls, apply_vmcs_writes
from vmm.vmx.vmcs import Field

from conftest import IDT_DATA, LOAD_IDT, assemble, make_vm, set_gate

EXIT = "mov al, 0; out 0xf4, al"


def controls(*items):
    return lambda vm: apply_controls(vm.mode.vmcs, items)


def vmcs(*items):
    return lambda vm: apply_vmcs_writes(vm.mode.vmcs, items)


def run(src, *configure, **kw):
    def setup(vm):
        for c in configure:
            c(vm)
    vm, log = make_vm(src, configure=setup, **kw)
    result = vm.run()
    return vm, log, result


def offset_of(src: str, needle: bytes) -> int:
    return 0x100000 + assemble(src).index(needle)


# -- CPUID: always exits ---------------------------------------------------------------
def test_cpuid_exits_and_returns_the_hypervisor_leaf():
    vm, log, result = run(f"mov eax, 0x40000000; cpuid; mov esi, ebx; mov edi, ecx; mov ebp, edx; mov ebx, eax; {EXIT}")
    assert result.exit_status == 1
    [(exit, fields)] = log.of(R.CPUID)
    assert fields[Field.VM_EXIT_REASON] == 10 and fields[Field.VM_EXIT_INSTRUCTION_LEN] == 2
    eng = vm.engine
    assert struct.pack("<III", eng.reg("esi"), eng.reg("edi"), eng.reg("ebp")) == b"VMMLabPython"
    assert eng.reg("ebx") == 0x40000001


def test_cpuid_leaf1_reports_a_hypervisor_and_no_vmx():
    vm, _, _ = run(f"mov eax, 1; cpuid; {EXIT}")
    assert vm.engine.reg("ecx") >> 31 & 1 and not vm.engine.reg("ecx") >> 5 & 1


# -- HLT ----------------------------------------------------------------------------------
def test_hlt_exit_reports_the_instruction_then_halts():
    src = "nop; hlt"
    _, log, result = run(src)
    [(exit, fields)] = log.of(R.HLT)
    assert fields[Field.VM_EXIT_INSTRUCTION_LEN] == 1
    assert result.kind is StopKind.HALTED  # IF = 0: nothing will wake it
    _, log, result = run(src, controls("HLT_EXITING=off"))
    assert not log.of(R.HLT) and result.kind is StopKind.HALTED


# -- I/O ------------------------------------------------------------------------------------
IO_SRC = f"mov dx, 0x3ff; mov al, 0x5a; out dx, al; in ax, 0x84; mov esi, eax; {EXIT}"


def test_io_exits_with_decoded_qualification():
    vm, log, _ = run(IO_SRC)
    first, second = log.of(R.IO_INSTRUCTION)[:2]
    q = IoInstruction.decode(first[1][Field.EXIT_QUALIFICATION])
    assert (q.port, q.size, q.direction_in, q.immediate) == (0x3ff, 1, False, False)
    assert first[1][Field.VM_EXIT_INSTRUCTION_LEN] == 1
    q = IoInstruction.decode(second[1][Field.EXIT_QUALIFICATION])
    assert (q.port, q.size, q.direction_in, q.immediate) == (0x84, 2, True, True)
    assert second[1][Field.VM_EXIT_INSTRUCTION_LEN] == 3  # 66 E5 84
    assert vm.engine.reg("esi") & 0xFFFF == 0xFFFF


def test_io_without_exiting_reaches_the_board_directly():
    vm, log, result = run(IO_SRC, controls("UNCONDITIONAL_IO_EXITING=off"))
    assert not log.of(R.IO_INSTRUCTION)
    assert result.exit_status == 1 and vm.engine.reg("esi") & 0xFFFF == 0xFFFF


def test_io_bitmaps_select_ports():
    def only_3ff(vm):
        apply_controls(vm.mode.vmcs, ["UNCONDITIONAL_IO_EXITING=off", "USE_IO_BITMAPS=on"])
        vm.mode.set_io_intercept(0x3ff)
    _, log, result = run(IO_SRC, only_3ff)
    ports = [IoInstruction.decode(f[Field.EXIT_QUALIFICATION]).port for _, f in log.of(R.IO_INSTRUCTION)]
    assert ports == [0x3ff] and result.exit_status == 1


# -- MSRs -----------------------------------------------------------------------------------
MSR_SRC = f"mov ecx, 0x174; mov eax, 0x10; xor edx, edx; wrmsr; xor eax, eax; rdmsr; mov esi, eax; {EXIT}"


def test_rdmsr_wrmsr_exit():
    vm, log, _ = run(MSR_SRC)
    [(w, wf)] = log.of(R.MSR_WRITE)
    [(r, rf)] = log.of(R.MSR_READ)
    assert wf[Field.VM_EXIT_INSTRUCTION_LEN] == rf[Field.VM_EXIT_INSTRUCTION_LEN] == 2
    assert w.msr == r.msr == 0x174
    assert vm.engine.reg("esi") == 0x10


def test_msr_bitmap_clear_means_no_exit():
    def pass_174(vm):
        vm.mode.set_msr_intercept(0x174, read=False, write=False)
    vm, log, _ = run(MSR_SRC, pass_174)
    assert not log.of(R.MSR_READ) and not log.of(R.MSR_WRITE)
    assert vm.engine.reg("esi") == 0x10


def test_unknown_msr_injects_gp():
    _, log, result = run(f"mov ecx, 0x12345; rdmsr; {EXIT}")
    assert log.of(R.MSR_READ)
    assert result.kind is StopKind.TRIPLE_FAULT  # no IDT: the injected #GP cannot be delivered


# -- control registers ----------------------------------------------------------------------
CR0_SRC = f"mov eax, cr0; or eax, 0x10000; mov cr0, eax; mov ebx, cr0; {EXIT}"


def test_cr0_write_to_an_owned_bit_exits():
    vm, log, _ = run(CR0_SRC)
    [(exit, f)] = log.of(R.CR_ACCESS)
    assert CrAccess.decode(f[Field.EXIT_QUALIFICATION]) == CrAccess(0, CrAccessType.MOV_TO_CR, 0)
    assert f[Field.VM_EXIT_INSTRUCTION_LEN] == 3
    assert vm.engine.reg("ebx") & 0x10000 and vm.mode.vmcs.read(Field.CR0_READ_SHADOW) & 0x10000


def test_cr0_without_guest_host_mask_takes_no_exit():
    vm, log, _ = run(CR0_SRC, vmcs("CR0_GUEST_HOST_MASK=0"))
    assert not log.of(R.CR_ACCESS) and vm.engine.reg("ebx") & 0x10000


def test_cr0_reads_of_owned_bits_return_the_read_shadow():
    # WP owned by the host, the shadow says WP=1, the real CR0 has WP=0: the guest reads 1.
    vm, log, _ = run(f"mov ebx, cr0; {EXIT}", vmcs("CR0_GUEST_HOST_MASK=0x10000", "CR0_READ_SHADOW=0x10011"))
    assert vm.engine.reg("ebx") == 0x10011 and not vm.engine.reg("cr0") & 0x10000
    assert not log.of(R.CR_ACCESS)  # reads never exit


def test_cr4_write_exits_and_read_is_shadowed():
    src = f"mov eax, cr4; or eax, 0x10; mov cr4, eax; mov ebx, cr4; {EXIT}"
    vm, log, _ = run(src)
    [(exit, f)] = log.of(R.CR_ACCESS)
    assert CrAccess.decode(f[Field.EXIT_QUALIFICATION]) == CrAccess(4, CrAccessType.MOV_TO_CR, 0)
    assert f[Field.VM_EXIT_INSTRUCTION_LEN] == 3 and vm.engine.reg("ebx") & 0x10
    vm, log, _ = run(src, vmcs("CR4_GUEST_HOST_MASK=0"))
    assert not log.of(R.CR_ACCESS) and vm.engine.reg("ebx") & 0x10


def test_cr3_load_and_store_exiting_and_targets():
    src = f"mov eax, 0x200000; mov cr3, eax; mov ebx, cr3; {EXIT}"
    vm, log, _ = run(src)
    qs = [CrAccess.decode(f[Field.EXIT_QUALIFICATION]) for _, f in log.of(R.CR_ACCESS)]
    assert qs == [CrAccess(3, CrAccessType.MOV_TO_CR, 0), CrAccess(3, CrAccessType.MOV_FROM_CR, 3)]
    assert vm.engine.reg("ebx") == 0x200000
    _, log, _ = run(src, vmcs("CR3_TARGET_COUNT=1", "CR3_TARGET_VALUE0=0x200000"))
    assert [CrAccess.decode(f[Field.EXIT_QUALIFICATION]).access for _, f in log.of(R.CR_ACCESS)] == \
        [CrAccessType.MOV_FROM_CR]
    _, log, _ = run(src, controls("CR3_LOAD_EXITING=off", "CR3_STORE_EXITING=off"))
    assert not log.of(R.CR_ACCESS)


# -- INVLPG, RDTSC, MOV DR, descriptor tables, VMCALL -----------------------------------------
def test_invlpg_exit_qualification_is_the_linear_address():
    src = f"mov ebx, 0x1000; invlpg [ebx + 0x234]; {EXIT}"
    _, log, _ = run(src)
    [(exit, f)] = log.of(R.INVLPG)
    length = len(assemble("invlpg [ebx + 0x234]"))
    assert f[Field.EXIT_QUALIFICATION] == 0x1234 and f[Field.VM_EXIT_INSTRUCTION_LEN] == length
    _, log, _ = run(src, controls("INVLPG_EXITING=off"))
    assert not log.of(R.INVLPG)


def test_rdtsc_exiting_and_tsc_offsetting():
    src = f"rdtsc; mov esi, eax; mov edi, edx; {EXIT}"
    vm, log, _ = run(src, controls("RDTSC_EXITING"))
    [(exit, f)] = log.of(R.RDTSC)
    assert f[Field.VM_EXIT_INSTRUCTION_LEN] == 2
    vm, log, _ = run(src, controls("USE_TSC_OFFSETTING"), vmcs("TSC_OFFSET=0x500000000"))
    assert not log.of(R.RDTSC)
    assert vm.engine.reg("edi") == 5  # the offset's high half shows in EDX


def test_mov_dr_exits_with_qualification():
    src = f"mov eax, 0x400; mov dr7, eax; mov ebx, dr7; {EXIT}"
    vm, log, _ = run(src)
    qs = [MovDr.decode(f[Field.EXIT_QUALIFICATION]) for _, f in log.of(R.DR_ACCESS)]
    assert qs == [MovDr(7, False, 0), MovDr(7, True, 3)]
    assert vm.engine.reg("ebx") == 0x400
    _, log, _ = run(src, controls("MOV_DR_EXITING=off"))
    assert not log.of(R.DR_ACCESS)


def test_descriptor_table_exiting():
    src = f"sgdt [0x2000]; str ax; {EXIT}"
    vm, log, _ = run(src)
    assert [e.reason for e, _ in log if e.reason in (R.GDTR_IDTR, R.LDTR_TR)] == [R.GDTR_IDTR, R.LDTR_TR]
    [(_, f)] = log.of(R.GDTR_IDTR)
    assert f[Field.EXIT_QUALIFICATION] == 0x2000
    from vmm.loader.entry import boot_gdt
    limit = len(boot_gdt()[1]) - 1   # the boot GDTR's limit: SGDT executed after the exit
    assert struct.unpack("<H", vm.engine.read_phys(0x2000, 2))[0] == limit
    _, log, _ = run(src, controls("DESCRIPTOR_TABLE_EXITING=off"))
    assert not log.of(R.GDTR_IDTR) and not log.of(R.LDTR_TR)


def test_vmcall_exits_with_length_3_and_returns_enosys():
    vm, log, _ = run(f"xor eax, eax; .byte 0x0f, 0x01, 0xc1; mov esi, eax; {EXIT}")
    [(_, f)] = log.of(R.VMCALL)
    assert f[Field.VM_EXIT_INSTRUCTION_LEN] == 3 and vm.engine.reg("esi") == (-1000) & 0xFFFFFFFF


# -- exceptions and event injection ---------------------------------------------------------------
def idt_src(vec, gate, body) -> str:
    """A guest with its own handler for ``vec`` (saves [esp] in ESI, exits 0x21) and a
    #DF handler (EDI = 0xdf, exits 0x22)."""
    return set_gate(vec, "handler", gate) + set_gate(8, "df_handler") + LOAD_IDT + f"""
    mov esp, 0x180000
    {body}
    hlt
handler:
    mov esi, [esp]
    mov al, 0x21
    out 0xf4, al
df_handler:
    mov edi, 0xdf
    mov al, 0x22
    out 0xf4, al
""" + IDT_DATA


def test_ud_in_exception_bitmap_exits_and_is_reflected():
    src = idt_src(6, 0x8E00, "ud2")
    vm, log, result = run(src)
    [(exit, f)] = log.of(R.EXCEPTION_NMI)
    info = InterruptionInfo.decode(f[Field.VM_EXIT_INTR_INFO])
    assert (info.vector, info.type, info.valid) == (6, InterruptionType.HARDWARE_EXCEPTION, True)
    assert result.exit_status == (0x21 << 1) | 1           # the guest's own #UD handler ran
    assert vm.engine.reg("esi") == offset_of(src, b"\x0f\x0b")
    vm, log, result = run(src, vmcs("EXCEPTION_BITMAP=0"))
    assert not log.of(R.EXCEPTION_NMI) and result.exit_status == (0x21 << 1) | 1


def test_int3_is_a_software_exception_with_length_1():
    src = idt_src(3, 0x8E00, "int3")
    vm, log, result = run(src, vmcs("EXCEPTION_BITMAP=0x8"))
    [(exit, f)] = log.of(R.EXCEPTION_NMI)
    info = InterruptionInfo.decode(f[Field.VM_EXIT_INTR_INFO])
    assert info.type is InterruptionType.SOFTWARE_EXCEPTION and f[Field.VM_EXIT_INSTRUCTION_LEN] == 1
    # reinjected with the instruction length: the handler's return address is past INT3
    assert vm.engine.reg("esi") == offset_of(src, b"\xcc") + 1 and result.exit_status == (0x21 << 1) | 1


def test_exit_during_delivery_records_idt_vectoring_and_becomes_double_fault():
    # #DE's gate is not present: delivering #DE raises #NP, which the bitmap intercepts.
    src = idt_src(0, 0x0E00, "xor ecx, ecx; div ecx")
    vm, log, result = run(src, vmcs("EXCEPTION_BITMAP=0x800"))
    [(exit, f)] = log.of(R.EXCEPTION_NMI)
    vectoring = InterruptionInfo.decode(f[Field.IDT_VECTORING_INFO_FIELD])
    assert (vectoring.vector, vectoring.type, vectoring.valid) == (0, InterruptionType.HARDWARE_EXCEPTION, True)
    assert InterruptionInfo.decode(f[Field.VM_EXIT_INTR_INFO]).vector == 11
    assert f[Field.VM_EXIT_INTR_ERROR_CODE] == 0 * 8 + 2 + 1  # IDT entry 0, EXT
    assert result.exit_status == (0x22 << 1) | 1 and vm.engine.reg("edi") == 0xDF  # #DF handler


def test_page_fault_error_code_mask_and_match_rule():
    """SDM §25.6.3: with PFEC & MASK == MATCH the #PF exits iff bit 14 is set; otherwise
    iff it is clear. (A guest-level test runs under vtx-ept, where #PF exits are only the
    guest's own faults: see test_ept_mode.py.)"""
    from vmm.vmx.processor import exits_for_exception
    from vmm.vmx.vmcs import Vmcs
    v = Vmcs()
    for bitmap, mask, match, write_exits, read_exits in ((1 << 14, 0, 0, True, True),
                                                         (1 << 14, 2, 2, True, False),
                                                         (0, 2, 2, False, True),
                                                         (0, 0, 0, False, False)):
        v.write(Field.EXCEPTION_BITMAP, bitmap)
        v.write(Field.PAGE_FAULT_ERROR_CODE_MASK, mask)
        v.write(Field.PAGE_FAULT_ERROR_CODE_MATCH, match)
        assert exits_for_exception(v, 14, 2) is write_exits
        assert exits_for_exception(v, 14, 0) is read_exits


def test_triple_fault_exit():
    vm, log, result = run("xor ecx, ecx; div ecx")  # no IDT at all
    assert result.kind is StopKind.TRIPLE_FAULT
    assert result.exits[R.TRIPLE_FAULT] == 1
    assert vm.mode.vmcs.read(Field.VM_EXIT_REASON) == 2


# -- interrupts and the preemption timer ----------------------------------------------------------
def test_external_interrupts_exit_and_are_injected():
    image = load_image(build_guest("timer").elf, ram_size=128 << 20)
    vm, log = make_vm(image)
    result = vm.run()
    assert result.exit_status == 1 and len(log.of(R.EXTERNAL_INTERRUPT)) == 10
    info = InterruptionInfo.decode(log.of(R.EXTERNAL_INTERRUPT)[0][1][Field.VM_EXIT_INTR_INFO])
    assert (info.vector, info.type) == (0x20, InterruptionType.EXTERNAL_INTERRUPT)  # acked on exit
    assert bytes(vm.serial) == next(g for g in list_guests() if g.name == "timer").expected_output()
    vm, log = make_vm(image, configure=controls("EXTERNAL_INTERRUPT_EXITING=off"))
    assert vm.run().exit_status == 1
    assert not log.of(R.EXTERNAL_INTERRUPT) and not log.of(R.INTERRUPT_WINDOW)


def test_interrupt_window_exiting():
    # IF = 0: the window control asks for an exit once the guest sets IF and STI's shadow
    # (the DEC) is over: before the JNZ, with ECX one down (SDM §26.7.5).
    src = f"mov ecx, 1000; sti; spin: dec ecx; jnz spin; mov ebx, ecx; {EXIT}"
    at = []

    def record(vm):
        vm.bus.subscribe("exit", lambda exit: at.append((exit.reason, vm.engine.reg("eip"), vm.engine.reg("ecx"))))
    vm, log, result = run(src, controls("INTERRUPT_WINDOW_EXITING"), record)
    assert len(log.of(R.INTERRUPT_WINDOW)) == 1 and result.exit_status == 1
    spin = int.from_bytes(assemble(f"{src}\n.long spin")[-4:], "little")
    window = [(eip, ecx) for reason, eip, ecx in at if reason == R.INTERRUPT_WINDOW]
    assert window == [(spin + 1, 999)]   # DEC ECX is one byte
    assert not vm.mode.cpu.primary(PrimaryProcBased.INTERRUPT_WINDOW_EXITING)  # the handler cleared it
    _, log, _ = run(src)
    assert not log.of(R.INTERRUPT_WINDOW)


@pytest.mark.parametrize(("before", "blocking"), [("mov ax, ss; mov ss, ax", 2), ("sti", 1), ("nop", 0)])
def test_an_exit_in_a_shadow_reports_the_blocking_in_the_interruptibility_state(before, blocking):
    # CPUID right after MOV SS or an STI that set IF exits inside their shadow (SDM §24.4.2).
    src = f"{before}; cpuid; cli; {EXIT}"
    seen = []

    def record(vm):
        vm.bus.subscribe("exit", lambda exit: seen.append(
            vm.mode.vmcs.read(Field.GUEST_INTERRUPTIBILITY_INFO)) if exit.reason == R.CPUID else None)
    _, _, result = run(src, record)
    assert result.exit_status == 1 and seen == [blocking]


def test_preemption_timer_exits_in_virtual_time():
    src = "spin: jmp spin"
    vm, log, result = run(src, controls("PREEMPTION_TIMER"), vmcs("VMX_PREEMPTION_TIMER_VALUE=100"),
                          max_instructions=100 * 32 * 10)
    assert result.kind is StopKind.BUDGET and len(log.of(R.PREEMPTION_TIMER)) == 10
    _, log, _ = run(src, max_instructions=100 * 32 * 10)
    assert not log.of(R.PREEMPTION_TIMER)


# -- VM entry ------------------------------------------------------------------------------------
def test_invalid_guest_state_fails_vm_entry_with_reason_33_bit_31():
    vm, log, result = run(EXIT, vmcs("GUEST_CR0=0x80000000"))
    assert result.kind is StopKind.ENTRY_FAILED
    assert vm.mode.vmcs.read(Field.VM_EXIT_REASON) == 0x80000021
    assert "CR0.PG = 1 requires CR0.PE = 1" in result.message
    assert "GUEST_CR0 = 0x80000000" in result.message  # the VMCS dump
    assert not log  # the guest never ran


def test_controls_outside_the_capability_msrs_fail_vm_entry():
    _, _, result = run(EXIT, vmcs("PIN_BASED_VM_EXEC_CONTROL=0"))
    assert result.kind is StopKind.ENTRY_FAILED and "must be 1" in result.message


def test_invalid_injection_fails_vm_entry():
    _, _, result = run(EXIT, vmcs("VM_ENTRY_INTR_INFO_FIELD=0x80000b40"))  # vector 0x40 as a hardware exception
    assert result.kind is StopKind.ENTRY_FAILED and "hardware exception vector 64" in result.message


def test_unexpected_exit_reason_stops_the_vm_with_a_dump():
    def drop_cpuid(vm):
        del vm.mode.exit_table[R.CPUID]
    _, _, result = run(f"cpuid; {EXIT}", drop_cpuid)
    assert result.kind is StopKind.ERROR
    assert "no handler for exit reason 10 (CPUID)" in result.message and "eip=" in result.message


# -- every built-in guest ------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["vtx", "vtx-ept"])
@pytest.mark.parametrize("name", [g.name for g in list_guests()])
def test_builtin_guest_has_the_same_transcript_in_vtx(name, mode):
    info = next(g for g in list_guests() if g.name == name)
    vm, _ = make_vm(load_image(build_guest(name).elf, ram_size=128 << 20, image_name=name), mode=mode)
    result = vm.run()
    assert result.kind is StopKind.EXIT, result.message
    expected = info.expected_path.with_suffix(".vtx.expected") if name == "exits" else info.expected_path
    assert bytes(vm.serial) == expected.read_bytes()
    assert result.exit_status == info.exit_status


def test_code_written_after_its_page_was_scanned_is_rescanned():
    # `patch` first runs as NOPs (page scanned: no site there), then the guest writes
    # RDMSR; RET over it and calls it again: the write-protected code page is rescanned.
    src = f"""
        mov esp, 0x180000
        call patch
        mov dword ptr [patch], 0x90c3320f     # 0f 32 (rdmsr), c3 (ret), 90
        mov ecx, 0x174
        call patch
        {EXIT}
    patch:
        nop; nop; nop; ret
    """
    vm, log, result = run(src)
    assert result.exit_status == 1
    [(exit, f)] = log.of(R.MSR_READ)
    assert f[Field.VM_EXIT_INSTRUCTION_LEN] == 2 and exit.msr == 0x174
    assert vm.mode.sites.rescans >= 1


def test_cli_stat_table_and_json(tmp_path):
    import json
    from conftest import run_cli
    out = tmp_path / "stat.json"
    proc = run_cli("run", "exits", "--mode", "vtx", "--stat", "--stat-json", str(out))
    assert proc.returncode == 1
    text, stat = proc.stdout.decode(), proc.stderr.decode()   # the console; --stat on stderr
    assert "exits: done" in text and "IO_INSTRUCTION" in stat and "CR_ACCESS" in stat
    data = json.loads(out.read_text())
    by_name = {row["name"]: row for row in data["exits"]}
    assert data["mode"] == "vtx" and by_name["CPUID"]["reason"] == 10 and by_name["CPUID"]["count"] == 3
    counts = [row["count"] for row in data["exits"]]
    assert counts == sorted(counts, reverse=True) and data["total_exits"] == sum(counts)


def test_cli_control_and_vmcs_options():
    from conftest import run_cli
    proc = run_cli("run", "hello", "--mode", "vtx", "--vmcs", "GUEST_CR0=0x80000000")
    assert proc.returncode == 1 and b"VM-entry failure" in proc.stderr and b"CR0.PG = 1" in proc.stderr
    proc = run_cli("run", "hello", "--mode", "vtx", "--control", "NO_SUCH_EXITING")
    assert proc.returncode == 2 and b"no such control" in proc.stderr
    proc = run_cli("run", "hello", "--control", "HLT_EXITING=off")
    assert proc.returncode == 2 and b"need a VT-x mode" in proc.stderr
