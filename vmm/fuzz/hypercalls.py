"""Harness ``hypercalls``: random hypercall numbers and arguments in ``pv``.

A PV kernel (Xen x86_32 ABI: number in EAX, arguments in EBX, ECX, EDX, ESI, EDI,
``int 0x82``; built with the Xen ELF notes the ``pv`` mode's loader reads) makes up to
16 hypercalls, one after the other, and then shuts down with ``sched_op``. Numbers are
the ones Xen defines and any other; arguments are pointers into the kernel's data page
(which holds random request structures: ``mmu_update`` pairs with machine addresses
inside and outside the domain, ``mmuext_op`` commands, trap tables, reservations), into
its own code and page tables, past its RAM, into the hypervisor's area (GDT, shared
info, the VMM's trampoline), NULL, and counts from 0 to 2^32-1. A failing hypercall
returns ``-errno`` and the kernel goes on; a fault ends the domain. Either way the VMM
must stop it cleanly and the containment checks must hold.

The harness runs only when ``pv`` is among the available modes.
"""
from __future__ import annotations

import struct

from hypothesis import strategies as st

from ..vm import HOST_MEMORY_BASE, VM
from .core import Harness, Run, run_vm

MAX_INSTRUCTIONS = 20_000
TIMEOUT = 2.0
RAM_SIZE = 8 << 20
PAGE = 0x1000

VIRT_BASE = 0xC0000000
LOAD = 0x100000                       # pseudo-physical
CODE = VIRT_BASE + LOAD               # entry
DATA = CODE + 0x2000                  # random request structures
HYPERCALL_PAGE = CODE + 0x3000
NOTES = CODE + 0x4000
IMAGE_PAGES = 5
INT_0x82 = b"\xcd\x82"

# Xen x86_32 numbers (xen/include/public/xen.h): the harness needs them before pv exists.
KNOWN_HYPERCALLS = (0, 1, 2, 3, 4, 5, 8, 9, 12, 14, 17, 18, 23, 26, 29, 32)
SCHED_OP, SCHEDOP_SHUTDOWN = 29, 2
HYPERVISOR_AREA = (0xFFC00000, 0xFFC10000, 0xFFC0E000, 0xFFFFE000, 0xFFFFF000, 0xF5800000, 0xFC000000)

pointer = st.one_of(
    st.sampled_from([DATA, DATA + 8, DATA + 0xFF0, DATA + 0xFFC, CODE, HYPERCALL_PAGE, VIRT_BASE, 0,
                     VIRT_BASE + RAM_SIZE - 8, VIRT_BASE + RAM_SIZE, *HYPERVISOR_AREA, 0xFFFFFFFF]),
    st.integers(0, 0xFFFFFFFF))
count = st.sampled_from([0, 1, 2, 3, 16, 255, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF]) | st.integers(0, 64)
machine = st.one_of(st.integers(0, RAM_SIZE + 0x100000), st.sampled_from([0, RAM_SIZE, HOST_MEMORY_BASE,
                                                                           0xFEE00000, 0xFFFFF000]),
                    st.integers(0, 0xFFFFFFFF))


@st.composite
def hypercall(draw) -> list[int]:
    number = draw(st.sampled_from(KNOWN_HYPERCALLS) | st.integers(0, 64) | st.integers(0, 0xFFFFFFFF))
    args = [draw(st.one_of(pointer, count, st.integers(0, 0xFFFFFFFF))) for _ in range(5)]
    return [number, *args]


@st.composite
def data_page(draw) -> bytes:
    """Request structures at the start of the data page, random words after them."""
    out = bytearray()
    for _ in range(draw(st.integers(0, 16))):                  # mmu_update {ptr, val} (u64 each)
        ptr = (draw(machine) & ~7) | draw(st.sampled_from([0, 0, 1, 2, 3]))
        val = draw(machine) | draw(st.integers(0, 0xFFF))
        out += struct.pack("<QQ", ptr, val)
    words = draw(st.lists(st.integers(0, 0xFFFFFFFF), max_size=64))
    out += b"".join(struct.pack("<I", w) for w in words)
    return bytes(out[:PAGE]).ljust(PAGE, b"\0")


@st.composite
def cases(draw) -> dict:
    return {"calls": draw(st.lists(hypercall(), min_size=1, max_size=16)), "data": draw(data_page()).hex()}


def _mov(reg: int, value: int) -> bytes:
    return bytes([0xB8 + reg]) + struct.pack("<I", value & 0xFFFFFFFF)


def code_bytes(calls: list[list[int]]) -> bytes:
    """Each call: EAX, EBX, ECX, EDX, ESI, EDI, int 0x82; then sched_op(shutdown, poweroff)."""
    out = bytearray()
    for number, *args in calls:
        out += _mov(0, number)
        for reg, value in zip((3, 1, 2, 6, 7), args, strict=False):        # ebx ecx edx esi edi
            out += _mov(reg, value)
        out += INT_0x82
    out += shutdown_bytes()                                     # struct sched_shutdown { reason = 0 }
    return bytes(out)


def _note(kind: int, desc: bytes) -> bytes:
    name = b"Xen\0"
    return struct.pack("<III", len(name), len(desc), kind) + name + desc.ljust((len(desc) + 3) & ~3, b"\0")


def pv_image(case: dict) -> bytes:
    """A PV kernel ELF: code, data page, hypercall page, Xen notes, in one segment."""
    code = code_bytes(case["calls"])
    if len(code) > 0x2000:
        raise ValueError("too many hypercalls for the code pages")
    return pv_kernel(code, case_data(case))


def shutdown_bytes() -> bytes:
    """sched_op(SCHEDOP_shutdown, {poweroff}), and a loop should it return."""
    reason = DATA + PAGE - 4
    return _mov(0, SCHED_OP) + _mov(3, SCHEDOP_SHUTDOWN) + _mov(1, reason) + INT_0x82 + b"\xeb\xfe"


def pv_kernel(code: bytes, data_page: bytes = bytes(PAGE)) -> bytes:
    """A PV kernel ELF around ``code`` (at most 8 KiB, entered at CODE in ring 1): a data
    page, the hypercall page and the Xen notes, in one segment."""
    from ..build.elf import Segment, write_elf32

    if len(code) > 0x2000:
        raise ValueError("code larger than the kernel's two code pages")
    data = bytearray(data_page)
    data[PAGE - 4:PAGE] = bytes(4)
    notes = (_note(5, b"xen-3.0\0") + _note(3, struct.pack("<I", VIRT_BASE)) + _note(1, struct.pack("<I", CODE))
             + _note(2, struct.pack("<I", HYPERCALL_PAGE)) + _note(6, b"vmm-fuzz\0"))
    body = code.ljust(0x2000, b"\x90") + bytes(data) + bytes(PAGE) + notes
    segment = Segment(LOAD, body, flags=7, vaddr=CODE)
    return write_elf32([segment], CODE, notes=[(NOTES, len(notes))])


def case_data(case: dict) -> bytes:
    return bytes.fromhex(case["data"])


def domain_ranges(vm: VM) -> list[tuple[int, int]]:
    """Host memory that is the domain's: its machine frames (and frames the mode lets it
    map, such as shared info), found on the mode's domain-memory object."""
    from ..pv.memory import DomainMemory

    for value in vars(vm.mode).values():
        if isinstance(value, DomainMemory):
            base = value.offset * PAGE
            ranges = [(base, base + value.nr_pages * PAGE)]
            ranges += [(mfn * PAGE, mfn * PAGE + PAGE) for mfn in value.extra_mappable]
            return ranges
    return [(0, vm.ram_size)]


class HypercallHarness(Harness):
    name = "hypercalls"
    description = "random hypercall numbers and arguments (Xen x86_32 ABI, int 0x82) in pv"

    def modes(self, available):
        return tuple(m for m in available if m == "pv")

    def unavailable(self, available):
        if "pv" not in available:
            return "hypercalls exist in mode pv only"
        return None

    def strategy(self):
        return cases()

    def execute(self, run: Run, case: dict) -> None:
        from ..loader.xen import load_xen

        image = load_xen(pv_image(case), ram_size=RAM_SIZE, image_name="fuzz-pv")
        run_vm(run, lambda: VM(image, mode=run.mode, ram_size=RAM_SIZE, serial_output=lambda data: None,
                               max_instructions=MAX_INSTRUCTIONS, timeout=TIMEOUT),
               guest_ranges=domain_ranges)
