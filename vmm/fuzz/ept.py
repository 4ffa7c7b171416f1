"""Harness ``ept``: random EPT structures, through the walkers and through ``vtx-ept``.

Two kinds of case:

* ``walk``: the EPT walker and the 2-D walker alone, over host memory whose every
  8-byte word is random (drawn lazily from the case's seed, so a walk meets random
  entries at every level: RWX combinations, write-only and execute-only, reserved bits,
  memory types 2/3/7, large pages, A/D, frames anywhere below 2^52) with a random EPTP,
  GPA and access. A walk must end in a translation, an EPT violation, an EPT
  misconfiguration, a guest #PF or (for an EPTP VM entry would refuse) ValueError;
  any other exception is a crash.
* ``vm``: a ``vtx-ept`` guest (paging off: its addresses are guest-physical) whose EPT
  the hypervisor first builds correctly for the kernel, then corrupts at random GPAs and
  levels, sometimes in the EPTP itself; the guest then loads, stores and fetches at
  those GPAs. Random frames stay out of VMM-private memory and the page past RAM (a
  hypervisor that maps those into its guest's EPT has given them away; that is not
  what is tested), so the containment checks still apply.
"""
from __future__ import annotations

import random

from hypothesis import strategies as st

from ..cpu.engine import GuestMemoryError
from ..mmu.ept import EptMisconfiguration, EptViolation, EptWalker
from ..mmu.nested import NestedWalker
from ..mmu.paging import GuestWalker, PageFault
from ..vm import VM
from ..vmx.vmcs import Field
from . import guest
from .core import Harness, Run, run_vm
from .instructions import _mov_imm, u32

MAX_INSTRUCTIONS = 10_000
TIMEOUT = 2.0
PAGE = 0x1000
EPT_LEVELS = 4


class RandomMemory:
    """Host memory in which every word is random until written (the walker's A/D
    updates), drawn from a seeded generator so the case replays exactly."""

    def __init__(self, seed: int, bias: int):
        self.rng = random.Random(seed)
        self.bias = bias          # 0-100: how often a word is a plausible entry rather than noise
        self.words: dict[int, int] = {}

    def _word(self) -> int:
        rng = self.rng
        if rng.randrange(100) >= self.bias:
            return rng.getrandbits(64)
        value = rng.choice([0x10000, 0x11000, 0x12000, 0x13000, 0x200000, 0x40000000]) | rng.getrandbits(12)
        if rng.randrange(4) == 0:
            value |= 1 << rng.randrange(12, 64)
        return value

    def read(self, address: int, size: int) -> int:
        base = address & ~7
        if base not in self.words:
            self.words[base] = self._word()
        value = self.words[base] >> (8 * (address - base))
        return value & ((1 << (8 * size)) - 1)

    def write(self, address: int, size: int, value: int) -> None:
        base = address & ~7
        shift = 8 * (address - base)
        mask = ((1 << (8 * size)) - 1) << shift
        self.words[base] = (self.read(base, 8) & ~mask) | ((value << shift) & mask)

    def read64(self, address: int) -> int:
        return self.read(address, 8)

    def write64(self, address: int, value: int) -> None:
        self.write(address, 8, value)


def walk_case(case: dict) -> str:
    """One walk of a ``walk`` case; returns its clean outcome or raises what escaped."""
    memory = RandomMemory(case["seed"], case["bias"])
    ept = EptWalker(memory.read64, memory.write64)
    try:
        if case["nested"]:
            nested = NestedWalker(GuestWalker(memory.read, memory.write), ept, pwc=case["pwc"])
            linear = case["gpa"] & 0xFFFFFFFF if case["linear"] is None else case["linear"]
            nested.walk(case["cr0"], case["cr3"], case["cr4"], linear, eptp=case["eptp"],
                        write=case["access"] == "write", user=case["user"], fetch=case["access"] == "fetch")
        else:
            ept.translate(case["eptp"], case["gpa"], case["access"], linear=case["linear"],
                          guest_paging_structure=case["gps"])
    except EptViolation:
        return "EPT_VIOLATION"
    except EptMisconfiguration:
        return "EPT_MISCONFIG"
    except PageFault:
        return "PAGE_FAULT"
    except ValueError as err:
        if "invalid EPTP" in str(err):
            return "BAD_EPTP"
        raise
    return "TRANSLATED"


eptp_values = st.one_of(
    st.sampled_from([0x10000, 0x11000]).map(lambda root: root | 6 | 3 << 3),                 # valid, WB
    st.sampled_from([0x10000, 0x11000]).map(lambda root: root | 6 | 3 << 3 | 1 << 6),        # valid, A/D
    st.integers(0, (1 << 64) - 1))


@st.composite
def walk_cases(draw) -> dict:
    return {"kind": "walk", "seed": draw(st.integers(0, 2**32 - 1)), "bias": draw(st.sampled_from([0, 50, 90, 100])),
            "eptp": draw(eptp_values), "gpa": draw(st.integers(0, (1 << 52) - 1) | st.integers(0, 0xFFFFFFFF)),
            "access": draw(st.sampled_from(["read", "write", "fetch"])), "gps": draw(st.booleans()),
            "linear": draw(st.none() | st.integers(0, 0xFFFFFFFF)), "nested": draw(st.booleans()),
            "pwc": draw(st.booleans()), "user": draw(st.booleans()),
            "cr0": draw(st.sampled_from([0x80000011, 0x80010011, 0x11])),
            "cr3": draw(st.sampled_from([0x12000, 0x13000]) | st.integers(0, 0xFFFFFFFF)),
            "cr4": draw(st.sampled_from([0, 0x10, 0x20, 0x30, 0x100000, 0x300000]))}


# -- vtx-ept with corrupted EPT ---------------------------------------------------------------------

TARGETS = (guest.DATA, guest.DATA + PAGE, 0x200000, 0x201000, 0x300000, guest.RAM_SIZE - PAGE, 0x0,
           0x9000, guest.SLOTS + 0x1000)
# Frames a corrupted entry may point at: guest RAM, unbacked or absent host memory, above 4 GiB.
EPT_FRAMES = (0, 0x200000, 0x201000, guest.DATA, guest.BASE, guest.RAM_SIZE - PAGE, 0x40000000,
              0x80000000, 0x100000000, 0xFFFFFFFFF000)


@st.composite
def ept_entry(draw) -> int:
    if draw(st.integers(0, 5)) == 0:
        value = draw(st.integers(0, (1 << 64) - 1))
    else:
        value = (draw(st.sampled_from(EPT_FRAMES) | st.integers(0, guest.RAM_SIZE - 1).map(lambda f: f & ~0xFFF))
                 | draw(st.integers(0, 7))                      # R W X
                 | draw(st.integers(0, 7)) << 3                 # memory type (2, 3, 7 reserved)
                 | draw(st.sampled_from([0, 1 << 6, 1 << 7, 1 << 8, 1 << 9, 3 << 8, 1 << 7 | 1 << 8])))
        if draw(st.integers(0, 3)) == 0:
            value |= 1 << draw(st.integers(36, 63))
    # Keep VMM-private memory and the page past RAM out of the guest's reach (see above).
    frame = value & 0x000FFFFFFFFFF000
    if 0xE0000000 <= frame < 0x100000000 or frame == guest.RAM_SIZE:
        value &= ~0x000FFFFFFFFFF000
    return value


@st.composite
def vm_cases(draw) -> dict:
    edits = [[draw(st.sampled_from(TARGETS) | st.integers(0, guest.RAM_SIZE - 1)), draw(st.integers(0, 3)),
              draw(ept_entry())] for _ in range(draw(st.integers(1, 6)))]
    eptp = draw(st.none() | st.none() | st.none() | st.integers(0, 0xFFF))   # new low 12 bits of the EPTP
    accesses = []
    for _ in range(draw(st.integers(1, 16))):
        at = (draw(st.sampled_from([e[0] for e in edits]) | st.sampled_from(TARGETS))
              + draw(st.sampled_from([0, 8, 0xFFC])))
        kind = draw(st.sampled_from(["load", "store", "fetch", "rmw"]))
        accesses.append({"load": b"\xa1" + u32(at), "store": b"\xc7\x05" + u32(at) + u32(0x12345678),
                         "rmw": b"\x83\x05" + u32(at) + b"\x01",
                         "fetch": _mov_imm("eax", at) + b"\xff\xd0"}[kind].hex())
    return {"kind": "vm", "edits": edits, "eptp_low": eptp, "accesses": accesses}


def corrupt_ept(vm: VM, case: dict) -> None:
    """Map the kernel and its data the way the hypervisor would, then apply the edits."""
    mode = vm.mode
    for page in range(guest.BASE, guest.STACK_TOP, PAGE):
        mode.mmu.map_ram_page(page)
    builder = mode.mmu.ept_builder
    # Find (creating tables as needed) every entry first, while the tree is intact: an
    # edit must land in an EPT table, not wherever an earlier corrupted entry points.
    addresses = [builder._entry_address(gpa, level, create=True) for gpa, level, _ in case["edits"]]
    for address, (_, _, value) in zip(addresses, case["edits"], strict=True):
        builder.write64(address, value)
    if case["eptp_low"] is not None:
        eptp = mode.vmcs.read(Field.EPT_POINTER)
        mode.vmcs.write(Field.EPT_POINTER, (eptp & ~0xFFF) | case["eptp_low"])


cases = st.one_of(walk_cases(), vm_cases())


class EptHarness(Harness):
    name = "ept"
    description = ("random EPT structures: the EPT and 2-D walkers over random host memory, and vtx-ept guests "
                   "whose EPT entries and EPTP were corrupted")

    def modes(self, available):
        return tuple(m for m in available if m == "vtx-ept")

    def strategy(self):
        return cases

    def execute(self, run: Run, case: dict) -> None:
        if case["kind"] == "walk":
            try:
                run.outcome(walk_case(case))
            except GuestMemoryError as err:   # a walker reading past its memory: cannot happen here
                run.crash(err, "EPT walk")
            except Exception as exc:
                run.crash(exc, "EPT walk")
            return
        image = guest.load(guest.kernel_image([bytes.fromhex(a) for a in case["accesses"]]))
        run_vm(run, lambda: VM(image, mode=run.mode, ram_size=guest.RAM_SIZE, serial_output=lambda data: None,
                               max_instructions=MAX_INSTRUCTIONS, timeout=TIMEOUT),
               prepare=lambda vm: corrupt_ept(vm, case))
