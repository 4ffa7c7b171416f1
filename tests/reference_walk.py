"""A plain reference for the property tests: guest walks (32-bit, PAE, 4-level), EPT and
the 2-D walk, written straight from the SDM text, sharing no code with vmm.mmu.

Results are plain tuples:

* guest walk: ("ok", physical, page_size, readable, writable, executable, user, dirty)
  or ("pf", cr2, error_code)
* EPT:        ("ok", hpa, r, w, x, memory_type, page_size)
  or ("violation", gpa, qualification) or ("misconfig", gpa)
* nested:     ("ok", hpa, gpa, readable, writable, executable, page_size) or one of the
  above faults; with the list of references as (guest level | "data", EPT level | None).

Memory is any object with ``read(addr, size) -> int`` and ``write(addr, size, value)``.
Accesses are "r", "w" or "x".
"""
from __future__ import annotations

M = 36  # MAXPHYADDR


def bit(value, n):
    return (value >> n) & 1


def any_bit(value, lo, hi):
    """True if any of bits lo..hi (inclusive) of value is set."""
    for n in range(lo, hi + 1):
        if bit(value, n):
            return True
    return False


def address_bits(value, lo, hi=M - 1):
    """value with only bits lo..hi kept."""
    out = 0
    for n in range(lo, hi + 1):
        if bit(value, n):
            out |= 1 << n
    return out


class Stop(Exception):
    def __init__(self, result):
        self.result = result


# -- guest paging --------------------------------------------------------------------------------
def guest_walk(mode, rd, wr, cr0, cr3, cr4, efer, lin, kind, user, ac=False, pdptes=None, set_ad=True):
    """mode: "32", "pae" or "64". rd(addr, size, level) / wr(addr, size, level, value)."""
    is_write = kind == "w"
    is_fetch = kind == "x"
    nxe = mode != "32" and bit(efer, 11) == 1
    smep = bit(cr4, 20) == 1
    smap = bit(cr4, 21) == 1
    wp = bit(cr0, 16) == 1
    if mode == "64":
        lin = lin & 0xFFFFFFFFFFFFFFFF
    else:
        lin = lin & 0xFFFFFFFF

    def fault(present, rsvd):
        code = 0
        if present:
            code += 1
        if is_write:
            code += 2
        if user:
            code += 4
        if rsvd:
            code += 8
        if is_fetch and (smep or nxe):
            code += 16
        return ("pf", lin, code)

    # path: list of (address, value, level, takes_part_in_rights_and_AD)
    path = []
    if mode == "32":
        pde_addr = (cr3 & 0xFFFFF000) + 4 * ((lin >> 22) & 0x3FF)
        pde = rd(pde_addr, 4, "PDE")
        path.append((pde_addr, pde, "PDE", True))
        if not bit(pde, 0):
            return fault(False, False)
        if bit(cr4, 4) and bit(pde, 7):
            if any_bit(pde, M - 19, 21):
                return fault(True, True)
            page_size = 4 << 20
            frame = (pde & 0xFFC00000) | (((pde >> 13) & 0xFF) << 32)
        else:
            pte_addr = (pde & 0xFFFFF000) + 4 * ((lin >> 12) & 0x3FF)
            pte = rd(pte_addr, 4, "PTE")
            path.append((pte_addr, pte, "PTE", True))
            if not bit(pte, 0):
                return fault(False, False)
            page_size = 4096
            frame = pte & 0xFFFFF000
    else:
        if mode == "pae":
            index = (lin >> 30) & 3
            pdpte_addr = (cr3 & 0xFFFFFFE0) + 8 * index
            pdpte = pdptes[index] if pdptes is not None else rd(pdpte_addr, 8, "PDPTE")
            path.append((pdpte_addr, pdpte, "PDPTE", False))
            if not bit(pdpte, 0):
                return fault(False, False)
            if bit(pdpte, 1) or bit(pdpte, 2) or any_bit(pdpte, 5, 8) or any_bit(pdpte, M, 63):
                return fault(True, True)
            table = address_bits(pdpte, 12)
            names = ["PDE", "PTE"]
            shifts = [21, 12]
            high_reserved = 62          # bits 62:M reserved in PAE PDEs and PTEs
        else:
            table = address_bits(cr3, 12, 51)
            names = ["PML4E", "PDPTE", "PDE", "PTE"]
            shifts = [39, 30, 21, 12]
            high_reserved = 51          # bits 51:M reserved, 62:52 ignored
        frame = None
        for name, shift in zip(names, shifts):
            addr = table + 8 * ((lin >> shift) & 0x1FF)
            entry = rd(addr, 8, name)
            path.append((addr, entry, name, True))
            if not bit(entry, 0):
                return fault(False, False)
            if any_bit(entry, M, high_reserved):
                return fault(True, True)
            if bit(entry, 63) and not nxe:
                return fault(True, True)
            if name == "PML4E" and bit(entry, 7):
                return fault(True, True)
            if name == "PDPTE" and bit(entry, 7):        # only reached in 4-level mode
                if any_bit(entry, 13, 29):
                    return fault(True, True)
                page_size = 1 << 30
                frame = address_bits(entry, 30)
                break
            if name == "PDE" and bit(entry, 7):
                if any_bit(entry, 13, 20):
                    return fault(True, True)
                page_size = 2 << 20
                frame = address_bits(entry, 21)
                break
            if name == "PTE":
                page_size = 4096
                frame = address_bits(entry, 12)
                break
            table = address_bits(entry, 12)

    rights = [e for e in path if e[3]]
    user_address = all(bit(v, 2) for _, v, _, _ in rights)
    all_writable = all(bit(v, 1) for _, v, _, _ in rights)
    no_execute = nxe and any(bit(v, 63) for _, v, _, _ in rights)

    if user:
        readable = user_address
        writable = user_address and all_writable
        executable = user_address and not no_execute
    else:
        smap_stops = smap and user_address and not ac
        readable = not smap_stops
        writable = (not smap_stops) and (all_writable or not wp)
        executable = (not no_execute) and not (smep and user_address)
    if is_fetch:
        ok = executable
    elif is_write:
        ok = writable
    else:
        ok = readable
    if not ok:
        return fault(True, False)

    leaf_value = path[-1][1]
    if set_ad:
        for i, (addr, value, name, counts) in enumerate(path):
            if not counts:
                continue
            new = value | 0x20
            if i == len(path) - 1 and is_write:
                new = new | 0x40
            if new != value:
                wr(addr, 4 if mode == "32" else 8, name, new)
                if i == len(path) - 1:
                    leaf_value = new
    physical = frame + (lin % page_size)
    return ("ok", physical, page_size, readable, writable, executable, user_address, bool(bit(leaf_value, 6)))


def walk_memory(mode, mem, cr0, cr3, cr4, efer, lin, kind, user, ac=False, pdptes=None, set_ad=True):
    """The one-dimensional walk over memory holding the guest tables; also returns the
    list of levels read."""
    reads = []

    def rd(addr, size, level):
        reads.append(level)
        return mem.read(addr, size)

    def wr(addr, size, level, value):
        mem.write(addr, size, value)

    return guest_walk(mode, rd, wr, cr0, cr3, cr4, efer, lin, kind, user, ac, pdptes, set_ad), reads


# -- EPT -----------------------------------------------------------------------------------------
EPT_NAMES = ["EPT PML4E", "EPT PDPTE", "EPT PDE", "EPT PTE"]


def ept_translate(mem, eptp, gpa, kind, linear=None, paging_structure=False, refs=None, tag="data"):
    if refs is None:
        refs = []
    ad = bit(eptp, 6) == 1
    treat_as_write = kind == "w" or (paging_structure and ad)
    table = address_bits(eptp, 12)
    perms = 7
    entries = []
    leaf_level = None
    for level in range(4):
        shift = 39 - 9 * level
        addr = table + 8 * ((gpa >> shift) & 0x1FF)
        entry = mem.read(addr, 8)
        refs.append((tag, EPT_NAMES[level]))
        entries.append((addr, entry))
        r, w, x = bit(entry, 0), bit(entry, 1), bit(entry, 2)
        if not (r or w or x):
            perms = 0
            break
        if w and not r:
            return ("misconfig", gpa)
        if any_bit(entry, M, 51):
            return ("misconfig", gpa)
        large = level in (1, 2) and bit(entry, 7)
        if level == 0 and any_bit(entry, 3, 7):
            return ("misconfig", gpa)
        if level in (1, 2) and not large and any_bit(entry, 3, 6):
            return ("misconfig", gpa)
        if level == 1 and large and any_bit(entry, 12, 29):
            return ("misconfig", gpa)
        if level == 2 and large and any_bit(entry, 12, 20):
            return ("misconfig", gpa)
        perms = perms & (entry & 7)
        if level == 3 or large:
            memory_type = (entry >> 3) & 7
            if memory_type in (2, 3, 7):
                return ("misconfig", gpa)
            leaf_level = level
            break
        table = address_bits(entry, 12)

    if kind == "r":
        needed = 1
    elif kind == "x":
        needed = 4
    else:
        needed = 2
    if treat_as_write:
        needed = 2
    if leaf_level is None or (perms & needed) != needed:
        q = 0
        if kind == "r":
            q |= 1
        if treat_as_write:
            q |= 2
        if kind == "x":
            q |= 4
        q |= perms << 3
        if linear is not None:
            q |= 1 << 7
            if not paging_structure:
                q |= 1 << 8
        return ("violation", gpa, q)

    if ad:
        for i, (addr, entry) in enumerate(entries):
            new = entry | (1 << 8)
            if i == len(entries) - 1 and treat_as_write:
                new = new | (1 << 9)
            if new != entry:
                mem.write(addr, 8, new)
    page_size = {1: 1 << 30, 2: 1 << 21, 3: 1 << 12}[leaf_level]
    leaf = entries[-1][1]
    hpa = address_bits(leaf, 12) - address_bits(leaf, 12) % page_size + gpa % page_size
    return ("ok", hpa, bool(perms & 1), bool(perms & 2), bool(perms & 4), (leaf >> 3) & 7, page_size)


# -- the two-dimensional walk --------------------------------------------------------------------
def nested_walk(mode, mem, eptp, cr0, cr3, cr4, efer, lin, kind, user, ac=False, pdptes=None, ept_mem=None):
    """``mem`` holds the guest tables (at host-physical addresses), ``ept_mem`` the EPT
    tables (the same memory unless a test wants to generate them differently)."""
    if ept_mem is None:
        ept_mem = mem
    refs = []
    table_pages = {}

    def rd(gpa, size, level):
        t = ept_translate(ept_mem, eptp, gpa, "r", linear=lin, paging_structure=True, refs=refs, tag=level)
        if t[0] != "ok":
            raise Stop(t)
        table_pages[gpa // 4096] = t
        refs.append((level, None))
        return mem.read(t[1] - t[1] % 4096 + gpa % 4096, size)

    def wr(gpa, size, level, value):
        t = table_pages[gpa // 4096]
        if not t[3]:   # the EPT translation of this guest table page does not allow writes
            q = 2 | (int(t[2]) | int(t[3]) << 1 | int(t[4]) << 2) << 3 | 1 << 7
            raise Stop(("violation", gpa, q))
        mem.write(t[1] - t[1] % 4096 + gpa % 4096, size, value)

    if not bit(cr0, 31):
        guest = ("ok", lin & 0xFFFFFFFF, 4096, True, True, True, True, True)
    else:
        try:
            guest = guest_walk(mode, rd, wr, cr0, cr3, cr4, efer, lin, kind, user, ac, pdptes)
        except Stop as stop:
            return stop.result, refs
    if guest[0] != "ok":
        return guest, refs
    if mode == "64":
        lin_for_ept = lin & 0xFFFFFFFFFFFFFFFF
    else:
        lin_for_ept = lin & 0xFFFFFFFF
    t = ept_translate(ept_mem, eptp, guest[1], kind, linear=lin_for_ept, paging_structure=False, refs=refs)
    if t[0] != "ok":
        return t, refs
    return ("ok", t[1], guest[1], guest[3] and t[2], guest[4] and t[3], guest[5] and t[4],
            min(guest[2], t[6])), refs


# -- random memory for the property tests ----------------------------------------------------------
# Entries are generated lazily: the first read of an address draws its value from
# hypothesis, so the random tables are exactly the entries a walk reaches. The reference
# runs first on a LazyMemory; the walker under test then runs on FrozenMemory, a copy of
# the bytes the reference saw before it wrote anything, and must end with the same bytes.

class LazyMemory:
    def __init__(self, source):
        self.source = source            # source(addr, size, kind) -> int
        self.initial = {}               # byte address -> value before any write
        self.current = {}               # byte address -> value now

    def read(self, addr, size, kind="guest"):
        if any(addr + i not in self.current for i in range(size)):
            value = self.source(addr, size, kind)
            for i in range(size):
                if addr + i not in self.current:
                    self.initial[addr + i] = self.current[addr + i] = (value >> (8 * i)) & 0xFF
        return sum(self.current[addr + i] << (8 * i) for i in range(size))

    def write(self, addr, size, value):
        for i in range(size):
            self.initial.setdefault(addr + i, 0)
            self.current[addr + i] = (value >> (8 * i)) & 0xFF

    def preset(self, addr, size, value):
        """Define memory before any walk (e.g. a PAE PDPT)."""
        for i in range(size):
            self.initial[addr + i] = self.current[addr + i] = (value >> (8 * i)) & 0xFF

    def view(self, kind):
        """The same memory, with reads generating entries of one kind ("guest" or "ept")."""
        lazy = self

        class View:
            def read(self, addr, size):
                return lazy.read(addr, size, kind)

            def write(self, addr, size, value):
                lazy.write(addr, size, value)
        return View()

    def frozen(self):
        return FrozenMemory(dict(self.initial))


class FrozenMemory:
    def __init__(self, initial):
        self.current = initial

    def read(self, addr, size):
        try:
            return sum(self.current[addr + i] << (8 * i) for i in range(size))
        except KeyError:
            raise AssertionError(f"read of {addr:#x}, which the reference never read") from None

    def write(self, addr, size, value):
        for i in range(size):
            self.current[addr + i] = (value >> (8 * i)) & 0xFF

    read64 = property(lambda self: lambda addr: self.read(addr, 8))
    write64 = property(lambda self: lambda addr, value: self.write(addr, 8, value))


POOL = [0x10000 + 0x1000 * i for i in range(12)]   # the small pages most tables land in


def make_source(draw, chaos):
    """Entry generator: ``chaos`` percent of entries are random low bits, often with a
    reserved bit; the rest are well-formed with random rights, A/D, page sizes and XD."""
    from hypothesis import strategies as st

    def pct(p):
        return draw(st.integers(0, 99)) < p

    def frame(large_sizes):
        if large_sizes and pct(10):
            size = draw(st.sampled_from(large_sizes))
            return draw(st.integers(0, (1 << M) // size - 1)) * size, True
        return draw(st.sampled_from(POOL)), False

    def guest32():
        if pct(chaos):
            return draw(st.integers(0, 0xFFF)) | draw(st.sampled_from(POOL)) | draw(st.integers(0, 0x1FF)) << 13
        value = 1 | 2 * pct(80) | 4 * pct(80) | 0x20 * pct(50) | 0x40 * pct(50) | 8 * pct(20)
        if pct(20):      # a 4 MiB page, sometimes with PSE-36 bits
            value |= 0x80 | draw(st.integers(0, 1023)) << 22 | (draw(st.integers(0, 15)) << 13 if pct(30) else 0)
        else:
            value |= draw(st.sampled_from(POOL))
        return value

    def guest64():
        if pct(chaos):
            value = draw(st.integers(0, 0xFFF)) | draw(st.sampled_from(POOL))
            if pct(60):
                value |= 1 << draw(st.integers(M, 63))
            if pct(30):
                value |= draw(st.integers(0, 0xFF)) << 13
            return value
        if pct(10):      # shaped like a PAE PDPTE (bits 2:1 and 8:5 are reserved there)
            return pdpte()
        value = 1 | 2 * pct(90) | 4 * pct(90) | 0x20 * pct(50) | 0x40 * pct(50) | 0x100 * pct(20)
        addr, large = frame([1 << 21, 1 << 30])
        if large or pct(5):
            value |= 0x80
            if pct(30):  # PAT, or a bit reserved in a large-page frame (boundaries first)
                value |= 1 << draw(st.sampled_from([12, 13, 16, 20, 21, 29]))
        value |= addr
        if pct(10):
            value |= 1 << 63
        if pct(5):
            value |= draw(st.integers(0, 0x7FF)) << 52      # ignored in 4-level, reserved in PAE
        return value

    def ept():
        if pct(chaos):
            value = draw(st.integers(0, 0xFFF)) | draw(st.sampled_from(POOL))
            if pct(40):
                value |= 1 << draw(st.integers(M, 63))
            if pct(30):
                value |= draw(st.integers(0, 0x1FF)) << 12
            return value
        rwx = 7 if pct(85) else draw(st.sampled_from([1, 3, 4, 5, 7, 0]))
        value = rwx | 0x100 * pct(50) | 0x200 * pct(50) | 0x800 * pct(20)
        addr, large = frame([1 << 21, 1 << 30])
        if large:
            value |= 0x80 | (draw(st.sampled_from([0, 6, 6, 4])) << 3) | 0x40 * pct(30)
            if pct(30):  # a bit reserved in a large-page frame (boundaries first)
                value |= 1 << draw(st.sampled_from([12, 13, 20, 21, 29]))
        elif pct(10):    # leaf attributes: fine in a PTE, reserved in a table entry
            value |= draw(st.sampled_from([6, 4, 1, 5])) << 3 | 0x40 * pct(50)
        return value | addr

    def pdpte():
        if pct(chaos):
            return guest64()
        return 1 | 0x18 * pct(20) | draw(st.sampled_from(POOL))

    def source(addr, size, kind):
        if kind == "ept":
            return ept()
        if kind == "pdpte":
            return pdpte()
        return guest32() if size == 4 else guest64()

    return source
