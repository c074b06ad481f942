"""Tests of replay.py: the memory rebuild, the frames file, and the HTML replay page in a real headless
Chromium (stepping, side by side, hostile trace text that must stay text). The traces are those of
tests/test_report.py: hand-made ones whose answers are known, and real episodes with the scripted backend.

    python -m pytest -q tests/test_replay.py
"""
import importlib.util
import io
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import envs
import replay
import trace_format
from test_report import call, episode, result, traces, write_trace  # noqa: F401 (traces: a fixture)

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]


# ----------------------------------------------------------------------------- memory rebuild

def test_memory_rebuild_replays_writes_and_trusts_snapshots(tmp_path):
    header, steps, end = episode(["a", "b", "c"], "d", files={"notes.txt": "", "map.txt": "start"})
    steps[0]["writes"] = [["APPEND", ["notes.txt", "tree west"]], ["UPSERT", ["map.txt", "(1,2):", "door"]]]
    steps[1]["writes"] = [["UPSERT", ["map.txt", "(1,2):", "wall"]], ["CREATE", ["new.txt", "hi"]]]
    steps[1]["snapshot"] = {"notes.txt": "tree west\n", "map.txt": "start\n(1,2): wall\n", "new.txt": "hi\n"}
    steps[2]["writes"] = [["WRITE", ["notes.txt", "rewritten"]]]
    end["memory"] = {"notes.txt": "rewritten\n", "map.txt": "start\n(1,2): wall\n", "new.txt": "hi\n"}
    assert replay.memory_at(header, steps, -1) == {"notes.txt": "", "map.txt": "start\n"}
    assert replay.memory_at(header, steps, 0) == {"notes.txt": "tree west\n", "map.txt": "start\n(1,2): door\n"}
    assert replay.memory_at(header, steps, 2) == end["memory"]
    write_trace(tmp_path / "t.jsonl", header, steps, end)
    view, _ = replay.episode_view(tmp_path / "t.jsonl")
    assert view["problems"] == []
    assert view["mem"][0] == {"map.txt": [6, 0, "(1,2): door\n"], "notes.txt": [0, 0, "tree west\n"]}
    assert view["mem"][3] == {}  # the end: nothing beyond the replay
    # a snapshot that disagrees with the writes wins, and the page says so
    steps[1]["snapshot"]["notes.txt"] = "edited by hand\n"
    assert replay.memory_at(header, steps, 1)["notes.txt"] == "edited by hand\n"
    write_trace(tmp_path / "t.jsonl", header, steps, end)
    view, _ = replay.episode_view(tmp_path / "t.jsonl")
    assert [p.split(":")[0] for p in view["problems"]] == ["step 1"]


@pytest.mark.parametrize("old,new", [("", "abc\n"), ("ab\n", "ab\ncd\n"), ("k: 1\nz\n", "k: 2\nz\n"),
                                     ("x\n", ""), ("a😀b\n", "a😀c😀b\n"), ("😀\n", "😀😀\n"), ("same", "same")])
def test_splice_indices_are_javascript_string_indices(old, new):
    p, s, text = replay.splice(old, new)
    units = lambda t: t.encode("utf-16-le")  # noqa: E731  (JavaScript strings are UTF-16 code units)
    o = units(old)
    assert o[:2 * p] + units(text) + o[len(o) - 2 * s:] == units(new)


# ----------------------------------------------------------------------------- frames

def crafter_frames(n):
    game = envs.make("crafter")
    game.reset(7)
    frames = [game.frame()]
    for action in (["Move West", "Noop", "Move North", "Do"] * n)[:n - 1]:
        game.step(action)
        frames.append(game.frame())
    return frames


def test_save_frames_compact_deduplicated_and_sparse(tmp_path):
    frames = crafter_frames(8)
    frames.insert(2, frames[1])  # a repeated frame is stored once
    path = replay.save_frames(tmp_path / "ep.frames.npz", frames)
    stored = replay.load_frames(path)
    new = [t for t in range(len(frames)) if t == 0 or not np.array_equal(frames[t], frames[t - 1])]
    assert [t for t, _ in stored] == new and 2 not in new
    image = Image.open(io.BytesIO(stored[0][1]))
    assert image.size == (128, 128) and image.mode == "P"
    assert path.stat().st_size < 8 * 8000  # about 4 KB a frame, not 196 KB of raw pixels
    every = replay.load_frames(replay.save_frames(tmp_path / "e.npz", [None] + frames[1:], every=3))
    assert [t for t, _ in every] == [3, 6, 8]  # every 3rd step, no frame 0 given, and the last one
    with pytest.raises(ValueError, match="RGB uint8"):
        replay.save_frames(tmp_path / "x.npz", [["|..@..|"] * 24])


def test_record_frames_replays_the_game(traces):
    path = replay.record_frames(traces["crafter"])
    stored = replay.load_frames(path)
    assert path == replay.frames_path(traces["crafter"]) and path.name == "default__00.frames.npz"
    assert stored[0][0] == 0 and stored[-1][0] <= 12 and len(stored) >= 2
    assert replay.record_frames(traces["nethack"]) is None  # the map is in the trace


# ----------------------------------------------------------------------------- replay page

def test_replay_page_is_self_contained(traces, tmp_path):
    replay.record_frames(traces["crafter"])
    page = replay.write_replay(traces["crafter"], tmp_path / "r.html").read_text()
    assert "<link" not in page and "@import" not in page and "url(" not in page
    assert not re.search(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", page)
    assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", page)  # the SVG namespace is a name, not a fetch
    view, pngs = replay.episode_view(traces["crafter"])
    assert view["n"] == 12 and len(view["obs"]) == 13 and len(view["mem"]) == 13 and view["problems"] == []
    assert len(pngs) == len(view["frame_steps"]) >= 2 and pngs[0] in page


def test_replay_cli_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        replay.main([str(tmp_path / "missing.jsonl")])
    assert e.value.code == 2 and "error: no trace at" in capsys.readouterr().err
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(SystemExit):
        replay.main([str(tmp_path / "empty.jsonl")])
    assert "not an episode trace" in capsys.readouterr().err


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    missing = ("chromium is not installed (apt-get install -y chromium)" if not Path(CHROMIUM).is_file() else
               "playwright is not installed (pip install playwright)" if not importlib.util.find_spec("playwright") else None)
    if missing and os.environ.get("CI") == "true":  # CI must check the page in a browser: fail, never skip
        pytest.fail(f"{missing}: the replay page cannot be checked in a browser")
    if missing:
        pytest.skip(f"{missing}; the replay page is not checked in a browser")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("profile")), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1500, "height": 1000})
        yield context
        context.close()


def open_page(browser, path, init_script=None):
    page = browser.new_page()
    if init_script:
        page.add_init_script(init_script)  # runs before the page's own scripts
    errors = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("request", lambda r: errors.append(f"fetched {r.url}") if not r.url.startswith(("file:", "data:")) else None)
    page.goto(path.as_uri())
    page.wait_for_function("window.replay && window.replay.ready", timeout=20_000)
    return page, errors


def test_replay_in_chromium_steps_frames_ops_and_memory(browser, traces, tmp_path):
    replay.record_frames(traces["crafter"])
    page, errors = open_page(browser, replay.write_replay(traces["crafter"], tmp_path / "crafter.html"))
    first = page.evaluate("replay.panels()")[0]
    assert first["step"] == 0 and first["frame"] == "image"
    assert any(op.startswith("ACTION") for op in first["ops"]) and not any(op.startswith("APPEND") for op in first["ops"])
    page.click("#next")
    page.click("#next")
    second = page.evaluate("replay.panels()")[0]
    assert second["step"] == 2 and second["frame"] == "image"
    assert second["ops"] != first["ops"] and any(op.startswith("APPEND") for op in second["ops"])
    assert second["changed"] and second["selected"] in [c.split(" (")[0] for c in second["changed"]]
    header, steps, _ = trace_format.read_trace(traces["crafter"])
    assert second["content"] == replay.memory_at(header, steps, 2)[second["selected"]]
    frames = {page.evaluate(f"(replay.go({t}), replay.panels()[0].frameKey)") for t in range(13)}
    assert len(frames) > 1  # stepping changes the frame
    page.keyboard.press("End")
    end = page.evaluate("replay.panels()")[0]
    assert end["step"] == 12 and "end after 12 steps" in end["status"]
    page.check("#raw")
    raw = page.evaluate("replay.panels()")[0]
    final = trace_format.read_trace(traces["crafter"])[2]["final_observation"]
    assert raw["frame"] == "text" and raw["frameKey"] == final
    page.uncheck("#raw")
    page.click("#play")  # plays from the start to the end, then stops
    page.wait_for_function("replay.position() === 12 && document.querySelector('#play').textContent === 'play'", timeout=30_000)
    # what the browser draws at step 0 is the stored frame, pixel for pixel (shown 3x, pixelated)
    page.evaluate("replay.go(0)")
    stored = np.asarray(Image.open(io.BytesIO(replay.load_frames(replay.frames_path(traces["crafter"]))[0][1])).convert("RGB"))
    box = page.locator(".frame img").bounding_box()
    assert (box["width"], box["height"]) == (3 * stored.shape[1], 3 * stored.shape[0])
    shot = page.screenshot(clip={"x": round(box["x"]), "y": round(box["y"]), "width": box["width"], "height": box["height"]})
    drawn = np.asarray(Image.open(io.BytesIO(shot)).convert("RGB"))[1::3, 1::3]  # each 3x3 block's centre pixel
    assert np.array_equal(drawn, stored)
    assert errors == []


def test_replay_in_chromium_side_by_side_lockstep(browser, traces, tmp_path):
    html = replay.write_replay(traces["nethack"], tmp_path / "vs.html", vs=traces["nethack_cot"])
    page, errors = open_page(browser, html)
    a, b = page.evaluate("replay.panels()")
    assert (a["last"], b["last"]) == (10, 7) and a["frame"] == b["frame"] == "map"
    assert a["frameKey"] == b["frameKey"]  # same seed, same start
    for t, expected in ((3, (3, 3)), (9, (9, 7)), (5, (5, 5))):
        page.evaluate(f"replay.go({t})")
        a, b = page.evaluate("replay.panels()")
        assert (a["step"], b["step"]) == expected
        assert int(page.input_value("#scrub")) == t
    assert a["files"] and b["files"] == [] and "this episode is over" not in a["status"] + b["status"]
    page.evaluate("replay.go(9)")
    assert "this episode is over" in page.evaluate("replay.panels()")[1]["status"]
    page.keyboard.press("ArrowLeft")
    assert [p["step"] for p in page.evaluate("replay.panels()")] == [8, 7]
    assert "@" in page.evaluate("replay.panels()")[0]["frameKey"]
    left, right = [page.locator(".panel").nth(i).bounding_box() for i in (0, 1)]
    assert left["y"] == right["y"] and right["x"] >= left["x"] + left["width"]  # side by side, not stacked
    assert errors == []


def planted(where):
    """Markup that runs script if a page ever treats text as HTML, each recording `where` in window.pwned, and a
    template expression that would show 49 if trace text were ever rendered as part of the template."""
    return (f"</title></pre>&lt;i&gt;<img src=x onerror=\"pwned.push('{where}')\">"
            f"<script>pwned.push('{where} script')</script>{{{{ 7 * 7 }}}}")


def hostile_trace(path):
    """A trace whose every text a model, a hook, the game or a user wrote carries planted markup."""
    sites = ["run", "scaffold", "action", "observation", "reply", "op args", "op result", "gate", "hook", "memory",
             "final observation", "end reason", "achievement"]
    header, steps, end = episode([planted("observation")] * 2, planted("final observation"), files={"notes.txt": ""},
                                 action=planted("action"), valid=False)
    header.update(run=planted("run"), scaffold=planted("scaffold"))
    for s in steps:
        s["writes"] = [["APPEND", ["notes.txt", planted("memory")]]]
        s["gate"] = [{"action": "Noop", "reason": planted("gate"), "turns": []}]
        s["hooks"] = {"observe": [planted("hook")]}
        s["plan"]["turns"] = [{**call([("SEARCH", ["notes.txt", planted("op args")])],
                                      [{**result(matches=0), "text": planted("op result")}]), "reply": planted("reply")}]
    end.update(end_reason=planted("end reason"), achievements=[planted("achievement")],
               memory={"notes.txt": "".join(planted("memory") + "\n" for _ in steps)})
    write_trace(path, header, steps, end)
    return path, sites


def test_replay_page_escapes_what_it_did_not_write(tmp_path):
    """The static half of the check in Chromium below: the page's script has no HTML sink, and a run name full of
    markup reaches the HTML only escaped, in <title> (the data travels base64-encoded)."""
    template = replay.TEMPLATE.read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "srcdoc", "eval(", "Function(",
                 "|safe", "| safe", "autoescape false"):
        assert sink not in template, sink
    trace, _ = hostile_trace(tmp_path / "t.jsonl")
    page = replay.write_replay(trace, tmp_path / "t.html").read_text()
    title = page.split("<title>", 1)[1].split("</title>", 1)[0]
    assert "<" not in title and "&lt;/title&gt;&lt;/pre&gt;&amp;lt;i&amp;gt;&lt;img src=x onerror=&#34;" in title
    assert "{{ 7 * 7 }}" in title
    # one episode: the data tag, its frames tag and the page's script, as in the template
    assert page.count("<script") == template.count("<script") and "pwned" not in page.split("</title>", 1)[1]


def test_replay_in_chromium_runs_no_planted_markup(browser, tmp_path):
    """Every text of a hostile trace is shown as text at every step: no planted <script> or <img onerror> runs."""
    trace, sites = hostile_trace(tmp_path / "t.jsonl")
    page, errors = open_page(browser, replay.write_replay(trace, tmp_path / "t.html"), init_script="window.pwned = []")
    shown = page.evaluate("document.title")
    for t in range(3):  # two steps and the end
        page.evaluate(f"replay.go({t}); document.querySelectorAll('details').forEach((d) => d.open = true)")
        shown += page.evaluate("document.querySelector('#panels').textContent")
    page.wait_for_function("[...document.images].every((img) => img.complete)")  # a planted image would have failed
    assert page.evaluate("window.pwned") == []
    assert page.evaluate("[...document.images].filter((img) => !img.src.startsWith('data:')).length") == 0
    assert page.evaluate("document.querySelectorAll('script:not([type])').length") == 1  # the page's own
    assert [where for where in sites if planted(where) not in shown] == []  # each one shown, as text
    assert errors == []


def test_eval_writes_the_replay_of_its_first_episode(traces, tmp_path):
    # a process of its own: eval.py keeps its loaded model for the life of the process
    out = subprocess.run([sys.executable, str(ROOT / "eval.py"), "--env", "crafter", "--backend", "scripted",
                          "--model", str(traces["crafter"]), "--episodes", "1", "--max-steps", "3",
                          "--runs-dir", str(tmp_path), "--run-name", "e"], capture_output=True, text=True, check=True).stdout
    assert "| log_writes_per_search | 1.000 |" in out and "replay.html" in out
    page = (tmp_path / "e" / "replay.html").read_text()
    frames = replay.load_frames(tmp_path / "e" / "traces" / "crafter" / "default__00.frames.npz")
    view, pngs = replay.episode_view(tmp_path / "e" / "traces" / "crafter" / "default__00.jsonl")
    assert view["n"] == 3 and frames[0][0] == 0 and pngs[0] in page
