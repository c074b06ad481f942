"""
bench/harness_throughput.py: can the harness keep a vLLM server busy? eval.py's episode runner
(threads against an OpenAI-compatible server, the path a vLLM run takes) with N workers against a
stub server that answers every call at once with a valid op (LOG: <|DONE|>, PLAN: an <|ACTION|>
with a valid action name). What is left is the harness: prompts, op parsing, memory, env steps,
traces, HTTP. Reported per N: env steps/s and LLM calls/s. The stub runs in its own process.

    python bench/harness_throughput.py                         # N = 1 2 4 8 16 32 64, Crafter
    python bench/harness_throughput.py --workers 1 8 --env minihack --steps 50
    python bench/harness_throughput.py --serve 8123            # only the stub, for your own runs

Writes bench/results/harness_throughput.json.
"""
import argparse
import json
import multiprocessing
import sys
import os
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
ACTION = {"crafter": "Noop", "minihack": "north", "nethack": "search"}  # a valid action of each env
TASK = {"crafter": "default", "minihack": "MiniHack-MazeWalk-9x9-v0", "nethack": "NetHackChallenge-v0"}


class Stub(ThreadingHTTPServer):
    """An OpenAI-compatible server on 127.0.0.1 that answers at once: GET /v1/models lists `model`; a chat
    completion gets <|DONE|> when its last message offers <|DONE|> (a LOG prompt), else <|ACTION|>action<|END|>.
    `requests` counts the chat completions per requested model name. stub.url is the base URL to pass."""
    daemon_threads = True

    def __init__(self, action, model="stub", port=0):
        super().__init__(("127.0.0.1", port), StubHandler)
        self.action, self.model, self.requests, self.lock = action, model, {}, threading.Lock()
        self.url = f"http://127.0.0.1:{self.server_address[1]}/v1"


class StubHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as a real server

    def log_message(self, *args):
        pass

    def reply(self, body):
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self.reply({"object": "list", "data": [{"id": self.server.model, "object": "model", "owned_by": "stub"}]})

    def do_POST(self):
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        model = request.get("model")
        with self.server.lock:
            self.server.requests[model] = self.server.requests.get(model, 0) + 1
        last = request["messages"][-1]["content"]
        text = "<|DONE|>" if "<|DONE|>" in last else f"<|ACTION|>{self.server.action}<|END|>"
        prompt = sum(len(m["content"].split()) for m in request["messages"])
        self.reply({"id": "stub", "object": "chat.completion", "created": 0, "model": model,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": prompt, "completion_tokens": 3, "total_tokens": prompt + 3}})


def serve(action, port, ready=None):
    stub = Stub(action, port=port)
    if ready is not None:
        ready.put(stub.url)
    stub.serve_forever()


def run(url, env, workers, episodes, steps, folder):
    """One eval.py run's episodes with `workers` threads; returns (env steps, LLM calls, seconds)."""
    import automem
    import eval as evaluation
    import metrics
    seeds = Path(folder) / "seeds.txt"
    seeds.write_text(f"{env}: {' '.join(map(str, range(episodes)))}\n")
    args = evaluation.parse_args(["--env", env, "--task", TASK[env], "--backend", "openai", "--base-url", url,
                                  "--model", "stub", "--workers", str(workers), "--max-steps", str(steps),
                                  "--seeds", str(seeds), "--runs-dir", str(folder), "--run-name", f"n{workers}"])
    config = evaluation.make_config(args)
    run_dir, lock = evaluation.prepare_run_dir(config, folder)
    evaluation.load_models(config)
    t0 = time.perf_counter()
    ends = [end for _, end in evaluation.outcomes(config, run_dir, config["jobs"], server=True)]
    seconds = time.perf_counter() - t0
    os.close(lock)
    failed = [e for e in ends if isinstance(e, Exception)]
    if failed:
        raise SystemExit(f"error: {len(failed)} episode(s) failed: {failed[0]}")
    traces = [automem.read_trace(evaluation.trace_path(run_dir, j)) for j in config["jobs"]]
    calls = sum(1 for _, trace_steps, _ in traces for _ in metrics.calls(trace_steps))
    return sum(end["steps"] for end in ends), calls, seconds


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    p.add_argument("--env", default="crafter", choices=list(TASK))
    p.add_argument("--episodes", type=int, default=64, help="episodes per N (every worker gets work up to N = 64)")
    p.add_argument("--steps", type=int, default=20, help="steps per episode")
    p.add_argument("--serve", type=int, metavar="PORT", help="only run the stub on this port (Ctrl-C ends it)")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "harness_throughput.json"))
    args = p.parse_args()
    if args.serve is not None:
        print(f"stub at http://127.0.0.1:{args.serve}/v1 (model 'stub', action {ACTION[args.env]!r})")
        serve(ACTION[args.env], args.serve)
        return
    spawn = multiprocessing.get_context("spawn")
    ready = spawn.Queue()
    stub = spawn.Process(target=serve, args=(ACTION[args.env], 0, ready), daemon=True)
    stub.start()
    url = ready.get(timeout=60)
    rows = []
    try:
        for n in args.workers:
            with tempfile.TemporaryDirectory() as folder:
                steps, calls, seconds = run(url, args.env, n, args.episodes, args.steps, folder)
            rows.append({"workers": n, "episodes": args.episodes, "steps": steps, "calls": calls,
                         "seconds": round(seconds, 2), "steps_per_s": round(steps / seconds, 1),
                         "calls_per_s": round(calls / seconds, 1)})
            print(f"N={n}: {rows[-1]['steps_per_s']} steps/s, {rows[-1]['calls_per_s']} calls/s", file=sys.stderr)
    finally:
        stub.terminate()
    print(f"\n{args.env}, {args.episodes} episodes x {args.steps} steps per N\n")
    print("| workers | env steps/s | LLM calls/s | seconds |\n| --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['workers']} | {r['steps_per_s']} | {r['calls_per_s']} | {r['seconds']} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"env": args.env, "steps_per_episode": args.steps, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
