"""Save a VM to bytes and restore it into a fresh VM, in this process or another.

    data = save_vm(vm)                       # between runs: after a budget stop, a breakpoint
    vm2 = restore_vm(data, serial_output=out.write, max_instructions=budget)
    vm2.run()                                # goes on exactly as ``vm.run()`` would

What a snapshot holds, each part in its own declared form:

* the **board** (:class:`vmm.devices.board.BoardState`): every device's registers,
  FIFOs, latches and pending interrupts, the board's virtual time, the exit status;
* the **CPU and memory** (:class:`vmm.cpu.state.CpuState`): Unicorn's CPU context with
  the hidden segment state, the MSRs and the x87/SSE state; guest RAM and the VMM's
  private host memory, non-zero pages only;
* the **VM**: virtual time (``now``), the TSC read count, whether the mode was launched,
  the host-memory allocation pointer, exits by reason;
* the **mode**: captured generically (:class:`_Encoder`), so the capture does not depend
  on how a mode is put together (its MMU strategy, its VMX processor, its devices and
  delivery are all reached from ``vm.mode``). It walks the mode's object graph and
  records plain data (ints, strings, bytes, containers, enums), the project's own
  objects attribute by attribute (shared ones once), bound methods as (object, name),
  and references to the VM, engine, board and event bus (and the bus's topic lists) as
  such. A restore fills the fresh VM's objects in place, following the same paths
  (through a bound method to its owner too), so whatever the fresh VM wired to them
  (``vm.processor``, the engine's callbacks, closures) reaches the restored state. What
  is not state is declared: closures are *wiring* that a fresh VM builds the same way
  (a restore keeps the fresh one, and fails naming the attribute when a fresh VM has
  none there); capstone instructions in decode caches are saved as (address, bytes)
  and decoded again; :data:`HOOK_TABLES` hold engine hook handles, saved as addresses
  and installed again; :data:`NOT_STATE` (handler wall time) is not saved;
  :data:`ATTACHED` objects (a tracer among the code watchers) watch from outside and
  are left out. Anything else stops the save with an error naming its path
  (``mode.mmu.walker.lock``).
* the **bus subscriptions that are the mode's** (:func:`_mode_subscriptions`): the bus
  is wiring and a restored VM has a fresh one. A subscriber that is one of the mode's
  objects subscribed when it was made, so the fresh VM has that subscription already,
  bound to the object restored in place; the snapshot lists them and a restore checks
  the fresh VM made the same ones. Other subscribers (tracers, cost observers, tests)
  are not saved.

Not saved: the engine's translated-code cache and softmmu TLB. Their entries hold host
pointers, and they are caches of what the state above determines, so a restored engine
starts with both empty. But how many TLB fills a run counts depends on what its TLB
held, so :func:`save_vm` flushes the saved VM's TLB and translated code too (a snapshot
point is a TLB-flush point, like a CR3 load), and a restore installs the code hooks
without letting the fills that causes reach the mode (:class:`_quiet_fills`); the saved
VM's code hooks are installed again the same way, since a hook remembers the translated
blocks it was compiled into past their flush (:func:`_renew_hooks`). The saved
VM and every VM restored from it then go on alike, fill for fill; a VM never saved may
count some TLB fills (and the walks behind them) more or fewer after that point, never
different exits, virtual time or output. Also not saved: breakpoints and tracers (debugger state, re-attached by
whoever wants them), and the host side of the serial port (``restore_vm`` takes it).

The format: ``MAGIC``, a format version, the length and SHA-256 of the payload, then the
payload, zlib-compressed ``marshal`` (version 2: plain data only, no object references,
so equal state gives equal bytes). Version 2 is the composed modes' graph with the list
of the mode's bus subscriptions; a version-1 snapshot is refused. Any malformed, truncated, corrupted or foreign input
raises :class:`SnapshotError` with a one-line message.
"""
from __future__ import annotations

import enum
import hashlib
import importlib
import marshal
import struct
import types
import zlib
from collections import Counter, defaultdict, deque
from typing import Any

from .bus import TOPICS
from .cpu.state import capture_cpu, flush_caches, restore_cpu
from .modes.memory import UNASSIGNED_BASE, UNASSIGNED_SIZE, VMM_UNASSIGNED_BASE

MAGIC = b"VMMSNAP\x00"
FORMAT_VERSION = 2
_HEADER = struct.Struct("<8sHHQ32s")   # magic, version, reserved, payload length, sha256
_MARSHAL_VERSION = 2                   # no reference flags: bytes depend on values only

#: Attributes holding engine hook handles (address -> handle), by class: saved as the
#: addresses, installed again on restore (the VT-x site scanner's, a translated page's).
HOOK_TABLES = {("vmm.vmx.sites:CodeSites", "hooks"), ("vmm.modes.translator:PageTranslation", "hooks")}
#: Attributes that are not the VM's state, left as a fresh VM has them: handler wall time.
NOT_STATE = {("vmm.stats.events:EventCounters", "seconds")}
#: Objects that attach themselves to a VM to watch it, from outside (a tracer is one of the
#: mode's code watchers while it traces): not saved, left out of the containers holding
#: them; whoever wants one on a restored VM attaches it again.
ATTACHED = {"vmm.trace.tracer:Tracer"}
#: Packages whose classes a snapshot may name (everything it rebuilds is one of these).
_TRUSTED = ("vmm.", "collections", "builtins")

_MISSING = object()


class SnapshotError(ValueError):
    """A snapshot that cannot be written or read; the message is one line."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


# -- the container -----------------------------------------------------------------------
def _pack(tree: dict) -> bytes:
    payload = zlib.compress(marshal.dumps(tree, _MARSHAL_VERSION), 6)
    return _HEADER.pack(MAGIC, FORMAT_VERSION, 0, len(payload), hashlib.sha256(payload).digest()) + payload


def _unpack(data: bytes) -> dict:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise SnapshotError(f"a snapshot is bytes, not {type(data).__name__}")
    data = bytes(data)
    if len(data) < _HEADER.size:
        raise SnapshotError(f"not a vmm snapshot: {len(data)} bytes, shorter than the {_HEADER.size}-byte header")
    magic, version, _reserved, length, digest = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise SnapshotError("not a vmm snapshot (bad magic)")
    if version != FORMAT_VERSION:
        raise SnapshotError(f"snapshot format version {version}, this vmm reads version {FORMAT_VERSION}")
    payload = data[_HEADER.size:]
    if len(payload) != length:
        raise SnapshotError(f"truncated or padded snapshot: payload of {len(payload)} bytes, header says {length}")
    if hashlib.sha256(payload).digest() != digest:
        raise SnapshotError("corrupted snapshot: checksum mismatch")
    try:
        tree = marshal.loads(zlib.decompress(payload))
    except (ValueError, EOFError, TypeError, zlib.error) as err:
        raise SnapshotError(f"unreadable snapshot payload: {err}") from None
    if not isinstance(tree, dict) or tree.get("format") != "vmm":
        raise SnapshotError("unreadable snapshot payload: not a vmm state tree")
    return tree


# -- encoding an object graph to plain data ----------------------------------------------------
def _class_path(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _resolve(path: str) -> Any:
    module, _, qualname = path.partition(":")
    if not module.startswith(_TRUSTED) and module not in ("builtins", "collections"):
        raise SnapshotError(f"snapshot names {path}, outside vmm")
    try:
        target: Any = importlib.import_module(module)
        for part in qualname.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError):
        raise SnapshotError(f"snapshot names {path}, which this vmm does not have") from None
    return target


def _attached(obj: Any) -> bool:
    return _class_path(type(obj)) in ATTACHED


def _is_ours(obj: Any) -> bool:
    return type(obj).__module__.startswith("vmm.") and hasattr(obj, "__dict__")


class _Encoder:
    """Plain data for an object graph; ``roots`` (the VM, its engine, its board) by name."""

    def __init__(self, roots: dict[str, Any]):
        self.roots = {id(obj): name for name, obj in roots.items()}
        self.memo: dict[int, int] = {}
        self.keep: list = []    # objects memoised by id stay alive until the encoding ends
        self.hook_tables: list[dict] = []   # the HOOK_TABLES met, as the graph holds them

    def encode(self, value: Any, path: str) -> Any:
        if value is None or isinstance(value, (bool, int, float, str, bytes)) and not isinstance(value, enum.Enum):
            return value
        if id(value) in self.roots:
            return ("root", self.roots[id(value)])
        if isinstance(value, enum.Enum):
            return ("enum", _class_path(type(value)), value.value)
        if isinstance(value, bytearray):
            return ("bytearray", bytes(value))
        if isinstance(value, (types.FunctionType, types.BuiltinFunctionType, types.MethodType)):
            return self._callable(value, path)
        if isinstance(value, type):
            return ("class", _class_path(value))
        if type(value).__name__ == "CsInsn":
            return ("insn", value.address, bytes(value.bytes), value._cs.mode, bool(value._cs.detail))
        if isinstance(value, (list, tuple, set, frozenset, deque)):
            items = [self.encode(v, f"{path}[{i}]") for i, v in enumerate(value) if not _attached(v)]
            kind = {list: "list", tuple: "tuple", set: "set", frozenset: "frozenset", deque: "deque"}.get(type(value))
            if kind is None:
                raise SnapshotError(f"cannot save {path}: a {type(value).__name__} (a container subclass)")
            return (kind, items)
        if isinstance(value, dict):
            return self._mapping(value, path)
        if _is_ours(value):
            return self._object(value, path)
        raise SnapshotError(f"cannot save {path}: a {type(value).__module__}.{type(value).__qualname__} is "
                            "neither plain data nor a declared cache, handle or wiring")

    def _mapping(self, value: dict, path: str) -> Any:
        items = [[self.encode(k, f"{path}.key"), self.encode(v, f"{path}[{k!r}]")] for k, v in value.items()]
        if type(value) is dict:
            return ("dict", items)
        if type(value) is Counter:
            return ("counter", items)
        if type(value) is defaultdict:
            return ("defaultdict", self.encode(value.default_factory, f"{path}.default_factory"), items)
        raise SnapshotError(f"cannot save {path}: a {type(value).__name__} (a mapping subclass)")

    def _callable(self, value: Any, path: str) -> Any:
        owner = getattr(value, "__self__", None)
        if isinstance(value, types.MethodType) and (id(owner) in self.roots or _is_ours(owner)):
            return ("method", self.encode(owner, f"{path}.__self__"), value.__func__.__name__)
        if isinstance(value, types.FunctionType) and value.__closure__ is None \
                and "<locals>" not in value.__qualname__ and value.__name__ != "<lambda>":
            return ("function", f"{value.__module__}:{value.__qualname__}")
        return ("wiring",)      # a closure: the fresh VM builds its own

    def _object(self, value: Any, path: str) -> Any:
        index = self.memo.get(id(value))
        if index is not None:
            return ("ref", index)
        index = self.memo[id(value)] = len(self.memo)
        self.keep.append(value)
        cls = _class_path(type(value))
        if cls in ATTACHED:
            raise SnapshotError(f"cannot save {path}: a {cls} watches the VM from outside and is not its state")
        attrs = []
        for name, attr in vars(value).items():
            where = f"{path}.{name}"
            if (cls, name) in NOT_STATE:
                attrs.append([name, ("not_state",)])
            elif (cls, name) in HOOK_TABLES:
                self.hook_tables.append(attr)
                attrs.append([name, ("hooks", list(attr))])
            else:
                attrs.append([name, self.encode(attr, where)])
        return ("obj", index, cls, attrs)


class _Decoder:
    """Rebuilds an encoded graph over the matching objects of a fresh VM (``fresh``),
    keeping their identity so the fresh VM's wiring (closures, engine callbacks) stays
    connected to the restored state."""

    def __init__(self, roots: dict[str, Any], engine=None):
        self.roots = roots
        self.engine = engine
        self.memo: dict[int, Any] = {}
        self.hook_tables: list[dict] = []
        self.stale_hooks: list[int] = []
        self.decoders: dict[tuple[int, bool], Any] = {}

    def decode(self, node: Any, fresh: Any, path: str) -> Any:
        if not isinstance(node, tuple):
            return node
        kind = node[0]
        handler = getattr(self, f"_{kind}", None)
        if handler is None:
            raise SnapshotError(f"unreadable snapshot: unknown node {kind!r} at {path}")
        return handler(node, fresh, path)

    def _root(self, node, fresh, path):
        return self.roots[node[1]]

    def _enum(self, node, fresh, path):
        return _resolve(node[1])(node[2])

    def _bytearray(self, node, fresh, path):
        if isinstance(fresh, bytearray):
            fresh[:] = node[1]
            return fresh
        return bytearray(node[1])

    def _class(self, node, fresh, path):
        return _resolve(node[1])

    def _function(self, node, fresh, path):
        return _resolve(node[1])

    def _method(self, node, fresh, path):
        # The fresh VM's bound method leads to its owner: restoring into that owner keeps
        # its identity (``vm.processor`` and the engine's callbacks still reach it).
        owner = fresh.__self__ if isinstance(fresh, types.MethodType) else _MISSING
        return getattr(self.decode(node[1], owner, f"{path}.__self__"), node[2])

    def _wiring(self, node, fresh, path):
        if fresh is _MISSING:
            raise SnapshotError(f"cannot restore {path}: it is wiring (a closure) that a fresh VM does not set up")
        return fresh

    def _not_state(self, node, fresh, path):
        if fresh is _MISSING:
            raise SnapshotError(f"cannot restore {path}: a fresh VM has no such attribute")
        return fresh

    def _hooks(self, node, fresh, path):
        if isinstance(fresh, dict):
            self.stale_hooks.extend(fresh.values())
        table = dict.fromkeys(node[1])        # handles filled in by install_hooks()
        self.hook_tables.append(table)
        return table

    def install_hooks(self, vm) -> None:
        with _quiet_fills(vm):
            for handle in self.stale_hooks:
                vm.engine.remove_hook(handle)
            for table in self.hook_tables:
                for address in table:
                    table[address] = vm.engine.hook_code_site(address)

    def _insn(self, node, fresh, path):
        from capstone import CS_ARCH_X86, Cs

        _, address, code, mode, detail = node
        cs = self.decoders.get((mode, detail))
        if cs is None:
            cs = self.decoders[(mode, detail)] = Cs(CS_ARCH_X86, mode)
            cs.detail = detail
        insn = next(cs.disasm(code, address, 1), None)
        if insn is None:
            raise SnapshotError(f"cannot restore {path}: saved instruction bytes {code.hex()} do not decode")
        return insn

    def _sequence(self, node, fresh, path, kind):
        olds = list(fresh) if isinstance(fresh, kind) and kind in (list, deque) else []
        items = [self.decode(v, olds[i] if i < len(olds) else _MISSING, f"{path}[{i}]")
                 for i, v in enumerate(node[1])]
        if kind is list and isinstance(fresh, list):
            fresh[:] = items
            return fresh
        if kind is set and isinstance(fresh, set):
            fresh.clear()
            fresh.update(items)
            return fresh
        if kind is deque and isinstance(fresh, deque):
            fresh.clear()
            fresh.extend(items)
            return fresh
        return kind(items)

    def _list(self, node, fresh, path):
        return self._sequence(node, fresh, path, list)

    def _tuple(self, node, fresh, path):
        olds = fresh if isinstance(fresh, tuple) else ()
        return tuple(self.decode(v, olds[i] if i < len(olds) else _MISSING, f"{path}[{i}]")
                     for i, v in enumerate(node[1]))

    def _set(self, node, fresh, path):
        return self._sequence(node, fresh, path, set)

    def _frozenset(self, node, fresh, path):
        return frozenset(self.decode(v, _MISSING, path) for v in node[1])

    def _deque(self, node, fresh, path):
        return self._sequence(node, fresh, path, deque)

    def _items(self, items, fresh, path) -> list:
        out = []
        for key_node, value_node in items:
            key = self.decode(key_node, _MISSING, f"{path}.key")
            old = fresh.get(key, _MISSING) if isinstance(fresh, dict) else _MISSING
            out.append((key, self.decode(value_node, old, f"{path}[{key!r}]")))
        return out

    def _fill(self, target, fresh, items):
        target = fresh if type(fresh) is type(target) else target
        target.clear()
        for key, value in items:      # (Counter.update would count the pairs)
            target[key] = value
        return target

    def _dict(self, node, fresh, path):
        return self._fill({}, fresh, self._items(node[1], fresh, path))

    def _counter(self, node, fresh, path):
        return self._fill(Counter(), fresh, self._items(node[1], fresh, path))

    def _defaultdict(self, node, fresh, path):
        factory = self.decode(node[1], _MISSING, f"{path}.default_factory")
        items = self._items(node[2], fresh, path)
        if type(fresh) is defaultdict and fresh.default_factory is factory:
            return self._fill(fresh, fresh, items)
        return self._fill(defaultdict(factory), _MISSING, items)

    def _ref(self, node, fresh, path):
        try:
            return self.memo[node[1]]
        except KeyError:
            raise SnapshotError(f"unreadable snapshot: reference to object {node[1]} before it at {path}") from None

    def _obj(self, node, fresh, path):
        _, index, class_path, attrs = node
        cls = _resolve(class_path)
        if not isinstance(cls, type):
            raise SnapshotError(f"unreadable snapshot: {class_path} at {path} is not a class")
        target = fresh if type(fresh) is cls else cls.__new__(cls)
        self.memo[index] = target
        saved = set()
        for name, value_node in attrs:
            old = vars(target).get(name, _MISSING) if target is fresh else _MISSING
            object.__setattr__(target, name, self.decode(value_node, old, f"{path}.{name}"))
            saved.add(name)
        for name in [n for n in vars(target) if n not in saved]:
            object.__delattr__(target, name)
        return target


# -- the VM ------------------------------------------------------------------------------
def _devices(vm) -> list[tuple[int, int]]:
    """The MMIO regions, which hold no memory to save: the board's devices and the
    unassigned device's two windows."""
    return [(base, length) for base, length, _ in vm.board.mmio_bus.regions()] \
        + [(UNASSIGNED_BASE, UNASSIGNED_SIZE), (VMM_UNASSIGNED_BASE, UNASSIGNED_SIZE)]


def _roots(vm) -> dict[str, Any]:
    """The VM's own parts, saved by name and restored as the fresh VM's. The event bus and
    each of its topics are among them: the bus is wiring (whoever holds it or a topic, as
    the mode's event counters hold ``event``, is given the fresh VM's) and nothing on it
    is saved."""
    roots = {"vm": vm, "engine": vm.engine, "board": vm.board, "bus": vm.bus}
    roots.update({f"bus.{topic}": getattr(vm.bus, topic) for topic in TOPICS})
    return roots


def _mode_subscriptions(bus, index_of) -> list[list]:
    """The bus's subscribers that are the mode's own: bound methods of objects in its saved
    graph, as [topic, object index, method name], in the bus's order. Such a subscription
    is wiring its subscriber's construction makes, so a fresh VM has it already, bound to
    the object the restore fills in place; :func:`restore_vm` checks that it does. Any
    other subscriber (a tracer, a cost observer, a test's callback) watches from outside
    and is not saved."""
    found = []
    for topic in TOPICS:
        for callback in getattr(bus, topic):
            owner = getattr(callback, "__self__", None)
            index = None if owner is None else index_of(owner)
            if index is not None:
                found.append([topic, index, callback.__func__.__name__])
    return found


class _quiet_fills:
    """While the VMM installs code hooks, answer the TLB fills they cause without the mode.

    Adding or removing a code hook makes Unicorn translate its address, to drop translated
    code holding it (measured: a TLB fill per hook, outside any run). Answered by the mode,
    those fills would count and change its state (shadow tables, translations); the VMM
    installing hooks is not the guest fetching code. The entries they leave are flushed
    after."""

    def __init__(self, vm):
        self.vm = vm

    def __enter__(self):
        from .cpu.engine import PROT_READ, SCRATCH_PAGE, Fill

        # The engine looks ``on_tlb_fill`` up on the VM at every fill, so an instance
        # attribute shadows VM.on_tlb_fill (the mode's MMU, then the bus's ``fill``
        # subscribers) until it is deleted again.
        self.vm.on_tlb_fill = lambda vaddr, access: Fill(SCRATCH_PAGE, PROT_READ)
        return self

    def __exit__(self, *exc):
        del self.vm.on_tlb_fill
        flush_caches(self.vm.engine)
        return False


def _renew_hooks(vm, tables: list[dict]) -> None:
    """Install the saved VM's code hooks again, as a restore installs them.

    A code hook Unicorn has compiled into a block remembers that block's region after the
    block is flushed, and removing the hook later retranslates the region: a TLB fill
    outside the guest's own fetches, which reaches the mode (in ``bt``, a translator that
    drops a remapped page and so removes its callouts sees a fetch of the page's other
    linear alias and translates it). A restored VM's hooks are new and remember nothing,
    so the saved VM's are made new too: the flush at a snapshot point reaches the hooks."""
    with _quiet_fills(vm):
        for table in tables:
            for address, handle in table.items():
                vm.engine.remove_hook(handle)
                table[address] = vm.engine.hook_code_site(address)


def save_vm(vm) -> bytes:
    """The VM's whole state as bytes. Call it between runs (``vm.run()`` has returned:
    an instruction budget, a breakpoint or a step stopped it); it flushes the VM's TLB
    (see the module docstring). Saving twice at the same point gives the same bytes."""
    if vm.engine.running:
        raise SnapshotError("cannot save a VM while it runs: save between runs (after a budget stop or a step)")
    flush_caches(vm.engine)
    modes = _Encoder(_roots(vm))
    mode_tree = modes.encode(vm.mode, "mode")
    _renew_hooks(vm, modes.hook_tables)
    subscriptions = _mode_subscriptions(vm.bus, lambda owner: modes.memo.get(id(owner)))
    plain = _Encoder({})
    tree = {
        "format": "vmm",
        "mode_name": vm.mode.name,
        "ram_size": vm.ram_size,
        "devices": sorted(vm.board.devices.items()),
        "image": plain.encode(vm.image, "image"),
        "vm": {"now": vm.now, "tsc_reads": vm.tsc_reads, "launched": vm._launched,
               "tsc": [vm.tsc_offset, vm.tsc_last, vm.clock_read],
               "host_next": vm._host_next, "exits": plain.encode(vm.exits, "vm.exits")},
        "board": plain.encode(vm.board.save_state(), "board"),
        "cpu": plain.encode(capture_cpu(vm.engine, _devices(vm)), "cpu"),
        "mode": mode_tree,
        "subscriptions": subscriptions,
    }
    return _pack(tree)


def snapshot_info(data: bytes) -> dict[str, Any]:
    """What a snapshot holds, without building a VM: mode, RAM size, virtual time, sizes."""
    tree = _unpack(data)
    try:
        return {"mode": tree["mode_name"], "ram_size": tree["ram_size"], "now": tree["vm"]["now"],
                "bytes": len(data)}
    except (KeyError, TypeError):
        raise SnapshotError("unreadable snapshot payload: no mode, RAM size or virtual time") from None


def restore_vm(data: bytes, *, serial_output=None, serial_input=None, max_instructions: int | None = None,
               timeout: float | None = None, mode_options: dict | None = None):
    """A fresh VM in the state ``data`` was saved in. The arguments are the host side and
    the run's limits, as for :class:`vmm.vm.VM`; the rest comes from the snapshot."""
    from .vm import VM

    tree = _unpack(data)
    try:
        plain = _Decoder({})
        image = plain.decode(tree["image"], _MISSING, "image")
        vm = VM(image, mode=tree["mode_name"], ram_size=tree["ram_size"], serial_output=serial_output,
                serial_input=serial_input, max_instructions=max_instructions, timeout=timeout,
                mode_options=mode_options, devices=dict(tree.get("devices", ())))
        vm.board.load_state(plain.decode(tree["board"], _MISSING, "board"))
        restore_cpu(vm.engine, plain.decode(tree["cpu"], _MISSING, "cpu"), _devices(vm))
        saved = tree["vm"]
        vm.now, vm.tsc_reads, vm._launched = saved["now"], saved["tsc_reads"], saved["launched"]
        vm.tsc_offset, vm.tsc_last, vm.clock_read = saved["tsc"]
        vm._host_next = saved["host_next"]
        vm.exits = plain.decode(saved["exits"], _MISSING, "vm.exits")
        modes = _Decoder(_roots(vm), vm.engine)
        modes.decode(tree["mode"], vm.mode, "mode")
        if vm.processor is not vm.mode.processor:
            raise SnapshotError("cannot restore the mode: the processor the VM dispatches to is not the restored one")
        restored = {id(obj): index for index, obj in modes.memo.items()}
        made = _mode_subscriptions(vm.bus, lambda owner: restored.get(id(owner)))
        if made != tree["subscriptions"]:
            raise SnapshotError(f"cannot restore the mode's bus subscriptions {tree['subscriptions']}: a fresh VM "
                                f"makes {made} (a subscription made after construction is not wiring)")
        modes.install_hooks(vm)
    except SnapshotError:
        raise
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as err:
        raise SnapshotError(f"cannot restore the snapshot: {type(err).__name__}: {err}") from None
    return vm


__all__ = [
    "ATTACHED",
    "FORMAT_VERSION",
    "HOOK_TABLES",
    "MAGIC",
    "NOT_STATE",
    "SnapshotError",
    "restore_vm",
    "save_vm",
    "snapshot_info",
]

