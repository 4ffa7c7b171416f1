// pmode -- protected-mode exceptions: our own handlers that see, report and recover.
//
// The runtime (kernel.inc) already loaded our GDT and an IDT whose 256 gates all lead
// through isr_common; here we route four exception vectors to handlers of our own and
// provoke each exception once. What to notice:
//
//   * FAULTS (#DE, #UD, #GP) push the EIP OF THE FAULTING INSTRUCTION: returning as-is
//     would run it again. A handler either repairs the cause and retries (#DE, #GP
//     here) or moves EIP past the instruction (#UD here).
//   * TRAPS (#BP from int3) push the EIP of the NEXT instruction: just return.
//   * Only some exceptions push an error code: #GP does (here the offending selector),
//     #DE, #BP and #UD do not (idt.inc's stubs push a 0 for them).
//   * Page faults need paging: they are demonstrated in the 'paging' guest.

%include "kernel.inc"

%define BAD_SELECTOR 0x0ff8         // GDT index 511: far beyond our GDT's limit

kmain:
    PRINT "pmode: exceptions in protected mode\n"
    PRINT "GDT loaded: CS="
    mov eax, cs
    call print_hex16
    PRINT " DS="
    mov eax, ds
    call print_hex16
    PRINT " SS="
    mov eax, ss
    call print_hex16
    PRINT " TR="
    PV_STR eax                      // the task register selector
    call print_hex16
    call print_nl

    SET_HANDLER VEC_DE, de_handler
    SET_HANDLER VEC_BP, bp_handler
    SET_HANDLER VEC_UD, ud_handler
    SET_HANDLER VEC_GP, gp_handler

    // ---- #DE: divide by zero. The handler makes the divisor 7 and retries. ----------
    PRINT "\n[#DE] 100 / ECX with ECX = 0 at EIP="
    PRINT_HEX de_site
    call print_nl
    mov eax, 100
    xor edx, edx
    xor ecx, ecx
de_site:
    div ecx                         // faults; runs again after the handler's repair
    PRINT "[#DE] continued: 100 / "
    PRINT_DEC ecx
    PRINT " = "
    call print_dec
    PRINT " remainder "
    PRINT_DEC edx
    call print_nl

    // ---- #BP: int3 is a trap, the saved EIP is already past it. -------------------
    PRINT "\n[#BP] int3 at EIP="
    PRINT_HEX bp_site
    call print_nl
bp_site:
    int3
    PRINT "[#BP] continued after the breakpoint\n"

    // ---- #UD: ud2 is the architecturally undefined instruction. -----------------------
    PRINT "\n[#UD] ud2 at EIP="
    PRINT_HEX ud_site
    call print_nl
ud_site:
    ud2
    PRINT "[#UD] continued after ud2\n"

    // ---- #GP: load DS with a selector outside the GDT. --------------------------------
    PRINT "\n[#GP] mov ds, eax with EAX="
    PRINT_HEX16 BAD_SELECTOR
    PRINT " at EIP="
    PRINT_HEX gp_site
    call print_nl
    mov eax, BAD_SELECTOR
gp_site:
    mov ds, eax                     // faults; the handler puts KERNEL_DS into EAX
    PRINT "[#GP] continued: DS="
    mov eax, ds
    call print_hex16
    call print_nl

    PRINT "\npmode: 4 exceptions handled, all recovered\n"
    EXIT EXIT_OK

// Each handler: EBX = the interrupt frame (board.inc F_*). "seen: ..." prints the
// vector, error code, saved EIP and CS exactly as the CPU pushed them.

de_handler:
    PRINT "  handler: "
    call print_frame
    PRINT "\n  fault: saved EIP is the div itself; set ECX = 7 and retry\n"
    mov dword ptr [ebx + F_ECX], 7
    ret

bp_handler:
    PRINT "  handler: "
    call print_frame
    PRINT "\n  trap: saved EIP is int3 + 1; return as is\n"
    ret

ud_handler:
    PRINT "  handler: "
    call print_frame
    PRINT "\n  fault: saved EIP is the ud2; skip its 2 bytes\n"
    add dword ptr [ebx + F_EIP], 2
    ret

gp_handler:
    PRINT "  handler: "
    call print_frame
    PRINT "\n  fault: error code = the selector; set EAX = KERNEL_DS and retry\n"
    mov dword ptr [ebx + F_EAX], KERNEL_DS
    ret

%include "kernel_bss.inc"
