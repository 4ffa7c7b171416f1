"""What the commands share: bad input as one line and status 2, finding the image to boot,
and the exit-statistics report."""
from __future__ import annotations

import os
import sys
from typing import NoReturn

import click

EXIT_USAGE = 2


def fail(message: str) -> NoReturn:
    """Print ``vmm: error: MESSAGE`` on standard error and exit with status 2."""
    click.echo(f"vmm: error: {message}", err=True)
    sys.exit(EXIT_USAGE)


def resolve_image(target: str, *, ram_size: int, kind: str, cmdline: str | None, modules: tuple[str, ...],
                  load_address: int | None):
    """A path to an image file, or the name of a built-in guest (built on demand).

    Under ``--mode pv`` a built-in guest is built in its pv flavour and every image is
    loaded as a Xen PV kernel (ELF notes, vmm.loader.xen); the mode comes from the
    command's own ``--mode`` option.
    """
    from ..build.guests import build_guest, list_guests
    from ..loader.image import ImageError, load_image
    from ..loader.xen import load_xen

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
                fail("--mode pv boots Xen PV kernels (ELF with Xen notes): no --kind or --load-address")
            return load_xen(target, ram_size=ram_size, cmdline=cmdline, modules=list(modules))
        if kind == "auto" and is_pv_kernel(target, ram_size):
            fail(f"{target} is a Xen PV kernel (it carries Xen ELF notes): boot it with --mode pv")
        return load_image(target, ram_size=ram_size, kind=kind, cmdline=cmdline, modules=list(modules),
                          load_address=load_address)
    except ImageError as err:
        fail(str(err))


def is_pv_kernel(path: str, ram_size: int) -> bool:
    from ..loader.image import ImageError
    from ..loader.xen import load_xen

    try:
        load_xen(path, ram_size=ram_size)
    except ImageError:
        return False
    return True


def parse_int(ctx, param, value):
    if value is None:
        return None
    try:
        return int(value, 0)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a number (decimal or 0x-prefixed hex)") from None


def report_stats(result, *, mode: str, guest: str, show: bool, json_path: str | None) -> None:
    from rich.console import Console

    from ..stats.events import render_events
    from ..stats.exits import exit_stats, render, render_memory, stats_json

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
            fail(f"cannot write {json_path}: {err.strerror}")
