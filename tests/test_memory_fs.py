"""Tests for memory_fs.py: parser tolerance, op behaviour, caps, the sandbox (asserted on the
filesystem), and hypothesis fuzzing of the parser and of random op sequences."""
import os
import sys
import tempfile
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import given, settings, strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from memory_fs import (OPS, READ_OPS, WRITE_OPS, MemoryFS, Op, format_results, grammar, parse_ops,  # noqa: E402
                       valid_name)

ALIASES = {"UPSERT_MAP": {"op": "UPSERT", "file": "dungeon_map.txt", "key": "({0}):"}}
LOG = READ_OPS + WRITE_OPS + ("DONE", "UPSERT_MAP")
PLAN = READ_OPS + ("ACTION",)


def parsed(text, aliases=None):
    return [(op.name, op.args) for op in parse_ops(text, aliases)]


def run(fs, text, allowed=OPS):
    return fs.run(parse_ops(text, ALIASES), allowed)


def tree(root):
    """Every path under root with its bytes (or link target): what a sandbox test compares."""
    out = {}
    for d, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(d, name)
            out[str(p)] = ("link", os.readlink(p)) if p.is_symlink() else p.read_bytes() if p.is_file() else "other"
    return out


def has_key(line, key):  # the spec's "line keyed by key" (as a whole word)
    return line.startswith(key) and (not key[-1].isalnum() or len(line) == len(key) or not line[len(key)].isalnum())


@pytest.fixture
def fs(tmp_path):
    return MemoryFS(tmp_path / "mem", {"notes.txt": "Tree at (3,4)\nwater to the east\nzombie!\n", "dungeon_map.txt": ""})


# ----------------------------------------------------------------------------- parser

SEARCH = [("SEARCH", ["notes.txt", "tree"])]


@pytest.mark.parametrize("text, want", [
    ("<|SEARCH|>notes.txt|tree<|END|>", SEARCH),                       # the paper's syntax
    ("<SEARCH>notes.txt|tree<END>", SEARCH),                           # missing pipes
    ("<|search|>notes.txt|tree<|end|>", SEARCH),                       # any case
    ("<|SEARCH|>notes.txt|tree<|END}", SEARCH),                        # <|END}
    ("<|SEARCH|>notes.txt|tree</END>", SEARCH),                        # </END>
    ("<|SEARCH|notes.txt|tree<|END|", SEARCH),                         # no '>' at all
    ("  < |SEARCH| >  notes.txt | tree  < |END| >  ", SEARCH),         # stray whitespace
    ("<|SEARCH|>\nnotes.txt|tree\n<|END|>", SEARCH),
    ("<|SEARCH|>notes.txt|tree", SEARCH),                              # unterminated last op
    ("<|SEARCH|>notes.txt|tree\nand then some prose", SEARCH),         # a one-line op ends with its line
    ("```\n<|SEARCH|>notes.txt|tree<|END|>\n```", SEARCH),             # code fences
    ("```text\n<|SEARCH|>notes.txt|tree\n```", SEARCH),
    ("<ACTION>move west</ACTION>", [("ACTION", ["move west"])]),
    ("<|ACTION|>move west<|END|>", [("ACTION", ["move west"])]),
    ("<|ACTION|>move west<|im_end|>", [("ACTION", ["move west"])]),   # a chat end token closes too
    ("<|ACTION|>`move west`", [("ACTION", ["move west"])]),
    ("I will go.\nACTION: move west\n", [("ACTION", ["move west"])]),  # bare ACTION line
    ("**Action:** move west", [("ACTION", ["move west"])]),
    ("<|DONE|>", [("DONE", [])]),
    ("<|done|> that is all", [("DONE", [])]),
    ("<|APPEND|>notes.txt|a|b|c<|END|>", [("APPEND", ["notes.txt", "a|b|c"])]),  # text keeps its pipes
    ("<|APPEND|>notes.txt|line 1\nline 2<|END|>", [("APPEND", ["notes.txt", "line 1\nline 2"])]),
    ("<|WRITE|>plan.txt|\n1. wood\n2. table\n", [("WRITE", ["plan.txt", "1. wood\n2. table"])]),
    ("```\n<|WRITE|>plan.txt|1. wood\n2. table\n```\nok", [("WRITE", ["plan.txt", "1. wood\n2. table"])]),
    ("<|WRITE|>plan.txt|```\n1. wood\n```<|END|>", [("WRITE", ["plan.txt", "1. wood"])]),
    ("<|UPSERT|>s.txt|hp:|5/9<|END|>", [("UPSERT", ["s.txt", "hp:", "5/9"])]),
    ("<|APPEND|>notes.txt|saw a tree\nACTION: move west",               # unterminated text op, then an action
     [("APPEND", ["notes.txt", "saw a tree"]), ("ACTION", ["move west"])]),
    ("<|FOO|>bar|baz<|END|>", [("FOO", ["bar", "baz"])]),              # unknown ops are parsed
    ("I <think> a <b>bold</b> plan; x < y > z", []),                   # plain tags are not ops
    ("Action: <|ACTION|>move west<|END|>", [("ACTION", ["move west"])]),  # not twice
])
def test_parser_tolerates_what_models_write(text, want):
    assert parsed(text) == want


def test_several_ops_in_written_order_with_exact_raw_spans():
    text = ("Let me check.\n<|SEARCH|>notes.txt|tree<|END|>\n<|APPEND|>notes.txt|saw tree<|END|> "
            "<READ>notes.txt</END>\nACTION: move west\n<|DONE|>")
    ops = parse_ops(text)
    assert [op.name for op in ops] == ["SEARCH", "APPEND", "READ", "ACTION", "DONE"]
    assert [op.raw for op in ops] == ["<|SEARCH|>notes.txt|tree<|END|>", "<|APPEND|>notes.txt|saw tree<|END|>",
                                      "<READ>notes.txt</END>", "ACTION: move west", "<|DONE|>"]


def test_alias_resolves_to_upsert():
    op, = parse_ops("<|UPSERT_MAP|>3,4|floor, door east<|END|>", ALIASES)
    assert (op.name, op.args, op.alias) == ("UPSERT", ["dungeon_map.txt", "(3,4):", "(3,4): floor, door east"], "UPSERT_MAP")
    assert parsed("<|UPSERT_MAP|>3,4|x<|END|>") == [("UPSERT_MAP", ["3,4", "x"])]  # without the alias: an unknown op
    note = {"NOTE": {"op": "APPEND", "file": "notes.txt"}}
    assert parsed("<|NOTE|>a|b<|END|>", note) == [("APPEND", ["notes.txt", "a|b"])]


@pytest.mark.parametrize("aliases", [{"READ": {"op": "SEARCH"}}, {"X": {"op": "NOPE"}}, {"X": {"op": "UPSERT", "key": "{name}"}}])
def test_bad_alias_data_raises(aliases):
    with pytest.raises(ValueError, match="alias"):
        parse_ops("", aliases)


@pytest.mark.parametrize("text, want", [
    ("<|" * 20_000, []),                                                  # no tag closes
    ("<" + " \t" * 20_000, []),                                           # whitespace runs are bounded
    ("ACTION:" + " " * 100_000 + "x", [("ACTION", ["x"])]),
    ("<|WRITE|>a.txt|" + "a" * 1_000_000, [("WRITE", ["a.txt", "a" * 1_000_000])]),
    ("<|A|>" * 5000 + "</B>" * 5000,                                        # </B> closes no A: the last A's text
     [("A", [])] * 4999 + [("A", ["</B>" * 5000])]),
    ("\x00<\x00|END|>", []),
], ids=["unclosed tags", "whitespace run", "long action line", "megabyte write", "5000 unknown ops", "NUL bytes"])
def test_parser_handles_pathological_text(text, want):
    assert parsed(text, ALIASES) == want


# ----------------------------------------------------------------------------- ops

def test_ops_execute_in_written_order(fs):
    r = run(fs, "<|SEARCH|>notes.txt|wolf<|END|><|APPEND|>notes.txt|a wolf<|END|><|SEARCH|>notes.txt|wolf<|END|>")
    assert [x.matches for x in r] == [0, None, 1]


def test_read_search_tail_count(fs):
    read, search, star, count, all_lines, tail, tail_default = run(fs, (
        "<|READ|>notes.txt<|END|><|SEARCH|>notes.txt|TREE<|END|><|SEARCH|>*|tree<|END|><|COUNT|>notes.txt|e<|END|>"
        "<|COUNT|>notes.txt<|END|><|TAIL|>notes.txt|2<|END|><|TAIL|>notes.txt<|END|>"))
    assert read.text == "[READ notes.txt] 3 lines:\nTree at (3,4)\nwater to the east\nzombie!"
    assert search.text == "[SEARCH notes.txt|TREE] 1 match:\nTree at (3,4)" and search.matches == 1
    assert star.text == "[SEARCH *|tree] 1 match:\nnotes.txt: Tree at (3,4)"
    assert (count.matches, count.text) == (3, "[COUNT notes.txt|e] 3 matching lines")
    assert all_lines.matches == 3
    assert tail.text == "[TAIL notes.txt|2] last 2 of 3 lines:\nwater to the east\nzombie!"
    assert tail_default.text.endswith("zombie!")
    assert not any(x.wrote or x.redundant for x in (read, search, star, count, tail))


@pytest.mark.parametrize("text, message", [
    ("<|READ|>nope.txt<|END|>", "no file nope.txt; files: dungeon_map.txt, notes.txt"),
    ("<|READ|><|END|>", "needs a file name"),
    ("<|SEARCH|>notes.txt<|END|>", "needs a file and a keyword"),
    ("<|TAIL|>notes.txt|many<|END|>", "needs a line count"),
    ("<|APPEND|>notes.txt<|END|>", "needs text"),
    ("<|UPSERT|>notes.txt|key<|END|>", "needs a key and text"),
    ("<|ACTION|><|END|>", "needs an action"),
])
def test_errors_are_results(fs, text, message):
    r, = run(fs, text)
    assert not r.ok and message in r.text and r.matches is None


def test_search_cap_shows_newest_lines(tmp_path):
    fs = MemoryFS(tmp_path, {"log.txt": "".join(f"step {i} tree\n" for i in range(50))}, max_result_lines=10)
    r, = run(fs, "<|SEARCH|>log.txt|tree<|END|>")
    lines = r.text.split("\n")
    assert r.matches == 50 and "40 more older matches not shown" in lines[0]
    assert lines[1:] == [f"step {i} tree" for i in range(40, 50)]


def test_write_ops_and_redundancy_flags(fs):
    append, again, write, same, create, exists, create_empty = run(fs, (
        "<|APPEND|>notes.txt|a cow<|END|><|APPEND|>notes.txt|a cow<|END|><|WRITE|>plan.txt|1. wood<|END|>"
        "<|WRITE|>plan.txt|1. wood<|END|><|CREATE|>goals.txt|live<|END|><|CREATE|>goals.txt|live<|END|>"
        "<|CREATE|>empty.txt<|END|>"))
    assert (append.wrote, append.redundant) == (True, False)
    assert (again.wrote, again.redundant) == (True, True) and "already in the file" in again.text  # APPEND still appends
    assert (write.wrote, write.redundant, same.wrote, same.redundant) == (True, False, False, True)
    assert create.wrote and not exists.ok and exists.redundant and "already exists" in exists.text
    assert create_empty.wrote and fs.read("empty.txt") == ""
    assert fs.read("notes.txt").endswith("zombie!\na cow\na cow\n") and fs.read("plan.txt") == "1. wood\n"


def test_upsert_keeps_one_line_per_key(fs):
    r = run(fs, ("<|UPSERT|>s.txt|health|health 9/9<|END|><|UPSERT|>s.txt|healthy food|apple<|END|>"
                 "<|UPSERT|>s.txt|health|7/9<|END|><|UPSERT|>s.txt|health|health 7/9<|END|>"))
    assert [x.text.split("] ")[1] for x in r] == ["added the line", "added the line", "replaced the line",
                                                   "unchanged: the same line is already there"]
    assert [(x.wrote, x.redundant) for x in r] == [(True, False), (True, False), (True, False), (False, True)]
    assert fs.read("s.txt") == "health 7/9\nhealthy food apple\n"    # "health" is a whole-word key
    run(fs, "<|APPEND|>s.txt|health 1/9\nhealth 2/9<|END|><|UPSERT|>s.txt|health|3/9<|END|>")
    assert fs.read("s.txt") == "health 3/9\nhealthy food apple\n"    # duplicates collapse


def test_alias_upsert_equals_plain_upsert(tmp_path):
    a = MemoryFS(tmp_path / "a", {"dungeon_map.txt": ""})
    b = MemoryFS(tmp_path / "b", {"dungeon_map.txt": ""})
    run(a, "<|UPSERT_MAP|>3,4|floor<|END|><|UPSERT_MAP|>3,4|floor, door east<|END|><|UPSERT_MAP|>1,2|wall<|END|>")
    run(b, ("<|UPSERT|>dungeon_map.txt|(3,4):|floor<|END|><|UPSERT|>dungeon_map.txt|(3,4):|(3,4): floor, door east<|END|>"
            "<|UPSERT|>dungeon_map.txt|(1,2):|wall<|END|>"))
    assert a.snapshot() == b.snapshot() == {"dungeon_map.txt": "(3,4): floor, door east\n(1,2): wall\n"}


def test_allowed_sets_refuse_with_a_clear_text(fs):
    write, read, alias, unknown, action = run(fs, (
        "<|WRITE|>notes.txt|gone<|END|><|READ|>notes.txt<|END|><|UPSERT_MAP|>1,1|x<|END|><|FOO|>bar<|END|>"
        "<|ACTION|>move west<|END|>"), PLAN)
    assert write.text == "[WRITE notes.txt] error: WRITE is not allowed here; allowed: READ, SEARCH, TAIL, COUNT, ACTION"
    assert read.ok and not alias.ok and "UPSERT_MAP is not allowed" in alias.text
    assert unknown.text.startswith("[FOO bar] error: unknown op FOO; allowed: READ")
    assert action.ok and fs.read("notes.txt").startswith("Tree")
    in_log = run(fs, "<|UPSERT_MAP|>1,1|x<|END|><|ACTION|>north<|END|>", set(LOG))  # an alias may be allowed by name
    assert in_log[0].ok and not in_log[1].ok
    assert in_log[1].text.endswith("allowed: READ, SEARCH, TAIL, COUNT, APPEND, WRITE, CREATE, UPSERT, DONE, UPSERT_MAP")


def test_done_and_action_change_nothing_and_format_results(fs):
    before = fs.snapshot()
    r = run(fs, "<|SEARCH|>notes.txt|zombie<|END|><|DONE|><|ACTION|>move west<|END|><|WRITE|>a.txt|x<|END|>", PLAN + ("DONE",))
    assert [x.ok for x in r] == [True, True, True, False] and not any(x.wrote for x in r) and fs.snapshot() == before
    assert format_results(r) == ("[SEARCH notes.txt|zombie] 1 match:\nzombie!\n"
                                 "[WRITE a.txt] error: WRITE is not allowed here; allowed: READ, SEARCH, TAIL, COUNT, DONE, ACTION")
    assert format_results([]) == ""


def test_write_through_reopen_and_index(fs):
    run(fs, "<|APPEND|>notes.txt|cow<|END|><|UPSERT_MAP|>2,2|door<|END|><|WRITE|>plan.txt|a\nb<|END|>")
    for name in fs.names():
        assert (fs.root / name).read_text() == fs.read(name)
    assert sorted(os.listdir(fs.root)) == fs.names()
    assert MemoryFS(fs.root).snapshot() == fs.snapshot()
    assert fs.index() == "  - dungeon_map.txt (1 line)\n  - notes.txt (4 lines)\n  - plan.txt (2 lines)"
    with pytest.raises(FileNotFoundError):
        fs.read("nope.txt")


def test_apply_replays_recorded_writes(fs, tmp_path):
    initial = fs.snapshot()
    results = run(fs, ("<|APPEND|>notes.txt|cow<|END|><|WRITE|>notes.txt|x<|END|><|UPSERT_MAP|>1,1|a<|END|>"
                       "<|READ|>notes.txt<|END|><|CREATE|>g.txt<|END|><|UPSERT_MAP|>1,1|b<|END|>"), LOG)
    replay = MemoryFS(tmp_path / "replay", initial)
    for r in results:
        if r.wrote:
            replay.apply(r.op)
    assert replay.snapshot() == fs.snapshot()
    replay.apply(Op("READ", ["nope.txt"], ""))  # read-only ops change nothing and raise nothing
    assert replay.snapshot() == fs.snapshot() and replay.names() == fs.names()
    with pytest.raises(ValueError, match="cannot replay"):
        replay.apply(Op("CREATE", ["g.txt"], ""))


def test_caps_are_reported_as_op_results(tmp_path):
    fs = MemoryFS(tmp_path, {"a.txt": "", "b.txt": ""}, max_files=2, max_file_chars=100, max_result_lines=3,
                  max_result_chars=50)
    third, = run(fs, "<|CREATE|>c.txt<|END|>")
    assert not third.ok and "file limit reached (2 files)" in third.text and not (tmp_path / "c.txt").exists()
    big, = run(fs, "<|WRITE|>a.txt|" + "x" * 200 + "<|END|>")
    assert not big.ok and "over the limit of 100" in big.text and fs.read("a.txt") == ""
    results = run(fs, "<|APPEND|>a.txt|0123456789<|END|>" * 12)
    assert [r.ok for r in results] == [True] * 9 + [False] * 3 and len(fs.read("a.txt")) == 99
    read, = run(fs, "<|READ|>a.txt<|END|>")  # READ has no line cap; 50 characters hold 4 lines of 11
    assert read.text.count("\n") == 4 and "first 4 shown, 5 more not shown" in read.text
    search, = run(fs, "<|SEARCH|>a.txt|0123<|END|>")  # SEARCH: the newest 3 lines
    assert search.text.count("\n") == 3 and "9 matches (6 more older matches not shown)" in search.text
    run(fs, "<|WRITE|>b.txt|" + "y" * 90 + "<|END|>")
    long_line, = run(fs, "<|READ|>b.txt<|END|>")
    assert long_line.text.endswith("y" * 48 + " …")  # one line over the char cap: its start, marked


def test_the_papers_caps_read_whole_files_and_the_last_1000_matches(tmp_path):
    lines = [f"line {i} tree" for i in range(2000)]
    fs = MemoryFS(tmp_path, {"big.txt": "\n".join(lines)})  # the defaults are the paper's
    read, = run(fs, "<|READ|>big.txt<|END|>")
    assert read.text.split("\n")[1:] == lines  # a 2,000-line file reads whole
    tail, = run(fs, "<|TAIL|>big.txt|1500<|END|>")
    assert tail.text.split("\n")[1:] == lines[-1500:]
    search, = run(fs, "<|SEARCH|>big.txt|tree<|END|>")
    assert search.matches == 2000 and search.text.split("\n")[1:] == lines[-1000:]  # the last 1000 matches
    assert search.text.startswith("[SEARCH big.txt|tree] 2000 matches (1000 more older matches not shown):")


def test_search_keyword_keeps_its_pipes_and_star_is_a_setting(tmp_path):
    fs = MemoryFS(tmp_path, {"a.txt": "x | y\nx\n", "b.txt": "x | y in b\n"})
    hit, count = run(fs, "<|SEARCH|>a.txt|x | y<|END|><|COUNT|>a.txt|x | y<|END|>")
    assert hit.op.args == ["a.txt", "x | y"] and hit.matches == 1 and count.matches == 1  # cut at the first '|' only
    everywhere, = run(fs, "<|SEARCH|>*|x | y<|END|>")
    assert everywhere.matches == 2 and "b.txt: x | y in b" in everywhere.text
    v0 = MemoryFS(tmp_path / "v0", {"a.txt": "x\n"}, search_all=False)  # the authors' v0 has no '*'
    star, = run(v0, "<|SEARCH|>*|x<|END|>")
    assert not star.ok and "bad file name" in star.text
    assert '"*"' not in grammar(["SEARCH"], files=["a.txt"], search_all=False)
    assert '"*"' in grammar(["SEARCH"], files=["a.txt"])


def test_result_texts_and_flags(fs):
    """What the model reads back after each write, word for word, and the flags the metrics count."""
    texts = [r.text for r in run(fs, (
        "<|CREATE|>g.txt|a\nb<|END|><|CREATE|>g.txt<|END|><|WRITE|>g.txt|x<|END|><|WRITE|>g.txt|x<|END|>"
        "<|COUNT|>notes.txt<|END|><|COUNT|>notes.txt|TREE<|END|>"
        "<|APPEND|>s.txt|hp: 1\nhp: 2<|END|><|APPEND|>s.txt|hp: 2<|END|><|UPSERT|>s.txt|hp:|Full<|END|>"
        "<|UPSERT|>s.txt|mp:|Low<|END|><|SEARCH|>s.txt|full<|END|><|SEARCH|>s.txt|LOW<|END|><|SEARCH|>s.txt|x<|END|>"))]
    assert texts == ["[CREATE g.txt] created with 2 lines",
                     "[CREATE g.txt] error: g.txt already exists; WRITE replaces it, APPEND adds to it",
                     "[WRITE g.txt] wrote 1 line", "[WRITE g.txt] unchanged: the file already holds exactly this",
                     "[COUNT notes.txt] 3 lines", "[COUNT notes.txt|TREE] 1 matching line",
                     "[APPEND s.txt] appended 2 lines, now 2", "[APPEND s.txt] appended 1 line, now 3 (already in the file)",
                     "[UPSERT s.txt|hp:] replaced the line, dropped 2 duplicate lines", "[UPSERT s.txt|mp:] added the line",
                     "[SEARCH s.txt|full] 1 match:\nhp: Full", "[SEARCH s.txt|LOW] 1 match:\nmp: Low",
                     "[SEARCH s.txt|x] 0 matches"]  # SEARCH ignores case, the file keeps it
    assert fs.read("s.txt") == "hp: Full\nmp: Low\n"
    run(fs, "<|APPEND|>s.txt|hp: 9<|END|>")
    assert run(fs, "<|UPSERT|>s.txt|hp:|0<|END|>")[0].text.endswith("replaced the line, dropped 1 duplicate line")
    empty, other = run(fs, "<|CREATE|>g.txt<|END|><|CREATE|>g.txt|y<|END|>")
    assert empty.redundant and not other.redundant  # a CREATE with no text asks for what is there
    assert (empty.ok, empty.wrote, other.ok) == (False, False, False)


def test_upsert_keys_and_texts(fs):
    """A key ending in a non-word character matches whatever follows it; the stored line is one line."""
    run(fs, "<|WRITE|>s.txt|hp:5\nhpx: 1<|END|>")
    assert run(fs, "<|UPSERT|>s.txt|hp:|6<|END|>")[0].text.endswith("replaced the line")
    assert fs.execute(Op("UPSERT", ["s.txt", "k", "two\nlines"], ""), OPS).ok  # as a hook may write it
    assert fs.read("s.txt") == "hp: 6\nhpx: 1\nk two lines\n"
    bad = fs.execute(Op("UPSERT", ["s.txt", "a\nb", "x"], ""), OPS)
    assert not bad.ok and "the key must be one line" in bad.text and fs.read("s.txt").count("\n") == 3


def test_what_reaches_the_disk(tmp_path, monkeypatch):
    """Files are created 0644 (under nested folders made on the way), appended lines reach the disk as written,
    text reads back as stored (a lone surrogate becomes '?'), the journal records each write, a full disk is an
    error result."""
    fs = MemoryFS(tmp_path / "a" / "b" / "mem", {"notes.txt": "x\n"})
    fs.journal = []
    run(fs, "<|APPEND|>notes.txt|y\nz<|END|><|READ|>notes.txt<|END|><|APPEND|>nope/x|w<|END|>")
    assert fs.journal == [["APPEND", ["notes.txt", "y\nz"]]]
    assert (fs.root / "notes.txt").read_text() == fs.read("notes.txt") == "x\ny\nz\n"
    assert (fs.root / "notes.txt").stat().st_mode & 0o777 == 0o644
    assert fs.execute(Op("WRITE", ["s.txt", "a\ud800b"], ""), OPS).ok and fs.read("s.txt") == "a?b\n"
    monkeypatch.setattr(fs, "_put", lambda *a, **k: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    full, = run(fs, "<|APPEND|>notes.txt|w<|END|>")
    assert (full.ok, full.text) == (False, "[APPEND notes.txt] error: cannot write: No space left on device")
    assert fs.read("notes.txt") == "x\ny\nz\n" and fs.journal[-1] == ["WRITE", ["s.txt", "a\ud800b"]]
    unknown, = run(fs, "<|FLY|>x<|END|>")
    assert unknown.ok is False


def test_default_file_limit(tmp_path):
    fs = MemoryFS(tmp_path, {f"f{i}.txt": "" for i in range(64)})
    more, = run(fs, "<|CREATE|>f64.txt<|END|>")
    assert not more.ok and "file limit reached (64 files)" in more.text


def test_limits_are_inclusive(tmp_path):
    """A name of exactly the name limit and a file of exactly the size limit are allowed; one more is not."""
    assert valid_name("a" * 64) and not valid_name("a" * 65)  # the default (scaffold file names)
    fs = MemoryFS(tmp_path, {"b.txt": ""}, max_name_len=10, max_file_chars=100, max_files=2)
    ok, long_name, full, over, third = run(fs, (
        "<|CREATE|>abcdef.txt<|END|><|CREATE|>abcdefg.txt<|END|><|WRITE|>b.txt|" + "x" * 99 + "<|END|>"
        "<|APPEND|>b.txt|y<|END|><|CREATE|>c.txt<|END|>"))
    assert ok.ok and not long_name.ok and "at most 10 chars" in long_name.text
    assert full.ok and fs.read("b.txt") == "x" * 99 + "\n" and not over.ok  # 100 characters with the newline
    assert third.text == ("[CREATE c.txt] error: file limit reached (2 files); use an existing file: abcdef.txt, "
                          "b.txt")


def test_loading_a_directory_takes_plain_files_only(tmp_path):
    """Existing files are read as text (bad UTF-8 replaced, not fatal); a link swapped in after the directory
    scan is not followed (_load opens with O_NOFOLLOW)."""
    (tmp_path / "outside.txt").write_text("SECRET\n")
    mem = tmp_path / "mem"
    mem.mkdir()
    (mem / "bytes.txt").write_bytes(b"ok \xff\xfe\n")
    fs = MemoryFS(mem)
    assert fs.read("bytes.txt") == "ok \ufffd\ufffd\n"
    (mem / "late.txt").symlink_to(tmp_path / "outside.txt")
    assert fs._load("late.txt") is None and fs._load("bytes.txt") == "ok \ufffd\ufffd\n"
    assert run(fs, "<|WRITE|>late.txt|x<|END|>")[0].text == "[WRITE late.txt] error: cannot write late.txt: it is a link"
    (mem / "dir.txt").mkdir()
    assert run(fs, "<|WRITE|>dir.txt|x<|END|>")[0].text == "[WRITE dir.txt] error: cannot write dir.txt: Is a directory"


def test_a_shorter_write_leaves_nothing_of_the_old_text_on_disk(tmp_path):
    fs = MemoryFS(tmp_path, {"plan.txt": "a long first plan\nwith two lines\n"})
    run(fs, "<|WRITE|>plan.txt|short<|END|>")
    assert (tmp_path / "plan.txt").read_text() == fs.read("plan.txt") == "short\n"
    run(fs, "<|CREATE|>empty.txt<|END|><|WRITE|>plan.txt|<|END|>")
    assert [(tmp_path / n).read_text() for n in ("empty.txt", "plan.txt")] == ["", ""] == [fs.read("empty.txt"), fs.read("plan.txt")]


# ----------------------------------------------------------------------------- sandbox

HOSTILE = ["../x", "../outside/secret.txt", "../../etc/passwd", "/etc/passwd", "/tmp/x", "a/b", "..\\x", "a\\b",
           "x\x00y", "\x00", "a" * 65, "a" * 100_000, ".hidden", ".", "..", "...", "a..b", "~/x", "$HOME", "C:\\x",
           "\\\\server\\share", "%2e%2e%2fx", "x;rm -rf", "a b.txt", "notes.txt\n../x", "*",
           "n\u043etes.txt",      # Cyrillic o
           "\u212a.txt",          # Kelvin sign (lower()s to k)
           "\uff4eotes.txt",      # fullwidth n
           "notes.txt\u200b",     # zero-width space
           "\u2025x", "\u2215etc\u2215passwd"]  # two-dot leader, division slash


@pytest.fixture
def jail(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("SECRET\n")
    fs = MemoryFS(tmp_path / "mem", {"notes.txt": "hello\n"})
    (fs.root / "a").mkdir()  # a folder inside: "a/b" could be written there, so only the name check can refuse it
    return fs, tmp_path, tree(tmp_path)


# ids free of backslashes, so that a test can be named on the command line (as mutmut does)
@pytest.mark.parametrize("name", HOSTILE, ids=lambda name: quote(name[:20], safe="/.~$*;"))
def test_hostile_names_never_leave_the_directory(jail, name):
    fs, root, before = jail
    for op in ("READ", "SEARCH", "TAIL", "COUNT", "APPEND", "WRITE", "CREATE", "UPSERT"):
        if name == "*" and op in ("SEARCH", "COUNT"):
            continue
        r = fs.execute(Op(op, [name, "k", "pwned"], ""), OPS)
        assert not r.ok and "SECRET" not in r.text and len(r.text) < 400
        assert "error: bad file name" in r.text, r.text  # refused by name, not by a write that happened to fail
    assert tree(root) == before and fs.names() == ["notes.txt"]


def test_hostile_ops_through_the_parser(jail):
    fs, root, before = jail
    results = run(fs, "<|WRITE|>../outside/secret.txt|pwned<|END|><|READ|>/etc/passwd<|END|>"
                      "<|APPEND|>..\\x|a<|END|><|CREATE|>a/b<|END|><|SEARCH|>../outside/secret.txt|SECRET<|END|>")
    assert not any(r.ok for r in results) and "root:" not in format_results(results)
    assert tree(root) == before


def test_planted_links_and_special_files_are_refused(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret.txt"
    secret.write_text("SECRET\n")
    mem = tmp_path / "mem"
    mem.mkdir()
    (mem / "early.txt").symlink_to(secret)                    # planted before the episode
    (mem / "dangling.txt").symlink_to(outside / "new.txt")
    os.link(secret, mem / "hard.txt")
    os.mkfifo(mem / "pipe.txt")
    (mem / "dir.txt").mkdir()
    fs = MemoryFS(mem, {"notes.txt": "x\n"})
    assert fs.names() == ["notes.txt"]                        # none of them was loaded
    (mem / "late.txt").symlink_to(secret)                     # planted during the episode
    (mem / "notes.txt").unlink()
    (mem / "notes.txt").symlink_to(secret)                    # a known file swapped for a link
    before = tree(tmp_path)
    for name in ("early.txt", "dangling.txt", "hard.txt", "pipe.txt", "dir.txt", "late.txt", "notes.txt"):
        for op in WRITE_OPS:
            r = fs.execute(Op(op, [name, "k", "pwned"], ""), OPS)
            assert not r.ok and not r.wrote
        for op in READ_OPS:
            assert "SECRET" not in fs.execute(Op(op, [name, "S"], ""), OPS).text
    assert tree(tmp_path) == before and secret.read_text() == "SECRET\n" and not (outside / "new.txt").exists()


def test_multi_megabyte_writes_are_refused(jail):
    fs, root, before = jail
    huge = "A" * 3_000_000
    results = run(fs, f"<|WRITE|>notes.txt|{huge}<|END|><|APPEND|>notes.txt|{huge}<|END|><|CREATE|>big.txt|{huge}<|END|>"
                      f"<|UPSERT|>notes.txt|k|{huge}<|END|>")
    assert not any(r.ok for r in results) and all("over the limit of 200000" in r.text for r in results)
    assert all(len(r.text) < 400 for r in results) and tree(root) == before


def test_bad_initial_files_raise(tmp_path):
    with pytest.raises(ValueError, match="bad file name"):
        MemoryFS(tmp_path, {"../x.txt": ""})
    with pytest.raises(ValueError, match="over the limit"):
        MemoryFS(tmp_path, {"a.txt": "x" * 101}, max_file_chars=100)
    assert not (tmp_path.parent / "x.txt").exists()


# ----------------------------------------------------------------------------- fuzzing

TOKENS = ["<|", "|>", "<", ">", "|", "}", "</", "END", "SEARCH", "ACTION", "WRITE", "UPSERT_MAP", "DONE", "FOO",
          "im_end", "notes.txt", "a", "\n", " ", "```", "ACTION:", "**", "é", "\x00", "\ud800"]


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=200), st.lists(st.sampled_from(TOKENS), max_size=40).map("".join)))
def test_parse_never_raises_and_raw_spans_are_in_order(text):
    pos = 0
    for op in parse_ops(text, ALIASES):
        assert op.name == op.name.upper() and all(isinstance(a, str) for a in op.args)
        at = text.find(op.raw, pos)
        assert op.raw and at >= 0
        pos = at + len(op.raw)


FUZZ_NAMES = ["a.txt", "b.txt", "c.txt", "d.txt", "*", "../a.txt", ""]
FUZZ_KEYS = ["k", "k:", "(1,2):", "health", "healthy"]
FUZZ_TEXT = st.text(alphabet=st.sampled_from(list("ab |\nkK:(),12") + ["\r", "é", "\x00", "\ud800"]), max_size=40)
FUZZ_OP = st.builds(lambda name, args: Op(name, args, ""), st.sampled_from(OPS + ("FOO",)),
                    st.lists(st.one_of(st.sampled_from(FUZZ_NAMES + FUZZ_KEYS), FUZZ_TEXT), max_size=4))


@settings(max_examples=120, deadline=None)
@given(st.lists(FUZZ_OP, max_size=25))
def test_random_op_sequences_keep_invariants(ops):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        caps = dict(max_files=3, max_file_chars=200, max_result_lines=4, max_result_chars=120)
        fs = MemoryFS(root / "mem", {"a.txt": "k: 1\n"}, **caps)
        replay = MemoryFS(root / "replay", {"a.txt": "k: 1\n"}, **caps)
        for op in ops:
            r = fs.execute(op, OPS)
            assert r.text.startswith("[") and r.text.count("\n") <= 4 and len(r.text) <= 120 + 400
            assert (r.matches is not None) == (r.ok and op.name in ("SEARCH", "COUNT"))
            assert not (r.wrote and not r.ok)
            if r.ok and op.name == "UPSERT":  # one line per key (as stored: lone surrogates read back as '?')
                key = op.args[1].encode("utf-8", "replace").decode()
                assert sum(has_key(line, key) for line in fs.read(op.args[0].strip()).split("\n")) == 1
            if r.wrote:
                replay.apply(op)
            assert len(fs.names()) <= 3 and all(len(fs.read(n)) <= 200 for n in fs.names())
        assert sorted(os.listdir(root / "mem")) == fs.names()
        assert {n: (root / "mem" / n).read_bytes().decode() for n in fs.names()} == fs.snapshot()
        assert MemoryFS(root / "mem", **caps).snapshot() == fs.snapshot() == replay.snapshot()


# -- grammar-constrained decoding ------------------------------------------------------------

def test_grammar_rules():
    log = grammar(LOG, ALIASES, ["a.txt", "dungeon_map.txt"])
    assert log.startswith('root ::= (op "\\n"){0,3} op ("\\n<|DONE|>")? | "<|DONE|>"\n')
    assert 'op-upsert-map ::= "<|UPSERT_MAP|>" word "|" text "<|END|>"' in log  # the alias's key field, then text
    assert 'file ::= "a.txt" | "dungeon_map.txt"' in log and "ACTION|>" not in log
    plan = grammar(PLAN, files=["a.txt"], actions=["Move West", 'say "hi"'])
    assert 'action ::= "Move West" | "say \\"hi\\""' in plan and "op-append" not in plan
    assert grammar(["ACTION"], actions=["Do"]).startswith('root ::= "<|ACTION|>" action "<|END|>"\n')
    with pytest.raises(ValueError, match="FLY"):
        grammar(["FLY"])


@pytest.mark.slow
@pytest.mark.parametrize("ops,actions", [(LOG, None), (PLAN, ["Move West", "Do", "Place Stone"])])
def test_grammar_replies_are_allowed_well_formed_ops(tmp_path, ops, actions):
    """What a real model writes under the grammar parses back, op for op, into allowed ops that run."""
    import llm
    model = llm.load("llamacpp", n_ctx=2048)
    files = {"notes.txt": "tree at (3,4)\n", "dungeon_map.txt": ""}
    gbnf = grammar(ops, ALIASES, files, actions)
    ask = [{"role": "system", "content": "Memory commands: <|READ|>file<|END|>, <|APPEND|>file|text<|END|>, "
                                         "<|ACTION|>name<|END|> and more."},
           {"role": "user", "content": "You see a tree to the west. Use your memory."}]
    for seed in range(4):
        fs = MemoryFS(tmp_path / str(seed), files)
        r = model.chat(ask, max_tokens=160, seed=seed, grammar=gbnf)
        found = parse_ops(r.text, ALIASES)
        complete = r.completion_tokens < 160  # a reply cut at max_tokens ends mid-op
        assert found and (not complete or "\n".join(op.raw for op in found) == r.text), r.text
        for op in found[:len(found) - (not complete)]:
            result = fs.execute(op, ops)
            assert result.ok or "already exists" in result.text, result.text
            assert op.name != "ACTION" or op.args[0] in actions
