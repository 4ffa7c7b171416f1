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


@pytest.mark.qemu
@pytest.mark.parametrize("ram_mib", [16, 3072])
def test_other_memory_sizes_match_qemu(image, tmp_path, ram_mib):
    """SMBIOS's memory structures and the high tables follow the RAM size."""
    out, status = run_kernel_in_qemu(image, tmp_path, lambda k: qemu_command(k) + ["-m", str(ram_mib)])
    result, ours = run_kernel(image, "native", ram_mib << 20)
    assert status == 1 and result.kind is StopKind.EXIT, result.message
    assert comparable(ours) == comparable(out)


def run_on_board(image: bytes, devices: dict[str, bool]) -> bytes:
    out = bytearray()
    vm = VM(load_image(image, ram_size=RAM), ram_size=RAM, serial_output=out.extend, timeout=30, devices=devices)
    result = vm.run()
    assert result.kind is StopKind.EXIT and result.exit_status == 1, result.message
    return bytes(out)


@pytest.mark.qemu
@pytest.mark.parametrize("devices, extra", [({"hpet": False}, ["-machine", "hpet=off"]),
                                            ({"pci-testdev": True}, ["-device", "pci-testdev"])],
                         ids=["hpet-off", "pci-testdev"])
def test_other_boards_match_qemu(image, tmp_path, devices, extra):
    """Without the HPET there is no HPET table; pci-testdev (no interrupt pin) adds no MP
    interrupt entry: the tables follow the board, as QEMU's and SeaBIOS's do."""
    out, status = run_kernel_in_qemu(image, tmp_path, lambda k: qemu_command(k) + extra)
    assert status == 1, out
    assert comparable(run_on_board(image, devices)) == comparable(out)


def test_without_the_hpet_the_rsdt_lists_no_hpet_table():
    board = Board(ram_size=RAM, devices={"hpet": False})
    names = [s.name for s in structures(board)]
    assert "ACPI HPET" not in names and "ACPI WAET" in names
    rsdt = next(s for s in structures(board) if s.name == "ACPI RSDT")
    assert (len(rsdt.data) - acpi.HEADER_SIZE) // 4 == 3 and sum(rsdt.data) % 256 == 0


@pytest.mark.parametrize("ram_mib", [1, 16, 128, 3072])
def test_the_structures_fit_their_areas_and_never_overlap(ram_mib):
    placed = sorted(structures(Board(ram_size=ram_mib << 20)), key=lambda s: s.address)
    for a, b in zip(placed, placed[1:], strict=False):
        assert a.end <= b.address, (a.name, b.name)
    top = ram_mib << 20
    for s in placed:
        assert s.end <= 0xA0000 or FSEG_START <= s.address < s.end <= FSEG_END \
            or top - (128 << 10) <= s.address < s.end <= top, s.name


def test_a_full_heap_is_refused_not_overrun():
    heap = Heap(0xF0000, 0xF0010)
    heap.reserve(16)
    with pytest.raises(ValueError):
        heap.reserve(1)


# -- real mode: the IVT and the stub ----------------------------------------------------
REAL_MODE_MODES = ("native", "vtx-ept")
SECTOR_RAM = 16 << 20


def sector(src: str) -> bytes:
    code = assemble("xor ax, ax\nmov ds, ax\nmov ss, ax\nmov sp, 0x7000\n" + src, 0x7C00, bits=16)
    return code + bytes(510 - len(code)) + b"\x55\xaa"


def boot(src: str, mode: str, **vm_args):
    vm = VM(load_image(sector(src), ram_size=SECTOR_RAM), mode=mode, ram_size=SECTOR_RAM,
            serial_output=lambda _b: None, timeout=10, **vm_args)
    return vm, vm.run()


@pytest.mark.parametrize("mode", REAL_MODE_MODES)
def test_a_missing_bios_service_returns_with_one_notice_per_vector_and_ah(mode, capsys):
    src = "mov ah, 0x0e\nint 0x10\nint 0x10\nmov ah, 0x02\nint 0x13\nmov ah, 0x0e\nint 0x10\n" \
          "mov al, 0x21\nout 0xf4, al\nhlt"
    code = sector(src)
    at10, at13 = 0x7C00 + code.index(b"\xcd\x10"), 0x7C00 + code.index(b"\xcd\x13")
    vm, result = boot(src, mode)
    assert (result.kind, result.exit_status) == (StopKind.EXIT, 0x21 << 1 | 1), result.message
    assert vm.firmware.services.lines == [
        f"vmm: INT 10h AH=0Eh from 0000:{at10:04X}: no BIOS service here; returned with nothing done",
        f"vmm: INT 13h AH=02h from 0000:{at13:04X}: no BIOS service here; returned with nothing done"]
    assert capsys.readouterr().err.splitlines() == vm.firmware.services.lines


INT_11_12 = """
    int 0x12
    mov bx, ax
    int 0x11
    cmp ax, word ptr [0x410]
    jne wrong
    cmp bx, word ptr [0x413]
    jne wrong
    mov al, bl
    out 0xf4, al
wrong:
    mov al, 0x55
    out 0xf4, al
"""


@pytest.mark.parametrize("mode", REAL_MODE_MODES)
def test_int_11h_and_12h_answer_from_the_bda(mode):
    _vm, result = boot(INT_11_12, mode)
    assert (result.kind, result.exit_status) == (StopKind.EXIT, (639 & 0xFF) << 1 | 1), result.message


@pytest.mark.qemu
def test_int_12h_matches_seabios(tmp_path):
    import subprocess

    from tools.machines import DEBUG_EXIT_DEVICE, qemu_binary

    if qemu_binary("i386") is None:
        pytest.skip("qemu-system-i386 is not on PATH")
    disk = tmp_path / "boot.bin"
    disk.write_bytes(sector(INT_11_12))
    proc = subprocess.run([qemu_binary("i386"), "-drive", f"file={disk},format=raw,if=ide", "-device",
                           DEBUG_EXIT_DEVICE, "-display", "none", "-nodefaults", "-no-reboot"],
                          stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
    assert proc.returncode == boot(INT_11_12, "native")[1].exit_status


@pytest.mark.parametrize("mode", REAL_MODE_MODES)
@pytest.mark.parametrize("before", [0x1800AF, 0x19FFFF])
def test_the_timer_handler_counts_ticks_and_rolls_over_at_midnight(mode, before):
    """INT 08h as SeaBIOS's handle_08: +1, from 0x1800b0 ticks on back to 0, the roll-over
    counted at 0x470 (a count past a day, which a guest may write, rolls over too)."""
    _vm, result = boot(f"""
        mov word ptr [0x46c], {before & 0xFFFF:#x}
        mov word ptr [0x46e], {before >> 16:#x}
        int 0x08
        mov al, byte ptr [0x470]
        or al, byte ptr [0x46c]
        or al, byte ptr [0x46e]
        add al, 0x30
        out 0xf4, al
    """, mode)
    assert (result.kind, result.exit_status) == (StopKind.EXIT, 0x31 << 1 | 1), result.message


@pytest.mark.parametrize("mode", REAL_MODE_MODES)
def test_an_exception_through_the_default_vector_returns(mode):
    """INT 0 (the #DE vector) and an unhooked IRQ's vector, called as software, return."""
    _vm, result = boot("int 0x00\nint 0x0d\nint 0x72\nint 0x55\nmov al, 0x12\nout 0xf4, al", mode)
    assert (result.kind, result.exit_status) == (StopKind.EXIT, 0x12 << 1 | 1), result.message


@pytest.mark.parametrize("mode", REAL_MODE_MODES)
def test_a_guest_that_overwrites_a_stub_runs_its_own_code_unreported(mode):
    vm, result = boot(f"""
        mov ax, 0xf000
        mov es, ax
        mov word ptr es:[{ivt.SERVICES[0x10]:#x}], 0x42b0
        mov word ptr es:[{ivt.SERVICES[0x10] + 2:#x}], 0xf4e6
        int 0x10
    """, mode)
    assert (result.kind, result.exit_status) == (StopKind.EXIT, 0x42 << 1 | 1), result.message
    assert vm.firmware.services.lines == []


@pytest.mark.parametrize("mode", REAL_MODE_MODES)
def test_a_guest_that_wipes_the_firmware_leaves_the_vmm_standing(mode):
    """All ones over the whole F-segment (tables, stubs, reset vector), the EBDA and a BDA
    word: the guest goes on and leaves as it asks; no notice is made up from its bytes."""
    vm, result = boot("""
        cld
        mov al, 0xff
        mov bx, 0xf000
        mov es, bx
        xor di, di
        mov cx, 0x8000
        rep stosw
        mov bx, 0x9fc0
        mov es, bx
        mov cx, 0x200
        rep stosw
        mov word ptr [0x410], 0xffff
        mov al, 0x13
        out 0xf4, al
    """, mode)
    assert result.kind is StopKind.EXIT and result.exit_status == 0x13 << 1 | 1, result.message
    assert vm.firmware.services.lines == []


def test_an_image_over_a_firmware_table_wins_with_a_note():
    """A flat image across the RSDP: its bytes are what the guest reads, and the loader's
    notes say which firmware structure it replaced."""
    load, rsdp = 0xF5000, next(s for s in structures(Board(ram_size=SECTOR_RAM)) if s.name == "ACPI RSDP")
    code = assemble(f"mov al, byte ptr [{rsdp.address:#x}]\nout 0xf4, al", load)
    blob = code + bytes(rsdp.address - load - len(code)) + b"\x77" * 32
    image = load_image(blob, ram_size=SECTOR_RAM, kind="flat", load_address=load)
    vm = VM(image, ram_size=SECTOR_RAM, serial_output=lambda _b: None, timeout=10)
    assert [note for note in image.notes if "ACPI RSDP" in note] == [
        f"the image overwrites the firmware's ACPI RSDP at {rsdp.address:#x}-{rsdp.end - 1:#x}"]
    assert vm.firmware.notes == [note for note in image.notes if "firmware" in note]
    result = vm.run()
    assert (result.kind, result.exit_status) == (StopKind.EXIT, 0x77 << 1 | 1), result.message
    VM(image, ram_size=SECTOR_RAM, serial_output=lambda _b: None)      # the same image, a second VM
    assert len([note for note in image.notes if "ACPI RSDP" in note]) == 1


def test_a_pv_domain_has_no_bios():
    from conftest import pv_vm

    vm = pv_vm("mov eax, 0\nhlt")
    assert vm.firmware is None


def test_install_writes_every_structure_and_arms_the_services():
    written: dict[int, bytes] = {}
    hooks: list[int] = []

    class Engine:
        def add_breakpoint(self, address, _callback, retranslate=True):
            assert not retranslate
            hooks.append(address)

    image = load_image(sector("hlt"), ram_size=SECTOR_RAM)
    fw = install(Board(ram_size=SECTOR_RAM), Engine(), written.__setitem__, image, notice=lambda _l: None)
    assert isinstance(fw, Firmware) and set(written) == {s.address for s in fw.structures}
    assert sorted(hooks) == sorted(ivt.linear(offset) for offset in ivt.SERVICES.values())


@pytest.mark.parametrize("mode", REAL_MODE_MODES)
def test_the_timer_handler_counts_each_tick(mode):
    _vm, result = boot("""
        mov dword ptr [0x46c], 0x0000fffe
        int 0x08
        int 0x08
        mov al, byte ptr [0x46e]
        add al, byte ptr [0x46c]
        add al, byte ptr [0x470]
        add al, 0x40
        out 0xf4, al
    """, mode)
    assert (result.kind, result.exit_status) == (StopKind.EXIT, 0x41 << 1 | 1), result.message
