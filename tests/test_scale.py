"""From one GPU to many, without a GPU: server layouts (replicas, the specialist on its own server or as a LoRA
name) against local OpenAI-compatible servers, BALROG's summary.json, the LaTeX table, per-step progress, and the
README's loop-2 chain."""
import itertools
import json
import math
import os
import re
import shlex
import subprocess
import sys
import threading
import types
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import eval as evaluation
import llm
import metrics
import report
import run_folder
import trace_format
import train_lora
from bench.harness_throughput import Stub

ROOT = Path(__file__).resolve().parents[1]
VALID = {"crafter": "Move West", "minihack": "north", "nethack": "search"}


def scripted(env):
    calls = itertools.count()

    def reply(messages):  # LOG's prompts offer <|DONE|>, PLAN's do not; LOG searches, then writes a new line
        if "<|DONE|>" not in messages[-1]["content"]:
            return f"<|ACTION|>{VALID[env]}<|END|>"
        if len(messages) == 1:
            return "<|SEARCH|>actions_log.txt|moved<|END|>"
        return f"<|APPEND|>actions_log.txt|moved ({next(calls)})<|END|> <|DONE|>"
    return llm.load("scripted", replies=reply)


def run(tmp_path, *argv, env="crafter", name="r"):
    evaluation.WORKER.clear()
    evaluation.WORKER["llm"] = scripted(env)  # the real scripted backend stands in for the model
    evaluation.main(["--env", env, "--max-steps", "3", "--episodes", "2", "--runs-dir", str(tmp_path),
                     "--run-name", name, "--no-replay", *argv])
    return tmp_path / name


# -- server layouts ------------------------------------------------------------------------------
# Real llama.cpp servers serve the embedded GGUF under several names. A name served with the "chatml" chat format
# renders a prompt without the default system prompt of the GGUF's own template, so its prompt token count tells
# which name (on which server) answered: a llama.cpp server answers a name it lacks with its first model.
ASK = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """A: 'base' (the GGUF's template) and 'specialist' (chatml), as one vLLM server with a LoRA name;
    B: 'memory' (chatml) alone, as the authors' specialist server."""
    from test_llm import start_server, stop_server
    folder = tmp_path_factory.mktemp("servers")
    (a, url_a), (b, url_b) = (start_server([{"model_alias": "base"}, {"model_alias": "specialist", "chat_format": "chatml"}],
                                           folder),
                              start_server([{"model_alias": "memory", "chat_format": "chatml"}], folder))
    yield url_a, url_b
    stop_server(a)
    stop_server(b)


def prompt_tokens(backend, adapter=None):
    return backend.chat(ASK, adapter=adapter, max_tokens=1, seed=0).prompt_tokens


def models_of(*argv):
    """(base, memory backend, memory adapter) as eval.py loads them for these arguments."""
    evaluation.WORKER.clear()
    return evaluation.load_models(evaluation.make_config(evaluation.parse_args(
        ["--env", "crafter", "--backend", "openai", "--model", "base", *argv])))


def test_one_server_with_the_specialist_as_a_lora_name(servers):
    url_a, _ = servers
    own, chatml = (prompt_tokens(llm.load("openai", name, base_url=url_a)) for name in ("base", "specialist"))
    assert own != chatml  # the fingerprint tells the two names apart
    base, memory, adapter = models_of("--base-url", url_a, "--memory-adapter", "specialist")
    assert memory is None and adapter == "specialist"  # the specialist goes by name on the base's server
    assert prompt_tokens(base) == own and prompt_tokens(base, adapter) == chatml


def test_two_servers_the_authors_layout(servers):
    url_a, url_b = servers
    own, chatml = (prompt_tokens(llm.load("openai", name, base_url=url_a)) for name in ("base", "specialist"))
    base, memory, adapter = models_of("--base-url", url_a, "--memory-base-url", url_b)
    assert (memory.model, memory.base_urls, adapter) == ("memory", [url_b], None)  # the name B serves, asked
    assert prompt_tokens(base) == own and prompt_tokens(memory) == chatml  # a call sent to the wrong server reads own


def test_two_server_run_sends_each_call_to_its_server(tmp_path):
    stubs = {"base": Stub("Noop", model="base"), "memory": Stub("Noop", model="memory")}
    for stub in stubs.values():
        threading.Thread(target=stub.serve_forever, daemon=True).start()
    try:
        evaluation.WORKER.clear()
        evaluation.main(["--env", "crafter", "--backend", "openai", "--model", "base", "--base-url", stubs["base"].url,
                         "--memory-base-url", stubs["memory"].url, "--max-steps", "2", "--episodes", "1",
                         "--runs-dir", str(tmp_path), "--run-name", "two", "--no-replay"])
    finally:
        for stub in stubs.values():
            stub.shutdown()
            stub.server_close()
    assert json.loads((tmp_path / "two" / "config.json").read_text())["memory_base_url"] == [stubs["memory"].url]
    header, steps, end = trace_format.read_trace(tmp_path / "two" / "traces" / "crafter" / "default__00.jsonl")
    log, plan = ([c["model"] for c in metrics.calls(steps, r)] for r in ("log", "plan"))
    assert end["steps"] == 2 and set(log) == {"memory"} and plan == ["memory", "base"] * 2  # consult, then act
    assert stubs["memory"].requests == {"memory": len(log) + 2} and stubs["base"].requests == {"base": 2}


def test_a_run_with_the_specialist_on_its_own_server_is_a_loop2_row():
    config = {"agent": "memory", "memory_adapter": None, "memory_model": None, "memory_base_url": ["http://b:8001/v1"],
              "scaffolds": {"crafter": {"path": "scaffolds/crafter/v5"}}}
    assert report.agent_label(config) == "memory v5 + memory model (its own server)"
    assert report.paper_row(config, "crafter") == "+ memory training (loop 2)"


def test_memory_base_url_needs_the_openai_backend(tmp_path, capsys):
    with pytest.raises(SystemExit):
        evaluation.main(["--env", "crafter", "--memory-base-url", "http://127.0.0.1:9/v1", "--runs-dir", str(tmp_path)])
    assert capsys.readouterr().err.startswith("error: --memory-base-url is for --backend openai")


def test_replicas_each_thread_keeps_the_one_fewest_threads_use():
    stubs = [Stub("Noop") for _ in range(2)]
    for stub in stubs:
        threading.Thread(target=stub.serve_forever, daemon=True).start()
    try:
        o = llm.load("openai", base_url=[s.url for s in stubs])  # asks the first replica for its model
        assert o.model == "stub" and o.threads == [0, 0]  # asking pins no thread
        together = threading.Barrier(4)  # four threads at once (a pool reuses a thread whose task ended)

        def three_calls(i):  # each thread tags its calls with its own model name
            together.wait()
            return [o.chat(ASK, adapter=f"t{i}") for _ in range(3)]

        with ThreadPoolExecutor(4) as pool:
            list(pool.map(three_calls, range(4)))
        tags = [stub.requests for stub in stubs]
        assert sorted(len(t) for t in tags) == [2, 2] and all(n == 3 for t in tags for n in t.values())
    finally:
        for stub in stubs:
            stub.shutdown()
            stub.server_close()


def test_eval_spreads_episodes_over_replicas(tmp_path):
    stubs = [Stub("Noop") for _ in range(2)]
    for stub in stubs:
        threading.Thread(target=stub.serve_forever, daemon=True).start()
    try:
        evaluation.WORKER.clear()
        evaluation.main(["--env", "crafter", "--backend", "openai", "--model", "stub", "--workers", "4", "--episodes", "4",
                         "--max-steps", "3", "--runs-dir", str(tmp_path), "--run-name", "r", "--no-replay",
                         *[a for s in stubs for a in ("--base-url", s.url)]])
    finally:
        for stub in stubs:
            stub.shutdown()
            stub.server_close()
    results = json.loads((tmp_path / "r" / "results.json").read_text())["envs"]["crafter"]
    assert results["episodes"] == 4 and results["behaviour"]["fallback_rate"] == 0.0  # the stub's ops ran
    # 4 worker threads, 2 per server, equal episodes: both servers answered the same number of calls
    assert stubs[0].requests == stubs[1].requests and stubs[0].requests["stub"] > 0


# -- past one machine: a local Ray cluster ---------------------------------------------------------

def records(run_dir, job):
    """A trace's records without what differs between two plays of one episode (times, the run's name)."""
    def clean(x):
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items() if k not in ("seconds", "agent_seconds", "run")}
        return [clean(v) for v in x] if isinstance(x, list) else x
    return [clean(json.loads(line)) for line in run_folder.trace_path(run_dir, job).read_text().splitlines()]


def test_a_run_on_a_local_ray_cluster_equals_the_run_on_one_machine(tmp_path):
    stub = Stub("Noop")  # the same replies wherever a call comes from
    threading.Thread(target=stub.serve_forever, daemon=True).start()
    argv = ["--env", "crafter", "--backend", "openai", "--model", "stub", "--base-url", stub.url, "--episodes", "3",
            "--max-steps", "3", "--workers", "2", "--runs-dir", str(tmp_path), "--no-replay"]
    try:
        evaluation.WORKER.clear()
        evaluation.main(argv + ["--run-name", "here"])
        calls = stub.requests["stub"]
        evaluation.main(argv + ["--run-name", "cluster", "--ray", "local"])
        assert stub.requests["stub"] == 2 * calls  # every call of the cluster's episodes reached the server
        assert os.environ["RAY_USAGE_STATS_ENABLED"] == "0"  # set before the cluster started: no report leaves
        jobs = json.loads((tmp_path / "here" / "config.json").read_text())["jobs"]
        assert all(records(tmp_path / "here", j) == records(tmp_path / "cluster", j) for j in jobs)
        here, cluster = (json.loads((tmp_path / r / "results.json").read_text())["envs"]["crafter"] for r in ("here", "cluster"))
        assert cluster["per_episode"] == here["per_episode"] and cluster["progression"] == here["progression"]
        # resume on the cluster, run as the README's command: the finished episodes are kept, a lost one plays
        # again and lands in the run folder
        run_folder.trace_path(tmp_path / "cluster", jobs[1]).unlink()
        subprocess.run([sys.executable, str(ROOT / "eval.py"), *argv, "--run-name", "cluster", "--ray", "local"],
                       check=True, capture_output=True, cwd=tmp_path)
        assert stub.requests["stub"] == 2 * calls + calls // len(jobs) and calls % len(jobs) == 0
        assert records(tmp_path / "here", jobs[1]) == records(tmp_path / "cluster", jobs[1])
        assert not list((tmp_path / "cluster" / "traces" / "crafter").glob("*.tmp"))
    finally:
        stub.shutdown()
        stub.server_close()


def test_shards_of_a_run_make_one_table_row_equal_to_the_whole_run(tmp_path):
    tasks = ["MiniHack-MazeWalk-9x9-v0", "MiniHack-Corridor-R3-v0"]
    whole = run(tmp_path, *[a for t in tasks for a in ("--task", t)], env="minihack", name="whole")
    shards = [run(tmp_path, "--task", t, env="minihack", name=f"shard-{i}") for i, t in enumerate(tasks)]
    for i, folder in enumerate([whole] + shards):  # started in this order, a second apart (the whole run's row first)
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, "started": f"2026-01-01 00:00:0{i}"}))
    rows = report.table_rows(report.load_runs(shards + [whole]))
    merged, alone = sorted(rows, key=lambda r: r["runs"])
    assert (merged["runs"], alone["runs"]) == (["shard-0", "shard-1"], ["whole"])  # whole repeats their episodes
    assert merged["cells"]["minihack"] == alone["cells"]["minihack"] and merged["cells"]["minihack"]["n"] == 4
    untimed = [{k: v for k, v in r["behaviour"]["minihack"].items() if k != "seconds_per_step"} for r in rows]
    assert merged["tasks"] == alone["tasks"] and untimed[0] == untimed[1]  # behaviour pooled from both shards' traces
    other = run(tmp_path, "--task", tasks[0], "--temperature", "0.5", env="minihack", name="other")
    assert len(report.table_rows(report.load_runs([shards[1], other]))) == 2  # other settings: not a shard


# -- BALROG's summary.json ---------------------------------------------------------------------

def test_balrog_summary_numbers_and_keys():
    def ep(progression, tokens):
        return {}, [{"log": {"turns": [{"prompt_tokens": tokens, "completion_tokens": 1}]}}], {"progression": progression}
    config = {"agent": "memory", "backend": {"backend": "openai", "model": "m", "base_url": ["u"], "temperature": 1.0},
              "scaffolds": {"crafter": {"path": "scaffolds/crafter/v0"}, "nethack": {"path": "scaffolds/nethack/v0"}}}
    s = evaluation.balrog_summary(config, {"crafter": [ep(0.1, 5), ep(0.3, 7)], "nethack": [ep(0.0, 11)]})
    assert list(s) == ["average_progress", "standard_error", "environments", "total_input_tokens",
                       "total_output_tokens", "client", "agent"]  # BALROG's keys, in its order
    crafter_se = 100 * 0.1 / math.sqrt(2)  # population std 0.1 over 2 episodes
    assert s["environments"] == {"crafter": {"progression_percentage": pytest.approx(20.0),
                                             "standard_error": pytest.approx(crafter_se), "episodes_played": 2},
                                 "nle": {"progression_percentage": 0.0, "standard_error": 0.0, "episodes_played": 1}}
    assert s["average_progress"] == pytest.approx(10.0)  # the mean of the env means
    assert s["standard_error"] == pytest.approx(math.sqrt(crafter_se ** 2 + 0) / 2)
    assert (s["total_input_tokens"], s["total_output_tokens"]) == (23, 3)
    assert s["client"]["model_id"] == "m" and s["client"]["generate_kwargs"] == {"temperature": 1.0}


def test_eval_writes_balrog_summary_beside_results(tmp_path):
    run_dir = run(tmp_path)
    results = json.loads((run_dir / "results.json").read_text())["envs"]["crafter"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["environments"]["crafter"] == {"progression_percentage": results["progression"]["mean"],
                                                  "standard_error": results["progression"]["se"],
                                                  "episodes_played": 2}
    assert summary["total_input_tokens"] > 0 and summary["agent"]["type"] == "memory"


# -- report.py table --latex ---------------------------------------------------------------------

def test_table_latex(tmp_path, capsys):
    run_dir = run(tmp_path)
    capsys.readouterr()
    report.main(["table", str(run_dir), "--paper", "--latex", "--out", str(tmp_path / "rep")])
    tex = capsys.readouterr().out.split("\nwrote")[0]
    assert tex.strip() == (tmp_path / "rep" / "table.tex").read_text().strip()
    lines = tex.splitlines()
    assert lines[0] == r"\begin{tabular}{llrrr}" and lines[-1] == r"\end{tabular}"
    rows = [line for line in lines if line.endswith(r"\\")]
    assert rows[0] == r"Agent & Model & Crafter & MiniHack & NetHack \\"
    assert (r"\textit{memory v0} & \textit{Qwen2.5-32B-Instruct (paper)} & $25.00 \pm 5.50$ & $7.50 \pm 4.16$ & "
            r"$0.42 \pm 0.37$ \\") in rows
    ours = [r for r in rows if "SmolLM2" in r]
    assert len(ours) == 1 and re.fullmatch(r"memory v0 & SmolLM2-135M-Instruct\.Q4\\_1 & \$\d+\.\d\d \\pm \d+\.\d\d\$ "
                                           r"& -- & -- \\\\", ours[0])
    assert all(r.count("&") == 4 for r in rows)
    assert report.latex_escape(r"a_b & {x}~^\ 100%#$") == \
        r"a\_b \& \{x\}\textasciitilde{}\textasciicircum{}\textbackslash{} 100\%\#\$"


# -- per-step progress ---------------------------------------------------------------------------

class Bars:
    """Stands in for tqdm: records every bar eval.py opens."""
    made = []

    def __init__(self, total=None, unit=None, desc=None, position=None, **kw):
        self.total, self.unit, self.desc, self.position, self.n, self.closed = total, unit, desc, position, 0, False
        Bars.made.append(self)

    def update(self, n=1):
        self.n += n

    def set_postfix(self, **kw):
        pass

    def close(self):
        self.closed = True

    @staticmethod
    def set_lock(lock):
        pass


def test_a_step_bar_per_episode_on_its_workers_line(tmp_path, monkeypatch):
    Bars.made = []
    monkeypatch.setattr(evaluation, "tqdm", Bars)
    monkeypatch.setattr(evaluation, "SERVER_BACKENDS", {"scripted"})  # thread workers, as for a server
    run(tmp_path, "--workers", "2", "--backend", "scripted", "--model", "x")
    steps = [b for b in Bars.made if b.unit == "step"]
    assert len(steps) == 2 and all(b.closed for b in Bars.made)
    assert [(b.total, b.n) for b in steps] == [(3, 3), (3, 3)]  # every step counted, of the episode's limit
    assert sorted(b.desc for b in steps) == ["crafter default #00", "crafter default #01"]
    assert sorted(b.position for b in steps) == [1, 2]  # one line per worker, under the run's bar (line 0)


# -- the README's loop-2 chain ---------------------------------------------------------------------

def test_readme_loop2_chain_names_agree(tmp_path, monkeypatch):
    block = (ROOT / "README.md").read_text().split("# loop 2: memory specialist")[1].split("```")[0]
    commands = [shlex.split(c) for c in block.replace("\\\n", " ").splitlines() if c.strip().startswith("python")]
    record, data = commands[0], commands[1]
    assert record[:2] == ["python", "eval.py"] and data[:3] == ["python", "train_lora.py", "data"]
    seeds = evaluation.read_seeds(ROOT / record[record.index("--seeds") + 1])
    protocol = evaluation.read_seeds(ROOT / "seeds.txt")
    assert {env: len(s) for env, s in seeds.items()} == {"crafter": 100, "minihack": 100, "nethack": 100}
    assert all(not set(seeds[env]) & set(protocol[env]) for env in protocol)  # disjoint from the evaluation seeds
    name = record[record.index("--run-name") + 1]
    assert data[data.index("--runs") + 1] == f"runs/{name}"
    assert train_lora.parse_args(["engine", "--env", "crafter"]).runs == [str(ROOT / "runs" / name)]  # the engine's default
    # the first two lines run as written (a scripted model, 2 steps of 1 episode, under tmp_path)
    run_dir = run(tmp_path, "--seeds", str(ROOT / record[record.index("--seeds") + 1]), name=name)
    assert json.loads((run_dir / "config.json").read_text())["jobs"][0]["seed"] == seeds["crafter"][0]
    out = tmp_path / "crafter.jsonl"
    train_lora.main(["data", "--runs", str(run_dir), "--out", str(out)])
    assert len(out.read_text().splitlines()) > 0


def test_ray_workers_preload_a_cuda_libllama(monkeypatch, tmp_path):
    seen = {}

    class Started(Exception):
        pass

    def init(**options):
        seen.update(options)
        raise Started

    monkeypatch.setitem(sys.modules, "ray", types.SimpleNamespace(init=init))
    for libllama, env_vars in [("/box/llama_cpp/lib/libllama.so", {"LD_PRELOAD": "/box/llama_cpp/lib/libllama.so"}),
                               (None, None)]:
        monkeypatch.setattr(llm, "cuda_libllama", lambda: libllama)
        with pytest.raises(Started):
            evaluation.cluster_outcomes({"scaffolds": {}}, tmp_path, [], "ray://head:10001")
        assert seen["runtime_env"].get("env_vars") == env_vars
