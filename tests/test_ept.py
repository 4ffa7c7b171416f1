"""EPT: the EPTP, translations with 4 KiB / 2 MiB / 1 GiB pages, violations and their
exit qualification (SDM Table 28-7), misconfigurations, A/D flags, the table builder, and
a property test against tests/reference_walk.py."""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reference_walk import POOL, LazyMemory, ept_translate, make_source
from vmm.mmu.ept import EptBuilder, EptMisconfiguration, Eptp, EptViolation, EptWalker
from vmm.x86 import EPT_LEVEL_NAMES, EPT_RWX, EPTE, MemoryType
from vmm.x86 import EptViolationQualification as Qualification

EPT_R, EPT_W, EPT_X, EPT_LARGE, EPT_A, EPT_D = EPTE.R, EPTE.W, EPTE.X, EPTE.LARGE, EPTE.A, EPTE.D
MT_UC, MT_WB = MemoryType.UC, MemoryType.WB


class Host:
    """Host-physical memory as a bytearray, with a bump page allocator for EPT tables."""

    def __init__(self, size: int = 8 << 20, first_table: int = 0x700000):
        self.b = bytearray(size)
        self.next = first_table

    def read64(self, addr: int) -> int:
        return int.from_bytes(self.b[addr:addr + 8], "little")

    def write64(self, addr: int, value: int) -> None:
        self.b[addr:addr + 8] = value.to_bytes(8, "little")

    def alloc(self) -> int:
        page, self.next = self.next, self.next + 0x1000
        return page


def setup(**kw):
    host = Host()
    builder = EptBuilder(host.read64, host.write64, host.alloc)
    walker = EptWalker(host.read64, host.write64, **kw)
    return host, builder, walker


def violation(fn) -> EptViolation:
    with pytest.raises(EptViolation) as e:
        fn()
    return e.value


# -- EPTP --------------------------------------------------------------------------------------
def test_eptp_encode_decode_and_checks():
    e = Eptp(0x123000, MT_WB, 4, ad=True)
    assert e.encode() == 0x123000 | 6 | 3 << 3 | 1 << 6
    assert Eptp.decode(e.encode()) == e and e.valid
    assert Eptp.decode(0x5000 | 3 << 3).memory_type == MT_UC and Eptp.decode(0x5000 | 3 << 3).valid
    assert "memory type 1" in Eptp.decode(0x5000 | 1 | 3 << 3).problems()[0]
    assert "page-walk length 5" in Eptp.decode(0x5000 | 6 | 4 << 3).problems()[0]
    assert "reserved" in Eptp.decode(0x5000 | 6 | 3 << 3 | 1 << 8).problems()[0]
    assert "reserved" in Eptp.decode(0x5000 | 6 | 3 << 3 | 1 << 40).problems()[0]
    assert Eptp.decode(e.encode()).describe() == "EPTP PML4 0x123000, WB, 4-level, A/D"
    host, builder, walker = setup()
    with pytest.raises(ValueError, match="invalid EPTP"):
        walker.translate(builder.root | 6 | 1 << 3, 0, "read")


# -- translations ------------------------------------------------------------------------------
@pytest.mark.parametrize("size,levels", [(4096, 4), (2 << 20, 3), (1 << 30, 2)])
def test_translation_by_page_size(size, levels):
    host, builder, walker = setup()
    builder.map(0x4000_0000, 0x8000_0000, size, memory_type=MT_UC)
    gpa = 0x4000_0000 + 0x123
    t = walker.translate(builder.eptp(), gpa, "write")
    assert t.host_physical == 0x8000_0123 and t.page_size == size and t.memory_type == MT_UC
    assert (t.readable, t.writable, t.executable) == (True, True, True)
    assert [name for name, _, _ in t.entries] == list(EPT_LEVEL_NAMES[:levels])
    assert walker.references == levels
    assert walker.counts == {("data", name): 1 for name in EPT_LEVEL_NAMES[:levels]}


def test_refs_callback_and_tags():
    seen = []
    host, builder, walker = setup(refs=lambda tag, level, addr: seen.append((tag, level)))
    builder.map(0x1000, 0x2000)
    walker.translate(builder.eptp(), 0x1000, "read", linear=0xC000_1000, guest_paging_structure=True, tag="PDE")
    assert seen == [("PDE", name) for name in EPT_LEVEL_NAMES]


def test_execute_only_pages():
    host, builder, walker = setup()
    builder.map(0x1000, 0x2000, r=False, w=False, x=True)
    assert walker.translate(builder.eptp(), 0x1000, "fetch").executable
    v = violation(lambda: walker.translate(builder.eptp(), 0x1000, "read"))
    assert v.qualification == Qualification(read=True, executable=True)
    host2, builder2, strict = setup(execute_only=False)
    builder2.map(0x1000, 0x2000, r=False, w=False, x=True)
    with pytest.raises(EptMisconfiguration, match="execute-only"):
        strict.translate(builder2.eptp(), 0x1000, "fetch")


# -- violations --------------------------------------------------------------------------------
def test_not_present_violation_reports_no_rights():
    host, builder, walker = setup()
    builder.map(0x1000, 0x2000)
    v = violation(lambda: walker.translate(builder.eptp(), 0x3000, "write", linear=0x403000))
    assert v.gpa == 0x3000 and v.linear == 0x403000
    assert v.qualification == Qualification(write=True, linear_valid=True, translated=True)
    assert v.exit_qualification == 0b1_1000_0010
    assert len(v.entries) == 4                         # the PTE was read and not present
    v = violation(lambda: walker.translate(builder.eptp(), 0x80_0000_0000, "fetch"))
    assert v.exit_qualification == 0b100 and len(v.entries) == 1   # PML4E not present, no linear


@pytest.mark.parametrize("r,w,x,access,bits", [
    (True, False, True, "write", 0b010 | 0b101 << 3),
    (True, True, False, "fetch", 0b100 | 0b011 << 3),
    (False, False, True, "read", 0b001 | 0b100 << 3),
    (True, False, False, "fetch", 0b100 | 0b001 << 3),
])
def test_permission_violations_report_the_and_of_the_entries(r, w, x, access, bits):
    host, builder, walker = setup()
    builder.map(0x5000, 0x6000, r=r, w=w, x=x)
    v = violation(lambda: walker.translate(builder.eptp(), 0x5678, access, linear=0x1678))
    assert v.exit_qualification == bits | 1 << 7 | 1 << 8 and v.gpa == 0x5678
    # The AND runs over every level: remove X from the PML4E.
    host.write64(builder.root, host.read64(builder.root) & ~EPT_X)
    if access != "fetch":
        v = violation(lambda: walker.translate(builder.eptp(), 0x5678, access))
        assert v.exit_qualification == bits & ~(EPT_X << 3)


def test_guest_paging_structure_access_clears_bit_8():
    host, builder, walker = setup()
    v = violation(lambda: walker.translate(builder.eptp(), 0x9008, "read", linear=0x1234,
                                           guest_paging_structure=True, tag="PTE"))
    assert v.qualification == Qualification(read=True, linear_valid=True, translated=False)
    assert v.tag == "PTE" and "paging-structure access" in v.qualification.describe()


# -- misconfigurations -----------------------------------------------------------------------------
def _poke(host, builder, gpa, level, mutate):
    """Change the entry for ``gpa`` at EPT ``level`` (0..3)."""
    table = builder.root
    for lvl in range(4):
        addr = table + ((gpa >> (39 - 9 * lvl)) & 0x1FF) * 8
        if lvl == level:
            host.write64(addr, mutate(host.read64(addr)))
            return
        table = host.read64(addr) & 0xF_FFFF_F000


@pytest.mark.parametrize("level,mutate,why", [
    (3, lambda v: v & ~EPT_RWX | EPT_W, "write without read"),
    (3, lambda v: v & ~EPT_RWX | EPT_W | EPT_X, "write without read"),
    (0, lambda v: v & ~EPT_R, "write without read"),
    (1, lambda v: v | 1 << 40, "reserved bits 0x10000000000"),
    (0, lambda v: v | EPT_LARGE, "reserved bits 0x80"),
    (2, lambda v: v | 1 << 3, "reserved bits 0x8"),
    (1, lambda v: v | 1 << 6, "reserved bits 0x40"),                  # IPAT in a table entry
    (2, lambda v: v | 6 << 3, "reserved bits 0x30"),                  # memory type in a table entry
    (3, lambda v: v & ~(7 << 3) | 2 << 3, "reserved memory type 2"),
    (3, lambda v: v & ~(7 << 3) | 3 << 3, "reserved memory type 3"),
    (3, lambda v: v & ~(7 << 3) | 7 << 3, "reserved memory type 7"),
])
def test_misconfigurations(level, mutate, why):
    host, builder, walker = setup()
    builder.map(0x5000, 0x6000)
    _poke(host, builder, 0x5000, level, mutate)
    with pytest.raises(EptMisconfiguration, match=why) as e:
        walker.translate(builder.eptp(), 0x5010, "read", linear=0x10)
    assert e.value.gpa == 0x5010 and len(e.value.entries) == level + 1


def test_large_page_misconfigurations_and_ignored_bits():
    host, builder, walker = setup()
    builder.map(0x20_0000, 0x40_0000, 2 << 20)
    for bit in (12, 20):                                                 # 20:12 reserved in a 2 MiB leaf
        _poke(host, builder, 0x20_0000, 2, lambda v: v | 1 << bit)
        with pytest.raises(EptMisconfiguration):
            walker.translate(builder.eptp(), 0x20_0000, "read")
        _poke(host, builder, 0x20_0000, 2, lambda v: v & ~(1 << bit))
    assert walker.translate(builder.eptp(), 0x20_0000, "read").page_size == 2 << 20
    host, builder, walker = setup()
    builder.map(0x4000_0000, 0x4000_0000, 1 << 30)
    for bit in (12, 29):                                                 # 29:12 reserved in a 1 GiB leaf
        _poke(host, builder, 0x4000_0000, 1, lambda v: v | 1 << bit)
        with pytest.raises(EptMisconfiguration):
            walker.translate(builder.eptp(), 0x4000_0000, "read")
        _poke(host, builder, 0x4000_0000, 1, lambda v: v & ~(1 << bit))
    host, builder, walker = setup()
    builder.map(0x5000, 0x6000)
    _poke(host, builder, 0x5000, 3, lambda v: v | EPT_LARGE | 1 << 10 | 1 << 11 | 0x7FF << 52)  # ignored
    assert walker.translate(builder.eptp(), 0x5000, "read").host_physical == 0x6000


def test_misconfiguration_beats_a_missing_right():
    host, builder, walker = setup()
    builder.map(0x5000, 0x6000, r=True, w=False, x=False)
    _poke(host, builder, 0x5000, 3, lambda v: v | 1 << 45)
    with pytest.raises(EptMisconfiguration):
        walker.translate(builder.eptp(), 0x5000, "write")


# -- accessed and dirty flags ----------------------------------------------------------------------
def entries_of(walker, eptp, gpa):
    return [v for _, _, v in walker.translate(eptp, gpa, "read").entries]


def test_ad_flags_only_when_enabled():
    host, builder, walker = setup()
    builder.map(0x5000, 0x6000)
    walker.translate(builder.eptp(), 0x5000, "write")
    assert all(not v & (EPT_A | EPT_D) for v in entries_of(walker, builder.eptp(), 0x5000))
    eptp = builder.eptp(ad=True)
    walker.translate(eptp, 0x5000, "read")
    values = entries_of(walker, eptp, 0x5000)
    assert all(v & EPT_A for v in values) and not any(v & EPT_D for v in values)
    walker.translate(eptp, 0x5000, "write")
    values = entries_of(walker, eptp, 0x5000)
    assert values[-1] & EPT_D and not any(v & EPT_D for v in values[:-1])


def test_ad_flags_not_set_by_a_failed_access():
    host, builder, walker = setup()
    builder.map(0x5000, 0x6000, w=False)
    violation(lambda: walker.translate(builder.eptp(ad=True), 0x5000, "write"))
    assert all(not v & EPT_A for v in entries_of(walker, builder.eptp(), 0x5000))


def test_guest_paging_structure_accesses_are_writes_with_ad():
    host, builder, walker = setup()
    builder.map(0x5000, 0x6000, w=False)
    # Without A/D: a plain read.
    walker.translate(builder.eptp(), 0x5000, "read", linear=0, guest_paging_structure=True)
    # With A/D: treated as a write -> violation reporting read and write.
    v = violation(lambda: walker.translate(builder.eptp(ad=True), 0x5000, "read", linear=0x77,
                                           guest_paging_structure=True))
    assert v.qualification == Qualification(read=True, write=True, readable=True, executable=True,
                                            linear_valid=True, translated=False)
    builder.protect(0x5000, True, True, True)
    t = walker.translate(builder.eptp(ad=True), 0x5000, "read", guest_paging_structure=True)
    assert t.entries and host.read64(t.entries[-1][1]) & EPT_D


# -- builder ------------------------------------------------------------------------------------
def test_builder_map_unmap_protect_lookup():
    host, builder, walker = setup()
    eptp = builder.eptp()
    builder.map(0x1000, 0x9000, r=True, w=False, x=True, memory_type=MT_UC, ignore_pat=True)
    name, addr, value = builder.lookup(0x1000)
    assert name == "EPT PTE" and value == 0x9000 | EPT_R | EPT_X | MT_UC << 3 | 1 << 6
    assert walker.translate(eptp, 0x1234, "read").ignore_pat
    assert builder.protect(0x1000, True, True, False)
    t = walker.translate(eptp, 0x1000, "write")
    assert (t.readable, t.writable, t.executable) == (True, True, False)
    assert builder.unmap(0x1000) and builder.lookup(0x1000) is None
    assert not builder.unmap(0x1000) and not builder.protect(0x1000, True, False, False)
    violation(lambda: walker.translate(eptp, 0x1000, "read"))
    assert builder.tables == 4


def test_builder_splits_large_pages():
    host, builder, walker = setup()
    eptp = builder.eptp()
    builder.map(0x4000_0000, 0x8000_0000, 1 << 30, x=False)
    builder.protect(0x4020_3000, True, False, False, size=4096)        # 1 GiB -> 2 MiB -> 4 KiB
    t = walker.translate(eptp, 0x4020_3010, "read")
    assert t.page_size == 4096 and t.host_physical == 0x8020_3010 and not t.writable
    t = walker.translate(eptp, 0x4020_4000, "write")
    assert t.page_size == 4096 and t.host_physical == 0x8020_4000 and not t.executable
    t = walker.translate(eptp, 0x7000_0000, "write")
    assert t.page_size == 2 << 20 and t.host_physical == 0xB000_0000
    builder.unmap(0x7000_0000)                                         # the whole 2 MiB page
    violation(lambda: walker.translate(eptp, 0x7010_0000, "read"))
    assert walker.translate(eptp, 0x7020_0000, "read").host_physical == 0xB020_0000


def test_builder_map_range_uses_large_pages_and_checks_arguments():
    host, builder, walker = setup()
    eptp = builder.eptp()
    builder.map_range(0x1F_F000, 0x1F_F000, 0x40_1000 + 0x1000)
    sizes = [walker.translate(eptp, gpa, "read").page_size for gpa in (0x1F_F000, 0x20_0000, 0x40_0000, 0x60_0000)]
    assert sizes == [4096, 2 << 20, 2 << 20, 4096]
    with pytest.raises(ValueError):
        builder.map(0x1000, 0x2000, r=False, w=True)
    with pytest.raises(ValueError):
        builder.map(0x1000, 0x2000, memory_type=2)
    with pytest.raises(ValueError):
        builder.map(0x1000, 0x2000, size=2 << 20)
    with pytest.raises(ValueError):
        builder.map(0x1000, 0x2000, size=8192)


# -- property test against the reference ---------------------------------------------------------
def outcome(walker, eptp, gpa, access, linear, gps):
    try:
        t = walker.translate(eptp, gpa, access, linear=linear, guest_paging_structure=gps)
    except EptViolation as v:
        return ("violation", v.gpa, v.exit_qualification)
    except EptMisconfiguration as m:
        return ("misconfig", m.gpa)
    return ("ok", t.host_physical, t.readable, t.writable, t.executable, t.memory_type, t.page_size)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_ept_translations_agree_with_the_reference(data):
    draw = data.draw
    chaos = draw(st.sampled_from([0, 5, 20, 60]))
    lazy = LazyMemory(make_source(draw, chaos))
    eptp = draw(st.sampled_from(POOL)) | draw(st.sampled_from([0, 6])) | 3 << 3 | draw(st.sampled_from([0, 1 << 6]))
    gpa = draw(st.integers(0, (1 << 48) - 1))
    kind = draw(st.sampled_from("rwx"))
    gps = kind != "x" and draw(st.booleans())
    linear = draw(st.none() | st.integers(0, 0xFFFFFFFF))

    expected = ept_translate(lazy.view("ept"), eptp, gpa, kind, linear=linear, paging_structure=gps)
    frozen = lazy.frozen()
    walker = EptWalker(frozen.read64, frozen.write64)
    access = {"r": "read", "w": "write", "x": "fetch"}[kind]
    assert outcome(walker, eptp, gpa, access, linear, gps) == expected
    assert frozen.current == lazy.current
