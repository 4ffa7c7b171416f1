"""The guest the harnesses fuzz with: a tiny flat kernel that keeps going after a fault.

Random instructions fault most of the time; a guest that triple-faulted on the first
one would test little. So the kernel below runs its instructions from fixed 16-byte
*slots* and gives every one of the 256 vectors a handler that resumes at the next slot::

    0x100000  prologue: own GDT (flat ring-0 and ring-3 code/data, a TSS), IDT, LTR,
              ESP, then jump to the first slot
    0x100400  GDT            0x100800  IDT (256 gates, DPL 3 so INT n works from ring 3)
    0x101000  TSS (ring-0 stack for interrupts from rings 1-3)
    0x101100  256 stubs (drop the error code where the vector has one) -> common handler
    0x101a00  common handler: EIP inside the slots -> start of the next slot; anywhere
              else -> the epilogue
    0x102000  the slots, then the epilogue (isa-debug-exit 0x10, guest status 0x21)
    0x104000  data pages a harness places (page tables)
    0x10f000  top of the stack

Nothing here is special to the VMM: it is what a robust test kernel would do, and it
runs the same in every mode. Each case's instructions are raw bytes (see
:mod:`vmm.fuzz.instructions`), so the image costs one assembly per process.
"""
from __future__ import annotations

import functools
import struct

BASE = 0x100000
GDT = BASE + 0x400
IDT = BASE + 0x800
TSS = BASE + 0x1000
STUBS = BASE + 0x1100
COMMON = BASE + 0x1A00
SLOTS = BASE + 0x2000
SLOT = 16
MAX_SLOTS = 128
DATA = BASE + 0x4000
STACK_TOP = BASE + 0xF000
RAM_SIZE = 4 << 20
EXIT_PORT = 0xF4
EPILOGUE_STATUS = 0x10           # written to isa-debug-exit: the guest exits with 0x21

HAS_ERROR_CODE = frozenset({8, 10, 11, 12, 13, 14, 17, 21})

# Selectors of the kernel's GDT.
KERNEL_CS, KERNEL_DS, USER_CS, USER_DS, TSS_SEL = 0x08, 0x10, 0x1B, 0x23, 0x28
SELECTORS = (0, KERNEL_CS, KERNEL_DS, USER_CS, USER_DS, TSS_SEL, 0x18, 0x20, 0x30, 0x13, 0xFFFF)


def _descriptor(base: int, limit: int, access: int, flags: int) -> bytes:
    return struct.pack("<HHBBBB", limit & 0xFFFF, base & 0xFFFF, (base >> 16) & 0xFF, access,
                       (flags << 4) | ((limit >> 16) & 0xF), (base >> 24) & 0xFF)


def gdt_bytes() -> bytes:
    return b"".join((
        bytes(8),
        _descriptor(0, 0xFFFFF, 0x9A, 0xC),        # 0x08 ring-0 code
        _descriptor(0, 0xFFFFF, 0x92, 0xC),        # 0x10 ring-0 data
        _descriptor(0, 0xFFFFF, 0xFA, 0xC),        # 0x18 ring-3 code (0x1b)
        _descriptor(0, 0xFFFFF, 0xF2, 0xC),        # 0x20 ring-3 data (0x23)
        _descriptor(TSS, 103, 0x89, 0x0),          # 0x28 32-bit available TSS
    ))


def idt_bytes() -> bytes:
    out = bytearray()
    for vector in range(256):
        handler = STUBS + 8 * vector
        out += struct.pack("<HHHH", handler & 0xFFFF, KERNEL_CS, 0xEE00, handler >> 16)
    return bytes(out)


def tss_bytes() -> bytes:
    tss = bytearray(104)
    struct.pack_into("<II", tss, 4, STACK_TOP, KERNEL_DS)          # ESP0, SS0
    struct.pack_into("<H", tss, 102, 104)                           # no I/O bitmap
    return bytes(tss)


def stubs_bytes() -> bytes:
    out = bytearray()
    for vector in range(256):
        here = STUBS + 8 * vector
        stub = b"\x83\xc4\x04" if vector in HAS_ERROR_CODE else b""   # add esp, 4
        stub += b"\xe9" + struct.pack("<i", COMMON - (here + len(stub) + 5))
        out += stub.ljust(8, b"\x90")
    return bytes(out)


@functools.cache
def _assembled() -> tuple[bytes, bytes]:
    """The prologue and the common handler (keystone, once per process)."""
    from keystone import KS_ARCH_X86, KS_MODE_32, Ks

    ks = Ks(KS_ARCH_X86, KS_MODE_32)
    prologue = f"""
        .byte 0x0f, 0x01, 0x15; .long {BASE + 0x3f0}    # lgdt (keystone would add 0x66)
        .byte 0xea; .long {BASE + 0x40}; .word {KERNEL_CS}   # jmp far 0x08:reload
    """
    head = bytes(ks.asm(prologue, BASE)[0]).ljust(0x40, b"\x90")
    reload = f"""
        mov ax, {KERNEL_DS}; mov ds, ax; mov es, ax; mov ss, ax; mov fs, ax; mov gs, ax
        mov esp, {STACK_TOP}
        .byte 0x0f, 0x01, 0x1d; .long {BASE + 0x3f8}    # lidt
        mov ax, {TSS_SEL}; ltr ax
        mov eax, {SLOTS}; jmp eax
    """
    head += bytes(ks.asm(reload, BASE + 0x40)[0])
    common = f"""
        push eax
        mov eax, [esp + 4]
        cmp eax, {SLOTS}
        jb out
        cmp eax, {SLOTS + SLOT * MAX_SLOTS}
        jae out
        and eax, 0xfffffff0
        add eax, {SLOT}
        jmp store
    out:
        mov eax, {SLOTS + SLOT * MAX_SLOTS}
    store:
        mov [esp + 4], eax
        pop eax
        iretd
    """
    return head, bytes(ks.asm(common, COMMON)[0])


def epilogue() -> bytes:
    """mov al, 0x10; out 0xf4, al; cli; hlt (and hlt again)."""
    return bytes([0xB0, EPILOGUE_STATUS, 0xE6, EXIT_PORT, 0xFA, 0xF4, 0xF4])


def slot_bytes(instructions: list[bytes]) -> bytes:
    """Each instruction in its own 16-byte slot (NOP padded), then NOP slots up to
    MAX_SLOTS, then the epilogue: wherever a handler resumes, it reaches the end."""
    if len(instructions) > MAX_SLOTS:
        raise ValueError(f"at most {MAX_SLOTS} instructions")
    out = bytearray()
    for ins in instructions:
        if len(ins) > SLOT:
            raise ValueError(f"instruction of {len(ins)} bytes does not fit a slot")
        out += ins.ljust(SLOT, b"\x90")
    out += b"\x90" * (SLOT * (MAX_SLOTS - len(instructions)))
    return bytes(out) + epilogue()


def kernel_image(instructions: list[bytes], data: dict[int, bytes] | None = None) -> bytes:
    """The whole flat image (load it at BASE): skeleton, slots, and ``data`` (guest-physical
    address -> bytes, at or above DATA)."""
    head, common = _assembled()
    image = bytearray(SLOTS - BASE)
    image[0:len(head)] = head
    image[0x3F0:0x3F6] = struct.pack("<HI", len(gdt_bytes()) - 1, GDT)
    image[0x3F8:0x3FE] = struct.pack("<HI", 256 * 8 - 1, IDT)
    for address, blob in ((GDT, gdt_bytes()), (IDT, idt_bytes()), (TSS, tss_bytes()), (STUBS, stubs_bytes()),
                          (COMMON, common)):
        image[address - BASE:address - BASE + len(blob)] = blob
    image += slot_bytes(instructions)
    for address, blob in sorted((data or {}).items()):
        if address < DATA:
            raise ValueError(f"data at {address:#x} would overwrite the kernel")
        offset = address - BASE
        if len(image) < offset + len(blob):
            image += bytes(offset + len(blob) - len(image))
        image[offset:offset + len(blob)] = blob
    return bytes(image)


def load(image: bytes, ram_size: int = RAM_SIZE):
    from ..loader.image import load_image

    return load_image(image, ram_size=ram_size, kind="flat", load_address=BASE)
