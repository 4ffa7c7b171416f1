// macrobench -- small "macro" workloads for the overhead report, one loop per workload.
//
// Each iteration of each workload is a unit of work whose virtualization cost differs
// in kind, so that the modes order differently on each:
//
//     forkwait  process creation and exit, as Adams & Agesen's forkwait: a child address
//               space is built (page directory entries, 16 PTEs mapped read-only as
//               after fork's copy-on-write), CR3 switched to it, the child runs at CPL 3
//               and writes each of its 16 pages (16 copy-on-write faults, each making the
//               PTE writable and INVLPG'ing it), exits with a system call, and the
//               parent switches back and tears the tables down: page-table churn
//     compute   a checksum over a 4 KiB buffer: no privileged operation at all
//     iobound   reads the ten CMOS clock registers (index OUT, data IN: 20 port
//               accesses) and folds them into a checksum, as a polling driver would
//     tlbmiss   a working set larger than the TLB: one load from each of 2048 pages
//               (8 MiB), then a CR3 reload (a context switch's flush): every load
//               misses the TLB and walks the page tables
//
// The Multiboot command line picks the workload and the iteration count:
//
//     vmm run macrobench --cmdline "tlbmiss 20"
//
// and with none named every workload runs DEFAULT_ITERATIONS times (the transcript).
// Nothing printed depends on the mode, the clock or the machine.

%include "kernel.inc"

%define DEFAULT_ITERATIONS 2
%define CHILD_BASE         0x40000000      // the child's 16 pages (forkwait)
%define CHILD_PAGES        16
%define BIG_BASE           0x80000000      // tlbmiss: 2048 pages...
%define BIG_PAGES          2048
%define BIG_FRAMES         0x00800000      // ...on the frames from 8 MiB up
%define CMOS_INDEX         0x70
%define CMOS_DATA          0x71
%define SYS_exit           1

kmain:
    PRINT "macrobench: macro workloads\n"
    call parse_cmdline
    SET_HANDLER VEC_PF, pf_handler
    SET_GATE 0x80, GATE_INT_USER
    SET_HANDLER 0x80, syscall_handler
    call paging_on
    call run_selected                   // workload.inc
    test eax, eax
    jz kmain_ok
    PRINT "macrobench: unknown workload on the command line\n"
    EXIT EXIT_FAIL
kmain_ok:
    PRINT "macrobench: done\n"
    EXIT EXIT_OK

// ---- the command line and the low identity map (workload.inc) -----------------------------
%include "workload.inc"

// ---- paging: identity 0-4 MiB (user-accessible) and the tlbmiss region --------------------
paging_on:
    pushad
    call map_low_identity                // workload.inc
    xor ecx, ecx
paging_fill_big:                        // pt_big[i] = (BIG_FRAMES + (i << 12)) | P | W
    mov eax, ecx
    shl eax, 12
    add eax, BIG_FRAMES
    or eax, PTE_P | PTE_W
    lea edi, [pt_big + ecx*4]
    PV_SET_PTE edi, eax
    inc ecx
    cmp ecx, BIG_PAGES
    jb paging_fill_big
    mov eax, pt_low
    or eax, PTE_P | PTE_W | PTE_U
    mov edi, page_dir
    PV_SET_PDE edi, eax
    mov eax, pt_big
    or eax, PTE_P | PTE_W
    mov edi, page_dir + (BIG_BASE >> 22) * 4
    PV_SET_PDE edi, eax
    add eax, 4096
    add edi, 4
    PV_SET_PDE edi, eax
    mov eax, page_dir
    PV_WRITE_CR3 eax
    PV_READ_CR0 eax
    or eax, CR0_PG
    PV_WRITE_CR0 eax
    popad
    ret

// ---- forkwait ---------------------------------------------------------------------------------
test_forkwait:
    pushad
    mov ebp, dword ptr [iterations]
forkwait_loop:
    // fork: the child's page directory shares the kernel's table, gets its own for
    // CHILD_BASE, whose PTEs map the child's frames read-only (copy-on-write)
    mov eax, pt_low
    or eax, PTE_P | PTE_W | PTE_U
    mov edi, child_dir
    PV_SET_PDE edi, eax
    mov eax, child_pt
    or eax, PTE_P | PTE_W | PTE_U
    mov edi, child_dir + (CHILD_BASE >> 22) * 4
    PV_SET_PDE edi, eax
    xor ecx, ecx
forkwait_map:
    mov eax, ecx
    shl eax, 12
    add eax, child_frames
    or eax, PTE_P | PTE_U               // read-only: the first write faults
    lea edi, [child_pt + ecx*4]
    PV_SET_PTE edi, eax
    inc ecx
    cmp ecx, CHILD_PAGES
    jb forkwait_map
    mov eax, child_dir
    PV_WRITE_CR3 eax
    // run the child at CPL 3 until it calls exit
    mov dword ptr [kernel_saved_esp], esp
    push USER_DS
    mov eax, user_stack_top
    push eax
    push 0x00000002
    push USER_CS
    mov eax, child_main
    push eax
    mov edx, USER_DS
    mov ds, edx
    mov es, edx
    PV_IRET
child_exited:
    mov esp, dword ptr [kernel_saved_esp]
    mov edx, KERNEL_DS
    mov ds, edx
    mov es, edx
    mov fs, edx
    mov gs, edx
    // wait: back to the parent's address space, tear the child's down
    mov eax, page_dir
    PV_WRITE_CR3 eax
    xor ecx, ecx
    xor eax, eax
forkwait_unmap:
    lea edi, [child_pt + ecx*4]
    PV_SET_PTE edi, eax
    inc ecx
    cmp ecx, CHILD_PAGES
    jb forkwait_unmap
    mov edi, child_dir + (CHILD_BASE >> 22) * 4
    PV_SET_PDE edi, eax
    mov edi, child_dir
    PV_SET_PDE edi, eax
    dec ebp
    jnz forkwait_loop
    popad
    ret

child_main:                             // CPL 3: write one dword into each page, exit
    mov edi, CHILD_BASE
    mov ecx, CHILD_PAGES
child_touch:
    mov dword ptr [edi], ecx
    add edi, 4096
    dec ecx
    jnz child_touch
    mov eax, SYS_exit
    int 0x80

syscall_handler:
    cmp dword ptr [ebx + F_EAX], SYS_exit
    je child_exited
    ret

// pf_handler: a write to a read-only child page (copy-on-write): make it writable.
pf_handler:
    PV_READ_CR2 eax
    mov ecx, eax
    sub ecx, CHILD_BASE
    cmp ecx, CHILD_PAGES * 4096
    jae default_handler
    shr ecx, 12
    lea edi, [child_pt + ecx*4]
    mov ecx, dword ptr [edi]
    or ecx, PTE_W
    PV_SET_PTE edi, ecx
    PV_INVLPG eax
    ret

// ---- compute ----------------------------------------------------------------------------------
test_compute:
    pushad
    mov ebp, dword ptr [iterations]
    mov eax, dword ptr [checksum]
compute_loop:
    mov esi, compute_buffer
    mov ecx, 1024
compute_word:
    add eax, dword ptr [esi]
    rol eax, 5
    xor dword ptr [esi], eax
    add esi, 4
    dec ecx
    jnz compute_word
    dec ebp
    jnz compute_loop
    mov dword ptr [checksum], eax       // kept, never printed: it depends on N
    popad
    ret

// ---- iobound ----------------------------------------------------------------------------------
test_iobound:
    pushad
    mov ebp, dword ptr [iterations]
    xor ebx, ebx
iobound_loop:
    xor ecx, ecx
iobound_register:                       // CMOS 0..9: seconds ... year
    mov edx, CMOS_INDEX
    mov eax, ecx
    PV_OUTB
    mov edx, CMOS_DATA
    PV_INB
    movzx eax, al
    add ebx, eax
    rol ebx, 3
    inc ecx
    cmp ecx, 10
    jb iobound_register
    dec ebp
    jnz iobound_loop
    popad                               // the clock's values are not printed
    ret

// ---- tlbmiss ----------------------------------------------------------------------------------
test_tlbmiss:
    pushad
    mov ebp, dword ptr [iterations]
tlbmiss_loop:
    mov esi, BIG_BASE
    mov ecx, BIG_PAGES
tlbmiss_page:
    mov eax, dword ptr [esi]
    add esi, 4096
    dec ecx
    jnz tlbmiss_page
    PV_READ_CR3 eax
    PV_WRITE_CR3 eax                    // flush the TLB
    dec ebp
    jnz tlbmiss_loop
    popad
    ret

// ---- data ------------------------------------------------------------------------------------
    .balign 4, 0
test_table:                             // (name, function, in the default run)
    .long name_forkwait, test_forkwait, 1
    .long name_compute, test_compute, 1
    .long name_iobound, test_iobound, 1
    .long name_tlbmiss, test_tlbmiss, 1
    .long 0, 0, 0
name_forkwait:      .asciz "forkwait"
name_compute:       .asciz "compute"
name_iobound:       .asciz "iobound"
name_tlbmiss:       .asciz "tlbmiss"

    .balign 4, 0
iterations:         .long 0
selected:           .long 0
quiet:              .long 0
kernel_saved_esp:   .long 0
checksum:           .long 0               // compute's result

%include "kernel_bss.inc"

    .balign 4096, 0
page_dir:       .space 4096
pt_low:         .space 4096             // 0-4 MiB identity
pt_big:         .space 8192             // BIG_BASE: 2048 PTEs, two tables
child_dir:      .space 4096
child_pt:       .space 4096
child_frames:   .space CHILD_PAGES * 4096
compute_buffer: .space 4096
user_stack:     .space 4096
user_stack_top:
