"""The CPU every mode presents, against QEMU's default PC (qemu-system-i386, ``qemu32``).

Each test builds one guest of probes (guests/include runtime, the project's assembler):
every probe runs one or a few instructions under a #GP/#UD catcher and prints what it
read, or the vector it raised. The guest's transcript under QEMU is the reference, and
each mode must print the same lines. Probes whose QEMU answer is known to be wrong on
the hardware it models (documented in docs/cpu.md) compare against the SDM instead.
"""
from __future__ import annotations

import subprocess

import pytest

from tools.machines import qemu_binary, qemu_command
from vmm.build.guests import build_guest
from vmm.loader.image import load_image
from vmm.vm import VM

MODES = ("native", "trap", "bt", "vtx", "vtx-ept")
QEMU = qemu_binary("i386")
needs_qemu = pytest.mark.skipif(QEMU is None, reason="qemu-system-i386 is not on PATH")

_HEAD = """%include "kernel.inc"
kmain:
    SET_HANDLER VEC_GP, catch
    SET_HANDLER 6, catch
    SET_GATE 0x80, GATE_TRAP_USER
    SET_HANDLER 0x80, back_to_kernel
"""
_TAIL = """
    EXIT EXIT_OK
catch:                              // record the vector, resume at the probe's end
    mov eax, dword ptr [ebx + F_VECTOR]
    mov dword ptr [fault_vec], eax
    mov eax, dword ptr [resume_at]
    mov dword ptr [ebx + F_EIP], eax
    ret
back_to_kernel:                     // int 0x80 from ring 3: abandon the frame
    mov esp, dword ptr [saved_esp]
    mov edx, KERNEL_DS
    mov ds, edx
    mov es, edx
    jmp dword ptr [user_done]
fault_vec: .long 0
resume_at: .long 0
saved_esp: .long 0
user_done: .long 0
uresults: .space 256
%include "kernel_bss.inc"
user_stack: .space 256
user_stack_top:
"""
NO_FAULT = 0xFFFFFFFF


class Probes:
    """Assembly source of a probe guest, built up one probe at a time."""

    def __init__(self):
        self.parts = [_HEAD]
        self.names: list[str] = []
        self.n = 0

    def label(self) -> int:
        self.n += 1
        return self.n

    def probe(self, name: str, insns: str) -> None:
        """Run ``insns`` (ring 0); print EDX:EAX, or "fault <vector>"."""
        n = self.label()
        self.names.append(name)
        self.parts.append(f"""
    mov dword ptr [fault_vec], {NO_FAULT}
    mov dword ptr [resume_at], r{n}
    {insns}
r{n}:
    PRINT "{name}: "
    cmp dword ptr [fault_vec], {NO_FAULT}
    je ok{n}
    PRINT "fault "
    PRINT_DEC [fault_vec]
    call print_nl
    jmp done{n}
ok{n}:
    PRINT_HEX edx
    PRINT ":"
    PRINT_HEX eax
    call print_nl
done{n}:
""")

    def cpuid(self, leaf: int) -> None:
        for r in ("eax", "ebx", "ecx", "edx"):
            self.probe(f"cpuid {leaf:#x} {r}", f"mov eax, {leaf}\n    xor ecx, ecx\n    cpuid\n"
                                               f"    mov eax, {r}\n    xor edx, edx")

    def rdmsr(self, msr: int) -> None:
        self.probe(f"rdmsr {msr:#x}", f"mov ecx, {msr}\n    rdmsr")

    def wrmsr(self, msr: int, value: int) -> None:
        """WRMSR, then RDMSR of the same MSR (the read-back is printed)."""
        self.probe(f"wrmsr {msr:#x} {value:#x}", f"mov ecx, {msr}\n    mov eax, {value & 0xFFFFFFFF}\n"
                                                  f"    mov edx, {value >> 32}\n    wrmsr\n    rdmsr")

    def user(self, items: list[tuple[str, str]]) -> None:
        """Run each ``(name, insns)`` at CPL 3 (IRET to ring 3, back by int 0x80), then
        print the vector each raised (ffffffff: none)."""
        n = self.label()
        body = [f"""
    mov dword ptr [saved_esp], esp
    mov dword ptr [user_done], ub{n}
    push USER_DS
    mov eax, user_stack_top
    push eax
    push 0x2
    push USER_CS
    mov eax, ua{n}
    push eax
    mov edx, USER_DS
    mov ds, edx
    mov es, edx
    iretd
ua{n}:
"""]
        for i, (_, insns) in enumerate(items):
            m = self.label()
            body.append(f"""
    mov dword ptr [fault_vec], {NO_FAULT}
    mov dword ptr [resume_at], r{m}
    {insns}
r{m}:
    mov eax, dword ptr [fault_vec]
    mov dword ptr [uresults + {4 * i}], eax
""")
        body.append(f"    int 0x80\nub{n}:\n")
        for i, (name, _) in enumerate(items):
            self.names.append(f"user {name}")
            body.append(f'    PRINT "user {name}: "\n    PRINT_HEX [uresults + {4 * i}]\n    call print_nl\n')
        self.parts.append("".join(body))

    def source(self) -> str:
        return "".join(self.parts) + _TAIL


def build(probes: Probes, tmp_path):
    src = tmp_path / "probes.s"
    src.write_text(probes.source())
    return build_guest(str(src), use_cache=False)


def run_mode(built, mode: str) -> list[str]:
    out = bytearray()
    image = load_image(built.elf, ram_size=32 << 20, image_name="probes")
    VM(image, mode=mode, ram_size=32 << 20, serial_output=out.extend, timeout=60).run()
    return out.decode("latin-1").splitlines()


def run_qemu(built, tmp_path) -> list[str]:
    kernel = tmp_path / "probes.elf"
    kernel.write_bytes(built.elf)
    proc = subprocess.run(qemu_command(str(kernel)), check=False, stdin=subprocess.DEVNULL,
                          capture_output=True, timeout=60)
    return proc.stdout.decode("latin-1").splitlines()


def same_as_qemu(probes: Probes, tmp_path, modes=MODES) -> None:
    built = build(probes, tmp_path)
    reference = run_qemu(built, tmp_path)
    assert [line.split(":")[0] for line in reference] == probes.names  # QEMU ran every probe
    for mode in modes:
        assert run_mode(built, mode) == reference, mode


# -- CPUID --------------------------------------------------------------------------------
CPUID_LEAVES = (0, 1, 2, 3, 4, 5, 7, 0xB, 0xD, 0x20, 0x40000001, 0x80000000, 0x80000001, 0x80000002,
                0x80000003, 0x80000004, 0x80000008, 0x80000020)


@needs_qemu
def test_cpuid_is_qemus_default_cpu_in_every_mode(tmp_path):
    """Every leaf as qemu32 answers it: no LM, no NX, no x2APIC; leaves above the top ones
    return the highest basic leaf, as on Intel."""
    p = Probes()
    for leaf in CPUID_LEAVES:
        p.cpuid(leaf)
    same_as_qemu(p, tmp_path)


def test_cpuid_advertises_no_long_mode_nx_or_x2apic():
    from vmm.cpu.cpuid import cpuid
    from vmm.x86.cpuid import Features1ECX
    assert cpuid(0x80000001)[3] & ((1 << 29) | (1 << 20) | (1 << 11)) == 0   # LM, NX, SYSCALL
    assert cpuid(1)[2] & Features1ECX.X2APIC == 0
    assert cpuid(1)[2] & Features1ECX.VMX == 0


# -- CR0.ET, privilege checks ---------------------------------------------------------------
PRIVILEGED_AT_CPL3 = [
    ("mov r, cr0", "mov eax, cr0"), ("mov cr0, r", "mov eax, 0x11\n    mov cr0, eax"),
    ("mov r, cr3", "mov eax, cr3"), ("mov r, cr4", "mov eax, cr4"), ("mov cr4, r", "xor eax, eax\n    mov cr4, eax"),
    ("mov r, dr7", "mov eax, dr7"), ("mov dr0, r", "xor eax, eax\n    mov dr0, eax"),
    ("rdmsr", "mov ecx, 0x10\n    rdmsr"), ("wrmsr", "mov ecx, 0x174\n    xor eax, eax\n    xor edx, edx\n    wrmsr"),
    ("clts", "clts"), ("invlpg", "invlpg [uresults]"), ("wbinvd", "wbinvd"),
    ("smsw", "smsw eax"), ("sldt", "sldt eax"), ("str", "str eax"),
]


@needs_qemu
def test_cr0_et_reads_1_and_cr_dr_access_at_cpl3_is_gp_in_every_mode(tmp_path):
    p = Probes()
    p.probe("cr0", "mov eax, cr0\n    xor edx, edx")
    p.probe("cr0 written without ET", "mov eax, cr0\n    and eax, 0xffffffef\n    mov cr0, eax\n"
                                      "    mov eax, cr0\n    xor edx, edx")
    p.user(PRIVILEGED_AT_CPL3)
    same_as_qemu(p, tmp_path)


# -- CR4 ----------------------------------------------------------------------------------
def _cr4_bit(p: Probes, bit: int) -> None:
    """Set one CR4 bit, read CR4 back, restore it."""
    p.probe(f"cr4 bit {bit}", f"mov eax, cr4\n    mov esi, eax\n    or eax, {1 << bit}\n    mov cr4, eax\n"
                              "    mov eax, cr4\n    mov cr4, esi\n    xor edx, edx")


@needs_qemu
def test_cr4_bits_of_the_model_are_writable_as_on_qemu(tmp_path):
    p = Probes()
    for bit in range(11):
        _cr4_bit(p, bit)
    same_as_qemu(p, tmp_path)


@pytest.mark.parametrize("mode", [m for m in MODES if m != "native"])  # see docs/cpu.md
def test_reserved_cr4_bits_raise_gp(mode, tmp_path):
    """UMIP, LA57, VMXE, SMXE, FSGSBASE, PCIDE, OSXSAVE, SMEP, SMAP, PKE...: bits this CPU
    does not have; MOV to CR4 setting one is #GP(0) (SDM vol. 3 §2.5). QEMU 7.2 TCG spins
    instead of raising it, so the SDM is the reference here."""
    p = Probes()
    reserved = range(11, 32)
    for bit in reserved:
        _cr4_bit(p, bit)
    p.probe("cr4 after", "mov eax, cr4\n    xor edx, edx")
    lines = run_mode(build(p, tmp_path), mode)
    assert lines[:-1] == [f"cr4 bit {bit}: fault 13" for bit in reserved]
    assert lines[-1] == "cr4 after: 0x00000000:0x00000000"
