"""Entering rings 1-3 through the VMM's IRET trampoline (Engine.iret_to), the mechanism a
trap-and-emulate or paravirtual VMM needs to run a guest kernel deprivileged."""
from __future__ import annotations

import struct

from keystone import KS_ARCH_X86, KS_MODE_32, Ks
from unicorn import UC_PROT_ALL

from vmm.cpu.engine import TRAMPOLINE_LINEAR, Engine, Fill, Stop


def descriptor(access: int) -> bytes:
    """Flat 4 GiB descriptor with the given access byte (type, S, DPL, P)."""
    return struct.pack("<HHBBBB", 0xFFFF, 0, 0, access, 0xCF, 0)


# 0x08/0x10 ring-0 code/data (the VMM's), 0x19/0x21 ring-1, 0x2b/0x33 ring-3
GDT = (bytes(8) + descriptor(0x9A) + descriptor(0x92) + descriptor(0xBA) + descriptor(0xB2)
       + descriptor(0xFA) + descriptor(0xF2))
CODE = 0x2000


class Ops:
    """Identity memory, and a record of the exceptions Unicorn reports."""

    def __init__(self):
        self.vectors: list[tuple[int, int]] = []
        self.engine: Engine | None = None

    def on_interrupt(self, vector, error_code, software):
        self.vectors.append((vector, self.engine.reg("cs") & 3))
        self.engine.request_stop("exception")

    def on_invalid_opcode(self):
        raise AssertionError("unexpected #UD")

    def on_tlb_fill(self, vaddr, access):
        return Fill(vaddr & ~0xFFF, UC_PROT_ALL)

    def on_port_in(self, port, size):
        return 0

    def on_port_out(self, port, size, value):
        pass

    def on_cpuid(self):
        return False

    def on_rdtsc(self):
        return False

    def on_code_site(self, address):
        pass

    def read_code_byte(self, linear):
        return self.engine.read_phys(linear, 1)[0]


def machine(code: str) -> tuple[Engine, Ops]:
    ops = Ops()
    eng = Engine(ops)
    ops.engine = eng
    eng.map_ram(0, 0x100000)
    eng.write_phys(0x500, GDT)
    eng.set_table("gdtr", 0x500, len(GDT) - 1)
    eng.set_reg("cr0", 0x11)
    eng.set_reg("cs", 0x08)
    eng.set_reg("ss", 0x10)
    eng.write_phys(CODE, bytes(Ks(KS_ARCH_X86, KS_MODE_32).asm(code, CODE)[0]))
    return eng, ops


def test_iret_to_ring1_then_a_privileged_instruction_traps():
    eng, ops = machine("mov eax, cs; mov ebx, ss; hlt")
    eng.iret_to(eip=CODE, cs=0x19, eflags=0x2, esp=0x9000, ss=0x21, vmm_cs=0x08, vmm_ss=0x10)
    assert (eng.reg("cs"), eng.reg("ss"), eng.reg("esp")) == (0x19, 0x21, 0x9000)
    assert eng.run() is Stop.REQUESTED
    assert eng.reg("eax") == 0x19 and eng.reg("ebx") == 0x21
    assert ops.vectors == [(13, 1)]  # HLT at CPL 1: #GP, the trap a VMM emulates


def test_from_ring3_to_ring1_and_the_trampoline_is_the_vmms():
    eng, ops = machine("nop; cli")
    eng.iret_to(eip=CODE, cs=0x2B, eflags=0x202, esp=0x8000, ss=0x33, vmm_cs=0x08, vmm_ss=0x10)
    assert eng.reg("cs") & 3 == 3
    eng.iret_to(eip=CODE, cs=0x19, eflags=0x2, esp=0x9000, ss=0x21, vmm_cs=0x08, vmm_ss=0x10)
    assert eng.reg("cs") == 0x19
    assert eng.run() is Stop.REQUESTED and ops.vectors == [(13, 1)]  # CLI with IOPL 0 at CPL 1
    assert eng.read_phys(eng.trampoline, 1) == b"\xcf" and TRAMPOLINE_LINEAR >= 0xFFC00000
