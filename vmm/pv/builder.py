"""The domain builder: what Xen's ``xc_dom_*`` does before a PV kernel's first instruction.

After the image (and module), in pseudo-physical memory, page-aligned::

    image | module | mfn_list (4 bytes per page) | start_info page | boot stack page

and at the top of RAM the bootstrap page tables (one page directory, one page table per
4 MiB mapped). They map virtual ``virt_base + p`` to pseudo-physical ``p`` (machine frame
``p + offset``) for all of RAM below the VMM's area, user-accessible and writable, as
memory is on a bare machine with paging off, except the page-table frames themselves,
which are mapped read-only. The hypercall page named by the image's note is filled with
``mov $nr, %eax; int $0x82; ret`` stubs (``iret``: ``push %eax`` first, jumped to).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from ..x86 import PTE, MiB
from ..x86.paging import ENTRIES_32 as ENTRIES
from ..x86.paging import LARGE_PAGE_32 as LARGE
from ..x86.paging import PAGE_SHIFT, PAGE_SIZE
from . import abi
from .memory import DomainMemory

PTE_P, PTE_W, PTE_U = PTE.P, PTE.RW, PTE.US

# The opcodes of the hypercall stubs (SDM vol. 2).
_INT3, _PUSH_EAX, _MOV_EAX_IMM32, _INT_IMM8, _RET = b"\xcc", b"\x50", b"\xb8", b"\xcd", b"\xc3"


@dataclass
class BootState:
    """Where the builder put things: virtual addresses, and CR3 (machine)."""

    start_info: int
    pt_base: int
    nr_pt_frames: int
    mfn_list: int
    stack_top: int
    cr3: int


def hypercall_page() -> bytes:
    """Xen's ring-1 transfer points: 32 bytes per hypercall number."""
    page = bytearray(_INT3 * PAGE_SIZE)
    for nr in range(PAGE_SIZE // abi.HYPERCALL_STUB_SIZE):
        at = nr * abi.HYPERCALL_STUB_SIZE
        if nr == abi.Hypercall.iret:  # never returns: guests jump here with the frame on the stack
            stub = _PUSH_EAX + _MOV_EAX_IMM32 + struct.pack("<I", nr) + _INT_IMM8 + bytes((abi.HYPERCALL_VECTOR,))
        else:
            stub = _MOV_EAX_IMM32 + struct.pack("<I", nr) + _INT_IMM8 + bytes((abi.HYPERCALL_VECTOR,)) + _RET
        page[at:at + len(stub)] = stub
    return bytes(page)


def _page_up(n: int) -> int:
    return (n + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)


def build(mem: DomainMemory, image, shared_info_machine: int) -> BootState:
    """Lay out a domain for ``image`` (a :class:`vmm.loader.xen.XenImage`); raises
    ValueError when the domain's RAM cannot hold it."""
    nr = mem.nr_pages
    base = image.virt_base
    mapped = min(nr, (abi.HYPERVISOR_VIRT_START - base) // PAGE_SIZE)
    n_l1 = (mapped + ENTRIES - 1) // ENTRIES
    pt_first = nr - 1 - n_l1                       # page directory, then its page tables
    cursor = _page_up(image.image_end())
    mfn_list = cursor
    cursor = _page_up(cursor + 4 * nr)
    start_info = cursor
    stack = start_info + PAGE_SIZE
    if stack + PAGE_SIZE > pt_first * PAGE_SIZE or stack + PAGE_SIZE > mapped * PAGE_SIZE:
        raise ValueError(f"{nr * PAGE_SIZE // MiB} MiB of RAM cannot hold the image, its start info "
                         "and the bootstrap page tables")

    def wm(pseudo: int, data: bytes) -> None:
        mem.write(mem.pfn_to_mfn(0) * PAGE_SIZE + pseudo, data)

    wm(mfn_list, struct.pack(f"<{nr}I", *range(mem.offset, mem.offset + nr)))
    pt_frames = set(range(pt_first, nr))
    l2 = [0] * ENTRIES
    first_l2 = base // LARGE
    for i in range(n_l1):
        pfn_table = pt_first + 1 + i
        ptes = []
        for j in range(ENTRIES):
            pfn = i * ENTRIES + j
            if pfn >= mapped:
                ptes.append(0)
                continue
            flags = PTE_P | PTE_U | (0 if pfn in pt_frames else PTE_W)
            ptes.append(mem.pfn_to_mfn(pfn) << PAGE_SHIFT | flags)
        wm(pfn_table * PAGE_SIZE, struct.pack(f"<{ENTRIES}I", *ptes))
        l2[first_l2 + i] = mem.pfn_to_mfn(pfn_table) << PAGE_SHIFT | PTE_P | PTE_W | PTE_U
    wm(pt_first * PAGE_SIZE, struct.pack(f"<{ENTRIES}I", *l2))

    if image.hypercall_page is not None:
        wm(image.hypercall_page - base, hypercall_page())
    info = bytearray(PAGE_SIZE)
    info[abi.SI_MAGIC:abi.SI_MAGIC + len(abi.START_INFO_MAGIC)] = abi.START_INFO_MAGIC
    struct.pack_into("<IIIIIII", info, abi.SI_NR_PAGES, nr, shared_info_machine,
                     abi.SIF_PRIVILEGED | abi.SIF_INITDOMAIN, 0, 0, 0, 0)
    mod_start, mod_len = image.module or (0, 0)
    struct.pack_into("<IIIII", info, abi.SI_PT_BASE, base + pt_first * PAGE_SIZE, n_l1 + 1,
                     base + mfn_list, base + mod_start if mod_len else 0, mod_len)
    info[abi.SI_CMD_LINE:abi.SI_CMD_LINE + len(image.cmdline)] = image.cmdline
    wm(start_info, bytes(info))
    mem.new_baseptr(mem.pfn_to_mfn(pt_first))
    return BootState(base + start_info, base + pt_first * PAGE_SIZE, n_l1 + 1, base + mfn_list,
                     base + stack + PAGE_SIZE, mem.pfn_to_mfn(pt_first) << PAGE_SHIFT)
