// popek -- Popek & Goldberg on x86: the sensitive instructions that are NOT privileged.
//
// Popek & Goldberg (1974): a VMM can be built by pure trap-and-emulate if every
// *sensitive* instruction (one that reads or changes the machine's privileged state, or
// behaves differently depending on it) is *privileged* (traps when run outside the most
// privileged mode). Robin & Irvine (2000) list the x86 instructions that break this:
// they are sensitive, yet run at CPL 1..3 without a fault and quietly give a different
// answer. A VMM that runs the guest kernel in ring 1 (the `trap` mode: the guest's
// DPL-0 descriptors become DPL-1 in a shadow GDT; CLI, LGDT, MOV CR0... fault with #GP
// and are emulated) never gets to see them.
//
// This guest executes each one at what it believes is CPL 0 and compares the result
// with what bare hardware gives there. Natively every check passes; deprivileged, the
// failing ones are listed. What to notice, check by check, is in the comments.
//
// The checks use the pvops macros where pvops.inc has one (PV_CLI, PV_SAVE_FLAGS,
// PV_RESTORE_FLAGS, PV_STR, PV_SLDT...): in the native flavour, the one `native`, `trap`
// and `vtx` all run, each is the bare instruction, which is what is being tested. (A pv
// flavour would turn them into hypercalls; P&G's problem is that an UNMODIFIED kernel
// uses the bare ones.) The others are byte-exact encodings (SGDT_M, SMSW_EAX, PUSH_CS...).
//
// Nothing printed depends on where things are: values are printed only on a WRONG line,
// and then they are the guest's own table addresses, selectors and flags.

%include "kernel.inc"

%define POPEK_VECTOR  0x40          // a software interrupt, DPL-0 interrupt gate (idt_init)
%define EFLAGS_IF     9             // bit number of IF in EFLAGS
%define CR0_MP        0x00000002    // monitor coprocessor: harmless to toggle

// CALL_FAR selector, label: 9A ptr16:32 (keystone cannot assemble a direct far call).
%macro CALL_FAR 2
    .byte 0x9a
    .long %2
    .word %1
%endmacro
// RETF: CB, the 32-bit far return (pops EIP, then CS).
%macro RETF 0
    .byte 0xcb
%endmacro
// SMSW_EAX: 0F 01 /4 with ModRM 0xe0 (smsw eax). Sensitive, not privileged: no pvop.
%macro SMSW_EAX 0
    .byte 0x0f, 0x01, 0xe0
%endmacro
// PUSH_CS: 0E; POP_DS: 1F (keystone would add a 0x66 prefix: a 16-bit push/pop).
%macro PUSH_CS 0
    .byte 0x0e
%endmacro
%macro POP_DS 0
    .byte 0x1f
%endmacro

// CHECK mnemonic, "line", printer: with EAX = what we got and EDX = what bare hardware
// gives at CPL 0, print "line: ok" or "line: WRONG (got X, expected Y)" (X and Y written
// by printer: print_dec, print_hex16 or print_hex) and mark the mnemonic as failing.
// Preserves the general registers.
%macro CHECK 3
    push ebx
    push esi
    push edi
    jmp %%after
%%name:
    .asciz %2
%%after:
    mov ebx, %1
    mov esi, %%name
    mov edi, %3
    call check_report
    pop edi
    pop esi
    pop ebx
%endmacro

kmain:
    PRINT "popek: sensitive but unprivileged x86 instructions (Robin & Irvine), run at CPL 0\n"
    // Nothing may interrupt us while IF is briefly 1 in checks 1 and 2: mask every
    // line of both 8259s (the BIOS left the timer unmasked, on vector 8 = #DF!).
    OUTB_IMM PIC1_DATA, 0xff
    OUTB_IMM PIC2_DATA, 0xff
    SET_HANDLER POPEK_VECTOR, int_handler

// ---- 1. PUSHF: reads IF ----------------------------------------------------------------
// The guest kernel's CLI traps (privileged when CPL > IOPL) and the VMM clears a
// *virtual* IF; the real IF stays 1 so that the VMM still gets its interrupts. PUSHF is
// not privileged: it pushes the real EFLAGS, so a deprivileged kernel sees IF=1 after
// its own CLI (and IOPL, the VMM's, not its own).
popek_pushf:
    PV_CLI
    PV_SAVE_FLAGS eax               // pushfd; pop eax
    shr eax, EFLAGS_IF
    and eax, 1
    xor edx, edx
    CHECK mn_pushf, "PUSHFD after cli: IF", print_dec
    PV_STI                          // interrupt shadow: nothing can arrive before pushfd
    PV_SAVE_FLAGS eax               // (and the PICs are masked anyway)
    PV_CLI
    shr eax, EFLAGS_IF
    and eax, 1
    mov edx, 1
    CHECK mn_pushf, "PUSHFD after sti: IF", print_dec

// ---- 2. POPF: writes IF ----------------------------------------------------------------
// At CPL 0 POPF may change IF (and IOPL). At CPL > IOPL it changes neither, and does
// NOT fault: the guest's "restore flags with interrupts on" is silently dropped, so a
// deprivileged kernel would run with interrupts (virtually) off for ever. This is the
// textbook case of P&G's condition failing: sensitive, unprivileged, no trap.
popek_popf:
    PV_CLI
    PV_SAVE_FLAGS eax
    or eax, 1 << EFLAGS_IF
    PV_RESTORE_FLAGS eax            // push eax; popfd: IF := 1, if we are allowed to
    PV_SAVE_FLAGS eax
    PV_CLI
    shr eax, EFLAGS_IF
    and eax, 1
    mov edx, 1
    CHECK mn_popf, "POPFD with IF=1: IF", print_dec
// The same silence for IOPL, which PUSHF cannot hide: at CPL 0 POPF sets it, at CPL 1
// (> IOPL 0) it keeps the old value, and PUSHF then shows that nothing changed.
    PV_SAVE_FLAGS eax
    mov esi, eax                    // the flags to restore
    or eax, 3 << 12                 // IOPL := 3
    PV_RESTORE_FLAGS eax
    PV_SAVE_FLAGS eax
    PV_RESTORE_FLAGS esi
    shr eax, 12
    and eax, 3
    mov edx, 3
    CHECK mn_popf, "POPFD with IOPL=3: IOPL", print_dec

// ---- 3. SGDT / SIDT: read GDTR / IDTR ------------------------------------------------
// LGDT/LIDT are privileged (they trap; the VMM records the guest's values and loads its
// own shadow tables), but SGDT/SIDT are not: they return the REAL registers, i.e. the
// VMM's shadow tables, at an address the guest never chose (the famous "red pill").
popek_sgdt:
    SGDT_M dt_buf
    movzx eax, word ptr [dt_buf]
    movzx edx, word ptr [gdtr]
    CHECK mn_sgdt, "SGDT limit", print_hex16
    mov eax, dword ptr [dt_buf + 2]
    mov edx, dword ptr [gdtr + 2]
    CHECK mn_sgdt, "SGDT base", print_hex
popek_sidt:
    SIDT_M dt_buf
    movzx eax, word ptr [dt_buf]
    movzx edx, word ptr [idtr]
    CHECK mn_sidt, "SIDT limit", print_hex16
    mov eax, dword ptr [dt_buf + 2]
    mov edx, dword ptr [idtr + 2]
    CHECK mn_sidt, "SIDT base", print_hex

// ---- 4. SLDT / STR: read LDTR / TR -----------------------------------------------------
// LLDT/LTR trap, SLDT/STR do not: they show the selectors the VMM really loaded (its
// own TSS in its own GDT slot), not the guest's. This kernel never loads an LDT, so
// LDTR is the null selector 0; gdt_init loaded TR = TSS_SEL (LTR at boot).
popek_sldt:
    mov eax, 0xffffffff
    PV_SLDT eax
    and eax, 0xffff
    xor edx, edx
    CHECK mn_sldt, "SLDT (no LDT loaded)", print_hex16
popek_str:
    mov eax, 0xffffffff
    PV_STR eax
    and eax, 0xffff
    mov edx, TSS_SEL
    CHECK mn_str, "STR", print_hex16

// ---- 5. SMSW: reads CR0[15:0] ---------------------------------------------------------
// MOV to/from CR0 is privileged, so the VMM keeps a virtual CR0 and answers reads from
// it. SMSW (a 286 leftover) is not privileged and reads the REAL CR0: the guest sees
// the VMM's PE/MP/EM/TS/NE bits. We flip MP (harmless) so the two could differ.
popek_smsw:
    PV_READ_CR0 esi                 // the original, restored below
    mov eax, esi
    xor eax, CR0_MP
    PV_WRITE_CR0 eax
    mov eax, 0xffffffff
    SMSW_EAX
    and eax, 0xffff
    PV_READ_CR0 edx
    and edx, 0xffff
    PV_WRITE_CR0 esi
    CHECK mn_smsw, "SMSW vs mov eax, cr0 (MP flipped)", print_hex16

// ---- 6. PUSH CS / MOV from CS: the current privilege level is visible --------------------
// CS.RPL *is* the CPL. A kernel run in ring 1 finds 0x09 instead of its KERNEL_CS 0x08
// in CS: any "am I the kernel?" test (cs & 3) or selector comparison goes wrong, and
// nothing traps. (A 32-bit push of a segment register may write only 16 bits: mask.)
popek_push_cs:
    mov eax, 0xffffffff
    push eax
    pop eax                         // the slot below ESP now holds all ones
    PUSH_CS
    pop eax
    and eax, 0xffff
    mov edx, KERNEL_CS
    CHECK mn_push_cs, "PUSH CS", print_hex16
popek_mov_from_cs:
    mov eax, 0xffffffff
    mov eax, cs
    and eax, 0xffff
    mov edx, KERNEL_CS
    CHECK mn_mov_cs, "MOV r32, CS", print_hex16

// ---- 7. LAR / LSL / VERR / VERW: read descriptors the VMM has rewritten -----------------
// They look up a descriptor in the (real, i.e. shadow) GDT and check it against the
// CPL. LAR shows the shadow's DPL 1 instead of the guest's DPL 0; LSL shows a limit the
// VMM may have cut short to protect itself; VERR/VERW answer for CPL 1, not 0.
// LAR's 32-bit result is the descriptor's high dword masked with 0x00fxff00 (bits
// 19:16 undefined: we clear them): G D P DPL S type = 0x00c09a00 for KERNEL_CS.
popek_lar:
    mov ecx, KERNEL_CS
    xor eax, eax                    // ZF=0 would leave EAX alone: "got 0x00000000"
    lar eax, ecx
    and eax, 0x00f0ff00
    mov edx, 0x00c09a00
    CHECK mn_lar, "LAR KERNEL_CS (DPL 0)", print_hex
popek_lsl:
    mov ecx, KERNEL_CS
    xor eax, eax
    lsl eax, ecx                    // the limit in bytes: 0xfffff pages of 4 KiB
    mov edx, 0xffffffff
    CHECK mn_lsl, "LSL KERNEL_CS", print_hex
popek_verr:
    mov ecx, KERNEL_DS
    xor eax, eax
    verr cx                         // ZF = 1: readable at the current CPL/RPL
    setz al
    mov edx, 1
    CHECK mn_verr, "VERR KERNEL_DS: ZF", print_dec
popek_verw:
    mov ecx, KERNEL_DS
    xor eax, eax
    verw cx                         // ZF = 1: writable at the current CPL/RPL
    setz al
    mov edx, 1
    CHECK mn_verw, "VERW KERNEL_DS: ZF", print_dec

// ---- 8. MOV / POP to segment registers: RPL must be 0 -----------------------------------
// Loading SS demands RPL = DPL = CPL: a ring-1 kernel's "mov ss, 0x10" faults, and what
// the VMM loads instead (0x11) is what the guest reads back. DS may keep RPL 0, but it
// is checked against the shadow DPL, and reading a selector never traps: the VMM can't
// hide what it had to load.
popek_mov_ss:
    mov eax, KERNEL_DS
    mov ss, eax
    mov eax, 0xffffffff
    mov eax, ss
    and eax, 0xffff
    mov edx, KERNEL_DS
    CHECK mn_mov_ss, "MOV SS, KERNEL_DS; read back", print_hex16
popek_mov_ds:
    mov eax, KERNEL_DS
    mov ds, eax
    mov eax, 0xffffffff
    mov eax, ds
    and eax, 0xffff
    mov edx, KERNEL_DS
    CHECK mn_mov_ds, "MOV DS, KERNEL_DS; read back", print_hex16
popek_pop_ds:
    push KERNEL_DS
    POP_DS
    mov eax, 0xffffffff
    mov eax, ds
    and eax, 0xffff
    mov edx, KERNEL_DS
    CHECK mn_pop_ds, "POP DS (KERNEL_DS); read back", print_hex16

// ---- 9. far CALL / far JMP / far RET: privilege checks on the target ------------------
// A far transfer checks the target selector's RPL and DPL against the CPL. In ring 1
// "jmp 0x08:x" lands with CS = 0x09, the CS pushed by a far CALL reads 0x09, and a far
// RET to RPL 0 is a return to an inner ring: #GP. None of this is a trap the guest
// expects; the VMM has to fix up what it can.
popek_far_call:
    mov dword ptr [callee_cs], 0xffff
    mov dword ptr [pushed_cs], 0xffff
    CALL_FAR KERNEL_CS, far_callee
    mov eax, dword ptr [callee_cs]
    mov edx, KERNEL_CS
    CHECK mn_far_call, "far CALL KERNEL_CS: CS in the callee", print_hex16
    mov eax, dword ptr [pushed_cs]
    CHECK mn_far_call, "far CALL KERNEL_CS: CS pushed", print_hex16
popek_far_jmp:
    mov eax, 0xffff
    JMP_FAR KERNEL_CS, far_jmp_landing
    jmp far_jmp_done                // not reached: the far jump skips it
far_jmp_landing:
    mov eax, cs
    and eax, 0xffff
far_jmp_done:
    mov edx, KERNEL_CS
    CHECK mn_far_jmp, "far JMP KERNEL_CS: CS at the target", print_hex16
popek_far_ret:
    mov eax, KERNEL_CS
    push eax                        // a hand-made far return frame: CS, then EIP
    mov eax, far_ret_landing
    push eax
    mov eax, 0xffff
    RETF
    jmp far_ret_done                // not reached
far_ret_landing:
    mov eax, cs
    and eax, 0xffff
far_ret_done:
    mov edx, KERNEL_CS
    CHECK mn_far_ret, "far RET to KERNEL_CS: CS at the target", print_hex16

// ---- 10. INT n: gate DPL checked against the CPL ----------------------------------------
// From CPL 0 "int 0x40" may use a DPL-0 gate, and the CPU saves CS = 0x08. From ring 1
// the same instruction raises #GP (CPL > gate DPL) instead; and if the VMM makes the
// gates DPL 1, the saved CS reads 0x09 in the handler.
popek_int:
    mov dword ptr [int_count], 0
    mov dword ptr [int_cs], 0xffff
    int POPEK_VECTOR
    mov eax, dword ptr [int_count]
    mov edx, 1
    CHECK mn_int, "INT 0x40 (DPL-0 gate): handler ran", print_dec
    mov eax, dword ptr [int_cs]
    mov edx, KERNEL_CS
    CHECK mn_int, "INT 0x40 (DPL-0 gate): CS saved", print_hex16

// ---- summary ---------------------------------------------------------------------------
popek_summary:
    xor ecx, ecx                    // M: instructions checked
    xor edx, edx                    // N: instructions that behaved
    mov esi, mn_table
popek_count:
    cmp esi, mn_table_end
    jae popek_counted
    inc ecx
    cmp dword ptr [esi], 0
    jne popek_count_next
    inc edx
popek_count_next:
    add esi, 8
    jmp popek_count
popek_counted:
    PRINT "popek: "
    PRINT_DEC edx
    PRINT " of "
    PRINT_DEC ecx
    PRINT " sensitive instructions behaved as on bare hardware\n"
    cmp edx, ecx
    je popek_all_ok
    PRINT "virtualizability: fails for "
    mov esi, mn_table
    xor edi, edi                    // names written so far
popek_names:
    cmp esi, mn_table_end
    jae popek_names_done
    cmp dword ptr [esi], 0
    je popek_names_next
    test edi, edi
    jz popek_names_first
    PRINT ", "
popek_names_first:
    inc edi
    push esi
    mov esi, dword ptr [esi + 4]
    call print_str
    pop esi
popek_names_next:
    add esi, 8
    jmp popek_names
popek_names_done:
    call print_nl
    EXIT 1
popek_all_ok:
    EXIT EXIT_OK

// ---- helpers ----------------------------------------------------------------------------

// check_report: EAX = got, EDX = expected, ESI = line name, EDI = printer, EBX = the
// mnemonic's table entry (its failure flag is set on a mismatch).
check_report:
    pushad
    call print_str
    cmp eax, edx
    jne check_report_wrong
    PRINT ": ok\n"
    popad
    ret
check_report_wrong:
    mov dword ptr [ebx], 1
    PRINT ": WRONG (got "
    call edi
    PRINT ", expected "
    mov eax, edx
    call edi
    PRINT ")\n"
    popad
    ret

// far_callee: reached by CALL_FAR; the stack holds EIP, then CS (32-bit slots; the CS
// slot's upper half is not guaranteed: mask it).
far_callee:
    mov eax, dword ptr [esp + 4]
    and eax, 0xffff
    mov dword ptr [pushed_cs], eax
    mov eax, cs
    and eax, 0xffff
    mov dword ptr [callee_cs], eax
    RETF

// int_handler: vector POPEK_VECTOR; EBX = the frame (the CS the CPU saved is F_CS).
int_handler:
    inc dword ptr [int_count]
    mov eax, dword ptr [ebx + F_CS]
    and eax, 0xffff
    mov dword ptr [int_cs], eax
    ret

    .balign 4, 0
dt_buf:     .long 0, 0              // SGDT/SIDT store 6 bytes here
callee_cs:  .long 0
pushed_cs:  .long 0
int_count:  .long 0
int_cs:     .long 0

// One entry per instruction: failure flag, name. The summary counts them in order.
mn_table:
mn_pushf:     .long 0, s_pushf
mn_popf:      .long 0, s_popf
mn_sgdt:      .long 0, s_sgdt
mn_sidt:      .long 0, s_sidt
mn_sldt:      .long 0, s_sldt
mn_str:       .long 0, s_str
mn_smsw:      .long 0, s_smsw
mn_push_cs:   .long 0, s_push_cs
mn_mov_cs:    .long 0, s_mov_cs
mn_lar:       .long 0, s_lar
mn_lsl:       .long 0, s_lsl
mn_verr:      .long 0, s_verr
mn_verw:      .long 0, s_verw
mn_mov_ss:    .long 0, s_mov_ss
mn_mov_ds:    .long 0, s_mov_ds
mn_pop_ds:    .long 0, s_pop_ds
mn_far_call:  .long 0, s_far_call
mn_far_jmp:   .long 0, s_far_jmp
mn_far_ret:   .long 0, s_far_ret
mn_int:       .long 0, s_int
mn_table_end:

s_pushf:      .asciz "PUSHF"
s_popf:       .asciz "POPF"
s_sgdt:       .asciz "SGDT"
s_sidt:       .asciz "SIDT"
s_sldt:       .asciz "SLDT"
s_str:        .asciz "STR"
s_smsw:       .asciz "SMSW"
s_push_cs:    .asciz "PUSH CS"
s_mov_cs:     .asciz "MOV from CS"
s_lar:        .asciz "LAR"
s_lsl:        .asciz "LSL"
s_verr:       .asciz "VERR"
s_verw:       .asciz "VERW"
s_mov_ss:     .asciz "MOV SS"
s_mov_ds:     .asciz "MOV DS"
s_pop_ds:     .asciz "POP DS"
s_far_call:   .asciz "far CALL"
s_far_jmp:    .asciz "far JMP"
s_far_ret:    .asciz "far RET"
s_int:        .asciz "INT n"

%include "kernel_bss.inc"
