"""The local APIC of our one CPU (xAPIC mode), MMIO page at 0xfee00000.

Register offsets and bits are the Intel SDM's (vol. 3A, ch. 11, table
"Local APIC Register Address Map").  Where the SDM and QEMU's ``apic.c``
differ in something a guest can see, QEMU is followed so that images behave
as under ``qemu-system-i386``:

* reset state: ``SVR = 0xff`` (software disabled) yet LVT LINT0 = 0x700
  (ExtINT, unmasked), which lets 8259A interrupts through LINT0 without the
  guest touching the APIC; all other LVTs masked;
* accesses narrower than 32 bits read 0 and are dropped; a 32-bit access
  anywhere in a 16-byte register slot is an access to that register; 64-bit
  accesses are split in two 32-bit ones;
* software-disabling through SVR does not force the LVT mask bits;
* clearing IA32_APIC_BASE.EN disables the APIC until reset.

Timer: the APIC bus clock is one tick per guest instruction, divided by the
divide configuration register, so the current count drops by one every
``divide`` instructions and the interrupt comes when it reaches zero (after
``initial * divide`` instructions; periodic mode reloads).  Timer mode 2
(TSC-deadline, not offered in CPUID) counts like one-shot.

Left out: x2APIC, other CPUs (IPIs that do not target this APIC, and INIT,
STARTUP, NMI, SMI and ExtINT IPIs, are accepted and counted in ``ipis``),
the error LVT interrupt (errors are logged in ESR only), thermal and
performance-counter interrupts, relocating the page (``write_apic_base`` records a new base; the board keeps
the page at 0xfee00000).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

APIC_DEFAULT_BASE = 0xFEE00000
APIC_PAGE_SIZE = 0x1000

# Register offsets.
APIC_ID = 0x020
APIC_VERSION = 0x030
APIC_TPR = 0x080
APIC_APR = 0x090
APIC_PPR = 0x0A0
APIC_EOI = 0x0B0
APIC_LDR = 0x0D0
APIC_DFR = 0x0E0
APIC_SVR = 0x0F0
APIC_ISR = 0x100            # eight 32-bit banks, 0x100-0x170
APIC_TMR = 0x180            # 0x180-0x1f0
APIC_IRR = 0x200            # 0x200-0x270
APIC_ESR = 0x280
APIC_ICR_LOW = 0x300
APIC_ICR_HIGH = 0x310
APIC_LVT_TIMER = 0x320
APIC_LVT_THERMAL = 0x330
APIC_LVT_PERF = 0x340
APIC_LVT_LINT0 = 0x350
APIC_LVT_LINT1 = 0x360
APIC_LVT_ERROR = 0x370
APIC_TIMER_INITIAL_COUNT = 0x380
APIC_TIMER_CURRENT_COUNT = 0x390
APIC_TIMER_DIVIDE_CONFIG = 0x3E0

# Version register: version 0x14, max LVT entry 5 (six LVTs), QEMU's value.
APIC_VERSION_VALUE = 0x00050014

# IA32_APIC_BASE MSR (0x1b).
MSR_IA32_APIC_BASE = 0x1B
APIC_BASE_BSP = 1 << 8
APIC_BASE_ENABLE = 1 << 11
APIC_BASE_ADDRESS_MASK = 0xFFFFF000

SVR_VECTOR_MASK = 0xFF
SVR_APIC_ENABLED = 1 << 8
SVR_WRITABLE = 0x1FF

# LVT entry fields.
LVT_VECTOR_MASK = 0xFF
LVT_DELIVERY_MODE_SHIFT = 8
LVT_PIN_POLARITY = 1 << 13
LVT_LEVEL_TRIGGER = 1 << 15
LVT_MASKED = 1 << 16
LVT_TIMER_MODE_SHIFT = 17
TIMER_MODE_ONE_SHOT = 0
TIMER_MODE_PERIODIC = 1
TIMER_MODE_TSC_DEADLINE = 2

LVT_WRITABLE = {
    APIC_LVT_TIMER: LVT_VECTOR_MASK | LVT_MASKED | (3 << LVT_TIMER_MODE_SHIFT),
    APIC_LVT_THERMAL: LVT_VECTOR_MASK | (7 << LVT_DELIVERY_MODE_SHIFT) | LVT_MASKED,
    APIC_LVT_PERF: LVT_VECTOR_MASK | (7 << LVT_DELIVERY_MODE_SHIFT) | LVT_MASKED,
    APIC_LVT_LINT0: (LVT_VECTOR_MASK | (7 << LVT_DELIVERY_MODE_SHIFT)
                     | LVT_PIN_POLARITY | LVT_LEVEL_TRIGGER | LVT_MASKED),
    APIC_LVT_LINT1: (LVT_VECTOR_MASK | (7 << LVT_DELIVERY_MODE_SHIFT)
                     | LVT_PIN_POLARITY | LVT_LEVEL_TRIGGER | LVT_MASKED),
    APIC_LVT_ERROR: LVT_VECTOR_MASK | LVT_MASKED,
}

# Delivery modes (LVT and ICR bits 10:8).
DM_FIXED, DM_LOWEST_PRIORITY, DM_SMI, DM_NMI = 0, 1, 2, 4
DM_INIT, DM_STARTUP, DM_EXTINT = 5, 6, 7
DELIVERY_MODE_NAMES = {0: "fixed", 1: "lowest-priority", 2: "smi", 3: "reserved",
                       4: "nmi", 5: "init", 6: "startup", 7: "extint"}
LINT0_RESET = DM_EXTINT << LVT_DELIVERY_MODE_SHIFT   # 0x700, QEMU's BSP value

# ICR fields.
ICR_VECTOR_MASK = 0xFF
ICR_DELIVERY_MODE_SHIFT = 8
ICR_DEST_LOGICAL = 1 << 11
ICR_DELIVERY_STATUS = 1 << 12
ICR_SHORTHAND_SHIFT = 18
SHORTHAND_NONE, SHORTHAND_SELF, SHORTHAND_ALL, SHORTHAND_OTHERS = 0, 1, 2, 3
ICR_HIGH_DEST_SHIFT = 24
BROADCAST_PHYSICAL = 0xFF

DFR_FLAT = 0xF

# ESR bits.
ESR_SEND_ILLEGAL_VECTOR = 1 << 5
ESR_RECEIVE_ILLEGAL_VECTOR = 1 << 6
ESR_ILLEGAL_REGISTER = 1 << 7

FIRST_LEGAL_VECTOR = 16


def _highest_vector(bits: int) -> int:
    """Highest set vector (the APIC's highest priority), or -1."""
    return bits.bit_length() - 1


def timer_divisor(divide_config: int) -> int:
    """Divide configuration bits 3,1,0 -> 2, 4, ..., 128, then 1 for 0b111."""
    code = (divide_config & 3) | ((divide_config >> 1) & 4)
    return 1 << ((code + 1) & 7)


@dataclass(frozen=True)
class LocalApicState:
    """The registers, the pending (IRR) and in-service (ISR) vectors as 256-bit ints,
    errors logged but not yet published, and the timer as its virtual-time deadline."""

    apic_base: int
    id: int
    tpr: int
    ldr: int
    dfr_model: int
    svr: int
    irr: int
    isr: int
    tmr: int
    esr: int
    esr_pending: int
    icr_low: int
    icr_high: int
    lvt: tuple[tuple[int, int], ...]     # (register offset, value)
    initial_count: int
    divide_config: int
    now: int
    deadline: int | None
    timer_expirations: int
    ipis: tuple[tuple[tuple[str, str], int], ...]
    nmi_pending: bool = False


class LocalApic:
    """Registers, timer and interrupt acceptance of one xAPIC.

    ``interrupt(vector)`` is where the timer's interrupts go; by default the
    APIC's own IRR (``accept_interrupt``).  ``has_pending()`` /
    ``acknowledge()`` are the CPU side: is a vector above the processor
    priority waiting, and take it (IRR -> ISR).
    """

    def __init__(self, interrupt: Callable[[int], None] | None = None,
                 apic_id: int = 0) -> None:
        self.interrupt = interrupt if interrupt is not None else self.accept_interrupt
        self.apic_base = APIC_DEFAULT_BASE | APIC_BASE_BSP | APIC_BASE_ENABLE
        self.id = apic_id
        self.tpr = 0
        self.ldr = 0
        self.dfr_model = DFR_FLAT
        self.svr = SVR_VECTOR_MASK
        self.irr = 0                      # 256-bit vectors as Python ints
        self.isr = 0
        self.tmr = 0
        self.esr = 0
        self._esr_pending = 0
        self.icr_low = 0
        self.icr_high = 0
        self.lvt = {offset: LVT_MASKED for offset in LVT_WRITABLE}
        self.lvt[APIC_LVT_LINT0] = LINT0_RESET
        self.initial_count = 0
        self.divide_config = 0
        self.now = 0
        self._deadline: int | None = None
        self.timer_expirations = 0
        self.ipis: Counter = Counter()
        self.nmi_pending = False          # an NMI (ICR delivery mode NMI) not yet taken
        self.on_level_eoi: Callable[[int], None] = lambda vector: None   # the board's I/O APIC

    # -- saved state ----------------------------------------------------------------------
    def save_state(self) -> LocalApicState:
        return LocalApicState(
            self.apic_base, self.id, self.tpr, self.ldr, self.dfr_model, self.svr, self.irr, self.isr,
            self.tmr, self.esr, self._esr_pending, self.icr_low, self.icr_high, tuple(self.lvt.items()),
            self.initial_count, self.divide_config, self.now, self._deadline, self.timer_expirations,
            tuple(self.ipis.items()), self.nmi_pending)

    def load_state(self, state: LocalApicState) -> None:
        self.apic_base, self.id, self.tpr, self.ldr = state.apic_base, state.id, state.tpr, state.ldr
        self.dfr_model, self.svr = state.dfr_model, state.svr
        self.irr, self.isr, self.tmr = state.irr, state.isr, state.tmr
        self.esr, self._esr_pending = state.esr, state.esr_pending
        self.icr_low, self.icr_high = state.icr_low, state.icr_high
        self.lvt = dict(state.lvt)
        self.initial_count, self.divide_config = state.initial_count, state.divide_config
        self.now, self._deadline = state.now, state.deadline
        self.timer_expirations = state.timer_expirations
        self.ipis = Counter(dict(state.ipis))
        self.nmi_pending = state.nmi_pending

    # -- IA32_APIC_BASE ---------------------------------------------------------------

    @property
    def base_address(self) -> int:
        return self.apic_base & APIC_BASE_ADDRESS_MASK

    @property
    def globally_enabled(self) -> bool:
        return bool(self.apic_base & APIC_BASE_ENABLE)

    @property
    def software_enabled(self) -> bool:
        return bool(self.svr & SVR_APIC_ENABLED)

    def read_apic_base(self) -> int:
        return self.apic_base

    def write_apic_base(self, value: int) -> None:
        """BSP is read-only. Clearing EN turns the APIC off (SVR's software enable with it);
        setting EN again turns it back on, as on every processor since the Pentium 4 and
        as KVM does (the SDM's way from x2APIC back to xAPIC is exactly that: disable,
        then enable; kvm-unit-tests' ``reset_apic`` does it at start-up). QEMU's TCG APIC
        keeps EN clear but still delivers with SVR set, which no processor does."""
        self.apic_base = (value & APIC_BASE_ADDRESS_MASK) | (self.apic_base & APIC_BASE_BSP) \
            | (value & APIC_BASE_ENABLE)
        if not value & APIC_BASE_ENABLE:
            self.svr &= ~SVR_APIC_ENABLED

    # -- interrupt acceptance and delivery to the CPU ------------------------------------

    def accept_interrupt(self, vector: int, level: bool = False) -> None:
        """A fixed interrupt arrives: set its IRR bit, and its TMR bit if it is
        level-triggered (its EOI is then broadcast to the I/O APIC)."""
        vector &= 0xFF
        if vector < FIRST_LEGAL_VECTOR:
            self._esr_pending |= ESR_RECEIVE_ILLEGAL_VECTOR
            return
        self.irr |= 1 << vector
        if level:
            self.tmr |= 1 << vector
        else:
            self.tmr &= ~(1 << vector)

    def accept_message(self, vector: int, level: bool, dest: int, logical: bool) -> bool:
        """An interrupt message from the I/O APIC (or an MSI) for ``dest``: taken if it
        names this APIC, as a physical ID, the broadcast 0xff, or a logical mask."""
        if not self._targets_self(SHORTHAND_NONE, dest & 0xFF, logical):
            return False
        self.accept_interrupt(vector, level)
        return True

    def accepts_pic_interrupts(self) -> bool:
        """Does 8259A INTR reach the CPU through LINT0 (QEMU's rule)?"""
        return not self.globally_enabled or not self.lvt[APIC_LVT_LINT0] & LVT_MASKED

    def processor_priority(self) -> int:
        isrv = max(_highest_vector(self.isr), 0)
        if (self.tpr >> 4) >= (isrv >> 4):
            return self.tpr
        return isrv & 0xF0

    def pending_vector(self) -> int | None:
        if not (self.globally_enabled and self.software_enabled):
            return None
        irrv = _highest_vector(self.irr)
        if irrv < 0:
            return None
        ppr = self.processor_priority()
        if ppr and (irrv & 0xF0) <= (ppr & 0xF0):
            return None
        return irrv

    def has_pending(self) -> bool:
        return self.pending_vector() is not None

    def acknowledge(self) -> int:
        """INTA: the vector, moved IRR -> ISR; the spurious vector if none."""
        vector = self.pending_vector()
        if vector is None:
            return self.svr & SVR_VECTOR_MASK
        self.irr &= ~(1 << vector)
        self.isr |= 1 << vector
        return vector

    def unacknowledge(self, vector: int) -> bool:
        """Undo the INTA of ``vector`` if it is the one in service (ISR back to IRR):
        the VMM's virtual APIC keeps an interrupt it cannot inject yet pending, as
        KVM's does, so a higher one that arrives meanwhile still goes first."""
        if _highest_vector(self.isr) != vector:
            return False
        self.isr &= ~(1 << vector)
        self.irr |= 1 << vector
        return True

    def end_of_interrupt(self) -> None:
        """EOI: the highest vector in service is done; a level-triggered one's EOI goes on
        to the I/O APIC (``on_level_eoi``), which may send it again."""
        isrv = _highest_vector(self.isr)
        if isrv >= 0:
            self.isr &= ~(1 << isrv)
            if self.tmr >> isrv & 1:
                self.tmr &= ~(1 << isrv)
                self.on_level_eoi(isrv)

    # -- timer (clocked device) -----------------------------------------------------------------

    @property
    def divisor(self) -> int:
        return timer_divisor(self.divide_config)

    @property
    def timer_mode(self) -> int:
        return (self.lvt[APIC_LVT_TIMER] >> LVT_TIMER_MODE_SHIFT) & 3

    def current_count(self) -> int:
        if self._deadline is None:
            return 0
        return max(0, -(-(self._deadline - self.now) // self.divisor))   # ceiling

    def next_event(self) -> int | None:
        """The next timer interrupt; None while idle or masked (the count
        still runs and is settled by the next ``advance``)."""
        if self.lvt[APIC_LVT_TIMER] & LVT_MASKED:
            return None
        return self._deadline

    def advance(self, now: int) -> None:
        if now < self.now:
            raise ValueError(f"virtual time went backwards: {now} < {self.now}")
        self.now = now
        if self._deadline is None or self._deadline > now:
            return
        if self.timer_mode == TIMER_MODE_PERIODIC:
            period = self.initial_count * self.divisor
            expirations = (now - self._deadline) // period + 1
            self._deadline += expirations * period
        else:
            expirations = 1
            self._deadline = None
        self.timer_expirations += expirations
        lvt = self.lvt[APIC_LVT_TIMER]
        if not lvt & LVT_MASKED:
            self.interrupt(lvt & LVT_VECTOR_MASK)

    def _start_timer(self, initial: int) -> None:
        self.initial_count = initial
        self._deadline = self.now + initial * self.divisor if initial else None

    def _set_divide(self, value: int) -> None:
        remaining = self.current_count()
        self.divide_config = value & 0xB
        if self._deadline is not None:
            self._deadline = self.now + remaining * self.divisor

    # -- IPIs ------------------------------------------------------------------------------

    def _targets_self(self, shorthand: int, dest: int, logical: bool) -> bool:
        if shorthand in (SHORTHAND_SELF, SHORTHAND_ALL):
            return True
        if shorthand == SHORTHAND_OTHERS:
            return False
        if not logical:
            return dest in (BROADCAST_PHYSICAL, self.id)
        logical_id = self.ldr >> 24
        if self.dfr_model == DFR_FLAT:
            return bool(dest & logical_id)
        return (dest & 0xF0) == (logical_id & 0xF0) and bool(dest & logical_id & 0x0F)

    def _send_ipi(self) -> None:
        low = self.icr_low
        vector = low & ICR_VECTOR_MASK
        mode = (low >> ICR_DELIVERY_MODE_SHIFT) & 7
        shorthand = (low >> ICR_SHORTHAND_SHIFT) & 3
        dest = self.icr_high >> ICR_HIGH_DEST_SHIFT
        to_self = self._targets_self(shorthand, dest, bool(low & ICR_DEST_LOGICAL))
        if mode in (DM_FIXED, DM_LOWEST_PRIORITY) and vector < FIRST_LEGAL_VECTOR:
            self._esr_pending |= ESR_SEND_ILLEGAL_VECTOR
            outcome = "illegal-vector"
        elif mode in (DM_FIXED, DM_LOWEST_PRIORITY) and to_self:
            self.accept_interrupt(vector)
            outcome = "delivered"
        elif mode == DM_NMI and to_self:
            self.nmi_pending = True   # one latch: a second NMI before this one is taken is lost
            outcome = "delivered"
        else:
            outcome = "not-modelled" if to_self else "no-target"
        self.ipis[(DELIVERY_MODE_NAMES[mode], outcome)] += 1

    # -- MMIO ------------------------------------------------------------------------------

    def mmio_read(self, offset: int, size: int) -> int:
        if size > 4:
            return self.mmio_read(offset, 4) | (self.mmio_read(offset + 4, 4) << 32)
        if size < 4:
            return 0
        return self.read_register(offset & 0xFF0)

    def mmio_write(self, offset: int, size: int, value: int) -> None:
        if size > 4:
            self.mmio_write(offset, 4, value & 0xFFFFFFFF)
            self.mmio_write(offset + 4, 4, value >> 32)
            return
        if size < 4:
            return
        self.write_register(offset & 0xFF0, value & 0xFFFFFFFF)

    def read_register(self, reg: int) -> int:
        if reg == APIC_ID:
            return self.id << 24
        if reg == APIC_VERSION:
            return APIC_VERSION_VALUE
        if reg == APIC_TPR:
            return self.tpr
        if reg == APIC_APR:
            return 0                 # arbitration priority: no arbitration here
        if reg == APIC_PPR:
            return self.processor_priority()
        if reg == APIC_EOI:
            return 0                 # write-only
        if reg == APIC_LDR:
            return self.ldr
        if reg == APIC_DFR:
            return (self.dfr_model << 28) | 0x0FFFFFFF
        if reg == APIC_SVR:
            return self.svr
        for base, bits in ((APIC_ISR, self.isr), (APIC_TMR, self.tmr), (APIC_IRR, self.irr)):
            if base <= reg < base + 0x80:
                return (bits >> (32 * ((reg - base) >> 4))) & 0xFFFFFFFF
        if reg == APIC_ESR:
            return self.esr
        if reg == APIC_ICR_LOW:
            return self.icr_low      # delivery status always idle
        if reg == APIC_ICR_HIGH:
            return self.icr_high
        if reg in self.lvt:
            return self.lvt[reg]
        if reg == APIC_TIMER_INITIAL_COUNT:
            return self.initial_count
        if reg == APIC_TIMER_CURRENT_COUNT:
            return self.current_count()
        if reg == APIC_TIMER_DIVIDE_CONFIG:
            return self.divide_config
        self._esr_pending |= ESR_ILLEGAL_REGISTER
        return 0

    def write_register(self, reg: int, value: int) -> None:
        if reg == APIC_ID:
            self.id = value >> 24
        elif reg == APIC_TPR:
            self.tpr = value & 0xFF
        elif reg == APIC_EOI:
            self.end_of_interrupt()
        elif reg == APIC_LDR:
            self.ldr = value & 0xFF000000
        elif reg == APIC_DFR:
            self.dfr_model = value >> 28
        elif reg == APIC_SVR:
            self.svr = value & SVR_WRITABLE
        elif reg == APIC_ESR:
            # Writing ESR publishes the errors logged since the last write.
            self.esr, self._esr_pending = self._esr_pending, 0
        elif reg == APIC_ICR_LOW:
            self.icr_low = value & ~ICR_DELIVERY_STATUS
            self._send_ipi()
        elif reg == APIC_ICR_HIGH:
            self.icr_high = value & 0xFF000000
        elif reg in self.lvt:
            self.lvt[reg] = value & LVT_WRITABLE[reg]
        elif reg == APIC_TIMER_INITIAL_COUNT:
            self._start_timer(value)
        elif reg == APIC_TIMER_DIVIDE_CONFIG:
            self._set_divide(value)
        elif reg in (APIC_VERSION, APIC_APR, APIC_PPR, APIC_TIMER_CURRENT_COUNT) or \
                APIC_ISR <= reg < APIC_IRR + 0x80:
            pass                     # read-only
        else:
            self._esr_pending |= ESR_ILLEGAL_REGISTER
