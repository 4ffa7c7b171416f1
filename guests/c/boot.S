/* boot.S -- what a C kernel cannot write in C: the Multiboot header, the entry with its
   stack, reloading the segment registers after LGDT, and the interrupt entry stubs
   (IRET needs the frame the CPU pushed). */

#define MB_MAGIC 0x1BADB002
#define MB_FLAGS 0x00000003                 /* page-align modules, memory information */

    .section .multiboot, "a"
    .align 4
    .long MB_MAGIC
    .long MB_FLAGS
    .long -(MB_MAGIC + MB_FLAGS)

    .section .bss
    .align 16
stack_bottom:
    .skip 16384
stack_top:

    .section .text
    .global _start
_start:
    cli
    mov $stack_top, %esp
    push %ebx                               /* the Multiboot information */
    push %eax                               /* the loader's magic */
    call kmain
halt:
    cli
    hlt
    jmp halt

/* gdt_flush(gdtr): load the GDT, then CS through a far jump and the data selectors. */
    .global gdt_flush
gdt_flush:
    mov 4(%esp), %eax
    lgdt (%eax)
    ljmp $0x08, $1f
1:  mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %fs
    mov %ax, %gs
    mov %ax, %ss
    ret

/* One stub per vector: the same frame for every one (a dummy error code where the CPU
   pushes none), then isr_common, which saves the registers and calls isr_handler. */
.macro ISR_NOERR n
    .global isr\n
isr\n:
    push $0
    push $\n
    jmp isr_common
.endm
.macro ISR_ERR n
    .global isr\n
isr\n:
    push $\n
    jmp isr_common
.endm

ISR_NOERR 0
ISR_NOERR 1
ISR_NOERR 2
ISR_NOERR 3
ISR_NOERR 4
ISR_NOERR 5
ISR_NOERR 6
ISR_NOERR 7
ISR_ERR   8
ISR_NOERR 9
ISR_ERR   10
ISR_ERR   11
ISR_ERR   12
ISR_ERR   13
ISR_ERR   14
ISR_NOERR 15
ISR_NOERR 16
ISR_ERR   17
ISR_NOERR 18
ISR_NOERR 19
ISR_NOERR 32                                /* IRQ0, the PIT, after the PIC remap */

isr_common:
    pusha
    push %ds
    push %es
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    push %esp                               /* struct frame * */
    call isr_handler
    add $4, %esp
    pop %es
    pop %ds
    popa
    add $8, %esp                            /* vector and error code */
    iret

    .section .rodata
    .global isr_table
isr_table:                                  /* vectors 0-19 */
    .long isr0, isr1, isr2, isr3, isr4, isr5, isr6, isr7, isr8, isr9
    .long isr10, isr11, isr12, isr13, isr14, isr15, isr16, isr17, isr18, isr19
    .global isr_timer
isr_timer:
    .long isr32

    .section .note.GNU-stack, "", @progbits
