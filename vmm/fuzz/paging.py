"""Harness ``paging``: random guest page tables, paging switched on, in every mode.

The kernel of :mod:`vmm.fuzz.guest` gets page tables in its data pages: the code, stack
and table pages stay identity-mapped (or nothing would run), and every other entry the
case names is a random word — frames in RAM, past the end of RAM, in VMM-private host
memory, at the local APIC, on the VMM's trampoline page, on the tables themselves
(recursive mappings), above 4 GiB through PSE-36 or PAE; random U/S, R/W, A/D, PS and
reserved bits. Two formats: 32-bit paging (CR4.PSE random) and PAE (8-byte entries, XD
and reserved bits 62:36). After turning paging on the guest makes random accesses
through those entries — loads, stores, read-modify-writes, fetches, INVLPG, CR3
reloads, CR0.WP and CR0.PG toggles, stores into its own page tables, a drop to ring 3
for user-mode accesses — each in its own slot.
"""
from __future__ import annotations

import struct

from hypothesis import strategies as st

from ..vm import HOST_MEMORY_BASE, VM
from . import guest
from .core import Harness, Run, run_vm
from .instructions import _mov_imm, u32

MAX_INSTRUCTIONS = 10_000
TIMEOUT = 2.0
PAGE = 0x1000

TABLE_PAGES = [guest.DATA + PAGE * i for i in range(5)]    # 0x104000 .. 0x108000
# Pages that must stay mapped for the kernel to run: code, descriptor tables, slots,
# tables, stack (0x100000-0x10ffff).
IDENTITY_PAGES = range(guest.BASE >> 12, (guest.STACK_TOP >> 12))

FRAMES = (
    *TABLE_PAGES, 0, 0x9000, 0xB8000, 0x200000, 0x300000, guest.RAM_SIZE - PAGE, guest.RAM_SIZE,
    guest.RAM_SIZE + PAGE, 0x40000000, HOST_MEMORY_BASE, HOST_MEMORY_BASE + PAGE, HOST_MEMORY_BASE + 3 * PAGE,
    HOST_MEMORY_BASE + 0x100000, 0xFEE00000, 0xFEC00000, 0xFFFFE000, 0xFFFFF000,
)


def _frame(draw, limit: int) -> int:
    return draw(st.sampled_from(FRAMES) | st.integers(0, limit).map(lambda f: f & ~0xFFF)
                | st.integers(0, guest.RAM_SIZE - 1).map(lambda f: f & ~0xFFF))


@st.composite
def entry32(draw) -> int:
    """A 32-bit PDE/PTE: mostly present, random rights and bits; sometimes any word."""
    if draw(st.integers(0, 7)) == 0:
        return draw(st.integers(0, 0xFFFFFFFF))
    flags = draw(st.integers(0, 0xFFF)) | (1 if draw(st.integers(0, 5)) else 0)
    value = _frame(draw, 0xFFFFFFFF) | flags
    if value & 0x80 and draw(st.booleans()):       # a 4 MiB page: PSE-36 and reserved bits
        value = (value & ~0x3FF000) | (draw(st.integers(0, 0x1FF)) << 13)
    return value


@st.composite
def entry64(draw) -> int:
    """A PAE entry: random frame (up to bit 35), flags, XD, sometimes reserved bits 62:36."""
    if draw(st.integers(0, 7)) == 0:
        return draw(st.integers(0, (1 << 64) - 1))
    flags = draw(st.integers(0, 0xFFF)) | (1 if draw(st.integers(0, 5)) else 0)
    value = _frame(draw, (1 << 36) - 1) | flags
    if draw(st.integers(0, 3)) == 0:
        value |= 1 << draw(st.integers(36, 63))
    return value


@st.composite
def tables(draw, fmt: str) -> list[list[int]]:
    """[[table page, index, value], ...]: the entries to write, for one format."""
    entry, per_table = (entry32(), 1024) if fmt == "32" else (entry64(), 512)
    out = []
    for page in TABLE_PAGES:
        for _ in range(draw(st.integers(0, 10))):
            out.append([page, draw(st.integers(0, per_table - 1)), draw(entry)])
    return out


def table_bytes(fmt: str, entries: list) -> dict[int, bytes]:
    """The table pages: the fixed identity path for the kernel, then the random entries
    (a random entry never replaces the fixed path: the kernel must be able to run)."""
    pages = {page: bytearray(PAGE) for page in TABLE_PAGES}
    size, fmt_word = (4, "<I") if fmt == "32" else (8, "<Q")
    fixed = set()

    def put(page, index, value, pin=False):
        if (page, index) in fixed:
            return
        struct.pack_into(fmt_word, pages[page], index * size, value)
        if pin:
            fixed.add((page, index))

    rw = 0x3
    if fmt == "32":
        pd, pt = TABLE_PAGES[0], TABLE_PAGES[1]
        put(pd, 0, pt | rw, pin=True)
        for frame in IDENTITY_PAGES:
            put(pt, frame & 0x3FF, (frame << 12) | rw, pin=True)
    else:
        pdpt, pd, pt = TABLE_PAGES[0], TABLE_PAGES[1], TABLE_PAGES[2]
        put(pdpt, 0, pd | 1, pin=True)
        put(pd, 0, pt | rw, pin=True)
        for frame in IDENTITY_PAGES:
            put(pt, frame & 0x1FF, (frame << 12) | rw, pin=True)
    for page, index, value in entries:
        if fmt != "32" and page == TABLE_PAGES[0] and index >= 4:
            index &= 3        # a PAE PDPT has 4 entries (CR3 points at the page's start)
        put(page, index, value & ((1 << (8 * size)) - 1))
    return {page: bytes(data) for page, data in pages.items()}


def linear_addresses(fmt: str, entries: list):
    """Linear addresses whose walks go through the case's random entries."""
    hits = []
    for page, index, _ in entries:     # through the default links of table_bytes
        k = TABLE_PAGES.index(page)
        if fmt == "32":
            hits += [index << 22] if k == 0 else [(k << 22) | (index << 12)] + ([index << 12] if k == 1 else [])
        else:
            hits += {0: [(index & 3) << 30], 1: [index << 21], 2: [index << 12], 3: [(1 << 30) | (index << 21)],
                     4: [(1 << 30) | (index << 12), (1 << 21) | (index << 12)]}[k]
    return st.one_of(st.sampled_from(hits or [0]), st.sampled_from(TABLE_PAGES),
                     st.sampled_from([0, guest.SLOTS, guest.RAM_SIZE, 0x400000, 0xC0000000, 0xFFC00000,
                                      0xFFFFF000, HOST_MEMORY_BASE]), st.integers(0, 0xFFFFFFFF))


@st.composite
def accesses(draw, fmt: str, entries: list) -> list[bytes]:
    where = linear_addresses(fmt, entries)
    out = []
    for _ in range(draw(st.integers(1, 24))):
        kind = draw(st.sampled_from(["load", "store", "store", "rmw", "invlpg", "cr3", "wp", "pg_toggle",
                                     "table_store", "fetch", "user", "user", "load", "store"]))
        at = draw(where) + draw(st.sampled_from([0, 0, 4, 0xFFC, 0xFFE]))
        if kind == "load":
            out.append(b"\xa1" + u32(at))
        elif kind == "store":
            out.append(b"\xc7\x05" + u32(at) + u32(draw(st.integers(0, 0xFFFFFFFF))))
        elif kind == "rmw":
            out.append(b"\x83\x05" + u32(at) + b"\x01")             # add dword [at], 1
        elif kind == "invlpg":
            out.append(b"\x0f\x01\x3d" + u32(at))
        elif kind == "cr3":
            out.append(_mov_imm("eax", draw(st.sampled_from(TABLE_PAGES))) + b"\x0f\x22\xd8")
        elif kind == "wp":
            out.append(b"\x0f\x20\xc0\x35" + u32(1 << 16) + b"\x0f\x22\xc0")   # cr0 ^= WP
        elif kind == "pg_toggle":
            out.append(b"\x0f\x20\xc0\x35" + u32(1 << 31) + b"\x0f\x22\xc0")   # cr0 ^= PG
        elif kind == "table_store":
            page = draw(st.sampled_from(TABLE_PAGES))
            entry = draw(entry32() if fmt == "32" else entry64()) & 0xFFFFFFFF
            offset = draw(st.integers(0, 1023)) * 4
            out.append(b"\xc7\x05" + u32(page + offset) + u32(entry))
        elif kind == "fetch":
            out.append(_mov_imm("eax", at) + b"\xff\xd0")           # call eax
        else:   # drop to ring 3 at the next slot; later faults return there through the TSS
            out.append(bytes([0x6A, guest.USER_DS, 0x54, 0x68]) + u32(0x3002) + bytes([0x6A, guest.USER_CS])
                       + b"\x68" + u32(0) + b"\xcf")
    return out


def _fix_user_frames(slots: list[bytes]) -> list[bytes]:
    """Point each ring-3 IRET at the slot after its own (known only once placed)."""
    out = []
    for i, ins in enumerate(slots):
        if ins.endswith(b"\x68" + u32(0) + b"\xcf"):
            ins = ins[:-5] + u32(guest.SLOTS + guest.SLOT * (i + 1)) + b"\xcf"
        out.append(ins)
    return out


def paging_prologue(fmt: str, cr4_pse: bool, wp: bool) -> list[bytes]:
    """CR3, CR4 (PSE or PAE), CR0.PG (and WP): one slot each."""
    cr4 = (0x20 if fmt == "pae" else 0) | (0x10 if cr4_pse else 0)
    cr0_bits = 0x80000000 | (0x10000 if wp else 0)
    return [_mov_imm("eax", TABLE_PAGES[0]) + b"\x0f\x22\xd8",
            _mov_imm("eax", cr4) + b"\x0f\x22\xe0",
            b"\x0f\x20\xc0\x0d" + u32(cr0_bits) + b"\x0f\x22\xc0"]


@st.composite
def cases(draw) -> dict:
    fmt = draw(st.sampled_from(["32", "32", "pae"]))
    entries = draw(tables(fmt))
    return {"fmt": fmt, "pse": draw(st.booleans()), "wp": draw(st.booleans()), "entries": entries,
            "accesses": [a.hex() for a in draw(accesses(fmt, entries))]}


def image_of(case: dict) -> bytes:
    fmt = case["fmt"]
    slots = paging_prologue(fmt, case["pse"], case["wp"]) + [bytes.fromhex(a) for a in case["accesses"]]
    return guest.kernel_image(_fix_user_frames(slots), table_bytes(fmt, case["entries"]))


class PagingHarness(Harness):
    name = "paging"
    description = ("random guest page tables (32-bit with PSE, PAE; frames outside RAM, in VMM memory, above "
                   "4 GiB; reserved bits) with paging on and random accesses through them")

    def modes(self, available):
        return tuple(m for m in available if m != "pv")   # flat kernels; a PV kernel boots otherwise

    def strategy(self):
        return cases()

    def execute(self, run: Run, case: dict) -> None:
        image = guest.load(image_of(case))
        run_vm(run, lambda: VM(image, mode=run.mode, ram_size=guest.RAM_SIZE, serial_output=lambda data: None,
                               max_instructions=MAX_INSTRUCTIONS, timeout=TIMEOUT))
