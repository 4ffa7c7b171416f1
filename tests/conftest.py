"""Shared helpers: assemble small flat guests, run images through the real VM and CLI."""
from __future__ import annotations

import subprocess
import sys

import pytest
from keystone import KS_ARCH_X86, KS_MODE_16, KS_MODE_32, Ks

from vmm.loader.image import load_image
from vmm.vm import VM

FLAT_BASE = 0x100000
RAM = 16 << 20


def assemble(src: str, base: int = FLAT_BASE, bits: int = 32) -> bytes:
    ks = Ks(KS_ARCH_X86, KS_MODE_32 if bits == 32 else KS_MODE_16)
    return bytes(ks.asm(src, base)[0])


def set_gate(vector, handler: str, gate="0x8e00") -> str:
    """Assembly pointing IDT entry ``vector`` at label ``handler`` (code selector 0x08;
    ``gate``: the type/DPL/P word, 0x8e00 a present DPL-0 interrupt gate). Needs IDT_DATA."""
    return f"""
    lea eax, [{handler}]
    mov word ptr [idt + 8*{vector}], ax
    mov word ptr [idt + 8*{vector} + 2], 0x08
    mov word ptr [idt + 8*{vector} + 4], {gate}
    shr eax, 16
    mov word ptr [idt + 8*{vector} + 6], ax
"""


LOAD_IDT = """
    .byte 0x0f, 0x01, 0x1d      # lidt [idtr]  (keystone would add a 0x66 prefix)
    .long idtr
"""

IDT_DATA = """
idtr:
    .word 0x7ff
    .long idt
.align 8
idt:
    .space 2048
"""


def run_flat(src: str, **vm_args):
    """Assemble ``src`` at FLAT_BASE, boot it in a VM, return (result, serial bytes)."""
    out = bytearray()
    image = load_image(assemble(src), ram_size=RAM, kind="flat", load_address=FLAT_BASE)
    vm_args.setdefault("timeout", 20)
    vm = VM(image, ram_size=RAM, serial_output=out.extend, **vm_args)
    return vm.run(), bytes(out)


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vmm.cli", *args], capture_output=True, timeout=timeout)


def one_line_error(proc, fragment: str) -> None:
    """Bad input as vmm reports it: status 2, one ``vmm: error:`` line naming ``fragment``."""
    err = proc.stderr.decode()
    assert proc.returncode == 2, (proc.returncode, err)
    assert "Traceback" not in err
    assert err.count("\n") == 1 and err.startswith("vmm: error: "), err
    assert fragment in err, err


def usage_error(proc, fragment: str) -> None:
    """click's own argument errors: a usage line, a hint and one ``Error:`` line."""
    err = proc.stderr.decode()
    assert proc.returncode == 2, (proc.returncode, err)
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and fragment in errors[0], err


@pytest.fixture
def cli():
    return run_cli


class ExitLog(list):
    """Every exit a VM dispatched (a typed exit from vmm.vmx.exits), with a copy of the VMCS
    exit-information fields as they were when it was taken (the bus's "exit" topic)."""

    def reasons(self):
        return [e.reason for e, _ in self]

    def of(self, reason):
        return [(e, f) for e, f in self if e.reason == reason]


def record_exits(vm) -> ExitLog:
    from vmm.vmx.vmcs import Field
    log = ExitLog()
    info_fields = (Field.VM_EXIT_REASON, Field.EXIT_QUALIFICATION, Field.VM_EXIT_INSTRUCTION_LEN,
                   Field.VM_EXIT_INTR_INFO, Field.VM_EXIT_INTR_ERROR_CODE, Field.IDT_VECTORING_INFO_FIELD,
                   Field.IDT_VECTORING_ERROR_CODE, Field.GUEST_LINEAR_ADDRESS)

    def recording(exit):
        vmcs = getattr(vm.mode, "vmcs", None)
        fields = {f: vmcs.read(f) for f in info_fields} if vmcs is not None else {}
        log.append((exit, fields))

    vm.bus.subscribe("exit", recording)
    return log


def label_address(src: str, label: str) -> int:
    """Where ``label`` lands in ``src`` as assembled: the guest's last word, appended."""
    return int.from_bytes(assemble(f"{src}\n.long {label}")[-4:], "little")


def make_vm(src_or_image, mode="vtx", configure=None, **vm_args):
    """A VM for assembly source (flat, at FLAT_BASE) or a built image; ``configure(vm)``
    runs before launch (e.g. to edit the VMCS)."""
    if isinstance(src_or_image, str):
        image = load_image(assemble(src_or_image), ram_size=RAM, kind="flat", load_address=FLAT_BASE)
        ram = RAM
    else:
        image, ram = src_or_image, 128 << 20
    out = bytearray()
    vm_args.setdefault("timeout", 30)
    vm = VM(image, mode=mode, ram_size=ram, serial_output=out.extend, **vm_args)
    vm.serial = out
    log = record_exits(vm)
    if configure:
        configure(vm)
    return vm, log


# -- PV guests: flat code at FLAT_BASE, the hypercall page 64 KiB after it -----------------
PV_HYPERCALL_PAGE = FLAT_BASE + 0x10000
PV_DATA = PV_HYPERCALL_PAGE + 0x1000   # 16 KiB of zeroed data pages for tests


def pv_elf(src: str) -> bytes:
    """A Xen PV kernel (ELF with Xen notes) from assembly; ``call PV_HYPERCALL_PAGE + nr*32``
    reaches hypercall ``nr``."""
    from vmm.build import elf
    from vmm.loader.xen import xen_note
    from vmm.pv import abi

    code = assemble(src)
    assert len(code) <= 0xF000, "test guest too large"
    notes = b"".join(xen_note(k, v) for k, v in (
        (abi.XEN_ELFNOTE_GUEST_OS, b"vmm-test\0"), (abi.XEN_ELFNOTE_XEN_VERSION, b"xen-3.0\0"),
        (abi.XEN_ELFNOTE_VIRT_BASE, 0), (abi.XEN_ELFNOTE_ENTRY, FLAT_BASE),
        (abi.XEN_ELFNOTE_HYPERCALL_PAGE, PV_HYPERCALL_PAGE)))
    notes_at = (len(code) + 3) & ~3
    data = code.ljust(notes_at, b"\0") + notes
    memsz = PV_DATA + 0x4000 - FLAT_BASE
    return elf.write_elf32([elf.Segment(FLAT_BASE, data, memsz=memsz)], FLAT_BASE,
                           notes=[(FLAT_BASE + notes_at, len(notes))])


def pv_vm(src: str, ram: int = RAM, **vm_args):
    """A pv-mode VM for a PV test kernel; ``vm.serial`` collects its console."""
    from vmm.loader.xen import load_xen

    out = bytearray()
    vm_args.setdefault("timeout", 20)
    vm = VM(load_xen(pv_elf(src), ram_size=ram), mode="pv", ram_size=ram, serial_output=out.extend, **vm_args)
    vm.serial = out
    return vm


# -- device guests: one Multiboot kernel of the project's own, run in vmm and in QEMU ----------
DEVICE_GUEST_MODES = ("native", "trap", "bt", "vtx", "vtx-ept")


def build_kernel(tmp_dir, name: str, source: str) -> bytes:
    """A guest kernel (``kernel.inc`` and friends) from assembly source, built uncached."""
    import textwrap

    from vmm.build.guests import build_guest

    path = tmp_dir / f"{name}.s"
    path.write_text(textwrap.dedent(source))
    return build_guest(str(path), use_cache=False).elf


def run_kernel(image: bytes, mode: str, ram: int = 128 << 20):
    """(VmResult, serial output) of a Multiboot image in ``mode``."""
    out = bytearray()
    vm = VM(load_image(image, ram_size=ram), mode=mode, ram_size=ram, serial_output=out.extend, timeout=30)
    return vm.run(), bytes(out)


def run_kernel_in_qemu(image: bytes, tmp_dir, command) -> tuple[bytes, int]:
    """(serial output, exit status) of the image under QEMU; ``command(kernel_path)`` is one
    of tools.machines' command lines. Skips the test where QEMU is not installed."""
    from tools.machines import qemu_binary

    if qemu_binary("i386") is None:
        pytest.skip("qemu-system-i386 is not on PATH")
    kernel = tmp_dir / "guest.elf"
    kernel.write_bytes(image)
    proc = subprocess.run(command(str(kernel)), stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
    return proc.stdout, proc.returncode

SHOW_MACRO = """%macro SHOW 1
    PRINT %1
    call print_hex
    call print_nl
%endmacro
"""
"""``SHOW "label: "`` prints the label and EAX in hex, one line (device guests)."""
