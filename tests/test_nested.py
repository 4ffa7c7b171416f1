"""The two-dimensional walk: (n+1)(m+1)-1 references on a cold walk (14 for 32-bit paging,
24 for 4-level paging, under 4-level EPT), the per-level breakdown, the page-walk cache,
EPT violations on guest-table vs data accesses (qualification bit 8), misconfigurations,
and a property test against tests/reference_walk.py."""
from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reference_walk import POOL, LazyMemory, make_source, nested_walk
from vmm.mmu.ept import EptBuilder, EptMisconfiguration, EptViolation, EptWalker
from vmm.mmu.nested import NestedWalker
from vmm.mmu.paging import GuestWalker, PageFault
from vmm.x86 import CR0, CR4, EFER, EPT_LEVEL_NAMES, EPT_RWX, EPTE, PTE, PFError
from vmm.x86 import EptViolationQualification as Qualification

P, RW, US, A, D, XD = PTE.P, PTE.RW, PTE.US, PTE.A, PTE.D, PTE.XD
CR0_PG, CR0_WP = CR0.PG, CR0.WP
CR4_PAE, CR4_PSE, CR4_SMAP, CR4_SMEP = CR4.PAE, CR4.PSE, CR4.SMAP, CR4.SMEP
EFER_LMA, EFER_LME, EFER_NXE = EFER.LMA, EFER.LME, EFER.NXE
PF_US, PF_WR = PFError.US, PFError.WR
EPT_W, EPT_D = EPTE.W, EPTE.D

OFFSET = 0x400000          # EPT maps guest-physical [0, 4 MiB) to host-physical [4 MiB, 8 MiB)
ALL = P | RW | US
PG = CR0_PG | 1
LONG = EFER_LME | EFER_LMA


class Host:
    def __init__(self, size: int = 16 << 20):
        self.b = bytearray(size)
        self.next = 0xF00000

    def read(self, addr: int, size: int) -> int:
        return int.from_bytes(self.b[addr:addr + size], "little")

    def write(self, addr: int, size: int, value: int) -> None:
        self.b[addr:addr + size] = value.to_bytes(size, "little")

    def read64(self, addr: int) -> int:
        return self.read(addr, 8)

    def write64(self, addr: int, value: int) -> None:
        self.write(addr, 8, value)

    def alloc(self) -> int:
        page, self.next = self.next, self.next + 0x1000
        return page


class Machine:
    """Host memory, EPT mapping guest-physical memory at OFFSET, and the walkers."""

    def __init__(self, ept_page: int = 4096, pwc: bool = False):
        self.host = Host()
        self.builder = EptBuilder(self.host.read64, self.host.write64, self.host.alloc)
        if ept_page == 4096:
            self.builder.map_range(0, OFFSET, 4 << 20, large=False)
        else:
            self.builder.map(0, OFFSET, 2 << 20, memory_type=6)
            self.builder.map(2 << 20, OFFSET + (2 << 20), 2 << 20)
        self.eptp = self.builder.eptp()
        self.ept = EptWalker(self.host.read64, self.host.write64)
        self.guest = GuestWalker(self.host.read, self.host.write)
        self.nested = NestedWalker(self.guest, self.ept, pwc=pwc)

    def gwrite(self, gpa: int, size: int, value: int) -> None:
        self.host.write(gpa + OFFSET, size, value)

    def gread(self, gpa: int, size: int) -> int:
        return self.host.read(gpa + OFFSET, size)

    def native(self) -> GuestWalker:
        """The same guest tables walked with no EPT (guest-physical memory directly)."""
        return GuestWalker(self.gread, self.gwrite)

    def ept_leaf(self, gpa: int) -> int:
        return self.builder.lookup(gpa)[1]


# 32-bit guest: PD at 0x1000, PT at 0x2000, data page at 0x5000.
LIN32 = 0x00401234


def guest32(m: Machine, pte=0x5000 | ALL, pde=0x2000 | ALL) -> dict:
    m.gwrite(0x1000 + 4 * (LIN32 >> 22), 4, pde)
    m.gwrite(0x2000 + 4 * ((LIN32 >> 12) & 0x3FF), 4, pte)
    return dict(cr0=PG, cr3=0x1000, cr4=0)


# 4-level guest: PML4 0x10000, PDPT 0x11000, PD 0x12000, PT 0x13000, data 0x20000.
LIN64 = 0x0000_7F80_4060_3456


def guest64(m: Machine, pte=0x20000 | ALL) -> dict:
    m.gwrite(0x10000 + 8 * 255, 8, 0x11000 | ALL)
    m.gwrite(0x11000 + 8 * 1, 8, 0x12000 | ALL)
    m.gwrite(0x12000 + 8 * 3, 8, 0x13000 | ALL)
    m.gwrite(0x13000 + 8 * 3, 8, pte)
    return dict(cr0=PG, cr3=0x10000, cr4=CR4_PAE, efer=LONG)


# PAE guest: PDPT at 0x3000, PD 0x4000, PT 0x6000, data 0x9000.
LINPAE = 0x4060_3456


def guest_pae(m: Machine) -> dict:
    m.gwrite(0x3000 + 8, 8, 0x4000 | P)
    m.gwrite(0x4000 + 8 * 3, 8, 0x6000 | ALL)
    m.gwrite(0x6000 + 8 * 3, 8, 0x9000 | ALL)
    return dict(cr0=PG, cr3=0x3000, cr4=CR4_PAE)


def walk(m: Machine, regs: dict, linear: int, **kw):
    kw.setdefault("write", False)
    kw.setdefault("user", False)
    regs = dict(regs)
    return m.nested.walk(regs.pop("cr0"), regs.pop("cr3"), regs.pop("cr4"), linear, eptp=m.eptp, **regs, **kw)


def breakdown(levels) -> Counter:
    """The references a cold walk through ``levels`` makes under 4-level EPT."""
    c = Counter()
    for level in levels:
        for name in EPT_LEVEL_NAMES:
            c[(level, name)] += 1
        c[(level, None)] += 1
    for name in EPT_LEVEL_NAMES:
        c[("data", name)] += 1
    return c


# -- reference counts ---------------------------------------------------------------------------
def test_cold_2level_walk_reads_14_entries_native_2():
    m = Machine()
    regs = guest32(m)
    t = walk(m, regs, LIN32)
    assert t.host_physical == OFFSET + 0x5234 and t.guest_physical == 0x5234
    assert t.reference_count == 14 == (2 + 1) * (4 + 1) - 1
    assert t.references == breakdown(["PDE", "PTE"])
    assert m.ept.references == 12 and m.guest.references == 0   # guest reads went through EPT
    native = m.native()
    assert native.walk(PG, 0x1000, 0, LIN32, write=False, user=False).physical == 0x5234
    assert native.references == 2


def test_cold_4level_walk_reads_24_entries_native_4():
    m = Machine()
    regs = guest64(m)
    t = walk(m, regs, LIN64, write=True)
    assert t.host_physical == OFFSET + 0x20456
    assert t.reference_count == 24 == (4 + 1) * (4 + 1) - 1
    assert t.references == breakdown(["PML4E", "PDPTE", "PDE", "PTE"])
    assert m.nested.counts == t.references and m.nested.references == 24
    native = m.native()
    native.walk(PG, 0x10000, CR4_PAE, LIN64, write=False, user=False, efer=LONG)
    assert native.references == 4


def test_pae_walk_with_pdpte_registers_is_a_2level_walk():
    m = Machine()
    regs = guest_pae(m)
    pdptes = m.nested.load_pdptes(0x3000, eptp=m.eptp)
    assert pdptes[1] == 0x4000 | P
    assert m.nested.last_references == Counter({("PDPTE", n): 1 for n in EPT_LEVEL_NAMES}) + \
        Counter({("PDPTE", None): 4})
    t = walk(m, regs, LINPAE, pdptes=pdptes)
    assert t.host_physical == OFFSET + 0x9456 and t.reference_count == 14
    t = walk(m, regs, LINPAE)                  # PDPTEs read by the walk (QEMU style): 3 levels
    assert t.reference_count == 19 == (3 + 1) * (4 + 1) - 1


def test_large_ept_pages_shorten_every_ept_walk():
    m = Machine(ept_page=2 << 20)
    regs = guest32(m)
    t = walk(m, regs, LIN32)
    assert t.reference_count == 11 == (2 + 1) * (3 + 1) - 1
    assert t.page_size == 4096 and t.ept.page_size == 2 << 20 and t.ept.memory_type == 6


def test_paging_off_translates_the_linear_address_through_ept_only():
    m = Machine()
    t = m.nested.walk(1, 0, 0, 0x1234, eptp=m.eptp, write=True, user=False)
    assert t.host_physical == OFFSET + 0x1234 and t.reference_count == 4
    assert set(t.references) == {("data", name) for name in EPT_LEVEL_NAMES}


def test_a_guest_factory_is_accepted():
    m = Machine()
    nested = NestedWalker(lambda: GuestWalker(m.host.read, m.host.write), m.ept)
    guest32(m)
    assert nested.walk(PG, 0x1000, 0, LIN32, eptp=m.eptp, write=False, user=False).host_physical == OFFSET + 0x5234


# -- page-walk cache -------------------------------------------------------------------------------
def test_pwc_second_walk_costs_guest_reads_plus_data_translation():
    m = Machine(pwc=True)
    regs = guest32(m)
    m.gwrite(0x2000 + 4 * 2, 4, 0x6000 | ALL)                 # the next page, same page table
    assert walk(m, regs, LIN32).reference_count == 14
    t = walk(m, regs, LIN32)
    assert t.reference_count == 6 == 2 + 4
    assert t.references == Counter({("PDE", None): 1, ("PTE", None): 1}) + \
        Counter({("data", n): 1 for n in EPT_LEVEL_NAMES})
    assert walk(m, regs, LIN32 + 0x1000).host_physical == OFFSET + 0x6234
    assert m.nested.last_references.total() == 6
    assert (m.nested.pwc_hits, m.nested.pwc_misses) == (4, 2)
    m.nested.flush()
    assert walk(m, regs, LIN32).reference_count == 14


def test_pwc_4level():
    m = Machine(pwc=True)
    regs = guest64(m)
    assert walk(m, regs, LIN64).reference_count == 24
    assert walk(m, regs, LIN64, write=True).reference_count == 8 == 4 + 4


def test_pwc_is_stale_until_flushed_like_a_tlb_without_invept():
    m = Machine(pwc=True)
    regs = guest32(m)
    walk(m, regs, LIN32)
    m.builder.unmap(0x2000)                                   # the guest page table's page
    assert walk(m, regs, LIN32).host_physical == OFFSET + 0x5234   # still cached
    m.nested.flush()                                           # INVEPT
    with pytest.raises(EptViolation) as e:
        walk(m, regs, LIN32)
    assert e.value.tag == "PTE" and not e.value.qualification.translated


# -- violations, misconfigurations, guest faults -------------------------------------------------
def test_violation_on_a_guest_table_access():
    m = Machine()
    regs = guest32(m)
    m.builder.unmap(0x2000)
    with pytest.raises(EptViolation) as e:
        walk(m, regs, LIN32, write=True, user=True)
    v = e.value
    assert v.gpa == 0x2000 + 4 * 1 and v.linear == LIN32 and v.tag == "PTE"
    with pytest.raises(EptViolation) as e:
        walk(m, regs, LIN32 | 1 << 32)                       # 32-bit paging: a 32-bit linear address
    assert e.value.linear == LIN32
    assert v.qualification == Qualification(read=True, linear_valid=True, translated=False)
    assert v.exit_qualification == 0x81                       # bit 8 = 0: paging-structure access
    assert m.nested.last_references == breakdown(["PDE"]) - Counter({("data", n): 1 for n in EPT_LEVEL_NAMES}) \
        + Counter({("PTE", n): 1 for n in EPT_LEVEL_NAMES})


def test_violation_on_the_data_access():
    m = Machine()
    regs = guest32(m)
    m.builder.protect(0x5000, True, False, True)
    with pytest.raises(EptViolation) as e:
        walk(m, regs, LIN32, write=True)
    v = e.value
    assert v.gpa == 0x5234 and v.linear == LIN32 and v.tag == "data"
    assert v.qualification == Qualification(write=True, readable=True, executable=True, linear_valid=True,
                                            translated=True)
    assert v.exit_qualification == 0x1AA                      # bit 8 = 1: the translated address
    assert m.nested.last_references.total() == 14
    # The guest translation had completed: its A/D flags are set, as on hardware.
    assert m.gread(0x2000 + 4, 4) == 0x5000 | ALL | A | D


def test_fetch_violation_on_a_non_executable_data_page():
    m = Machine()
    regs = guest32(m)
    m.builder.protect(0x5000, True, True, False)
    t = walk(m, regs, LIN32)
    assert t.readable and t.writable and not t.executable
    with pytest.raises(EptViolation) as e:
        walk(m, regs, LIN32, fetch=True)
    assert e.value.exit_qualification == 0b100 | 0b011 << 3 | 1 << 7 | 1 << 8


def test_guest_ad_update_needs_ept_write_permission():
    m = Machine()
    regs = guest32(m)
    m.builder.protect(0x2000, True, False, True)            # guest page table read-only in EPT
    with pytest.raises(EptViolation) as e:
        walk(m, regs, LIN32)                                 # A must be set in the PTE
    v = e.value
    assert v.gpa == 0x2004 and v.tag == "PTE"
    assert v.qualification == Qualification(write=True, readable=True, executable=True, linear_valid=True,
                                            translated=False)
    assert m.gread(0x1004, 4) & A                            # the PDE, in a writable page, got its A
    m.gwrite(0x2004, 4, 0x5000 | ALL | A)                    # A already set: no write needed
    assert walk(m, regs, LIN32, set_ad=False).host_physical == OFFSET + 0x5234
    assert walk(m, regs, LIN32).host_physical == OFFSET + 0x5234
    with pytest.raises(EptViolation):
        walk(m, regs, LIN32, write=True)                     # D must be set


def test_ept_ad_makes_guest_table_accesses_writes():
    m = Machine()
    m.eptp = m.builder.eptp(ad=True)
    regs = guest32(m)
    m.gwrite(0x1004, 4, 0x2000 | ALL | A)
    m.gwrite(0x2004, 4, 0x5000 | ALL | A)                    # nothing for the guest to update
    t = walk(m, regs, LIN32)
    for gpa in (0x1000, 0x2000):
        assert m.host.read64(m.ept_leaf(gpa)) & EPT_D        # table pages dirty in EPT
    assert not m.host.read64(m.ept_leaf(0x5000)) & EPT_D     # data page only read
    assert t.reference_count == 14
    m.builder.protect(0x2000, True, False, True)
    with pytest.raises(EptViolation) as e:
        walk(m, regs, LIN32)
    assert e.value.exit_qualification == 0b011 | 0b101 << 3 | 1 << 7   # read + write, bit 8 = 0


def test_misconfigurations_on_table_and_data_accesses():
    m = Machine()
    regs = guest32(m)
    addr = m.ept_leaf(0x1000)
    m.host.write64(addr, m.host.read64(addr) & ~EPT_RWX | EPT_W)  # write-only: misconfigured
    with pytest.raises(EptMisconfiguration) as e:
        walk(m, regs, LIN32)
    assert e.value.gpa == 0x1004 and e.value.tag == "PDE"
    m = Machine()
    regs = guest32(m)
    addr = m.ept_leaf(0x5000)
    m.host.write64(addr, m.host.read64(addr) | 7 << 3)       # memory type 7
    with pytest.raises(EptMisconfiguration) as e:
        walk(m, regs, LIN32)
    assert e.value.gpa == 0x5234 and e.value.tag == "data"


def test_guest_page_faults_propagate_with_their_references():
    m = Machine()
    regs = guest32(m, pte=0x5000 | P | RW)
    with pytest.raises(PageFault) as e:
        walk(m, regs, LIN32, user=True, write=True)
    assert e.value.error_code == 1 | PF_WR | PF_US and e.value.address == LIN32
    assert m.nested.last_references == breakdown(["PDE", "PTE"]) - Counter({("data", n): 1 for n in EPT_LEVEL_NAMES})


def test_combined_rights_and_page_size():
    m = Machine()
    regs = guest64(m, pte=0x20000 | ALL)
    m.builder.protect(0x20000, True, False, True)
    t = walk(m, regs, LIN64, user=True)
    assert (t.readable, t.writable, t.executable, t.user) == (True, False, True, True)
    assert t.guest.writable and not t.ept.writable
    m.gwrite(0x13000 + 8 * 3, 8, 0x20000 | P | US | XD)
    t = walk(m, dict(regs, efer=LONG | EFER_NXE), LIN64, user=True)
    assert (t.readable, t.writable, t.executable) == (True, False, False) and t.page_size == 4096


def test_load_pdptes_violation_has_no_linear_address():
    m = Machine()
    guest_pae(m)
    m.builder.unmap(0x3000)
    with pytest.raises(EptViolation) as e:
        m.nested.load_pdptes(0x3000, eptp=m.eptp)
    assert e.value.linear is None and e.value.exit_qualification == 0b1


# -- property tests against the reference ----------------------------------------------------------
def outcome(nested, eptp, mode, cr0, cr3, cr4, efer, lin, kind, user, ac, pdptes, set_ad=True):
    try:
        t = nested.walk(cr0, cr3, cr4, lin, eptp=eptp, write=kind == "w", user=user, fetch=kind == "x",
                        efer=efer, ac=ac, pdptes=pdptes, set_ad=set_ad)
    except PageFault as pf:
        return ("pf", pf.address, pf.error_code)
    except EptViolation as v:
        return ("violation", v.gpa, v.exit_qualification)
    except EptMisconfiguration as mc:
        return ("misconfig", mc.gpa)
    return ("ok", t.host_physical, t.guest_physical, t.readable, t.writable, t.executable, t.page_size)


def draw_setup(draw):
    mode = draw(st.sampled_from(["32", "pae", "64"]))
    chaos = draw(st.sampled_from([0, 0, 3, 15]))
    source = make_source(draw, chaos)
    lazy = LazyMemory(source)
    cr0 = CR0_PG | 1 | (CR0_WP if draw(st.booleans()) else 0)
    if draw(st.integers(0, 19)) == 0:
        cr0 = 1                                                     # paging off
    cr4 = (CR4_PSE if draw(st.booleans()) else 0) | (CR4_PAE if mode != "32" else 0)
    cr4 |= (CR4_SMEP if draw(st.booleans()) else 0) | (CR4_SMAP if draw(st.booleans()) else 0)
    efer = (LONG if mode == "64" else 0) | (EFER_NXE if draw(st.booleans()) else 0)
    cr3 = draw(st.sampled_from(POOL)) | draw(st.integers(0, 0xFFF))
    eptp = draw(st.sampled_from(POOL)) | draw(st.sampled_from([0, 6])) | 3 << 3 | draw(st.sampled_from([0, 1 << 6]))
    pdptes = None
    if mode == "pae" and draw(st.integers(0, 9)) < 7:
        pdptes = tuple(source(0, 8, "pdpte") for _ in range(4))     # PDPTE registers
    regs = dict(mode=mode, cr0=cr0, cr3=cr3, cr4=cr4, efer=efer, pdptes=pdptes)
    return lazy, eptp, regs


def draw_access(draw, mode):
    lin = draw(st.integers(0, (1 << 48) - 1 if mode == "64" else 0xFFFFFFFF))
    if mode == "64" and lin >> 47:
        lin |= 0xFFFF << 48
    return lin, draw(st.sampled_from("rwx")), draw(st.booleans()), draw(st.booleans())


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_nested_walks_agree_with_the_reference(data):
    draw = data.draw
    lazy, eptp, r = draw_setup(draw)
    lin, kind, user, ac = draw_access(draw, r["mode"])
    expected, expected_refs = nested_walk(r["mode"], lazy.view("guest"), eptp, r["cr0"], r["cr3"], r["cr4"],
                                          r["efer"], lin, kind, user, ac, r["pdptes"], ept_mem=lazy.view("ept"))
    frozen = lazy.frozen()
    nested = NestedWalker(GuestWalker(frozen.read, frozen.write), EptWalker(frozen.read64, frozen.write64))
    got = outcome(nested, eptp, r["mode"], r["cr0"], r["cr3"], r["cr4"], r["efer"], lin, kind, user, ac,
                  r["pdptes"])
    assert got == expected
    assert nested.last_references == Counter(expected_refs)
    assert frozen.current == lazy.current


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_the_page_walk_cache_changes_costs_not_results(data):
    """With nothing written between walks (no A/D updates), walks through the cache
    translate exactly as cold walks, never reading more."""
    draw = data.draw
    lazy, eptp, r = draw_setup(draw)
    eptp &= ~(1 << 6)
    accesses = [draw_access(draw, r["mode"]) for _ in range(3)]
    expected = []
    for lin, kind, user, ac in accesses:
        res, refs = nested_walk(r["mode"], lazy.view("guest"), eptp, r["cr0"], r["cr3"], r["cr4"], r["efer"],
                                lin, kind, user, ac, r["pdptes"], ept_mem=lazy.view("ept"))
        expected.append((res, len(refs)))
    if lazy.current != lazy.initial:
        return                      # some walk set A/D flags: the cache may rightly be stale
    frozen = lazy.frozen()
    nested = NestedWalker(GuestWalker(frozen.read, frozen.write), EptWalker(frozen.read64, frozen.write64),
                          pwc=True)
    for (lin, kind, user, ac), (res, cold) in zip(accesses, expected):
        assert outcome(nested, eptp, r["mode"], r["cr0"], r["cr3"], r["cr4"], r["efer"], lin, kind, user, ac,
                       r["pdptes"], set_ad=True) == res
        assert nested.last_references.total() <= cold


# -- fast_walk_32 (the emulator's shortcut for the common case) must be invisible ---------------
from vmm.mmu.ept import Eptp  # noqa: E402
from vmm.mmu.nested import FAST_WALK_REFERENCES, fast_walk_32  # noqa: E402

_guest_flags = st.sampled_from([0, P, P | RW, P | US, ALL, P | A, P | RW | A, ALL | A, ALL | A | D, P | A | D])
_ept_rights = st.sampled_from([0, 1, 3, 5, 7, 4, 2])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pde=_guest_flags, pte=_guest_flags, pde_ps=st.booleans(), rights=st.lists(_ept_rights, min_size=3, max_size=3),
       write=st.booleans(), user=st.booleans(), fetch=st.booleans(), wp=st.booleans(), twice=st.booleans())
def test_fast_walk_agrees_with_the_full_walk(pde, pte, pde_ps, rights, write, user, fetch, wp, twice):
    m = Machine()
    write = write and not fetch
    m.gwrite(0x1000 + (LIN32 >> 22) * 4, 4, 0x2000 | pde | (0x80 if pde_ps else 0))
    m.gwrite(0x2000 + ((LIN32 >> 12) & 0x3FF) * 4, 4, 0x5000 | pte)
    for gpa, r in zip((0x1000, 0x2000, 0x5000), rights):   # EPT rights of the PD, PT and data pages
        if r == 0:
            m.builder.unmap(gpa)
        elif r & 2 and not r & 1:
            m.builder.map_mmio_marker(gpa)
        else:
            m.builder.map(gpa, gpa + OFFSET, 4096, bool(r & 1), bool(r & 2), bool(r & 4))
    cr0 = PG | (CR0_WP if wp else 0)
    before = bytes(m.host.b)
    for _ in range(2 if twice else 1):   # a second call exercises the memo
        fast = fast_walk_32(m.nested, Eptp.decode(m.eptp), cr0, 0x1000, 0, LIN32, write, user, fetch)
    if fast is None:
        assert bytes(m.host.b) == before   # nothing written when it declines
        return
    assert bytes(m.host.b) == before
    full = m.nested.walk(cr0, 0x1000, 0, LIN32, eptp=m.eptp, write=write, user=user, fetch=fetch)
    assert fast == (full.host_physical, full.writable, full.executable)
    assert full.references == FAST_WALK_REFERENCES
    assert bytes(m.host.b) == before       # the full walk set nothing either: A/D were already set


def test_fast_walk_memo_follows_ept_edits():
    m = Machine()
    m.gwrite(0x1000 + (LIN32 >> 22) * 4, 4, 0x2000 | ALL | A)
    m.gwrite(0x2000 + ((LIN32 >> 12) & 0x3FF) * 4, 4, 0x5000 | ALL | A | D)
    eptp = Eptp.decode(m.eptp)
    assert fast_walk_32(m.nested, eptp, PG, 0x1000, 0, LIN32, False, False, False) is not None
    m.builder.unmap(0x5000)
    m.nested.ept_changed()      # the owner of the EPT tables reports the edit
    assert fast_walk_32(m.nested, eptp, PG, 0x1000, 0, LIN32, False, False, False) is None
