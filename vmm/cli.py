"""The ``vmm`` command line."""
from __future__ import annotations

import os
import sys

import click

from .modes import MODES

EXIT_USAGE = 2


def _fail(message: str) -> None:
    click.echo(f"vmm: error: {message}", err=True)
    sys.exit(EXIT_USAGE)


def _resolve_image(target: str, *, ram_size: int, kind: str, cmdline: str | None, modules: tuple[str, ...],
                   load_address: int | None):
    """A path to an image file, or the name of a built-in guest (built on demand).

    Under ``--mode pv`` a built-in guest is built in its pv flavour and every image is
    loaded as a Xen PV kernel (ELF notes, vmm.loader.xen); the mode comes from the
    command's own ``--mode`` option.
    """
    from .build.guests import build_guest, list_guests
    from .loader.image import ImageError, load_image
    from .loader.xen import load_xen

    ctx = click.get_current_context(silent=True)
    pv = ctx is not None and ctx.params.get("mode") == "pv"
    try:
        if not os.path.exists(target) and target in {g.name for g in list_guests()}:
            built = build_guest(target, "pv" if pv else "native")
            if pv:
                return load_xen(built.elf, ram_size=ram_size, cmdline=cmdline, modules=list(modules),
                                image_name=target)
            return load_image(built.elf, ram_size=ram_size, cmdline=cmdline, modules=list(modules),
                              image_name=target)
        if pv:
            if kind not in ("auto", "multiboot") or load_address is not None:
                _fail("--mode pv boots Xen PV kernels (ELF with Xen notes): no --kind or --load-address")
            return load_xen(target, ram_size=ram_size, cmdline=cmdline, modules=list(modules))
        if kind == "auto" and _is_pv_kernel(target, ram_size):
            _fail(f"{target} is a Xen PV kernel (it carries Xen ELF notes): boot it with --mode pv")
        return load_image(target, ram_size=ram_size, kind=kind, cmdline=cmdline, modules=list(modules),
                          load_address=load_address)
    except ImageError as err:
        _fail(str(err))


def _is_pv_kernel(path: str, ram_size: int) -> bool:
    from .loader.image import ImageError
    from .loader.xen import load_xen

    try:
        load_xen(path, ram_size=ram_size)
    except ImageError:
        return False
    return True


def _parse_int(ctx, param, value):
    if value is None:
        return None
    try:
        return int(value, 0)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a number (decimal or 0x-prefixed hex)")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="vmm")
def main():
    """vmm: an x86 virtualization lab.

    Boot tiny guests on a Unicorn CPU under a Python VMM, in one of six modes
    (native, trap, bt, pv, vtx, vtx-ept), and see what each costs.

    \b
    Start with:
      vmm guests            list the built-in guests
      vmm run hello         boot one and print its serial console
    """


@main.command()
@click.argument("image", metavar="IMAGE_OR_GUEST")
@click.option("--mode", type=click.Choice(MODES), default="native", show_default=True,
              help="How the guest is virtualized (see README: the six modes).")
@click.option("--max-instructions", type=int, default=None, metavar="N",
              help="Stop after N guest instructions (counted exactly; the run is about 10x slower).")
@click.option("--timeout", type=float, default=10.0, show_default=True, metavar="S",
              help="Stop after S seconds of wall-clock time; 0 disables the limit.")
@click.option("--cmdline", default=None, help="Multiboot command line after the image name.")
@click.option("--module", "modules", multiple=True, type=click.Path(), metavar="FILE",
              help="Multiboot module (repeatable), loaded page-aligned after the image.")
@click.option("--ram", "ram_mib", type=click.IntRange(1, 3072), default=128, show_default=True,
              metavar="MIB", help="Guest RAM in MiB.")
@click.option("--kind", type=click.Choice(["auto", "multiboot", "flat", "bootsector"]), default="auto",
              show_default=True, help="Image format; auto recognises Multiboot ELF and boot sectors.")
@click.option("--load-address", callback=_parse_int, default=None, metavar="ADDR",
              help="Load (and entry) address of a flat binary, e.g. 0x100000.")
@click.option("--serial-input", type=click.File("rb"), default=None, metavar="FILE",
              help="Bytes the guest reads from the UART ('-' for stdin).")
@click.option("--control", "controls", multiple=True, metavar="NAME[=on|off]",
              help="vtx: set or clear a VM-execution, VM-exit or VM-entry control by its SDM name, "
              "e.g. --control HLT_EXITING=off --control RDTSC_EXITING (repeatable).")
@click.option("--vmcs", "vmcs_writes", multiple=True, metavar="FIELD=VALUE",
              help="vtx: VMWRITE a field before launch, e.g. --vmcs EXCEPTION_BITMAP=0 "
              "or --vmcs GUEST_CR0=0x80000000 (repeatable).")
@click.option("--gdb", "gdb_address", default=None, metavar="[HOST]:PORT",
              help="Serve the GDB remote protocol (loopback by default) and wait for gdb before the first "
              "instruction: gdb -ex 'target remote :1234' guest.elf. In gdb, 'monitor stat' prints the exit "
              "statistics and 'monitor walk ADDR' explains a translation.")
@click.option("--wait", is_flag=True, help="With --gdb: wait for the debugger before running (what --gdb "
              "always does; accepted for QEMU-style command lines).")
@click.option("--page-walk-cache", is_flag=True,
              help="vtx-ept: cache the EPT translation of guest page-table pages (fewer 2-D walk references).")
@click.option("--stat", is_flag=True, help="After the run, print exits by reason (count, share, "
              "handler time), as kvm_stat does. In native mode these are the events a bare machine sees.")
@click.option("--stat-json", type=click.Path(dir_okay=False), default=None, metavar="FILE",
              help="Write the same statistics as JSON.")
def run(image, mode, max_instructions, timeout, cmdline, modules, ram_mib, kind, load_address, serial_input,
        controls, vmcs_writes, gdb_address, wait, page_walk_cache, stat, stat_json):
    """Boot IMAGE_OR_GUEST and print its serial output.

    IMAGE_OR_GUEST is a Multiboot ELF, a 512-byte boot sector, a flat binary (with
    --kind flat --load-address), or the name of a built-in guest. The exit status is the
    guest's own (isa-debug-exit: (value << 1) | 1, as QEMU); 1 when the VM was stopped
    for another reason, which is printed; 2 for bad input.
    """
    from .vm import VM

    ram_size = ram_mib << 20
    loaded = _resolve_image(image, ram_size=ram_size, kind=kind, cmdline=cmdline, modules=modules,
                            load_address=load_address)
    out = sys.stdout.buffer

    def write(data: bytes) -> None:
        out.write(data)
        out.flush()

    try:
        if page_walk_cache and mode != "vtx-ept":
            _fail("--page-walk-cache belongs to --mode vtx-ept")
        vm = VM(loaded, mode=mode, ram_size=ram_size, serial_output=write,
                serial_input=serial_input.read() if serial_input else None,
                max_instructions=max_instructions, timeout=timeout or None,
                mode_options={"page_walk_cache": True} if page_walk_cache else None)
    except (NotImplementedError, ValueError) as err:
        _fail(str(err))
    if controls or vmcs_writes:
        if not hasattr(vm.mode, "vmcs"):
            _fail(f"--control and --vmcs need a VT-x mode (vtx, vtx-ept), not {mode!r}")
        from .vmx.tuning import VmcsEditError, apply_controls, apply_vmcs_writes
        try:
            apply_vmcs_writes(vm.mode.vmcs, vmcs_writes)
            apply_controls(vm.mode.vmcs, controls)
        except VmcsEditError as err:
            _fail(str(err))
    if wait and not gdb_address:
        _fail("--wait goes with --gdb [HOST]:PORT")
    if gdb_address:
        from .trace.gdbstub import serve_gdb
        host, _, port_text = gdb_address.rpartition(":")
        try:
            port = int(port_text)
        except ValueError:
            _fail(f"--gdb {gdb_address}: expected [HOST]:PORT, e.g. :1234")
        vm.timeout = None  # the debugger decides how long the guest runs
        try:
            result = serve_gdb(vm, host or "127.0.0.1", port, symbols=loaded.symbols,
                               on_listen=lambda p: click.echo(f"vmm: waiting for gdb on {host or '127.0.0.1'}:{p}",
                                                              err=True))
        except OSError as err:
            _fail(f"--gdb {gdb_address}: {err.strerror or err}")
    else:
        result = vm.run()
    if result.kind.name != "EXIT":
        click.echo(f"vmm: {result.kind.value}: {result.message}", err=True)
    if stat or stat_json:
        _report_stats(result, mode=mode, guest=image, show=stat, json_path=stat_json)
    sys.exit(result.status)


def _report_stats(result, *, mode: str, guest: str, show: bool, json_path: str | None) -> None:
    from rich.console import Console

    from .cost.events import render_events
    from .cost.stats import exit_stats, render, render_memory, stats_json

    rows = exit_stats(result.exits, result.exit_seconds)
    if show:
        label = "exits" if mode != "native" else "events"
        console = Console()
        console.print(render(rows, f"{guest} in {mode}: {sum(r.count for r in rows)} {label}, "
                                   f"{result.wall_seconds:.3f} s wall"))
        for category, counts in result.events.items():
            console.print(render_events(category, counts, result.event_seconds.get(category, {}),
                                        f"{category} ({mode}): {sum(counts.values())}"))
        if result.memory:
            console.print(render_memory(result.memory, f"memory virtualization ({mode})"))
    if json_path:
        text = stats_json(rows, mode=mode, guest=guest, instructions=result.instructions,
                          virtual_time=result.virtual_time, wall_seconds=result.wall_seconds,
                          memory=result.memory, events=result.events)
        tmp = f"{json_path}.tmp{os.getpid()}"
        try:
            with open(tmp, "w") as f:
                f.write(text + "\n")
            os.replace(tmp, json_path)
        except OSError as err:
            if os.path.exists(tmp):
                os.unlink(tmp)
            _fail(f"cannot write {json_path}: {err.strerror}")


@main.command()
@click.argument("image", metavar="IMAGE_OR_GUEST")
@click.option("--gva", required=True, callback=_parse_int, metavar="ADDR",
              help="The guest-linear address to translate, e.g. 0x40001004.")
@click.option("--mode", type=click.Choice(("native", "trap", "bt", "vtx", "vtx-ept")), default="vtx-ept",
              show_default=True,
              help="native: the guest's own 1-D walk; vtx, trap, bt: plus the shadow tables the MMU really "
              "walks; vtx-ept: the 2-D walk, each guest entry's address translated through EPT.")
@click.option("--at", "when", default="end", show_default=True, metavar="WHEN",
              help="When to look: 'end' (after the guest stops), a number of guest instructions, "
              "or a symbol or address at which to stop (before that instruction runs).")
@click.option("--access", type=click.Choice(("read", "write", "fetch")), default="read", show_default=True)
@click.option("--user", is_flag=True, help="Translate as a user-mode (CPL 3) access.")
@click.option("--timeout", type=float, default=10.0, show_default=True, metavar="S")
def walk(image, gva, mode, when, access, user, timeout):
    """Explain how the guest translates one address: every paging-structure entry, its
    address and bits, each EPT step (vtx-ept) or the shadow entries (vtx), and the result
    or the fault.

    \b
    Example:
      vmm walk paging --gva 0x40001004 --at pf_handler --mode vtx-ept
    """
    from .trace.walk import explain
    from .vm import VM

    loaded = _resolve_image(image, ram_size=128 << 20, kind="auto", cmdline=None, modules=(), load_address=None)
    budget = None
    if when != "end":
        try:
            budget = int(when, 0)
        except ValueError:
            budget = None
    vm = VM(loaded, mode=mode, serial_output=lambda data: None, max_instructions=budget, timeout=timeout or None)
    if when != "end" and budget is None:
        address = loaded.symbols.get(when)
        if address is None:
            _fail(f"--at {when}: not a number and not a symbol of the image "
                  f"({len(loaded.symbols)} symbols; built-in guests have their labels)")
        vm.break_at(address)
    result = vm.run()
    click.echo(f"{image} in {mode}: {result.kind.value} at EIP {result.eip:#010x}")
    for line in explain(vm, gva, access, user):
        click.echo(line)


def _parse_range(ctx, param, value):
    if value is None:
        return None
    try:
        lo, hi = (int(part, 0) for part in value.split(":"))
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected LO:HI, e.g. 0x100000:0x101000") from None
    return lo, hi


@main.command()
@click.argument("image", metavar="IMAGE_OR_GUEST")
@click.option("--mode", type=click.Choice(MODES), default="native", show_default=True)
@click.option("--format", "fmt", type=click.Choice(["text", "jsonl"]), default="text", show_default=True,
              help="text for people (colour on a terminal); jsonl: one JSON object per event, for jq and pandas "
              "(fields documented in vmm/trace/tracer.py and the README).")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="Write the trace here instead of standard output.")
@click.option("--from", "start", type=int, default=0, show_default=True, metavar="N",
              help="First instruction to show (instructions are numbered from 0).")
@click.option("--count", type=int, default=None, metavar="K", help="Show K instructions from --from.")
@click.option("--range", "address_range", callback=_parse_range, default=None, metavar="LO:HI",
              help="Only instructions with LO <= EIP < HI.")
@click.option("--ring", type=click.Choice(["user", "kernel"]), default=None, help="Only CPL 3, or only CPL 0-2.")
@click.option("--exits-only", is_flag=True, help="VM exits, injected events and walks only (no per-instruction "
              "hook: runs at full speed).")
@click.option("--walks", is_flag=True, help="Also show every TLB miss and what the MMU answered.")
@click.option("--max-instructions", type=int, default=None, metavar="N")
@click.option("--timeout", type=float, default=60.0, show_default=True, metavar="S")
@click.option("--stat", is_flag=True, help="End with the exit-statistics table.")
def trace(image, mode, fmt, output, start, count, address_range, ring, exits_only, walks, max_instructions,
          timeout, stat):
    """Trace IMAGE_OR_GUEST instruction by instruction: address, bytes, disassembly, the
    registers each instruction changed, and inline the VM exits (SDM name, decoded
    qualification, handler result), injected events and, with --walks, page walks. The
    guest's serial output goes to standard error.

    \b
    Examples:
      vmm trace hello --mode vtx --count 40
      vmm trace user --ring user --format jsonl | jq 'select(.type=="exit")'
      vmm trace timer --mode vtx --exits-only --stat
    """
    from .trace.tracer import Tracer
    from .vm import VM

    loaded = _resolve_image(image, ram_size=128 << 20, kind="auto", cmdline=None, modules=(), load_address=None)
    err = sys.stderr.buffer

    def serial(data: bytes) -> None:
        err.write(data)
        err.flush()

    try:
        vm = VM(loaded, mode=mode, serial_output=serial, max_instructions=max_instructions,
                timeout=timeout or None)
    except (NotImplementedError, ValueError) as exc:
        _fail(str(exc))
    try:
        out = open(output, "w") if output else sys.stdout
    except OSError as exc:
        _fail(f"cannot write {output}: {exc.strerror or exc}")
    try:
        Tracer(vm, out, fmt, start=start, count=count, address_range=address_range, ring=ring,
               exits_only=exits_only, walks=walks, color=out.isatty() and fmt == "text")
        result = vm.run()
    finally:
        if output:
            out.close()
    if result.kind.name != "EXIT":
        click.echo(f"vmm: {result.kind.value}: {result.message}", err=True)
    if stat:
        _report_stats(result, mode=mode, guest=image, show=True, json_path=None)
    sys.exit(result.status)


@main.command()
def guests():
    """List the built-in guests."""
    from rich.console import Console
    from rich.table import Table

    from .build.guests import list_guests

    table = Table("guest", "exit status", "what it shows", box=None)
    for g in list_guests():
        table.add_row(g.name, str(g.expected_status), g.description)
    Console().print(table)


@main.command()
@click.argument("guest")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Where to write the ELF.")
@click.option("--flavour", type=click.Choice(["native", "pv"]), default="native", show_default=True,
              help="native: a Multiboot ELF (boots with qemu -kernel and every mode but pv); pv: a Xen PV "
              "kernel with its ELF notes (boots with --mode pv).")
def build(guest, output, flavour):
    """Assemble a built-in GUEST into an ELF: Multiboot (bootable with qemu -kernel) or,
    with --flavour pv, a Xen x86_32 PV kernel (vmm run FILE --mode pv)."""
    from .build.guests import build_guest, list_guests

    if guest not in {g.name for g in list_guests()}:
        _fail(f"no built-in guest named {guest!r}; `vmm guests` lists them")
    elf = build_guest(guest, flavour).elf
    tmp = f"{output}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(elf)
        os.replace(tmp, output)
    except OSError as err:
        if os.path.exists(tmp):
            os.unlink(tmp)
        _fail(f"cannot write {output}: {err.strerror}")
    click.echo(f"wrote {output} ({len(elf)} bytes)")


from .cli_fuzz import fuzz  # noqa: E402  (registered last: its module stands alone)
main.add_command(fuzz)
from .cli_bench import bench  # noqa: E402  (registered last: its module stands alone)
main.add_command(bench)


if __name__ == "__main__":
    main()
