"""Sensitive-instruction sites in guest code, found once per code page.

Unicorn hooks only IN/OUT/CPUID/RDTSC by instruction; MOV CRn, MOV DRn, RDMSR/WRMSR,
INVLPG, LGDT/SGDT... execute natively at CPL0. A mode that must intercept
them finds them in the code: when a code page is first fetched (a TLB fill for an
instruction fetch), its bytes are searched for the opcodes of those instructions
(``0F xx``, optionally behind prefixes) and a code hook bounded to each candidate
address is installed. A candidate that is not really an instruction start costs
nothing: a bounded hook fires only when an instruction begins at its address, and then
capstone decodes it (once per address) to confirm.

Code pages are mapped without write permission. A write to one comes back as a TLB fill
for a write: the page is marked for a rescan and mapped writable but not executable,
so the next instruction fetched from it refills, rescans, and maps it executable again
(self-modifying code, and code and data sharing a page, both keep working).
"""
from __future__ import annotations

from functools import lru_cache

from capstone import CS_ARCH_X86, CS_MODE_16, CS_MODE_32, Cs

from ..x86.opcodes import PREFIX_GROUPS

PAGE_MASK = 0xFFFFF000
PREFIXES = frozenset(b"\x26\x2e\x36\x3e\x64\x65\x66\x67\xf2\xf3")
# Second opcode bytes after 0x0F: group 6 (SLDT/STR/LLDT/LTR), group 7 (SGDT/SIDT/LGDT/
# LIDT/SMSW/LMSW/INVLPG/VMCALL...), CLTS, INVD, WBINVD, MOV CR, MOV DR, WRMSR, RDMSR, RDPMC.
SECOND_BYTES = (0x00, 0x01, 0x06, 0x08, 0x09, 0x20, 0x21, 0x22, 0x23, 0x30, 0x32, 0x33)
PATTERNS = tuple(bytes([0x0F, b]) for b in SECOND_BYTES)


CODE_32 = 32   # Engine.code_bits() of 32-bit code


@lru_cache(maxsize=2)
def _decoder(bits: int = CODE_32) -> Cs:
    cs = Cs(CS_ARCH_X86, CS_MODE_32 if bits == CODE_32 else CS_MODE_16)
    cs.detail = True
    return cs


def candidates(page: bytes, base: int) -> set[int]:
    """Addresses in ``page`` (at linear ``base``) where a sensitive instruction may start."""
    found = set()
    for pattern in PATTERNS:
        i = page.find(pattern)
        while i >= 0:
            found.add(base + i)
            j = i - 1
            while j >= 0 and i - j <= PREFIX_GROUPS and page[j] in PREFIXES:
                found.add(base + j)
                j -= 1
            i = page.find(pattern, i + 1)
    return found


class CodeSites:
    """Hooks at the sensitive sites of every code page the guest executes.

    ``read_code(linear, size)`` reads guest code through the guest's own translation.
    """

    def __init__(self, engine, read_code):
        self.engine = engine
        self.read_code = read_code
        self.hooks: dict[int, int] = {}                       # linear address -> hook handle
        self.scanned: dict[int, int] = {}                     # linear page -> guest-physical page
        self.code_pages: dict[int, set[int]] = {}             # guest-physical page -> linear pages
        self._decoded: dict[tuple[int, int], object] = {}   # (address, code size) -> instruction
        self.pages_scanned = 0
        self.rescans = 0

    def fetch(self, linear_page: int, physical_page: int) -> None:
        """A fetch fill for ``linear_page``: scan it unless already scanned as this frame."""
        if self.scanned.get(linear_page) == physical_page:
            return
        data = self.read_code(linear_page, 0x1000)
        for address in candidates(data, linear_page) - self.hooks.keys():
            self.hooks[address] = self.engine.hook_code_site(address)
        self.scanned[linear_page] = physical_page
        self.code_pages.setdefault(physical_page, set()).add(linear_page)
        self.pages_scanned += 1

    def written(self, physical_page: int) -> None:
        """The guest is about to write a scanned frame: rescan it at its next fetch."""
        for linear_page in self.code_pages.pop(physical_page, ()):
            self.scanned.pop(linear_page, None)
            for key in [k for k in self._decoded if k[0] & PAGE_MASK == linear_page]:
                del self._decoded[key]
        self.rescans += 1

    def decode(self, address: int):
        """The capstone instruction at ``address`` (cached until its page is written), as
        the code segment's size reads it: 16-bit code (real mode, a 16-bit segment) is
        other instructions, of other lengths, than the same bytes as 32-bit code."""
        key = (address, self.engine.code_bits())
        insn = self._decoded.get(key)
        if insn is None:
            code = self.read_code(address, 15)
            insn = next(_decoder(key[1]).disasm(code, address, 1), None)
            self._decoded[key] = insn
        return insn
