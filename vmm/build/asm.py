"""Assemble guest sources: a small NASM-like preprocessor in front of keystone.

Keystone (0.9.2, ``KS_ARCH_X86`` / ``KS_MODE_32``, Intel syntax) does the encoding; this
module adds what keystone lacks and guards against what it gets wrong.

Source syntax
=============

* Comments start with ``#`` or ``//`` and run to the end of the line (outside string and
  character literals). ``;`` is **not** a comment: keystone treats it as a statement
  separator, and so do we (``mov eax, 1; mov ebx, 2`` is two statements).
* Labels are ``name:``; names are case-sensitive and must not be register names
  (``si:``, ``ds:``: keystone reads them as registers). GAS-style numeric labels (``1:``,
  ``jmp 1f``) are not supported by keystone: use ``%%name`` inside macros, unique names
  elsewhere.
* ``mov eax, label`` loads the *address* (keystone is not MASM); ``mov eax, [label]``
  loads the memory. Keystone cannot compute shifts or masks of label addresses
  (``.long label >> 16`` fails): build such values at run time.
* Directives (one per line, first token):

  ``%include "file"``        file relative to the include directories (default
                             ``guests/include``)
  ``%define NAME value``     text substitution of the identifier NAME (value may be empty)
  ``%undef NAME``
  ``%macro NAME n`` / ``%macro NAME min-max`` ... ``%endmacro``
                             body parameters ``%1``..``%9``, ``%0`` = number of arguments,
                             ``%%label`` = a label unique to each expansion
  ``%if expr`` / ``%elif expr`` / ``%ifdef NAME`` / ``%ifndef NAME`` / ``%elifdef NAME`` /
  ``%else`` / ``%endif``     ``expr`` is an integer expression after define substitution
                             (``+ - * / % << >> & | ^ ~ == != < <= > >= && || !``)
  ``%assign NAME expr``      define NAME as the integer value of ``expr``
  ``%rep count`` ... ``%endrep``  repeat the lines in between (with ``%assign`` counters)
  ``%error "message"``       stop with an error at this line

  Macros are invoked by name as a statement (``PV_CLI``, ``PRINT "hi\\n"``); arguments are
  separated by commas outside quotes and brackets.

Keystone quirks handled here
============================

Keystone adds a 0x66 operand-size prefix to ``lgdt``/``lidt``/``sgdt``/``sidt`` in 32-bit
mode (so LGDT/LIDT would load only a 24-bit base), to ``mov sreg, r16``, ``push sreg`` /
``pop sreg`` (a 16-bit push!), ``pushf``/``popf`` and ``iret`` (a 16-bit IRET). The
preprocessor rejects those spellings with a hint (:data:`_LINT`); the includes provide
byte-exact macros (``LGDT_M label``, ``LIDT_M label``) and the 32-bit spellings
(``mov ds, eax``, ``pushfd``, ``iretd``) are encoded correctly.

Symbols
=======

Keystone does not report label addresses. :func:`assemble` appends ``.long l1, l2, ...``
after the whole program (so it cannot change any earlier layout), reads the addresses
back from the tail of the output and strips the table.
"""
from __future__ import annotations

import ast
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

__all__ = ["AsmError", "SourceLine", "Assembled", "preprocess", "assemble", "assemble_file"]


class AsmError(Exception):
    """An assembly error located at ``file:line`` (``file`` may be ``None`` if unknown)."""

    def __init__(self, message: str, file: str | None = None, line: int | None = None,
                 context: str = "") -> None:
        self.message = message
        self.file = file
        self.line = line
        self.context = context
        where = f"{file}:{line}: " if file is not None else ""
        super().__init__(f"{where}{message}{context}")


@dataclass(frozen=True)
class SourceLine:
    """One statement after preprocessing and where it came from.

    ``expansion`` lists the macro invocations that produced it, innermost first, as
    ``(macro name, file, line of the invocation)``.
    """

    text: str
    file: str
    line: int
    expansion: tuple[tuple[str, str, int], ...] = ()

    def error(self, message: str) -> AsmError:
        ctx = "".join(f"\n  in macro {name} invoked at {f}:{ln}" for name, f, ln in self.expansion)
        return AsmError(message, self.file, self.line, ctx)


@dataclass
class Assembled:
    """The output of :func:`assemble`: ``code`` placed at ``base`` and its labels."""

    code: bytes
    base: int
    symbols: dict[str, int] = field(default_factory=dict)
    lines: list[SourceLine] = field(default_factory=list)
    files: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------
# Lexical helpers (quote-aware)

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_LABEL = re.compile(r"\s*([A-Za-z_.][A-Za-z0-9_.$@]*)\s*:(?!:)")
MACRO_LOCAL_PREFIX = ".Lm"


def _scan(text: str):
    """Yield (index, char, in_quote) over ``text``, tracking '...' and "..." with escapes."""
    quote = None
    i = 0
    while i < len(text):
        c = text[i]
        if quote:
            yield i, c, True
            if c == "\\" and i + 1 < len(text):
                yield i + 1, text[i + 1], True
                i += 2
                continue
            if c == quote:
                quote = None
        else:
            if c in "\"'":
                quote = c
                yield i, c, True
            else:
                yield i, c, False
        i += 1


def strip_comment(text: str) -> str:
    """Remove a ``#`` or ``//`` comment (outside literals) and trailing blanks."""
    for i, c, quoted in _scan(text):
        if not quoted and (c == "#" or (c == "/" and text[i + 1:i + 2] == "/")):
            return text[:i].rstrip()
    return text.rstrip()


def split_top(text: str, sep: str) -> list[str]:
    """Split on ``sep`` outside literals and outside ()/[] nesting."""
    parts, depth, start = [], 0, 0
    for i, c, quoted in _scan(text):
        if quoted:
            continue
        if c in "([":
            depth += 1
        elif c in ")]":
            depth -= 1
        elif c == sep and depth <= 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def _sub_idents(text: str, fn) -> str:
    """Apply ``fn(identifier) -> str | None`` to identifiers outside literals."""
    out, i, n = [], 0, len(text)
    quoted_at = {i for i, _c, q in _scan(text) if q}
    while i < n:
        if i in quoted_at:
            out.append(text[i])
            i += 1
            continue
        m = _IDENT.match(text, i)
        if m and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] in "_.$@%")):
            rep = fn(m.group(0))
            out.append(m.group(0) if rep is None else rep)
            i = m.end()
        elif m:
            out.append(m.group(0))
            i = m.end()
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


# --------------------------------------------------------------------------------------
# %if expressions

_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.LShift: operator.lshift,
           ast.RShift: operator.rshift, ast.BitAnd: operator.and_, ast.BitOr: operator.or_,
           ast.BitXor: operator.xor}
_CMPOPS = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
           ast.Gt: operator.gt, ast.GtE: operator.ge}


def _eval_expr(expr: str) -> int:
    py = expr.replace("&&", " and ").replace("||", " or ")
    py = re.sub(r"!(?!=)", " not ", py).replace("/", "//")
    tree = ast.parse(py.strip(), mode="eval")

    def ev(node) -> int:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            return _BINOPS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.UnaryOp):
            v = ev(node.operand)
            if isinstance(node.op, ast.USub):
                return -v
            if isinstance(node.op, ast.UAdd):
                return v
            if isinstance(node.op, ast.Invert):
                return ~v
            if isinstance(node.op, ast.Not):
                return int(not v)
        if isinstance(node, ast.BoolOp):
            vals = [ev(v) for v in node.values]
            return int(all(vals) if isinstance(node.op, ast.And) else any(vals))
        if isinstance(node, ast.Compare):
            left = ev(node.left)
            for op, right in zip(node.ops, node.comparators, strict=True):
                r = ev(right)
                if not _CMPOPS[type(op)](left, r):
                    return 0
                left = r
            return 1
        raise ValueError(f"unsupported expression element {ast.dump(node)[:40]}")

    return ev(tree)


# --------------------------------------------------------------------------------------
# Lint: encodings keystone gets wrong in 32-bit mode

_SREG = r"(?:cs|ds|es|fs|gs|ss)"
_R16 = r"(?:ax|bx|cx|dx|si|di|sp|bp)"
_LINT: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^(lgdt|lidt|sgdt|sidt)\b", re.I),
     "keystone encodes {0} with a 0x66 prefix in 32-bit mode (a 24-bit base): use the "
     "byte-exact macros LGDT_M/LIDT_M/SGDT_M/SIDT_M label (or PV_LGDT/PV_LIDT)"),
    (re.compile(rf"^mov\s+({_SREG}\s*,\s*{_R16}|{_R16}\s*,\s*{_SREG})\s*$", re.I),
     "keystone adds a 0x66 prefix to 'mov sreg, r16': use the 32-bit register "
     "(e.g. 'mov ds, eax', 'mov eax, ds')"),
    (re.compile(rf"^(push|pop)\s+{_SREG}\s*$", re.I),
     "keystone encodes push/pop of a segment register as a 16-bit push: use "
     "'mov eax, ds; push eax' / 'pop eax; mov ds, eax'"),
    (re.compile(r"^(pushf|popf|iret)\s*$", re.I),
     "keystone encodes '{0}' as the 16-bit form (0x66 prefix): write pushfd, popfd, iretd"),
]


def _lint(stmt: str) -> str | None:
    body = stmt.strip()
    for pat, msg in _LINT:
        m = pat.match(body)
        if m:
            return msg.format(m.group(1).lower())
    return None


# --------------------------------------------------------------------------------------
# Preprocessor

@dataclass
class _Macro:
    name: str
    min_args: int
    max_args: int
    body: list[tuple[str, int]]  # (text, line in file)
    file: str
    line: int


@dataclass
class _Cond:
    """One open %if: whether its current branch is read, whether a branch was taken."""

    active: bool
    taken: bool
    seen_else: bool
    where: SourceLine


@dataclass
class _Rep:
    """An open %rep: its count, the body collected so far, the %rep nesting inside it."""

    count: int
    body: list[tuple[str, int]]
    depth: int
    where: SourceLine


@dataclass
class _Block:
    """What one run of lines has open: conditionals, a macro being defined, a %rep body."""

    file: str
    expansion: tuple
    cond: list[_Cond] = field(default_factory=list)
    macro: _Macro | None = None
    rep: _Rep | None = None

    def active(self) -> bool:
        return all(c.active for c in self.cond)

    def close(self) -> None:
        """Refuse a run of lines that ends inside a definition or a conditional."""
        if self.macro is not None:
            raise AsmError(f"%macro {self.macro.name} has no %endmacro", self.macro.file, self.macro.line)
        if self.rep is not None:
            raise self.rep.where.error("%rep without %endrep")
        if self.cond:
            raise self.cond[-1].where.error("%if without %endif")


_MAX_DEPTH = 64
_MAX_MACRO_PARAMS = 9
_MAX_REP = 1 << 16
_OPENING_CONDITIONALS = ("if", "ifdef", "ifndef")
_CONTINUING_CONDITIONALS = ("elif", "elifdef", "elifndef", "else", "endif")


class _Preprocessor:
    def __init__(self, include_dirs: list[Path], defines: dict[str, str]) -> None:
        self.include_dirs = include_dirs
        self.defines: dict[str, str] = dict(defines)
        self.macros: dict[str, _Macro] = {}
        self.out: list[SourceLine] = []
        self.files: list[str] = []
        self.including: list[str] = []  # the %include chain being read
        self.expansions = 0

    # -- defines ------------------------------------------------------------------------
    def substitute(self, text: str, where: SourceLine) -> str:
        for _ in range(_MAX_DEPTH):
            new = _sub_idents(text, lambda name: self.defines.get(name))
            if new == text:
                return new
            text = new
        raise where.error("recursive %define (substitution does not terminate)")

    # -- files --------------------------------------------------------------------------
    def include(self, name: str, where: SourceLine | None) -> None:
        for d in self.include_dirs:
            p = d / name
            if p.is_file():
                break
        else:
            msg = f"%include: cannot find {name!r} in {', '.join(map(str, self.include_dirs))}"
            if where is None:
                raise AsmError(msg)
            raise where.error(msg)
        if str(p) in self.including:
            msg = f"recursive %include of {p}"
            raise where.error(msg) if where is not None else AsmError(msg)
        self.including.append(str(p))
        try:
            self.run_text(p.read_text(), str(p), ())
        finally:
            self.including.pop()

    def run_text(self, text: str, file: str, expansion: tuple) -> None:
        self.files.append(file)
        numbered = [(raw, i) for i, raw in enumerate(text.splitlines(), start=1)]
        self.run_lines(numbered, file, expansion)

    # -- the line loop ------------------------------------------------------------------
    def run_lines(self, numbered: list[tuple[str, int]], file: str, expansion: tuple) -> None:
        block = _Block(file, expansion)
        for raw, lineno in numbered:
            where = SourceLine(raw, file, lineno, expansion)
            text = strip_comment(raw)
            stripped = text.strip()
            if block.rep is not None:
                self.rep_line(block, block.rep, text, stripped, lineno)
            elif block.macro is not None:
                self.macro_line(block, block.macro, text, stripped, lineno, where)
            elif stripped.startswith("%"):
                self.directive(block, stripped, where)
            elif block.active() and stripped:
                self.statements(self.substitute(text, where), where)
        block.close()

    def rep_line(self, block: _Block, rep: _Rep, text: str, stripped: str, lineno: int) -> None:
        """A line inside %rep: collected, until the matching %endrep runs the body."""
        if re.match(r"%rep\b", stripped, re.I):
            rep.depth += 1
        elif re.match(r"%endrep\b", stripped, re.I):
            rep.depth -= 1
            if rep.depth == 0:
                block.rep = None
                for _ in range(rep.count):
                    self.run_lines(rep.body, block.file, block.expansion)
                return
        rep.body.append((text, lineno))

    def macro_line(self, block: _Block, macro: _Macro, text: str, stripped: str, lineno: int,
                   where: SourceLine) -> None:
        """A line inside %macro: collected, until %endmacro defines the macro."""
        if re.match(r"%endmacro\b", stripped, re.I):
            self.macros[macro.name] = macro
            block.macro = None
        elif re.match(r"%macro\b", stripped, re.I):
            raise where.error("%macro inside a %macro definition is not supported")
        else:
            macro.body.append((text, lineno))

    def directive(self, block: _Block, stripped: str, where: SourceLine) -> None:
        m = re.match(r"%(\w+)\s*(.*)$", stripped)
        if not m:
            raise where.error(f"malformed directive {stripped!r}")
        d, arg = m.group(1).lower(), m.group(2).strip()
        if d in _OPENING_CONDITIONALS:
            block.cond.append(self.open_conditional(block, d, arg, where))
        elif d in _CONTINUING_CONDITIONALS:
            self.continue_conditional(block, d, arg, where)
        elif block.active():
            handler = self.DIRECTIVES.get(d)
            if handler is None:
                raise where.error(f"unknown directive %{d}")
            handler(self, block, arg, where)

    # -- conditionals -------------------------------------------------------------------
    def open_conditional(self, block: _Block, d: str, arg: str, where: SourceLine) -> _Cond:
        if not block.active():
            return _Cond(False, True, False, where)  # never taken: nothing of it is read
        v = self.cond_value(d, arg, where)
        return _Cond(v, v, False, where)

    def continue_conditional(self, block: _Block, d: str, arg: str, where: SourceLine) -> None:
        if not block.cond:
            raise where.error(f"%{d} without %if")
        top = block.cond[-1]
        if d == "endif":
            block.cond.pop()
            return
        if top.seen_else:
            raise where.error(f"%{d} after %else")
        parent_active = all(c.active for c in block.cond[:-1])
        if d == "else":
            top.seen_else = True
            top.active = parent_active and not top.taken
        else:
            top.active = bool((not top.taken) and parent_active and self.cond_value(d[2:], arg, where))
        top.taken = top.taken or top.active

    def cond_value(self, kind: str, arg: str, where: SourceLine) -> bool:
        if kind == "ifdef":
            return arg in self.defines
        if kind == "ifndef":
            return arg not in self.defines
        return bool(self.int_value(arg, where))

    # -- the other directives, one method each (DIRECTIVES below) -----------------------
    def define(self, block: _Block, arg: str, where: SourceLine) -> None:
        dm = re.match(r"([A-Za-z_]\w*)\s*(.*)$", arg)
        if not dm:
            raise where.error("%define needs a NAME")
        self.defines[dm.group(1)] = dm.group(2).strip()

    def undef(self, block: _Block, arg: str, where: SourceLine) -> None:
        self.defines.pop(arg, None)

    def include_directive(self, block: _Block, arg: str, where: SourceLine) -> None:
        im = re.match(r'"([^"]+)"$|<([^>]+)>$', arg)
        if not im:
            raise where.error('%include needs a "file" name')
        self.include(im.group(1) or im.group(2), where)

    def macro_directive(self, block: _Block, arg: str, where: SourceLine) -> None:
        mm = re.match(r"([A-Za-z_]\w*)\s+(\d+)(?:\s*-\s*(\d+))?\s*$", arg)
        if not mm:
            raise where.error("%macro needs NAME nargs (or NAME min-max)")
        lo = int(mm.group(2))
        hi = int(mm.group(3)) if mm.group(3) else lo
        if hi > _MAX_MACRO_PARAMS or lo > hi:
            raise where.error("%macro: 0..9 parameters")
        block.macro = _Macro(mm.group(1), lo, hi, [], where.file, where.line)

    def assign(self, block: _Block, arg: str, where: SourceLine) -> None:
        am = re.match(r"([A-Za-z_]\w*)\s+(.+)$", arg)
        if not am:
            raise where.error("%assign needs NAME expression")
        self.defines[am.group(1)] = str(self.int_value(am.group(2), where))

    def rep_directive(self, block: _Block, arg: str, where: SourceLine) -> None:
        count = self.int_value(arg, where)
        if not 0 <= count <= _MAX_REP:
            raise where.error(f"%rep count {count} out of range")
        block.rep = _Rep(count, [], 1, where)

    def error_directive(self, block: _Block, arg: str, where: SourceLine) -> None:
        raise where.error(f"%error: {arg.strip(chr(34))}")

    def endmacro_unpaired(self, block: _Block, arg: str, where: SourceLine) -> None:
        raise where.error("%endmacro without %macro")

    def endrep_unpaired(self, block: _Block, arg: str, where: SourceLine) -> None:
        raise where.error("%endrep without %rep")

    DIRECTIVES: ClassVar[dict[str, Callable[[_Preprocessor, _Block, str, SourceLine], None]]] = {
        "define": define, "undef": undef, "include": include_directive, "macro": macro_directive,
        "endmacro": endmacro_unpaired, "assign": assign, "rep": rep_directive, "endrep": endrep_unpaired,
        "error": error_directive,
    }

    def int_value(self, expr: str, where: SourceLine) -> int:
        try:
            return _eval_expr(self.substitute(expr, where))
        except (ValueError, SyntaxError, KeyError, ZeroDivisionError) as exc:
            raise where.error(f"bad expression {expr!r}: {exc}") from None

    # -- statements and macro calls -----------------------------------------------------
    def statements(self, text: str, where: SourceLine) -> None:
        for stmt in split_top(text, ";"):
            stmt = stmt.strip()
            while True:
                m = _LABEL.match(stmt)
                if not m or m.group(1) in self.macros:
                    break
                self.emit(m.group(1) + ":", where)
                stmt = stmt[m.end():].strip()
            if not stmt:
                continue
            first = stmt.split(None, 1)
            if first[0] in self.macros:
                self.expand(self.macros[first[0]], first[1] if len(first) > 1 else "", where)
            else:
                self.emit(stmt, where)

    def emit(self, stmt: str, where: SourceLine) -> None:
        problem = _lint(stmt)
        if problem:
            raise where.error(f"{problem}: {stmt!r}")
        self.out.append(SourceLine(stmt, where.file, where.line, where.expansion))

    def expand(self, mac: _Macro, argtext: str, where: SourceLine) -> None:
        args = [a.strip() for a in split_top(argtext, ",")] if argtext.strip() else []
        if not (mac.min_args <= len(args) <= mac.max_args):
            want = str(mac.min_args) if mac.min_args == mac.max_args else f"{mac.min_args}-{mac.max_args}"
            raise where.error(f"macro {mac.name} takes {want} argument(s), got {len(args)}")
        if len(where.expansion) >= _MAX_DEPTH:
            raise where.error(f"macro {mac.name}: expansion too deep (recursive macro?)")
        self.expansions += 1
        uid = self.expansions

        def param(m: re.Match) -> str:
            tok = m.group(0)
            if tok.startswith("%%"):
                return f"{MACRO_LOCAL_PREFIX}{uid}_{tok[2:]}"
            k = int(tok[1:])
            if k == 0:
                return str(len(args))
            return args[k - 1] if k <= len(args) else ""

        body = [(re.sub(r"%%[A-Za-z_]\w*|%[0-9]", param, text), ln) for text, ln in mac.body]
        exp = ((mac.name, where.file, where.line),) + where.expansion
        self.run_lines(body, mac.file, exp)


def default_include_dirs() -> list[Path]:
    """``guests/include`` of the guest sources (a checkout's or an installed package's)."""
    from .guests import guest_source_dir

    return [guest_source_dir() / "include"]


def _dirs(include_dirs) -> list[Path]:
    return default_include_dirs() if include_dirs is None else [Path(d) for d in include_dirs]


def preprocess(text: str, filename: str = "<string>", include_dirs=None,
               defines: dict[str, str] | None = None) -> list[SourceLine]:
    """Run the preprocessor; return one :class:`SourceLine` per keystone statement.

    ``include_dirs`` defaults to :func:`default_include_dirs`.
    """
    pp = _Preprocessor(_dirs(include_dirs), defines or {})
    pp.run_text(text, filename, ())
    return pp.out


# --------------------------------------------------------------------------------------
# Assembly

def _ks():
    from keystone import KS_ARCH_X86, KS_MODE_32, Ks
    return Ks(KS_ARCH_X86, KS_MODE_32)


_EQU = re.compile(r"^\s*(?:\.equ|\.set)\s+([A-Za-z_.][\w.$@]*)\s*,|^\s*([A-Za-z_.][\w.$@]*)\s*=[^=]")


_REGISTERS = set(
    "al ah bl bh cl ch dl dh ax bx cx dx si di sp bp eax ebx ecx edx esi edi esp ebp eip ip "
    "cs ds es fs gs ss cr0 cr2 cr3 cr4 cr8 dr0 dr1 dr2 dr3 dr6 dr7 st "
    "mm0 mm1 mm2 mm3 mm4 mm5 mm6 mm7 xmm0 xmm1 xmm2 xmm3 xmm4 xmm5 xmm6 xmm7".split())


def _labels(lines: list[SourceLine]) -> list[tuple[str, SourceLine]]:
    out = []
    for ln in lines:
        m = _LABEL.fullmatch(ln.text)
        if m:
            out.append((m.group(1), ln))
    return out


def _locate(ks, lines: list[SourceLine], labels: list[str], base: int, exc) -> AsmError:
    """Find the statement keystone rejects by assembling each one alone.

    Every label is defined as a constant in a small prelude (with the program's own
    ``=``/``.equ`` statements), so a lone ``jmp label`` assembles unless it is itself wrong.
    """
    from keystone import KsError

    prelude = [f"{name} = {base:#x}" for name in labels]
    equ_idx = [i for i, ln in enumerate(lines) if _EQU.match(ln.text)]
    for i, ln in enumerate(lines):
        if _LABEL.fullmatch(ln.text):
            continue
        ctx = prelude + [lines[j].text for j in equ_idx if j != i]
        try:
            ks.asm("\n".join(ctx + [ln.text]), base)
        except KsError as e:
            return ln.error(f"{e}: {ln.text!r}")
    first = lines[0] if lines else SourceLine("", "<string>", 0)
    return AsmError(f"{exc} (keystone did not say where; no single statement fails alone)",
                    first.file, None)


def assemble_lines(lines: list[SourceLine], base: int) -> Assembled:
    """Assemble preprocessed statements at address ``base`` and recover label addresses."""
    from keystone import KsError

    labels: dict[str, SourceLine] = {}
    for name, ln in _labels(lines):
        if name.lower() in _REGISTERS:
            raise ln.error(f"label {name!r} is a register name for keystone: rename it")
        if name in labels:
            prev = labels[name]
            raise ln.error(f"label {name!r} already defined at {prev.file}:{prev.line}")
        labels[name] = ln
    names = list(labels)
    body = "\n".join(ln.text for ln in lines)
    table = f"\n.long {', '.join(names)}" if names else ""
    ks = _ks()
    try:
        enc, _count = ks.asm(body + table, base)
    except KsError:
        # keystone 0.9.2 now and then rejects a valid directive ('.balign 16, 0xcc')
        # after earlier failed assemblies in the same process (seen in the test suite);
        # a second attempt with a fresh engine is the arbiter before blaming the source.
        ks = _ks()
        try:
            enc, _count = ks.asm(body + table, base)
        except KsError as exc:
            raise _locate(ks, lines, names, base, exc) from None
    data = bytes(enc or b"")
    n = 4 * len(names)
    if len(data) < n:
        raise AsmError(f"keystone output shorter ({len(data)}) than the symbol table ({n})")
    code, tail = data[:len(data) - n], data[len(data) - n:]
    symbols = {name: int.from_bytes(tail[4 * i:4 * i + 4], "little") for i, name in enumerate(names)}
    for name, addr in symbols.items():
        if not base <= addr <= base + len(code):
            ln = labels[name]
            raise ln.error(f"label {name!r} resolved to {addr:#x}, outside the image "
                           f"[{base:#x}, {base + len(code):#x}]")
    return Assembled(code, base, symbols, lines)


def assemble(text: str, base: int = 0, filename: str = "<string>", include_dirs=None,
             defines: dict[str, str] | None = None, private_symbols: bool = False) -> Assembled:
    """Preprocess and assemble ``text`` for address ``base``.

    Returns the bytes and the labels (macro-local ``%%`` labels only if
    ``private_symbols``). Raises :class:`AsmError` with ``file:line``.
    """
    pp = _Preprocessor(_dirs(include_dirs), defines or {})
    pp.run_text(text, filename, ())
    out = assemble_lines(pp.out, base)
    out.files = list(dict.fromkeys(pp.files))
    if not private_symbols:
        out.symbols = {k: v for k, v in out.symbols.items() if not k.startswith(MACRO_LOCAL_PREFIX)}
    return out


def assemble_file(path, base: int = 0, include_dirs=None, defines: dict[str, str] | None = None,
                  private_symbols: bool = False) -> Assembled:
    """:func:`assemble` the file at ``path`` (errors name it by this path)."""
    p = Path(path)
    return assemble(p.read_text(), base, str(p), include_dirs, defines, private_symbols)
