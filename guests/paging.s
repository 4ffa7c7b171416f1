// paging -- 32-bit two-level paging (CR0.PG, no PAE), page faults, TLB maintenance.
//
// A linear address splits 10 | 10 | 12: page-directory index, page-table index,
// offset. CR3 holds the physical address of the page directory. What to notice:
//
//   1. One physical page can have several virtual addresses: the low 4 MiB are mapped
//      twice, at 0x00000000 (identity) and at 0xC0000000 (a "higher half", as Linux
//      does), by pointing two PDEs at the same page table.
//   2. Code runs from either alias: EIP is a virtual address.
//   3. A not-present page raises #PF with CR2 = the address and an error code
//      (bit 0 P: protection vs not-present, bit 1 W/R, bit 2 U/S). The handler maps a
//      page and returns: the faulting instruction runs again ("demand paging").
//      The CPU sets the Accessed and Dirty bits in the PTE.
//   4. Not-present entries are never cached, so mapping needs no TLB flush -- but
//      UNmapping or changing a present entry does: INVLPG (one page) or a CR3 reload
//      (all non-global pages).
//   5. With CR4.PSE a PDE with PS=1 maps a whole 4 MiB page, no page table.

%include "kernel.inc"

%define HIGH_HALF   0xc0000000      // PDE 768
%define DEMAND_BASE 0x40000000      // PDE 256: pages appear on first touch
%define PSE_BASE    0x80000000      // PDE 512: one 4 MiB page -> physical 0

kmain:
    PRINT "paging: 32-bit two-level paging, no PAE\n"
    SET_HANDLER VEC_PF, pf_handler

    // ---- build the tables (paging still off: these are physical addresses) ---------
    xor ecx, ecx
fill_low:                           // pt_low[i] = (i << 12) | P | W : 0-4 MiB identity
    mov eax, ecx
    shl eax, 12
    or eax, PTE_P | PTE_W
    lea edi, [pt_low + ecx*4]
    PV_SET_PTE edi, eax
    inc ecx
    cmp ecx, 1024
    jb fill_low
    mov eax, pt_low
    or eax, PTE_P | PTE_W
    mov edi, page_dir + 0 * 4       // 0x00000000-0x003fffff
    PV_SET_PDE edi, eax
    mov edi, page_dir + 768 * 4     // 0xc0000000-0xc03fffff: the same page table
    PV_SET_PDE edi, eax
    mov eax, pt_demand              // 0x40000000-0x403fffff: a table of empty PTEs
    or eax, PTE_P | PTE_W
    mov edi, page_dir + 256 * 4
    PV_SET_PDE edi, eax

    mov eax, page_dir
    PV_WRITE_CR3 eax
    PV_READ_CR0 eax
    or eax, CR0_PG
    PV_WRITE_CR0 eax                // from the next instruction on, addresses are virtual
    PRINT "paging on, CR3="
    PV_READ_CR3 eax
    call print_hex
    call print_nl

    // ---- 1. two virtual addresses, one physical page -------------------------------
    PRINT "\n1. the same bytes through two mappings\n"
    mov esi, message
    call show_string
    mov esi, message + HIGH_HALF
    call show_string
    mov dword ptr [shared + HIGH_HALF], 0x600dcafe      // write via the higher half
    PRINT "   wrote 0x600dcafe at "
    PRINT_HEX shared + HIGH_HALF
    PRINT ", read at "
    PRINT_HEX shared
    PRINT ": "
    PRINT_HEX [shared]                                  // read via the identity map
    call print_nl

    // ---- 2. code through the alias ---------------------------------------------------
    PRINT "\n2. calling whoami at its identity and higher-half addresses\n"
    mov eax, whoami
    call eax
    mov eax, whoami + HIGH_HALF
    call eax

    // ---- 3. demand paging --------------------------------------------------------------
    PRINT "\n3. demand paging in "
    PRINT_HEX DEMAND_BASE
    PRINT "\n   write 0xcafe0001 to 0x40000000\n"
    mov dword ptr [DEMAND_BASE], 0xcafe0001
    PRINT "   read back "
    PRINT_HEX [DEMAND_BASE]
    PRINT "\n   read 0x40001004\n"
    mov eax, dword ptr [DEMAND_BASE + 0x1004]
    PRINT "   read "
    call print_hex
    PRINT "\n   PTE[0] = "
    PRINT_HEX [pt_demand + 0]
    PRINT " (A and D set: read and written), PTE[1] = "
    PRINT_HEX [pt_demand + 4]
    PRINT " (A set)\n"

    // ---- 4. unmap: the TLB still holds the old translation until INVLPG ----------------
    PRINT "\n4. unmap 0x40000000 (PTE = 0), INVLPG, read it again\n"
    mov edi, pt_demand
    xor eax, eax
    PV_SET_PTE edi, eax
    mov eax, DEMAND_BASE
    PV_INVLPG eax
    mov eax, dword ptr [DEMAND_BASE]
    PRINT "   read "
    call print_hex
    PRINT " (a fresh frame; the first one still holds 0xcafe0001)\n"

    // ---- 5. change a present PTE, then reload CR3 to flush the TLB ---------------------
    PRINT "\n5. point 0x40001000 at the first frame, reload CR3\n"
    mov eax, dword ptr [first_frame]
    or eax, PTE_P | PTE_W
    mov edi, pt_demand + 1 * 4
    PV_SET_PTE edi, eax
    PV_READ_CR3 eax
    PV_WRITE_CR3 eax                // flushes every non-global translation
    PRINT "   0x40001000 now reads "
    PRINT_HEX [DEMAND_BASE + 0x1000]
    call print_nl

    // ---- 6. a 4 MiB page ---------------------------------------------------------------
    PRINT "\n6. CR4.PSE and one 4 MiB page at "
    PRINT_HEX PSE_BASE
    call print_nl
    PV_READ_CR4 eax
    or eax, CR4_PSE
    PV_WRITE_CR4 eax
    mov edi, page_dir + 512 * 4
    mov eax, 0x00000000 | PTE_PS | PTE_P | PTE_W        // physical 0, 4 MiB
    PV_SET_PDE edi, eax
    mov esi, message + PSE_BASE
    call show_string

    PRINT "\npaging: done\n"
    EXIT EXIT_OK

// show_string: print '   [ESI] "string at ESI"'.
show_string:
    PRINT "   ["
    PRINT_HEX esi
    PRINT "] \""
    call print_str
    PRINT "\"\n"
    ret

// whoami: print the EIP we are running at (CALL pushes it; POP reads it).
whoami:
    call whoami_here
whoami_here:
    pop eax
    PRINT "   running at EIP="
    call print_hex
    call print_nl
    ret

// pf_handler: EBX = frame. Map a zeroed frame at CR2 if it lies in the demand area.
pf_handler:
    PV_READ_CR2 esi
    PRINT "   #PF: CR2="
    PRINT_HEX esi
    PRINT " error="
    mov eax, dword ptr [ebx + F_ERROR]
    call print_hex
    PRINT " ("
    test eax, 1
    jnz pf_protection
    PRINT "not-present"
    jmp pf_rw
pf_protection:
    PRINT "protection"
pf_rw:
    test eax, 2
    jnz pf_write
    PRINT " read"
    jmp pf_us
pf_write:
    PRINT " write"
pf_us:
    test eax, 4
    jnz pf_user
    PRINT " supervisor"
    jmp pf_eip
pf_user:
    PRINT " user"
pf_eip:
    PRINT ") EIP="
    PRINT_HEX [ebx + F_EIP]
    call print_nl

    mov eax, esi                    // only the demand area is ours to fix
    sub eax, DEMAND_BASE
    cmp eax, 0x400000
    jae default_handler
    mov eax, dword ptr [next_frame]
    cmp eax, frame_pool_end
    jae default_handler             // out of frames: report and fail
    add dword ptr [next_frame], PAGE_SIZE
    cmp dword ptr [first_frame], 0
    jne pf_zero
    mov dword ptr [first_frame], eax
pf_zero:
    mov edi, eax                    // clear the new frame
    mov edx, eax
    xor eax, eax
    mov ecx, 1024
    rep stosd
    or edx, PTE_P | PTE_W
    mov eax, esi
    shr eax, 12
    and eax, 0x3ff                  // page-table index of CR2
    lea edi, [pt_demand + eax*4]
    PV_SET_PTE edi, edx             // not-present before: no INVLPG needed
    PRINT "   mapped "
    and esi, 0xfffff000
    PRINT_HEX esi
    PRINT " -> frame "
    and edx, 0xfffff000
    PRINT_HEX edx
    call print_nl
    ret

message:
    .asciz "hello through the page tables"
    .balign 4, 0
shared:     .long 0
next_frame: .long frame_pool        // bump allocator for the #PF handler
first_frame: .long 0

%include "kernel_bss.inc"

    .balign 4096, 0
page_dir:   .space 4096
pt_low:     .space 4096             // 4 KiB pages 0-4 MiB; used by PDE 0 and PDE 768
pt_demand:  .space 4096             // starts with 1024 not-present entries
frame_pool: .space 4 * 4096         // frames handed out by pf_handler
frame_pool_end:
