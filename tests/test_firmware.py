"""The firmware tables, found and read as a kernel finds and reads them, against QEMU.

One Multiboot guest scans the EBDA's first KiB and 0xe0000-0xfffff on 16-byte boundaries
for the ACPI RSDP, the MP floating pointer and the SMBIOS entry point, as Linux does,
checks every checksum, walks RSDT -> FACP (-> FACS, DSDT), APIC, HPET, WAET, and prints
what it read over the serial port: whole tables where QEMU's are byte for byte the same,
the fields guests use elsewhere. vmm must print what QEMU 7.2 with its SeaBIOS prints.
Left out of the comparison, each for its reason:

* the RSDT's pointers: QEMU's DSDT is its full AML (about 6 KiB), ours the sleep states
  only, so the tables after it lie lower (the guest follows them and prints each table's
  signature, length, revision and checksum instead; the FACP's FACS and DSDT pointers
  are QEMU's and are compared);
* the DSDT's length (the same reason); its checksum and its ``_S3_``/``_S4_``/``_S5_``
  packages are compared;
* the BDA's timer count at 0x46c: SeaBIOS sets it from the RTC's time of day, the host's
  under QEMU and the board's frozen clock here.

A boot sector checks the IVT stub: BIOS services return with one notice per vector and
AH; INT 11h and 12h answer from the BDA; and guests that overwrite the tables or the IVT
(bad input) leave the VMM standing.
"""
from __future__ import annotations

import pytest

from conftest import DEVICE_GUEST_MODES, assemble, build_kernel, run_kernel, run_kernel_in_qemu
from tools.machines import qemu_command
from vmm.devices.board import Board
from vmm.firmware import Firmware, acpi, install, ivt, structures
from vmm.firmware.layout import FSEG_END, FSEG_START, Heap
from vmm.loader.image import load_image
from vmm.vm import VM, StopKind

RAM = 128 << 20

GUEST = r"""%include "kernel.inc"
// find: EAX = first dword, EDX = second dword (0: any), ESI..EDI on 16-byte steps -> ESI (0: none)
find:
    cmp esi, edi
    jae find_none
    cmp dword ptr [esi], eax
    jne find_next
    test edx, edx
    jz find_done
    cmp dword ptr [esi + 4], edx
    je find_done
find_next:
    add esi, 16
    jmp find
find_none:
    xor esi, esi
find_done:
    ret
// scan: the EBDA's first KiB, then 0xe0000-0xfffff
scan:
    movzx esi, word ptr [0x40e]
    shl esi, 4
    mov edi, esi
    add edi, 1024
    call find
    test esi, esi
    jnz scan_done
    mov esi, 0xe0000
    mov edi, 0x100000
    call find
scan_done:
    ret
// sum: ECX bytes from ESI -> AL their sum (0: the checksum holds)
sum:
    push ecx
    push esi
    xor eax, eax
sum_loop:
    add al, byte ptr [esi]
    inc esi
    dec ecx
    jnz sum_loop
    pop esi
    pop ecx
    ret
// dump: ECX dwords from ESI, four to a line
dump:
    push eax
    push ecx
    push edx
    push esi
    xor edx, edx
dump_loop:
    mov eax, dword ptr [esi]
    call print_hex
    mov al, ' '
    call putc
    add esi, 4
    inc edx
    test edx, 3
    jnz dump_more
    call print_nl
dump_more:
    dec ecx
    jnz dump_loop
    test edx, 3
    jz dump_end
    call print_nl
dump_end:
    pop esi
    pop edx
    pop ecx
    pop eax
    ret
// header: the table at EBX: signature, length, revision, checksum sum
header:
    push ecx
    push esi
    mov esi, ebx
    mov ecx, 4
    call print_buf
    PRINT " length "
    mov ecx, dword ptr [ebx + 4]
    PRINT_HEX ecx
    call print_nl
    mov ecx, 4
    call print_buf
    PRINT " revision "
    movzx eax, byte ptr [ebx + 8]
    call print_hex8
    PRINT " sum "
    call sum
    call print_hex8
    call print_nl
    pop esi
    pop ecx
    ret
// sleep: find the 4-byte name EAX in the DSDT at EBX and print the 7 bytes after it
sleep:
    mov esi, ebx
    mov ecx, dword ptr [ebx + 4]
sleep_loop:
    cmp dword ptr [esi], eax
    je sleep_found
    inc esi
    dec ecx
    jnz sleep_loop
    PRINT "missing"
    call print_nl
    ret
sleep_found:
    mov ecx, 4
    call print_buf
    add esi, 4
    mov ecx, 7
sleep_bytes:
    mov al, ' '
    call putc
    mov al, byte ptr [esi]
    call print_hex8
    inc esi
    dec ecx
    jnz sleep_bytes
    call print_nl
    ret
// table: one RSDT entry at EBX
table:
    call header
    cmp dword ptr [ebx], 0x50434146      // "FACP"
    jne table_dump
    mov esi, ebx
    mov ecx, dword ptr [ebx + 4]
    shr ecx, 2
    call dump
    push ebx
    mov ebx, dword ptr [esi + 36]
    call header
    pop ebx
    push ebx
    mov ebx, dword ptr [esi + 40]
    call header
    mov eax, 0x5f33535f                  // "_S3_"
    call sleep
    mov eax, 0x5f34535f
    call sleep
    mov eax, 0x5f35535f
    call sleep
    pop ebx
    ret
table_dump:
    mov esi, ebx
    mov ecx, dword ptr [ebx + 4]
    add ecx, 3
    shr ecx, 2
    call dump
    ret
kmain:
    PRINT "BDA"
    call print_nl
    mov esi, 0x400
    mov ecx, 27                          // 0x400-0x46b; 0x46c, the timer count, differs
    call dump
    mov esi, 0x470
    mov ecx, 36
    call dump
    PRINT "EBDA size "
    movzx eax, word ptr [0x40e]
    shl eax, 4
    movzx eax, byte ptr [eax]
    call print_hex8
    call print_nl
    PRINT "IVT"
    call print_nl
    xor esi, esi
    mov ecx, 256
    call dump

    mov eax, 0x20445352                  // "RSD PTR "
    mov edx, 0x20525450
    call scan
    PRINT "RSDP at "
    PRINT_HEX esi
    PRINT " OEM "
    push esi
    add esi, 9
    mov ecx, 6
    call print_buf
    pop esi
    PRINT " revision "
    movzx eax, byte ptr [esi + 15]
    call print_hex8
    PRINT " sum "
    mov ecx, 20
    call sum
    call print_hex8
    call print_nl
    mov ebx, dword ptr [esi + 16]
    call header
    mov ecx, dword ptr [ebx + 4]
    sub ecx, 36
    shr ecx, 2
    lea ebp, [ebx + 36]
rsdt_loop:
    mov ebx, dword ptr [ebp]
    push ecx
    push ebp
    call table
    pop ebp
    pop ecx
    add ebp, 4
    dec ecx
    jnz rsdt_loop

    mov eax, 0x5f504d5f                  // "_MP_"
    xor edx, edx
    call scan
    PRINT "MP floating pointer at "
    PRINT_HEX esi
    PRINT " sum "
    mov ecx, 16
    call sum
    call print_hex8
    call print_nl
    mov ecx, 4
    call dump
    mov esi, dword ptr [esi + 4]
    PRINT "MP configuration table, sum "
    movzx ecx, word ptr [esi + 4]
    call sum
    call print_hex8
    call print_nl
    add ecx, 3
    shr ecx, 2
    call dump

    mov eax, 0x5f4d535f                  // "_SM_"
    xor edx, edx
    call scan
    PRINT "SMBIOS entry point at "
    PRINT_HEX esi
    PRINT " sum "
    mov ecx, 31
    call sum
    call print_hex8
    PRINT " intermediate sum "
    add esi, 16
    mov ecx, 15
    call sum
    call print_hex8
    sub esi, 16
    call print_nl
    mov ecx, 8
    call dump
    movzx ecx, word ptr [esi + 0x16]
    mov esi, dword ptr [esi + 0x18]
    PRINT "SMBIOS structures"
    call print_nl
    add ecx, 3
    shr ecx, 2
    call dump
    EXIT EXIT_OK
%include "kernel_bss.inc"
"""

#: The lines whose values differ from QEMU's, for the reason the module docstring gives.
DIFFERS = ("DSDT length",)


def comparable(output: bytes) -> list[str]:
    return [line for line in output.decode(errors="replace").splitlines() if not line.startswith(DIFFERS)]


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    return build_kernel(tmp_path_factory.mktemp("firmware"), "firmware", GUEST)


@pytest.fixture(scope="module")
def qemu_output(image, tmp_path_factory):
    out, status = run_kernel_in_qemu(image, tmp_path_factory.mktemp("qemu"), qemu_command)
    assert status == 1, out
    return out


@pytest.mark.qemu
@pytest.mark.parametrize("mode", DEVICE_GUEST_MODES)
def test_the_tables_a_kernel_finds_are_qemus(image, qemu_output, mode):
    result, out = run_kernel(image, mode, RAM)
    assert result.kind is StopKind.EXIT and result.exit_status == 1, result.message
    assert comparable(out) == comparable(qemu_output)
