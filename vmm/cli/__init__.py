"""The ``vmm`` command line: one module per command, gathered under :func:`main`.

The console script ``vmm`` and ``python -m vmm.cli`` both run :func:`main`. Each command
imports what it needs when it runs, so that ``vmm --help`` or ``vmm guests`` costs nothing
of the engine, and ``vmm fuzz`` alone pays for hypothesis.
"""
from __future__ import annotations

import os
import sys

import click

from . import bench, fuzz, guests, run, trace, walk


class _Commands(click.Group):
    """The ``vmm`` group: every command runs with SIGINT handled once, here. Ctrl-C stops a
    running guest within a fraction of a second (vmm.console), whatever it is doing; the
    command finishes what it writes (a trace's final record) and exits with 130 and one line,
    never a traceback nor click's "Aborted!"."""

    def invoke(self, ctx):
        from ..console import exit_status, interruptible

        with interruptible():
            try:
                return super().invoke(ctx)
            except KeyboardInterrupt as interrupt:
                result = getattr(interrupt, "result", None)   # vmm.vm.VmInterrupted: where the guest was
                click.echo(f"vmm: {result.kind.value}: {result.message}" if result is not None
                           else "vmm: interrupted", err=True)
                if sys.stdout is sys.__stdout__:
                    # Leave at once: the interpreter's teardown of every engine a command made
                    # (fuzz makes thousands) can take longer than the half second allowed.
                    sys.stdout.flush()
                    sys.stderr.flush()
                    os._exit(exit_status())
                sys.exit(exit_status())


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
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


main.add_command(run.run)
main.add_command(walk.walk)
main.add_command(trace.trace)
main.add_command(guests.guests)
main.add_command(guests.build)
main.add_command(fuzz.fuzz)
main.add_command(bench.bench)
