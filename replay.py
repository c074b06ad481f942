"""
replay.py: see what the agent did in one episode (or two side by side), from its trace alone.

    python replay.py runs/x/traces/crafter/default__00.jsonl            # -> default__00.html beside the trace
    python replay.py runs/a/traces/minihack/T__00.jsonl --vs runs/b/traces/minihack/T__00.jsonl --out ab.html
    python replay.py runs/x/traces/crafter/default__00.jsonl --frames   # Crafter: rebuild the frames first

The page is one self-contained HTML file (templates/replay.html filled by Jinja2; inline JS/CSS, data
gzip+base64, nothing fetched): play, pause, step, scrub; the frame (Crafter: the frames file beside the
trace, see save_frames; NetHack/MiniHack: the ASCII map from the observation text) or the raw text; LOG
and PLAN calls with their memory ops and results; the memory files as they stood after that step (rebuilt
from the header's files and each step's writes with memory_fs.MemoryFS.apply; the trace's snapshots reset
the rebuild); progression and status. --vs shows a second episode in lockstep.
Keys: space play/pause, arrows step, Home/End.
eval.py writes the replay of a run's first episode to runs/<name>/replay.html.
"""
import argparse
import base64
import gzip
import io
import json
import sys
import tempfile
from pathlib import Path

import jinja2
import numpy as np
from PIL import Image

import cli
import memory_fs
import trace_format

RESULT_CHARS = 1500  # page: op result text kept per op
REPLY_CHARS = 2000   # page: model reply text kept per call
FRAME_SIDE = 128     # save_frames: Crafter's 256 px render halved keeps its 28 px tiles whole (14 px)
FRAME_COLORS = 64    # save_frames: palette size; 128 px frames are then about 4 KB each
TEMPLATE = Path(__file__).resolve().parent / "templates" / "replay.html"


# ----------------------------------------------------------------------------- frames

def frames_path(trace):
    """Where an episode's frames live: beside the trace, <episode>.frames.npz."""
    trace = Path(trace)
    return trace.with_name(trace.name.removesuffix(".jsonl") + ".frames.npz")


def save_frames(path, frames, every=1, side=FRAME_SIDE, colors=FRAME_COLORS):
    """Store an episode's RGB frames compactly: frames[t] is the view at step t (before its action;
    the last one after the final action), None where absent. Every `every`-th step is kept (and the
    last), scaled to at most `side` px, reduced to a `colors` palette and PNG-encoded; a frame equal
    to the one kept before it is skipped (the replay shows the latest kept frame at or before a
    step). The .npz holds steps (int32), offsets (int64, n+1) and png (uint8, all PNGs joined)."""
    steps, blobs, last = [], [], None
    for t, frame in enumerate(frames):
        if frame is None or (t % every and t != len(frames) - 1):
            continue
        a = np.asarray(frame)
        if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3:
            raise ValueError(f"frame {t}: expected an RGB uint8 array (H, W, 3), got {a.dtype} {a.shape} "
                             "(NetHack/MiniHack need no frames file: the replay draws their map from the trace)")
        if last is not None and np.array_equal(a, last):
            continue
        last = a
        image = Image.fromarray(a)
        if max(image.size) > side:
            scale = side / max(image.size)
            image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.BOX)
        buf = io.BytesIO()
        image.quantize(colors, method=Image.Quantize.MEDIANCUT).save(buf, "PNG", optimize=True)
        steps.append(t)
        blobs.append(np.frombuffer(buf.getvalue(), np.uint8))
    offsets = np.cumsum([0] + [len(b) for b in blobs], dtype=np.int64)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:  # an open file: np.savez would append .npz to a name without it
        np.savez(f, steps=np.array(steps, np.int32), offsets=offsets,
                 png=np.concatenate(blobs) if blobs else np.zeros(0, np.uint8))
    return Path(path)


def record_frames(trace, every=1):
    """Rebuild a Crafter episode's frames by replaying its actions on its seed (the game is
    deterministic), checking each observation against the trace, and store them with save_frames
    beside the trace. NetHack/MiniHack need none (their map is in the trace): returns None."""
    import envs  # here, not at the top: only rebuilding frames needs a game
    header, steps, end = trace_format.read_trace(trace)
    if header is None or header["env"] != "crafter":
        return None
    game = envs.make(header["env"], header["task"], max_steps=header["max_steps"])
    try:
        obs, frames = game.reset(header["seed"]), [game.frame()]
        for s in steps:
            if obs.text != s["observation"]:
                raise ValueError(f"{trace}: replaying its actions gives another observation at step {s['step']}, "
                                 "so its frames cannot be rebuilt (was it made with another game version?)")
            obs = game.step(s["action"])[0]
            frames.append(game.frame())
    finally:
        game.close()
    if end and obs.text != end["final_observation"]:
        raise ValueError(f"{trace}: replaying its actions gives another final observation; no frames written")
    return save_frames(frames_path(trace), frames if end else frames[:-1], every)


def load_frames(path):
    """[(step, PNG bytes)] from a save_frames file."""
    with np.load(path, allow_pickle=False) as z:
        steps, offsets, png = z["steps"], z["offsets"], z["png"]
    return [(int(t), png[offsets[i]:offsets[i + 1]].tobytes()) for i, t in enumerate(steps)]


# ----------------------------------------------------------------------------- memory replay

def replay_memory(files, steps):
    """Rebuild memory step by step from `files` (the header's, or a snapshot) with MemoryFS.apply.
    Yields (step record, files after its writes, names changed, problem text or ""). A step's
    recorded snapshot is authoritative: the rebuild continues from it (a mismatch is a problem)."""
    with tempfile.TemporaryDirectory() as root:
        fs = memory_fs.MemoryFS(Path(root) / "0", files)
        state = fs.snapshot()
        for s in steps:
            touched, problem = set(), ""
            for name, args in s["writes"]:
                try:
                    fs.apply(memory_fs.Op(name, list(args), ""))
                except ValueError as e:
                    problem = problem or str(e)
                if args and args[0] in fs.names():
                    touched.add(args[0])
            new = {n: fs.read(n) for n in touched}
            changed = {n for n in touched if new[n] != state.get(n)}
            state = {**state, **new}
            if "snapshot" in s and s["snapshot"] != state:
                problem = problem or "the rebuilt memory differs from the trace's snapshot (the snapshot is shown)"
                changed |= {n for n in set(state) | set(s["snapshot"]) if state.get(n) != s["snapshot"].get(n)}
                fs = memory_fs.MemoryFS(Path(root) / str(s["step"]), s["snapshot"])
                state = fs.snapshot()
            yield s, state, changed, problem


def stored(files):
    """`files` as MemoryFS stores them (a non-empty text ends with a newline)."""
    with tempfile.TemporaryDirectory() as root:
        return memory_fs.MemoryFS(root, files).snapshot()


def memory_at(header, steps, t):
    """The memory files after step t's writes (t = -1: the initial files), rebuilt from the nearest
    snapshot at or before t."""
    start, state = 0, stored(header["files"])
    for i in range(min(t, len(steps) - 1), -1, -1):
        if "snapshot" in steps[i]:
            start, state = i + 1, steps[i]["snapshot"]
            break
    for _, state, _, _ in replay_memory(state, steps[start:t + 1]):
        pass
    return dict(state)


def splice(old, new):
    """[p, s, text] with new == old[:p] + text + old[len(old) - s:], p and s counted in UTF-16
    code units (JavaScript string indices)."""
    if new.startswith(old):
        p, s = len(old), 0  # the common case: an append
    else:
        lo, hi = 0, min(len(old), len(new))
        while lo < hi:  # longest common prefix, by halving: slices compare in C
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if old[:mid] == new[:mid] else (lo, mid - 1)
        p, lo, hi = lo, 0, min(len(old), len(new)) - lo
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if old[len(old) - mid:] == new[len(new) - mid:] else (lo, mid - 1)
        s = lo
    return [utf16_len(old[:p]), utf16_len(old[len(old) - s:]), new[p:len(new) - s]]


def utf16_len(text):
    return len(text.encode("utf-16-le")) // 2


# ----------------------------------------------------------------------------- replay page

def call_view(call):
    """One model call: its ops with their results (None once the routine stopped)."""
    results = call["results"]
    ops = []
    for i, (name, args) in enumerate(call["ops"]):
        r = results[i] if i < len(results) else None
        ops.append([name, cli.clip("|".join(args), RESULT_CHARS), None if r is None else
                    {"t": cli.clip(r["text"], RESULT_CHARS), "ok": r["ok"], "w": r["wrote"], "rd": r["redundant"], "n": r["matches"]},
                    r is None and i == len(results)])  # the op that ended the routine
    return {"m": call["model"], "reply": cli.clip(call["reply"], REPLY_CHARS), "ops": ops,
            "pt": call["prompt_tokens"], "ct": call["completion_tokens"], "s": call["seconds"],
            "drop": call.get("dropped_action")}


def routine_view(routine):
    if not routine:
        return None
    return {"ended": routine["ended"], "action": routine["action"], "turns": [call_view(c) for c in routine["turns"]]}


def episode_view(trace):
    """Everything the page shows of one episode, from its trace (and frames file, if any)."""
    header, steps, end = trace_format.read_trace(trace)
    if header is None or not steps:
        raise ValueError(f"{trace}: not an episode trace with steps (expected runs/<name>/traces/<env>/<task>__NN.jsonl)")
    view_steps, mem, problems, total = [], [], [], 0.0
    before = files0 = stored(header["files"])
    for s, state, changed, problem in replay_memory(files0, steps):
        mem.append({n: None if n not in state else splice(before.get(n, ""), state[n]) for n in sorted(changed)})
        before = state
        if problem:
            problems.append(f"step {s['step']}: {problem}")
        total += s["reward"]
        view_steps.append({"a": s["action"], "v": s["valid"], "x": s["executed"], "r": s["reward"], "ret": total,
                           "p": s["progression"], "fb": s["fallback"], "gate": [[g["action"], g["reason"]] for g in s["gate"]],
                           "hooks": s["hooks"], "log": routine_view(s.get("log")), "plan": routine_view(s["plan"])})
    obs = [s["observation"] for s in steps]
    if end:  # the last position shows the end: final observation and final memory
        obs.append(end["final_observation"])
        final = end["memory"]
        diff = {n: None if n not in final else splice(before.get(n, ""), final[n])
                for n in sorted(set(final) | set(before)) if final.get(n) != before.get(n)}
        if diff:
            problems.append("end: the rebuilt memory differs from the trace's final memory (the final memory is shown)")
        mem.append(diff)
    frames = load_frames(frames_path(trace)) if frames_path(trace).is_file() else []
    return {
        "title": f"{header.get('run') or Path(trace).parent.parent.parent.name} · {Path(trace).stem}",
        "meta": f"{header['env']} · {header['task']} · seed {header['seed']} · agent {header['agent']}"
                + (f" · scaffold {header['scaffold']} ({header['scaffold_hash']})" if header["agent"] == "memory" else ""),
        "env": header["env"], "n": len(steps), "steps": view_steps, "obs": obs, "mem": mem,
        "files0": files0,
        "end": end and {k: end[k] for k in ("steps", "progression", "success", "end_reason", "achievements", "return")},
        "frame_steps": [t for t, _ in frames], "problems": problems,
    }, [base64.b64encode(png).decode() for _, png in frames]


def write_replay(trace, out=None, vs=None, frames=False):
    """Write the replay page of `trace` (and `vs` beside it, in lockstep) to `out` (default: the
    trace's path with .html); return the path. frames=True first rebuilds missing Crafter frames
    (record_frames); if that fails the page shows the text, with a note on stderr."""
    out = Path(out) if out else Path(trace).with_suffix(".html")
    for t in [trace] + ([vs] if vs else []):
        if frames and not frames_path(t).is_file():
            try:
                record_frames(t)
            except ValueError as e:
                print(f"note: {e}; the replay shows the text observation", file=sys.stderr)
    views = [episode_view(t) for t in [trace] + ([vs] if vs else [])]
    data = base64.b64encode(gzip.compress(json.dumps({"episodes": [v for v, _ in views]}, ensure_ascii=False)
                                          .encode(), mtime=0)).decode()
    # autoescape: the title (run and episode names) reaches the HTML escaped; data and frames are base64
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATE.parent), autoescape=True,
                             keep_trailing_newline=True, undefined=jinja2.StrictUndefined)
    page = env.get_template(TEMPLATE.name).render(title=" vs ".join(v["title"] for v, _ in views), data=data,
                                                  frames=[pngs for _, pngs in views])  # base64 PNGs, one a line
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page)
    return out


# ----------------------------------------------------------------------------- command line

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("trace", help="runs/<name>/traces/<env>/<task>__NN.jsonl")
    p.add_argument("--vs", help="a second trace, shown beside the first in lockstep")
    p.add_argument("--out", help="HTML file (default: the trace's path with .html)")
    p.add_argument("--frames", action="store_true", help="Crafter: rebuild missing frames by replaying the actions")
    args = p.parse_args(argv)
    try:
        for path in [args.trace] + ([args.vs] if args.vs else []):
            if not Path(path).is_file():
                raise ValueError(f"no trace at {path}: pass runs/<name>/traces/<env>/<task>__NN.jsonl")
        print(write_replay(args.trace, args.out, args.vs, args.frames))
    except ValueError as e:  # bad input: the trace, its frames
        cli.fail(e)


if __name__ == "__main__":
    main()
