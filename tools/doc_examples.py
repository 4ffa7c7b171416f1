#!/usr/bin/env python3
"""Run the ``$ vmm ...`` examples of README.md and docs/*.md and compare what they print
with what the documents show; ``--write`` puts the real output in the documents.

An example is a fenced block whose lines start with ``$ `` (a command; a trailing ``\\``
continues it) followed by the lines it prints, up to the next command or the end of the
block. Rules:

* only commands that start with ``vmm`` run, through ``python -m vmm.cli`` of this
  checkout; in a block, a command with no output shown runs only when a later command of
  the same block shows output (it may make a file that one reads); a command ending in
  ``&`` never runs. The others (``qemu-system-i386``, ``gdb``...) are text.
* commands run in ``bash`` from a scratch folder that sees the checkout's top-level
  entries, one folder per document, in document order, with standard error merged
  into standard output (as a terminal shows both) and ``COLUMNS`` set to 160.
* a line ``...`` in the shown output stands for any number of lines; the lines around it
  must appear in order.
* figures that differ from run to run (wall and handler times, the ``wall s`` column of
  ``vmm bench``) are compared as placeholders, and table rules of any width as one.
* a block preceded by the line ``<!-- doc-examples: skip -->`` is left alone (images the
  text says were made by hand).

Exit status: 0 when every example matches (or was rewritten), 1 when one differs, 2 on
bad arguments. ``--check`` is the default.
"""
from __future__ import annotations

import argparse
import difflib
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SKIP_MARK = "<!-- doc-examples: skip -->"
ELISION = "..."
COMMAND_TIMEOUT = 900
COLUMNS = 160

_VOLATILE = (
    (re.compile(r"\d+(?:\.\d+)?\s?(?:s|ms|us|µs)\b"), "<t>"),          # 0.019 s, 3.98 ms, 10.6 us, 1.2s
    (re.compile(r"│\s*\d+\.\d+\s*│\s*$"), "│<t>│"),                  # the last column: vmm bench's wall s
)
_RULES = re.compile(r"([─━═┄┅])\1+")


@dataclass
class Example:
    command: str                 # as written, continuation lines joined
    first: int                   # index of its first line in the document
    end: int                     # index after its last output line
    shown: list[str] = field(default_factory=list)
    runs: bool = False
    output: list[str] | None = None


def normalize(line: str) -> str:
    for pattern, placeholder in _VOLATILE:
        line = pattern.sub(placeholder, line)
    line = _RULES.sub(r"\1", line)
    return " ".join(line.split())


def parse(lines: list[str]) -> list[list[Example]]:
    """The examples of a document, block by block."""
    blocks: list[list[Example]] = []
    i = 0
    while i < len(lines):
        if not lines[i].startswith("```"):
            i += 1
            continue
        skip = i > 0 and lines[i - 1].strip() == SKIP_MARK
        i += 1
        block: list[Example] = []
        while i < len(lines) and not lines[i].startswith("```"):
            line = lines[i]
            if line.startswith("$ "):
                first, command = i, line[2:]
                while command.endswith("\\") and i + 1 < len(lines):
                    i += 1
                    command = command[:-1] + " " + lines[i].strip()
                block.append(Example(command.strip(), first, i + 1))
            elif block:
                block[-1].shown.append(line)
                block[-1].end = i + 1
            i += 1
        i += 1
        if skip:
            continue
        for k, ex in enumerate(block):
            is_vmm = ex.command.split()[:1] == ["vmm"] and not ex.command.rstrip().endswith("&")
            ex.runs = is_vmm and (bool(ex.shown) or any(later.shown for later in block[k + 1:]))
        if any(ex.runs for ex in block):
            blocks.append(block)
    return blocks


def run(command: str, cwd: Path) -> list[str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
               PYTHONUNBUFFERED="1", NO_COLOR="1", TERM="dumb", VMM_PYTHON=sys.executable)
    env["COLUMNS"] = str(COLUMNS)   # tables as wide as a terminal of that width, wherever it runs
    script = 'vmm() { "$VMM_PYTHON" -m vmm.cli "$@"; }\n' + command
    try:
        proc = subprocess.run(["bash", "-c", script], cwd=cwd, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=COMMAND_TIMEOUT)
        text = proc.stdout.decode("utf-8", "replace")
    except subprocess.TimeoutExpired:
        text = f"(doc_examples: no answer within {COMMAND_TIMEOUT} s)\n"
    return [line.rstrip() for line in text.splitlines()]


def segments(shown: list[str]) -> list[list[str]]:
    out: list[list[str]] = [[]]
    for line in shown:
        if line.strip() == ELISION:
            out.append([])
        else:
            out[-1].append(line)
    return out


def _shape(line: str) -> str:
    return re.sub(r"\d[\d,.]*", "0", normalize(line))


def match(shown: list[str], output: list[str], shape: bool = False) -> list[list[str]] | None:
    """The output lines each segment of ``shown`` stands for (None: no match). The first
    segment is anchored at the start, the last at the end, the middle ones in order.
    ``shape``: compare with every figure masked (where to put new figures)."""
    segs = segments(shown)
    norm = _shape if shape else normalize
    norm_out = [norm(line) for line in output]
    placed: list[list[str]] = []
    pos = 0
    for k, seg in enumerate(segs):
        want = [norm(line) for line in seg]
        n = len(want)
        if len(segs) == 1:
            return [output] if want == norm_out else None
        if k == 0:
            if norm_out[:n] != want:
                return None
            at = 0
        elif k == len(segs) - 1:
            at = len(output) - n
            if at < pos or norm_out[at:] != want:
                return None
        else:
            at = next((j for j in range(pos, len(output) - n + 1) if norm_out[j:j + n] == want), -1)
            if at < 0:
                return None
        placed.append(output[at:at + n])
        pos = at + n
    return placed


def rewrite(shown: list[str], output: list[str]) -> list[str]:
    """What the document should show: the output, with the document's elisions kept where
    the lines around them can still be placed (else the whole output)."""
    placed = match(shown, output)
    if placed is None:
        placed = match(shown, output, shape=True)   # the same lines with other figures
    if placed is None:
        return output
    lines: list[str] = []
    for k, seg in enumerate(placed):
        if k:
            lines.append(ELISION)
        lines += seg
    return lines


def process(path: Path, write: bool, verbose: bool) -> int:
    lines = path.read_text().splitlines()
    blocks = parse(lines)
    differences = 0
    replacements: list[tuple[int, int, list[str]]] = []
    with tempfile.TemporaryDirectory(prefix="doc-examples-") as scratch:
        cwd = Path(scratch)
        for entry in ROOT.iterdir():
            if not entry.name.startswith("."):
                (cwd / entry.name).symlink_to(entry)
        for block in blocks:
            for ex in block:
                if not ex.runs:
                    continue
                if verbose:
                    print(f"{_shown_path(path)}:{ex.first + 1}: $ {ex.command}", file=sys.stderr)
                output = run(ex.command, cwd)
                if not ex.shown:
                    continue
                if match(ex.shown, output) is not None:
                    continue
                differences += 1
                print(f"{_shown_path(path)}:{ex.first + 1}: $ {ex.command}: the output differs")
                if not write:
                    sys.stdout.writelines(difflib.unified_diff([s + "\n" for s in ex.shown], [o + "\n" for o in output],
                                                               "shown", "printed", n=1))
                replacements.append((ex.end - len(ex.shown), ex.end, rewrite(ex.shown, output)))
    if write and replacements:
        for start, end, new in reversed(replacements):
            lines[start:end] = new
        path.write_text("\n".join(lines) + "\n")
        print(f"rewrote {len(replacements)} example(s) in {_shown_path(path)}")
    return differences


def _shown_path(path: Path) -> str:
    return os.path.relpath(path, ROOT) if path.is_relative_to(ROOT) else str(path)


def documents() -> list[Path]:
    return [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--check", action="store_true", help="compare only (the default); exit 1 on a difference")
    action.add_argument("--write", action="store_true", help="put the real output in the documents")
    parser.add_argument("--list", action="store_true", help="list the examples that run, and exit")
    parser.add_argument("-v", "--verbose", action="store_true", help="name each command as it runs")
    parser.add_argument("files", nargs="*", type=Path, help="documents (default: README.md and docs/*.md)")
    args = parser.parse_args(argv)
    paths = [p.resolve() for p in args.files] or documents()
    for p in paths:
        if not p.is_file():
            parser.error(f"{p}: no such document")
    if args.list:
        for p in paths:
            lines = p.read_text().splitlines()
            for block in parse(lines):
                for ex in block:
                    if ex.runs:
                        print(f"{_shown_path(p)}:{ex.first + 1}: $ {ex.command}")
        return 0
    differences = sum(process(p, args.write, args.verbose) for p in paths)
    if args.write:
        return 0
    return 1 if differences else 0


if __name__ == "__main__":
    sys.exit(main())
