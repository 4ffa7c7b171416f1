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


@pytest.mark.parametrize("mode", MODES)
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


# -- MSRs (every mode: vmm.cpu.msrs) --------------------------------------------------------
QEMU_MSRS = (0x17, 0x1B, 0x3A, 0x3B, 0x8B, 0xFE, 0x174, 0x175, 0x176, 0x179, 0x17A, 0x1A0,
             0x200, 0x201, 0x20E, 0x20F, 0x250, 0x258, 0x259, 0x268, 0x26F, 0x277, 0x2FF, 0x6E0,
             0xC0000080, 0xC0000081)
QEMU_WRITES = ((0x3B, 0x1000), (0x1B, 0xFEE00900), (0x1B, 0xFEE00800), (0x174, 0x12345678),
               (0x175, 0xDEADBEEF), (0x176, 0xCAFEF00D), (0x277, 0x0808080808080808), (0x2FF, 0xC06),
               (0x200, 0x6), (0x201, 0x800), (0x250, 0x0606060606060606), (0x26F, 0x0505050505050505),
               (0x1A0, 0x0), (0x1A0, 0x1), (0xC0000080, 0x1), (0xC0000080, 0x100), (0xC0000080, 0x800),
               (0xC0000081, 0x1234), (0x6E0, 0x1234), (0x8B, 0x0), (0x3A, 0x5), (0x17A, 0x0),
               (0x179, 0x0), (0xFE, 0x0), (0x17, 0x1))


@needs_qemu
def test_msr_table_reads_and_writes_as_qemu(tmp_path):
    p = Probes()
    for msr in QEMU_MSRS:
        p.rdmsr(msr)
    for msr, value in QEMU_WRITES:
        p.wrmsr(msr, value)
    same_as_qemu(p, tmp_path, MODES)


NO_SUCH_MSRS = (0xC0000082, 0xC0000083, 0xC0000084, 0xC0000100, 0xC0000101, 0xC0000102, 0xC0000103,
                0x480, 0x48B, 0x400, 0x401, 0x12345678)


@pytest.mark.parametrize("mode", MODES)
def test_msrs_the_cpu_does_not_have_raise_gp(mode, tmp_path):
    """Long-mode MSRs (FS/GS base among them: no base, canonical or not, can be loaded),
    VMX capabilities, machine-check banks: #GP(0) on RDMSR and WRMSR, as on a processor
    without those features (QEMU's TCG reads 0 there instead: docs/cpu.md)."""
    p = Probes()
    for msr in NO_SUCH_MSRS:
        p.rdmsr(msr)
    p.probe("wrmsr fs base", "mov ecx, 0xc0000100\n    mov eax, 0x1000\n    xor edx, edx\n    wrmsr")
    p.probe("wrmsr fs base non-canonical", "mov ecx, 0xc0000100\n    xor eax, eax\n    mov edx, 0x800000\n    wrmsr")
    p.probe("wrmsr gs base", "mov ecx, 0xc0000101\n    mov eax, 0x1000\n    xor edx, edx\n    wrmsr")
    p.probe("fs base after", "mov eax, fs\n    mov fs, eax\n    mov eax, dword ptr fs:[0]\n"
                             "    mov edx, dword ptr [0]\n    sub eax, edx\n    xor edx, edx")   # same bytes: base 0
    lines = run_mode(build(p, tmp_path), mode)
    assert lines == [f"rdmsr {m:#x}: fault 13" for m in NO_SUCH_MSRS] + [
        "wrmsr fs base: fault 13", "wrmsr fs base non-canonical: fault 13", "wrmsr gs base: fault 13",
        "fs base after: 0x00000000:0x00000000"]


@pytest.mark.parametrize("mode", MODES)
def test_wrmsr_tsc_sets_the_guests_tsc(mode, tmp_path):
    """WRMSR to IA32_TSC: RDTSC and RDMSR go on from the value written (SDM vol. 3 §17.17)."""
    p = Probes()
    p.probe("tsc high after wrmsr", "mov ecx, 0x10\n    mov eax, 0xffff0000\n    mov edx, 0x12\n    wrmsr\n"
                                    "    rdtsc\n    mov eax, edx\n    xor edx, edx")
    p.probe("rdmsr tsc high", "mov ecx, 0x10\n    rdmsr\n    mov eax, edx\n    xor edx, edx")
    p.probe("tsc goes on from 0x100", "mov ecx, 0x10\n    mov eax, 0x100\n    xor edx, edx\n    wrmsr\n"
                                      "    rdtsc\n    sub eax, 0x100\n    xor edx, edx\n    cmp eax, 0x100000\n"
                                      "    setb dl\n    xor eax, eax")
    lines = run_mode(build(p, tmp_path), mode)
    assert lines[0] == "tsc high after wrmsr: 0x00000000:0x00000012"
    assert lines[1] in ("rdmsr tsc high: 0x00000000:0x00000012", "rdmsr tsc high: 0x00000000:0x00000013")
    assert lines[2] == "tsc goes on from 0x100: 0x00000001:0x00000000"   # 0x100 <= TSC < 0x100100
