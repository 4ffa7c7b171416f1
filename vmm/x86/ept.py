"""Extended page tables: entry bits, memory types, the EPT pointer and the exit
qualification of an EPT violation (SDM vol. 3 §29.3 "The Extended Page Table Mechanism",
§29.3.7 memory typing, §25.6.11 "Extended-Page-Table Pointer", Table 28-7).

EPT entries are 8 bytes, four levels (EPT PML4E, PDPTE, PDE, PTE), 512 per table,
indexed by guest-physical bits 47:39, 38:30, 29:21, 20:12; an entry is present when any
of bits 2:0 is set.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum, IntFlag

from .bits import int_operators


@int_operators
class EPTE(IntFlag):
    """Bits of an EPT paging-structure entry (Tables 29-1 .. 29-6). Bits 5:3 of a leaf
    are the memory type (:data:`EPT_MEMTYPE_SHIFT`)."""

    R = 1 << 0            #: read access
    W = 1 << 1            #: write access (without R: a misconfiguration)
    X = 1 << 2            #: execute access (supervisor, with mode-based execute control)
    IGNORE_PAT = 1 << 6   #: leaf: ignore the guest PAT memory type
    LARGE = 1 << 7        #: PDPTE: maps 1 GiB; PDE: maps 2 MiB; reserved in a PML4E
    A = 1 << 8            #: accessed (EPTP.AD = 1)
    D = 1 << 9            #: dirty (leaf, EPTP.AD = 1)
    USER_X = 1 << 10      #: user-mode execute (mode-based execute control)
    SUPPRESS_VE = 1 << 63  #: suppress #VE


EPT_RWX = EPTE.R | EPTE.W | EPTE.X
EPT_MEMTYPE_SHIFT = 3
EPT_MEMTYPE_MASK = 7 << EPT_MEMTYPE_SHIFT

EPTE_NAMES = {EPTE.R: "R", EPTE.W: "W", EPTE.X: "X", EPTE.IGNORE_PAT: "IPAT", EPTE.LARGE: "PS",
              EPTE.A: "A", EPTE.D: "D", EPTE.USER_X: "XU", EPTE.SUPPRESS_VE: "SVE"}


class MemoryType(IntEnum):
    """Memory types (vol. 3 §11.3, Table 11-2), as EPT leaves, the EPTP, PAT and MTRRs
    encode them. 2, 3 and 7 are reserved."""

    UC = 0   #: uncacheable
    WC = 1   #: write combining
    WT = 4   #: write-through
    WP = 5   #: write-protected
    WB = 6   #: write-back


RESERVED_MEMORY_TYPES = (2, 3, 7)



class EptLevel(IntEnum):
    """The four EPT levels, top first, as indices into :data:`EPT_LEVEL_NAMES`."""

    PML4E = 0
    PDPTE = 1    #: LARGE = 1 here maps a 1 GiB page
    PDE = 2      #: LARGE = 1 here maps a 2 MiB page
    PTE = 3      #: always a leaf


EPT_LEVEL_NAMES = ("EPT PML4E", "EPT PDPTE", "EPT PDE", "EPT PTE")
EPT_LEVEL_SHIFTS = (39, 30, 21, 12)
EPT_LARGE_LEVELS = (EptLevel.PDPTE, EptLevel.PDE)
EPT_PAGE_SIZES: dict[int, int] = {EptLevel.PDPTE: 1 << 30, EptLevel.PDE: 1 << 21, EptLevel.PTE: 1 << 12}
"""The page a leaf maps at each level that may hold one."""
EPT_INDEX_MASK = 0x1FF
EPT_ENTRY_SIZE = 8
EPT_ENTRIES = 512
EPT_LEVELS = 4

# -- the EPT pointer (§25.6.11) --------------------------------------------------------------
EPTP_MEMTYPE_MASK = 7            #: bits 2:0, memory type of the EPT paging structures (UC or WB)
EPTP_WALK_SHIFT = 3              #: bits 5:3, page-walk length - 1
EPTP_WALK_MASK = 7 << EPTP_WALK_SHIFT
EPTP_AD = 1 << 6                 #: bit 6, enable the EPT accessed and dirty flags


@int_operators
class EptViolationBits(IntFlag):
    """Exit qualification for EPT violations (Table 28-7)."""

    READ = 1 << 0             #: the access was a data read
    WRITE = 1 << 1            #: the access was a data write
    FETCH = 1 << 2            #: the access was an instruction fetch
    READABLE = 1 << 3         #: AND of bit 0 of the EPT entries walked
    WRITABLE = 1 << 4         #: AND of bit 1
    EXECUTABLE = 1 << 5       #: AND of bit 2
    LINEAR_VALID = 1 << 7     #: the guest-linear address field is valid
    TRANSLATED = 1 << 8       #: (bit 7 set) 1: access to the translated address; 0: to a guest paging-structure entry
    NMI_UNBLOCKING = 1 << 12  #: NMI unblocking due to IRET


@dataclass(frozen=True)
class EptViolationQualification:
    """An EPT-violation exit qualification as fields (:class:`EptViolationBits`):
    ``encode() -> int``, ``decode(int)``, ``describe()`` for traces."""

    read: bool = False
    write: bool = False
    fetch: bool = False
    readable: bool = False
    writable: bool = False
    executable: bool = False
    linear_valid: bool = False
    translated: bool = False
    nmi_unblocking: bool = False

    _BITS = (("read", EptViolationBits.READ), ("write", EptViolationBits.WRITE),
             ("fetch", EptViolationBits.FETCH), ("readable", EptViolationBits.READABLE),
             ("writable", EptViolationBits.WRITABLE), ("executable", EptViolationBits.EXECUTABLE),
             ("linear_valid", EptViolationBits.LINEAR_VALID), ("translated", EptViolationBits.TRANSLATED),
             ("nmi_unblocking", EptViolationBits.NMI_UNBLOCKING))

    def encode(self) -> int:
        return sum(int(bit) for name, bit in self._BITS if getattr(self, name))

    @classmethod
    def decode(cls, q: int) -> EptViolationQualification:
        return cls(**{name: bool(q & bit) for name, bit in cls._BITS})

    def describe(self) -> str:
        access = "/".join(n for n, on in (("read", self.read), ("write", self.write),
                                          ("fetch", self.fetch)) if on) or "no access"
        perms = ("r" if self.readable else "-") + ("w" if self.writable else "-") + ("x" if self.executable else "-")
        text = f"EPT violation: {access}, entry {perms}"
        if self.linear_valid:
            text += ", linear address valid, " + ("final translation" if self.translated
                                                  else "paging-structure access")
        if self.nmi_unblocking:
            text += ", NMI unblocking"
        return text
