"""What the commands share: bad input as one line and status 2, finding the image to boot,
and the exit-statistics report."""
from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import NoReturn

import click

EXIT_USAGE = 2
#: Guest RAM bounds in MiB: a Multiboot kernel needs 2 MiB (vmm/loader/multiboot.py); 3 GiB
#: leaves the top of the 32-bit space to the devices.
RAM_MIN_MIB, RAM_MAX_MIB = 2, 3072
_RAM_SUFFIXES = {"": 1, "M": 1, "G": 1024}


def console_writer(stream):
    """The guest's serial console on ``stream`` (a binary stream), flushed on every write
    so a person sees each byte as the guest sends it."""
    def write(data: bytes) -> None:
        stream.write(data)
        stream.flush()
    return write


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


def at_least(minimum: int, option: str, what: str):
    """A callback: an integer option below ``minimum`` is one line and status 2."""
    def check(ctx, param, value):
        if value is not None and value < minimum:
            fail(f"{option} {value}: {what}")
        return value
    return check


def non_negative_seconds(ctx, param, value):
    if value is not None and value < 0:
        fail(f"--timeout {value:g}: a time budget cannot be negative (0 disables it)")
    return value


def budget_options(timeout: float):
    """``--max-instructions`` and ``--timeout``, the two budgets every booting command takes."""
    def decorate(command):
        command = click.option("--timeout", type=float, callback=non_negative_seconds, default=timeout,
                               show_default=True, metavar="S",
                               help="Stop after S seconds of wall-clock time; 0 disables the limit.")(command)
        return click.option("--max-instructions", type=int, default=None, metavar="N",
                            callback=at_least(1, "--max-instructions", "the budget must be at least 1 instruction"),
                            help="Stop after N >= 1 guest instructions (counted exactly; about 10x slower).")(command)
    return decorate


def report_stats(result, *, mode: str, guest: str, show: bool, json_path: str | None) -> None:
    from rich.console import Console

    from ..stats.exits import exit_stats, stat_tables, stats_json

    rows = exit_stats(result.exits, result.exit_seconds)
    if show:
        # Standard error: standard output is the guest's console.
        console = Console(stderr=True)
        for table in stat_tables(rows, mode=mode, guest=guest, wall_seconds=result.wall_seconds,
                                 events=result.events, event_seconds=result.event_seconds, memory=result.memory):
            console.print(table)
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


def check_writable_file(path: str | None, option: str) -> None:
    """Fail now, before any guest runs, if ``path`` cannot be written: a probe file is
    created beside it and removed, so a missing folder, a read-only one or a path under a
    plain file is reported in one line instead of as a traceback after a long run."""
    if path is None:
        return
    if os.path.isdir(path):
        fail(f"{option} {path}: is a directory")
    _probe(os.path.dirname(os.path.abspath(path)), f"{option} {path}")


def check_writable_dir(path: str | None, option: str) -> None:
    """Like :func:`check_writable_file` for an output folder, which is created if missing."""
    if path is None:
        return
    if os.path.exists(path) and not os.path.isdir(path):
        fail(f"{option} {path}: exists and is not a directory")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as err:
        fail(f"{option} {path}: {err.strerror or err}")
    _probe(path, f"{option} {path}")


def _probe(folder: str, what: str) -> None:
    probe = os.path.join(folder, f".vmm-probe-{os.getpid()}")
    try:
        with open(probe, "w"):
            pass
        os.unlink(probe)
    except OSError as err:
        fail(f"{what}: cannot write there ({err.strerror or err})")


class RamSize(click.ParamType):
    """Guest RAM in MiB, as QEMU's ``-m`` spells it: ``128``, ``128M`` or ``1G``."""

    name = "MIB"

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            mib = value
        else:
            text = str(value).strip().upper().removesuffix("B")
            suffix = text[-1:] if text[-1:] in ("M", "G") else ""
            try:
                mib = int(text[:len(text) - len(suffix)]) * _RAM_SUFFIXES[suffix]
            except ValueError:
                self.fail(f"{value!r}: expected MiB, e.g. 128, 128M or 1G", param, ctx)
        if not RAM_MIN_MIB <= mib <= RAM_MAX_MIB:
            self.fail(f"{value}: guest RAM must be {RAM_MIN_MIB} to {RAM_MAX_MIB} MiB", param, ctx)
        return mib


def image_options(*, qemu_aliases: bool = False):
    """The options that say what image to boot and how the VM is set up, shared by ``run``,
    ``trace`` and ``walk`` (one set, so the three commands cannot drift apart).

    ``qemu_aliases`` adds QEMU's spellings (``-append``, ``-initrd``, ``-m``) for ``vmm run``,
    whose command lines people copy from ``qemu-system-i386``.
    """
    def names(long: str, qemu: str) -> tuple[str, ...]:
        return (long, qemu) if qemu_aliases else (long,)

    options = [
        click.option(*names("--cmdline", "-append"), "cmdline", default=None,
                     help="Multiboot command line after the image name."),
        click.option(*names("--module", "-initrd"), "modules", multiple=True, type=click.Path(), metavar="FILE",
                     help="Multiboot module (repeatable), loaded page-aligned after the image."),
        click.option(*names("--ram", "-m"), "ram_mib", type=RamSize(), default=128, show_default=True,
                     help=f"Guest RAM in MiB ({RAM_MIN_MIB} to {RAM_MAX_MIB}; 128M and 1G also work)."),
        click.option("--kind", type=click.Choice(["auto", "multiboot", "flat", "bootsector"]), default="auto",
                     show_default=True, help="Image format; auto recognises Multiboot ELF and boot sectors."),
        click.option("--load-address", callback=parse_int, default=None, metavar="ADDR",
                     help="Load (and entry) address of a flat binary, e.g. 0x100000."),
        click.option("--control", "controls", multiple=True, metavar="NAME[=on|off]",
                     help="vtx: set or clear a VM-execution, VM-exit or VM-entry control by its SDM name, "
                     "e.g. --control HLT_EXITING=off --control RDTSC_EXITING (repeatable)."),
        click.option(*names("--device", "-device"), "devices", multiple=True, metavar="NAME[=on|off]",
                     callback=parse_devices,
                     help="Add or leave out a board device (repeatable): pci-testdev (off by default, as "
                     "under qemu -nodefaults; kvm-unit-tests wants it), hpet, pc-testdev and vga (on). "
                     "E.g. --device pci-testdev --device hpet=off."),
        click.option("--vmcs", "vmcs_writes", multiple=True, metavar="FIELD=VALUE",
                     help="vtx: VMWRITE a field before launch, e.g. --vmcs EXCEPTION_BITMAP=0 "
                     "or --vmcs GUEST_CR0=0x80000000 (repeatable)."),
    ]

    def decorate(command):
        for option in reversed(options):
            command = option(command)
        return command
    return decorate


def parse_devices(ctx, param, values: tuple[str, ...]) -> dict[str, bool]:
    """``--device NAME[=on|off]`` (QEMU's ``-device NAME`` adds one) as {name: on}."""
    from ..devices.board import board_devices

    chosen: dict[str, bool] = {}
    for value in values:
        name, _, state = value.partition("=")
        if state not in ("", "on", "off"):
            raise click.BadParameter(f"{value!r}: the state is on or off (NAME, NAME=on, NAME=off)")
        chosen[name.strip()] = state != "off"
    try:
        board_devices(chosen)
    except ValueError as err:
        raise click.BadParameter(str(err)) from None
    return chosen


def load_target(image: str, *, ram_mib: int, kind: str, cmdline: str | None, modules: tuple[str, ...],
                load_address: int | None):
    """:func:`resolve_image` from the values of :func:`image_options`."""
    return resolve_image(image, ram_size=ram_mib << 20, kind=kind, cmdline=cmdline, modules=modules,
                         load_address=load_address)


def apply_tuning(vm, mode: str, controls: tuple[str, ...], vmcs_writes: tuple[str, ...]) -> None:
    """``--control`` and ``--vmcs``: edit the VMCS of a VT-x mode before launch."""
    if not (controls or vmcs_writes):
        return
    if not hasattr(vm.mode, "vmcs"):
        fail(f"--control and --vmcs need a VT-x mode (vtx, vtx-ept), not {mode!r}")
    from ..vmx.tuning import VmcsEditError, apply_controls, apply_vmcs_writes
    try:
        apply_vmcs_writes(vm.mode.vmcs, vmcs_writes)
        apply_controls(vm.mode.vmcs, controls)
    except VmcsEditError as err:
        fail(str(err))


#: ``--exit-status guest``: the statuses of a VMM stop, out of the way of small guest values
#: (124 is what timeout(1) returns when its budget ran out).
EXIT_BUDGET = 124
EXIT_VMM_STOP = 125
EXIT_INTERRUPTED = 130   # 128 + SIGINT, as a shell reports it (vmm.console.EXIT_INTERRUPTED)
EXIT_STATUS_HELP = (
    "How the exit status reads. qemu (default): QEMU's isa-debug-exit convention, (value << 1) | 1 for "
    "a guest that wrote VALUE to port 0xf4, so a guest's success is 1, and 1 also for a VMM stop. "
    f"guest: the VALUE itself (0 = the guest's success, so 'vmm run hello --exit-status guest && echo ok' "
    f"works); {EXIT_BUDGET} when the instruction or wall-clock budget ran out; {EXIT_VMM_STOP} for "
    "any other VMM stop (triple fault, HLT with nothing to wake it, VM-entry failure, an error); 0 for an "
    "ACPI poweroff in both conventions, as QEMU exits. "
    f"Bad input is {EXIT_USAGE} either way, and {EXIT_INTERRUPTED} a run ended by Ctrl-C (SIGINT) or by the "
    "console's Ctrl-A x."
)


def exit_status(result, convention: str) -> int:
    """The process exit status of ``result`` under ``--exit-status`` ``convention``."""
    if convention == "qemu":
        return result.status
    if result.exit_status is not None:
        return result.exit_status >> 1
    if result.kind.name == "POWEROFF":
        return 0                  # an ACPI soft-off is the guest's orderly end, as on QEMU
    return EXIT_BUDGET if result.kind.name in ("BUDGET", "TIMEOUT") else EXIT_VMM_STOP


def exit_status_option(command):
    return click.option("--exit-status", "exit_convention", type=click.Choice(["qemu", "guest"]), default="qemu",
                        show_default=True, help=EXIT_STATUS_HELP)(command)


DISPLAY_HELP = (
    "The guest's VGA text screen (80x25 at 0xB8000) in the terminal while it runs: text draws it at the top "
    "of the terminal from the start, the serial console scrolling below it (without a terminal, the last "
    "screen is printed when the run ends); none never shows it. Default: shown once the guest writes to the "
    "screen, when standard output is a terminal.")
SCREENDUMP_HELP = (
    "When the run ends, for whatever reason (exit, halt, budget, fault, Ctrl-C), write the VGA text "
    "screen to FILE: 25 lines of text (UTF-8, code page 437 characters, trailing blanks removed), or a "
    "PNG if FILE ends in .png. E.g. --screendump screen.txt.")


def display_options(command):
    """``--display text|none`` (QEMU's ``-display`` too) and ``--screendump FILE``."""
    command = click.option("--screendump", type=click.Path(dir_okay=False), default=None, metavar="FILE",
                           help=SCREENDUMP_HELP)(command)
    return click.option("--display", "-display", "display", type=click.Choice(["text", "none"]), default=None,
                        help=DISPLAY_HELP)(command)


def check_display(display: str | None, screendump: str | None, devices: dict[str, bool]) -> None:
    """Before the guest runs: a screen needs the VGA, and the dump file must be writable."""
    if devices.get("vga", True) is False and (display == "text" or screendump):
        fail(f"{'--screendump' if screendump else '--display text'} needs the VGA; not with --device vga=off")
    check_writable_file(screendump, "--screendump")


@contextlib.contextmanager
def screen_output(vm, display: str | None, screendump: str | None, stream) -> Iterator[None]:
    """The screen while the ``with`` block runs the VM (vmm.screen.attach), and after it,
    however it ended: the live view's last frame, ``--display text``'s screen printed once
    where there was no live view, and the ``--screendump`` file."""
    from ..screen import Screen, attach

    live = attach(vm, display, stream) if vm.board.devices.get("vga") else None
    try:
        yield
    finally:
        if live is not None:
            live.close()
        screen = Screen.of(vm) if vm.board.devices.get("vga") else None
        if screen is not None and display == "text" and (live is None or not live.active):
            stream.write(screen.text().encode("utf-8"))
            stream.flush()
        if screen is not None and screendump:
            try:
                screen.dump(screendump)
            except OSError as err:
                click.echo(f"vmm: error: cannot write {screendump}: {err.strerror or err}", err=True)
