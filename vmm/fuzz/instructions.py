"""Harness ``instructions``: random instruction streams run as guest kernels.

Two kinds of case:

* ``slots``: up to 48 instructions drawn from a list of *interesting* ones — the
  privileged and sensitive instructions a VMM must intercept or survive (MOV CR/DR,
  LGDT/LIDT/LLDT/LTR, CLI/STI/POPF, INVLPG, WRMSR, HLT), segment loads, INT n, IRET,
  far jumps and calls, port I/O to every device of the board and to nothing, CPUID,
  RDTSC, VMCALL, loads and stores at addresses on the edges of guest memory (the last
  word of RAM, the first byte past it, VMM-private host memory, the local APIC, the top
  of the address space) — plus random bytes, each in its own slot of the fault-tolerant
  kernel of :mod:`vmm.fuzz.guest`, so a fault skips to the next instruction;
* ``raw``: up to 256 random bytes as the whole image, entered in the Multiboot state
  with no IDT (usually a triple fault, sometimes a long walk through garbage).

Every case runs under an instruction budget and a wall-clock budget in every mode.
"""
from __future__ import annotations

import struct

from hypothesis import strategies as st

from ..vm import HOST_MEMORY_BASE, VM
from . import guest
from .core import Harness, Run, run_vm

MAX_INSTRUCTIONS = 10_000
TIMEOUT = 2.0

# Addresses a fuzzer should hit more often than chance would.
EDGE_ADDRESSES = (
    0, 4, 0x9500, 0x7C00, 0xA0000, 0xB8000, 0xC8000, 0xFFFFC,
    guest.BASE, guest.GDT, guest.IDT, guest.IDT + 8 * 14, guest.TSS, guest.COMMON, guest.SLOTS,
    guest.DATA, guest.STACK_TOP - 4,
    guest.RAM_SIZE - 4, guest.RAM_SIZE - 1, guest.RAM_SIZE, guest.RAM_SIZE + 0xFFC,
    HOST_MEMORY_BASE, HOST_MEMORY_BASE + 0x1000, HOST_MEMORY_BASE + 0x2000, HOST_MEMORY_BASE + 0x3000,
    HOST_MEMORY_BASE + 0x4000, HOST_MEMORY_BASE + 0x100000,
    0xFEC00000, 0xFEE00000, 0xFEE00020, 0xFEE00300, 0xFEE00380, 0xFFFFE000, 0xFFFFEFFC, 0xFFFFF000,
    0xFFFFFFFC, 0xFFFFFFFF, 0x80000000, 0xC0000000, 0x40000000,
)
CR0_VALUES = (0x11, 0x10, 0x0, 0x80000011, 0x80000001, 0x80010011, 0x60000011, 0x20000011, 0xE0000011,
              0x80000000, 0x8, 0x31)
CR4_VALUES = (0, 0x10, 0x20, 0x30, 0x80, 0x100000, 0x200000, 0x2000, 0x1000000, 0xFFFFFFFF)
PORTS = (0x20, 0x21, 0xA0, 0xA1, 0x40, 0x41, 0x42, 0x43, 0x61, 0x70, 0x71, 0x3F8, 0x3F9, 0x3FA, 0x3FB,
         0x3FC, 0x3FD, 0x3FE, 0x3FF, 0x510, 0x511, 0xF4, 0xF5, 0x80, 0x92, 0xCF8, 0xCFC, 0x64, 0x60, 0xFFFF)
MSRS = (0x10, 0x1B, 0x3A, 0x174, 0x175, 0x176, 0x1A0, 0x277, 0xFE, 0xC0000080, 0xC0000081, 0x480,
        0x481, 0x48D, 0x0, 0xFFFFFFFF, 0x40000000)

REG = {"eax": 0, "ecx": 1, "edx": 2, "ebx": 3, "esp": 4, "ebp": 5, "esi": 6, "edi": 7}


def u32(value: int) -> bytes:
    return struct.pack("<I", value & 0xFFFFFFFF)


def u16(value: int) -> bytes:
    return struct.pack("<H", value & 0xFFFF)


imm32 = st.one_of(st.sampled_from(EDGE_ADDRESSES), st.sampled_from(CR0_VALUES + CR4_VALUES),
                  st.integers(0, 0xFFFFFFFF), st.integers(0, 0xFF))
address = st.one_of(st.sampled_from(EDGE_ADDRESSES), st.integers(0, guest.RAM_SIZE + 0x2000),
                    st.integers(0, 0xFFFFFFFF))
selector = st.one_of(st.sampled_from(guest.SELECTORS), st.integers(0, 0xFFFF))
port8 = st.one_of(st.sampled_from([p for p in PORTS if p < 0x100]), st.integers(0, 0xFF))
port16 = st.one_of(st.sampled_from(PORTS), st.integers(0, 0xFFFF))
reg = st.sampled_from(["eax", "ecx", "edx", "ebx", "esi", "edi"])


def _mov_imm(r: str, value: int) -> bytes:
    return bytes([0xB8 + REG[r]]) + u32(value)


def _modrm_reg(op: int, reg_field: int, rm: int) -> int:
    return 0xC0 | (reg_field << 3) | rm


@st.composite
def privileged(draw) -> bytes:
    """One privileged or sensitive instruction, with a set-up MOV where it takes a value."""
    kind = draw(st.sampled_from([
        "mov_cr", "mov_from_cr", "mov_dr", "mov_from_dr", "lgdt", "lidt", "sgdt", "sidt", "lldt", "ltr",
        "sldt", "str", "lmsw", "smsw", "clts", "invd", "wbinvd", "invlpg", "rdmsr", "wrmsr", "rdpmc",
        "cli", "sti", "popf", "pushf", "hlt", "cli_hlt", "sti_hlt", "lar", "lsl", "verr", "verw",
        "vmcall", "vmx", "sysenter", "sysexit", "rdtsc", "cpuid", "ud2", "iret_to", "arpl",
    ]))
    if kind == "mov_cr":
        cr = draw(st.sampled_from([0, 2, 3, 4, 0, 3, 1, 5, 8]))
        value = draw(st.sampled_from(CR0_VALUES) if cr == 0 else st.sampled_from(CR4_VALUES) if cr == 4 else imm32)
        return _mov_imm("eax", value) + bytes([0x0F, 0x22, _modrm_reg(0, cr & 7, 0)])
    if kind == "mov_from_cr":
        return bytes([0x0F, 0x20, _modrm_reg(0, draw(st.sampled_from([0, 2, 3, 4, 1, 5])), REG[draw(reg)])])
    if kind == "mov_dr":
        return _mov_imm("eax", draw(imm32)) + bytes([0x0F, 0x23, _modrm_reg(0, draw(st.integers(0, 7)), 0)])
    if kind == "mov_from_dr":
        return bytes([0x0F, 0x21, _modrm_reg(0, draw(st.integers(0, 7)), REG[draw(reg)])])
    if kind in ("lgdt", "lidt", "sgdt", "sidt", "invlpg"):
        sub = {"sgdt": 0, "sidt": 1, "lgdt": 2, "lidt": 3, "invlpg": 7}[kind]
        return bytes([0x0F, 0x01, 0x05 | (sub << 3)]) + u32(draw(address))
    if kind in ("lldt", "ltr", "verr", "verw"):
        sub = {"lldt": 2, "ltr": 3, "verr": 4, "verw": 5}[kind]
        return _mov_imm("eax", draw(selector)) + bytes([0x0F, 0x00, _modrm_reg(0, sub, 0)])
    if kind in ("sldt", "str"):
        return bytes([0x0F, 0x00, _modrm_reg(0, 0 if kind == "sldt" else 1, REG[draw(reg)])])
    if kind == "lmsw":
        return _mov_imm("eax", draw(imm32)) + bytes([0x0F, 0x01, 0xF0])
    if kind == "smsw":
        return bytes([0x0F, 0x01, 0xE0 | REG[draw(reg)]])
    if kind in ("lar", "lsl"):
        return _mov_imm("ecx", draw(selector)) + bytes([0x0F, 0x02 if kind == "lar" else 0x03, 0xC1])
    if kind == "arpl":
        return _mov_imm("ecx", draw(selector)) + bytes([0x63, 0xC8])
    if kind in ("rdmsr", "wrmsr"):
        out = _mov_imm("ecx", draw(st.sampled_from(MSRS) | st.integers(0, 0xFFFFFFFF)))
        if kind == "wrmsr":
            out += _mov_imm("eax", draw(imm32)) + b"\x31\xd2"     # xor edx, edx
        return out + bytes([0x0F, 0x30 if kind == "wrmsr" else 0x32])
    if kind == "popf":
        return b"\x68" + u32(draw(st.sampled_from([0x2, 0x202, 0x3002, 0x20002, 0x40202, 0x100, 0x302,
                                                   0xFFFFFFFF, 0x4202]) | st.integers(0, 0xFFFFFFFF))) + b"\x9d"
    if kind == "iret_to":
        # IRET through a frame built on the stack (push SS, ESP, EFLAGS, CS, EIP): usually
        # to ring 3 at one of the following slots, sometimes to garbage selectors.
        small = st.sampled_from([s for s in guest.SELECTORS if s < 0x80])
        cs = draw(st.sampled_from([guest.USER_CS, guest.KERNEL_CS]) | small)
        ss = draw(st.sampled_from([guest.USER_DS, guest.KERNEL_DS]) | small)
        flags = draw(st.sampled_from([0x2, 0x202, 0x3202, 0x20202, 0x4002]))
        eip = guest.SLOTS + guest.SLOT * draw(st.integers(0, guest.MAX_SLOTS))
        return bytes([0x6A, ss, 0x54, 0x68]) + u32(flags) + bytes([0x6A, cs, 0x68]) + u32(eip) + b"\xcf"
    return {
        "clts": b"\x0f\x06", "invd": b"\x0f\x08", "wbinvd": b"\x0f\x09", "rdpmc": b"\x31\xc9\x0f\x33",
        "cli": b"\xfa", "sti": b"\xfb", "pushf": b"\x9c", "hlt": b"\xf4", "cli_hlt": b"\xfa\xf4",
        "sti_hlt": b"\xfb\xf4", "vmcall": b"\x0f\x01\xc1", "sysenter": b"\x0f\x34", "sysexit": b"\x0f\x35",
        "rdtsc": b"\x0f\x31", "ud2": b"\x0f\x0b",
        "cpuid": _mov_imm("eax", draw(st.sampled_from([0, 1, 7, 0xB, 0x40000000, 0x40000001, 0x80000000,
                                                       0x80000001, 0x80000008, 0xFFFFFFFF]))) + b"\x0f\xa2",
        "vmx": draw(st.sampled_from([b"\x0f\x01\xc2", b"\x0f\x01\xc3", b"\x0f\x01\xc4", b"\x0f\x01\xd4",
                                     b"\x0f\x78\xc0", b"\x0f\x79\xc0", b"\xf3\x0f\xc7\x35" + u32(guest.DATA)])),
    }[kind]


@st.composite
def segments(draw) -> bytes:
    """Segment loads, far transfers, INT n, IRET."""
    kind = draw(st.sampled_from(["mov_sreg", "pop_sreg", "push_sreg", "jmp_far", "call_far", "jmp_far_mem",
                                 "int_n", "int3", "into", "int1", "iret", "retf", "lss"]))
    if kind == "mov_sreg":
        sreg = draw(st.sampled_from([0, 1, 2, 3, 4, 5, 6, 7]))   # es cs ss ds fs gs, 6/7 invalid
        return _mov_imm("eax", draw(selector)) + bytes([0x8E, _modrm_reg(0, sreg, 0)])
    if kind == "pop_sreg":
        return b"\x68" + u32(draw(selector)) + draw(st.sampled_from([b"\x1f", b"\x07", b"\x17", b"\x0f\xa1",
                                                                   b"\x0f\xa9"]))
    if kind == "push_sreg":
        return draw(st.sampled_from([b"\x0e", b"\x16", b"\x1e", b"\x06", b"\x0f\xa0", b"\x0f\xa8"])) + b"\x58"
    if kind in ("jmp_far", "call_far"):
        target = draw(st.sampled_from([guest.SLOTS + guest.SLOT * 60, guest.COMMON]) | address)
        return bytes([0xEA if kind == "jmp_far" else 0x9A]) + u32(target) + u16(draw(selector))
    if kind == "jmp_far_mem":
        return b"\xff\x2d" + u32(draw(address))
    if kind == "int_n":
        return bytes([0xCD, draw(st.integers(0, 255))])
    if kind == "lss":
        return b"\x0f\xb2\x25" + u32(draw(address))
    return {"int3": b"\xcc", "into": b"\xb0\x7f\x04\x01\xce", "int1": b"\xf1", "iret": b"\xcf",
            "retf": draw(st.sampled_from([b"\xcb", b"\xca\x08\x00"]))}[kind]


@st.composite
def port_io(draw) -> bytes:
    kind = draw(st.sampled_from(["in_imm", "out_imm", "in_dx", "out_dx", "ins", "outs"]))
    size = draw(st.sampled_from([1, 2, 4]))
    prefix = b"\x66" if size == 2 else b""
    if kind in ("in_imm", "out_imm"):
        port = draw(port8)
        if kind == "out_imm" and port == guest.EXIT_PORT and draw(st.integers(0, 3)):
            port = 0x80        # the exit port ends the case: do not hit it too often
        op = (0xE4 if kind == "in_imm" else 0xE6) + (0 if size == 1 else 1)
        return _mov_imm("eax", draw(imm32)) + prefix + bytes([op, port])
    port = draw(port16)
    setup = b"\x66\xba" + u16(port) + _mov_imm("eax", draw(imm32))
    if kind in ("in_dx", "out_dx"):
        op = (0xEC if kind == "in_dx" else 0xEE) + (0 if size == 1 else 1)
        return setup + prefix + bytes([op])
    # INS/OUTS with REP: a string of port accesses to or from a memory range.
    op = (0x6C if kind == "ins" else 0x6E) + (0 if size == 1 else 1)
    index = _mov_imm("edi" if kind == "ins" else "esi", draw(address))
    count = bytes([0xB1, draw(st.integers(0, 16))])    # mov cl, n (ECX high bits: whatever is left)
    return b"\x66\xba" + u16(port) + index + count + b"\xf3" + prefix + bytes([op])


@st.composite
def memory(draw) -> bytes:
    """Loads and stores at the edges of guest memory and beyond."""
    kind = draw(st.sampled_from(["store", "load", "store_imm", "rep_stos", "rep_movs", "xchg", "push_pop",
                                 "mov_esp", "jmp_reg", "call_reg", "div0", "bound", "cmpxchg8b"]))
    where = draw(address)
    if kind == "store":
        return _mov_imm("eax", draw(imm32)) + b"\xa3" + u32(where)
    if kind == "load":
        return b"\xa1" + u32(where)
    if kind == "store_imm":
        return b"\xc7\x05" + u32(where) + u32(draw(imm32))
    if kind == "rep_stos":
        return _mov_imm("edi", where) + bytes([0xB9]) + u32(draw(st.integers(0, 64))) + b"\xf3\xab"
    if kind == "rep_movs":
        return _mov_imm("esi", where) + _mov_imm("edi", draw(address)) + b"\xb1\x08\xf3\xa5"
    if kind == "xchg":
        return b"\x87\x05" + u32(where)
    if kind == "push_pop":
        return draw(st.sampled_from([b"\x60", b"\x61", b"\x58", b"\x50"]))
    if kind == "mov_esp":
        return _mov_imm("esp", draw(st.sampled_from([guest.STACK_TOP, 0, 4, guest.RAM_SIZE, 0xFFFFFFFC]) | address))
    if kind in ("jmp_reg", "call_reg"):
        return _mov_imm("eax", where) + (b"\xff\xe0" if kind == "jmp_reg" else b"\xff\xd0")
    if kind == "div0":
        return b"\x31\xc9\xf7\xf1"
    if kind == "bound":
        return b"\x62\x05" + u32(where)
    return b"\x0f\xc7\x0d" + u32(where)


random_bytes = st.binary(min_size=1, max_size=15)
instruction = st.one_of(privileged(), privileged(), segments(), port_io(), memory(), random_bytes)


@st.composite
def cases(draw) -> dict:
    if draw(st.integers(0, 9)) == 0:
        return {"kind": "raw", "code": draw(st.binary(min_size=1, max_size=256)).hex()}
    sequence = draw(st.lists(instruction.filter(lambda i: len(i) <= guest.SLOT), min_size=1, max_size=48))
    return {"kind": "slots", "instructions": [i.hex() for i in sequence]}


def image_of(case: dict) -> bytes:
    if case["kind"] == "raw":
        return bytes.fromhex(case["code"])
    return guest.kernel_image([bytes.fromhex(i) for i in case["instructions"]])


class InstructionHarness(Harness):
    name = "instructions"
    description = ("random instruction streams (privileged, segment loads, INT n, IRET, far jumps, MOV CR/DR, "
                   "port I/O, HLT, memory at the edges, random bytes) run as guest kernels")

    def modes(self, available):
        return tuple(available)

    def strategy(self):
        return cases()

    def execute(self, run: Run, case: dict) -> None:
        if run.mode == "pv":
            self.execute_pv(run, case)
            return
        image = guest.load(image_of(case))
        run_vm(run, lambda: VM(image, mode=run.mode, ram_size=guest.RAM_SIZE, serial_output=lambda data: None,
                               max_instructions=MAX_INSTRUCTIONS, timeout=TIMEOUT))

    def execute_pv(self, run: Run, case: dict) -> None:
        """In pv the same instructions run as a PV kernel in ring 1: each in its 16-byte
        slot (NOP-padded), then a shutdown hypercall. There is no trap table: the first
        fault the hypervisor cannot bounce ends the domain, a clean stop with its reason."""
        from ..loader.xen import load_xen
        from .hypercalls import RAM_SIZE, domain_ranges, pv_kernel, shutdown_bytes

        if case["kind"] == "raw":
            code = bytes.fromhex(case["code"])
        else:
            code = b"".join(bytes.fromhex(i).ljust(guest.SLOT, b"\x90") for i in case["instructions"])
        image = load_xen(pv_kernel(code + shutdown_bytes()), ram_size=RAM_SIZE, image_name="fuzz-pv")
        run_vm(run, lambda: VM(image, mode=run.mode, ram_size=RAM_SIZE, serial_output=lambda data: None,
                               max_instructions=MAX_INSTRUCTIONS, timeout=TIMEOUT),
               guest_ranges=domain_ranges)
