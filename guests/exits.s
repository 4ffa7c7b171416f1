// exits -- every operation that a VT-x hypervisor can turn into a VM exit, once each.
//
// Run natively, each operation is answered by the (emulated) hardware; under the `vtx`
// mode each one leaves the guest (a VM exit), the VMM emulates it and resumes the guest
// after it (VM entry). The transcript therefore shows what the VMM answered. Every
// section starts at a global label (exits_cpuid, exits_io, ... exits_done) and says which
// exit it causes: the basic exit reason, with its number, of Intel SDM Vol. 3 Appendix C.
//
// Whether an operation really exits depends on the VMCS controls: CPUID, INVD, GETSEC
// and VMCALL always do; HLT, INVLPG, RDTSC, MOV DR, descriptor-table instructions,
// I/O, MSRs and CR accesses only when the hypervisor asks for it (primary/secondary
// processor-based controls, I/O and MSR bitmaps, CR0/CR4 guest-host masks, CR3-target
// values); exceptions by the exception bitmap; external interrupts by the pin-based
// "external-interrupt exiting" control.
//
// Nothing printed depends on real time, the amount of RAM or the TSC: the TSC section
// prints only whether time moved forward. What does depend on the CPU model (the CPUID
// answers, CR0/CR4 bits at boot) is exactly what this guest exists to show; its golden
// transcript is the one of our native mode (QEMU's CPU says other things).

%include "kernel.inc"

%define POST_PORT          0x80     // POST diagnostic port: no device on our board
%define UNUSED_PORT        0x84     // a DMA page register slot nobody decodes
%define COM1_SCR           0x3ff    // 16550 scratch register: keeps any byte written
%define IA32_SYSENTER_CS   0x174
%define IA32_SYSENTER_ESP  0x175
%define CPUID_HV_BASE      0x40000000   // hypervisor leaves (KVM, Xen, Hyper-V, VMware...)
%define CPUID1_ECX_HV      31           // CPUID.1:ECX bit 31: "running under a hypervisor"
%define DR7_FIXED_1        0x00000400   // DR7 bit 10 reads as 1; L0-L3/G0-G3 = 0: all off
%define PIT_ONESHOT_COUNT  1000         // ~838 us at 1.193182 MHz
%define PIT_CW_CH0_MODE0   0x30         // channel 0, lobyte/hibyte, mode 0, binary

kmain:
    PRINT "exits: one of each operation that VT-x can turn into a VM exit\n"
    SET_HANDLER VEC_BP, bp_handler
    SET_HANDLER VEC_UD, ud_handler
    SET_HANDLER IRQ_BASE + 0, irq0_handler
    SET_HANDLER IRQ_BASE + 7, spurious_handler

// ---- 1. CPUID: exit reason CPUID (10), unconditional in VMX non-root operation ---------
exits_cpuid:
    PRINT "\n[cpuid]\n"
    xor eax, eax
    xor ecx, ecx
    PV_CPUID                        // leaf 0: EAX = max basic leaf, vendor in EBX, EDX, ECX
    mov dword ptr [sig_buf + 0], ebx
    mov dword ptr [sig_buf + 4], edx
    mov dword ptr [sig_buf + 8], ecx
    PRINT "leaf 0x00000000: max leaf="
    call print_hex
    PRINT " vendor=\""
    call print_sig
    PRINT "\"\n"

    mov eax, 1
    xor ecx, ecx
    PV_CPUID                        // leaf 1: feature flags; ECX bit 31 is reserved for
    PRINT "leaf 0x00000001: hypervisor present: "   // hypervisors to set
    mov eax, ecx
    shr eax, CPUID1_ECX_HV
    call print_dec
    call print_nl

    mov eax, CPUID_HV_BASE
    xor ecx, ecx
    PV_CPUID                        // EAX = max hypervisor leaf, signature EBX, ECX, EDX
    mov dword ptr [sig_buf + 0], ebx
    mov dword ptr [sig_buf + 4], ecx
    mov dword ptr [sig_buf + 8], edx
    PRINT "leaf 0x40000000: EAX="
    call print_hex
    PRINT " signature=\""
    call print_sig
    PRINT "\"\n"

// ---- 2. port I/O: exit reason IO_INSTRUCTION (30), by the I/O bitmaps or ---------------
//         "unconditional I/O exiting"; the qualification holds port, size and direction
exits_io:
    PRINT "\n[io]\n"
    mov edx, POST_PORT
    xor eax, eax
    PV_OUTB                         // out 0x80, al: nobody listens, the write is dropped
    PRINT "out 0x80, al: done\n"
    mov eax, 0x12345678
    PV_INB                          // in al, 0x80: an undecoded port floats to all ones
    PRINT "in al, 0x80: "
    call print_hex8
    call print_nl
    mov edx, COM1_SCR
    mov al, 0x5a
    PV_OUTB                         // the UART's scratch register stores the byte...
    mov eax, 0x12345678
    PV_INB                          // ...and gives it back
    PRINT "COM1 scratch 0x3ff: wrote 0x5a, read "
    call print_hex8
    call print_nl
    mov edx, UNUSED_PORT
    mov eax, 0x12345678
    PV_INW                          // in ax, dx: a 16-bit access
    PRINT "in ax, 0x84: "
    call print_hex16
    call print_nl

// ---- 3. MSRs: exit reasons MSR_READ (31) and MSR_WRITE (32), by the MSR bitmaps --------
exits_msr:
    PRINT "\n[msr]\n"
    mov ecx, IA32_SYSENTER_CS
    mov eax, 0x10
    xor edx, edx
    PV_WRMSR                        // IA32_SYSENTER_CS = KERNEL_DS (any selector will do)
    xor eax, eax
    mov edx, 0xdeadbeef
    PV_RDMSR
    PRINT "wrmsr 0x174 (IA32_SYSENTER_CS) = 0x10; rdmsr: EDX:EAX="
    call print_edx_eax
    call print_nl
    mov ecx, IA32_SYSENTER_ESP
    mov eax, 0x00123000
    xor edx, edx
    PV_WRMSR
    xor eax, eax
    mov edx, 0xdeadbeef
    PV_RDMSR
    PRINT "wrmsr 0x175 (IA32_SYSENTER_ESP) = 0x00123000; rdmsr: EDX:EAX="
    call print_edx_eax
    call print_nl

// ---- 4. control registers: exit reason CR_ACCESS (28). MOV to CR0/CR4 exits when it -----
//         changes a bit the guest/host mask owns (reads of those bits come from the read
//         shadow), MOV to/from CR3 by "CR3-load/-store exiting"; CLTS and LMSW too.
exits_cr:
    PRINT "\n[cr]\n"
    PV_READ_CR0 eax
    PRINT "cr0="
    call print_hex
    mov esi, eax                    // keep the original
    or eax, CR0_WP
    PV_WRITE_CR0 eax                // toggle CR0.WP on...
    PV_READ_CR0 eax
    PRINT "; with WP set: "
    call print_hex
    PV_WRITE_CR0 esi                // ...and off again
    PV_READ_CR0 eax
    PRINT "; restored: "
    call print_hex
    call print_nl

    PV_READ_CR4 eax
    PRINT "cr4="
    call print_hex
    mov esi, eax
    or eax, CR4_PSE
    PV_WRITE_CR4 eax
    PV_READ_CR4 eax
    PRINT "; with PSE set: "
    call print_hex
    PV_WRITE_CR4 esi
    PV_READ_CR4 eax
    PRINT "; restored: "
    call print_hex
    call print_nl

    // Paging on, so that CR3 (and INVLPG below) mean something: one page table maps
    // the low 4 MiB 1:1 (this image included). It stays on until the end.
    xor ecx, ecx
exits_cr_fill:                      // pt_low[i] = (i << 12) | P | W
    mov eax, ecx
    shl eax, 12
    or eax, PTE_P | PTE_W
    lea edi, [pt_low + ecx*4]
    PV_SET_PTE edi, eax
    inc ecx
    cmp ecx, 1024
    jb exits_cr_fill
    mov eax, pt_low
    or eax, PTE_P | PTE_W
    mov edi, page_dir
    PV_SET_PDE edi, eax
    mov eax, page_dir
    PV_WRITE_CR3 eax
    PV_READ_CR0 eax
    or eax, CR0_PG
    PV_WRITE_CR0 eax
    PV_READ_CR0 eax
    PRINT "paging on: cr0="
    call print_hex
    PV_READ_CR3 eax                 // MOV from CR3
    PRINT " cr3="
    call print_hex
    PV_WRITE_CR3 eax                // MOV to CR3, same value: flushes the TLB
    PRINT "; cr3 reloaded\n"

// ---- 5. INVLPG: exit reason INVLPG (14), by "INVLPG exiting" (shadow paging needs it; ---
//         with EPT it is usually off); the qualification is the linear address
exits_invlpg:
    PRINT "\n[invlpg]\n"
    mov eax, dword ptr [sig_buf]    // touch the page: a TLB entry to invalidate
    mov eax, sig_buf
    PV_INVLPG eax
    PRINT "invlpg "
    call print_hex
    PRINT ": invlpg done\n"

// ---- 6. RDTSC: exit reason RDTSC (16), by "RDTSC exiting" (otherwise the TSC offset ----
//         and multiplier apply without an exit). Only the order of the values is printed.
exits_rdtsc:
    PRINT "\n[rdtsc]\n"
    rdtsc                           // not privileged (unless CR4.TSD): no pvop
    mov esi, eax
    mov edi, edx
    rdtsc
    sub eax, esi                    // EDX:EAX = second - first
    sbb edx, edi
    mov ecx, 0                      // increases <=> difference > 0 (unsigned, no borrow)
    jc exits_rdtsc_print
    or eax, edx
    jz exits_rdtsc_print
    mov ecx, 1
exits_rdtsc_print:
    PRINT "tsc increases: "
    PRINT_DEC ecx
    call print_nl

// ---- 7. debug registers: exit reason DR_ACCESS (29), by "MOV-DR exiting" ----------------
exits_dr:
    PRINT "\n[dr]\n"
    mov eax, 0x00100000
    PV_WRITE_DR 0, eax              // a breakpoint address...
    mov eax, DR7_FIXED_1
    PV_WRITE_DR 7, eax              // ...that DR7 leaves disabled
    xor eax, eax
    PV_READ_DR 0, eax
    PRINT "dr0="
    call print_hex
    xor eax, eax
    PV_READ_DR 7, eax
    PRINT " dr7="
    call print_hex
    call print_nl

// ---- 8. descriptor tables: exit reasons GDTR_IDTR (46) for SGDT/SIDT/LGDT/LIDT and -----
//         LDTR_TR (47) for SLDT/STR/LLDT/LTR, by "descriptor-table exiting". The bases
//         are addresses in this image: only the limits and selectors are printed.
exits_dt:
    PRINT "\n[dt]\n"
    SGDT_M dt_buf                   // sensitive, not privileged: no pvop (P&G's problem)
    PRINT "sgdt limit="
    PRINT_HEX16 [dt_buf]
    SIDT_M dt_buf
    PRINT " sidt limit="
    PRINT_HEX16 [dt_buf]
    mov eax, 0xffffffff
    PV_STR eax                      // TR: loaded by gdt_init at boot (LTR)
    PRINT " str="
    call print_hex16
    mov eax, 0xffffffff
    PV_SLDT eax                     // no LDT: the null selector
    PRINT " sldt="
    call print_hex16
    call print_nl

// ---- 9. exceptions: exit reason EXCEPTION_NMI (0), for vectors set in the exception ----
//         bitmap; the VMM reflects them into the guest by event injection
exits_exceptions:
    PRINT "\n[exceptions]\n"
exits_int3:
    int3                            // #BP, a trap: resumes after the int3
exits_ud2:
    ud2                             // #UD, a fault: the handler skips the 2 bytes
    PRINT "both handled, continuing\n"

// ---- 10. VMCALL: exit reason VMCALL (18), unconditional in VMX non-root operation: ------
//          a hypercall. Outside VMX non-root operation it is #UD.
exits_vmcall:
    PRINT "\n[vmcall]\n"
    mov byte ptr [vmcall_ud], 0
    xor eax, eax                    // hypercall number 0
exits_vmcall_insn:
    .byte 0x0f, 0x01, 0xc1          // vmcall (keystone 0.9.2 does not know it)
    cmp byte ptr [vmcall_ud], 0
    jne exits_hlt                   // the #UD handler has reported it
    PRINT "vmcall returned EAX="
    call print_hex
    call print_nl

// ---- 11. HLT and an interrupt: exit reasons HLT (12), by "HLT exiting", and ------------
//          EXTERNAL_INTERRUPT (1), by "external-interrupt exiting" (the host's own IRQ;
//          the VMM then injects the guest's virtual IRQ0)
exits_hlt:
    PRINT "\n[hlt]\n"
    OUTB_IMM PIC1_CMD, 0x11         // ICW1: edge triggered, cascade, ICW4 follows
    OUTB_IMM PIC2_CMD, 0x11
    OUTB_IMM PIC1_DATA, IRQ_BASE    // ICW2: IRQ0-7 -> 0x20-0x27
    OUTB_IMM PIC2_DATA, IRQ_BASE + 8    //   IRQ8-15 -> 0x28-0x2f
    OUTB_IMM PIC1_DATA, 0x04        // ICW3: slave on IRQ2
    OUTB_IMM PIC2_DATA, 0x02
    OUTB_IMM PIC1_DATA, 0x01        // ICW4: 8086 mode
    OUTB_IMM PIC2_DATA, 0x01
    OUTB_IMM PIC1_DATA, 0xfe        // only IRQ0
    OUTB_IMM PIC2_DATA, 0xff
    OUTB_IMM PIT_CMD, PIT_CW_CH0_MODE0      // one shot: OUT0 rises once, at terminal count
    OUTB_IMM PIT_CH0, PIT_ONESHOT_COUNT & 0xff
    OUTB_IMM PIT_CH0, PIT_ONESHOT_COUNT >> 8
    // An IRQ0 raised before the STI waits in the PIC's request register; STI's one-
    // instruction shadow keeps it out until HLT, which it then ends. Either way: once.
exits_hlt_insn:
    PV_SAFE_HALT                    // sti; hlt
    PV_CLI
    OUTB_IMM PIC1_DATA, 0xff        // mask IRQ0 again
    PRINT "woke up; irq0 masked again\n"

// ---- 12. leave through isa-debug-exit (an IO_INSTRUCTION exit like any other) ----------
exits_done:
    PRINT "\nexits: done\n"
    EXIT EXIT_OK

// ---- helpers and handlers -----------------------------------------------------------------

// print_sig: write the 12 bytes of sig_buf, '.' for anything not printable ASCII.
print_sig:
    push eax
    push ecx
    push esi
    mov esi, sig_buf
    mov ecx, 12
print_sig_loop:
    mov al, byte ptr [esi]
    cmp al, 0x20
    jb print_sig_dot
    cmp al, 0x7e
    jbe print_sig_put
print_sig_dot:
    mov al, '.'
print_sig_put:
    call putc
    inc esi
    dec ecx
    jnz print_sig_loop
    pop esi
    pop ecx
    pop eax
    ret

// print_edx_eax: write EDX:EAX as "0x%08x:0x%08x".
print_edx_eax:
    PRINT_HEX edx
    push eax
    mov al, ':'
    call putc
    pop eax
    call print_hex
    ret

// bp_handler: #BP is a trap, the frame's EIP is already past the int3.
bp_handler:
    PRINT "int3: vector "
    mov eax, dword ptr [ebx + F_VECTOR]
    call print_hex8
    PRINT " (#BP), resumed after it\n"
    ret

// ud_handler: #UD from ud2 (skip 2 bytes), or from a VMCALL that no hypervisor took:
// bytes 0f 01 c1 at the faulting EIP (skip 3 bytes and tell exits_vmcall).
ud_handler:
    mov esi, dword ptr [ebx + F_EIP]
    cmp word ptr [esi], 0x010f
    jne ud_handler_other
    cmp byte ptr [esi + 2], 0xc1
    jne ud_handler_other
    PRINT "vmcall: #UD (no hypervisor)\n"
    mov byte ptr [vmcall_ud], 1
    add dword ptr [ebx + F_EIP], 3
    ret
ud_handler_other:
    PRINT "ud2: vector "
    mov eax, dword ptr [ebx + F_VECTOR]
    call print_hex8
    PRINT " (#UD), skipped its 2 bytes\n"
    add dword ptr [ebx + F_EIP], 2
    ret

// irq0_handler: the PIT's one-shot interrupt ended the HLT.
irq0_handler:
    PRINT "irq0 at vector "
    mov eax, dword ptr [ebx + F_VECTOR]
    call print_hex8
    call print_nl
    OUTB_IMM PIC1_CMD, PIC_EOI
    ret

// spurious_handler: IRQ7 without a request behind it; not in service, no EOI.
spurious_handler:
    ret

    .balign 4, 0
sig_buf:    .space 12               // CPUID signatures
dt_buf:     .space 8                // SGDT/SIDT: limit (2 bytes), base (4 bytes)
vmcall_ud:  .byte 0                 // set by ud_handler when VMCALL raised #UD

%include "kernel_bss.inc"

    .balign 4096, 0
page_dir:   .space 4096             // PDE 0 -> pt_low
pt_low:     .space 4096             // 0-4 MiB identity, 4 KiB pages
