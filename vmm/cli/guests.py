"""``vmm guests`` and ``vmm build``: the built-in guests, listed and assembled."""
from __future__ import annotations

import os

import click

from .common import fail


@click.command()
def guests():
    """List the built-in guests."""
    from rich.console import Console
    from rich.table import Table

    from ..build.guests import list_guests

    table = Table("guest", "exit status", "what it shows", box=None)
    for g in list_guests():
        table.add_row(g.name, str(g.expected_status), g.description)
    Console().print(table)


@click.command()
@click.argument("guest")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Where to write the ELF.")
@click.option("--flavour", type=click.Choice(["native", "pv"]), default="native", show_default=True,
              help="native: a Multiboot ELF (boots with qemu -kernel and every mode but pv); pv: a Xen PV "
              "kernel with its ELF notes (boots with --mode pv).")
def build(guest, output, flavour):
    """Assemble a built-in GUEST into an ELF: Multiboot (bootable with qemu -kernel) or,
    with --flavour pv, a Xen x86_32 PV kernel (vmm run FILE --mode pv)."""
    from ..build.guests import build_guest, list_guests

    if guest not in {g.name for g in list_guests()}:
        fail(f"no built-in guest named {guest!r}; `vmm guests` lists them")
    elf = build_guest(guest, flavour).elf
    tmp = f"{output}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(elf)
        os.replace(tmp, output)
    except OSError as err:
        if os.path.exists(tmp):
            os.unlink(tmp)
        fail(f"cannot write {output}: {err.strerror}")
    click.echo(f"wrote {output} ({len(elf)} bytes)")
