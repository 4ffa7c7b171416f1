"""The event bus of one VM: what happens is published here, whoever wants it subscribes.

Publishers (the run loop, the modes, the MMU strategies) never know their subscribers
(the statistics, the cost model's :class:`~vmm.cost.counters.RunObserver`, the tracer,
the fuzz oracles, tests). Nothing patches another object and nothing rebinds a callback.

Each topic is a list of callbacks, an attribute of the bus, so a publisher's cost with
no subscriber is one attribute load and one truth test::

    subs = bus.inject
    if subs:
        for deliver in subs:
            deliver(event)

Topics and what a subscriber is called with:

=========  ====================================================================
exit       ``(exit)``: an exit, before its handler runs (the VMCS exit fields are fresh)
handled    ``(exit, value, vmcs)``: the same exit after its handler; ``value`` is what
           it returned for the instruction (None unless an IN, MMIO load or fill answer)
inject     ``(event)``: an event delivered into the guest (``vmm.cpu.delivery.Event``)
fill       ``(vaddr, access, answer)``: a TLB miss and the MMU's answer (Fill or Fault)
walk       ``(vaddr, references)``: a hardware walk of the guest's own tables inside a
           fill (1-D: native, pv), with the number of paging-structure reads it made
mmio       ``(address, size, value)``: a device-page access (value None: a load)
port       ``(port, size, value)``: a port access (value None: IN)
event      ``(category, name, n)``: one of the mode's own events (a hypercall, callout,
           trap, bounce frame, translated block...)
stop       ``(result)``: the VM stopped (``vmm.vm.VmResult``)
=========  ====================================================================

Instructions are not a topic: a callback per instruction is the one thing the hot path
must never pay for unasked. :meth:`EventBus.on_instruction` installs the engine's
per-instruction hook for its subscriber only.
"""
from __future__ import annotations

from collections.abc import Callable

TOPICS = ("exit", "handled", "inject", "fill", "walk", "mmio", "port", "event", "stop")


class EventBus:
    """One list of subscribers per topic (see the module docstring)."""

    def __init__(self, engine=None):
        self._engine = engine
        self.exit: list[Callable] = []
        self.handled: list[Callable] = []
        self.inject: list[Callable] = []
        self.fill: list[Callable] = []
        self.walk: list[Callable] = []
        self.mmio: list[Callable] = []
        self.port: list[Callable] = []
        self.event: list[Callable] = []
        self.stop: list[Callable] = []

    def subscribe(self, topic: str, callback: Callable) -> Callable:
        """Call ``callback`` for every event of ``topic``; returns it (for unsubscribe)."""
        if topic not in TOPICS:
            raise ValueError(f"no topic {topic!r}; the topics are: {', '.join(TOPICS)}")
        getattr(self, topic).append(callback)
        return callback

    def unsubscribe(self, topic: str, callback: Callable) -> None:
        subs = getattr(self, topic)
        if callback in subs:
            subs.remove(callback)

    def publish(self, topic: str, *args) -> None:
        """For publishers off the hot path; hot ones read the topic's list themselves."""
        for callback in getattr(self, topic):
            callback(*args)

    def on_instruction(self, callback: Callable[[int, int], None] | None = None, *, raw=None) -> int:
        """Before every guest instruction: ``callback(address, size)``, or ``raw(handle,
        address, size, data)`` called from C directly (it must catch its own exceptions
        and hand them to ``Engine.fail``). Returns the engine's hook handle."""
        if raw is not None:
            return self._engine.add_raw_instruction_hook(raw)
        return self._engine.add_instruction_hook(callback)
