"""
jail.py: untrusted Python (a meta-LLM's hooks.py in loop 1, select.py in loop 2's engine) runs here,
in a separate long-lived worker process under an OS-level jail, called over a pipe one JSON line
at a time. Python cannot sandbox Python; the kernel can.

    hooks = jail.JailedHooks("runs/x/candidates/iter3/scaffold/hooks.py", names=scaffold_spec.HOOKS)
    text = hooks["observe"](ctx)   # a {name: function} mapping: same arguments, same result as in-process
    hooks.close()                  # (or `with jail.JailedHooks(...) as hooks:`; garbage collection also ends it)
    ok, why = jail.available()     # whether the jail works on this machine, and why not
    jail.check_source(text)        # the static hook policy: a first filter, ValueError naming the line

    python jail.py --check         # prints whether the jail works here and what it enforces

The jail (bubblewrap, apt-get install bubblewrap): new PID, network, IPC, UTS and cgroup namespaces (no
network at all); a file system of read-only binds (/usr, the Python installation, the kit's top-level
modules and the hooks file's text: nothing else of the repository, no runs, no home) and one writable
folder, /jail/scratch, a tmpfs of LIMITS["scratch_bytes"]; an empty environment; no open file but the
pipes. The worker sets hard limits (address space, CPU seconds, file size, processes, open files),
drops to uid 65534 when started as root, installs a seccomp filter (x86-64: no fork or exec, no
sockets, no namespaces, mounts, ptrace, kernel keys, bpf, io_uring), and only then imports the
untrusted file. A call gets LIMITS["call_seconds"]; past that the worker and everything it started
are killed, the call raises HookError, and the next call starts a fresh worker.

What travels over the pipe (values, the hook Context field by field, memory copies, and the writes and
changed fields that come back) is jail_wire.py's. A hook raising, returning what cannot travel, timing
out or killing its worker raises HookError (a ValueError) naming the hook and its line; JailError
means the jail itself cannot run on this machine (not the hook's fault).
"""
import argparse
import ast
import dataclasses
import functools
import json
import os
import platform
import resource
import selectors
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import weakref
from collections.abc import Mapping
from pathlib import Path

import jail_wire
import memory_fs

ROOT = Path(__file__).resolve().parent
LIMITS = {
    "call_seconds": 5.0,        # one call, wall clock (the worker is killed past it)
    "start_seconds": 60.0,      # starting the worker and importing the file (a loaded 2-core machine is slow)
    "memory_bytes": 1 << 30,    # address space (RLIMIT_AS)
    "cpu_seconds": 600,         # CPU time over the worker's whole life (RLIMIT_CPU)
    "file_bytes": 16 << 20,     # largest file it may write (RLIMIT_FSIZE)
    "scratch_bytes": 64 << 20,  # its writable tmpfs, all files together
    "processes": 64,            # RLIMIT_NPROC of the jail's uid (a second layer under the seccomp filter)
    "open_files": 64,           # RLIMIT_NOFILE
    "reply_bytes": 64 << 20,    # longest reply line the parent reads
}
JAIL_UID = 65534  # nobody: what a worker started as root runs as

# ----------------------------------------------------------------------------- the static policy (first filter)

ALLOWED_IMPORTS = ("re", "math", "collections", "itertools", "functools", "heapq", "json", "random", "string",
                   "statistics", "dataclasses", "typing", "hook_helpers", "automem", "memory_fs")
BANNED_NAMES = {"open", "exec", "eval", "compile", "__import__", "getattr", "setattr", "delattr", "globals",
                "locals", "vars", "breakpoint", "input", "exit", "quit", "help", "memoryview"}
BANNED_ATTRS = {"os", "sys", "subprocess", "shutil", "socket", "importlib", "builtins", "pathlib", "Path", "io",
                "ctypes", "signal", "threading", "multiprocessing", "tempfile", "time", "yaml", "hashlib",
                "root", "memory_dir", "write_text", "write_bytes", "read_text", "read_bytes", "open", "unlink",
                "rmdir", "mkdir", "touch", "symlink_to", "hardlink_to", "rename", "chmod", "iterdir", "glob",
                "rglob", "system", "popen", "spawn", "fork", "kill"}
GAME_CALLS = {"step", "reset", "close"}


def parse(text, name):
    """The syntax tree of Python source, or ValueError naming the line of its syntax error."""
    try:
        return ast.parse(text)
    except SyntaxError as e:
        raise ValueError(f"{name} line {e.lineno}: syntax error: {e.msg}") from None


def check_source(text, name="hooks.py"):
    """The static hook policy: ValueError with the line of the first breach. A filter that gives a clear
    reason early, not a guard: whatever passes it still runs only in the jail."""
    tree = parse(text, name)
    modules = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                top, level = (node.module or "", node.level) if isinstance(node, ast.ImportFrom) else (alias.name, 0)
                if level or top.split(".")[0] not in ALLOWED_IMPORTS:
                    bad = f"import of {'.' * level}{top} (allowed: {', '.join(ALLOWED_IMPORTS)})"
                elif isinstance(node, ast.ImportFrom) and (alias.name in BANNED_ATTRS or alias.name.startswith("_")):
                    bad = f"import of {top}.{alias.name}"
                else:
                    modules.add((alias.asname or alias.name).split(".")[0])
                    continue
                raise ValueError(f"{name} line {node.lineno}: {bad}")
    for node in ast.walk(tree):
        bad = None
        if isinstance(node, ast.Name) and (node.id in BANNED_NAMES or node.id.startswith("_")):
            bad = f"name {node.id}"
        elif isinstance(node, ast.Attribute) and (node.attr in BANNED_ATTRS or node.attr.startswith("_")):
            bad = f"attribute .{node.attr}"
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in GAME_CALLS:
            bad = f"call of .{node.func.attr}() (the game is stepped by the agent only)"
        elif isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Delete)):
            for target in getattr(node, "targets", None) or [node.target]:
                root = target
                while isinstance(root, (ast.Attribute, ast.Subscript)):
                    root = root.value
                if root is not target and isinstance(root, ast.Name) and root.id in modules:
                    bad = f"assignment into module {root.id}"
        if bad:
            raise ValueError(f"{name} line {node.lineno}: {bad} is not allowed in hooks")


# ----------------------------------------------------------------------------- errors

class JailError(RuntimeError):
    """The jail cannot run on this machine (bubblewrap missing or refused): not the hook's fault."""


class HookError(ValueError):
    """The jailed code failed: raised, timed out, died, or returned what cannot travel."""


# ----------------------------------------------------------------------------- the parent's side

def defined_names(text, path):
    """Top-level names Python source defines (functions, assignments, imports), read without running it."""
    names = set()
    for node in parse(text, path).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for target in getattr(node, "targets", None) or [node.target]:
                names |= {n.id for n in ast.walk(target) if isinstance(n, ast.Name)}
    return {n for n in names if not n.startswith("_")}


def bwrap_command(name, source_fd, limits, info_fd):
    """bubblewrap's arguments for a worker that imports the source read from source_fd as /jail/<name>;
    bwrap writes the host PID of the jail's init to info_fd."""
    python_dirs = {Path(sys.base_prefix), Path(sys.prefix), Path(sys.executable).resolve().parent}
    python_dirs |= {Path(p) for p in sys.path if p and Path(p).is_dir() and not Path(p).resolve().is_relative_to(ROOT)}
    python_dirs = sorted(p.resolve() for p in python_dirs if not p.resolve().is_relative_to("/usr"))
    python_dirs = [p for p in python_dirs if not any(p != q and p.is_relative_to(q) for q in python_dirs)]
    binds = [(Path("/usr"), Path("/usr"))] + [(p, p) for p in python_dirs]
    binds += [(p, Path("/jail/code") / p.name) for p in sorted(ROOT.glob("*.py"))]  # the kit's modules, not its data
    if Path("/etc/ld.so.cache").is_file():
        binds.append((Path("/etc/ld.so.cache"), Path("/etc/ld.so.cache")))
    cmd, made = [], {Path("/")}
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):  # merged /usr: links; else binds
        if os.path.islink(top):
            cmd += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            binds.append((Path(top), Path(top)))
    for _, dest in binds:  # bwrap makes missing parents 0700; the worker (uid 65534) must pass them
        for parent in reversed(dest.parents):
            if parent not in made and not any(parent.is_relative_to(d) for _, d in binds):
                cmd += ["--perms", "0755", "--dir", str(parent)]
                made.add(parent)
    for src, dest in binds:
        cmd += ["--ro-bind", str(src), str(dest)]
    cmd += ["--perms", "0444", "--ro-bind-data", str(source_fd), f"/jail/{name}"]  # the text the caller read, once
    cmd += ["--dev", "/dev", "--proc", "/proc", "--size", str(limits["scratch_bytes"]), "--perms", "1777",
            "--tmpfs", "/jail/scratch", "--chdir", "/jail/scratch", "--clearenv", "--setenv", "HOME", "/jail/scratch",
            "--setenv", "TMPDIR", "/jail/scratch", "--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts",
            "--unshare-cgroup-try", "--new-session", "--die-with-parent", "--info-fd", str(info_fd)]
    if os.geteuid() == 0:  # to drop to JAIL_UID itself; without root, bwrap makes a user namespace
        cmd += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    else:
        cmd += ["--unshare-user"]
    extra = [str(p) for p in python_dirs]
    worker = "import sys; sys.path.insert(0, '/jail/code'); import jail; jail.main()"
    return cmd + ["--", sys.executable, "-I", "-B", "-c", worker, "--serve", f"/jail/{name}",
                  json.dumps(limits), json.dumps(extra)]


def kill_worker(state):
    """Kill a worker and everything in its PID namespace; gone (reaped) when this returns."""
    proc = state.get("proc")
    if proc is None:
        return
    try:  # the namespace's init: the kernel kills the rest before it exits, then bwrap reaps it and exits
        os.kill(state["init_pid"], signal.SIGKILL)
    except (KeyError, ProcessLookupError):
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    for f in (proc.stdin, proc.stdout, state.get("stderr")):
        if f:
            f.close()
    state.clear()


class JailedHooks(Mapping):
    """{name: function} for the functions a file defines (those in `names`, if given), each running in
    the jailed worker. The file is read once, here: the worker imports that text. The worker starts on
    the first call (or .start()) and lives until .close(); use it from the thread that started it."""

    def __init__(self, path, names=None, limits=None):
        self.path = Path(path).resolve()
        unknown = set(limits or {}) - set(LIMITS)
        if unknown:
            raise ValueError(f"unknown jail limits {sorted(unknown)}; known: {', '.join(LIMITS)}")
        self.limits = {**LIMITS, **(limits or {})}
        self.source = self.path.read_bytes()  # what runs: this text, whatever happens to the file later
        defined = defined_names(self.source, self.path)
        self.names = sorted(defined & set(names) if names is not None else defined)
        self.calls = 0
        self._state = {}  # proc, stderr, buffer, owner thread, memories last sent: all the finalizer needs
        self._lock = threading.Lock()
        self._finalizer = weakref.finalize(self, kill_worker, self._state)

    # -- the mapping
    def __getitem__(self, name):
        if name not in self.names:
            raise KeyError(name)
        return functools.partial(self.call, name)

    def __iter__(self):
        return iter(self.names)

    def __len__(self):
        return len(self.names)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        with self._lock:
            kill_worker(self._state)

    def start(self):
        """Start the worker now (it imports the file): HookError if the import fails, JailError if no jail."""
        with self._lock:
            self._ensure_worker()

    # -- one call
    def call(self, name, *args):
        """What `name(*args)` returns in the worker; the memory writes it made are applied to the MemoryFS
        among the arguments, plain fields it changed on object arguments are set on them."""
        memories = []
        with self._lock:
            self._ensure_worker()
            state = self._state
            try:
                encoded = [jail_wire.encode_fields(a, i, memories, state["held"]) if dataclasses.is_dataclass(a) and
                           not isinstance(a, type) else jail_wire.encode(a, memories) for i, a in enumerate(args)]
            except TypeError as e:
                state["held"].clear()
                raise ValueError(f"{name}: {e}") from None
            copies = [{"files": m.snapshot(), "options": jail_wire.memory_options(m)} for m in memories]
            # a memory travels only when it differs from the worker's copy
            files = [None if copy in state["sent"][i:i + 1] else copy for i, copy in enumerate(copies)]
            state["sent"] = copies
            request = json.dumps({"call": name, "args": encoded, "memories": files}, ensure_ascii=False)
            try:
                reply = self._exchange(request.encode() + b"\n", self.limits["call_seconds"], name)
            except BaseException:  # e.g. Ctrl-C mid-call: a late reply must never answer the next request
                kill_worker(state)
                raise
            self.calls += 1
            if "error" in reply:
                state["held"].clear()  # so does the worker: the next call sends every field
                raise HookError(reply["error"])
            try:
                for i, op_name, op_args, raw, alias in reply["ops"]:
                    if op_name not in memory_fs.WRITE_OPS or not all(isinstance(a, str) for a in op_args):
                        raise ValueError(f"not a write op: {op_name}")
                    memories[i].apply(memory_fs.Op(op_name, list(op_args), str(raw), str(alias)))
                if reply["ops"]:
                    state["sent"] = [{"files": m.snapshot(), "options": jail_wire.memory_options(m)} for m in memories]
                for i, changed in reply["changed"].items():
                    target = args[int(i)]
                    for attr, new in changed.items():
                        jail_wire.set_field(target, attr, jail_wire.decode(new))
                        state["held"][(int(i), attr)] = jail_wire.fingerprint(getattr(target, attr))
                return jail_wire.decode(reply["value"])
            except (ValueError, TypeError, KeyError, IndexError, AttributeError) as e:
                kill_worker(state)  # the worker no longer holds what the parent has: start afresh
                raise HookError(f"{name}: the jail's reply could not be applied: {type(e).__name__}: {e}") from None

    # -- the worker process
    def _ensure_worker(self):
        state = self._state
        if state and (state["proc"].poll() is not None or not state["owner"].is_alive()):
            kill_worker(state)  # dead, or tied (--die-with-parent) to a thread that has ended
        if state:
            return
        bwrap = shutil.which("bwrap")
        if bwrap is None:
            raise JailError("bubblewrap is not installed: apt-get install bubblewrap (untrusted hooks run in its jail)")
        stderr = tempfile.TemporaryFile()
        info_read, info_write = os.pipe()  # bwrap writes {"child-pid": ...} there, then closes it
        source = os.memfd_create("hooks")
        os.write(source, self.source)
        os.lseek(source, 0, os.SEEK_SET)
        try:
            proc = subprocess.Popen([bwrap] + bwrap_command(self.path.name, source, self.limits, info_write),
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, env={},
                                    close_fds=True, pass_fds=(info_write, source), start_new_session=True)
        finally:
            os.close(info_write)
            os.close(source)
        with os.fdopen(info_read, "rb") as f:
            info = f.read()  # ends when bwrap has written it, or has failed
        os.set_blocking(proc.stdin.fileno(), False)
        state.update(proc=proc, stderr=stderr, buffer=bytearray(), owner=threading.current_thread(), sent=[], held={})
        if info:
            state["init_pid"] = json.loads(info)["child-pid"]
        try:
            try:
                self._exchange(b"", self.limits["start_seconds"], "the jail")  # {"jailed": ...}: the jail is up
            except HookError as e:
                raise JailError(f"{e}; python jail.py --check tells why") from None
            reply = self._exchange(b"", self.limits["start_seconds"], f"import of {self.path.name}")
            if "error" in reply:
                raise HookError(reply["error"])
        except BaseException:  # a worker half started is no worker
            kill_worker(state)
            raise

    def _exchange(self, data, seconds, what):
        """Write data to the worker and read its next line (a dict) within `seconds`; on a timeout, an
        end of output or a reply too long, kill the worker and raise HookError saying so."""
        state = self._state
        proc, buffer = state["proc"], state["buffer"]
        deadline = time.monotonic() + seconds
        pending = memoryview(data)
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            if pending:
                sel.register(proc.stdin, selectors.EVENT_WRITE)
            while b"\n" not in buffer:
                left = deadline - time.monotonic()
                events = sel.select(left) if left > 0 else []
                if not events:
                    kill_worker(state)
                    raise HookError(f"{what}: no reply within {seconds:g} s (a loop or a block); its worker was killed")
                for key, _ in events:
                    if key.fileobj is proc.stdin:
                        try:
                            pending = pending[os.write(proc.stdin.fileno(), pending[:1 << 16]):]
                        except BrokenPipeError:
                            pending = memoryview(b"")
                        if not pending:
                            sel.unregister(proc.stdin)
                        continue
                    chunk = os.read(proc.stdout.fileno(), 1 << 20)
                    if not chunk:
                        raise HookError(f"{what}: {self._death()}")
                    buffer += chunk
                    if len(buffer) > self.limits["reply_bytes"]:
                        kill_worker(state)
                        raise HookError(f"{what}: a reply longer than {self.limits['reply_bytes']} bytes")
        line, _, rest = bytes(buffer).partition(b"\n")
        buffer[:] = rest
        try:
            reply = json.loads(line)
            if not isinstance(reply, dict):
                raise ValueError("not an object")
        except (ValueError, RecursionError) as e:
            kill_worker(state)
            raise HookError(f"{what}: the jail's reply is not a JSON object ({e})") from None
        return reply

    def _death(self):
        """Why the worker ended (its exit status and last stderr line); it is cleaned up."""
        state = self._state
        proc, stderr = state["proc"], state["stderr"]
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        stderr.seek(0, os.SEEK_END)
        stderr.seek(max(0, stderr.tell() - 600))
        tail = [ln for ln in stderr.read().decode(errors="replace").splitlines() if ln.strip()]
        code = proc.returncode
        kill_worker(state)
        return f"the jailed worker ended (exit status {code})" + (f": {tail[-1][:300]}" if tail else "")


@functools.cache
def available():
    """(True, "") when the jail works on this machine, else (False, the reason and the fix)."""
    with tempfile.TemporaryDirectory() as d:
        probe = Path(d, "probe.py")
        probe.write_text("import os\n\ndef probe():\n    return [os.getuid(), os.getcwd()]\n")
        try:
            with JailedHooks(probe) as hooks:
                hooks["probe"]()
        except (JailError, HookError) as e:
            return False, str(e)
    return True, ""


# ----------------------------------------------------------------------------- the worker's side (in the jail)

# x86-64 system calls the seccomp filter refuses with EPERM (clone only without CLONE_THREAD, i.e. a fork;
# clone3 gets ENOSYS, so threads fall back to clone). Numbers from <asm/unistd_64.h>.
DENIED_SYSCALLS = {
    "fork": 57, "vfork": 58, "execve": 59, "execveat": 322, "ptrace": 101, "process_vm_readv": 310,
    "process_vm_writev": 311, "mount": 165, "umount2": 166, "pivot_root": 155, "chroot": 161, "unshare": 272,
    "setns": 308, "keyctl": 250, "add_key": 248, "request_key": 249, "bpf": 321, "perf_event_open": 298,
    "userfaultfd": 323, "init_module": 175, "finit_module": 313, "delete_module": 176, "kexec_load": 246,
    "kexec_file_load": 320, "reboot": 169, "swapon": 167, "swapoff": 168, "acct": 163, "open_by_handle_at": 304,
    "name_to_handle_at": 303, "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
    "socket": 41, "socketpair": 53, "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431,
    "fsmount": 432, "fspick": 433, "mount_setattr": 442,
}
SYS_CLONE, SYS_CLONE3 = 56, 435
CLONE_THREAD, CLONE_NAMESPACES = 0x10000, 0x7E020000  # NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET


def seccomp_program():
    """The classic-BPF seccomp filter (struct sock_filter[]), as bytes; x86-64 only."""
    ld, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06  # BPF_LD|W|ABS, BPF_JMP|JEQ/JGE/JSET|K, BPF_RET|K
    allow, kill = 0x7FFF0000, 0x80000000
    eperm, enosys = 0x00050000 | 1, 0x00050000 | 38

    def op(code, k, jt=0, jf=0):
        return struct.pack("HBBI", code, jt, jf, k)
    prog = [op(ld, 4), op(jeq, 0xC000003E, 1, 0), op(ret, kill),  # AUDIT_ARCH_X86_64, else kill
            op(ld, 0), op(jge, 0x40000000, 0, 1), op(ret, eperm)]   # the x32 ABI: refused
    for nr in sorted(DENIED_SYSCALLS.values()):
        prog += [op(jeq, nr, 0, 1), op(ret, eperm)]
    prog += [op(jeq, SYS_CLONE3, 0, 1), op(ret, enosys),
             op(jeq, SYS_CLONE, 0, 5), op(ld, 16),  # clone's flags (low half of args[0])
             op(jset, CLONE_THREAD, 1, 0), op(ret, eperm),
             op(jset, CLONE_NAMESPACES, 0, 1), op(ret, eperm),
             op(ret, allow)]
    return b"".join(prog)


def install_seccomp():
    """Load the filter into this process (for good); False where it does not apply (not x86-64)."""
    if platform.machine() != "x86_64":
        return False
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    program = seccomp_program()
    buf = ctypes.create_string_buffer(program, len(program))

    class Fprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
    fprog = Fprog(len(program) // 8, ctypes.addressof(buf))
    if libc.prctl(38, 1, 0, 0, 0) or libc.prctl(22, 2, ctypes.byref(fprog), 0, 0):  # NO_NEW_PRIVS, SECCOMP filter
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP) failed")
    return True


class RecordingMemory(memory_fs.MemoryFS):
    """The worker's copy of a memory: ops run on it as on the real one, and each write is recorded."""
    def __init__(self, root, files, options, ops, index):
        shutil.rmtree(root, ignore_errors=True)
        super().__init__(root, files, **options)
        self.ops, self.index_in_call = ops, index

    def execute(self, op, allowed):
        result = super().execute(op, allowed)
        if result.wrote:
            self.ops.append([self.index_in_call, op.name, op.args, op.raw, op.alias])
        return result


def where(e, filename):
    lines = [f.lineno for f in traceback.extract_tb(e.__traceback__) if f.filename == filename]
    return f" ({Path(filename).name} line {lines[-1]})" if lines else ""


def serve(module_path, limits, extra_paths):
    """The worker: lock itself down, import the file, then answer calls until its input ends."""
    protocol_in, protocol_out = os.fdopen(os.dup(0), "rb"), os.fdopen(os.dup(1), "wb")
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)  # what hooks print goes nowhere; the pipe is for replies only
    os.close(null)

    def send(obj):
        protocol_out.write(json.dumps(obj, ensure_ascii=False).encode() + b"\n")
        protocol_out.flush()
    for key, rlimit in (("memory_bytes", resource.RLIMIT_AS), ("cpu_seconds", resource.RLIMIT_CPU),
                        ("file_bytes", resource.RLIMIT_FSIZE), ("processes", resource.RLIMIT_NPROC),
                        ("open_files", resource.RLIMIT_NOFILE)):
        resource.setrlimit(rlimit, (int(limits[key]), int(limits[key])))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if os.getuid() == 0:
        os.setgroups([])
        os.setresgid(JAIL_UID, JAIL_UID, JAIL_UID)
        os.setresuid(JAIL_UID, JAIL_UID, JAIL_UID)
    seccomp = install_seccomp()
    sys.path[:0] = ["/jail/code"] + extra_paths
    import importlib.util
    import hook_context  # noqa: F401  (its Context rebuilds ctx: jail_wire.decode(classes=True))
    send({"jailed": True, "uid": os.getuid(), "seccomp": seccomp})
    spec = importlib.util.spec_from_file_location("hooks", module_path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except BaseException as e:  # SystemExit too: the import fails, the worker answers
        return send({"error": f"{Path(module_path).name}: import failed: {type(e).__name__}: {e}{where(e, module_path)}"})
    send({"ready": True})
    copies, held = [], {}  # memory copies; (argument index, field) -> (value, fingerprint) of what was sent
    for line in protocol_in:
        request = json.loads(line)
        name, ops = request["call"], []
        for i, sent in enumerate(request["memories"]):
            if sent is not None:
                copy = RecordingMemory(f"/jail/scratch/memory{i}", sent["files"], sent["options"], ops, i)
                copies[i:i + 1] = [copy]
            copies[i].ops = ops
        try:
            args = [jail_wire.decode_argument(i, a, copies, held) for i, a in enumerate(request["args"])]
            fn = getattr(module, name, None)
            if not callable(fn):
                raise AttributeError(f"{Path(module_path).name} defines no function {name}")
            value = jail_wire.encode(fn(*args))
            changed = {i: jail_wire.changed_fields(i, arg, held)
                       for i, (arg, sent) in enumerate(zip(args, request["args"]))
                       if isinstance(sent, dict) and jail_wire.TAG_OBJECT in sent}
            send({"value": value, "ops": ops, "changed": {i: fields for i, fields in changed.items() if fields}})
        except BaseException as e:  # whatever a hook raises, SystemExit included, is its failure
            held.clear()
            send({"error": f"{name} raised {type(e).__name__}: {str(e)[:300]}{where(e, module_path)}"})


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="say whether the jail works here and what it enforces")
    p.add_argument("--serve", nargs=3, metavar=("MODULE", "LIMITS", "PATHS"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve:
        module, limits, paths = args.serve
        return serve(module, json.loads(limits), json.loads(paths))
    ok, why = available()
    if not ok:
        print(f"jail: does not work here: {why}", file=sys.stderr)
        sys.exit(1)
    version = subprocess.run(["bwrap", "--version"], capture_output=True, text=True).stdout.strip()
    print(f"jail: works ({version}; uid {JAIL_UID if os.geteuid() == 0 else os.geteuid()} in the jail; seccomp "
          f"{'on' if platform.machine() == 'x86_64' else 'off (not x86-64)'}); limits {LIMITS}")


if __name__ == "__main__":
    main()
