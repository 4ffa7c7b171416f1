// nanobench -- the nanobenchmarks of virtualization overhead, one loop per operation.
//
// Two published sets, so that `vmm bench` can put the model beside the papers:
//
//   Adams & Agesen, "A Comparison of Software and Hardware Techniques for x86
//   Virtualization" (ASPLOS 2006), section 5.2:
//     syscall   int 0x80 from ring 3 to a kernel handler and back (IRET)
//     in        a read of an emulated port (the 16550 line status register)
//     cr8wr     a write of the task-priority register; 32-bit x86 has no CR8, so it is
//               the local APIC's TPR at 0xfee00080 (what CR8 aliases in 64-bit mode)
//     callret   a near CALL and RET
//     pgfault   a page fault on a not-present page, which the handler maps (the
//               faulting load then runs again); the page is unmapped for the next round
//     divzero   a #DE from DIV by zero; the handler skips the DIV
//     ptemod    a change to a present PTE (the page is remapped to the other of two
//               frames), INVLPG, and a load through the new mapping. Adams & Agesen
//               timed the store alone; a kernel also flushes and uses the entry, and a
//               shadow-paging VMM only traps a write to a table it has walked since.
//
//   kvm-unit-tests x86/vmexit.c, the rows a 32-bit guest can have:
//     cpuid, vmcall, inl (32-bit read of COM1's first four registers), outl (32-bit
//     write to the POST port 0x80, as Linux's I/O delay), rdmsr and wrmsr (IA32_PAT),
//     mov_dr (DR7), toggle_cr0_wp, toggle_cr4_pge (each: flip the bit, restore it).
//
// The Multiboot command line picks the test and the iteration count:
//
//     vmm run nanobench --cmdline "syscall 100000"
//
// and with no test named every test of the default run goes DEFAULT_ITERATIONS times
// (the transcript).
// Every test runs with paging on (the low 4 MiB identity-mapped, user-accessible; the
// local APIC page mapped uncached), so they all see the same machine. Nothing printed
// depends on the mode or the machine: the loops print only their names and counts.
//
// VMCALL outside VMX non-root operation raises #UD: the #UD handler skips its three
// bytes, so the test measures the hypervisor's answer where there is one and the
// fault where there is none.

%include "kernel.inc"

%define DEFAULT_ITERATIONS 10
%define LAPIC_TPR          0xfee00080
%define PCD_PWT            0x018           // PTE: cache disable, write through (device page)
%define TEST_PAGE          0x40000000      // pgfault: mapped on demand
%define REMAP_PAGE         0x40001000      // ptemod: remapped between two frames
%define POST_PORT          0x80
%define IA32_PAT           0x277
%define DR7_FIXED_1        0x00000400
%define CR4_PGE            0x00000080
%define SYS_null           0
%define SYS_exit           1

kmain:
    PRINT "nanobench: virtualization nanobenchmarks\n"
    call parse_cmdline
    SET_HANDLER VEC_DE, de_handler
    SET_HANDLER VEC_UD, ud_handler
    SET_HANDLER VEC_PF, pf_handler
    SET_GATE 0x80, GATE_INT_USER        // int 0x80 from ring 3
    SET_HANDLER 0x80, syscall_handler
    call paging_on
    call run_selected                   // workload.inc
    test eax, eax
    jz kmain_ok
    PRINT "nanobench: unknown test on the command line\n"
    EXIT EXIT_FAIL
kmain_ok:
    PRINT "nanobench: done\n"
    EXIT EXIT_OK

// ---- the command line and the low identity map (workload.inc) -----------------------------
%include "workload.inc"

// ---- paging: identity 0-4 MiB (user-accessible), the APIC page, the test pages ----------
paging_on:
    pushad
    call map_low_identity                // workload.inc
    mov eax, pt_low
    or eax, PTE_P | PTE_W | PTE_U
    mov edi, page_dir
    PV_SET_PDE edi, eax
    mov eax, LAPIC_TPR & 0xfffff000
    or eax, PTE_P | PTE_W | PCD_PWT
    mov edi, pt_apic + ((LAPIC_TPR >> 12) & 0x3ff) * 4
    PV_SET_PTE edi, eax
    mov eax, pt_apic
    or eax, PTE_P | PTE_W
    mov edi, page_dir + (LAPIC_TPR >> 22) * 4
    PV_SET_PDE edi, eax
    mov eax, frame_a                    // ptemod's page starts on frame_a
    or eax, PTE_P | PTE_W
    mov edi, pt_test + ((REMAP_PAGE >> 12) & 0x3ff) * 4
    PV_SET_PTE edi, eax
    mov eax, pt_test                    // TEST_PAGE's PTE stays 0: not present
    or eax, PTE_P | PTE_W
    mov edi, page_dir + (TEST_PAGE >> 22) * 4
    PV_SET_PDE edi, eax
    mov eax, page_dir
    PV_WRITE_CR3 eax
    PV_READ_CR0 eax
    or eax, CR0_PG
    PV_WRITE_CR0 eax
    popad
    ret

// ---- Adams & Agesen -------------------------------------------------------------------------

// syscall: ring 3 runs `int 0x80` [iterations] times, then exits through SYS_exit.
test_syscall:
    pushad
    mov dword ptr [kernel_saved_esp], esp
    push USER_DS                        // SS
    mov eax, user_stack_top
    push eax                            // ESP
    push 0x00000002                     // EFLAGS: IF = 0, IOPL = 0
    push USER_CS                        // CS, RPL 3
    mov eax, user_syscall_loop
    push eax                            // EIP
    mov edx, USER_DS
    mov ds, edx
    mov es, edx
    mov esi, dword ptr [iterations]
    PV_IRET
syscall_returned:                       // SYS_exit lands here, on the kernel stack
    mov esp, dword ptr [kernel_saved_esp]
    mov edx, KERNEL_DS
    mov ds, edx
    mov es, edx
    mov fs, edx
    mov gs, edx
    popad
    ret

user_syscall_loop:                      // CPL 3
    mov eax, SYS_null
    int 0x80
    dec esi
    jnz user_syscall_loop
    mov eax, SYS_exit
    int 0x80                            // does not return

syscall_handler:                        // EBX = frame
    cmp dword ptr [ebx + F_EAX], SYS_exit
    je syscall_returned
    mov dword ptr [ebx + F_EAX], 0
    ret

// in: read the UART's line status register.
test_in:
    pushad
    mov esi, dword ptr [iterations]
    mov edx, COM1_LSR
test_in_loop:
    PV_INB
    dec esi
    jnz test_in_loop
    popad
    ret

// cr8wr: write the APIC task-priority register (alternately 0x10 and 0; left at 0).
test_cr8wr:
    pushad
    mov esi, dword ptr [iterations]
    xor eax, eax
test_cr8wr_loop:
    xor eax, 0x10
    PV_WRITE_TPR eax
    dec esi
    jnz test_cr8wr_loop
    xor eax, eax
    PV_WRITE_TPR eax
    popad
    ret

// callret: a near call to a bare RET.
test_callret:
    pushad
    mov esi, dword ptr [iterations]
test_callret_loop:
    call callret_target
    dec esi
    jnz test_callret_loop
    popad
    ret
callret_target:
    ret

// pgfault: load from TEST_PAGE (not present): #PF, pf_handler maps it, the load runs
// again; then unmap it (PTE = 0, INVLPG) for the next round.
test_pgfault:
    pushad
    mov esi, dword ptr [iterations]
    mov edi, pt_test + ((TEST_PAGE >> 12) & 0x3ff) * 4
    mov ebp, TEST_PAGE
test_pgfault_loop:
    mov eax, dword ptr [TEST_PAGE]      // faults
    xor eax, eax
    PV_SET_PTE edi, eax
    PV_INVLPG ebp
    dec esi
    jnz test_pgfault_loop
    popad
    ret

pf_handler:                             // map TEST_PAGE on frame_a; anything else: fatal
    PV_READ_CR2 eax
    cmp eax, TEST_PAGE
    jne default_handler
    mov eax, frame_a
    or eax, PTE_P | PTE_W
    mov edi, pt_test + ((TEST_PAGE >> 12) & 0x3ff) * 4
    PV_SET_PTE edi, eax
    ret

// divzero: DIV by zero (the divisor EDI is 0); de_handler skips the 2-byte DIV.
test_divzero:
    pushad
    mov esi, dword ptr [iterations]
    xor edi, edi
test_divzero_loop:
    xor edx, edx
    mov eax, 1
    div edi                             // f7 f7: #DE
    dec esi
    jnz test_divzero_loop
    popad
    ret

de_handler:
    add dword ptr [ebx + F_EIP], 2
    ret

// ptemod: remap REMAP_PAGE to the other frame, INVLPG it, load through it.
test_ptemod:
    pushad
    mov esi, dword ptr [iterations]
    mov edi, pt_test + ((REMAP_PAGE >> 12) & 0x3ff) * 4
    mov ebp, REMAP_PAGE
    mov ecx, frame_a
    xor ecx, frame_b                    // ECX = frame_a ^ frame_b
test_ptemod_loop:
    mov eax, dword ptr [edi]            // reading a PTE needs no pvop
    xor eax, ecx
    PV_SET_PTE edi, eax
    PV_INVLPG ebp
    mov eax, dword ptr [REMAP_PAGE]
    dec esi
    jnz test_ptemod_loop
    popad
    ret

// ---- kvm-unit-tests vmexit ------------------------------------------------------------------

test_cpuid:
    pushad
    mov esi, dword ptr [iterations]
test_cpuid_loop:
    xor eax, eax
    xor ecx, ecx
    PV_CPUID
    dec esi
    jnz test_cpuid_loop
    popad
    ret

test_vmcall:
    pushad
    mov esi, dword ptr [iterations]
test_vmcall_loop:
    xor eax, eax
    .byte 0x0f, 0x01, 0xc1              // vmcall (keystone 0.9.2 does not know it)
    dec esi
    jnz test_vmcall_loop
    popad
    ret

// ud_handler: #UD from a VMCALL with no hypervisor to take it: skip its 3 bytes.
ud_handler:
    mov esi, dword ptr [ebx + F_EIP]
    cmp word ptr [esi], 0x010f
    jne default_handler
    cmp byte ptr [esi + 2], 0xc1
    jne default_handler
    add dword ptr [ebx + F_EIP], 3
    ret

test_inl:
    pushad
    mov esi, dword ptr [iterations]
    mov edx, COM1
test_inl_loop:
    PV_INL
    dec esi
    jnz test_inl_loop
    popad
    ret

test_outl:
    pushad
    mov esi, dword ptr [iterations]
    mov edx, POST_PORT
    xor eax, eax
test_outl_loop:
    PV_OUTL
    dec esi
    jnz test_outl_loop
    popad
    ret

test_rdmsr:
    pushad
    mov esi, dword ptr [iterations]
    mov ecx, IA32_PAT
test_rdmsr_loop:
    PV_RDMSR
    dec esi
    jnz test_rdmsr_loop
    popad
    ret

test_wrmsr:
    pushad
    mov ecx, IA32_PAT
    PV_RDMSR                            // write back what is there
    mov esi, dword ptr [iterations]
test_wrmsr_loop:
    PV_WRMSR
    dec esi
    jnz test_wrmsr_loop
    popad
    ret

test_mov_dr:
    pushad
    mov esi, dword ptr [iterations]
    mov eax, DR7_FIXED_1
test_mov_dr_loop:
    PV_WRITE_DR 7, eax
    dec esi
    jnz test_mov_dr_loop
    popad
    ret

test_toggle_cr0_wp:
    pushad
    mov esi, dword ptr [iterations]
    PV_READ_CR0 edi
    mov ebp, edi
    xor ebp, CR0_WP
test_toggle_cr0_wp_loop:
    PV_WRITE_CR0 ebp
    PV_WRITE_CR0 edi
    dec esi
    jnz test_toggle_cr0_wp_loop
    popad
    ret

test_toggle_cr4_pge:
    pushad
    mov esi, dword ptr [iterations]
    PV_READ_CR4 edi
    mov ebp, edi
    xor ebp, CR4_PGE
test_toggle_cr4_pge_loop:
    PV_WRITE_CR4 ebp
    PV_WRITE_CR4 edi
    dec esi
    jnz test_toggle_cr4_pge_loop
    popad
    ret

// ---- data ------------------------------------------------------------------------------------
    .balign 4, 0
test_table:                             // (name, function, in the default run), papers' order
    .long name_syscall, test_syscall, 1
    .long name_in, test_in, 1
    .long name_cr8wr, test_cr8wr, 1
    .long name_callret, test_callret, 1
    .long name_pgfault, test_pgfault, 1
    .long name_divzero, test_divzero, 1
    .long name_ptemod, test_ptemod, 1
    .long name_cpuid, test_cpuid, 1
    .long name_vmcall, test_vmcall, 1
    .long name_inl, test_inl, 1
    .long name_outl, test_outl, 1
    .long name_rdmsr, test_rdmsr, 1
    .long name_wrmsr, test_wrmsr, 1
    .long name_mov_dr, test_mov_dr, 1
    .long name_toggle_cr0_wp, test_toggle_cr0_wp, 1
    .long name_toggle_cr4_pge, test_toggle_cr4_pge, 1
    .long 0, 0, 0
name_syscall:       .asciz "syscall"
name_in:            .asciz "in"
name_cr8wr:         .asciz "cr8wr"
name_callret:       .asciz "callret"
name_pgfault:       .asciz "pgfault"
name_divzero:       .asciz "divzero"
name_ptemod:        .asciz "ptemod"
name_cpuid:         .asciz "cpuid"
name_vmcall:        .asciz "vmcall"
name_inl:           .asciz "inl"
name_outl:          .asciz "outl"
name_rdmsr:         .asciz "rdmsr"
name_wrmsr:         .asciz "wrmsr"
name_mov_dr:        .asciz "mov_dr"
name_toggle_cr0_wp: .asciz "toggle_cr0_wp"
name_toggle_cr4_pge: .asciz "toggle_cr4_pge"

    .balign 4, 0
iterations:         .long 0
selected:           .long 0
quiet:              .long 0
kernel_saved_esp:   .long 0

%include "kernel_bss.inc"

    .balign 4096, 0
page_dir:   .space 4096
pt_low:     .space 4096                 // 0-4 MiB identity
pt_apic:    .space 4096                 // 0xfec00000-0xfeffffff: the local APIC page
pt_test:    .space 4096                 // 0x40000000-0x403fffff: TEST_PAGE, REMAP_PAGE
frame_a:    .space 4096
frame_b:    .space 4096
user_stack: .space 4096
user_stack_top:
