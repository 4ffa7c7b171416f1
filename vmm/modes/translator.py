"""The binary translator of ``bt`` mode: a translation cache keyed by guest code page.

VMware's VMM (1999) ran guest kernel code from a translation cache: each basic block
was decoded once, innocuous instructions were copied unchanged ("identity
translation"), and every privileged or sensitive instruction, and every indirect
branch, became a short call into the VMM ("callout") instead of a trap. User code ran
directly on the CPU.

Here the translation is made in place. When a code page is first fetched, the
translator decodes it with capstone:

* **callout sites**: every offset of the page where an instruction that needs the VMM
  can start (found by opcode, confirmed by decoding at that offset) gets a code hook
  bounded to that address. Decoding at *every* candidate offset, not only along the
  blocks it has seen, means no sensitive instruction of the page can run without its
  callout, whatever entry point the guest jumps to; a candidate that is not really an
  instruction start costs nothing, since a bounded hook fires only when an instruction
  begins there.
* **basic blocks**: from each entry point the CPU fetched the page at, the translator
  follows fall-through and direct branches within the page: the blocks it would have
  translated. They are counted, as the translation work VMware's translator did.

Code pages are mapped read-only (``NativeMode.fill``'s code-page policy). A write to a
translated page marks it; at the next fetch its bytes are compared with the ones it was
translated from, and if they changed the page's translations are invalidated and made
again (self-modifying code). QEMU drops its own translated blocks of a written page.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from capstone import CS_GRP_BRANCH_RELATIVE, CS_GRP_CALL, CS_GRP_INT, CS_GRP_IRET, CS_GRP_JUMP, CS_GRP_RET
from capstone.x86 import X86_OP_IMM, X86_OP_MEM, X86_OP_REG

from ..x86.msr import APIC_DEFAULT_BASE
from ..x86.opcodes import (
    GROUP5_OPCODE,
    MAX_INSTRUCTION_LENGTH,
    MODRM_DISP32,
    MODRM_MOD_RM_MASK,
    PREFIX_GROUPS,
    TWO_BYTE_ESCAPE,
)
from ..x86.paging import ADDRESS_MASK_32, PAGE_MASK, PAGE_OFFSET_MASK, PAGE_SIZE
from .privileged import decoder

APIC_TPR_OFFSET = 0x80   # the task-priority register in the local APIC's page (vol. 3 Table 11-1)
APIC_TPR = APIC_DEFAULT_BASE + APIC_TPR_OFFSET
_TPR_BYTES = APIC_TPR.to_bytes(4, "little")
PREFIXES = frozenset(b"\x26\x2e\x36\x3e\x64\x65\x66\x67\xf2\xf3")
# First opcode bytes of the instructions a callout stands for (the 0x0F and 0xFF rows
# are narrowed by their second byte / ModRM.reg below).
FIRST_BYTES = frozenset(
    [0xFA, 0xFB, 0xF4, 0x9C, 0x9D, 0xCF,                  # CLI STI HLT PUSHF POPF IRET
     0xE4, 0xE5, 0xE6, 0xE7, 0xEC, 0xED, 0xEE, 0xEF,      # IN / OUT
     0x6C, 0x6D, 0x6E, 0x6F,                              # INS / OUTS
     0xC2, 0xC3, 0xCA, 0xCB,                              # RET, RETF (indirect control flow)
     0xEA, 0x9A,                                          # far JMP, far CALL (ptr16:32)
     0x8E, 0x8C,                                          # MOV to / from a segment register
     0x06, 0x07, 0x0E, 0x16, 0x17, 0x1E, 0x1F,            # PUSH/POP ES, CS, SS, DS
     0x0F, 0xFF])
SECOND_BYTES = frozenset([0x00, 0x01, 0x02, 0x03, 0x06, 0x08, 0x09, 0x20, 0x21, 0x22, 0x23,
                          0x30, 0x32, 0x33, 0xA0, 0xA1, 0xA8, 0xA9])
FF_REGS = frozenset([2, 3, 4, 5])   # CALL near/far indirect, JMP near/far indirect
FAR_POINTER_OPERANDS = 2            # capstone gives a ptr16:32 operand as two immediates

PRIVILEGED = frozenset(["cli", "sti", "hlt", "lgdt", "lidt", "lldt", "ltr", "lmsw", "clts", "invlpg", "invd",
                        "wbinvd", "rdmsr", "wrmsr", "rdpmc", "in", "out", "insb", "insw", "insd", "outsb",
                        "outsw", "outsd", "iretd", "iret"])
SENSITIVE = frozenset(["pushfd", "popfd", "pushf", "popf", "sgdt", "sidt", "sldt", "str", "smsw", "lar", "lsl",
                       "verr", "verw", "retf", "ljmp", "lcall"])
# INT n / INT3 / INTO are not callouts: a software interrupt reaches the VMM through its
# interrupt path anyway (the engine never delivers one itself), and kernels pad code
# with 0xCC, which would make every pad byte a candidate.
SEGMENTS = frozenset(["cs", "ss", "ds", "es", "fs", "gs"])


def tpr_operand(insn):
    """The memory operand of a MOV to or from the local APIC's task-priority register,
    by absolute address (what 32-bit kernels write where 64-bit ones use CR8), or None."""
    if insn.mnemonic != "mov":
        return None
    for op in insn.operands:
        if op.type == X86_OP_MEM and not op.mem.base and not op.mem.index and op.mem.disp & ADDRESS_MASK_32 == APIC_TPR:
            return op
    return None


def callout_kind(insn) -> str | None:
    """Why an instruction needs the VMM: "privileged", "sensitive", "indirect" (its
    target must be looked up in the translation cache), "tpr" (a task-priority access
    the translator patches), or None."""
    m = insn.mnemonic
    if tpr_operand(insn) is not None:
        return "tpr"
    if m in PRIVILEGED:
        return "privileged"
    if m in SENSITIVE:
        return "sensitive"
    regs = {insn.reg_name(op.reg) for op in insn.operands if op.type == X86_OP_REG}
    if m == "mov":
        if any(r[:2] in ("cr", "dr") for r in regs):
            return "privileged"
        if regs & SEGMENTS:
            return "sensitive"
        return None
    if m in ("push", "pop") and regs & SEGMENTS:
        return "sensitive"
    if m == "ret":
        return "indirect"
    if m in ("call", "jmp"):
        if insn.operands and insn.operands[0].type == X86_OP_IMM:
            return "sensitive" if len(insn.operands) == FAR_POINTER_OPERANDS else None   # far ptr16:32 / near direct
        return "indirect"
    return None


def candidates(page: bytes) -> list[int]:
    """Offsets where an instruction needing a callout may start."""
    found = []
    n = len(page)
    for i in range(n):
        j = i
        while j < n and j - i < PREFIX_GROUPS and page[j] in PREFIXES:
            j += 1
        if j >= n:
            continue
        b = page[j]
        if b not in FIRST_BYTES:
            continue
        if b == TWO_BYTE_ESCAPE and (j + 1 >= n or page[j + 1] not in SECOND_BYTES):
            continue
        if b == GROUP5_OPCODE and (j + 1 >= n or (page[j + 1] >> 3) & 7 not in FF_REGS):
            continue
        found.append(i)
    found += tpr_candidates(page)
    return sorted(set(found))


def tpr_candidates(page: bytes) -> list[int]:
    """Offsets of MOVs with the TPR's absolute address (A1/A3 moffs32, or 89/8B/C7 with a
    disp32-only ModRM), and of the prefixes that may stand before them."""
    found = []
    i = page.find(_TPR_BYTES)
    while i >= 0:
        starts = []
        moffs, modrm_form = i - 1, i - 2   # A1/A3 before the address; opcode and ModRM before the disp32
        if moffs >= 0 and page[moffs] in (0xA1, 0xA3):
            starts.append(moffs)
        if (modrm_form >= 0 and page[modrm_form] in (0x89, 0x8B, 0xC7)
                and page[i - 1] & MODRM_MOD_RM_MASK == MODRM_DISP32):
            starts.append(modrm_form)
        for start in starts:
            found.append(start)
            j = start - 1
            while j >= 0 and start - j <= PREFIX_GROUPS and page[j] in PREFIXES:
                found.append(j)
                j -= 1
        i = page.find(_TPR_BYTES, i + 1)
    return found


@dataclass
class PageTranslation:
    """One guest code page in the translation cache."""
    linear: int
    code: bytes
    hooks: dict[int, int] = field(default_factory=dict)       # linear address -> hook handle
    blocks: dict[int, int] = field(default_factory=dict)      # block start -> end address
    dirty: bool = False


class Translator:
    """The translation cache. ``read_code(linear, size)`` reads guest code;
    ``hook(address)`` / ``unhook(handle)`` install and remove a callout."""

    def __init__(self, read_code, hook, unhook, counters):
        self.read_code = read_code
        self.hook = hook
        self.unhook = unhook
        self.events = counters
        self.pages: dict[int, PageTranslation] = {}   # guest-physical page -> translation
        self.by_linear: dict[int, PageTranslation] = {}
        self.pending: dict[int, set[int]] = {}        # linear page -> entries found from elsewhere
        self.decoded: dict[int, object] = {}          # callout address -> capstone insn

    # -- code watcher interface (NativeMode.fill) --------------------------------------------
    def fetch(self, linear_page: int, physical_page: int, entry: int | None = None) -> None:
        t = self.pages.get(physical_page)
        if t is not None and t.linear != linear_page:
            self.invalidate(physical_page)  # the frame is mapped at another linear page now
            t = None
        if t is None:
            self.translate(linear_page, physical_page, entry)
            return
        if t.dirty:
            t.dirty = False
            self.revalidate(t)
        if entry is not None and entry not in t.blocks:
            self._decode_blocks(t, entry)

    def written(self, physical_page: int) -> None:
        t = self.pages.get(physical_page)
        if t is not None:
            t.dirty = True

    # -- translating ---------------------------------------------------------------------------
    def translate(self, linear_page: int, physical_page: int, entry: int | None) -> None:
        code = self._page_bytes(linear_page)
        t = self.pages[physical_page] = self.by_linear[linear_page] = PageTranslation(linear_page, code)
        self._place_callouts(t, 0, PAGE_SIZE)
        self.events.add("translation", "pages translated")
        for e in sorted(self.pending.pop(linear_page, ())) + ([entry] if entry is not None else []):
            self._decode_blocks(t, e)

    def _page_bytes(self, linear_page: int) -> bytes:
        """The page's 4 KiB as the guest maps it now; a part its tables no longer map reads
        as zeros (the guest may have changed them since the fetch that brought us here)."""
        return self.read_code(linear_page, PAGE_SIZE).ljust(PAGE_SIZE, b"\0")

    def _place_callouts(self, t: PageTranslation, lo: int, hi: int) -> None:
        """Hook every callout site starting at page offsets [lo, hi)."""
        dis = decoder()
        code = t.code
        placed = 0
        for offset in candidates(code):
            if not lo <= offset < hi:
                continue
            insn = next(dis.disasm(code[offset:offset + MAX_INSTRUCTION_LENGTH], t.linear + offset, 1), None)
            if insn is None or callout_kind(insn) is None:
                continue
            t.hooks[insn.address] = self.hook(insn.address)
            self.decoded[insn.address] = insn
            placed += 1
        if placed:
            self.events.add("translation", "callout sites", placed)

    def revalidate(self, t: PageTranslation) -> None:
        """The page was written since it was translated: compare, and retranslate the part
        that changed. Blocks overlapping changed bytes were self-modified code: they are
        invalidated and translated again from the new bytes."""
        code = self._page_bytes(t.linear)
        if code == t.code:
            self.events.add("translation", "writes to translated pages (bytes unchanged)")
            return
        lo = next(i for i in range(PAGE_SIZE) if code[i] != t.code[i])
        hi = next(i for i in range(PAGE_OFFSET_MASK, -1, -1) if code[i] != t.code[i]) + 1
        t.code = code
        window = (max(0, lo - (MAX_INSTRUCTION_LENGTH - 1)), hi)  # an instruction ending in the change
        for address in [a for a in t.hooks if window[0] <= a - t.linear < window[1]]:
            self.unhook(t.hooks.pop(address))
            self.decoded.pop(address, None)
        self._place_callouts(t, *window)
        stale = [b for b, end in t.blocks.items() if b < t.linear + hi and end > t.linear + lo]
        for b in stale:
            del t.blocks[b]
        if stale:
            self.events.add("translation", "self-modifying code: blocks invalidated", len(stale))
            self.events.add("translation", "self-modifying code: retranslations")
            for b in stale:
                self._decode_blocks(t, b)
        else:
            self.events.add("translation", "writes to translated pages (data only)")

    def _decode_blocks(self, t: PageTranslation, entry: int) -> None:
        """Follow the basic blocks reachable from ``entry``: fall-through and direct
        branches and calls, into other translated pages too (an entry into a page not
        translated yet waits for it). Indirect branches end the walk: their targets are
        known only when they run."""
        dis = decoder()
        work = [entry]
        new = 0
        while work:
            start = work.pop()
            page = start & PAGE_MASK
            found = self.by_linear.get(page)
            if found is None:
                self.pending.setdefault(page, set()).add(start)
                continue
            t = found
            if start in t.blocks:
                continue
            new += 1
            base, code = t.linear, t.code
            address = start
            t.blocks[start] = start + 1
            while base <= address < base + PAGE_SIZE:
                offset = address - base
                insn = next(dis.disasm(code[offset:offset + MAX_INSTRUCTION_LENGTH], address, 1), None)
                if insn is None or offset + insn.size > PAGE_SIZE:
                    break
                t.blocks[start] = address + insn.size
                groups = set(insn.groups)
                if groups & {CS_GRP_JUMP, CS_GRP_CALL, CS_GRP_RET, CS_GRP_IRET, CS_GRP_INT} or insn.mnemonic == "hlt":
                    if CS_GRP_BRANCH_RELATIVE in groups and insn.operands and insn.operands[0].type == X86_OP_IMM:
                        work.append(insn.operands[0].imm & ADDRESS_MASK_32)
                    if insn.mnemonic != "jmp" and not groups & {CS_GRP_RET, CS_GRP_IRET}:
                        work.append(address + insn.size)
                    break
                address += insn.size
            else:
                work.append(address)  # the block runs on into the next page
        if new:
            self.events.add("translation", "blocks translated", new)

    def invalidate(self, physical_page: int) -> None:
        t = self.pages.pop(physical_page, None)
        if t is None:
            return
        if self.by_linear.get(t.linear) is t:
            del self.by_linear[t.linear]
        for address, handle in t.hooks.items():
            self.unhook(handle)
            self.decoded.pop(address, None)
        self.events.add("translation", "pages dropped (frame remapped)")
