"""Hostile guests beyond tests/test_adversarial.py: the same misbehaviour in every available
mode (trap and bt too), and the minimised cases the fuzz harnesses found. Each asserts
what a contained guest must get: a clean stop with a reason, and no way into the VMM's
own memory."""
from __future__ import annotations

import pytest
from test_adversarial import CASES, OUTSIDE, PIT_FASTEST, check_outside

from conftest import RAM, make_vm
from vmm.fuzz.core import Containment
from vmm.modes import MODES
from vmm.vm import HOST_MEMORY_BASE, StopKind
from vmm.vmx.vmcs import Field

# Flat guests boot in every mode but pv (a PV kernel has its own boot protocol and image).
FLAT_MODES = tuple(m for m in MODES if m != "pv")
NEW_MODES = tuple(m for m in FLAT_MODES if m not in ("native", "vtx", "vtx-ept"))


@pytest.mark.parametrize("mode", NEW_MODES)
@pytest.mark.parametrize("case", sorted(CASES))
def test_misbehaving_guest_is_stopped_in_the_newer_modes(case, mode):
    src, kind, fragment = CASES[case]
    vm, _ = make_vm(src, mode=mode, timeout=1.0)
    result = vm.run()
    assert result.kind is kind and fragment in result.message, result.message


@pytest.mark.parametrize("mode", NEW_MODES)
@pytest.mark.parametrize("case", sorted(OUTSIDE))
def test_memory_outside_the_guest_is_unassigned_in_the_newer_modes(case, mode):
    check_outside(case, mode)


@pytest.mark.slow
@pytest.mark.parametrize("mode", FLAT_MODES)
def test_exit_flood_under_an_instruction_budget(mode):
    vm, _ = make_vm("spin: out 0x80, al; in al, 0x71; cpuid; jmp spin", mode=mode, max_instructions=30_000,
                    timeout=30)
    result = vm.run()
    assert result.kind is StopKind.BUDGET and result.instructions == 30_000


@pytest.mark.parametrize("mode", FLAT_MODES)
def test_fastest_pit_without_idt_triple_faults_in_every_mode(mode):
    vm, _ = make_vm(PIT_FASTEST, mode=mode, timeout=5)
    result = vm.run()
    assert result.kind is StopKind.TRIPLE_FAULT


# -- found by the fuzz harnesses (vmm fuzz), minimised --------------------------------------------

# A guest-physical address outside RAM must not reach host memory: a store to
# VMM-private memory (VMX bitmaps, shadow and EPT tables live from HOST_MEMORY_BASE up)
# or just past RAM is a store to unassigned memory, dropped; the guest goes on to its HLT.
ESCAPES = {
    "store into VMM-private memory, paging off": f"mov dword ptr [{HOST_MEMORY_BASE:#x}], 0x41414141; hlt",
    "store just past RAM, paging off": f"mov dword ptr [{RAM:#x}], 0x41414141; hlt",
    "PTE mapping VMM-private memory": f"""
        mov edi, 0x300000; mov ecx, 1024; xor eax, eax; rep stosd     # page directory at 3 MiB
        mov dword ptr [0x300000], 0x00000083                          # PDE 0: 4 MiB identity
        mov dword ptr [0x300004], 0x00301003                          # PDE 1: table at 0x301000
        mov dword ptr [0x301000], {HOST_MEMORY_BASE | 3:#x}            # 0x400000 -> VMM memory
        mov eax, 0x10; mov cr4, eax
        mov eax, 0x300000; mov cr3, eax
        mov eax, cr0; or eax, 0x80000000; mov cr0, eax
        mov dword ptr [0x400000], 0x41414141
        hlt""",
}


@pytest.mark.parametrize("mode", FLAT_MODES)
@pytest.mark.parametrize("case", sorted(ESCAPES))
def test_guest_cannot_write_outside_its_vm(case, mode):
    vm, _ = make_vm(ESCAPES[case], mode=mode, timeout=5)
    guard = Containment(vm)
    result = vm.run()
    assert guard.breaches() == [], f"{mode}: {result.kind.name} {result.message}"
    assert result.kind is StopKind.HALTED, result.message
    assert result.memory["unassigned-memory writes (dropped)"] == 1


@pytest.mark.parametrize("mode", [m for m in FLAT_MODES if m in ("vtx", "vtx-ept")])
@pytest.mark.parametrize("dr", [4, 5])
def test_mov_dr4_dr5_is_contained(mode, dr):
    # DR4/DR5 alias DR6/DR7 with CR4.DE = 0 (SDM vol. 3 §18.2.2); the MOV-DR exit must
    # not hand the VMM a register name the engine does not have.
    modrm = 0xC0 | (dr << 3)
    vm, _ = make_vm(f".byte 0x0f, 0x21, {modrm:#x}; .byte 0x0f, 0x23, {modrm:#x}; mov al, 0; out 0xf4, al",
                    mode=mode, timeout=5)
    result = vm.run()
    assert result.kind is StopKind.EXIT, result.message


def _misconfigure_kernel_page(vm):
    """Make the EPT leaf of the guest's code page write-only (a misconfiguration)."""
    mode = vm.mode
    mode.mmu.map_ram_page(0x100000)
    name, address, value = mode.mmu.ept_builder.lookup(0x100000)
    mode.mmu.ept_builder.write64(address, (value & ~7) | 2)


@pytest.mark.skipif("vtx-ept" not in FLAT_MODES, reason="vtx-ept not available")
def test_ept_misconfiguration_of_ram_stops_the_guest():
    vm, _ = make_vm("nop; hlt", mode="vtx-ept", timeout=5, configure=_misconfigure_kernel_page)
    result = vm.run()
    assert result.kind is StopKind.ERROR and "misconfiguration" in result.message.lower()


@pytest.mark.skipif("vtx-ept" not in FLAT_MODES, reason="vtx-ept not available")
@pytest.mark.parametrize("low_bits", [0x2E, 0x1E, 0x5E | 0x100, 0x1F])   # memory type 6, walk 2/4, reserved
def test_invalid_ept_pointer_fails_vm_entry(low_bits):
    def bad_eptp(vm):
        eptp = vm.mode.vmcs.read(Field.EPT_POINTER)
        vm.mode.vmcs.write(Field.EPT_POINTER, (eptp & ~0xFFF) | low_bits)
    vm, _ = make_vm("nop; hlt", mode="vtx-ept", timeout=5, configure=bad_eptp)
    result = vm.run()
    if low_bits == 0x1E:   # WB, 4-level: valid
        assert result.kind is not StopKind.ENTRY_FAILED
    else:
        assert result.kind is StopKind.ENTRY_FAILED and "EPT pointer" in result.message


@pytest.mark.parametrize("mode", [m for m in ("vtx", "vtx-ept") if m in FLAT_MODES])
def test_vmcs_letting_page_faults_through_mid_run_is_contained(mode):
    # Found by `vmm fuzz --harness vmcs --seed 11` (case 618): the hypervisor stops
    # intercepting some #PFs mid-run under shadow paging. A refused TLB fill during the
    # VMM's own segment load once longjmp'd over the hook's Python frames (a later
    # segmentation fault). The run must end cleanly and leave the interpreter intact.
    import sys

    from vmm.fuzz.core import replay

    here = sys._getframe()
    case = {"writes": [[0x4006, "flip", 0]], "after": 40}      # PAGE_FAULT_ERROR_CODE_MASK ^= 1
    report = replay({"harness": "vmcs", "mode": mode, "seed": 11, "index": 618, "case": case})
    assert not report.failures and set(report.outcomes) <= {"EXIT", "ERROR"}
    assert sys._getframe() is here


def test_fault_address_of_a_16_bit_address_in_32_bit_code():
    # Found by the instructions harness in pv: `mov eax, [di]` (0x67 prefix) faulting made
    # the CR2 decoder ask the engine for register "di".
    from vmm.cpu.faultaddr import precise_fault_address

    regs = {"edi": 0x12345, "esp": 0x8000, "ebp": 0, "esi": 0}
    code = bytes.fromhex("678b05")                       # mov eax, dword ptr [di]
    assert precise_fault_address(0x2000, "read", 0x100000, code, regs.__getitem__) == 0x2345


@pytest.mark.skipif("vtx" not in FLAT_MODES, reason="vtx not available")
def test_shadow_paging_without_page_fault_exits_stops_with_why():
    from vmm.build.guests import build_guest
    from vmm.loader.image import load_image
    from vmm.vmx.tuning import apply_vmcs_writes

    image = load_image(build_guest("paging").elf, ram_size=128 << 20, image_name="paging")
    vm, _ = make_vm(image, mode="vtx", configure=lambda vm: apply_vmcs_writes(vm.mode.vmcs, ["EXCEPTION_BITMAP=0"]))
    result = vm.run()
    assert result.kind is StopKind.ERROR
    assert "shadow paging needs #PF exits" in result.message


# Found by `vmm fuzz --cases 1000 --seed 11`; each replayed as the harness ran it.
FUZZ_FINDINGS = [
    # trap: MOV from CR1 (does not exist) asked the engine for register "cr1": now #UD.
    ("instructions", "trap", {"kind": "slots", "instructions": ["0f0b", "0f20ce", "b819000000ffe0", "0f20c1"]}),
    # vtx-ept: EPT_POINTER made invalid (bit 7) mid-run raised ValueError from the walker.
    ("vmcs", "vtx-ept", {"writes": [[8218, "flip", 7], [16390, "flip", 12], [16416, "flip", 2],
                                    [26644, "flip", 25]], "after": 2000}),
    # vtx-ept: EPT_POINTER moved to another (valid) page: EPT violations never converged.
    ("vmcs", "vtx-ept", {"writes": [[24580, "set", 0], [27670, "flip", 0], [3082, "set", 236],
                                    [40219687, "set", 29075816], [8218, "flip", 14]], "after": 0}),
    # bt: the guest unmapped part of a translated code page before refetching it; the
    # translator compared 4 KiB with the shorter read (IndexError). Found with --seed 13.
    ("paging", "bt", {'accesses': ['c7056113010087430700', 'b800401000ffd0', 'c7050040100077050000'],
         'entries': [[1064960, 487, 147605], [1064960, 626, 136], [1064960, 76, 21090944],
                     [1064960, 1, 2711767], [1064960, 395, 1071983], [1064960, 940, 21090659],
                     [1064960, 231, 17724326], [1064960, 514, 7431305], [1064960, 195, 2644239],
                     [1064960, 7, 1056923], [1069056, 367, 25], [1069056, 421, 257],
                     [1069056, 543, 4965359], [1073152, 296, 2365], [1073152, 173, 2379],
                     [1073152, 250, 4743641], [1073152, 138, 2343069], [1073152, 255, 2490561],
                     [1073152, 186, 3147103], [1077248, 936, 4276092995], [1077248, 178, 815103],
                     [1081344, 316, 4383475], [1081344, 596, 4187133], [1081344, 550, 4274954395],
                     [1081344, 95, 383099574], [1081344, 1, 85365], [1081344, 586, 1508269],
                     [1081344, 224, 4186281]],
         'fmt': '32',
         'pse': False,
         'wp': False}),
    # pv: set_trap_table with entries straddling a page end read 4 bytes short.
    ("hypercalls", "pv", {"calls": [[0, 0xC0102FFC, 46, 0xC0000000, 3, 0xC0102FFC]], "data": "00" * 4096}),
]


@pytest.mark.parametrize("harness, mode, case", FUZZ_FINDINGS)
def test_fuzz_findings_stay_fixed(harness, mode, case):
    import sys

    from vmm.fuzz.core import replay

    assert mode in MODES
    here = sys._getframe()
    report = replay({"harness": harness, "mode": mode, "seed": 11, "index": 0, "case": case})
    assert not report.failures, [f.detail for f in report.findings]
    assert sys._getframe() is here


@pytest.mark.parametrize("mode", FLAT_MODES)
def test_privileged_instructions_with_16_bit_addresses(mode):
    # INVLPG [di] under a 0x67 prefix: every VMM decoder of it computes the
    # address from 16-bit registers (one asked the engine for register "di").
    src = """
        mov edi, 0x12345
        .byte 0x67, 0x0f, 0x01, 0x3d      # invlpg [di]
        mov al, 0
        out 0xf4, al
    """
    vm, _ = make_vm(src, mode=mode, timeout=5)
    result = vm.run()
    assert result.kind is StopKind.EXIT, result.message
