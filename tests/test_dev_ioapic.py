"""The I/O APIC and the HPET's interrupts, as a guest that masks the 8259 and uses the
APICs sees them: the PIT's IRQ 0 on pin 2, level-triggered lines with Remote IRR and the
EOI broadcast, the EOI register, masking, and the HPET's timers (periodic, legacy
replacement, level status). Each guest runs in every mode and under QEMU (the guest
prints what it saw; the output must be the same)."""
from __future__ import annotations

import pytest

from conftest import DEVICE_GUEST_MODES, SHOW_MACRO, build_kernel, run_kernel, run_kernel_in_qemu
from tools.machines import testdev_command as qemu_testdev_command
from vmm.devices.board import Board
from vmm.devices.ioapic import IOAPIC_BASE, LEVEL_TRIGGERED, MASKED, REMOTE_IRR
from vmm.vm import StopKind

IO = IOAPIC_BASE
APIC = 0xFEE00000
HPET = 0xFED00000

ROUTINES = f"""
// ioapic_route: pin ECX gets redirection entry EAX (low half), destination APIC 0
ioapic_route:
    push edx
    lea edx, [ecx*2 + 0x10]
    mov dword ptr [{IO:#x}], edx
    mov dword ptr [{IO + 0x10:#x}], eax
    inc edx
    mov dword ptr [{IO:#x}], edx
    mov dword ptr [{IO + 0x10:#x}], 0
    pop edx
    ret

// ioapic_read: EAX = redirection entry ECX's low half
ioapic_read:
    push edx
    lea edx, [ecx*2 + 0x10]
    mov dword ptr [{IO:#x}], edx
    mov eax, dword ptr [{IO + 0x10:#x}]
    pop edx
    ret

apic_eoi:
    mov dword ptr [{APIC + 0xb0:#x}], 0
    ret

// wait_for: spin with interrupts on until [ESI] >= EAX (or give up after a while)
wait_for:
    push ecx
    mov ecx, 2000000
wait_for_loop:
    cmp dword ptr [esi], eax
    jae wait_for_done
    sti
    nop
    cli
    loop wait_for_loop
wait_for_done:
    pop ecx
    ret
"""

SETUP = f"""
    mov al, 0xff                              // both 8259s masked: only the APICs deliver
    out 0x21, al
    out 0xa1, al
    mov dword ptr [{APIC + 0xf0:#x}], 0x1ff   // local APIC software-enabled, spurious 0xff
"""

IOAPIC_GUEST = f"""%include "kernel.inc"
{SHOW_MACRO}
kmain:
    SET_HANDLER 0x30, timer_handler
    SET_HANDLER 0x40, level_handler
    SET_HANDLER 0x41, edge_handler
{SETUP}
    mov dword ptr [{IO:#x}], 1
    mov eax, dword ptr [{IO + 0x10:#x}]
    SHOW "version: "
    mov dword ptr [{IO:#x}], 0
    mov eax, dword ptr [{IO + 0x10:#x}]
    SHOW "id: "
    mov ecx, 2
    call ioapic_read
    SHOW "pin 2 after reset: "

    // The PIT at 1 kHz, its IRQ 0 on pin 2 -> vector 0x30, edge.
    mov ecx, 2
    mov eax, 0x30
    call ioapic_route
    mov al, 0x34
    out 0x43, al
    mov al, 0xa9
    out 0x40, al
    mov al, 0x04
    out 0x40, al
    mov esi, ticks
    mov eax, 3
    call wait_for
    mov eax, dword ptr [ticks]
    SHOW "PIT ticks through pin 2: "
    mov ecx, 2
    mov eax, {MASKED:#x} + 0x30
    call ioapic_route
    mov al, 0x30                              // PIT channel 0 one-shot, no more ticks
    out 0x43, al

    // A level-triggered line (pc-testdev line 10 -> pin 10 -> vector 0x40). The handler
    // EOIs twice without lowering the line, then lowers it before the third EOI.
    mov ecx, 10
    mov eax, {LEVEL_TRIGGERED:#x} + 0x40
    call ioapic_route
    mov dx, 0x200a
    mov al, 1
    out dx, al
    mov esi, levels
    mov eax, 3
    call wait_for
    mov eax, dword ptr [levels]
    SHOW "level interrupts until the line dropped: "
    mov eax, dword ptr [remote_irr_seen]
    SHOW "remote IRR in the handler: "
    mov ecx, 10
    call ioapic_read
    and eax, {REMOTE_IRR:#x}
    SHOW "remote IRR after the last EOI: "

    // Level again, masked while the line goes up: nothing until unmasked.
    mov ecx, 10
    mov eax, {MASKED | LEVEL_TRIGGERED:#x} + 0x40
    call ioapic_route
    mov dword ptr [levels], 0
    mov dword ptr [lower_after], 1
    mov dx, 0x200a
    mov al, 1
    out dx, al
    sti
    nop
    nop
    cli
    mov eax, dword ptr [levels]
    SHOW "while masked: "
    mov ecx, 10
    mov eax, {LEVEL_TRIGGERED:#x} + 0x40
    call ioapic_route
    sti
    nop
    cli
    mov eax, dword ptr [levels]
    SHOW "after unmasking: "

    // Edge on a masked pin is lost; on an unmasked pin each rising edge is one interrupt.
    mov ecx, 11
    mov eax, {MASKED:#x} + 0x41
    call ioapic_route
    mov dx, 0x200b
    mov al, 1
    out dx, al
    mov al, 0
    out dx, al
    mov ecx, 11
    mov eax, 0x41
    call ioapic_route
    sti
    nop
    cli
    mov eax, dword ptr [edges]
    SHOW "edge on a masked pin, then unmasked: "
    mov dx, 0x200b
    mov al, 1
    out dx, al
    sti
    nop
    cli
    mov al, 0
    out dx, al
    mov al, 1
    out dx, al
    sti
    nop
    cli
    mov eax, dword ptr [edges]
    SHOW "two rising edges: "
    EXIT EXIT_OK

timer_handler:
    inc dword ptr [ticks]
    call apic_eoi
    ret

level_handler:
    inc dword ptr [levels]
    push ecx
    mov ecx, 10
    call ioapic_read
    pop ecx
    and eax, {REMOTE_IRR:#x}
    mov dword ptr [remote_irr_seen], eax
    mov eax, dword ptr [levels]
    cmp eax, dword ptr [lower_after]
    jb level_eoi
    push edx
    mov dx, 0x200a
    mov al, 0
    out dx, al
    pop edx
level_eoi:
    call apic_eoi
    ret

edge_handler:
    inc dword ptr [edges]
    call apic_eoi
    ret
{ROUTINES}
    .balign 4
ticks: .long 0
levels: .long 0
edges: .long 0
remote_irr_seen: .long 0
lower_after: .long 3
%include "kernel_bss.inc"
"""
IOAPIC_EXPECTED = b"""version: 0x00170020
id: 0x00000000
pin 2 after reset: 0x00010000
PIT ticks through pin 2: 0x00000003
level interrupts until the line dropped: 0x00000003
remote IRR in the handler: 0x00004000
remote IRR after the last EOI: 0x00000000
while masked: 0x00000000
after unmasking: 0x00000001
edge on a masked pin, then unmasked: 0x00000000
two rising edges: 0x00000002
"""

HPET_GUEST = f"""%include "kernel.inc"
{SHOW_MACRO}
kmain:
    SET_HANDLER 0x30, timer0_handler
    SET_HANDLER 0x38, timer1_handler
{SETUP}
    // Timer 0 periodic, every 100000 ticks (1 ms), edge, on I/O APIC pin 2.
    mov ecx, 2
    mov eax, 0x30
    call ioapic_route
    mov dword ptr [{HPET + 0x100:#x}], 0x4c       // INT_ENB | PERIODIC | VAL_SET, route 0
    mov dword ptr [{HPET + 0x108:#x}], 100000
    mov dword ptr [{HPET + 0x10c:#x}], 0
    mov dword ptr [{HPET + 0x108:#x}], 100000     // the period
    mov dword ptr [{HPET + 0x10:#x}], 1           // ENABLE_CNF
    mov esi, ticks0
    mov eax, 4
    call wait_for
    mov eax, dword ptr [ticks0]
    SHOW "timer 0 periodic interrupts: "
    mov dword ptr [{HPET + 0x100:#x}], 0          // timer 0 off

    // Legacy replacement: timer 1 on IRQ 8 (pin 8), one-shot, level-triggered.
    mov dword ptr [{HPET + 0x10:#x}], 3           // ENABLE_CNF | LEG_RT_CNF
    mov ecx, 8
    mov eax, {LEVEL_TRIGGERED:#x} + 0x38
    call ioapic_route
    mov eax, dword ptr [{HPET + 0xf0:#x}]
    add eax, 50000
    mov dword ptr [{HPET + 0x128:#x}], eax
    mov dword ptr [{HPET + 0x12c:#x}], 0
    mov dword ptr [{HPET + 0x120:#x}], 0x6        // INT_ENB | LEVEL
    mov esi, ticks1
    mov eax, 1
    call wait_for
    mov eax, dword ptr [ticks1]
    SHOW "timer 1 legacy interrupts: "
    mov eax, dword ptr [status_seen]
    SHOW "status in the handler: "
    mov eax, dword ptr [{HPET + 0x20:#x}]
    SHOW "status after the write-back: "
    EXIT EXIT_OK

timer0_handler:
    inc dword ptr [ticks0]
    call apic_eoi
    ret

timer1_handler:
    inc dword ptr [ticks1]
    mov eax, dword ptr [{HPET + 0x20:#x}]
    mov dword ptr [status_seen], eax
    mov dword ptr [{HPET + 0x20:#x}], 2           // clear timer 1's status: the line drops
    call apic_eoi
    ret
{ROUTINES}
    .balign 4
ticks0: .long 0
ticks1: .long 0
status_seen: .long 0
%include "kernel_bss.inc"
"""
HPET_EXPECTED = b"""timer 0 periodic interrupts: 0x00000004
timer 1 legacy interrupts: 0x00000001
status in the handler: 0x00000002
status after the write-back: 0x00000000
"""

GUESTS = {"ioapic": (IOAPIC_GUEST, IOAPIC_EXPECTED), "hpet-interrupts": (HPET_GUEST, HPET_EXPECTED)}


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, bytes]:
    tmp = tmp_path_factory.mktemp("ioapic")
    return {name: build_kernel(tmp, name, source) for name, (source, _) in GUESTS.items()}


@pytest.mark.parametrize("mode", DEVICE_GUEST_MODES)
@pytest.mark.parametrize("guest", GUESTS)
def test_the_guest_sees_the_interrupts(guest, mode, images):
    result, out = run_kernel(images[guest], mode)
    assert result.kind is StopKind.EXIT, result.message
    assert out.decode() == GUESTS[guest][1].decode()


@pytest.mark.qemu
@pytest.mark.parametrize("guest", GUESTS)
def test_qemu_agrees(guest, images, tmp_path):
    out, status = run_kernel_in_qemu(images[guest], tmp_path, qemu_testdev_command)
    assert out.decode() == GUESTS[guest][1].decode() and status == 1


def test_bad_accesses_behave_as_the_chip():
    """Narrow window accesses read 0 and are dropped; indexes past the table read 0;
    Remote IRR and delivery status are read-only; the page repeats every 256 bytes."""
    board = Board(devices={"pc-testdev": True})
    bus = board.mmio_bus
    bus.write(IO, 4, 0x10)
    bus.write(IO + 0x10, 2, 0x1234)
    assert bus.read(IO + 0x10, 4) == MASKED
    assert bus.read(IO + 0x10, 2) == 0
    bus.write(IO + 0x10, 4, REMOTE_IRR | 0x55)
    assert bus.read(IO + 0x10, 4) == 0x55
    bus.write(IO, 4, 0x40)
    assert bus.read(IO + 0x10, 4) == 0
    bus.write(IO + 0x100, 4, 1)
    assert bus.read(IO + 0x110, 4) == 0x00170020
    assert board.ioapic.entries[0] == 0x55
