"""Harness ``vmcs``: random VMCS field writes, then VM entry, in ``vtx`` and ``vtx-ept``.

A case is a list of VMWRITEs — any field of :class:`~vmm.vmx.vmcs.Field` (read-only
ones included), its high half, or a random encoding; any value, or the current value
with one bit flipped (the useful mutation for control words) — done either before
VMLAUNCH or in the middle of the run (after some guest instructions, as a hypervisor
does while it handles an exit). The guest is a workload that causes one exit of each
common kind: paging on with identity tables, CR and DR moves, CPUID, port I/O, RDTSC,
MSRs, INVLPG, descriptor tables, software interrupts, #UD, VMCALL.

Each write must either succeed or fail as VMWRITE fails (a VMX error: unsupported
component 12, read-only component 13), and the run must end as the hardware would let
it: an entry failure with its report (exit reason with bit 31 set and the list of
failed checks), or a run that stops with a reason.
"""
from __future__ import annotations

from hypothesis import strategies as st

from ..vm import VM, StopKind
from ..vmx.vmcs import Field, VmxInstructionError, Width, encoding_width
from . import guest
from .core import Harness, Run, run_vm
from .instructions import _mov_imm, u32
from .paging import paging_prologue, table_bytes

MAX_INSTRUCTIONS = 10_000
TIMEOUT = 2.0

WORKLOAD = [
    b"\x0f\xa2",                                  # cpuid
    _mov_imm("eax", 0x40000000) + b"\x0f\xa2",    # cpuid (hypervisor leaf)
    b"\xe6\x80",                                  # out 0x80, al
    b"\xe4\x71",                                  # in al, 0x71
    b"\x0f\x31",                                  # rdtsc
    b"\x0f\x20\xc0\x0f\x22\xc0",                  # mov eax, cr0; mov cr0, eax
    b"\x0f\x20\xd8\x0f\x22\xd8",                  # mov eax, cr3; mov cr3, eax
    b"\x0f\x20\xe0\x0f\x22\xe0",                  # mov eax, cr4; mov cr4, eax
    b"\x0f\x01\x3d" + u32(guest.SLOTS),           # invlpg
    _mov_imm("ecx", 0x174) + b"\x0f\x32",         # rdmsr SYSENTER_CS
    _mov_imm("ecx", 0x174) + b"\x0f\x30",         # wrmsr SYSENTER_CS
    b"\x0f\x21\xf8\x0f\x23\xf8",                  # mov eax, dr7; mov dr7, eax
    b"\x0f\x01\x05" + u32(guest.DATA + 0x800),    # sgdt
    b"\x0f\x00\xc8",                              # str eax
    b"\xcd\x30",                                  # int 0x30
    b"\x0f\x0b",                                  # ud2
    b"\x0f\x01\xc1",                              # vmcall
    b"\xcc",                                      # int3
    b"\xa1" + u32(0x300000),                      # a load from a page not yet touched
    b"\xfb\x90\xfa",                              # sti; nop; cli
]

FIELDS = list(Field)


def field_bits(encoding: int) -> int:
    return 32 if encoding & 1 else Width(encoding_width(encoding)).bits


@st.composite
def vmwrite(draw) -> list:
    """[encoding, "set" | "flip", operand]."""
    choice = draw(st.integers(0, 9))
    if choice < 8:
        encoding = int(draw(st.sampled_from(FIELDS)))
        if encoding_width(encoding) is Width.BITS64 and draw(st.integers(0, 4)) == 0:
            encoding |= 1
    elif choice == 8:
        encoding = draw(st.integers(0, 0xFFFFFFFF))
    else:
        encoding = draw(st.integers(0, 0x7FFF))
    bits = field_bits(encoding) if encoding < 0x8000 else 32
    if draw(st.booleans()):
        return [encoding, "flip", draw(st.integers(0, bits - 1))]
    value = draw(st.sampled_from([0, 1, (1 << bits) - 1, 1 << (bits - 1), 0x80000000, 0xFFFFFFFF])
                 | st.integers(0, (1 << bits) - 1) | st.integers(0, (1 << 64) - 1))
    return [encoding, "set", value]


@st.composite
def cases(draw) -> dict:
    return {"writes": draw(st.lists(vmwrite(), min_size=1, max_size=8)),
            "after": draw(st.sampled_from([0, 0, 0, 40, 200, 2000]))}


def apply_writes(vmcs, writes: list) -> tuple[int, int]:
    """Do the VMWRITEs; returns (done, refused with a VMX error)."""
    done = refused = 0
    for encoding, op, operand in writes:
        try:
            value = operand
            if op == "flip":
                value = vmcs.read(encoding) ^ (1 << operand)
            vmcs.write(encoding, value)
            done += 1
        except VmxInstructionError:
            refused += 1
    return done, refused


def entry_failure_problems(vm: VM, result) -> list[str]:
    """An entry failure must say why: the report, and bit 31 in the exit-reason field."""
    if result.kind is not StopKind.ENTRY_FAILED:
        return []
    problems = []
    if "exit reason" not in result.message or "check(s) failed" not in result.message:
        problems.append(f"VM-entry failure without a report: {result.message[:200]!r}")
    if not vm.mode.vmcs.read(Field.VM_EXIT_REASON) >> 31:
        problems.append("VM-entry failure without bit 31 of the exit reason")
    return problems


IMAGE_SLOTS = paging_prologue("32", cr4_pse=False, wp=False) + WORKLOAD


class VmcsHarness(Harness):
    name = "vmcs"
    description = "random VMWRITEs (any field, any value, before launch or mid-run), then VM entry"

    def modes(self, available):
        return tuple(m for m in available if m in ("vtx", "vtx-ept"))

    def strategy(self):
        return cases()

    def execute(self, run: Run, case: dict) -> None:
        image = guest.load(guest.kernel_image(IMAGE_SLOTS, table_bytes("32", [])))
        after = case["after"]
        counts = {}

        def build():
            return VM(image, mode=run.mode, ram_size=guest.RAM_SIZE, serial_output=lambda data: None,
                      max_instructions=after or MAX_INSTRUCTIONS, timeout=TIMEOUT)

        def prepare(vm):
            if after:
                first = vm.run()             # run part of the workload, then edit the VMCS mid-run
                if first.kind is not StopKind.BUDGET:
                    run.outcome(first.kind.name)
                    return
                vm.max_instructions = after + MAX_INSTRUCTIONS
            counts["done"], counts["refused"] = apply_writes(vm.mode.vmcs, case["writes"])

        def after_run(vm, result):
            for problem in entry_failure_problems(vm, result):
                run.fail("CRASH", problem)
            return []

        run_vm(run, build, prepare=prepare, after=after_run)
        if counts.get("refused"):
            run.report.notes["VMWRITE refused (VMX error)"] += counts["refused"]
        if counts.get("done"):
            run.report.notes["VMWRITE done"] += counts["done"]
