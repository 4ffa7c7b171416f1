// smc -- self-modifying code: the kernel rewrites a function it has already run.
//
// What to notice:
//   * on bare hardware a store into code that has run is simply seen by the next fetch
//     (the CPU snoops its own instruction stream; QEMU and the engine drop the blocks
//     they translated from that page);
//   * a binary translator (vmm run smc --mode bt --stat) must notice the store itself:
//     it translated the page when it was first fetched, so the store makes its
//     translation stale. Its "translation" statistics show the invalidations, and the
//     callout table shows the RET moving when the body is rewritten;
//   * the function lives in the same page as the code that patches it, as in any
//     kernel that patches itself (alternatives, static keys, ftrace).

%include "kernel.inc"

kmain:
    PRINT "smc: a function rewritten while the kernel runs\n"
    call smc_target
    PRINT "as built:            smc_target() = "
    call print_dec
    call print_nl

    // Rounds 2-4: rewrite the immediate of `mov eax, imm32` (opcode B8, imm at +1).
    mov ecx, 2
smc_rounds:
    mov eax, ecx
    imul eax, ecx
    mov dword ptr [smc_target + 1], eax
    call smc_target
    PRINT "immediate patched:   smc_target() = "
    call print_dec
    call print_nl
    inc ecx
    cmp ecx, 5
    jb smc_rounds

    // Rewrite the whole body: xor eax, eax; add eax, 7; add eax, 7; ret (the RET moves).
    mov dword ptr [smc_target], 0xc083c031
    mov dword ptr [smc_target + 4], 0x07c08307
    mov dword ptr [smc_target + 8], 0x909090c3
    call smc_target
    PRINT "body rewritten:      smc_target() = "
    call print_dec
    call print_nl
    PRINT "smc: done\n"
    EXIT EXIT_OK

// The function under rewrite: mov eax, 1; ret; padded so the new body fits.
smc_target:
    mov eax, 1
    ret
    nop; nop; nop; nop; nop; nop

%include "kernel_bss.inc"
