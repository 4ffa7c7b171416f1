"""Events and guest time: HLT is detected exactly, instruction budgets are exact, the TSC
and the timers advance with guest instructions, and interrupts a guest makes pending are
delivered at the next instruction boundary. Tiny guests of our own, in every mode."""
from __future__ import annotations

import pytest

from conftest import IDT_DATA, LOAD_IDT, PV_DATA, label_address, make_vm, pv_vm, set_gate
from vmm.devices.debugexit import DEBUG_EXIT_PORT
from vmm.modes import MODES
from vmm.vm import StopKind

FLAT_MODES = tuple(m for m in MODES if m != "pv")

# gcc's favourite load: mov eax, [ebp-0xc] ends in the byte of HLT (8b 45 f4)
ENDS_IN_F4 = "mov eax, dword ptr [ebp - 0xc]"
SAME_LENGTH = "mov eax, dword ptr [ebp - 0x10]"   # 8b 45 f0: the same instruction, another byte
UNROLL = 64
RESULT = 0x160000   # where the guests leave what they counted

PIC_AND_PIT = """
    mov al, 0x11; out 0x20, al; mov al, 0x20; out 0x21, al; mov al, 4; out 0x21, al; mov al, 1; out 0x21, al
    mov al, 0xfe; out 0x21, al
    mov al, 0x34; out 0x43, al; mov al, {divisor_lo}; out 0x40, al; mov al, {divisor_hi}; out 0x40, al
"""

TICK_HANDLER = """
tick:
    push eax
    inc dword ptr [{result}]
    mov al, 0x20
    out 0x20, al
    pop eax
    iretd
"""


def ticking_loop(insn: str, *, sti: bool, iterations: int = 200, divisor: int = 0x300) -> str:
    """A guest that runs ``iterations`` x UNROLL copies of ``insn`` with the PIT armed and
    counts the timer ticks it takes at RESULT; then it exits through isa-debug-exit."""
    body = "\n".join([insn] * UNROLL)
    return (f"mov esp, 0x180000\nmov ebp, 0x170000\nmov dword ptr [{RESULT:#x}], 0\n"
            + set_gate(0x20, "tick") + LOAD_IDT
            + PIC_AND_PIT.format(divisor_lo=divisor & 0xFF, divisor_hi=divisor >> 8)
            + ("sti\n" if sti else "")
            + f"mov ecx, {iterations}\nbody:\n{body}\ndec ecx\njnz body\ncli\n"
            + f"mov al, 0\nout {DEBUG_EXIT_PORT:#x}, al\n"
            + TICK_HANDLER.format(result=f"{RESULT:#x}") + IDT_DATA)


def read_u32(vm, address: int) -> int:
    return int.from_bytes(vm.read_linear(address, 4), "little")


# -- HLT is the engine's halted state, not the byte before EIP --------------------------------------

@pytest.mark.parametrize("mode", FLAT_MODES)
def test_an_instruction_ending_in_f4_is_no_hlt_with_interrupts_disabled(mode):
    vm, _ = make_vm(ticking_loop(ENDS_IN_F4, sti=False), mode=mode)
    result = vm.run()
    assert result.kind is StopKind.EXIT, result.message
    assert read_u32(vm, RESULT) == 0  # IF=0 all along: not one tick


@pytest.mark.parametrize("mode", FLAT_MODES)
def test_an_instruction_ending_in_f4_takes_no_early_tick(mode):
    ticks, clock = {}, {}
    for insn in (ENDS_IN_F4, SAME_LENGTH):
        # a period longer than the longest counted slice: slices also end between ticks
        vm, _ = make_vm(ticking_loop(insn, sti=True, iterations=1500, divisor=0x9000), mode=mode)
        result = vm.run()
        assert result.kind is StopKind.EXIT, result.message
        ticks[insn], clock[insn] = read_u32(vm, RESULT), result.virtual_time
    assert ticks[ENDS_IN_F4] == ticks[SAME_LENGTH] > 0, ticks
    assert clock[ENDS_IN_F4] == clock[SAME_LENGTH], clock  # no sleep to the next tick on the way


@pytest.mark.parametrize("mode", FLAT_MODES)
def test_a_real_hlt_with_interrupts_disabled_still_stops(mode):
    vm, _ = make_vm(ticking_loop("nop", sti=False, iterations=1).replace("cli\n", "cli\nhlt\n", 1), mode=mode)
    result = vm.run()
    assert result.kind is StopKind.HALTED and "interrupts disabled" in result.message


@pytest.mark.parametrize("mode", FLAT_MODES)
def test_a_real_hlt_waits_for_the_next_tick(mode):
    src = ticking_loop("nop", sti=True, iterations=1).replace(
        "cli\n", f"wait:\nhlt\ncmp dword ptr [{RESULT:#x}], 3\njb wait\ncli\n", 1)
    vm, _ = make_vm(src, mode=mode)
    result = vm.run()
    assert result.kind is StopKind.EXIT, result.message
    assert read_u32(vm, RESULT) == 3


PV_F4_LOOP = f"""
    mov ebp, {PV_DATA + 0x100:#x}
    mov ecx, 100
body:
""" + "\n".join([ENDS_IN_F4] * UNROLL) + """
    dec ecx
    jnz body
spin: jmp spin
"""


def test_an_instruction_ending_in_f4_is_no_hlt_in_pv():
    # An instruction budget runs the guest in counted slices; a slice that ends just after
    # 8b 45 f4 used to be taken for HLT.
    vm = pv_vm(PV_F4_LOOP, max_instructions=20_000)
    result = vm.run()
    assert result.kind is StopKind.BUDGET, result.message


# -- --max-instructions N stops after exactly N -------------------------------------------------------

COUNTING_SETUP = 2   # instructions before the loop
COUNTING_BODY = 6    # instructions per iteration; the count is stored by the 2nd
COUNTING_LOOP = f"""
    mov ebx, 0x200000
    xor eax, eax
again:
    inc eax
    mov dword ptr [{RESULT:#x}], eax
    mov dword ptr [ebx], eax          # a new page every iteration: EPT violations in vtx-ept
    add ebx, 0x1000
    out 0x80, al                      # an I/O exit every iteration
    jmp again
"""


def iterations_after(budget: int) -> int:
    """What the counting loop has stored after exactly ``budget`` instructions."""
    full, rest = divmod(budget - COUNTING_SETUP, COUNTING_BODY)
    return full + (1 if rest >= 2 else 0)


@pytest.mark.parametrize("mode", FLAT_MODES)
@pytest.mark.parametrize("budget", [1, 7, 2_501, 9_000, 9_003])
def test_max_instructions_is_exact(mode, budget):
    vm, _ = make_vm(COUNTING_LOOP, mode=mode, max_instructions=budget)
    result = vm.run()
    assert result.kind is StopKind.BUDGET, result.message
    assert result.instructions == budget
    assert read_u32(vm, RESULT) == iterations_after(budget)
    assert result.eip == loop_eip_after(budget)


def loop_eip_after(budget: int) -> int:
    """EIP of the counting loop's next instruction after exactly ``budget`` instructions."""
    from capstone import CS_ARCH_X86, CS_MODE_32, Cs

    from conftest import FLAT_BASE, assemble
    code = list(Cs(CS_ARCH_X86, CS_MODE_32).disasm(assemble(COUNTING_LOOP), FLAT_BASE))
    if budget < COUNTING_SETUP:
        return code[budget].address
    return code[COUNTING_SETUP + (budget - COUNTING_SETUP) % COUNTING_BODY].address


PV_COUNTING_LOOP = f"""
    xor ebx, ebx
    xor eax, eax
again:
    inc eax
    mov dword ptr [{PV_DATA:#x}], eax
    mov dword ptr [{PV_DATA + 4:#x}], ebx
    add ebx, 0x1000
    nop
    jmp again
"""


@pytest.mark.parametrize("budget", [7, 2_501, 9_003])
def test_max_instructions_is_exact_in_pv(budget):
    vm = pv_vm(PV_COUNTING_LOOP, max_instructions=budget)
    result = vm.run()
    assert result.kind is StopKind.BUDGET, result.message
    assert result.instructions == budget
    assert read_u32(vm, PV_DATA) == iterations_after(budget)


# -- the TSC is virtual time: it moves with guest instructions, in every mode and every run ------------

LOOP_ITERATIONS = 500
LOOP_INSTRUCTIONS = 2 * LOOP_ITERATIONS   # dec ecx; jnz: two per iteration
TSC_AROUND_A_LOOP = f"""
    rdtsc
    mov dword ptr [{RESULT:#x}], eax
    mov dword ptr [{RESULT + 4:#x}], edx
    mov ecx, {LOOP_ITERATIONS}
spin:
    dec ecx
    jnz spin
    rdtsc
    mov dword ptr [{RESULT + 8:#x}], eax
    mov dword ptr [{RESULT + 12:#x}], edx
    mov al, 0
    out {DEBUG_EXIT_PORT:#x}, al
"""


def read_u64(vm, address: int) -> int:
    return int.from_bytes(vm.read_linear(address, 8), "little")


def tsc_pair(mode: str, configure=None, **vm_args) -> tuple[int, int]:
    vm, _ = make_vm(TSC_AROUND_A_LOOP, mode=mode, configure=configure, **vm_args)
    result = vm.run()
    assert result.kind is StopKind.EXIT, result.message
    return read_u64(vm, RESULT), read_u64(vm, RESULT + 8)


def rdtsc_exiting(value: str):
    from vmm.vmx.tuning import apply_controls
    return lambda vm: apply_controls(vm.mode.vmcs, [f"RDTSC_EXITING={value}"])


TSC_RUNS = [(mode, None) for mode in FLAT_MODES] + [
    (mode, value) for mode in ("vtx", "vtx-ept") for value in ("on", "off")]


@pytest.mark.parametrize(("mode", "exiting"), TSC_RUNS)
@pytest.mark.parametrize("budget", [None, 50_000])
def test_the_tsc_advances_with_guest_instructions(mode, exiting, budget):
    configure = None if exiting is None else rdtsc_exiting(exiting)
    first, second = tsc_pair(mode, configure, max_instructions=budget)
    assert second - first >= LOOP_INSTRUCTIONS, (first, second)
    assert tsc_pair(mode, configure, max_instructions=budget) == (first, second)  # the same, run to run



# -- an interrupt the guest makes pending is taken at the next instruction boundary -------------------

APIC = 0xFEE00000
SELF_IPI_VECTOR = 0x40
ICR_SELF_FIXED = 1 << 18 | SELF_IPI_VECTOR   # destination shorthand "self", fixed delivery


def self_ipi_guest(after_icr: str) -> str:
    """Sends itself an IPI through the ICR with IF=1; its handler records the EIP it
    interrupted at RESULT. ``after_icr`` follows the ICR write, then the guest exits."""
    return (f"mov esp, 0x180000\nmov dword ptr [{RESULT:#x}], 0\n"
            + set_gate(SELF_IPI_VECTOR, "ipi") + LOAD_IDT
            + f"mov dword ptr [{APIC + 0xF0:#x}], 0x1ff\n"       # SVR: software enable
            + "sti\n"
            + f"mov dword ptr [{APIC + 0x300:#x}], {ICR_SELF_FIXED:#x}\n"
            + "after_icr:\n" + after_icr
            + f"\nmov al, 0\nout {DEBUG_EXIT_PORT:#x}, al\n"
            + f"ipi:\nmov eax, [esp]\nmov dword ptr [{RESULT:#x}], eax\n"
            + f"mov dword ptr [{APIC + 0xB0:#x}], 0\niretd\n"   # EOI
            + IDT_DATA)


@pytest.mark.parametrize("mode", FLAT_MODES)
@pytest.mark.parametrize("budget", [None, 100_000])
def test_a_self_ipi_is_taken_at_the_next_instruction_boundary(mode, budget):
    src = self_ipi_guest("nop\nnop\nnop\nnop\ncli")
    vm, _ = make_vm(src, mode=mode, max_instructions=budget)
    result = vm.run()
    assert result.kind is StopKind.EXIT, result.message
    assert read_u32(vm, RESULT) == label_address(src, "after_icr")  # interrupted right after the ICR write


def ipi_after_an_emulated_instruction_guest(emulated: str = "mov eax, cr0\n") -> str:
    """kvm-unit-tests ``eventinj``'s shape: a privileged instruction the VMM emulates (a
    #GP in ``trap``), then ICR2 and ICR stores with a register update between them; the
    handler counts IPIs at RESULT and the guest leaves ECX at RESULT + 4."""
    return (f"mov esp, 0x180000\nmov dword ptr [{RESULT:#x}], 0\nxor ecx, ecx\n"
            + set_gate(SELF_IPI_VECTOR, "ipi") + LOAD_IDT
            + f"mov dword ptr [{APIC + 0xF0:#x}], 0x1ff\nsti\n"
            + emulated + "xor ecx, ecx\n"
            + f"mov dword ptr [{APIC + 0x310:#x}], 0\n"
            + "inc ecx\n"
            + f"mov dword ptr [{APIC + 0x300:#x}], {ICR_SELF_FIXED:#x}\n"
            + "nop\nnop\ncli\n"
            + f"mov dword ptr [{RESULT + 4:#x}], ecx\n"
            + f"mov al, 0\nout {DEBUG_EXIT_PORT:#x}, al\n"
            + f"ipi:\ninc dword ptr [{RESULT:#x}]\nmov dword ptr [{APIC + 0xB0:#x}], 0\niretd\n"
            + IDT_DATA)


@pytest.mark.parametrize("emulated", ["mov eax, cr0\n", "mov ecx, 0x277\nrdmsr\n"])
@pytest.mark.parametrize("mode", FLAT_MODES)
def test_a_store_that_ends_the_run_after_an_emulated_instruction_is_not_replayed(mode, emulated):
    # Writing EIP from the exception hook once left Unicorn skipping the PC sync on every
    # later stop of the run: the run resumed at the ICR2 store and did it all twice. The
    # RDMSR is native's engine intercept, which writes EIP from the same hook.
    vm, _ = make_vm(ipi_after_an_emulated_instruction_guest(emulated), mode=mode)
    result = vm.run()
    assert result.kind is StopKind.EXIT, result.message
    assert (read_u32(vm, RESULT), read_u32(vm, RESULT + 4)) == (1, 1)   # one IPI, one INC


@pytest.mark.parametrize("mode", FLAT_MODES)
def test_an_apic_disabled_and_enabled_again_through_its_base_msr_takes_interrupts(mode):
    # kvm-unit-tests' start-up (reset_apic): clear IA32_APIC_BASE.EN, set it again, then SVR.
    reenable = ("mov ecx, 0x1b\nrdmsr\nand eax, 0xfffff7ff\nwrmsr\nor eax, 0x800\nwrmsr\n")
    src = self_ipi_guest("nop\nnop\ncli").replace("sti\n", reenable + f"mov dword ptr [{APIC + 0xF0:#x}], 0x1ff\nsti\n", 1)
    vm, _ = make_vm(src, mode=mode)
    result = vm.run()
    assert result.kind is StopKind.EXIT, result.message
    assert read_u32(vm, RESULT) == label_address(src, "after_icr")


def window_guest(between: str) -> str:
    """Two self-IPIs (vectors 0x40 and 0x41) made pending with IF=0, then ``between``
    (which opens the window somehow) and CLI. Each handler appends (its vector, the EIP it
    interrupted) to a log at RESULT + 8; the count of entries is at RESULT. A software
    INT 0x42 logs the same way."""
    log = (f"push eax\npush ebx\nmov ebx, [{RESULT:#x}]\nmov eax, [esp + 8]\n"
           f"mov dword ptr [{RESULT + 8:#x} + ebx*8], {{vector}}\nmov dword ptr [{RESULT + 12:#x} + ebx*8], eax\n"
           f"inc dword ptr [{RESULT:#x}]\npop ebx\npop eax\n")
    eoi = f"mov dword ptr [{APIC + 0xB0:#x}], 0\n"
    return (f"mov esp, 0x180000\nmov dword ptr [{RESULT:#x}], 0\n"
            + set_gate(0x40, "irq40") + set_gate(0x41, "irq41") + set_gate(0x42, "soft42") + LOAD_IDT
            + f"mov dword ptr [{APIC + 0xF0:#x}], 0x1ff\n"
            + f"mov dword ptr [{APIC + 0x300:#x}], {1 << 18 | 0x40:#x}\n"
            + f"mov dword ptr [{APIC + 0x300:#x}], {1 << 18 | 0x41:#x}\n"
            + "mov ecx, 50\nsettle: dec ecx\njnz settle\n"     # IF=0: both stay pending
            + between + "\ncli\n"
            + f"mov al, 0\nout {DEBUG_EXIT_PORT:#x}, al\n"
            + "irq40:\n" + log.format(vector=0x40) + eoi + "iretd\n"
            + "irq41:\n" + log.format(vector=0x41) + eoi + "iretd\n"
            + "soft42:\n" + log.format(vector=0x42) + "iretd\n"
            + IDT_DATA)


def window_log(vm) -> list[tuple[int, int]]:
    return [(read_u32(vm, RESULT + 8 + 8 * i), read_u32(vm, RESULT + 12 + 8 * i)) for i in range(read_u32(vm, RESULT))]


def run_window(mode: str, between: str, label: str) -> tuple[list[tuple[int, int]], int]:
    """Run :func:`window_guest` with ``between`` (which ends at ``label``): its log, and
    where ``label`` is."""
    src = window_guest(f"{between}\n{label}:")
    vm, _ = make_vm(src, mode=mode)
    result = vm.run()
    assert result.kind is StopKind.EXIT, result.message
    return window_log(vm), label_address(src, label)


@pytest.mark.parametrize("mode", FLAT_MODES)
def test_sti_nop_cli_opens_the_window_for_exactly_one_boundary(mode):
    # kvm-unit-tests eventinj "vec 32/33": STI's shadow covers the NOP; both interrupts are
    # taken at the boundary after it (the second right after the first handler's IRET).
    # (In vtx the VMM's exit for 0x40 came before 0x41 was sent: it gives 0x40 back to the
    # guest's APIC, which then ranks the two as hardware does.)
    log, window = run_window(mode, "sti\nnop", "window")
    assert log == [(0x41, window), (0x40, window)]   # the higher vector first


@pytest.mark.parametrize("mode", FLAT_MODES)
def test_a_software_interrupt_in_the_sti_shadow_goes_before_the_pending_one(mode):
    # eventinj "vec 32/int $33": the INT in the shadow is delivered first; the pending
    # interrupts are taken when its handler's IRET sets IF again.
    log, after = run_window(mode, "sti\nint 0x42", "after_int")
    assert log == [(0x42, after), (0x41, after), (0x40, after)]


@pytest.mark.parametrize("mode", FLAT_MODES)
def test_sti_hlt_wakes_at_the_pending_interrupt_after_the_hlt(mode):
    # The idle loop of every kernel: the shadow keeps the interrupt off until HLT, which it wakes.
    log, woken = run_window(mode, "sti\nhlt", "woken")
    assert log == [(0x41, woken), (0x40, woken)]


def pic_unmask_guest() -> str:
    """IRQ0 raised while masked at the PIC, then unmasked with IF=1: the handler records
    the EIP it interrupted (the first time) at RESULT."""
    return (f"mov esp, 0x180000\nmov dword ptr [{RESULT:#x}], 0\n"
            + set_gate(0x20, "tick") + LOAD_IDT
            + PIC_AND_PIT.format(divisor_lo=0x00, divisor_hi=0x01).replace("mov al, 0xfe; out 0x21, al",
                                                                           "mov al, 0xff; out 0x21, al")
            + "sti\nmov ecx, 2000\nwait_tick:\ndec ecx\njnz wait_tick\n"   # IRQ0 latched, masked
            + "mov al, 0xfe\nout 0x21, al\n"
            + "after_unmask:\nnop\nnop\nnop\ncli\n"
            + f"mov al, 0\nout {DEBUG_EXIT_PORT:#x}, al\n"
            + f"tick:\ncmp dword ptr [{RESULT:#x}], 0\njne eoi\npush eax\nmov eax, [esp + 4]\n"
            + f"mov dword ptr [{RESULT:#x}], eax\npop eax\n"
            + "eoi:\npush eax\nmov al, 0x20\nout 0x20, al\npop eax\niretd\n"
            + IDT_DATA)


@pytest.mark.parametrize("mode", FLAT_MODES)
def test_an_irq_unmasked_at_the_pic_is_taken_at_the_next_instruction_boundary(mode):
    # Virtual time moves in counted runs: a budget keeps the PIT running while IRQ0 is masked.
    src = pic_unmask_guest()
    vm, _ = make_vm(src, mode=mode, max_instructions=1_000_000)
    result = vm.run()
    assert result.kind is StopKind.EXIT, result.message
    assert read_u32(vm, RESULT) == label_address(src, "after_unmask")
