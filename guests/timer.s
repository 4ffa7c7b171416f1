// timer -- external interrupts: the 8259A PIC pair and the 8254 PIT.
//
// What to notice:
//   * The BIOS left the PICs delivering IRQ0-7 on vectors 0x08-0x0f, on top of the CPU
//     exceptions. Re-initialising them (ICW1..ICW4) moves IRQ0-15 to 0x20-0x2f.
//   * The mask register (OCW1) selects which IRQ lines may interrupt: only IRQ0 here.
//   * PIT channel 0 in mode 2 (rate generator) divides 1193182 Hz by 11932: 100 Hz.
//   * "sti; hlt" sleeps until the next interrupt. STI takes effect after the NEXT
//     instruction, so an interrupt cannot sneak in between and be lost.
//   * Until the handler sends EOI, the PIC keeps IRQ0's bit in its In-Service Register
//     and delivers nothing of equal or lower priority.
//   * Nothing printed depends on real time: the handler masks IRQ0 itself once it has
//     counted enough ticks, so a slow host cannot add an extra one.

%include "kernel.inc"

%define TICKS_WANTED  10
%define PIT_DIVISOR   11932         // 1193182 / 11932 = 100.0 Hz
%define OCW3_READ_ISR 0x0b          // next read of the command port returns the ISR

kmain:
    PRINT "timer: 8259 PIC + 8254 PIT, IRQ0 at 100 Hz\n"
    SET_HANDLER IRQ_BASE + 0, irq0_handler
    SET_HANDLER IRQ_BASE + 7, spurious_handler

    // ---- the PICs: ICW1-ICW4 (real hardware wants a short delay between writes) ----
    OUTB_IMM PIC1_CMD, 0x11         // ICW1: edge triggered, cascade, ICW4 follows
    OUTB_IMM PIC2_CMD, 0x11
    OUTB_IMM PIC1_DATA, IRQ_BASE    // ICW2: vector base of IRQ0-7
    OUTB_IMM PIC2_DATA, IRQ_BASE + 8    //   and of IRQ8-15
    OUTB_IMM PIC1_DATA, 0x04        // ICW3: the slave hangs off master line 2
    OUTB_IMM PIC2_DATA, 0x02        //       the slave's cascade identity is 2
    OUTB_IMM PIC1_DATA, 0x01        // ICW4: 8086 mode, normal EOI
    OUTB_IMM PIC2_DATA, 0x01
    OUTB_IMM PIC1_DATA, 0xfe        // OCW1: mask everything but IRQ0
    OUTB_IMM PIC2_DATA, 0xff
    PRINT "PIC remapped to vectors 0x20-0x2f, masks master="
    INB_IMM PIC1_DATA               // reading the data port returns the mask
    call print_hex8
    PRINT " slave="
    INB_IMM PIC2_DATA
    call print_hex8
    call print_nl

    // ---- the PIT: channel 0, lobyte/hibyte, mode 2, binary --------------------------
    OUTB_IMM PIT_CMD, 0x34
    OUTB_IMM PIT_CH0, PIT_DIVISOR & 0xff
    OUTB_IMM PIT_CH0, PIT_DIVISOR >> 8
    PRINT "PIT channel 0: mode 2, divisor "
    PRINT_DEC PIT_DIVISOR
    PRINT " (100 Hz)\nwaiting for "
    PRINT_DEC TICKS_WANTED
    PRINT " ticks with sti; hlt\n"

wait_loop:
    PV_SAFE_HALT                    // sti; hlt -- wakes up after the IRQ0 handler ran
    PV_CLI
    cmp dword ptr [ticks], TICKS_WANTED
    jb wait_loop

    PRINT "counted "
    PRINT_DEC [ticks]
    PRINT " timer interrupts\ntimer: done\n"
    EXIT EXIT_OK

// irq0_handler: EBX = frame. Count, report, EOI.
irq0_handler:
    inc dword ptr [ticks]
    PRINT "  tick "
    PRINT_DEC [ticks]
    cmp dword ptr [ticks], 1
    jne irq0_no_isr
    PRINT " (PIC in-service register before EOI: "
    OUTB_IMM PIC1_CMD, OCW3_READ_ISR
    INB_IMM PIC1_CMD
    call print_hex8
    PRINT ")"
irq0_no_isr:
    call print_nl
    cmp dword ptr [ticks], TICKS_WANTED
    jb irq0_eoi
    OUTB_IMM PIC1_DATA, 0xff        // enough: mask IRQ0 so no further tick arrives
irq0_eoi:
    OUTB_IMM PIC1_CMD, PIC_EOI      // end of interrupt: clear the ISR bit
    ret

// spurious_handler: the master PIC signals IRQ7 when a request vanished before the CPU
// acknowledged it. It is not in service: no EOI.
spurious_handler:
    ret

    .balign 4, 0
ticks:  .long 0

%include "kernel_bss.inc"
