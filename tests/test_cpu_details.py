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
        self.n = 0

    def label(self) -> int:
        self.n += 1
        return self.n

    def probe(self, name: str, insns: str) -> None:
        """Run ``insns`` (ring 0); print EDX:EAX, or "fault <vector>"."""
        n = self.label()
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
    assert reference and reference[-1].startswith(probes_last_name(probes)), reference[-3:]
    for mode in modes:
        assert run_mode(built, mode) == reference, mode


def probes_last_name(probes: Probes) -> str:
    text = probes.parts[-1]
    return text[text.index('PRINT "') + 7:].split(":")[0]


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
