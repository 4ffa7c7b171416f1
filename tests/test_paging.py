"""Guest paging walkers: 32-bit, PAE and 4-level translations, rights, A/D flags and the
#PF error codes of SDM vol. 3 §4.7, then a property test against tests/reference_walk.py."""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reference_walk import POOL, LazyMemory, make_source, walk_memory
from vmm.mmu.paging import (
    PAGING_4LEVEL,
    PAGING_32,
    PAGING_PAE,
    GuestWalker,
    PageFault,
    Walker32,
    describe_error_code,
    paging_format,
    phys_reader,
    phys_writer,
)
from vmm.x86 import CR0, CR4, EFER, PTE, PFError

P, RW, US, A, D, PS, XD = PTE.P, PTE.RW, PTE.US, PTE.A, PTE.D, PTE.PS, PTE.XD
CR0_PG, CR0_WP = CR0.PG, CR0.WP
CR4_PAE, CR4_PSE, CR4_SMAP, CR4_SMEP = CR4.PAE, CR4.PSE, CR4.SMAP, CR4.SMEP
EFER_LMA, EFER_LME, EFER_NXE = EFER.LMA, EFER.LME, EFER.NXE
PF_ID, PF_P, PF_RSVD, PF_US, PF_WR = PFError.ID, PFError.P, PFError.RSVD, PFError.US, PFError.WR


class Ram:
    """Guest-physical memory as a bytearray."""

    def __init__(self, size: int = 4 << 20):
        self.b = bytearray(size)

    def read(self, addr: int, size: int) -> int:
        return int.from_bytes(self.b[addr:addr + size], "little")

    def write(self, addr: int, size: int, value: int) -> None:
        self.b[addr:addr + size] = value.to_bytes(size, "little")

    def read_bytes(self, addr: int, size: int) -> bytes:
        return bytes(self.b[addr:addr + size])

    def write_bytes(self, addr: int, data: bytes) -> None:
        self.b[addr:addr + len(data)] = data


PG = CR0_PG | 1
PGWP = PG | CR0_WP
ALL = P | RW | US


def fault(fn) -> int:
    with pytest.raises(PageFault) as e:
        fn()
    return e.value.error_code


# -- 32-bit paging -----------------------------------------------------------------------------
PD, PT = 0x1000, 0x2000


def setup32(pde=PT | ALL, pte=0x5000 | ALL, lin=0x00401234):
    ram = Ram()
    ram.write(PD + 4 * (lin >> 22), 4, pde)
    ram.write(PT + 4 * ((lin >> 12) & 0x3FF), 4, pte)
    return ram, GuestWalker(ram.read, ram.write), lin


def test_32bit_4k_translation_and_entries():
    ram, w, lin = setup32()
    t = w.walk(PG, PD, 0, lin, write=False, user=False)
    assert t.physical == 0x5234 and t.page_size == 4096 and t.format == "32-bit"
    assert t.level_names == ("PDE", "PTE")
    assert t.entries == [("PDE", PD + 4, PT | ALL), ("PTE", PT + 4 * 1, 0x5000 | ALL)]
    assert w.references == 2 and w.counts == {"PDE": 1, "PTE": 1}
    assert t.writable and t.user and t.executable and not t.dirty


def test_32bit_accessed_and_dirty():
    ram, w, lin = setup32()
    w.walk(PG, PD, 0, lin, write=False, user=False)
    assert ram.read(PD + 4, 4) == PT | ALL | A
    assert ram.read(PT + 4, 4) == 0x5000 | ALL | A          # no D on a read
    t = w.walk(PG, PD, 0, lin, write=True, user=False)
    assert t.dirty
    assert ram.read(PD + 4, 4) == PT | ALL | A              # D never in a non-leaf PDE
    assert ram.read(PT + 4, 4) == 0x5000 | ALL | A | D


def test_no_ad_updates_without_set_ad_or_on_a_fault():
    ram, w, lin = setup32(pte=0x5000 | P | US)
    before = bytes(ram.b[:0x3000])
    w.walk(PG, PD, 0, lin, write=False, user=True, set_ad=False)
    assert bytes(ram.b[:0x3000]) == before
    assert fault(lambda: w.walk(PG, PD, 0, lin, write=True, user=True)) == PF_P | PF_WR | PF_US
    assert bytes(ram.b[:0x3000]) == before


def test_32bit_4mib_pages_need_cr4_pse():
    ram = Ram(16 << 20)
    lin = 0x00C01234
    ram.write(PD + 4 * 3, 4, 0x00800000 | PS | ALL)
    w = GuestWalker(ram.read, ram.write)
    t = w.walk(PG, PD, CR4_PSE, lin, write=True, user=True)
    assert t.physical == 0x00800000 | (lin & 0x3FFFFF)
    assert t.page_size == 4 << 20 and t.level_names == ("PDE",) and w.references == 1
    assert ram.read(PD + 12, 4) == 0x00800000 | PS | ALL | A | D    # D in a 4 MiB PDE
    # CR4.PSE = 0: PS is ignored and the PDE points to a page table at 0x00800000.
    ram.write(0x00800000 + 4 * 0x001, 4, 0x7000 | ALL)
    t = w.walk(PG, PD, 0, lin, write=False, user=False)
    assert t.physical == 0x7234 and t.level_names == ("PDE", "PTE") and t.page_size == 4096


def test_32bit_pse36_high_bits_and_reserved_bits():
    ram = Ram()
    w = GuestWalker(ram.read, ram.write)
    ram.write(PD, 4, 0x00400000 | PS | ALL | 0x5 << 13)           # bits 16:13 -> address bits 35:32
    assert w.walk(PG, PD, CR4_PSE, 0x123, write=False, user=False).physical == 0x5_0040_0123
    ram.write(PD, 4, 0x00400000 | PS | ALL | 1 << 21)             # bits 21:17 reserved (M = 36)
    assert fault(lambda: w.walk(PG, PD, CR4_PSE, 0x123, write=True, user=True)) == PF_P | PF_RSVD | PF_WR | PF_US
    ram.write(PD, 4, 0x00400000 | PS | ALL | 1 << 17)
    assert fault(lambda: w.walk(PG, PD, CR4_PSE, 0x123, write=False, user=False)) == PF_P | PF_RSVD


@pytest.mark.parametrize("pde,pte,write,user,code", [
    (0, 0, False, False, 0),                                   # not present: P=0
    (0, 0, True, False, PF_WR),
    (0, 0, False, True, PF_US),
    (0, 0, True, True, PF_WR | PF_US),
    (PT | ALL, 0x5000, True, True, PF_WR | PF_US),             # PTE not present
    (PT | P | RW, 0x5000 | ALL, False, True, PF_P | PF_US),    # U/S=0 in the PDE
    (PT | ALL, 0x5000 | P | RW, False, True, PF_P | PF_US),    # U/S=0 in the PTE
    (PT | P | US, 0x5000 | ALL, True, True, PF_P | PF_WR | PF_US),   # R/W=0 in the PDE
    (PT | ALL, 0x5000 | P | US, True, True, PF_P | PF_WR | PF_US),
])
def test_32bit_error_codes(pde, pte, write, user, code):
    ram, w, lin = setup32(pde, pte)
    assert fault(lambda: w.walk(PG, PD, 0, lin, write=write, user=user)) == code
    with pytest.raises(PageFault) as e:
        w.walk(PG, PD, 0, lin, write=write, user=user)
    assert e.value.address == lin                             # CR2


def test_cr0_wp_governs_supervisor_writes_only():
    ram, w, lin = setup32(pte=0x5000 | P | US)                 # read-only user page
    t = w.walk(PG, PD, 0, lin, write=True, user=False)         # WP=0: supervisor may write
    assert t.writable and t.dirty
    assert fault(lambda: w.walk(PGWP, PD, 0, lin, write=True, user=False)) == PF_P | PF_WR
    assert not w.walk(PGWP, PD, 0, lin, write=False, user=False).writable
    assert fault(lambda: w.walk(PG, PD, 0, lin, write=True, user=True)) == PF_P | PF_WR | PF_US


def test_32bit_fetches_ignore_nx_and_report_id_only_with_smep():
    ram, w, lin = setup32(pte=0x5000 | ALL | XD >> 32)         # bit 31 is an address bit here
    assert w.walk(PG, PD, 0, lin, write=False, user=False, fetch=True, efer=EFER_NXE).executable
    ram2, w2, _ = setup32(pte=0x5000)
    assert fault(lambda: w2.walk(PG, PD, 0, lin, write=False, user=False, fetch=True, efer=EFER_NXE)) == 0
    assert fault(lambda: w2.walk(PG, PD, CR4_SMEP, lin, write=False, user=False, fetch=True)) == PF_ID


def test_smep_and_smap():
    ram, w, lin = setup32()                                     # a user page
    cr4 = CR4_SMEP | CR4_SMAP
    assert fault(lambda: w.walk(PG, PD, cr4, lin, write=False, user=False, fetch=True)) == PF_P | PF_ID
    assert fault(lambda: w.walk(PG, PD, cr4, lin, write=False, user=False)) == PF_P
    assert fault(lambda: w.walk(PG, PD, cr4, lin, write=True, user=False)) == PF_P | PF_WR
    t = w.walk(PG, PD, cr4, lin, write=True, user=False, ac=True)   # EFLAGS.AC = 1: allowed
    assert t.writable and t.readable and not t.executable
    t = w.walk(PG, PD, cr4, lin, write=False, user=True, fetch=True)  # user accesses unaffected
    assert t.executable
    # Supervisor pages are unaffected by SMEP/SMAP.
    ram2, w2, _ = setup32(pte=0x5000 | P | RW)
    assert w2.walk(PG, PD, cr4, lin, write=True, user=False).physical == 0x5234
    assert w2.walk(PG, PD, cr4, lin, write=False, user=False, fetch=True).executable
    # SMAP with AC=1 and CR0.WP=1 still needs R/W=1.
    ram3, w3, _ = setup32(pte=0x5000 | P | US)
    assert fault(lambda: w3.walk(PGWP, PD, CR4_SMAP, lin, write=True, user=False, ac=True)) == PF_P | PF_WR


def test_paging_off_is_identity():
    w = GuestWalker(Ram().read, Ram().write)
    t = w.walk(1, 0, 0, 0x1234_5678, write=True, user=True)
    assert t.physical == 0x1234_5678 and t.entries == [] and w.references == 0


def test_paging_format_selection():
    assert paging_format(0, CR4_PAE, EFER_LME) is None
    assert paging_format(PG, 0, 0) is PAGING_32
    assert paging_format(PG, CR4_PSE, EFER_NXE) is PAGING_32
    assert paging_format(PG, CR4_PAE, 0) is PAGING_PAE
    assert paging_format(PG, CR4_PAE, EFER_LME) is PAGING_4LEVEL
    assert paging_format(PG, CR4_PAE, EFER_LME | EFER_LMA) is PAGING_4LEVEL
    assert PAGING_4LEVEL.level_names == ("PML4E", "PDPTE", "PDE", "PTE")


def test_error_code_description():
    assert describe_error_code(PF_P | PF_WR | PF_US | PF_RSVD | PF_ID) == \
        "protection, write, user, reserved bit, instruction fetch"


# -- PAE paging -----------------------------------------------------------------------------
PDPT, PAE_PD, PAE_PT = 0x3020, 0x4000, 0x6000      # the PDPT is 32-byte aligned
PAE = CR4_PAE


def setup_pae(pdpte=PAE_PD | P, pde=PAE_PT | ALL, pte=0x9000 | ALL, lin=0x4060_3456):
    ram = Ram()
    ram.write(PDPT + 8 * (lin >> 30), 8, pdpte)
    ram.write(PAE_PD + 8 * ((lin >> 21) & 0x1FF), 8, pde)
    ram.write(PAE_PT + 8 * ((lin >> 12) & 0x1FF), 8, pte)
    return ram, GuestWalker(ram.read, ram.write), lin


def test_pae_4k_and_pdpte_registers():
    ram, w, lin = setup_pae()
    t = w.walk(PG, PDPT, PAE, lin, write=True, user=True)
    assert t.physical == 0x9456 and t.format == "PAE" and t.level_names == ("PDPTE", "PDE", "PTE")
    assert w.counts == {"PDPTE": 1, "PDE": 1, "PTE": 1}
    assert ram.read(PDPT + 8, 8) == PAE_PD | P                  # no A flag in a PDPTE
    assert ram.read(PAE_PT + 8 * 3, 8) == 0x9000 | ALL | A | D
    pdptes = w.load_pdptes(PDPT)
    assert pdptes[1] == PAE_PD | P and w.counts["PDPTE"] == 5
    before = w.references
    w.walk(PG, PDPT, PAE, lin, write=False, user=False, pdptes=pdptes)
    assert w.references == before + 2                            # PDPTEs are registers


def test_pae_2mib_page_and_reserved_bits():
    ram, w, lin = setup_pae(pde=0x0060_0000 | PS | ALL)
    t = w.walk(PG, PDPT, PAE, lin, write=False, user=False)
    assert t.physical == 0x0060_0000 | (lin & 0x1FFFFF) and t.page_size == 2 << 20
    ram.write(PAE_PD + 8 * 3, 8, 0x0060_0000 | PS | ALL | 1 << 13)           # bits 20:13 reserved
    assert fault(lambda: w.walk(PG, PDPT, PAE, lin, write=False, user=False)) == PF_P | PF_RSVD
    ram.write(PAE_PD + 8 * 3, 8, 0x0060_0000 | PS | ALL | 1 << 12)           # PAT: fine
    w.walk(PG, PDPT, PAE, lin, write=False, user=False)
    ram.write(PAE_PD + 8 * 3, 8, PAE_PT | ALL | 1 << 40)                     # 62:M reserved
    assert fault(lambda: w.walk(PG, PDPT, PAE, lin, write=True, user=True)) == PF_P | PF_RSVD | PF_WR | PF_US
    ram.write(PAE_PD + 8 * 3, 8, PAE_PT | ALL | 1 << 55)                     # ... even above 51 in PAE
    assert fault(lambda: w.walk(PG, PDPT, PAE, lin, write=False, user=False)) == PF_P | PF_RSVD


def test_pae_pdpte_not_present_and_reserved():
    ram, w, lin = setup_pae(pdpte=0)
    assert fault(lambda: w.walk(PG, PDPT, PAE, lin, write=False, user=True)) == PF_US
    for bad in (1 << 1, 1 << 2, 1 << 5, 1 << 8, 1 << 36, XD):
        ram.write(PDPT + 8, 8, PAE_PD | P | bad)
        assert w.pdpte_reserved(PAE_PD | P | bad) == bad
        assert fault(lambda: w.walk(PG, PDPT, PAE, lin, write=False, user=False, efer=EFER_NXE)) == PF_P | PF_RSVD
    assert w.pdpte_reserved(PAE_PD | P | PWT_PCD) == 0


PWT_PCD = 0x18


def test_pae_nx():
    ram, w, lin = setup_pae(pte=0x9000 | ALL | XD)
    # NXE = 1: XD forbids fetches, I/D reported.
    assert fault(lambda: w.walk(PG, PDPT, PAE, lin, write=False, user=True, fetch=True, efer=EFER_NXE)) == \
        PF_P | PF_US | PF_ID
    t = w.walk(PG, PDPT, PAE, lin, write=True, user=True, efer=EFER_NXE)
    assert not t.executable and t.writable
    # NXE = 0: bit 63 is reserved; I/D not reported.
    assert fault(lambda: w.walk(PG, PDPT, PAE, lin, write=False, user=False, fetch=True)) == PF_P | PF_RSVD
    # XD in the PDE covers the page too.
    ram2, w2, _ = setup_pae(pde=PAE_PT | ALL | XD)
    assert fault(lambda: w2.walk(PG, PDPT, PAE, lin, write=False, user=False, fetch=True, efer=EFER_NXE)) == \
        PF_P | PF_ID
    # A not-present fetch reports I/D with NXE.
    ram3, w3, _ = setup_pae(pte=0)
    assert fault(lambda: w3.walk(PG, PDPT, PAE, lin, write=False, user=False, fetch=True, efer=EFER_NXE)) == PF_ID


# -- 4-level paging -----------------------------------------------------------------------------
PML4, L3, L2, L1 = 0x10000, 0x11000, 0x12000, 0x13000
LONG = dict(efer=EFER_LME | EFER_LMA | EFER_NXE)
LIN64 = 0x0000_7F80_4060_3456      # PML4 index 255, PDPT index 1, PD 3, PT 3


def setup64(pml4e=L3 | ALL, pdpte=L2 | ALL, pde=L1 | ALL, pte=0x20000 | ALL, lin=LIN64):
    ram = Ram()
    ram.write(PML4 + 8 * ((lin >> 39) & 0x1FF), 8, pml4e)
    ram.write(L3 + 8 * ((lin >> 30) & 0x1FF), 8, pdpte)
    ram.write(L2 + 8 * ((lin >> 21) & 0x1FF), 8, pde)
    ram.write(L1 + 8 * ((lin >> 12) & 0x1FF), 8, pte)
    return ram, GuestWalker(ram.read, ram.write), lin


def test_4level_4k():
    ram, w, lin = setup64()
    t = w.walk(PG, PML4, PAE, lin, write=True, user=True, **LONG)
    assert t.physical == 0x20456 and t.format == "4-level"
    assert t.level_names == ("PML4E", "PDPTE", "PDE", "PTE") and w.references == 4
    for table, value in ((PML4 + 8 * 255, L3 | ALL | A), (L3 + 8, L2 | ALL | A), (L2 + 24, L1 | ALL | A),
                         (L1 + 24, 0x20000 | ALL | A | D)):
        assert ram.read(table, 8) == value


def test_4level_2mib_and_1gib_pages():
    ram, w, lin = setup64(pde=0x4000_0000 | PS | ALL)
    t = w.walk(PG, PML4, PAE, lin, write=False, user=False, **LONG)
    assert t.physical == 0x4000_0000 | (lin & 0x1FFFFF) and t.page_size == 2 << 20 and w.references == 3
    ram, w, lin = setup64(pdpte=0x8_0000_0000 | PS | ALL)
    t = w.walk(PG, PML4, PAE, lin, write=True, user=False, **LONG)
    assert t.physical == 0x8_0000_0000 | (lin & 0x3FFFFFFF) and t.page_size == 1 << 30
    assert t.level_names == ("PML4E", "PDPTE") and t.dirty
    assert ram.read(L3 + 8, 8) == 0x8_0000_0000 | PS | ALL | A | D
    for reserved in (13, 29):                                                 # 29:13 reserved
        ram.write(L3 + 8, 8, 0x8_0000_0000 | PS | ALL | 1 << reserved)
        assert fault(lambda: w.walk(PG, PML4, PAE, lin, write=False, user=False, **LONG)) == PF_P | PF_RSVD
    ram.write(L3 + 8, 8, 0x8_0000_0000 | PS | ALL | 1 << 12)                  # PAT
    assert w.walk(PG, PML4, PAE, lin, write=False, user=False, **LONG).page_size == 1 << 30
    ram, w, lin = setup64(pde=0x4000_0000 | PS | ALL | 1 << 20)               # 20:13 reserved
    assert fault(lambda: w.walk(PG, PML4, PAE, lin, write=False, user=False, **LONG)) == PF_P | PF_RSVD


def test_4level_reserved_and_ignored_bits():
    ram, w, lin = setup64(pml4e=L3 | ALL | PS)                                # PS reserved in a PML4E
    assert fault(lambda: w.walk(PG, PML4, PAE, lin, write=False, user=True, **LONG)) == PF_P | PF_US | PF_RSVD
    ram, w, lin = setup64(pde=L1 | ALL | 1 << 36)                             # 51:M reserved
    assert fault(lambda: w.walk(PG, PML4, PAE, lin, write=False, user=False, **LONG)) == PF_P | PF_RSVD
    ram, w, lin = setup64(pte=0x20000 | ALL | 0x7FF << 52)                    # 62:52 ignored
    assert w.walk(PG, PML4, PAE, lin, write=False, user=False, **LONG).physical == 0x20456
    ram, w, lin = setup64(pte=0x20000 | ALL | XD)
    assert fault(lambda: w.walk(PG, PML4, PAE, lin, write=False, user=False, efer=EFER_LME)) == PF_P | PF_RSVD


def test_4level_nx_at_the_top_and_cr2_is_the_full_address():
    ram, w, lin = setup64(pml4e=L3 | ALL | XD)
    with pytest.raises(PageFault) as e:
        w.walk(PG, PML4, PAE, lin, write=False, user=True, fetch=True, **LONG)
    assert e.value.error_code == PF_P | PF_US | PF_ID and e.value.address == LIN64
    ram, w, lin = setup64(pdpte=0)
    high = 0xFFFF_8000_0000_0000 | (LIN64 & 0x7FFF_FFFF_FFFF)
    ram.write(PML4 + 8 * ((high >> 39) & 0x1FF), 8, L3 | ALL)
    with pytest.raises(PageFault) as e:
        w.walk(PG, PML4, PAE, high, write=True, user=False, **LONG)
    assert e.value.address == high and e.value.error_code == PF_WR


# -- compatibility -------------------------------------------------------------------------------
def test_walker32_over_dword_accessors_walks_pae_too():
    ram, _, lin = setup32()
    w = Walker32(phys_reader(ram.read_bytes), phys_writer(ram.write_bytes))
    t = w.walk(PG, PD, 0, lin, write=True, user=False)
    assert (t.physical, t.writable, t.user, t.dirty, t.page_size) == (0x5234, True, True, True, 4096)
    assert w.references == 2 and len(t.entries) == 2
    ram, _, lin = setup_pae(pte=0x9000 | ALL | XD)
    w = Walker32(phys_reader(ram.read_bytes), phys_writer(ram.write_bytes))
    t = w.walk(PG, PDPT, PAE, lin, write=True, user=False, efer=EFER_NXE)
    assert t.physical == 0x9456 and not t.executable
    assert ram.read(PAE_PT + 24, 8) == 0x9000 | ALL | XD | A | D


def test_refs_callback_sees_every_read():
    ram, _, lin = setup64()
    seen = []
    w = GuestWalker(ram.read, ram.write, refs=lambda level, addr: seen.append((level, addr)))
    w.walk(PG, PML4, PAE, lin, write=False, user=False, **LONG)
    assert seen == [("PML4E", PML4 + 8 * 255), ("PDPTE", L3 + 8), ("PDE", L2 + 24), ("PTE", L1 + 24)]


# -- property test against the reference walker ---------------------------------------------------
def outcome(walker, mem, mode, cr0, cr3, cr4, efer, lin, kind, user, ac, pdptes, set_ad):
    try:
        t = walker.walk(cr0, cr3, cr4, lin, write=kind == "w", user=user, fetch=kind == "x", set_ad=set_ad,
                        efer=efer, ac=ac, pdptes=pdptes)
    except PageFault as pf:
        return ("pf", pf.address, pf.error_code)
    return ("ok", t.physical, t.page_size, t.readable, t.writable, t.executable, t.user, t.dirty)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_guest_walks_agree_with_the_reference(data):
    draw = data.draw
    mode = draw(st.sampled_from(["32", "pae", "64"]))
    chaos = draw(st.sampled_from([0, 5, 20, 60]))
    lazy = LazyMemory(make_source(draw, chaos))
    cr0 = CR0_PG | 1 | (CR0_WP if draw(st.booleans()) else 0)
    cr4 = (CR4_PSE if draw(st.booleans()) else 0) | (CR4_PAE if mode != "32" else 0)
    cr4 |= (CR4_SMEP if draw(st.booleans()) else 0) | (CR4_SMAP if draw(st.booleans()) else 0)
    efer = (EFER_LME | EFER_LMA if mode == "64" else 0) | (EFER_NXE if draw(st.booleans()) else 0)
    cr3 = draw(st.sampled_from(POOL)) | draw(st.integers(0, 0xFFF))
    lin = draw(st.integers(0, (1 << 48) - 1 if mode == "64" else 0xFFFFFFFF))
    if mode == "64" and lin >> 47:
        lin |= 0xFFFF << 48
    kind = draw(st.sampled_from("rwx"))
    user, ac, set_ad = draw(st.booleans()), draw(st.booleans()), draw(st.booleans())
    pdptes = None
    guest = lazy.view("guest")
    if mode == "pae":
        pdpt = [lazy.read((cr3 & 0xFFFFFFE0) + 8 * i, 8, "pdpte") for i in range(4)]
        if draw(st.booleans()):
            pdptes = tuple(pdpt)

    expected, reads = walk_memory(mode, guest, cr0, cr3, cr4, efer, lin, kind, user, ac, pdptes, set_ad)
    frozen = lazy.frozen()
    walker = GuestWalker(frozen.read, frozen.write)
    got = outcome(walker, frozen, mode, cr0, cr3, cr4, efer, lin, kind, user, ac, pdptes, set_ad)
    assert got == expected
    assert frozen.current == lazy.current                     # the same A/D updates
    assert walker.references == len(reads)
    assert sorted(walker.counts.elements()) == sorted(reads)
