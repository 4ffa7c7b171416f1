"""gdb's ``monitor`` commands (the ``qRcmd`` packet): what the VMM knows and gdb's i386
registers cannot show."""
from __future__ import annotations

import io
import logging
import os
from collections.abc import Callable

log = logging.getLogger("vmm.gdb")

HELP = ("monitor commands of the vmm gdb stub:\n"
        "  help             this text\n"
        "  stat             VM exits (events, in native) by reason so far, as `vmm run --stat`\n"
        "  state            control registers and segments (gdb's i386 registers lack CRn)\n"
        "  walk ADDR [read|write|fetch] [user]\n"
        "                   how a guest-linear address translates now, step by step\n")
ACCESSES = ("read", "write", "fetch")
LINEAR_MASK = 0xFFFFFFFF
CONSOLE_WIDTH = 100


class _NotACommand(Exception):
    """Words no command takes: answered with the help text."""


class Monitor:
    """The commands for one VM. ``wall`` tells the wall-clock seconds the guest has run."""

    def __init__(self, vm, symbols: dict[str, int], wall: Callable[[], float]):
        self.vm = vm
        self.symbols = symbols
        self.wall = wall
        self.commands: dict[str, Callable[[list[str]], str]] = {
            "help": lambda words: HELP, "stat": self.stat, "stats": self.stat, "state": self.state,
            "walk": self.walk,
        }

    def run(self, command: str) -> str:
        """The text a command prints (an error is text too: gdb shows it as is)."""
        words = command.split()
        verb = words[0].lower() if words else "help"
        try:
            handler = self.commands.get(verb)
            if handler is None:
                raise _NotACommand()
            return handler(words)
        except _NotACommand:
            return f"unknown monitor command {command!r}\n" + HELP
        except ValueError as err:
            return f"monitor {command}: {err}\n"
        except Exception as err:
            log.exception("gdb: monitor %r", command)
            return f"monitor {command}: {type(err).__name__}: {err}\n"

    def state(self, words: list[str]) -> str:
        return self.vm.dump_state().replace("  ", "\n") + "\n" + self._tables()

    def walk(self, words: list[str]) -> str:
        if len(words) < 2:
            raise _NotACommand()
        from .walk import explain

        access = words[2] if len(words) > 2 and words[2] in ACCESSES else "read"
        address = self._address(words[1])
        return "\n".join(explain(self.vm, address, access, "user" in words[2:])) + "\n"

    def stat(self, words: list[str]) -> str:
        return self.stat_text()

    def _address(self, word: str) -> int:
        if word in self.symbols:
            return self.symbols[word]
        try:
            return int(word, 0) & LINEAR_MASK
        except ValueError:
            raise ValueError(f"{word!r} is neither a number nor a symbol") from None

    def _tables(self) -> str:
        eng = self.vm.engine
        lines = []
        for name in ("gdtr", "idtr", "ldtr", "tr"):
            sel, base, limit = eng.table(name)
            lines.append(f"{name}: selector {sel:#06x} base {base:#010x} limit {limit:#x}")
        return "\n".join(lines) + "\n"

    def stat_text(self) -> str:
        """The exit statistics so far, the tables of ``vmm run --stat`` as plain text."""
        from rich.console import Console

        from ..stats.exits import exit_stats, stat_tables

        vm = self.vm
        rows = exit_stats(vm.exits, vm.exit_seconds)
        mode = vm.mode.name
        guest = os.path.basename(vm.image.path) if getattr(vm.image, "path", None) else "guest"
        out = io.StringIO()
        console = Console(file=out, width=CONSOLE_WIDTH, color_system=None, force_terminal=False, no_color=True,
                          highlight=False, emoji=False)
        for table in stat_tables(rows, mode=mode, guest=guest, wall_seconds=self.wall(),
                                 memory=vm.mode.memory_counters()):
            console.print(table)
        return "\n".join(line.rstrip() for line in out.getvalue().splitlines()) + "\n"
