// hello -- the smallest guest: boot, print, exit.
//
// What to notice:
//   * the image begins with the Multiboot header (kernel.inc -> multiboot.inc); the
//     loader enters _start with EAX = 0x2BADB002, which we saved in mb_magic;
//   * all output is polled port I/O to the 16550 at 0x3f8 (serial.inc);
//   * the guest ends by writing to the isa-debug-exit port 0xf4: QEMU (and vmm) stop
//     with exit status (value << 1) | 1, here (0 << 1) | 1 = 1.

%include "kernel.inc"

kmain:
    PRINT "Hello from the vmm 'hello' guest!\n"
    PRINT "multiboot magic (EAX at entry): "
    PRINT_HEX [mb_magic]
    call print_nl
    PRINT "decimal 4294967295 = "
    PRINT_DEC 0xffffffff
    PRINT ", hex 3735928559 = "
    PRINT_HEX 3735928559
    call print_nl
    PRINT "running at CPL "
    mov eax, cs
    and eax, 3                      // the low 2 bits of CS are the current privilege level
    call print_dec
    PRINT " with CS="
    mov eax, cs
    call print_hex16
    PRINT " DS="
    mov eax, ds
    call print_hex16
    call print_nl
    PRINT "bye\n"
    EXIT EXIT_OK

%include "kernel_bss.inc"
