"""The exception-escalation fix (vmm/cpu/quirks.py): consecutive handled faults keep their vectors."""
from __future__ import annotations

from keystone import KS_ARCH_X86, KS_MODE_32, Ks
from unicorn import UC_PROT_ALL

from vmm.cpu import quirks
from vmm.cpu.engine import Engine, Fault, Fill, Stop

CODE_BASE = 0x1000
# Each faulting instruction is followed by a NOP; the handler resumes after that NOP.
PROGRAM = """
    xor ecx, ecx
    div ecx
    nop
    mov ds, word ptr [0x3000]
    nop
    mov eax, dword ptr [0x500000]
    nop
    div ecx
    nop
    mov ds, word ptr [0x3000]
    nop
    mov eax, dword ptr [0x500000]
    nop
    hlt
"""


class RecordingOps:
    """Minimal VcpuOps: flat memory below 1 MiB, #PF above; records what it is told."""

    def __init__(self, fix: bool):
        self.fix = fix
        self.vectors: list[int] = []
        self.error_codes: list[int] = []
        self.engine: Engine | None = None

    def skip_past_nop(self) -> None:
        eng = self.engine
        eip = eng.reg("eip")
        eng.set_reg("eip", eip + eng.read_phys(eip, 16).index(0x90) + 1)

    def on_interrupt(self, vector, error_code, software):
        self.vectors.append(vector)
        self.error_codes.append(error_code)
        self.skip_past_nop()

    def on_invalid_opcode(self):
        raise AssertionError("no invalid opcode in this program")

    def on_tlb_fill(self, vaddr, access):
        if vaddr >= 0x100000:
            return Fault(14, 0, vaddr, access)
        return Fill(vaddr & ~0xFFF, UC_PROT_ALL)

    def on_port_in(self, port, size):
        return 0

    def on_port_out(self, port, size, value):
        pass

    def on_cpuid(self):
        return False

    def read_code_byte(self, linear):
        return self.engine.read_phys(linear, 1)[0]


def run_program(fix: bool) -> list[int]:
    ops = RecordingOps(fix)
    eng = Engine(ops)
    ops.engine = eng
    if not fix:  # undo the fix the engine applies, to show the quirk it corrects
        quirks_clear = quirks.clear_pending_exception
        quirks.clear_pending_exception = lambda uc: None
    try:
        eng.map_ram(0, 0x100000)
        code = bytes(Ks(KS_ARCH_X86, KS_MODE_32).asm(PROGRAM, CODE_BASE)[0])
        eng.write_phys(CODE_BASE, code)
        eng.write_phys(0x3000, (0x1234).to_bytes(2, "little"))  # beyond the GDT limit: #GP(0x1234)
        eng.set_reg("eip", CODE_BASE)
        for _ in range(10):
            stop = eng.run()
            if stop is not Stop.FAULT:
                break
            ops.vectors.append(eng.pending_fault.vector)
            if fix:
                quirks.clear_pending_exception(eng.uc)
            ops.skip_past_nop()
    finally:
        if not fix:
            quirks.clear_pending_exception = quirks_clear
    return ops.vectors, ops.error_codes


def test_offsets_are_found_by_probing():
    fields = quirks.probe_offsets()
    assert len({fields.error_code, fields.is_int, fields.old_exception}) == 3


def test_consecutive_faults_keep_their_true_vectors():
    vectors, error_codes = run_program(fix=True)
    assert vectors == [0, 13, 14, 0, 13, 14]
    assert error_codes == [0, 0x1234, 0, 0x1234]  # #DE has none; #GP names the selector


def test_without_the_fix_unicorn_escalates_to_double_fault():
    vectors, _ = run_program(fix=False)
    assert vectors[:2] == [0, 8], "the quirk this fix exists for is gone: revisit quirks.py"
