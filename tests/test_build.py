"""The guest build chain: preprocessor, keystone front end, ELF writer, catalog, cache."""
from __future__ import annotations

import io
import re
import shutil
import struct

import pytest
from capstone import CS_ARCH_X86, CS_MODE_32, Cs
from elftools.elf.elffile import ELFFile

from vmm.build import asm, elf, guests
from vmm.build.asm import AsmError, assemble, preprocess
from vmm.build.guests import BuiltGuest, build_guest, guest_source_dir, list_guests

BASE = 0x100000
CS = Cs(CS_ARCH_X86, CS_MODE_32)


def disasm(code: bytes, addr: int, base: int = BASE, count: int = 0):
    off = addr - base
    return list(CS.disasm(code[off:], addr, count))


def texts(lines):
    return [ln.text for ln in lines]


# --------------------------------------------------------------------------------------
# preprocessor

def test_comments_and_statement_separator():
    src = 'nop # hash comment\nnop // slash comment\n.ascii "a#b//c;d" ; int3 # x\n'
    assert texts(preprocess(src)) == ["nop", "nop", '.ascii "a#b//c;d"', "int3"]
    assert assemble(src).code == b"\x90\x90a#b//c;d\xcc"


def test_char_literals_keep_hash_and_semicolon():
    assert assemble("mov al, '#'; mov bl, ';'").code == bytes([0xB0, 0x23, 0xB3, 0x3B])


def test_define_substitutes_identifiers_but_not_strings_or_parts():
    src = "%define N 5\n%define M N + 1\nmov eax, M\n.ascii \"N\"\nmov ebx, NN\n"
    lines = texts(preprocess(src.replace("mov ebx, NN\n", "")))
    assert lines == ["mov eax, 5 + 1", '.ascii "N"']
    with pytest.raises(AsmError):  # NN is not N: left alone, and undefined for keystone
        assemble(src)


def test_undef_and_ifdef():
    src = "%define A 1\n%ifdef A\nnop\n%endif\n%undef A\n%ifdef A\nint3\n%else\nhlt\n%endif\n"
    assert texts(preprocess(src)) == ["nop", "hlt"]


def test_if_elif_else_nesting():
    src = """
%define F 2
%if F == 1
  .byte 1
%elif F == 2 && !(F > 5)
  .byte 2
  %ifndef NOPE
    .byte 22
  %endif
%elif F == 2
  .byte 3
%else
  .byte 4
%endif
%if 0
  %if 1
    .byte 5
  %else
    .byte 6
  %endif
%endif
"""
    assert assemble(src).code == bytes([2, 22])


def test_elifdef_selects_flavour():
    src = "%ifdef FLAVOUR_A\n.byte 0xa\n%elifdef FLAVOUR_B\n.byte 0xb\n%else\n.byte 0\n%endif\n"
    assert assemble(src, defines={"FLAVOUR_B": "1"}).code == b"\x0b"
    assert assemble(src, defines={"FLAVOUR_A": "1"}).code == b"\x0a"
    assert assemble(src).code == b"\x00"


def test_macro_params_count_and_local_labels():
    src = """
%macro TWICE 2
%%again:
    .byte %1, %2, %0
    jmp %%again
%endmacro
    TWICE 1, 2
    TWICE 3, 4
"""
    out = assemble(src, BASE, private_symbols=True)
    locals_ = sorted(k for k in out.symbols if k.startswith(asm.MACRO_LOCAL_PREFIX))
    assert len(locals_) == 2 and locals_[0] != locals_[1]
    assert out.code == bytes([1, 2, 2, 0xEB, 0xFB, 3, 4, 2, 0xEB, 0xFB])
    # macro-local labels are hidden from the public symbol table
    assert not any(k.startswith(asm.MACRO_LOCAL_PREFIX) for k in assemble(src, BASE).symbols)


def test_macro_args_split_outside_quotes_and_brackets():
    src = '%macro M 2\n  .asciz %1\n  mov eax, %2\n%endmacro\nM "a, b", [ebx + 4*ecx]\n'
    assert texts(preprocess(src)) == ['.asciz "a, b"', "mov eax, [ebx + 4*ecx]"]


def test_macro_arg_range_and_nested_macros():
    src = """
%macro INNER 1
    .byte %1
%endmacro
%macro OUTER 1-2
    INNER %1
%if %0 == 2
    INNER %2
%endif
%endmacro
lab: OUTER 7
    OUTER 8, 9
"""
    out = assemble(src, BASE)
    assert out.code == bytes([7, 8, 9]) and out.symbols == {"lab": BASE}


def test_assign_and_rep():
    src = "%assign i 0\n%rep 4\n.byte i * 2\n%assign i i + 1\n%endrep\n"
    assert assemble(src).code == bytes([0, 2, 4, 6])


def test_include_is_relative_to_include_dir(tmp_path):
    (tmp_path / "a.inc").write_text('%define FROM_A 0x41\n%include "b.inc"\n')
    (tmp_path / "b.inc").write_text(".byte FROM_A\n")
    assert assemble('%include "a.inc"\n.byte 0x42\n', include_dirs=[tmp_path]).code == b"AB"


def test_recursive_include_is_an_error(tmp_path):
    (tmp_path / "loop.inc").write_text('nop\n%include "loop.inc"\n')
    with pytest.raises(AsmError) as ei:
        assemble('%include "loop.inc"\n', include_dirs=[tmp_path])
    assert ei.value.line == 2 and "recursive %include" in str(ei.value)


def test_default_include_dir_is_guests_include():
    assert asm.default_include_dirs() == [guest_source_dir() / "include"]
    out = assemble('%include "board.inc"\n.long COM1\n')
    assert out.code == (0x3F8).to_bytes(4, "little")


# --------------------------------------------------------------------------------------
# errors: file:line and keystone's message

def test_keystone_error_names_file_and_line():
    with pytest.raises(AsmError) as ei:
        assemble("nop\nnop\nmov eax, [[\nnop\n", BASE, "prog.s")
    e = ei.value
    assert (e.file, e.line) == ("prog.s", 3)
    assert str(e).startswith("prog.s:3: ")
    assert "KS_ERR_ASM" in str(e) and "mov eax, [[" in str(e)


def test_undefined_symbol_is_located():
    with pytest.raises(AsmError) as ei:
        assemble("start:\n  nop\n  call nowhere\n  jmp start\n", BASE, "prog.s")
    assert ei.value.line == 3 and "SYMBOL_MISSING" in str(ei.value)


def test_error_inside_an_include(tmp_path):
    (tmp_path / "bad.inc").write_text("nop\nbogus_instruction eax\n")
    with pytest.raises(AsmError) as ei:
        assemble('nop\n%include "bad.inc"\n', BASE, "main.s", include_dirs=[tmp_path])
    assert ei.value.file == str(tmp_path / "bad.inc") and ei.value.line == 2


def test_error_inside_a_macro_names_body_and_invocation():
    src = "%macro M 1\n    mov eax, %1\n%endmacro\nnop\nM [[\n"
    with pytest.raises(AsmError) as ei:
        assemble(src, BASE, "m.s")
    assert ei.value.line == 2 and "in macro M invoked at m.s:5" in str(ei.value)


@pytest.mark.parametrize("src, line, words", [
    ("nop\n%bogus\n", 2, "unknown directive"),
    ("%if 1\nnop\n", 1, "without %endif"),
    ("nop\n%endif\n", 2, "without %if"),
    ("%macro M 1\nnop\n", 1, "no %endmacro"),
    ("%macro M 1\nnop\n%endmacro\nM\n", 4, "takes 1 argument"),
    ('nop\n%include "missing.inc"\n', 2, "cannot find"),
    ('%ifdef X\n%else\n%error "need X"\n%endif\n', 3, "need X"),
    ("a:\nnop\na:\n", 3, "already defined at e.s:1"),
    ("%rep 2\nnop\n", 1, "without %endrep"),
    ("nop\nsi: nop\n", 2, "register name"),
])
def test_preprocessor_errors(src, line, words):
    with pytest.raises(AsmError) as ei:
        assemble(src, BASE, "e.s")
    assert ei.value.line == line and words in str(ei.value)


# --------------------------------------------------------------------------------------
# keystone quirks

@pytest.mark.parametrize("stmt", ["lgdt [x]", "lidt [eax]", "sgdt [x]", "sidt [x]",
                                  "mov ds, ax", "mov ax, ss", "push ds", "pop es",
                                  "pushf", "popf", "iret"])
def test_lint_rejects_16_bit_encodings(stmt):
    with pytest.raises(AsmError) as ei:
        assemble(f"nop\n{stmt}\nx: nop\n", BASE, "q.s")
    assert ei.value.line == 2


def test_32_bit_spellings_have_no_operand_size_prefix():
    code = assemble("mov ds, eax\nmov eax, ss\npushfd\npopfd\niretd\n").code
    assert code == bytes.fromhex("8ed8 8cd0 9c 9d cf")


def test_keystone_still_has_the_lgdt_quirk():
    """If keystone is ever fixed, the LGDT_M workaround can go."""
    from keystone import KS_ARCH_X86, KS_MODE_32, Ks
    enc, _ = Ks(KS_ARCH_X86, KS_MODE_32).asm("lgdt [0x1000]", BASE)
    assert enc[0] == 0x66


def test_lgdt_macros_are_byte_exact():
    inc = guest_source_dir() / "include"
    src = ('%include "x86.inc"\ng: LGDT_M table\ni: LIDT_M table\ns: SGDT_M table\n'
           't: SIDT_M table\nj: JMP_FAR 0x08, table\ntable: .word 0\n')
    out = assemble(src, BASE, include_dirs=[inc])
    table = out.symbols["table"]
    for sym, mnem in (("g", "lgdt"), ("i", "lidt"), ("s", "sgdt"), ("t", "sidt")):
        insn = disasm(out.code, out.symbols[sym], count=1)[0]
        assert insn.mnemonic == mnem and insn.size == 7
        assert insn.bytes[0] == 0x0F  # no 0x66 prefix
        assert insn.op_str == f"[{table:#x}]"
    far = disasm(out.code, out.symbols["j"], count=1)[0]
    assert far.mnemonic == "ljmp" and far.op_str == f"8:{table:#x}"


# --------------------------------------------------------------------------------------
# symbols

def test_symbols_match_disassembly():
    src = """
start:
    jmp far_label
    .balign 16
data_area:
    .long 0x11111111, 0x22222222
    .space 300
far_label:
    mov eax, 0x12345678
    call start
after:
"""
    out = assemble(src, BASE)
    s = out.symbols
    assert s["start"] == BASE and s["data_area"] == BASE + 16
    assert s["far_label"] == BASE + 16 + 8 + 300 and s["after"] == BASE + len(out.code)
    insn = disasm(out.code, s["far_label"], count=2)
    assert (insn[0].mnemonic, insn[0].op_str) == ("mov", "eax, 0x12345678")
    assert (insn[1].mnemonic, insn[1].op_str) == ("call", hex(BASE))
    jmp = disasm(out.code, s["start"], count=1)[0]
    assert jmp.op_str == hex(s["far_label"])
    # the address table was stripped: the image ends with the call
    assert out.code.endswith(bytes(insn[1].bytes))


def test_symbol_table_does_not_change_layout():
    src = "a: jmp b\n.balign 64\nb: nop\n.long a, b\n"
    with_syms = assemble(src, BASE).code
    from keystone import KS_ARCH_X86, KS_MODE_32, Ks
    raw, _ = Ks(KS_ARCH_X86, KS_MODE_32).asm(src, BASE)
    assert with_syms == bytes(raw)


# --------------------------------------------------------------------------------------
# the ELF writer

def test_elf_writer_output_parses():
    code = b"\x90" * 10 + b"\xf4"
    data = elf.write_elf32([elf.Segment(BASE, code, memsz=0x2000)], BASE + 2, {"entry": BASE + 2,
                                                                             "halt": BASE + 10})
    f = ELFFile(io.BytesIO(data))
    assert f.header.e_machine == "EM_386" and f.header.e_entry == BASE + 2
    (seg,) = list(f.iter_segments())
    assert seg["p_paddr"] == BASE and seg["p_filesz"] == len(code) and seg["p_memsz"] == 0x2000
    assert seg.data() == code
    syms = {s.name: s["st_value"] for s in f.get_section_by_name(".symtab").iter_symbols() if s.name}
    assert syms == {"entry": BASE + 2, "halt": BASE + 10}
    assert elf.multiboot_header(3) == struct.pack("<III", 0x1BADB002, 3, (-(0x1BADB002 + 3)) & 0xFFFFFFFF)


# --------------------------------------------------------------------------------------
# the catalog and every guest

def test_catalog():
    names = [g.name for g in list_guests()]
    assert names == ["hello", "pmode", "paging", "user", "timer", "exits", "popek", "smc", "nanobench", "macrobench"]
    for g in list_guests():
        assert g.source_path.is_file(), g.source_path
        assert g.expected_path.is_file(), g.expected_path
        assert g.exit_status & 1 and g.description
        assert g.expected_output().endswith(b"\n")
    assert guests.get_guest("paging").name == "paging"
    with pytest.raises(KeyError):
        guests.get_guest("nope")


@pytest.mark.parametrize("name", [g.name for g in list_guests()])
def test_every_guest_builds_to_a_multiboot_elf(name):
    g = build_guest(name)
    assert isinstance(g, BuiltGuest) and g.flavour == "native"
    assert g.load_address == 0x100000 and g.entry == g.symbols["_start"]
    magic, flags, checksum = struct.unpack_from("<III", g.flat, 0)
    assert magic == 0x1BADB002 and flags == 3 and (magic + flags + checksum) & 0xFFFFFFFF == 0
    assert g.symbols["multiboot_header"] == g.load_address
    f = ELFFile(io.BytesIO(g.elf))
    assert f.header.e_entry == g.entry and f.header.e_type == "ET_EXEC"
    (seg,) = list(f.iter_segments())
    assert seg["p_type"] == "PT_LOAD" and seg["p_paddr"] == g.load_address
    assert seg["p_memsz"] == len(g.flat) and seg.data() == g.flat[:seg["p_filesz"]]
    assert not any(g.flat[seg["p_filesz"]:]), "the file must hold every non-zero byte"
    assert seg["p_offset"] + 12 <= 8192, "Multiboot header beyond the first 8 KiB"
    syms = {s.name: s["st_value"] for s in f.get_section_by_name(".symtab").iter_symbols() if s.name}
    assert syms == g.symbols
    for sym in ("kmain", "isr_common", "default_handler", "gdt", "idt", "tss"):
        assert sym in syms
    # code at a symbol disassembles as expected
    first = disasm(g.flat, g.symbols["_start"], g.load_address, count=2)
    assert [i.mnemonic for i in first] == ["cli", "cld"]


def test_descriptor_table_loads_have_32_bit_bases():
    g = build_guest("hello")
    found = {}
    for fn, mnem, table in (("gdt_init", "lgdt", "gdtr"), ("idt_init", "lidt", "idtr")):
        for insn in disasm(g.flat, g.symbols[fn], g.load_address, count=60):
            if insn.mnemonic == mnem:
                assert insn.bytes[0] == 0x0F, f"{mnem} has a prefix: {insn.bytes.hex()}"
                assert insn.op_str == f"[{g.symbols[table]:#x}]"
                found[mnem] = True
                break
    assert found == {"lgdt": True, "lidt": True}


def test_isr_stubs_push_a_uniform_frame():
    g = build_guest("hello")
    err_vectors = {8, 10, 11, 12, 13, 14, 17, 21, 29, 30}
    for v in range(256):
        insns = disasm(g.flat, g.symbols["isr_stubs"] + 16 * v, g.load_address, count=4)
        ops = [(i.mnemonic, i.op_str) for i in insns]
        if v in err_vectors:
            assert ops[:3] == [("nop", ""), ("nop", ""), ("push", hex(v) if v > 9 else str(v))]
        else:
            assert ops[0] == ("push", "0") and ops[1][0] == "push"
            assert int(ops[1][1], 0) == v
        jmp = next(i for i in insns if i.mnemonic == "jmp")
        assert int(jmp.op_str, 0) == g.symbols["isr_common"]


def test_gdt_contents():
    g = build_guest("user")
    off = g.symbols["gdt"] - g.load_address
    d = struct.unpack_from("<12I", g.flat, off)
    assert d[:10] == (0, 0, 0xFFFF, 0x00CF9A00, 0xFFFF, 0x00CF9200, 0xFFFF, 0x00CFFA00,
                      0xFFFF, 0x00CFF200)
    limit, base = struct.unpack_from("<HI", g.flat, g.symbols["gdtr"] - g.load_address)
    assert base == g.symbols["gdt"] and limit == 6 * 8 - 1


# --------------------------------------------------------------------------------------
# pvops

PVOPS = """PV_LGDT PV_LIDT PV_LTR PV_STR PV_LOAD_ESP0 PV_CLI PV_STI PV_SAFE_HALT PV_HLT
PV_SAVE_FLAGS PV_RESTORE_FLAGS PV_IRET PV_READ_CR0 PV_READ_CR2 PV_READ_CR3 PV_READ_CR4
PV_WRITE_CR0 PV_WRITE_CR3 PV_WRITE_CR4 PV_SET_PTE PV_SET_PDE PV_INVLPG PV_RDMSR PV_WRMSR
PV_CPUID PV_WRITE_TPR PV_INB PV_OUTB PV_INW PV_OUTW PV_INL PV_OUTL""".split()


@pytest.mark.parametrize("flavour", guests.FLAVOURS)
def test_every_flavour_defines_every_pvop(flavour):
    pp = asm._Preprocessor([guest_source_dir() / "include"], {f"FLAVOUR_{flavour.upper()}": "1"})
    pp.run_text('%include "pvops.inc"\n', "<test>", ())
    missing = [m for m in PVOPS if m not in pp.macros]
    assert not missing


def test_unknown_flavour_fails_with_a_clear_error():
    with pytest.raises(AsmError) as ei:
        build_guest("hello", "sparc", use_cache=False)
    assert "pvops.inc" in ei.value.file and "no flavour selected" in str(ei.value)
    with pytest.raises(ValueError):
        build_guest("hello", "no such flavour")


def test_pv_flavour_is_a_xen_pv_kernel_with_notes():
    from vmm.loader.xen import load_xen
    from vmm.pv import abi

    g = build_guest("hello", "pv")
    image = load_xen(g.elf, ram_size=16 << 20)
    assert image.hypercall_page == g.symbols["hypercall_page"] and image.hypercall_page % 4096 == 0
    assert image.xen_notes[abi.XEN_ELFNOTE_ENTRY] == g.entry == g.symbols["_start"]
    assert image.xen_notes[abi.XEN_ELFNOTE_XEN_VERSION] == b"xen-3.0"
    assert image.virt_base == 0 and image.symbols["kmain"] == g.symbols["kmain"]
    # the native build has no notes: pv refuses it with a one-line reason
    with pytest.raises(Exception, match="no Xen ELF notes"):
        load_xen(build_guest("hello").elf, ram_size=16 << 20)


_PRIVILEGED = re.compile(
    r"^(?:[A-Za-z_.][\w.]*:\s*)?(cli|sti|hlt|lgdt|lidt|sgdt|sidt|ltr|str|lldt|invlpg|in|out|"
    r"ins[bwd]?|outs[bwd]?|iretd?|wrmsr|rdmsr|cpuid|clts|wbinvd|invd|lmsw|smsw|pushfd|popfd|"
    r"mov\s+cr\d|mov\s+\w+\s*,\s*cr\d)\b", re.I)


def test_guests_use_pvops_for_privileged_operations():
    allowed = {("user.s", "cli")}  # task 2 runs cli at CPL 3 on purpose
    root = guest_source_dir()
    files = sorted(root.glob("*.s")) + sorted((root / "include").glob("*.inc"))
    bad = []
    for path in files:
        if path.name in ("pvops.inc", "x86.inc", "xen.inc"):  # the pvops' own implementations
            continue
        for n, raw in enumerate(path.read_text().splitlines(), 1):
            if raw.lstrip().startswith("%"):
                continue
            for stmt in asm.split_top(asm.strip_comment(raw), ";"):
                m = _PRIVILEGED.match(stmt.strip())
                if m and (path.name, m.group(1).lower()) not in allowed:
                    bad.append(f"{path.name}:{n}: {stmt.strip()}")
    assert not bad, "use the PV_* macros:\n" + "\n".join(bad)


# --------------------------------------------------------------------------------------
# the cache

@pytest.fixture
def private_tree(tmp_path, monkeypatch):
    """A copy of guests/ with its own cache directory, and a cold in-memory cache."""
    root = tmp_path / "guests"
    shutil.copytree(guest_source_dir(), root, ignore=shutil.ignore_patterns(".build"))
    monkeypatch.setattr(guests, "guest_source_dir", lambda: root)
    monkeypatch.setattr(guests, "_memo", {})
    return root


def _count_assembles(monkeypatch):
    calls = []
    real = asm.assemble_file

    def counting(*a, **kw):
        calls.append(a[0])
        return real(*a, **kw)

    monkeypatch.setattr(asm, "assemble_file", counting)
    return calls


def test_second_build_comes_from_the_cache(private_tree, monkeypatch):
    calls = _count_assembles(monkeypatch)
    first = build_guest("hello")
    assert len(calls) == 1 and first.cache_path and first.cache_path.parent == private_tree / ".build"
    assert build_guest("hello") is first  # in-memory
    monkeypatch.setattr(guests, "_memo", {})
    again = build_guest("hello")  # from disk
    assert len(calls) == 1
    assert (again.elf, again.flat, again.symbols, again.entry) == (first.elf, first.flat,
                                                                   first.symbols, first.entry)


def test_cache_is_invalidated_by_source_and_include_edits(private_tree, monkeypatch):
    calls = _count_assembles(monkeypatch)
    first = build_guest("hello")
    src = private_tree / "hello.s"
    src.write_text(src.read_text().replace("bye\\n", "ciao\\n"))
    second = build_guest("hello")
    assert len(calls) == 2 and b"ciao" in second.flat and b"ciao" not in first.flat
    assert not first.cache_path.exists(), "the stale image is removed"
    inc = private_tree / "include" / "serial.inc"
    inc.write_text(inc.read_text() + "\n// an edit\n")
    build_guest("hello")
    assert len(calls) == 3
    build_guest("hello", use_cache=False)
    assert len(calls) == 4


def test_a_corrupt_cache_entry_is_rebuilt(private_tree, monkeypatch):
    first = build_guest("hello")
    meta = first.cache_path.with_suffix(".json")
    meta.write_text(meta.read_text().replace('"key": "', '"key": "x'))
    monkeypatch.setattr(guests, "_memo", {})
    calls = _count_assembles(monkeypatch)
    again = build_guest("hello")
    assert len(calls) == 1 and again.elf == first.elf


def test_command_line_lists_and_writes(tmp_path, capsys):
    assert guests.main([]) == 0
    assert "paging" in capsys.readouterr().out
    out = tmp_path / "hello.elf"
    assert guests.main(["hello", "-o", str(out)]) == 0
    assert out.read_bytes() == build_guest("hello").elf
