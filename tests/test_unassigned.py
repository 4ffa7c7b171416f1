"""Unassigned guest-physical memory behaves as on QEMU's PC: reads 0, writes dropped, the
guest goes on; VMM-private memory (shadow and EPT tables, VMX pages at 0xE0000000 and up)
is not guest-physical at all.

The same guest image runs under QEMU (when it is installed) and in every mode that boots
a Multiboot kernel (pv boots only Xen PV kernels, whose page tables name machine frames
the hypervisor validates); its serial output must be QEMU's byte for byte. The counts of
``--stat`` follow from the guest's own list of probes.
"""
from __future__ import annotations

import subprocess
import textwrap

import pytest

from tools.machines import qemu_binary, qemu_command
from vmm.build.guests import build_guest
from vmm.loader.image import load_image
from vmm.modes.memory import UNASSIGNED_READS, UNASSIGNED_WRITES
from vmm.vm import HOST_MEMORY_BASE, VM, StopKind
from vmm.vmx.exit_reasons import ExitReason

MODES = ("native", "trap", "bt", "vtx", "vtx-ept")
RAM = 128 << 20   # QEMU's default, so that both machines have the same holes
PATTERN = 0x12345678
# Above RAM, the VMM's own host memory (its first page, one further in, one a MiB on),
# the PCI hole, the page below the I/O APIC.
PHYSICAL_PROBES = (0x10000000, HOST_MEMORY_BASE, HOST_MEMORY_BASE + 0x1000, HOST_MEMORY_BASE + 0x100000,
                   0xF0000000, 0xFEBFF000)
# linear -> physical through a page table in RAM: both land on VMM memory
MAPPED_PROBES = ((0x400000, HOST_MEMORY_BASE), (0x401000, HOST_MEMORY_BASE + 0x1000))
TABLE_IN_UNASSIGNED = 0x800000   # its page-directory entry names a page table at HOST_MEMORY_BASE

PROBE_MACRO = f"""
%macro PROBE 1
    mov dword ptr [%1], {PATTERN:#x}
    PRINT "probe "
    PRINT_HEX %1
    PRINT " = "
    mov eax, dword ptr [%1]
    call print_hex
    call print_nl
%endmacro
"""


def physical_guest(probes) -> str:
    body = "\n".join(f"    PROBE {a:#x}" for a in probes)
    return f"""%include "kernel.inc"
{PROBE_MACRO}
kmain:
{body}
    PRINT "still running\\n"
    EXIT EXIT_OK

%include "kernel_bss.inc"
"""


def paging_guest() -> str:
    ptes = "\n".join(f"    mov dword ptr [pt + {(lin >> 12 & 0x3FF) * 4}], {phys | 3:#x}"
                     for lin, phys in MAPPED_PROBES)
    probes = "\n".join(f"    PROBE {lin:#x}" for lin, _ in MAPPED_PROBES)
    return f"""%include "kernel.inc"
{PROBE_MACRO}
kmain:
    mov dword ptr [pd], 0x83                    // 0-4 MiB: identity, a 4 MiB page
    lea eax, [pt]
    or eax, 3
    mov dword ptr [pd + {(MAPPED_PROBES[0][0] >> 22) * 4}], eax
    mov dword ptr [pd + {(TABLE_IN_UNASSIGNED >> 22) * 4}], {HOST_MEMORY_BASE | 3:#x}
{ptes}
    mov eax, cr4
    or eax, 0x10                                // CR4.PSE
    mov cr4, eax
    lea eax, [pd]
    mov cr3, eax
    mov eax, cr0
    or eax, 0x80000000                          // CR0.PG
    mov cr0, eax
{probes}
    PRINT "page table in unassigned memory\\n"
    mov eax, dword ptr [{TABLE_IN_UNASSIGNED:#x}]
    PRINT "not reached\\n"
    EXIT EXIT_OK

.align 4096
pd:
    .space 4096
pt:
    .space 4096

%include "kernel_bss.inc"
"""


def build(tmp_path, name: str, source: str) -> bytes:
    path = tmp_path / f"{name}.s"
    path.write_text(textwrap.dedent(source))
    return build_guest(str(path), use_cache=False).elf


def run_vmm(elf: bytes, mode: str):
    out = bytearray()
    vm = VM(load_image(elf, ram_size=RAM), mode=mode, ram_size=RAM, serial_output=out.extend, timeout=60)
    return vm.run(), bytes(out)


def run_qemu(elf: bytes, tmp_path) -> tuple[bytes, int]:
    kernel = tmp_path / "guest.elf"
    kernel.write_bytes(elf)
    proc = subprocess.run(qemu_command(str(kernel)), stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
    return proc.stdout, proc.returncode


def expected_physical(probes) -> bytes:
    """What the guest prints on a machine where those addresses are unassigned."""
    return b"".join(b"probe 0x%08x = 0x00000000\n" % a for a in probes) + b"still running\n"


@pytest.fixture(scope="module")
def qemu_reference(tmp_path_factory):
    """QEMU's output for each guest, or None without QEMU (the architectural expectation
    is then checked alone)."""
    if qemu_binary("i386") is None:
        return None
    tmp = tmp_path_factory.mktemp("qemu")
    return {name: run_qemu(build(tmp, name, src), tmp)
            for name, src in (("physical", physical_guest(PHYSICAL_PROBES)), ("paging", paging_guest()))}


@pytest.mark.qemu
def test_qemu_reads_zero_from_unassigned_memory(qemu_reference):
    """The reference itself: QEMU 7.2's PC reads 0 where nothing is and drops the writes."""
    if qemu_reference is None:
        pytest.skip("qemu-system-i386 is not on PATH")
    out, status = qemu_reference["physical"]
    assert out == expected_physical(PHYSICAL_PROBES)
    assert status == 1


@pytest.mark.parametrize("mode", MODES)
def test_physical_accesses_read_zero_and_drop_writes(mode, tmp_path, qemu_reference):
    result, out = run_vmm(build(tmp_path, "physical", physical_guest(PHYSICAL_PROBES)), mode)
    assert result.kind is StopKind.EXIT, result.message
    assert out == expected_physical(PHYSICAL_PROBES)
    if qemu_reference is not None:
        assert (out, result.status) == qemu_reference["physical"]
    assert result.memory[UNASSIGNED_READS] == len(PHYSICAL_PROBES)
    assert result.memory[UNASSIGNED_WRITES] == len(PHYSICAL_PROBES)


@pytest.mark.parametrize("mode", MODES)
def test_page_tables_pointing_at_vmm_memory_reach_nothing(mode, tmp_path, qemu_reference):
    """A PTE naming VMM memory reads 0; a page table there reads as not-present entries,
    so the access is the guest's own #PF (reported by its default handler)."""
    result, out = run_vmm(build(tmp_path, "paging", paging_guest()), mode)
    lines = out.decode().splitlines()
    assert lines[:len(MAPPED_PROBES)] == [f"probe {lin:#010x} = 0x00000000" for lin, _ in MAPPED_PROBES]
    assert f"CR2={TABLE_IN_UNASSIGNED:#010x}" in lines[-1] and "vector 14 (#PF) error=0x00000000" in lines[-1]
    assert "not reached" not in out.decode()
    if qemu_reference is not None:
        assert (out, result.status) == qemu_reference["paging"]
    assert result.memory[UNASSIGNED_WRITES] == len(MAPPED_PROBES)


def test_vtx_ept_takes_an_ept_violation_per_unassigned_access(tmp_path):
    """Each load and store is one EPT_VIOLATION exit, emulated: the difference from the same
    guest with no probes is two exits (a store and a load) per probe."""
    def violations(probes) -> int:
        result, _ = run_vmm(build(tmp_path, f"p{len(probes)}", physical_guest(probes)), "vtx-ept")
        assert result.kind is StopKind.EXIT, result.message
        return result.exits[ExitReason.EPT_VIOLATION]
    # probes on pages of their own, so no RAM page of the guest is touched the more for them
    assert violations(PHYSICAL_PROBES) - violations(()) == 2 * len(PHYSICAL_PROBES)


# The VMM's own accesses on the guest's behalf: an operand trap emulates, an IDT that
# event delivery reads (before, both stopped the VM: "outside the guest's RAM").
VMM_READ_GUEST = f"""%include "kernel.inc"
kmain:
    SGDT_M saved_gdtr
    LGDT_M {PHYSICAL_PROBES[0]:#x}              // trap emulates it: the VMM reads the operand
    LGDT_M saved_gdtr
    PRINT "lgdt from unassigned memory: still running\\n"
    EXIT EXIT_OK
.align 4
saved_gdtr: .space 8
%include "kernel_bss.inc"
"""
IDT_IN_UNASSIGNED_GUEST = f"""%include "kernel.inc"
kmain:
    LIDT_M hole_idtr
    PRINT "int3 through an IDT in unassigned memory\\n"
    int3
    PRINT "not reached\\n"
    EXIT EXIT_OK
.align 4
hole_idtr: .word 0x7ff
           .long {PHYSICAL_PROBES[0]:#x}
%include "kernel_bss.inc"
"""


@pytest.mark.parametrize("mode", MODES)
def test_the_vmms_own_reads_of_unassigned_memory_read_zero(mode, tmp_path):
    """An emulated LGDT's operand and the gate an event delivery reads come from the
    unassigned device too: zeros, counted; the guest goes on (or, for an IDT of zeros,
    takes the #GP of an invalid gate and triple-faults, as on QEMU)."""
    result, out = run_vmm(build(tmp_path, "lgdt", VMM_READ_GUEST), mode)
    assert result.kind is StopKind.EXIT, result.message
    assert out == b"lgdt from unassigned memory: still running\n"
    assert result.memory[UNASSIGNED_READS] >= 1
    result, out = run_vmm(build(tmp_path, "idt", IDT_IN_UNASSIGNED_GUEST), mode)
    assert result.kind is StopKind.TRIPLE_FAULT, result.message
    assert "(#BP -> #GP -> #GP -> #DF -> #GP)" in result.message
    assert out == b"int3 through an IDT in unassigned memory\n"


@pytest.mark.qemu
def test_qemu_agrees_on_the_vmms_own_reads(tmp_path):
    if qemu_binary("i386") is None:
        pytest.skip("qemu-system-i386 is not on PATH")
    assert run_qemu(build(tmp_path, "lgdt", VMM_READ_GUEST), tmp_path) == \
        (b"lgdt from unassigned memory: still running\n", 1)
    out, status = run_qemu(build(tmp_path, "idt", IDT_IN_UNASSIGNED_GUEST), tmp_path)
    assert out == b"int3 through an IDT in unassigned memory\n" and status == 0   # -no-reboot: a reset ends QEMU
