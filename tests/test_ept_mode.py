"""vtx-ept end to end, and the contrast with shadow paging in vtx."""
from __future__ import annotations

import pytest

from vmm.build.guests import build_guest
from vmm.loader.image import load_image
from vmm.vm import StopKind
from vmm.vmx.exit_reasons import ExitReason as R
from vmm.vmx.qualification import EptViolation as EptQ
from vmm.vmx.qualification import InterruptionInfo
from vmm.vmx.tuning import apply_controls, apply_vmcs_writes
from vmm.vmx.vmcs import Field

from conftest import make_vm, run_cli

EXIT = "mov al, 0; out 0xf4, al"


def paging_image():
    return load_image(build_guest("paging").elf, ram_size=128 << 20)


def run_paging(mode, configure=None, **options):
    vm, log = make_vm(paging_image(), mode=mode, configure=configure, mode_options=options or None)
    result = vm.run()
    assert result.exit_status == 1, result.message
    return vm, log, result


def test_shadow_paging_and_ept_show_opposite_exits():
    _, _, shadow = run_paging("vtx")
    _, _, ept = run_paging("vtx-ept")
    for reason in (R.CR_ACCESS, R.INVLPG, R.EXCEPTION_NMI):
        assert shadow.exits[reason] > 0 and ept.exits[reason] == 0, reason
    assert shadow.exits[R.EPT_VIOLATION] == 0 and ept.exits[R.EPT_VIOLATION] > 0
    assert shadow.memory["hidden page faults (shadow filled)"] > 0
    assert shadow.memory["true page faults (injected)"] == 3     # the guest's three demand faults
    assert ept.memory["walk references"] > 0 and ept.memory["  EPT entries translating guest tables"] > 0


def test_walk_references_per_miss_are_bounded_by_the_2d_formula():
    vm, _, result = run_paging("vtx-ept")
    walks, refs = result.memory["TLB misses (2-D walks)"], result.memory["walk references"]
    assert walks > 0
    # 32-bit paging under 4-level EPT: at most 14 per successful walk; EPT violations
    # add partial walks, so the average is at most 14 plus what the violations cost.
    assert refs <= 14 * walks + 4 * 5 * result.exits[R.EPT_VIOLATION]


def test_page_walk_cache_saves_ept_references_not_results():
    vm_plain, _, plain = run_paging("vtx-ept")
    vm_pwc, _, cached = run_paging("vtx-ept", page_walk_cache=True)
    assert bytes(vm_plain.serial) == bytes(vm_pwc.serial)
    assert cached.memory["page-walk cache hits"] > 0
    assert (cached.memory["  EPT entries translating guest tables"]
            < plain.memory["  EPT entries translating guest tables"])
    assert cached.memory["  guest page-table entries"] == plain.memory["  guest page-table entries"]


def test_without_vpid_every_entry_flushes_the_tlb():
    _, _, with_vpid = run_paging("vtx-ept")
    _, _, without = run_paging("vtx-ept", configure=lambda vm: apply_controls(vm.mode.vmcs, ["ENABLE_VPID=off"]))
    assert with_vpid.memory["TLB flushes on VM entry"] == 0
    assert without.memory["TLB flushes on VM entry"] >= sum(without.exits.values()) - without.exits[R.EPT_VIOLATION]
    assert without.memory["TLB misses (2-D walks)"] > 5 * with_vpid.memory["TLB misses (2-D walks)"]


def test_vpid_matters_for_shadow_paging_too():
    _, _, without = run_paging("vtx", configure=lambda vm: apply_controls(vm.mode.vmcs, ["ENABLE_VPID=off"]))
    assert without.memory["TLB flushes on VM entry"] > 0


def test_ept_violation_qualification_and_lazy_backing():
    # paging off: the linear address is guest-physical; the write to a fresh page faults in EPT
    src = f"mov dword ptr [0x800123], 0x1234; mov eax, dword ptr [0x800123]; mov esi, eax; {EXIT}"
    vm, log = make_vm(src, mode="vtx-ept")
    result = vm.run()
    assert result.exit_status == 1 and vm.engine.reg("esi") == 0x1234
    violations = [(e, f) for e, f in log.of(R.EPT_VIOLATION) if e.gpa == 0x800000]
    [(exit, fields)] = violations
    q = EptQ.decode(fields[Field.EXIT_QUALIFICATION])
    assert q.write and not q.read and q.linear_valid and q.translated
    assert (q.readable, q.writable, q.executable) == (False, False, False)  # not mapped at all
    assert vm.mode.vmcs.read(Field.GUEST_PHYSICAL_ADDRESS) >= 0  # the field exists and was written
    assert 0x800000 in vm.mode.mmu.backed


def test_device_page_accesses_are_ept_misconfiguration_exits():
    src = f"mov eax, dword ptr [0xfee00030]; mov esi, eax; mov eax, dword ptr [0xfee00020]; {EXIT}"
    vm, log = make_vm(src, mode="vtx-ept")
    result = vm.run()
    assert result.exit_status == 1
    assert vm.engine.reg("esi") == 0x00050014          # the local APIC version register
    assert len(log.of(R.EPT_MISCONFIG)) == 2 and len(log.of(R.EPT_VIOLATION)) >= 1


def test_access_outside_ram_and_devices_is_an_emulated_ept_violation():
    """Unassigned memory: each access an EPT violation at its guest-physical address,
    emulated (a read is 0), and the guest goes on."""
    log = []
    vm, _ = make_vm(f"mov eax, 0xffffffff; mov eax, dword ptr [0x90000000]; {EXIT}", mode="vtx-ept",
                    configure=lambda vm: vm.bus.subscribe("exit", log.append))
    result = vm.run()
    assert result.kind is StopKind.EXIT, result.message
    unassigned = [e for e in log if e.reason is R.EPT_VIOLATION and e.gpa == 0x90000000]
    assert len(unassigned) == 1 and EptQ.decode(unassigned[0].qualification).read
    assert result.memory["unassigned-memory reads (0 returned)"] == 1
    assert vm.engine.reg("eax") == 0


def test_page_fault_mask_and_match_on_the_guests_own_faults():
    def pf_exits(*items):
        vm, log, _ = run_paging("vtx-ept", configure=lambda vm: apply_vmcs_writes(vm.mode.vmcs, items))
        return [InterruptionInfo.decode(f[Field.VM_EXIT_INTR_INFO]).vector for _, f in log.of(R.EXCEPTION_NMI)]
    bitmap = 1 << 14
    # the guest takes three demand faults: a write (error code 2) and two reads (0)
    assert pf_exits(f"EXCEPTION_BITMAP={bitmap}") == [14, 14, 14]
    assert pf_exits(f"EXCEPTION_BITMAP={bitmap}", "PAGE_FAULT_ERROR_CODE_MASK=2",
                    "PAGE_FAULT_ERROR_CODE_MATCH=2") == [14]
    assert pf_exits("EXCEPTION_BITMAP=0", "PAGE_FAULT_ERROR_CODE_MASK=2",
                    "PAGE_FAULT_ERROR_CODE_MATCH=2") == [14, 14]
    assert pf_exits() == []


def test_invept_flushes_the_page_walk_cache():
    vm, _, _ = run_paging("vtx-ept", page_walk_cache=True)
    assert vm.mode.mmu.nested.pwc
    vm.mode.invept()
    assert not vm.mode.mmu.nested.pwc and vm.mode.memory_counters()["INVEPT"] == 1
    vm.mode.invvpid(1)
    assert vm.mode.memory_counters()["INVVPID"] == 1


def test_real_mode_boot_sector_runs_under_unrestricted_guest(tmp_path):
    from conftest import assemble
    code = assemble("mov al, 0x41; mov dx, 0x3f8; out dx, al; mov al, 0x21; mov dx, 0xf4; out dx, al; hlt",
                    0x7C00, bits=16)
    image = tmp_path / "boot.bin"
    image.write_bytes(code + bytes(510 - len(code)) + b"\x55\xaa")
    proc = run_cli("run", str(image), "--mode", "vtx-ept")
    assert proc.stdout == b"A" and proc.returncode == (0x21 << 1) | 1


@pytest.mark.parametrize("mode", ["native", "vtx", "vtx-ept"])
def test_walk_explainer(mode):
    proc = run_cli("walk", "paging", "--gva", "0x40001004", "--at", "pf_handler", "--mode", mode)
    out = proc.stdout.decode()
    assert proc.returncode == 0, proc.stderr
    assert "breakpoint at EIP" in out and "guest #PF, error code 0x0 (not present, read, supervisor)" in out
    if mode == "vtx-ept":
        assert "EPT walk for the guest PDE's address" in out and "EPT PML4E" in out
    if mode == "vtx":
        assert "shadow page directory" in out


def test_walk_explainer_success_and_bad_symbol():
    proc = run_cli("walk", "paging", "--gva", "0xc0101bc9", "--mode", "vtx-ept")
    out = proc.stdout.decode()
    assert "result: guest-physical 0x00101bc9 -> host-physical 0x00101bc9" in out
    assert "EPT walk for the data page" in out
    proc = run_cli("walk", "paging", "--gva", "0x1000", "--at", "no_such_label")
    assert proc.returncode == 2 and b"not a symbol" in proc.stderr
