"""Shadow paging against the guest's own tables, under random guest page-table edits.

A VM in ``vtx`` mode supplies the real shadow code, host memory and guest memory. The
test plays the guest: every edit is a store, so it first goes through the mode's
TLB-fill path exactly as the engine would send it (which is where a write to a
protected page table is intercepted), then lands in guest memory. After every edit,
CR3 switch and INVLPG, each access (read/write x user/supervisor) to each sampled page
must resolve the same way through the shadow as through a walk of the guest's tables.
"""
from __future__ import annotations

import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vmm.cpu.engine import PROT_WRITE, Fault, Fill
from vmm.mmu.paging import PageFault, Walker32, phys_reader, phys_writer
from vmm.vmx.vmcs import Field

from conftest import make_vm

PD = (0x10000, 0x11000)                 # two page directories (two address spaces)
PT0 = 0x12000                           # identity map of the low 4 MiB, shared
PTS = (0x13000, 0x14000, 0x15000)       # tables for the regions 4-8, 8-12, 12-16 MiB
FRAMES = [0x200000 + i * 0x1000 for i in range(8)]
P, RW, US, PS = 1, 2, 4, 0x80
CR0 = 0x80010011                        # PG, WP, ET, PE
CR4_PSE = 0x10

pte_values = st.builds(lambda frame, flags: frame | flags, st.sampled_from(FRAMES + [0]),
                       st.sampled_from([0, P, P | RW, P | US, P | RW | US]))
pde_values = st.one_of(st.builds(lambda pt, flags: pt | flags, st.sampled_from(PTS),
                                 st.sampled_from([0, P | RW | US, P | US, P | RW])),
                       st.sampled_from([0x400000 | P | RW | US | PS, 0]))
operations = st.one_of(
    st.tuples(st.just("pte"), st.integers(0, 2), st.integers(0, 7), pte_values),
    st.tuples(st.just("pde"), st.integers(0, 1), st.integers(1, 3), pde_values),
    st.tuples(st.just("cr3"), st.integers(0, 1)),
    st.tuples(st.just("invlpg"), st.integers(1, 3), st.integers(0, 7)),
)


def linear(region: int, page: int) -> int:
    return (region << 22) | (page << 12)


class Guest:
    def __init__(self):
        self.vm, _ = make_vm("hlt", mode="vtx")
        vm, eng = self.vm, self.vm.engine
        for pd in PD:
            vm.engine.write_phys(pd, struct.pack("<I", PT0 | P | RW))
        for i in range(1024):  # PT0: identity, supervisor only
            eng.write_phys(PT0 + 4 * i, struct.pack("<I", (i << 12) | P | RW))
        eng.set_reg("cr4", CR4_PSE)
        eng.set_reg("cr3", PD[0])
        eng.set_reg("cr0", CR0)
        vm.mode.mmu.guest_cr3_loaded(PD[0])
        self.reference = Walker32(phys_reader(eng.read_phys), phys_writer(eng.write_phys))
        self.user = False   # the privilege of the access being played

    def store(self, address: int, value: int) -> None:
        """A guest store at an identity-mapped address: the TLB fill first, then the write."""
        answer = self.vm.mode.mmu.tlb_fill(address, "write", user=self.user)
        assert isinstance(answer, Fill) and answer.perms & PROT_WRITE, answer
        self.vm.engine.write_phys(answer.host_page | (address & 0xFFF), struct.pack("<I", value))

    def apply(self, op) -> None:
        mode, eng = self.vm.mode, self.vm.engine
        if op[0] == "pte":
            _, table, index, value = op
            self.store(PTS[table] + 4 * index, value)
        elif op[0] == "pde":
            _, pd, index, value = op
            self.store(PD[pd] + 4 * index, value)
        elif op[0] == "cr3":
            eng.set_reg("cr3", PD[op[1]])
            mode.mmu.guest_cr3_loaded(PD[op[1]])
        else:
            mode.mmu.shadow.invalidate(linear(op[1], op[2]))

    def expected(self, address: int, write: bool, user: bool):
        eng = self.vm.engine
        try:
            t = self.reference.walk(CR0, eng.reg("cr3"), CR4_PSE, address, write=write, user=user, set_ad=False)
        except PageFault as pf:
            return ("fault", pf.error_code)
        return ("page", t.physical & ~0xFFF)

    def shadowed(self, address: int, write: bool, user: bool):
        mode = self.vm.mode
        self.user = user
        answer = mode.mmu.tlb_fill(address, "write" if write else "read", user=self.user)
        self.user = False
        if isinstance(answer, Fault):
            mode.vmcs.write(Field.VM_ENTRY_INTR_INFO_FIELD, 0)  # the injection no entry will deliver
            return ("fault", answer.error_code)
        if write:
            assert answer.perms & PROT_WRITE
        return ("page", answer.host_page)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(operations, min_size=1, max_size=25))
def test_shadow_matches_the_guest_tables_after_every_operation(ops):
    guest = Guest()
    samples = [linear(r, p) for r in (1, 2, 3) for p in (0, 3, 7)]
    for op in ops:
        guest.apply(op)
        for address in samples:
            for write in (False, True):
                for user in (False, True):
                    assert guest.shadowed(address, write, user) == guest.expected(address, write, user), \
                        (op, hex(address), write, user)


def test_counters_tell_hidden_from_true_faults():
    guest = Guest()
    guest.apply(("pde", 0, 1, PTS[0] | P | RW | US))
    guest.apply(("pte", 0, 0, FRAMES[0] | P | RW | US))
    c = guest.vm.mode.mmu.shadow.counters
    hidden, true = c.hidden_faults, c.true_faults
    assert guest.shadowed(linear(1, 0), False, False)[0] == "page"
    assert c.hidden_faults == hidden + 1
    assert guest.shadowed(linear(1, 1), False, False)[0] == "fault"   # PTE 1 not present
    assert c.true_faults == true + 1
    before = c.pte_write_intercepts
    guest.apply(("pte", 0, 0, 0))            # a write to a protected table is intercepted
    assert c.pte_write_intercepts == before + 1
    assert guest.shadowed(linear(1, 0), False, False)[0] == "fault"   # and the shadow followed
