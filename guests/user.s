// user -- ring 3: entering user mode, system calls, and a privileged instruction trap.
//
// What to notice:
//   * There is no "enter user mode" instruction: the kernel builds the frame an
//     interrupt from ring 3 would have pushed (SS, ESP, EFLAGS, CS, EIP) and executes
//     IRET. CS with RPL 3 makes the CPU drop to CPL 3.
//   * The way back is an interrupt: "int 0x80" through a gate with DPL 3 (a DPL-0 gate
//     would give #GP). The CPU switches to the stack in TSS.SS0:ESP0 and pushes the
//     user SS:ESP too (frame fields F_USER_SS, F_USER_ESP).
//   * Arguments and results travel in registers (Linux i386 numbers: EAX = 4 write,
//     20 getpid, 1 exit; EBX, ECX, EDX = arguments; result in EAX) -- the handler
//     reads and writes them in the saved frame.
//   * cli at CPL 3 with IOPL 0 is privileged: #GP(0). The kernel kills the task.
//   * Paging is off: the flat DPL-3 segments let user code touch all memory. Real
//     kernels add user/supervisor page protection (see the 'paging' guest).

%include "kernel.inc"

%define SYS_exit    1
%define SYS_write   4
%define SYS_getpid  20
%define ENOSYS      38

kmain:
    PRINT "user: ring-3 tasks and int 0x80 system calls\n"
    SET_GATE 0x80, GATE_TRAP_USER   // DPL 3 trap gate: callable from ring 3
    SET_HANDLER 0x80, syscall_handler
    SET_HANDLER VEC_GP, gp_handler
    PRINT "kernel: TSS.SS0:ESP0 = "
    PRINT_HEX16 [tss + TSS_SS0]
    PRINT ":"
    PRINT_HEX [tss + TSS_ESP0]
    call print_nl

    mov dword ptr [current_pid], 1
    mov eax, task1
    mov ecx, user_stack1_top
    call run_user
    PRINT "kernel: task 1 finished, status "
    call print_dec
    call print_nl

    mov dword ptr [current_pid], 2
    mov eax, task2
    mov ecx, user_stack2_top
    call run_user
    PRINT "kernel: task 2 finished, status "
    call print_hex
    call print_nl

    PRINT "user: done\n"
    EXIT EXIT_OK

// run_user: EAX = entry point, ECX = user stack top. Runs the task at CPL 3 until it
// exits or is killed; returns EAX = its exit status.
run_user:
    push ebx
    push esi
    push edi
    push ebp
    mov dword ptr [kernel_saved_esp], esp
    PRINT "kernel: IRET to ring 3, CS:EIP="
    PRINT_HEX16 USER_CS
    PRINT ":"
    call print_hex
    PRINT " SS:ESP="
    PRINT_HEX16 USER_DS
    PRINT ":"
    PRINT_HEX ecx
    call print_nl
    push USER_DS                    // SS
    push ecx                        // ESP
    push 0x00000002                 // EFLAGS: IF = 0, IOPL = 0 (bit 1 always reads 1)
    push USER_CS                    // CS, RPL 3
    push eax                        // EIP
    mov edx, USER_DS                // IRET to ring 3 would null a DS/ES with DPL 0
    mov ds, edx
    mov es, edx
    PV_IRET

// task_finished: EAX = status. Abandon the interrupt frame and return from run_user.
task_finished:
    mov esp, dword ptr [kernel_saved_esp]
    mov edx, KERNEL_DS
    mov ds, edx
    mov es, edx
    mov fs, edx
    mov gs, edx
    pop ebp
    pop edi
    pop esi
    pop ebx
    ret

// syscall_handler: EBX = frame; the user's registers are in it.
syscall_handler:
    mov eax, dword ptr [ebx + F_EAX]
    cmp eax, SYS_write
    je sys_write
    cmp eax, SYS_getpid
    je sys_getpid
    cmp eax, SYS_exit
    je sys_exit
    mov dword ptr [ebx + F_EAX], 0 - ENOSYS
    ret

sys_write:                          // write(fd = EBX, buf = ECX, count = EDX)
    mov esi, dword ptr [ebx + F_ECX]    // (a real kernel checks that buf is user memory)
    mov ecx, dword ptr [ebx + F_EDX]
    call print_buf
    mov dword ptr [ebx + F_EAX], ecx    // bytes written
    ret

sys_getpid:
    PRINT "kernel: getpid() from CS="
    PRINT_HEX16 [ebx + F_CS]
    PRINT " user SS:ESP="
    PRINT_HEX16 [ebx + F_USER_SS]
    PRINT ":"
    PRINT_HEX [ebx + F_USER_ESP]
    PRINT ", frame on the kernel stack at "
    PRINT_HEX ebx
    call print_nl
    mov eax, dword ptr [current_pid]
    mov dword ptr [ebx + F_EAX], eax
    ret

sys_exit:                           // exit(status = EBX)
    PRINT "kernel: exit("
    PRINT_DEC [ebx + F_EBX]
    PRINT ") from EIP="
    PRINT_HEX [ebx + F_EIP]
    call print_nl
    mov eax, dword ptr [ebx + F_EBX]
    jmp task_finished

// gp_handler: a #GP from ring 3 kills the task; from ring 0 it is a kernel bug.
gp_handler:
    test dword ptr [ebx + F_CS], 3
    jz default_handler
    PRINT "kernel: task "
    PRINT_DEC [current_pid]
    PRINT " killed: "
    call print_frame
    call print_nl
    mov eax, 0xffffffff
    jmp task_finished

// ---- user mode (CPL 3): only int 0x80 reaches the kernel ---------------------------

// u_puts: write(1, ESI, strlen(ESI)). Clobbers EAX, EBX, ECX, EDX.
u_puts:
    mov ecx, esi
    xor edx, edx
u_puts_len:
    cmp byte ptr [esi + edx], 0
    je u_puts_write
    inc edx
    jmp u_puts_len
u_puts_write:
    mov eax, SYS_write
    mov ebx, 1
    int 0x80
    ret

task1:
    mov esi, t1_hello
    call u_puts
    mov eax, SYS_getpid
    int 0x80
    add al, '0'
    mov byte ptr [t1_pid], al
    mov eax, cs                     // reading CS is allowed; its low bits are the CPL
    and eax, 3
    add al, '0'
    mov byte ptr [t1_cpl], al
    mov esi, t1_report
    call u_puts
    mov eax, SYS_exit
    mov ebx, 7
    int 0x80                        // does not return

task2:
    mov esi, t2_hello
    call u_puts
task2_cli:
    cli                             // privileged at CPL 3 (IOPL 0): #GP(0)
    mov esi, t2_never
    call u_puts
    mov eax, SYS_exit
    xor ebx, ebx
    int 0x80

t1_hello:   .asciz "[task 1] hello from ring 3\n"
t1_report:  .ascii "[task 1] getpid() = "
t1_pid:     .ascii "?"
            .ascii ", CPL = "
t1_cpl:     .ascii "?"
            .asciz "\n"
t2_hello:   .asciz "[task 2] executing cli at CPL 3\n"
t2_never:   .asciz "[task 2] still alive?!\n"

    .balign 4, 0
current_pid:        .long 0
kernel_saved_esp:   .long 0

%include "kernel_bss.inc"

user_stack1:    .space 4096
user_stack1_top:
user_stack2:    .space 4096
user_stack2_top:
