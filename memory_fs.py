"""The memory directory of one episode, and the memory-op language of AutoMem.

An agent's memory is a flat directory of text files. The model edits it by writing ops in
its reply, in the same action space as game actions (the paper's syntax):

    <|READ|>notes.txt<|END|>               whole file
    <|SEARCH|>notes.txt|tree<|END|>        case-insensitive substring, the last 1000 matches; file *: all files
    <|TAIL|>notes.txt|20<|END|>            last n lines (default 10)
    <|COUNT|>notes.txt|zombie<|END|>       number of matching lines (no keyword: all lines)
    <|APPEND|>notes.txt|tree at (3,4)<|END|>
    <|WRITE|>plan.txt|1. get wood<|END|>   replace the whole file
    <|CREATE|>goals.txt<|END|>             new file (optional text after a |)
    <|UPSERT|>status.txt|health:|7/9<|END|>  replace the line keyed "health:", else add it
    <|ACTION|>move west<|END|>             <|DONE|>

Usage:

    from memory_fs import MemoryFS, parse_ops, format_results, READ_OPS
    aliases = {"UPSERT_MAP": {"op": "UPSERT", "file": "dungeon_map.txt", "key": "({0}):"}}
    fs = MemoryFS("runs/x/memory/ep0", {"notes.txt": "", "dungeon_map.txt": ""})
    ops = parse_ops(reply, aliases)               # in the order written; unknown <|FOO|> ops included
    results = fs.run(ops, READ_OPS + ("ACTION",))  # PLAN is read-only: writes are refused as text
    feedback = format_results(results)            # "[SEARCH notes.txt|tree] 2 matches:\n..."

The parser takes what models really write: <SEARCH> without pipes, <|END}, </END>, any case,
stray spaces, <ACTION>x</ACTION>, a bare "ACTION: x" line, code fences, several ops per reply,
an unterminated last op. A scaffold alias (data, as above) maps a new op name onto an op:
<|UPSERT_MAP|>3,4|floor<|END|> is UPSERT dungeon_map.txt key "(3,4):" line "(3,4): floor".
UPSERT keys match as whole words ("health" keys "health: 5", not "healthy") and leave one line
per key. Every problem (unknown or refused op, bad name, missing file, a cap) comes back as the
op's result text, never as an exception. MemoryFS.apply replays recorded writes (from a trace).

Files are written through to disk at once (O_NOFOLLOW, strict names, links refused) and kept
in memory as lines plus lowercased lines, so reads and searches never touch the disk.
"""
import bisect
import errno
import json
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from string import Formatter
from typing import Iterable

OPS = ("READ", "SEARCH", "TAIL", "COUNT", "APPEND", "WRITE", "CREATE", "UPSERT", "DONE", "ACTION")
READ_OPS = ("READ", "SEARCH", "TAIL", "COUNT")
WRITE_OPS = ("APPEND", "WRITE", "CREATE", "UPSERT")
TEXT_SPLIT = {"APPEND": 1, "WRITE": 1, "CREATE": 1, "UPSERT": 2}  # maxsplit: the last arg keeps its '|'
KEYWORD_OPS = ("SEARCH", "COUNT")  # file|keyword: the keyword keeps any further '|' (split at the first one only)
MULTILINE = ("APPEND", "WRITE", "CREATE")  # their text may span lines; other ops end with their line
TERMINATORS = ("END", "IM_END", "ENDOFTEXT", "EOT_ID")  # chat end tokens a model may emit close an op too
USAGE = {op: f"<|{op}|>{args}<|END|>" for op, args in (  # shown to the model with errors
    ("READ", "file"), ("SEARCH", "file|keyword"), ("TAIL", "file|n"), ("COUNT", "file|keyword"), ("APPEND", "file|text"),
    ("WRITE", "file|text"), ("CREATE", "file"), ("UPSERT", "file|key|text"), ("ACTION", "action"))}
TAIL_DEFAULT = 10

# A tag: <|NAME|>, <NAME>, </NAME>, <|NAME|}, <|NAME| ... Whitespace runs are bounded so that
# hostile text cannot make the regex backtrack for long.
_W = r"[ \t]{0,3}"
TAG = re.compile(rf"<{_W}(\|)?{_W}(/)?{_W}([A-Za-z][A-Za-z0-9_]{{0,39}}){_W}(?:(\|){_W}[>}}\]]?|[>}}\]])")
ACTION_LINE = re.compile(r"^[ \t>*#-]*action[ \t*]*:(.*)$", re.I | re.M)  # bare "ACTION: x", "**Action:** x"
FENCE_LINE = re.compile(r"^[ \t]*```", re.M)
FENCED = re.compile(r"^```[\w+-]*\n(.*?)\n?```$", re.S)
SPACE = re.compile(r"\s*")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # ASCII only: no separators, no confusables


@dataclass
class Op:
    name: str        # upper-case canonical name (an alias resolved to its op)
    args: list[str]  # split on '|'; the last arg of APPEND/WRITE/CREATE/UPSERT keeps further '|'
    raw: str         # the exact text span it was parsed from
    alias: str = ""  # the scaffold alias it was written as (an allowed set may name the alias)


@dataclass
class OpResult:
    op: Op
    text: str            # what the model is shown: "[OP args] message"
    ok: bool
    wrote: bool          # memory changed
    redundant: bool      # a write whose content already stood in the file
    matches: int | None  # SEARCH/COUNT: number of matching lines


# ----------------------------------------------------------------------------- parsing

def parse_ops(text: str, aliases: dict | None = None, custom: Iterable[str] = ()) -> list[Op]:
    """Ops in `text`, in the order written. Any text parses (bad alias data raises ValueError). `custom`: a
    scaffold's own op names, known like the built-in ones (an unknown name counts only written with pipes).

    An op ends at <|END|> (also <|END}, </END>, </NAME>, a chat end token) or where the next op
    begins; unterminated, READ/SEARCH/.../ACTION end with their line and APPEND/WRITE/CREATE
    at a code fence line, a bare ACTION line or the end of the text."""
    aliases = _check_aliases(aliases)
    known = set(OPS) | set(aliases) | {c.upper() for c in custom}
    tags = []  # (match, closing, NAME)
    for m in TAG.finditer(text):
        lead, slash, name, trail = m.groups()
        name = name.upper()
        if slash or name in TERMINATORS:
            tags.append((m, True, name))
        elif name in known or lead or trail:  # an unknown name counts only with pipes: <|FOO|>, not <b>
            tags.append((m, False, name))
    found, pos = [], 0  # (start, end, op)
    for i, (m, closing, name) in enumerate(tags):
        if closing or m.start() < pos:
            continue
        target = aliases.get(name, {}).get("op", name)
        end, body = _extent(text, tags, i, target)
        found.append((m.start(), end, _make_op(name, body, text[m.start():end], aliases)))
        pos = end
    starts = [s for s, _, _ in found]
    for a in ACTION_LINE.finditer(text):  # bare ACTION lines that are not inside an op
        j = bisect.bisect_right(starts, a.end() - 1) - 1
        value = _unquote(a.group(1))
        if value and (j < 0 or found[j][1] <= a.start()):
            found.append((a.start(), a.end(), Op("ACTION", [value], a.group(0))))
    return [op for _, _, op in sorted(found, key=lambda f: f[0])]


def _extent(text, tags, i, target):
    """(end of the op's raw span, its body) for the op opened by tags[i]."""
    m, name = tags[i][0], tags[i][2]
    if target == "DONE":
        return m.end(), ""
    nxt = None  # the first tag that ends the body: a terminator of this op or any opening tag
    for j in range(i + 1, len(tags)):
        t, closing, tname = tags[j]
        if not closing or tname in TERMINATORS or tname == name:
            nxt = (t, closing)
            break
    stop = nxt[0].start() if nxt else len(text)
    closed_end = nxt[0].end() if nxt and nxt[1] else None
    if target not in MULTILINE:
        line_end = text.find("\n", SPACE.match(text, m.end()).end())
        line_end = len(text) if line_end < 0 else line_end
        if stop <= line_end:
            return (closed_end or stop), text[m.end():stop]
        return line_end, text[m.end():line_end]
    if closed_end is None:  # unterminated: also stop at a code fence or a bare ACTION line
        cuts = (FENCE_LINE.search(text, m.end(), stop), ACTION_LINE.search(text, m.end(), stop))
        stop = min([stop] + [r.start() for r in cuts if r])
    return (closed_end or stop), text[m.end():stop]


def _make_op(name, body, raw, aliases):
    spec = aliases.get(name)
    target = spec["op"] if spec else name
    prefix = [spec["file"]] if spec and "file" in spec else []
    if not body.strip():
        return Op(target, prefix, raw, name if spec else "")
    if spec and "key" in spec:  # e.g. UPSERT_MAP 3,4|floor -> dungeon_map.txt, "(3,4):", "(3,4): floor"
        n = _key_fields(spec["key"])
        parts = [p.strip() for p in (body.split("|", n) + [""] * n)[:n + 1]]
        key = spec["key"].format(*parts[:n])
        return Op(target, prefix + [key, _keyed(key, parts[n]) if parts[n] else ""], raw, name)
    maxsplit = TEXT_SPLIT.get(target, 1 if target in KEYWORD_OPS else -1)
    if maxsplit > 0:
        maxsplit -= len(prefix)
    args = [p.strip() for p in body.split("|", maxsplit)]
    if target in MULTILINE and len(prefix) + len(args) == 2:
        fenced = FENCED.match(args[-1])  # text wrapped in a code fence
        args[-1] = fenced.group(1).strip() if fenced else args[-1]
    if target == "ACTION":
        args = [_unquote(a) for a in args]
    return Op(target, prefix + args, raw, name if spec else "")


def _check_aliases(aliases):
    out = {}
    for name, spec in (aliases or {}).items():
        up = name.upper()
        if up in OPS or not isinstance(spec, dict) or spec.get("op") not in OPS:
            raise ValueError(f"alias {name}: must be a new name mapping to one of {', '.join(OPS)}")
        if "key" in spec:
            try:
                spec["key"].format(*[""] * _key_fields(spec["key"]))
            except (ValueError, IndexError, KeyError):
                raise ValueError(f"alias {name}: key {spec['key']!r} may use only numbered fields like ({{0}}):") from None
        out[up] = spec
    return out


def _key_fields(template):
    nums = [int(f) for _, f, _, _ in Formatter().parse(template) if f is not None]
    return max(nums) + 1 if nums else 0


def _unquote(s):
    return s.strip().strip("*`'\"").strip()


# ----------------------------------------------------------------------------- lines and keys

def _utf8(s):
    """Text as it will read back from disk (lone surrogates become '?')."""
    return s.encode("utf-8", "replace").decode("utf-8")


def _lines(text):
    """File text -> lines; a final newline ends the last line rather than starting a new one."""
    text = _utf8(text)
    return [] if not text else text[:-1].split("\n") if text.endswith("\n") else text.split("\n")


def _has_key(line, key):
    """line starts with key as a whole word: key "health" matches "health: 5", not "healthy"."""
    n = len(key)
    return line.startswith(key) and (not key[-1].isalnum() or len(line) == n or not line[n].isalnum())


def _keyed(key, text):
    """The stored UPSERT line: `key text`, unless the text already starts with the key."""
    return text if _has_key(text, key) else f"{key} {text}"


def _arg(op, i):
    return op.args[i] if i < len(op.args) else ""


def _plural(n, word):
    return f"{n} {word}" if n == 1 else f"{n} {word}es" if word.endswith("h") else f"{n} {word}s"


def _clip(s, n=60):
    s = s.replace("\n", "\\n")
    return s if len(s) <= n else s[:n] + "…"


def valid_name(name: str, max_len: int = 64) -> bool:
    """A memory file name: ASCII letters, digits, . _ -; no leading dot, no '..', no folders."""
    return len(name) <= max_len and ".." not in name and NAME.fullmatch(name) is not None


# ----------------------------------------------------------------------------- the directory

class MemoryFS:
    """One episode's memory directory. Existing plain files in `root` are loaded, then `files`
    written over them. Names: ASCII letters, digits, . _ -; no leading dot, no '..'.
    Results as in the paper: READ and TAIL return whole files, SEARCH the last `max_result_lines` matches;
    `max_result_chars` (None: no cap) also cuts READ/TAIL/SEARCH results to that many characters.
    `search_all`: SEARCH/COUNT on file * look through every file (the authors' v0 has no such option)."""

    def __init__(self, root: str | Path, files: dict[str, str] | None = None, *, max_files=64,
                 max_file_chars=200_000, max_result_lines=1000, max_result_chars=None, max_name_len=64,
                 search_all=True):
        self.root = Path(root)
        self.max_files, self.max_file_chars = max_files, max_file_chars
        self.max_result_lines, self.max_result_chars = max_result_lines, max_result_chars
        self.search_all = search_all
        self.journal = None  # a list to record every successful write in ([op name, args], for replay), or None
        self.max_name_len = max_name_len
        self._files, self._low, self._chars = {}, {}, {}  # name -> lines, lowercased lines, size in chars
        self._handlers = {"READ": self._read, "SEARCH": self._search, "TAIL": self._tail, "COUNT": self._count,
                          "APPEND": self._append, "WRITE": self._write, "CREATE": self._create,
                          "UPSERT": self._upsert, "DONE": self._done, "ACTION": self._action}
        self.root.mkdir(parents=True, exist_ok=True)
        for entry in sorted(os.scandir(self.root), key=lambda e: e.name):
            if self._valid(entry.name) and entry.is_file(follow_symlinks=False):
                text = self._load(entry.name)
                if text is not None:
                    self._replace(entry.name, _lines(text), write=False)
        for name, text in (files or {}).items():
            self._check(name)
            self._replace(name, _lines(text))

    # -- public API
    def execute(self, op: Op, allowed: Iterable[str]) -> OpResult:
        """Run one op if `allowed` names it (or its alias); DONE/ACTION change nothing."""
        allowed = {a.upper() for a in allowed}
        listed = ", ".join([o for o in OPS if o in allowed] + sorted(allowed - set(OPS)))  # same text for any set order
        if op.name not in OPS:
            return self._result(op, f"error: unknown op {op.name}; allowed: {listed}", ok=False)
        if op.name not in allowed and op.alias not in allowed:
            return self._result(op, f"error: {op.alias or op.name} is not allowed here; allowed: {listed}", ok=False)
        try:
            result = self._handlers[op.name](op)
            if result.wrote and self.journal is not None:
                self.journal.append([op.name, op.args])
            return result
        except ValueError as e:
            return self._result(op, f"error: {e}", ok=False)
        except OSError as e:
            return self._result(op, f"error: cannot write: {e.strerror}", ok=False)

    def run(self, ops: Iterable[Op], allowed: Iterable[str]) -> list[OpResult]:
        """Execute ops in the order written."""
        allowed = tuple(allowed)
        return [self.execute(op, allowed) for op in ops]

    def read(self, name: str) -> str:
        if name not in self._files:
            raise FileNotFoundError(f"no memory file {name!r}; files: {', '.join(self.names())}")
        lines = self._files[name]
        return "\n".join(lines) + "\n" if lines else ""

    def names(self) -> list[str]:
        return sorted(self._files)

    def snapshot(self) -> dict[str, str]:
        return {name: self.read(name) for name in self.names()}

    def index(self) -> str:
        """One line per file, sorted by name: "  - notes.txt (12 lines)"."""
        return "\n".join(f"  - {name} ({_plural(len(self._files[name]), 'line')})" for name in self.names())

    def apply(self, op: Op) -> None:
        """Replay a recorded op (replay only ops whose result had wrote=True). Read-only ops do
        nothing; a write op that fails raises ValueError, so a replay cannot silently diverge."""
        if op.name in WRITE_OPS:
            result = self.execute(op, WRITE_OPS)
            if not result.ok:
                raise ValueError(f"cannot replay {op.name} {op.args[:1]}: {result.text}")

    # -- op handlers: each returns an OpResult or raises ValueError with the message for the model
    def _read(self, op):
        lines = self._files[self._existing(op)]
        if not lines:
            return self._result(op, "(empty file)")
        shown, more = self._fit(lines, newest=False, max_lines=None)
        note = f"; first {len(shown)} shown, {more} more not shown (use TAIL or SEARCH)" if more else ""
        return self._result(op, f"{_plural(len(lines), 'line')}{note}:\n" + "\n".join(shown))

    def _search(self, op):
        if not _arg(op, 1):
            raise ValueError(f"needs a file and a keyword: {USAGE['SEARCH']} (file * searches all files)")
        hits = self._grep(op)
        if not hits:
            return self._result(op, "0 matches", matches=0)
        shown, more = self._fit(hits, newest=True, max_lines=self.max_result_lines)
        note = f" ({more} more older matches not shown)" if more else ""
        return self._result(op, f"{_plural(len(hits), 'match')}{note}:\n" + "\n".join(shown), matches=len(hits))

    def _count(self, op):
        n = len(self._grep(op))
        return self._result(op, _plural(n, "matching line" if _arg(op, 1) else "line"), matches=n)

    def _tail(self, op):
        lines = self._files[self._existing(op)]
        n = _arg(op, 1) or str(TAIL_DEFAULT)
        if not re.fullmatch(r"[0-9]{1,9}", n) or int(n) < 1:
            raise ValueError(f"needs a line count >= 1, got {_clip(n, 20)!r}: {USAGE['TAIL']}")
        if not lines:
            return self._result(op, "(empty file)")
        shown, more = self._fit(lines[-int(n):], newest=True, max_lines=None)
        note = f" ({more} more not shown)" if more else ""
        return self._result(op, f"last {len(shown)} of {_plural(len(lines), 'line')}{note}:\n" + "\n".join(shown))

    def _append(self, op):
        name, text = self._name(op), _arg(op, 1)
        if not text:
            raise ValueError(f"needs text: {USAGE['APPEND']}")
        new, old = _lines(text), self._files.get(name)
        redundant = old is not None and all(line in old for line in new)
        if old is None:
            self._replace(name, new)
        else:  # write only the new lines: O(appended), not O(file)
            data = "\n".join(new) + "\n"
            self._room(name, self._chars[name] + len(data))
            self._put(name, data, append=True)
            old.extend(new)
            self._low[name].extend(line.lower() for line in new)
            self._chars[name] += len(data)
        note = " (already in the file)" if redundant else ""
        return self._result(op, f"appended {_plural(len(new), 'line')}, now {len(self._files[name])}{note}",
                            wrote=True, redundant=redundant)

    def _write(self, op):
        name, new = self._name(op), _lines(_arg(op, 1))
        if self._files.get(name) == new:
            return self._result(op, "unchanged: the file already holds exactly this", redundant=True)
        self._replace(name, new)
        return self._result(op, f"wrote {_plural(len(new), 'line')}", wrote=True)

    def _create(self, op):
        name, new = self._name(op), _lines(_arg(op, 1))
        if name in self._files:
            same = not new or self._files[name] == new
            return self._result(op, f"error: {name} already exists; WRITE replaces it, APPEND adds to it",
                                ok=False, redundant=same)
        self._replace(name, new)
        return self._result(op, f"created with {_plural(len(new), 'line')}", wrote=True)

    def _upsert(self, op):
        name, key, text = self._name(op), _utf8(_arg(op, 1)), _utf8(_arg(op, 2))
        if not key or not text:
            raise ValueError(f"needs a key and text: {USAGE['UPSERT']}")
        if "\n" in key:
            raise ValueError("the key must be one line")
        line = _keyed(key, text.replace("\n", " "))
        lines, low = self._files.get(name, []), self._low.get(name, [])
        hits = [i for i, old in enumerate(lines) if old.startswith(key) and _has_key(old, key)]
        if len(hits) == 1 and lines[hits[0]] == line:
            return self._result(op, "unchanged: the same line is already there", redundant=True)
        lines, low = lines[:], low[:]
        if hits:  # replace the first keyed line and drop any others: one line per key remains
            lines[hits[0]], low[hits[0]] = line, line.lower()
            for i in reversed(hits[1:]):
                del lines[i], low[i]
        else:
            lines.append(line)
            low.append(line.lower())
        self._replace(name, lines, low)
        dropped = f", dropped {_plural(len(hits) - 1, 'duplicate line')}" if len(hits) > 1 else ""
        return self._result(op, ("replaced the line" if hits else "added the line") + dropped, wrote=True)

    def _done(self, op):
        return self._result(op, "")

    def _action(self, op):
        if not _arg(op, 0):
            raise ValueError(f"needs an action: {USAGE['ACTION']}")
        return self._result(op, "")

    # -- helpers
    def _result(self, op, message, ok=True, wrote=False, redundant=False, matches=None):
        shown = op.args[:TEXT_SPLIT[op.name]] if op.name in TEXT_SPLIT else op.args  # never echo written text
        head = " ".join([op.alias or op.name] + ["|".join(_clip(a) for a in shown)] * bool(shown))
        return OpResult(op, f"[{head}] {message}".rstrip(), ok, wrote, redundant, matches)

    def _fit(self, lines, newest, max_lines):
        """The lines to show within max_lines and max_result_chars (None: no cap): the first or the newest
        (last) ones; returns (shown, number not shown)."""
        max_chars = self.max_result_chars
        if max_chars is None:
            shown = lines[-max_lines:] if newest and max_lines else lines[:max_lines] if max_lines else lines
            return list(shown), len(lines) - len(shown)
        shown, chars = [], 0
        for line in (reversed(lines) if newest else lines):
            if len(shown) == max_lines or chars + len(line) + 1 > max_chars:
                break
            shown.append(line)
            chars += len(line) + 1
        if not shown and lines:  # a single line longer than the whole budget: show its start
            shown = [lines[-1 if newest else 0][:max(max_chars - 2, 0)] + " …"]
        return (shown[::-1] if newest else shown), len(lines) - len(shown)

    def _grep(self, op):
        """Lines matching op.args[1] (case-insensitive substring; none given: all lines) in op.args[0]
        or, for *, in every file (each line prefixed "file: ")."""
        keyword = _arg(op, 1).lower()
        if op.args[:1] == ["*"] and self.search_all:
            return [f"{name}: {line}" for name in self.names()
                    for line, low in zip(self._files[name], self._low[name]) if keyword in low]
        name = self._existing(op)
        return [line for line, low in zip(self._files[name], self._low[name]) if keyword in low]

    def _existing(self, op):
        """The name of an existing file, op.args[0]."""
        name = self._name(op)
        if name not in self._files:
            raise ValueError(f"no file {name}; files: {', '.join(self.names()) or 'none'}")
        return name

    def _name(self, op):
        """The file name op.args[0], checked (the file may not exist yet)."""
        if not _arg(op, 0):
            raise ValueError(f"needs a file name: {USAGE[op.name]}")
        return self._check(_unquote(op.args[0]))

    def _valid(self, name):
        return valid_name(name, self.max_name_len)

    def _check(self, name):
        if not self._valid(name):
            raise ValueError(f"bad file name {_clip(name, 40)!r}: use letters, digits and . _ - "
                             f"(at most {self.max_name_len} chars, no leading dot, no '..', no folders)")
        return name

    def _room(self, name, chars):
        if name not in self._files and len(self._files) >= self.max_files:
            raise ValueError(f"file limit reached ({self.max_files} files); use an existing file: "
                             + ", ".join(self.names()))
        if chars > self.max_file_chars:
            raise ValueError(f"{name} would hold {chars} chars, over the limit of {self.max_file_chars}; "
                             "shorten it with WRITE or UPSERT")

    def _replace(self, name, lines, low=None, write=True):
        """Make `lines` the content of `name`: checks, then disk, then the in-memory copy."""
        data = "\n".join(lines) + "\n" if lines else ""
        self._room(name, len(data))
        if write:
            self._put(name, data, append=False)
        self._files[name], self._chars[name] = lines, len(data)
        self._low[name] = low if low is not None else [line.lower() for line in lines]

    def _put(self, name, data, append):
        """Write to the plain file root/name; a link (O_NOFOLLOW), hard link, FIFO or folder is refused
        before anything is truncated or written."""
        flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            fd = os.open(self.root / name, flags, 0o644)
        except OSError as e:
            why = "it is a link" if e.errno == errno.ELOOP else e.strerror
            raise ValueError(f"cannot write {name}: {why}") from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            os.close(fd)
            raise ValueError(f"cannot write {name}: not a plain file of the memory directory")
        with open(fd, "wb") as f:
            f.seek(0, os.SEEK_END if append else os.SEEK_SET)
            f.write(data.encode("utf-8"))
            if not append:  # overwrite, then cut what is left: far cheaper than truncating to 0 first
                f.truncate()

    def _load(self, name):
        """Text of a plain file in root, or None for anything else (a link, hard link, FIFO)."""
        try:
            fd = os.open(self.root / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return None
        with open(fd, "rb") as f:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
                return None
            return f.read().decode("utf-8", "replace")


def format_results(results: list[OpResult]) -> str:
    """The text the model sees after its ops, one entry per op in order; accepted DONE/ACTION say nothing."""
    return "\n".join(r.text for r in results if not (r.ok and r.op.name in ("DONE", "ACTION")))


# ----------------------------------------------------------------------------- constrained decoding

GRAMMAR_OPS = 4      # ops in one constrained reply
GRAMMAR_TEXT = 200   # characters of written text per op
OP_ARGS = {  # GBNF for each op's arguments (rules defined in grammar())
    "READ": "file", "SEARCH": 'any-file "|" word', "TAIL": 'file "|" [1-9] [0-9]?', "COUNT": 'file "|" word',
    "APPEND": 'file "|" text', "WRITE": 'file "|" text', "CREATE": "new-file", "UPSERT": 'file "|" word "|" text',
    "ACTION": "action"}


def grammar(ops: Iterable[str], aliases: dict | None = None, files: Iterable[str] = (),
            actions: Iterable[str] | None = None, search_all: bool = True, custom: Iterable[str] = ()) -> str:
    """A GBNF grammar (llama.cpp; vLLM's xgrammar) whose replies are only `ops`, written canonically,
    one per line: 1 to GRAMMAR_OPS ops (with DONE allowed: optionally ending with <|DONE|>, or
    <|DONE|> alone), or, with ACTION allowed, <|ACTION|>name<|END|> alone, so read results come
    back before the action is chosen. File arguments are the names in `files` (CREATE takes a new
    name.txt); with `actions`, ACTION takes exactly one of them. Texts are one line, at most
    GRAMMAR_TEXT characters, without '<' (so no text can open a tag). A `custom` op (a scaffold's own, run by
    its hooks) takes a word, then optionally "|" and a text: <|UPSERT_MAP|>3,4|door<|END|>."""
    aliases = _check_aliases(aliases)
    custom = {c.upper() for c in custom}
    ops = [o.upper() for o in ops]
    rules, bodies = {}, []
    for name in ops:
        if name in ("DONE", "ACTION"):
            continue
        spec = aliases.get(name)
        target = spec["op"] if spec else name
        args = 'word ("|" text)?' if name in custom else OP_ARGS.get(target)
        if args is None:
            raise ValueError(f"op {name}: not one of {', '.join(OPS)} or an alias of one")
        if spec and "key" in spec:  # the key's fields, then the text: <|UPSERT_MAP|>3,4|door<|END|>
            args = " \"|\" ".join(["word"] * _key_fields(spec["key"]) + ["text"])
        elif spec and "file" in spec:
            args = args.split('"|"', 1)[1].strip() if '"|"' in args else ""
        rule = "op-" + name.lower().replace("_", "-")
        rules[rule] = f'"<|{name}|>" {args} "<|END|>"' if args else f'"<|{name}|><|END|>"'
        bodies.append(rule)
    alternatives = []
    if bodies:
        rules["op"] = " | ".join(bodies)
        alternatives.append(f'(op "\\n"){{0,{GRAMMAR_OPS - 1}}} op')
        if "DONE" in ops:
            alternatives[-1] += ' ("\\n<|DONE|>")?'
    if "DONE" in ops:
        alternatives.append('"<|DONE|>"')
    if "ACTION" in ops:
        alternatives.append('"<|ACTION|>" action "<|END|>"')
    if not alternatives:
        raise ValueError("grammar needs at least one op")
    names = [n for n in files if NAME.fullmatch(n)]
    rules.update({
        "file": choice(names) or "new-file",
        "any-file": 'file | "*"' if search_all else "file",
        "new-file": '[A-Za-z0-9] [A-Za-z0-9_-]{0,39} ".txt"',
        "word": "[^|<\\n ] [^|<\\n]{0,39}",  # a word or phrase, starting with a non-space
        "text": f"[^<\\n ] [^<\\n]{{0,{GRAMMAR_TEXT - 1}}}",
        "action": choice(actions) if actions else "[^<\\n]{1,60}"})  # no list: any one-line name
    return "\n".join([f"root ::= {' | '.join(alternatives)}"] + [f"{k} ::= {v}" for k, v in rules.items()]) + "\n"


def choice(strings: Iterable[str]) -> str:
    """A GBNF alternative of literal strings (GBNF string escapes are JSON's)."""
    return " | ".join(map(json.dumps, strings))
