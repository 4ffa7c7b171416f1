"""``vmm trace``: the guest instruction by instruction, with its exits, events and walks."""
from __future__ import annotations

import sys

import click

from ..modes import MODES
from .common import (
    apply_tuning,
    at_least,
    budget_options,
    check_writable_file,
    console_writer,
    fail,
    image_options,
    load_target,
    report_stats,
)


def _parse_range(ctx, param, value):
    if value is None:
        return None
    try:
        lo, hi = (int(part, 0) for part in value.split(":"))
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected LO:HI, e.g. 0x100000:0x101000") from None
    if lo >= hi:
        fail(f"--range {value}: empty (LO must be below HI; the range is LO <= EIP < HI)")
    return lo, hi


@click.command()
@click.argument("image", metavar="IMAGE_OR_GUEST")
@click.option("--mode", type=click.Choice(MODES), default="native", show_default=True)
@click.option("--format", "fmt", type=click.Choice(["text", "jsonl"]), default="text", show_default=True,
              help="text for people (colour on a terminal); jsonl: one JSON object per event, for jq and pandas "
              "(fields documented in vmm/trace/tracer.py and the README).")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="Write the trace here instead of standard output.")
@click.option("--from", "start", type=int, callback=at_least(0, "--from", "instructions are numbered from 0"),
              default=0, show_default=True, metavar="N",
              help="First instruction to show (instructions are numbered from 0).")
@click.option("--count", type=int, callback=at_least(1, "--count", "show at least 1 instruction"), default=None,
              metavar="K", help="Show K instructions from --from.")
@click.option("--range", "address_range", callback=_parse_range, default=None, metavar="LO:HI",
              help="Only instructions with LO <= EIP < HI.")
@click.option("--ring", type=click.Choice(["user", "kernel"]), default=None, help="Only CPL 3, or only CPL 0-2.")
@click.option("--exits-only", is_flag=True, help="VM exits, injected events and walks only (no per-instruction "
              "hook: runs at full speed).")
@click.option("--walks", is_flag=True, help="Also show every TLB miss and what the MMU answered.")
@budget_options(timeout=60.0)
@image_options()
@click.option("--stat", is_flag=True, help="End with the exit-statistics tables (on standard error).")
def trace(image, mode, fmt, output, start, count, address_range, ring, exits_only, walks, max_instructions,
          timeout, cmdline, modules, ram_mib, kind, load_address, controls, devices, vmcs_writes, stat):
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
    from ..trace.tracer import Tracer
    from ..vm import VM

    check_writable_file(output, "-o")
    loaded = load_target(image, ram_mib=ram_mib, kind=kind, cmdline=cmdline, modules=modules,
                         load_address=load_address)
    try:
        vm = VM(loaded, mode=mode, ram_size=ram_mib << 20, serial_output=console_writer(sys.stderr.buffer),
                max_instructions=max_instructions, timeout=timeout or None, devices=devices)
    except (NotImplementedError, ValueError) as exc:
        fail(str(exc))
    apply_tuning(vm, mode, controls, vmcs_writes)
    try:
        out = open(output, "w") if output else sys.stdout
    except OSError as exc:
        fail(f"cannot write {output}: {exc.strerror or exc}")
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
        report_stats(result, mode=mode, guest=image, show=True, json_path=None)
    sys.exit(result.status)
