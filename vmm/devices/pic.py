"""Two cascaded Intel 8259A interrupt controllers, as wired on the PC/AT.

The master answers at 0x20/0x21 and takes IRQ0-7, the slave at 0xa0/0xa1
takes IRQ8-15 and signals the master on IR2 (the cascade).  Each chip's
command port (A0 = 0) takes ICW1 and OCW2/OCW3, its data port (A0 = 1) takes
ICW2-ICW4 during initialisation and OCW1 (the interrupt mask) afterwards.

Modelled: the ICW1-ICW4 sequence (ICW2 vector base, single/cascade, ICW4
needed, AEOI, special fully nested mode), OCW1 masking, OCW2 non-specific and
specific EOI, OCW3 read-IRR / read-ISR selection, poll command and special
mask mode, the cascade with its INTA sequence, spurious IRQ7 / IRQ15.

Left out: priority rotation (the rotate commands act as plain EOIs and
"set priority" is ignored, so IRQ0 is always highest), level-triggered mode
(ICW1.LTIM is stored, inputs stay edge triggered), 8080/85 mode, buffered mode
and the ELCR at 0x4d0.

Reset state: QEMU's ``pic_reset`` (all registers zero, vector base 0, nothing
masked, "read IRR" selected).  The real chip is undefined until ICW1, and QEMU
without firmware leaves it so until the guest initialises it; programming the
PIC is the guest's job.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields

MASTER_COMMAND, MASTER_DATA = 0x20, 0x21
SLAVE_COMMAND, SLAVE_DATA = 0xA0, 0xA1
CASCADE_IRQ = 2
SPURIOUS_IRQ = 7

# Command-port writes are told apart by bits 4 and 3.
ICW1_INIT = 0x10
OCW3_SELECT = 0x08

ICW1_IC4 = 0x01      # ICW4 needed
ICW1_SNGL = 0x02     # single chip, no ICW3
ICW1_LTIM = 0x08     # level-triggered inputs (not modelled)

ICW2_VECTOR_MASK = 0xF8

ICW4_UPM = 0x01      # 8086/88 mode
ICW4_AEOI = 0x02     # automatic EOI
ICW4_SFNM = 0x10     # special fully nested mode

# OCW2: bits 7-5 are R, SL, EOI; bits 2-0 the level for specific commands.
OCW2_EOI = 0x20
OCW2_SL = 0x40
OCW2_R = 0x80
OCW2_LEVEL_MASK = 0x07

# OCW3
OCW3_RIS = 0x01      # with RR: 1 = read ISR, 0 = read IRR
OCW3_RR = 0x02
OCW3_POLL = 0x04
OCW3_SMM = 0x20      # special mask mode value, applied when ESMM is set
OCW3_ESMM = 0x40

POLL_INTERRUPT = 0x80

NO_IRQ = 8           # "priority" of an empty register


def _highest(bits: int) -> int:
    """Index of the highest-priority (lowest-numbered) set bit, or NO_IRQ."""
    return (bits & -bits).bit_length() - 1 if bits else NO_IRQ


@dataclass(frozen=True)
class I8259State:
    """One chip: IRR/ISR/IMR, the ICW sequence it is in and what the ICWs/OCWs chose."""

    irr: int
    isr: int
    imr: int
    vector_base: int
    icw3: int
    init_step: int
    icw4_needed: bool
    single: bool
    level_triggered: bool
    auto_eoi: bool
    special_fully_nested: bool
    special_mask: bool
    read_isr: bool
    poll: bool
    cascade_input: int


@dataclass(frozen=True)
class PicPairState:
    master: I8259State
    slave: I8259State
    acknowledged: int
    spurious: int


class I8259:
    """One 8259A."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.irr = 0
        self.isr = 0
        self.imr = 0
        self.vector_base = 0
        self.icw3 = 0
        self.init_step = 0          # 0 ready, 2/3/4: the next ICW expected
        self.icw4_needed = False
        self.single = False
        self.level_triggered = False
        self.auto_eoi = False
        self.special_fully_nested = False
        self.special_mask = False
        self.read_isr = False
        self.poll = False
        self.cascade_input = 0      # master only: the IR2 bit while the slave asks

    def save_state(self) -> I8259State:
        return I8259State(**{f.name: getattr(self, f.name) for f in fields(I8259State)})

    def load_state(self, state: I8259State) -> None:
        for f in fields(I8259State):
            setattr(self, f.name, getattr(state, f.name))

    # -- priority resolution -------------------------------------------------------

    def requests(self) -> int:
        return (self.irr | self.cascade_input) & ~self.imr & 0xFF

    def pending_irq(self) -> int | None:
        """The IRQ this chip would signal on INT now, or None."""
        request = _highest(self.requests())
        if request == NO_IRQ:
            return None
        in_service = self.isr
        if self.special_mask:
            in_service &= ~self.imr          # masked levels do not block others
        if self.special_fully_nested and self.cascade_input:
            in_service &= ~(1 << CASCADE_IRQ)  # the slave may nest in itself
        return request if request < _highest(in_service) else None

    def intack(self, irq: int) -> None:
        """The INTA pulses for ``irq``: IRR -> ISR (not in AEOI mode)."""
        self.irr &= ~(1 << irq)
        if not self.auto_eoi:
            self.isr |= 1 << irq

    def non_specific_eoi(self) -> None:
        level = _highest(self.isr)
        if level != NO_IRQ:
            self.isr &= ~(1 << level)

    # -- ports ---------------------------------------------------------------------

    def write_command(self, value: int) -> None:
        if value & ICW1_INIT:
            self._icw1(value)
        elif value & OCW3_SELECT:
            self._ocw3(value)
        else:
            self._ocw2(value)

    def write_data(self, value: int) -> None:
        if self.init_step == 2:                         # ICW2
            self.vector_base = value & ICW2_VECTOR_MASK
            self.init_step = 3 if not self.single else (4 if self.icw4_needed else 0)
        elif self.init_step == 3:                       # ICW3
            self.icw3 = value
            self.init_step = 4 if self.icw4_needed else 0
        elif self.init_step == 4:                       # ICW4
            self.auto_eoi = bool(value & ICW4_AEOI)
            self.special_fully_nested = bool(value & ICW4_SFNM)
            self.init_step = 0
        else:                                           # OCW1
            self.imr = value

    def read(self, command_port: bool) -> int:
        if self.poll:
            self.poll = False
            irq = self.pending_irq()
            if irq is None:
                return 0
            self.intack(irq)
            return POLL_INTERRUPT | irq
        if not command_port:
            return self.imr
        return self.isr if self.read_isr else self.irr | self.cascade_input

    def _icw1(self, value: int) -> None:
        # Initialisation clears the mask, the in-service and (as QEMU does for
        # edge-triggered inputs) the request registers, and selects IRR reads.
        self.irr = self.isr = self.imr = 0
        self.special_mask = self.read_isr = self.poll = False
        self.auto_eoi = self.special_fully_nested = False
        self.icw4_needed = bool(value & ICW1_IC4)
        self.single = bool(value & ICW1_SNGL)
        self.level_triggered = bool(value & ICW1_LTIM)
        self.init_step = 2

    def _ocw2(self, value: int) -> None:
        command = value & (OCW2_R | OCW2_SL | OCW2_EOI)
        if command == OCW2_EOI or command == OCW2_R | OCW2_EOI:
            self.non_specific_eoi()           # rotation left out
        elif command == OCW2_SL | OCW2_EOI or command == OCW2_R | OCW2_SL | OCW2_EOI:
            self.isr &= ~(1 << (value & OCW2_LEVEL_MASK))
        # Rotate-in-AEOI set/clear, set priority and no-op: nothing to do.

    def _ocw3(self, value: int) -> None:
        if value & OCW3_ESMM:
            self.special_mask = bool(value & OCW3_SMM)
        if value & OCW3_RR:
            self.read_isr = bool(value & OCW3_RIS)
        self.poll = bool(value & OCW3_POLL)


class PicPair:
    """Master and slave 8259A with the PC's cascade on master IR2.

    Engine interface: ``raise_irq(n)`` latches an edge on IRQ ``n`` (0-15),
    ``lower_irq(n)`` withdraws a request that was not yet acknowledged (as a
    line dropping before INTA does on the real chip), ``has_pending()`` says
    whether the INT pin is asserted, ``acknowledge()`` runs the INTA cycle and
    returns the vector.
    """

    io_max_size = 1

    def __init__(self) -> None:
        self.master = I8259("master")
        self.slave = I8259("slave")
        self.acknowledged = 0
        self.spurious = 0

    def save_state(self) -> PicPairState:
        return PicPairState(self.master.save_state(), self.slave.save_state(), self.acknowledged, self.spurious)

    def load_state(self, state: PicPairState) -> None:
        self.master.load_state(state.master)
        self.slave.load_state(state.slave)
        self.acknowledged, self.spurious = state.acknowledged, state.spurious

    def line(self, irq: int) -> Callable[[int], None]:
        """A callable(level) for a device's interrupt output on ``irq``."""
        self._check_irq(irq)

        def set_level(level: int) -> None:
            if level:
                self.raise_irq(irq)
            else:
                self.lower_irq(irq)
        return set_level

    def raise_irq(self, irq: int) -> None:
        self._check_irq(irq)
        chip, bit = self._chip(irq)
        chip.irr |= 1 << bit
        self._update_cascade()

    def lower_irq(self, irq: int) -> None:
        self._check_irq(irq)
        chip, bit = self._chip(irq)
        chip.irr &= ~(1 << bit)
        self._update_cascade()

    def has_pending(self) -> bool:
        self._update_cascade()
        return self.master.pending_irq() is not None

    def acknowledge(self) -> int:
        """INTA: the vector of the highest-priority request, moved IRR -> ISR.

        With nothing to deliver the chip answers IR7 without setting ISR: the
        spurious interrupt (vector base + 7 on whichever chip came up empty).
        """
        self._update_cascade()
        irq = self.master.pending_irq()
        if irq is None:
            self.spurious += 1
            return self.master.vector_base | SPURIOUS_IRQ
        self.master.intack(irq)
        if irq != CASCADE_IRQ:
            self.acknowledged += 1
            return self.master.vector_base | irq
        slave_irq = self.slave.pending_irq()
        if slave_irq is None:
            self.spurious += 1
            vector = self.slave.vector_base | SPURIOUS_IRQ
        else:
            self.slave.intack(slave_irq)
            self.acknowledged += 1
            vector = self.slave.vector_base | slave_irq
        self._update_cascade()
        return vector

    # -- ports -----------------------------------------------------------------------

    def io_read(self, port: int, size: int) -> int:
        chip = self.slave if port & 0x80 else self.master
        value = chip.read(command_port=not port & 1)
        self._update_cascade()
        return value

    def io_write(self, port: int, size: int, value: int) -> None:
        chip = self.slave if port & 0x80 else self.master
        if port & 1:
            chip.write_data(value & 0xFF)
        else:
            chip.write_command(value & 0xFF)
        self._update_cascade()

    # -- helpers ---------------------------------------------------------------------

    def _chip(self, irq: int) -> tuple[I8259, int]:
        return (self.master, irq) if irq < 8 else (self.slave, irq - 8)

    def _update_cascade(self) -> None:
        """The slave's INT output is the master's IR2 input."""
        asking = self.slave.pending_irq() is not None
        self.master.cascade_input = (1 << CASCADE_IRQ) if asking else 0

    @staticmethod
    def _check_irq(irq: int) -> None:
        if not 0 <= irq <= 15:
            raise ValueError(f"IRQ {irq} out of range 0-15")
