"""The MC146818 RTC running: setting the time with status B's SET, the update-in-progress
flag and the second's update, the 12-hour binary format, and IRQ 8 for the periodic,
alarm and update-ended interrupts with their status C flags. The same image runs in
every mode and under QEMU; the output must be the same."""
from __future__ import annotations

import pytest

from conftest import DEVICE_GUEST_MODES, SHOW_MACRO, build_kernel, run_kernel, run_kernel_in_qemu
from tools.machines import qemu_command
from vmm.devices.cmos import UIP_HOLD, Cmos
from vmm.devices.pit import PIT_INPUT_HZ
from vmm.vm import StopKind

GUEST = f"""%include "kernel.inc"
{SHOW_MACRO}
%macro RTC_WRITE 2
    mov al, %1
    out 0x70, al
    mov al, %2
    out 0x71, al
%endmacro
%macro RTC_READ 1
    mov al, %1
    out 0x70, al
    xor eax, eax
    in al, 0x71
%endmacro

kmain:
    SET_HANDLER IRQ_BASE + 8, rtc_handler
    PIC_REMAP 0xfb, 0xfe        // the cascade and IRQ 8

    // Set 2026-03-04 12:34:56 (BCD, 24 h) with the updates held.
    RTC_WRITE 0x0b, 0x82
    RTC_WRITE 0x00, 0x56
    RTC_WRITE 0x02, 0x34
    RTC_WRITE 0x04, 0x12
    RTC_WRITE 0x07, 0x04
    RTC_WRITE 0x08, 0x03
    RTC_WRITE 0x09, 0x26
    RTC_WRITE 0x0b, 0x02
    RTC_READ 0x04
    SHOW "hours: "
    RTC_READ 0x02
    SHOW "minutes: "
    RTC_READ 0x00
    SHOW "seconds: "
    RTC_READ 0x07
    SHOW "day: "

    // The next update: UIP goes up, then down, and the seconds have moved on. (Most of the
    // second passes in a loop without port I/O: in virtual time that is 0.96 s.)
    mov ecx, 1150000
pass_time:
    loop pass_time
wait_uip:
    RTC_READ 0x0a
    test al, 0x80
    jz wait_uip
wait_update:
    RTC_READ 0x0a
    test al, 0x80
    jnz wait_update
    RTC_READ 0x00
    cmp al, 0x56
    setne al
    SHOW "the seconds moved on at the update: "
    RTC_READ 0x0c
    and al, 0x10
    SHOW "status C's update-ended flag: "

    // 12-hour binary: 12:34 is 12 PM.
    RTC_WRITE 0x0b, 0x04
    RTC_READ 0x04
    SHOW "hours, 12-hour binary: "
    RTC_READ 0x02
    SHOW "minutes, binary: "
    RTC_WRITE 0x0b, 0x02

    // Periodic interrupts at 1024 Hz: ten of them.
    RTC_READ 0x0c
    RTC_WRITE 0x0a, 0x26
    RTC_WRITE 0x0b, 0x42            // PIE
    mov dword ptr [count], 0
wait_periodic:
    sti
    hlt
    cli
    cmp dword ptr [count], 10
    jb wait_periodic
    RTC_WRITE 0x0b, 0x02
    mov eax, dword ptr [rtc_flags]
    and eax, 0xc0
    SHOW "status C in the periodic handler: "

    // The alarm, a second from now (hours and minutes: don't care).
    RTC_READ 0x0c
    RTC_READ 0x00
    mov ecx, eax
    and ecx, 0x0f
    inc eax
    cmp ecx, 9
    jne alarm_set
    add eax, 6                      // BCD carry
    cmp eax, 0x60
    jne alarm_set
    xor eax, eax
alarm_set:
    mov byte ptr [alarm], al
    RTC_WRITE 0x01, byte ptr [alarm]
    RTC_WRITE 0x03, 0xc0
    RTC_WRITE 0x05, 0xc0
    mov dword ptr [count], 0
    RTC_WRITE 0x0b, 0x22            // AIE
wait_alarm:
    sti
    hlt
    cli
    cmp dword ptr [count], 1
    jb wait_alarm
    RTC_WRITE 0x0b, 0x02
    mov eax, dword ptr [rtc_flags]
    and eax, 0xa0
    SHOW "status C in the alarm handler: "
    RTC_READ 0x00
    cmp al, byte ptr [alarm]
    sete al
    movzx eax, al
    SHOW "the alarm came at its second: "

    // Update-ended interrupts: one.
    RTC_READ 0x0c
    mov dword ptr [count], 0
    RTC_WRITE 0x0b, 0x12            // UIE
wait_uf:
    sti
    hlt
    cli
    cmp dword ptr [count], 1
    jb wait_uf
    RTC_WRITE 0x0b, 0x02
    mov eax, dword ptr [rtc_flags]
    and eax, 0x90
    SHOW "status C in the update handler: "
    EXIT EXIT_OK

rtc_handler:
    inc dword ptr [count]
    RTC_READ 0x0c
    mov dword ptr [rtc_flags], eax
    OUTB_IMM PIC2_CMD, PIC_EOI
    OUTB_IMM PIC1_CMD, PIC_EOI
    ret

    .balign 4
count: .long 0
rtc_flags: .long 0
alarm: .long 0
%include "kernel_bss.inc"
"""
EXPECTED = b"""hours: 0x00000012
minutes: 0x00000034
seconds: 0x00000056
day: 0x00000004
the seconds moved on at the update: 0x00000001
status C's update-ended flag: 0x00000010
hours, 12-hour binary: 0x0000008c
minutes, binary: 0x00000022
status C in the periodic handler: 0x000000c0
status C in the alarm handler: 0x000000a0
the alarm came at its second: 0x00000001
status C in the update handler: 0x00000090
"""


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> bytes:
    return build_kernel(tmp_path_factory.mktemp("rtc"), "rtc", GUEST)


@pytest.mark.parametrize("mode", DEVICE_GUEST_MODES)
def test_the_rtc_runs_and_interrupts(mode, image):
    result, out = run_kernel(image, mode)
    assert result.kind is StopKind.EXIT, result.message
    assert out.decode() == EXPECTED.decode()


@pytest.mark.qemu
def test_qemu_agrees(image, tmp_path):
    out, status = run_kernel_in_qemu(image, tmp_path, qemu_command)
    assert out.decode() == EXPECTED.decode() and status == 1


def test_a_second_is_a_second_of_virtual_time():
    now = [0]
    cmos = Cmos(128 << 20, clock=lambda: now[0])

    def read(index):
        cmos.io_write(0x70, 1, index)
        return cmos.io_read(0x71, 1)

    assert read(0) == 0
    now[0] = PIT_INPUT_HZ - UIP_HOLD - 1
    assert not read(0x0A) & 0x80 and read(0) == 0
    now[0] = PIT_INPUT_HZ - 1
    assert read(0x0A) & 0x80
    now[0] = PIT_INPUT_HZ
    assert read(0) == 1 and not read(0x0A) & 0x80
    now[0] = 61 * PIT_INPUT_HZ
    assert (read(2), read(0)) == (1, 1)


def test_nonsense_time_writes_keep_the_clock():
    cmos = Cmos(128 << 20)
    cmos.io_write(0x70, 1, 0x08)
    cmos.io_write(0x71, 1, 0x13)          # month 13 in BCD: not a date
    cmos.io_write(0x70, 1, 0x09)
    assert cmos.io_read(0x71, 1) == 0x26  # the clock still reads 2026
