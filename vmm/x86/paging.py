"""Paging-structure entries, #PF error codes, page sizes and address masks
(SDM vol. 3 chapter 4 "Paging": §4.3 32-bit paging, §4.4 PAE paging, §4.5 4-level
paging, §4.7 "Page-Fault Exceptions").

The entry layout is shared by every format for bits 8:0 (32-bit entries are 4 bytes,
PAE and 4-level entries 8)::

    bit 0 P    bit 1 R/W   bit 2 U/S   bit 3 PWT   bit 4 PCD   bit 5 A
    bit 6 D (leaf)   bit 7 PS (PDE/PDPTE: maps a large page; PAT in a 4 KiB PTE)
    bit 8 G (leaf)   bit 12 PAT (large-page leaf)   bit 63 XD (PAE, 4-level; EFER.NXE)
"""
from __future__ import annotations

from enum import IntFlag

from .bits import bits, int_operators


@int_operators
class PTE(IntFlag):
    """Bits of a paging-structure entry, any level, any format (Tables 4-4 .. 4-20)."""

    P = 1 << 0          #: present
    RW = 1 << 1         #: read/write (0: writes may be disallowed)
    US = 1 << 2         #: user/supervisor (1: user-mode accesses allowed)
    PWT = 1 << 3        #: page-level write-through
    PCD = 1 << 4        #: page-level cache disable
    A = 1 << 5          #: accessed
    D = 1 << 6          #: dirty (leaf entries)
    PS = 1 << 7         #: page size (PDE, PDPTE): the entry maps a large page
    G = 1 << 8          #: global (leaf entries)
    PAT_LARGE = 1 << 12  #: PAT index bit of a 2 MiB / 4 MiB / 1 GiB leaf
    XD = 1 << 63        #: execute disable (PAE and 4-level, honoured when EFER.NXE = 1)


PTE_PAT = PTE.PS
"""Bit 7 of a 4 KiB PTE is its PAT index bit (the same bit is PS in a directory entry)."""

PTE_NAMES = {PTE.P: "P", PTE.RW: "R/W", PTE.US: "U/S", PTE.PWT: "PWT", PTE.PCD: "PCD", PTE.A: "A",
             PTE.D: "D", PTE.PS: "PS", PTE.G: "G", PTE.XD: "XD"}
"""Each entry bit's SDM spelling, for traces and dumps."""


@int_operators
class PFError(IntFlag):
    """The #PF error code (§4.7, Figure 4-12)."""

    P = 1 << 0       #: 0: not-present page; 1: protection violation or reserved bit
    WR = 1 << 1      #: the access was a write
    US = 1 << 2      #: a user-mode access
    RSVD = 1 << 3    #: a reserved bit was set in a paging-structure entry
    ID = 1 << 4      #: an instruction fetch (reported with SMEP or PAE/4-level and NXE)
    PK = 1 << 5      #: protection-key violation
    SS = 1 << 6      #: shadow-stack access
    SGX = 1 << 15    #: SGX access-control violation


# -- page sizes ------------------------------------------------------------------------------
KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT                 #: 4 KiB
PAGE_OFFSET_MASK = PAGE_SIZE - 1            #: 0xFFF, the byte within a 4 KiB page
PAGE_MASK = 0xFFFFF000                      #: a 32-bit address's 4 KiB frame (bits 31:12)
LARGE_PAGE_32 = 4 * MiB                     #: a PS=1 PDE in 32-bit paging (CR4.PSE = 1)
LARGE_PAGE_MASK_32 = 0xFFC00000             #: its frame, bits 31:22
LARGE_PAGE_PAE = 2 * MiB                    #: a PS=1 PDE in PAE and 4-level paging
HUGE_PAGE = GiB                             #: a PS=1 PDPTE in 4-level paging

# -- 32-bit paging (§4.3): two levels of 1024 4-byte entries ----------------------------------
ENTRY_SIZE_32 = 4
ENTRIES_32 = 1024
INDEX_MASK_32 = ENTRIES_32 - 1              #: 0x3FF, a 10-bit table index
PDE_SHIFT_32 = 22                           #: linear bits 31:22 index the page directory
PTE_SHIFT = 12                              #: linear bits 21:12 (20:12 with 8-byte entries) index the PT
CR3_PD_MASK_32 = PAGE_MASK                  #: CR3 bits 31:12 locate the page directory
PSE36_SHIFT = 13                            #: 4 MiB PDE bits (M-20):13 hold address bits (M-1):32

# -- PAE (§4.4) and 4-level (§4.5): 512 8-byte entries per table -------------------------------
ENTRY_SIZE_64 = 8
ENTRIES_64 = 512
INDEX_MASK_64 = ENTRIES_64 - 1              #: 0x1FF, a 9-bit table index
PDE_SHIFT_64 = 21
PDPTE_SHIFT = 30
PML4E_SHIFT = 39
PAE_PDPTES = 4                              #: PAE's page-directory-pointer table has four entries
PDPTE_INDEX_MASK_PAE = PAE_PDPTES - 1       #: linear bits 31:30
CR3_PDPT_MASK_PAE = 0xFFFFFFE0              #: CR3 bits 31:5 locate the PAE PDPT
CR3_PML4_MASK = bits(51, 12)                #: CR3 bits 51:12 locate the PML4 (4-level)

MAXPHYADDR = 36
"""The physical-address width the walkers assume unless told otherwise (CPUID 0x80000008)."""

ADDRESS_MASK_32 = 0xFFFFFFFF                #: a 32-bit linear address
ADDRESS_MASK_64 = (1 << 64) - 1


def frame_mask(maxphyaddr: int = MAXPHYADDR) -> int:
    """Bits (M-1):12 of an 8-byte entry: the next table or the 4 KiB frame."""
    return bits(maxphyaddr - 1, PAGE_SHIFT)
